"""Finding inputs: what a file is, by its content and name, and walking a folder for inputs.

One place for what every command needs to recognise its inputs (``bmz encode``'s format
detection, the folder searches of ``bmz batch``, ``bmz rd-curve`` and ``bmz train``): the suffixes
of each format, the DICOM preamble test, content sniffing, the folder walk (hidden entries skipped,
sorted) and the inputs it finds (:func:`inputs`). Which of the found inputs a command takes, and
how it names them, stays with the command."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterator

from ..errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy",)
#: files read as volumes by their name
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NUMPY_SUFFIXES
#: files taken for DICOM by their name (others: by the ``DICM`` preamble)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: files that are certainly not DICOM: their headers are not read while searching folders
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".gz", ".npy", ".npz", ".bmz", ".json", ".txt", ".csv",
                      ".tsv", ".md", ".png", ".jpg", ".jpeg", ".zip", ".tar", ".xml", ".html",
                      ".pdf", ".py", ".mgz", ".mgh", ".nrrd", ".bval", ".bvec", ".log", ".part")

__all__ = ["suffix", "has_dicom_preamble", "is_dicom_file", "sniff", "walk", "inputs",
           "NIFTI_SUFFIXES", "NUMPY_SUFFIXES", "VOLUME_SUFFIXES", "DICOM_SUFFIXES",
           "NOT_DICOM_SUFFIXES"]


def suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix, ``.nii.gz`` counted as one."""
    p = Path(path)
    return ".nii.gz" if p.name.lower().endswith(".nii.gz") else p.suffix.lower()


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """Whether the file has the DICOM preamble (``DICM`` at byte 128); unreadable: False."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM file by its name, or by its preamble unless its name says it is something else."""
    if suffix(path) in DICOM_SUFFIXES:
        return True
    if Path(path).name.lower().endswith(NOT_DICOM_SUFFIXES):
        return False
    return has_dicom_preamble(path)


def sniff(path: Path) -> str:
    """Guess the format of the file at ``path``: ``'nifti'``, ``'numpy'``, ``'dicom'`` or
    ``'unknown'`` (by content first, then by suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(544)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":  # gzip: look at the NIfTI magic inside
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(544)
        except (OSError, EOFError):
            return "unknown"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if len(head) >= 8 and head[4:7] in (b"n+2", b"ni2"):
        return "nifti"
    if suffix(path) in DICOM_SUFFIXES:
        return "dicom"
    return "unknown"


def walk(root: str | os.PathLike, exclude: str | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``(folder, subfolders, files)`` for every folder under ``root``, top-down, sorted, hidden
    entries and ``exclude`` (e.g. an output folder inside the input) skipped. Clearing
    ``subfolders`` in place prunes the walk below ``folder``."""
    for cur, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or os.path.join(cur, d) != exclude))
        yield cur, dirs, sorted(f for f in files if not f.startswith("."))


def inputs(root: str | os.PathLike, exclude: str | None = None,
           volumes_below_dicom: bool = False) -> Iterator[tuple[str, Path]]:
    """The inputs under the folder ``root``, in :func:`walk` order: ``("volume", file)`` for each
    NIfTI or ``.npy`` file, ``("dicom", folder)`` for each top-most folder holding DICOM files
    directly. A DICOM folder is read recursively (all its series), so no folder below it is
    listed as a DICOM folder again; and by default the walk does not go below it and its own
    volume files are not listed (``bmz train`` and ``bmz rd-curve``: a NIfTI beside its DICOM is
    usually the same scan converted, counted twice). ``volumes_below_dicom``: also list the
    volume files in and below DICOM folders (``bmz batch``: an archive run codes every input
    file under the root, whatever folder it lies in)."""
    top: Path | None = None  # the DICOM folder being walked below (volumes_below_dicom)
    for cur, dirs, files in walk(root, exclude):
        folder = Path(cur)
        if top is not None and top not in folder.parents:
            top = None  # left its subtree (the walk is depth-first)
        if top is None and any(is_dicom_file(folder / f) for f in files
                               if suffix(f) not in VOLUME_SUFFIXES):
            yield "dicom", folder
            if not volumes_below_dicom:
                dirs[:] = []
                continue
            top = folder
        for f in files:
            if suffix(f) in VOLUME_SUFFIXES:
                yield "volume", folder / f
