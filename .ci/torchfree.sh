#!/usr/bin/env bash
# Torch-free install check: a fresh venv holding only `pip install <repo>[cpu,serve]`, no torch, no transformers,
# no onnx; then `import bertrt` and a real `bertrt predict` on ARTIFACT_DIR whose output is checked per task.
# usage: .ci/torchfree.sh ARTIFACT_DIR   (build a tiny one with: python tests/artifacts.py classify /tmp/art)
set -euo pipefail
if [ $# -ne 1 ] || [ ! -f "$1/bertrt.json" ]; then
    echo "usage: $0 ARTIFACT_DIR (a directory holding bertrt.json)" >&2
    exit 2
fi
ART=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q "$REPO[cpu,serve]"
cd "$WORK"  # not the checkout: imports must come from the installed package

"$PY" - <<'PY'
import importlib.util, sys
present = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is not None]
assert not present, f"the [cpu,serve] install pulled in {present}"
import bertrt, bertrt.runtime, bertrt.runtime.server, bertrt.runtime.launch, bertrt.runtime.edge
assert "site-packages" in bertrt.__file__, f"bertrt imported from {bertrt.__file__}, not the venv"
# the converters install as bertrt.converters (sub-packages included), though they need torch to import
spec = importlib.util.find_spec("bertrt.converters.prune")
assert spec and "site-packages" in spec.origin, f"bertrt.converters.prune is not installed: {spec}"
print(f"torchfree: bertrt {bertrt.__version__} imports without torch/transformers/onnx")
PY

TASK=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" "$ART/bertrt.json")
if [ "$TASK" = qa ]; then
    printf '%s\n' '{"question": "Who wrote it?", "context": "The report was written by the committee."}' \
                  '{"question": "Where?", "context": "北京 😀 cafe\u0301"}' > in.jsonl
else
    printf '%s\n' '{"text": "The quick brown fox jumps over the lazy dog."}' '"北京 😀 cafe\u0301"' > in.jsonl
fi
"$WORK/venv/bin/bertrt" predict "$ART" -i in.jsonl -o out.jsonl --device cpu 2>/dev/null

"$PY" - "$TASK" "$ART" <<'PY'
import json, sys
task, art = sys.argv[1], sys.argv[2]
inputs = [json.loads(l) for l in open("in.jsonl", encoding="utf-8")]
outputs = [json.loads(l) for l in open("out.jsonl", encoding="utf-8")]
assert len(outputs) == len(inputs), f"{len(outputs)} outputs for {len(inputs)} inputs"
keys = {"classify": {"label", "score", "scores"}, "ner": {"entities"}, "qa": {"answer", "start", "end", "score"},
        "embed": {"embedding"}}[task]
for item, out in zip(inputs, outputs):
    assert keys <= set(out) <= keys | {"truncated"}, out
    if task == "classify":
        assert out["label"] in out["scores"] and abs(sum(out["scores"].values()) - 1) < 1e-6, out
    if task == "qa":
        assert item["context"][out["start"]:out["end"]] == out["answer"], out
    if task == "ner":
        text = item["text"] if isinstance(item, dict) else item
        assert all(text[e["start"]:e["end"]] == e["text"] for e in out["entities"]), out
    if task == "embed":
        assert len(out["embedding"]) > 0 and all(isinstance(v, float) for v in out["embedding"])
# the library path, in this process: a full predict loads nothing heavy
from bertrt import Runtime
Runtime(art, device="cpu").predict([inputs[0]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
assert not heavy, heavy
print(f"torchfree: bertrt predict on a {task} artifact gave {len(outputs)} checked outputs; no torch loaded")
PY

# a serving box signs, checks signatures and masks without torch: [serve] brings cryptography and phonenumbers
BIN="$WORK/venv/bin/bertrt"
"$BIN" keygen "$WORK/k.pem" >/dev/null
cp -r "$ART" "$WORK/signed" && "$BIN" sign "$WORK/signed" --key "$WORK/k.pem" >/dev/null
"$BIN" verify "$WORK/signed" --hashes-only --trusted-key "$WORK/k.pem.pub"
MASKED=$("$BIN" mask 'tel 13812345678' 2>/dev/null)
test "$MASKED" = '{"text": "tel <PHONE>", "found": [{"type": "PHONE", "start": 4, "end": 15}]}' || {
    echo "torchfree: bertrt mask printed $MASKED" >&2; exit 1; }
echo "torchfree: sign, verify --trusted-key and mask work without torch"
