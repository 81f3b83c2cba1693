"""The decision gate decides with the statistics its sample allows (bertrt.tasks.agreement, converters.parity.check):
flips on near ties (margins the precision's measured noise can move) do not count, flips on confident decisions do,
a one-sided 95% Clopper-Pearson bound is held against the allowed rate, and a sample too small to decide says so.
Constructed outputs on real encoded text: every number below is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bertrt.converters import evaldata, parity
from bertrt.converters.config import ParityConfig
from bertrt.tasks import agreement as A
from bertrt.tasks.decode import best_span, decode, ner_tags
from bertrt.tasks.predict import outputs_by_input

from .test_export_fixtures import tiny_tokenizer

LABELS = ["business", "sport", "tech"]


def _tail_le(k: int, n: int, p: float) -> float:  # P(X <= k), exact in rationals' spirit: math.comb
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


def test_clopper_pearson_bounds_are_exact():
    lo, up = A.clopper_pearson(0, 98)
    assert lo == 0.0 and up == pytest.approx(1 - 0.05 ** (1 / 98), rel=1e-9)  # 3.01%: 98 texts cannot show 1%
    lo, up = A.clopper_pearson(400, 400)
    assert up == 1.0 and lo == pytest.approx(0.05 ** (1 / 400), rel=1e-9)
    for k, n in [(3, 98), (12, 400), (1, 30)]:
        lo, up = A.clopper_pearson(k, n)
        assert _tail_le(k, n, up) == pytest.approx(0.05, abs=1e-9)  # P(X <= k | upper) = 5%
        assert 1 - _tail_le(k - 1, n, lo) == pytest.approx(0.05, abs=1e-9)  # P(X >= k | lower) = 5%
        assert lo < k / n < up
    assert A.clopper_pearson(0, 400)[1] == pytest.approx(0.007461, abs=1e-6)  # under 1%: 400 clean texts decide


def _classify_batches(n: int):
    examples = (evaldata.builtin_examples("classify") * 10)[:n]
    return evaldata.encode(examples, tiny_tokenizer(), "classify", 32, 16, labels=LABELS)


def _outputs(batches, margins: np.ndarray, flipped_to: dict[int, float], noise: float = 0.05, seed: int = 0):
    """Reference logits [0, -margin, -5] (label 0 by ``margin``); the variant adds normal noise, and for the inputs
    in ``flipped_to`` sets label 1's logit to the given value above label 0's (a flip)."""
    rng = np.random.default_rng(seed)
    ref, out, i = [], [], 0
    for b in batches:
        B = len(b.rows)
        r = np.stack([np.zeros(B), -margins[i:i + B], np.full(B, -5.0)], 1).astype(np.float32)
        v = r + rng.normal(0, noise, r.shape).astype(np.float32)
        for k in range(B):
            if i + k in flipped_to:
                v[k] = [0.0, flipped_to[i + k], -5.0]
        ref.append({"logits": r})
        out.append({"logits": v})
        i += B
    return ref, out


def _margins(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 5.0, n)  # confident decisions: no noise of 0.05 flips them


def test_flips_on_near_ties_pass_where_plain_agreement_would_refuse():
    n = 400
    batches = _classify_batches(n)
    margins = _margins(n)
    ties = list(range(0, n, 50))  # 8 inputs whose two best labels are 0.02 apart, flipped by 0.05
    margins[ties] = 0.02
    ref, out = _outputs(batches, margins, {i: 0.03 for i in ties})
    report = parity.check("classify", "int8", ref, out, batches, ParityConfig())
    d = report["gates"]["decision"]
    s = d["statistics"]
    assert report["agreement"] == pytest.approx(1 - 8 / n)  # 98%: the old 99% floor would have refused
    assert s["flips"] == 8 and s["near_tie_flips"] == 8 and s["confident_flips"] == 0
    # the budget comes from the measured noise: movement of a gap = difference of two N(0, 0.05) errors
    assert s["sigma"] == pytest.approx(0.05 * math.sqrt(2), rel=0.15) and s["budget"] == pytest.approx(3 * s["sigma"])
    assert d["verdict"] == "pass" and d["value"] == pytest.approx(1 - 0.05 ** (1 / n)) and report["passed"]
    assert report["decided_by"] == "the decision statistic and the tensor gate"


def test_flips_on_confident_decisions_fail():
    n = 400
    batches = _classify_batches(n)
    margins = _margins(n)
    confident = list(range(3, n, 33))  # 13 inputs decided by 1-5 logits, flipped hard
    ref, out = _outputs(batches, margins, {i: 0.5 for i in confident})
    report = parity.check("classify", "int8", ref, out, batches, ParityConfig(int8_min_snr_db=0.0))
    d = report["gates"]["decision"]
    assert d["statistics"]["confident_flips"] == 13 and d["statistics"]["near_tie_flips"] == 0
    assert d["statistics"]["lower"] > 0.01 and d["verdict"] == "fail"  # even the lower bound is above 1%
    assert report["gates"]["tensor"]["passed"] and not report["passed"]
    assert report["decided_by"] == "refused by decision"
    assert "decision" in parity.failures(report) and "13 confident flip(s) of 400 decisions" in d["detail"]


def test_a_sample_too_small_to_decide_says_so_and_defers_to_the_tensor_gate():
    n = 98
    batches = _classify_batches(n)
    ref, out = _outputs(batches, _margins(n), {})
    report = parity.check("classify", "int8", ref, out, batches, ParityConfig())
    d = report["gates"]["decision"]
    assert d["statistics"]["flips"] == 0 and d["verdict"] == "undecided"  # upper bound 3.01% > 1%
    assert d["passed"] and report["passed"]  # no evidence against the variant: no veto
    assert d["detail"].endswith("95% bounds 0.00-3.01% vs 1% allowed: too few examples to decide")
    assert report["decided_by"].startswith("the tensor gate (too few decisions to decide")
    assert "decision 0.03011 undecided" in parity.format_gates(report)
    # and three confident flips in 98 are still not enough evidence either way (the lower bound is 0.83%)
    ref, out = _outputs(batches, _margins(n), {5: 0.5, 40: 0.5, 77: 0.5})
    d = parity.check("classify", "int8", ref, out, batches, ParityConfig(int8_min_snr_db=0.0))["gates"]["decision"]
    assert d["statistics"]["confident_flips"] == 3 and d["verdict"] == "undecided"


def test_fp32_still_needs_every_decision():
    batches = _classify_batches(98)
    margins = _margins(98)
    margins[10] = 1e-6
    ref, out = _outputs(batches, margins, {10: 1e-6}, noise=0.0)
    report = parity.check("classify", "fp32", ref, out, batches, ParityConfig())
    assert report["gates"]["decision"] == {"passed": False, "value": pytest.approx(97 / 98),
                                           "rule": "agreement >= 100.00%"}


@pytest.mark.parametrize("task", ["classify", "multilabel", "ner", "qa"])
def test_decision_scores_decide_exactly_as_decode(task):
    """Each unit's score vector picks what ``decode`` picks, so margins describe the decisions that are compared."""
    rng = np.random.default_rng(3)
    labels = {"classify": LABELS, "multilabel": LABELS, "ner": ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"],
              "qa": []}[task]
    options = {"thresholds": [0.3, 0.5, 0.7]} if task == "multilabel" else None
    batches = evaldata.encode(evaldata.builtin_examples(task)[:40], tiny_tokenizer(), task, 32, 8,
                              labels=labels, stride=8 if task in ("ner", "qa") else None, options=options)
    encs = batches[0].data.encs
    if task in ("ner", "qa"):
        assert sum(len(e.windows) > 1 for e in encs) >= 3  # several windows per input are merged too
    outs = []
    for b in batches:
        B, T = b.feeds["input_ids"].shape
        if task == "qa":
            outs.append({"start_logits": rng.normal(size=(B, T)), "end_logits": rng.normal(size=(B, T))})
        else:
            outs.append({"logits": rng.normal(size=(B, T, len(labels)) if task == "ner" else (B, len(labels)))})
    per_input = outputs_by_input(task, encs, [(b.rows, b.feeds) for b in batches], outs)
    units = 0
    for rows, enc in zip(per_input, encs):
        scores = A.decision_scores(task, rows, enc, options)
        got = decode(task, rows, enc, labels, options)
        if task == "classify":
            assert [labels[int(s.argmax())] for s in scores] == [got["label"]]
        elif task == "multilabel":
            assert [bool(s.argmax() == 0) for s in scores] == [x in got["labels"] for x in labels]
        elif task == "ner":
            assert [labels[int(s.argmax())] if len(s) > 1 else "O" for s in scores] == ner_tags(rows, enc, labels)[0]
        else:
            best = max(best_span(r["start_logits"], r["end_logits"],
                                 np.array([t for t, q in enumerate(w.sequence_ids) if q == 1]))[2]
                       for r, w in zip(rows, enc.windows))
            assert len(scores) == 1 and scores[0].max() == pytest.approx(best)
        for s in scores:
            m, moved = A.margin_and_move(s, s)
            assert moved == 0.0 and (m >= 0.0 or math.isinf(m))
            units += 1
    assert units >= len(encs) >= 30


def test_the_bench_gate_applies_the_same_statistic_to_answers():
    """bertrt bench on a quantized artifact: margins come from the probabilities the answers keep."""
    from bertrt.bench import gate as G

    rng = np.random.default_rng(5)

    def answer(p):
        return {"label": LABELS[int(np.argmax(p))], "scores": dict(zip(LABELS, map(float, p)))}

    n = 400
    logits = np.stack([np.zeros(n), -rng.uniform(1, 5, n), np.full(n, -5.0)], 1)
    ties = list(range(0, n, 50))
    logits[ties, 1] = -0.02
    out = logits + rng.normal(0, 0.05, logits.shape)
    out[ties] = [0.0, 0.03, -5.0]  # 8 near-tie flips: 98% agreement
    softmax = lambda x: np.exp(x) / np.exp(x).sum()  # noqa: E731
    reference = [answer(softmax(x)) for x in logits]
    w = G.Workload("w", "classify", ["t"] * n, [a["label"] for a in reference])
    gate = G.Gate.for_manifest({"precision": "int8-dynamic", "parity": {"config": {"min_agreement": 0.99}}},
                               max_drop=100.0)  # gold = the reference: this case is about decisions alone
    near = G.check([answer(softmax(x)) for x in out], reference, w, gate)
    assert near["agreement"] == 0.98 and near["gate"]["passed"]
    assert near["gate"]["decision"]["near_tie_flips"] == 8 and near["gate"]["decision"]["verdict"] == "pass"
    out[[i for i in range(3, n, 33) if i not in ties]] = [0.0, 0.5, -5.0]  # 12 confident flips on top
    far = G.check([answer(softmax(x)) for x in out], reference, w, gate)
    assert not far["gate"]["passed"] and far["gate"]["decision"]["confident_flips"] == 12
    assert far["gate"]["problems"][0].startswith("decisions: 12 confident flip(s) of 400 decisions (8 more on near")
    # fp32 stays exact: one near-tie flip refuses it
    fp32 = G.check([answer(softmax(x)) for x in out], reference, w,
                   G.Gate.for_manifest({"precision": "fp32"}, max_drop=100.0))
    assert not fp32["gate"]["passed"] and "agreement" in fp32["gate"]["problems"][0]
