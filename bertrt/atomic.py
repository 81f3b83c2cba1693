"""Atomic writes: build the output (a directory, or one file) in a temporary sibling, then rename it into place.

A crash (or Ctrl-C, or a failed parity gate) at any point leaves either the old directory or nothing, never a
half-written directory that looks complete. Replacing an existing directory needs ``force``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import BertrtError, OutputExistsError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Fail early, before any expensive work, if ``path`` cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise BertrtError(f"{path} exists and is not a directory")
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BertrtError(f"cannot create the folder {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise BertrtError(f"cannot write to {parent}: permission denied")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False):
    """Yield a fresh temporary directory; on a clean exit it becomes ``path``, on any error it is removed."""
    path = check_writable(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.absolute().parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # data reaches the disk before the rename makes it visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to a temporary sibling, flush it to disk, then rename it over ``path``; an existing
    ``path`` is replaced only with ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to replace it")
    if path.is_dir():
        raise BertrtError(f"{path} is a directory; give a file name")
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
