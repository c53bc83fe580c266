"""bmz's Python API: arrays ↔ ``.bmz`` bytes, files ↔ files. The CLI is a thin layer on this.

>>> data = bmz.compress(volume)               # volume: 2-D or 3-D integer array, slices on axis 0
>>> back = bmz.decompress(data)                    # same dtype and shape
>>> part = bmz.decompress(data, slices=range(10, 20))
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from . import _threads, metrics
from ._version import __version__
from ._fileutil import check_output_path
from .bitstream import BmzWriter
from .codec import chunks, pipeline, zoo
from .errors import BmzError, InputError, ModelError, OutputError
from .file import MAX_SLICE_VOXELS, BmzFile, slice_indices

# bmz.io (nibabel, pydicom, SciPy) and pydicom are imported inside the functions that read or write
# image files: ``import bmz`` for arrays ↔ bytes stays light.


@dataclass
class CodingReport:
    """What an encode or decode did: sizes and rates."""

    path: str | None
    shape: tuple
    dtype: str
    n_bytes: int
    raw_bytes: int
    slice_bytes: list[int] = field(default_factory=list)
    #: filled by ``encode_file(..., verify=True)``: the written file decoded and compared
    psnr: float | None = None
    max_error: int | None = None
    #: filled by ``decode_file`` to a DICOM folder: what the output could not keep (one line each)
    notes: list[str] = field(default_factory=list)

    @property
    def bpp(self) -> float:
        return 8.0 * self.n_bytes / max(1, int(np.prod(self.shape)))

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(1, self.n_bytes)


def _check_array(array, name: str = "array"):
    """``array`` (or a :class:`~bmz.io.SliceStack`) checked for encoding → (it, (min, max))."""
    from .io import SliceStack

    a = array if isinstance(array, SliceStack) else np.asarray(array)
    if a.dtype == bool:
        raise InputError(f"{name}: boolean arrays are not supported; convert to uint8")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f":
            raise InputError(f"{name}: dtype {a.dtype} is floating point; bmz encodes integer images "
                             f"(round or cast to an integer dtype first)")
        raise InputError(f"{name}: dtype {a.dtype} is not an integer image dtype")
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: shape {a.shape} — bmz encodes 2-D images and 3-D volumes "
                         f"(slices along axis 0)")
    if a.size == 0:
        raise InputError(f"{name}: empty array of shape {a.shape}")
    if a.shape[-1] * a.shape[-2] > MAX_SLICE_VOXELS:
        raise InputError(f"{name}: slices of {a.shape[-2]}×{a.shape[-1]} voxels; bmz encodes slices "
                         f"of at most {MAX_SLICE_VOXELS} voxels (4096×4096)")
    if isinstance(a, SliceStack):
        if a.vmin is None or a.vmax is None:  # one pass, a slice at a time
            lo_hi = [(int(s.min()), int(s.max())) for s in a]
            a.vmin, a.vmax = min(v[0] for v in lo_hi), max(v[1] for v in lo_hi)
        vmin, vmax = int(a.vmin), int(a.vmax)
    else:
        vmin, vmax = int(a.min()), int(a.max())
    if vmax - vmin > 65535:
        raise InputError(f"{name}: value range {vmin}..{vmax} needs more than 16 bits; "
                         f"bmz encodes bit depths 1 to 16")
    return a, (vmin, vmax)


def check_fidelity_options(quality, max_error, lossless: bool, base_quality,
                           keep_encapsulated: bool = False) -> None:
    """Refuse option combinations that mean nothing (the CLI and the API refuse the same):
    ``quality`` sets the lossy quality, ``base_quality`` (``None`` or ``"auto"``: unset) the base
    layer of a bounded-error file (``max_error`` / ``lossless``), ``keep_encapsulated`` keeps
    compressed DICOM originals byte for byte in a lossless file."""
    bounded = max_error is not None or lossless
    if bounded and quality is not None:
        raise InputError("quality (--quality) sets the lossy quality; with max_error / lossless "
                         "(--max-error / --lossless) the learned base layer's quality is "
                         "base_quality (--base-quality: auto, 0 or one of the model's levels)")
    if base_quality not in (None, "auto") and not bounded:
        raise InputError("base_quality (--base-quality) needs max_error or lossless "
                         "(--max-error D or --lossless)")
    lossless_only = lossless or (max_error is not None and not isinstance(max_error, bool)
                                 and max_error == 0)
    if keep_encapsulated and not lossless_only:
        raise InputError("keep_encapsulated (--keep-encapsulated) keeps compressed DICOM pixel "
                         "bytes for a lossless decode; it needs lossless (--lossless)")


def _quality_index(model, quality: int) -> int:
    if not isinstance(quality, (int, np.integer)) or not 1 <= quality <= model.n_qualities:
        raise InputError(f"quality must be an integer from 1 to {model.n_qualities}, got {quality!r}")
    return int(quality) - 1


def _group_size(model, model_name: str, group: int | None, bounded: bool = False) -> int:
    """The slice group size G to code with: ``group``, or the default — for a bounded-error file
    (``bounded``: its residual coder groups slices, whatever the model)
    ``chunks.BOUNDED.DEFAULT_GROUP``, else the model's (its card's ``default_group``; 1 = every
    slice on its own)."""
    inter = getattr(model, "inter_slice", False)
    mx = chunks.GROUPED.MAX_GROUP
    if group is None:
        if bounded:
            return chunks.BOUNDED.DEFAULT_GROUP
        return zoo.default_group(model_name) if inter else 1
    if not isinstance(group, (int, np.integer)) or isinstance(group, bool) or not 1 <= group <= mx:
        raise InputError(f"group must be an integer from 1 to {mx}, got {group!r}")
    if group > 1 and not inter and not bounded:
        raise InputError(f"model {model_name} codes every slice on its own: --group {group} needs a "
                         "model with inter-slice context (e.g. hyperprior-ctx)")
    return int(group)


def _dicom_notes(source: str, source_meta: dict | None, lossless: bool) -> tuple[dict | None, list[str]]:
    """A DICOM series' ``source_meta`` with the notes of what a decode of this file (lossless or
    not) cannot give back as it was, and those notes (``[]`` for other sources)."""
    part = (source_meta or {}).get("dicom") if source == "dicom" else None
    if not isinstance(part, dict) or "kept" not in part:
        return source_meta, []
    from .io.dicom import kept_notes

    notes = kept_notes(part["kept"], part.get("files", []), lossless=lossless)
    return {**source_meta, "dicom": {**part, "notes": notes}}, notes


def _encode_to(writer_dst, array: np.ndarray, quality: int, model_name: str | None,
               source: str, source_meta: dict | None, progress: bool, force: bool,
               name: str, max_error: int | None = None, base_quality="auto",
               group: int | None = None, attachment: bytes | None = None,
               threads: int | None = None) -> CodingReport:
    source_meta, notes = _dicom_notes(source, source_meta, max_error == 0)
    a, (vmin, vmax) = _check_array(array, name)
    vol = a if a.ndim == 3 else a[None]
    mapping = pipeline.mapping_for_range(vmin, vmax)
    if model_name is None:  # lossy: the native-precision model for > 8 bits; bounded: the flagship
        model_name = zoo.DEFAULT_MODEL if max_error is not None else zoo.default_model(mapping["bits"])
    model, sha = zoo.load_model(model_name)
    if max_error is not None:  # guaranteed fidelity: a bounded-error file in slice groups
        G = _group_size(model, model_name, group, bounded=True)
        enc = chunks.BOUNDED.Encoder(model, mapping, max_error,
                                     chunks.BOUNDED.check_base_quality(base_quality, model), G)
        with pipeline.single_thread():
            quality = enc.choose(vol, threads)
    else:
        if quality is None:
            quality = zoo.default_quality(model.lambdas)
        qi = _quality_index(model, quality)
        if getattr(model, "inter_slice", False):  # slice groups (chunk format 5)
            enc = chunks.GROUPED.encoder(model, mapping, qi, _group_size(model, model_name, group))
        else:
            _group_size(model, model_name, group)  # refuses a group > 1
            enc = chunks.LOSSY.encoder(model, mapping, qi)
    codec = {"model": model_name, "weights_sha256": sha, "quality": int(quality), **enc.codec_fields()}
    # every chunk, in order, coded on `threads` threads (a bounded window of slices in flight)
    encoded = enc.chunks(vol, threads) if hasattr(enc, "chunks") else None
    rep_ = _write_chunks(writer_dst, a, vol, mapping, codec, source, source_meta, progress, force,
                         enc.encode_slice, attachment, encoded)
    rep_.notes = notes
    return rep_


def _write_chunks(writer_dst, a, vol, mapping: dict, codec: dict, source: str,
                  source_meta: dict | None, progress: bool, force: bool, encode_slice,
                  attachment: bytes | None = None, encoded=None) -> CodingReport:
    """Write the ``.bmz`` of ``vol`` with ``codec`` metadata, chunk ``k`` = ``encode_slice(vol[k])``
    (or the next of the iterator ``encoded``)."""
    meta = {"bmz_version": __version__, "shape": list(a.shape), "dtype": a.dtype.str,
            "source": source, "source_meta": source_meta or {}, "intensity": mapping, "codec": codec}
    sizes = []
    # one torch thread (here, and in each worker of `encoded`): the same bytes for any count
    with pipeline.single_thread(), BmzWriter(writer_dst, meta, vol.shape[0], force=force,
                                             attachment=attachment) as w:
        slices: Iterable[int] = range(vol.shape[0])
        if progress and vol.shape[0] > 1:  # only once the output is open: errors come first
            slices = tqdm(slices, desc="encode", unit="slice", leave=False)
        try:
            for k in slices:
                chunk = encode_slice(vol[k]) if encoded is None else next(encoded)
                sizes.append(len(chunk))
                w.add(chunk)
        finally:
            if encoded is not None:
                encoded.close()  # an error: the slices not started are dropped
    # n_bytes is filled in by the caller that knows where the bytes went
    return CodingReport(None, tuple(a.shape), a.dtype.str, 0, a.nbytes, sizes)


def compress(array: np.ndarray, quality: int | None = None, model: str | None = None, *,
             source: str = "numpy", source_meta: dict | None = None,
             max_error: int | None = None, lossless: bool = False,
             base_quality: int | str = "auto", group: int | None = None,
             threads: int | None = None) -> bytes:
    """Encode a 2-D or 3-D integer array (slices along axis 0) → a complete ``.bmz`` file as bytes.

    ``quality``: 1 (smallest) .. the model's number of levels; default: the model's default
    (:func:`bmz.codec.zoo.default_quality`; the rate and PSNR it gives: the model cards).

    ``max_error=δ`` (stored units, ≥ 0) guarantees ``|decoded − original| ≤ δ`` on every voxel;
    ``lossless=True`` is ``δ = 0`` (every bit kept). Those files hold a learned base layer at
    ``base_quality`` (``"auto"``: whichever of none or the lowest qualities codes smaller; 0:
    none; ``quality`` is then unused) plus a residual coded to the bound (docs/FORMAT.md §10.2).

    ``group=G`` (models with inter-slice context, e.g. ``hyperprior-ctx``): slices are coded in
    groups of G consecutive slices, each with the previous one as context; decoding one slice
    then reads at most G − 1 others. Default: the model's (its card's ``default_group``).

    ``threads``: slices (and slice groups) coded in parallel (default: every core). The bytes
    are identical for any number: each slice's float arithmetic runs on one thread whatever the
    count, and a slice coded with its predecessor as context waits for it."""

    check_fidelity_options(quality, max_error, lossless, base_quality)
    delta = chunks.BOUNDED.check_max_error(max_error, lossless)
    threads = _threads.resolve(threads)
    buf = io.BytesIO()
    _encode_to(buf, array, quality, model, source, source_meta, progress=False, force=True,
               name="array", max_error=delta, base_quality=base_quality, group=group,
               threads=threads)
    return buf.getvalue()


class _Progress:
    """A tqdm bar advanced by hand (slices decoded on demand); a no-op when off."""

    def __init__(self, total: int, on: bool):
        self.bar = None
        if on and total > 1:
            self.bar = tqdm(total=total, desc="decode", unit="slice", leave=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _decoded_stack(f: BmzFile, slices=None, progress: bool = False, skip_damaged: bool = False,
                   threads: int | None = 1):
    """:meth:`BmzFile.stack` with a progress bar → (stack, damaged, bar); close the bar after."""
    bar = _Progress(len(slice_indices(f.n_slices, slices)), progress)
    stack, damaged = f.stack(slices, skip_damaged, on_decoded=bar.update, threads=threads)
    return stack, damaged, bar


def decompress(data: bytes, slices: int | slice | Sequence[int] | None = None,
               threads: int | None = None, device: str | None = None) -> np.ndarray:
    """Decode ``.bmz`` bytes → the array in its original dtype and shape (a 2-D original comes back
    2-D when all slices are decoded). ``slices`` selects slices (int, slice, or indices);
    ``device``: ``"cuda"`` runs the synthesis on the GPU (the same array; :class:`BmzFile`)."""
    with BmzFile(data, name="<bytes>", device=device) as f:
        return f.read(slices, threads=threads)


def encode_file(src: str | os.PathLike, dst: str | os.PathLike, quality: int | None = None,
                model: str | None = None, series: str | None = None, force: bool = True,
                progress: bool = False, verify: bool = False, *, max_error: int | None = None,
                lossless: bool = False, base_quality: int | str = "auto",
                group: int | None = None, keep_encapsulated: bool = False,
                threads: int | None = None) -> CodingReport:
    """Read a NIfTI / DICOM / ``.npy`` image and write its ``.bmz`` file (atomically).

    With ``verify``, the written file is decoded and compared with the input: the report's
    ``psnr`` (peak = volume max − min) and ``max_error`` are filled in. ``max_error``,
    ``lossless``, ``base_quality``: guaranteed fidelity, ``group``: slice groups, as in
    :func:`compress`.

    ``threads``: slices coded (and, with ``verify``, decoded) in parallel (default: every core;
    the bytes are identical for any number). The input streams through: slices are read in
    order and a bounded window of them is in flight, never the volume (``2 × threads`` slices;
    bounded-error slice groups, which keep two threads busy each: enough whole groups for every
    thread).

    A DICOM series keeps every file's bytes but its pixel data (the file's attachment,
    :mod:`bmz.io.dicom.kept`): a ``lossless`` file decodes to the original files (byte-identical
    for native transfer syntaxes; for compressed ones every element identical with native pixel
    data, or byte-identical with ``keep_encapsulated``, which also keeps their compressed pixel
    bytes). The report's ``notes`` say what a decode of this file cannot give back as it was."""
    from . import io as bio

    check_fidelity_options(quality, max_error, lossless, base_quality, keep_encapsulated)
    delta = chunks.BOUNDED.check_max_error(max_error, lossless)
    threads = _threads.resolve(threads)
    check_output_path(dst, force=force)  # fail before the work, not after
    # NIfTI and .npy stream slice by slice
    vol = bio.read(src, series=series, lazy=True, keep_encapsulated=keep_encapsulated)
    try:
        # io always gives (n, H, W); a 2-D original (e.g. 2-D npy) is recorded by its source meta
        rep = _encode_to(dst, vol.data, quality, model, vol.source, vol.meta, progress, force,
                         str(src), max_error=delta, base_quality=base_quality, group=group,
                         attachment=vol.attachment, threads=threads)
        rep.path = str(dst)
        rep.n_bytes = os.path.getsize(dst)
        if verify:
            rep.psnr, rep.max_error = _compare(vol.data, dst, progress, threads)
    finally:
        if isinstance(vol.data, bio.SliceStack):
            vol.data.close()
    return rep


def _compare(original, bmz_path, progress: bool, threads: int | None = 1) -> tuple[float, int]:
    """PSNR (peak = the original's max − min) and max |error| of a written file against the
    original (array or SliceStack), one slice at a time (decoded on ``threads`` threads)."""
    sse, max_err, lo, hi = 0, 0, None, None
    with BmzFile(bmz_path) as f:
        back, _, bar = _decoded_stack(f, None, progress, threads=threads)
        try:
            with pipeline.single_thread():
                for k in range(back.shape[0]):
                    a = np.asarray(original[k]).astype(np.int64)
                    d = a - back[k].astype(np.int64)
                    sse += int(np.sum(d * d))
                    max_err = max(max_err, int(np.abs(d).max()))
                    lo = int(a.min()) if lo is None else min(lo, int(a.min()))
                    hi = int(a.max()) if hi is None else max(hi, int(a.max()))
        finally:
            back.close()
            bar.close()
    return metrics.psnr_from_mse(sse / max(1, back.size), (hi or 0) - (lo or 0)), max_err


def decode_file(src: str | os.PathLike, dst: str | os.PathLike,
                slices: int | slice | Sequence[int] | None = None, force: bool = True,
                progress: bool = False, skip_damaged: bool = False,
                threads: int | None = None, device: str | None = None) -> tuple[CodingReport, list[int]]:
    """Decode a ``.bmz`` file to ``dst`` (.nii, .nii.gz, .npy by suffix) → (report, damaged slices).

    ``threads``: slices decoded in parallel (default: every core; the output is identical for
    any number), a bounded window of them ahead of the writer. ``device``: ``"cuda"`` runs the
    synthesis on the GPU (the same output; :class:`BmzFile`).

    A NIfTI original is restored with its header, affine and dtype. A DICOM original can also be
    decoded to a folder (``dst`` an existing folder, ending in ``/`` or without suffix): from a
    lossless file the original files, otherwise a derived, lossy-marked DICOM series
    (:func:`bmz.io.dicom.write_dicom`; all slices only). The report's ``notes`` say what the
    output could not give back as it was."""
    from . import io as bio

    if bio.is_folder_output(dst):  # a DICOM series: checked before the work too
        _check_dicom_output(src, dst, slices, force)
    else:
        check_output_path(dst, force=force)  # fail before the work, not after
    with BmzFile(src, device=device) as f:
        # streamed: the writer pulls one decoded slice at a time (the volume is never held);
        # a damaged slice aborts the write and removes the partial output (or is skipped)
        stack, damaged, bar = _decoded_stack(f, slices, progress, skip_damaged, threads)
        folder = bio.is_folder_output(dst)
        vol = bio.Volume(data=stack, source=f.source, meta=f.source_meta, path=str(src),
                         attachment=f.attachment() if folder else None)
        try:
            with pipeline.torch_threads(f.transform_threads(slices, threads)):
                # (the lossy coding is recorded in DICOM output only: bmz.io.dicom is not
                # imported, nor pydicom, to write .npy or NIfTI)
                lossy = _lossy_coding(f.meta, f.file_size) if folder else None
                notes = bio.write(vol, dst, force=force, lossy=lossy)
                if folder:  # what the encoder said a decode cannot give back
                    notes = list(_stored_notes(f.meta)) + notes
        finally:
            stack.close()
            bar.close()
    rep = CodingReport(str(dst), stack.shape, stack.dtype.str, os.path.getsize(src), stack.nbytes)
    rep.notes = notes
    return rep, sorted(damaged)


def verify(src: str | os.PathLike | bytes) -> dict:
    """Check every checksum of a ``.bmz`` file without decoding: header, metadata, index (raise
    :class:`FormatError` when damaged — nothing can be trusted then) and each slice's chunk
    (reported in ``damaged``, with ``affected``: the intact slices coded with a damaged one as
    context) and the attachment's (``attachment_ok``: ``False`` when damaged, ``True`` when intact
    or absent). Also says whether the weights the file names are installed here."""
    with BmzFile(src, check=False) as f:
        f.check_index_count()  # an index that disagrees with the shape: nothing decodes right
        damaged = f.verify()
        attachment_ok = f.verify_attachment()
        meta = f.meta
        n = f.n_index_slices
        codec = meta.get("codec") or {}
        affected = _dependents(f, damaged, codec) if damaged else []
    model_ok, model_note = True, ""
    # e.g. a bounded-error file without a base layer decodes without the model
    if chunks.file_needs_model(codec):
        try:
            path = zoo.weights_for(codec["model"], codec.get("weights_sha256"))
            if path.parent.name == zoo.ARCHIVE:
                model_note = f"decodes with archived weights {path}"
        except ModelError as e:
            model_ok, model_note = False, str(e)
    return {"n_slices": n, "damaged": damaged, "affected": affected,
            "ok": not damaged and attachment_ok, "attachment_ok": attachment_ok,
            "model": codec.get("model"), "model_available": model_ok, "model_note": model_note}


def _dependents(f: BmzFile, damaged: list[int], codec: dict) -> list[int]:
    """Intact slices that cannot be decoded because they are coded with a damaged slice as
    context (slice groups, formats 5 and 6: the chunks after it in its group that each need the
    one before, :func:`bmz.codec.chunks.context_slices`); empty for independent slices."""
    g = codec.get("group")
    if not chunks.grouped(codec) or not isinstance(g, int) or isinstance(g, bool) or g < 1:
        return []
    n, bad, out = f.n_index_slices, set(damaged), []
    for j in sorted(bad):
        k = j + 1
        while k < n and k % g and k not in bad:
            try:
                if k - 1 not in chunks.context_slices(codec, k, f.chunk(k)):
                    break
            except BmzError:
                break
            out.append(k)
            k += 1
    return sorted(set(out))


def info(src: str | os.PathLike | bytes) -> dict:
    """Header facts of a ``.bmz`` file without decoding (no torch import)."""
    with BmzFile(src, check=False) as f:
        meta = f.meta
        sizes = f.chunk_sizes()
        size = f.file_size
        version = f.version
        attachment = (meta.get("attachment") or {}).get("length") if f.has_attachment else None
    shape = meta.get("shape", [])
    n_vox = int(np.prod(shape)) if shape else 0
    raw = n_vox * np.dtype(meta.get("dtype", "u1")).itemsize
    return {
        "shape": shape, "dtype": meta.get("dtype"), "source": meta.get("source"),
        "model": meta.get("codec", {}).get("model"), "quality": meta.get("codec", {}).get("quality"),
        "weights_sha256": meta.get("codec", {}).get("weights_sha256"),
        "intensity": meta.get("intensity"), "bytes": size,
        "bpp": 8.0 * size / max(1, n_vox), "ratio": raw / max(1, size),
        "slice_bytes": sizes, "bmz_version": meta.get("bmz_version"),
        "format_version": f"{version[0]}.{version[1]}", "chunk_format": meta.get("codec", {}).get("chunk_format"),
        # guaranteed fidelity (bounded-error files): δ in stored units, 0 = lossless; else None
        "max_error": meta.get("codec", {}).get("max_error"),
        # slice groups (chunk formats 5 and 6); None: every slice on its own
        "group": meta.get("codec", {}).get("group"),
        "attachment_bytes": attachment,
        # a DICOM series: its files, how they come back, what a decode cannot give back
        "dicom": _dicom_info(meta, attachment),
    }


def _dicom_info(meta: dict, attachment: int | None) -> dict | None:
    """What ``bmz info`` says of a DICOM-origin file: files, how a decode gives them back (by
    restore kind: ``identical`` byte for byte, ``elements`` every element with native pixels),
    the kept bytes, the notes."""
    part = (meta.get("source_meta") or {}).get("dicom") if meta.get("source") == "dicom" else None
    if not isinstance(part, dict):
        return None
    files = part.get("files") or []
    out: dict = {"files": len(files), "layout": part.get("layout", 1), "notes": _stored_notes(meta)}
    kept = part.get("kept")
    if isinstance(kept, dict):
        entries = kept.get("files") or []
        out["kept_bytes"] = attachment
        out["kept_unpacked_bytes"] = kept.get("unpacked")
        out["kept_encapsulated_bytes"] = kept.get("verbatim")
        restore: dict[str, int] = {}
        for f in entries:
            restore[str(f.get("restore"))] = restore.get(str(f.get("restore")), 0) + 1
        out["restore"] = restore
        out["transfer_syntaxes"] = sorted({str(f.get("ts")) for f in entries})
    return out


def _stored_notes(meta: dict) -> list[str]:
    """The notes the encoder stored for a DICOM series (layout 2), else ``[]``."""
    part = (meta.get("source_meta") or {}).get("dicom")
    notes = part.get("notes") if isinstance(part, dict) and "kept" in part else None
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


# --------------------------------------------------------------------------------------------
# DICOM in and out, in memory
# --------------------------------------------------------------------------------------------


def _lossy_coding(meta: dict, n_bytes: int):
    """How a ``.bmz`` of ``n_bytes`` compressed its volume, for DICOM output: ratio = the raw
    array bytes (the original's uncompressed pixel bytes) over ``n_bytes``, model, quality."""
    from .io.dicom import LossyCoding

    raw = int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["dtype"]).itemsize
    codec = meta["codec"]
    return LossyCoding(ratio=raw / max(1, n_bytes), model=codec["model"], quality=codec["quality"],
                       max_error=chunks.max_error(codec))


def _check_dicom_output(src, dst, slices, force: bool) -> None:
    """Before decoding ``src`` to the DICOM folder ``dst``: a DICOM-origin file, every slice, a
    folder that can be written."""
    from .io import dicom

    dicom.check_dicom_source(info(src).get("source"), os.fspath(dst))
    if slices is not None:
        raise OutputError(f"{os.fspath(dst)}: DICOM output needs every slice of the series; "
                          "decode it whole (without --slices), or decode slices to .nii/.npy")
    dicom.check_output_folder(dst, force)


def compress_dataset(datasets, quality: int | None = None, model: str | None = None, *,
                     max_error: int | None = None, lossless: bool = False,
                     base_quality="auto", keep_encapsulated: bool = False,
                     group: int | None = None, threads: int | None = None) -> bytes:
    """Encode a DICOM series held in memory → a complete ``.bmz`` file as bytes.

    ``max_error`` / ``lossless`` / ``base_quality``: guaranteed fidelity, as for :func:`compress`
    (the same option combinations are refused). A lossless file decodes to the original files
    (:func:`decompress_to_files`): byte-identical for native transfer syntaxes; for compressed
    ones every element identical with native pixel data, or byte-identical with
    ``keep_encapsulated`` (which also keeps their compressed pixel bytes).

    ``datasets``: a pydicom ``Dataset``, a binary file object or ``bytes`` holding a DICOM file,
    or a list of them, all of one series (classic single-frame files, or multi-frame ones).
    Nothing is read from or written to disk. The ``.bmz`` keeps every file's bytes but its pixel
    data (bytes and file objects as given; a ``Dataset`` as ``pydicom.dcmwrite`` writes it), so
    :func:`decompress_to_datasets` / :func:`decompress_to_files` (or ``bmz decode FILE -o
    folder/``) give the series back.

    Raises :class:`InputError` naming the dataset (``dataset 2``...): not DICOM, no pixel data,
    no transfer syntax, colour, 1-bit, several series, slices of different sizes; or an option
    combination that means nothing (``quality`` with ``lossless``...).

    ``threads``: slices coded in parallel (default: every core; the same bytes for any number)."""
    from .io import dicom

    check_fidelity_options(quality, max_error, lossless, base_quality, keep_encapsulated)
    delta = chunks.BOUNDED.check_max_error(max_error, lossless)
    threads = _threads.resolve(threads)
    vol = dicom.read_datasets(datasets, keep_encapsulated=keep_encapsulated)
    buf = io.BytesIO()
    _encode_to(buf, vol.data, quality, model, "dicom", vol.meta, progress=False, force=True,
               name="datasets", max_error=delta, base_quality=base_quality, group=group,
               attachment=vol.attachment, threads=threads)
    return buf.getvalue()


def _series_files(data) -> list[tuple[str, bytes]]:
    """The files of the ``.bmz`` of a DICOM series, in slice order (each at its first slice),
    with the notes of what they could not keep as ``UserWarning``s."""
    from .io import Volume, dicom

    name = "<bytes>" if isinstance(data, (bytes, bytearray, memoryview)) else None
    with BmzFile(data, name=name, check=False) as f:
        if f.meta.get("source") != "dicom":
            raise InputError(f"{f.name}: holds a {f.meta.get('source') or 'non-DICOM'} volume, not "
                             "a DICOM series; decode it with bmz.decompress")
        f.check()
        arr = f.read(slice(None))
        lossy = _lossy_coding(f.meta, f.file_size)
        where = str(f.name)
        attachment = f.attachment()
        meta = f.meta
    vol = Volume(data=arr, source="dicom", meta=meta.get("source_meta", {}), attachment=attachment)
    notes: list[tuple[str, str]] = []
    out = dicom.series_files(vol, lossy, notes, where=where)
    files = sorted(out, key=lambda f: f[0])
    files = [(fi, n, out.finish(n, d) if n in out.unfinished else d) for fi, n, d in files]
    for note in _stored_notes(meta) + dicom.summarise_notes(notes):
        warnings.warn(note, UserWarning, stacklevel=3)
    return [(n, d) for _, n, d in files]


def decompress_to_files(data) -> list[tuple[str, bytes]]:
    """Decode the ``.bmz`` of a DICOM series (``bytes`` or a binary file object) → its files as
    ``(relative name, file bytes)``, in memory, in slice order (each file at its first slice).

    From a lossless file, the original files: byte-identical for native transfer syntaxes (and
    compressed ones kept with ``keep_encapsulated``), every element identical with native pixel
    data for compressed ones; each checked against the SHA-256 recorded at encode time. From a
    lossy or bounded-error file, a derived, lossy-marked series (the rules:
    :func:`bmz.io.dicom.series_files`). What the files cannot give back as it was is warned
    (``UserWarning``, one per note; ``bmz info`` lists the same).

    Raises :class:`InputError` for a ``.bmz`` that does not hold a DICOM series, and the errors of
    :func:`decompress` for damaged files."""
    return _series_files(data)


def decompress_to_datasets(data) -> list:
    """Decode the ``.bmz`` of a DICOM series (``bytes`` or a binary file object) → its files as
    pydicom ``FileDataset`` objects, in memory, in slice order (each file at its first slice):
    :func:`decompress_to_files` read by pydicom, ``ds.filename`` the original file's relative
    name. ``ds.save_as(path_or_buffer, enforce_file_format=True)`` writes one — but pydicom
    drops group length elements and re-orders elements when it writes, so for the files
    themselves (byte-identical from a lossless ``.bmz``) use :func:`decompress_to_files`.

    Raises :class:`InputError` for a ``.bmz`` that does not hold a DICOM series, and the errors of
    :func:`decompress` for damaged files."""
    import pydicom

    out = []
    for name, raw in _series_files(data):
        ds = pydicom.dcmread(io.BytesIO(raw))
        ds.filename = name
        out.append(ds)
    return out


__all__ = ["compress", "decompress", "encode_file", "decode_file", "info", "verify", "CodingReport",
           "BmzError", "compress_dataset", "decompress_to_datasets", "decompress_to_files",
           "check_fidelity_options"]
