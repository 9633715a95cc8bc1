"""`powerflow plot RUN`: the panels drawn follow the keys in metrics.jsonl; the PNG and the refusals around it."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("matplotlib")

from helpers import one_error_line
from matplotlib.figure import Figure  # noqa: E402

from powerflow_lite.cli import main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINING_PANELS = ["loss", "log Z'(q)", "completion length (tokens)", "log-prob per token"]
PIXELS_PER_PANEL_ROW = 352  # figsize height 3.2 inches per row of two panels, at 110 dpi
WIDTH = 1210  # 11 inches at 110 dpi


def training_row(step: int) -> dict:
    return {"step": step, "loss": 1.0 / step, "log_z_mean": -2.0 + 0.1 * step, "log_z_std": 0.2,
            "length_mean": 5.0 + step, "length_min": 2, "length_max": 9, "policy_logp_per_token": -2.5 + 0.1 * step,
            "base_logp_per_token": -2.6, "lr": 1e-4, "grad_norm": 0.5}


def math_eval(step: int) -> dict:
    return {"eval_avg_at_k": 0.1 * step, "eval_pass_at_k": 0.2 + 0.1 * step, "eval_maj_at_k": 0.1,
            "eval_boxed_frac": 0.5, "eval_length_mean": 7.0, "eval_truncated_frac": 0.1,
            "eval_base_logp_per_token": -2.4, "time_eval": 0.3}


def creative_eval(step: int) -> dict:
    return {"eval_diversity": 20.0 + step, "eval_distinct_1": 0.5, "eval_distinct_2": 0.8, "eval_english_words": 0.9,
            "eval_broken_words": 0.0, "eval_repeated_3grams": 0.1, "eval_length_mean": 7.0,
            "eval_truncated_frac": 0.1, "eval_base_logp_per_token": -2.4, "time_eval": 0.3}


def write_run(directory, rows, tail: str = ""):
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows) + tail
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def figures(monkeypatch):
    """Every figure plot_run saves, captured as it is written (the PNG is still written)."""
    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def titles(figure) -> list[str]:
    return [axis.get_title() for axis in figure.axes if axis.get_title()]


def panel(figure, title: str):
    return next(axis for axis in figure.axes if axis.get_title() == title)


def lines(axis) -> dict:
    """label -> (x, y) of each plotted line."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def png_size(path) -> tuple[int, int]:
    from matplotlib.image import imread

    height, width = imread(path).shape[:2]
    return width, height


def plot(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["plot", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- what is drawn


def test_training_only_run_draws_the_four_training_panels(tmp_path, figures, capsys):
    run = write_run(tmp_path / "run", [training_row(s) for s in (1, 2, 3)])
    code, out, err = plot(capsys, run)
    target = run / "training.png"
    assert (code, err) == (0, "") and str(target) in out
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert png_size(target) == (WIDTH, 2 * PIXELS_PER_PANEL_ROW)  # 4 panels, two to a row
    [figure] = figures
    assert titles(figure) == TRAINING_PANELS
    assert lines(panel(figure, "loss"))["loss"] == ([1, 2, 3], [1.0, 0.5, 1 / 3])
    assert set(lines(panel(figure, "log-prob per token"))) == {"policy", "base"}


def test_math_eval_keys_add_panels_and_step_0(tmp_path, figures, capsys):
    rows = [{"step": 0, **math_eval(0)}, training_row(1), {**training_row(2), **math_eval(2)},
            {**training_row(3), "loss": math.nan}, {**training_row(4), **math_eval(4)}]
    # the last line was cut short by a crash: the rows before it are still drawn
    run = write_run(tmp_path / "run", rows, tail='{"step": 5, "loss": 0.1, "log_z_m')
    code, _, err = plot(capsys, run)
    assert (code, err) == (0, "")
    assert png_size(run / "training.png") == (WIDTH, 3 * PIXELS_PER_PANEL_ROW)  # 6 panels
    [figure] = figures
    assert titles(figure) == TRAINING_PANELS + ["eval: accuracy", "eval: base log-prob / token"]
    assert lines(panel(figure, "loss"))["loss"][0] == [1, 2, 4]  # no step 0 (eval only), no NaN, no step 5
    accuracy = lines(panel(figure, "eval: accuracy"))
    assert set(accuracy) == {"avg_at_k", "pass_at_k", "maj_at_k", "boxed_frac"}
    assert accuracy["avg_at_k"] == ([0, 2, 4], [0.0, 0.2, 0.4])
    assert lines(panel(figure, "completion length (tokens)"))["eval samples"][0] == [0, 2, 4]
    assert lines(panel(figure, "eval: base log-prob / token"))["base_logp_per_token"][0] == [0, 2, 4]


def test_creative_eval_keys_draw_diversity_panels(tmp_path, figures, capsys):
    rows = [{"step": 0, **creative_eval(0)}, {**training_row(1), **creative_eval(1)}]
    run = write_run(tmp_path / "run", rows)
    assert plot(capsys, run)[0] == 0
    [figure] = figures
    assert titles(figure) == TRAINING_PANELS + ["eval: semantic diversity (0-100)", "eval: distinct-n",
                                                "eval: fluency", "eval: base log-prob / token"]
    assert "eval: accuracy" not in titles(figure)
    assert lines(panel(figure, "eval: semantic diversity (0-100)"))["diversity"] == ([0, 1], [20.0, 21.0])
    assert lines(panel(figure, "eval: fluency"))["english_words"] == ([0, 1], [0.9, 0.9])
    assert sum(axis.axison for axis in figure.axes) == 8 and len(figure.axes) == 8


def test_only_keys_present_are_drawn(tmp_path, figures, capsys):
    run = write_run(tmp_path / "run", [{"step": 1, "loss": 0.3}, {"step": 2, "loss": 0.2}])
    assert plot(capsys, run)[0] == 0
    [figure] = figures
    assert titles(figure) == ["loss"]
    assert png_size(run / "training.png") == (WIDTH, PIXELS_PER_PANEL_ROW)


def test_title_names_the_run_from_its_config(tmp_path, figures, capsys):
    run = write_run(tmp_path / "run", [training_row(1)])
    (run / "config.yaml").write_text("model: Qwen/Qwen2.5-0.5B\nalpha: 4.0\nobjective: latb\n")
    assert plot(capsys, run)[0] == 0
    assert figures[0]._suptitle.get_text() == f"{run}: Qwen/Qwen2.5-0.5B, alpha=4.0, latb"


# --- the file and the refusals


def test_existing_png_needs_overwrite(tmp_path, capsys):
    run = write_run(tmp_path / "run", [training_row(1), training_row(2)])
    target = run / "training.png"
    target.write_bytes(b"not mine to replace")
    code, _, err = plot(capsys, run)
    assert code == 2 and "--overwrite" in one_error_line(err)
    assert target.read_bytes() == b"not mine to replace"
    code, _, err = plot(capsys, run, "--overwrite")
    assert (code, err) == (0, "")
    assert target.read_bytes()[:8] == PNG_SIGNATURE


def test_out_writes_elsewhere_and_must_be_png(tmp_path, capsys):
    run = write_run(tmp_path / "run", [training_row(1)])
    elsewhere = tmp_path / "figures" / "curves.png"
    assert plot(capsys, run, "--out", elsewhere)[0] == 0
    assert elsewhere.read_bytes()[:8] == PNG_SIGNATURE and not (run / "training.png").exists()
    for name in ("curves.pdf", "curves"):
        code, _, err = plot(capsys, run, "--out", tmp_path / name)
        assert code == 2 and "PNG" in one_error_line(err)
        assert not (tmp_path / name).exists()


def test_directory_without_metrics_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = plot(capsys, tmp_path / "empty")
    assert code == 2 and "no metrics.jsonl" in one_error_line(err)
    assert list((tmp_path / "empty").iterdir()) == []


def test_metrics_without_a_complete_row_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "run", [], tail='{"step": 1, "lo')
    code, _, err = plot(capsys, run)
    assert code == 2 and "no metric rows" in one_error_line(err)
    assert not (run / "training.png").exists()


def test_rows_with_nothing_to_draw_are_one_error_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", [{"step": 1, "loss": math.nan}, {"step": 2}])
    code, _, err = plot(capsys, run)
    assert code == 2 and "no finite values to draw" in one_error_line(err)
    assert not (run / "training.png").exists()
