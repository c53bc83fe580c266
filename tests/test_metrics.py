"""bmz.metrics (PSNR, SSIM, MS-SSIM, BD-rate) and bmz.baselines (JPEG 2000 per slice). Fast."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from bmz import baselines, metrics

REFERENCE_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "classical_val.csv"


def _ramp(n=3, h=64, w=64, dtype=np.int16):
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, size=(n, h, w)).astype(dtype)
    v[0, 0, 0], v[0, 0, 1] = 0, 255  # range exactly 255
    return v


# ------------------------------------------------------------------------------ metrics


def test_psnr_identical_is_inf_and_ssim_one():
    v = _ramp()
    assert metrics.psnr(v, v, 255) == math.inf
    assert metrics.ssim(v, v, 255) == pytest.approx(1.0)
    assert metrics.max_abs_error(v, v) == 0


def test_psnr_constant_offset_one_on_range_255():
    v = _ramp()
    t = v + 1
    assert metrics.volume_range(v) == 255
    assert metrics.psnr(v, t) == pytest.approx(20 * math.log10(255), abs=1e-9)  # 48.13 dB
    assert metrics.psnr(v, t, 255) == pytest.approx(48.13, abs=0.01)
    assert metrics.max_abs_error(v, t) == 1


def test_psnr_uses_volume_mse_not_mean_of_slices():
    v = _ramp(n=2)
    t = v.copy()
    t[0] += 2  # slice 0 MSE 4, slice 1 MSE 0 -> volume MSE 2
    assert metrics.mse(v, t) == pytest.approx(2.0)
    assert metrics.psnr(v, t, 255) == pytest.approx(10 * math.log10(255 ** 2 / 2.0))


def test_ssim_is_mean_over_slices_and_uses_data_range():
    from skimage.metrics import structural_similarity

    v = _ramp(n=2)
    t = v.copy()
    t[1] = np.clip(t[1] + np.random.default_rng(1).integers(-20, 21, t[1].shape), 0, 255)
    want = np.mean([structural_similarity(v[k].astype(float), t[k].astype(float), data_range=255)
                    for k in range(2)])
    assert metrics.ssim(v, t, 255) == pytest.approx(want)
    # a larger data range forgives the same errors more
    assert metrics.ssim(v, t, 4095) > metrics.ssim(v, t, 255)


def test_ms_ssim_size_limit():
    small = _ramp(n=1, h=120, w=120)
    assert metrics.ms_ssim(small, small, 255) is None
    n = metrics.MS_SSIM_MIN_SIDE
    big = np.random.default_rng(2).integers(0, 2000, size=(1, n, n)).astype(np.uint16)
    assert metrics.ms_ssim(big, big, 2000) == pytest.approx(1.0, abs=1e-5)


def test_bpp():
    assert metrics.bpp(1000, 8000) == pytest.approx(1.0)
    assert metrics.bpp(0, 10) == 0.0


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), 1)


# ------------------------------------------------------------------------------ Bjøntegaard

RATES = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNRS = [28.0, 31.5, 35.0, 39.0, 44.0]


def test_bd_rate_same_curve_is_zero():
    assert metrics.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert metrics.bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_ten_percent_fewer_bits():
    r2 = [r * 0.9 for r in RATES]
    assert metrics.bd_rate(RATES, PSNRS, r2, PSNRS) == pytest.approx(-10.0, abs=1e-6)
    assert metrics.bd_rate(r2, PSNRS, RATES, PSNRS) == pytest.approx(100 / 0.9 - 100, abs=1e-6)


def test_bd_psnr_constant_shift_and_rate_window():
    d2 = [d + 1.0 for d in PSNRS]
    assert metrics.bd_psnr(RATES, PSNRS, RATES, d2) == pytest.approx(1.0)
    assert metrics.bd_psnr(RATES, PSNRS, RATES, d2, rate_range=(0.25, 1.0)) == pytest.approx(1.0)
    # a better curve needs fewer bits
    assert metrics.bd_rate(RATES, PSNRS, RATES, d2) < 0


def test_bd_none_without_overlap_and_ignores_inf():
    far = [d + 100 for d in PSNRS]
    assert metrics.bd_rate(RATES, PSNRS, RATES, far) is None
    assert metrics.bd_psnr(RATES, PSNRS, [r * 100 for r in RATES], PSNRS) is None
    assert metrics.bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS) is None
    # a lossless point (inf) is dropped, not propagated
    r = RATES + [3.0]
    d = PSNRS + [math.inf]
    assert metrics.bd_rate(r, d, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_interp_log_rate():
    got = metrics.interp_log_rate([0.1, 1.0], [30.0, 40.0], [0.1, math.sqrt(0.1), 1.0, 2.0])
    assert got[:3] == pytest.approx([30.0, 35.0, 40.0])
    assert math.isnan(got[3])


# ------------------------------------------------------------------------------ baselines


def test_codec_input_bit_depth_and_dtype():
    v = np.array([[[100, 2147]]], dtype=np.int16)  # range 2047 -> 11 bits
    x, vmin, bits = baselines.codec_input(v)
    assert (vmin, bits, x.dtype) == (100, 11, np.uint16)
    assert x.tolist() == [[[0, 2047]]]
    x, _, bits = baselines.codec_input(np.array([[[3, 200]]], dtype=np.uint8))
    assert (bits, x.dtype) == (8, np.uint8)


def test_registry_and_settings():
    c = baselines.get_codec("JPEG2000")
    names = [s.name for s in c.settings]
    assert names[0] == "psnr18" and names[-1] == "lossless" and "psnr76" in names
    assert c.setting("lossless").lossless
    with pytest.raises(KeyError):
        baselines.get_codec("nope")


def test_lossless_mismatch_is_detected():
    class Lossy(baselines.SliceCodec):
        name = "lossy-test"
        settings = (baselines.Setting("lossless", 0, lossless=True),)

        def encode(self, img, setting, bits):
            return (img // 2).astype(img.dtype).tobytes() + bytes([img.shape[0], img.shape[1]])

        def decode(self, data, bits):
            h, w = data[-2], data[-1]
            return np.frombuffer(data[:-2], dtype=np.uint8).reshape(h, w) * 2

    v = _ramp(n=1, h=8, w=8, dtype=np.uint8)
    with pytest.raises(baselines.LosslessMismatch):
        baselines.code_volume(Lossy(), v, "lossless")


def _phantom(n=12, h=64, w=64):
    """A 10-bit volume with structure and noise (JPEG 2000's size grows smoothly with its target)."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w]
    v = np.stack([400 + 300 * np.sin(x / (5 + k)) * np.cos(y / 7) for k in range(n)])
    return np.clip(v + rng.normal(0, 20, v.shape), 0, 1023).astype(np.uint16)


def test_jpeg2000_at_bytes_matches_the_budget_from_below():
    v = _phantom(n=6)
    bits = baselines.codec_input(v)[2]
    for budget in (1500, 6000, 20000):
        cv = baselines.jpeg2000_at_bytes(v, budget)
        assert cv.bits == bits == 10 and cv.recon.shape == v.shape and cv.recon.dtype == v.dtype
        assert 0.95 * budget <= cv.n_bytes <= budget, (budget, cv.n_bytes)
    # out of reach: the highest / lowest target, whatever its size
    assert baselines.jpeg2000_at_bytes(v, 10**9).setting.param == baselines.J2K_LEVEL_RANGE[1]
    assert baselines.jpeg2000_at_bytes(v, 1).setting.param == baselines.J2K_LEVEL_RANGE[0]


def test_jpeg2000_at_bytes_searches_a_few_slices_of_a_long_volume(monkeypatch):
    v = _phantom(n=24)
    calls = []
    real = baselines.JPEG2000.encode
    monkeypatch.setattr(baselines.JPEG2000, "encode",
                        lambda self, img, s, b: calls.append(1) or real(self, img, s, b))
    cv = baselines.jpeg2000_at_bytes(v, 30000, slice_bytes=[1250] * 24, search_slices=4,
                                     iterations=10)
    assert len(calls) <= 4 * 10 + 24  # the search on 4 slices, then the whole volume once
    assert 0.85 * 30000 <= cv.n_bytes <= 1.15 * 30000


def _ixi(shared_data: Path) -> Path:
    files = sorted((shared_data / "val" / "ixi_nichart" / "t1").glob("*.nii.gz"))
    if not files:
        pytest.skip("no IXI validation volume in shared data")
    return files[0]


def test_j2k_lossless_bit_exact_on_real_slices(shared_data):
    from bmz import io as bio

    vol = bio.read(_ixi(shared_data)).data
    k = vol.shape[0] // 2
    cv = baselines.code_volume(baselines.get_codec("JPEG2000"), vol[k:k + 1], "lossless")
    assert np.array_equal(cv.recon, vol[k:k + 1]) and cv.recon.dtype == vol.dtype
    prisma = shared_data / "val" / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag"
    if prisma.is_dir():  # the 16-bit container path, 11-12 bits declared
        p = bio.read(prisma).data
        cv = baselines.code_volume(baselines.get_codec("JPEG2000"), p[p.shape[0] // 2][None], "lossless")
        assert cv.bits > 8 and np.array_equal(cv.recon, p[p.shape[0] // 2][None])


def test_j2k_one_ixi_volume_roughly_matches_reference(shared_data):
    """Loose: one volume vs the reference's 11-volume group mean (see benchmarks/rd_val.py for
    the real check)."""
    from bmz import io as bio

    if not REFERENCE_CSV.is_file():
        pytest.skip(f"reference csv not found at {REFERENCE_CSV}")
    with open(REFERENCE_CSV, newline="") as f:
        ref = {r["setting"]: r for r in csv.DictReader(f)
               if r["group"] == "val" and r["codec"] == "JPEG2000"}
    vol = bio.read(_ixi(shared_data)).data
    codec = baselines.get_codec("JPEG2000")
    rng = metrics.volume_range(vol)
    last_bpp = 0.0
    for s in ("psnr30", "psnr36", "psnr45"):
        cv = baselines.code_volume(codec, vol, s)
        bpp = metrics.bpp(cv.n_bytes, vol.size)
        p = metrics.psnr(vol, cv.recon, rng)
        assert abs(p - float(ref[s]["psnr"])) < 2.0, (s, p)
        assert 0.6 < bpp / float(ref[s]["bpp"]) < 1.6, (s, bpp)
        assert bpp > last_bpp
        last_bpp = bpp


def test_a_missing_extra_is_named():
    """The tools' packages are extras: one that is missing says which extra installs it."""
    from bmz import _deps
    from bmz.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"SSIM needs no_such_pkg: pip install 'bmz\[bench\]'"):
        _deps.optional("no_such_pkg.metrics", "bench", "SSIM")
