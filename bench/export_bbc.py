"""BBC News: bertrt's fp32 / dynamic INT8 / static INT8 artifacts against ONNX Runtime's default recipe, one run.

For each fine-tuned checkpoint (bertrt's and/or one fine-tuned by transformers, e.g. bench/bbc_finetune_hf.py):

1. PyTorch fp32 predictions on the test split (the reference).
2. ``bertrt export`` variants, each gated on the test split (--eval): fp32, dynamic INT8, static INT8 calibrated on
   training articles. A variant refused by its gates is reported with the reason, not timed.
3. The peer: a plain ``torch.onnx.export`` of the transformers model (no fusions), in fp32 and quantized with
   ``onnxruntime.quantization.quantize_dynamic`` at its defaults.
4. Every variant timed the same way: correctness first (accuracy, agreement with PyTorch), then throughput at
   --batch-size over the test set with tokenization included (and tokenization alone), batch-1 latency p50/p90/p99,
   model size. Writes results.json and results.md under --out.

Full run (the lead's; ~15-30 min on 2 cores):

    python bench/export_bbc.py --checkpoint bertrt=FINETUNED_BY_BERTRT --checkpoint hf=bench/results/bbc_hf/checkpoint \\
        --test bench/results/bbc_hf/test.jsonl --train bench/results/bbc_hf/train.jsonl --out bench/results/export_bbc

``--tiny`` runs everything on a random 2-layer model and 60 articles in about a minute (numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bertrt.bench.machine import describe
from bertrt.data.bbc import bbc_split, write_jsonl  # the one BBC split every bench uses
from bertrt.tasks.encode import pad_rows, truncating  # the padding and truncation every bertrt path uses


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def torch_predictions(checkpoint: Path, texts: list[str], max_length: int) -> np.ndarray:
    import torch

    from bertrt.checkpoint import load_checkpoint
    from bertrt.tokenizer import load_tokenizer

    model, tok = load_checkpoint(checkpoint), truncating(load_tokenizer(checkpoint), max_length)
    preds = []
    with torch.no_grad():
        for s in range(0, len(texts), 32):
            feeds = pad(tok.encode_batch(texts[s:s + 32]))
            preds.append(model(**{k: torch.from_numpy(v) for k, v in feeds.items()})["logits"].argmax(-1).numpy())
    return np.concatenate(preds)


def pad(encs) -> dict:
    return pad_rows([e.ids for e in encs], [e.type_ids for e in encs], pad_id=0)


def plain_export(checkpoint: Path, out: Path) -> tuple[Path, Path]:
    """The peer: transformers' model through torch.onnx.export as-is, and ORT's default dynamic INT8 of it."""
    import torch
    import transformers
    from onnxruntime.quantization import quantize_dynamic

    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    ids = torch.ones((2, 16), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32, int8 = out / "plain.onnx", out / "plain-int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model), (ids, ids, torch.zeros_like(ids)), str(fp32), dynamo=False,
                          opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "b", 1: "t"} for n in names} | {"logits": {0: "b"}})
    quantize_dynamic(str(fp32), str(int8))  # ORT's defaults: what a user gets without a recipe
    return fp32, int8


def measure(onnx_path: Path, tokenizer, texts, gold, ref, labels, args) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    tokenizer = truncating(tokenizer, args.max_length)

    def run(batch_texts):
        return sess.run(["logits"], pad(tokenizer.encode_batch(batch_texts)))[0]

    preds = np.concatenate([run(texts[s:s + args.batch_size]).argmax(-1)
                            for s in range(0, len(texts), args.batch_size)])  # also the warm-up
    row = {"accuracy": round(100.0 * float(np.mean([labels[p] == g for p, g in zip(preds, gold)])), 2),
           "agreement_with_pytorch": round(100.0 * float(np.mean(preds == ref)), 2),
           "size_mb": round(onnx_path.stat().st_size / 1e6, 1)}
    runs, tok_runs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for s in range(0, len(texts), args.batch_size):
            run(texts[s:s + args.batch_size])
        runs.append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for s in range(0, len(texts), args.batch_size):
            pad(tokenizer.encode_batch(texts[s:s + args.batch_size]))
        tok_runs.append(len(texts) / (time.perf_counter() - t0))
    lat = []
    for t in texts[: args.latency_n]:
        t0 = time.perf_counter()
        run([t])
        lat.append(1000 * (time.perf_counter() - t0))
    q = np.percentile(lat, [50, 90, 99])
    row.update(throughput_seq_s=round(statistics.median(runs), 1),
               throughput_std=round(statistics.pstdev(runs), 1),
               tokenize_seq_s=round(statistics.median(tok_runs), 1),
               p50_ms=round(float(q[0]), 2), p90_ms=round(float(q[1]), 2), p99_ms=round(float(q[2]), 2))
    return row


def export_variants(name: str, checkpoint: Path, args, train_file: Path, test_file: Path, work: Path) -> list[dict]:
    from bertrt.converters.config import ExportConfig, OptimizeConfig, ParityConfig, QuantizeConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.errors import ParityError

    rows = []
    for variant, quant in (("fp32", None), ("int8 dynamic", QuantizeConfig(mode="dynamic")),
                           ("int8 static", QuantizeConfig(mode="static", calibration=args.calibration,
                                                          calib_samples=args.calib_samples))):
        art = work / f"{name}-{variant.replace(' ', '-')}"
        t0 = time.perf_counter()
        try:
            m = export_artifact(checkpoint, art, ExportConfig(max_length=args.max_length), OptimizeConfig(), quant,
                                ParityConfig(eval_path=str(test_file), max_drop=args.max_drop,
                                             max_samples=100_000),
                                calib_path=str(train_file), force=True, log=lambda s: print("   ", s, flush=True))
            g = m["parity"]["final"]["gates"]
            rows.append({"variant": f"bertrt {variant}", "onnx": str(art / "model.onnx"),
                         "export_s": round(time.perf_counter() - t0, 1),
                         "gates": {k: v["value"] for k, v in g.items()},
                         "fp32_units": (m.get("quantization") or {}).get("fp32_units")})
        except ParityError as e:
            rows.append({"variant": f"bertrt {variant}", "refused": str(e),
                         "export_s": round(time.perf_counter() - t0, 1)})
    return rows


def tiny_checkpoint(out: Path, train_file: Path) -> Path:
    """A random 2-layer classifier on a tokenizer trained from the training articles (smoke test only)."""
    import torch

    from bertrt.checkpoint import save_checkpoint
    from bertrt.model import Bert, BertConfig
    from bertrt.tokenizer import train_tokenizer

    corpus = out / "tiny_corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in read_jsonl(train_file)), encoding="utf-8")
    tok = train_tokenizer([corpus], vocab_size=1000, show_progress=False)
    labels = sorted({r["label"] for r in read_jsonl(train_file)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_heads=[4, 4], ffn_sizes=[128, 128],
                     head_size=16, max_position_embeddings=128, task="classify", labels=labels)
    return save_checkpoint(Bert(cfg), out / "tiny_ckpt", tokenizer=tok, force=True)


def markdown(results: dict) -> str:
    m, a = results["machine"], results["args"]
    v = m["versions"]
    lines = [f"# BBC export benchmark\n", f"{m['cpu']}, {a['threads']} threads, commit {m['commit']}, "
             f"torch {v['torch']}, onnxruntime {v['onnxruntime']}; batch {a['batch_size']}, truncation "
             f"{a['max_length']}, {results['test_articles']} test articles, tokenization included\n",
             "| checkpoint | variant | accuracy % | agrees with PyTorch % | seq/s (b32) | tokenize seq/s | p50 ms | "
             "p90 ms | p99 ms | MB | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "refused" in r:
            lines.append(f"| {r['checkpoint']} | {r['variant']} | - | - | - | - | - | - | - | - | refused: "
                         f"{r['refused'][:160]} |")
            continue
        note = f"fp32 units {r['fp32_units']}" if r.get("fp32_units") else ""
        lines.append(f"| {r['checkpoint']} | {r['variant']} | {r['accuracy']} | {r['agreement_with_pytorch']} | "
                     f"{r['throughput_seq_s']} ± {r['throughput_std']} | {r['tokenize_seq_s']} | {r['p50_ms']} | "
                     f"{r['p90_ms']} | {r['p99_ms']} | {r['size_mb']} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR",
                    help="A fine-tuned BBC classify checkpoint; repeat for several (e.g. bertrt=... hf=...).")
    ap.add_argument("--test", type=Path, help="Test split JSONL {text, label} (default: bertrt.data.bbc's split).")
    ap.add_argument("--train", type=Path, help="Training split JSONL, used to calibrate static INT8.")
    ap.add_argument("--out", type=Path, required=True, help="Folder for artifacts and results.json/results.md.")
    ap.add_argument("--max-length", type=int, default=128, help="Truncation length (tokens).")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads.")
    ap.add_argument("--batch-size", type=int, default=32, help="Batch size of the throughput runs.")
    ap.add_argument("--repeats", type=int, default=3, help="Throughput repeats (median and std reported).")
    ap.add_argument("--latency-n", type=int, default=100, help="Articles timed one by one for latency.")
    ap.add_argument("--max-drop", type=float, default=0.5, help="Accuracy drop allowed by the gates (points).")
    ap.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--calib-samples", type=int, default=256, help="Training articles used to calibrate.")
    ap.add_argument("--limit", type=int, help="Use only this many test articles.")
    ap.add_argument("--no-peer", action="store_true", help="Skip the plain-export peer (e.g. a non-HF checkpoint).")
    ap.add_argument("--tiny", action="store_true", help="Smoke test on a random 2-layer model and 60 articles.")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from bertrt.tokenizer import load_tokenizer

    if args.test is None or args.train is None:
        train, test = bbc_split(300 if args.tiny else None)
        args.train = args.train or write_jsonl(args.out / "train.jsonl", train)
        args.test = args.test or write_jsonl(args.out / "test.jsonl", test)
    test_rows = read_jsonl(args.test)[: (60 if args.tiny else args.limit)]
    test_file = write_jsonl(args.out / "test_used.jsonl", test_rows)
    texts, gold = [r["text"] for r in test_rows], [r["label"] for r in test_rows]
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    if args.tiny:
        checkpoints = {"tiny": str(tiny_checkpoint(args.out, args.train))}
        args.repeats, args.latency_n, args.max_drop = 1, 10, 100.0
    if not checkpoints:
        ap.error("give --checkpoint NAME=DIR (or --tiny)")

    results = {"machine": describe(args.threads),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "test_articles": len(texts), "rows": []}
    work = args.out / "artifacts"
    work.mkdir(exist_ok=True)
    for name, ckpt in checkpoints.items():
        ckpt = Path(ckpt)
        print(f"== {name}: {ckpt}", flush=True)
        from bertrt.checkpoint import read_config

        labels = read_config(ckpt)[0].labels
        ref = torch_predictions(ckpt, texts, args.max_length)
        pt_acc = 100.0 * float(np.mean([labels[p] == g for p, g in zip(ref, gold)]))
        results["rows"].append({"checkpoint": name, "variant": "PyTorch fp32 (reference, untimed)",
                                "accuracy": round(pt_acc, 2), "agreement_with_pytorch": 100.0,
                                "throughput_seq_s": "-", "throughput_std": "-", "tokenize_seq_s": "-",
                                "p50_ms": "-", "p90_ms": "-", "p99_ms": "-", "size_mb": "-"})
        rows = export_variants(name, ckpt, args, args.train, test_file, work)
        if not args.no_peer and not args.tiny:
            with tempfile.TemporaryDirectory() as tmp:
                fp32, int8 = plain_export(ckpt, Path(tmp))
                for variant, path in (("ORT plain export fp32", fp32), ("ORT default dynamic int8", int8)):
                    keep = work / f"{name}-{path.name}"
                    keep.write_bytes(path.read_bytes())
                    rows.append({"variant": variant, "onnx": str(keep)})
        tok = load_tokenizer(ckpt)
        for r in rows:
            r["checkpoint"] = name
            if "refused" not in r:
                print(f"   timing {r['variant']}", flush=True)
                r.update(measure(Path(r["onnx"]), tok, texts, gold, ref, labels, args))
            results["rows"].append(r)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
