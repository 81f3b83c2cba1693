"""Corpus reading, sentence splitting and the memory-mapped token cache."""

import json

import numpy as np
import pytest

from bertrt.data.corpus import Corpus, build_corpus, collect_files, iter_documents, split_sentences
from bertrt.errors import CorpusError
from .pretrain_fixtures import tokenizer_for, write_corpus


def test_sentence_splitting_is_deterministic_and_careful():
    text = ('Mr. Smith went to Washington. He said "Hi!" Then he left. The U.S. economy grew 3.5% in 2004.\n'
            "J. R. R. Tolkien wrote it? Yes. lower case after a period. stays together")
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.", 'He said "Hi!"', "Then he left.", "The U.S. economy grew 3.5% in 2004.",
        "J. R. R. Tolkien wrote it?", "Yes. lower case after a period. stays together"]


def test_documents_by_file_by_blank_line_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("One. Two.\n\nThree.\n")
    (tmp_path / "b.txt").write_text("Four.\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "Five. Six."}) + "\n\n" + json.dumps({"text": "Seven."}))
    (tmp_path / ".hidden.txt").write_text("never read")
    files = collect_files([tmp_path])
    assert [f.name for f in files] == ["a.txt", "b.txt", "c.jsonl"]
    assert list(iter_documents(files, "file")) == ["One. Two.\n\nThree.\n", "Four.\n", "Five. Six.", "Seven."]
    assert list(iter_documents(files[:1], "auto")) == ["One. Two.\n", "Three.\n"]  # one text file: blank lines
    assert len(list(iter_documents(files, "auto"))) == 4  # several files: each is a document
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2 has no string field 'text'"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(CorpusError, match="not found"):
        collect_files([tmp_path / "missing"])


def test_cache_holds_exact_ids_and_offsets_and_is_reused(tmp_path):
    files = write_corpus(tmp_path / "text", n_docs=5)
    tok = tokenizer_for(files)
    corpus = build_corpus(files, tok, tmp_path / "cache", progress=False)
    assert corpus.ids.dtype == np.uint16 and isinstance(corpus.ids, np.memmap)
    assert corpus.num_documents == 5
    j = 0
    for d, f in enumerate(files):
        lines = f.read_text().splitlines()
        assert len(corpus.document_sentences(d)) == len(lines)
        for line in lines:
            assert corpus.sentence(j).tolist() == tok.encode(line, add_special_tokens=False).ids
            j += 1
    assert j == corpus.num_sentences
    # a second build opens the same cache without tokenizing again
    meta = corpus.directory / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = build_corpus(files, tok, tmp_path / "cache", progress=False)
    assert again.directory == corpus.directory and meta.stat().st_mtime_ns == stamp
    # another tokenizer, or a changed file, is another cache
    other = build_corpus(files, tokenizer_for(files, vocab_size=100), tmp_path / "cache", progress=False)
    assert other.directory != corpus.directory
    files[0].write_text("Changed text here.\n")
    assert build_corpus(files, tok, tmp_path / "cache", progress=False).directory != corpus.directory


def test_empty_corpus_and_broken_cache_are_refused(tmp_path):
    files = write_corpus(tmp_path / "text", n_docs=2)
    tok = tokenizer_for(files)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="contains no text"):
        build_corpus([tmp_path / "empty.txt"], tok, tmp_path / "cache", progress=False)
    corpus = build_corpus(files, tok, tmp_path / "cache", progress=False)
    (corpus.directory / "sentences.npy").write_bytes(b"garbage")
    with pytest.raises(CorpusError, match="delete it to rebuild"):
        Corpus(corpus.directory)
