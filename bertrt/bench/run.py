"""``run_bench``: gate every artifact against the reference, then time artifacts and peers; write the results.

Order matters: all artifacts are checked before anything is timed ("all results match, starting benchmarks"), so
a refused artifact costs seconds, not a whole run. Each variant is loaded outside the timed regions; its peak
memory is the resident-set growth from just before loading to the end of its timing.

Each variant is timed in a fresh Python process (``python -m bertrt.bench.run JOB ROW``) unless
``BenchConfig.isolate`` is off: in one long process the variants timed earlier leave thread pools, allocator state
and imported libraries behind (torch's OpenMP pool beside ONNX Runtime's), and a later variant's numbers then
depend on the order of the list.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchGateError, BertrtError
from . import gate as G
from .measure import PeakRSS, latency, throughput


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int | None = None  # None: the cores this process may use
    repeats: int = 3  # timed passes over the workload per batch size
    latency_n: int = 100  # texts timed one at a time for batch-1 latency
    limit: int | None = None  # use only the first N examples of each workload
    peers: list[str] | None = None  # None: every peer (with a reference); [] none
    min_agreement: float | None = None  # None: each artifact's own parity setting
    max_drop: float | None = None  # None: each artifact's own parity setting
    skip_refused: bool = False  # report refused artifacts as rows instead of stopping
    progress: bool = True
    isolate: bool = True  # time each variant in its own fresh process

    def __post_init__(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise BertrtError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        self.batch_sizes = sorted(set(self.batch_sizes))
        if self.repeats < 1 or self.latency_n < 1:
            raise BertrtError("--repeats and --latency-n must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise BertrtError(f"--threads must be >= 1, got {self.threads}")
        from .peers import PEERS

        unknown = [p for p in self.peers or [] if p not in PEERS]
        if unknown:
            raise BertrtError(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")


def _reference_for(manifest: dict, reference: str | None, where: Path) -> Path:
    ref = Path(reference) if reference else Path((manifest.get("source") or {}).get("checkpoint") or "")
    if not ref.is_dir():
        raise BertrtError(f"{where}: no reference checkpoint to check it against; pass --reference with the "
                          f"checkpoint it was exported from (recorded: {ref if str(ref) != '.' else 'none'})")
    return ref


class _References:
    """Reference predictions, computed once per (checkpoint, max_length, workload)."""

    def __init__(self):
        self.cache: dict = {}

    def get(self, checkpoint: Path, max_length: int, w: G.Workload) -> list[str]:
        key = (str(checkpoint.resolve()), max_length, w.name)
        if key not in self.cache:
            preds, labels = G.reference_predictions(checkpoint, w.texts, max_length)
            unknown = sorted(set(w.gold) - set(labels))
            if unknown:
                raise BertrtError(f"workload {w.name} has labels {unknown} that {checkpoint} does not know "
                                  f"({labels}); bench it with data of the model's own task")
            self.cache[key] = preds
        return self.cache[key]


def run_bench(artifacts: list, data: list, out: Path, cfg: BenchConfig, reference: str | None = None,
              force: bool = False, log=print) -> dict:
    """Check, time, and write ``out``/bench.json, bench.md and the plots; return the results document.

    Raises ``BenchGateError`` (nothing written) when an artifact fails its gate and ``skip_refused`` is off.
    """
    from ..artifact import load_manifest
    from ..atomic import atomic_dir, check_writable
    from ..runtime.session import default_threads
    from .machine import describe
    from .peers import NAMES
    from .variants import ArtifactPredictor

    check_writable(out, force)
    if not artifacts and not (reference and cfg.peers != []):
        raise BertrtError("nothing to bench: give at least one artifact (or --reference for the peers alone)")
    try:
        import torch  # noqa: F401  (the reference runs in PyTorch)
    except ImportError:
        raise BertrtError("bench checks every artifact against its PyTorch reference first: pip install "
                          "bertrt[bench]") from None
    threads = cfg.threads or default_threads()
    machine = describe(threads)
    manifests = {Path(a): load_manifest(a) for a in artifacts}
    lengths = {int(m["max_length"]) for m in manifests.values()}
    max_length = max(lengths) if lengths else 128
    workloads = [G.read_workload(d, cfg.limit) for d in data]
    refs = _References()
    plan = []  # (workload, artifact path, gate result) of everything that passed
    rows, refusals = [], []

    def base_row(w, name, kind, precision, path=None) -> dict:
        return {"workload": w.name, "variant": name, "kind": kind, "precision": precision,
                "artifact": str(path) if path else None, "cpu": machine["cpu"], "cores": machine["cores"],
                "threads": threads, "commit": machine["commit"], "versions": machine["versions"],
                "batch_sizes": cfg.batch_sizes, "max_length": max_length, "examples": len(w.texts)}

    log(f"checking {len(manifests)} artifact(s) on {len(workloads)} workload(s) before timing anything")
    for w in workloads:
        for path, manifest in manifests.items():
            ref_ckpt = _reference_for(manifest, reference, path)
            ref = refs.get(ref_ckpt, int(manifest["max_length"]), w)
            p = ArtifactPredictor(path, threads)
            result = G.check(p.predict(w.texts, cfg.batch_sizes[-1]), ref, w.gold,
                             G.Gate.for_manifest(manifest, cfg.min_agreement, cfg.max_drop))
            del p
            if result["gate"]["passed"]:
                plan.append((w, path, result))
                continue
            reason = f"refused: {'; '.join(result['gate']['problems'])} (reference {ref_ckpt})"
            refusals.append({"artifact": str(path), "workload": w.name, **result})
            rows.append(base_row(w, f"bertrt {path.name}", "bertrt", manifest.get("precision", "?"), path)
                        | {k: result[k] for k in ("accuracy", "agreement", "drop")}
                        | {"gate": result["gate"], "status": "refused", "reason": reason})
    if refusals and not cfg.skip_refused:
        lines = [f"{r['artifact']} on {r['workload']}: {'; '.join(r['gate']['problems'])}" for r in refusals]
        raise BenchGateError("refusing to time artifacts whose outputs disagree with the reference beyond their "
                             "gate: " + " | ".join(lines), refusals)
    log("all checked artifacts match their reference; starting benchmarks" if not refusals else
        f"{len(refusals)} refused (reported, not timed); timing the rest")

    peers = (cfg.peers if cfg.peers is not None else list(_peer_keys())) if reference else []
    with tempfile.TemporaryDirectory(prefix="bertrt-bench-") as tmp:
        jobs = [(w, "bertrt", path, result) for w, path, result in plan]
        jobs += [(w, "peer", key, None) for w in workloads for key in peers]
        bar = _bar(len(jobs), cfg.progress)
        for w, kind, what, result in jobs:
            bar.set_description(f"{w.name}: {what if kind == 'peer' else Path(what).name}")
            job = {"workload": {"name": w.name, "texts": w.texts, "gold": w.gold}, "kind": kind, "what": str(what),
                   "result": result, "reference": reference, "max_length": max_length, "threads": threads,
                   "work": tmp, "batch_sizes": cfg.batch_sizes, "repeats": cfg.repeats, "latency_n": cfg.latency_n,
                   "ref": refs.get(Path(reference), max_length, w) if kind == "peer" else None}
            row = _run_isolated(job, Path(tmp)) if cfg.isolate else _run_job(job)
            rows.append(base_row(w, row.pop("name"), kind, row.pop("precision"), what if kind == "bertrt" else None)
                        | row)
            bar.update(1)
        bar.close()
    order = {str(a): i for i, a in enumerate(manifests)} | {NAMES[k]: len(manifests) + i for i, k in
                                                             enumerate(peers)}
    loads = [w.name for w in workloads]
    rows.sort(key=lambda r: (loads.index(r["workload"]), order.get(r["artifact"] or r["variant"], 0)))
    _ratios(rows, cfg.batch_sizes[-1])
    doc = {"format": 1, "machine": machine,
           "settings": {"batch_sizes": cfg.batch_sizes, "repeats": cfg.repeats, "latency_n": cfg.latency_n,
                        "reference": str(reference) if reference else None, "peers": peers,
                        "min_agreement": cfg.min_agreement, "max_drop": cfg.max_drop, "isolate": cfg.isolate},
           "workloads": [{"name": w.name, "path": str(d), "examples": len(w.texts), "max_length": max_length}
                         for w, d in zip(workloads, data)],
           "rows": rows}
    from .report import write_report

    with atomic_dir(out, force=True) as tmp_out:  # check_writable above already refused an unforced overwrite
        write_report(doc, tmp_out)
    return doc


def _run_job(job: dict) -> dict:
    """Time one variant in this process; ``job`` is plain JSON (see ``run_bench``)."""
    from .variants import ArtifactPredictor

    w = G.Workload(**job["workload"])
    cfg = BenchConfig(batch_sizes=job["batch_sizes"], repeats=job["repeats"], latency_n=job["latency_n"],
                      progress=False)
    if job["kind"] == "bertrt":
        return _time_one(w, lambda: ArtifactPredictor(job["what"], job["threads"]), cfg, job["result"], None)
    return _time_peer(w, job["what"], job["reference"], job["max_length"], job["threads"], Path(job["work"]), cfg,
                      job["ref"])


def _run_isolated(job: dict, tmp: Path) -> dict:
    """``_run_job`` in a fresh interpreter; its row comes back as JSON."""
    spec, row = tmp / "job.json", tmp / "row.json"
    spec.write_text(json.dumps(job))
    row.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "bertrt.bench.run", str(spec), str(row)], capture_output=True,
                          text=True)
    if done.returncode != 0 or not row.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BertrtError(f"timing {job['what']} on {job['workload']['name']} in its own process failed "
                          f"(exit {done.returncode}):\n{tail}")
    return json.loads(row.read_text())


def _peer_keys():
    from .peers import PEERS

    return PEERS


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="variant", disable=not enabled, dynamic_ncols=True)


def _time_one(w, factory, cfg: BenchConfig, result: dict | None, ref: list[str] | None) -> dict:
    # Memory is sampled (a thread reading /proc every 5 ms) while loading and over one untimed pass at the largest
    # batch, never during timing: on a 2-core machine the sampler's wake-ups cost a 2-thread ONNX Runtime batch-1
    # call over a millisecond (measured: 6.9 ms p50 sampled vs 5.4 ms not, for the same artifact).
    with PeakRSS() as mem:
        p = factory()
        preds = p.predict(w.texts, cfg.batch_sizes[-1])
    if result is None:  # peers: report how they agree with the reference; they have no gate
        result = G.check(preds, ref, w.gold, None)
    lat, tok = latency(p, w.texts[:cfg.latency_n])
    thr = {str(b): throughput(p, w.texts, b, cfg.repeats) for b in cfg.batch_sizes}
    row = {"name": p.name, "precision": p.precision, "status": "timed", "reason": None,
           "accuracy": result["accuracy"], "agreement": result["agreement"], "drop": result["drop"],
           "gate": result.get("gate"), "latency_ms": lat, "tokenize_ms": tok, "throughput": thr,
           "peak_mb": mem.delta_mb, "size_mb": p.size_mb}
    del p
    return row


def _time_peer(w, key, reference, max_length, threads, work, cfg, ref) -> dict:
    from .peers import NAMES, PRECISION, make_peer

    try:
        return _time_one(w, lambda: make_peer(key, reference, max_length, threads, work), cfg, None, ref)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # e.g. a pruned checkpoint transformers cannot load
        return {"name": NAMES[key], "precision": PRECISION[key], "status": "failed",
                "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


def _ratios(rows: list[dict], batch: int) -> None:
    """Each timed row against the best peer of its workload: throughput at the largest batch (higher is better)
    and batch-1 p50 latency (lower is better)."""
    key = str(batch)
    for wl in {r["workload"] for r in rows}:
        peers = [r for r in rows if r["workload"] == wl and r["kind"] == "peer" and r["status"] == "timed"]
        if not peers:
            continue
        best_thr = max(peers, key=lambda r: r["throughput"][key]["seq_per_s"])
        best_lat = min(peers, key=lambda r: r["latency_ms"]["p50"])
        for r in rows:
            if r["workload"] == wl and r["status"] == "timed":
                r["vs_best_peer"] = {
                    "batch": batch, "throughput_peer": best_thr["variant"],
                    "throughput_ratio": round(r["throughput"][key]["seq_per_s"] /
                                              best_thr["throughput"][key]["seq_per_s"], 3),
                    "p50_peer": best_lat["variant"],
                    "p50_ratio": round(r["latency_ms"]["p50"] / best_lat["latency_ms"]["p50"], 3)}


if __name__ == "__main__":  # one isolated timing job: python -m bertrt.bench.run JOB.json ROW.json
    Path(sys.argv[2]).write_text(json.dumps(_run_job(json.loads(Path(sys.argv[1]).read_text()))))
