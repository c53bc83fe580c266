"""What a worker does for ``bmz batch``: a job per input, the encode / decode / verify tasks
(each catches its input's error and returns it), and the worker plugin that loads the model once."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .. import api
from .. import io as bio
from .._fileutil import sha256_file
from ..codec import zoo
from ..errors import BmzError, MissingDependencyError
from ..file import BmzFile

try:  # the plugin must subclass WorkerPlugin to be recognised by Client.register_plugin
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # a core install: bmz batch needs bmz[dask]
    _WorkerPlugin = object


log = logging.getLogger(__name__)

#: threads one task codes a volume on. Dask already runs a task per worker thread on every core
#: (the default LocalCluster: one single-threaded worker process per core), so a task's own
#: slices run on one thread: more would only oversubscribe the cores (N tasks × N threads). The
#: bytes are the same for any count (``bmz encode --jobs``).
TASK_THREADS = 1


def _require_distributed():
    if _WorkerPlugin is object:
        raise MissingDependencyError("bmz batch needs Dask distributed: pip install 'bmz[dask]'")


@dataclass(frozen=True)
class Job:
    """One input of a batch run. Paths in ``input``/``output`` are POSIX paths relative to the
    source and destination folders (the manifest's keys); ``src`` is the absolute input path."""

    kind: str  # "nifti", "numpy", "dicom" (a series of the folder src) or "bmz"
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


def _finished(res: dict, t0: float, c0: float) -> dict:
    """A task's entry with its wall time, this worker process's CPU time since ``t0`` / ``c0``
    (``time.perf_counter()`` / ``time.process_time()`` at its start) and the process facts."""
    res["seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    res.update(_process_facts())
    return res


def _process_facts() -> dict:
    """Who ran a task: host, pid, models loaded by this process so far, torch threads."""
    facts: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
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
    if not os.path.isfile(path):
        return "output missing"
    if os.path.getsize(path) != expect.get("bytes"):
        return "output size differs from the manifest"
    if sha256_file(path) != expect.get("sha256"):
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
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        kw = {} if bound is None else {"max_error": bound, "base_quality": base_quality}
        rep = api.encode_file(job.src, out, quality=quality, model=model,
                              series=job.series, force=True, progress=False, verify=verify,
                              threads=TASK_THREADS, **kw)
        if bound is not None and rep.max_error is not None and rep.max_error > bound:
            _remove_stale(out)  # cannot happen (the encoder checks); never let it pass silently
            raise BmzError(f"{job.src}: decoded max error {rep.max_error} exceeds the bound {bound}")
        n_slices = int(rep.shape[0]) if len(rep.shape) == 3 else 1
        res.update(status="ok", bytes=rep.n_bytes, raw_bytes=rep.raw_bytes, bpp=rep.bpp,
                   ratio=rep.ratio, psnr=_finite(rep.psnr), max_error=rep.max_error,
                   shape=list(rep.shape), dtype=rep.dtype, n_slices=n_slices,
                   weights_sha256=zoo.sha256_file(zoo.find_weights(model)), sha256=sha256_file(out))
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
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        rep, _ = api.decode_file(job.src, out, force=True, progress=False, threads=TASK_THREADS)
        n_slices = int(rep.shape[0]) if len(rep.shape) == 3 else 1
        res.update(status="ok", bytes=os.path.getsize(out), raw_bytes=rep.raw_bytes,
                   bmz_bytes=rep.n_bytes, shape=list(rep.shape), dtype=rep.dtype,
                   n_slices=n_slices, sha256=sha256_file(out))
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
            sha = sha256_file(job.src)
            res["sha256"] = sha
            if sha != expect["sha256"]:
                status = "mismatch" if status == "ok" else status
                problems.append("SHA-256 differs from the manifest (not the file it records)")
        if decode and status == "ok":
            with BmzFile(job.src) as f:
                f.read(threads=TASK_THREADS)
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
        if not self.models and "torch" not in sys.modules:
            return  # nothing to load (bmz verify needs no torch; decoding pins its own threads)
        import torch

        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
            torch.set_num_interop_threads(1)
        for m in self.models:
            try:
                zoo.load_model(m)
            except Exception:  # noqa: BLE001 - each task then reports the error for its input
                log.exception("bmz: worker %s could not load model %s", worker, m)
