"""The ``bmz`` command line on real files: encode/decode/info round trips, random access, and bad
inputs refused with one clear line, a non-zero exit and no output left behind."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from bmz.cli import main

IXI = "val/ixi_nichart/t1/IXI128-HH-1470_T1.nii.gz"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def encoded(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = d / "scan.bmz"
    r = run("encode", shared_data / IXI, "-o", out, "--quality", 4, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_encode_reports_and_verifies(shared_data, tmp_path):
    out = tmp_path / "s.bmz"
    r = run("encode", shared_data / IXI, "-o", out, "--verify")
    assert r.exit_code == 0, r.output
    assert "bpp" in r.output and "ratio" in r.output and "PSNR" in r.output
    assert out.stat().st_size > 100


def test_decode_restores_nifti(shared_data, encoded, tmp_path):
    back = tmp_path / "back.nii.gz"
    r = run("decode", encoded, "-o", back)
    assert r.exit_code == 0, r.output
    a, b = nib.load(shared_data / IXI), nib.load(back)
    assert b.header.binaryblock == a.header.binaryblock
    np.testing.assert_array_equal(b.affine, a.affine)
    assert b.get_data_dtype() == a.get_data_dtype() and b.shape == a.shape
    ua, ub = np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled())
    rmse = np.sqrt(np.mean((ua.astype(float) - ub) ** 2))
    assert rmse < 0.1 * (ua.max() - ua.min())


def test_decode_slices_random_access(encoded, tmp_path):
    full, part = tmp_path / "full.npy", tmp_path / "part.npy"
    assert run("decode", encoded, "-o", full).exit_code == 0
    r = run("decode", encoded, "--slices", "10:20", "-o", part)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(part), np.load(full)[10:20])


def test_info_json(encoded):
    r = run("info", encoded, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["shape"] == [90, 120, 120] and d["model"] == "hyperprior" and d["quality"] == 4
    assert len(d["slice_bytes"]) == 90 and 0 < d["bpp"] < 8 and d["ratio"] > 1
    assert run("info", encoded).exit_code == 0


def test_npy_2d_round_trip(shared_data, tmp_path):
    from bmz import io

    img = io.read(shared_data / IXI).data[45]
    src, enc, back = tmp_path / "slice.npy", tmp_path / "slice.bmz", tmp_path / "back.npy"
    np.save(src, img)
    assert run("encode", src, "-o", enc, "--quiet").exit_code == 0
    assert run("decode", enc, "-o", back, "--quiet").exit_code == 0
    out = np.load(back)
    assert out.shape == img.shape and out.dtype == img.dtype


SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "prisma_mprage.nii.gz"


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


def test_sample_is_native_precision_and_small():
    """The README's sample: six 256×256 MPRAGE slices as the scanner stored them (uint16, 1 mm,
    no rescaling), well under 1 MB."""
    assert SAMPLE.is_file() and SAMPLE.stat().st_size < 600_000
    img = nib.load(SAMPLE)
    assert img.shape == (256, 256, 6) and img.get_data_dtype() == np.uint16
    assert img.header.get_zooms() == (1.0, 1.0, 1.0)
    assert not np.isfinite(img.header["scl_slope"]) or img.header["scl_slope"] in (0, 1)
    raw = np.asarray(img.dataobj.get_unscaled())
    assert raw.min() == 0 and 512 < raw.max() < 4096  # 10 bits used of the 12 stored


def test_readme_first_command(tmp_path):
    """``bmz encode samples/prisma_mprage.nii.gz -o sample.bmz --force --verify --compare && bmz
    decode sample.bmz -o sample_decoded.nii.gz --force``: the summary (with JPEG 2000 at the same
    bpp where imagecodecs is installed, else how to get it) and the round trip's shape and dtype."""
    out, back = tmp_path / "sample.bmz", tmp_path / "sample_decoded.nii.gz"
    r = run("encode", SAMPLE, "-o", out, "--force", "--verify", "--compare")
    assert r.exit_code == 0, r.output
    assert "bpp, ratio" in r.output and "verified: PSNR" in r.output
    bmz_bpp = 8 * out.stat().st_size / (256 * 256 * 6)
    if _has_imagecodecs():
        m = re.search(r"compared: JPEG 2000 \(OpenJPEG, (\d+) bits\) at ([\d.]+) bpp: "
                      r"PSNR ([\d.]+) dB \(bmz ([+-][\d.]+) dB\)", r.output)
        assert m, r.output
        assert m.group(1) == "10"  # the data's real bit depth (values 0..837), not the dtype's 16
        j2k_bpp = float(m.group(2))
        assert 0.97 * bmz_bpp <= j2k_bpp <= bmz_bpp + 1e-3  # matched, never more bytes than bmz
        psnr = float(re.search(r"verified: PSNR ([\d.]+) dB", r.output).group(1))
        assert abs(psnr - float(m.group(3)) - float(m.group(4))) < 0.011
    else:
        assert "pip install 'bmz[bench]'" in r.output
    r = run("decode", out, "-o", back, "--force")
    assert r.exit_code == 0, r.output
    a, b = nib.load(SAMPLE), nib.load(back)
    assert b.shape == a.shape == (256, 256, 6) and b.get_data_dtype() == np.uint16
    assert b.header.binaryblock == a.header.binaryblock
    np.testing.assert_array_equal(b.affine, a.affine)


def test_compare_without_imagecodecs_says_how_to_get_it(tmp_path, monkeypatch):
    """The core does not need imagecodecs: ``--compare`` without it encodes, verifies, exits 0 and
    names the extra."""
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs -> ImportError
    src, out = tmp_path / "one.npy", tmp_path / "one.bmz"
    np.save(src, np.asarray(nib.load(SAMPLE).dataobj.get_unscaled())[:, :, 0].T.copy())
    r = run("encode", src, "-o", out, "--compare")
    assert r.exit_code == 0, r.output
    assert "verified: PSNR" in r.output
    assert "JPEG 2000 at the same bpp: not measured" in r.output
    assert "pip install 'bmz[bench]'" in r.output and out.is_file()


def test_existing_output_needs_force(encoded, tmp_path):
    out = tmp_path / "x.npy"
    out.write_bytes(b"keep me")
    r = run("decode", encoded, "-o", out)
    assert r.exit_code != 0 and "--force" in r.output
    assert out.read_bytes() == b"keep me"
    assert run("decode", encoded, "-o", out, "--force", "--slices", "0").exit_code == 0


def _bad_inputs(shared_data, tmp_path):
    float_nii = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32), np.eye(4)),
             float_nii)
    rgb = tmp_path / "rgb.nii"
    rgb_arr = np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb_arr, np.eye(4)), rgb)
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 4, 4), np.uint8))
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    nan = tmp_path / "nan.npy"
    arr = np.zeros((2, 8, 8), np.float32)
    arr[1, 3, 4] = np.nan
    np.save(nan, arr)
    inf = tmp_path / "inf.npy"
    np.save(inf, np.full((2, 8, 8), np.inf))
    huge = tmp_path / "huge.npy"  # header claims 2 TB, file holds a few bytes: refused unread
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<u2", "fortran_order": False, "shape": (100000, 100000, 100)})
        f.write(b"\0" * 64)
    one_d = tmp_path / "line.npy"
    np.save(one_d, np.arange(10, dtype=np.uint8))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.array([[0, 70000]], np.int32))
    return {
        "nan": nan,
        "inf": inf,
        "huge-header": huge,
        "1-d": one_d,
        "17-bit": wide,
        "non-integer": float_nii,
        "rgb": rgb,
        "4-d": shared_data / "train/pypi_nibabel/example4d.nii.gz",
        "empty": empty,
        "missing": tmp_path / "no_such_scan.nii.gz",
        "mislabelled": text,
    }


@pytest.mark.parametrize("case", ["nan", "inf", "huge-header", "1-d", "17-bit", "non-integer", "rgb",
                                  "4-d", "empty", "missing", "mislabelled"])
def test_bad_input_clear_error_no_output(shared_data, tmp_path, case):
    src = _bad_inputs(shared_data, tmp_path)[case]
    out = tmp_path / "out.bmz"
    r = run("encode", src, "-o", out)
    assert r.exit_code not in (0, None), r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("bmz: error: ") and src.name in line, r.output
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bmz")]


def test_damaged_file_exits_nonzero_without_output(encoded, tmp_path):
    from bmz.bitstream import BmzReader

    data = bytearray(encoded.read_bytes())
    last = BmzReader(bytes(data)).chunk_sizes()[-1]  # chunks are contiguous; the last ends the file
    data[len(data) - last // 2] ^= 0x01  # inside the last slice's chunk
    bad = tmp_path / "bad.bmz"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.npy"
    r = run("decode", bad, "-o", out)
    assert r.exit_code == 3 and "slice 89" in r.output, r.output
    assert not out.exists()
    r = run("decode", bad, "-o", out, "--skip-damaged")
    assert r.exit_code == 3 and "89" in r.output
    assert out.exists()  # everything else recovered
    truncated = tmp_path / "cut.bmz"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    r = run("decode", truncated, "-o", tmp_path / "cut.npy")
    assert r.exit_code == 3 and "bmz: error:" in r.output
    assert not (tmp_path / "cut.npy").exists()


def test_verify_checks_every_checksum_without_decoding(encoded, tmp_path, monkeypatch):
    r = run("verify", encoded)
    assert r.exit_code == 0 and "OK (90 slices" in r.output, r.output
    from bmz.bitstream import BmzReader

    data = bytearray(encoded.read_bytes())
    sizes = BmzReader(bytes(data)).chunk_sizes()
    data[len(data) - sizes[-1] // 2] ^= 0x10  # inside slice 89
    data[len(data) - sizes[-1] - sizes[-2] // 2] ^= 0x10  # inside slice 88
    bad = tmp_path / "bad.bmz"
    bad.write_bytes(bytes(data))
    cut = tmp_path / "cut.bmz"
    cut.write_bytes(bytes(data[:100]))
    r = run("verify", encoded, bad, cut, tmp_path / "missing.bmz")
    assert r.exit_code == 3, r.output
    assert "DAMAGED: 2 of 90 slices fail their checksum: 88, 89" in r.output
    assert "cut.bmz: FAILED" in r.output and "missing.bmz: FAILED" in r.output
    # decoding nothing: verify works without the weights; it says they are missing
    import bmz.api

    monkeypatch.setattr("bmz.codec.zoo.find_weights", lambda name: (_ for _ in ()).throw(
        bmz.errors.UnknownModelError(f"no shipped weights for model {name!r}")))
    r = run("verify", encoded)
    assert r.exit_code == 0 and "cannot be decoded here" in r.output, r.output


@pytest.mark.parametrize("where", ["missing-folder", "read-only-fs", "is-a-folder"])
def test_unwritable_output_is_a_clear_error(shared_data, tmp_path, where):
    src = tmp_path / "ok.npy"
    np.save(src, (np.arange(2 * 16 * 16).reshape(2, 16, 16) % 200).astype(np.uint8))
    out = {"missing-folder": tmp_path / "no" / "such" / "o.bmz",
           "read-only-fs": "/proc/bmz-test-output.bmz",  # refuses new files even to root
           "is-a-folder": tmp_path}[where]
    r = run("encode", src, "-o", out)
    assert r.exit_code == 5, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("bmz: error: ") and str(out) in line and "Traceback" not in r.output


def test_model_file_not_matching_its_card_is_refused(encoded, tmp_path, monkeypatch):
    import shutil

    from bmz.codec import zoo

    src = zoo.find_weights(zoo.DEFAULT_MODEL)
    shutil.copy(src.with_suffix(".json"), tmp_path / src.with_suffix(".json").name)
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF  # a damaged weights file beside an intact card
    (tmp_path / src.name).write_bytes(bytes(data))
    monkeypatch.setenv("BMZ_MODEL_PATH", str(tmp_path))
    out = tmp_path / "out.npy"
    r = run("decode", encoded, "-o", out)
    assert r.exit_code == 4, r.output
    assert "does not match its model card" in r.output and str(tmp_path) in r.output
    assert not out.exists()


def test_models_lists_every_shipped_model():
    from bmz.codec import zoo

    res = run("models", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == set(zoo.available_models())
    flagship = rows[zoo.DEFAULT_MODEL]
    assert flagship["default"] and flagship["qualities"] >= 6
    assert flagship["default_quality"] == zoo.card_qualities(zoo.read_card(zoo.DEFAULT_MODEL))[1]
    bpp = [q["bpp"] for q in flagship["val_8bit"]]
    assert len(bpp) == flagship["qualities"] and bpp == sorted(bpp)  # measured, rising with quality
    text = run("models")
    assert text.exit_code == 0 and f"{zoo.DEFAULT_MODEL} (default model): qualities 1..{flagship['qualities']}" in text.output
