"""Small helpers the CLI-level test files share (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import json
from pathlib import Path

from powerflow_lite.cli import main
from powerflow_lite.config import TrainConfig

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"  # the shipped sample data files


# metrics-row keys measured on the machine rather than computed: they differ between identical runs
MEASURED = {"time_sample", "time_score", "time_update", "sample_tokens_per_s", "peak_rss_gib", "peak_gpu_mem_gib"}


def untimed(rows: list[dict]) -> list[dict]:
    """Metrics rows without their MEASURED keys: what two identical runs must agree on exactly."""
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def config(model, prompts, output, **overrides) -> TrainConfig:
    """A training config for a tiny model on a few prompts: a handful of short steps that train fast on the CPU
    (--lr 1e-2 moves a tiny model visibly in one step). Tests give what they need beyond it as `overrides`."""
    values = dict(model=str(model), alpha=2.0, prompts=str(prompts), output=str(output), quant="none", max_steps=3,
                  prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6, micro_batch_size=4, lr=1e-2,
                  warmup_steps=0, save_every=2, show_every=0)
    return TrainConfig(**{**values, **overrides})


def run_cli(capsys, args) -> tuple[int, str, str]:
    """main(args) with its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """Bad input ends with exactly one `error:` line on stderr and no traceback."""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err
