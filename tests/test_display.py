"""The training display: live table and examples on a terminal, plain lines elsewhere."""

import io

from rich.console import Console

from powerflow_lite.display import ROWS, plain_line, show_training
from powerflow_lite.metrics import METRICS
from powerflow_lite.train import StepResult


def metrics(step):
    row = {key: 0.0 for key in METRICS if key != "peak_gpu_mem_gib"}
    row.update(step=step, loss=0.5 / step, log_z_mean=1.25, log_z_std=0.125, length_mean=12.5, length_min=3,
               length_max=20, truncated_frac=0.25)
    return row


def results(n=3, example_every=2):
    for step in range(1, n + 1):
        example = {"prompt": "Name a color.", "completion": f"Teal number {step}", "length": 4, "truncated": False}
        yield StepResult(step, n, metrics(step), example if step % example_every == 0 else None, None)


def test_terminal_shows_progress_table_and_examples():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    last = show_training(results(), console, start_step=0, max_steps=3)
    text = buffer.getvalue()
    assert last.step == 3
    assert "3/3" in text and "ETA" in text
    assert all(label in text for label, _ in ROWS)
    assert "Teal number 2" in text and "ended with EOS" in text
    assert "1.250 ± 0.125" in text  # log Z' mean ± std of the last step
    assert "Teal number 1" not in text  # examples only every --show-every steps


def test_plain_output_has_one_line_per_step():
    buffer = io.StringIO()
    show_training(results(), Console(file=buffer, force_terminal=False, width=80), start_step=0, max_steps=3)
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("step ")]
    assert lines == [plain_line(result) for result in results()]
    assert "\x1b[" not in buffer.getvalue()
    assert "loss 0.1667" in lines[2] and "trunc 25%" in lines[0]
