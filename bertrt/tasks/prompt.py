"""Cloze prompts: a pattern with one ``[MASK]`` that a text is filled into, and a verbalizer (label -> words).

``{text}`` (and ``{text_pair}`` for pairs) are placed into a pattern such as ``"{text} This article is about
[MASK]."``; a masked-LM reads the mask, and each label's score comes from its words (``bertrt.model.Cloze``). This
module is torch-free: zero-shot classification, few-shot prompt training, the export gates and the runtime of a
prompt artifact all encode prompts here, so they see the same rows.

Encoding: ``[CLS] piece0 text piece1 (pair piece2) [SEP]``, every piece of the pattern kept whole and the texts
cut so that the prompt, and so the mask, always fits ``max_length``: a single text keeps its first tokens; of a
pair, the longer text is cut first (each keeps at least half the room when both are long). A ``[MASK]`` typed inside
a text is read as ``[UNK]``, so the pattern's mask is the only one the model sees.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError, InputError

MASK = "[MASK]"
SLOT = re.compile(r"\{(text|text_pair)\}")


def check_pattern(pattern: str) -> list[str]:
    """The text slots of ``pattern`` in order (``["text"]`` or with ``"text_pair"``), or ``InputError``."""
    if not isinstance(pattern, str) or pattern.count(MASK) != 1 or "{text}" not in pattern:
        raise InputError(f"the prompt pattern {pattern!r} must hold {{text}} and exactly one {MASK}, e.g. "
                         f"'{{text}} This is about {MASK}.'")
    slots = SLOT.findall(pattern)
    if len(set(slots)) != len(slots):
        raise InputError(f"the prompt pattern {pattern!r} places a text twice")
    return slots


def read_verbalizer(path) -> dict[str, list[str]]:
    """Label -> words, from a JSON file ``{"label": "word" | ["word", ...]}`` (at least 2 labels)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verbalizer file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); a verbalizer is {{\"label\": [\"word\", ...]}}") from None
    return check_verbalizer(raw, str(path))


def check_verbalizer(raw, where: str = "the verbalizer") -> dict[str, list[str]]:
    """``raw`` as label -> list of words, or ``DataError`` naming what is wrong."""
    if not isinstance(raw, dict) or len(raw) < 2:
        raise DataError(f"{where}: a verbalizer is a JSON object with at least 2 labels, "
                        "{\"label\": [\"word\", ...]}")
    out = {}
    for label, words in raw.items():
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            raise DataError(f"{where}: label {label!r} needs a word or a non-empty list of words")
        out[str(label)] = list(words)
    return out


def verbalizer_ids(words: dict[str, list[str]], tok, where: str = "the verbalizer") -> list[list[int]]:
    """Each label's words as token ids, in label order; every word must be exactly one known token."""
    unk = tok.token_to_id("[UNK]")
    out = []
    for label, ws in words.items():
        ids = []
        for w in ws:
            enc = tok.encode(w, add_special_tokens=False)
            if len(enc.ids) != 1 or enc.ids[0] == unk:
                raise DataError(f"{where}: word {w!r} (label {label!r}) is {enc.tokens} in this vocabulary; each "
                                "word must be exactly one known token - pick another word")
            ids.append(enc.ids[0])
        out.append(ids)
    return out


def fit(lengths: list[int], room: int) -> list[int]:
    """How many tokens each text keeps so that together they fit ``room``: one text keeps its first ``room``; of
    two, the longer is cut first and each keeps at least half the room when both are long."""
    if len(lengths) == 1:
        return [min(lengths[0], room)]
    a, b = lengths
    ka = min(a, max(room - b, room - room // 2))
    return [ka, min(b, room - ka)]


class PromptEncoder:
    """Encode (text, optional pair) inputs into prompt rows; built by ``TextEncoder(..., prompt=pattern)``, whose
    tokenizer, special ids and exact-prefix shortcut it shares."""

    def __init__(self, encoder, pattern: str):
        self.slots = check_pattern(pattern)
        self.pattern, self.pair = pattern, "text_pair" in self.slots
        tok = encoder._whole
        self.mask_id, self.unk_id = tok.token_to_id(MASK), tok.token_to_id("[UNK]")
        if None in (self.mask_id, self.unk_id, encoder.cls_id, encoder.sep_id):
            raise InputError(f"the tokenizer lacks {MASK}, [UNK], [CLS] or [SEP]; a prompt needs a BERT vocabulary")
        self.pieces = [tok.encode(p, add_special_tokens=False).ids for p in SLOT.split(pattern)[::2]]
        if sum(p.count(self.mask_id) for p in self.pieces) != 1:
            raise InputError(f"the prompt pattern {pattern!r} must tokenize to exactly one {MASK}")
        self.room = encoder.max_length - sum(map(len, self.pieces)) - 2
        if self.room < 1:
            raise InputError(f"the prompt pattern alone is {encoder.max_length - self.room} tokens; raise the max "
                             "length above it")
        self.encoder = encoder

    def encode(self, pairs: list[tuple[str, str | None]]):
        from .encode import Encoded, Window

        for a, b in pairs:
            if (b is not None) != self.pair:
                raise InputError(f"the prompt {self.pattern!r} places a text_pair but the input has none" if self.pair
                                 else f"the input has a text_pair but the prompt {self.pattern!r} has no {{text_pair}}")
        texts = [[a if s == "text" else b for s in self.slots] for a, b in pairs]
        tokens = self._tokens([t for row in texts for t in row])
        out, k = [], 0
        for a, _ in pairs:
            parts = tokens[k:k + len(self.slots)]
            k += len(self.slots)
            keep = fit([len(p) for p in parts], self.room)
            ids = [self.encoder.cls_id] + self.pieces[0]
            for p, n, piece in zip(parts, keep, self.pieces[1:]):
                ids += [self.unk_id if i == self.mask_id else i for i in p[:n]] + piece
            ids.append(self.encoder.sep_id)
            window = Window(ids, [0] * len(ids), [(0, 0)] * len(ids), [None] * len(ids))
            out.append(Encoded([window], a, truncated=any(n < len(p) for p, n in zip(parts, keep))))
        return out

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, at least room + 1 of them (or all): from a whitespace-cut prefix when that
        exactly gives its first tokens (``TextEncoder.from_prefixes``)."""
        encs = self.encoder.from_prefixes(texts, self.encoder._whole, lambda e: len(e.ids) > self.room,
                                          add_special_tokens=False)
        return [e.ids for e in encs]
