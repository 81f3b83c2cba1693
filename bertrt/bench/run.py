"""``run_bench``: gate every artifact against the reference, then time artifacts and peers; write the results.

Order matters: all artifacts are checked before anything is timed ("all results match, starting benchmarks"), so
a refused artifact costs seconds, not a whole run. Each variant is loaded outside the timed regions; its peak
memory is the resident-set growth from just before loading to the end of one untimed pass.

Timing is interleaved. Every variant of a workload is loaded and warmed up first; then ``repeats`` rounds run. A
round is one batch-1 latency pass and one throughput pass per batch size for every variant, cut into turns of a
second or so that go round all the variants before the next turn starts (``_time_interleaved``). This VM's speed
swings by up to 2x within a minute; timed one after the other, a variant caught in a slow spell would lose to one
timed in a fast spell, and the ratios against the peers would report the weather. Interleaved this finely, every
variant meets the same spells.

Each variant lives in its own Python process (``python -m bertrt.bench.run --worker``) unless
``BenchConfig.isolate`` is off: in one process, the variants loaded together share thread pools, allocator state
and imported libraries (torch's OpenMP pool beside ONNX Runtime's), and a variant's numbers then depend on its
neighbours. Only one process runs at a time; the others wait on a pipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchGateError, BertrtError
from . import gate as G
from .measure import PeakRSS, distribution, latency_pass, throughput_pass, throughput_summary, warm_up


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int | None = None  # None: the cores this process may use
    repeats: int = 3  # rounds; each is a latency pass and one pass per batch size of every variant
    latency_n: int = 100  # texts timed one at a time for batch-1 latency
    limit: int | None = None  # use only the first N examples of each workload
    peers: list[str] | None = None  # None: every peer (with a reference); [] none
    min_agreement: float | None = None  # None: each artifact's own parity setting
    max_drop: float | None = None  # None: each artifact's own parity setting
    skip_refused: bool = False  # report refused artifacts as rows instead of stopping
    progress: bool = True
    isolate: bool = True  # each variant in its own process
    long: str = "truncate"  # classify / embed inputs past the max length: "truncate" or "chunks" (as Runtime)
    backend: str = "auto"  # the artifacts' inference engine (as Runtime)

    def __post_init__(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise BertrtError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        self.batch_sizes = sorted(set(self.batch_sizes))
        if self.repeats < 1 or self.latency_n < 1:
            raise BertrtError("--repeats and --latency-n must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise BertrtError(f"--threads must be >= 1, got {self.threads}")
        from .peers import PEERS, installed_peers

        unknown = [p for p in self.peers or [] if p not in PEERS]
        if unknown:
            raise BertrtError(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
        missing = [p for p in self.peers or [] if p not in installed_peers()]
        if missing:
            raise BertrtError(f"peers {missing} need openvino and nncf: pip install the bench extra")
        if self.backend not in ("auto", "onnxruntime", "openvino"):
            raise BertrtError(f"unknown backend {self.backend!r}; choose auto, onnxruntime or openvino")


def _reference_for(manifest: dict, reference: str | None, where: Path) -> Path:
    members = (manifest.get("ensemble") or {}).get("members")
    if members:  # an ensemble is checked against its members' checkpoints, combined (gate.reference_answers)
        refs = [Path((m.get("source") or {}).get("checkpoint") or "") for m in members]
        missing = [str(r) for r in refs if not r.is_dir()]
        if missing:
            raise BertrtError(f"{where}: the ensemble's reference is its members' checkpoints, and "
                              f"{', '.join(missing)} are not available")
        return refs[0]
    ref = Path(reference) if reference else Path((manifest.get("source") or {}).get("checkpoint") or "")
    if not ref.is_dir():
        raise BertrtError(f"{where}: no reference checkpoint to check it against; pass --reference with the "
                          f"checkpoint it was exported from (recorded: {ref if str(ref) != '.' else 'none'})")
    return ref


class _References:
    """Reference answers and encoded inputs, computed once per (checkpoint, encoding settings, workload)."""

    def __init__(self):
        self.cache: dict = {}

    def get(self, checkpoint: Path, manifest: dict, w: G.Workload) -> tuple[list[dict], list]:
        settings = {k: manifest.get(k) for k in ("task", "max_length", "doc_stride", "thresholds", "pooling",
                                                 "normalize", "long", "prompt", "ensemble")}
        key = (str(checkpoint.resolve()), json.dumps(settings, sort_keys=True), w.name)
        if key not in self.cache:
            answers, encs, labels = G.reference_answers(checkpoint, w, settings)
            if w.task in ("classify", "multilabel", "ner", "relation"):
                used = {x for g in w.gold for x in ([g] if w.task in ("classify", "relation") else g)}
                known = set(labels) | ({"O"} | {f"I-{x[2:]}" for x in labels if x[:2] == "B-"}
                                       if w.task == "ner" else set())
                unknown = sorted(used - known)
                if unknown:
                    raise BertrtError(f"workload {w.name} has labels {unknown} that {checkpoint} does not know "
                                      f"({labels}); bench it with data of the model's own task")
            self.cache[key] = answers, encs
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
    tasks = {m["task"] for m in manifests.values()} or {"classify"}
    if len(tasks) > 1:
        raise BertrtError(f"bench one task at a time: the artifacts are {', '.join(sorted(tasks))} models")
    task = tasks.pop()
    lengths = {int(m["max_length"]) for m in manifests.values()}
    max_length = max(lengths) if lengths else 128
    workloads = [G.read_workload(d, task, cfg.limit) for d in data]
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
            ref, encs = refs.get(ref_ckpt, manifest | {"long": cfg.long}, w)
            p = ArtifactPredictor(path, threads, long=cfg.long, backend=cfg.backend)
            result = G.check(p.predict(w.texts, cfg.batch_sizes[-1]), ref, w,
                             G.Gate.for_manifest(manifest, cfg.min_agreement, cfg.max_drop), encs)
            del p
            if result["gate"]["passed"]:
                plan.append((w, path, result))
                continue
            reason = f"refused: {'; '.join(result['gate']['problems'])} (reference {ref_ckpt})"
            refusals.append({"artifact": str(path), "workload": w.name, **result})
            rows.append(base_row(w, f"bertrt {path.name}", "bertrt", manifest.get("precision", "?"), path)
                        | {k: result[k] for k in ("metric", "score", "agreement", "drop")}
                        | {"gate": result["gate"], "status": "refused", "reason": reason})
    if refusals and not cfg.skip_refused:
        lines = [f"{r['artifact']} on {r['workload']}: {'; '.join(r['gate']['problems'])}" for r in refusals]
        raise BenchGateError("refusing to time artifacts whose outputs disagree with the reference beyond their "
                             "gate: " + " | ".join(lines), refusals)
    log("all checked artifacts match their reference; starting benchmarks" if not refusals else
        f"{len(refusals)} refused (reported, not timed); timing the rest")

    peers = (cfg.peers if cfg.peers is not None else list(_peer_keys())) if reference else []
    if peers and task != "classify":  # the peers are transformers sequence classifiers
        log(f"peers time classify models only; this bench of {task} artifacts runs without them")
        peers = []
    peer_manifest = {"task": "classify", "max_length": max_length}
    with tempfile.TemporaryDirectory(prefix="bertrt-bench-") as tmp:
        for w in workloads:
            jobs = [{"kind": "bertrt", "what": str(path), "result": result, "ref": None}
                    for ww, path, result in plan if ww is w]
            jobs += [{"kind": "peer", "what": key, "result": None,
                      "ref": refs.get(Path(reference), peer_manifest, w)[0]} for key in peers]
            for job in jobs:
                job |= {"workload": {"name": w.name, "task": w.task, "texts": w.texts, "gold": w.gold},
                        "reference": reference,
                        "max_length": max_length, "threads": threads, "work": tmp, "batch_sizes": cfg.batch_sizes,
                        "latency_n": cfg.latency_n, "long": cfg.long, "backend": cfg.backend}
            for job, row in zip(jobs, _time_interleaved(jobs, cfg, Path(tmp), w.name)):
                rows.append(base_row(w, row.pop("name"), job["kind"], row.pop("precision"),
                                     job["what"] if job["kind"] == "bertrt" else None) | row)
    order = {str(a): i for i, a in enumerate(manifests)} | {NAMES[k]: len(manifests) + i for i, k in
                                                             enumerate(peers)}
    loads = [w.name for w in workloads]
    rows.sort(key=lambda r: (loads.index(r["workload"]), order.get(r["artifact"] or r["variant"], 0)))
    _ratios(rows, cfg.batch_sizes[-1])
    doc = {"format": 2, "machine": machine, "task": task,
           "settings": {"batch_sizes": cfg.batch_sizes, "repeats": cfg.repeats, "latency_n": cfg.latency_n,
                        "reference": str(reference) if reference else None, "peers": peers,
                        "min_agreement": cfg.min_agreement, "max_drop": cfg.max_drop, "isolate": cfg.isolate,
                        "long": cfg.long, "backend": cfg.backend},
           "workloads": [{"name": w.name, "path": str(d), "examples": len(w.texts), "max_length": max_length}
                         for w, d in zip(workloads, data)],
           "rows": rows}
    from .report import write_report

    with atomic_dir(out, force=True) as tmp_out:  # check_writable above already refused an unforced overwrite
        write_report(doc, tmp_out)
    return doc


SETTLE_S = 0.03  # pause before a process takes its turn: the one before stops spinning its thread pool (~1 ms)
LATENCY_TURN = 10  # batch-1 texts a variant times per turn
THROUGHPUT_TURN = 64  # texts a variant predicts per turn (rounded up to whole batches)


def _time_interleaved(jobs: list[dict], cfg: BenchConfig, tmp: Path, label: str) -> list[dict]:
    """Load and warm up every job's variant, time them in ``cfg.repeats`` interleaved rounds, return their rows
    (in the order of ``jobs``).

    Within a round the work is cut into short turns, and each turn passes through every variant before the next
    begins: ``LATENCY_TURN`` latency texts, then for each batch size about ``THROUGHPUT_TURN`` texts (whole
    batches; the workload sorted by length first, so that the turns bucket by length as one pass would). A turn
    lasts well under a second to a few seconds, shorter than this VM's speed swings, so every variant meets the
    same spell. The variant that goes first rotates from round to round.
    """
    timers = []
    bar = _bar(len(jobs) + cfg.repeats, cfg.progress)
    try:
        for job in jobs:
            what = Path(job["what"]).name if job["kind"] == "bertrt" else job["what"]
            bar.set_description(f"{label}: loading {what}")
            timers.append(_Process(job, tmp) if cfg.isolate else _Timer(job))
            timers[-1].row = timers[-1].start()
            bar.update(1)
        active = [t for t in timers if t.row["status"] == "timed"]
        n = len(jobs[0]["workload"]["texts"]) if jobs else 0
        n_lat = min(n, cfg.latency_n)
        samples = {id(t): {"lat": [], "tok": [], "rates": {b: [] for b in cfg.batch_sizes},
                           "tok_s": {b: [] for b in cfg.batch_sizes}} for t in active}

        def turns(order: list, step: int, total: int, op: str, *args):
            """Every variant of ``order`` does [lo, lo + step) in turn, for each lo; returns the answers per
            variant."""
            got = {id(t): [] for t in order}
            for lo in range(0, total, step):
                for t in order:
                    if cfg.isolate:
                        time.sleep(SETTLE_S)
                    got[id(t)].append(getattr(t, op)(*args, lo, min(total, lo + step)))
            return got

        for r in range(cfg.repeats):
            bar.set_description(f"{label}: round {r + 1}/{cfg.repeats}")
            k = r % len(active) if active else 0
            order = active[k:] + active[:k]
            for tid, answers in turns(order, LATENCY_TURN, n_lat, "latency").items():
                samples[tid]["lat"] += [ms for a in answers for ms in a["total"]]
                samples[tid]["tok"] += [ms for a in answers for ms in a["tok"]]
            for b in cfg.batch_sizes:
                step = b * -(-THROUGHPUT_TURN // b)
                for tid, answers in turns(order, step, n, "throughput", b).items():
                    samples[tid]["rates"][b].append(n / sum(a["seconds"] for a in answers))
                    samples[tid]["tok_s"][b].append(sum(a["tok_s"] for a in answers))
            bar.update(1)
        for t in active:
            got = samples[id(t)]
            t.row |= {"latency_ms": distribution(got["lat"]), "tokenize_ms": distribution(got["tok"]),
                      "throughput": {str(b): throughput_summary(got["rates"][b], got["tok_s"][b], n)
                                     for b in cfg.batch_sizes}}
        return [t.row for t in timers]
    finally:
        for t in timers:
            t.close()
        bar.close()


class _Timer:
    """One variant in this process: ``start`` loads it (memory sampled), checks its predictions and warms it up;
    ``latency`` and ``throughput`` time one pass each."""

    def __init__(self, job: dict):
        self.job, self.p = job, None
        self.w = G.Workload(**job["workload"])
        self.by_length = sorted(self.w.texts, key=_chars)  # throughput turns: shortest first, as one bucketed pass

    def start(self) -> dict:
        job, w = self.job, self.w
        if job["kind"] == "bertrt":
            from .variants import ArtifactPredictor

            factory = lambda: ArtifactPredictor(job["what"], job["threads"], long=job["long"],  # noqa: E731
                                                backend=job["backend"])
        else:
            from .peers import NAMES, PRECISION, make_peer

            factory = lambda: make_peer(job["what"], job["reference"], job["max_length"], job["threads"],  # noqa
                                        Path(job["work"]), w.texts)
        # Memory is sampled (a thread reading /proc every 5 ms) while loading and over one untimed pass at the
        # largest batch, never during timing: on a 2-core machine the sampler's wake-ups cost a 2-thread ONNX
        # Runtime batch-1 call over a millisecond (measured: 6.9 ms p50 sampled vs 5.4 ms not, same artifact).
        try:
            with PeakRSS() as mem:
                self.p = factory()
                preds = self.p.predict(w.texts, job["batch_sizes"][-1])
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # e.g. a pruned checkpoint transformers can't load
            if job["kind"] == "bertrt":
                raise
            return {"name": NAMES[job["what"]], "precision": PRECISION[job["what"]], "status": "failed",
                    "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        # peers have no gate: report how they agree with the reference
        result = job["result"] if job["result"] is not None else G.check(preds, job["ref"], w, None)
        warm_up(self.p, w.texts[:job["latency_n"]], w.texts, job["batch_sizes"])
        return {"name": self.p.name, "precision": self.p.precision, "status": "timed", "reason": None,
                "metric": result["metric"], "score": result["score"], "agreement": result["agreement"],
                "drop": result["drop"],
                "gate": result.get("gate"), "peak_mb": mem.delta_mb, "size_mb": self.p.size_mb}

    def latency(self, lo: int, hi: int) -> dict:
        total, tok = latency_pass(self.p, self.w.texts[lo:hi])
        return {"total": total, "tok": tok}

    def throughput(self, batch_size: int, lo: int, hi: int) -> dict:
        seconds, tok_s = throughput_pass(self.p, self.by_length[lo:hi], batch_size)
        return {"seconds": seconds, "tok_s": tok_s}

    def close(self) -> None:
        self.p = None


class _Process:
    """``_Timer`` in a fresh interpreter, driven over a pipe: one JSON line per call and per answer."""

    def __init__(self, job: dict, tmp: Path):
        self.job = job
        fd, name = tempfile.mkstemp(dir=tmp, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(job, f)
        spec = Path(name)
        self.stderr = open(spec.with_suffix(".log"), "w+")  # a file, not a pipe: a chatty library cannot block it
        self.proc = subprocess.Popen([sys.executable, "-m", "bertrt.bench.run", "--worker", str(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def _call(self, op: str, **args) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        reply = json.loads(line) if line else None
        if reply is None or "error" in reply:
            self.stderr.seek(0)
            tail = "\n".join(self.stderr.read().strip().splitlines()[-15:])
            why = reply["error"] if reply else f"the process ended (exit {self.proc.poll()})"
            raise BertrtError(f"timing {self.job['what']} on {self.job['workload']['name']} in its own process "
                              f"failed: {why}\n{tail}")
        return reply

    def start(self) -> dict:
        return self._call("start")

    def latency(self, lo: int, hi: int) -> dict:
        return self._call("latency", lo=lo, hi=hi)

    def throughput(self, batch_size: int, lo: int, hi: int) -> dict:
        return self._call("throughput", batch=batch_size, lo=lo, hi=hi)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the worker exits at end of input
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _worker(spec: str) -> None:
    """The process side of ``_Process``: answers on the original stdout; anything else printed goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library output written to fd 1 (C or Python) must not corrupt the answers
    sys.stdout = sys.stderr
    timer = _Timer(json.loads(Path(spec).read_text()))
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "start":
                reply = timer.start()
            elif msg["op"] == "latency":
                reply = timer.latency(msg["lo"], msg["hi"])
            else:
                reply = timer.throughput(int(msg["batch"]), msg["lo"], msg["hi"])
        except Exception as e:  # reported by the parent with this process's stderr
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


def _chars(item) -> int:
    """An input's length in characters (texts, or the fields of a pair / question and context)."""
    return len(item) if isinstance(item, str) else sum(len(v or "") for v in item.values())


def _peer_keys():
    from .peers import installed_peers

    return installed_peers()


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)


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


if __name__ == "__main__":  # one variant's process: python -m bertrt.bench.run --worker JOB.json
    _worker(sys.argv[2])
