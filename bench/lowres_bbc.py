"""Low-resource BBC News: 20 labelled articles per topic, fine-tuned from the packaged all-MiniLM-L6-v2 five ways,
over seeds, with accuracy on all test articles and on a perturbed copy of them.

Methods (each through ``bertrt.train.finetune``, the code ``bertrt finetune`` runs, with the same settings otherwise):
  plain  plain fine-tuning;
  eda    ``--augment eda``: every epoch one fresh EDA variant of each article beside it (swaps, deletions or
         insertions of the article's own words; ``bertrt.data.augment``);
  mlm    ``--augment mlm``: one fresh variant per article and epoch with 15% of its words masked and refilled by a
         masked-LM head. MiniLM has none, so the head comes from MiniLM continued-pretrained on the training
         articles' text (unlabelled; ``continual_bbc.continued_pretraining``, the recipe all three BBC benches
         share, done once and shared by the seeds, or ``--dapt-checkpoint``'s); the classifier starts from MiniLM;
  fgm    ``--adversarial fgm --adv-epsilon E`` (one epsilon over the whole batch's word embeddings);
  pgd    ``--adversarial pgd --adv-steps K --adv-epsilon E`` (each article's perturbation in its own ball of
         radius E; step 2.5 E / K).
The labelled articles of a seed come from ``bertrt.data.bbc.few_shot`` (the sampler bench/prompt_bbc.py uses too),
and every method of a seed trains on the same ones. Evaluation: all 445 test articles of ``bbc_split`` ("clean"), and
the same articles with seeded character swaps (two neighbouring characters of ~10% of the words swapped, seed 0,
the same copy for every run: "perturbed"). Mean ± sd over the seeds that finished.

Every run is cached as ``OUT/runs/seed<k>/<method>.json`` (and the continued pretraining as ``OUT/runs/dapt.json``),
so an interrupted bench resumes where it stopped; ``OUT/results.md`` and ``OUT/results.json`` are rebuilt after every
run (``--report-only`` rebuilds them without training). Heavy: hold the machine-wide lock.

    flock /work/heavy.lock nice -n 0 python bench/lowres_bbc.py --out bench/results/lowres_bbc
    python bench/lowres_bbc.py --out /tmp/lr-smoke --limit 150 --per-topic 2 --epochs 1 --max-length 32 \\
        --dapt-head-steps 2 --dapt-steps 2 --seeds 0   # smoke test, a few minutes; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from bertrt.data.bbc import bbc_split, few_shot, write_jsonl
from continual_bbc import (accuracy_on, add_common_args, add_dapt_args, cached, continued_pretraining,
                           dapt_summary, drop, mean_sd, start_run)

METHODS = ("plain", "eda", "mlm", "fgm", "pgd")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "Comma-separated seeds; each runs every method.")
    ap.add_argument("--methods", default=",".join(METHODS), help="A comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--per-topic", type=int, default=20, help="Labelled training articles per topic.")
    ap.add_argument("--epochs", type=float, default=8, help="Fine-tuning epochs (100 articles: 7 steps each).")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--augment-per-example", type=int, default=1)
    ap.add_argument("--adv-epsilon", type=float, default=1.0, help="FGM's and PGD's epsilon (MiniLM's word vectors "
                    "have norm ~1.1, a 128-token article's ~12).")
    ap.add_argument("--pgd-steps", type=int, default=2, help="PGD's steps (each a forward and backward pass).")
    ap.add_argument("--swap-rate", type=float, default=0.1, help="Share of test words with two characters swapped.")
    ap.add_argument("--keep-checkpoints", action="store_true")
    add_dapt_args(ap)
    return ap.parse_args(argv)


def swap_characters(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with two neighbouring characters swapped in about ``rate`` of its words (those of 2+ characters)."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) >= 2 and rng.random() < rate:
            k = rng.randrange(len(w) - 1)
            words[i] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
    return " ".join(words)


def prepare(args, work: Path) -> dict:
    train, test = bbc_split(args.limit)
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.txt"  # the training articles' text, one block each (unlabelled: the mlm method's DAPT)
    corpus.write_text("\n\n".join(r["text"] for r in train) + "\n", encoding="utf-8")
    rng = random.Random(0)
    perturbed = [{**r, "text": swap_characters(r["text"], args.swap_rate, rng)} for r in test]
    changed = sum(a != b for r, p in zip(test, perturbed) for a, b in zip(r["text"].split(" "), p["text"].split(" ")))
    total = sum(len(r["text"].split(" ")) for r in test)
    return {"train_rows": train, "corpus": corpus, "test": write_jsonl(d / "test.jsonl", test),
            "perturbed": write_jsonl(d / "test_perturbed.jsonl", perturbed),
            "perturbation": {"words_changed": changed / total, "test_words": total, "test_articles": len(test)}}


def run_seed(args, seed: int, data: dict, work: Path, runs: Path, methods: list[str], dapt: Path | None) -> None:
    """Every method on the seed's labelled articles; results.md/json rebuilt after each."""
    from bertrt.train.finetune import FinetuneConfig, finetune

    w, r = work / f"seed{seed}", runs / f"seed{seed}"
    w.mkdir(parents=True, exist_ok=True)
    few = few_shot(data["train_rows"], args.per_topic, seed)
    few_file = write_jsonl(w / "few.jsonl", few)
    options = {"plain": {}, "eda": {"augment": "eda"},
               "mlm": {"augment": "mlm", "augment_from": str(dapt) if dapt else None},
               "fgm": {"adversarial": "fgm", "adv_epsilon": args.adv_epsilon},
               "pgd": {"adversarial": "pgd", "adv_epsilon": args.adv_epsilon, "adv_steps": args.pgd_steps}}
    for name in methods:
        def run(name=name):
            cfg = FinetuneConfig("classify", max_length=args.max_length, batch_size=args.batch_size,
                                 epochs=args.epochs, lr=args.lr, seed=seed, progress=False,
                                 augment_per_example=args.augment_per_example, **options[name])
            out = w / name
            res = finetune(few_file, out, args.base, cfg, force=True)
            acc = accuracy_on(out, {"clean": data["test"], "perturbed": data["perturbed"]})
            drop(out, args.keep_checkpoints)
            return {**acc, "train_articles": len(few), "steps": res.steps, "options": options[name]}

        print(f"seed {seed} {name}: {json.dumps(cached(r / f'{name}.json', run))}", flush=True)
        report(args, runs)


def report(args, runs: Path) -> None:
    results = {"runs": {}, "dapt": None, "perturbation": None,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    for f in sorted(runs.glob("seed*/*.json")):
        results["runs"].setdefault(f.stem, {})[f.parent.name] = json.loads(f.read_text())
    for name in ("dapt", "perturbation"):
        if (runs / f"{name}.json").is_file():
            results[name] = json.loads((runs / f"{name}.json").read_text())
    lines = ["# Low-resource BBC News: 20 labelled articles per topic (all-MiniLM-L6-v2)", "",
             f"`{' '.join(['python', 'bench/lowres_bbc.py', *sys.argv[1:]])}` - {platform.node()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {args.per_topic} articles per topic "
             f"(bertrt.data.bbc.few_shot), {args.epochs:g} epochs at lr {args.lr:g}, batch {args.batch_size}, "
             f"{args.max_length} tokens. Accuracy in % on all test articles (clean) and on the same articles with "
             f"two neighbouring characters swapped in {100 * args.swap_rate:.0f}% of the words (perturbed), mean ± "
             "sd over the seeds that finished (n).", "",
             "| method | clean | perturbed | drop (points) | steps | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in METHODS:
        per_seed = list(results["runs"].get(name, {}).values())
        if not per_seed:
            lines.append(f"| {name} | - | - | - | - | - |")
            continue
        drops = [p["clean"] - p["perturbed"] for p in per_seed]
        lines.append(f"| {name} | {mean_sd([p['clean'] for p in per_seed])} | "
                     f"{mean_sd([p['perturbed'] for p in per_seed])} | {mean_sd(drops)} | "
                     f"{statistics.mean(p['steps'] for p in per_seed):.0f} | "
                     f"{statistics.mean(p['seconds'] for p in per_seed):.0f} |")
    plain = results["runs"].get("plain", {})
    for name in METHODS[1:]:
        seeds = sorted(set(plain) & set(results["runs"].get(name, {})))
        if seeds:
            mine = results["runs"][name]
            diff = {k: statistics.mean(mine[s][k] - plain[s][k] for s in seeds) * 100 for k in ("clean", "perturbed")}
            lines.append(f"\n{name} minus plain over {len(seeds)} seed(s): {diff['clean']:+.2f} points clean, "
                         f"{diff['perturbed']:+.2f} perturbed.")
    if results["dapt"]:
        lines += ["", "mlm's masked-LM head: " + dapt_summary(results["dapt"])]
    if results["perturbation"]:
        p = results["perturbation"]
        lines += ["", f"Perturbed copy: {100 * p['words_changed']:.1f}% of the {p['test_words']:,} words of the "
                  f"{p['test_articles']} test articles differ."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = args.out / "runs"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.report_only:
        report(args, runs)
        print((args.out / "results.md").read_text())
        return 0
    work = start_run(args)
    data = prepare(args, work)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "perturbation.json").write_text(json.dumps(data["perturbation"]) + "\n")
    dapt = continued_pretraining(args, data["corpus"], work, runs / "dapt.json") if "mlm" in methods else None
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:  # seed by seed: an early stop leaves whole seeds
        run_seed(args, seed, data, work, runs, methods, dapt)
    report(args, runs)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
