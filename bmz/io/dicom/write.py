"""Writing DICOM: a decoded DICOM-origin volume as its series, in memory
(:func:`series_files`) or into a folder, atomically (:func:`write_dicom`) — the original files
for a lossless ``.bmz``, derived, lossy-marked files otherwise (what changes:
:mod:`bmz.io.dicom.derive`)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from ...errors import BmzError, FormatError, OutputError
from ..discover import has_dicom_preamble
from ..volume import Volume
from . import legacy
from .derive import LossyCoding, derive, file_meta, set_series_range, to_little_endian
from .kept import KeptStore, sha256
from .notes import summarise_notes

try:
    import pydicom
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pass


def check_output_folder(folder: str | os.PathLike, force: bool = False) -> Path:
    """Check that a DICOM series can be written to ``folder`` (see :func:`write_dicom`); raise
    :class:`OutputError` naming it otherwise. Returns its absolute path."""
    shown = os.fspath(folder)
    dest = Path(os.path.abspath(shown))
    if not dest.name:
        raise OutputError(f"{shown}: DICOM output needs a folder name, not the root folder")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{shown}: exists and is not a folder; DICOM output is a folder of "
                          "files (e.g. -o outdir/)")
    if not dest.parent.is_dir():
        raise OutputError(f"{shown}: output folder {dest.parent} does not exist")
    if not os.access(dest.parent, os.W_OK):
        raise OutputError(f"{shown}: output folder {dest.parent} is not writable")
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise OutputError(f"{shown}: folder exists and is not empty (use --force to replace "
                              "it)")
        for root, _, files in os.walk(dest):
            for name in files:
                if not has_dicom_preamble(Path(root) / name):
                    rel_name = (Path(root) / name).relative_to(dest)
                    raise OutputError(
                        f"{shown}: --force replaces the whole folder, but it holds {rel_name}, "
                        "which is not a DICOM file; choose a new or empty folder"
                    )
    return dest


def check_dicom_source(volume_source: str | None, where: str) -> None:
    """Refuse DICOM output for a volume that did not come from DICOM (:class:`OutputError`)."""
    if volume_source != "dicom":
        raise OutputError(f"{where}: DICOM output needs a DICOM-origin .bmz; got "
                          f"{volume_source or 'an unknown source'} (write .nii, .nii.gz or .npy)")


def write_dicom(volume: Volume, folder: str | os.PathLike, lossy: LossyCoding,
                force: bool = False) -> list[str]:
    """Write a DICOM-origin ``volume`` (its decoded pixels) as its DICOM series: one file per
    original file (multi-frame files stay multi-frame), under the original's relative names, into
    ``folder`` — the original files for a lossless ``.bmz``, a derived series otherwise (see
    :func:`series_files`). Returns notes on what could not be kept.

    Atomic: the files are written into a temporary folder beside ``folder``, which then takes its
    place; on any error nothing is left. ``folder`` may be new or empty; a non-empty folder is
    replaced only with ``force`` and only when it holds nothing but DICOM files (a previous
    output), so that ``--force`` never deletes other data.

    Raises:
        OutputError: not a DICOM-origin volume, not every slice, folder not writable or not
            empty (without ``force``), or values that do not fit the original's BitsStored.
        FormatError: DICOM meta that does not describe the volume, or kept bytes that do not
            restore a file's SHA-256 (a damaged or forged file).
    """
    dest = check_output_folder(folder, force)
    shown = os.fspath(folder)
    notes: list[tuple[str, str]] = []
    files = series_files(volume, lossy, notes, where=shown)  # checks everything first
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as e:
        raise OutputError(f"{shown}: cannot create a folder in {dest.parent}: "
                          f"{e.strerror or e}") from None
    try:
        for _, name, data in files:
            _write_file(tmp / name, data)
        for name in files.unfinished:  # the series-wide values, once the series is known
            target = tmp / name
            _write_file(target, files.finish(name, target.read_bytes()))
        os.chmod(tmp, 0o755)
        _put_in_place(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, BmzError):
            raise OutputError(f"{shown}: cannot write: {e.strerror or e}; nothing was "
                              "written") from None
        raise
    return summarise_notes(notes)


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _put_in_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``, replacing an existing ``dest`` (checked
    by :func:`check_output_folder`); the old one is removed only once the new one is there."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, old / dest.name)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old / dest.name, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def series_files(volume: Volume, lossy: LossyCoding, notes: list[tuple[str, str]],
                 where: str = "DICOM output") -> "SeriesFiles":
    """The DICOM files of a DICOM-origin ``volume`` (decoded from a ``.bmz``), in memory: an
    iterable of ``(index in meta["dicom"]["files"], relative name, file bytes)`` in the order
    the files complete (a file once all its slices have been seen).

    Everything is checked before this returns (iterating then only builds files); slices are
    read once each, in order (``volume.data[k]``), and a file's frames are held only until it
    is complete. Notes on what a file could not keep go to ``notes`` as ``(file name, what)``
    (:func:`summarise_notes` makes lines of them).

    **Lossless** (``lossy.lossless``; a ``--lossless`` ``.bmz``): the original files, restored
    from the kept bytes (:mod:`bmz.io.dicom.kept`) — byte-identical for a native original (or
    one whose encapsulated pixels were kept), every element identical with native pixels in
    Explicit VR Little Endian for an encapsulated one; each file's SHA-256 is checked against
    the one recorded at encode time (:class:`FormatError` when it differs).

    **Lossy or bounded error**: a derived series. Each file is the original (its kept bytes,
    every element as it was, in its own native transfer syntax — an encapsulated original's in
    Explicit VR Little Endian, a big-endian one's in little endian) with the decoded pixels in the
    original's BitsAllocated, BitsStored, HighBit and PixelRepresentation, and:

    * Lossy Image Compression (0028,2110) "01", Lossy Image Compression Ratio (0028,2112) and
      Method (0028,2114) :data:`LOSSY_METHOD`; when the original was already lossy and records
      its ratios and methods (a lossy transfer syntax records them in the kept bytes' native
      version), ours are appended to them (the history DICOM asks for);
    * a new SOP Instance UID per file (also Media Storage SOP Instance UID) and a new Series
      Instance UID for the series (``pydicom.uid.generate_uid``);
    * Image Type value 1 DERIVED (added as DERIVED\\PRIMARY when missing), and Frame Type value 1
      DERIVED in the functional groups of an enhanced file;
    * the derivation: Derivation Description (the codec, its model, quality and ratio),
      Derivation Code Sequence (DCM 113040 "Lossy Compression") and a Source Image Sequence
      item referencing the original SOP instance (DCM 121320 "Uncompressed predecessor", or
      121330 "Lossy compressed predecessor") -- at the top level of a classic image, in a
      Derivation Image Sequence of the functional groups of an enhanced one;
    * Smallest/Largest Image Pixel Value, when present, the file's decoded range, and Smallest/
      Largest Pixel Value in Series the series' (:meth:`SeriesFiles.finish`, once every file is
      built), each with its original VR;
    * a new file meta (this file's UIDs and transfer syntax, pydicom's implementation UID);
      group length elements are not written (pydicom writes none: they are retired).

    A ``.bmz`` written before the kept bytes (DICOM meta layout 1, :mod:`bmz.io.dicom.legacy`)
    gives its files as it always did: rebuilt from the DICOM-JSON it holds, without the binary
    elements over 64 KiB its encoder dropped (each omission noted).
    """
    return SeriesFiles(volume, lossy, notes, where)


def _dicom_part(meta: dict) -> dict:
    """``meta["dicom"]`` of a Volume's meta (or ``meta`` itself when it is that part), of
    either layout."""
    part = meta.get("dicom", meta) if isinstance(meta, dict) else None
    if not isinstance(part, dict) or not ("kept" in part or "datasets" in part):
        raise ValueError("not the meta of a DICOM volume (no 'dicom' part with 'kept' or "
                         "'datasets')")
    return part


class SeriesFiles:
    """The files :func:`series_files` makes. After iterating, :attr:`unfinished` names the
    files whose series-wide values :meth:`finish` must still set (lossy output only)."""

    def __init__(self, volume: Volume, lossy: LossyCoding, notes: list[tuple[str, str]],
                 where: str):
        check_dicom_source(volume.source, where)
        self.volume, self.lossy, self.notes, self.where = volume, lossy, notes, where
        try:
            part = _dicom_part(volume.meta)
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        files, frames = part.get("files"), part.get("frames")
        n = int(volume.data.shape[0])
        if not isinstance(files, list) or not isinstance(frames, list):
            raise FormatError(f"{where}: DICOM meta: no 'files' and 'frames'")
        if len(frames) != n:
            raise OutputError(f"{where}: DICOM output needs every slice of the series (the volume "
                              f"holds {n} of {len(frames)}); decode it whole, without --slices")
        self.names = [_safe_name(f, where) for f in files]
        if len(set(self.names)) != len(self.names):
            raise FormatError(f"{where}: DICOM meta: two files share a name")
        counts = [0] * len(files)
        seen: set[tuple[int, int]] = set()
        for k, fr in enumerate(frames):
            if not (isinstance(fr, list) and len(fr) == 2 and all(isinstance(v, int) for v in fr)
                    and 0 <= fr[0] < len(files) and fr[1] >= 0 and tuple(fr) not in seen):
                raise FormatError(f"{where}: DICOM meta: slice {k}: bad [file, frame] {fr!r:.60}")
            seen.add(tuple(fr))
            counts[fr[0]] += 1
        for (fi, fr) in frames:
            if fr >= counts[fi]:
                raise FormatError(f"{where}: DICOM meta: {self.names[fi]} has {counts[fi]} "
                                  f"frames, a slice claims frame {fr + 1}")
        self.frames, self.counts = frames, counts
        hw = tuple(int(v) for v in volume.data.shape[1:])
        self.store: KeptStore | None = None
        self.legacy: list[dict] | None = None
        if "kept" in part:
            self.store = self._open_store(part, len(files))
            self.plans = [self._kept_plan(i, counts[i], hw) for i in range(len(files))]
        else:
            try:
                self.legacy = legacy.dicom_datasets(volume.meta)
                file_metas = legacy.dicom_file_meta(volume.meta)
            except ValueError as e:
                raise FormatError(f"{where}: {e}") from None
            if len(self.legacy) != len(files) or (file_metas and len(file_metas) != len(files)):
                raise FormatError(f"{where}: DICOM meta: 'files' and 'datasets' do not match")
            self.plans = [legacy.plan(d, self.names[i], counts[i], hw, where)
                          for i, d in enumerate(self.legacy)]
            for plan, fm in zip(self.plans, file_metas or [{}] * len(files)):
                plan["ts"] = str((fm.get("00020010") or {}).get("Value", [""])[0]) if fm else ""
        self.series_uid = generate_uid()
        self.series_range: list[int] | None = None
        self.unfinished: list[str] = []

    def _open_store(self, part: dict, n_files: int) -> "KeptStore":
        attachment = self.volume.attachment
        if attachment is None:
            raise FormatError(f"{self.where}: the .bmz holds no DICOM kept bytes (its attachment "
                              "is missing)")
        try:
            store = KeptStore(part["kept"], attachment)
        except ValueError as e:
            raise FormatError(f"{self.where}: {e}") from None
        if len(store) != n_files:
            raise FormatError(f"{self.where}: DICOM meta: {n_files} files, kept bytes of "
                              f"{len(store)}")
        return store

    def _kept_plan(self, i: int, n_frames: int, hw: tuple) -> dict[str, Any]:
        """What writing file ``i`` needs, checked against the volume."""
        assert self.store is not None
        pix, name = self.store.pixels(i), self.names[i]
        if (pix["rows"], pix["cols"]) != hw or pix["frames"] != n_frames:
            raise FormatError(f"{self.where}: {name}: {pix['frames']} frame(s) of "
                              f"{pix['rows']}x{pix['cols']} pixels, but the volume holds "
                              f"{n_frames} of {hw[0]}x{hw[1]}")
        stored, signed = int(pix["stored"]), bool(pix["signed"])
        return {"bits_stored": stored, "signed": signed, "alloc": int(pix["alloc"]),
                "min": -(1 << (stored - 1)) if signed else 0,
                "max": (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1,
                "ts": self.store.files[i].get("ts", "")}

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        pending: dict[int, list[np.ndarray | None]] = {}
        ranges: dict[int, list[int]] = {}
        for k, (fi, fr) in enumerate(self.frames):
            plan, name = self.plans[fi], self.names[fi]
            s = np.asarray(self.volume.data[k])
            lo, hi = int(s.min()), int(s.max())
            if not self.lossy.lossless and (lo < plan["min"] or hi > plan["max"]):
                raise OutputError(
                    f"{self.where}: slice {k} ({name}, frame {fr + 1}): values {lo}..{hi} do not "
                    f"fit BitsStored={plan['bits_stored']} "
                    f"({'signed' if plan['signed'] else 'unsigned'}) of the original")
            buf = pending.setdefault(fi, [None] * self.counts[fi])
            buf[fr] = s
            r = ranges.setdefault(fi, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            sr = self.series_range
            self.series_range = [lo, hi] if sr is None else [min(sr[0], lo), max(sr[1], hi)]
            if all(b is not None for b in buf):
                values = np.stack(pending.pop(fi))  # type: ignore[arg-type]
                yield fi, name, self._file(fi, values, ranges.pop(fi))

    def _file(self, fi: int, values: np.ndarray, value_range: list[int]) -> bytes:
        name, plan = self.names[fi], self.plans[fi]
        if self.store is not None and self.lossy.lossless:
            data = self.store.restore(fi, values, lossless=True)
            if sha256(data) != self.store.expected_sha256(fi):
                raise FormatError(f"{self.where}: {name}: the restored file is not the one kept "
                                  "at encode time (SHA-256 differs); the .bmz is damaged")
            return data
        if self.store is not None:
            ds = pydicom.dcmread(io.BytesIO(self.store.restore(fi, values, lossless=False)),
                                 force=True)
            out_ts = _written_ts(ds)
        else:
            ds = legacy.legacy_dataset(self.legacy[fi], name, plan["ts"], self.notes,
                                             self.where)
            out_ts = ExplicitVRLittleEndian
        if not str(ds.get("SOPClassUID", "")).strip():
            raise OutputError(f"{self.where}: {name}: the original has no SOP Class UID; cannot "
                              "write a valid DICOM file")
        enhanced = ("SharedFunctionalGroupsSequence" in ds
                    or "PerFrameFunctionalGroupsSequence" in ds)
        derive(ds, plan["ts"], self.lossy, self.series_uid, enhanced, value_range,
               plan["signed"], name, self.notes)
        if self.store is None or not UID(out_ts).is_little_endian:
            if self.store is not None:  # a big-endian original: written little endian
                to_little_endian(ds)
                out_ts = ExplicitVRLittleEndian
            dt = np.dtype(f"<{'i' if plan['signed'] else 'u'}{plan['alloc'] // 8}")
            pixels = np.ascontiguousarray(values.astype(dt)).tobytes()
            ds.PixelData = pixels + (b"\x00" if len(pixels) % 2 else b"")
            ds["PixelData"].VR = "OB" if plan["alloc"] == 8 else "OW"
        ds.file_meta = file_meta(ds, out_ts)
        if not self.lossy.lossless and ("SmallestPixelValueInSeries" in ds
                                        or "LargestPixelValueInSeries" in ds):
            self.unfinished.append(name)
        return _dataset_bytes(ds, name)

    def finish(self, name: str, data: bytes) -> bytes:
        """File ``name`` (bytes this iterable gave) with Smallest/Largest Pixel Value in Series
        set to the whole series' decoded range (call it once every file has been made)."""
        assert self.series_range is not None
        ds = pydicom.dcmread(io.BytesIO(data))
        fi = self.names.index(name)
        set_series_range(ds, *self.series_range, self.plans[fi]["signed"], name, self.notes)
        return _dataset_bytes(ds, name)


def _written_ts(ds: "Dataset") -> str:
    """The transfer syntax ``ds`` was read in: its file meta's, or (a file without one) the
    native syntax of its encoding."""
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian) if little is not False else "1.2.840.10008.1.2.2"


def _dataset_bytes(ds: "Dataset", name: str) -> bytes:
    buf = io.BytesIO()
    if not isinstance(ds, FileDataset):
        ds = FileDataset(name, ds, preamble=b"\x00" * 128, file_meta=ds.file_meta)
    if ds.preamble is None:
        ds.preamble = b"\x00" * 128
    # dcmwrite, not save_as: save_as refuses to write a big-endian original little endian
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _safe_name(name: Any, where: str) -> str:
    """A stored file name, checked to stay inside the output folder."""
    p = PurePosixPath(name) if isinstance(name, str) else None
    if (p is None or not name or p.is_absolute() or ".." in p.parts or "\\" in name
            or any(part.startswith(".") for part in p.parts)):
        raise FormatError(f"{where}: DICOM meta: file name {name!r:.80} is not a plain relative "
                          "name")
    return p.as_posix()
