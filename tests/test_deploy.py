"""deploy/: the Prometheus rules pass their promtool unit tests, rules and dashboard name only metrics the server
exports, and a real Prometheus scraping `bertrt serve --workers 2` fires the error-ratio alert under induced errors.

promtool and prometheus come from Debian's `prometheus` package (installed by .ci/run). Outside CI the tests that need
them skip when they are absent; under CI (CI=true) they fail instead.
"""

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from bertrt.runtime import Runtime
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import free_port, running, serve_process
except ImportError:
    from serving import free_port, running, serve_process

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "bertrt-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "bertrt-dashboard.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def test_promtool_unit_tests_pass():
    r = subprocess.run([tool("promtool"), "test", "rules", "bertrt-rules.test.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def exported_names(text: str) -> set:
    """Every sample name a /metrics page can carry (histograms' _bucket/_sum/_count, counters' _total)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name} | ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else set())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_rules_and_dashboard_use_only_exported_metrics(tiny_artifact):
    rt = Runtime(tiny_artifact("classify"), device="cpu", threads=1)
    with running(create_app(ServeConfig(artifact=""), runtime=rt)) as url:
        assert httpx.post(f"{url}/v1/predict", json={"inputs": ["x"]}, timeout=30).status_code == 200
        exported = exported_names(httpx.get(f"{url}/metrics", timeout=10).text)
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = {m for text in exprs + [RULES.read_text()] for m in re.findall(r"\bbertrt_[a-z0-9_]+", text)}
    used -= {"bertrt_rules"}  # not a metric
    assert len(used) >= 20
    assert sorted(used - exported) == []


def test_real_prometheus_fires_the_error_ratio_alert(tiny_artifact, tmp_path):
    """Every predict request past a tiny --timeout answers 504; Prometheus (1 s scrapes, the shipped rules with their
    `for:` durations set to 0 so that the test stays short) must report BertrtHighErrorRatio firing."""
    prometheus = tool("prometheus")
    rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", RULES.read_text())
    assert rules != RULES.read_text()
    (tmp_path / "rules.yml").write_text(rules)
    with serve_process(tiny_artifact("classify"), "--workers", "2", "--threads", "1", "--timeout", "0.2",
                       "--max-wait-ms", "1000") as (url, _):
        target = url.split("//")[1]
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [rules.yml]\n"
            f"scrape_configs:\n  - job_name: bertrt\n    static_configs: [{{targets: ['{target}']}}]\n")
        port = free_port()
        prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        api = f"http://127.0.0.1:{port}/api/v1"
        stop = threading.Event()
        answered = []

        def errors():  # a request every 0.1 s, each past its deadline
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    answered.append(client.post("/v1/predict", json={"inputs": ["late"]}).status_code)
                    time.sleep(0.1)

        sender = threading.Thread(target=errors)
        try:
            sender.start()
            firing, deadline = [], time.monotonic() + 90
            while not firing and time.monotonic() < deadline and prom.poll() is None:
                time.sleep(1)
                try:
                    alerts = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
                except (httpx.TransportError, ValueError):
                    continue
                firing = [a for a in alerts if a["labels"]["alertname"] == "BertrtHighErrorRatio"
                          and a["state"] == "firing"]
            up = httpx.get(f"{api}/query", params={"query": 'up{job="bertrt"}'}, timeout=5).json()
        finally:
            stop.set()
            sender.join(30)
            prom.terminate()
            prom.wait(30)
    assert answered and set(answered) == {504}
    assert up["data"]["result"][0]["value"][1] == "1"
    assert len(firing) == 1, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert firing[0]["labels"]["job"] == "bertrt" and float(firing[0]["value"]) == pytest.approx(1.0)
