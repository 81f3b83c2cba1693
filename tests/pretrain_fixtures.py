"""Tiny synthetic corpora and tokenizers for the pretraining tests (no real data, seconds to build)."""

import random
from pathlib import Path

from tokenizers import Tokenizer, models

from bertrt.tokenizer import train_tokenizer

WORDS = ("the market rose sharply as investors bought shares in banks while the league match ended with a late "
         "goal from the young striker and the minister said parliament would vote on the new law next week "
         "unbelievably extraordinary internationalisation").split()


def write_corpus(root: Path, n_docs: int = 12, seed: int = 0) -> list[Path]:
    """Files doc00.txt ... with 4-12 sentences each, one sentence per line, every sentence ending in a period."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for d in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 12)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        f = root / f"doc{d:02d}.txt"
        f.write_text("\n".join(sentences) + "\n")
        files.append(f)
    return files


def tokenizer_for(files, vocab_size: int = 120):
    return train_tokenizer(files, vocab_size=vocab_size, show_progress=False)


def handmade_tokenizer() -> Tokenizer:
    """WordPiece over a fixed vocabulary: ids 0-4 specials, then words and ``##`` continuation pieces."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "cat", "dog", "run", "##ning",
             "a", "b", "c", "d", "e", "f", "g", "##s"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.add_special_tokens(vocab[:5])
    return tok
