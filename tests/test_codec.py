"""The learned codec end to end on real MRI: round trips, fidelity floors, random access,
determinism, integrity and model identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bmz
from bmz import api
from bmz.bitstream import BmzReader, pack
from bmz.codec import zoo
from bmz.errors import ChecksumError, FormatError, InputError, ModelMismatchError, TruncatedError

IXI = "val/ixi_nichart/t1/IXI067-HH-1356_T1.nii.gz"
PRISMA = "val/dcm_qa_decubitus/HFS_t1_fl2d_sag"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    mse = np.mean((a - b) ** 2)
    peak = a.max() - a.min()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def ixi(shared_data):
    from bmz import io

    return io.read(shared_data / IXI).data


@pytest.fixture(scope="module")
def ixi_bmz(ixi):
    return api.compress(ixi)  # the flagship's default level (λ 0.15625)


@pytest.fixture(scope="module")
def prisma(shared_data):
    from bmz import io

    return io.read(shared_data / PRISMA).data


def test_shipped_model_matches_card():
    model, sha = zoo.load_model(zoo.DEFAULT_MODEL)
    card = zoo.read_card(zoo.DEFAULT_MODEL)
    assert card["sha256"] == sha
    assert len(card["qualities"]) == model.n_qualities >= 4
    assert int(model.int_hs.built) == 1


def test_ixi_round_trip_quality_floor(ixi, ixi_bmz):
    back = api.decompress(ixi_bmz)
    assert back.dtype == ixi.dtype and back.shape == ixi.shape
    bpp = 8 * len(ixi_bmz) / ixi.size
    # a floor well below the measured value (benchmarks/results, the model card) but far above
    # garbage
    assert psnr(ixi, back) > 38.0, (psnr(ixi, back), bpp)
    assert bpp < 2.5


def test_rate_increases_with_quality(ixi):
    sub = ixi[40:44]
    sizes = [len(api.compress(sub, quality=q)) for q in (1, 4, 8)]
    errs = [psnr(sub, api.decompress(api.compress(sub, quality=q))) for q in (1, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert errs[0] < errs[1] < errs[2]


def test_prisma_12bit_round_trip(prisma):
    assert prisma.dtype == np.uint16 and prisma.max() > 255
    data = api.compress(prisma, quality=8)
    back = api.decompress(data)
    assert back.dtype == prisma.dtype and back.shape == prisma.shape
    assert back.min() >= prisma.min() and back.max() <= prisma.max()
    assert psnr(prisma, back) > 45.0  # a floor well below the measured value


def test_random_access_equals_full_decode(ixi, ixi_bmz):
    full = api.decompress(ixi_bmz)
    part = api.decompress(ixi_bmz, slices=slice(10, 20))
    np.testing.assert_array_equal(part, full[10:20])
    picked = api.decompress(ixi_bmz, slices=[50, 3, 50])
    np.testing.assert_array_equal(picked, full[[50, 3, 50]])


def test_decoding_is_deterministic(ixi, ixi_bmz):
    """Same array whatever the slices decoded at once, their order, and 1 or 2 threads
    (decoding is integer-exact, so this holds on every machine, too: see test_golden)."""
    threads = torch.get_num_threads()
    ks = list(range(30, 60))
    try:
        torch.set_num_threads(1)
        one = api.decompress(ixi_bmz, slices=ks)
        torch.set_num_threads(2)
        two = api.decompress(ixi_bmz, slices=ks)
        rev = api.decompress(ixi_bmz, slices=ks[::-1])[::-1]
        singles = np.stack([api.decompress(ixi_bmz, slices=[k])[0] for k in ks[:10]])
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, rev)
    np.testing.assert_array_equal(one[:10], singles)


def test_scale_indices_are_integer_exact(ixi):
    """The entropy decoder's CDF indices come from integers only: the same for a batch of slices,
    each slice alone, 1 or 2 threads (the CompressAI cross-machine trap)."""
    from bmz.codec import pipeline

    model, _ = zoo.load_model(zoo.DEFAULT_MODEL)
    mapping = pipeline.intensity_mapping(ixi)
    x = torch.from_numpy(np.stack([pipeline.pad_to_multiple(pipeline.to_unit(s, mapping), 64)
                                   for s in ixi[30:38]]))[:, None]
    with torch.no_grad():
        z = model.h_a(torch.abs(model.g_a(x)))
        med = model._z_medians()[None, :, None, None]
        z_hat = torch.round(z - med) + med
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        batch = model.int_hs.indexes(z_hat, 4)
        torch.set_num_threads(2)
        single = torch.cat([model.int_hs.indexes(z_hat[i:i + 1], 4) for i in range(len(z_hat))])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batch, single)
    assert batch.dtype == torch.int32
    assert 0 <= int(batch.min()) and int(batch.max()) < model.scale_levels


@pytest.mark.parametrize("bits,signed", [(1, False), (4, False), (8, True), (12, False), (16, True),
                                         (16, False)])
def test_any_bit_depth(bits, signed):
    rng = np.random.default_rng(bits)
    dtype = np.int16 if signed and bits > 8 else np.int8 if signed else np.uint16 if bits > 8 else np.uint8
    lo = -(2 ** (bits - 1)) if signed else 0
    # a smooth image plus noise spanning the full range
    yy, xx = np.mgrid[0:37, 0:53]
    base = (np.sin(xx / 7.0) * np.cos(yy / 5.0) + 1) / 2
    vol = np.stack([base * (2**bits - 1) + rng.normal(0, 1, base.shape) for _ in range(3)])
    vol = np.clip(np.rint(vol) + lo, lo, lo + 2**bits - 1).astype(dtype)
    vol[1] = lo + 3 if bits > 1 else lo  # a constant slice
    back = api.decompress(api.compress(vol, quality=8))
    assert back.dtype == vol.dtype and back.shape == vol.shape
    np.testing.assert_array_equal(back[1], vol[1])
    assert back.min() >= vol.min() and back.max() <= vol.max()
    if bits >= 8:
        assert psnr(vol, back) > 25


def test_constant_and_empty_volumes():
    z = np.zeros((4, 10, 10), np.uint16)
    np.testing.assert_array_equal(api.decompress(api.compress(z)), z)
    c = np.full((7, 9), -5, np.int16)
    np.testing.assert_array_equal(api.decompress(api.compress(c)), c)
    with pytest.raises(InputError, match="empty"):
        api.compress(np.zeros((0, 10, 10), np.uint8))


def test_2d_and_one_pixel():
    one = np.array([[42]], dtype=np.uint8)
    np.testing.assert_array_equal(api.decompress(api.compress(one)), one)
    img = (np.arange(30 * 70).reshape(30, 70) % 251).astype(np.uint8)
    back = api.decompress(api.compress(img, quality=8))
    assert back.shape == img.shape and back.dtype == img.dtype


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((3, 4, 5, 6), np.uint8), "shape"),
    (np.zeros(10, np.uint8), "shape"),
    (np.full((4, 4), 0.5, np.float32), "floating point"),
    (np.zeros((4, 4), np.complex64), "not an integer"),
    (np.array([[0, 70000]], np.int32), "16 bits"),
    (np.zeros((1, 4097, 4097), np.uint8), "4096"),  # beyond the format's slice-size limit
])
def test_bad_arrays(bad, msg):
    with pytest.raises(InputError, match=msg):
        api.compress(bad)


def test_bad_quality(ixi):
    with pytest.raises(InputError, match="quality"):
        api.compress(ixi[:1], quality=0)


def test_damaged_chunk_names_slice(ixi_bmz):
    r = BmzReader(ixi_bmz)
    off = r.data_start if hasattr(r, "data_start") else None
    data = bytearray(ixi_bmz)
    # flip a bit in the middle of slice 45's chunk
    sizes = r.chunk_sizes()
    start = len(data) - sum(sizes) + sum(sizes[:45])
    assert off is None or start >= off
    data[start + sizes[45] // 2] ^= 0x10
    with pytest.raises(ChecksumError) as e:
        api.decompress(bytes(data))
    assert e.value.slice_index == 45 and "slice 45" in str(e.value)
    # other slices still decode
    np.testing.assert_array_equal(api.decompress(bytes(data), slices=[44]),
                                  api.decompress(ixi_bmz, slices=[44]))


def test_truncated_file(ixi_bmz):
    for cut in (5, 40, len(ixi_bmz) // 2, len(ixi_bmz) - 1):
        with pytest.raises(FormatError):
            api.decompress(ixi_bmz[:cut])
    with pytest.raises(TruncatedError):
        api.decompress(ixi_bmz[:-1])


def test_wrong_model_is_refused(ixi):
    data = api.compress(ixi[:3], quality=2)
    r = BmzReader(data)
    meta = dict(r.meta)
    meta["codec"] = dict(meta["codec"], weights_sha256="0" * 64)
    forged = pack(meta, [r.chunk(k) for k in range(r.n_slices)])
    with pytest.raises(ModelMismatchError, match="weights"):
        api.decompress(forged)
    meta["codec"] = dict(meta["codec"], model="no-such-model")
    with pytest.raises(bmz.errors.UnknownModelError, match="no-such-model"):
        api.decompress(pack(meta, [r.chunk(k) for k in range(r.n_slices)]))


def test_public_api_names():
    for name in ("compress", "decompress", "encode_file", "decode_file"):
        assert callable(getattr(bmz, name))


def test_floor_restores_flat_background(ixi):
    """Air stored as the volume minimum decodes as the minimum (the per-slice floor), and the floor
    chosen never increases a slice's error."""
    from bmz.codec import pipeline
    from bmz.codec.chunks import learned_compact

    rng = np.random.default_rng(0)
    s = ixi[45].astype(np.int64)
    mapping = pipeline.intensity_mapping(ixi)
    rec = np.clip(s + rng.integers(0, 4, s.shape), mapping["min"], mapping["max"])  # a biased decode
    f = pipeline.choose_floor(s, rec, mapping)
    snapped = np.where(rec <= mapping["min"] + f, mapping["min"], rec)
    assert ((snapped - s) ** 2).sum() <= ((rec - s) ** 2).sum()
    assert f >= 3  # the whole +0..3 bias over the background is removed
    assert pipeline.choose_floor(s, s, mapping) == 0  # a perfect decode needs no floor
    data = api.compress(ixi[40:44], quality=2)
    back = api.decompress(data)
    bg = ixi[40:44] == ixi.min()
    r = BmzReader(data)  # the same file with every floor zeroed: what the network alone gives
    chunks = [r.chunk(k) for k in range(r.n_slices)]
    assert {c[0] for c in chunks} == {learned_compact.KIND}  # floor: a varint after the kind
    unfloored = api.decompress(pack(r.meta, [c[:1] + b"\x00" + c[learned_compact.read_varint(c, 1)[1]:]
                                             for c in chunks]))
    exact, exact_without = np.mean(back[bg] == ixi.min()), np.mean(unfloored[bg] == ixi.min())
    # air is mostly exact (the rest is ringing next to tissue, beyond any SSE-optimal floor),
    # and far more of it than without the floor
    assert exact > 0.85 and exact > exact_without + 0.2, (exact, exact_without)


# ---- chunk formats: 4 (compact, written) and 2 (decoded as ever) --------------------------------


def _repack(data: bytes, chunks=None, meta_edit=None) -> bytes:
    """The same file with other chunks / metadata (CRCs recomputed: a forged file)."""
    with BmzReader(data) as r:
        meta, old = r.meta, [r.chunk(i) for i in range(r.n_slices)]
    if meta_edit:
        meta_edit(meta)
    return pack(meta, old if chunks is None else chunks)


@pytest.mark.parametrize("model", ["hyperprior", "cnn-ae-8"])
def test_compact_chunks_decode_like_format_2_and_are_smaller(ixi, model):
    """Format 4 (kind 3: varint floor, one stream) holds the same latents as format 2 (kind 1:
    u16 floor, u32 z length, two streams): the same decoded voxels, fewer bytes per slice."""
    from bmz.codec import pipeline
    from bmz.codec.chunks import learned, learned_compact

    sub = ixi[38:44]
    m, _ = zoo.load_model(model)
    q = zoo.default_quality(m.lambdas)
    data4 = api.compress(sub, quality=q, model=model)
    with BmzReader(data4) as r:
        assert r.meta["codec"]["chunk_format"] == 4
        c4 = [r.chunk(i) for i in range(r.n_slices)]
    assert {c[0] for c in c4} == {learned_compact.KIND}
    mapping = pipeline.intensity_mapping(sub)
    c2 = [learned.encode(m, s, mapping, q - 1) for s in sub]

    def fmt2(meta):
        meta["codec"]["chunk_format"] = 2
    data2 = _repack(data4, c2, fmt2)
    assert np.array_equal(api.decompress(data2), api.decompress(data4))
    saved = [len(a) - len(b) for a, b in zip(c2, c4)]
    # hyperprior: 4 length bytes + 1 floor byte + one stream's sealing (whole 32-bit words);
    # the factorized families have one stream anyway: the floor byte only
    assert all(s >= (5 if model == "hyperprior" else 1) for s in saved), saved


def test_learned_chunk_kind_must_match_the_files_format(ixi):
    from bmz.codec import pipeline
    from bmz.codec.chunks import learned

    sub = ixi[40:42]
    data4 = api.compress(sub, quality=2)
    m, _ = zoo.load_model("hyperprior")
    c2 = [learned.encode(m, s, pipeline.intensity_mapping(sub), 1) for s in sub]
    with pytest.raises(FormatError, match="slice 0 of 2: .*chunk kind 1 in a file of chunk format 4"):
        api.decompress(_repack(data4, c2))

    def fmt2(meta):
        meta["codec"]["chunk_format"] = 2
    with pytest.raises(FormatError, match="slice 0 of 2: .*chunk kind 3 in a file of chunk format 2"):
        api.decompress(_repack(data4, None, fmt2))

    for bad in (7, True, "4", [4], {"min": 4}, None):  # not a known format (nor hashable, some)
        def edit(meta, bad=bad):
            meta["codec"]["chunk_format"] = bad
        with pytest.raises(FormatError, match="chunk format .* is not supported"):
            api.decompress(_repack(data4, None, edit))


@pytest.mark.parametrize("header, msg", [
    (b"\x03", "truncated in its floor"),
    (b"\x03\x80", "truncated in its floor"),
    (b"\x03\x81\x00", "not minimal"),
    (b"\x03\xff\xff\xff\x01", "longer than 3 bytes"),
    (b"\x03\x7f", "floor 127 above the largest"),   # 8-bit volume: floors 0..7
])
def test_bad_compact_chunk_headers_are_refused(ixi, header, msg):
    sub = ixi[40:41]
    data = api.compress(sub, quality=2)
    with BmzReader(data) as r:
        chunk = r.chunk(0)
    forged = header if "truncated" in msg else header + chunk[2:]
    with pytest.raises(FormatError, match=msg):
        api.decompress(_repack(data, [forged]))


def test_floor_varint_round_trips():
    from bmz.codec.chunks import learned_compact

    for v in (0, 1, 127, 128, 300, 16383, 16384, 65535):
        enc = learned_compact.write_floor(v)
        assert len(enc) == (1 if v < 128 else 2 if v < 16384 else 3)
        assert learned_compact.read_varint(b"\x03" + enc + b"rest", 1) == (v, 1 + len(enc))
