"""Checkpoints: Hugging Face BERT directories in, the same layout out.

A checkpoint is a directory with ``config.json`` (HF's BERT config plus a ``bertrt`` block: task, labels, per-layer
head and FFN sizes, tokenizer fingerprint), ``model.safetensors`` and the tokenizer files. Any HF BERT-family
directory (BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
BertForTokenClassification, BertForQuestionAnswering) loads; an unpruned bertrt checkpoint loads in transformers.
Weights come from safetensors, or from ``pytorch_model.bin`` with ``torch.load(weights_only=True)``; nothing is
ever unpickled beyond plain tensors.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .atomic import atomic_dir
from .errors import CheckpointError
from .model import HF_NAMES, TASKS, Bert, BertConfig
from .tasks import LABELLED_TASKS, SEQUENCE_TASKS

ARCHITECTURE_TASKS = {
    "BertModel": "base",
    "BertForPreTraining": "pretrain",
    "BertForMaskedLM": "mlm",
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "ner",
    "BertForQuestionAnswering": "qa",
}
TASK_ARCHITECTURES = {v: k for k, v in ARCHITECTURE_TASKS.items()} | {"embed": "BertModel", "relation": "BertModel",
                                                                     "multilabel": "BertForSequenceClassification"}
HEAD_PREFIXES = ("mlm.", "nsp.", "classifier.", "qa_outputs.")
IGNORED_HF_KEYS = re.compile(r"(position_ids|cls\.predictions\.decoder\.(weight|bias))$")
PRUNING_RECORD = "pruning.json"  # beside the weights of a checkpoint written by `bertrt prune`


def _rename(key: str, src: int, dst: int) -> str:
    for names in HF_NAMES:
        pattern = re.escape(names[src]).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", "(?P<p>query|key|value)")
        m = re.match(pattern, key)
        if m:
            return names[dst].format(**m.groupdict()) + key[m.end():]
    return key


def to_hf_key(key: str) -> str:
    return _rename(key, 0, 1)


def from_hf_key(key: str) -> str:
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if not key.startswith(("bert.", "cls.", "classifier.", "qa_outputs.")):
        key = "bert." + key  # HF BertModel checkpoints have no "bert." prefix
    return _rename(key, 1, 0)


def read_config(path: Path) -> tuple[BertConfig, dict]:
    """Turn a HF ``config.json`` (with or without bertrt's block) into a BertConfig; also return the raw dict."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; expected a BERT checkpoint directory")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    model_type = raw.get("model_type")
    if model_type != "bert":
        raise CheckpointError(f"{path} holds a {model_type or 'non-BERT'!s} model (config.json model_type="
                              f"{model_type!r}); bertrt reads BERT-family checkpoints (model_type 'bert')")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type={raw['position_embedding_type']!r} is not supported "
                              "(only 'absolute')")
    ours = raw.get("bertrt", {})
    arch = (raw.get("architectures") or ["BertModel"])[0]
    task = ours.get("task") or ARCHITECTURE_TASKS.get(arch, "base")
    if task == "classify" and raw.get("problem_type") == "multi_label_classification":
        task = "multilabel"
    layers, heads = raw["num_hidden_layers"], raw["num_attention_heads"]
    labels = ours.get("labels")
    if labels is None and "id2label" in raw:
        labels = [raw["id2label"][str(i)] for i in range(len(raw["id2label"]))]
    if labels is None and task in LABELLED_TASKS:  # transformers omits id2label when it is the default
        labels = [f"LABEL_{i}" for i in range(raw.get("num_labels", 2))]
    cfg = BertConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        num_heads=ours.get("num_heads", [heads] * layers),
        ffn_sizes=ours.get("ffn_sizes", [raw["intermediate_size"]] * layers),
        head_size=ours.get("head_size", raw["hidden_size"] // heads),
        max_position_embeddings=raw.get("max_position_embeddings", 512),
        type_vocab_size=raw.get("type_vocab_size", 2),
        hidden_dropout=raw.get("hidden_dropout_prob", 0.1),
        attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12), activation=raw.get("hidden_act", "gelu"),
        pad_token_id=raw.get("pad_token_id", 0) or 0, task=task,
        labels=labels if task in LABELLED_TASKS else [],
        with_pooler=ours.get("with_pooler", task in ("base", "embed", "pretrain") + SEQUENCE_TASKS),
        pooling=ours.get("pooling", "mean"), normalize=ours.get("normalize", False),
        markers=ours.get("markers", []),
    )
    return cfg, raw


def finetune_record(path: str | os.PathLike) -> dict:
    """What fine-tuning recorded in a checkpoint (finetune.json) that inference must repeat: ``max_length``,
    ``doc_stride`` (window overlap), ``thresholds`` (multilabel) and ``prompt`` (a few-shot prompt model's pattern
    and verbalizer); {} for a checkpoint without one."""
    f = Path(path) / "finetune.json"
    try:
        info = json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"{f} is not valid JSON; restore it or delete it") from None
    config = info.get("config", {})
    return {k: v for k, v in (("max_length", config.get("max_length")), ("doc_stride", config.get("doc_stride")),
                              ("thresholds", info.get("thresholds")), ("prompt", info.get("prompt")))
            if v is not None}


def load_cloze(path: str | os.PathLike, words: dict[str, list[str]], tokenizer=None):
    """A masked-LM checkpoint as a ``Cloze`` classifier over the labels of ``words`` (label -> verbalizer words,
    each one token of the checkpoint's vocabulary)."""
    from .model import Cloze
    from .tasks.prompt import MASK, verbalizer_ids
    from .tokenizer import load_tokenizer

    tok = tokenizer or load_tokenizer(path)
    try:
        mlm = load_checkpoint(path, task="mlm")
    except CheckpointError as e:
        raise CheckpointError(f"a prompt reads the masked-LM head, and {path} has none usable ({e}); use a "
                              "pretraining or masked-LM checkpoint") from None
    return Cloze(mlm, verbalizer_ids(words, tok), tok.token_to_id(MASK), list(words))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint directory, keyed by HF name."""
    st, index, pt = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if st.is_file():
            return load_file(str(st))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in load_file(str(path / s)).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read the weights in {path}: {e} (is the file complete?)") from None
    if pt.is_file():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {pt} as plain tensors ({type(e).__name__}: {e}); bertrt never "
                                  "unpickles arbitrary objects - convert it to safetensors") from None
    raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")


def load_checkpoint(path: str | os.PathLike, task: str | None = None, labels: list[str] | None = None,
                    init_missing_head: bool = False, **overrides) -> Bert:
    """Load a checkpoint directory into a Bert model (in eval mode).

    ``task`` switches the head: loading a pretraining checkpoint with ``task="classify"`` keeps the encoder and, with
    ``init_missing_head=True``, starts a fresh classifier (fine-tuning). Without it a missing head is an error. Every
    missing, unexpected or mis-shaped weight is reported at once.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    cfg, _ = read_config(path)
    if task is not None and task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task is not None and task != cfg.task:
        cfg.task = task
        cfg.with_pooler = cfg.with_pooler or task in ("pretrain",) + SEQUENCE_TASKS
        if labels is None and task not in LABELLED_TASKS:
            cfg.labels = []
    if labels is not None:
        cfg.labels = list(labels)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    try:
        cfg.__post_init__()
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None

    model = Bert(cfg)
    theirs = {from_hf_key(k): v for k, v in read_weights(path).items() if not IGNORED_HF_KEYS.search(k)}
    expected = model.state_dict()
    optional = HEAD_PREFIXES + ("bert.pooler.",)  # heads and pooler: dropped when unused, fresh when allowed
    for k in [k for k in theirs if k.startswith(optional)]:
        if k not in expected or (init_missing_head and theirs[k].shape != expected[k].shape):
            del theirs[k]  # a head this task does not use, or one for another label set
    fresh = [k for k in expected if k not in theirs and k.startswith(optional)] if init_missing_head else []
    missing = [k for k in expected if k not in theirs and k not in fresh]
    unexpected = [k for k in theirs if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in theirs and theirs[k].shape != v.shape]
    problems = ([f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
                + [f"shape mismatch: {s}" for s in shapes])
    if problems:
        listing = "; ".join(problems[:20]) + (f"; ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"the weights in {path} do not fit its config ({len(problems)} problems): {listing}")
    model.load_state_dict(theirs, strict=False)
    model.fresh_weights = fresh  # freshly initialised (head) weights, for the caller to report
    return model.eval()


def hf_config(cfg: BertConfig, tokenizer_fingerprint: str | None = None) -> dict:
    uniform = len(set(cfg.num_heads)) <= 1 and len(set(cfg.ffn_sizes)) <= 1 and cfg.num_layers > 0
    heads = cfg.num_heads[0] if uniform else cfg.hidden_size // cfg.head_size
    d = {
        "architectures": [TASK_ARCHITECTURES[cfg.task]], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": heads, "intermediate_size": cfg.ffn_sizes[0] if uniform else max(cfg.ffn_sizes),
        "hidden_act": cfg.activation, "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "bertrt": {"task": cfg.task, "labels": cfg.labels, "num_heads": cfg.num_heads, "ffn_sizes": cfg.ffn_sizes,
                   "head_size": cfg.head_size, "with_pooler": cfg.with_pooler, "pooling": cfg.pooling,
                   "normalize": cfg.normalize, "pruned": not uniform, "markers": cfg.markers,
                   "tokenizer_fingerprint": tokenizer_fingerprint},
    }
    if cfg.task == "multilabel":
        d["problem_type"] = "multi_label_classification"  # transformers then applies sigmoid and BCE too
    if cfg.labels:
        d["id2label"] = {str(i): l for i, l in enumerate(cfg.labels)}
        d["label2id"] = {l: i for i, l in enumerate(cfg.labels)}
    return d


def write_checkpoint_files(model: Bert, directory: Path, tokenizer=None) -> None:
    """Write config, weights and tokenizer into an existing directory (no atomicity: see ``save_checkpoint``)."""
    from safetensors.torch import save_file

    from .tokenizer import save_tokenizer

    fp = save_tokenizer(tokenizer, directory, model.config.max_position_embeddings) if tokenizer else None
    prefix_free = model.config.task in ("base", "embed")  # HF BertModel keys carry no "bert." prefix
    tensors = {}
    for k, v in model.state_dict().items():
        hk = to_hf_key(k)
        tensors[hk[len("bert."):] if prefix_free and hk.startswith("bert.") else hk] = v.detach().contiguous().cpu()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config(model.config, fp), indent=2) + "\n")


def save_checkpoint(model: Bert, path: str | os.PathLike, tokenizer=None, force: bool = False) -> Path:
    """Save atomically as a HF-compatible directory; refuses to replace an existing one unless ``force``."""
    with atomic_dir(path, force) as tmp:
        write_checkpoint_files(model, tmp, tokenizer)
    return Path(path)


def read_pruning_record(path: str | os.PathLike) -> dict | None:
    """The record ``bertrt prune`` wrote beside a pruned checkpoint's weights, or None for any other checkpoint."""
    f = Path(path) / PRUNING_RECORD
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e}); prune the checkpoint again") from None


def checkpoint_report(path: str | os.PathLike, seq_len: int = 128) -> dict:
    """What ``bertrt info CHECKPOINT`` shows: architecture, task, labels, parameters, per-layer sizes, FLOPs per
    token at ``seq_len``, the tokenizer's fingerprint and, for a pruned checkpoint, the unpruned sizes and FLOPs.
    Reads config.json only (parameters are counted on the meta device): the weights are never loaded."""
    import dataclasses

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"not found: {path}")
    cfg, raw = read_config(path)
    with torch.device("meta"):  # count parameters without allocating or reading weights
        params = Bert(cfg).num_parameters()
    fp = raw.get("bertrt", {}).get("tokenizer_fingerprint")
    if fp is None and (path / "tokenizer.json").is_file():
        from .tokenizer import fingerprint, load_tokenizer

        fp = fingerprint(load_tokenizer(path / "tokenizer.json"))
    report = {
        "architecture": TASK_ARCHITECTURES[cfg.task], "task": cfg.task, "labels": cfg.labels,
        "parameters": params, "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size, "heads_per_layer": cfg.num_heads, "ffn_per_layer": cfg.ffn_sizes,
        "max_position_embeddings": cfg.max_position_embeddings, "seq_len": seq_len,
        "flops_per_token": cfg.flops_per_token(seq_len), "tokenizer_fingerprint": fp,
    }
    record = read_pruning_record(path)
    if record is not None:  # what it was pruned from, counted at this seq_len
        o = record["original"]
        unpruned = dataclasses.replace(cfg, num_heads=o["num_heads"], ffn_sizes=o["ffn_sizes"])
        report["original"] = {"heads_per_layer": unpruned.num_heads, "ffn_per_layer": unpruned.ffn_sizes,
                              "flops_per_token": unpruned.flops_per_token(seq_len)}
    return report


def format_checkpoint_report(path: str | os.PathLike, r: dict) -> str:
    """``checkpoint_report`` as the few lines ``bertrt info`` prints."""
    from .artifact import layer_table

    flops = f"{r['flops_per_token'] / 1e6:.2f} MFLOPs at sequence length {r['seq_len']} (encoder matmuls)"
    o = r.get("original")
    if o:  # a pruned checkpoint: show what it was pruned from
        flops += f"; {100 * r['flops_per_token'] / o['flops_per_token']:.1f}% of the unpruned " \
                 f"{o['flops_per_token'] / 1e6:.2f} M"
    lines = [
        f"checkpoint   {path}",
        f"architecture {r['architecture']} (task: {r['task']})",
        f"labels       {', '.join(r['labels']) if r['labels'] else '-'}",
        f"parameters   {r['parameters']:,} ({r['parameters'] / 1e6:.1f} M)",
        f"shape        {r['layers']} layers, hidden {r['hidden_size']}, vocab {r['vocab_size']}, "
        f"max positions {r['max_position_embeddings']}",
        f"FLOPs/token  {flops}",
        f"tokenizer    {r['tokenizer_fingerprint'][:16] if r['tokenizer_fingerprint'] else 'none in this folder'}",
    ]
    return "\n".join(lines + layer_table(r["heads_per_layer"], r["ffn_per_layer"],
                                         o and (o["heads_per_layer"], o["ffn_per_layer"])))
