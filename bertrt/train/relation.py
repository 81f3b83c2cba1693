"""Relation extraction's training-side setup: the entity marker tokens join the vocabulary, the model learns them.

The markers (``bertrt.tasks.encode.RELATION_MARKERS``) are added to the tokenizer as special tokens, so text never
splits them and the runtime's tokenizer.json carries them; the word embeddings grow by as many rows, started at the
mean of the existing rows (a neutral token, not noise). The model reads the marked spans (``Bert.marked``): the
markers' ids go into the config.
"""

from __future__ import annotations

import torch

from ..tasks.encode import RELATION_MARKERS


def add_markers(model, tokenizer) -> None:
    """Give ``tokenizer`` the marker tokens and ``model`` their embeddings and ids (in place; idempotent)."""
    from tokenizers import AddedToken

    missing = [m for m in RELATION_MARKERS if tokenizer.token_to_id(m) is None]
    if missing:
        tokenizer.add_special_tokens([AddedToken(m, single_word=False, normalized=False) for m in missing])
    emb = model.bert.embeddings.word_embeddings
    need = max(tokenizer.token_to_id(m) for m in RELATION_MARKERS) + 1
    if need > emb.num_embeddings:
        grown = torch.nn.Embedding(need, emb.embedding_dim, dtype=emb.weight.dtype, device=emb.weight.device)
        with torch.no_grad():
            grown.weight[:emb.num_embeddings] = emb.weight
            grown.weight[emb.num_embeddings:] = emb.weight.mean(0)
        model.bert.embeddings.word_embeddings = grown
        model.config.vocab_size = need
    model.config.markers = [tokenizer.token_to_id(m) for m in RELATION_MARKERS]
