"""GPU check for the runtime: the CUDA provider is really active, CUDA outputs match CPU outputs (fp32 and fp16
artifacts), and batch-1 latency / batch-32 throughput on both. Exits non-zero on any failed check.

    python bench/gpu_check.py                                  # tiny classify artifacts built here (needs torch, onnx)
    python bench/gpu_check.py --fp32 ART32 --fp16 ART16        # your own artifacts (same model, two precisions)
    python bench/gpu_check.py --device-under-test cpu          # logic check of this script on a machine without GPU

Tolerances: fp32 CUDA vs fp32 CPU 1e-4 on scores/vectors and identical labels; fp16 CUDA vs fp32 CPU 2e-2 and at
least 95% identical labels (fp16 rounding may flip near-ties).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.", "Markets fell", "",
         "Alice met Bob in Paris on Monday to talk about the new bank in London. " * 4, "北京 上海 😀 cafe\u0301",
         "The team won the final match after a late goal by their captain."] * 6


def fp16_copy(fp32_art: Path, out: Path) -> Path:
    """The same artifact with weights in fp16 (inputs and outputs keep their types)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from bertrt.artifact import load_manifest, write_artifact

    manifest = load_manifest(fp32_art)
    model = convert_float_to_float16(onnx.load(str(fp32_art / "model.onnx")), keep_io_types=True)
    onnx.save(model, str(out.parent / "model16.onnx"))
    keep = {k: v for k, v in manifest.items() if k not in ("files", "format_version", "created")}
    return write_artifact(out, {"model.onnx": out.parent / "model16.onnx",
                                "tokenizer.json": fp32_art / "tokenizer.json"}, {**keep, "precision": "fp16"})


def scores_of(result: dict) -> list[float]:
    if "scores" in result:
        return list(result["scores"].values())
    if "embedding" in result:
        return result["embedding"]
    if "entities" in result:
        return [e["score"] for e in result["entities"]]
    return [result["score"]]


def decision_of(result: dict):
    for key in ("label", "answer"):
        if key in result:
            return result[key]
    if "entities" in result:
        return [(e["type"], e["start"], e["end"]) for e in result["entities"]]
    return None


def compare(ref: list[dict], got: list[dict], tol: float, min_agree: float) -> dict:
    agree = float(np.mean([decision_of(a) == decision_of(b) for a, b in zip(ref, got)]))
    diffs = [float(np.max(np.abs(np.subtract(scores_of(a), scores_of(b)))))
             for a, b in zip(ref, got) if len(scores_of(a)) == len(scores_of(b)) and scores_of(a)]
    worst = max(diffs) if diffs else 0.0
    return {"max_abs_diff": worst, "decision_agreement": agree, "ok": worst <= tol and agree >= min_agree}


def timings(rt, repeats: int) -> dict:
    for _ in range(5):
        rt.predict(TEXTS[:32])
    one = []
    for i in range(repeats):
        t = time.perf_counter()
        rt.predict([TEXTS[i % len(TEXTS)]])
        one.append(time.perf_counter() - t)
    batch = TEXTS[:32]
    t = time.perf_counter()
    for _ in range(max(3, repeats // 10)):
        rt.predict(batch)
    per_batch = (time.perf_counter() - t) / max(3, repeats // 10)
    q = statistics.quantiles(one, n=100)
    return {"b1_p50_ms": 1000 * statistics.median(one), "b1_p99_ms": 1000 * q[98], "b32_seq_per_s": 32 / per_batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, help="fp32 artifact (default: build a tiny classify one)")
    ap.add_argument("--fp16", type=Path, help="fp16 artifact of the same model (default: converted from --fp32)")
    ap.add_argument("--device-under-test", default="cuda", choices=["cuda", "cpu"],
                    help="cuda on a GPU machine; cpu only to check this script's logic where there is no GPU")
    ap.add_argument("--repeats", type=int, default=100, help="batch-1 timing repeats (after 5 warm-ups)")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from bertrt import Runtime
    from bertrt.bench.machine import describe

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers available: {', '.join(available)}")
    dut = args.device_under_test
    if dut == "cuda" and "CUDAExecutionProvider" not in available:
        print("FAIL: no CUDAExecutionProvider in this onnxruntime (the CPU package?); install onnxruntime-gpu "
              "matching the CUDA version, and not onnxruntime beside it")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    fp32 = args.fp32
    if fp32 is None:
        from tests.artifacts import build_artifact

        fp32 = build_artifact("classify", tmp / "fp32")
    fp16 = args.fp16 or fp16_copy(fp32, tmp / "fp16")

    failures, rows, report = [], [], {"machine": describe(None), "onnxruntime": ort.__version__, "checks": {}}
    reference = Runtime(fp32, device="cpu")
    ref_out = reference.predict(TEXTS)
    for name, art, tol, agree in (("fp32", fp32, 1e-4, 1.0), ("fp16", fp16, 2e-2, 0.95)):
        rt = Runtime(art, device=dut)
        active = rt.session.providers[0]
        expected = "CUDAExecutionProvider" if dut == "cuda" else "CPUExecutionProvider"
        if rt.device != dut or active != expected:
            failures.append(f"{name}: runtime.device={rt.device}, first provider {active} (wanted {expected})")
        cmp = compare(ref_out, rt.predict(TEXTS), tol, agree)
        invariant = compare([rt.predict(x) for x in TEXTS[:8]], rt.predict(TEXTS[:8]), 1e-5 if name == "fp32"
                            else 1e-3, 1.0)
        if not cmp["ok"]:
            failures.append(f"{name} on {dut} vs fp32 CPU: max |diff| {cmp['max_abs_diff']:.2e} (tol {tol}), "
                            f"decisions agree {cmp['decision_agreement']:.0%}")
        if not invariant["ok"]:
            failures.append(f"{name} on {dut}: alone vs batched differ by {invariant['max_abs_diff']:.2e}")
        t = timings(rt, args.repeats)
        report["checks"][name] = {"providers": rt.session.providers, "vs_cpu_fp32": cmp,
                                  "batch_invariance": invariant, **t}
        rows.append(f"| {name} | {dut} | {active} | {cmp['max_abs_diff']:.2e} | {cmp['decision_agreement']:.0%} | "
                    f"{t['b1_p50_ms']:.2f} | {t['b1_p99_ms']:.2f} | {t['b32_seq_per_s']:.0f} |")
    t = timings(reference, args.repeats)
    rows.append(f"| fp32 | cpu | CPUExecutionProvider | 0 | 100% | {t['b1_p50_ms']:.2f} | {t['b1_p99_ms']:.2f} | "
                f"{t['b32_seq_per_s']:.0f} |")
    report["checks"]["cpu_fp32"] = t
    print("| artifact | device | provider | max abs diff vs CPU fp32 | decisions agree | b1 p50 ms | b1 p99 ms "
          "| b32 seq/s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    report["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print(f"All results match. CUDA provider active: {dut == 'cuda'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
