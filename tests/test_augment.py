"""Augmentation (bertrt.data.augment, bertrt.train.augment, `bertrt augment`, `finetune --augment`): NER entities
keep their words and tags (token ids and label ids checked whole), QA answers stay at their answer_start, relation
spans stay on their words, seeds reproduce, the masked-LM filler returns the head's own top words, and fine-tuning
augments the training data only."""

import collections
import json
import random

import pytest
import torch

from bertrt.data import tasks as T
from bertrt.data.augment import augment, render_text, task_file_text, text_units
from bertrt.errors import BertrtError
from bertrt.tasks.decode import entity_spans
from bertrt.tasks.encode import IGNORE_INDEX, join_words, word_spans
from bertrt.tokenizer import load_tokenizer

from .finetune_fixtures import (one_thread, FILLER, classify_rows, make_base, ner_rows, squad,  # noqa: F401
                                write_jsonl)
from .test_finetune_cli import cli


def entities(ex):
    """(type, the entity's words) of every entity, as the runtime's word rule sees the joined text."""
    text, tags = join_words(ex.tokens, ex.tags)
    spans = word_spans(text)
    return [(kind, text[spans[a][0]:spans[b][1]]) for kind, a, b in entity_spans(tags)]


def ner_examples():
    rows = ner_rows(60, 3, punct=True)
    rows.append({"tokens": ["john", "alpha", "mary", "beta"], "tags": ["I-PER", "O", "I-PER", "O"]})  # IOB1-style
    rows.append({"tokens": ["paris"], "tags": ["B-LOC"]})  # nothing free to edit
    return [T.NerExample(r["tokens"], r["tags"]) for r in rows]


@pytest.mark.parametrize("text", ["alpha beta\n\ngamma  delta", "  padded  ", "我爱北京 alpha", "one"])
def test_unedited_units_spell_the_text_back(text):
    units = text_units(text, {} if text[0].isspace() else {"a": (0, 1)})
    assert render_text(units)[0] == text.strip()


def test_ner_entities_keep_their_words_tags_and_label_ids(tmp_path):
    base = make_base(tmp_path / "base")
    tok = load_tokenizer(base)
    examples = ner_examples()
    labels = T.infer_labels("ner", examples)
    variants = augment("ner", examples, "eda", per_example=4, seed=1)
    assert len(variants) == 4 * len(examples)
    changed = 0
    for i, v in enumerate(variants):
        ex = examples[i // 4]
        assert len(v.tokens) == len(v.tags) and set(v.tags) <= set(labels)
        # every entity survives with exactly its words and type (deletions only ever take O words)
        assert collections.Counter(entities(v)) == collections.Counter(entities(ex)), (ex, v)
        changed += v.tokens != ex.tokens
        # the label ids the model trains on sit on each word's first sub-token, in word order
        _, word_tags = join_words(v.tokens, v.tags)
        (feat,) = T.encode_ner([v], tok, labels, 64)
        assert [x for x in feat["labels"] if x != IGNORE_INDEX] == [labels.index(t) for t in word_tags]
        assert feat["input_ids"] == [tok.token_to_id("[CLS]")] + tok.encode(
            " ".join(v.tokens), add_special_tokens=False).ids + [tok.token_to_id("[SEP]")]
    assert changed >= 0.7 * len(variants)  # the edits did something
    # the IOB1-style example: a moved "I-PER" that lands after another person starts its own entity
    iob1 = variants[4 * (len(examples) - 2):4 * (len(examples) - 1)]
    assert all(len(entities(v)) == 2 for v in iob1)
    assert all(v.tokens == ["paris"] for v in variants[-4:])


def test_ner_b_tag_split_when_an_iob1_entity_follows_its_own_type():
    from bertrt.data.augment import Unit, render_ner

    out = render_ner([Unit(["john"], True, ["I-PER"]), Unit(["mary", "smith"], True, ["I-PER", "I-PER"])])
    assert out.tags == ["I-PER", "B-PER", "I-PER"] and len(entity_spans(out.tags)) == 2


def qa_examples(tmp_path):
    doc = json.loads(squad(40, 5, long_every=5))
    doc["data"][0]["paragraphs"].append({"context": "alpha beta new york, gamma delta", "qas": [
        {"id": "overlap", "question": "what color ?", "answers": [{"text": "new york", "answer_start": 11},
                                                                 {"text": "york", "answer_start": 15}]}]})
    (tmp_path / "qa.json").write_text(json.dumps(doc))
    return T.read_task(tmp_path / "qa.json", "qa")


@pytest.mark.parametrize("method", ["eda", "mlm"])
def test_qa_answers_stay_at_their_answer_start(tmp_path, method):
    examples = qa_examples(tmp_path)
    filler = None
    if method == "mlm":
        from bertrt.train.augment import MlmFiller

        filler = MlmFiller(make_base(tmp_path / "mlm", task="mlm"), "cpu")
    variants = augment("qa", examples, method, per_example=3, seed=2, filler=filler)
    for i, v in enumerate(variants):
        ex = examples[i // 3]
        assert v.question == ex.question and v.id == f"{ex.id}-aug{i % 3}"
        assert [t for t, _ in v.answers] == [t for t, _ in ex.answers]
        for t, s in v.answers:
            assert v.context[s:s + len(t)] == t, (v.context, t, s)
    assert sum(v.context != examples[i // 3].context for i, v in enumerate(variants)) >= 0.7 * len(variants)
    # written and read back through the reader, which checks every answer_start itself
    (tmp_path / "out.json").write_text(task_file_text("qa", examples + variants))
    assert len(T.read_task(tmp_path / "out.json", "qa")) == 4 * len(examples)


def test_relation_spans_stay_on_their_words(tmp_path):
    rng = random.Random(4)
    rows = []
    for _ in range(30):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))] + ["john", "paris"]
        rng.shuffle(words)
        text = " ".join(words)
        h, t = text.index("john"), text.index("paris")
        rows.append({"text": text, "head": [h, h + 4], "tail": [t, t + 5], "label": "lives_in"})
    examples = T.read_task(write_jsonl(tmp_path / "rel.jsonl", rows), "relation")
    variants = augment("relation", examples, "eda", per_example=3, seed=3)
    for i, v in enumerate(variants):
        assert v.text[v.head[0]:v.head[1]] == "john" and v.text[v.tail[0]:v.tail[1]] == "paris"
    (tmp_path / "out.jsonl").write_text(task_file_text("relation", variants))
    assert len(T.read_task(tmp_path / "out.jsonl", "relation")) == 90


def test_seeds_reproduce_and_differ():
    examples = [T.ClassifyExample(r["text"], None, r["label"]) for r in classify_rows(30, 1)]
    a = augment("classify", examples, "eda", per_example=2, seed=7)
    assert a == augment("classify", examples, "eda", per_example=2, seed=7)
    b = augment("classify", examples, "eda", per_example=2, seed=8)
    assert sum(x.text != y.text for x, y in zip(a, b)) >= 20
    assert [x.label for x in a] == [e.label for e in examples for _ in range(2)]
    with pytest.raises(BertrtError, match="needs|give the checkpoint"):
        augment("classify", examples, "mlm")


def test_mlm_filler_returns_the_heads_top_whole_words(tmp_path):
    from bertrt.checkpoint import load_checkpoint
    from bertrt.train.augment import MlmFiller

    path = make_base(tmp_path / "mlm", task="mlm", seed=3)
    filler = MlmFiller(path, "cpu", candidates=4)
    words = ["alpha", "good", "beta", "john"]
    (got,) = filler([words], [[1, 3]])
    model, tok = load_checkpoint(path), load_tokenizer(path)
    ids = [tok.token_to_id(t) for t in ["[CLS]", "alpha", "[MASK]", "beta", "[MASK]", "[SEP]"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))["mlm_logits"][0]  # (T, V)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    for slot, pos, original in ((0, 2, "good"), (1, 4, "john")):
        order = [vocab[i] for i in logits[pos].argsort(descending=True).tolist()]
        expected = [w for w in order if not w.startswith("[") and w.isalnum() and w != original][:4]
        assert got[slot] == expected
    # classify variants change exactly the masked share of words, the labels stay
    examples = [T.ClassifyExample(r["text"], None, r["label"]) for r in classify_rows(20, 2)]
    variants = augment("classify", examples, "mlm", seed=1, filler=filler)
    for ex, v in zip(examples, variants):
        before, after = ex.text.split(), v.text.split()
        assert len(before) == len(after) and v.label == ex.label
        assert 1 <= sum(x != y for x, y in zip(before, after)) <= max(1, round(0.15 * len(before)))


def test_mlm_ner_substitutes_only_words_outside_entities(tmp_path):
    from bertrt.train.augment import MlmFiller

    examples = ner_examples()
    filler = MlmFiller(make_base(tmp_path / "mlm", task="mlm"), "cpu")
    variants = augment("ner", examples, "mlm", per_example=2, seed=5, filler=filler)
    for i, v in enumerate(variants):
        ex = examples[i // 2]
        assert v.tags == ex.tags and len(v.tokens) == len(ex.tokens)
        assert all(a == b for a, b, t in zip(v.tokens, ex.tokens, ex.tags) if t != "O")
    assert sum(v.tokens != examples[i // 2].tokens for i, v in enumerate(variants)) >= 0.7 * len(variants)


def test_augment_command_writes_originals_then_variants(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "ner.jsonl", ner_rows(10, 1))
    out = tmp_path / "aug.jsonl"
    code, text, err = cli(monkeypatch, capsys, "augment", src, "-o", out, "--task", "ner", "--per-example", "3",
                          "--seed", "4")
    assert code in (0, None), err
    assert "10 examples and 30 variants" in text
    written = T.read_task(out, "ner")
    assert written[:10] == T.read_task(src, "ner") and len(written) == 40
    assert written[10:] == augment("ner", written[:10], "eda", per_example=3, seed=4)
    code, _, err = cli(monkeypatch, capsys, "augment", src, "-o", out, "--task", "ner")
    assert code == 1 and "already exists" in err
    code, _, err = cli(monkeypatch, capsys, "augment", src, "-o", tmp_path / "aug.conll", "--task", "ner")
    assert code == 1 and "give the output a .jsonl or .json name" in err
    code, _, err = cli(monkeypatch, capsys, "augment", src, "-o", tmp_path / "m.jsonl", "--task", "ner",
                       "--method", "mlm")
    assert code == 1 and "needs --from" in err and not (tmp_path / "m.jsonl").exists()
    code, _, err = cli(monkeypatch, capsys, "augment", src, "-o", tmp_path / "m.jsonl", "--task", "ner",
                       "--method", "mlm", "--from", make_base(tmp_path / "plain"))
    assert code == 1 and "masked-LM head" in err


def test_finetune_augments_the_training_data_only_and_learns(tmp_path, monkeypatch):
    import bertrt.train.augment as A
    from bertrt.train.finetune import FinetuneConfig, finetune

    base = make_base(tmp_path / "base")
    train_rows, eval_rows = classify_rows(64, 1), classify_rows(40, 2)
    train, ev = write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    calls = []

    def spy(task, examples, method, per_example, seed, filler):
        calls.append(([e.text for e in examples], method, per_example, seed))
        return augment(task, examples, method, per_example, seed=seed, filler=filler)

    monkeypatch.setattr(A, "augment", spy)
    cfg = FinetuneConfig("classify", batch_size=16, max_length=32, lr=4e-3, epochs=4, progress=False,
                         augment="eda", augment_per_example=2, seed=3)
    r = finetune(train, tmp_path / "m", base, cfg, eval_path=ev)
    assert r.steps == 4 * 12  # 64 originals + 128 variants per epoch, batches of 16
    assert [c[3] for c in calls] == [3 * 1_000_003 + e for e in range(4)]  # one fresh draw per epoch
    assert all(c[0] == [x["text"] for x in train_rows] and c[1:3] == ("eda", 2) for c in calls)  # never eval
    assert r.best["accuracy"] >= 0.9, r.evals
    assert json.loads((tmp_path / "m" / "finetune.json").read_text())["config"]["augment"] == "eda"
