"""`powerflow sample --run OUT`: the run's model, adapter, template and system prompt, so that it samples the
policy as it was trained."""

from __future__ import annotations

import pytest
from helpers import config, one_error_line, read_jsonl, run_cli

from powerflow_lite.setup import setup
from powerflow_lite.train import train

SYSTEM = "Answer in one word."


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a color."}\n{"prompt": "Name a fruit."}\n')
    out = root / "run"
    list(train(setup(config(tiny_model_dir, prompts, out, max_steps=2, system_prompt=SYSTEM, max_new_tokens=5))))
    return out


def test_sample_run_samples_as_trained(trained, tiny_model_dir, tmp_path, capsys):
    def sample(name, *flags):
        out = tmp_path / f"{name}.jsonl"
        code, _, err = run_cli(capsys, ["sample", *flags, "--prompt", "Name a color.", "-n", 3, "--quant", "none",
                                        "--sampler", "static", "--out", out])
        assert (code, err) == (0, ""), err
        return read_jsonl(out)

    by_run = sample("run", "--run", trained)
    by_hand = sample("hand", "--model", tiny_model_dir, "--adapter", trained / "adapter", "--system-prompt", SYSTEM,
                     "--max-new-tokens", 5)
    bare = sample("bare", "--model", tiny_model_dir, "--adapter", trained / "adapter", "--max-new-tokens", 5)
    assert by_run == by_hand  # the run's adapter, system prompt, template and length
    assert "logp_base" in by_run[0]  # an adapter was loaded: the base scores beside it
    assert [r["logp"] for r in by_run] != [r["logp"] for r in bare]  # without the run's system prompt: not the same


def test_sample_run_flags_still_win(trained, tmp_path, capsys):
    out = tmp_path / "long.jsonl"
    code, _, _ = run_cli(capsys, ["sample", "--run", trained, "--prompt", "Hi.", "--max-new-tokens", 2, "--ignore-eos",
                                  "--quant", "none", "--out", out])
    assert code == 0 and [r["tokens"] for r in read_jsonl(out)] == [2]


def test_sample_run_that_is_not_a_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, ["sample", "--run", tmp_path, "--prompt", "Hi."])
    assert code == 2 and "is not a powerflow train output directory" in one_error_line(err)
