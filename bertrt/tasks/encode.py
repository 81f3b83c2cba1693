"""Texts -> model rows: the words of a text, truncation, overlapping windows, padding, length buckets.

One ``TextEncoder`` per (tokenizer, task, max length, stride, long-input mode). What each task gets:

- classify / embed: ``[CLS] text [SEP] (pair [SEP])`` cut at ``max_length`` (``truncated`` says so per input); with
  ``long="chunks"`` a long single text becomes overlapping windows whose outputs ``decode`` pools.
- ner: the text's words are runs of non-space characters, each CJK ideograph a word of its own (``word_spans``),
  the same rule for training labels and for serving; long texts become overlapping windows, never truncated.
- relation: ``[CLS] ... [E1] head [/E1] ... [E2] tail [/E2] ... [SEP]``, the entity markers (special tokens that
  fine-tuning adds) around the two character spans; a long text keeps the window around both spans.
- qa: ``[CLS] question [SEP] context window [SEP]``; a long context becomes windows ``stride`` tokens apart in
  overlap (Hugging Face's ``doc_stride``), exactly as fine-tuning builds them.
- classify with a cloze ``prompt`` pattern: the text filled into the pattern, cut so the mask always fits
  (``bertrt.tasks.prompt``).

Tokenizers are configured once and never mutated afterwards, so one encoder is safe to share between threads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from ..errors import InputError

IGNORE_INDEX = -100  # label of positions that carry no loss (special tokens, later sub-tokens, padding)
PAD_MULTIPLE = 8  # sequence lengths are padded to a multiple of this: fewer distinct shapes, tensor-core friendly
MAX_QUESTION_TOKENS = 64  # qa questions are cut to this many tokens (SQuAD practice)
LONG_MODES = ("truncate", "chunks")
RELATION_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")  # around the head, around the tail
# A long single text is first tokenized from a prefix of max_length x this many characters (English news: 4.7
# characters per token, 5.9 at most over BBC's 2,225 articles); one that falls short retries with PREFIX_GROWTH x more.
PREFIX_CHARS_PER_TOKEN = 6
PREFIX_GROWTH = 4
# Where a prefix may be cut: whitespace to the pre-tokeniser in every normaliser setting. Not str.isspace(), which
# also accepts control characters (\x1c-\x1f) that BERT's clean_text deletes, joining the words around them.
_CUT_AT = frozenset(" \t\n\r")
# CJK ideographs: BERT's normaliser puts spaces around them, so each is a word (the ranges of BERT's _is_chinese_char)
_CJK = ("\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
        "\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f")
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def truncating(tokenizer: Tokenizer, max_length: int, strategy: str = "longest_first") -> Tokenizer:
    """A copy of ``tokenizer`` that truncates to ``max_length`` tokens with ``strategy`` and never pads."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length, strategy=strategy)
    return tok


def default_stride(max_length: int) -> int:
    """Overlap between consecutive windows when none is given: a quarter of the window (128 of 384 in SQuAD)."""
    return max_length // 4


def word_spans(text: str) -> list[tuple[int, int]]:
    """The words of ``text`` as character spans: runs of non-space characters, each CJK ideograph on its own.

    Why not the tokenizer's pre-tokenizer: it also splits at punctuation ("@user" -> "@", "user"), while NER data
    (CoNLL) labels whitespace words; a word is what carries a tag, in training and in serving alike."""
    return [m.span() for m in _WORD.finditer(text)]


def join_words(tokens: list[str], tags: list[str] | None = None) -> tuple[str, list[str] | None]:
    """The text NER data tokens stand for (joined by single spaces) and, with tags, the tag of each of its words
    (``word_spans``); a token the word rule splits further (CJK inside a Latin token) passes its type on as I-."""
    text = " ".join(tokens)
    if tags is None:
        return text, None
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t) + 1
    out, last = [], -1
    for a, _ in word_spans(text):
        k = int(np.searchsorted(starts, a, side="right")) - 1
        out.append(tags[k] if k != last or tags[k] == "O" else "I-" + tags[k][2:])
        last = k
    return text, out


def check_spans(text: str, head, tail) -> str | None:
    """Why ``head`` and ``tail`` are not two valid, disjoint, non-empty [start, end) character spans of ``text``
    (None when they are). Data readers raise it as a ``DataError``, the runtime as an ``InputError``."""
    for name, span in (("head", head), ("tail", tail)):
        if (not isinstance(span, (list, tuple)) or len(span) != 2 or
                not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            return f'"{name}" must be [start, end], two character offsets, not {span!r}'
        if not 0 <= span[0] < span[1] <= len(text):
            return (f'"{name}" {list(span)} is out of range: spans are [start, end) with 0 <= start < end <= '
                    f"{len(text)} (the text's length)")
    if head[0] < tail[1] and tail[0] < head[1]:
        return f"head {list(head)} and tail {list(tail)} overlap; a relation joins two distinct spans"
    for m in RELATION_MARKERS:
        if m in text:
            return f"the text contains {m!r}, a marker reserved for relation extraction; remove it"
    return None


def mark(text: str, head, tail) -> str:
    """``text`` with the entity markers around the two spans, spaced so that each is a word of its own."""
    cuts = [(head[0], 1, RELATION_MARKERS[0]), (head[1], 0, RELATION_MARKERS[1]),
            (tail[0], 1, RELATION_MARKERS[2]), (tail[1], 0, RELATION_MARKERS[3])]  # at one place, closers first
    out, last = [], 0
    for pos, _, m in sorted(cuts):
        out += [text[last:pos], f" {m} "]
        last = pos
    return "".join(out + [text[last:]])


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``size`` items covering ``range(n)``, consecutive ones overlapping by
    ``stride`` items (one empty span when n is 0)."""
    if size <= stride:
        raise InputError(f"a window of {size} tokens must exceed the stride ({stride}); raise max_length or lower "
                         "the stride")
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end >= n:
            return out
        start += size - stride


@dataclass
class Window:
    """One model row: ids and what decoding needs to map its tokens back to characters of ``Encoded.source``."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]  # character offsets into the source (the context for qa); (0, 0) elsewhere
    sequence_ids: list[int | None]  # None for special tokens, 0 first text, 1 second text (the qa context)
    word_starts: list[int | None] = field(default_factory=list)  # ner: the word a token begins, else None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Encoded:
    """One input: its rows (one unless windowed) and the text their offsets point into."""

    windows: list[Window]
    source: str  # the text (classify / ner / embed) or the context (qa)
    truncated: bool = False  # tokens were cut away (never for ner and qa contexts, which are windowed)
    spans: list[tuple[int, int]] = field(default_factory=list)  # ner: the words of ``source``

    def __len__(self) -> int:
        return sum(len(w) for w in self.windows)


class TextEncoder:
    """Encode (first text, optional second text) pairs for one task; see the module docstring."""

    def __init__(self, tokenizer, task: str, max_length: int, stride: int | None = None, long: str = "truncate",
                 prompt: str | None = None):
        if max_length < 3:
            raise InputError(f"max_length {max_length} is too short for [CLS] text [SEP]")
        if long not in LONG_MODES:
            raise InputError(f"long must be one of {', '.join(LONG_MODES)}, not {long!r}")
        base = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_file(str(tokenizer))
        self.task, self.max_length, self.long = task, max_length, long
        self.stride = default_stride(max_length) if stride is None else stride
        self.pad_id = base.token_to_id("[PAD]") if base.token_to_id("[PAD]") is not None else 0
        self.cls_id, self.sep_id = base.token_to_id("[CLS]"), base.token_to_id("[SEP]")
        # qa cuts only the context; when the question alone is too long, both are cut (longest_first)
        self._tok = truncating(base, max_length, "longest_first")
        self._whole = Tokenizer.from_str(base.to_str())
        self._whole.no_padding()
        self._whole.no_truncation()
        self._prefix_chars = max_length * PREFIX_CHARS_PER_TOKEN if _prefix_safe(base) else None
        if (task in ("ner", "qa") or long == "chunks") and (self.cls_id is None or self.sep_id is None):
            raise InputError("the tokenizer has no [CLS] or [SEP] token; windows need a BERT WordPiece vocabulary")
        self.prompt = None
        if prompt is not None:
            if task != "classify" or long != "truncate":
                raise InputError("a cloze prompt reads one [MASK] per input: it is for classify, truncated (not "
                                 f"{task}, long={long})")
            from .prompt import PromptEncoder

            self.prompt = PromptEncoder(self, prompt)

    def encode(self, pairs: list[tuple[str, str | None]]) -> list[Encoded]:
        if not pairs:
            return []
        if self.prompt is not None:
            return self.prompt.encode(pairs)
        if self.task == "qa":
            return self._qa(pairs)
        if self.task == "ner":
            return [self._ner(a) for a, _ in pairs]
        if self.task == "relation":
            return [self._relation(a, spans) for a, spans in pairs]
        single = [i for i, (_, b) in enumerate(pairs) if b is None]
        out: list[Encoded | None] = [None] * len(pairs)
        if self.long == "chunks":
            for i in single:
                out[i] = self._chunks(pairs[i][0])
        else:
            for i, e in zip(single, self._truncated([pairs[i][0] for i in single])):
                out[i] = e
        paired = [i for i, (_, b) in enumerate(pairs) if b is not None]
        for i, e in zip(paired, self._tok.encode_batch([pairs[i] for i in paired]) if paired else []):
            out[i] = _wrap(e, pairs[i][0])
        return out

    # ------------------------------------------------------------------------------------ single texts, truncated
    def _truncated(self, texts: list[str]) -> list[Encoded]:
        encs = self.from_prefixes(texts, self._tok, lambda e: bool(e.overflowing))
        return [_wrap(e, t) for e, t in zip(encs, texts)]

    def from_prefixes(self, texts: list[str], tok: Tokenizer, enough, **options) -> list:
        """``tok``'s encodings of ``texts``, each of the shortest prefix tried for which ``enough(encoding)`` holds
        (``_prefix``: ``max_length`` x ``PREFIX_CHARS_PER_TOKEN`` characters first, ``PREFIX_GROWTH`` x longer on
        each retry), else of the whole text. Exact when ``enough`` says the prefix holds every token kept."""
        n = self._prefix_chars
        cut = [self._prefix(t, n) for t in texts]
        encs = tok.encode_batch(cut, **options) if cut else []
        for i, (e, x, t) in enumerate(zip(encs, cut, texts)):
            m = n
            while x is not t and not enough(e):
                m *= PREFIX_GROWTH
                x = self._prefix(t, m)
                e = encs[i] = tok.encode(x, **options)
        return encs

    @staticmethod
    def _prefix(text: str, n: int | None) -> str:
        """The text up to a whitespace near ``n`` characters (the text itself when short).

        Why it is exact: the BERT normaliser maps each character on its own and the BERT pre-tokeniser splits at
        whitespace, so the tokens of a prefix cut at whitespace are a prefix of the text's tokens. When that
        prefix still overflows ``max_length``, its truncated encoding (ids, offsets, truncation flag) is the full
        text's; ``from_prefixes`` tries a longer prefix otherwise. Tokenizing a 2,200-character BBC article to keep
        its first 128 tokens costs about a third as much this way.
        """
        if n is None or len(text) <= n:
            return text
        cut = n
        while cut > n // 2 and text[cut] not in _CUT_AT:
            cut -= 1
        return text[:cut] if text[cut] in _CUT_AT else text

    # ------------------------------------------------------------------------------------------------- windows
    def _row(self, first: list, second: list | None, source_seq: int) -> Window:
        """[CLS] first [SEP] (second [SEP]) from lists of (id, offset, word start) tokens."""
        toks = [(self.cls_id, (0, 0), None, None)] + [(i, o, 0, w) for i, o, w in first]
        toks.append((self.sep_id, (0, 0), None, None))
        types = [0] * len(toks)
        if second is not None:
            toks += [(i, o, 1, w) for i, o, w in second] + [(self.sep_id, (0, 0), None, None)]
            types += [1] * (len(second) + 1)
        ids, offsets, seqs, words = (list(x) for x in zip(*toks))
        offsets = [o if s == source_seq else (0, 0) for o, s in zip(offsets, seqs)]
        return Window(ids, types, offsets, seqs, words)

    def _chunks(self, text: str) -> Encoded:
        e = self._whole.encode(text, add_special_tokens=False)
        toks = [(i, tuple(o), None) for i, o in zip(e.ids, e.offsets)]
        return Encoded([self._row(toks[s:t], None, 0) for s, t in windows(len(toks), self.max_length - 2,
                                                                          self.stride)], text)

    def _ner(self, text: str) -> Encoded:
        e = self._whole.encode(text, add_special_tokens=False)
        spans = word_spans(text)
        starts = [s for s, _ in spans]
        toks, last = [], None
        for i, (a, b) in zip(e.ids, e.offsets):
            w = int(np.searchsorted(starts, a, side="right")) - 1  # the word holding the token's first character
            begins = w >= 0 and w != last and a < spans[w][1]
            toks.append((i, (a, b), w if begins else None))
            last = w if w >= 0 and a < spans[w][1] else last
        rows = [self._row(toks[s:t], None, 0) for s, t in windows(len(toks), self.max_length - 2, self.stride)]
        return Encoded(rows, text, spans=spans)

    def _relation(self, text: str, spans) -> Encoded:
        """The marked text in one window; a text longer than it keeps the stretch around the two spans."""
        ids = [self._whole.token_to_id(m) for m in RELATION_MARKERS]
        if None in ids:
            raise InputError("the tokenizer lacks the relation markers; a relation model's tokenizer has them "
                             "(bertrt finetune --task relation adds them)")
        e = self._whole.encode(mark(text, *spans), add_special_tokens=False)
        toks = [(i, (0, 0), None) for i in e.ids]
        where = [e.ids.index(i) for i in ids]
        room, n = self.max_length - 2, len(toks)
        start = 0
        if n > room:
            lo, hi = min(where), max(where)
            if max(where[0], where[2]) - min(where[0], where[2]) >= room:
                raise InputError(f"head and tail are {abs(where[2] - where[0])} tokens apart; a window of "
                                 f"{self.max_length} tokens cannot hold both (a model with a longer max length can)")
            spare = room - (hi - lo + 1)
            start = max(0, min(lo - spare // 2, n - room)) if spare >= 0 else min(where[0], where[2])
        return Encoded([self._row(toks[start:start + room], None, 0)], text, truncated=n > room)

    def _qa(self, pairs: list[tuple[str, str | None]]) -> list[Encoded]:
        questions = self._whole.encode_batch([q for q, _ in pairs], add_special_tokens=False)
        contexts = self._whole.encode_batch([c or "" for _, c in pairs], add_special_tokens=False)
        # the question may take what leaves every window at least stride + 1 context tokens
        cap = min(MAX_QUESTION_TOKENS, self.max_length - 4 - self.stride)
        if cap < 1:
            raise InputError(f"max_length {self.max_length} leaves no room for a question beside a stride of "
                             f"{self.stride} tokens; raise max_length or lower the stride")
        out = []
        for (_, context), q, c in zip(pairs, questions, contexts):
            qt = [(i, tuple(o), None) for i, o in zip(q.ids[:cap], q.offsets[:cap])]
            ct = [(i, tuple(o), None) for i, o in zip(c.ids, c.offsets)]
            room = self.max_length - len(qt) - 3
            rows = [self._row(qt, ct[s:t], 1) for s, t in windows(len(ct), room, self.stride)]
            out.append(Encoded(rows, context or "", truncated=len(q.ids) > cap))
        return out


def _wrap(e, text: str) -> Encoded:
    return Encoded([Window(e.ids, e.type_ids, [tuple(o) for o in e.offsets], e.sequence_ids)], text,
                   truncated=len(e.overflowing) > 0)


def _prefix_safe(tok: Tokenizer) -> bool:
    """Whether tokenizing a whitespace-cut prefix gives a prefix of the tokens: true for BERT's normaliser and
    pre-tokeniser with a WordPiece model (every bertrt and BERT tokenizer), not assumed for anything else."""
    spec = json.loads(tok.to_str())
    normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (normalizer.get("type") in (None, "BertNormalizer") and pre.get("type") == "BertPreTokenizer"
            and spec.get("model", {}).get("type") == "WordPiece")


# ------------------------------------------------------------------------------------------------------ padding
def padded_length(n_tokens: int, max_length: int, multiple: int = PAD_MULTIPLE) -> int:
    """The sequence length a batch whose longest row has ``n_tokens`` tokens is padded to."""
    return min(max_length, -(-n_tokens // multiple) * multiple)


def pad_to(rows: list[list[int]], length: int, value: int) -> np.ndarray:
    """(B, length) int64: each row on the left, ``value`` after it. The one padding routine of bertrt."""
    out = np.full((len(rows), length), value, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def pad_rows(ids: list[list[int]], type_ids: list[list[int]], pad_id: int, length: int | None = None) -> dict:
    """The three BERT inputs of right-padded rows (``length`` default: the longest row)."""
    T = max(len(r) for r in ids) if length is None else length
    return {"input_ids": pad_to(ids, T, pad_id), "attention_mask": pad_to([[1] * len(r) for r in ids], T, 0),
            "token_type_ids": pad_to(type_ids, T, 0)}


def plan_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int, max_length: int) -> list[list[int]]:
    """Group row indices into batches of similar length so that padding is small.

    Indices are sorted by length and batches filled greedily while (rows x padded length) stays within
    ``max_batch_tokens`` and rows within ``max_batch_size``; a row longer than the budget gets a batch alone.
    Callers restore the original order from the returned indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        T = padded_length(lengths[i], max_length)  # the longest so far, since lengths ascend
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * T > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
