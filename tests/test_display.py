"""The training display: live table and examples on a terminal, plain lines elsewhere."""

import io

from rich.console import Console

from powerflow_lite.display import ROWS, plain_line, show_training
from powerflow_lite.metrics import METRICS
from powerflow_lite.train import StepResult


def metrics(step):
    row = {key: 0.0 for key in METRICS if key != "peak_gpu_mem_gib"}  # a CPU run's row
    row.update(step=step, loss=0.5 / step, log_z_mean=1.25, log_z_std=0.125, length_mean=12.5, length_min=3,
               length_max=20, truncated_frac=0.25, peak_rss_gib=1.5 + step)
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
    assert "peak memory (RSS)" in text and "4.50 GiB" in text  # the last step's peak


def test_plain_output_has_one_line_per_step():
    buffer = io.StringIO()
    show_training(results(), Console(file=buffer, force_terminal=False, width=80), start_step=0, max_steps=3)
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("step ")]
    assert lines == [plain_line(result) for result in results()]
    assert "\x1b[" not in buffer.getvalue()
    assert "loss 0.1667" in lines[2] and "trunc 25%" in lines[0]


BEFORE = {"step": 0, "eval_avg_at_k": 0.125, "eval_pass_at_k": 0.25, "eval_maj_at_k": 0.0, "eval_boxed_frac": 0.0}


def with_eval_before():
    yield StepResult(0, 3, BEFORE, None, None)  # what train() yields first with --eval-data
    yield from results()


def test_the_eval_before_training_is_shown_before_step_1_and_not_as_a_step():
    buffer = io.StringIO()
    last = show_training(with_eval_before(), Console(file=buffer, force_terminal=False, width=200), 0, 3)
    text = buffer.getvalue()
    assert last.step == 3
    assert text.startswith("eval before training: avg@k 12.5%  pass@k 25.0%  maj@k 0.0%")
    assert [line for line in text.splitlines() if line.startswith("step ")] == [plain_line(r) for r in results()]
    buffer = io.StringIO()
    show_training(with_eval_before(), Console(file=buffer, force_terminal=True, width=120), 0, 3)
    text = buffer.getvalue()
    assert "eval before training" in text and "avg@k 12.5%" in text and "3/3" in text
