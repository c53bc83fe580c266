#!/usr/bin/env python
"""Write the conformance files: small ``.bmz`` files covering every chunk kind, chunk format and
container version, with the SHA-256 of what each decodes to (``conformance.json``).

    python tests/conformance/make_conformance.py

Run it only to add files (a new chunk kind, format or version): the files already here must keep
decoding to their recorded arrays forever (``tests/test_conformance.py``), like the golden files.
The inputs are synthetic (a smooth 12-bit pattern with texture, a constant slice, an 8-bit 2-D
image), so the files are small and free of any licence; README.md beside this script says what
each file exercises.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402

from bmz import api  # noqa: E402
from bmz.bitstream import BmzReader  # noqa: E402
from bmz.codec import chunks, pipeline, zoo  # noqa: E402


def volume() -> np.ndarray:
    """3 slices of 24×40, 12-bit: two textured, one constant (chunk kind 0x00)."""
    y, x = np.mgrid[0:24, 0:40]
    rng = np.random.default_rng(19)
    base = 600 + 1400 * np.exp(-((x - 20) ** 2 + (y - 12) ** 2) / 180.0)
    vol = np.stack([base + 300 * np.sin(x / (3 + k)) + rng.integers(0, 60, x.shape) for k in (0, 1)]
                   + [np.full(x.shape, 1234.0)])
    return np.rint(vol).astype(np.uint16)


def image_2d() -> np.ndarray:
    y, x = np.mgrid[0:20, 0:36]
    return ((x * 7 + y * 5) % 200 - 100).astype(np.int16)


def with_format(vol: np.ndarray, model: str, quality: int, fmt) -> bytes:
    """``vol`` coded with the chunk format ``fmt`` (a module of bmz.codec.chunks) — also a format
    bmz no longer writes."""
    m, sha = zoo.load_model(model)
    mapping = pipeline.mapping_for_range(int(vol.min()), int(vol.max()))
    enc = fmt.encoder(m, mapping, quality - 1)
    codec = {"model": model, "weights_sha256": sha, "quality": quality, **enc.codec_fields()}
    buf = io.BytesIO()
    api._write_chunks(buf, vol, vol, mapping, codec, "numpy", None, False, True, enc.encode_slice)
    return buf.getvalue()


def bounded_format3(vol: np.ndarray, delta: int, quality: int) -> bytes:
    """A bounded-error file of chunk format 3 (every slice alone; bmz writes format 6 now) whose
    every non-constant chunk keeps a base layer at ``quality`` (0: none)."""
    m, sha = zoo.load_model(zoo.DEFAULT_MODEL)
    mapping = pipeline.mapping_for_range(int(vol.min()), int(vol.max()))
    enc = chunks.bounded.Encoder(m, mapping, delta, quality)
    enc.fallback = False
    codec = {"model": zoo.DEFAULT_MODEL, "weights_sha256": sha, "quality": quality, **enc.codec_fields()}
    buf = io.BytesIO()
    api._write_chunks(buf, vol, vol, mapping, codec, "numpy", None, False, True, enc.encode_slice)
    return buf.getvalue()


def as_version_1_0(blob: bytes) -> bytes:
    """The same file in container version 1.0: flags 0, 16-byte index entries (offset, length,
    CRC) — what bmz wrote before 1.1 (docs/FORMAT.md §5.4)."""
    with BmzReader(blob) as r:
        cs = [r.chunk(k) for k in range(r.n_slices)]
    m_len = struct.unpack_from("<Q", blob, 16)[0]
    meta = blob[32:32 + m_len + 4]  # the xz stream and its CRC, unchanged
    fields = struct.pack("<HHIQI", 1, 0, 0, m_len, len(cs))
    head = blob[:8] + fields + struct.pack("<I", zlib.crc32(fields) & 0xFFFFFFFF)
    data_start = 32 + len(meta) + 16 * len(cs) + 4
    index, off = b"", data_start
    for c in cs:
        index += struct.pack("<QII", off, len(c), zlib.crc32(c) & 0xFFFFFFFF)
        off += len(c)
    return head + meta + index + struct.pack("<I", zlib.crc32(index) & 0xFFFFFFFF) + b"".join(cs)


def plans() -> dict:
    vol, img = volume(), image_2d()
    lossy4 = lambda: api.compress(vol, quality=3, model="hyperprior")  # noqa: E731
    return {
        "v11_f4_hyperprior_q3.bmz": ("chunk format 4: kinds 0x03 (hyperprior: one stream) and 0x00", lossy4),
        "v11_f4_cnn-ae-8_q2.bmz": ("chunk format 4: kinds 0x03 (a factorized prior) and 0x00",
                                   lambda: api.compress(vol, quality=2, model="cnn-ae-8")),
        "v11_f2_hyperprior_q3.bmz": ("chunk format 2: kinds 0x01 (hyperprior: two streams) and 0x00",
                                     lambda: with_format(vol, "hyperprior", 3, chunks.learned)),
        "v11_f2_cnn-ae-8_q2.bmz": ("chunk format 2: kinds 0x01 (a factorized prior) and 0x00",
                                   lambda: with_format(vol, "cnn-ae-8", 2, chunks.learned)),
        "v11_f3_lossless.bmz": ("chunk format 3, δ = 0, no base layer: kinds 0x02 (quality 0) and 0x00",
                                lambda: bounded_format3(vol, 0, 0)),
        "v11_f3_d2_base_q1.bmz": ("chunk format 3, δ = 2, a hyperprior base layer in every 0x02 chunk",
                                  lambda: bounded_format3(vol, 2, 1)),
        "v10_f4_hyperprior_q3.bmz": ("container version 1.0 (16-byte index entries) of "
                                     "v11_f4_hyperprior_q3.bmz", lambda: as_version_1_0(lossy4())),
        "v11_f4_2d_int16.bmz": ("a 2-D int16 image (shape [H, W], signed values), format 4",
                                lambda: api.compress(img, quality=4, model="hyperprior")),
    }


def main() -> int:
    record = {}
    for name, (what, make) in plans().items():
        blob = make()
        (HERE / name).write_bytes(blob)
        back = np.ascontiguousarray(api.decompress(blob))
        with BmzReader(blob) as r:
            kinds = sorted({r.chunk(k)[0] for k in range(r.n_slices)})
            version = f"{r.version[0]}.{r.version[1]}"
            codec = r.meta["codec"]
        record[name] = {"what": what, "container": version, "chunk_format": codec["chunk_format"],
                        "kinds": kinds, "model": codec["model"], "weights_sha256": codec["weights_sha256"],
                        "shape": list(back.shape), "dtype": back.dtype.str, "bytes": len(blob),
                        "decoded_sha256": hashlib.sha256(back.tobytes()).hexdigest()}
        print(name, len(blob), "bytes", file=sys.stderr)
    (HERE / "conformance.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
