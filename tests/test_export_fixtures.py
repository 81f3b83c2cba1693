"""Tiny offline checkpoints for the export and quantization tests (a WordPiece tokenizer trained on the built-in
sample, a 2-layer BERT with hidden 64), plus a check that the fixtures are what the tests assume."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bertrt.checkpoint import save_checkpoint  # noqa: E402
from bertrt.model import Bert, BertConfig  # noqa: E402
from bertrt.tokenizer import train_tokenizer  # noqa: E402
from bertrt.converters import sample  # noqa: E402

LABELS = {"classify": ["business", "sport", "tech"], "ner": ["O", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]}
_TOKENIZER = None


def tiny_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "corpus.txt"
            f.write_text("\n".join(sample.TEXTS + [q + " " + c for q, c, _ in sample.QA]) + "\n")
            _TOKENIZER = train_tokenizer([f], vocab_size=400, min_frequency=1, show_progress=False)
    return _TOKENIZER


def tiny_model(task: str, seed: int = 0, layers: int = 2, heads=None, ffn=None, std: float = 0.1) -> Bert:
    """A random tiny BERT; weights drawn wider than BERT's 0.02 so outputs have real spread (and real margins)."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=400, hidden_size=64, num_heads=heads or [4] * layers,
                     ffn_sizes=ffn or [96] * layers, head_size=16, max_position_embeddings=128,
                     task=task, labels=LABELS.get(task, []), hidden_dropout=0.0, attention_dropout=0.0)
    model = Bert(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.05)  # LayerNorms that are not all-ones, so no weights coincide
            elif p.dim() == 2:
                p.normal_(0, std)
            else:
                p.normal_(0, 0.02)
    return model


def perturbed_model(task: str, scale: float = 0.09) -> Bert:
    """``tiny_model(task, std=0.3)`` with noise on every weight matrix: an artifact of it disagrees with the
    unperturbed checkpoint (the negative control of the bench gates)."""
    model = tiny_model(task, std=0.3)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_checkpoint(root: Path, task: str, name: str | None = None, **kw) -> Path:
    path = root / (name or f"ckpt-{task}")
    save_checkpoint(tiny_model(task, **kw), path, tokenizer=tiny_tokenizer())
    return path


def test_fixture_tokenizer_fits_the_model():
    tok = tiny_tokenizer()
    assert 200 < tok.get_vocab_size() <= 400
    ids = tok.encode("The meeting is at noon.").ids
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    assert tok.token_to_id("[UNK]") not in ids  # the sample's own words are in the vocabulary
