"""Atomic file output: nothing is ever written half-way."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import OutputError


def check_output_path(path: str | os.PathLike, force: bool = True) -> Path:
    """Check that ``path`` can be written: its folder exists and is writable, and (unless
    ``force``) it does not exist yet. Raises :class:`OutputError` naming the path."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: output folder {parent} is not writable")
    if p.exists() and not force:
        raise OutputError(f"{p}: output exists (use --force to overwrite)")
    if p.is_dir():
        raise OutputError(f"{p}: output is a folder, expected a file name")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it is renamed to
    ``path`` in one step, on any error it is removed and ``path`` is left untouched."""
    p = check_output_path(path, force=force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent or ".")
    except OSError as e:  # e.g. a read-only file system, or a folder that refuses new files
        raise OutputError(f"{p}: cannot create a file in {p.parent or '.'}: "
                          f"{e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp, str(p)):
            # writing the output failed (disk full, quota, I/O error): nothing was left behind
            raise OutputError(f"{p}: cannot write: {e.strerror or e}; nothing was written") from None
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
