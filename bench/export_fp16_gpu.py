"""fp16 export checked on CUDA: the gates of an ``--fp16`` artifact run on onnxruntime-gpu's CUDA provider.

On a CPU-only machine the fp16 graph's structure is tested (tests/test_quantize.py) and the CPU provider's fp16
numbers are gated, but CUDA kernels (fp16 Attention, SkipLayerNormalization) compute differently. This script
exports fp32 and fp16 artifacts of one checkpoint with the gates on CUDA, prints every gate's number, and exits 1
if a gate fails or the CUDA provider is not really active (never a silent CPU fallback):

    python bench/export_fp16_gpu.py --out /tmp/fp16                      # a tiny random classifier built here
    python bench/export_fp16_gpu.py --checkpoint CKPT --eval TEST.jsonl --out /tmp/fp16
    python bench/gpu_check.py --fp32 /tmp/fp16/fp32 --fp16 /tmp/fp16/fp16  # then the runtime's CUDA-vs-CPU check

Needs torch and onnxruntime-gpu (``onnxruntime.get_available_providers()`` must list CUDAExecutionProvider).
``--device cpu`` runs the same on the CPU provider (a logic check of the script).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="Checkpoint to export (default: a tiny random classifier).")
    ap.add_argument("--eval", type=Path, help="Labelled data for the gates (default: the built-in sample).")
    ap.add_argument("--out", type=Path, required=True, help="Folder for the fp32 and fp16 artifacts.")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="Where the fp16 gates run.")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from bertrt.converters.config import ExportConfig, OptimizeConfig, ParityConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.errors import BertrtError

    print("onnxruntime", ort.__version__, "providers", ort.get_available_providers(), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint
    if ckpt is None:
        from tests.test_export_fixtures import make_checkpoint

        ckpt = make_checkpoint(args.out, "classify", name="tiny-ckpt")
    results, ok = {}, True
    for name, fp16, device in (("fp32", False, "cpu"), ("fp16", True, args.device)):
        try:
            m = export_artifact(ckpt, args.out / name, ExportConfig(), OptimizeConfig(fp16=fp16), None,
                                ParityConfig(eval_path=str(args.eval) if args.eval else None, device=device),
                                force=True, progress=False)
            final = m["parity"]["final"]
            results[name] = {"device": final["device"], "passed": final["passed"], "tensors": final["tensors"],
                             "gates": {k: g["value"] for k, g in final["gates"].items()}}
        except BertrtError as e:
            results[name] = {"device": device, "passed": False, "error": str(e)}
        ok &= results[name]["passed"]
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("ALL GATES PASSED" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
