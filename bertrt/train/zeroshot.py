"""Zero-shot classification by prompt: a cloze template read by the masked-LM head, and a verbalizer.

``{text}`` (and ``{text_pair}`` for pairs) are filled into a template holding one ``[MASK]``, e.g.
``"{text} This article is about [MASK]."``; the verbalizer maps each label to one or more words, each a single
token of the vocabulary (``{"sport": ["sport", "football"], "business": ["business"]}``). A label's score is the
log of the probability mass the MLM head puts on its words at the mask; the highest score wins. Long texts are cut
so the template, and so the mask, always fits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..data import tasks as T
from ..errors import CheckpointError, DataError
from ..tasks import metrics as M


def read_verbalizer(path, tok) -> dict[str, list[int]]:
    """Label -> token ids of its words, from a JSON object ``{label: word | [words]}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verbalizer file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}); a verbalizer is {{\"label\": [\"word\", ...]}}") from None
    if not isinstance(raw, dict) or len(raw) < 2:
        raise DataError(f"{path}: a verbalizer is a JSON object with at least 2 labels, {{\"label\": [\"word\", ...]}}")
    out = {}
    for label, words in raw.items():
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise DataError(f"{path}: label {label!r} needs a word or a non-empty list of words")
        ids = []
        for w in words:
            enc = tok.encode(w, add_special_tokens=False)
            if len(enc.ids) != 1 or enc.ids[0] == tok.token_to_id("[UNK]"):
                raise DataError(f"{path}: verbalizer word {w!r} (label {label!r}) is {enc.tokens} in this vocabulary; "
                                "each word must be exactly one known token - pick another word")
            ids.append(enc.ids[0])
        out[str(label)] = ids
    return out


def encode_prompts(examples: list, tok, template: str, max_length: int) -> list[dict]:
    """``[CLS] prefix text middle pair suffix [SEP]`` with the texts cut (longest first) so everything fits."""
    if template.count("[MASK]") != 1 or "{text}" not in template:
        raise DataError(f"the template {template!r} must hold {{text}} and exactly one [MASK]")
    pair = "{text_pair}" in template
    if examples and pair != (examples[0].text_pair is not None):
        raise DataError("the template uses {text_pair} but the data has none" if pair else
                        "the data has text_pair but the template does not place {text_pair}")
    slots = re.findall(r"\{(text|text_pair)\}", template)  # the texts in template order
    if len(set(slots)) != len(slots):
        raise DataError(f"the template {template!r} places a text twice")
    parts = re.split(r"\{(?:text|text_pair)\}", template)
    pieces = [tok.encode(p, add_special_tokens=False).ids for p in parts]
    fixed = sum(len(p) for p in pieces) + 2
    if fixed >= max_length:
        raise DataError(f"the template alone is {fixed} tokens; raise --max-length above it")
    cls, sep, mask = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[MASK]")
    out = []
    for e in examples:
        texts = [tok.encode(getattr(e, name), add_special_tokens=False).ids for name in slots]
        while sum(map(len, texts)) > max_length - fixed:  # cut the longest text first
            longest = max(range(len(texts)), key=lambda i: len(texts[i]))
            texts[longest] = texts[longest][:-1]
        ids = [cls] + pieces[0]
        for t, p in zip(texts, pieces[1:]):
            ids += t + p
        ids.append(sep)
        out.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "mask_index": ids.index(mask)})
    return out


@torch.no_grad()
def zeroshot(model_dir, data, template: str, verbalizer, max_length: int = 128, batch_size: int = 32,
             progress: bool = True) -> dict:
    """Classify ``data`` (classify format; labels optional) by prompt; with labels, the classification report."""
    from tqdm.auto import tqdm

    from ..checkpoint import load_checkpoint
    from ..tokenizer import load_tokenizer

    try:
        model = load_checkpoint(model_dir, task="mlm")
    except CheckpointError as e:
        raise CheckpointError(f"zero-shot reads the masked-LM head, and {model_dir} has none usable ({e}); use a "
                              "pretraining or masked-LM checkpoint") from None
    tok = load_tokenizer(model_dir)
    words = read_verbalizer(verbalizer, tok)
    labels = list(words)
    examples = T.read_task(data, "classify", require_labels=False)
    T.check_labels("classify", examples, labels, data)
    features = encode_prompts(examples, tok, template, min(max_length, model.config.max_position_embeddings))
    pad_id = tok.token_to_id("[PAD]") or 0
    preds = []
    for s in tqdm(range(0, len(features), batch_size), desc="zero-shot", disable=not progress, leave=False):
        chunk = features[s:s + batch_size]
        batch = T.collate(chunk, pad_id)
        positions = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        positions[torch.arange(len(chunk)), torch.tensor([f["mask_index"] for f in chunk])] = True
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=positions)
        logp = out["mlm_logits"].float().log_softmax(-1)  # (B, V): one mask per prompt, in row order
        scores = torch.stack([logp[:, ids].logsumexp(-1) for ids in words.values()], -1)  # (B, labels)
        preds += scores.argmax(-1).tolist()
    result = {"task": "zeroshot", "template": template, "labels": labels,
              "predictions": [labels[p] for p in preds]}
    if all(e.label is not None for e in examples):
        index = {l: i for i, l in enumerate(labels)}
        result["report"] = M.classification_report([index[e.label] for e in examples], preds, labels)
    return result
