"""bmz's Python API: arrays ↔ ``.bmz`` bytes, files ↔ files. The CLI is a thin layer on this.

>>> data = bmz.compress(volume)               # volume: 2-D or 3-D integer array, slices on axis 0
>>> back = bmz.decompress(data)                    # same dtype and shape
>>> part = bmz.decompress(data, slices=range(10, 20))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from . import __version__
from .bitstream import BmzReader, BmzWriter
from .errors import BmzError, FormatError, InputError

#: the format of slice chunks (bmz.codec.pipeline); bump when it changes
#: chunk format of the lossy files bmz writes: 4 (compact learned chunks, kind 3). Format 2 (kind
#: 1) files decode as ever; 3 is bounded error (bmz.codec.bounded); 1 was a never-shipped draft
CHUNK_FORMAT = 4
#: chunk format of files coded in groups of slices by an inter-slice model (codec.group = G):
#: kinds 0x03 (coded alone) and 0x04 (coded with the previous slice as context)
CHUNK_FORMAT_GROUPED = 5
#: lossy chunk formats bmz decodes → the learned chunk kinds their files hold
LEARNED_KIND_OF_FORMAT = {2: (1,), 4: (3,), 5: (3, 4)}
#: the largest slice group bmz writes or accepts
MAX_GROUP = 1024


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


def _quality_index(model, quality: int) -> int:
    if not isinstance(quality, (int, np.integer)) or not 1 <= quality <= model.n_qualities:
        raise InputError(f"quality must be an integer from 1 to {model.n_qualities}, got {quality!r}")
    return int(quality) - 1


def _group_size(model, model_name: str, group: int | None) -> int:
    """The slice group size G to code with: ``group``, or the model's default (its card's
    ``default_group``; 1 = every slice on its own)."""
    from .codec import zoo

    inter = getattr(model, "inter_slice", False)
    if group is None:
        return zoo.default_group(model_name) if inter else 1
    if not isinstance(group, (int, np.integer)) or isinstance(group, bool) or not 1 <= group <= MAX_GROUP:
        raise InputError(f"group must be an integer from 1 to {MAX_GROUP}, got {group!r}")
    if group > 1 and not inter:
        raise InputError(f"model {model_name} codes every slice on its own: --group {group} needs a "
                         "model with inter-slice context (e.g. hyperprior-ctx)")
    return int(group)


def _encode_to(writer_dst, array: np.ndarray, quality: int, model_name: str | None,
               source: str, source_meta: dict | None, progress: bool, force: bool,
               name: str, max_error: int | None = None, base_quality="auto",
               group: int | None = None) -> CodingReport:
    from .codec import pipeline, zoo

    a, (vmin, vmax) = _check_array(array, name)
    vol = a if a.ndim == 3 else a[None]
    mapping = pipeline.mapping_for_range(vmin, vmax)
    model_name = model_name or zoo.DEFAULT_MODEL
    model, sha = zoo.load_model(model_name)
    if max_error is not None:  # guaranteed fidelity: bmz.codec.bounded (chunk format 6)
        from .codec import bounded

        G = bounded.DEFAULT_GROUP if group is None else group
        if not isinstance(G, (int, np.integer)) or isinstance(G, bool) or not 1 <= G <= MAX_GROUP:
            raise InputError(f"group must be an integer from 1 to {MAX_GROUP}, got {group!r}")
        enc = bounded.GroupEncoder(model, mapping, max_error,
                                   bounded.check_base_quality(base_quality, model), int(G))
        with pipeline.single_thread():
            quality = enc.choose(vol)
        codec = {"model": model_name, "weights_sha256": sha, "quality": int(quality),
                 "chunk_format": bounded.CHUNK_FORMAT_GROUPED, "max_error": int(max_error),
                 "residual": bounded.CODER_GROUPED, "group": int(G)}
        return _write_chunks(writer_dst, a, vol, mapping, codec, source, source_meta, progress,
                             force, None, chunks=enc.chunks(vol))
    if quality is None:
        quality = zoo.default_quality(model.lambdas)
    qi = _quality_index(model, quality)
    G = _group_size(model, model_name, group)
    meta = {
        "bmz_version": __version__,
        "shape": list(a.shape),
        "dtype": a.dtype.str,
        "source": source,
        "source_meta": source_meta or {},
        "intensity": mapping,
        "codec": {"model": model_name, "weights_sha256": sha, "quality": int(quality),
                  "chunk_format": CHUNK_FORMAT},
    }
    if getattr(model, "inter_slice", False):  # its files say how slices depend on each other
        meta["codec"].update(chunk_format=CHUNK_FORMAT_GROUPED, group=G)
    sizes = []
    with pipeline.single_thread(), BmzWriter(writer_dst, meta, vol.shape[0], force=force) as w:
        slices: Iterable[int] = range(vol.shape[0])
        if progress and vol.shape[0] > 1:  # only once the output is open: errors come first
            from tqdm import tqdm

            slices = tqdm(slices, desc="encode", unit="slice", leave=False)
        prev = None
        for k in slices:
            chunk, ctx = pipeline.encode_slice_in_group(model, vol[k], mapping, qi,
                                                        prev=prev if k % G else None)
            prev = ctx
            sizes.append(len(chunk))
            w.add(chunk)
    # n_bytes is filled in by the caller that knows where the bytes went
    return CodingReport(None, tuple(a.shape), a.dtype.str, 0, a.nbytes, sizes)


def _write_chunks(writer_dst, a, vol, mapping: dict, codec: dict, source: str,
                  source_meta: dict | None, progress: bool, force: bool, encode_slice,
                  chunks=None) -> CodingReport:
    """Write the ``.bmz`` of ``vol`` with ``codec`` metadata, chunk ``k`` = ``encode_slice(vol[k])``
    (or the next of the iterator ``chunks``)."""
    from .codec import pipeline

    meta = {"bmz_version": __version__, "shape": list(a.shape), "dtype": a.dtype.str,
            "source": source, "source_meta": source_meta or {}, "intensity": mapping, "codec": codec}
    sizes = []
    with pipeline.single_thread(), BmzWriter(writer_dst, meta, vol.shape[0], force=force) as w:
        slices: Iterable[int] = range(vol.shape[0])
        if progress and vol.shape[0] > 1:
            from tqdm import tqdm

            slices = tqdm(slices, desc="encode", unit="slice", leave=False)
        for k in slices:
            chunk = encode_slice(vol[k]) if chunks is None else next(chunks)
            sizes.append(len(chunk))
            w.add(chunk)
    return CodingReport(None, tuple(a.shape), a.dtype.str, 0, a.nbytes, sizes)


def compress(array: np.ndarray, quality: int | None = None, model: str | None = None, *,
             source: str = "numpy", source_meta: dict | None = None,
             max_error: int | None = None, lossless: bool = False,
             base_quality: int | str = "auto", group: int | None = None) -> bytes:
    """Encode a 2-D or 3-D integer array (slices along axis 0) → a complete ``.bmz`` file as bytes.

    ``quality``: 1 (smallest) .. the model's number of levels; default: the model's default
    (:func:`bmz.codec.zoo.default_quality`: for the flagship about 45 dB PSNR at 1.3 bpp on 8-bit MRI).

    ``max_error=δ`` (stored units, ≥ 0) guarantees ``|decoded − original| ≤ δ`` on every voxel;
    ``lossless=True`` is ``δ = 0`` (every bit kept). Those files hold a learned base layer at
    ``base_quality`` (``"auto"``: whichever of none or the lowest qualities codes smaller; 0:
    none; ``quality`` is then unused) plus a residual coded to the bound (docs/FORMAT.md §10.2).

    ``group=G`` (models with inter-slice context, e.g. ``hyperprior-ctx``): slices are coded in
    groups of G consecutive slices, each with the previous one as context; decoding one slice
    then reads at most G − 1 others. Default: the model's (its card's ``default_group``)."""
    import io

    from .codec.bounded import check_max_error

    delta = check_max_error(max_error, lossless)
    buf = io.BytesIO()
    _encode_to(buf, array, quality, model, source, source_meta, progress=False, force=True,
               name="array", max_error=delta, base_quality=base_quality, group=group)
    return buf.getvalue()


def _slice_list(n: int, slices) -> list[int]:
    if slices is None:
        return list(range(n))
    if isinstance(slices, slice):
        return list(range(n))[slices]
    if isinstance(slices, (int, np.integer)):
        slices = [slices]
    out = []
    for k in slices:
        k = int(k)
        if not -n <= k < n:
            raise InputError(f"slice {k} out of range: the volume has {n} slices")
        out.append(k % n)
    return out


def _open(src) -> BmzReader:
    """Open a ``.bmz`` path, bytes or file object; a missing or unreadable path is an InputError."""
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise InputError(f"{src}: no such file")
        if os.path.isdir(src):
            raise InputError(f"{src}: is a folder, expected a .bmz file")
        try:
            return BmzReader(src)
        except OSError as e:
            raise InputError(f"{src}: cannot read: {e.strerror or e}") from None
    return BmzReader(src)


#: the largest slice bmz encodes or decodes (4096 × 4096 voxels; MRI slices are ≤ 1024²): a
#: header claiming more is refused before anything is allocated
MAX_SLICE_VOXELS = 1 << 24


def _checked_meta(name, meta: dict) -> tuple[tuple[int, ...], np.dtype, dict, dict]:
    """The fields decoding relies on, type- and range-checked: a damaged or forged metadata block
    (with a valid checksum) is a FormatError naming the field, never a crash further on."""
    def bad(what: str):
        return FormatError(f"{name}: metadata field {what} is invalid")

    def is_int(v) -> bool:  # a JSON integer (bool is an int subclass in Python, but not one here)
        return isinstance(v, int) and not isinstance(v, bool)

    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3)
            and all(is_int(v) and v >= 0 for v in shape)):
        raise bad(f"'shape' ({shape!r})")
    if shape[-1] * shape[-2] > MAX_SLICE_VOXELS:
        raise bad(f"'shape' ({shape!r}: slices larger than {MAX_SLICE_VOXELS} voxels)")
    try:
        dtype = np.dtype(meta.get("dtype"))
    except (TypeError, ValueError):
        raise bad(f"'dtype' ({meta.get('dtype')!r})") from None
    if dtype.kind not in "iub" or dtype.itemsize > 8:
        raise bad(f"'dtype' ({meta.get('dtype')!r}: not an integer type)")
    mapping = meta.get("intensity")
    keys = ("min", "max", "offset", "scale", "bits")
    if not (isinstance(mapping, dict) and all(is_int(mapping.get(k)) for k in keys)):
        raise bad(f"'intensity' ({mapping!r})")
    info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
    if not (info.min <= mapping["min"] <= mapping["max"] <= info.max and mapping["offset"] == mapping["min"]
            and mapping["scale"] == mapping["max"] - mapping["min"]):
        raise bad(f"'intensity' ({mapping!r}: inconsistent or outside {dtype})")
    codec = meta.get("codec")
    if not isinstance(codec, dict):
        raise bad(f"'codec' ({codec!r})")
    fmt = codec.get("chunk_format")
    bounded = is_int(fmt) and fmt in (3, 6)  # bounded error (bmz.codec.bounded)
    if not (is_int(fmt) and fmt in LEARNED_KIND_OF_FORMAT) and not bounded:
        raise FormatError(f"{name}: slice chunk format {codec.get('chunk_format')!r} is not "
                          f"supported by bmz {__version__}")
    if fmt == CHUNK_FORMAT_GROUPED and not (is_int(codec.get("group")) and 1 <= codec["group"] <= MAX_GROUP):
        raise bad(f"'codec.group' ({codec.get('group')!r})")
    q = codec.get("quality")
    if not (is_int(q) and (0 if bounded else 1) <= q <= 64):
        raise bad(f"'codec.quality' ({q!r})")
    if bounded:
        from .codec.bounded import check_bounded_meta

        check_bounded_meta(name, codec)
    if not isinstance(codec.get("model"), str) or not isinstance(codec.get("weights_sha256"), str):
        raise bad("'codec.model' / 'codec.weights_sha256'")
    return tuple(shape), dtype, mapping, codec


class _Progress:
    """A tqdm bar advanced by hand (slices decoded on demand); a no-op when off."""

    def __init__(self, total: int, on: bool):
        self.bar = None
        if on and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="decode", unit="slice", leave=False)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _decoded_stack(reader: BmzReader, slices=None, progress: bool = False,
                   skip_damaged: bool = False):
    """The decoded ``slices`` of an open reader as a :class:`~bmz.io.SliceStack` that decodes
    each slice when it is asked for (nothing is held) → (stack, meta, damaged, progress bar).

    ``damaged`` fills in as slices are decoded: with ``skip_damaged`` a slice whose chunk fails its
    checksum or cannot be decoded comes out filled with the volume's minimum and its index is
    appended; otherwise its :class:`FormatError` (naming the slice) is raised. Run the decoding
    inside :func:`bmz.codec.pipeline.single_thread` (see :func:`decode_file`)."""
    from .codec import pipeline
    from .io import SliceStack

    meta = reader.meta
    shape, dtype, mapping, codec = _checked_meta(reader.name, meta)
    n = shape[0] if len(shape) == 3 else 1
    if reader.n_slices != n:
        raise FormatError(f"{reader.name}: index holds {reader.n_slices} slices, metadata says {n}")
    hw = shape[-2:]
    ks = _slice_list(n, slices)
    damaged: list[int] = []
    bar = _Progress(len(ks), progress)
    model = None
    fmt = codec.get("chunk_format")
    G = codec["group"] if fmt == CHUNK_FORMAT_GROUPED else 1
    qi = int(codec["quality"]) - 1
    ctx: dict[int, object] = {}  # slice index → its group context (the latest one only)
    bdec = None  # bounded-error files: bmz.codec.bounded.SliceDecoder

    def load_model(chunk: bytes) -> None:
        nonlocal model
        if model is None and ((chunk[:1] and chunk[0] in pipeline.LEARNED_KINDS)
                              or (chunk[:1] == b"\x02" and chunk[1:2] not in (b"", b"\x00"))):
            from .codec import zoo

            model, _ = zoo.load_model(codec["model"], expect_sha256=codec["weights_sha256"])

    def check_kind(k: int, chunk: bytes) -> None:
        if chunk[:1] and chunk[0] in pipeline.LEARNED_KINDS:
            if chunk[0] not in LEARNED_KIND_OF_FORMAT[fmt]:
                raise ValueError(f"chunk kind {chunk[0]} in a file of chunk format {fmt}")
            if chunk[0] == pipeline.CHUNK_LEARNED_INTER and k % G == 0:
                raise ValueError(f"inter-slice chunk at the start of a group of {G}")

    def context_before(k: int):
        """The group context of slice k − 1: the slices from the group's start (or the latest
        context held) entropy-decoded in order, without synthesis."""
        if k % G == 0:
            return None
        start = k - k % G
        held = [j for j in ctx if start <= j < k]
        j0 = max(held) if held else None
        prev = ctx[j0] if j0 is not None else None
        for j in range(start if j0 is None else j0 + 1, k):
            try:
                chunk = reader.chunk(j)
            except FormatError as e:
                raise FormatError(f"{reader.name}: slice {k} of {n}: cannot decode: it is coded "
                                  f"with slice {j} of its group (slices {start}..{min(start + G, n) - 1}) "
                                  f"as context, which is damaged: {e}") from None
            try:
                check_kind(j, chunk)
                load_model(chunk)
                if chunk[:1] == bytes([pipeline.CHUNK_CONSTANT]):
                    prev = None
                    continue
                lat = pipeline.decode_latents(model, chunk, hw, qi, mapping, prev=prev)
                prev = pipeline.group_context(model, lat.symbols["y"], qi)
            except (ValueError, RuntimeError, IndexError, OverflowError) as e:
                raise FormatError(f"{reader.name}: slice {k} of {n}: cannot decode: slice {j} "
                                  f"of its group cannot be decoded: {e}") from None
        return prev

    def model_for(chunk: bytes):
        load_model(chunk)
        return model

    def get(i: int) -> np.ndarray:
        nonlocal bdec
        k = ks[i]
        try:
            chunk = reader.chunk(k)
            load_model(chunk)
            try:
                if fmt in (3, 6) or chunk[:1] in (b"\x02", b"\x05"):  # codec.bounded
                    from .codec import bounded

                    if fmt in (3, 6):
                        bdec = bdec or bounded.SliceDecoder(reader, hw, mapping, codec, model_for, ks)
                        out = bdec.decode(k, chunk).astype(dtype)
                    else:
                        out = bounded.decode_bounded_slice(model, chunk, hw, mapping, codec, dtype)
                else:
                    check_kind(k, chunk)
                    prev = context_before(k) if chunk[:1] == bytes([pipeline.CHUNK_LEARNED_INTER]) else None
                    out, c = pipeline.decode_slice_in_group(model, chunk, hw, mapping, qi, dtype, prev)
                    if G > 1:
                        ctx.clear()
                        ctx[k] = c
            except (ValueError, RuntimeError, IndexError, OverflowError) as e:
                raise FormatError(f"{reader.name}: slice {k} of {n}: cannot decode: {e}") from None
        except FormatError:
            if not skip_damaged:
                raise
            if k not in damaged:
                damaged.append(k)
            out = np.full(hw, mapping["min"], dtype=dtype)
        bar.update()
        return out

    return SliceStack((len(ks), *hw), dtype, get), meta, damaged, bar


def _decode_reader(reader: BmzReader, slices=None, progress: bool = False,
                   skip_damaged: bool = False) -> tuple[np.ndarray, dict, list[int]]:
    """Decode ``slices`` of an open reader → (array (k, H, W), meta, damaged slice indices)."""
    from .codec import pipeline

    stack, meta, damaged, bar = _decoded_stack(reader, slices, progress, skip_damaged)
    # one thread per slice: decoding is integer-exact, so any thread count gives the identical
    # array; one thread is simply faster for MRI-sized slices and never oversubscribes a busy machine
    try:
        with pipeline.single_thread():
            out = np.asarray(stack)
    finally:
        bar.close()
    return out, meta, damaged


def decompress(data: bytes, slices: int | slice | Sequence[int] | None = None) -> np.ndarray:
    """Decode ``.bmz`` bytes → the array in its original dtype and shape (a 2-D original comes back
    2-D when all slices are decoded). ``slices`` selects slices (int, slice, or indices)."""
    with BmzReader(data, name="<bytes>") as r:
        arr, meta, _ = _decode_reader(r, slices)
    if slices is None and len(meta["shape"]) == 2:
        return arr[0]
    return arr


def encode_file(src: str | os.PathLike, dst: str | os.PathLike, quality: int | None = None,
                model: str | None = None, series: str | None = None, force: bool = True,
                progress: bool = False, verify: bool = False, *, max_error: int | None = None,
                lossless: bool = False, base_quality: int | str = "auto",
                group: int | None = None) -> CodingReport:
    """Read a NIfTI / DICOM / ``.npy`` image and write its ``.bmz`` file (atomically).

    With ``verify``, the written file is decoded and compared with the input: the report's
    ``psnr`` (peak = volume max − min) and ``max_error`` are filled in. ``max_error``,
    ``lossless``, ``base_quality``: guaranteed fidelity, ``group``: slice groups, as in
    :func:`compress`."""
    from . import io as bio
    from ._fileutil import check_output_path
    from .codec.bounded import check_max_error

    delta = check_max_error(max_error, lossless)
    check_output_path(dst, force=force)  # fail before the work, not after
    vol = bio.read(src, series=series, lazy=True)  # NIfTI and .npy stream slice by slice
    try:
        # io always gives (n, H, W); a 2-D original (e.g. 2-D npy) is recorded by its source meta
        rep = _encode_to(dst, vol.data, quality, model, vol.source, vol.meta, progress, force,
                         str(src), max_error=delta, base_quality=base_quality, group=group)
        rep.path = str(dst)
        rep.n_bytes = os.path.getsize(dst)
        if verify:
            rep.psnr, rep.max_error = _compare(vol.data, dst, progress)
    finally:
        if isinstance(vol.data, bio.SliceStack):
            vol.data.close()
    return rep


def _compare(original, bmz_path, progress: bool) -> tuple[float, int]:
    """PSNR (peak = the original's max − min) and max |error| of a written file against the
    original (array or SliceStack), one slice at a time."""
    from . import metrics
    from .codec import pipeline

    sse, max_err, lo, hi = 0, 0, None, None
    with _open(bmz_path) as r:
        back, _, _, bar = _decoded_stack(r, None, progress)
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
            bar.close()
    return metrics.psnr_from_mse(sse / max(1, back.size), (hi or 0) - (lo or 0)), max_err


def decode_file(src: str | os.PathLike, dst: str | os.PathLike,
                slices: int | slice | Sequence[int] | None = None, force: bool = True,
                progress: bool = False, skip_damaged: bool = False) -> tuple[CodingReport, list[int]]:
    """Decode a ``.bmz`` file to ``dst`` (.nii, .nii.gz, .npy by suffix) → (report, damaged slices).

    A NIfTI original is restored with its header, affine and dtype. A DICOM original can also be
    decoded to a folder (``dst`` an existing folder, ending in ``/`` or without suffix): a
    derived, lossy-marked DICOM series (:func:`bmz.io.dicom.write_dicom`; all slices only)."""
    from . import io as bio
    from ._fileutil import check_output_path

    from .codec import pipeline

    if bio.is_folder_output(dst):  # a DICOM series: checked before the work too
        _check_dicom_output(src, dst, slices, force)
    else:
        check_output_path(dst, force=force)  # fail before the work, not after
    with _open(src) as r:
        # streamed: the writer pulls one decoded slice at a time (the volume is never held);
        # a damaged slice aborts the write and removes the partial output (or is skipped)
        stack, meta, damaged, bar = _decoded_stack(r, slices, progress, skip_damaged)
        vol = bio.Volume(data=stack, source=meta.get("source", "numpy"),
                         meta=meta.get("source_meta", {}), path=str(src))
        try:
            with pipeline.single_thread():
                notes = bio.write(vol, dst, force=force,
                                  lossy=_lossy_coding(meta, os.path.getsize(src)))
        finally:
            bar.close()
    rep = CodingReport(str(dst), stack.shape, stack.dtype.str, os.path.getsize(src), stack.nbytes)
    rep.notes = notes
    return rep, damaged


def verify(src: str | os.PathLike | bytes) -> dict:
    """Check every checksum of a ``.bmz`` file without decoding: header, metadata, index (raise
    :class:`FormatError` when damaged — nothing can be trusted then) and each slice's chunk
    (reported in ``damaged``). Also says whether the weights the file names are installed here."""
    with _open(src) as r:
        damaged = r.verify()
        meta = r.meta
        n = r.n_slices
        codec = meta.get("codec") or {}
        affected = _dependents(r, damaged, codec) if damaged else []
    model_ok, model_note = True, ""
    # a bounded-error file without a base layer (quality 0) decodes without the model
    if codec.get("model") and not (codec.get("chunk_format") in (3, 6) and codec.get("quality") == 0):
        from .codec import zoo
        from .errors import ModelError

        try:
            path = zoo.weights_for(codec["model"], codec.get("weights_sha256"))
            if path.parent.name == zoo.ARCHIVE:
                model_note = f"decodes with archived weights {path}"
        except ModelError as e:
            model_ok, model_note = False, str(e)
    return {"n_slices": n, "damaged": damaged, "affected": affected, "ok": not damaged,
            "model": codec.get("model"), "model_available": model_ok, "model_note": model_note}


def _dependents(reader: BmzReader, damaged: list[int], codec: dict) -> list[int]:
    """Intact slices that cannot be decoded because they are coded with a damaged slice as
    context (the inter-slice chunks after it in its group); empty for independent slices."""
    from .codec import pipeline

    inter = {CHUNK_FORMAT_GROUPED: pipeline.CHUNK_LEARNED_INTER, 6: 5}.get(codec.get("chunk_format"))
    if inter is None or not isinstance(codec.get("group"), int):
        return []
    G, n, bad, out = codec["group"], reader.n_slices, set(damaged), []
    for j in sorted(bad):
        k = j + 1
        while k < n and k % G and k not in bad:
            try:
                if reader.chunk(k)[:1] != bytes([inter]):
                    break
            except FormatError:
                break
            out.append(k)
            k += 1
    return sorted(set(out))


def info(src: str | os.PathLike | bytes) -> dict:
    """Header facts of a ``.bmz`` file without decoding (no torch import)."""
    with _open(src) as r:
        meta = r.meta
        sizes = r.chunk_sizes()
        size = r.file_size
        version = r.version
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
        # slice groups of inter-slice coding (chunk format 5); None: every slice on its own
        "group": meta.get("codec", {}).get("group"),
    }


# --------------------------------------------------------------------------------------------
# DICOM in and out, in memory
# --------------------------------------------------------------------------------------------


def _lossy_coding(meta: dict, n_bytes: int):
    """How a ``.bmz`` of ``n_bytes`` compressed its volume, for DICOM output: ratio = the raw
    array bytes (the original's uncompressed pixel bytes) over ``n_bytes``, model, quality."""
    from .io.dicom import LossyCoding

    raw = int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["dtype"]).itemsize
    codec = meta["codec"]
    bound = codec.get("max_error") if codec.get("chunk_format") in (3, 6) else None
    return LossyCoding(ratio=raw / max(1, n_bytes), model=codec["model"], quality=codec["quality"],
                       max_error=bound)


def _check_dicom_output(src, dst, slices, force: bool) -> None:
    """Before decoding ``src`` to the DICOM folder ``dst``: a DICOM-origin file, every slice, a
    folder that can be written."""
    from .errors import OutputError
    from .io import dicom

    dicom.check_dicom_source(info(src).get("source"), os.fspath(dst))
    if slices is not None:
        raise OutputError(f"{os.fspath(dst)}: DICOM output needs every slice of the series; "
                          "decode it whole (without --slices), or decode slices to .nii/.npy")
    dicom.check_output_folder(dst, force)


def compress_dataset(datasets, quality: int | None = None, model: str | None = None, *,
                     max_error: int | None = None, lossless: bool = False,
                     base_quality="auto") -> bytes:
    """Encode a DICOM series held in memory → a complete ``.bmz`` file as bytes.

    ``max_error`` / ``lossless`` / ``base_quality``: guaranteed fidelity, as for :func:`compress`
    (a lossless file decodes to the original instances, UIDs included).

    ``datasets``: a pydicom ``Dataset``, a binary file object or ``bytes`` holding a DICOM file,
    or a list of them, all of one series (classic single-frame files, or multi-frame ones).
    Nothing is read from or written to disk. The ``.bmz`` keeps every file's elements, so
    :func:`decompress_to_datasets` (or ``bmz decode FILE -o folder/``) gives the series back.

    Raises :class:`InputError` naming the dataset (``dataset 2``...): not DICOM, no pixel data,
    no transfer syntax, colour, several series, slices of different sizes."""
    from .io import dicom

    vol = dicom.read_datasets(datasets)
    return compress(vol.data, quality, model, source="dicom", source_meta=vol.meta,
                    max_error=max_error, lossless=lossless, base_quality=base_quality)


def decompress_to_datasets(data) -> list:
    """Decode the ``.bmz`` of a DICOM series (``bytes`` or a binary file object) → its files as
    pydicom ``FileDataset`` objects, in memory, in slice order (each file at its first slice).

    Each is the original file's dataset with the decoded pixels, marked lossy-compressed by bmz
    and derived, with new SOP Instance UIDs and a new Series Instance UID (the rules:
    :func:`bmz.io.dicom.derived_datasets`; a lossless file gives the original instances back); ``ds.filename`` is the original file's relative name
    and ``ds.save_as(path_or_buffer, enforce_file_format=True)`` writes it. Elements the ``.bmz``
    did not keep (binary elements over 64 KiB) are omitted, each with a ``UserWarning``.

    Raises :class:`InputError` for a ``.bmz`` that does not hold a DICOM series, and the errors of
    :func:`decompress` for damaged files."""
    import warnings

    from .io import Volume, dicom

    name = "<bytes>" if isinstance(data, (bytes, bytearray, memoryview)) else None
    with BmzReader(data, name=name) as r:
        source = r.meta.get("source")
        if source != "dicom":
            raise InputError(f"{r.name}: holds a {source or 'non-DICOM'} volume, not a DICOM "
                             "series; decode it with bmz.decompress")
        arr, meta, _ = _decode_reader(r)
        lossy = _lossy_coding(meta, r.file_size)
        where = str(r.name)
    vol = Volume(data=arr, source="dicom", meta=meta.get("source_meta", {}))
    notes: list[tuple[str, str]] = []
    files = sorted(dicom.derived_datasets(vol, lossy, notes, where=where), key=lambda f: f[0])
    for note in dicom.summarise_notes(notes):
        warnings.warn(note, UserWarning, stacklevel=2)
    return [ds for _, _, ds in files]


__all__ = ["compress", "decompress", "encode_file", "decode_file", "info", "verify", "CodingReport",
           "BmzError", "compress_dataset", "decompress_to_datasets"]
