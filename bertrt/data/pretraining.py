"""Pretraining examples as in the BERT paper: segment pairs with next-sentence labels, and masked tokens.

An example is two token spans of the corpus: ``[CLS] A [SEP] B [SEP]`` with segment ids 0 for ``[CLS] A [SEP]`` and
1 for ``B [SEP]``. Per document, consecutive sentences are gathered until they reach a target length (``seq_len - 3``
tokens; with probability ``short_seq_prob`` a random shorter target, so the model also sees short inputs); a random
number of the leading sentences becomes A. With probability 1/2 B is the rest of the chunk - the true
continuation, label IsNext (0) - otherwise B is a run of sentences from a random other document (NotNext, 1) and the
unused sentences go back to be used by the next example. An over-long pair loses tokens from the front of A or the
back of B (the longer first), so the A|B junction stays the real one. Without NSP (``nsp=False``) an example is one
segment ``[CLS] S [SEP]`` packed with as many full consecutive sentences of one document as fit.

Examples are laid out again each epoch (seeded by (seed, epoch)), shuffled, batched, and masked *fresh each
epoch*: ``mlm_prob`` of the non-special tokens of each sequence are chosen (``round(mlm_prob * n)``, at least one),
of which 80% become ``[MASK]``, 10% a random non-special token and 10% stay unchanged. Special tokens are never
chosen. With ``whole_word=True`` a word (a piece and the ``##`` continuation pieces after it) is chosen or left
whole. Every batch is a function of (seed, epoch, batch index) alone, so resuming jumps to a batch directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CorpusError
from .corpus import Corpus

IS_NEXT, NOT_NEXT = 0, 1


@dataclass
class ExampleConfig:
    seq_len: int = 128
    short_seq_prob: float = 0.1
    nsp: bool = True
    mlm_prob: float = 0.15
    whole_word: bool = False

    def __post_init__(self):
        if self.seq_len < 8:
            raise CorpusError(f"--seq-len must be at least 8, got {self.seq_len}")
        if not 0 < self.mlm_prob < 1:
            raise CorpusError(f"--mlm-prob must be in (0, 1), got {self.mlm_prob}")


def split_documents(num_documents: int, eval_fraction: float, seed: int = 0,
                    min_eval: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Held-out documents: a fixed random ``eval_fraction`` of them (at least ``min_eval`` when > 0)."""
    order = np.random.default_rng([seed, 12345]).permutation(num_documents)
    n_eval = 0 if eval_fraction <= 0 else max(min_eval, int(round(eval_fraction * num_documents)))
    if n_eval and n_eval >= num_documents - 1:
        raise CorpusError(f"the corpus has {num_documents} documents: too few to hold {n_eval} out for evaluation "
                          "and still train; give more text, split by blank lines (--documents blank) or use "
                          "--eval-fraction 0")
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def _truncate(a0, a1, b0, b1, max_tokens):
    """Shorten a pair to ``max_tokens``: the longer side first, A from its front, B from its back."""
    la, lb = a1 - a0, b1 - b0
    excess = la + lb - max_tokens
    if excess <= 0:
        return a0, a1, b0, b1
    d = min(excess, abs(la - lb))
    if la > lb:
        a0 += d
    else:
        b1 -= d
    excess -= d
    a0 += (excess + 1) // 2
    b1 -= excess // 2
    return a0, a1, b0, b1


def build_pairs(corpus: Corpus, docs: np.ndarray, cfg: ExampleConfig, rng: np.random.Generator) -> np.ndarray:
    """NSP examples as rows ``(a_start, a_end, b_start, b_end, label)`` of token offsets into the corpus."""
    if len(docs) < 2:
        raise CorpusError(f"next-sentence prediction needs at least 2 documents, the corpus split has {len(docs)}; "
                          "add text, split documents by blank lines (--documents blank), or use --no-nsp")
    offs = corpus.sentence_offsets
    max_tokens = cfg.seq_len - 3
    rows = []
    for pos, d in enumerate(docs):
        sents = corpus.document_sentences(int(d))
        first, last = sents.start, sents.stop
        target = max_tokens if rng.random() >= cfg.short_seq_prob else int(rng.integers(2, max_tokens + 1))
        i, chunk_start = first, first
        while i < last:
            if offs[i + 1] - offs[chunk_start] < target and i + 1 < last:
                i += 1
                continue
            chunk_end = i + 1  # sentences [chunk_start, chunk_end)
            n = chunk_end - chunk_start
            a_sents = 1 if n == 1 else int(rng.integers(1, n))
            a0, a1 = int(offs[chunk_start]), int(offs[chunk_start + a_sents])
            next_i = chunk_end
            if rng.random() < 0.5:  # IsNext: the true continuation
                if n > 1:
                    b0, b1 = a1, int(offs[chunk_end])
                elif chunk_end < last:  # a one-sentence chunk: B is the following sentence
                    next_i = chunk_end + 1
                    b0, b1 = int(offs[chunk_end]), int(offs[chunk_end + 1])
                elif chunk_start > first:  # the document's last sentence alone: pair it with the one before
                    a0, a1, b0, b1 = int(offs[chunk_start - 1]), int(offs[chunk_start]), int(offs[chunk_start]), \
                        int(offs[chunk_end])
                else:  # a one-sentence document has no continuation at all: skip it, keeping labels 50/50
                    break
                label = IS_NEXT
            else:  # NotNext: B from a random other document
                other = int(docs[(pos + 1 + int(rng.integers(0, len(docs) - 1))) % len(docs)])
                o = corpus.document_sentences(other)
                j = int(rng.integers(o.start, o.stop))
                b0, k = int(offs[j]), j + 1
                while k < o.stop and offs[k] - b0 < max(1, target - (a1 - a0)):
                    k += 1
                b1, label = int(offs[k]), NOT_NEXT
                next_i = chunk_start + a_sents  # the unused sentences of the chunk start the next example
            rows.append((*_truncate(a0, a1, b0, b1, max_tokens), label))
            i = chunk_start = next_i
            target = max_tokens if rng.random() >= cfg.short_seq_prob else int(rng.integers(2, max_tokens + 1))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def build_packed(corpus: Corpus, docs: np.ndarray, cfg: ExampleConfig, rng: np.random.Generator) -> np.ndarray:
    """MLM-only examples ``(start, end, 0, 0, -1)``: full consecutive sentences of one document, packed to fit."""
    offs = corpus.sentence_offsets
    max_tokens = cfg.seq_len - 2
    rows = []
    for d in docs:
        sents = corpus.document_sentences(int(d))
        target = max_tokens if rng.random() >= cfg.short_seq_prob else int(rng.integers(2, max_tokens + 1))
        start = int(offs[sents.start])
        for j in sents:
            end = int(offs[j + 1])
            if end - start > target and int(offs[j]) > start:  # sentence j does not fit: close before it
                rows.append((start, int(offs[j]), 0, 0, -1))
                start = int(offs[j])
                target = max_tokens if rng.random() >= cfg.short_seq_prob else int(rng.integers(2, max_tokens + 1))
            while end - start > target:  # one sentence longer than the target: cut it into pieces
                rows.append((start, start + target, 0, 0, -1))
                start += target
        if int(offs[sents.stop]) > start:
            rows.append((start, int(offs[sents.stop]), 0, 0, -1))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


class Masker:
    """Choose and corrupt MLM positions (see the module doc); vocabulary facts come from the tokenizer."""

    def __init__(self, tokenizer, mlm_prob: float = 0.15, whole_word: bool = False):
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        self.special = np.zeros(size, dtype=bool)
        for t in tokenizer.get_added_tokens_decoder().values():
            if t.special and t.content in vocab:
                self.special[vocab[t.content]] = True
        for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
            if t in vocab:
                self.special[vocab[t]] = True
        prefix = getattr(tokenizer.model, "continuing_subword_prefix", "##") or "##"
        self.continuation = np.zeros(size, dtype=bool)
        for t, i in vocab.items():
            self.continuation[i] = t.startswith(prefix) and len(t) > len(prefix)
        self.mask_id, self.cls_id, self.sep_id, self.pad_id = (vocab["[MASK]"], vocab["[CLS]"], vocab["[SEP]"],
                                                               vocab["[PAD]"])
        self.normal_ids = np.flatnonzero(~self.special)
        self.mlm_prob, self.whole_word = mlm_prob, whole_word

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids (B, T) -> (corrupted ids, chosen (B, T) bool, labels (N,) = original ids at chosen, row-major)."""
        candidate = ~self.special[ids]  # (B, T)
        if self.whole_word:
            chosen = self._choose_words(ids, candidate, rng)
        else:
            n = np.maximum(1, np.rint(self.mlm_prob * candidate.sum(1))).astype(np.int64)  # (B,)
            n = np.minimum(n, candidate.sum(1))
            scores = np.where(candidate, rng.random(ids.shape), 2.0)
            rank = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
            chosen = rank < n[:, None]
        labels = ids[chosen]
        r = rng.random(labels.shape[0])
        corrupted = np.where(r < 0.8, self.mask_id, labels)
        swap = (r >= 0.8) & (r < 0.9)
        corrupted[swap] = self.normal_ids[rng.integers(0, len(self.normal_ids), int(swap.sum()))]
        out = ids.copy()
        out[chosen] = corrupted
        return out, chosen, labels

    def _choose_words(self, ids, candidate, rng):
        chosen = np.zeros(ids.shape, dtype=bool)
        for b in range(ids.shape[0]):
            pos = np.flatnonzero(candidate[b])
            if len(pos) == 0:
                continue
            # a word starts at a non-"##" piece, or at any piece that follows a special token
            prev_candidate = np.concatenate([[False], candidate[b, :-1]])[pos]
            starts = ~self.continuation[ids[b, pos]] | ~prev_candidate
            word = np.cumsum(starts) - 1  # word index of each candidate position
            sizes = np.bincount(word)
            n = max(1, int(round(self.mlm_prob * len(pos))))
            order = rng.permutation(len(sizes))
            taken = np.cumsum(sizes[order]) <= n  # words in random order while they fit (at least the first)
            taken[0] = True
            pick = np.zeros(len(sizes), dtype=bool)
            pick[order[taken]] = True
            chosen[b, pos[pick[word]]] = True
        return chosen


class PretrainBatches:
    """``epoch -> batches`` for ``bertrt.train.loop.train``: laid out, shuffled and masked by (seed, epoch)."""

    def __init__(self, corpus: Corpus, docs: np.ndarray, masker: Masker, cfg: ExampleConfig, batch_size: int,
                 seed: int = 0):
        self.corpus, self.docs, self.masker, self.cfg = corpus, docs, masker, cfg
        self.batch_size, self.seed = batch_size, seed

    def examples(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 1])
        build = build_pairs if self.cfg.nsp else build_packed
        rows = build(self.corpus, self.docs, self.cfg, rng)
        return rows[rng.permutation(len(rows))]

    def __call__(self, epoch: int) -> "_EpochBatches":
        return _EpochBatches(self, self.examples(epoch), epoch)


class _EpochBatches:
    def __init__(self, parent: PretrainBatches, rows: np.ndarray, epoch: int):
        self.parent, self.rows, self.epoch = parent, rows, epoch

    def __len__(self):
        return -(-len(self.rows) // self.parent.batch_size)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        p = self.parent
        rows = self.rows[i * p.batch_size:(i + 1) * p.batch_size]
        return collate(p.corpus, rows, p.masker, np.random.default_rng([p.seed, self.epoch, i, 2]))


def collate(corpus: Corpus, rows: np.ndarray, masker: Masker, rng: np.random.Generator) -> dict:
    """Rows of spans -> a padded batch (to the longest row) with masked ids, MLM labels and NSP labels."""
    nsp = rows[0, 4] >= 0
    lengths = rows[:, 1] - rows[:, 0] + rows[:, 3] - rows[:, 2] + (3 if nsp else 2)
    B, T = len(rows), int(lengths.max())
    ids = np.full((B, T), masker.pad_id, dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64)
    for r, (a0, a1, b0, b1, _) in enumerate(rows):
        la, lb = a1 - a0, b1 - b0
        ids[r, 0] = masker.cls_id
        ids[r, 1:1 + la] = corpus.ids[a0:a1]
        ids[r, 1 + la] = masker.sep_id
        if nsp:
            ids[r, 2 + la:2 + la + lb] = corpus.ids[b0:b1]
            ids[r, 2 + la + lb] = masker.sep_id
            types[r, 2 + la:3 + la + lb] = 1
    attention = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    masked, chosen, labels = masker(ids, rng)
    batch = {"input_ids": torch.from_numpy(masked), "token_type_ids": torch.from_numpy(types),
             "attention_mask": torch.from_numpy(attention), "mlm_positions": torch.from_numpy(chosen),
             "mlm_labels": torch.from_numpy(labels.astype(np.int64))}
    if nsp:
        batch["nsp_labels"] = torch.from_numpy(rows[:, 4].copy())
    return batch


def pretrain_loss(model, batch: dict) -> dict:
    """``{"mlm": (sum over masked tokens, count), "nsp": (sum over sequences, count)}`` for the training loop."""
    labels = batch["mlm_labels"]
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                mlm_positions=batch["mlm_positions"], mlm_labels=labels)
    terms = {"mlm": (out["mlm_loss_sum"], labels.numel())}
    if "nsp_labels" in batch:
        nsp = batch["nsp_labels"]
        terms["nsp"] = (F.cross_entropy(out["nsp_logits"].float(), nsp, reduction="sum"), nsp.numel())
    return terms


def pretrain_counts(batch: dict) -> dict:
    """The normalisers of ``pretrain_loss``, from the batch alone (the loop needs them before backward)."""
    counts = {"mlm": int(batch["mlm_labels"].numel())}
    if "nsp_labels" in batch:
        counts["nsp"] = int(batch["nsp_labels"].numel())
    return counts


@torch.no_grad()
def evaluate(model, batches) -> dict:
    """Held-out MLM loss and accuracy (over masked tokens) and NSP accuracy (when the batches have NSP labels)."""
    device = next(model.parameters()).device
    mlm_loss = mlm_right = mlm_n = nsp_right = nsp_n = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                    mlm_positions=batch["mlm_positions"])
        logits, labels = out["mlm_logits"].float(), batch["mlm_labels"]
        mlm_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        mlm_right += float((logits.argmax(-1) == labels).sum())
        mlm_n += labels.numel()
        if "nsp_labels" in batch:
            nsp_right += float((out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).sum())
            nsp_n += batch["nsp_labels"].numel()
    metrics = {"mlm_loss": mlm_loss / max(mlm_n, 1), "mlm_accuracy": mlm_right / max(mlm_n, 1)}
    if nsp_n:
        metrics["nsp_accuracy"] = nsp_right / nsp_n
    return metrics
