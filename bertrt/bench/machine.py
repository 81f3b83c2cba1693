"""What every bench row carries about where it ran: CPU model, cores, versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")  # what INT8/BF16 use


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction-set extensions among ``ISA_FLAGS`` this CPU reports (``/proc/cpuinfo``'s first ``flags``
    line; ``cpuinfo`` for tests), in that order; empty where unknown. INT8 and BF16 speed hinge on them: VNNI for
    INT8 dot products, AMX for INT8/BF16 tiles, and the vendor varies between machines of one cloud type."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def git_commit() -> str | None:
    """The short commit of the bertrt checkout (with '+dirty' when it has uncommitted changes), or None."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe(threads: int | None) -> dict:
    """Where a bench ran: CPU model and its INT8/BF16 instruction-set flags, cores, the threads it was given (None:
    the library's default), git commit, Python and the versions of bertrt, onnxruntime, torch, transformers, openvino
    and nncf (None where not installed). Every bench script records this, so that results from two machines are
    never compared unawares."""
    from .. import __version__

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": threads,
            "commit": git_commit(), "python": platform.python_version(),
            "versions": {"bertrt": __version__, **{p: version(p) for p in ("onnxruntime", "torch", "transformers",
                                                                          "openvino", "nncf")}}}
