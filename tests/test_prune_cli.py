"""`bertrt prune`: end to end on a tiny checkpoint, and one clear line for each kind of bad input."""

import json
import subprocess
import sys

import pytest
import torch

from bertrt.checkpoint import load_checkpoint, save_checkpoint
from bertrt.model import Bert, BertConfig
from bertrt.tokenizer import train_tokenizer

from .prune_helpers import LABELS

TEXTS = {
    "business": "shares and markets fell as the bank raised interest rates for investors",
    "sport": "the team won the final match after a late goal by their captain",
    "tech": "researchers built a faster chip and new software for small phones",
}


def bertrt(*args):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def classify_rows(n):
    words = {k: v.split() for k, v in TEXTS.items()}
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        w = words[label]
        rows.append({"text": " ".join(w[(i + j) % len(w)] for j in range(4 + i % 7)), "label": label})
    return rows


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_cli")
    (root / "corpus.txt").write_text("\n".join(TEXTS.values()) * 3, encoding="utf-8")
    tok = train_tokenizer([root / "corpus.txt"], vocab_size=100, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_heads=[4, 4], ffn_sizes=[48, 48],
                     head_size=8, max_position_embeddings=64, task="classify", labels=LABELS)
    save_checkpoint(Bert(cfg).eval(), root / "ckpt", tokenizer=tok)
    emb = BertConfig(**{**cfg.to_dict(), "task": "embed", "labels": []})
    save_checkpoint(Bert(emb).eval(), root / "embed", tokenizer=tok)
    write_jsonl(root / "train.jsonl", classify_rows(48))
    return root


def test_prune_end_to_end(ckpt, tmp_path):
    r = bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "out", "--data", ckpt / "train.jsonl", "--keep-flops", 0.5,
               "--min-examples", 16, "--max-length", 32, "--batch-size", 8, "--recover-epochs", 1)
    assert r.returncode == 0, r.stderr
    before, after = load_checkpoint(ckpt / "ckpt").config, load_checkpoint(tmp_path / "out").config
    assert after.flops_per_token(32) <= 0.5 * before.flops_per_token(32)
    assert after.flops_per_token(32) > 0.45 * before.flops_per_token(32)  # the budget is used, not wasted
    summary = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert summary["config"]["keep_flops"] == 0.5 and summary["examples"] == 48
    assert summary["pruned"]["num_heads"] == after.num_heads and summary["pruned"]["ffn_sizes"] == after.ffn_sizes
    assert "% kept)" in r.stdout
    assert summary["recovery"]["steps"] == 6 and summary["recovery"]["epochs"] == 1  # 48 examples, batches of 8
    info = json.loads(bertrt("info", tmp_path / "out", "--json", "--seq-len", 32).stdout)
    assert info["original"]["flops_per_token"] == before.flops_per_token(32)
    assert info["flops_per_token"] == after.flops_per_token(32) and info["heads_per_layer"] == after.num_heads
    r = bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "out", "--data", ckpt / "train.jsonl", "--keep-flops", 0.5)
    assert r.returncode == 1 and r.stderr.strip() == f"error: {tmp_path / 'out'} already exists; pass --force to " \
                                                     "replace it"


def one_line_error(r):
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("keep", ["0", "1.5", "-0.3"])
def test_keep_flops_outside_unit_interval(ckpt, tmp_path, keep):
    line = one_line_error(bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "o", "--data", ckpt / "train.jsonl",
                                 "--keep-flops", keep))
    assert "keep_flops must be a fraction in (0, 1]" in line
    assert not (tmp_path / "o").exists()


def test_bad_data_gives_one_clear_line(ckpt, tmp_path):
    ner = write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["Bob", "ran"], "tags": ["B-PER", "O"]}] * 80)
    line = one_line_error(bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "o", "--data", ner, "--keep-flops", 0.5))
    assert "missing text, label" in line and "the checkpoint is a 'classify' model" in line

    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "good film", "label": "positive"}] * 80)
    line = one_line_error(bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "o", "--data", other, "--keep-flops", 0.5))
    assert "'positive' are not among the checkpoint's labels (business, sport, tech)" in line

    line = one_line_error(bertrt("prune", ckpt / "ckpt", "-o", tmp_path / "o", "--data", ckpt / "train.jsonl",
                                 "--keep-flops", 0.5))  # 48 examples, 64 needed by default
    assert "48 labelled examples are too few" in line and "at least 64" in line

    line = one_line_error(bertrt("prune", ckpt / "embed", "-o", tmp_path / "o", "--data", ckpt / "train.jsonl",
                                 "--keep-flops", 0.5))
    assert "'embed' model, which has no task loss" in line
    assert not (tmp_path / "o").exists()


def prune_args(out, ckpt, seed):
    return ["prune", str(ckpt / "ckpt"), "-o", str(out), "--data", str(ckpt / "train.jsonl"), "--keep-flops", "0.5",
            "--min-examples", "16", "--max-length", "32", "--batch-size", "8", "--recover-epochs", "1",
            "--seed", str(seed)]


def test_cli_and_prune_checkpoint_write_the_same_checkpoint_with_its_recovery_record(ckpt, tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from bertrt.cli import app
    from bertrt.converters.prune import PruneConfig, RecoverConfig, prune_checkpoint

    r = CliRunner().invoke(app, prune_args(tmp_path / "cli", ckpt, seed=3))
    assert r.exit_code == 0, r.output
    record = prune_checkpoint(ckpt / "ckpt", tmp_path / "lib", ckpt / "train.jsonl",
                              PruneConfig(0.5, seq_len=32, min_examples=16), RecoverConfig(1, batch_size=8, seed=3),
                              batch_size=8, seed=3, progress=False)
    assert json.loads((tmp_path / "lib" / "pruning.json").read_text()) == record  # what it returns is what it wrote
    recovery = dict(record["recovery"])
    assert isinstance(recovery.pop("final_loss"), float)
    assert recovery == {"epochs": 1, "lr": 3e-5, "warmup": 0.1, "batch_size": 8, "temperature": 2.0, "alpha": 0.5,
                        "seed": 3, "data": str((ckpt / "train.jsonl").absolute()), "examples": 48, "steps": 6}
    assert record["data"] == {"path": str((ckpt / "train.jsonl").absolute()), "max_examples": 2048, "batch_size": 8,
                              "seed": 3}
    assert json.loads((tmp_path / "cli" / "pruning.json").read_text()) == record
    lib, cli = load_file(tmp_path / "lib" / "model.safetensors"), load_file(tmp_path / "cli" / "model.safetensors")
    assert sorted(lib) == sorted(cli) and all(torch.equal(lib[k], cli[k]) for k in lib)
    assert (tmp_path / "lib" / "config.json").read_text() == (tmp_path / "cli" / "config.json").read_text()

    # negative control: another seed shuffles recovery differently, so the weights must differ
    r = CliRunner().invoke(app, prune_args(tmp_path / "seed4", ckpt, seed=4))
    assert r.exit_code == 0, r.output
    other = load_file(tmp_path / "seed4" / "model.safetensors")
    assert json.loads((tmp_path / "seed4" / "pruning.json").read_text())["kept_heads"] == record["kept_heads"]
    assert not all(torch.equal(lib[k], other[k]) for k in lib)
