"""Archive-scale coding: whole folders encoded, decoded or verified on a Dask cluster.

``bmz batch encode SRC_DIR -o DST_DIR`` finds the NIfTI files and DICOM series under ``SRC_DIR``,
encodes each into its own ``.bmz`` under ``DST_DIR`` (same relative layout) and records every
input in ``DST_DIR/manifest.jsonl``. The work runs on Dask ``distributed``: a ``LocalCluster`` of
worker processes by default, or any running scheduler (``--scheduler tcp://host:8786`` or a
scheduler file). Dask does the scheduling, the retries on lost workers and the data placement;
this module only finds the inputs, says what each task does, and keeps the manifest.

- **One model load per worker.** :class:`WorkerSetup`, a worker plugin, pins torch to one thread
  and loads the model into the worker process's cache (:func:`bmz.codec.zoo.load_model`) when the
  worker starts (and again in a worker the nanny restarts); tasks then find it there. Every result
  says how many models its process has loaded (``model_loads``) and on how many threads.
- **Restartable.** A re-run skips an input whose manifest entry is ``ok`` for the same input
  (size and modification time), quality or error bound, model and weights, and whose output still
  has the recorded SHA-256 and passes ``bmz verify`` (checked on the workers); everything else is
  redone.
- **Failures stay local.** A task catches its input's error and returns it; an input that kills
  its worker (Dask gives up after ``distributed.scheduler.allowed-failures`` lost workers) is
  recorded as failed too. The others carry on.
- **No partial outputs.** Outputs are written to a temporary file and renamed
  (:func:`bmz._fileutil.atomic_output`); temporary files a killed worker leaves behind are
  removed at the end of the run. A failed input leaves no output (an older output of it is
  removed: it no longer matches its input).
- **One writer.** Only the client process writes the manifest: one JSON line per finished
  input, appended and flushed as results arrive (a torn last line after a crash is ignored on
  reading), then rewritten atomically, one line per input, with ``manifest.csv`` beside it. A
  lock file stops a second run on the same ``DST_DIR``.

Paths: workers open the inputs and write the outputs themselves, so with a remote scheduler
``SRC_DIR`` and ``DST_DIR`` must be visible to every worker under the same absolute paths (a
shared file system); the run checks that first.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import BmzError, InputError, MissingDependencyError, OutputError

try:  # the plugin must subclass WorkerPlugin to be recognised by Client.register_plugin
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - bmz's dependencies include dask[distributed]
    _WorkerPlugin = object

MANIFEST = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
LOCK = ".bmz-batch.lock"
#: the manifest columns of manifest.csv, in order (the JSON lines hold a few more)
CSV_FIELDS = ("input", "series", "output", "status", "bytes", "bpp", "psnr", "max_error",
              "n_slices", "shape", "dtype", "quality", "model", "sha256", "seconds", "error")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DECODE_FORMATS = ("nii.gz", "nii", "npy")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: files that are certainly not DICOM: their headers are not read during discovery
_NOT_DICOM = (".nii", ".nii.gz", ".gz", ".npy", ".npz", ".bmz", ".json", ".txt", ".csv", ".tsv",
              ".md", ".png", ".jpg", ".jpeg", ".zip", ".tar", ".xml", ".html", ".pdf", ".py",
              ".mgz", ".mgh", ".nrrd", ".bval", ".bvec", ".log", ".part")

log = logging.getLogger(__name__)


def _require_distributed():
    if _WorkerPlugin is object:
        raise MissingDependencyError("bmz batch needs Dask distributed: pip install 'dask[distributed]'")


# --------------------------------------------------------------------------------------------
# jobs and what a worker does with them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One input of a batch run. Paths in ``input``/``output`` are POSIX paths relative to the
    source and destination folders (the manifest's keys); ``src`` is the absolute input path."""

    kind: str  # "nifti", "dicom" (a series of the folder src) or "bmz"
    src: str
    input: str
    output: str
    series: str | None = None
    #: what the input looked like when listed: [size, mtime_ns] of a file; [n_files, total size,
    #: newest mtime_ns] of a DICOM folder's files
    fingerprint: tuple = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.input, self.series or "")


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _finished(res: dict, t0: float, c0: float) -> dict:
    """A task's entry with its wall time, this worker process's CPU time since ``t0`` / ``c0``
    (``time.perf_counter()`` / ``time.process_time()`` at its start) and the process facts."""
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    res.update(_process_facts())
    return res


def _process_facts() -> dict:
    """Who ran a task: host, pid, models loaded by this process so far, torch threads."""
    import sys

    facts: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if "bmz.codec.zoo" in sys.modules:
        from .codec import zoo

        facts["model_loads"] = zoo._load.cache_info().misses
    if "torch" in sys.modules:
        facts["threads"] = sys.modules["torch"].get_num_threads()
    try:  # the Dask task key: the same when Dask re-runs a lost worker's task elsewhere
        from distributed import get_worker

        facts["task"] = str(get_worker().get_current_task())
    except (ImportError, ValueError):
        pass
    return facts


def _finite(v):
    """A float for JSON: ``inf`` (identical decode) as the string "inf"."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _base_result(job: Job) -> dict:
    return {"input": job.input, "series": job.series, "output": job.output, "kind": job.kind,
            "fingerprint": list(job.fingerprint), "status": "error", "error": None}


def _output_ok(path: str, expect: dict) -> str | None:
    """Why the output at ``path`` is not the one ``expect`` (a manifest entry) records, or None
    when it is: present, same size and SHA-256, every checksum valid, decodable here."""
    from . import api

    if not os.path.isfile(path):
        return "output missing"
    if os.path.getsize(path) != expect.get("bytes"):
        return "output size differs from the manifest"
    if _sha256(path) != expect.get("sha256"):
        return "output SHA-256 differs from the manifest"
    if path.endswith(".bmz"):
        try:
            v = api.verify(path)
        except BmzError as e:
            return f"bmz verify: {e}"
        if not v["ok"]:
            return (f"bmz verify: damaged slices {v['damaged'][:10]}" if v["damaged"] else
                    "bmz verify: the attachment (DICOM kept bytes) is damaged")
        if not v["model_available"]:
            return f"bmz verify: {v['model_note']}"
    return None


def _fail(res: dict, e: BaseException) -> dict:
    res["status"] = "error"
    res["error"] = str(e) if isinstance(e, BmzError) else f"{type(e).__name__}: {e}"
    res["error_type"] = type(e).__name__
    return res


def _remove_stale(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isfile(path):
            os.unlink(path)


def _done_before(out: str, expect: dict | None, res: dict, t0: float) -> dict | None:
    """A re-run: the manifest entry ``expect`` (marked skipped) when its output still checks out,
    else None, with the reason to redo it in ``res["redo"]``."""
    if expect is None:
        return None
    why = _output_ok(out, expect)
    if why is None:
        return {**expect, "skipped": True, "seconds_check": time.perf_counter() - t0,
                **_process_facts()}
    res["redo"] = why
    return None


def encode_task(job: Job, dst_root: str, quality: int, model: str, verify: bool = True,
                expect: dict | None = None, bound: int | None = None,
                base_quality: int | str = "auto") -> dict:
    """Encode one input on a worker → its manifest entry. Never raises for a bad input.
    ``bound``: a guaranteed maximum error (0: lossless; None: lossy at ``quality``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = os.path.join(dst_root, job.output)
    res = _base_result(job)
    res.update(quality=quality, model=model, bound=bound,
               base_quality=None if bound is None else base_quality)
    try:
        done = _done_before(out, expect, res, t0)
        if done is not None:
            return done
        from . import api
        from .codec import zoo

        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        kw = {} if bound is None else {"max_error": bound, "base_quality": base_quality}
        rep = api.encode_file(job.src, out, quality=quality, model=model,
                              series=job.series, force=True, progress=False, verify=verify, **kw)
        if bound is not None and rep.max_error is not None and rep.max_error > bound:
            _remove_stale(out)  # cannot happen (the encoder checks); never let it pass silently
            raise BmzError(f"{job.src}: decoded max error {rep.max_error} exceeds the bound {bound}")
        n_slices = int(rep.shape[0]) if len(rep.shape) == 3 else 1
        res.update(status="ok", bytes=rep.n_bytes, raw_bytes=rep.raw_bytes, bpp=rep.bpp,
                   ratio=rep.ratio, psnr=_finite(rep.psnr), max_error=rep.max_error,
                   shape=list(rep.shape), dtype=rep.dtype, n_slices=n_slices,
                   weights_sha256=zoo.sha256_file(zoo.find_weights(model)), sha256=_sha256(out))
    except Exception as e:  # noqa: BLE001 - one input's failure is its result, not the run's
        _fail(res, e)
        _remove_stale(out)
    return _finished(res, t0, c0)


def decode_task(job: Job, dst_root: str, fmt: str, expect: dict | None = None) -> dict:
    """Decode one ``.bmz`` on a worker → its manifest entry. Never raises for a bad input."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = os.path.join(dst_root, job.output)
    res = _base_result(job)
    res.update(format=fmt)
    try:
        done = _done_before(out, expect, res, t0)
        if done is not None:
            return done
        from . import api

        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        rep, _ = api.decode_file(job.src, out, force=True, progress=False)
        n_slices = int(rep.shape[0]) if len(rep.shape) == 3 else 1
        res.update(status="ok", bytes=os.path.getsize(out), raw_bytes=rep.raw_bytes,
                   bmz_bytes=rep.n_bytes, shape=list(rep.shape), dtype=rep.dtype,
                   n_slices=n_slices, sha256=_sha256(out))
    except Exception as e:  # noqa: BLE001
        _fail(res, e)
        _remove_stale(out)
    return _finished(res, t0, c0)


def verify_task(job: Job, expect: dict | None = None, decode: bool = False) -> dict:
    """Check one ``.bmz`` on a worker: every checksum, the SHA-256 its manifest records (when
    there is one) and, with ``decode``, a full decode. Status ``ok``, ``damaged`` (a checksum or
    the decode fails), ``mismatch`` (not the file the manifest records) or ``error``."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = _base_result(job)
    try:
        from . import api

        v = api.verify(job.src)
        res.update(n_slices=v["n_slices"], bytes=os.path.getsize(job.src), model=v["model"])
        problems = []
        if v["damaged"]:
            res["damaged"] = v["damaged"]
            problems.append(f"{len(v['damaged'])} of {v['n_slices']} slices fail their checksum: "
                            + ", ".join(map(str, v["damaged"][:20])))
        if not v.get("attachment_ok", True):
            problems.append("the attachment (the DICOM files' kept bytes) fails its checksum")
        if not v["model_available"]:
            problems.append(f"cannot be decoded here: {v['model_note']}")
        status = "damaged" if problems else "ok"
        if expect is not None and expect.get("sha256"):
            sha = _sha256(job.src)
            res["sha256"] = sha
            if sha != expect["sha256"]:
                status = "mismatch" if status == "ok" else status
                problems.append("SHA-256 differs from the manifest (not the file it records)")
        if decode and status == "ok":
            with open(job.src, "rb") as f:
                api.decompress(f.read())
        res["status"] = status
        res["error"] = "; ".join(problems) or None
    except BmzError as e:
        _fail(res, e)
        if e.exit_code == 3:  # FormatError: the file itself is bad
            res["status"] = "damaged"
    except Exception as e:  # noqa: BLE001
        _fail(res, e)
    return _finished(res, t0, c0)


def _list_series_task(folder: str) -> dict:
    """A DICOM folder's series and the fingerprint of its files (on a worker: it reads every
    file's header)."""
    n = size = newest = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    try:
        from . import io as bio

        return {"series": bio.list_series(folder), "fingerprint": [n, size, newest]}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e) if isinstance(e, BmzError) else f"{type(e).__name__}: {e}"}


class WorkerSetup(_WorkerPlugin):
    """Worker plugin: one torch thread per worker (a worker runs one task per thread; more
    threads inside a task only oversubscribe the cores) and the models loaded once, into the
    process-wide cache of :func:`bmz.codec.zoo.load_model`, when the worker starts."""

    name = "bmz-worker-setup"

    def __init__(self, models: Iterable[str] = (), threads: int = 1):
        self.models = tuple(models)
        self.threads = threads

    def setup(self, worker=None):
        import sys

        if not self.models and "torch" not in sys.modules:
            return  # nothing to load (bmz verify needs no torch; decoding pins its own threads)
        import torch

        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
            torch.set_num_interop_threads(1)
        from .codec import zoo

        for m in self.models:
            try:
                zoo.load_model(m)
            except Exception:  # noqa: BLE001 - each task then reports the error for its input
                log.exception("bmz: worker %s could not load model %s", worker, m)


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


def _is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _looks_dicom(path: str) -> bool:
    low = path.lower()
    if low.endswith(_DICOM_SUFFIXES):
        return True
    if low.endswith(_NOT_DICOM):
        return False
    from .io.dicom import _has_preamble

    return _has_preamble(Path(path))


def _rel(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else Path(rel).as_posix()


def _strip_nifti(rel: str) -> str:
    low = rel.lower()
    for s in (".nii.gz", ".nii"):
        if low.endswith(s):
            return rel[: -len(s)]
    return rel


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _walk(root: str, exclude: str | None) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted visible file names) for every folder under ``root``, top-down, hidden
    entries and ``exclude`` (the destination, when it lies inside the source) skipped."""
    for cur, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or os.path.join(cur, d) != exclude))
        yield cur, sorted(f for f in files if not f.startswith("."))


def discover_encode(src_root: str, client=None, exclude: str | None = None
                    ) -> tuple[list[Job], list[dict]]:
    """The NIfTI files and DICOM series under ``src_root`` → (jobs, error entries).

    A DICOM series is found in the top-most folder holding DICOM files directly and is read
    from that folder (recursively, like ``bmz encode FOLDER --series UID``); its headers are read
    on the cluster (``client``), one task per such folder. Output names: ``a/b.nii.gz`` →
    ``a/b.bmz``; a folder ``a/s`` with one series → ``a/s.bmz``, with several →
    ``a/s/<SeriesNumber>_<SeriesInstanceUID>.bmz`` (the source root's own series: the latter, in
    the destination root). A name two inputs would share falls back to the full input name
    (``a/b.nii.gz.bmz``) or the per-series name."""
    src_root = os.path.abspath(src_root)
    niftis: list[str] = []
    dicom_dirs: list[str] = []
    claimed: set[str] = set()
    for cur, files in _walk(src_root, exclude):
        under = any(p in claimed for p in _ancestors(cur, src_root))
        niftis.extend(os.path.join(cur, f) for f in files if _is_nifti(f))
        if not under and any(_looks_dicom(os.path.join(cur, f)) for f in files if not _is_nifti(f)):
            dicom_dirs.append(cur)
            claimed.add(cur)

    jobs: list[Job] = []
    errors: list[dict] = []
    for p in niftis:
        st = os.stat(p)
        rel = _rel(p, src_root)
        jobs.append(Job("nifti", p, rel, _strip_nifti(rel) + ".bmz",
                        fingerprint=(st.st_size, st.st_mtime_ns)))
    listed = _map_small(client, _list_series_task, dicom_dirs)
    for d, found in zip(dicom_dirs, listed):
        rel = _rel(d, src_root)
        if "error" in found:
            errors.append({"input": rel or ".", "series": None, "output": None, "kind": "dicom",
                           "status": "error", "error": found["error"]})
            continue
        series = found["series"]
        for s in series:
            if len(series) == 1 and rel:
                out = rel + ".bmz"
            else:
                out = (f"{rel}/" if rel else "") + _series_name(s)
            jobs.append(Job("dicom", d, rel or ".", out, series=s["uid"],
                            fingerprint=tuple(found["fingerprint"])))
    return _resolve_collisions(jobs), errors


def _ancestors(path: str, root: str) -> Iterator[str]:
    p = path
    while True:
        yield p
        if p == root or len(p) <= len(root):
            return
        p = os.path.dirname(p)


def _series_name(s: dict) -> str:
    n = s.get("series_number")
    return f"{n if n is not None else 'x'}_{_safe(s['uid'])}.bmz"


def _resolve_collisions(jobs: list[Job]) -> list[Job]:
    """Give every job its own output name (see :func:`discover_encode`). Names two jobs would
    share fall back to the full input name (NIfTI: ``a/b.nii.gz.bmz``) or the per-series name
    (DICOM: ``a/s/<UID>.bmz``); any still shared get a tag from their input. The rule depends
    only on the inputs present, not on their order."""
    def with_output(j: Job, out: str) -> Job:
        return Job(j.kind, j.src, j.input, out, j.series, j.fingerprint)

    def shared(js: list[Job]) -> set[str]:
        seen: dict[str, int] = {}
        for j in js:
            seen[j.output.lower()] = seen.get(j.output.lower(), 0) + 1
        return {k for k, n in seen.items() if n > 1}

    clash = shared(jobs)
    jobs = [j if j.output.lower() not in clash else
            with_output(j, j.input + ".bmz") if j.kind == "nifti" else
            with_output(j, f"{j.input}/{_safe(j.series or 'x')}.bmz")
            if j.kind == "dicom" and j.output == j.input + ".bmz" else j
            for j in jobs]
    clash = shared(jobs)
    jobs = [j if j.output.lower() not in clash else with_output(
        j, j.output[:-4] + "-" + hashlib.sha1(f"{j.input}\0{j.series}".encode()).hexdigest()[:8]
        + ".bmz") for j in jobs]
    return sorted(jobs, key=lambda j: j.key)


def discover_bmz(src_root: str, out_suffix: str | None = None,
                 exclude: str | None = None) -> list[Job]:
    """Every ``.bmz`` under ``src_root`` (for decode: output ``a/b.bmz`` → ``a/b.<out_suffix>``)."""
    src_root = os.path.abspath(src_root)
    jobs = []
    for cur, files in _walk(src_root, exclude):
        for f in files:
            if f.lower().endswith(".bmz"):
                p = os.path.join(cur, f)
                st = os.stat(p)
                rel = _rel(p, src_root)
                out = rel[:-4] + "." + out_suffix if out_suffix else ""
                jobs.append(Job("bmz", p, rel, out, fingerprint=(st.st_size, st.st_mtime_ns)))
    return jobs


def _map_small(client, fn, items: list) -> list:
    """``fn`` over ``items`` on the cluster (in order); in this process without a client."""
    if not items:
        return []
    if client is None:
        return [fn(x) for x in items]
    futs = client.map(fn, items, pure=False, key=[f"bmz-list-{uuid.uuid4().hex[:12]}" for _ in items])
    try:
        return client.gather(futs)
    finally:
        for f in futs:
            f.release()


# --------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------


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
        from ._fileutil import atomic_output

        self.close()
        rows = [self.entries[k] for k in sorted(self.entries)]
        with atomic_output(self.path) as f:
            for e in rows:
                f.write((json.dumps(e, sort_keys=True) + "\n").encode())
        with atomic_output(self.folder / MANIFEST_CSV) as f:
            import io

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


# --------------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Worker processes of the default LocalCluster: one per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None,
            timeout: float = 30.0) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` (an address such as ``tcp://host:8786`` or a scheduler
    file), waiting for ``workers`` workers if given; otherwise to a new ``LocalCluster`` of
    ``workers`` (default: one per core) single-threaded worker processes, closed on exit."""
    _require_distributed()
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler:
            try:
                if os.path.isfile(scheduler):
                    client = Client(scheduler_file=scheduler, timeout=timeout)
                else:
                    client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as e:
                raise BmzError(f"--scheduler {scheduler}: cannot connect: {e}") from None
            if workers:
                try:
                    client.wait_for_workers(workers, timeout=timeout)
                except TimeoutError:
                    n = len(client.scheduler_info().get("workers", {}))
                    client.close()
                    raise BmzError(f"--scheduler {scheduler}: {n} workers after {timeout:.0f} s, "
                                   f"--workers asks for {workers}") from None
        else:
            n = workers or default_workers()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _check_workers_see(client, *paths: str) -> None:
    """Every worker must see the source and destination folders (same absolute paths)."""
    seen = client.run(lambda ps: [os.path.isdir(p) for p in ps], list(paths))
    for addr, oks in seen.items():
        for p, ok in zip(paths, oks):
            if not ok:
                raise InputError(f"{p}: not visible to worker {addr}; with --scheduler, the "
                                 "folders must be on a file system every worker mounts at the "
                                 "same path")


def _run_tasks(client, fn, items: list[tuple[Job, tuple]], window: int | None = None
               ) -> Iterator[tuple[Job, dict]]:
    """Submit ``fn(job, *args)`` for every item to Dask and yield (job, result) as tasks finish.
    At most ``window`` tasks are submitted at a time (the scheduler need not hold a million
    futures); Dask decides where each runs and re-runs those of a lost worker."""
    from distributed import as_completed

    if window is None:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = max(64, 8 * n_workers)
    run_id = uuid.uuid4().hex[:8]
    pending = iter(enumerate(items))
    owner: dict = {}
    ac = as_completed()

    def submit_next() -> bool:
        nxt = next(pending, None)
        if nxt is None:
            return False
        i, (job, args) = nxt
        fut = client.submit(fn, job, *args, key=f"bmz-{fn.__name__}-{run_id}-{i}", pure=False)
        owner[fut.key] = job
        ac.add(fut)
        return True

    for _ in range(window):
        if not submit_next():
            break
    for fut in ac:
        job = owner.pop(fut.key)
        try:
            res = fut.result()
        except Exception as e:  # noqa: BLE001 - KilledWorker (the input killed its workers), ...
            res = _fail(_base_result(job), e)
            if type(e).__name__ == "KilledWorker":
                res["error"] = ("the worker processing this input died "
                                f"{_allowed_failures()} times (out of memory, or a crash): {e}")
        finally:
            fut.release()
        yield job, res
        submit_next()


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures", 3)) + 1


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What a batch run did. ``results``: one manifest entry per input of this run."""

    kind: str
    src: str
    dst: str | None
    results: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    n_workers: int = 0

    def _count(self, pred) -> int:
        return sum(1 for r in self.results if pred(r))

    @property
    def n_done(self) -> int:
        return self._count(lambda r: r.get("status") == "ok" and not r.get("skipped"))

    @property
    def n_skipped(self) -> int:
        return self._count(lambda r: r.get("skipped"))

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if r.get("status") != "ok"]

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def slices(self) -> int:
        return sum(int(r.get("n_slices") or 0) for r in self.results
                   if r.get("status") == "ok" and not r.get("skipped"))

    @property
    def raw_bytes(self) -> int:
        return sum(int(r.get("raw_bytes") or 0) for r in self.results
                   if r.get("status") == "ok" and not r.get("skipped"))

    @property
    def manifest(self) -> str | None:
        return os.path.join(self.dst, MANIFEST) if self.dst else None


def _prepare_dst(dst: str) -> str:
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise OutputError(f"{dst}: exists and is not a folder")
    try:
        os.makedirs(dst, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{dst}: cannot create the output folder: {e.strerror or e}") from None
    return dst


def _check_src(src: str) -> str:
    src = os.path.abspath(src)
    if not os.path.exists(src):
        raise InputError(f"{src}: no such folder")
    if not os.path.isdir(src):
        raise InputError(f"{src}: not a folder (bmz batch works on folders; use bmz encode "
                         "for one file)")
    return src


def _inside(path: str, root: str) -> str | None:
    """``path`` when it lies strictly inside ``root`` (to leave it out of the walk), else None."""
    try:
        return path if os.path.commonpath([path, root]) == root and path != root else None
    except ValueError:
        return None


@contextlib.contextmanager
def _client_for(client, scheduler, workers):
    if client is not None:
        yield client
    else:
        with connect(scheduler, workers) as c:
            yield c


def _n_workers(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _check_model(model: str, quality: int | None) -> tuple[str, int, int]:
    """The model's weights SHA-256, number of qualities and default quality, checked here
    (no torch)."""
    from .codec import zoo

    card = zoo.read_card(model)  # UnknownModelError names the shipped models
    n_q, default = zoo.card_qualities(card)
    if quality is not None and (not isinstance(quality, int) or not 1 <= quality <= n_q):
        raise InputError(f"quality must be an integer from 1 to {n_q} for model {model}, "
                         f"got {quality!r}")
    return zoo.sha256_file(zoo.find_weights(model)), n_q, default


def _still_valid(old: dict | None, job: Job, quality: int, model: str, weights_sha: str,
                 verify: bool, bound: int | None = None, base_quality: int | str = "auto") -> bool:
    """Whether a manifest entry stands for ``job`` encoded with these settings (then only its
    output's SHA-256 and checksums are left to check, on a worker)."""
    return bool(old and old.get("status") == "ok" and old.get("output") == job.output
                and list(old.get("fingerprint") or []) == list(job.fingerprint)
                and old.get("quality") == quality and old.get("model") == model
                and old.get("weights_sha256") == weights_sha
                and old.get("bound") == bound
                and old.get("base_quality") == (None if bound is None else base_quality)
                and (old.get("psnr") is not None or not verify))


def _run_all(cl, task, items, res, manifest, dst: str, progress: bool, on_result,
             label: str) -> None:
    """Run ``task`` over ``items`` (``(job, args)``) on the cluster, recording each result; then,
    whatever happened, remove leftover ``.part`` files of the jobs' outputs and compact the
    manifest."""
    try:
        _collect(res, manifest, _run_tasks(cl, task, items), progress, on_result, label)
    finally:
        _remove_part_files(dst, [j.output for j, _ in items])
        manifest.compact()


def encode(src: str, dst: str, quality: int | None = None, model: str | None = None, *,
           scheduler: str | None = None, workers: int | None = None, client=None,
           force: bool = False, verify: bool = True, progress: bool = False,
           on_result: Callable[[dict], None] | None = None, max_error: int | None = None,
           lossless: bool = False, base_quality: int | str = "auto") -> BatchResult:
    """Encode every NIfTI file and DICOM series under ``src`` into ``dst`` (see the module doc).

    ``quality``: 1 (smallest) .. the model's number of levels; default: the model's default.

    ``client``: an existing ``distributed.Client`` (else one is made from ``scheduler`` /
    ``workers``, see :func:`connect`). ``force``: redo inputs the manifest says are done.
    ``verify``: decode each output and record its PSNR and max error (on by default).
    ``max_error`` / ``lossless`` / ``base_quality``: guaranteed fidelity, as in
    :func:`bmz.compress` (the manifest's ``bound``). ``on_result(entry)`` is called in this
    process as each input finishes."""
    from .codec import zoo
    from types import SimpleNamespace

    from .codec.bounded import check_base_quality, check_max_error

    _require_distributed()
    bound = check_max_error(max_error, lossless)
    if bound is not None:
        quality = None  # unused: the base layer's quality is base_quality
    model = model or zoo.DEFAULT_MODEL
    weights_sha, n_q, default = _check_model(model, quality)
    if bound is None and quality is None:
        quality = default
    base_quality = check_base_quality(base_quality, SimpleNamespace(n_qualities=n_q))
    src, dst = _check_src(src), _prepare_dst(dst)
    t0 = time.perf_counter()
    res = BatchResult("encode", src, dst)
    with _locked(dst), _client_for(client, scheduler, workers) as cl:
        cl.register_plugin(WorkerSetup([model]))
        _check_workers_see(cl, src, dst)
        res.n_workers = _n_workers(cl)
        manifest = Manifest(dst)
        jobs, errors = discover_encode(src, cl, exclude=_inside(dst, src))
        for e in errors:
            manifest.record(e)
            res.results.append(e)
        items = []
        for j in jobs:
            old = None if force else manifest.get(j.key)
            valid = _still_valid(old, j, quality, model, weights_sha, verify, bound, base_quality)
            items.append((j, (dst, quality, model, verify, old if valid else None, bound,
                              base_quality)))
        _run_all(cl, encode_task, items, res, manifest, dst, progress, on_result, "encode")
    res.seconds = time.perf_counter() - t0
    return res


def decode(src: str, dst: str, fmt: str = "nii.gz", *, scheduler: str | None = None,
           workers: int | None = None, client=None, force: bool = False, progress: bool = False,
           on_result: Callable[[dict], None] | None = None) -> BatchResult:
    """Decode every ``.bmz`` under ``src`` to ``dst`` (same layout, ``fmt``: nii.gz, nii or
    npy), with a manifest in ``dst`` and the same restart rules as :func:`encode`."""
    _require_distributed()
    if fmt not in DECODE_FORMATS:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(DECODE_FORMATS)}")
    src, dst = _check_src(src), _prepare_dst(dst)
    t0 = time.perf_counter()
    res = BatchResult("decode", src, dst)
    with _locked(dst), _client_for(client, scheduler, workers) as cl:
        cl.register_plugin(WorkerSetup([]))  # models load on first use, once per worker
        _check_workers_see(cl, src, dst)
        res.n_workers = _n_workers(cl)
        manifest = Manifest(dst)
        jobs = discover_bmz(src, fmt, exclude=_inside(dst, src))
        items = []
        for j in jobs:
            old = None if force else manifest.get(j.key)
            ok = (old and old.get("status") == "ok" and old.get("output") == j.output
                  and list(old.get("fingerprint") or []) == list(j.fingerprint)
                  and old.get("format") == fmt)
            items.append((j, (dst, fmt, old if ok else None)))
        _run_all(cl, decode_task, items, res, manifest, dst, progress, on_result, "decode")
    res.seconds = time.perf_counter() - t0
    return res


def verify(folder: str, *, decode_all: bool = False, scheduler: str | None = None,
           workers: int | None = None, client=None, progress: bool = False,
           on_result: Callable[[dict], None] | None = None) -> BatchResult:
    """Check every ``.bmz`` under ``folder`` on the cluster (see :func:`verify_task`); when the
    folder holds a batch manifest, also that each file is the one recorded (SHA-256) and that no
    output it lists as done is missing. Writes nothing."""
    _require_distributed()
    folder = _check_src(folder)
    t0 = time.perf_counter()
    res = BatchResult("verify", folder, None)
    manifest = Manifest(folder)
    by_output = {e["output"]: e for e in manifest.entries.values()
                 if e.get("status") == "ok" and e.get("output")}
    jobs = discover_bmz(folder)
    present = {j.input for j in jobs}
    for out, e in sorted(by_output.items()):
        if out.endswith(".bmz") and out not in present:
            res.results.append({"input": out, "series": None, "output": None, "kind": "bmz",
                                "status": "missing",
                                "error": f"listed as done in {MANIFEST} but not found"})
    with _client_for(client, scheduler, workers) as cl:
        cl.register_plugin(WorkerSetup([]))
        _check_workers_see(cl, folder)
        res.n_workers = _n_workers(cl)
        items = [(j, (by_output.get(j.input), decode_all)) for j in jobs]
        _collect(res, None, _run_tasks(cl, verify_task, items), progress, on_result, "verify")
    res.seconds = time.perf_counter() - t0
    return res


def _collect(res: BatchResult, manifest: Manifest | None, stream, progress: bool,
             on_result, desc: str) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="input", leave=False)
    try:
        for job, r in stream:
            if manifest is not None and not r.get("skipped"):
                r.setdefault("finished", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                manifest.record(r)
            res.results.append(r)
            if bar is not None:
                bar.update(1)
            if on_result is not None:
                on_result(r)
    finally:
        if bar is not None:
            bar.close()


def summary(res: BatchResult) -> str:
    """One line: what a run did, how fast."""
    sec = max(res.seconds, 1e-9)
    if res.kind == "verify":
        bad = res.n_failed
        return (f"{res.src}: {len(res.results)} files checked, {len(res.results) - bad} intact, "
                f"{bad} with problems ({res.n_workers} workers, {res.seconds:.1f} s)")
    verb = "encoded" if res.kind == "encode" else "decoded"
    return (f"{res.dst}: {res.n_done} {verb}, {res.n_skipped} already done, {res.n_failed} failed "
            f"of {len(res.results)} inputs; {res.slices} slices, {res.raw_bytes / 1e6:.1f} MB raw "
            f"in {res.seconds:.1f} s on {res.n_workers} workers ({res.slices / sec:.1f} slices/s, "
            f"{res.raw_bytes / 1e6 / sec:.2f} MB/s); manifest {res.manifest}")


__all__ = ["encode", "decode", "verify", "connect", "discover_encode", "discover_bmz", "Job",
           "Manifest", "WorkerSetup", "BatchResult", "summary", "encode_task", "decode_task",
           "verify_task", "MANIFEST", "default_workers"]
