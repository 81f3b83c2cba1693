#!/usr/bin/env bash
# Ready script for a CUDA machine: is ONNX Runtime's CUDA provider really active, do CUDA outputs match CPU outputs
# (fp32 and fp16 artifacts), and how fast are batch 1 and batch 32. Exits non-zero when any check fails.
#   bench/gpu_check.sh                          tiny classify artifacts built on the spot (needs torch + onnx)
#   bench/gpu_check.sh --fp32 ART --fp16 ART16  your artifacts;  --help for all options
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found: no NVIDIA driver visible here" >&2
fi
python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
exec python bench/gpu_check.py "$@"
