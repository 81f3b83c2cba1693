"""`bertrt info` on an artifact: a readable summary with exact counts, labels, sizes and gate numbers (the kept
indices stay in --json); on the pruned checkpoint it came from: the sizes beside the unpruned ones."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from bertrt.artifact import load_manifest  # noqa: E402

from .test_export_fixtures import LABELS, make_checkpoint  # noqa: E402

WORDS = {"business": "shares markets bank rates investors profit", "sport": "team match goal captain final win",
         "tech": "chip software phone computer code network"}


def bertrt(*args):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def pruned_int8(tmp_path_factory):
    """A tiny classify checkpoint pruned to half its FLOPs (and recovered) by prune_checkpoint, exported fused +
    dynamic INT8."""
    import torch

    from bertrt.converters.config import ParityConfig, QuantizeConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.converters.prune import PruneConfig, RecoverConfig, prune_checkpoint

    root = tmp_path_factory.mktemp("info")
    ckpt = make_checkpoint(root, "classify")
    rows = []
    for i in range(48):
        label = LABELS["classify"][i % 3]
        words = WORDS[label].split()
        rows.append({"text": " ".join(words[(i + j) % 6] for j in range(3 + i % 5)), "label": label})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    record = prune_checkpoint(ckpt, root / "pruned", root / "train.jsonl",
                              PruneConfig(0.5, seq_len=32, min_examples=16), RecoverConfig(1, batch_size=8),
                              batch_size=8, progress=False)
    # a random tiny model has no margins for INT8 to keep: loose gates, whose numbers the summary must still show
    export_artifact(root / "pruned", root / "art", quantize=QuantizeConfig(mode="dynamic", per_channel=False),
                    parity=ParityConfig(min_agreement=0.5, max_drop=100.0, int8_min_snr_db=0.0),
                    log=lambda m: None, progress=False)
    return root, record


def test_artifact_summary_shows_exact_counts_labels_sizes_and_gates(pruned_int8):
    root, record = pruned_int8
    art = root / "art"
    r = bertrt("info", art)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    m = load_manifest(art)
    ops = Counter(n.op_type for n in onnx.load(str(art / "model.onnx")).graph.node)  # counted here, independently
    assert ops["QAttention"] == 2 and ops["QEmbedLayerNormalization"] == 1 and ops["MatMulInteger"] > 0
    by_key = {line[:12].strip(): line[13:] for line in lines if line[:1] != " " and not line[:5].strip().isdigit()}
    assert by_key["task"] == "classify; 3 labels: business, sport, tech"
    assert by_key["precision"] == "int8-dynamic"
    assert by_key["max length"] == "128 tokens"
    assert by_key["fusions"] == "Attention 2, EmbedLayerNormalization 1, Gelu* 2, SkipLayerNormalization 4"
    assert by_key["quantized"] == (f"MatMulInteger {ops['MatMulInteger']}, QAttention 2, QEmbedLayerNormalization 1 "
                                   f"(dynamic INT8, preset {m['quantization']['preset']})")
    assert by_key["left fp32"] == f"Attention {ops['Attention']}, MatMul {ops['MatMul']}; units kept in fp32: none"
    assert by_key["model"] == "2 layers, hidden 64, vocab 400"
    assert by_key["pruned"] == (f"to {100 * record['kept_flops']:.1f}% of the encoder FLOPs at length 32 "
                                "(fisher-mask-search+rescale, 48 examples)")
    assert 45.0 <= 100 * record["kept_flops"] <= 50.0
    assert by_key["recovered"] == "1 epoch(s) of distillation, 6 steps"  # 48 examples in batches of 8
    table = lines[lines.index("layer  heads   ffn   unpruned heads   ffn") + 1:][:2]
    heads, ffn = record["pruned"]["num_heads"], record["pruned"]["ffn_sizes"]
    assert table == [f"{i:>5}  {heads[i]:>5}  {ffn[i]:>4}   {4:>14}  {96:>4}" for i in range(2)]
    assert m["model"]["num_heads"] == heads and m["model"]["ffn_sizes"] == ffn
    final = m["parity"]["final"]
    gate_lines = {line.split()[0]: line for line in lines if line.startswith("  ")}
    decision, tensor = final["gates"]["decision"]["value"], final["gates"]["tensor"]["value"]
    assert final["gates"]["decision"]["verdict"] == "pass"  # the 95% upper bound of confident flips is under 50%
    assert gate_lines["decision"] == (f"  decision    {decision:<10.4g} passed  confident-flip rate <= 50.00% "
                                      "(95% upper bound)")
    assert gate_lines["decided"] == "  decided by the decision statistic and the tensor gate"
    assert gate_lines["tensor"] == f"  tensor      {tensor:<10.4g} passed  SNR >= 0 dB"
    assert gate_lines["task"].split()[1:3] == ["-", "passed"]
    assert by_key["gates"] == f"passed: int8-dynamic against the PyTorch fp32 model on {final['examples']} " \
                              "examples of built-in English sample"
    fused = m["parity"]["fused_fp32"]["gates"]
    assert gate_lines["fused_fp32"] == (f"  fused_fp32  passed on the way (decision {fused['decision']['value']:.4g}, "
                                        f"task -, tensor {fused['tensor']['value']:.4g})")
    assert by_key["versions"] == f"bertrt {m['versions']['bertrt']}, onnx {onnx.__version__}, onnxruntime " \
                                 f"{ort.__version__}, torch {m['versions']['torch']}"
    # readable: no kept-index lists, no line a terminal has to wrap twice
    assert "kept_neurons" not in r.stdout and len(lines) < 40 and max(map(len, lines)) < 140


def test_json_prints_the_manifest_and_info_on_an_artifact_loads_no_torch(pruned_int8):
    art = pruned_int8[0] / "art"
    r = bertrt("info", art, "--json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest == load_manifest(art)
    assert len(manifest["pruning"]["prune"]["kept_neurons"][0]) == manifest["model"]["ffn_sizes"][0]
    code = ("import sys; from bertrt.cli import main; sys.argv = ['bertrt', 'info', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'transformers'))\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_pruned_checkpoint_summary_shows_the_unpruned_sizes(pruned_int8):
    root, record = pruned_int8
    r = bertrt("info", root / "pruned", "--seq-len", 32)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    o, p = record["original"], record["pruned"]
    assert f"FLOPs/token  {p['flops_per_token'] / 1e6:.2f} MFLOPs at sequence length 32 (encoder matmuls); " \
           f"{100 * record['kept_flops']:.1f}% of the unpruned {o['flops_per_token'] / 1e6:.2f} M" in lines
    i = lines.index("layer  heads   ffn   unpruned heads   ffn")
    assert lines[i + 1:] == [f"{k:>5}  {p['num_heads'][k]:>5}  {p['ffn_sizes'][k]:>4}   {4:>14}  {96:>4}"
                             for k in range(2)]


def test_an_artifact_written_without_export_says_its_gates_are_not_recorded(tiny_artifact):
    r = bertrt("info", tiny_artifact("ner"))
    assert r.returncode == 0, r.stderr
    assert "task         ner; 5 labels: O, B-PER, I-PER, B-LOC, I-LOC" in r.stdout.splitlines()
    assert "gates        not recorded (an artifact written without bertrt export)" in r.stdout.splitlines()
    assert "fusions      none (unfused graph)" in r.stdout.splitlines()
    r = bertrt("info", tiny_artifact("embed"))
    assert "task         embed; mean pooling, not normalized" in r.stdout.splitlines(), r.stdout
