"""Pretraining quality on BBC News: held-out MLM/NSP accuracy curves, then fine-tuning on the topic labels against
the same architecture from random initialisation, over several seeds.

The split is ``bertrt.data.bbc``'s (every article shuffled with seed 0, the first 445 for testing): the 1,780
training articles are the pretraining corpus (one document per article, its lines kept) and the fine-tuning
training set; the 445 test articles are never pretrained on. For each seed:

1. ``bertrt pretrain`` (the real command, in a subprocess) trains a tokenizer and a ``--preset`` model for
   ``--budget`` of wall-clock time, evaluating held-out MLM loss/accuracy and NSP accuracy every ``--eval-every``
   steps (5% of the documents held out);
2. for each fine-tuning seed in ``--ft-seeds``, the pretrained checkpoint and a randomly initialised model of the
   same shape and vocabulary (initialised with that seed) are each fine-tuned with ``bertrt.train.finetune`` (the
   code ``bertrt finetune`` runs) on the training articles with the same settings and the same seed
   (``--ft-epochs``, ``--ft-lr``, seq 128), then evaluated on the test articles.

The table reports the curve's last point and both test accuracies per (pretraining seed, fine-tuning seed) and on
average; ``--json`` keeps the full curves too.

    python bench/pretrain_bbc.py --budget 30m --seeds 0 --ft-seeds 0,1,2 --json bench/results/pretrain_bbc.json
    python bench/pretrain_bbc.py --dry-run          # tiny preset, 200 articles, 20 s: checks the script
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertrt.bench.machine import describe
from bertrt.data.bbc import bbc_split, write_jsonl


def write_corpus(rows: list[dict], folder: Path) -> Path:
    """One text file per training article (headline and paragraphs as written): a document per file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        (folder / f"{i:05d}.txt").write_text(r["raw"], encoding="utf-8")
    return folder


def random_twin(pretrained_dir: Path, out: Path, seed: int) -> Path:
    """The pretrained model's architecture and tokenizer with freshly initialised weights."""
    from bertrt.checkpoint import load_checkpoint, save_checkpoint
    from bertrt.model import Bert
    from bertrt.tokenizer import load_tokenizer

    cfg = load_checkpoint(pretrained_dir).config
    torch.manual_seed(seed)
    return save_checkpoint(Bert(cfg), out, tokenizer=load_tokenizer(pretrained_dir), force=True)


def finetune_and_score(source: Path, out: Path, train_file: Path, test_file: Path, args, seed: int) -> dict:
    from bertrt.train.evaluate import evaluate_dir
    from bertrt.train.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig("classify", max_length=128, batch_size=32, epochs=args.ft_epochs, lr=args.ft_lr, seed=seed,
                         progress=False)
    t0 = time.perf_counter()
    finetune(train_file, out, source, cfg, force=True)
    seconds = time.perf_counter() - t0
    report = evaluate_dir(out, test_file, max_length=128, progress=False)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro"]["f1"], "train_s": seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="30m", help="pretraining wall-clock budget per seed (e.g. 30m)")
    ap.add_argument("--seeds", default="0", help="pretraining seeds (one pretraining run each)")
    ap.add_argument("--ft-seeds", default="0,1,2", help="fine-tuning seeds (and random-init seeds) per pretrained model")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--vocab-size", type=int, default=16000, help="tokenizer trained on the training articles")
    ap.add_argument("--batch-size", type=int, default=32, help="pretraining sequences per step")
    ap.add_argument("--precision", default="bf16", help="fp32 or bf16 (bf16 is faster on CPUs with AVX512-BF16/AMX)")
    ap.add_argument("--lr", type=float, default=1e-3, help="pretraining peak learning rate")
    ap.add_argument("--whole-word-mask", action="store_true", help="pretrain with --whole-word-mask")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--ft-epochs", type=float, default=3.0, help="fine-tuning epochs (both models)")
    ap.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning peak learning rate (both models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="tiny preset, 200 articles, 20 s, one seed, 1 epoch")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.budget, args.seeds, args.ft_seeds, args.preset, args.vocab_size, args.eval_every, args.ft_epochs = \
            "20s", "0", "0", "tiny", 2000, 10, 1.0
    torch.set_num_threads(args.threads)

    train, test = bbc_split(limit=200 if args.dry_run else None, raw=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="pretrain_bbc-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(train, work / "corpus")
    train_file, test_file = write_jsonl(work / "train.jsonl", train), write_jsonl(work / "test.jsonl", test)
    print(f"BBC: {len(train)} training articles (pretraining corpus + fine-tuning), {len(test)} test articles; "
          f"work folder {work}", flush=True)

    results = []
    for seed in map(int, args.seeds.split(",")):
        run = work / f"seed{seed}"
        cmd = [sys.executable, "-m", "bertrt.cli", "pretrain", str(corpus), "-o", str(run), "--preset", args.preset,
               "--vocab-size", str(args.vocab_size), "--budget", args.budget, "--seed", str(seed),
               "--batch-size", str(args.batch_size), "--precision", args.precision, "--eval-every",
               str(args.eval_every), "--eval-fraction", "0.05", "--save-every", "500", "--cache-dir",
               str(work / "cache"), "--lr", str(args.lr), "--force"] + \
            (["--whole-word-mask"] if args.whole_word_mask else [])
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        curve = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        curve = [r for r in curve if r["kind"] == "eval"]
        for ft_seed in map(int, args.ft_seeds.split(",")):
            random_dir = random_twin(run / "checkpoint", work / f"random{seed}-{ft_seed}", ft_seed)
            scores = {}
            for name, source in (("pretrained", run / "checkpoint"), ("random", random_dir)):
                scores[name] = finetune_and_score(source, work / f"ft-{name}{seed}-{ft_seed}", train_file, test_file,
                                                  args, ft_seed)
                print(f"pretraining seed {seed}, fine-tuning seed {ft_seed}, {name}: test accuracy "
                      f"{100 * scores[name]['accuracy']:.2f}% ({scores[name]['train_s']:.0f}s)", flush=True)
            results.append({"seed": seed, "ft_seed": ft_seed, "curve": curve, "finetune": scores})

    print("\n| pretraining seed | fine-tuning seed | steps | held-out MLM acc | NSP acc | fine-tuned acc (pretrained) "
          "| fine-tuned acc (random init) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        last = r["curve"][-1] if r["curve"] else {}
        print(f"| {r['seed']} | {r['ft_seed']} | {last.get('step', 0)} | {last.get('mlm_accuracy', float('nan')):.4f} | "
              f"{last.get('nsp_accuracy', float('nan')):.4f} | {100 * r['finetune']['pretrained']['accuracy']:.2f}% | "
              f"{100 * r['finetune']['random']['accuracy']:.2f}% |")
    mean = {k: sum(r["finetune"][k]["accuracy"] for r in results) / len(results) for k in ("pretrained", "random")}
    wins = sum(r["finetune"]["pretrained"]["accuracy"] > r["finetune"]["random"]["accuracy"] for r in results)
    print(f"\nmean test accuracy: pretrained {100 * mean['pretrained']:.2f}%, random init {100 * mean['random']:.2f}%; "
          f"pretrained wins {wins} of {len(results)} runs")
    print("\ncurve (seed, step, mlm_loss, mlm_accuracy, nsp_accuracy):")
    for r in {r["seed"]: r for r in results}.values():
        for p in r["curve"]:
            print(f"  {r['seed']} {p['step']:>6} {p['mlm_loss']:.4f} {p['mlm_accuracy']:.4f} "
                  f"{p.get('nsp_accuracy', float('nan')):.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {**describe(args.threads),
                **{k: str(v) for k, v in vars(args).items()}}
        args.json.write_text(json.dumps({"meta": meta, "results": results, "mean_accuracy": mean,
                                         "pretrained_wins": wins}, indent=2) + "\n")
    return 0 if mean["pretrained"] > mean["random"] or args.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
