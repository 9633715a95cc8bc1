"""The rehearsal of a GPU step on the meta device (rehearse.py): its byte and FLOP counts by hand, and at the real
shapes of three models (0.5B, 1.5B, 7B; NF4 and bf16) the measured peak of every phase beside the plan."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from helpers import run_cli

from powerflow_lite import rehearse as R
from powerflow_lite.config import TrainConfig
from powerflow_lite.estimate import PhaseCost
from powerflow_lite.memory_plan import model_config, plan_memory
from powerflow_lite.model import Lora, adapter_lora

META = torch.device("meta")
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6,
         "use_sliding_window": False, "torch_dtype": "bfloat16", "rope_theta": 10000.0}
# the shapes of Qwen2.5-0.5B-Instruct, Qwen2.5-Math-1.5B and Qwen2.5-Math-7B (their config.json files on the Hub)
SHAPES = {
    "0.5B": {**QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "max_position_embeddings": 32768},
    "1.5B": {**QWEN2, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "max_position_embeddings": 4096},
    "7B": {**QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
           "max_position_embeddings": 4096},
}
# 0.5B's widths with 2 layers: the tests of the rehearsal's workings, in a second each
SHAPES["small"] = {**SHAPES["0.5B"], "num_hidden_layers": 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    for name, config in SHAPES.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return root


# --- counting, by hand


def test_live_bytes_counts_new_storages_not_views_and_frees_them():
    with R.LiveBytes() as tracker:
        a = torch.empty(1000, dtype=torch.float32, device=META)  # 4,000 bytes
        b = torch.empty(10, 100, dtype=torch.bfloat16, device=META)  # 2,000 bytes
        assert tracker.current == 6000
        view = a.view(10, 100)[:, :5]  # no new storage
        assert tracker.current == 6000
        c = a * 2  # a new 4,000-byte storage
        assert tracker.current == tracker.peak == 10000
        del a, c  # `view` keeps a's storage alive
        assert tracker.current == 6000 and tracker.peak == 10000
        del view
        assert tracker.current == 2000
        assert tracker.reset_peak() == 2000 and tracker.peak == 2000
        del b
        assert tracker.current == 0


def test_flops_of_a_matmul_and_of_the_4bit_matmul_by_hand():
    with R.LiveBytes() as tracker:
        torch.empty(8, 64, device=META) @ torch.empty(64, 32, device=META)
        assert tracker.flops == 2 * 8 * 64 * 32
    linear = torch.nn.Linear(64, 32, bias=False, device=META, dtype=torch.bfloat16)
    layer = R.nf4_layer(linear)
    with R.LiveBytes() as tracker, torch.no_grad():
        out = layer(torch.empty(3, 8, 64, dtype=torch.bfloat16, device=META))
    assert out.shape == (3, 8, 32) and tracker.flops == 2 * 24 * 64 * 32
    # what bitsandbytes stores for it in NF4 with double quantization (memory_parts.nf4_bytes)
    from powerflow_lite.memory_parts import nf4_bytes

    assert R.storage_bytes([layer.weight]) == 64 * 32 // 2  # two weights a byte
    state = layer.weight.quant_state
    held = R.storage_bytes([layer.weight, state.absmax, state.code, state.offset, state.state2.absmax,
                            state.state2.code])
    assert held == nf4_bytes(64 * 32)


def test_worst_case_answers_where_meta_cannot_compute():
    with R.LiveBytes(rows_per_prompt=4) as tracker:
        mask = torch.empty(3, 5, dtype=torch.bool, device=META)
        values = torch.empty(3, 5, 7, device=META)
        assert values[mask].shape == (15, 7)  # every position selected
        assert mask.nonzero().shape == (15, 2)
        distinct, inverse, counts = torch.unique(torch.empty(8, 6, device=META), dim=0, return_inverse=True,
                                                 return_counts=True)
        assert distinct.shape == (2, 6) and inverse.shape == (8,)  # 8 rows, 4 of each prompt
        assert bool(mask.all()) is False  # masks are built
        with tracker.answering(True):
            assert bool(mask.all()) is True


def test_efficient_attention_keeps_no_attention_matrix():
    q = torch.empty(2, 4, 512, 64, dtype=torch.bfloat16, device=META, requires_grad=True)
    kv = torch.empty(2, 2, 512, 64, dtype=torch.bfloat16, device=META)
    mask = torch.ones(2, 1, 512, 512, dtype=torch.bool, device=META)
    with R.LiveBytes() as tracker:
        start = tracker.reset_peak()
        out = R.efficient_attention(q, kv, kv, attn_mask=mask)
        matrix = 2 * 4 * 512 * 512 * 4  # what the math path holds in float32
        assert out.shape == (2, 4, 512, 64) and tracker.peak - start < matrix


# --- at real shapes: every phase runs, and the plan agrees with the measure


@pytest.mark.parametrize("quant", ["nf4", "none"])
@pytest.mark.parametrize("size", ["0.5B", "1.5B", "7B"])
def test_rehearsal_at_real_shapes_agrees_with_the_plan(models, size, quant):
    cfg = TrainConfig(model=str(models / size), prompts="unused.jsonl", alpha=4.0, quant=quant, max_new_tokens=512,
                      prompts_per_step=4, samples_per_prompt=8, micro_batch_size=8, eval_data="e.jsonl",
                      eval_every=10)
    config = model_config(cfg.model)
    rehearsal = R.rehearse(cfg, config, 128)
    plan = plan_memory(cfg, 128, "cuda", config=config)
    assert rehearsal.quant == quant and rehearsal.sampler == "hf"
    assert not [run.error for run in rehearsal.phases.values() if run.error]
    assert rehearsal.weights == R.planned_weights(plan)  # the exact parts: the same bytes
    lora = next(p.bytes for p in plan.parts if p.name.startswith("LoRA"))
    assert rehearsal.gradients == lora  # a float32 gradient per LoRA weight
    for row in R.compare(plan, rehearsal):
        if row.planned is not None:
            assert abs(row.difference) <= 0.10, (size, quant, row)
        else:  # scoring: below the update, as the plan assumes
            assert row.rehearsed < rehearsal.phases["update"].peak
    update = rehearsal.phases["update"]
    tokens = 8 * (128 + 512)  # a micro-batch's forward: 2 FLOPs a weight a token, at least
    weights = sum(math.prod(p.shape) for n, p in _dense_weights(config))
    assert update.flops >= update.calls * 3 * 2 * weights * tokens  # forward, recomputation, backward
    assert rehearsal.seconds < 60


def _dense_weights(config):
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    return [(n, p) for n, p in model.named_parameters() if "layers." in n and p.dim() == 2]


def test_the_static_sampler_is_rehearsed_with_its_full_cache(models):
    cfg = TrainConfig(model=str(models / "0.5B"), prompts="unused.jsonl", alpha=4.0, sampler="static",
                      max_new_tokens=256, prompts_per_step=4, samples_per_prompt=8)
    config = model_config(cfg.model)
    rehearsal = R.rehearse(cfg, config, 128)
    plan = plan_memory(cfg, 128, "cuda", config=config)
    kv = next(p.bytes for p in plan.parts if p.name == "KV cache")
    sampling = rehearsal.phases["sampling"]
    assert sampling.parts["last token"] >= kv  # allocated whole before the first token
    assert abs(R.compare(plan, rehearsal)[0].difference) <= 0.10
    assert rehearsal.phases["scoring"].calls == 4  # the static sampler returns log pi: only the base is scored


def test_costs_split_prefill_and_decode_and_spread_the_evaluation(models):
    cfg = TrainConfig(model=str(models / "small"), prompts="unused.jsonl", alpha=4.0, max_new_tokens=64,
                      prompts_per_step=2, samples_per_prompt=4, eval_data="e.jsonl", eval_every=5)
    rehearsal = R.rehearse(cfg, model_config(cfg.model), 32)
    found = {cost.name: cost for cost in R.costs(rehearsal, cfg)}
    sampling, evaluation, scoring = (rehearsal.phases[name] for name in ("sampling", "evaluation", "scoring"))
    assert isinstance(found["decode"], PhaseCost) and found["decode"].steps == 64
    assert found["prefill"].flops + found["decode"].flops == pytest.approx(sampling.flops)
    # one evaluation: 32 prompts (--eval-limit) x 4 samples (--eval-k) in calls of 8 (a step's 2 x 4), spread over
    # --eval-every 5 steps; scored twice (generate returns no log pi; the base's), at the scoring's FLOPs a row
    calls = 32 * 4 // 8
    assert found["eval decode"].flops == pytest.approx(calls * (evaluation.flops - evaluation.prefill_flops) / 5)
    per_row = scoring.flops / (scoring.calls * scoring.rows)
    assert found["eval scoring"].flops == pytest.approx(per_row * 32 * 4 * 2 / 5)
    # a decode step reads every weight and the cache: at least the weights, 63 times
    assert found["decode"].bytes >= 63 * rehearsal.weights
    assert set(found) == {"prefill", "decode", "scoring", "update", "eval prefill", "eval decode", "eval scoring"}
    assert [cost.name for cost in R.step_costs(rehearsal)] == ["prefill", "decode", "scoring", "update"]


# --- the CLI


def test_dry_run_rehearse_prints_the_comparison_and_the_estimate(models, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, ["train", "--model", models / "small", "--prompts", prompts_file, "--alpha", 4,
                                       "--max-new-tokens", 128, "--output", out, "--dry-run", "--rehearse",
                                       "--prompt-tokens", 64])
    assert code == 0 and not out.exists()
    assert "rehearsed on the meta device" in stdout and "not rehearsed" in stdout
    for phase in ("sampling", "scoring", "update"):
        assert phase in stdout
    for card in ("RTX 3060 12 GB", "RTX 4090 24 GB", "A100 40 GB", "H100 80 GB"):
        assert card in stdout
    assert "Estimated time per step, not measured" in stdout


def test_rehearse_needs_dry_run(capsys, tiny_model_dir, prompts_file):
    code, _, err = run_cli(capsys, ["train", "--model", tiny_model_dir, "--prompts", prompts_file, "--alpha", 4,
                                    "--rehearse"])
    assert code == 2 and "--rehearse rehearses the step that --dry-run plans" in err


def test_an_error_of_the_step_at_this_shape_is_reported_not_raised(models, monkeypatch):
    cfg = TrainConfig(model=str(models / "small"), prompts="unused.jsonl", alpha=4.0, max_new_tokens=32,
                      prompts_per_step=2, samples_per_prompt=2)

    def broken(*args, **kwargs):
        raise RuntimeError("expected all tensors to be on the same device")

    monkeypatch.setattr(R, "score", broken)
    rehearsal = R.rehearse(replace(cfg), model_config(cfg.model), 16)
    assert rehearsal.phases["scoring"].error == "RuntimeError: expected all tensors to be on the same device"
    assert not rehearsal.phases["update"].error


# --- powerflow sample, eval and preview: one batch rehearsed


def test_a_saved_adapter_is_rehearsed_with_its_own_lora(models, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16,
                                                             "target_modules": ["v_proj", "q_proj"]}))
    lora = adapter_lora(str(adapter))
    assert lora == Lora(8, 16, 0.0, "q_proj,v_proj")
    config = model_config(str(models / "small"))
    args = (str(models / "small"), config, "nf4", "hf", 8, 4, 64, 32, 8)
    plain, adapted = R.rehearse_inference(*args), R.rehearse_inference(*args, lora=lora)
    # per layer: q_proj 896 -> 896 and v_proj 896 -> 128 (2 KV heads x 64), A r x in and B out x r, float32
    per_layer = 8 * (896 + 896) + 8 * (896 + 128)
    assert adapted.weights - plain.weights == 2 * per_layer * 4  # 2 layers
    assert not plain.sampling.error and not plain.scoring.error
    assert plain.scoring.calls == 1 and plain.rows == 8


def test_scoring_a_batch_grows_with_its_rows(models):
    config = model_config(str(models / "small"))
    small, large = (R.rehearse_inference(str(models / "small"), config, "nf4", "hf", rows, 4, 64, 64, rows)
                    for rows in (4, 16))
    assert large.scoring.flops == pytest.approx(4 * small.scoring.flops, rel=1e-3)  # 4x the rows, 4x the work
    assert large.scoring.peak > small.scoring.peak  # above a logits chunk (LOGITS_BUDGET), which both hold


def test_eval_sample_and_preview_dry_runs_print_the_peak_and_the_batch_that_fits(models, prompts_file, tmp_path,
                                                                                 capsys):
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n")
    model = models / "0.5B"
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli(capsys, ["eval", "--model", model, "--data", data, "--dry-run", "--batch-size", 16,
                                      "--max-new-tokens", 128, "--prompt-tokens", 64, "--output", tmp_path / "ev"])
    assert (code, err) == (0, "")
    assert "16 completions of 64 + 128 tokens a call" in out and "8 GiB GPU: fits" in out
    # 256 completions of 2,304 tokens at once cannot fit 8 GiB (scoring them together, above all); the dry run finds
    # the batch that does
    code, out, _ = run_cli(capsys, ["sample", "--model", model, "--prompt", "Hi.", "-n", 4, "--batch-size", 256,
                                    "--max-new-tokens", 2048, "--dry-run"])
    assert code == 0 and "8 GiB GPU: does not fit; fits with --batch-size 64" in out
    code, out, _ = run_cli(capsys, ["preview", "--model", model, "--prompts", prompts_file, "--dry-run",
                                    "--max-new-tokens", 64])
    assert code == 0 and "static sampler" in out and "256 completions" in out
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_sampling_dry_run_bad_input_is_one_line(models, capsys):
    code, _, err = run_cli(capsys, ["sample", "--model", models / "0.5B", "--prompt", "Hi.", "--prompt-tokens", 64])
    assert code == 2 and "--prompt-tokens is the prompt length --dry-run plans for" in err
    code, _, err = run_cli(capsys, ["sample", "--model", models / "0.5B", "--prompt", "Hi.", "--dry-run",
                                    "--sampler", "power-resample"])
    assert code == 2 and err.count("\n") == 1 and "--sampler power-resample draws several completions per answer" in err
