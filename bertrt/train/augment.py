"""The model side of augmentation (``bertrt.data.augment`` holds the rules): a masked-LM head that fills masked
words, and training data that is augmented afresh every epoch (``finetune --augment``).

``MlmFiller(checkpoint)`` is the ``filler`` that ``augment(..., method="mlm")`` calls: the masked text goes
through the checkpoint's own MLM head (a pretraining or masked-LM checkpoint: ``bertrt pretrain`` writes one, and
``pretrain --from`` gives any BERT one); for each mask it returns the highest-scoring tokens that are whole words
(not ``##`` pieces, not special tokens, holding a letter or digit) other than the word being replaced. Texts longer
than the model's positions are cut, and masks past the cut keep their word.
"""

from __future__ import annotations

import torch

from ..data import tasks as T
from ..data.augment import augment
from ..errors import CheckpointError
from .loop import EpochBatches

MASK = "[MASK]"


class MlmFiller:
    """Fill ``[MASK]`` words with a checkpoint's masked-LM head; see the module docstring."""

    def __init__(self, checkpoint, device: str | torch.device = "auto", candidates: int = 10,
                 max_length: int | None = None):
        from ..checkpoint import load_checkpoint
        from ..tokenizer import load_tokenizer

        from .finetune import _device

        device = _device(device) if isinstance(device, str) else device  # "auto", "cpu", "cuda"
        try:
            self.model = load_checkpoint(checkpoint, task="mlm").to(device)
        except CheckpointError as e:
            raise CheckpointError(f"mlm augmentation fills masks with a masked-LM head and {checkpoint} has none "
                                  f"usable ({e}); pass a pretraining or masked-LM checkpoint (bertrt pretrain "
                                  "--from MODEL gives any BERT one)") from None
        self.tok = load_tokenizer(checkpoint)
        self.device, self.candidates = device, candidates
        positions = self.model.config.max_position_embeddings
        self.max_length = min(max_length or positions, positions)
        vocab = self.tok.get_vocab()
        allowed = torch.zeros(self.model.config.vocab_size, dtype=torch.bool)
        for token, i in vocab.items():
            whole = not token.startswith("##") and not (token.startswith("[") and token.endswith("]"))
            if whole and any(c.isalnum() for c in token) and i < len(allowed):
                allowed[i] = True
        self.allowed = allowed.to(self.device)
        self.words = {i: t for t, i in vocab.items()}
        self.mask_id = self.tok.token_to_id(MASK)
        if self.mask_id is None:
            raise CheckpointError(f"the tokenizer of {checkpoint} has no {MASK} token")
        self.cls, self.sep, self.pad = (self.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))

    def _ids(self, words: list[str], masked: list[int]) -> list[int] | None:
        hit = set(masked)
        if any(MASK in w for i, w in enumerate(words) if i not in hit):
            return None  # a literal [MASK] in the text would be read as one of ours
        text = " ".join(MASK if i in hit else w for i, w in enumerate(words))
        return [self.cls] + self.tok.encode(text, add_special_tokens=False).ids[:self.max_length - 2] + [self.sep]

    @torch.no_grad()
    def __call__(self, texts: list[list[str]], masked: list[list[int]]) -> list[list[list[str]]]:
        rows = [self._ids(w, m) for w, m in zip(texts, masked)]
        out = [[[] for _ in m] for m in masked]
        live = [i for i, r in enumerate(rows) if r is not None and self.mask_id in r]
        if not live:
            return out
        feats = [{"input_ids": rows[i], "token_type_ids": [0] * len(rows[i])} for i in live]
        batch = {k: v.to(self.device) for k, v in T.collate(feats, self.pad or 0).items()}
        at = batch["input_ids"] == self.mask_id  # (B, T): masks in row order, then position order
        logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                            mlm_positions=at)["mlm_logits"].float()  # (N, V)
        logits = logits.masked_fill(~self.allowed[:logits.shape[1]], float("-inf"))
        top = logits.topk(self.candidates + 1, dim=-1).indices.tolist()
        n = 0
        for i, count in zip(live, at.sum(1).tolist()):
            for j in range(count):  # masks past the cut never reached the model: they keep their word
                original = texts[i][masked[i][j]].lower()
                out[i][j] = [w for w in (self.words[t] for t in top[n + j]) if w != original][:self.candidates]
            n += count
        return out


class AugmentedEpochs:
    """``epoch -> batches`` for the training loop: the original features plus ``per_example`` fresh variants of
    every example, drawn with (seed, epoch), so each epoch sees new ones and a resumed run the same ones."""

    def __init__(self, task: str, examples: list, features: list, encode, method: str, per_example: int,
                 batch_size: int, collate, seed: int = 0, filler=None, group_by_length: bool = False):
        self.task, self.examples, self.features, self.encode = task, examples, features, encode
        self.group_by_length = group_by_length
        self.method, self.per_example, self.filler = method, per_example, filler
        self.batch_size, self.collate, self.seed = batch_size, collate, seed
        self._last = None

    def __call__(self, epoch: int):
        if self._last is None or self._last[0] != epoch:
            variants = augment(self.task, self.examples, self.method, self.per_example,
                               seed=self.seed * 1_000_003 + epoch, filler=self.filler)
            items = self.features + self.encode(variants)
            lengths = [len(f["input_ids"]) for f in items] if self.group_by_length else None
            self._last = (epoch, EpochBatches(items, self.batch_size, self.collate, seed=self.seed,
                                              lengths=lengths)(epoch))
        return self._last[1]
