"""Low-resource BBC News by prompt: 20 labelled articles per topic, zero-shot and few-shot (PET) cloze prompts.

The prompt half of the low-resource study; bench/lowres_bbc.py has plain fine-tuning, augmentation and adversarial
training on the same labelled articles (``bertrt.data.bbc.few_shot``, the same seeds) and the same 445 test articles
of ``bbc_split``, so the numbers sit side by side.

Start model: a prompt reads a masked-LM head and all-MiniLM-L6-v2 has none, so MiniLM is first continued-pretrained
on the training articles' text (``pretrain --from``, unlabelled text, which is fair in the low-resource setting;
``continual_bbc.continued_pretraining``, the recipe all three BBC benches share: the fresh MLM head trained alone, then
the whole model; seed 0, done once and shared by the seeds, or ``--dapt-checkpoint``'s run reused). Methods, through
the library code the commands run:
  zeroshot  ``bertrt zeroshot`` on the test articles: no labels at all (the same model for every seed, so one number);
  fewshot   ``bertrt finetune few.jsonl --task classify --from DAPT --prompt P --verbalizer V``: the seed's 20
            articles per topic, trained through the MLM head (lowres_bbc.py's epochs, lr and batch);
  head      plain fine-tuning (a fresh classifier head) from the same DAPT model and articles: what the prompt adds
            over the usual head, on the same start.
``--export-seeds`` also exports the zero-shot model and those seeds' few-shot models to INT8 prompt artifacts
(``bertrt export``) and evaluates them through the runtime.

Every run is cached as JSON under ``OUT/runs/``, so a rerun resumes; ``OUT/results.md`` and ``results.json`` are
rebuilt after every run (``--report-only`` rebuilds them without training). Heavy: hold the machine-wide lock.

    flock /work/heavy.lock nice -n 0 python bench/prompt_bbc.py --out bench/results/prompt_bbc
    python bench/prompt_bbc.py --out /tmp/pr-smoke --limit 150 --per-topic 2 --epochs 1 --max-length 32 \\
        --dapt-head-steps 2 --dapt-steps 2 --seeds 0   # smoke test, a few minutes; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from bertrt.data.bbc import bbc_split, few_shot, write_jsonl
from continual_bbc import (accuracy_on, add_common_args, add_dapt_args, cached, continued_pretraining,
                           dapt_summary, drop, mean_sd, start_run, write_results)

METHODS = ("zeroshot", "fewshot", "head")
PATTERN = "{text} This news is about [MASK]."
VERBALIZER = {"business": ["business", "economy"], "entertainment": ["entertainment", "film", "music"],
              "politics": ["politics", "government"], "sports": ["sport", "football"],
              "tech": ["technology", "internet", "computer"]}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "Comma-separated seeds (the labelled articles and training).")
    ap.add_argument("--pattern", default=PATTERN, help="The cloze pattern.")
    ap.add_argument("--per-topic", type=int, default=20, help="Labelled training articles per topic.")
    ap.add_argument("--epochs", type=float, default=8, help="Fine-tuning epochs (as lowres_bbc.py).")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--export-seeds", default="0", help="Seeds whose few-shot model is also exported to INT8 (and "
                    "the zero-shot model with the first); empty: none.")
    ap.add_argument("--keep-checkpoints", action="store_true")
    add_dapt_args(ap)
    return ap.parse_args(argv)


def prepare(args, work: Path) -> dict:
    train, test = bbc_split(args.limit)
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.txt"  # the training articles' text, one block each (unlabelled: the DAPT)
    corpus.write_text("\n\n".join(r["text"] for r in train) + "\n", encoding="utf-8")
    (d / "verbalizer.json").write_text(json.dumps(VERBALIZER, indent=1) + "\n")
    return {"train_rows": train, "corpus": corpus, "test": write_jsonl(d / "test.jsonl", test),
            "verbalizer": d / "verbalizer.json"}


def export_int8(checkpoint: Path, art: Path, data: dict, prompt: dict | None = None) -> dict:
    """The checkpoint's INT8 prompt artifact (gated on the test articles) and its accuracy through the runtime."""
    from bertrt.converters.config import ExportConfig, ParityConfig, QuantizeConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.runtime.evaluate import evaluate_artifact

    m = export_artifact(checkpoint, art, ExportConfig(**(prompt or {})), quantize=QuantizeConfig(mode="dynamic"),
                        parity=ParityConfig(eval_path=str(data["test"])), force=True,
                        log=lambda x: print(x, flush=True), progress=False)
    return {"artifact_accuracy": evaluate_artifact(art, data["test"], device="cpu", progress=False)["accuracy"],
            "artifact_gates": {k: g["value"] for k, g in m["parity"]["final"]["gates"].items()}}


def run_zeroshot(args, data: dict, dapt: Path, work: Path, runs: Path, export: bool) -> None:
    from bertrt.train.zeroshot import zeroshot

    def run():
        r = zeroshot(dapt, data["test"], args.pattern, data["verbalizer"], max_length=args.max_length,
                     progress=False)
        out = {"all": r["report"]["accuracy"], "pattern": args.pattern}
        if export:
            out |= export_int8(dapt, work / "art-zeroshot", data,
                               {"prompt": args.pattern, "verbalizer": VERBALIZER, "max_length": args.max_length})
        return out

    print(f"zero-shot: {json.dumps(cached(runs / 'zeroshot.json', run))}", flush=True)


def run_seed(args, seed: int, data: dict, dapt: Path, work: Path, runs: Path, export: bool) -> None:
    from bertrt.train.finetune import FinetuneConfig, finetune

    few = write_jsonl(work / f"few-seed{seed}.jsonl", few_shot(data["train_rows"], args.per_topic, seed))
    for name, extra in (("fewshot", {"prompt": args.pattern, "verbalizer": VERBALIZER}), ("head", {})):
        def run(name=name, extra=extra):
            out = work / f"{name}-seed{seed}"
            cfg = FinetuneConfig("classify", max_length=args.max_length, batch_size=args.batch_size,
                                 epochs=args.epochs, lr=args.lr, seed=seed, progress=False, **extra)
            res = finetune(few, out, dapt, cfg, force=True)
            result = {**accuracy_on(out, {"all": data["test"]}), "train_articles": sum(1 for _ in open(few)),
                      "steps": res.steps}
            if export and name == "fewshot":
                result |= export_int8(out, work / f"art-{name}-seed{seed}", data)
            drop(out, args.keep_checkpoints)
            return result

        print(f"seed {seed} {name}: {json.dumps(cached(runs / f'seed{seed}' / f'{name}.json', run))}", flush=True)


def report(args, runs: Path) -> None:
    results = {"dapt": None, "zeroshot": None, "runs": {}}
    for name in ("dapt", "zeroshot"):
        if (runs / f"{name}.json").is_file():
            results[name] = json.loads((runs / f"{name}.json").read_text())
    for f in sorted(runs.glob("seed*/*.json")):
        results["runs"].setdefault(f.stem, {})[f.parent.name] = json.loads(f.read_text())
    lines = ["# Low-resource BBC News by prompt: zero-shot and few-shot (PET)", "",
             f"`{' '.join(['python', 'bench/prompt_bbc.py', *sys.argv[1:]])}` - {platform.node()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {args.per_topic} labelled training articles "
             "per topic (`bertrt.data.bbc.few_shot`, per seed), accuracy in % on the test articles of `bbc_split` (445 without --limit), mean ± sd "
             f"over the seeds that finished (n). Pattern `{args.pattern}`; verbalizer "
             + "; ".join(f"{k}: {', '.join(v)}" for k, v in VERBALIZER.items()) + ".", "",
             "Start model: all-MiniLM-L6-v2 has no masked-LM head, so every method here starts from MiniLM "
             "continued-pretrained on the training articles' text (unlabelled; `pretrain --from`, below). "
             "bench/lowres_bbc.py's plain fine-tuning starts from MiniLM itself.", "",
             "| method | labels used | accuracy % | INT8 prompt artifact % | seconds |", "| --- | --- | --- | --- | --- |"]
    z = results["zeroshot"]
    if z:
        art = f"{100 * z['artifact_accuracy']:.1f}" if "artifact_accuracy" in z else "-"
        lines.append(f"| zero-shot prompt | none | {100 * z['all']:.1f} (one model) | {art} | {z['seconds']:.0f} |")
    for name, label in (("fewshot", "few-shot prompt (PET)"), ("head", "fine-tuning, fresh head (same start)")):
        per_seed = list(results["runs"].get(name, {}).values())
        arts = [r["artifact_accuracy"] for r in per_seed if "artifact_accuracy" in r]
        lines.append(f"| {label} | {args.per_topic}/topic | {mean_sd([r['all'] for r in per_seed])} | "
                     f"{mean_sd(arts) if arts else '-'} | "
                     f"{statistics.mean([r['seconds'] for r in per_seed]) if per_seed else 0:.0f} |")
    if results["dapt"]:
        lines += ["", "Start model: " + dapt_summary(results["dapt"])]
    write_results(args.out, results, lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = args.out / "runs"
    if args.report_only:
        report(args, runs)
        print((args.out / "results.md").read_text())
        return 0
    work = start_run(args)
    data = prepare(args, work)
    dapt = continued_pretraining(args, data["corpus"], work, runs / "dapt.json")
    exports = {int(s) for s in args.export_seeds.split(",") if s.strip()}
    run_zeroshot(args, data, dapt, work, runs, bool(exports))
    report(args, runs)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        run_seed(args, seed, data, dapt, work, runs, seed in exports)
        report(args, runs)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
