"""Archive-scale coding: whole folders encoded, decoded or verified on a Dask cluster.

``bmz batch encode SRC_DIR -o DST_DIR`` finds the NIfTI and ``.npy`` files and DICOM series under
``SRC_DIR`` (what ``bmz encode`` takes), encodes each into its own ``.bmz`` under ``DST_DIR`` (same
relative layout) and records every input in ``DST_DIR/manifest.jsonl``. The work runs on Dask ``distributed``: a ``LocalCluster`` of
worker processes by default, or any running scheduler (``--scheduler tcp://host:8786`` or a
scheduler file). Dask does the scheduling, the retries on lost workers and the data placement;
this module only finds the inputs, says what each task does, and keeps the manifest.

- **One model load per worker.** :class:`WorkerSetup`, a worker plugin, pins torch to one thread
  and loads the model into the worker process's cache (:func:`bmz.codec.zoo.load_model`) when the
  worker starts (and again in a worker the nanny restarts); tasks then find it there. Every result
  says how many models its process has loaded (``model_loads``) and on how many threads.
- **All cores, once.** The cluster runs a task per worker thread on every core (the default
  ``LocalCluster``: one single-threaded worker process per core), so each task codes its volume's
  slices on one thread (:data:`.tasks.TASK_THREADS`), where ``bmz encode`` / ``bmz decode`` alone
  use every core for one volume: N tasks × N threads would only oversubscribe the cores. The
  bytes are the same either way.
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

Modules: :mod:`.tasks` (what a worker does), :mod:`.discovery` (the inputs and their output
names), :mod:`.manifest` (the manifest and its lock), :mod:`.cluster` (Dask); this module runs
them (:func:`encode`, :func:`decode`, :func:`verify`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from tqdm import tqdm

from .._fileutil import sha256_file  # noqa: F401 (re-exported: the SHA-256 the manifest records)
from ..codec import zoo
from ..codec.chunks.bounded import check_base_quality, check_max_error
from ..errors import InputError, OutputError
from .cluster import _check_workers_see, _run_tasks, connect, default_workers
from .discovery import _safe, discover_bmz, discover_encode  # noqa: F401
from .manifest import CSV_FIELDS, LOCK, MANIFEST, MANIFEST_CSV, Manifest, _locked, _remove_part_files
from .tasks import Job, WorkerSetup, _require_distributed, decode_task, encode_task, verify_task

DECODE_FORMATS = ("nii.gz", "nii", "npy")


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
    """Encode every NIfTI and ``.npy`` file and DICOM series under ``src`` into ``dst`` (see the
    module doc).

    ``quality``: 1 (smallest) .. the model's number of levels; default: the model's default.

    ``client``: an existing ``distributed.Client`` (else one is made from ``scheduler`` /
    ``workers``, see :func:`connect`). ``force``: redo inputs the manifest says are done.
    ``verify``: decode each output and record its PSNR and max error (on by default).
    ``max_error`` / ``lossless`` / ``base_quality``: guaranteed fidelity, as in
    :func:`bmz.compress` (the manifest's ``bound``). ``on_result(entry)`` is called in this
    process as each input finishes."""
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
__all__ = ["encode", "decode", "verify", "connect", "discover_encode", "discover_bmz", "Job",
           "Manifest", "WorkerSetup", "BatchResult", "summary", "encode_task", "decode_task",
           "verify_task", "MANIFEST", "MANIFEST_CSV", "CSV_FIELDS", "LOCK", "DECODE_FORMATS",
           "default_workers"]
