"""``bertrt serve``: run the app under uvicorn, in one process or ``--workers N``, with the edge limits and JSON logs.

With several workers uvicorn's supervisor starts (and restarts) the worker processes; each loads the artifact itself
from the configuration in ``BERTRT_SERVE_CONFIG``, and they share one metrics directory (``metrics.py``), created
here for this server and removed when it stops.

SIGHUP reloads the API key file: with one process the app handles it; with several, the supervisor (which would
otherwise restart every worker) forwards it to each worker. Until a process's app is ready SIGHUP is ignored, and the
app re-reads the file once when it becomes ready, so no reload is lost and no worker dies of one. TLS is uvicorn's
(``--ssl-certfile/--ssl-keyfile``): asyncio wraps the connection, and ``EdgeProtocol`` sees plain HTTP above it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import ssl
import tempfile
from dataclasses import asdict, dataclass

from ..errors import InputError
from .logs import log_config
from .metrics import MULTIPROC_ENV
from .server import ServeConfig, create_app

CONFIG_ENV = "BERTRT_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process
FD_MARGIN = 64  # descriptors a worker needs besides client sockets (model, logs, pipes, metric files)


@dataclass
class EdgeLimits:
    """How long and how many: per worker process."""

    request_timeout: float = 30.0  # seconds to receive a whole request (headers and body)
    max_connections: int = 512  # open client connections; more are answered 503 + Retry-After
    keep_alive: float = 75.0  # idle seconds before a keep-alive connection is closed
    graceful_timeout: float = 30.0  # seconds in-flight requests get to finish on SIGTERM

    def __post_init__(self):
        for name in ("request_timeout", "keep_alive", "graceful_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if self.max_connections < 1:
            raise InputError(f"--max-connections must be >= 1 (got {self.max_connections})")


def _ignore_hup() -> None:
    """SIGHUP would kill a process still loading its model; the app takes it over once it is ready."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def app_from_env():
    """uvicorn factory for ``--workers N``: each worker process loads the artifact itself."""
    _ignore_hup()
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def check_tls(certfile: str | None, keyfile: str | None) -> dict:
    """uvicorn's TLS settings, after loading the pair once so a bad file is one clear error at start-up."""
    if not certfile and not keyfile:
        return {}
    if not (certfile and keyfile):
        raise InputError("TLS needs both --ssl-certfile and --ssl-keyfile")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise InputError(f"cannot load the TLS certificate {certfile} with the key {keyfile}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    return {"ssl_certfile": certfile, "ssl_keyfile": keyfile}


def uvicorn_config(app, limits: EdgeLimits, host: str = "127.0.0.1", port: int = 0, log_level: str = "info",
                   logs: bool = True, **kwargs):
    """The ``EdgeConfig`` both ``serve`` and the tests run the app with (one place for the edge settings)."""
    from .edge import EdgeConfig

    return EdgeConfig(app, host=host, port=port, server_header=False, request_timeout=limits.request_timeout,
                      max_connections=limits.max_connections, timeout_keep_alive=limits.keep_alive,
                      timeout_graceful_shutdown=limits.graceful_timeout, access_log=False, log_level=log_level,
                      log_config=log_config(log_level) if logs else None, **kwargs)


def ensure_fd_limit(max_connections: int) -> None:
    """Raise this process's open-file limit to fit ``max_connections`` sockets, or say why it cannot."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise InputError(f"--max-connections {max_connections} needs {need} file descriptors but the hard limit "
                             f"is {hard}; lower --max-connections or raise `ulimit -Hn`")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _supervisor():
    """uvicorn's worker supervisor, except that SIGHUP is forwarded to the workers (they reload their keys) instead
    of restarting them all."""
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            logging.getLogger("bertrt.server").info("SIGHUP: the %d workers reload the API key file",
                                                    len(self.processes))
            for process in self.processes:
                if process.pid is not None:
                    try:
                        os.kill(process.pid, signal.SIGHUP)
                    except ProcessLookupError:  # it just died; its replacement reads the file when it starts
                        pass

    return Supervisor


def serve(config: ServeConfig, limits: EdgeLimits | None = None, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "info", tls: dict | None = None) -> None:
    """Run the server until SIGTERM/SIGINT; SIGHUP reloads the API key file. With several workers each gets
    ``threads // workers`` threads. ``tls``: what ``check_tls`` returns."""
    import uvicorn

    from .session import default_threads

    limits = limits or EdgeLimits()
    if workers < 1:
        raise InputError("--workers must be >= 1")
    ensure_fd_limit(limits.max_connections)
    config.workers = workers
    tls = tls or {}
    if workers == 1:
        _ignore_hup()
        server = uvicorn.Server(uvicorn_config(create_app(config), limits, host, port, log_level, **tls))
        server.run()
        if not server.started:
            raise SystemExit(3)  # uvicorn's startup-failure code: the error was logged
        return
    if config.api_key and not config.api_key_file:
        raise InputError("with several workers, give the API key as a file (--api-key-file)")
    if config.threads is None:
        config.threads = max(1, default_threads() // workers)  # share the cores instead of oversubscribing them
    metrics_dir = tempfile.mkdtemp(prefix="bertrt-metrics-")
    log = logging.getLogger("bertrt.server")
    os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus_client when each worker imports it
    os.environ[CONFIG_ENV] = json.dumps({**asdict(config), "api_key": None})
    try:
        uv = uvicorn_config("bertrt.runtime.launch:app_from_env", limits, host, port, log_level, factory=True,
                            workers=workers, **tls)
        log.info("%d workers share the metrics directory %s", workers, metrics_dir)
        _supervisor()(uv, sockets=[uv.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("removed the metrics directory %s", metrics_dir)
