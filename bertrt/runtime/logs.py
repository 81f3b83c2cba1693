"""Server logs as JSON lines on stderr: one per request (``bertrt.access``) plus bertrt's and uvicorn's own messages.

A request line carries the request id, method, path, status, latency, input count, error reason and API key id;
never a text and never a key. ``log_config`` is the dictConfig uvicorn applies in every worker process, so that the
``bertrt.*`` loggers reach the output (by default they have no handler and INFO lines vanish).
"""

from __future__ import annotations

import json
import logging
import time

ACCESS = "bertrt.access"
FIELDS = ("request_id", "method", "path", "status", "latency_ms", "items", "reason", "key_id", "worker")


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...the record's known extra fields, "exc" when there is a traceback}."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key in FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
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
