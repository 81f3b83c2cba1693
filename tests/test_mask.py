"""Personal-data masking (bertrt.mask): per-type precision and recall on a labelled set with hard negatives, exact
offsets, the partial and hash styles character for character, overlap resolution, and clear errors."""

import hashlib
import hmac
import itertools
import random
from collections import Counter

import pytest

from bertrt.errors import MaskError
from bertrt.mask import PATTERN_TYPES, Finding, Masker, find, load_hash_key, mask
from bertrt.mask.findings import resolve_overlaps

from .mask_corpus import HARD_NEGATIVES, POSITIVES, labelled

KEY = b"0123456789abcdef0123456789abcdef"


def scores() -> dict:
    """type -> (gold, predicted, true positives, precision, recall) over the labelled set; exact spans only."""
    gold, pred, tp = Counter(), Counter(), Counter()
    for text, spans in labelled():
        got = {(f.type, f.start, f.end) for f in find(text)}
        want = set(spans)
        gold.update(t for t, _, _ in want)
        pred.update(t for t, _, _ in got)
        tp.update(t for t, _, _ in got & want)
    return {t: (gold[t], pred[t], tp[t], tp[t] / pred[t] if pred[t] else 0.0, tp[t] / gold[t] if gold[t] else 0.0)
            for t in PATTERN_TYPES}


def test_labelled_set_is_not_trivial():
    items = labelled()
    per_type = Counter(t for _, spans in items for t, _, _ in spans)
    assert all(per_type[t] >= 10 for t in PATTERN_TYPES), per_type
    assert len(HARD_NEGATIVES) >= 30
    assert any(any("\u4e00" <= c <= "\u9fff" for c in s) for sents in POSITIVES.values() for s in sents)


def test_precision_and_recall_per_type():
    table = scores()
    print("\ntype              gold  pred  tp   precision  recall")
    for t, (g, p, tp, precision, recall) in table.items():
        print(f"{t:<16} {g:>5} {p:>5} {tp:>3}   {precision:9.3f}  {recall:6.3f}")
    low = {t: (round(p, 3), round(r, 3)) for t, (_, _, _, p, r) in table.items() if p < 0.95 or r < 0.95}
    assert not low, f"precision/recall under 0.95: {low}"


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negatives_yield_nothing(text):
    assert find(text) == []


def test_offsets_are_exact_in_mixed_text():
    text = "张三的手机13812345678，邮箱zs@example.cn；IP 10.0.0.8，卡 4111-1111-1111-1111。"
    want = [Finding(text.index("138"), text.index("138") + 11, "PHONE"),
            Finding(text.index("zs@"), text.index("zs@") + len("zs@example.cn"), "EMAIL"),
            Finding(text.index("10.0"), text.index("10.0") + 8, "IP"),
            Finding(text.index("4111"), text.index("4111") + 19, "CARD")]
    assert find(text) == want
    result = mask(text)
    assert result.text == "张三的手机<PHONE>，邮箱<EMAIL>；IP <IP>，卡 <CARD>。"
    assert result.found == want and [f.to_dict() for f in want][0] == {"type": "PHONE", "start": 5, "end": 16}
    assert find(text, types=["EMAIL", "IP"]) == [want[1], want[2]]


PARTIAL = [
    ("13812345678", "138****5678"),
    ("138 1234 5678", "138 **** 5678"),
    ("+86 138 1234 5678", "+86 138 **** 5678"),
    ("010-62345678", "010-6***5678"),
    ("+44 20 7946 0958", "+44 20 7*** 0958"),
    ("(212) 555-0123", "(212) ***-0123"),
    ("zhang.san@163.com", "z***@163.com"),
    ("4111 1111 1111 1111", "**** **** **** 1111"),
    ("378282246310005", "***********0005"),
    ("DE89 3704 0044 0532 0130 00", "DE** **** **** **** **30 00"),
    ("192.168.1.20", "192.168.*.*"),
    ("2001:db8:85a3::8a2e:370:7334", "2001:db8:*:*:*:*:*:*"),
    ("11010519491231002X", "110***********002X"),
]


@pytest.mark.parametrize("value,masked", PARTIAL)
def test_partial_style_exactly(value, masked):
    text = f"值：{value} 完"
    assert mask(text, style="partial").text == f"值：{masked} 完"


def test_partial_url_credentials_keep_nothing_of_the_secret():
    assert mask("postgres://admin:s3cretPass@db.example.com/x", style="partial").text == \
        "postgres://***:***@db.example.com/x"
    assert mask("https://token@api.example.com/v1", style="partial").text == "https://***@api.example.com/v1"


def _token(kind, normalised, key=KEY):
    digest = hmac.new(key, kind.encode() + b"\0" + normalised.encode(), hashlib.sha256).hexdigest()
    return f"<{kind}:{digest[:16]}>"


def test_hash_style_exactly_and_stable_across_writings():
    m = Masker(style="hash", hash_key=KEY)
    phone = _token("PHONE", "+8613812345678")
    for writing in ("13812345678", "138 1234 5678", "+86 138-1234-5678", "0086 138 1234 5678"):
        assert m.mask(f"tel {writing}.").text == f"tel {phone}.", writing
    assert m.mask("A.Smith@Example.com").text == _token("EMAIL", "a.smith@example.com")
    assert m.mask("4111-1111-1111-1111").text == _token("CARD", "4111111111111111")
    assert m.mask("11010519491231002x").text == _token("CN_ID", "11010519491231002X")
    assert m.mask("2001:0db8:0000:0000:0000:0000:0000:0001").text == _token("IP", "2001:db8::1")
    other = Masker(style="hash", hash_key=b"another key of 32 bytes........!")
    assert other.mask("13812345678").text != phone  # tokens depend on the key


def test_hash_needs_a_key(tmp_path, monkeypatch):
    with pytest.raises(MaskError, match="needs a secret key"):
        Masker(style="hash")
    monkeypatch.delenv("BERTRT_MASK_KEY", raising=False)
    with pytest.raises(MaskError, match="--hash-key-file or set \\$BERTRT_MASK_KEY"):
        load_hash_key()
    monkeypatch.setenv("BERTRT_MASK_KEY", "short")
    with pytest.raises(MaskError, match="has 5 bytes; use at least 16"):
        load_hash_key()
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert load_hash_key(tmp_path / "key") == KEY
    with pytest.raises(MaskError, match="cannot read the hash key file"):
        load_hash_key(tmp_path / "absent")


def test_overlaps_resolve_by_priority_then_length_then_position():
    f = Finding
    cases = [
        ([f(0, 11, "PHONE"), f(0, 19, "CARD")], [f(0, 19, "CARD")]),
        ([f(9, 21, "URL_CREDENTIALS"), f(15, 35, "EMAIL")], [f(9, 21, "URL_CREDENTIALS")]),
        ([f(0, 5, "PERSON"), f(3, 14, "PHONE"), f(14, 20, "LOCATION")], [f(3, 14, "PHONE"), f(14, 20, "LOCATION")]),
        ([f(0, 4, "PERSON"), f(2, 9, "ORG")], [f(2, 9, "ORG")]),  # same priority: the longer
        ([f(0, 4, "PERSON"), f(2, 6, "LOCATION")], [f(0, 4, "PERSON")]),  # same priority and length: the earlier
        ([f(0, 3, "IP"), f(3, 6, "IP"), f(1, 5, "PERSON")], [f(0, 3, "IP"), f(3, 6, "IP")]),  # touching is fine
    ]
    for given, kept in cases:
        for order in itertools.permutations(given):
            assert resolve_overlaps(list(order)) == kept, (order, kept)


def test_overlap_resolution_on_real_text():
    text = "mysql://root:pw@10.1.2.3/db and ops@example.com"
    assert [(x.type, text[x.start:x.end]) for x in find(text)] == \
        [("URL_CREDENTIALS", "root:pw"), ("IP", "10.1.2.3"), ("EMAIL", "ops@example.com")]
    rng = random.Random(0)
    findings = [Finding(s, s + rng.randint(1, 9), rng.choice(["PHONE", "CARD", "PERSON", "IP"]))
                for s in (rng.randint(0, 200) for _ in range(300))]
    kept = resolve_overlaps(findings)
    assert all(a.end <= b.start for a, b in zip(kept, kept[1:]))  # disjoint and in order
    for x in findings:  # every dropped finding overlaps a kept one that ranks at least as high
        assert x in kept or any(k.start < x.end and x.start < k.end for k in kept)


def test_clear_errors():
    with pytest.raises(MaskError, match="unknown personal-data types \\['PASSPORT'\\]"):
        Masker(["PASSPORT"])
    with pytest.raises(MaskError, match="PERSON are found by an NER model"):
        Masker(["EMAIL", "PERSON"])
    with pytest.raises(MaskError, match="unknown masking style 'blur'"):
        Masker(style="blur")
