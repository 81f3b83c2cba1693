"""Pretraining throughput: bertrt's training loop vs Hugging Face BertForPreTraining, same shape, same data.

Setup (the issue's): the ``mini`` shape (4 layers, hidden 256, 4 heads, FFN 1024, vocab 30522), sequence length
128, batch 32, 15% of tokens masked (80/10/10), NSP labels, AdamW (lr 1e-4, weight decay 0.01), dropout 0.1, in
fp32 and bf16 autocast. Both sides get the very same batches (random ids, so no tokenizer time on either side).
bertrt runs its real training loop (``bertrt.train.loop.train`` with the pretraining loss: MLM logits at masked
positions only, fused into the loss; fused AdamW, no decay on biases/LayerNorm, gradient clipping; dropout from
its cheaper CPU mask, with p rounded to a multiple of 1/65536, 0.100006); Hugging Face runs the usual
``loss = model(..., labels=..., next_sentence_label=...).loss; loss.backward(); opt.step()`` step with
``torch.optim.AdamW``.

Correctness first: before timing, the two models are given the same weights and must agree on the loss of one
batch (eval mode, fp32) within 1e-4. Then each variant runs ``--warmup`` untimed steps and ``--steps`` timed steps;
the table shows the median, p10 and p90 tokens/s and bertrt's speed-up over Hugging Face at each precision.

Each variant runs in its own fresh process. bertrt's loop asks glibc to keep freed memory for reuse (see
``bertrt.train.loop.keep_freed_memory``); two extra rows give Hugging Face the same setting, so the table shows
how much of the gap is the allocator and how much the model and loop.

    python bench/pretrain_speed.py                  # full run: 20 timed steps per variant (~10 min on 2 cores)
    python bench/pretrain_speed.py --steps 2 --warmup 1    # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertrt.bench.machine import describe

VOCAB, LAYERS, HIDDEN, HEADS, FFN = 30522, 4, 256, 4, 1024
CLS, SEP, MASK, FIRST_NORMAL = 101, 102, 103, 999  # BERT's ids; normal tokens drawn from [999, VOCAB)


def make_batches(n: int, batch: int, seq: int, mlm_prob: float, seed: int) -> list[dict]:
    """Full-length ``[CLS] A [SEP] B [SEP]`` rows of random ids, masked as bertrt masks (exact 15% per row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(FIRST_NORMAL, VOCAB, (batch, seq))
        split = rng.integers(seq // 4, 3 * seq // 4, batch)
        types = (np.arange(seq)[None, :] > split[:, None]).astype(np.int64)
        ids[:, 0], ids[np.arange(batch), split], ids[:, -1] = CLS, SEP, SEP
        candidate = np.ones_like(ids, dtype=bool)
        candidate[:, 0] = candidate[:, -1] = False
        candidate[np.arange(batch), split] = False
        k = int(round(mlm_prob * (seq - 3)))
        scores = np.where(candidate, rng.random(ids.shape), 2.0)
        chosen = np.argsort(np.argsort(scores, 1), 1) < k
        labels = ids[chosen]
        r = rng.random(labels.shape)
        corrupted = np.where(r < 0.8, MASK, np.where(r < 0.9, rng.integers(FIRST_NORMAL, VOCAB, labels.shape), labels))
        masked = ids.copy()
        masked[chosen] = corrupted
        hf_labels = np.full_like(ids, -100)
        hf_labels[chosen] = labels
        out.append({"input_ids": torch.from_numpy(masked), "token_type_ids": torch.from_numpy(types),
                    "attention_mask": torch.ones(batch, seq, dtype=torch.long),
                    "mlm_positions": torch.from_numpy(chosen), "mlm_labels": torch.from_numpy(labels),
                    "nsp_labels": torch.from_numpy(rng.integers(0, 2, batch)),
                    "hf_labels": torch.from_numpy(hf_labels)})
    return out


def bertrt_model(seed: int):
    from bertrt.model import Bert, BertConfig

    torch.manual_seed(seed)
    return Bert(BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_heads=[HEADS] * LAYERS,
                           ffn_sizes=[FFN] * LAYERS, head_size=HIDDEN // HEADS, task="pretrain"))


def hf_from(model, work: Path):
    from transformers import BertForPreTraining

    from bertrt.checkpoint import save_checkpoint

    save_checkpoint(model, work / "ckpt", force=True)
    return BertForPreTraining.from_pretrained(str(work / "ckpt"))


def check_parity(ours, hf, batch) -> float:
    from bertrt.data.pretraining import pretrain_loss

    ours.eval()
    hf.eval()
    with torch.no_grad():
        terms = pretrain_loss(ours, batch)
        mine = sum(float(s) / c for s, c in terms.values())
        theirs = float(hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"], labels=batch["hf_labels"],
                          next_sentence_label=batch["nsp_labels"]).loss)
    ours.train()
    hf.train()
    return abs(mine - theirs)


def time_bertrt(model, batches, precision, warmup, work: Path, compile_model: bool) -> list[float]:
    from bertrt.data.pretraining import pretrain_counts, pretrain_loss
    from bertrt.train.loop import TrainConfig, train

    loss_fn = pretrain_loss
    if compile_model:
        compiled = torch.compile(model)
        loss_fn = lambda m, b: pretrain_loss(compiled, b)  # noqa: E731
    data = [{k: v for k, v in b.items() if k != "hf_labels"} for b in batches]
    cfg = TrainConfig(lr=1e-4, weight_decay=0.01, max_steps=len(data), precision=precision, log_every=10 ** 9,
                      progress=False)
    result = train(model, data, loss_fn, cfg, work / f"run-{precision}", count_fn=pretrain_counts, force=True)
    return [h["tokens_per_s"] for h in result.history[warmup:]]


def time_hf(model, batches, precision, warmup) -> list[float]:
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4)
    model.train()
    speeds = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b["token_type_ids"], labels=b["hf_labels"],
                         next_sentence_label=b["nsp_labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if i >= warmup:
            speeds.append(int(b["attention_mask"].sum()) / dt)
    return speeds


def summarize(speeds: list[float]) -> dict:
    q = np.percentile(speeds, [10, 50, 90])
    return {"p10": float(q[0]), "median": float(statistics.median(speeds)), "p90": float(q[2]), "n": len(speeds)}


def run_variant(spec: str, args) -> list[float]:
    """Time one ``impl:precision[:keep]`` variant in this process (``keep``: glibc keeps freed memory, see below)."""
    impl, precision, *extra = spec.split(":")
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.seq_len, 0.15, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if impl == "hf":
            if "keep" in extra:
                from bertrt.train.loop import keep_freed_memory

                keep_freed_memory()
            return time_hf(hf_from(bertrt_model(0), work), batches, precision, args.warmup)
        return time_bertrt(bertrt_model(0), batches, precision, args.warmup, work, "compile" in extra)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (more = steadier medians)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, oneDNN kernels)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--impls", default="hf,bertrt", help="comma-separated: hf, bertrt")
    ap.add_argument("--compile", action="store_true", help="also time bertrt with torch.compile (compile time is "
                    "excluded by the warm-up steps; say so when quoting it)")
    ap.add_argument("--no-allocator-rows", action="store_true", help="skip the rows that time Hugging Face with "
                    "the glibc setting bertrt's loop makes (they show how much of the gap is the allocator)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: time one variant, print JSON
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    precisions = args.precisions.split(",")
    impls = args.impls.split(",")

    if "hf" in impls:
        batch = make_batches(1, args.batch_size, args.seq_len, 0.15, seed=0)[0]
        with tempfile.TemporaryDirectory() as tmp:
            gap = check_parity(bertrt_model(0), hf_from(bertrt_model(0), Path(tmp)), batch)
        print(f"parity: |loss(bertrt) - loss(HF)| = {gap:.2e} on one batch (same weights, eval, fp32)")
        if gap > 1e-4:
            sys.exit("parity check failed: the two models do not compute the same loss; not timing")
    variants = [(i, p, "") for p in precisions for i in impls]
    if "hf" in impls and not args.no_allocator_rows:
        variants += [("hf", p, "keep") for p in precisions]
    if args.compile:
        variants += [("bertrt", p, "compile") for p in precisions]
    rows = []
    for impl, precision, extra in variants:
        name = impl + {"": "", "keep": " (glibc keeps freed memory)", "compile": " (compiled)"}[extra]
        print(f"timing {name} {precision}: {args.warmup} + {args.steps} steps, own process ...", flush=True)
        # every variant in a fresh process: nothing (allocator state, oneDNN caches, mallopt) carries over
        cmd = [sys.executable, __file__, "--variant", f"{impl}:{precision}:{extra}", "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} {precision} failed:\n{done.stderr[-2000:]}")
        speeds = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"impl": name, "precision": precision, **summarize(speeds)})

    base = {r["precision"]: r["median"] for r in rows if r["impl"] == "hf"}
    meta = {**describe(torch.get_num_threads()), "batch": args.batch_size,
            "seq_len": args.seq_len, "shape": f"{LAYERS}L/{HIDDEN}H/{HEADS}A/FFN{FFN}/vocab{VOCAB}"}
    print(f"\n{meta}\n")
    print("| implementation | precision | tokens/s median | p10 | p90 | vs HF |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['median'] / base[r['precision']]:.2f}x" if r["precision"] in base else "-"
        print(f"| {r['impl']} | {r['precision']} | {r['median']:.0f} | {r['p10']:.0f} | {r['p90']:.0f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
