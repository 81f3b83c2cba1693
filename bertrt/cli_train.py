"""Training commands of the ``bertrt`` command line: ``pretrain``, ``prune``, ``finetune``, ``evaluate``,
``ensemble``, ``zeroshot``. Merged into the main app by ``bertrt/cli.py``; thin over ``bertrt.train``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .cli_augment import AugmentMethod, DataTask as FinetuneTask
from .cli_options import BACKEND_HELP, LONG_HELP, WANDB_HELP, Backend, Long

app = typer.Typer(rich_markup_mode=None)


# ---------------------------------------------------------------------------------------------------- pretrain
@app.command("pretrain")
def pretrain_command(
    files: list[Path] = typer.Argument(..., help="Text files, folders of them (.txt/.md/.jsonl, recursive) or JSONL "
                                       "files with a 'text' field."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: checkpoint/ (latest, atomic, resumable), "
                                "logs/ (TensorBoard) and metrics.jsonl."),
    from_: Path = typer.Option(None, "--from", help="Continue pretraining this bertrt or Hugging Face BERT "
                               "checkpoint (its tokenizer, weights, and NSP when it has the head) on your domain's "
                               "text instead of starting from random weights; --preset and --vocab-size then do not "
                               "apply. Use a lower --lr (e.g. 5e-5) so it adapts rather than forgets."),
    head_steps: int = typer.Option(0, help="With --from a checkpoint that lacks the MLM head (a sentence encoder, a "
                                   "classifier): first train only the fresh head this many steps, everything else "
                                   "frozen, so its random output does not disturb the encoder (e.g. 200)."),
    head_lr: float = typer.Option(1e-3, help="Peak learning rate of the --head-steps warm-up."),
    tokenizer: Path = typer.Option(None, help="Use this tokenizer (tokenizer.json, vocab.txt or a folder) instead "
                                   "of training one on the corpus (from scratch; --from brings its own)."),
    vocab_size: int = typer.Option(30522, help="Vocabulary size when training the tokenizer. A few MB of text wants "
                                   "8k-16k."),
    preset: str = typer.Option("mini", help="Model size: tiny (2L/128H), mini (4L/256H), small (4L/512H), base "
                               "(12L/768H). Bigger needs far more text and time."),
    seq_len: int = typer.Option(128, help="Tokens per example. 128 is BERT's first phase; longer costs "
                                "quadratically more attention."),
    batch_size: int = typer.Option(32, help="Sequences per micro-batch per process; lower it if memory runs out and "
                                    "raise --grad-accum to keep the effective batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step (effective batch = batch-size x "
                                   "grad-accum x processes); the loss is normalised over the whole of it."),
    lr: float = typer.Option(5e-4, help="Peak learning rate. 5e-4 suits tiny/mini; use 1e-4 for base."),
    warmup: float = typer.Option(0.06, help="Warm-up: a fraction of the run if < 1, else a number of steps."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (never applied to biases and LayerNorm)."),
    max_steps: int = typer.Option(None, help="Stop after this many optimizer steps (the learning rate decays to 0 "
                                  "here)."),
    epochs: float = typer.Option(None, help="Stop after this many passes over the corpus."),
    budget: str = typer.Option(None, help="Stop after this much wall-clock training time, e.g. 30m or 2h; the "
                               "learning rate then decays over the time budget."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 autocast: faster on CPUs with AMX/AVX512-BF16 and "
                                  "on GPUs with tensor cores."),
    seed: int = typer.Option(0, help="Seed of initial weights, example layout, masking and dropout."),
    eval_every: int = typer.Option(0, help="Evaluate held-out MLM/NSP accuracy every N steps (0: at the end only)."),
    save_every: int = typer.Option(0, help="Write a resumable checkpoint every N steps (0: at the end only); set it "
                                   "for long runs so a crash loses little."),
    eval_fraction: float = typer.Option(0.01, help="Share of documents held out for evaluation (0 disables it)."),
    mlm_prob: float = typer.Option(0.15, help="Share of tokens chosen for MLM (80% [MASK], 10% random, 10% kept)."),
    whole_word_mask: bool = typer.Option(False, "--whole-word-mask", help="Mask all pieces of a word together "
                                         "(harder task, usually better models)."),
    nsp: bool = typer.Option(True, "--nsp/--no-nsp", help="Next-sentence prediction on segment pairs. --no-nsp "
                             "trains MLM only on packed full sentences (RoBERTa-style; saves a BertForMaskedLM)."),
    documents: str = typer.Option("auto", help="What a document is: file (each file), blank (blocks separated by "
                                  "blank lines), auto (blank for a single text file, else file)."),
    cache_dir: Path = typer.Option(None, help="Where the tokenized corpus is cached (default ~/.cache/bertrt, or "
                                   "$BERTRT_CACHE). Under multi-node torchrun it must be on a shared filesystem."),
    device: str = typer.Option("auto", help="auto (CUDA if available), cpu or cuda."),
    wandb: str = typer.Option(None, "--wandb", help=WANDB_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output exactly where its last "
                                "checkpoint stopped (same settings, same number of processes)."),
    force: bool = typer.Option(False, "--force", help="Start over, replacing an existing run in --output."),
):
    """Pretrain a BERT on raw text - from scratch, or continued from a checkpoint with --from - by masked language
    modelling + next-sentence prediction.

    Runs the same under `torchrun --nproc_per_node=N` (DDP: gloo on CPU, nccl on CUDA)."""
    from .train.distributed import rank, shutdown
    from .train.loop import TrainConfig
    from .train.pretrain import PretrainConfig, parse_duration, pretrain

    cfg = PretrainConfig(preset=preset, tokenizer=str(tokenizer) if tokenizer else None, vocab_size=vocab_size,
                         seq_len=seq_len, batch_size=batch_size, nsp=nsp, mlm_prob=mlm_prob,
                         whole_word=whole_word_mask, documents=documents, eval_fraction=eval_fraction,
                         cache_dir=str(cache_dir) if cache_dir else None, device=device,
                         from_checkpoint=str(from_) if from_ else None, head_steps=head_steps, head_lr=head_lr)
    train_cfg = TrainConfig(lr=lr, warmup=warmup, weight_decay=weight_decay, max_steps=max_steps, epochs=epochs,
                            budget_s=parse_duration(budget) if budget else None, grad_accum=grad_accum,
                            precision=precision, seed=seed, eval_every=eval_every, save_every=save_every,
                            wandb=wandb)
    try:
        _, result = pretrain(files, output, cfg, train_cfg, resume=resume, force=force)
    finally:
        shutdown()
    if rank() == 0:
        last = result.evals[-1] if result.evals else {}
        evals = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
        warm = result.head_warmup
        if warm is not None and warm.evals:
            typer.echo(f"head warm-up: {warm.step} steps, held-out " + ", ".join(
                f"{k} {v:.4f}" for k, v in warm.evals[-1].items() if k != "step"))
        typer.echo(f"wrote {result.checkpoint} (step {result.step}, {result.tokens:,} tokens, "
                   f"{result.elapsed_s:.0f}s{', held-out ' + evals if evals else ''})")


# ---------------------------------------------------------------------------------------------------- finetune
class PeftMethod(str, Enum):
    none = "none"
    lora = "lora"
    adalora = "adalora"
    adapter = "adapter"
    prefix = "prefix"


class Adversarial(str, Enum):
    none = "none"
    fgm = "fgm"
    pgd = "pgd"


class Anchor(str, Enum):
    none = "none"
    l2sp = "l2sp"
    ewc = "ewc"


@app.command("finetune")
def finetune_command(
    train: Path = typer.Argument(..., help="Training data: classify JSONL/CSV/TSV (text, optional text_pair, label), "
                                 "ner CoNLL or JSONL (tokens, tags), qa SQuAD v1.1 JSON."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the fine-tuned checkpoint (written "
                                "atomically; the training run's files go in its run/ subfolder)."),
    task: FinetuneTask = typer.Option(..., "--task", help="classify (single texts or pairs), multilabel (any "
                                      'number of labels per text: JSONL with a "labels" list; per-label thresholds '
                                      "are tuned on --eval), relation (JSONL text, head and tail character spans, "
                                      "label; a no_relation label is left out of its F1), ner or qa."),
    from_: Path = typer.Option(..., "--from", help="Start from this bertrt checkpoint or Hugging Face BERT folder "
                               "(a task head is added fresh when it has none for these labels)."),
    eval_data: Path = typer.Option(None, "--eval", help="Held-out data in the same format: evaluated every "
                                   "--eval-every steps for best-checkpoint selection and early stopping."),
    peft: PeftMethod = typer.Option(PeftMethod.none, "--peft", help="Train only a small adapter (plus the task "
                                    "head): lora is the usual choice; adalora adapts ranks per matrix; adapter and "
                                    "prefix add layers (cannot be merged)."),
    merge: bool = typer.Option(False, "--merge", help="With --peft lora/adalora: write a plain checkpoint with the "
                               "adapter folded in, ready for export."),
    lora_r: int = typer.Option(8, help="LoRA rank (AdaLoRA: the average rank it prunes to). Raise it if LoRA trails "
                               "full fine-tuning."),
    lora_alpha: float = typer.Option(16.0, help="LoRA scale numerator (update scaled by alpha / r)."),
    lora_targets: str = typer.Option("query,value", help="Comma-separated Linear layers LoRA adapts: query, key, "
                                     "value, output, intermediate. More targets: closer to full fine-tuning, more "
                                     "parameters."),
    adapter_size: int = typer.Option(64, help="Bottleneck width of --peft adapter."),
    prefix_length: int = typer.Option(16, help="Prefix vectors per layer for --peft prefix."),
    max_length: int = typer.Option(128, help="Tokens per example (longer texts are truncated; QA contexts are split "
                                   "into windows). Longer is slower, quadratically in attention."),
    doc_stride: int = typer.Option(None, help="QA: overlap in tokens between consecutive context windows "
                                   "(default: a quarter of --max-length); must be below max-length minus the question."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per optimizer step. Default: 16 below 10,000 "
                                             "training examples (small sets need the extra steps), else 32. Lower it "
                                             "if memory runs out."),
    epochs: float = typer.Option(3.0, help="Passes over the training data (2-4 suits most tasks)."),
    max_steps: int = typer.Option(None, help="Stop after this many optimizer steps, if before --epochs."),
    lr: float = typer.Option(None, help="Peak learning rate. Default: 5e-5 full, 5e-4 lora/adapter, 1e-3 adalora, "
                             "1e-2 prefix."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay (never on biases and LayerNorm)."),
    warmup: float = typer.Option(0.1, help="Warm-up: a fraction of the run if < 1, else a number of steps."),
    dropout: float = typer.Option(None, help="Override the checkpoint's dropout; raise it (0.2-0.3) on small data "
                                  "that overfits."),
    eval_every: int = typer.Option(0, help="Evaluate every N optimizer steps (0: once per epoch)."),
    save_every: int = typer.Option(0, help="Write a resumable checkpoint every N steps (0: at the end only); set it "
                                   "for long runs so that --resume loses little after a crash."),
    patience: int = typer.Option(None, help="Stop after this many evaluations without improvement (needs --eval); "
                                 "unset: train all epochs, still keeping the best."),
    class_weights: bool = typer.Option(False, "--class-weights", help="Weight the loss by inverse class frequency: "
                                       "use it when some classes are rare."),
    group_by_length: bool = typer.Option(False, "--group-by-length", help="Batch texts of similar lengths together "
                                         "(still shuffled): far less padding, so much faster when short and long "
                                         "texts mix; batches are then less random."),
    adversarial: Adversarial = typer.Option(Adversarial.none, "--adversarial", help="fgm: also train on word "
                                            "embeddings perturbed along the loss gradient (robustness; ~2x the cost); "
                                            "pgd: a stronger attack of --adv-steps steps (~(2 + steps)x the cost)."),
    adv_epsilon: float = typer.Option(1.0, help="Size of the perturbation (FGM: of the whole batch's; PGD: the "
                                      "radius of each example's). Larger is more robust, until clean accuracy drops."),
    adv_steps: int = typer.Option(3, help="PGD's ascent steps: more find a stronger perturbation, each costs a "
                                  "forward and backward pass."),
    adv_alpha: float = typer.Option(None, help="PGD's step size (default 2.5 x epsilon / steps, so the walk reaches "
                                    "the ball's surface)."),
    augment: Optional[AugmentMethod] = typer.Option(None, "--augment", help="eda or mlm: train on fresh variants "
                                                    "of every training example each epoch besides the example (see "
                                                    "`bertrt augment`); helps most with a few hundred examples or "
                                                    "fewer. The --eval data is never augmented."),
    augment_per_example: int = typer.Option(1, help="Variants of each training example per epoch (each epoch then "
                                            "has 1 + this many times the steps)."),
    augment_from: Path = typer.Option(None, help="--augment mlm: the checkpoint whose masked-LM head fills the "
                                      "masks (default --from, which then needs one)."),
    new_head: bool = typer.Option(False, "--new-head", help="Start the task head afresh. By default a --from model "
                                  "of the same task keeps its head rows for the labels it knows and gains rows for "
                                  "new ones (continual learning); use this to re-purpose it for unrelated labels."),
    replay: Path = typer.Option(None, "--replay", help="The previous task's training data: a rehearsal sample of "
                                "it (--replay-ratio) is mixed into every epoch, the surest guard against forgetting."),
    replay_ratio: float = typer.Option(0.1, help="Share of the --replay data kept as the rehearsal memory (drawn "
                                       "once with --seed). More remembers better and trains longer."),
    replay_repeat: int = typer.Option(1, help="Times the rehearsal memory appears in every epoch. Raise it when the "
                                      "new data far outnumbers the memory and old classes get under-predicted: it "
                                      "rebalances them without keeping more old data (BBC: 10 for a 10% memory, "
                                      "with half the previous run's --lr, stayed within 0.4 points of joint "
                                      "training)."),
    anchor: Anchor = typer.Option(Anchor.none, "--anchor", help="Keep the weights near the --from model: l2sp (plain "
                                  "distance) or ewc (weighted by how much each weight mattered on the old data, "
                                  "from --replay or --fisher-data)."),
    anchor_weight: float = typer.Option(1.0, help="Strength of --anchor; raise it if the old task is forgotten, "
                                        "lower it if the new one does not learn."),
    fisher_data: Path = typer.Option(None, "--fisher-data", help="Old training data for --anchor ewc's Fisher "
                                     "estimate when it is not given as --replay."),
    fisher_samples: int = typer.Option(256, help="Old examples --anchor ewc's Fisher estimate uses (one backward "
                                       "pass each); more is steadier and slower."),
    eval_old: Path = typer.Option(None, "--eval-old", help="The previous task's test data: evaluated before and "
                                  "after, so the run reports what it forgot beside what it gained."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Few-shot by prompt (PET): train a masked-LM "
                                         "checkpoint as a classifier through its MLM head, reading this cloze pattern, "
                                         "e.g. '{text} It is about [MASK].'. Use it with a few labelled examples per "
                                         "label, where a fresh classifier head has too little to learn from."),
    verbalizer: Optional[Path] = typer.Option(None, "--verbalizer", help="With --prompt: JSON mapping each label to "
                                              "one or more single-token words the mask should predict."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 autocast on hardware that has it."),
    seed: int = typer.Option(0, help="Seed of the head's initialisation, data order, replay sample and dropout."),
    wandb: str = typer.Option(None, "--wandb", help=WANDB_HELP),
    device: str = typer.Option("auto", help="auto (CUDA if available), cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from --output's last "
                                "checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
):
    """Fine-tune a BERT for classification (texts or pairs), NER or extractive QA: fully or with PEFT."""
    from .tasks.prompt import read_verbalizer
    from .train.finetune import FinetuneConfig, finetune
    from .train.peft import PeftConfig

    peft_cfg = None
    if peft != PeftMethod.none:
        peft_cfg = PeftConfig(peft.value, r=lora_r, alpha=lora_alpha, adapter_size=adapter_size,
                              prefix_length=prefix_length,
                              targets=[t.strip() for t in lora_targets.split(",") if t.strip()],
                              init_r=max(12, lora_r + 4))
    cfg = FinetuneConfig(task.value, max_length=max_length, batch_size=batch_size, epochs=epochs,
                         max_steps=max_steps, lr=lr, weight_decay=weight_decay, warmup=warmup, dropout=dropout,
                         eval_every=eval_every, save_every=save_every, patience=patience,
                         class_weights=class_weights, group_by_length=group_by_length,
                         adversarial=None if adversarial == Adversarial.none else adversarial.value,
                         adv_epsilon=adv_epsilon, adv_steps=adv_steps, adv_alpha=adv_alpha,
                         augment=augment.value if augment else None, augment_per_example=augment_per_example,
                         augment_from=str(augment_from) if augment_from else None, doc_stride=doc_stride, seed=seed,
                         precision=precision,
                         peft=peft_cfg, merge=merge, new_head=new_head, replay_ratio=replay_ratio,
                         replay_repeat=replay_repeat,
                         anchor=None if anchor == Anchor.none else anchor.value, anchor_weight=anchor_weight,
                         fisher_samples=fisher_samples, wandb=wandb, prompt=prompt,
                         verbalizer=read_verbalizer(verbalizer) if verbalizer is not None else None)
    r = finetune(train, output, from_, cfg, eval_path=eval_data, force=force, resume=resume, device=device,
                 replay_path=replay, eval_old_path=eval_old, fisher_path=fisher_data)
    share = 100 * r.trainable_parameters / r.total_parameters
    typer.echo(f"trainable parameters: {r.trainable_parameters:,} of {r.total_parameters:,} ({share:.2f}%)")
    if r.best:
        from .tasks.report import format_report

        typer.echo(format_report(r.best))
    if r.continual:
        from .train.continual import format_continual

        typer.echo(format_continual(r.continual))
    stopped = " (stopped early)" if r.stopped_early else ""
    typer.echo(f"wrote {r.path} ({r.steps} steps{stopped})")


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Argument(..., help="A fine-tuned checkpoint (plain or PEFT) from bertrt finetune, or an "
                                 "artifact from bertrt export (evaluated through the runtime, no torch)."),
    data: Path = typer.Argument(..., help="Labelled data in the task's format (as for finetune)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report (per class, confusion matrix) "
                                  "as JSON here."),
    max_length: int = typer.Option(None, help="Tokens per example; default: what the model was fine-tuned with."),
    doc_stride: int = typer.Option(None, help="QA: overlap between context windows (default: a quarter of the max "
                                   "length)."),
    batch_size: int = typer.Option(None, help="Examples per forward pass (default 64); lower it if memory runs "
                                   "out."),
    base: Path = typer.Option(None, help="PEFT checkpoints: where their base checkpoint is now, if it moved."),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    backend: Backend = typer.Option(None, help="Artifacts: " + BACKEND_HELP),
):
    """Report a fine-tuned model's metrics: per-class P/R/F1 and confusion matrix, entity F1, or SQuAD EM/F1.

    --max-length, --doc-stride, --batch-size and --base apply to checkpoints; an artifact is evaluated as it was
    exported (its max length and stride, batches its runtime forms), through --backend."""
    from .errors import ArtifactError, CheckpointError
    from .runtime.evaluate import evaluate_artifact, is_artifact
    from .tasks.report import format_report

    if is_artifact(model):
        given = [name for name, v in (("--max-length", max_length), ("--doc-stride", doc_stride),
                                      ("--batch-size", batch_size), ("--base", base)) if v is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ArtifactError(f"{', '.join(given)} {verb} to checkpoints, not to the artifact {model}: it is "
                                "evaluated as it was exported (re-export it with --max-length / --doc-stride to "
                                "change those)")
        report = evaluate_artifact(model, data, long=long.value, backend=(backend or Backend.auto).value)
    else:
        if backend is not None:
            raise CheckpointError(f"--backend applies to artifacts; the checkpoint {model} is evaluated in PyTorch")
        from .train.evaluate import evaluate_dir

        report = evaluate_dir(model, data, max_length=max_length, doc_stride=doc_stride,
                              batch_size=batch_size or 64, base=base, long=long.value)
    typer.echo(format_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


@app.command("ensemble")
def ensemble_command(
    members: list[Path] = typer.Argument(..., help="Two or more artifacts of one task (classify, multilabel, "
                                         "relation, ner or embed) with the same labels and tokenizer, exported "
                                         "alike (max length, prompt); sizes and precisions may differ."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the ensemble artifact, written atomically "
                                "once its gates pass."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled data of the task: the ensemble's metric "
                                             "is gated against its best member's and reported beside each member's. "
                                             "Default: the built-in sample (outputs checked, no metric)."),
    max_drop: float = typer.Option(0.5, help="How many points the ensemble's metric may fall below its best "
                                   "member's before it is refused (then the best member alone is the better "
                                   "artifact)."),
    max_samples: int = typer.Option(512, help="Examples read from --eval; more is slower and surer."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact at --output."),
):
    """Combine artifacts into one whose runtime averages the members' probabilities (or embedding vectors): one
    graph, served, evaluated and benched like any artifact; more accurate than a member, and N times the work."""
    from .converters.config import ParityConfig
    from .converters.ensemble import build_ensemble, format_ensemble

    parity = ParityConfig(eval_path=str(eval_data) if eval_data else None, max_drop=max_drop,
                          max_samples=max_samples)
    typer.echo(format_ensemble(output, build_ensemble(members, output, parity, force=force)))


@app.command("zeroshot")
def zeroshot_command(
    model: Path = typer.Argument(..., help="A checkpoint with a masked-LM head (pretraining or BertForMaskedLM)."),
    data: Path = typer.Argument(..., help="Classify data (JSONL/CSV/TSV with text; label optional: with labels "
                                "a report is printed)."),
    template: str = typer.Option(..., help="The prompt, with {text} (and {text_pair}) and one [MASK], e.g. "
                                 "'{text} This is about [MASK].'"),
    verbalizer: Path = typer.Option(..., help="JSON object mapping each label to one or more single-token words."),
    max_length: int = typer.Option(128, help="Tokens per prompt; the text is cut so the template always fits."),
    json_out: Path = typer.Option(None, "--json", help="Write predictions (and the report) as JSON here."),
):
    """Classify without training: fill a cloze prompt and read the masked-LM head through a verbalizer."""
    from .tasks.report import format_report
    from .train.zeroshot import zeroshot

    result = zeroshot(model, data, template, verbalizer, max_length=max_length)
    if "report" in result:
        typer.echo(format_report(result["report"]))
    else:
        typer.echo("\n".join(result["predictions"]))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


# ---------------------------------------------------------------------------------------------------- prune
@app.command("prune")
def prune_command(
    checkpoint: Path = typer.Argument(..., help="A fine-tuned checkpoint (task classify, ner or qa) to prune."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the pruned checkpoint (written atomically); "
                                "it exports, quantizes and serves like any other."),
    data: Path = typer.Option(..., "--data", help="Labelled examples of the checkpoint's own task (classify "
                              "JSONL/CSV/TSV, ner CoNLL/JSONL, qa SQuAD v1.1) used to rank heads and neurons. A few "
                              "hundred to a few thousand are enough; the training set is fine."),
    keep_flops: float = typer.Option(..., "--keep-flops", help="Fraction of the encoder's FLOPs per token to keep, "
                                     "in (0, 1]. 0.6 is a good start; lower is faster and loses more accuracy."),
    max_length: int = typer.Option(128, help="Truncate examples to this many tokens; FLOPs are also counted at this "
                                   "length. Set it to the length you will serve at."),
    max_examples: int = typer.Option(2048, help="Use at most this many examples (a seeded random subset). More "
                                     "gives steadier importance at a linear cost in time."),
    min_examples: int = typer.Option(64, help="Refuse to prune with fewer examples than this. Lower it only for a "
                                     "smoke test: importance from a handful of examples is noise."),
    batch_size: int = typer.Option(16, help="Examples per forward/backward pass; lower it if memory runs out."),
    rescale: bool = typer.Option(True, "--rescale/--no-rescale", help="Least-squares rescaling of the kept heads "
                                 "and neurons, layer by layer, to restore each layer's output. Keep it on unless "
                                 "you want the plain mask-search result (e.g. to measure what rescaling adds)."),
    recover_epochs: float = typer.Option(0, "--recover-epochs", help="After pruning, fine-tune for this many "
                                         "epochs over --data with distillation from the unpruned model. 0 skips it; "
                                         "1-3 usually win back most of what a low --keep-flops loses. Recovery "
                                         "learns only the kinds of text --data holds: if you will serve short "
                                         "texts too, add some (e.g. headlines of the training articles)."),
    recover_lr: float = typer.Option(3e-5, help="Peak learning rate of the recovery fine-tuning; lower it if the "
                                     "recovery loss rises."),
    seed: int = typer.Option(0, help="Seed of the example subset and of the recovery's shuffling; the same seed "
                             "and data give the same pruned checkpoint. Change it to see how much the result "
                             "depends on the sample."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it exists."),
):
    """Remove whole attention heads and FFN neurons (Fisher importance + FLOPs-budget mask search), without
    retraining; the smaller matrices make ONNX Runtime faster."""
    from .converters.prune import PruneConfig, RecoverConfig, format_summary, prune_checkpoint

    config = PruneConfig(keep_flops=keep_flops, seq_len=max_length, rescale=rescale, min_examples=min_examples)
    recovery = RecoverConfig(epochs=recover_epochs, lr=recover_lr, batch_size=batch_size, seed=seed) \
        if recover_epochs else None
    record = prune_checkpoint(checkpoint, output, data, config, recovery, max_examples=max_examples,
                              batch_size=batch_size, seed=seed, force=force)
    typer.echo(format_summary(record))
    typer.echo(f"wrote {output}")
