"""WordPiece tokenizers: train, load, save, fingerprint (on the ``tokenizers`` library; no torch).

The pipeline is BERT's: clean text, split CJK characters one per token, optional lowercasing with accent stripping,
split on whitespace and punctuation, WordPiece with ``##`` continuations, then ``[CLS] A [SEP] (B [SEP])`` with
segment ids 0/1.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm.auto import tqdm

from .digest import sha256_json
from .errors import TokenizerError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _build(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None = None) -> Tokenizer:
    for t in SPECIAL_TOKENS:
        if t not in vocab:
            raise TokenizerError(f"the vocabulary has no {t} token; a BERT tokenizer needs all of {SPECIAL_TOKENS}")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def train_tokenizer(files: list[str | os.PathLike], vocab_size: int = 30522, lowercase: bool = True,
                    min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """Train a BERT WordPiece tokenizer on UTF-8 text files; the same files always give the same vocabulary.

    Words are counted with the tokenizer's own normaliser and pre-tokeniser, then pieces are merged greedily by
    frequency, as the ``tokenizers`` WordPiece trainer does, but with ties broken by the pieces' text. (That
    trainer breaks ties in hash order, so identical runs give different vocabularies, which would change every id
    and fingerprint downstream.)
    """
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise TokenizerError(f"training file not found: {f}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise TokenizerError(f"--vocab-size {vocab_size} is too small; it must leave room beyond the special tokens")
    probe = _build({t: i for i, t in enumerate(SPECIAL_TOKENS)}, lowercase)
    counts: Counter[str] = Counter()
    for f in tqdm(files, desc="counting words", unit="file", disable=not show_progress or len(files) < 20):
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                text = probe.normalizer.normalize_str(line)
                counts.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(text))
    if not counts:
        raise TokenizerError(f"the training files ({', '.join(map(str, files))}) contain no text")
    pieces = learn_wordpieces(counts, vocab_size - len(SPECIAL_TOKENS), min_frequency, show_progress)
    return _build({t: i for i, t in enumerate(SPECIAL_TOKENS + pieces)}, lowercase)


def learn_wordpieces(counts: Counter[str], size: int, min_frequency: int, show_progress: bool = False) -> list[str]:
    """Greedy pair merging over word counts; returns the alphabet, then merged pieces in the order learned."""
    words = [[w[0]] + ["##" + c for c in w[1:]] for w in counts]
    freqs = list(counts.values())
    alphabet = sorted({p for w in words for p in w}, key=lambda p: (p.startswith("##"), p))
    vocab, known = list(alphabet), set(alphabet)
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    bar = tqdm(total=max(size - len(vocab), 0), desc="learning pieces", disable=not show_progress)
    while len(vocab) < size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale heap entry: the count changed since it was pushed
        if -neg < min_frequency:
            break
        a, b = pair
        merged = a + b[2:]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
            bar.update(1)
        changed: set[tuple[str, str]] = set()
        for i in where.pop(pair, ()):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(i)
                changed.add(p)
        pair_counts.pop(pair, None)
        for p in changed:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_counts.pop(p, None)
    bar.close()
    return vocab


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load ``tokenizer.json`` or ``vocab.txt`` from a file or a directory (a checkpoint, artifact or HF folder).

    The result neither pads nor truncates, whatever the file says.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise TokenizerError(f"{path} has neither tokenizer.json nor vocab.txt")
    if not path.is_file():
        raise TokenizerError(f"tokenizer not found: {path}")
    if path.suffix == ".json":
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise TokenizerError(f"{path} is not a valid tokenizer.json: {e}") from None
        tok.no_padding()  # padding and truncation are chosen by whoever encodes, not inherited from the file
        tok.no_truncation()
        return tok
    lines = path.read_text(encoding="utf-8").splitlines()
    vocab = {tok: i for i, tok in enumerate(line.rstrip("\n") for line in lines)}
    lowercase, strip_accents = True, None
    cfg_path = path.parent / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        lowercase = cfg.get("do_lower_case", True)
        strip_accents = cfg.get("strip_accents")
    return _build(vocab, lowercase, strip_accents)


def fingerprint(tok: Tokenizer) -> str:
    """sha256 of everything that decides token ids: vocabulary, normalisation, pre-tokenisation, model, template.

    Truncation and padding settings are runtime choices and excluded, so they do not change the fingerprint.
    """
    spec = json.loads(tok.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return sha256_json(spec)


def is_lowercase(tok: Tokenizer) -> bool:
    spec = json.loads(tok.to_str()).get("normalizer") or {}
    return bool(spec.get("lowercase", False))


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike, max_length: int = 512) -> str:
    """Write ``tokenizer.json``, ``vocab.txt`` and a ``tokenizer_config.json`` that transformers understands.

    Returns the fingerprint, which is also recorded in ``tokenizer_config.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(tok.to_str())  # a copy, so clearing padding/truncation does not touch the caller's
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(directory / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (directory / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    fp = fingerprint(tok)
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": is_lowercase(tok), "model_max_length": max_length,
              "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
              "mask_token": "[MASK]", "tokenize_chinese_chars": True, "bertrt_fingerprint": fp}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return fp
