"""Whether a variant's decisions differ from the reference's by more than its precision explains, with the
statistics the sample allows.

Every decision compares scores: classify and relation the labels' log-probabilities, multilabel each label's logit
against its threshold's, ner each word's tag log-probabilities, qa the start + end logit of every candidate span
(``decision_scores``; one score vector per unit of ``decode.decisions``). A decision's *margin* is the reference's
gap between the score it picked and the runner-up, and a variant *moves* that gap by some amount.

A reduced precision moves every gap a little. Its noise scale is measured on the sample itself: sigma =
1.4826 x the median absolute movement (the standard deviation for normal noise, and robust: the few large movements
of the flips under test cannot inflate it). A flip whose reference margin is within ``Z_BUDGET`` sigma is a
*near tie*: that precision can move it, and the flip says nothing about the variant. A flip beyond that budget is
*confident*, and only those count.

The confident-flip rate is then compared with the allowed rate (1 - the gate's agreement floor) by one-sided 95%
Clopper-Pearson bounds: ``pass`` when the upper bound is within the allowed rate, ``fail`` when even the lower bound
exceeds it, and otherwise ``undecided``: the sample is too small to tell (98 texts cannot show a rate below 1%: with
no flip at all the upper bound is 3.0%). An undecided decision gate does not veto a variant; the caller says what
decided instead (the tensor gate, or the task metric on labelled data, the real arbiter).
"""

from __future__ import annotations

import math

import numpy as np

from .decode import MAX_ANSWER_TOKENS, sigmoid, softmax, word_predictions
from .encode import Encoded

Z_BUDGET = 3.0  # noise beyond 3 sigma moves a margin in 0.13% of decisions (one side of a normal)
CONFIDENCE = 0.95  # one-sided, for both bounds
_SIGMA_PER_MAD = 1.4826  # median absolute deviation -> standard deviation, for normal noise


# ------------------------------------------------------------------------------------------------ the scores
def decision_scores(task: str, rows: list[dict], enc: Encoded, options: dict | None = None) -> list[np.ndarray]:
    """One score vector per decision unit of ``decode.decisions`` (same order); each unit decides its argmax.

    ``rows``: the outputs of the input's windows, as ``decode`` takes them; ``options``: the artifact's decoding
    settings (multilabel ``thresholds``)."""
    if task in ("classify", "relation"):
        return [np.log(np.maximum(np.mean([softmax(r["logits"]) for r in rows], axis=0), 1e-300))]
    if task == "multilabel":
        return _applies(np.mean([sigmoid(r["logits"]) for r in rows], axis=0), options)
    if task == "ner":
        logp = [np.log(np.maximum(softmax(r["logits"]), 1e-300)) for r in rows]
        return [np.zeros(1) if pick is None else logp[pick[0]][pick[1]] for pick in word_predictions(rows, enc)]
    if task == "qa":
        return [_span_scores(rows, enc)]
    raise ValueError("embeddings make no discrete decision; compare them by cosine")


def answer_scores(task: str, answer: dict, options: dict | None = None) -> list[np.ndarray] | None:
    """``decision_scores`` read back from a decoded answer where it keeps them (classify and relation: every label's
    probability; multilabel: every label's probability, against its threshold); None for ner and qa, whose answers
    keep only the chosen tags' and span's scores."""
    if task in ("classify", "relation"):
        return [np.log(np.maximum(np.array(list(answer["scores"].values()), np.float64), 1e-300))]
    if task == "multilabel":
        return _applies(np.array(list(answer["scores"].values()), np.float64), options)
    return None


def _applies(p: np.ndarray, options: dict | None) -> list[np.ndarray]:
    """Per label [its logit minus its threshold's logit, 0]: index 0 (the label applies) wins when p >= threshold."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    cut = (options or {}).get("thresholds") or [0.5] * len(p)
    t = np.clip(np.asarray(cut, np.float64), 1e-12, 1 - 1e-12)
    return [np.array([v, 0.0]) for v in np.log(p / (1 - p)) - np.log(t / (1 - t))]


def _span_scores(rows: list[dict], enc: Encoded) -> np.ndarray:
    """Start + end logit of every candidate span of every window (``decode.best_span``'s candidates, -inf for the
    spans it does not allow), concatenated over windows in a fixed order."""
    parts = []
    for r, window in zip(rows, enc.windows):
        ctx = np.array([t for t, s in enumerate(window.sequence_ids) if s == 1], dtype=np.int64)
        if ctx.size == 0:
            continue
        s = np.asarray(r["start_logits"], np.float64)[ctx]
        e = np.asarray(r["end_logits"], np.float64)[ctx]
        score = s[:, None] + e[None, :]
        i, j = np.indices(score.shape)
        score[(j < i) | (j - i >= MAX_ANSWER_TOKENS)] = -np.inf
        parts.append(score.ravel())
    return np.concatenate(parts) if parts else np.zeros(1)


def margin_and_move(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(the reference's margin: its best score minus the runner-up's, how much ``out`` changed that gap); a unit with
    a single finite score has an infinite margin and nothing to move."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    finite = np.isfinite(ref)
    if finite.sum() < 2:
        return math.inf, 0.0
    r = np.where(finite, ref, -np.inf)
    a = int(r.argmax())
    r[a] = -np.inf
    b = int(r.argmax())
    gap = ref[a] - ref[b]
    return float(gap), float(gap - (out[a] - out[b]))


# ------------------------------------------------------------------------------------------------ the statistic
def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to millions of units)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def _solve(f, target: float) -> float:
    """p in [0, 1] with f(p) = target for a decreasing f, by bisection (60 halvings: exact to double precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """One-sided exact bounds (lower, upper) on a binomial rate from ``k`` events in ``n`` trials, each holding with
    probability ``confidence``."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    upper = 1.0 if k >= n else _solve(lambda p: _binom_cdf(k, n, p), alpha)
    lower = 0.0 if k <= 0 else _solve(lambda p: _binom_cdf(k - 1, n, p), 1.0 - alpha)
    return lower, upper


def flip_statistics(flips: list[bool], margins: list[float] | None, moves: list[float] | None,
                    allowed: float) -> dict:
    """The decision gate's numbers and verdict from each unit's flip (variant decided otherwise), the reference's
    margin and the variant's movement of it; ``margins=None``: every flip counts (no scores, e.g. embed, whose
    ties are settled by cosine before). ``allowed``: the confident-flip rate the gate accepts."""
    n = len(flips)
    flips = np.asarray(flips, dtype=bool)
    if margins is None:
        sigma, budget, confident = 0.0, 0.0, flips
    else:
        margins, moves = np.asarray(margins, np.float64), np.abs(np.asarray(moves, np.float64))
        scored = np.isfinite(margins)  # units with one possible decision have nothing to move
        sigma = _SIGMA_PER_MAD * float(np.median(moves[scored])) if scored.any() else 0.0
        budget = Z_BUDGET * sigma
        confident = flips & (margins > budget)
    k = int(confident.sum())
    lower, upper = clopper_pearson(k, n)
    verdict = "pass" if upper <= allowed + 1e-12 else ("fail" if lower > allowed else "undecided")
    return {"units": n, "flips": int(flips.sum()), "confident_flips": k, "near_tie_flips": int(flips.sum()) - k,
            "sigma": sigma, "budget": budget, "allowed": allowed, "lower": lower, "upper": upper,
            "agreement": 1.0 - float(flips.mean()) if n else 1.0, "verdict": verdict}


def describe(stats: dict) -> str:
    """One clause a user can act on: what the flips were, the bound, and the verdict."""
    s = stats
    head = (f"{s['confident_flips']} confident flip(s) of {s['units']} decisions"
            + (f" ({s['near_tie_flips']} more on near ties within margin {s['budget']:.3g})" if s["near_tie_flips"]
               else ""))
    bound = f"95% bounds {100 * s['lower']:.2f}-{100 * s['upper']:.2f}% vs {100 * s['allowed']:.2g}% allowed"
    if s["verdict"] == "undecided":
        return f"{head}; {bound}: too few examples to decide"
    return f"{head}; {bound}: {s['verdict']}"
