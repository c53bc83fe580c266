"""Guaranteed fidelity: slices whose decoded values are within ``δ`` of the original on every voxel
(``δ`` = 0: lossless, every bit), stored as chunk kind ``0x02`` (docs/FORMAT.md §10.2).

A bounded chunk holds an optional **learned base layer** — an ordinary learned chunk of the
volume's model at some quality, decoded bit-exactly by the fixed-point decoder — and a
**residual stream** (:mod:`bmz.codec.residual`) that codes every voxel with max error ``δ``
given the base reconstruction (when there is one) and the voxels already decoded. The chunk
also carries the CRC-32 of the exact reconstruction, which the decoder checks.

The encoder chooses the base quality per volume (``"auto"``: no base, or the lowest qualities,
whichever codes a sample of slices in fewer bytes, stopping at the first quality that does not
improve on the previous; an integer forces one; 0 = no base), and per
slice keeps the base only when it makes the chunk smaller. A slice whose values span at most
``2δ`` is a constant chunk (its mid value). Every chunk is decoded again at encode time and
checked against the original: the bound is verified on the very values any decoder produces.
"""

from __future__ import annotations

import zlib

import numpy as np

from . import residual, residual3d

CHUNK_BOUNDED = 2
#: a bounded chunk coded with the previous slice of its group as context (chunk format 6)
CHUNK_BOUNDED_INTER = 5
#: chunk format of the first bounded files (every slice alone): format 2 plus chunk kind 0x02.
#: bmz decodes them as ever and writes them only on request (tests, golden files)
CHUNK_FORMAT = 3
#: chunk format of the bounded files bmz writes: slice groups (``codec.group``), kinds 0x02 and
#: 0x05, the residual coder of :mod:`bmz.codec.residual3d`
CHUNK_FORMAT_GROUPED = 6
#: the bounded chunk formats bmz decodes
FORMATS = (CHUNK_FORMAT, CHUNK_FORMAT_GROUPED)
#: the residual coder's name and version per chunk format, recorded in the metadata
#: (``codec.residual``)
CODER = residual.CODER_ID
CODER_GROUPED = residual3d.CODER_ID
CODER_OF_FORMAT = {CHUNK_FORMAT: CODER, CHUNK_FORMAT_GROUPED: CODER_GROUPED}
#: slice group size of bounded files when none is asked for (benchmarks/results/lossless.md)
DEFAULT_GROUP = 8
#: threads coding groups at once (None: every core); the bytes are the same for any count
THREADS: int | None = None
MAX_DELTA = 65535
#: base qualities ``"auto"`` tries besides no base at all
AUTO_QUALITIES = (1, 2)
#: slices ``"auto"`` codes to choose the base quality
AUTO_SAMPLE = 6
_HEADER = 6  # kind, base quality, CRC-32


def recon_crc(v: np.ndarray) -> int:
    """CRC-32 of a reconstructed slice: its values minus the volume minimum as u16 LE, raster."""
    return zlib.crc32(np.ascontiguousarray(v, dtype="<u2").tobytes()) & 0xFFFFFFFF


def _constant_chunk(value: int) -> bytes:
    from .pipeline import CHUNK_CONSTANT

    return bytes([CHUNK_CONSTANT]) + int(value).to_bytes(8, "little", signed=True)


class BoundedEncoder:
    """Encodes the slices of one volume with max error ``delta``.

    ``model``: the learned model (``None`` when no base layer is allowed); ``mapping``: the
    volume's intensity mapping (:func:`bmz.codec.pipeline.mapping_for_range`);
    ``base_quality``: ``"auto"``, 0 (none) or a quality 1…n (call :meth:`choose` for auto)."""

    def __init__(self, model, mapping: dict, delta: int, base_quality="auto"):
        self.model, self.mapping, self.delta = model, mapping, int(delta)
        self.vmin, self.maxv = int(mapping["min"]), int(mapping["scale"])
        self.base_quality = base_quality
        #: per slice, drop the base layer when the chunk is smaller without it
        self.fallback = True
        #: per encoded slice: bytes of base layer and residual (for reports and benchmarks)
        self.parts: list[tuple[int, int]] = []

    # -- choosing the base quality ---------------------------------------------------------

    def choose(self, vol) -> int:
        """Resolve ``"auto"`` on a sample of ``vol``'s slices → the base quality (0 = none)."""
        if self.base_quality != "auto":
            return int(self.base_quality)
        n = vol.shape[0]
        ks = sorted({int(round(i * (n - 1) / max(1, AUTO_SAMPLE - 1))) for i in range(min(n, AUTO_SAMPLE))})
        sample = [np.asarray(vol[k]) for k in ks]
        sample = [s for s in sample if int(s.max()) - int(s.min()) > 2 * self.delta]
        if not sample or self.model is None:
            self.base_quality = 0
            return 0
        best, best_q = None, 0
        for q in (0,) + tuple(q for q in AUTO_QUALITIES if q <= self.model.n_qualities):
            total = 0
            for s in sample:
                total += len(self._chunk(s, q, fallback=False)[0])
                if best is not None and total >= best:
                    break
            if best is not None and total >= best:
                break  # a costlier base layer than one that already lost will not win either
            best, best_q = total, q
        self.base_quality = best_q
        return best_q

    # -- one slice -------------------------------------------------------------------------

    def _base(self, s: np.ndarray, q: int) -> tuple[bytes, np.ndarray]:
        """The learned base layer of slice ``s`` at quality ``q`` → (its payload, the bit-exact
        decoded base in ``[0, maxv]``)."""
        from . import pipeline

        chunk = pipeline.encode_slice(self.model, s, self.mapping, q - 1, kind=pipeline.CHUNK_LEARNED)
        if chunk[0] != pipeline.CHUNK_LEARNED:  # cannot happen: constant slices never get here
            raise RuntimeError("base layer of a non-constant slice is not a learned chunk")
        base = pipeline.decode_slice(self.model, chunk, s.shape, self.mapping, q - 1, np.int64)
        return chunk[1:], base.astype(np.int64) - self.vmin

    def _chunk(self, s: np.ndarray, q: int, fallback: bool = True) -> tuple[bytes, np.ndarray, int]:
        v = s.astype(np.int64) - self.vmin
        cands = []
        if q > 0:
            payload, base = self._base(s, q)
            res, rec, ctx = self._residual(v, base)
            head = bytes([CHUNK_BOUNDED, q]) + recon_crc(rec).to_bytes(4, "little")
            cands.append((head + len(payload).to_bytes(4, "little") + payload + res, rec, len(payload), ctx))
        if q == 0 or fallback:
            res, rec, ctx = self._residual(v, None)
            head = bytes([CHUNK_BOUNDED, 0]) + recon_crc(rec).to_bytes(4, "little")
            cands.append((head + res, rec, 0, ctx))
        return min(cands, key=lambda c: len(c[0]))

    def _residual(self, v: np.ndarray, base) -> tuple[bytes, np.ndarray, object]:
        """The residual stream of a slice (values − min) coded alone → (bytes, reconstruction,
        context for the next slice; None in format 3)."""
        res, rec = residual.encode(v, self.maxv, self.delta, base)
        return res, rec, None

    def encode_slice(self, s: np.ndarray) -> bytes:
        """One stored-value slice → chunk bytes, verified: decoding them gives values within
        ``delta`` of ``s`` (else :class:`~bmz.errors.BmzError` — an internal error, never a silent
        violation)."""
        if self.base_quality == "auto":
            raise RuntimeError("BoundedEncoder.choose() must resolve base_quality 'auto' first")
        s = np.asarray(s)
        lo, hi = int(s.min()), int(s.max())
        if hi - lo <= 2 * self.delta:
            self.parts.append((0, 9))
            return _constant_chunk(lo + (hi - lo) // 2)
        from ..errors import BmzError

        bug = ("bounded chunk failed its encode-time check (decoded values differ from the "
               "encoder's or exceed the bound); this is a bmz bug, nothing was written")
        try:
            chunk, rec, nbase, _ = self._chunk(s, int(self.base_quality), self.fallback)
            # the guarantee: decode the chunk as any reader will, and compare with the original
            back = decode_chunk(chunk, s.shape, self.mapping, self.delta, lambda: self.model)
        except (RuntimeError, ValueError) as e:
            raise BmzError(f"{bug} ({e})") from e
        if not np.array_equal(back, rec + self.vmin) or \
                int(np.abs(back - s.astype(np.int64)).max()) > self.delta:
            raise BmzError(bug)
        self.parts.append((nbase, len(chunk) - nbase))
        return chunk


class GroupEncoder(BoundedEncoder):
    """Encodes the slices of one volume with max error ``delta`` in groups of ``group`` slices
    (chunk format 6): the first slice of a group is coded alone (kind ``0x02``, with a learned
    base layer when that is smaller), every other one with the previous decoded slice, its error
    map and the coder's state after it as context (kind ``0x05``). Groups are independent and are
    coded on :data:`THREADS` threads; the chunks are the same for any thread count."""

    def __init__(self, model, mapping: dict, delta: int, base_quality="auto", group: int = DEFAULT_GROUP):
        super().__init__(model, mapping, delta, base_quality)
        self.group = int(group)

    def _residual(self, v, base):
        res, ctx = residual3d.encode(v, self.maxv, self.delta, base)
        return res, ctx.rec, ctx

    def encode_slice(self, s):  # pragma: no cover - a format-3 entry point
        raise RuntimeError("GroupEncoder codes whole groups: use chunks()")

    def _group(self, slices: list[np.ndarray]) -> list[tuple[bytes, tuple[int, int]]]:
        """The chunks of one group, each verified by decoding it as a reader will → [(chunk,
        (base bytes, residual bytes))]."""
        from ..errors import BmzError

        bug = ("bounded chunk failed its encode-time check (decoded values differ from the "
               "encoder's or exceed the bound); this is a bmz bug, nothing was written")
        out, prev, prev_back = [], None, None
        for s in slices:
            s = np.asarray(s)
            lo, hi = int(s.min()), int(s.max())
            if hi - lo <= 2 * self.delta:
                c = lo + (hi - lo) // 2
                out.append((_constant_chunk(c), (0, 9)))
                prev = prev_back = constant_context(c - self.vmin, s.shape)
                continue
            try:
                if prev is None:
                    chunk, rec, nbase, ctx = self._chunk(s, int(self.base_quality), self.fallback)
                else:
                    res, ctx = residual3d.encode(s.astype(np.int64) - self.vmin, self.maxv,
                                                 self.delta, prev=prev)
                    rec, nbase = ctx.rec, 0
                    chunk = bytes([CHUNK_BOUNDED_INTER]) + recon_crc(rec).to_bytes(4, "little") + res
                # the guarantee: decode the chunk as any reader will, and compare with the original
                back, back_ctx = decode_chunk6(chunk, s.shape, self.mapping, self.delta,
                                               lambda: self.model, prev_back)
            except (RuntimeError, ValueError) as e:
                raise BmzError(f"{bug} ({e})") from e
            if not np.array_equal(back, rec + self.vmin) or \
                    int(np.abs(back - s.astype(np.int64)).max()) > self.delta:
                raise BmzError(bug)
            out.append((chunk, (nbase, len(chunk) - nbase)))
            prev, prev_back = ctx, back_ctx
        return out

    def chunks(self, vol):
        """The chunks of ``vol``'s slices, in order (a generator: slices are read in order on
        the calling thread, groups coded on :data:`THREADS` threads, a few groups ahead)."""
        import os
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        if self.base_quality == "auto":
            raise RuntimeError("GroupEncoder.choose() must resolve base_quality 'auto' first")
        n, G = vol.shape[0], self.group
        # the learned base layer runs torch: one thread then; the residual coder releases the GIL
        threads = 1 if self.base_quality else max(1, int(THREADS or os.cpu_count() or 1))
        if threads == 1:
            for a in range(0, n, G):
                for chunk, part in self._group([vol[k] for k in range(a, min(a + G, n))]):
                    self.parts.append(part)
                    yield chunk
            return
        with ThreadPoolExecutor(threads) as ex:
            pending: deque = deque()
            starts = iter(range(0, n, G))
            while True:
                while len(pending) < 2 * threads:
                    a = next(starts, None)
                    if a is None:
                        break
                    group = [np.asarray(vol[k]) for k in range(a, min(a + G, n))]
                    pending.append(ex.submit(self._group, group))
                if not pending:
                    break
                for chunk, part in pending.popleft().result():
                    self.parts.append(part)
                    yield chunk


def constant_context(value: int, shape) -> "residual3d.Context":
    """The context a constant chunk leaves to the next slice: its value everywhere (minus the
    volume minimum), a zero error map, and the coder's initial state."""
    return residual3d.Context(np.full(shape, int(value), np.int64), np.zeros(shape, np.int64),
                              residual3d.fresh_state())


def decode_chunk(chunk: bytes, shape: tuple[int, int], mapping: dict, delta: int,
                 get_model) -> np.ndarray:
    """Bounded chunk → stored values (int64, ``(H, W)``). ``get_model()`` returns the volume's
    model (called only for a chunk with a base layer). Raises ValueError on a bad chunk, including
    a reconstruction whose CRC-32 differs from the one the encoder stored."""
    if len(chunk) < _HEADER or chunk[0] != CHUNK_BOUNDED:
        raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
    crc = int.from_bytes(chunk[2:6], "little")
    vmin, maxv = int(mapping["min"]), int(mapping["scale"])
    base, pos = _base_layer(chunk, shape, mapping, get_model)
    rec = residual.decode(chunk[pos:], shape, maxv, delta, base)
    if recon_crc(rec) != crc:
        raise ValueError("reconstruction check failed: the decoded slice's CRC-32 differs from "
                         "the one stored at encode time")
    return rec + vmin


def _base_layer(chunk: bytes, shape, mapping: dict, get_model) -> tuple[np.ndarray | None, int]:
    """The learned base layer of a bounded chunk (kind 0x02), decoded (values − min; None when
    the chunk has none) → (it, the offset of the residual stream)."""
    q = chunk[1]
    vmin, maxv = int(mapping["min"]), int(mapping["scale"])
    if not 0 <= maxv <= residual.MAX_RANGE:
        raise ValueError(f"value range {maxv} of a bounded-error file is over 16 bits")
    pos = _HEADER
    base = None
    if q:
        from . import pipeline

        if len(chunk) < pos + 4:
            raise ValueError("bounded chunk truncated in its base-layer length")
        n = int.from_bytes(chunk[pos:pos + 4], "little")
        pos += 4
        if n < 2 or pos + n > len(chunk):
            raise ValueError(f"bounded chunk: base layer of {n} bytes does not fit the chunk")
        model = get_model()
        if model is None:
            raise ValueError("bounded chunk has a base layer but no model")
        if q > model.n_qualities:
            raise ValueError(f"bounded chunk: base quality {q} outside 1..{model.n_qualities}")
        learned = bytes([pipeline.CHUNK_LEARNED]) + bytes(chunk[pos:pos + n])
        base = pipeline.decode_slice(model, learned, shape, mapping, q - 1, np.int64) - vmin
        pos += n
    return base, pos


def decode_chunk6(chunk: bytes, shape: tuple[int, int], mapping: dict, delta: int, get_model,
                  prev) -> tuple[np.ndarray, "residual3d.Context"]:
    """A bounded chunk of chunk format 6 (kind 0x02, or 0x05 with ``prev``: the context the
    previous slice of the group left) → (stored values, int64; this slice's context). ValueError
    on a bad chunk, including a CRC-32 mismatch of the reconstruction."""
    vmin, maxv = int(mapping["min"]), int(mapping["scale"])
    if chunk[:1] == bytes([CHUNK_BOUNDED_INTER]):
        if prev is None:
            raise ValueError("inter-slice bounded chunk without a previous slice in its group")
        if len(chunk) < 5:
            raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
        if not 0 <= maxv <= residual.MAX_RANGE:
            raise ValueError(f"value range {maxv} of a bounded-error file is over 16 bits")
        crc, pos, base = int.from_bytes(chunk[1:5], "little"), 5, None
    else:
        if len(chunk) < _HEADER or chunk[0] != CHUNK_BOUNDED:
            raise ValueError(f"bounded chunk of {len(chunk)} bytes is shorter than its header")
        crc = int.from_bytes(chunk[2:6], "little")
        base, pos = _base_layer(chunk, shape, mapping, get_model)
        prev = None
    ctx = residual3d.decode(chunk[pos:], shape, maxv, delta, base, prev)
    if recon_crc(ctx.rec) != crc:
        raise ValueError("reconstruction check failed: the decoded slice's CRC-32 differs from "
                         "the one stored at encode time")
    return ctx.rec + vmin, ctx


def check_max_error(max_error, lossless: bool) -> int | None:
    """The API's ``max_error`` / ``lossless`` → δ (``None``: an ordinary lossy file). Raises
    InputError for anything but an integer 0 … 65535 (or ``lossless`` with another δ)."""
    from ..errors import InputError

    if lossless not in (True, False):
        raise InputError(f"lossless must be True or False, got {lossless!r}")
    if max_error is None:
        return 0 if lossless else None
    if isinstance(max_error, (bool, np.bool_)) or not isinstance(max_error, (int, np.integer)):
        if isinstance(max_error, (float, np.floating)) and float(max_error).is_integer():
            max_error = int(max_error)
        else:
            raise InputError(f"max_error must be a whole number of stored units (0 = lossless), "
                             f"got {max_error!r}")
    d = int(max_error)
    if d < 0:
        raise InputError(f"max_error must be ≥ 0 (stored units; 0 = lossless), got {d}")
    if d > MAX_DELTA:
        raise InputError(f"max_error {d} is larger than any 16-bit value range ({MAX_DELTA})")
    if lossless and d != 0:
        raise InputError(f"lossless means max_error 0; got both lossless and max_error={d}")
    return d


def check_base_quality(base_quality, model) -> "int | str":
    """``"auto"``, 0 or a quality of ``model`` (InputError otherwise)."""
    from ..errors import InputError

    if base_quality in (None, "auto"):
        return "auto"
    if isinstance(base_quality, str) and base_quality.strip().isdigit():
        base_quality = int(base_quality)
    if isinstance(base_quality, (bool, np.bool_)) or not isinstance(base_quality, (int, np.integer)):
        raise InputError(f"base quality must be 'auto', 0 (no base layer) or 1..{model.n_qualities}, "
                         f"got {base_quality!r}")
    if not 0 <= int(base_quality) <= model.n_qualities:
        raise InputError(f"base quality must be 'auto', 0 (no base layer) or 1..{model.n_qualities}, "
                         f"got {base_quality}")
    return int(base_quality)


def check_bounded_meta(name, codec: dict) -> None:
    """The ``codec`` keys of a bounded-error file (chunk format 3 or 6), checked → FormatError
    naming the field."""
    from ..errors import FormatError

    d = codec.get("max_error")
    if not (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DELTA):
        raise FormatError(f"{name}: metadata field 'codec.max_error' ({d!r}) is invalid")
    fmt = codec.get("chunk_format")
    if fmt == CHUNK_FORMAT_GROUPED:
        g = codec.get("group")
        if not (isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= MAX_GROUP):
            raise FormatError(f"{name}: metadata field 'codec.group' ({g!r}) is invalid")
    coder = CODER_OF_FORMAT.get(fmt)
    if codec.get("residual") != coder:
        raise FormatError(f"{name}: residual coder {codec.get('residual')!r} is not the one of this "
                          f"bmz ({coder}); decode it with the bmz version that wrote it")


#: the largest slice group (as for lossy files, bmz.api.MAX_GROUP)
MAX_GROUP = 1024


class SliceDecoder:
    """Decodes slices of one bounded-error file (chunk format 3 or 6), in any order.

    In format 6, a ``0x05`` chunk needs the context its predecessor left: the decoder holds the
    latest slice's context, and otherwise decodes the group from its start (at most G − 1 other
    slices). ``reader``: an open :class:`~bmz.bitstream.BmzReader`; ``model_for(chunk)``: the
    volume's model, loaded if that chunk needs it.

    ``order``: the slices that will be asked for, in that order. When they ascend (a whole volume,
    a range) and the file has no base layer, the groups ahead are decoded on :data:`THREADS`
    threads while the caller consumes the earlier ones (chunks read on the caller's thread); the
    values are the same, and any chunk that fails there is decoded again in order, so errors
    and their messages are those of a sequential decode."""

    def __init__(self, reader, shape, mapping: dict, codec: dict, model_for, order=None):
        import os

        self.reader, self.shape, self.mapping, self.codec = reader, tuple(shape), mapping, codec
        self.model_for = model_for
        self.fmt = codec.get("chunk_format")
        self.group = int(codec.get("group", 1)) if self.fmt == CHUNK_FORMAT_GROUPED else 1
        self.delta = int(codec.get("max_error", 0))
        self.held: tuple[int, object] | None = None  # (slice index, its context)
        self.threads = max(1, int(THREADS or os.cpu_count() or 1))
        self.plan: list[tuple[int, int]] = []  # groups to decode ahead: (first, last slice)
        self.ahead: dict = {}  # first slice of a group → future of {slice: (values, context)}
        self.pool = None
        order = list(order) if order is not None else []
        if (self.fmt == CHUNK_FORMAT_GROUPED and codec.get("quality") == 0 and self.threads > 1
                and len(order) > 1 and all(a < b for a, b in zip(order, order[1:]))):
            last: dict[int, int] = {}
            for k in order:
                last[k - k % self.group] = k
            self.plan = sorted(last.items())

    def _run(self, start: int, chunks: list[bytes]):
        """Decode the chunks of one group from its start (a worker thread) → {slice: (values,
        context)}, or None if any fails (the caller then decodes them in order)."""
        try:
            out, prev = {}, None
            for i, c in enumerate(chunks):
                if c[:1] == bytes([CHUNK_BOUNDED]) and c[1:2] != b"\x00":
                    return None  # a base layer (forged in a quality-0 file): torch, in order
                v, prev = self._one(start + i, c, prev)
                out[start + i] = (v, None, c)
            out[start + len(chunks) - 1] = (v, prev, c)  # the context the group's last one left
            return out
        except Exception:  # noqa: BLE001 - redone in order, where the error is reported
            return None

    def _submit(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ..errors import FormatError

        while self.plan and len(self.ahead) < 2 * self.threads:
            start, last = self.plan.pop(0)
            try:
                chunks = [self.reader.chunk(j) for j in range(start, last + 1)]
            except FormatError:
                continue  # damaged: decoded (and reported) in order
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads)
            self.ahead[start] = self.pool.submit(self._run, start, chunks)
        if not self.plan and not self.ahead and self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None

    def _decoded_ahead(self, k: int, chunk: bytes):
        start = k - k % self.group
        self._submit()
        f = self.ahead.get(start)
        if f is None:
            return None
        res = f.result()
        hit = res.get(k) if res is not None else None
        if res is None or k == max(res):
            del self.ahead[start]
            self._submit()
        if hit is None or hit[2] != chunk:
            return None
        if hit[1] is not None and self.group > 1:
            self.held = (k, hit[1])
        return hit[0]

    def _one(self, k: int, chunk: bytes, prev) -> tuple[np.ndarray, object]:
        from .pipeline import CHUNK_CONSTANT, decode_slice

        if not chunk:
            raise ValueError("empty chunk")
        if chunk[0] == CHUNK_CONSTANT:
            v = decode_slice(None, chunk, self.shape, self.mapping, 0, np.int64)
            return v, constant_context(int(v[0, 0]) - int(self.mapping["min"]), self.shape)
        if chunk[0] == CHUNK_BOUNDED_INTER and k % self.group == 0:
            raise ValueError(f"inter-slice bounded chunk at the start of a group of {self.group}")
        if chunk[0] not in (CHUNK_BOUNDED, CHUNK_BOUNDED_INTER):
            raise ValueError(f"chunk kind {chunk[0]} in a bounded-error file of chunk format "
                             f"{self.fmt} (only constant and bounded chunks keep the guarantee)")
        return decode_chunk6(chunk, self.shape, self.mapping, self.delta,
                             lambda: self.model_for(chunk), prev)

    def _context_before(self, k: int):
        """The context slice k − 1 left: held, or decoded from the group's start."""
        from ..errors import FormatError

        if self.held is not None and self.held[0] == k - 1:
            return self.held[1]
        G = self.group
        start = k - k % G
        j0, prev = start, None
        if self.held is not None and start <= self.held[0] < k:
            j0, prev = self.held[0] + 1, self.held[1]
        last = min(start + G, self.reader.n_slices) - 1
        for j in range(j0, k):
            try:
                chunk = self.reader.chunk(j)
            except FormatError as e:
                raise ValueError(f"it is coded with slice {j} of its group (slices {start}..{last}) "
                                 f"as context, which is damaged: {e}") from None
            try:
                _, prev = self._one(j, chunk, prev)
            except (ValueError, RuntimeError, IndexError, OverflowError) as e:
                raise ValueError(f"slice {j} of its group (slices {start}..{last}), its context, "
                                 f"cannot be decoded: {e}") from None
            self.held = (j, prev)
        return prev

    def decode(self, k: int, chunk: bytes) -> np.ndarray:
        """Chunk ``chunk`` of slice ``k`` → the slice's stored values (int64). ValueError on a bad
        chunk, or when a slice it depends on is damaged (the message names it)."""
        if self.fmt == CHUNK_FORMAT:
            return decode_bounded_slice(None, chunk, self.shape, self.mapping, self.codec, np.int64,
                                        self.model_for)
        if self.plan or self.ahead:
            v = self._decoded_ahead(k, chunk)
            if v is not None:
                return v
        prev = self._context_before(k) if chunk[:1] == bytes([CHUNK_BOUNDED_INTER]) else None
        v, ctx = self._one(k, chunk, prev)
        if self.group > 1:
            self.held = (k, ctx)
        return v


def decode_bounded_slice(model, chunk: bytes, shape: tuple[int, int], mapping: dict, codec: dict,
                         dtype, model_for=None) -> np.ndarray:
    """A chunk of a bounded-error file of chunk format 3 → the slice in ``dtype`` (ValueError on
    a bad chunk).

    Such a file holds constant chunks (exact) and bounded chunks only: a learned (lossy) chunk
    would break the file's guarantee and is refused, as is a bounded chunk in a file of another
    chunk format (whose ``codec.max_error`` was never checked)."""
    from .pipeline import CHUNK_CONSTANT, decode_slice

    if codec.get("chunk_format") not in FORMATS or "max_error" not in codec:
        raise ValueError(f"bounded-error chunk in a file of chunk format "
                         f"{codec.get('chunk_format')!r} (bounded chunks need format "
                         f"{CHUNK_FORMAT} or {CHUNK_FORMAT_GROUPED})")
    if not chunk:
        raise ValueError("empty chunk")
    if chunk[0] == CHUNK_CONSTANT:
        return decode_slice(None, chunk, shape, mapping, 0, dtype)
    if chunk[0] != CHUNK_BOUNDED or codec.get("chunk_format") != CHUNK_FORMAT:
        raise ValueError(f"chunk kind {chunk[0]} in a bounded-error file of chunk format "
                         f"{codec.get('chunk_format')} (only constant and bounded chunks keep the "
                         "guarantee)")
    get_model = (lambda: model) if model_for is None else (lambda: model_for(chunk))
    return decode_chunk(chunk, shape, mapping, int(codec["max_error"]), get_model).astype(dtype)
