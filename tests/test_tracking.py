"""W&B tracking: an offline run (never a server) records the same scalars at the same steps as metrics.jsonl.

The run's ``.wandb`` file is read back record by record: W&B's transaction log (a 7-byte header ``:W&B`` + magic +
version, then LevelDB-log framing in 32 KiB blocks: crc32c, length, type, payload) whose payloads are the
package's own ``wandb_internal_pb2.Record`` protobufs, parsed with that class."""

import json
import os
import struct
import sys

import pytest
from typer.testing import CliRunner

from bertrt.cli import app, main
from bertrt.errors import BertrtError
from bertrt.train.loop import TrainConfig

from .finetune_fixtures import one_thread, classify_rows, make_base, write_jsonl  # noqa: F401  (one_thread: autouse)
from .pretrain_fixtures import write_corpus

BLOCK = 32768
BOOKKEEPING = {"_timestamp", "_runtime", "_step"}  # W&B's own columns in every history row


@pytest.fixture
def offline(tmp_path, monkeypatch):
    try:
        import wandb  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":  # .ci/run installs the track extra: missing there is a failure
            raise
        pytest.skip("wandb is not installed (pip install 'bertrt[track]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def wandb_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, payload = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a record header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        payload = chunk if kind in (1, 2) else payload + chunk  # FULL, FIRST start a record; MIDDLE, LAST add
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(payload)
            yield record


def wandb_history(run_dir):
    """{step: {name: value}} of the one offline run under ``run_dir``/wandb, and the run's config."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, config = {}, {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(r.history.step.num, {}).update(row)
        elif kind == "run":
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.run.config.update})
    return {s: {k: v for k, v in row.items() if k not in BOOKKEEPING} for s, row in history.items()}, config


def metrics_by_step(path):
    expected = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        step, kind = rec.pop("step"), rec.pop("kind")
        expected.setdefault(step, {}).update({f"{kind}/{k}": v for k, v in rec.items()})
    return expected


def test_finetune_wandb_offline_records_the_metrics_jsonl_scalars(tmp_path, offline, monkeypatch, capsys):
    base = make_base(tmp_path / "base")
    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(64, 1))
    ev = write_jsonl(tmp_path / "eval.jsonl", classify_rows(16, 2))
    monkeypatch.setattr(sys, "argv", ["bertrt", "finetune", str(train), "--task", "classify", "--from", str(base),
                                      "--eval", str(ev), "-o", str(tmp_path / "m"), "--batch-size", "8",
                                      "--max-length", "32", "--epochs", "3", "--wandb", "bertrt-test"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None), capsys.readouterr().err
    expected = metrics_by_step(tmp_path / "m" / "run" / "metrics.jsonl")
    history, config = wandb_history(tmp_path / "m" / "run")
    # 24 steps, logged every 10 and at step 1; evaluations once per epoch (8, 16, 24)
    assert sorted(expected) == [1, 8, 10, 16, 20, 24]
    assert set(expected[24]) == {"eval/accuracy"} and {"train/loss", "train/lr", "train/grad_norm"} <= set(expected[20])
    assert history == expected  # the same names, steps and values, bit for bit
    assert config["max_steps"] == 24 and config["wandb"] == "bertrt-test"


def test_pretrain_wandb_offline_records_each_loss_term(tmp_path, offline):
    files = write_corpus(tmp_path / "text", n_docs=8)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["pretrain", str(tmp_path / "text"), "-o", str(out), "--vocab-size", "120",
                                      "--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--max-steps", "3",
                                      "--eval-fraction", "0.2", "--eval-every", "2", "--cache-dir",
                                      str(tmp_path / "cache"), "--wandb", "bertrt-test"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert files
    expected = metrics_by_step(out / "metrics.jsonl")
    assert {"train/loss_mlm", "train/loss_nsp"} <= set(expected[1]) and "eval/nsp_accuracy" in expected[3]
    assert wandb_history(out)[0] == expected


def test_wandb_missing_is_refused_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib.util.find_spec then answers None: "not installed"
    with pytest.raises(BertrtError, match=r"pip install 'bertrt\[track\]'"):
        TrainConfig(max_steps=1, wandb="p")
