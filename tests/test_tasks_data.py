"""Task data readers: formats, encodings, and one clear DataError for every bad input."""

import json

import pytest
from tokenizers import Tokenizer

from bertrt.data.tasks import (IGNORE_INDEX, check_labels, collate, encode_classify, encode_ner, encode_qa,
                               infer_labels, read_task)
from bertrt.errors import DataError
from bertrt.tokenizer import SPECIAL_TOKENS, _build

WORDS = ["the", "cat", "sat", "on", "mat", "paris", "is", "in", "france", "where", "?", ".", ",", "john", "lives",
         "new", "york", "##s", "big", "city"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return _build({t: i for i, t in enumerate(SPECIAL_TOKENS + WORDS)}, lowercase=True)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------------- classify
def test_classify_jsonl_csv_tsv_read_the_same(tmp_path):
    rows = [{"text": "the cat", "label": "pos"}, {"text": "a, \"quoted\" mat", "label": "neg"}]
    j = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = write(tmp_path, "d.csv", 'label,text\npos,the cat\nneg,"a, ""quoted"" mat"\n')
    t = write(tmp_path, "d.tsv", 'text\tlabel\nthe cat\tpos\na, "quoted" mat\tneg\n')
    got = [[(e.text, e.text_pair, e.label) for e in read_task(p, "classify")] for p in (j, c, t)]
    assert got[0] == got[1] == got[2] == [("the cat", None, "pos"), ('a, "quoted" mat', None, "neg")]


def test_classify_pairs_encode_with_segments(tmp_path, tok):
    p = write(tmp_path, "p.jsonl", json.dumps({"text": "the cat", "text_pair": "sat on mat", "label": 1}) + "\n")
    ex = read_task(p, "classify")
    assert ex[0].label == "1" and ex[0].text_pair == "sat on mat"
    f = encode_classify(ex, tok, ["0", "1"], max_length=32)[0]
    v = tok.get_vocab()
    assert f["input_ids"] == [v[w] for w in ["[CLS]", "the", "cat", "[SEP]", "sat", "on", "mat", "[SEP]"]]
    assert f["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1] and f["labels"] == 1
    assert len(encode_classify(ex, tok, ["0", "1"], max_length=5)[0]["input_ids"]) == 5  # truncated


def test_labels_inferred_sorted_and_unseen_eval_label_rejected(tmp_path):
    train = read_task(write(tmp_path, "t.jsonl", '{"text":"x","label":"b"}\n{"text":"y","label":"a"}\n'), "classify")
    labels = infer_labels("classify", train)
    assert labels == ["a", "b"]
    ev = read_task(write(tmp_path, "e.jsonl", '{"text":"x","label":"c"}\n'), "classify")
    with pytest.raises(DataError, match="'c' do not occur in the training data"):
        check_labels("classify", ev, labels, "e.jsonl")


@pytest.mark.parametrize("name,text,message", [
    ("a.jsonl", '{"text": "x"}\n', "missing label"),
    ("a.jsonl", '{"label": "x"}\n', "missing text"),
    ("a.csv", "text,labels\nx,y\n", "no 'label' column"),
    ("a.tsv", "sentence\tlabel\nx\ty\n", "no 'text' column"),
    ("a.jsonl", "", "is empty"),
    ("a.jsonl", "  \n\n", "is empty"),
    ("a.csv", "text,label\n", "holds no classify examples"),
    ("a.jsonl", '{"text": "x", "label": "y"}\nnot json\n', r"a.jsonl:2: not valid JSON"),
    ("a.jsonl", '{"text":"x","label":"a","text_pair":"z"}\n{"text":"y","label":"b"}\n', "some examples have"),
    ("a.csv", "text,label\nx,y,z\n", "more fields than the header"),
])
def test_classify_bad_input(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_task(write(tmp_path, name, text), "classify")


def test_missing_file_and_single_label(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_task(tmp_path / "nope.jsonl", "classify")
    one = read_task(write(tmp_path, "o.jsonl", '{"text":"x","label":"a"}\n'), "classify")
    with pytest.raises(DataError, match="at least 2"):
        infer_labels("classify", one)


# --------------------------------------------------------------------------------------------------------- NER
def test_conll_and_jsonl_ner(tmp_path, tok):
    conll = write(tmp_path, "n.conll", "-DOCSTART- O\n\nJohn B-PER\nlives O\nin O\nNew B-LOC\nYork I-LOC\n\n"
                                       "cats O\n")
    ex = read_task(conll, "ner")
    assert [e.tokens for e in ex] == [["John", "lives", "in", "New", "York"], ["cats"]]
    js = write(tmp_path, "n.jsonl", json.dumps({"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}) + "\n")
    assert read_task(js, "ner")[0].tags == ["B-PER", "O"]
    labels = infer_labels("ner", ex)
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    f = encode_ner(ex, tok, labels, max_length=32)
    # "cats" -> cat ##s: the label sits on the first sub-token only
    assert f[1]["input_ids"] == [tok.token_to_id(t) for t in ["[CLS]", "cat", "##s", "[SEP]"]]
    assert f[1]["labels"] == [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX]
    assert f[0]["labels"] == [IGNORE_INDEX, 3, 0, 0, 1, 2, IGNORE_INDEX]
    assert [x["example_index"] for x in f] == [0, 1]


def test_conll_with_extra_columns_uses_first_and_last(tmp_path):
    ex = read_task(write(tmp_path, "c.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"), "ner")
    assert ex[0].tokens == ["EU", "rejects"] and ex[0].tags == ["B-ORG", "O"]


@pytest.mark.parametrize("name,text,message", [
    ("n.conll", "John B-PER\nlives O extra\n", r"n.conll:2: 3 fields but the file's first line has 2"),
    ("n.conll", "John\nlives\n", "need a token and a tag"),
    ("n.conll", "John PER\n", "not BIO/IOB2"),
    ("n.conll", "\n\n", "is empty"),
    ("n.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', "2 tokens but 1 tags"),
    ("n.jsonl", '{"words": ["a"]}\n', "needs a 'tokens' list"),
])
def test_ner_bad_input(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_task(write(tmp_path, name, text), "ner")


def test_ner_eval_tag_unseen_in_training(tmp_path):
    train = read_task(write(tmp_path, "t.conll", "John B-PER\n"), "ner")
    ev = read_task(write(tmp_path, "e.conll", "Paris B-LOC\n"), "ner")
    with pytest.raises(DataError, match="'B-LOC' do not occur"):
        check_labels("ner", ev, infer_labels("ner", train), "e.conll")


# ---------------------------------------------------------------------------------------------------------- QA
def squad(context, qas):
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]})


def test_squad_windows_map_answers_to_tokens(tmp_path, tok):
    context = "john lives in paris . the cat sat on the mat in new york . paris is in france ."
    qa = [{"id": "q1", "question": "where is the cat ?", "answers": [{"text": "new york", "answer_start": 48}]}]
    ex = read_task(write(tmp_path, "s.json", squad(context, qa)), "qa")
    assert ex[0].answers == [("new york", 48)] and context.index("new york") == 48
    feats = encode_qa(ex, tok, max_length=16, doc_stride=3)
    q_len = 5
    room = 16 - q_len - 3  # 8 context tokens per window, windows start every 5 tokens
    assert len(feats) == 4  # 20 context tokens: windows at 0, 5, 10, 15
    for f in feats:
        assert len(f["input_ids"]) <= 16 and f["input_ids"][0] == tok.token_to_id("[CLS]")
        assert f["token_type_ids"].count(1) == len(f["input_ids"]) - q_len - 2
        if f["start_positions"]:
            s, e = f["offsets"][f["start_positions"]][0], f["offsets"][f["end_positions"]][1]
            assert context[s:e] == "new york"
    # "new york" are context tokens 12 and 13: inside windows starting at 5 (5..12 ends too early: no) and 10
    holding = [i for i, f in enumerate(feats) if f["start_positions"]]
    assert holding == [2] and feats[2]["start_positions"] == q_len + 2 + 2
    assert all(f["start_positions"] == f["end_positions"] == 0 for i, f in enumerate(feats) if i != 2)
    assert room == 8


@pytest.mark.parametrize("qas,message", [
    ([{"id": "q", "question": "?", "answers": [{"text": "london", "answer_start": 0}]}], "does not occur"),
    ([{"id": "q", "question": "?", "answers": [{"text": "cat", "answer_start": 0}]}], "answer_start 0 does not point"),
    ([{"id": "q", "question": "?", "answers": []}], "has no answers"),
    ([{"id": "q", "question": "?", "answers": [], "is_impossible": True}], "SQuAD v2"),
    ([{"id": "q", "question": "?", "answers": [{"text": "cat", "answer_start": 4}]},
      {"id": "q", "question": "?", "answers": [{"text": "cat", "answer_start": 4}]}], "more than once"),
])
def test_squad_bad_input(tmp_path, qas, message):
    with pytest.raises(DataError, match=message):
        read_task(write(tmp_path, "s.json", squad("the cat sat", qas)), "qa")


def test_squad_not_squad(tmp_path):
    with pytest.raises(DataError, match="not valid JSON"):
        read_task(write(tmp_path, "s.json", "{nope"), "qa")
    with pytest.raises(DataError, match="'data' list"):
        read_task(write(tmp_path, "s.json", '{"version": "2"}'), "qa")


def test_collate_pads(tok):
    batch = collate([{"input_ids": [2, 5, 3], "token_type_ids": [0, 0, 0], "labels": [-100, 1, -100]},
                     {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": [-100, -100]}])
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
