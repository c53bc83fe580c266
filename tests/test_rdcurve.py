"""``bmz rd-curve`` (bmz.rdcurve) and the classical codecs of bmz.baselines: lossless bit-exactness
at 8 and 12 bits, REFERENCE.md §2's traps, header estimates, error rows, --reuse, the CLI end to
end, and a small subset of val against expectations derived from the reference investigation
(benchmarks/rd_val.py's REFERENCE_NOTE). Small inputs only: the whole file runs in well under a
minute on one core."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bmz import baselines, metrics, rdcurve
from bmz.cli import main

REFERENCE_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "classical_val.csv"
IXI = "val/ixi_nichart/t1/{}_T1.nii.gz"
PRISMA = "val/dcm_qa_decubitus/HFS_t1_fl2d_sag"
CODEC_NAMES = ("JPEG", "JPEG2000", "HTJ2K", "JPEG-LS", "JPEG-XL", "AVIF")


def _phantom(bits: int, n: int = 1, h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth disc with texture, noise and hard edges at the extremes of a ``bits``-bit range."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    base = np.where(r < min(h, w) * 0.4, 0.55 + 0.25 * np.sin(xx / 3.0) * np.cos(yy / 4.0), 0.02)
    vol = []
    for k in range(n):
        v = base * top + rng.normal(0, top * 0.01, (h, w))
        v[2:6, 2:10] = top  # saturated block next to zeros: the wrap trap
        v[2:6, 10:14] = 0
        vol.append(np.clip(np.rint(v), 0, top))
    dt = np.uint8 if bits <= 8 else np.uint16
    return np.asarray(vol).astype(dt)


def _real(shared_data: Path, rel: str) -> np.ndarray:
    from bmz import io as bio

    p = shared_data / rel
    if not p.exists():
        pytest.skip(f"{rel} not in the shared data")
    return bio.read(p).data


# ------------------------------------------------------------------------------ codecs


def test_registry_aliases():
    assert set(CODEC_NAMES) <= set(baselines.CODECS)
    for alias, name in (("jpegls", "JPEG-LS"), ("jpeg-xl", "JPEG-XL"), ("JPEG2000", "JPEG2000"),
                        ("htj2k", "HTJ2K"), ("avif", "AVIF"), ("jpeg", "JPEG")):
        assert baselines.canonical_name(alias) == name
    with pytest.raises(KeyError):
        baselines.canonical_name("webp")
    # the reference csv's settings are the 8-bit sweep, wider sweeps only for B > 8
    jls = baselines.get_codec("jpegls")
    assert [s.name for s in jls.settings_for(8)][:2] == ["near64", "near32"]
    assert "near255" in [s.name for s in jls.settings_for(12)]
    ht = baselines.get_codec("htj2k")
    assert ht.setting("step0.6").param == pytest.approx(0.00234375)
    assert len(ht.settings_for(12)) > len(ht.settings_for(8))


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("bits", [8, 12])
def test_lossless_bit_exact_synthetic(name, bits):
    vol = _phantom(bits)
    codec = baselines.get_codec(name)
    for s in codec.settings_for(bits):
        if s.lossless:
            cv = baselines.code_volume(codec, vol, s)
            assert np.array_equal(cv.recon, vol), (name, s.name)
            assert 0 < cv.header_bytes < cv.n_bytes


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_lossless_bit_exact_real_8_and_12_bit(shared_data, name):
    ixi = _real(shared_data, IXI.format("IXI128-HH-1470"))
    prisma = _real(shared_data, PRISMA)
    codec = baselines.get_codec(name)
    for vol in (ixi, prisma):
        k = vol.shape[0] // 2
        sl = vol[k:k + 1]
        bits = baselines.bit_depth(int(vol.min()), int(vol.max()))
        cv = baselines.code_volume(codec, sl, "lossless", vmin=int(vol.min()), bits=bits)
        assert cv.bits == bits and np.array_equal(cv.recon, sl) and cv.recon.dtype == vol.dtype
    assert baselines.bit_depth(int(prisma.min()), int(prisma.max())) > 8


def test_htj2k_lossy_does_not_wrap():
    """OpenJPH's lossy path does not clamp: fed uint8, 255 can come back as 0. We feed int16 and
    clamp, so saturated pixels stay near the top."""
    vol = _phantom(8, h=64, w=64)
    vol[0, 16:48, 8:32] = 255  # a saturated region next to black: the overshoot would wrap
    vol[0, 16:48, 32:56] = 0
    codec = baselines.get_codec("HTJ2K")
    inner = np.zeros(vol.shape, bool)
    inner[0, 22:42, 12:28] = True
    for s in ("step0.6", "step0.1", "step0.01"):
        cv = baselines.code_volume(codec, vol, s)
        assert cv.recon.min() >= 0 and cv.recon.max() <= 255
        assert cv.recon[inner].min() >= 200, s  # a wrap would give values near 0
    raw = np.asarray(codec.decode(codec.encode(vol[0], codec.setting("step0.6"), 8), 8))
    assert raw.dtype == np.int16  # what comes back before the clamp: signed, may leave the range


def test_avif_depth_and_no_clipping_above_1023():
    assert [baselines.avif_depth(b) for b in (1, 8, 9, 10, 11, 12)] == [8, 8, 10, 10, 12, 12]
    with pytest.raises(baselines.UnsupportedBitDepth):
        baselines.avif_depth(13)
    vol = _phantom(11, h=64, w=64)  # values up to 2047: a 10-bit AVIF would clip them at 1023
    assert vol.max() == 2047
    codec = baselines.get_codec("AVIF")
    cv = baselines.code_volume(codec, vol, "q80")
    hi = vol > 1500
    assert cv.recon[hi].min() > 1200 and cv.recon.max() > 1900
    assert metrics.psnr(vol, cv.recon) > 30


def test_jpeg_12_bit_is_sof1_and_13_bit_lossy_refused():
    codec = baselines.get_codec("JPEG")
    v12 = _phantom(12)
    data = codec.encode(v12[0], codec.setting("q75"), 12)
    assert b"\xff\xc1" in data[:400] and b"\xff\xc0" not in data[:400]  # SOF1, 12-bit
    cv = baselines.code_volume(codec, v12, "q75")
    assert metrics.psnr(v12, cv.recon) > 35
    v13 = _phantom(13)
    with pytest.raises(baselines.UnsupportedBitDepth):
        baselines.code_volume(codec, v13, "q75")
    assert np.array_equal(baselines.code_volume(codec, v13, "lossless").recon, v13)


def test_header_estimates_match_reference_per_image():
    """On a 120×120 8-bit slice the per-image headers are what the reference csv's
    ``bpp − bpp_nohdr`` implies: J2K 129/143 B, HTJ2K 131/147 B, bare JPEG-LS 27 B (71 B with
    imagecodecs' SPIFF header), AVIF 269 B (ISOBMFF boxes outside mdat)."""
    img = _phantom(8, h=120, w=120)
    want = {("JPEG2000", "lossless"): 129, ("JPEG2000", "psnr36"): 143, ("HTJ2K", "lossless"): 131,
            ("HTJ2K", "step0.1"): 147, ("JPEG-LS", "lossless"): 27, ("JPEG-LS", "lossless-ic"): 71,
            ("JPEG-LS", "near8"): 27, ("AVIF", "q55"): 269}
    for (name, s), n in want.items():
        cv = baselines.code_volume(baselines.get_codec(name), img, s)
        assert cv.header_bytes == n, (name, s, cv.header_bytes)
    # JPEG: markers parsed, entropy-coded bytes excluded; JPEG XL: a 1×1 image's size
    cv = baselines.code_volume(baselines.get_codec("JPEG"), img, "q75")
    assert 150 < cv.header_bytes < 260
    cv = baselines.code_volume(baselines.get_codec("JPEG-XL"), img, "lossless")
    assert 10 < cv.header_bytes < 40


def test_header_parsers_on_hand_made_streams():
    # SOI, APP0(16), SOS(8) + 5 data bytes incl. a stuffed FF00, EOI
    jpeg = (b"\xff\xd8" + b"\xff\xe0\x00\x10" + bytes(14) + b"\xff\xda\x00\x08" + bytes(6)
            + b"\x12\xff\x00\x34\x56" + b"\xff\xd9")
    assert baselines.jpeg_marker_header_bytes(jpeg) == len(jpeg) - 5
    box = lambda t, payload: (8 + len(payload)).to_bytes(4, "big") + t + payload  # noqa: E731
    avif = box(b"ftyp", bytes(12)) + box(b"meta", bytes(30)) + box(b"mdat", bytes(100))
    assert baselines.isobmff_header_bytes(avif) == len(avif) - 100


# ------------------------------------------------------------------------------ val subset


# per-volume values of imagecodecs 2026.1.14 (a pinned expectation: see rd_val.py's REFERENCE_NOTE
# for how they relate to the reference's group means)
EXPECT = {  # (volume, codec, setting): (bpp, psnr)
    ("IXI067-HH-1356", "JPEG2000", "lossless"): (3.4596, math.inf),
    ("IXI067-HH-1356", "JPEG-LS", "lossless"): (3.2049, math.inf),
    ("IXI128-HH-1470", "JPEG2000", "lossless"): (2.8903, math.inf),
    ("IXI128-HH-1470", "JPEG-LS", "lossless"): (2.6368, math.inf),
    ("IXI128-HH-1470", "JPEG2000", "psnr36"): (0.5513, 36.749),
    ("IXI128-HH-1470", "JPEG-LS", "near8"): (0.7068, 36.893),
    ("IXI128-HH-1470", "JPEG", "q75"): (0.8238, 37.34),
}


@pytest.fixture(scope="module")
def reference_rows():
    if not REFERENCE_CSV.is_file():
        pytest.skip(f"reference csv not found at {REFERENCE_CSV}")
    with open(REFERENCE_CSV, newline="") as f:
        return {(r["codec"], r["setting"]): r for r in csv.DictReader(f) if r["group"] == "val"}


def test_val_subset_matches_expectations_and_reference(shared_data, reference_rows):
    for (vol_id, name, s), (bpp, ps) in EXPECT.items():
        vol = _real(shared_data, IXI.format(vol_id))
        cv = baselines.code_volume(baselines.get_codec(name), vol, s)
        got_bpp = metrics.bpp(cv.n_bytes, vol.size)
        got_psnr = metrics.psnr(vol, cv.recon)
        assert got_bpp == pytest.approx(bpp, rel=0.005), (vol_id, name, s)
        if math.isinf(ps):
            assert math.isinf(got_psnr)
        else:
            assert got_psnr == pytest.approx(ps, abs=0.05), (vol_id, name, s)
        # loosely against the reference's 11-volume group mean (one volume is not the mean)
        ref = reference_rows[(name, s)]
        assert 0.75 < got_bpp / float(ref["bpp"]) < 1.3, (vol_id, name, s)
        if not math.isinf(ps):
            assert abs(got_psnr - float(ref["psnr"])) < 1.5


# ------------------------------------------------------------------------------ rdcurve


@pytest.fixture()
def tiny_inputs(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    np.save(d / "a8.npy", _phantom(8, n=2, seed=1))
    np.save(d / "sub" / "b12.npy", _phantom(12, n=2, seed=2).astype(np.int16))
    (d / "broken.nii").write_bytes(b"not a nifti file at all" * 20)
    (d / "notes.txt").write_text("ignored")
    return d


def test_discover_and_groups(tiny_inputs, tmp_path):
    items = rdcurve.discover([tiny_inputs, tmp_path / "missing.nii.gz"])
    names = sorted(i.name for i in items)
    assert names == sorted(["in/a8.npy", "in/broken.nii", "in/sub/b12.npy",
                            str(tmp_path / "missing.nii.gz")])
    assert {i.source for i in items if i.name.startswith("in/")} == {"in"}
    assert [i for i in items if "missing" in i.name][0].error
    assert rdcurve.middle_slices(10, 4) == slice(3, 7) and rdcurve.middle_slices(3, 8) == slice(0, 3)


def test_dicom_folder_is_one_input(shared_data):
    p = shared_data / PRISMA
    if not p.is_dir():
        pytest.skip("no Prisma series")
    items = rdcurve.discover([p.parent])
    assert [i.name for i in items] == ["dcm_qa_decubitus/HFS_t1_fl2d_sag"]


def test_run_error_rows_groups_and_reuse(tiny_inputs, tmp_path):
    out = tmp_path / "out"
    # a 14-bit volume: JPEG lossy and AVIF refuse it (error rows), JPEG lossless works
    np.save(tiny_inputs / "c14.npy", _phantom(14, n=1, seed=3))
    res = rdcurve.run([tiny_inputs], out, codecs=["jpeg2000", "jpeg", "avif"], progress=False,
                      plots=False)
    rows = res.rows
    assert {r["group"] for r in rows if not r["error"]} >= {"in/8-bit", "in/>8-bit"}
    broken = [r for r in rows if r["volume"] == "in/broken.nii"]
    assert broken and all(r["error"] for r in broken)
    c14 = [r for r in rows if r["volume"] == "in/c14.npy"]
    jpeg_lossy = [r for r in c14 if r["codec"] == "JPEG" and r["mode"] == "lossy"]
    assert jpeg_lossy and all("UnsupportedBitDepth" in r["error"] for r in jpeg_lossy)
    assert [r for r in c14 if r["codec"] == "JPEG" and r["setting"] == "lossless"][0]["error"] == ""
    assert all("UnsupportedBitDepth" in r["error"] for r in c14 if r["codec"] == "AVIF")
    for f in ("points.csv", "points.json", "curves.csv", "bd_rate.csv", "bd_rate.md", "report.md"):
        assert (out / f).is_file(), f
    on_disk = rdcurve.load_points(out / "points.csv")
    assert len(on_disk) == len(rows) and sum(bool(r["error"]) for r in on_disk) == len(res.errors)
    js = json.loads((out / "points.json").read_text())
    assert len(js["points"]) == len(rows)
    ok = [r for r in rows if not r["error"] and r["mode"] == "lossy"]
    assert all(r["bpp"] > r["bpp_nohdr"] > 0 and r["ratio"] > 1 for r in ok)
    assert "1:7" in (out / "report.md").read_text()
    # --reuse: nothing is measured again, every valid point comes back
    res2 = rdcurve.run([tiny_inputs], out, codecs=["jpeg2000", "jpeg", "avif"], progress=False,
                       plots=False, reuse=True)
    n_ok = len([r for r in rows if not r["error"]])
    assert res2.n_reused == n_ok
    assert len([r for r in res2.rows if not r["error"]]) == n_ok
    # only error rows (bad inputs, refused depths) were tried again
    assert res2.n_measured == len(res.errors)
    # a partial run (one codec) reports that codec only, and keeps the others' points cached
    res3 = rdcurve.run([tiny_inputs], out, codecs=["jpeg2000"], progress=False, plots=False, reuse=True)
    assert {r["codec"] for r in res3.rows if not r["error"]} == {"JPEG2000"}
    assert res3.n_measured <= len(res.errors)  # only the broken input is tried again
    kept = rdcurve.load_points(out / "points.csv")
    assert {r["codec"] for r in kept if not r["error"]} == {"JPEG2000", "JPEG", "AVIF"}
    assert len([r for r in kept if not r["error"]]) == n_ok


def _tiny_model(tmp_path, monkeypatch) -> str:
    """A random two-level hyperprior shipped as ``tiny-test`` in ``tmp_path/models`` (on the
    model path) → its SHA-256."""
    import torch

    from bmz.codec import zoo
    from bmz.codec.models import build_model

    torch.manual_seed(0)
    mdir = tmp_path / "models"
    mdir.mkdir()
    sha = zoo.save_frozen(build_model("hyperprior", N=8, M=8, lambdas=[0.01, 0.1]),
                          mdir / "tiny-test.pt")
    zoo.write_card(mdir / "tiny-test.json", {"name": "tiny-test", "sha256": sha})
    monkeypatch.setenv("BMZ_MODEL_PATH", str(mdir))
    return sha


def test_run_bmz_with_a_tiny_model(tmp_path, monkeypatch):
    """The bmz curve: every quality of a (random, tiny) model; bytes = the whole .bmz file,
    bpp_nohdr = slice chunks only; a missing model is an error row, not a crash."""
    sha = _tiny_model(tmp_path, monkeypatch)
    inp = tmp_path / "v.npy"
    np.save(inp, _phantom(8, n=2, h=40, w=40))
    res = rdcurve.run([inp], tmp_path / "o", codecs=["bmz", "jpeg2000"], models=["tiny-test"],
                      progress=False, plots=False, anchor="bmz")
    b = [r for r in res.rows if r["codec"] == "bmz"]
    assert [r["setting"] for r in b] == ["q1", "q2"] and all(not r["error"] for r in b)
    assert all(r["version"] == sha and 0 < r["hdr_bytes"] < r["n_bytes"] for r in b)
    assert {x["anchor"] for x in res.bd} <= {"JPEG2000", "bmz/tiny-test"}
    from bmz.codec import zoo

    monkeypatch.setenv("BMZ_MODEL_PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(zoo, "model_dirs", lambda: [])
    res = rdcurve.run([inp], tmp_path / "o2", codecs=["bmz"], progress=False, plots=False)
    assert len(res.rows) == 1 and "no shipped bmz model" in res.rows[0]["error"]


def test_jobs_two_processes(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(2):
        np.save(inp / f"v{k}.npy", _phantom(8, n=1, seed=k))
    res = rdcurve.run([inp], tmp_path / "o", codecs=["jpegls", "jpeg2000"], jobs=2,
                      progress=False, plots=False)
    assert not res.errors and len({(r["volume"], r["codec"]) for r in res.rows}) == 4


def test_cli_end_to_end(shared_data, tmp_path):
    src = shared_data / IXI.format("IXI128-HH-1470")
    if not src.is_file():
        pytest.skip("no IXI volume")
    out = tmp_path / "rd"
    r = CliRunner().invoke(main, ["rd-curve", str(src), "--codecs", "jpeg2000,jpegls",
                                  "--max-slices", "4", "--anchor", "jpegls", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "BD-rate vs JPEG 2000" in r.output
    for f in ("points.csv", "points.json", "curves.csv", "bd_rate.md", "report.md",
              "rd_t1_8-bit.png", "errormap_t1_8-bit.png"):
        assert (out / f).is_file(), f
    rows = rdcurve.load_points(out / "points.csv")
    assert {r["n_slices"] for r in rows} == {4.0} and not [r for r in rows if r["error"]]
    assert {x["anchor"] for x in csv.DictReader(open(out / "bd_rate.csv"))} == {"JPEG2000", "JPEG-LS"}
    # rerun with --reuse: everything reused
    r = CliRunner().invoke(main, ["rd-curve", str(src), "--codecs", "jpeg2000,jpegls",
                                  "--max-slices", "4", "--reuse", "--quiet", "-o", str(out)])
    assert r.exit_code == 0, r.output
    # bad codec name: a clear one-line error
    r = CliRunner().invoke(main, ["rd-curve", str(src), "--codecs", "webp", "-o", str(out)])
    assert r.exit_code == 2 and "unknown baseline codec" in r.output


def test_bmz_points_of_another_file_format_are_measured_again():
    """A cached bmz point stands only for the container / chunk format it was measured with: its
    bytes depend on them, not only on the weights (classical rows carry no format)."""
    row = {"volume": "v", "series": "", "max_slices": 0, "codec": "bmz", "model": "hyperprior",
           "version": "ab" * 32, "setting": "q1"}
    now = dict(row, format=rdcurve.bmz_file_format())
    assert rdcurve.point_key(now) != rdcurve.point_key(row)  # measured before formats were recorded
    assert rdcurve.point_key(now) != rdcurve.point_key(dict(row, format="1.0/2"))
    assert rdcurve.point_key(now) == rdcurve.point_key(dict(now))
    assert rdcurve.bmz_file_format() == "1.1/4"
    j2k = {"volume": "v", "series": "", "max_slices": 0, "codec": "JPEG2000", "model": "",
           "version": "openjpeg 2.5.4", "setting": "psnr40"}
    assert rdcurve.point_key(j2k) == rdcurve.point_key(dict(j2k, format=""))


def test_max_error_curve_is_bounded_and_enters_the_envelope(tmp_path, monkeypatch):
    """``max-error`` is one more bmz curve (δ = 0, 1, 2 … 2^(B − 4), every point within its
    bound, δ = 0 lossless); with a model's curve beside it, ``bmz/envelope`` is their Pareto
    front and gets BD-rates like any curve."""
    _tiny_model(tmp_path, monkeypatch)
    assert [s.name for s in rdcurve.measure.bmz_settings(rdcurve.MAX_ERROR, 8)] == [
        "d0", "d1", "d2", "d4", "d8", "d16"]
    assert rdcurve.measure.bmz_settings(rdcurve.MAX_ERROR, 12)[-1].param == 256
    assert rdcurve.bmz_file_format(rdcurve.MAX_ERROR) == "1.1/6 G8"
    specs = rdcurve.resolve_codecs(["bmz"], None)  # default: every shipped model and max-error
    assert "tiny-test" in [s.name for s in specs] and specs[-1].name == rdcurve.MAX_ERROR
    inp = tmp_path / "v.npy"
    np.save(inp, _phantom(8, n=2, h=40, w=40))
    res = rdcurve.run([inp], tmp_path / "o", codecs=["bmz", "jpeg2000"],
                      models=["tiny-test", rdcurve.MAX_ERROR], progress=False, plots=False)
    me = sorted((r for r in res.rows if r["model"] == rdcurve.MAX_ERROR), key=lambda r: r["param"])
    assert [r["setting"] for r in me] == ["d0", "d1", "d2", "d4", "d8", "d16"]
    assert all(not r["error"] and r["maxerr"] <= r["param"] for r in me)
    assert me[0]["mode"] == "lossless" and me[0]["maxerr"] == 0
    assert [r["bpp"] for r in me] == sorted((r["bpp"] for r in me), reverse=True)
    env = [c for c in res.curves if c["curve"] == "bmz/envelope"]
    pts = [c for c in res.curves if c["curve"] in ("bmz/tiny-test", "bmz/max-error")
           and c["mode"] == "lossy"]
    assert env and {c["setting"].split(":")[0] for c in env} <= {"tiny-test", "max-error"}
    for p in pts:  # no bmz point beats the envelope: fewer bits and more PSNR
        assert not any(p["bpp"] < e["bpp"] and p["psnr"] > e["psnr"] for e in env)
    assert [e["psnr"] for e in env] == sorted(e["psnr"] for e in env)
    assert any(b["curve"] == "bmz/envelope" for b in res.bd)
    assert "bmz/envelope" in (tmp_path / "o" / "curves.csv").read_text()


def test_envelope_keeps_the_points_no_other_bmz_curve_beats():
    def pt(curve, setting, bpp, psnr, group="g"):
        return {"group": group, "curve": curve, "codec": "bmz" if "/" in curve else curve,
                "model": curve.split("/")[-1], "setting": setting, "mode": "lossy",
                "complete": True, "bpp": bpp, "psnr": psnr, "ssim": 0.9}

    curves = [pt("bmz/a", "q1", 0.5, 30), pt("bmz/a", "q2", 1.0, 35), pt("bmz/a", "q3", 2.0, 38),
              pt("bmz/max-error", "d4", 1.5, 40), pt("bmz/max-error", "d1", 3.0, 50),
              # left of a:q2 but below a's curve (a needs ~0.76 bpp for 33 dB): not kept
              pt("bmz/max-error", "d8", 0.95, 33),
              pt("JPEG2000", "psnr60", 0.1, 60),  # classical points never enter it
              pt("bmz/a", "q1", 0.5, 30, group="h")]  # one bmz curve: no envelope
    env = rdcurve.envelope(curves)
    assert [(e["setting"], e["bpp"]) for e in env] == [
        ("a:q1", 0.5), ("a:q2", 1.0), ("max-error:d4", 1.5), ("max-error:d1", 3.0)]
    assert {e["curve"] for e in env} == {"bmz/envelope"} and {e["group"] for e in env} == {"g"}
    assert rdcurve.envelope(curves + env) == env  # an envelope already there is not an input
