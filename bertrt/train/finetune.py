"""Fine-tune a BERT checkpoint on classify / ner / qa data, fully or with a PEFT method, on the one training loop.

``finetune(train, out, from_path, FinetuneConfig(...), eval_path=...)``:

1. validates everything before writing anything: the output path, both data files (format, labels unseen in
   training), the ``from`` checkpoint and its tokenizer, the PEFT/merge combination;
2. builds the task model: a fresh head when the checkpoint has none for this task; a checkpoint of the same task
   keeps its head rows for the labels it knows and gains rows for new ones (``new_head`` starts afresh instead);
   continual learning adds a rehearsal memory of old data (``replay_path``), an L2-SP/EWC anchor to the previous
   weights, and old-task metrics before and after (``eval_old_path``) - see ``bertrt.train.continual``;
   applies PEFT if asked;
3. trains with ``bertrt.train.loop.train`` under ``OUT/run/`` (resumable ``checkpoint/``, ``metrics.jsonl``);
   with eval data it evaluates every ``eval_every`` steps (default: every epoch), keeps the best weights by the
   task's metric (accuracy; entity F1; SQuAD F1) and stops after ``patience`` evaluations without improvement;
   ``resume`` continues an interrupted run from its last ``save_every`` checkpoint (the best-so-far tracking
   starts again from there: evaluations before the interruption are not remembered);
Few-shot by prompt (PET; ``prompt`` and ``verbalizer``): a masked-LM checkpoint is trained as a classifier through
its MLM head (``bertrt.model.Cloze``: cross-entropy over the label logits its verbalizer words give at the prompt's
mask), and ``OUT`` is a masked-LM checkpoint whose ``finetune.json`` records the pattern and verbalizer, which
``bertrt evaluate`` and ``bertrt export`` read.

4. writes ``OUT`` atomically: a plain checkpoint (full fine-tuning, or PEFT with ``merge``) or a PEFT directory
   (adapter + head, ``peft.json``), plus ``finetune.json`` (config, labels, parameter counts, evaluations, the best
   report, and under "continual" the old-task forgetting beside the new-task gain). ``OUT/run/`` moves inside it.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import tasks as T
from ..errors import BertrtError, PeftError
from ..tasks import LABELLED_TASKS
from .callbacks import Callback, EarlyStopping
from .continual import ANCHORS, Anchor, continual_labels, fisher_diagonal, grow_head, head_rows, replay_sample
from .peft import PeftConfig

DEFAULT_LR = {None: 5e-5, "lora": 5e-4, "adalora": 1e-3, "adapter": 5e-4, "prefix": 1e-2}
SMALL_DATA = 10_000  # training examples below which the default batch is 16 rather than 32


def default_batch_size(n_examples: int) -> int:
    """16 for fewer than ``SMALL_DATA`` training examples, else 32. Why: at a fixed number of epochs a small set
    gets few optimizer steps, and half-size batches double them (issue #15 reports, on a 1.9k-sentence NER set,
    entity F1 0.327 at batch 16 against 0.201 at 32); large sets train as well, and faster, at 32."""
    return 16 if n_examples < SMALL_DATA else 32


@dataclass
class FinetuneConfig:
    task: str
    max_length: int = 128
    batch_size: int | None = None  # None: default_batch_size(number of training examples)
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float | None = None  # None: 5e-5 for full fine-tuning, higher for PEFT (DEFAULT_LR)
    weight_decay: float = 0.01
    warmup: float = 0.1
    dropout: float | None = None  # None keeps the checkpoint's
    eval_every: int = 0  # optimizer steps; 0 = once per epoch
    save_every: int = 0  # optimizer steps between resumable checkpoints in OUT/run/checkpoint; 0 = at the end only
    patience: int | None = None  # evaluations without improvement before stopping; None = never stop early
    class_weights: bool = False
    adversarial: str | None = None  # "fgm" or "pgd" (bertrt.train.objectives)
    adv_epsilon: float = 1.0
    adv_steps: int = 3  # PGD's ascent steps
    adv_alpha: float | None = None  # PGD's step size; None: 2.5 * adv_epsilon / adv_steps
    doc_stride: int | None = None  # QA window overlap; None: max_length // 4
    seed: int = 0
    precision: str = "fp32"
    peft: PeftConfig | None = None
    merge: bool = False
    progress: bool = True
    wandb: str | None = None  # a W&B project to log the run's scalars to (bertrt.train.tracking)
    augment: str | None = None  # "eda" or "mlm": fresh variants of the training data every epoch (bertrt.data.augment)
    augment_per_example: int = 1  # variants of each training example per epoch, beside the example itself
    augment_from: str | None = None  # mlm: the checkpoint whose masked-LM head fills the masks (default: from)
    # continual learning (bertrt.train.continual); the data files are finetune()'s replay_path / eval_old_path
    new_head: bool = False  # start the head afresh instead of keeping the previous model's rows for known labels
    replay_ratio: float = 0.1  # with replay data: the share of it kept as the rehearsal memory
    replay_repeat: int = 1  # times the memory appears in every epoch (rebalances old vs new classes)
    anchor: str | None = None  # "l2sp" or "ewc"
    anchor_weight: float = 1.0
    fisher_samples: int = 256  # old examples EWC's Fisher estimate uses
    group_by_length: bool = False  # batches of similar lengths (EpochBatches): faster on mixed-length data
    # few-shot by prompt: the cloze pattern and the verbalizer (label -> words, bertrt.tasks.prompt)
    prompt: str | None = None
    verbalizer: dict | None = None

    def __post_init__(self):
        if self.task not in T.TASK_FORMATS:
            raise BertrtError(f"--task must be one of {', '.join(T.TASK_FORMATS)}, not {self.task!r}")
        if self.adversarial not in (None, "fgm", "pgd"):
            raise BertrtError(f"--adversarial supports 'fgm' and 'pgd', not {self.adversarial!r}")
        if self.augment not in (None, "eda", "mlm") or self.augment_per_example < 1:
            raise BertrtError(f"--augment must be eda or mlm (not {self.augment!r}) and --augment-per-example >= 1")
        if self.adv_epsilon <= 0 or self.adv_steps < 1 or (self.adv_alpha is not None and self.adv_alpha <= 0):
            raise BertrtError("--adv-epsilon and --adv-alpha must be > 0 and --adv-steps >= 1")
        if self.class_weights and self.task not in ("classify", "ner"):
            raise BertrtError(f"--class-weights applies to classify and ner, not {self.task}")
        if self.merge and self.peft is None:
            raise PeftError("--merge folds a PEFT adapter into the weights; it needs --peft lora or adalora")
        if self.merge and self.peft.method not in ("lora", "adalora"):
            raise PeftError(f"--merge cannot fold {self.peft.method}: it adds computation that plain BERT weights "
                            "cannot hold; use --peft lora or adalora, or drop --merge")
        if (self.batch_size is not None and self.batch_size < 1) or self.max_length < 8:
            raise BertrtError("--batch-size must be >= 1 and --max-length >= 8")
        if self.patience is not None and self.patience < 1:
            raise BertrtError(f"--patience must be >= 1, got {self.patience}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BertrtError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.anchor is not None and self.anchor not in ANCHORS:
            raise BertrtError(f"--anchor must be one of {', '.join(ANCHORS)}, not {self.anchor!r}")
        if self.anchor is not None and self.peft is not None:
            raise BertrtError("--anchor keeps the full weights near the previous model; with --peft they are frozen "
                              "anyway - drop one of the two")
        if self.anchor_weight <= 0 or self.fisher_samples < 1 or not 0 < self.replay_ratio <= 1 \
                or self.replay_repeat < 1:
            raise BertrtError("--anchor-weight must be > 0, --fisher-samples >= 1, --replay-ratio in (0, 1] and "
                              "--replay-repeat >= 1")
        if (self.prompt is None) != (self.verbalizer is None):
            raise BertrtError("--prompt and --verbalizer go together: the pattern's mask is read through the words")
        if self.prompt is not None:
            from ..tasks.prompt import check_pattern, check_verbalizer

            if self.task != "classify" or self.peft is not None or self.anchor is not None:
                raise BertrtError("--prompt trains a classify model through the MLM head, fully: it does not combine "
                                  "with another --task, --peft or --anchor")
            check_pattern(self.prompt)
            self.verbalizer = check_verbalizer(self.verbalizer)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    path: Path
    labels: list[str]
    trainable_parameters: int
    total_parameters: int
    steps: int
    evals: list[dict] = field(default_factory=list)
    best: dict | None = None  # the best evaluation report (eval data given)
    stopped_early: bool = False
    continual: dict | None = None  # old-task forgetting and new-task gain (with eval_old_path / eval_path)


def finetune(train_path, out, from_path, config: FinetuneConfig, eval_path=None, force: bool = False,
             resume: bool = False, device: str = "auto", replay_path=None, eval_old_path=None,
             fisher_path=None) -> FinetuneResult:
    """Fine-tune; see the module docstring. Single process (``device``: auto, cpu or cuda). Continual learning:
    ``replay_path`` (old training data: a rehearsal memory of ``replay_ratio`` of it joins every epoch),
    ``fisher_path`` (old data for EWC's Fisher; default the replay data), ``eval_old_path`` (old test data,
    evaluated before and after)."""
    from ..atomic import atomic_dir, check_writable
    from ..checkpoint import load_checkpoint, load_cloze, read_config, write_checkpoint_files
    from ..tokenizer import load_tokenizer
    from .evaluate import evaluate
    from .loop import EpochBatches, TrainConfig, train
    from ..tasks.metrics import main_metric
    from .objectives import balanced_class_weights, make_loss_fn
    from .peft import apply_peft

    out, from_path, task = Path(out), Path(from_path), config.task
    if not resume:
        check_writable(out, force)
    # ---- 1. everything a user can get wrong, before anything is written
    train_ex = T.read_task(train_path, task)
    replay_ex = T.read_task(replay_path, task) if replay_path is not None else None
    fisher_path = fisher_path if fisher_path is not None else replay_path
    fisher_ex = T.read_task(fisher_path, task) if config.anchor == "ewc" and fisher_path is not None else None
    old_ex = T.read_task(eval_old_path, task) if eval_old_path is not None else None
    prompt = config.prompt
    labels = T.infer_labels(task, train_ex + (replay_ex or [])) if prompt is None else list(config.verbalizer)
    if prompt is not None:
        T.check_labels(task, train_ex + (replay_ex or []), labels, train_path)
    src_cfg, _ = read_config(from_path)  # CheckpointError when it is not a BERT directory
    continual = task in ("classify", "ner") and src_cfg.task == task and not config.new_head and prompt is None
    if continual:  # keep every label the previous model knew, in its order, and its head rows for them
        labels = continual_labels(src_cfg.labels, labels)
    if (old_ex is not None or config.anchor == "ewc") and src_cfg.task != task:
        raise BertrtError(f"--eval-old and --anchor ewc need a previous {task} model; {from_path} is a "
                          f"{src_cfg.task} checkpoint")
    if config.anchor == "ewc" and fisher_ex is None:
        raise BertrtError("--anchor ewc estimates which weights mattered from the old training data: pass it with "
                          "--replay OLD (rehearsal too) or --fisher-data OLD")
    for ex, path in ((old_ex, eval_old_path), (fisher_ex, fisher_path)):
        if ex is not None:
            T.check_labels(task, ex, src_cfg.labels, path)
    eval_ex = None
    if eval_path is not None:
        eval_ex = T.read_task(eval_path, task)
        T.check_labels(task, eval_ex, labels, eval_path)
    tok = load_tokenizer(from_path)
    max_length = min(config.max_length, src_cfg.max_position_embeddings)
    torch.manual_seed(config.seed)
    if prompt is not None:
        model = load_cloze(from_path, config.verbalizer, tok)
    else:
        model = load_checkpoint(from_path, task=task, labels=labels or None, init_missing_head=True)
    previous = None
    if src_cfg.task == task and (continual or old_ex is not None or fisher_ex is not None):
        previous = load_checkpoint(from_path)  # as it was: the old task's reference
    grown = {}
    if continual and src_cfg.labels != labels:
        rows = head_rows(src_cfg.labels, labels)
        grown = {n: rows for n in grow_head(model, previous.state_dict(), src_cfg.labels)}
    elif src_cfg.task == task and src_cfg.labels != labels:  # --new-head: same head shape, start it afresh
        head = model.classifier if task in LABELLED_TASKS else model.qa_outputs
        model._init_weights(head)
        model.fresh_weights = sorted(set(model.fresh_weights) | {n for n, _ in model.named_parameters()
                                                                  if n.startswith(("classifier.", "qa_outputs."))})
    if config.dropout is not None:
        _set_dropout(model, config.dropout)
    if task == "relation":
        from .relation import add_markers

        add_markers(model, tok)  # the entity markers join the tokenizer (saved with the checkpoint) and embeddings

    encode = {"classify": lambda ex: T.encode_classify(ex, tok, labels, max_length, prompt=prompt),
              "multilabel": lambda ex: T.encode_classify(ex, tok, labels, max_length, multilabel=True),
              "relation": lambda ex: T.encode_relation(ex, tok, labels, max_length),
              "ner": lambda ex: T.encode_ner(ex, tok, labels, max_length, config.doc_stride),
              "qa": lambda ex: T.encode_qa(ex, tok, max_length, config.doc_stride)}[task]
    train_feats = encode(train_ex)
    n_augmented = len(train_feats) * config.augment_per_example if config.augment else 0
    filler = None
    if config.augment == "mlm":  # its masked-LM head, loaded (and checked) before training starts
        from .augment import MlmFiller

        filler = MlmFiller(config.augment_from or from_path, _device(device), max_length=max_length)
    replayed = 0
    if replay_ex is not None:  # the rehearsal memory, mixed into every epoch's shuffle
        memory = [replay_ex[i] for i in replay_sample(len(replay_ex), config.replay_ratio, config.seed)]
        train_feats, replayed = train_feats + encode(memory) * config.replay_repeat, len(memory)
    batch_size = config.batch_size or default_batch_size(len(train_ex))
    steps_per_epoch = math.ceil((len(train_feats) + n_augmented) / batch_size)
    total_steps = math.ceil(config.epochs * steps_per_epoch)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    # ---- 2. the method
    peft = None
    if config.peft is not None:
        pc = config.peft
        if pc.method == "adalora" and pc.total_steps is None:
            pc = PeftConfig(**{**pc.to_dict(), "total_steps": total_steps})
        peft = apply_peft(model, pc)
    model.to(_device(device))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    weights = None
    if config.class_weights:
        ids = [f["labels"] for f in train_feats]
        flat = [i for x in ids for i in (x if isinstance(x, list) else [x])]
        weights = balanced_class_weights(flat, len(labels))
    loss_fn = make_loss_fn(task, weights, config.adversarial, config.adv_epsilon,
                           peft.regularizer if peft is not None else None, config.adv_steps, config.adv_alpha)
    pad_id = tok.token_to_id("[PAD]") or 0

    # ---- continual learning: the old task before training, and the anchor (its references are the step-0 weights)
    report_of = lambda m, ex, names: evaluate(m, tok, ex, task, names, max_length, config.doc_stride,  # noqa: E731
                                              prompt=prompt)
    before, extra_callbacks = {}, []
    if previous is not None:
        previous.to(_device(device))
        if old_ex is not None:
            before = {"old": report_of(previous, old_ex, src_cfg.labels),
                      **({"new": report_of(model, eval_ex, labels)} if eval_ex is not None else {})}
    if config.anchor is not None:
        fisher = None
        if config.anchor == "ewc":
            enc = T.encode_classify if task == "classify" else T.encode_ner
            rng = random.Random(config.seed)
            picked = rng.sample(range(len(fisher_ex)), min(len(fisher_ex), config.fisher_samples))
            feats = enc([fisher_ex[i] for i in picked], tok, src_cfg.labels, max_length)
            dev = next(previous.parameters()).device
            batches = ({k: v.to(dev) for k, v in T.collate([f], pad_id).items()} for f in feats)
            fisher = fisher_diagonal(previous, batches, make_loss_fn(task))
        extra_callbacks.append(Anchor.from_model(config.anchor, config.anchor_weight, model, model.fresh_weights,
                                                 grown, fisher))
    previous = None  # not needed any more: free its memory before training

    # ---- 3. train, evaluating and keeping the best
    reports = []

    def eval_fn(m):
        report = evaluate(m, tok, eval_ex, task, labels, max_length, config.doc_stride, prompt=prompt)
        reports.append(report)
        name, score = main_metric(report)
        return {name: score}

    run_dir = out / "run"
    eval_every = config.eval_every or steps_per_epoch
    loop_cfg = TrainConfig(lr=config.lr or DEFAULT_LR[config.peft.method if config.peft else None],
                           weight_decay=config.weight_decay, warmup=config.warmup, max_steps=total_steps,
                           seed=config.seed, precision=config.precision, progress=config.progress,
                           eval_every=eval_every if eval_ex is not None else 0, save_every=config.save_every,
                           wandb=config.wandb)
    collate = lambda fs: T.collate(fs, pad_id)  # noqa: E731
    batches = EpochBatches(train_feats, batch_size, collate, seed=config.seed,
                           lengths=[len(f["input_ids"]) for f in train_feats] if config.group_by_length else None)
    if config.augment:  # the training examples only (never eval, replay or Fisher data), afresh every epoch
        from .augment import AugmentedEpochs

        batches = AugmentedEpochs(task, train_ex, train_feats, encode, config.augment, config.augment_per_example,
                                  batch_size, collate, config.seed, filler, group_by_length=config.group_by_length)
    save_fn = (lambda m, d: peft.write_files(d, from_path, tok)) if peft is not None else None
    if prompt is not None:  # the masked-LM model is what a prompt model saves
        save_fn = lambda m, d: write_checkpoint_files(m.mlm, d, tok)  # noqa: E731
    keep_best = EarlyStopping(config.patience, params=_kept)
    callbacks = [keep_best, *extra_callbacks] + ([_PeftSteps(peft)] if peft is not None else [])
    result = train(model, batches, loss_fn, loop_cfg, run_dir, eval_fn=eval_fn if eval_ex is not None else None,
                   resume=resume, tokenizer=tok, save_fn=save_fn, force=force, callbacks=callbacks)
    evals = keep_best.history
    best_report = reports[[e["step"] for e in evals].index(keep_best.best_step)] if evals else None
    keep_best.restore(model)
    continual_report = None
    if continual or replay_ex is not None or config.anchor or before:
        continual_report = {"labels_kept": len(src_cfg.labels) if continual else 0,
                            "labels_added": len(labels) - len(src_cfg.labels) if continual else len(labels),
                            "replayed": replayed, "replay_repeat": config.replay_repeat,
                            "old_examples": len(replay_ex) if replay_ex is not None else None,
                            "anchor": ({"kind": config.anchor, "weight": config.anchor_weight}
                                       if config.anchor else None)}
        if before:
            after = {"old": report_of(model, old_ex, labels), "new": best_report}
            if after["new"] is None and eval_ex is not None:
                after["new"] = report_of(model, eval_ex, labels)
            for part, sign, word in (("old", 1, "forgetting"), ("new", -1, "gain")):
                if before.get(part) is not None and after.get(part) is not None:
                    name, b = main_metric(before[part])
                    a = main_metric(after[part])[1]
                    continual_report[part] = {"metric": name, "before": b, "after": a, word: sign * (b - a),
                                              "report_after": after[part]}
    model.eval().cpu()

    thresholds = None
    if task == "multilabel":  # per-label decision thresholds, tuned on the eval data (0.5 without it)
        thresholds = _tune_thresholds(model, tok, eval_ex, labels, max_length)
        if eval_ex is not None:
            best_report = evaluate(model, tok, eval_ex, task, labels, max_length,
                                   options={"thresholds": thresholds})

    # ---- 4. write OUT atomically, the run folder inside
    info = {"task": task, "labels": labels, "from": str(from_path.resolve()), "config": config.to_dict(),
            "method": config.peft.method if config.peft else "full", "merged": config.merge,
            "trainable_parameters": trainable, "total_parameters": total, "steps": result.step,
            "stopped_early": result.stopped_early, "evals": evals, "best": best_report,
            "continual": continual_report}
    info["config"]["max_length"] = max_length
    info["config"]["batch_size"] = batch_size
    if thresholds is not None:
        info["thresholds"] = thresholds
    if prompt is not None:
        info["prompt"] = {"pattern": prompt, "verbalizer": config.verbalizer}
    with atomic_dir(out, force=True) as tmp:
        if peft is None:
            write_checkpoint_files(model.mlm if prompt is not None else model, tmp, tok)
        elif config.merge:
            write_checkpoint_files(peft.merge(), tmp, tok)
        else:
            peft.write_files(tmp, from_path, tok)
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
        if run_dir.exists():
            os.rename(run_dir, tmp / "run")
    return FinetuneResult(out, labels, trainable, total, result.step, evals, best_report, result.stopped_early,
                          continual_report)


def _tune_thresholds(model, tok, eval_ex, labels: list[str], max_length: int) -> list[float]:
    from ..tasks.metrics import tune_thresholds
    from .evaluate import predict_examples

    if eval_ex is None:
        return [0.5] * len(labels)
    answers, _, gold = predict_examples(model, tok, eval_ex, "multilabel", labels, max_length)
    return tune_thresholds([a["scores"] for a in answers], gold, labels)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertrtError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise BertrtError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _kept(model) -> dict:
    """The parameters best-checkpoint selection keeps: the trainable ones (all of them in full fine-tuning)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _set_dropout(model, p: float) -> None:
    model.config.hidden_dropout = model.config.attention_dropout = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


class _PeftSteps(Callback):
    """AdaLoRA's rank budget update after every optimizer step, while the gradients are still there."""

    def __init__(self, peft):
        self.peft = peft

    def on_optimizer_step(self, loop) -> None:
        self.peft.after_step(loop.step - 1)
