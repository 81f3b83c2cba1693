"""Server logs as JSON lines on stderr: one per request (``bertrt.access``) plus bertrt's and uvicorn's own messages.

A request line carries the request id, method, path, status, latency, input count, error reason and API key id;
never a text and never a key. Nothing text-derived is logged on purpose; what could carry a fragment of a request's
text is a message or traceback of a failure (an exception that quotes its input). With ``--mask-logs`` (on by
default when ``bertrt.mask`` is installed) the message and traceback of every line are masked before they are
written. ``log_config`` is the dictConfig uvicorn applies in every worker process, so that the
``bertrt.*`` loggers reach the output (by default they have no handler and INFO lines vanish).
"""

from __future__ import annotations

import json
import logging
import time

ACCESS = "bertrt.access"
_MASK = []  # [a text -> masked text function] while --mask-logs is on in this process
FIELDS = ("request_id", "method", "path", "status", "latency_ms", "items", "reason", "key_id", "worker")


def mask_logs(masker) -> None:
    """Pass every line's message and traceback through ``masker`` (text -> masked text) from now on; ``None``:
    stop."""
    _MASK[:] = [masker] if masker is not None else []


def _masked(text: str) -> str:
    return _MASK[0](text) if _MASK else text


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...the record's known extra fields, "exc" when there is a traceback}; message
    and traceback masked under ``mask_logs``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": _masked(record.getMessage())}
        for key in FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = _masked(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def log_config(level: str = "info") -> dict:
    """dictConfig for ``bertrt serve``: every bertrt and uvicorn logger writes JSON lines to stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["json"], "level": level.upper(), "propagate": False}
               for name in ("bertrt", "uvicorn.error")}
    loggers["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}  # bertrt.access replaces it
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": "bertrt.runtime.logs.JsonFormatter"}},
            "handlers": {"json": handler}, "loggers": loggers}
