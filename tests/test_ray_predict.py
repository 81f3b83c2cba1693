"""`bertrt predict --ray` on a local Ray cluster (2 CPUs, started here, stopped at the end): 20,000 generated rows
through Ray Data and 2 Runtime actors give exactly the input's rows and ids, with the outputs of the single-process
`bertrt predict`; an actor killed with SIGKILL mid-run neither loses nor duplicates a row; parquet output holds the
same rows."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

pytest.importorskip("ray.data")

try:
    from .ray_cluster import actor_pids, local_cluster, wait_for
except ImportError:
    from ray_cluster import actor_pids, local_cluster, wait_for

pytestmark = pytest.mark.slow
N = 20_000
WORDS = "the market fell sharply as investors worried about rates while the team won the final match".split()


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_artifact):
    """(input file, expected ids in order, the single-process `bertrt predict` output, in order)."""
    folder = tmp_path_factory.mktemp("ray_predict")
    data, ids = folder / "rows.jsonl", []
    with open(data, "w", encoding="utf-8") as f:
        for i in range(N):
            text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 40))
            if i % 3 == 0:  # every third row names itself; the others are known by their line number
                f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
                ids.append(f"doc-{i}")
            else:
                f.write(json.dumps({"text": text}) + "\n")
                ids.append(i + 1)
    ref = folder / "single.jsonl"
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "predict", str(tiny_artifact("classify")), "-i",
                        str(data), "-o", str(ref), "--device", "cpu", "--threads", "1"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return data, ids, [json.loads(line) for line in open(ref, encoding="utf-8")]


def read_parts(out) -> list[dict]:
    names = sorted(os.listdir(out))
    assert names and all(n.startswith("part-") and n.endswith(".jsonl") for n in names), names
    return [json.loads(line) for n in names for line in open(out / n, encoding="utf-8")]


def check_equal(rows: list[dict], ids: list, reference: list[dict]) -> None:
    assert len(rows) == N
    assert [r["id"] for r in rows] == ids  # every row once, in input order across the part files
    for row, want in zip(rows, reference):
        assert row["label"] == want["label"]
        assert row["score"] == pytest.approx(want["score"], abs=1e-5)


def run(tiny_artifact, data, out, **kw):
    from bertrt.scaleout.batch import predict_dataset

    return predict_dataset(str(tiny_artifact("classify")), data, out, concurrency=(2, 2), rows_per_task=500,
                           runtime_options={"device": "cpu", "threads": 1}, num_cpus=1, **kw)


def test_ray_predict_matches_single_process(cluster, dataset, tiny_artifact, tmp_path):
    data, ids, reference = dataset
    assert run(tiny_artifact, data, tmp_path / "out") == N
    check_equal(read_parts(tmp_path / "out"), ids, reference)


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(cluster, dataset, tiny_artifact, tmp_path):
    data, ids, reference = dataset
    out, result, killed = tmp_path / "out", {}, []

    def go():
        try:
            result["n"] = run(tiny_artifact, data, out)
        except BaseException as e:  # reported below
            result["error"] = e

    worker = threading.Thread(target=go, daemon=True)
    worker.start()

    def some_parts_written():  # the run's temporary output folder, once actors are writing into it
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
        return tmp and len([n for n in os.listdir(tmp[0]) if n.startswith("part-")]) >= 2 and tmp[0]

    folder = wait_for(some_parts_written, within=300, every=0.05, what="the first part files")
    written_before = len([n for n in os.listdir(folder) if n.startswith("part-")])
    victim = wait_for(lambda: actor_pids("MapWorker"), within=60, what="a live actor")[0]
    os.kill(victim, signal.SIGKILL)
    killed.append(victim)
    worker.join(600)
    assert not worker.is_alive() and "error" not in result, result.get("error")
    assert written_before < N // 500, "the run ended before the kill: nothing was shown"
    assert result["n"] == N
    check_equal(read_parts(out), ids, reference)


def test_ray_predict_writes_parquet(cluster, dataset, tiny_artifact, tmp_path):
    import pyarrow.parquet as pq

    data, ids, reference = dataset
    assert run(tiny_artifact, data, tmp_path / "pq", fmt="parquet") == N
    names = sorted(os.listdir(tmp_path / "pq"))
    assert names == [f"part-{i:05d}.parquet" for i in range(N // 500)]
    table = pq.read_table([str(tmp_path / "pq" / n) for n in names])
    assert table.num_rows == N and [str(x) for x in table.column("id").to_pylist()] == [str(x) for x in ids]
    assert table.column("label").to_pylist() == [r["label"] for r in reference]
