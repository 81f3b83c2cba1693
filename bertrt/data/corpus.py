"""A pretraining corpus: raw text in, a memory-mapped cache of token ids with document and sentence offsets out.

Inputs are text files, folders of them (``.txt``, ``.text``, ``.md``, ``.jsonl``, ``.json``, found recursively in
sorted order) or JSONL files with a ``text`` field (one document per record). A document is a whole text file, or
a block separated by blank lines (``documents="blank"``); ``"auto"`` picks blank-line blocks when the corpus is a
single text file and whole files otherwise. Each document is split into sentences deterministically: every line
is split after ``.``, ``!`` or ``?`` (plus closing quotes or brackets) when the next word starts with a capital
letter, a digit or an opening quote, and the word before is not a common abbreviation or an initial.

The cache (``ids.bin`` as uint16, or uint32 for vocabularies over 65,535; ``sentences.npy``: offsets into the ids,
``documents.npy``: offsets into the sentences; ``meta.json``) lives under a key made of the tokenizer fingerprint,
the files' paths, sizes and modification times, and the document mode. It is written once, atomically, with
bounded memory (text is read and tokenized in chunks), and reopened instantly by later runs.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..digest import sha256_json
from ..errors import CorpusError

CACHE_FORMAT = 1
TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".json"}
DOCUMENT_MODES = ("auto", "file", "blank")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "fig", "inc",
                 "ltd", "co", "corp", "gen", "gov", "sen", "rep", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
                 "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m"}
_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
_START = re.compile(r"[\"'\u201c\u2018(\[]?[A-Z0-9]")


def split_sentences(text: str) -> list[str]:
    """Split a document into sentences: by line, then after sentence-final punctuation (see the module doc)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        start = 0
        for m in _END.finditer(line):
            if not _START.match(line, m.end()):
                continue
            before = line[start:m.start() + 1].split()
            word = before[-1].rstrip(".").lower() if before else ""
            if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
            out.append(line[start:m.end()].strip())
            start = m.end()
        if line[start:].strip():
            out.append(line[start:].strip())
    return out


def collect_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, sorted, hidden files skipped); every listed file is used as given."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise CorpusError(f"{p} holds no .txt, .md or .jsonl files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"corpus path not found: {p}")
    if not files:
        raise CorpusError("no corpus files given")
    return files


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def iter_documents(files: list[Path], documents: str = "auto") -> Iterator[str]:
    """Yield document texts, one file or blank-line block or JSONL record at a time (bounded memory)."""
    if documents not in DOCUMENT_MODES:
        raise CorpusError(f"documents must be one of {', '.join(DOCUMENT_MODES)}, not {documents!r}")
    if documents == "auto":
        documents = "blank" if sum(not _is_jsonl(f) for f in files) == 1 else "file"
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                if _is_jsonl(f):
                    yield from _jsonl_documents(f, fh)
                elif documents == "file":
                    yield fh.read()
                else:
                    block: list[str] = []
                    for line in fh:
                        if line.strip():
                            block.append(line)
                        elif block:
                            yield "".join(block)
                            block = []
                    if block:
                        yield "".join(block)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{f} is not UTF-8 text ({e}); convert it or leave it out") from None
        except OSError as e:
            raise CorpusError(f"cannot read {f}: {e.strerror}") from None


def _jsonl_documents(path: Path, fh) -> Iterator[str]:
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{n} is not valid JSON ({e.msg}); JSONL corpora need one object per line")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f"{path}:{n} has no string field 'text'; each JSONL record needs one")
        yield record["text"]


def cache_key(files: list[Path], tokenizer_fingerprint: str, documents: str) -> str:
    spec = {"format": CACHE_FORMAT, "tokenizer": tokenizer_fingerprint, "documents": documents,
            "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
    return sha256_json(spec)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BERTRT_CACHE", Path.home() / ".cache" / "bertrt")) / "corpus"


class Corpus:
    """A tokenized corpus, memory-mapped: ``sentence(j)`` and ``document_sentences(d)`` without loading it all."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        try:
            self.meta = json.loads((self.directory / "meta.json").read_text())
            self.sentence_offsets = np.load(self.directory / "sentences.npy", allow_pickle=False)
            self.document_offsets = np.load(self.directory / "documents.npy", allow_pickle=False)
            n_ids = int(self.sentence_offsets[-1])
            self.ids = (np.memmap(self.directory / "ids.bin", dtype=self.meta["dtype"], mode="r", shape=(n_ids,))
                        if n_ids else np.zeros(0, dtype=self.meta["dtype"]))
        except (OSError, ValueError, KeyError) as e:
            raise CorpusError(f"the corpus cache {self.directory} is unreadable ({e}); delete it to rebuild") from None

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_offsets[-1])

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer_fingerprint"]

    def document_sentences(self, d: int) -> range:
        return range(int(self.document_offsets[d]), int(self.document_offsets[d + 1]))

    def sentence(self, j: int) -> np.ndarray:
        return self.ids[self.sentence_offsets[j]:self.sentence_offsets[j + 1]]

    def document_tokens(self, d: int) -> tuple[int, int]:
        """The token range [start, end) of document ``d`` (its sentences are contiguous)."""
        s = self.document_sentences(d)
        return int(self.sentence_offsets[s.start]), int(self.sentence_offsets[s.stop])


def build_corpus(paths: list[str | os.PathLike], tokenizer, cache_dir: str | os.PathLike | None = None,
                 documents: str = "auto", progress: bool = True, chunk_sentences: int = 20000) -> Corpus:
    """Tokenize ``paths`` into the cache (or reuse a matching cache) and open it."""
    from tokenizers import Tokenizer

    from ..tokenizer import fingerprint

    files = collect_files(paths)
    fp = fingerprint(tokenizer)
    key = cache_key(files, fp, documents)
    target = Path(cache_dir or default_cache_dir()) / key[:24]
    if (target / "meta.json").is_file():
        return Corpus(target)
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    sentence_offsets, document_offsets = array("q", [0]), array("q", [0])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="tokenizing corpus")
    with atomic_dir(target, force=True) as tmp, open(tmp / "ids.bin", "wb") as out:
        pending: list[str] = []  # sentences awaiting tokenization
        pending_docs: list[int] = []  # sentences per pending document

        def flush():
            encodings = tok.encode_batch(pending, add_special_tokens=False) if pending else []
            k = 0
            for n in pending_docs:
                kept = 0
                for e in encodings[k:k + n]:
                    if e.ids:
                        np.asarray(e.ids, dtype=dtype).tofile(out)
                        sentence_offsets.append(sentence_offsets[-1] + len(e.ids))
                        kept += 1
                k += n
                if kept:
                    document_offsets.append(document_offsets[-1] + kept)
            pending.clear()
            pending_docs.clear()

        for text in iter_documents(files, documents):
            sentences = split_sentences(text)
            pending += sentences
            pending_docs.append(len(sentences))
            if bar is not None:
                bar.update(len(text.encode("utf-8")))
            if len(pending) >= chunk_sentences:
                flush()
        flush()
        out.flush()
        np.save(tmp / "sentences.npy", np.frombuffer(sentence_offsets, dtype=np.int64))
        np.save(tmp / "documents.npy", np.frombuffer(document_offsets, dtype=np.int64))
        meta = {"format": CACHE_FORMAT, "tokenizer_fingerprint": fp, "dtype": np.dtype(dtype).name,
                "documents_mode": documents, "num_files": len(files), "first_file": str(files[0]),
                "num_documents": len(document_offsets) - 1, "num_sentences": len(sentence_offsets) - 1,
                "num_tokens": int(sentence_offsets[-1])}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if bar is not None:
        bar.close()
    corpus = Corpus(target)
    if corpus.num_tokens == 0:
        raise CorpusError(f"the corpus ({', '.join(map(str, paths))}) contains no text")
    return corpus
