"""The ``bertrt`` command line: one command per pipeline stage.

Commands parse their options and call the library; heavy imports (torch, onnx, onnxruntime) happen inside the
command that needs them, so ``bertrt --help`` is instant. Errors a user can fix print one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .cli_augment import AugmentMethod, DataTask as FinetuneTask, app as augment_app
from .cli_security import app as security_app
from .errors import BertrtError

app = typer.Typer(
    help="bertrt: train, compress, export and serve BERT models, from raw text to a verified ONNX artifact.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
)
tokenizer_app = typer.Typer(help="Train and inspect WordPiece tokenizers.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(security_app)  # keygen, sign, mask: top-level commands kept in their own module
app.add_typer(augment_app)  # augment


def _version(value: bool):
    if value:
        typer.echo(f"bertrt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


# ---------------------------------------------------------------------------------------------------- tokenizer
@tokenizer_app.command("train")
def tokenizer_train(
    files: list[Path] = typer.Argument(..., help="UTF-8 text files to learn the vocabulary from."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write tokenizer.json, vocab.txt and "
                                "tokenizer_config.json into (created atomically)."),
    vocab_size: int = typer.Option(30522, help="Vocabulary size including special tokens. Smaller corpora want "
                                   "smaller vocabularies (8k-16k for a few MB of text)."),
    lowercase: bool = typer.Option(True, "--lowercase/--no-lowercase", help="Lowercase and strip accents "
                                   "(uncased BERT). Use --no-lowercase when case carries meaning, e.g. for NER."),
    min_frequency: int = typer.Option(2, help="Ignore pieces seen fewer times than this."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it exists."),
):
    """Train a BERT WordPiece tokenizer (CJK characters split one per token, [CLS]/[SEP]/[MASK] specials)."""
    from .atomic import atomic_dir
    from .tokenizer import save_tokenizer, train_tokenizer

    with atomic_dir(output, force) as tmp:
        tok = train_tokenizer(files, vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency)
        fp = save_tokenizer(tok, tmp)
    typer.echo(f"wrote {output} (vocabulary {tok.get_vocab_size()}, fingerprint {fp[:16]})")


# ---------------------------------------------------------------------------------------------------- info
@app.command()
def info(
    path: Path = typer.Argument(..., help="A checkpoint directory (bertrt or Hugging Face BERT) or an artifact."),
    seq_len: int = typer.Option(128, help="Sequence length for the FLOPs-per-token count (attention grows "
                                "with it)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of text (for an "
                                 "artifact: its whole manifest, kept-neuron indices included)."),
):
    """Describe a checkpoint (architecture, task, labels, parameters, per-layer sizes, FLOPs) or an artifact (task,
    labels, precision, fusions, quantized nodes, per-layer sizes, gates with their numbers, versions)."""
    from .artifact import MANIFEST

    if (path / MANIFEST).is_file():
        from .artifact import format_manifest, load_manifest

        manifest = load_manifest(path, verify=True)
        typer.echo(json.dumps(manifest, indent=2) if as_json else format_manifest(path, manifest))
        return
    from .checkpoint import checkpoint_report, format_checkpoint_report

    report = checkpoint_report(path, seq_len)
    typer.echo(json.dumps(report, indent=2) if as_json else format_checkpoint_report(path, report))


WANDB_HELP = ("Also log the scalars (loss, learning rate, evaluations) to this Weights & Biases project (pip install "
              "'bertrt[track]'); WANDB_MODE=offline keeps the run on disk in the run folder's wandb/ for a later "
              "`wandb sync`.")


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


# ---------------------------------------------------------------------------------------------------- bench
def _parse_ints(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} wants comma-separated integers like 1,8,32, not {text!r}") from None


class Long(str, Enum):
    truncate = "truncate"
    chunks = "chunks"


class Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


BACKEND_HELP = ("Inference engine: auto picks the fastest one installed whose variant passed its gates, by the "
                "times the export measured; onnxruntime always works; openvino (CPU) needs an artifact exported "
                "with an OpenVINO variant and the openvino extra. Set it when serving on a CPU other than the "
                "exporting one (measure both with bertrt bench).")
LONG_HELP = ("classify / embed inputs longer than the artifact's max length: truncate (the default; such outputs "
             'say "truncated": true) or chunks (overlapping windows, probabilities or vectors averaged: slower, '
             "but reads the whole text; use it when texts run long). qa contexts and ner texts are always windowed.")


@app.command("bench")
def bench_command(
    artifacts: Optional[list[Path]] = typer.Argument(None, help="Artifacts of one task to check and time (from "
                                                     "bertrt export). Omit them to time only the peers of "
                                                     "--reference (classify)."),
    data: list[Path] = typer.Option(..., "--data", help="Labelled data of the artifacts' task, in the format "
                                    "finetune reads (embed: classify data or one text per line); repeat for several "
                                    "workloads (e.g. long articles and short headlines)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for bench.json, bench.md and the PNG plots "
                                "(written atomically)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="The fine-tuned checkpoint the artifacts "
                                             "came from: every artifact is checked against it, and the peers "
                                             "(PyTorch, ONNX Runtime) are loaded from it. Default: each artifact's "
                                             "recorded source checkpoint, and no peers."),
    batch_sizes: str = typer.Option("1,8,32", help="Batch sizes of the throughput runs. Add larger ones for "
                                    "offline jobs; the largest is also used for the ratios against the peers."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads for every variant and peer. Default: the "
                                          "cores this process may use; set it to what you will serve with."),
    repeats: int = typer.Option(3, help="Timing rounds. A round is one latency pass and one pass per batch size "
                                "of every variant, in short turns that go round all of them, so a machine that "
                                "drifts slows all alike; throughput is the median round. Raise it on a noisy "
                                "machine."),
    latency_n: int = typer.Option(100, help="Texts timed one by one for batch-1 latency percentiles. p99 needs "
                                  "100 or more to mean anything."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N examples of each --data file (quick "
                                        "looks; the gate then checks fewer decisions)."),
    peers: str = typer.Option("all", help="Peers to run with --reference: all, none, or a comma list of "
                              "torch-fp32, torch-bf16, torch-int8, ort-fp32, ort-int8, ov-fp32, ov-int8 (the "
                              "OpenVINO two need openvino and nncf; all includes them when installed)."),
    max_drop: Optional[float] = typer.Option(None, help="Points of its task metric (accuracy, micro F1, relation "
                                             "F1, entity F1, SQuAD F1) an artifact may lose against the "
                                             "reference before it is refused. Default: the artifact's own export "
                                             "setting (0.5)."),
    min_agreement: Optional[float] = typer.Option(None, help="Decision agreement (0-1) a quantized artifact needs. "
                                                  "Default: its export setting (0.99). fp32 always needs 1.0; "
                                                  "pruned models are judged by their metric alone."),
    skip_refused: bool = typer.Option(False, "--skip-refused", help="Report refused artifacts as rows and time the "
                                      "rest, instead of stopping with an error."),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    same_process: bool = typer.Option(False, "--same-process", help="Load every variant into this process instead "
                                      "of a process each (saves a few seconds of start-up per variant; the "
                                      "numbers then depend on which libraries share the process)."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
):
    """Check every artifact against the reference (decision agreement, its task metric; embeddings by cosine), then
    time it beside the peers (classify):
    batch-1 latency p50/p90/p99, throughput per batch size, tokenization, peak memory, size."""
    from .bench.run import BenchConfig, run_bench

    peer_list = None if peers == "all" else ([] if peers == "none" else [p.strip() for p in peers.split(",")])
    cfg = BenchConfig(batch_sizes=_parse_ints(batch_sizes, "--batch-sizes"), threads=threads, repeats=repeats,
                      latency_n=latency_n, limit=limit, peers=peer_list, max_drop=max_drop,
                      min_agreement=min_agreement, skip_refused=skip_refused, isolate=not same_process,
                      long=long.value, backend=backend.value)
    run_bench(artifacts or [], data, output, cfg, reference=str(reference) if reference else None, force=force,
              log=lambda m: typer.echo(m, err=True))
    typer.echo((output / "bench.md").read_text())
    typer.echo(f"wrote {output}/bench.json, bench.md and plots")


# ---------------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    output: Path = typer.Option(Path("demo-out"), "-o", "--output", help="Folder for every output of the run "
                                "(data splits, tokenizer, checkpoints, artifacts, bench results, summary.json)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Tiny sizes: every stage runs, in under 2 minutes, with "
                                 "meaningless numbers (CI uses it). Leave it off for the real run (12-14.5 minutes "
                                 "on 2 cores; step counts, not seconds, so a seed gives the same models "
                                 "anywhere)."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists (it is deleted first)."),
):
    """The whole pipeline on the packaged BBC News corpus: tokenizer, pretraining from scratch, fine-tuning, the
    same with the packaged all-MiniLM-L6-v2 continued on the articles, pruning, export (fp32, INT8, pruned + INT8),
    and a bench against PyTorch and ONNX Runtime; prints the table and both classifiers' accuracies."""
    from .demo import run_demo

    summary = run_demo(output, dry_run=dry_run, force=force, log=lambda m: typer.echo(m, err=True))
    typer.echo((output / "bench" / "bench.md").read_text())
    typer.echo("| classifier | test articles | their headlines and first sentences |\n| --- | --- | --- |")
    for name, acc in summary["classifiers"].items():
        typer.echo(f"| {name} | {acc['test']:.1f}% | {acc['short']:.1f}% |")
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in summary["stage_seconds"].items())
    typer.echo(f"\ntotal {summary['total_seconds']:.0f}s ({stages}); everything is in {output}")


# ---------------------------------------------------------------------------------------------------- runtime
TRUSTED_KEY_HELP = ("Ed25519 public key (PEM, from `bertrt keygen`) the artifact must be signed by (`bertrt sign`); "
                    "repeat it to trust several keys, e.g. while rotating. Unsigned or changed artifacts are "
                    "refused. Use it whenever artifacts reach this machine through hands you do not control.")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="An artifact directory (model.onnx, tokenizer.json, bertrt.json)."),
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to predict (classify / ner / embed). Omit them "
                                                "to read JSONL from --input or stdin."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help="JSONL file, one input per line: "
                                         '{"text"} (+ "text_pair" for pairs), {"question", "context"} for qa, '
                                         '{"text", "head": [start, end], "tail": [start, end]} for relation. '
                                         "Default: stdin when no TEXT is given."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write JSONL results here instead of stdout."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when onnxruntime-gpu can use it. Ask for "
                                  "cuda explicitly to fail loudly when the GPU is not really in use."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads (default: every core this process may "
                                          "use). Lower it when other busy processes share the machine."),
    batch_size: int = typer.Option(64, help="Most inputs per batch. Inputs are grouped by length; raise it on a "
                                   "GPU with short texts, lower it to reduce memory."),
    max_batch_tokens: int = typer.Option(16384, help="Most tokens per batch, padding included (rows x padded "
                                         "length). Lower it if memory is tight with long texts."),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    ray: bool = typer.Option(False, "--ray", help="Run through Ray Data on a pool of Runtime actors (needs "
                             "bertrt[ray]); -i may be a folder of .jsonl files and -o is a folder of part files, "
                             "each row with the input's id (or line number)."),
    address: Optional[str] = typer.Option(None, help="With --ray: the Ray cluster to join; default: a local one."),
    concurrency: str = typer.Option("1,2", help="With --ray: MIN,MAX Runtime actors; Ray adds actors up to MAX "
                                    "while work waits. One actor per core (or GPU) is a good MAX."),
    format: str = typer.Option("jsonl", "--format", help="With --ray: part file format, jsonl or parquet."),
    rows_per_task: int = typer.Option(1000, help="With --ray: input lines per task (and per part file). Smaller "
                                      "spreads work finer and loses less on a retry; larger makes fewer files."),
):
    """Predict with an artifact: one JSON object per input, in input order (labels, entities, answers, vectors)."""
    from .errors import InputError
    from .runtime import Runtime
    from .runtime.jsonl import check_io, predict_stream, read_inputs, run_io

    if ray:
        from .scaleout.cli import predict_ray

        return predict_ray(artifact, input, output, texts=texts, address=address, concurrency=concurrency,
                           fmt=format, rows_per_task=rows_per_task, force=force,
                           runtime_options={"device": device.value, "threads": threads, "max_batch_size": batch_size,
                                            "max_batch_tokens": max_batch_tokens, "long": long.value,
                                            "backend": backend.value,
                                            "trusted_keys": [str(k) for k in trusted_key] if trusted_key else None})
    check_io(texts, input, output, force)
    rt = Runtime(artifact, device=device.value, threads=threads, max_batch_tokens=max_batch_tokens,
                 max_batch_size=batch_size, long=long.value, trusted_keys=trusted_key or None, backend=backend.value)
    if texts and rt.task in ("qa", "relation"):
        fields = '{"question", "context"}' if rt.task == "qa" else '{"text", "head", "tail"}'
        raise InputError(f"a {rt.task} artifact needs {fields} objects: give them as JSONL with --input")
    run_io(texts, input, output, read_inputs,
           lambda items, out, bar: predict_stream(rt, items, out, chunk_size=1024, progress=bar), "predict", "input")


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command()
def serve(
    artifact: Path = typer.Argument(..., help="An artifact directory to serve."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on. Use 0.0.0.0 only behind a firewall or "
                             "with --api-key-file."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Server processes, each with its own model copy and threads // workers "
                                "ONNX Runtime threads. Raise it when tokenization or JSON, not inference, is the "
                                "bottleneck."),
    api_key_file: Optional[Path] = typer.Option(None, help="File of API keys, one per line as key or name:key "
                                                "(# comments; keys >= 16 visible ASCII characters); clients send "
                                                "'Authorization: Bearer <key>'. Logs and metrics show the name (or "
                                                "a hash prefix), never the key. Edit the file and send SIGHUP to "
                                                "rotate keys without a restart. Without it the API is open."),
    protect_metrics: bool = typer.Option(False, help="Require a key for /metrics and /openapi.json too. Use it "
                                         "when the port is reachable by more than your Prometheus (give "
                                         "Prometheus a key of its own)."),
    rate_limit: Optional[str] = typer.Option(None, help="Requests allowed per API key (per client address "
                                             "without keys), as N/s or N/m; more get 429 + Retry-After. The "
                                             "limit is per worker: with --workers N a caller may get up to N "
                                             "times it. Behind a proxy all clients share its address: use keys."),
    rate_burst: Optional[float] = typer.Option(None, help="Requests a caller may send at once after being idle "
                                               "(the token bucket's size; default: one second's worth of "
                                               "--rate-limit, at least 1). Raise it for bursty clients."),
    ssl_certfile: Optional[Path] = typer.Option(None, help="TLS certificate (PEM, with its chain) to serve "
                                                "HTTPS; needs --ssl-keyfile. Use it when no TLS proxy sits in "
                                                "front, and always with keys on a non-loopback --host."),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="The TLS certificate's private key (PEM)."),
    mask_inputs: bool = typer.Option(False, help="Mask personal data (emails, phones, cards, IDs, ...) in every "
                                     "text before inference, so the model and everything after it never see the "
                                     "raw values. Turn it on when outputs or downstream stores must not hold "
                                     "them; it changes what the model reads. Needs bertrt.mask."),
    mask_logs: Optional[bool] = typer.Option(None, "--mask-logs/--no-mask-logs", help="Mask personal data in log "
                                             "messages and tracebacks (request texts are never logged; a failure's "
                                             "message could quote one). Default: on when bertrt.mask is "
                                             "installed."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when available; cuda fails at startup when "
                                  "the GPU is not really in use."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads per worker (default: cores / workers)."),
    max_batch_tokens: int = typer.Option(8192, help="Token budget of a batch, padding included. Higher raises "
                                         "throughput and latency; lower it when memory is tight."),
    max_batch_size: int = typer.Option(64, help="Most inputs in one batch."),
    max_wait_ms: float = typer.Option(5.0, help="How long a batch waits to fill. Raise it for throughput under "
                                      "heavy load, lower it for latency at light load."),
    max_queue: int = typer.Option(1024, help="Inputs allowed to wait; beyond it requests get 503 instead of "
                                  "ever-growing latency. Size it to what you can serve within your timeout."),
    max_items: int = typer.Option(64, help="Most inputs in one request (more: 413); at most --max-queue."),
    max_chars: int = typer.Option(100_000, help="Most characters in one text field (more: 413). Texts are "
                                  "truncated to the artifact's max length anyway; this bounds tokenization work."),
    max_body_bytes: int = typer.Option(4_000_000, help="Largest request body in bytes (more: 413)."),
    max_concurrent_requests: int = typer.Option(256, help="Admission budget per worker: predict requests admitted "
                                                "at once (reading, tokenizing, queued or running); more get 503 + "
                                                "Retry-After before their body is read. Lower it when memory is "
                                                "tight; raise it when clients send many small requests at once."),
    timeout: float = typer.Option(60.0, help="Seconds a predict request may take from admission to answer (more: "
                                  "504, and its queued inputs are dropped). Set it a little below your clients' or "
                                  "proxy's own timeout."),
    request_timeout: float = typer.Option(30.0, help="Seconds a client has to send a whole request, headers and "
                                          "body (then 408 and close). Bounds slow or idle clients that would hold "
                                          "connections; raise it only for very slow links with large bodies."),
    max_connections: int = typer.Option(512, help="Open client connections per worker; more are answered 503 + "
                                        "Retry-After. The open-file limit is raised to fit."),
    keep_alive: float = typer.Option(75.0, help="Seconds an idle keep-alive connection stays open. Keep it above "
                                     "your load balancer's idle timeout (often 60 s), or it will reuse closed "
                                     "connections."),
    graceful_timeout: float = typer.Option(30.0, help="On SIGTERM, seconds in-flight requests get to finish. "
                                           "Keep it below your orchestrator's kill grace period."),
    liveness_timeout: float = typer.Option(30.0, help="/healthz fails when the batching thread is dead or has "
                                           "been inside one batch longer than this (a wedged worker). Raise it if "
                                           "a single batch can legitimately take longer."),
    log_level: LogLevel = typer.Option(LogLevel.info, help="JSON log lines on stderr; info logs one line per "
                                       "request (id, status, latency, inputs, key id; never the text)."),
    ray: bool = typer.Option(False, "--ray", help="Deploy as a Ray Serve application whose replicas scale with "
                             "load (needs bertrt[ray]); the HTTP API is the same. See README 'Scaling out'."),
    address: Optional[str] = typer.Option(None, help="With --ray: the Ray cluster to join (e.g. auto, "
                                          "ray://head:10001). Default: start a local one."),
    min_replicas: int = typer.Option(1, help="With --ray: fewest replicas; 0 scales to zero when idle (the first "
                                     "request then waits for a replica to load)."),
    max_replicas: int = typer.Option(4, help="With --ray: most replicas; bound it by the cluster's CPUs/GPUs."),
    target_ongoing_requests: float = typer.Option(2.0, help="With --ray: ongoing requests per replica autoscaling "
                                                  "aims for. Lower it for latency, raise it for fewer replicas."),
    upscale_delay: float = typer.Option(10.0, help="With --ray: seconds load must stay above target before "
                                        "replicas are added. Lower it for bursty traffic."),
    downscale_delay: float = typer.Option(60.0, help="With --ray: seconds load must stay below target before "
                                          "replicas are removed. Raise it to avoid flapping."),
    replica_cpus: float = typer.Option(1.0, help="With --ray: CPUs reserved per replica (its ONNX Runtime "
                                       "threads unless --threads is given)."),
    replica_gpus: float = typer.Option(0.0, help="With --ray: GPUs per replica (1 with --device cuda)."),
    print_config: bool = typer.Option(False, "--print-config", help="With --ray: print the equivalent Ray Serve "
                                      "config (for `serve deploy` or a KubeRay RayService) instead of deploying."),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
):
    """Serve an artifact over HTTP: POST /v1/predict (and /v1/mask with bertrt.mask), /healthz, /readyz, /metrics,
    /openapi.json. SIGHUP reloads --api-key-file."""
    from .runtime.access import KeyRing, parse_rate
    from .runtime.launch import EdgeLimits, check_tls
    from .runtime.launch import serve as run_server
    from .runtime.server import ServeConfig

    if api_key_file is not None:
        KeyRing(str(api_key_file))  # fail now, with one line naming the bad line, before loading anything
    tls = check_tls(str(ssl_certfile) if ssl_certfile else None, str(ssl_keyfile) if ssl_keyfile else None)
    config = ServeConfig(artifact=str(artifact), device=device.value, threads=threads,
                         api_key_file=str(api_key_file) if api_key_file else None, protect_metrics=protect_metrics,
                         rate_limit=parse_rate(rate_limit) if rate_limit is not None else None,
                         rate_burst=rate_burst, mask_inputs=mask_inputs, mask_logs=mask_logs, max_items=max_items,
                         max_chars=max_chars, max_body_bytes=max_body_bytes, max_batch_tokens=max_batch_tokens,
                         max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_concurrent_requests=max_concurrent_requests, timeout=timeout,
                         liveness_timeout=liveness_timeout, long=long.value, backend=backend.value,
                         trusted_keys=[str(k) for k in trusted_key] if trusted_key else None)
    limits = EdgeLimits(request_timeout=request_timeout, max_connections=max_connections, keep_alive=keep_alive,
                        graceful_timeout=graceful_timeout)
    if ray or print_config:
        from .errors import InputError
        from .scaleout.cli import serve_ray

        if tls:
            raise InputError("--ssl-certfile/--ssl-keyfile serve TLS from bertrt's own server; with --ray, terminate "
                             "TLS in front of Ray's HTTP proxy (an ingress or load balancer)")
        serve_ray(config, limits, ray=ray, print_config=print_config, address=address, host=host, port=port,
                  min_replicas=min_replicas, max_replicas=max_replicas,
                  target_ongoing_requests=target_ongoing_requests, upscale_delay_s=upscale_delay,
                  downscale_delay_s=downscale_delay, num_cpus=replica_cpus, num_gpus=replica_gpus)
        return
    run_server(config, limits, host=host, port=port, workers=workers, log_level=log_level.value, tls=tls)


# ---------------------------------------------------------------------------------------------------- export
class ExportTask(str, Enum):
    classify = "classify"
    multilabel = "multilabel"
    relation = "relation"
    ner = "ner"
    qa = "qa"
    embed = "embed"


class QuantizeMode(str, Enum):
    none = "none"
    dynamic = "dynamic"
    static = "static"


class QuantPreset(str, Enum):
    auto = "auto"
    avx512_vnni = "avx512_vnni"
    avx2 = "avx2"
    arm64 = "arm64"


class CalibMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


class PoolingMode(str, Enum):
    mean = "mean"
    cls = "cls"


class OpenVINOMode(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class GateDevice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _parse_layers(text: Optional[str]) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--exclude-layers wants comma-separated layer indices like 0,5, not {text!r}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A bertrt checkpoint or any Hugging Face BERT directory "
                                      "(including one fine-tuned by transformers)."),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact folder to create (model.onnx, tokenizer.json, "
                                "bertrt.json), written atomically once every gate passes."),
    task: Optional[ExportTask] = typer.Option(None, help="Artifact task. Default: the checkpoint's own (a bare "
                                              "encoder exports embed). Use embed to get sentence embeddings from "
                                              "any checkpoint."),
    pooling: Optional[PoolingMode] = typer.Option(None, help="embed: mean over real tokens or the [CLS] vector. "
                                                  "Default: the checkpoint's setting (mean). all-MiniLM-L6-v2 wants "
                                                  "mean."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="embed: L2-normalise inside "
                                             "the graph. Turn on for cosine-similarity search (sentence-transformers "
                                             "models such as all-MiniLM-L6-v2 do)."),
    max_length: Optional[int] = typer.Option(None, help="Longest input the artifact accepts (tokens). Default: the "
                                             "model's position limit; lower it to what you will serve."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Zero-shot prompt artifact from a masked-LM "
                                         "checkpoint: the cloze pattern ('{text} It is about [MASK].') its texts are "
                                         "filled into; the graph gives one logit per --verbalizer label. A checkpoint "
                                         "from finetune --prompt exports its own prompt without this."),
    verbalizer: Optional[Path] = typer.Option(None, "--verbalizer", help="With --prompt: JSON mapping each label to "
                                              "one or more single-token words."),
    opset: int = typer.Option(17, help="ONNX opset. 17 is tested; change it only for an older runtime."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="ONNX Runtime's BERT fusions (Attention, "
                                  "SkipLayerNormalization, EmbedLayerNormalization, BiasGelu; on CPU the "
                                  "SkipLayerNormalizations are then split back into Add + LayerNormalization, which "
                                  "ONNX Runtime runs faster). Turn off only to debug a fusion problem."),
    allow_partial_fusion: bool = typer.Option(False, help="Write the artifact even when some layers did not fuse "
                                              "(recorded as a warning). By default a partial fusion is refused."),
    right_padding_only: bool = typer.Option(False, help="Let fused attention read mask lengths instead of the mask: "
                                            "slightly faster, but wrong for left-padded input. Only for a runtime "
                                            "that always pads on the right (bertrt's does)."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision for CUDA, keeping normalisations and softmax-like "
                              "ops in fp32. Slower on most CPUs: use INT8 there."),
    quantize: QuantizeMode = typer.Option(QuantizeMode.none, help="INT8 for CPU: dynamic (no data needed) or static "
                                          "QDQ calibrated on --calib. Try dynamic first."),
    preset: QuantPreset = typer.Option(QuantPreset.auto, help="CPU the INT8 model is for; auto reads this machine's "
                                       "features. Set it when exporting for another machine."),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="Weight scales per output "
                                               "channel (more accurate) or per tensor. Default: from the preset."),
    reduce_range: Optional[bool] = typer.Option(None, "--reduce-range/--full-range", help="7-bit weights, which "
                                                "avoid overflow on CPUs without VNNI. Default: from the preset."),
    calib: Optional[Path] = typer.Option(None, help="Text for static calibration (same formats as --eval; "
                                         "labels ignored). Default: --eval, else the built-in sample."),
    calibration: CalibMethod = typer.Option(CalibMethod.minmax, help="Static range estimation: minmax is robust; "
                                            "percentile or entropy clip outliers and can help when minmax loses "
                                            "accuracy."),
    calib_samples: int = typer.Option(256, help="Texts used for static calibration; more is steadier and slower."),
    exclude_layers: Optional[str] = typer.Option(None, help="Encoder layers to keep in fp32 from the start, e.g. "
                                                 "'0,5' (the fallback finds them itself otherwise)."),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help="When INT8 misses a gate, keep the most "
                                  "sensitive layers in fp32 and retry. Turn off to fail fast."),
    max_fallback_layers: int = typer.Option(3, help="Most layers the fallback may keep in fp32 before refusing."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled data of the model's task for the gates "
                                             "(classify JSONL/CSV/TSV, ner CoNLL/JSONL, qa SQuAD, or .txt lines). "
                                             "Default: a built-in English sample (no task metric then)."),
    max_drop: float = typer.Option(0.5, help="Task-metric loss allowed vs PyTorch fp32, in points. Raise it only if "
                                   "you accept that accuracy cost for speed."),
    max_samples: int = typer.Option(512, help="Examples read from --eval for the gates; more is slower and surer."),
    batch_size: int = typer.Option(16, help="Batch size of the gate runs (rows of mixed lengths, right-padded)."),
    device: GateDevice = typer.Option(GateDevice.cpu, help="Where the gates run the ONNX model: cuda for fp16 "
                                      "artifacts meant for GPUs (needs onnxruntime-gpu)."),
    openvino: OpenVINOMode = typer.Option(OpenVINOMode.auto, help="Also write an OpenVINO IR variant (NNCF INT8 "
                                          "with --quantize, else fp32), gated like the ONNX one and timed beside "
                                          "it, so that the runtime's backend auto can pick the faster: auto when "
                                          "openvino and nncf are installed (the openvino extra); off for a smaller, "
                                          "quicker export; on to fail without them."),
    openvino_bf16: bool = typer.Option(False, "--openvino-bf16", help="Also gate and time the OpenVINO variant "
                                       "computed in bf16 (its non-quantized parts, with --quantize) on a CPU with "
                                       "bf16 (AVX-512 BF16 or AMX), and keep the faster compute that passes. Gate "
                                       "it with --eval on data like yours: on short texts INT8 + bf16 lost accuracy "
                                       "the built-in sample could not show."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact at --output."),
):
    """Export a checkpoint to a verified ONNX artifact: export, fuse, optionally quantize, and pass the parity
    gates (tensor, decision, task metric) before anything is written."""
    from .converters.config import ExportConfig, OpenVINOConfig, OptimizeConfig, ParityConfig, QuantizeConfig
    from .converters.pipeline import export_artifact
    from .tasks.prompt import read_verbalizer

    configs = dict(
        export=ExportConfig(task=task.value if task else None, opset=opset, max_length=max_length,
                            pooling=pooling.value if pooling else None, normalize=normalize, prompt=prompt,
                            verbalizer=read_verbalizer(verbalizer) if verbalizer is not None else None),
        optimize=OptimizeConfig(enabled=optimize, raw_attention_mask=not right_padding_only,
                                require_full_fusion=not allow_partial_fusion, fp16=fp16),
        quantize=QuantizeConfig(mode=quantize.value, preset=preset.value, per_channel=per_channel,
                                reduce_range=reduce_range, calibration=calibration.value,
                                calib_samples=calib_samples, exclude_layers=_parse_layers(exclude_layers),
                                fallback=fallback, max_fallback_layers=max_fallback_layers),
        parity=ParityConfig(eval_path=str(eval_data) if eval_data else None, max_drop=max_drop,
                            max_samples=max_samples, batch_size=batch_size, device=device.value),
        openvino=OpenVINOConfig(mode=openvino.value, bf16=openvino_bf16),
    )
    manifest = export_artifact(checkpoint, output, calib_path=str(calib) if calib else None, force=force, **configs)
    typer.echo(_format_export(output, manifest))


def _format_export(path: Path, m: dict) -> str:
    """What an export produced, in a few lines: precision, fusions, quantized nodes, and every gate's number."""
    lines = [f"artifact   {path}: {m['task']}, {m['precision']}, inputs up to {m['max_length']} tokens, "
             f"padding {m.get('padding', 'any')}"]
    opt = m.get("optimization") or {}
    if opt.get("fusions"):
        want = opt.get("expected", {})
        lines.append("fusions    " + ", ".join(f"{op} {n}" + (f"/{want[op]}" if op in want else "")
                                              for op, n in opt["fusions"].items()))
    q = m.get("quantization")
    if q:
        counts = ", ".join(f"{k} {v}" for k, v in q["counts"].items() if v)
        lines.append(f"quantized  {q['mode']} ({q['preset']}, per-channel {q['per_channel']}, reduce-range "
                     f"{q['reduce_range']}): {counts}; fp32 units: {', '.join(q['fp32_units']) or 'none'}")
    final = m["parity"]["final"]
    from .converters.parity import format_gates

    lines.append(f"gates      on {m['parity']['data']} ({final['examples']} examples): "
                 + format_gates(final, rules="rule", sep="; "))
    if final["gates"]["decision"].get("detail"):
        lines.append(f"decisions  {final['gates']['decision']['detail']}")
    if final.get("decided_by"):
        lines.append(f"decided by {final['decided_by']}")
    from .runtime.backends import describe_backends

    if m.get("backends"):
        lines.append(f"backends   {describe_backends(m)}")
    return "\n".join(lines)


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An artifact folder written by `bertrt export`."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Data to re-run the gates on (formats as for "
                                             "export). Default: the built-in sample."),
    checkpoint: Optional[Path] = typer.Option(None, help="The PyTorch reference. Default: the checkpoint recorded in "
                                              "the manifest (refused if its weights changed)."),
    hashes_only: bool = typer.Option(False, "--hashes-only", help="Only check the sha256 of every file (no torch "
                                     "needed): use it on serving machines."),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
):
    """Re-check an artifact: the sha256 of every file, then the parity gates against the PyTorch model."""
    if hashes_only or trusted_key:
        from .artifact import load_manifest

        m = load_manifest(artifact, verify=True, trusted_keys=trusted_key or None)
        signed = ", signature by a trusted key verified" if trusted_key else ""
        typer.echo(f"{artifact}: sha256 of {len(m['files'])} files verified{signed}")
        if hashes_only:
            return
    from .converters.pipeline import verify_artifact

    report = verify_artifact(artifact, eval_path=str(eval_data) if eval_data else None,
                             checkpoint=str(checkpoint) if checkpoint else None)
    typer.echo(json.dumps({k: report[k] for k in ("precision", "examples", "agreement", "gates")}, indent=2))


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
    batch_size: int = typer.Option(64, help="Examples per forward pass; lower it if memory runs out."),
    base: Path = typer.Option(None, help="PEFT checkpoints: where their base checkpoint is now, if it moved."),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    backend: Backend = typer.Option(Backend.auto, help="Artifacts: " + BACKEND_HELP),
):
    """Report a fine-tuned model's metrics: per-class P/R/F1 and confusion matrix, entity F1, or SQuAD EM/F1."""
    from .runtime.evaluate import evaluate_artifact, is_artifact
    from .tasks.report import format_report

    if is_artifact(model):
        report = evaluate_artifact(model, data, long=long.value, backend=backend.value)
    else:
        from .train.evaluate import evaluate_dir

        report = evaluate_dir(model, data, max_length=max_length, doc_stride=doc_stride, batch_size=batch_size,
                              base=base, long=long.value)
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


def main():
    """Console entry point: run the app, turning bertrt's errors into one line on stderr."""
    try:
        app()
    except BertrtError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
