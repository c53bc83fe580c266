"""``bmz batch``'s manifest (one JSON line per input, written by the client only), its lock
file, and the clean-up of temporary outputs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Iterable

from .._fileutil import atomic_output
from ..errors import OutputError

MANIFEST = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
LOCK = ".bmz-batch.lock"
#: the manifest columns of manifest.csv, in order (the JSON lines hold a few more)
CSV_FIELDS = ("input", "series", "output", "status", "bytes", "bpp", "psnr", "max_error",
              "n_slices", "shape", "dtype", "quality", "model", "sha256", "seconds", "error")


class Manifest:
    """``DST/manifest.jsonl``: one JSON object per input (the latest one wins). Written only by
    the client: :meth:`record` appends a line and flushes it; :meth:`compact` rewrites the file
    atomically with one line per input and writes ``manifest.csv`` beside it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.entries: dict[tuple[str, str], dict] = {}
        self._f = None
        self._last_sync = 0.0
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:  # a torn last line from an interrupted run
                        continue
                    if isinstance(e, dict) and "input" in e:
                        self.entries[(e["input"], e.get("series") or "")] = e

    def get(self, key: tuple[str, str]) -> dict | None:
        return self.entries.get(key)

    def record(self, entry: dict) -> None:
        self.entries[(entry["input"], entry.get("series") or "")] = entry
        if self._f is None:
            needs_newline = False
            if self.path.is_file() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    needs_newline = f.read(1) != b"\n"  # a torn last line: start a new one
            self._f = open(self.path, "a", encoding="utf-8")
            if needs_newline:
                self._f.write("\n")
        self._f.write(json.dumps(entry, sort_keys=True) + "\n")
        self._f.flush()
        now = time.monotonic()
        if now - self._last_sync > 2.0:
            os.fsync(self._f.fileno())
            self._last_sync = now

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def compact(self) -> None:
        self.close()
        rows = [self.entries[k] for k in sorted(self.entries)]
        with atomic_output(self.path) as f:
            for e in rows:
                f.write((json.dumps(e, sort_keys=True) + "\n").encode())
        with atomic_output(self.folder / MANIFEST_CSV) as f:
            text = io.StringIO()
            w = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for e in rows:
                w.writerow({k: ("x".join(map(str, e[k])) if isinstance(e.get(k), list) else e.get(k))
                            for k in CSV_FIELDS})
            f.write(text.getvalue().encode())


@contextlib.contextmanager
def _locked(folder: str):
    import fcntl

    path = os.path.join(folder, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create {LOCK}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"{folder}: another bmz batch run is writing here "
                              f"(it holds {path})") from None
        yield
    finally:
        os.close(fd)


def _remove_part_files(dst_root: str, outputs: Iterable[str]) -> int:
    """Remove the temporary ``.NAME.*.part`` files a killed worker left beside ``outputs``."""
    n = 0
    by_dir: dict[str, set[str]] = {}
    for o in outputs:
        p = os.path.join(dst_root, o)
        by_dir.setdefault(os.path.dirname(p), set()).add(os.path.basename(p))
    for d, names in by_dir.items():
        try:
            listing = os.listdir(d)
        except OSError:
            continue
        for f in listing:  # ".NAME.XXXXXXXX.part" (tempfile.mkstemp: no dot in XXXXXXXX)
            if f.startswith(".") and f.endswith(".part") and \
                    f[1:-len(".part")].rpartition(".")[0] in names:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, f))
                    n += 1
    return n
