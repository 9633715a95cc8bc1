"""--init-adapter: training that starts from an existing PEFT adapter (its shape, its weights), distinct from
--resume; an adapter that cannot train on this base is one line, and nothing is written."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import config, one_error_line, run_cli
from safetensors.torch import load_file

from powerflow_lite.setup import setup
from powerflow_lite.tiny import write_tiny_model
from powerflow_lite.train import train


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step run with LoRA r 4 on q_proj and v_proj: the adapter another run starts from."""
    root = tmp_path_factory.mktemp("first")
    prompts = root / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a color."}\n{"prompt": "Name a fruit."}\n')
    list(train(setup(config(tiny_model_dir, prompts, root / "run", max_steps=2, lora_r=4, lora_alpha=8,
                            lora_targets="q_proj,v_proj"))))
    return root / "run" / "adapter"


def test_a_run_starts_from_the_adapter(trained, tiny_model_dir, prompts_file, tmp_path):
    run = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=1, init_adapter=str(trained)))
    assert (run.cfg.lora_r, run.cfg.lora_alpha, run.cfg.lora_targets) == (4, 8, "q_proj,v_proj")  # its shape
    saved = load_file(str(trained / "adapter_model.safetensors"))
    live = {name: param for name, param in run.model.named_parameters() if "lora_" in name}
    assert len(live) == len(saved) > 0
    for key, weight in saved.items():  # PEFT names a saved weight without the adapter's name
        name = next(n for n in live if n.replace(".default", "") == key)
        assert torch.equal(live[name].detach().cpu(), weight)
    step = next(train(run)).metrics
    fresh = next(train(setup(config(tiny_model_dir, prompts_file, tmp_path / "fresh", max_steps=1)))).metrics
    # a fresh adapter (LoRA B = 0) is the base at step 1; the started one is already another policy
    assert fresh["policy_logp_per_token"] == pytest.approx(fresh["base_logp_per_token"], abs=1e-6)
    assert abs(step["policy_logp_per_token"] - step["base_logp_per_token"]) > 1e-3
    saved_config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved_config["init_adapter"] == str(trained) and saved_config["lora_r"] == 4  # a resume rebuilds it


def test_resume_continues_the_run_not_the_init_adapter(trained, tiny_model_dir, prompts_file, tmp_path):
    first = config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=2, save_every=1,
                   init_adapter=str(trained))
    list(train(setup(first)))
    resumed = setup(config(tiny_model_dir, prompts_file, tmp_path / "run", max_steps=3, resume=True,
                           init_adapter=str(trained), lora_r=4, lora_alpha=8, lora_targets="q_proj,v_proj"))
    assert resumed.state.step == 2
    at_two = load_file(str(tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors"))
    live = {n.replace(".default", ""): p for n, p in resumed.model.named_parameters() if "lora_" in n}
    assert all(torch.equal(live[key].detach().cpu(), weight) for key, weight in at_two.items())


def test_an_adapter_of_another_base_is_one_line(trained, prompts_file, tmp_path, tmp_path_factory, capsys):
    other = write_tiny_model(tmp_path_factory.mktemp("other") / "model", hidden_size=32)  # another width
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--model", other, "--prompts", prompts_file, "--alpha", 2,
                                    "--quant", "none", "--max-steps", 1, "--init-adapter", trained,
                                    "--output", out])
    assert code == 2 and "does not fit this model (was it trained on another base?)" in one_error_line(err)
    assert not out.exists()


def test_a_directory_without_an_adapter_is_one_line(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", prompts_file, "--alpha", 2,
                                    "--init-adapter", tmp_path, "--output", out])
    assert code == 2 and "is not an adapter directory (no adapter_config.json)" in one_error_line(err)
    assert not out.exists()
