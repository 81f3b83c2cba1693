"""`bertrt serve --ray` on a local Ray cluster (2 CPUs, started here, stopped at the end): the same answers as
``Runtime.predict`` and the same HTTP contract as `bertrt serve`; autoscaling 1 -> 2 -> 1 replicas under a bounded
load with no failed request; a replica killed with SIGKILL under load is replaced and every request is answered
(200) or clearly refused (503); ``--print-config`` output loads through Ray's own config schema."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("ray.serve")

try:
    from .ray_cluster import Load, local_cluster, replica_counts, replica_pids, wait_for
    from .serving import free_port
except ImportError:
    from ray_cluster import Load, local_cluster, replica_counts, replica_pids, wait_for
    from serving import free_port

pytestmark = pytest.mark.slow
TEXTS = ["the market fell sharply", "北京 上海 😀 café", "a", "the team won the final match " * 20,
         "rates rose while investors worried"]


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    with local_cluster(num_cpus=2, serve_port=port):
        yield f"http://127.0.0.1:{port}"


def deploy(artifact, **scaling):
    from ray import serve

    from bertrt.runtime.server import ServeConfig
    from bertrt.scaleout.online import APP_NAME, Scaling, build, builder_args

    api_key_file = scaling.pop("api_key_file", None)
    config = ServeConfig(artifact=str(artifact), device="cpu", threads=1, api_key_file=api_key_file)
    scaling = Scaling(**{"num_cpus": 0.5, "graceful_timeout": 10.0, **scaling})
    serve.run(build(builder_args(config, scaling)), name=APP_NAME, route_prefix="/")


def test_ray_answers_equal_runtime_and_keep_the_http_contract(cluster, tiny_artifact, tmp_path):
    from bertrt import Runtime

    art = tiny_artifact("classify")
    key = tmp_path / "key"
    key.write_text("ray-replica-s3cret-key\n")
    deploy(art, min_replicas=1, max_replicas=1, api_key_file=str(key))
    auth = {"Authorization": "Bearer ray-replica-s3cret-key"}
    with httpx.Client(base_url=cluster, timeout=60) as client:
        r = client.post("/v1/predict", json={"inputs": TEXTS}, headers=auth)
        assert r.status_code == 200, r.text
        got = r.json()["outputs"]
        want = Runtime(art, device="cpu", threads=1).predict(TEXTS)
        assert [o["label"] for o in got] == [w["label"] for w in want]
        for o, w in zip(got, want):
            assert o.keys() == w.keys()
            assert o["score"] == pytest.approx(w["score"], abs=1e-5)
            assert o["scores"] == pytest.approx(w["scores"], abs=1e-5)
        assert r.headers["x-request-id"]
        # the plain server's refusals, unchanged: auth, shape, limits
        no_key = client.post("/v1/predict", json={"inputs": ["x"]})
        assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
        bad = client.post("/v1/predict", json={"inputs": [1]}, headers=auth)
        assert bad.status_code == 422 and bad.json()["error"] == 'inputs[0]: expected a string or an object {"text"}'
        big = client.post("/v1/predict", json={"inputs": ["x"] * 65}, headers=auth)
        assert big.status_code == 413 and "the limit is 64" in big.json()["error"]
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["task"] == "classify" and len(ready["artifact_sha256"]) == 64
        assert client.get("/healthz").json() == {"status": "ok"}


def test_ray_scales_up_under_load_and_back_down_without_failures(cluster, tiny_artifact):
    deploy(tiny_artifact("classify"), min_replicas=1, max_replicas=2, target_ongoing_requests=2,
           upscale_delay_s=1.0, downscale_delay_s=3.0, look_back_period_s=2.0, metrics_interval_s=0.5)
    assert replica_counts() == {"RUNNING": 1}
    body = {"inputs": TEXTS}
    with Load(cluster, body, clients=16) as load:
        started = time.monotonic()
        wait_for(lambda: replica_counts().get("RUNNING", 0) >= 2 or time.monotonic() - started > 30, within=120,
                 what="a second replica or the 30 s load window")
        scaled_up = replica_counts().get("RUNNING", 0)
        wait_for(lambda: load.sent >= 50, within=120, what="50 requests sent")
    assert scaled_up >= 2, f"still {replica_counts()} after 30 s of 16 clients"
    wait_for(lambda: replica_counts() == {"RUNNING": 1}, within=120, what="scaling back to 1 replica")
    assert load.failures == [] and set(load.codes) == {200}, (load.codes, load.failures[:5])
    assert load.codes[200] == load.sent


def test_ray_replaces_a_killed_replica_and_loses_no_request(cluster, tiny_artifact):
    deploy(tiny_artifact("classify"), min_replicas=1, max_replicas=1)
    (victim,) = wait_for(replica_pids, within=60, what="a live replica")
    with Load(cluster, {"inputs": TEXTS}, clients=8) as load:
        wait_for(lambda: load.codes.get(200, 0) >= 20, within=120, what="20 answers before the kill")
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: [p for p in replica_pids() if p != victim] and
                            replica_counts() == {"RUNNING": 1}, within=120, what="a replacement replica")
        at_kill = load.codes.get(200, 0)
        wait_for(lambda: load.codes.get(200, 0) >= at_kill + 20, within=120, what="20 answers from the new one")
    assert victim not in replica_pids() and replaced
    assert load.failures == [], load.failures[:5]
    assert set(load.codes) <= {200, 503}, load.codes  # answered, or refused with a clear 503: nothing else
    assert load.sent == load.codes.get(200, 0) + load.codes.get(503, 0)


def test_print_config_is_a_valid_ray_serve_config(tiny_artifact, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    args = ["--ray", "--print-config", "--min-replicas", "0", "--max-replicas", "5", "--target-ongoing-requests",
            "3", "--replica-cpus", "2", "--port", "8123", "--max-items", "16"]
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "serve", str(tiny_artifact("classify")), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    schema = ServeDeploySchema.parse_obj(yaml.safe_load(r.stdout))
    assert schema.http_options.port == 8123
    (app,) = schema.applications
    assert app.import_path == "bertrt.scaleout.online:build" and app.route_prefix == "/"
    assert app.args["serve"]["max_items"] == 16 and app.args["serve"]["artifact"] == str(tiny_artifact("classify"))
    (dep,) = app.deployments
    auto = dep.autoscaling_config
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (0, 5, 3)
    assert dep.ray_actor_options.num_cpus == 2
    from ray.serve import Application

    from bertrt.scaleout.online import build

    assert isinstance(build(app.args), Application)  # what `serve deploy` does with import_path and args
