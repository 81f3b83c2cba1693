"""bertrt bench: the gate refuses artifacts that disagree with the reference; bench.json follows its schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
jsonschema = pytest.importorskip("jsonschema")

from bertrt.bench.run import BenchConfig, run_bench  # noqa: E402
from bertrt.bench.schema import SCHEMA  # noqa: E402
from bertrt.errors import BenchGateError, BertrtError, OutputExistsError  # noqa: E402

from .test_export_fixtures import make_checkpoint, perturbed_model, tiny_tokenizer  # noqa: E402

QUIET = dict(log=lambda m: None, progress=False)
FAST = dict(batch_sizes=[1, 4], repeats=1, latency_n=6, progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny classifier, labelled data (its own predictions with every 7th label changed: 85.7% accuracy), its
    fp32 artifact, and an artifact exported from the same model with perturbed weights."""
    from bertrt.bench.gate import Workload, reference_answers
    from bertrt.checkpoint import save_checkpoint
    from bertrt.converters import sample
    from bertrt.converters.config import ParityConfig
    from bertrt.converters.pipeline import export_artifact

    root = tmp_path_factory.mktemp("bench")
    ckpt = make_checkpoint(root, "classify", std=0.3)  # wide weights: all three labels get predicted
    texts = sample.TEXTS[:70]
    answers, _, labels = reference_answers(ckpt, Workload("x", "classify", texts, None),
                                           {"task": "classify", "max_length": 128})
    preds = [a["label"] for a in answers]
    gold = [p if i % 7 else labels[(labels.index(p) + 1) % 3] for i, p in enumerate(preds)]
    data = root / "news.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(texts, gold)))

    bad_ckpt = save_checkpoint(perturbed_model("classify"), root / "ckpt-perturbed", tokenizer=tiny_tokenizer())
    good = root / "good"
    export_artifact(ckpt, good, parity=ParityConfig(eval_path=str(data)), **QUIET)
    bad = root / "perturbed"
    export_artifact(bad_ckpt, bad, parity=ParityConfig(eval_path=str(data)), **QUIET)  # faithful to ITS source
    return {"root": root, "ckpt": ckpt, "data": data, "good": good, "bad": bad, "gold_accuracy": 60 / 70}


@pytest.fixture(scope="module")
def timed(setup):
    out = setup["root"] / "out"
    doc = run_bench([setup["good"]], [setup["data"]], out, BenchConfig(peers=["ort-fp32"], **FAST),
                    reference=str(setup["ckpt"]), log=lambda m: None)
    return out, doc


def test_an_artifact_that_disagrees_with_the_reference_is_refused_before_any_timing(setup):
    out = setup["root"] / "refused"
    with pytest.raises(BenchGateError) as e:
        run_bench([setup["good"], setup["bad"]], [setup["data"]], out, BenchConfig(peers=[], **FAST),
                  reference=str(setup["ckpt"]), log=lambda m: None)
    assert "perturbed" in str(e.value) and "agreement" in str(e.value) and "< 100%" in str(e.value)
    (refusal,) = e.value.refusals  # the faithful artifact passed; only the perturbed one is refused
    assert refusal["artifact"].endswith("perturbed")
    assert 0.0 < refusal["agreement"] < 1.0 and refusal["gate"]["min_agreement"] == 1.0
    assert not out.exists()  # nothing was timed or written


def test_skip_refused_reports_the_refusal_with_its_numbers_and_times_the_rest(setup):
    out = setup["root"] / "skipped"
    doc = run_bench([setup["good"], setup["bad"]], [setup["data"]], out, BenchConfig(skip_refused=True, peers=[],
                                                                                           **FAST),
                    reference=str(setup["ckpt"]), log=lambda m: None)
    good, bad = doc["rows"]
    assert bad["status"] == "refused" and bad["agreement"] < 1.0 and "agreement" in bad["reason"]
    assert "throughput" not in bad and "latency_ms" not in bad
    assert good["status"] == "timed" and good["agreement"] == 1.0
    assert good["metric"] == "accuracy" and good["score"] == pytest.approx(setup["gold_accuracy"], abs=1e-6)
    jsonschema.validate(json.loads((out / "bench.json").read_text()), SCHEMA)


def test_a_looser_gate_lets_the_perturbed_artifact_through_only_when_it_is_not_fp32(setup):
    """The fp32 gate is exact agreement whatever --min-agreement says; --max-drop alone cannot open it."""
    with pytest.raises(BenchGateError):
        run_bench([setup["bad"]], [setup["data"]], setup["root"] / "loose", BenchConfig(
            min_agreement=0.01, max_drop=100.0, peers=[], **FAST), reference=str(setup["ckpt"]), log=lambda m: None)


def test_bench_json_follows_the_schema_and_holds_consistent_numbers(setup, timed):
    out, doc = timed
    written = json.loads((out / "bench.json").read_text())
    jsonschema.validate(written, SCHEMA)
    assert written["schema_validated"] is True
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "latency.png", "accuracy_throughput.png"}
    rows = {r["kind"]: r for r in written["rows"]}
    ours, peer = rows["bertrt"], rows["peer"]
    for r in (ours, peer):
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["n"] == 6
        assert set(r["throughput"]) == {"1", "4"} and all(t["seq_per_s"] > 0 for t in r["throughput"].values())
        assert r["tokenize_ms"]["p50"] > 0  # timed apart from the latency: comparing them races on a busy box
        assert r["size_mb"] > 0 and r["threads"] >= 1 and r["max_length"] == 128 and r["examples"] == 70
        assert r["cpu"] and r["versions"]["onnxruntime"] and r["versions"]["torch"]
    assert peer["variant"].startswith("ONNX Runtime plain export fp32") and peer["agreement"] == 1.0
    assert peer["vs_best_peer"]["throughput_ratio"] == 1.0 and peer["vs_best_peer"]["p50_ratio"] == 1.0
    expected = ours["throughput"]["4"]["seq_per_s"] / peer["throughput"]["4"]["seq_per_s"]
    assert ours["vs_best_peer"]["throughput_ratio"] == pytest.approx(expected, rel=1e-2)
    md = (out / "bench.md").read_text()
    assert md.count("\n| news |") == 2 and "seq/s @4" in md and written["machine"]["cpu"] in md


def test_the_schema_rejects_a_timed_row_without_measurements(timed):
    _, doc = timed
    broken = json.loads(json.dumps({k: v for k, v in doc.items() if k not in ("schema_validated", "plots")}))
    del broken["rows"][0]["latency_ms"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken["rows"][0].update(status="refused", reason=None)
    with pytest.raises(jsonschema.ValidationError):  # a refusal must say why
        jsonschema.validate(broken, SCHEMA)


def test_existing_output_needs_force_and_bad_options_are_refused(setup, timed):
    out, _ = timed
    with pytest.raises(OutputExistsError):
        run_bench([setup["good"]], [setup["data"]], out, BenchConfig(**FAST), reference=str(setup["ckpt"]))
    with pytest.raises(BertrtError, match="batch-sizes"):
        BenchConfig(batch_sizes=[0, 8])
    with pytest.raises(BertrtError, match="unknown peers"):
        BenchConfig(peers=["tensorflow"])


def test_cli_refusal_is_one_line_and_exit_1(setup, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "bench", str(setup["bad"]), "--data", str(setup["data"]),
                        "--reference", str(setup["ckpt"]), "-o", str(tmp_path / "o"), "--latency-n", "4",
                        "--repeats", "1", "--batch-sizes", "1", "--peers", "none"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "refusing to time" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_timing_is_interleaved_in_short_turns_and_rotating_rounds_and_failed_peers_take_no_turns(monkeypatch):
    """Every variant is loaded first; then each turn (a few latency texts, or a few batches) goes round every
    variant before the next starts, and each round starts one variant later, so a drift of the machine reaches all
    of them alike. Throughput turns take the texts shortest first."""
    import bertrt.bench.run as R

    events = []
    texts = [f"text {'x' * (i * 7 % 23)}" for i in range(25)]

    class Fake:
        def __init__(self, job):
            self.job = job

        def start(self):
            events.append((self.job["what"], "start"))
            if self.job["what"] == "broken":
                return {"name": "broken", "precision": "fp32", "status": "failed", "reason": "cannot load"}
            return {"name": self.job["what"], "precision": "fp32", "status": "timed"}

        def latency(self, lo, hi):
            events.append((self.job["what"], "latency", lo, hi))
            return {"total": [float(i) for i in range(lo, hi)], "tok": [0.5] * (hi - lo)}

        def throughput(self, b, lo, hi):
            events.append((self.job["what"], f"b{b}", lo, hi))
            return {"seconds": (hi - lo) / (100.0 if self.job["what"] == "A" else 50.0), "tok_s": 0.01}

        def close(self):
            events.append((self.job["what"], "close"))

    monkeypatch.setattr(R, "_Timer", Fake)
    monkeypatch.setattr(R, "LATENCY_TURN", 4)
    monkeypatch.setattr(R, "THROUGHPUT_TURN", 10)
    jobs = [{"what": w, "kind": "peer", "workload": {"name": "w", "texts": texts, "gold": ["x"] * 25}}
            for w in ("A", "B", "broken", "C")]
    cfg = BenchConfig(batch_sizes=[1, 4], repeats=2, latency_n=6, isolate=False, progress=False)
    rows = R._time_interleaved(jobs, cfg, Path("."), "w")
    assert events[:4] == [(w, "start") for w in ("A", "B", "broken", "C")]
    timed = events[4:-4]
    per_round = len(timed) // 2
    first, second = timed[:per_round], timed[per_round:]
    # round 1: latency turns [0,4) then [4,6), each through A, B, C; then batch 1 in turns of 10, batch 4 of 12
    assert [(w, op) for w, op, *_ in first[:6]] == [(v, "latency") for v in "ABCABC"]
    assert [lohi for _, _, *lohi in first[:6]] == [[0, 4]] * 3 + [[4, 6]] * 3
    b1 = [(w, lo, hi) for w, op, lo, hi in first if op == "b1"]
    assert b1 == [(v, lo, min(25, lo + 10)) for lo in (0, 10, 20) for v in "ABC"]
    b4 = [(w, lo, hi) for w, op, lo, hi in first if op == "b4"]
    assert b4 == [(v, lo, min(25, lo + 12)) for lo in (0, 12, 24) for v in "ABC"]
    assert [w for w, *_ in second[:3]] == ["B", "C", "A"]  # the next round starts one variant later
    assert "broken" not in {e[0] for e in timed}
    assert sorted(events[-4:]) == [(w, "close") for w in ("A", "B", "C", "broken")]
    a, b, broken, c = rows
    assert broken["status"] == "failed" and "latency_ms" not in broken
    assert a["latency_ms"]["n"] == 12 and a["latency_ms"]["p50"] == 2.5  # 0..5 twice, pooled over the rounds
    assert a["throughput"]["4"] == {"seq_per_s": 100.0, "std": 0.0, "repeats": 2, "tokenize_share": 0.12}
    assert b["throughput"]["1"]["seq_per_s"] == 50.0


def test_throughput_turns_take_the_workload_shortest_first():
    import bertrt.bench.run as R

    seen = []

    class P:
        def tokenize(self, texts):
            pass

        def predict(self, texts, b):
            seen.append(list(texts))

    t = R._Timer({"workload": {"name": "w", "task": "classify", "texts": ["ccc", "a", "bb", "dddd"], "gold": ["x"] * 4}})
    t.p = P()
    t.throughput(2, 0, 2)
    t.throughput(2, 2, 4)
    assert seen == [["a", "bb"], ["ccc", "dddd"]]


def test_machine_flags_come_from_cpuinfo_and_reach_the_caption():
    from bertrt.bench.machine import cpu_flags
    from bertrt.bench.report import caption

    info = ("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8\n"
            "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]  # ISA order, first line only
    assert cpu_flags("model name\t: no flags line\n") == []
    doc = {"machine": {"cpu": "Some Xeon", "cpu_flags": ["avx512_vnni", "amx_int8"], "cores": 2, "threads": 2,
                       "commit": "abc", "versions": {"bertrt": "0", "onnxruntime": "1", "torch": "2",
                                                     "transformers": "5", "openvino": "2026.4.1", "nncf": None}},
           "settings": {"repeats": 1, "latency_n": 4, "reference": None}, "workloads": []}
    text = caption(doc)
    assert text.startswith("Some Xeon [avx512_vnni amx_int8] (2 cores)") and "openvino 2026.4.1" in text
    assert "nncf" not in text
