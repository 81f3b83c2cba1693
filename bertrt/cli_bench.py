"""Measuring commands of the ``bertrt`` command line: ``bench`` (speed and parity of artifacts against the
peers) and ``demo`` (the whole pipeline on the BBC corpus). Merged into the main app by ``bertrt/cli.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_options import BACKEND_HELP, LONG_HELP, Backend, Long, parse_ints

app = typer.Typer(rich_markup_mode=None)


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
    cfg = BenchConfig(batch_sizes=parse_ints(batch_sizes, "--batch-sizes"), threads=threads, repeats=repeats,
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
