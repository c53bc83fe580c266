#!/usr/bin/env python
"""Write the conformance files: small ``.bmz`` files covering every chunk kind, chunk format and
container version, with the SHA-256 of what each decodes to (``conformance.json``).

    python tests/conformance/make_conformance.py

Run it only to add files (a new chunk kind, format, container version or shipped model): it
writes the files of :func:`plans` not yet here and keeps the others and their records (``--all``
rewrites every file: only for a deliberate change of what the files decode to). The files already
here must keep decoding to their recorded arrays forever (``tests/test_conformance.py``), like
the golden files.

The first inputs are synthetic (a smooth 12-bit pattern with texture, a constant slice, an 8-bit
2-D image: free of any licence). The later ones are tiny crops of real MRI: three 24×40 slices of
``samples/prisma_mprage.nii.gz`` (BSD-2-Clause, dcm_qa_asl; samples/README.md) with a constant
slice among them, and a 16×24 crop of pydicom's ``MR_small.dcm`` (MIT, pydicom's test data:
``dicom/pypi_pydicom/MR_small.dcm`` in the shared data). README.md beside this script says what
each file exercises and credits the sources.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
#: the shared data folder (only the DICOM sample is read from there)
SHARED = Path(os.environ.get("BMZ_SHARED_DATA", REPO.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from bmz import api  # noqa: E402
from bmz import io as bio  # noqa: E402
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


def real_volume() -> np.ndarray:
    """Four 24×40 slices, native 12-bit uint16: three neighbouring slices of the MPRAGE sample
    (real anatomy: inter-slice coding has something to predict) with a constant slice as the
    third (it hands on inside a group)."""
    crop = bio.read(REPO / "samples" / "prisma_mprage.nii.gz").data[1:4, 110:134, 110:150]
    return np.ascontiguousarray(np.concatenate([crop[:2], np.full((1, 24, 40), 300, crop.dtype),
                                                crop[2:]]))


def dicom_bytes() -> bytes:
    """pydicom's MR_small.dcm (64×64 int16, MIT) cropped to 16×24: Rows, Columns and the pixel
    data changed, every other element (and the trailing padding) kept."""
    ds = pydicom.dcmread(SHARED / "dicom" / "pypi_pydicom" / "MR_small.dcm")
    px = np.ascontiguousarray(ds.pixel_array[20:36, 16:40])
    ds.Rows, ds.Columns = px.shape
    ds.PixelData = px.astype("<i2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


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


def bounded_format3(vol: np.ndarray, delta: int, quality: int, fmt=chunks.bounded) -> bytes:
    """A bounded-error file of chunk format 3 (every slice alone; bmz writes format 6 now), or of
    format 6 with ``fmt`` = :mod:`bmz.codec.chunks.bounded_inter` (one group), whose every
    non-constant chunk coded alone keeps a base layer at ``quality`` (0: none) even where coding
    without one is smaller."""
    m, sha = zoo.load_model(zoo.DEFAULT_MODEL)
    mapping = pipeline.mapping_for_range(int(vol.min()), int(vol.max()))
    enc = fmt.Encoder(m, mapping, delta, quality)
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
    vol, img, real = volume(), image_2d(), real_volume()
    lossy4 = lambda: api.compress(vol, quality=3, model="hyperprior")  # noqa: E731
    models = {m: f"chunk format 4: kinds 0x03 and 0x00, model {m} ({what}), real MRI"
              for m, what in (("vqvae", "vector-quantised codebooks"), ("factorized", "factorized "
                              "prior, GDN"), ("unet-noskip-c", "factorized prior, U-Net without "
                              "skips"), ("cnn-ae-16", "factorized prior"),
                              ("cnn-ae-32", "factorized prior"),
                              ("hyperprior-fast", "hyperprior's payload, the fast profile's layer "
                               "tables"))}
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
        "v11_f5_hyperprior-ctx_q3.bmz": (
            "chunk format 5 (slice groups, codec.group 8): kinds 0x03, 0x04 (coded after the "
            "previous slice's latent) and 0x00 (a constant slice ends the chain), real MRI",
            lambda: api.compress(real, quality=3, model="hyperprior-ctx")),
        "v11_f6_lossless.bmz": (
            "chunk format 6, δ = 0, no base layer: kinds 0x02, 0x05 and 0x00 (a constant slice "
            "inside the group hands on), real MRI",
            lambda: api.compress(real, lossless=True, base_quality=0)),
        "v11_f6_d2_base_q1.bmz": (
            "chunk format 6, δ = 2: the group's 0x02 chunk with a hyperprior base layer "
            "(quality 1), then 0x05 and 0x00, real MRI",
            lambda: bounded_format3(real, 2, 1, chunks.bounded_inter)),
        "v12_f6_dicom_lossless.bmz": (
            "container version 1.2: a lossless DICOM file (format 6, one 0x02 chunk) with the "
            "attachment holding its non-pixel bytes",
            lambda: api.compress_dataset(dicom_bytes(), lossless=True)),
        **{f"v11_f4_{m}_q2.bmz": (what, lambda m=m: api.compress(real, quality=2, model=m))
           for m, what in models.items()},
    }


def main(argv=None) -> int:
    regenerate = "--all" in (sys.argv[1:] if argv is None else argv)
    path = HERE / "conformance.json"
    record = {} if regenerate or not path.is_file() else json.loads(path.read_text())
    for name, (what, make) in plans().items():
        if name in record and (HERE / name).is_file():
            continue
        blob = make()
        (HERE / name).write_bytes(blob)
        back = np.ascontiguousarray(api.decompress(blob))
        with BmzReader(blob) as r:
            kinds = sorted({r.chunk(k)[0] for k in range(r.n_slices)})
            version = f"{r.version[0]}.{r.version[1]}"
            codec = r.meta["codec"]
            attachment = r.attachment()
        record[name] = {"what": what, "container": version, "chunk_format": codec["chunk_format"],
                        "kinds": kinds, "model": codec["model"], "weights_sha256": codec["weights_sha256"],
                        "shape": list(back.shape), "dtype": back.dtype.str, "bytes": len(blob),
                        "decoded_sha256": hashlib.sha256(back.tobytes()).hexdigest()}
        if attachment is not None:
            record[name]["attachment_sha256"] = hashlib.sha256(attachment).hexdigest()
        print(name, len(blob), "bytes", file=sys.stderr)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
