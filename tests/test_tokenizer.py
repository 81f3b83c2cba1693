"""Tokenizers: training is deterministic and BERT-shaped; ids are pinned exactly."""

import json

import pytest

from bertrt.errors import TokenizerError
from bertrt.tokenizer import SPECIAL_TOKENS, fingerprint, load_tokenizer, save_tokenizer, train_tokenizer

CORPUS = """The quick brown fox jumps over the lazy dog.
A quick brown dog jumps over the lazy fox!
Foxes and dogs are quick; dogs are lazy, foxes are quick.
The bank raised interest rates by 0.25 points in 2024.
Interest rates rose again, and the banks were quick to follow.
北京 是 中国 的 首都。
Café owners said prices jumped over the summer.
"""


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture
def trained(corpus):
    return train_tokenizer([corpus], vocab_size=120, min_frequency=1, show_progress=False)


def test_exact_ids(trained):
    assert [trained.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    enc = trained.encode("The quick fox jumps over the lazy dog.")
    assert enc.ids == [2, 66, 70, 74, 104, 86, 66, 85, 73, 7, 3]
    # CJK characters become one token each; "ed" is a continuation piece; lowercased
    enc = trained.encode("Foxes jumped in 北京!")
    assert enc.tokens == ["[CLS]", "foxes", "jump", "##ed", "i", "##n", "北", "京", "!", "[SEP]"]
    assert enc.ids == [2, 102, 84, 91, 16, 50, 29, 28, 5, 3]
    # accents stripped when lowercasing; a character never seen in training is [UNK]
    enc = trained.encode("Café ☃ rates")
    assert enc.ids == [2, 13, 109, 1, 105, 3]
    assert enc.tokens[3] == "[UNK]"


def test_pairs_get_segment_ids(trained):
    enc = trained.encode("quick dogs", "lazy fox")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2
    sep = enc.tokens.index("[SEP]")
    assert enc.type_ids == [0] * (sep + 1) + [1] * (len(enc.ids) - sep - 1)


def test_training_is_deterministic(corpus):
    prints = {fingerprint(train_tokenizer([corpus], vocab_size=120, min_frequency=1, show_progress=False))
              for _ in range(3)}
    assert len(prints) == 1


def test_cased_tokenizer_keeps_case(corpus):
    cased = train_tokenizer([corpus], vocab_size=200, min_frequency=1, lowercase=False, show_progress=False)
    assert cased.encode("The Café").tokens[1:-1] == ["The", "Café"]  # case and accent kept
    uncased = train_tokenizer([corpus], vocab_size=200, min_frequency=1, show_progress=False)
    assert fingerprint(cased) != fingerprint(uncased)


def test_save_load_round_trip(tmp_path, trained):
    fp = save_tokenizer(trained, tmp_path / "tok")
    assert fp == fingerprint(trained)
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["bertrt_fingerprint"] == fp
    text = "Foxes jumped in 北京! Café ☃ rates 0.25"
    from_json = load_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").unlink()
    from_vocab = load_tokenizer(tmp_path / "tok")  # vocab.txt + tokenizer_config.json
    assert from_json.encode(text).ids == trained.encode(text).ids == from_vocab.encode(text).ids
    assert fingerprint(from_json) == fp


def test_fingerprint_ignores_truncation_and_padding(trained):
    fp = fingerprint(trained)
    trained.enable_truncation(16)
    trained.enable_padding(pad_id=0, pad_token="[PAD]")
    assert fingerprint(trained) == fp


def test_bad_inputs(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        train_tokenizer([tmp_path / "nope.txt"])
    (tmp_path / "empty.txt").write_text("   \n\n")
    with pytest.raises(TokenizerError, match="no text"):
        train_tokenizer([tmp_path / "empty.txt"], show_progress=False)
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(TokenizerError, match=r"no \[PAD\] token"):
        load_tokenizer(tmp_path / "vocab.txt")
