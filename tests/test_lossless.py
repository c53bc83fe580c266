"""Guaranteed fidelity: ``max_error=δ`` / ``lossless=True`` (bmz.codec.chunks.bounded; files of
chunk format 6 since bmz writes slice groups (test_lossless_groups.py), format 3 through
``BoundedEncoder`` and the golden files).

Lossless round trips are bit-exact on every volume of ``val/`` (a few slices of each, two whole
volumes), samples of ``train/`` and ``dicom/``, and synthetic arrays of every bit depth 1–16,
signed and unsigned; the bound holds for δ ∈ {1, 2, 4, 8} (with and without a learned base layer)
decoding on 1 and 2 threads; bad δ values are refused; damaged chunks are caught by the
reconstruction CRC. (The golden bounded files are checked in test_golden.py.)"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import bmz
from bmz import api
from bmz.bitstream import container
from bmz.codec import residual
from bmz.codec.chunks import bounded
from bmz.errors import FormatError, InputError

def _rt(arr, **kw) -> np.ndarray:
    data = bmz.compress(arr, **kw)
    back = bmz.decompress(data)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    return back, data


def _read(path) -> np.ndarray:
    from bmz import io as bio

    return np.asarray(bio.read(path).data)


def _pick(v: np.ndarray, n: int) -> np.ndarray:
    """``n`` slices spread over the volume (first, last and between)."""
    ks = sorted({int(round(i * (v.shape[0] - 1) / max(1, n - 1))) for i in range(n)})
    return np.ascontiguousarray(v[ks])


# ---- real data --------------------------------------------------------------------------------

def _val_volumes(root: Path) -> list[Path]:
    val = root / "val"
    vols = sorted((val / "ixi_nichart" / "t1").glob("*.nii.gz"))
    vols += [p for p in sorted((val / "dcm_qa_decubitus").iterdir()) if p.is_dir()]
    vols += [val / "datalad_example_dicom_structural"]
    return vols


def test_lossless_every_val_volume(shared_data):
    vols = _val_volumes(shared_data)
    assert len(vols) >= 12, vols
    for p in vols:
        v = _read(p)
        sub = _pick(v, 3)
        back, _ = _rt(sub, lossless=True, base_quality=0)
        assert np.array_equal(back, sub), p.name


def test_lossless_whole_volumes(shared_data):
    """Two whole val volumes, 8-bit IXI and the 12-bit Prisma series, through the files API with
    the automatic base-layer choice; the decoded NIfTI / array is the original bit for bit."""
    ixi = shared_data / "val" / "ixi_nichart" / "t1" / "IXI067-HH-1356_T1.nii.gz"
    v = _read(ixi)
    back, data = _rt(v, lossless=True)
    assert np.array_equal(back, v)
    assert 8 * len(data) / v.size < 3.1  # below the best classical lossless codec on this volume
    # (benchmarks/results/lossless.md)
    prisma = next(p for p in (shared_data / "val" / "dcm_qa_decubitus").iterdir() if p.is_dir())
    v = _read(prisma)
    back, _ = _rt(v, lossless=True, base_quality=0)
    assert np.array_equal(back, v)


def test_lossless_file_round_trip_keeps_nifti(shared_data, tmp_path):
    import nibabel as nib

    src = shared_data / "val" / "ixi_nichart" / "t1" / "IXI128-HH-1470_T1.nii.gz"
    rep = api.encode_file(src, tmp_path / "a.bmz", lossless=True, base_quality=0, verify=True)
    assert rep.max_error == 0 and rep.psnr == float("inf")
    api.decode_file(tmp_path / "a.bmz", tmp_path / "b.nii.gz")
    a, b = nib.load(src), nib.load(tmp_path / "b.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert a.header.binaryblock == b.header.binaryblock
    assert api.info(tmp_path / "a.bmz")["max_error"] == 0


TRAIN_SAMPLES = ("ixi_nichart/t1/IXI014-HH-1236_T1.nii.gz", "niivue_demo_images/chris_PD.nii.gz",
                 "niivue_demo_images/MR_Gd.nii.gz", "pypi_nipy/anatomical.nii.gz")
DICOM_SAMPLES = ("dcm_qa_12bit/12bitSigned_0x0F0F.dcm", "dcm_qa_12bit/12bitUnsigned.dcm",
                 "dcm_qa_enh/Siemens_XA10_6_1.dcm", "dcm_qa_nih/GE_mr_0004", "dcm_qa_frag/5001_jpegll",
                 "dcm_qa_canon_61/3000.dcm")


@pytest.mark.parametrize("rel", TRAIN_SAMPLES)
def test_lossless_train_sample(shared_data, rel):
    sub = _pick(_read(shared_data / "train" / rel), 2)
    back, _ = _rt(sub, lossless=True, base_quality=0)
    assert np.array_equal(back, sub)


@pytest.mark.parametrize("rel", DICOM_SAMPLES)
def test_lossless_dicom_sample(shared_data, rel):
    sub = _pick(_read(shared_data / "dicom" / rel), 2)
    back, _ = _rt(sub, lossless=True, base_quality=0)
    assert np.array_equal(back, sub)


def test_lossless_dicom_in_memory(shared_data):
    """``compress_dataset`` path: a signed 12-bit DICOM file, lossless, pixels back exactly."""
    pytest.importorskip("pydicom")
    src = shared_data / "dicom" / "dcm_qa_12bit" / "12bitSigned_0x0F0F.dcm"
    v = _read(src)
    back, _ = _rt(v, max_error=0, base_quality=0)
    assert np.array_equal(back, v) and back.dtype == np.int16 and int(v.min()) < 0


# ---- every bit depth --------------------------------------------------------------------------

def _synthetic(bits: int, signed: bool, seed: int) -> np.ndarray:
    """(2, 19, 23) values spanning the full ``bits``-bit range: a smooth ramp, noise, both ends."""
    rng = np.random.default_rng(seed)
    lo = -(1 << (bits - 1)) if signed else 0
    hi = lo + (1 << bits) - 1
    yy, xx = np.mgrid[0:19, 0:23]
    ramp = lo + (yy * 23 + xx) * (hi - lo) // (19 * 23 - 1)
    noise = rng.integers(lo, hi + 1, size=(19, 23))
    a = np.stack([ramp, noise]).astype(np.int64)
    a[0, 0, 0], a[1, -1, -1] = lo, hi
    dtype = (np.int8 if bits <= 8 else np.int16) if signed else (np.uint8 if bits <= 8 else np.uint16)
    return a.astype(dtype)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", range(1, 17))
def test_lossless_every_bit_depth(bits, signed):
    a = _synthetic(bits, signed, bits)
    back, data = _rt(a, lossless=True, base_quality=0)
    assert np.array_equal(back, a)
    assert api.info(data)["intensity"]["bits"] == bits
    if bits >= 3:
        d = (1 << (bits - 2)) - 1 if bits < 6 else 5
        back, _ = _rt(a, max_error=d, base_quality=0)
        assert int(np.abs(back.astype(np.int64) - a).max()) <= d


def test_lossless_2d_and_wide_dtypes():
    a = (np.arange(40 * 30).reshape(40, 30) * 7 % 1000).astype(np.int32)  # 2-D, 10-bit in int32
    back, _ = _rt(a, lossless=True, base_quality=0)
    assert np.array_equal(back, a) and back.ndim == 2
    b = np.full((3, 8, 8), 77, np.uint16)  # constant slices: constant chunks, exact
    b[1, 2, 3] = 1000
    back, _ = _rt(b, lossless=True)
    assert np.array_equal(back, b)


# ---- the bound, threads, base layer -----------------------------------------------------------

@pytest.fixture(scope="module")
def prisma_crop(shared_data) -> np.ndarray:
    p = next(p for p in (shared_data / "val" / "dcm_qa_decubitus").iterdir() if p.is_dir())
    v = _read(p)
    return np.ascontiguousarray(v[[5, 17], 64:192, 48:208])


@pytest.mark.parametrize("delta", [1, 2, 4, 8])
def test_bound_holds_on_1_and_2_threads(prisma_crop, delta):
    v = prisma_crop
    n = torch.get_num_threads()
    try:
        for base_q in (0, 1):
            data = bmz.compress(v, max_error=delta, base_quality=base_q)
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(bmz.decompress(data))
            assert np.array_equal(outs[0], outs[1])
            err = np.abs(outs[0].astype(np.int64) - v.astype(np.int64))
            assert int(err.max()) <= delta
            assert bmz.info(data)["max_error"] == delta
    finally:
        torch.set_num_threads(n)


def test_base_layer_chunks_decode_and_bound(prisma_crop):
    """A chunk that keeps its learned base layer (forced: no per-slice fallback) decodes through
    the bit-exact learned decoder and the residual, on 1 and 2 threads, within the bound."""
    from bmz.codec import pipeline, zoo

    model, _ = zoo.load_model(zoo.DEFAULT_MODEL)
    s = prisma_crop[0]
    mapping = pipeline.mapping_for_range(int(prisma_crop.min()), int(prisma_crop.max()))
    for delta in (0, 3):
        enc = bounded.BoundedEncoder(model, mapping, delta, 1)
        chunk, rec, nbase, _ = enc._chunk(s, 1, fallback=False)
        assert chunk[0] == bounded.KIND and chunk[1] == 1 and nbase > 0
        n = torch.get_num_threads()
        try:
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(bounded.decode_chunk(chunk, s.shape, mapping, delta, lambda: model))
        finally:
            torch.set_num_threads(n)
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], rec + mapping["min"])
        assert int(np.abs(outs[0] - s.astype(np.int64)).max()) <= delta


def test_random_access_slices(prisma_crop):
    data = bmz.compress(prisma_crop, max_error=2, base_quality=0)
    full = bmz.decompress(data)
    assert np.array_equal(bmz.decompress(data, slices=[1])[0], full[1])


# ---- refusals and damage ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, 70000, float("nan")])
def test_bad_max_error_refused(bad):
    with pytest.raises(InputError, match="max_error"):
        bmz.compress(np.zeros((4, 4), np.uint8), max_error=bad)


def test_bad_combinations_refused():
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    with pytest.raises(InputError, match="lossless"):
        bmz.compress(a, max_error=2, lossless=True)
    with pytest.raises(InputError, match="base quality"):
        bmz.compress(a, lossless=True, base_quality=99)
    with pytest.raises(InputError, match="base quality"):
        bmz.compress(a, lossless=True, base_quality="best")
    back = bmz.decompress(bmz.compress(a, max_error=2.0, base_quality=0))  # a whole float is fine
    assert int(np.abs(back.astype(int) - a).max()) <= 2


def test_cli_refusals_and_info(tmp_path):
    from click.testing import CliRunner

    from bmz.cli import main

    np.save(tmp_path / "a.npy", np.arange(600, dtype=np.uint16).reshape(2, 20, 15))
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.bmz"),
                                  "--max-error", "-3"])
    assert r.exit_code != 0 and "max_error must be ≥ 0" in r.output
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.bmz"),
                                  "--lossless", "-q", "3"])
    assert r.exit_code != 0 and "--base-quality" in r.output
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.bmz"),
                                  "--max-error", "2", "--base-quality", "0", "--verify"])
    assert r.exit_code == 0, r.output
    assert "max abs error <= 2" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "a.bmz")])
    assert r.exit_code == 0 and "max abs error 2" in r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "a.bmz"), "-o", str(tmp_path / "b.npy")])
    assert r.exit_code == 0, r.output
    back = np.load(tmp_path / "b.npy")
    assert int(np.abs(back.astype(int) - np.load(tmp_path / "a.npy")).max()) <= 2


def _repack(data: bytes, k: int, chunk: bytes, meta_edit=None) -> bytes:
    """The same file with chunk ``k`` replaced (index CRCs recomputed: a forged file)."""
    with container.BmzReader(data) as r:
        meta = r.meta
        chunks = [r.chunk(i) for i in range(r.n_slices)]
    chunks[k] = chunk
    if meta_edit:
        meta_edit(meta)
    return container.pack(meta, chunks)


def test_damaged_residual_is_caught_by_reconstruction_crc():
    a = (np.arange(3 * 30 * 30).reshape(3, 30, 30) * 37 % 251).astype(np.uint8)
    data = bmz.compress(a, lossless=True, base_quality=0, group=1)  # slices independent
    with container.BmzReader(data) as r:
        c = bytearray(r.chunk(1))
    c[len(c) // 2] ^= 0x55  # bits flipped in the middle of the residual stream
    forged = _repack(data, 1, bytes(c))
    with pytest.raises(FormatError, match="slice 1"):
        bmz.decompress(forged)
    assert np.array_equal(bmz.decompress(forged, slices=[0, 2]), a[[0, 2]])
    c = bytearray(c)
    c[2:6] = (zlib.crc32(b"x") & 0xFFFFFFFF).to_bytes(4, "little")  # wrong stored CRC
    with pytest.raises(FormatError, match="reconstruction check failed|cannot decode"):
        bmz.decompress(_repack(data, 1, bytes(c)))


def test_forged_chunks_refused():
    a = (np.arange(2 * 20 * 20).reshape(2, 20, 20) % 97).astype(np.uint8)
    data = bmz.compress(a, max_error=1, base_quality=0)
    for bad in (b"", b"\x02", b"\x02\x00\x00", b"\x02\x05" + bytes(10), b"\x01\x00\x00" + bytes(8),
                b"\x02\x01" + bytes(4) + (10**6).to_bytes(4, "little")):
        with pytest.raises(FormatError, match="slice 0"):
            bmz.decompress(_repack(data, 0, bad))
    chunk0 = container.BmzReader(data).chunk(0)

    def other_coder(m):
        m["codec"]["residual"] = "nlmix9-000000000000"

    with pytest.raises(FormatError, match="residual coder"):
        bmz.decompress(_repack(data, 0, chunk0, other_coder))

    def wide(m):  # a forged range over 16 bits (int64 dtype)
        m["dtype"] = "<i8"
        m["intensity"].update(max=1 << 40, scale=1 << 40, bits=41)

    with pytest.raises(FormatError, match="over 16 bits"):
        bmz.decompress(_repack(data, 0, chunk0, wide))

    def bad_delta(m):
        m["codec"]["max_error"] = -1

    with pytest.raises(FormatError, match="max_error"):
        bmz.decompress(_repack(data, 0, chunk0, bad_delta))


def test_residual_coder_rejects_garbage_quickly():
    """Random bytes decode to something or raise ValueError; never hang or crash."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        try:
            out = residual.decode(junk, (17, 13), 4095, 0)
            assert out.min() >= 0 and out.max() <= 4095
        except ValueError:
            pass


def test_encode_time_check_refuses_to_write(monkeypatch, tmp_path):
    """If a chunk did not decode back within the bound (a coder bug), nothing is written."""
    from bmz.errors import BmzError

    from bmz.codec import residual3d

    real = residual3d.decode

    def broken(*a, **k):
        out = real(*a, **k)
        out.rec[0, 0] = (out.rec[0, 0] + 5) % 200
        return out

    monkeypatch.setattr(residual3d, "decode", broken)
    a = (np.arange(2 * 16 * 16).reshape(2, 16, 16) % 200).astype(np.uint8)
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(BmzError, match="encode-time check"):
        api.encode_file(tmp_path / "a.npy", tmp_path / "a.bmz", lossless=True, base_quality=0)
    assert not (tmp_path / "a.bmz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


@pytest.mark.parametrize("delta,with_base", [(0, False), (2, True), (5, False)])
def test_compiled_coder_equals_python_integer_semantics(delta, with_base, monkeypatch):
    """The numba-compiled coder and the same function run as plain Python (arbitrary-precision
    integers, Python's floor division and shifts) write identical bytes and reconstructions: the
    compiled arithmetic is exactly the integer arithmetic the format specifies, without overflow."""
    monkeypatch.setattr(residual, "_voxels", residual._voxels.py_func)  # its loop as Python too
    rng = np.random.default_rng(delta)
    x = (np.add.outer(np.arange(11), np.arange(13)) * 90 + rng.integers(0, 300, (11, 13))).astype(np.int64)
    maxv = int(x.max())
    base = np.clip(x + rng.integers(-40, 40, x.shape), 0, maxv) if with_base else None
    data, rec = residual.encode(x, maxv, delta, base)
    b = base if with_base else np.zeros((1, 1), np.int64)
    buf = np.zeros(x.size * 4 + 1024, np.uint8)
    rec2 = np.zeros_like(x)
    n, status = residual._code_slice.py_func(0, x, rec2, b, with_base, maxv, delta, buf,
                                             *residual._args())
    assert status == 0 and buf[:n].tobytes() == data and np.array_equal(rec, rec2)
    out = np.zeros_like(x)
    n, status = residual._code_slice.py_func(1, out, out, b, with_base, maxv, delta,
                                             np.frombuffer(data, np.uint8).copy(), *residual._args())
    assert status == 0 and np.array_equal(out, rec)
    assert int(np.abs(rec - x).max()) <= delta


def test_mutated_chunks_never_decode_to_wrong_values():
    """Random damage behind valid container checksums: a lossless file either decodes to the
    original or fails naming the slice — never to other values (the reconstruction CRC)."""
    rng = np.random.default_rng(7)
    a = (np.add.outer(np.arange(24), np.arange(20)) * 9 % 700).astype(np.uint16)[None]
    a = np.concatenate([a, a[:, ::-1] + 3])
    data = bmz.compress(a, lossless=True, base_quality=0)
    chunk = container.BmzReader(data).chunk(1)
    failed = 0
    for _ in range(40):
        c = bytearray(chunk)
        for _ in range(int(rng.integers(1, 4))):
            c[int(rng.integers(0, len(c)))] = int(rng.integers(0, 256))
        try:
            back = bmz.decompress(_repack(data, 1, bytes(c)))
        except FormatError as e:
            assert "slice 1" in str(e)
            failed += 1
            continue
        assert np.array_equal(back, a)
    assert failed > 20


def test_bounded_chunk_in_a_lossy_file_refused():
    a = (np.arange(2 * 20 * 20).reshape(2, 20, 20) % 97).astype(np.uint8)
    bounded_chunk = container.BmzReader(bmz.compress(a, lossless=True, base_quality=0)).chunk(0)
    lossy = bmz.compress(a, quality=1)

    def claim(m):  # a lossy file that also claims a max_error: still not a bounded file
        m["codec"]["max_error"] = 0

    for edit in (None, claim):
        with pytest.raises(FormatError, match="slice 0 .*chunk format 4"):
            bmz.decompress(_repack(lossy, 0, bounded_chunk, edit))
