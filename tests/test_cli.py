"""The CLI: version, tokenizer training, info, and one-line errors without tracebacks."""

import json
import subprocess
import sys


from bertrt import __version__
from bertrt.checkpoint import save_checkpoint
from bertrt.model import Bert, BertConfig

from .test_tokenizer import CORPUS


def bertrt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_version():
    r = bertrt("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bertrt {__version__}"


def test_tokenizer_train_then_refuse_overwrite(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS, encoding="utf-8")
    r = bertrt("tokenizer", "train", tmp_path / "c.txt", "-o", tmp_path / "tok", "--vocab-size", 120,
               "--min-frequency", 1)
    assert r.returncode == 0, r.stderr
    vocab = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 120 and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    r = bertrt("tokenizer", "train", tmp_path / "c.txt", "-o", tmp_path / "tok")
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {tmp_path / 'tok'} already exists; pass --force to replace it"


def test_info_reports_counts(tmp_path):
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_heads=[4, 2], ffn_sizes=[64, 16], head_size=8,
                     task="classify", labels=["no", "yes"])
    model = Bert(cfg)
    save_checkpoint(model, tmp_path / "ckpt")
    r = bertrt("info", tmp_path / "ckpt", "--json", "--seq-len", 64)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["heads_per_layer"] == [4, 2] and info["ffn_per_layer"] == [64, 16]
    assert info["flops_per_token"] == cfg.flops_per_token(64)
    assert info["architecture"] == "BertForSequenceClassification" and info["labels"] == ["no", "yes"]
    text = bertrt("info", tmp_path / "ckpt").stdout
    assert "BertForSequenceClassification" in text and f"{info['parameters']:,}" in text


def test_user_errors_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for args in (["info", tmp_path / "missing"], ["info", tmp_path],
                 ["tokenizer", "train", tmp_path / "none.txt", "-o", tmp_path / "t"]):
        r = bertrt(*args)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("error: ")


def test_import_is_light():
    code = ("import sys, bertrt; "
            "heavy = {'torch', 'transformers', 'onnx', 'onnxruntime', 'ray'} & set(sys.modules); "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_help_shows_bracketed_extras_verbatim():
    """Help texts name extras as `bertrt[ray]`; rich markup read them as tags and printed "needs bertrt"."""
    from typer.testing import CliRunner

    from bertrt.cli import app

    for command, extra in (("predict", "bertrt[ray]"), ("serve", "bertrt[ray]"), ("finetune", "bertrt[track]")):
        r = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert r.exit_code == 0 and extra in " ".join(r.output.split()), (command, r.output[-400:])


def test_evaluate_refuses_options_that_do_not_apply_instead_of_ignoring_them(tiny_artifact, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    art = tiny_artifact("classify")
    r = bertrt("evaluate", art, data, "--max-length", 64, "--batch-size", 8)
    assert r.returncode == 1
    assert r.stderr.startswith("error: --max-length, --batch-size apply to checkpoints, not to the artifact "), r.stderr
    r = bertrt("evaluate", tmp_path, data, "--backend", "openvino")  # a folder without bertrt.json: a checkpoint
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: --backend applies to artifacts; the checkpoint {tmp_path} is evaluated in "
                                "PyTorch")
