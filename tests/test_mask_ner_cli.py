"""Masking with an NER artifact (findings equal to Runtime's own entities, pattern types winning overlaps) and the
`bertrt mask` command: texts, JSONL in and out, styles, one-line errors, and no raw value in its output."""

import json
import subprocess
import sys

import pytest

from bertrt.errors import MaskError
from bertrt.mask import NER_TYPES, Finding, Masker, load_ner
from bertrt.mask.findings import resolve_overlaps
from bertrt.runtime import Runtime

TEXTS = ["Alice met Bob in Paris on Monday.", "The museum is in the old town, next to the cathedral in London.",
         "北京 上海 中文 测试 文本 东京", "Researchers at the university found a new way to train small models.",
         "Alice called 13812345678 from London."]
KIND = {"PER": "PERSON", "LOC": "LOCATION"}


def bertrt(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=120, env=env)


def test_ner_findings_are_runtimes_own_entities(tiny_artifact):
    art = tiny_artifact("ner")
    rt = Runtime(art, device="cpu", threads=1)
    expected = [[Finding(e["start"], e["end"], KIND[e["type"]]) for e in r["entities"]] for r in rt.predict(TEXTS)]
    assert sum(map(len, expected)) >= 3, "the tiny model should tag something for this test to mean anything"
    masker = Masker(NER_TYPES, ner=load_ner(art, device="cpu", threads=1))
    assert masker.find_many(TEXTS) == [resolve_overlaps(e) for e in expected]
    # with the pattern types too, the phone number is found whatever the model tagged over it
    full = Masker(ner=rt).find(TEXTS[-1])
    phone = Finding(TEXTS[-1].index("138"), TEXTS[-1].index("138") + 11, "PHONE")
    assert phone in full
    assert [f for f in full if f.type != "PHONE"] == \
        [f for f in resolve_overlaps(expected[-1]) if f.end <= phone.start or f.start >= phone.end]
    with pytest.raises(MaskError, match="is a classify artifact"):
        load_ner(tiny_artifact("classify"), device="cpu")


class FakeNer:
    """Answers like Runtime.predict for NER, with entities we choose."""

    def __init__(self, entities):
        self.entities = entities

    def predict(self, texts):
        return [{"entities": [dict(type=t, start=s, end=e, text=x[s:e], score=0.9) for t, s, e in self.entities]}
                for x in texts]


def test_ner_types_map_and_mask_in_every_style():
    text = "张三丰 works at Acme Corp in Berlin (misc stuff)"
    ents = [("PER", 0, 3), ("ORG", 13, 22), ("LOC", 26, 32), ("MISC", 34, 44)]
    m = Masker(ner=FakeNer(ents))
    assert m.find(text) == [Finding(0, 3, "PERSON"), Finding(13, 22, "ORG"), Finding(26, 32, "LOCATION")]
    assert m.mask(text).text == "<PERSON> works at <ORG> in <LOCATION> (misc stuff)"
    assert Masker(style="partial", ner=FakeNer(ents)).mask(text).text == \
        "张** works at A*** **** in B***** (misc stuff)"
    assert Masker(["ORG"], ner=FakeNer(ents)).mask(text).text == "张三丰 works at <ORG> in Berlin (misc stuff)"


def test_cli_texts_files_styles_and_errors(tmp_path, tiny_artifact):
    secret_phone, secret_mail = "13812345678", "li.na@sina.com.cn"
    text = f"用户{secret_phone}，邮箱 {secret_mail}"
    r = bertrt("mask", text, "x")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines == [{"text": "用户<PHONE>，邮箱 <EMAIL>",
                      "found": [{"type": "PHONE", "start": 2, "end": 13}, {"type": "EMAIL", "start": 17, "end": 34}]},
                     {"text": "x", "found": []}]
    assert secret_phone not in r.stdout + r.stderr and secret_mail not in r.stdout + r.stderr
    assert r.stderr.strip() == "masked 2 texts: EMAIL 1, PHONE 1"

    (tmp_path / "in.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n\n"
                                       + json.dumps("tel 010-62345678") + "\n", encoding="utf-8")
    (tmp_path / "key").write_bytes(b"k" * 32)
    r = bertrt("mask", "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--style", "hash",
               "--hash-key-file", tmp_path / "key", "--types", "phone")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    hashed = Masker(["PHONE"], style="hash", hash_key=b"k" * 32)
    assert [o["text"] for o in out] == [hashed.mask(text).text, hashed.mask("tel 010-62345678").text]
    assert out[0]["text"].startswith("用户<PHONE:") and secret_mail in out[0]["text"]  # only phones asked for

    r = bertrt("mask", "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl")
    assert r.returncode == 1 and "--force" in r.stderr
    env = {k: v for k, v in __import__("os").environ.items() if k != "BERTRT_MASK_KEY"}
    for args, words in [(("x", "--style", "hash"), "needs a secret key"),
                        (("x", "--types", "EMAIL,PERSON"), "--ner ARTIFACT"),
                        (("--input", tmp_path / "absent.jsonl"), "input file not found")]:
        r = bertrt("mask", *args, env=env)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and words in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0
    r = bertrt("mask", input='{"text": "a"}\n{"question": "who is 13812345678?"}\n')
    assert r.returncode == 1 and "stdin input 2" in r.stderr and "13812345678" not in r.stderr

    ner = tiny_artifact("ner")
    r = bertrt("mask", *TEXTS, "--ner", ner, "--style", "partial")
    assert r.returncode == 0, r.stderr
    want = Masker(style="partial", ner=Runtime(ner, device="cpu", threads=1)).mask_many(TEXTS)
    assert [json.loads(line) for line in r.stdout.splitlines()] == [w.to_dict() for w in want]
