"""--report-to: TensorBoard event files and W&B's offline run hold every metrics row and the shown samples."""

import json
import struct
import sys

import pytest
from helpers import read_jsonl, run_cli, write_jsonl

from powerflow_lite.errors import PowerflowError
from powerflow_lite.metrics import read_metrics
from powerflow_lite.reporting import open_reporters, parse_report_to

PROMPTS = [{"prompt": "Tell me a story."}, {"prompt": "What is 2+2?"}]
PROBLEMS = [{"problem": "What is 2+2?", "answer": "4"}, {"problem": "What is 1+2?", "answer": "3"}]


def train_args(model, prompts, problems, out, *extra):
    return ["train", "--model", model, "--alpha", "2", "--prompts", prompts, "--output", out, "--max-steps", "2",
            "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4", "--quant", "none",
            "--show-every", "1", "--eval-data", problems, "--eval-every", "2", "--eval-k", "2", "--save-every", "1",
            *extra]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No W&B key anywhere: the run must go offline by itself, without asking for one."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_report_to_names_are_checked():
    assert parse_report_to("TensorBoard, wandb,tensorboard") == ("tensorboard", "wandb")
    assert parse_report_to("") == () and parse_report_to("none") == ()
    with pytest.raises(PowerflowError, match="unknown 'tb'; choose from tensorboard, wandb"):
        parse_report_to("tb")


def test_a_missing_package_is_one_line_naming_its_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(PowerflowError, match="--report-to wandb needs W&B: pip install wandb"):
        open_reporters("wandb", tmp_path, {})


def test_bad_report_to_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    code, _, err = run_cli(capsys, train_args(tiny_model_dir, prompts, problems, tmp_path / "run", "--report-to",
                                              "tensorbored"))
    assert code == 2 and err.startswith("error: --report-to 'tensorbored': unknown") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def tensorboard_events(folder) -> tuple[dict, dict]:
    """tag -> [(step, value)] of the scalars, and step -> text of the 'samples' text summaries."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    return scalars, texts


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file: a LevelDB-style log (32 KiB blocks of records, each with a
    7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last) of protobuf Records after a 7-byte
    file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, records, pending = run_file.read_bytes(), 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(pending + chunk)
            pending = b""
        elif kind in (2, 3):
            pending += chunk
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_tensorboard_and_wandb_get_every_row_and_the_samples(tiny_model_dir, tmp_path, capsys, offline):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, train_args(tiny_model_dir, prompts, problems, out, "--report-to",
                                                    "tensorboard,wandb"))
    assert code == 0, err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert f"report to tensorboard: {out / 'tensorboard'}" in printed
    assert f"report to wandb, offline: {runs[0]} (upload it later: wandb sync {runs[0]})" in printed
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]  # the eval before training, two steps (the last with its eval)

    scalars, texts = tensorboard_events(out / "tensorboard")
    for key in ("loss", "log_z_mean", "length_mean", "eval_avg_at_k", "eval_base_logp_per_token"):
        expected = [(r["step"], r[key]) for r in rows if key in r]
        assert [step for step, _ in scalars[key]] == [step for step, _ in expected]
        assert [value for _, value in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32
    assert [step for step, _ in scalars["eval_avg_at_k"]] == [0, 2]
    assert sorted(texts) == [1, 2] and "| 1 |" in texts[2] and "| 2 |" in texts[2]  # the table grows

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # offline: no key, no prompt for one
    run_id = (out / "wandb_run_id").read_text().strip()
    history = wandb_history(runs[0] / f"run-{run_id}.wandb")
    assert [h["_step"] for h in history] == [0, 1, 2]
    assert [h.get("loss") for h in history] == [r.get("loss") for r in rows]
    assert [h.get("eval_avg_at_k") for h in history] == [r.get("eval_avg_at_k") for r in rows]
    assert [h.get("samples/nrows") for h in history] == [None, 1, 2]
    (table,) = [t for t in (runs[0] / "files" / "media" / "table").glob("samples_2_*.table.json")]
    shown = json.loads(table.read_text())
    assert shown["columns"] == ["step", "prompt", "completion", "tokens"]
    assert [row[0] for row in shown["data"]] == [1, 2] and {row[1] for row in shown["data"]} <= {
        p["prompt"] for p in PROMPTS}


def test_resume_continues_the_same_wandb_run(tiny_model_dir, tmp_path, capsys, offline):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, prompts, problems, out, "--report-to", "wandb")
    code, _, err = run_cli(capsys, [*args, "--max-steps", "1", "--eval-every", "1"])
    assert code == 0, err
    first = (out / "wandb_run_id").read_text()
    code, _, err = run_cli(capsys, ["train", "--output", out, "--resume", "--max-steps", "2"])
    assert code == 0, err
    assert (out / "wandb_run_id").read_text() == first
    logs = [run_file.name for run_file in (out / "wandb").glob("offline-run-*/run-*.wandb")]
    assert logs == [f"run-{first.strip()}.wandb"] * 2  # one log per invocation, both of the same W&B run
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == 2
