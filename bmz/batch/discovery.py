"""``bmz batch``'s inputs: the NIfTI and ``.npy`` files and DICOM series under a folder (encode:
what ``bmz encode`` takes, found by :func:`bmz.io.discover.inputs`, the discovery of every
command), or its ``.bmz`` files (decode, verify), each with the output name it gets."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

from ..io import discover
from ..io.discover import NIFTI_SUFFIXES
from .tasks import Job, _list_series_task

#: the job kind of a volume file, by its suffix (the manifest's ``kind``)
_VOLUME_KINDS = {**{s: "nifti" for s in NIFTI_SUFFIXES}, ".npy": "numpy"}


def _rel(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else Path(rel).as_posix()


def _strip_suffix(rel: str) -> str:
    """``rel`` (a volume file) without its suffix (:func:`bmz.io.discover.suffix`)."""
    return rel[: len(rel) - len(discover.suffix(rel))]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def discover_encode(src_root: str, client=None, exclude: str | None = None
                    ) -> tuple[list[Job], list[dict]]:
    """The NIfTI and ``.npy`` files and DICOM series under ``src_root`` → (jobs, error entries):
    the inputs :func:`bmz.io.discover.inputs` finds, volume files in and below DICOM folders
    included (an archive run codes every input file).

    A DICOM series is found in the top-most folder holding DICOM files directly and is read
    from that folder (recursively, like ``bmz encode FOLDER --series UID``); its headers are read
    on the cluster (``client``), one task per such folder. Output names: ``a/b.nii.gz`` →
    ``a/b.bmz`` (``a/b.npy`` too); a folder ``a/s`` with one series → ``a/s.bmz``, with several →
    ``a/s/<SeriesNumber>_<SeriesInstanceUID>.bmz`` (the source root's own series: the latter, in
    the destination root). A name two inputs would share falls back to the full input name
    (``a/b.nii.gz.bmz``) or the per-series name."""
    src_root = os.path.abspath(src_root)
    volumes: list[str] = []
    dicom_dirs: list[str] = []
    for kind, path in discover.inputs(src_root, exclude, volumes_below_dicom=True):
        (dicom_dirs if kind == "dicom" else volumes).append(str(path))

    jobs: list[Job] = []
    errors: list[dict] = []
    for p in volumes:
        st = os.stat(p)
        rel = _rel(p, src_root)
        jobs.append(Job(_VOLUME_KINDS[discover.suffix(p)], p, rel, _strip_suffix(rel) + ".bmz",
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
            with_output(j, j.input + ".bmz") if j.kind in ("nifti", "numpy") else
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
    for cur, _, files in discover.walk(src_root, exclude):
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
