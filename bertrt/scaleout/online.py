"""``bertrt serve --ray``: the artifact as a Ray Serve application that scales its replicas with load.

Each replica runs the very app ``bertrt serve`` runs (``server.create_app``: the same routes, auth, limits, output
objects, error codes and metrics, one ``Runtime`` and bertrt's batcher), mounted with ``serve.ingress``; Ray's HTTP
proxy stands in front instead of uvicorn. The app is built inside the replica, after its constructor, so every
replica loads the artifact itself (the path must be readable on every node).

Autoscaling reacts to *ongoing requests* (running in a replica plus waiting in front of it) averaged over a look-back
window: Ray aims for ``target_ongoing_requests`` per replica, between ``min_replicas`` (0: scale to zero) and
``max_replicas``, and acts only after the condition has held for ``upscale_delay_s`` / ``downscale_delay_s``. A
replica being stopped gets no new requests and has ``graceful_timeout`` seconds to finish the ones it holds (the app's
shutdown then drains the batcher). Ray's health check calls ``check_health``: a dead or wedged batcher fails it and
Ray replaces the replica.

``build`` is the application builder both ``bertrt serve --ray`` and the generated config (``serve deploy``, KubeRay's
RayService) use: one place for the deployment options.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import asdict, dataclass

from ..errors import InputError
from ..runtime.server import ServeConfig

APP_NAME = "bertrt"
DEPLOYMENT = "BertrtReplica"
IMPORT_PATH = "bertrt.scaleout.online:build"


@dataclass
class Scaling:
    """How many replicas, what each needs, and how fast the count follows load."""

    min_replicas: int = 1  # 0 allows scale to zero (the first request then waits for a replica to start)
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0  # ongoing requests per replica Ray aims for
    upscale_delay_s: float = 10.0  # how long load must stay above target before adding replicas
    downscale_delay_s: float = 60.0  # how long load must stay below target before removing replicas
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica
    max_ongoing_requests: int = 64  # per replica; more wait in front of it (and count as ongoing for autoscaling)
    graceful_timeout: float = 30.0  # seconds a stopping replica has to finish its in-flight requests
    look_back_period_s: float = 10.0  # the window ongoing requests are averaged over
    metrics_interval_s: float = 2.0  # how often replicas report their ongoing requests

    def __post_init__(self):
        if self.min_replicas < 0:
            raise InputError(f"--min-replicas must be >= 0 (got {self.min_replicas})")
        if self.max_replicas < max(1, self.min_replicas):
            raise InputError(f"--max-replicas must be >= 1 and >= --min-replicas (got {self.max_replicas})")
        for name in ("target_ongoing_requests", "graceful_timeout", "look_back_period_s", "metrics_interval_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        for name in ("upscale_delay_s", "downscale_delay_s", "num_cpus", "num_gpus"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.max_ongoing_requests < self.target_ongoing_requests:
            raise InputError("--max-ongoing-requests must be >= --target-ongoing-requests")

    def deployment_options(self) -> dict:
        """The deployment's options, in the shape both ``serve.deployment`` and the config file take."""
        return {
            "max_ongoing_requests": self.max_ongoing_requests,
            "graceful_shutdown_timeout_s": self.graceful_timeout,
            "graceful_shutdown_wait_loop_s": 1.0,
            "health_check_period_s": 5.0,
            "health_check_timeout_s": 30.0,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "autoscaling_config": {
                "min_replicas": self.min_replicas, "initial_replicas": max(1, self.min_replicas),
                "max_replicas": self.max_replicas, "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s, "metrics_interval_s": self.metrics_interval_s,
            },
        }


def _replica_class():
    """The deployment class (built on first use, so that importing this module does not import Ray)."""
    from ray import serve

    from ..runtime.server import create_app

    @serve.ingress()
    class BertrtReplica:
        def __init__(self, config: dict):
            self.config = ServeConfig(**config)
            self.bertrt_app = None

        def __serve_build_asgi_app__(self):
            self.bertrt_app = create_app(self.config)
            return self.bertrt_app

        def check_health(self):
            batcher = self.bertrt_app.state.serving["batcher"] if self.bertrt_app is not None else None
            problem = batcher.problem(self.config.liveness_timeout) if batcher is not None else None
            if problem:
                raise RuntimeError(problem)

    return BertrtReplica


def build(args: dict):
    """Ray Serve application builder: ``args`` = {"serve": ServeConfig fields, "scaling": Scaling fields}."""
    from ray import serve

    config = ServeConfig(**args.get("serve", {}))
    scaling = Scaling(**args.get("scaling", {}))
    if config.api_key and not config.api_key_file:
        raise InputError("with --ray, give the API key as a file (--api-key-file) readable on every node")
    config.workers = 1
    if config.threads is None:  # the replica's CPU share, not every core of the node
        config.threads = max(1, int(scaling.num_cpus))
    deployment = serve.deployment(_replica_class(), name=DEPLOYMENT, **scaling.deployment_options())
    return deployment.bind(asdict(config))


def builder_args(config: ServeConfig, scaling: Scaling) -> dict:
    serve_args = {k: v for k, v in asdict(config).items() if k != "api_key"
                  and v != getattr(ServeConfig, k, dataclasses.MISSING)}
    return {"serve": serve_args, "scaling": asdict(scaling)}


def config_document(config: ServeConfig, scaling: Scaling, host: str = "0.0.0.0", port: int = 8000) -> dict:
    """The Ray Serve config file (``serve deploy``, KubeRay's RayService ``serveConfigV2``) equivalent to
    ``bertrt serve --ray`` with these options."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
            "args": builder_args(config, scaling),
            "deployments": [{"name": DEPLOYMENT, **scaling.deployment_options()}],
        }],
    }


def config_yaml(config: ServeConfig, scaling: Scaling, host: str = "0.0.0.0", port: int = 8000) -> str:
    import yaml

    header = ("# Ray Serve config for bertrt (generated by `bertrt serve --ray --print-config`).\n"
              "# Deploy: `serve deploy FILE` on a running cluster, or put it under a KubeRay RayService's\n"
              "# spec.serveConfigV2. The artifact path must exist on every node (bake it into the image).\n")
    return header + yaml.safe_dump(config_document(config, scaling, host, port), sort_keys=False)


def deploy(config: ServeConfig, scaling: Scaling, address: str | None = None, host: str = "127.0.0.1",
           port: int = 8000, blocking: bool = True, log=print):
    """Start (or join, with ``address``) a Ray cluster and run the application; with ``blocking`` serve until
    interrupted, then take the application down."""
    import os

    import ray
    from ray import serve

    from .proxy import CALLBACK, CALLBACK_ENV

    if address is None:
        os.environ.setdefault(CALLBACK_ENV, CALLBACK)  # the local cluster's proxy inherits it (see proxy.py)
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(builder_args(config, scaling)), name=APP_NAME, route_prefix="/", blocking=False)
    log(f"serving {config.artifact} on http://{host}:{port} (Ray Serve, {scaling.min_replicas}-"
        f"{scaling.max_replicas} replicas)")
    if not blocking:
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # SIGTERM, like Ctrl-C, drains the replicas and takes the app down
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        if address is None:
            serve.shutdown()
            ray.shutdown()
