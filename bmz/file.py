"""An opened ``.bmz`` file: its checked metadata, and its slices decoded on demand.

>>> with BmzFile("scan.bmz") as f:
...     f.shape, f.dtype, f.source                # from the metadata, checked once on opening
...     s = f.slice(40)                           # one slice, decoded (the model loads on first use)
...     lat = f.latents(40)                       # its entropy-decoded latent codes
...     vol = f.read()                            # every slice: the original dtype and shape

Opening reads and checks the container (checksums of header, metadata and index) and the
metadata fields decoding relies on (:func:`check_meta`); nothing is decoded until asked for. The
chunk kinds and their formats are :mod:`bmz.codec.chunks`' business; this is the one place that
turns a file's metadata into what they need (nibabel's image with a lazy data proxy, for ``.bmz``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from ._threads import default_threads, worker_pool
from ._version import __version__
from .bitstream import BmzReader
from .codec import chunks, pipeline, zoo
from .errors import FormatError, InputError

#: the largest slice bmz encodes or decodes (4096 × 4096 voxels; MRI slices are ≤ 1024²): a
#: header claiming more is refused before anything is allocated
MAX_SLICE_VOXELS = 1 << 24

#: what a chunk that cannot be decoded raises inside the chunk decoders (each becomes a
#: FormatError naming the file and slice)
_DECODE_ERRORS = (ValueError, RuntimeError, IndexError, OverflowError)

__all__ = ["BmzFile", "check_meta", "open_reader", "slice_indices", "default_threads",
           "MAX_SLICE_VOXELS"]


def open_reader(src, name: str | None = None) -> BmzReader:
    """A :class:`BmzReader` on a ``.bmz`` path, bytes or binary file object; a missing or unreadable
    path is an InputError."""
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise InputError(f"{src}: no such file")
        if os.path.isdir(src):
            raise InputError(f"{src}: is a folder, expected a .bmz file")
        try:
            return BmzReader(src, name=name)
        except OSError as e:
            raise InputError(f"{src}: cannot read: {e.strerror or e}") from None
    if isinstance(src, (bytearray, memoryview)):
        src = bytes(src)
    return BmzReader(src, name=name)


def _is_int(v) -> bool:
    """A JSON integer (bool is an int subclass in Python, but not one here)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_meta(name, meta: dict) -> tuple[tuple[int, ...], np.dtype, dict, dict]:
    """The fields decoding relies on, type- and range-checked → (shape, dtype, mapping, codec): a
    damaged or forged metadata block (with a valid checksum) is a FormatError naming the field,
    never a crash further on."""
    def bad(what: str):
        return FormatError(f"{name}: metadata field {what} is invalid")

    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) in (2, 3)
            and all(_is_int(v) and v >= 0 for v in shape)):
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
    if not (isinstance(mapping, dict) and all(_is_int(mapping.get(k)) for k in keys)):
        raise bad(f"'intensity' ({mapping!r})")
    info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
    if not (info.min <= mapping["min"] <= mapping["max"] <= info.max and mapping["offset"] == mapping["min"]
            and mapping["scale"] == mapping["max"] - mapping["min"]):
        raise bad(f"'intensity' ({mapping!r}: inconsistent or outside {dtype})")
    codec = meta.get("codec")
    if not isinstance(codec, dict):
        raise bad(f"'codec' ({codec!r})")
    fmt = chunks.format_of(codec)
    if fmt is None:
        raise FormatError(f"{name}: slice chunk format {codec.get('chunk_format')!r} is not "
                          f"supported by bmz {__version__}")
    q = codec.get("quality")
    if not (_is_int(q) and fmt.MIN_QUALITY <= q <= 64):
        raise bad(f"'codec.quality' ({q!r})")
    if hasattr(fmt, "check_meta"):
        fmt.check_meta(name, codec)
    if not isinstance(codec.get("model"), str) or not isinstance(codec.get("weights_sha256"), str):
        raise bad("'codec.model' / 'codec.weights_sha256'")
    return tuple(shape), dtype, mapping, codec


def slice_indices(n: int, slices) -> list[int]:
    """``slices`` (None: all; an int, a slice, or indices, negative ones from the end) → indices
    into ``n`` slices; InputError for one out of range."""
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


class BmzFile:
    """An opened ``.bmz``: ``src`` a path, ``bytes`` or a binary file object (``name`` names it in
    messages). Use as a context manager, or ``close()``.

    With ``check`` (the default) the metadata is checked on opening (:func:`check_meta`, and the
    index's slice count against ``shape``); ``check=False`` opens any file whose container is
    intact (for ``info`` and ``verify``, which report on files this bmz may not decode).
    ``cache``: how many slices' latents :meth:`latents` keeps (the most recent; in slice groups,
    what each slice hands on to the next, at least 2). ``device``: where the fixed-point synthesis
    runs — ``None``/``"cpu"``, or ``"cuda"``/``"cuda:N"`` (:mod:`bmz.codec.device`: the same
    arrays; InputError when there is no such GPU)."""

    def __init__(self, src, name: str | None = None, *, check: bool = True, cache: int = 0,
                 device=None):
        # where the fixed-point synthesis runs (bmz.codec.device): checked before any work
        self._device = None
        if device is not None:
            from .codec import device as _dev  # torch: only where a device is asked for

            self._device = _dev.parse_device(device)
        self._reader = open_reader(src, name)
        self.name = self._reader.name
        self.meta = self._reader.meta
        self._model = None
        self._lock = threading.Lock()  # the reader's file position is shared by the threads
        self._local = threading.local()  # each decoding thread keeps its own hand-ons
        self._cache_size = max(0, int(cache))
        self.checked = False
        if check:
            try:
                self.check()
            except BaseException:
                self._reader.close()
                raise

    def check(self) -> None:
        """Check the metadata (done on opening unless ``check=False``; FormatError naming the field)."""
        shape, self.dtype, self.mapping, self.codec = check_meta(self.name, self.meta)
        self.n_slices = self._check_index_count(shape)
        self.shape = shape
        self.slice_shape = (int(shape[-2]), int(shape[-1]))
        self._ctx = chunks.SliceContext(self.slice_shape, self.mapping, self.dtype, self.codec,
                                        lambda: self.model)
        # slice groups (formats 5, 6): sequential decoding reuses what the previous slice handed on
        self._grouped = chunks.grouped(self.codec)
        # formats whose slices hand on more than latents (format 6: decoded values, coder state)
        self._own_carry = hasattr(chunks.format_of(self.codec), "carry")
        if self._grouped:
            self._cache_size = max(self._cache_size, 2)
        self.checked = True

    def _check_index_count(self, shape) -> int:
        """The number of slices ``shape`` says, checked against the index's → FormatError."""
        n = int(shape[0]) if len(shape) == 3 else 1
        if self._reader.n_slices != n:
            raise FormatError(f"{self.name}: index holds {self._reader.n_slices} slices, "
                              f"metadata says {n}")
        return n

    def check_index_count(self) -> None:
        """Only the index's slice count against the metadata's ``shape`` (what ``bmz verify``
        checks without the rest of the metadata): FormatError when they disagree, nothing when
        ``shape`` is not a list of 2 or 3 integers (then the full :meth:`check` names it)."""
        shape = self.meta.get("shape")
        if (isinstance(shape, list) and len(shape) in (2, 3)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
            self._check_index_count(shape)

    # ---- the metadata ----------------------------------------------------------------------
    @property
    def source(self) -> str:
        """What the volume was read from: ``"nifti"``, ``"dicom"`` or ``"numpy"``."""
        return self.meta.get("source", "numpy")

    @property
    def source_meta(self) -> dict:
        """What the reader of the source kept to write it back (header, elements, ...)."""
        return self.meta.get("source_meta", {})

    @property
    def n_index_slices(self) -> int:
        """How many chunks the index lists (``n_slices`` once checked against ``shape``)."""
        return self._reader.n_slices

    @property
    def file_size(self) -> int:
        return self._reader.file_size

    @property
    def version(self) -> tuple[int, int]:
        """The container's format version (major, minor)."""
        return self._reader.version

    def chunk_sizes(self) -> list[int]:
        return self._reader.chunk_sizes()

    def chunk(self, k: int) -> bytes:
        """The raw bytes of slice ``k``'s chunk, after its checksum (ChecksumError when damaged)."""
        with self._lock:
            return self._reader.chunk(k)

    @property
    def _carry_cache(self) -> OrderedDict:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
        return cache

    @property
    def has_attachment(self) -> bool:
        """Whether the file holds an attachment (container 1.2: a DICOM series' kept bytes)."""
        return self._reader.has_attachment

    def attachment(self) -> bytes | None:
        """The attachment's bytes after its checksum (None when the file holds none)."""
        return self._reader.attachment()

    def verify_attachment(self) -> bool:
        """Whether the attachment's checksum holds (True when there is none)."""
        return self._reader.verify_attachment()

    def verify(self) -> list[int]:
        """Check every chunk's checksum (nothing is decoded) → the damaged slices."""
        return self._reader.verify()

    # ---- decoding --------------------------------------------------------------------------
    @property
    def model(self):
        """The exact weights the file was encoded with (loaded on first use, shared by the zoo's
        cache); a ModelError when they are not installed."""
        if self._model is None:
            model, _ = zoo.load_model(self.codec["model"], expect_sha256=self.codec["weights_sha256"])
            if self._device is not None:
                from .codec import device as _dev

                model = _dev.on_device(model, self._device)
            self._model = model
        return self._model

    def _index(self, k: int) -> int:
        if not self.checked:
            raise RuntimeError(f"{self.name}: opened with check=False; it cannot be decoded")
        if not 0 <= k < self.n_slices:
            raise InputError(f"{self.name}: slice {k} out of range: the file has {self.n_slices} slices")
        return k

    def _context_error(self, k: int, j: int, e: FormatError) -> FormatError:
        g = self.codec.get("group") or 1
        start = k - k % g
        return FormatError(
            f"{self.name}: slice {k} of {self.n_slices}: cannot decode: it is coded with "
            f"slice {j} of its group (slices {start}..{min(start + g, self.n_slices) - 1}) "
            f"as context, which cannot be decoded: {e}")

    def _previous(self, k: int, chunk: bytes) -> list:
        """What the earlier slices slice ``k``'s chunk is coded with hand on (slice groups:
        :func:`bmz.codec.chunks.carry`); a FormatError naming both slices when one of them cannot
        be decoded."""
        out = []
        for j in chunks.context_slices(self.codec, k, chunk):
            try:
                out.append(self._carried(j))
            except FormatError as e:
                raise self._context_error(k, j, e) from None
        return out

    def slice(self, k: int) -> np.ndarray:
        """Slice ``k`` decoded, ``(H, W)`` in the file's dtype. A damaged chunk is a FormatError
        naming the file and slice (ChecksumError when its checksum fails)."""
        chunk = self.chunk(self._index(k))
        if self._grouped and chunk[:1] != bytes([chunks.constant.KIND]):
            # slice groups: what the slice hands on is kept for the next slice of the group
            return self._from_carry(k, self._carried(k, chunk))
        try:
            return chunks.decode(chunk, self._ctx, self._previous(k, chunk))
        except _DECODE_ERRORS as e:
            raise FormatError(f"{self.name}: slice {k} of {self.n_slices}: cannot decode: {e}") from None

    def _from_carry(self, k: int, handed) -> np.ndarray:
        """Slice ``k`` from what its group's decoding handed on (for latents: the synthesis)."""
        try:
            return chunks.from_carry(handed, self._ctx)
        except _DECODE_ERRORS as e:
            raise FormatError(f"{self.name}: slice {k} of {self.n_slices}: cannot decode: {e}") from None

    def latents(self, k: int) -> chunks.SliceLatents:
        """Slice ``k``'s entropy-decoded latent codes (:class:`~bmz.codec.chunks.SliceLatents`),
        without the synthesis; the ``cache`` most recent are kept."""
        k = self._index(k)
        if not self._own_carry:  # what a slice hands on is its latents
            return self._carried(k)
        chunk = self.chunk(k)  # e.g. bounded groups: only constant chunks have latents
        try:
            return chunks.latents(chunk, self._ctx)
        except _DECODE_ERRORS as e:
            raise FormatError(f"{self.name}: slice {k} of {self.n_slices}: cannot decode its "
                              f"latents: {e}") from None

    def _carried(self, k: int, chunk: bytes | None = None):
        """What slice ``k`` hands on to the next slice of its group (:func:`bmz.codec.chunks.carry`:
        its latents; in bounded groups its decoded values and coder state); the ``cache`` most
        recent are kept, per thread. The run of earlier slices it needs one after the other, back
        to one kept, is done first, in order: no recursion however large the group."""
        cache = self._carry_cache
        hit = cache.get(k)
        if hit is not None:
            cache.move_to_end(k)
            return hit
        run = [(k, self.chunk(k) if chunk is None else chunk)]
        while self._grouped:
            need = chunks.context_slices(self.codec, *run[-1])
            if len(need) != 1 or need[0] in cache:
                break
            try:
                run.append((need[0], self.chunk(need[0])))
            except FormatError:
                break  # a damaged one: reported below, by the slice that needs it
        for j, c in reversed(run):
            try:
                out = self._carry_one(j, c)
            except FormatError as e:
                for m in range(j + 1, k + 1):  # as each slice of the run would report it
                    e = self._context_error(m, m - 1, e)
                raise e from None
        return out

    def _carry_one(self, k: int, chunk: bytes):
        previous = self._previous(k, chunk)
        try:
            out = chunks.carry(chunk, self._ctx, previous)
        except _DECODE_ERRORS as e:
            what = "" if self._own_carry else " its latents"
            raise FormatError(f"{self.name}: slice {k} of {self.n_slices}: cannot decode{what}: "
                              f"{e}") from None
        if self._cache_size:
            cache = self._carry_cache
            cache[k] = out
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return out

    def stack(self, slices=None, skip_damaged: bool = False,
              on_decoded: Callable[[], None] | None = None, threads: int | None = 1):
        """The ``slices`` (as :func:`slice_indices`) as a :class:`~bmz.io.SliceStack` that decodes
        each when asked for → (stack, damaged).

        ``damaged`` fills in as slices are decoded: with ``skip_damaged`` a slice whose chunk
        fails its checksum or cannot be decoded comes out filled with the volume's minimum and its
        index is appended; otherwise its FormatError is raised. ``on_decoded()`` is called after
        each slice (a progress bar). Decode inside :func:`bmz.codec.pipeline.single_thread`.

        ``threads`` > 1 (None: :func:`default_threads`): slices are decoded ahead on that many
        threads, at most ``2 × threads`` units of work in flight (a unit: one slice, or the run of
        requested slices of one slice group, whose chain — entropy decoding, each slice with its
        predecessor — runs in order on one thread while the slices' syntheses run on the
        others), so memory stays bounded. Decoding is integer-exact: the arrays are identical for
        any thread count."""
        from .io import SliceStack  # the readers and writers (pydicom, nibabel): heavy

        ks = slice_indices(self.n_slices, slices)
        damaged: list[int] = []
        fill = np.full(self.slice_shape, self.mapping["min"], dtype=self.dtype)

        def failed(k: int, e: FormatError):
            if not skip_damaged:
                return e
            with self._lock:
                if k not in damaged:
                    damaged.append(k)
            return fill.copy()

        def one(k: int):
            try:
                return self.slice(k)
            except FormatError as e:
                return failed(k, e)

        def done(out):
            if isinstance(out, FormatError):
                raise out
            if on_decoded is not None:
                on_decoded()
            return out

        threads = default_threads() if threads is None else max(1, int(threads))
        if self._device is not None and self.needs_model:
            # a GPU synthesises the slices the decoding threads hand it in batches of that many
            self.model.set_workers(threads if len(ks) > 1 else 1)
        if threads == 1 or len(ks) < 2:
            return SliceStack((len(ks), *self.slice_shape), self.dtype,
                              lambda i: done(one(ks[i]))), damaged
        # units of work: a slice group's consecutive requested slices stay together (one thread
        # decodes them in order, reusing each slice's latents for the next); other slices alone
        g = int(self.codec.get("group") or 1) if self._grouped else 1
        units: list[list[int]] = []
        for i, k in enumerate(ks):
            if units and g > 1 and k // g == ks[units[-1][-1]] // g and k > ks[units[-1][-1]]:
                units[-1].append(i)
            else:
                units.append([i])
        unit_of = {i: u for u, us in enumerate(units) for i in us}
        pool = worker_pool(threads, "bmz-decode")
        # a group's chain runs on `pool`; its slices' syntheses on their own pool (a chain waits
        # for them, so they must not queue behind other chains)
        synth = worker_pool(threads, "bmz-synth") if g > 1 else None
        futures: dict[int, object] = {}
        window = 2 * threads

        def synthesised(k: int, handed):
            try:
                return self._from_carry(k, handed)
            except FormatError as e:
                return failed(k, e)

        def run(u: int) -> dict:
            if synth is None or len(units[u]) == 1:
                return {i: one(ks[i]) for i in units[u]}
            out, later = {}, {}
            for i in units[u]:
                k = ks[i]
                try:
                    chunk = self.chunk(k)
                    if chunk[:1] == bytes([chunks.constant.KIND]):
                        out[i] = one(k)
                    else:
                        later[i] = synth.submit(synthesised, k, self._carried(k, chunk))
                except FormatError as e:
                    out[i] = failed(k, e)
            out.update({i: f.result() for i, f in later.items()})
            return out

        def shutdown(cancel: bool = False) -> None:
            pool.shutdown(wait=False, cancel_futures=cancel)
            if synth is not None:
                synth.shutdown(wait=False, cancel_futures=cancel)

        def get(i: int) -> np.ndarray:
            u = unit_of[i]
            for v in range(u, min(len(units), u + window)):
                if v not in futures:
                    futures[v] = pool.submit(run, v)
            for v in [v for v in futures if v < u]:  # consumed: free their slices
                del futures[v]
            out = futures[u].result()[i]
            if u == len(units) - 1 and i == units[u][-1]:
                shutdown()
            return done(out)

        return SliceStack((len(ks), *self.slice_shape), self.dtype, get,
                          close=lambda: shutdown(cancel=True)), damaged

    def read(self, slices: int | slice | Sequence[int] | None = None,
             threads: int | None = None) -> np.ndarray:
        """Decode ``slices`` → ``(k, H, W)``; all of them (``None``) → the original shape (a 2-D
        original comes back 2-D). ``threads``: as :meth:`stack` (default: every core)."""
        stack, _ = self.stack(slices, threads=threads)
        with pipeline.torch_threads(self.transform_threads(slices, threads)):
            try:
                out = np.asarray(stack)
            finally:
                stack.close()
        return out[0] if slices is None and len(self.shape) == 2 else out

    @property
    def needs_model(self) -> bool:
        """Whether decoding this file runs a model (a bounded file without a learned base
        layer does not)."""
        return chunks.file_needs_model(self.codec)

    def transform_threads(self, slices=None, threads: int | None = None) -> int | None:
        """Torch threads for decoding ``slices``: one per slice when several slices run in
        parallel (:meth:`stack`), every thread allowed when there is one slice to decode (a
        viewer's first slice); None when the file needs no model (no torch to set: a bounded
        file without a learned base layer never imports it). Decoding is integer-exact, so any
        count gives the identical array."""
        if not self.needs_model:
            return None
        if len(slice_indices(self.n_slices, slices)) > 1:
            return 1
        return default_threads() if threads is None else max(1, int(threads))

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        self._reader.close()
        self._local = threading.local()

    def __enter__(self) -> "BmzFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if not self.checked:
            return f"BmzFile({self.name!r})"
        return (f"BmzFile({self.name!r}, {'×'.join(map(str, self.shape))} {self.dtype}, "
                f"{self.codec['model']} q{self.codec['quality']})")
