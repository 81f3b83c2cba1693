"""Zero-shot classification by prompt: a cloze pattern read by the masked-LM head, and a verbalizer.

``{text}`` (and ``{text_pair}`` for pairs) are filled into a pattern holding one ``[MASK]``, e.g.
``"{text} This article is about [MASK]."``; the verbalizer maps each label to one or more words, each a single
token of the vocabulary (``{"sport": ["sport", "football"], "business": ["business"]}``). A label's score is the
logsumexp of the MLM logits of its words at the mask (``bertrt.model.Cloze``); the highest wins. Prompts are
encoded by ``bertrt.tasks.prompt`` (texts cut so the mask always fits), as few-shot prompt training and a prompt
artifact's runtime encode them; ``bertrt export --prompt`` turns the same model into an artifact.
"""

from __future__ import annotations

import torch

from ..data import tasks as T
from ..tasks.prompt import read_verbalizer


@torch.no_grad()
def zeroshot(model_dir, data, template: str, verbalizer, max_length: int = 128, batch_size: int = 32,
             progress: bool = True) -> dict:
    """Classify ``data`` (classify format; labels optional) by prompt; with labels, the classification report."""
    from ..checkpoint import load_cloze
    from ..tasks import metrics as M
    from ..tokenizer import load_tokenizer
    from .evaluate import predict_examples

    tok = load_tokenizer(model_dir)
    words = read_verbalizer(verbalizer)
    model = load_cloze(model_dir, words, tok)
    labels = list(words)
    examples = T.read_task(data, "classify", require_labels=False)
    T.check_labels("classify", examples, labels, data)
    answers, encs, gold = predict_examples(model, tok, examples, "classify", labels,
                                           min(max_length, model.config.max_position_embeddings), None, batch_size,
                                           progress, prompt=template)
    result = {"task": "zeroshot", "template": template, "labels": labels,
              "predictions": [a["label"] for a in answers]}
    if gold is not None:
        result["report"] = M.report("classify", answers, gold, labels, encs)
    return result
