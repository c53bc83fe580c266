"""Tests of bmz.io: NIfTI / DICOM / NumPy reading and writing, on the shared real data."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.pixels as pydicom_pixels
import pytest

import bmz.io as bio
from bmz.bitstream import BmzReader, pack
from bmz.errors import InputError, MissingDependencyError, OutputError
from bmz.io import Volume
from bmz.io.dicom import kept as dicom_kept
from bmz.io.dicom import legacy as dicom_legacy

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def file_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed if gzip."""
    b = Path(path).read_bytes()
    return gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b


def header_bytes(path: Path) -> bytes:
    """The on-disk NIfTI header block (348 or 540 bytes)."""
    b = file_bytes(path)
    return b[:540] if b[4:7] == b"n+2" else b[:348]


@pytest.fixture(scope="module")
def csv_rows(shared_data: Path) -> dict[str, dict]:
    with open(shared_data / "files.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def ixi_file(shared_data: Path) -> Path:
    files = sorted((shared_data / "val/ixi_nichart/t1").glob("*.nii.gz"))
    assert files, "no IXI files in val/ixi_nichart/t1"
    return files[0]


def save_nifti(arr: np.ndarray, path: Path, klass=nib.Nifti1Image) -> Path:
    nib.save(klass(arr, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    return path


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_ixi_roundtrip_header_exact(shared_data, tmp_path, suffix):
    src = ixi_file(shared_data)
    vol = bio.read(src)
    assert vol.source == "nifti"
    assert vol.data.shape == (90, 120, 120) and vol.data.dtype == np.uint8
    # uint8 with scl_slope: the stored values are returned unscaled, the slope kept in meta
    assert vol.meta["nifti"]["scaling"] is not None
    orig = nib.load(str(src))
    np.testing.assert_array_equal(vol.data, np.moveaxis(np.asanyarray(orig.dataobj.get_unscaled()), -1, 0))
    out = tmp_path / f"out{suffix}"
    bio.write(vol, out)
    assert header_bytes(out) == header_bytes(src)
    assert file_bytes(out) == file_bytes(src)  # whole decompressed file identical
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.affine, orig.affine)
    assert back.dataobj.slope == orig.dataobj.slope and back.dataobj.inter == orig.dataobj.inter
    vol2 = bio.read(out)
    assert vol2.data.dtype == vol.data.dtype
    np.testing.assert_array_equal(vol2.data, vol.data)
    assert vol2.meta == vol.meta
    json.dumps(vol.meta, allow_nan=False)


def test_nifti_big_endian_int16(shared_data, tmp_path):
    src = shared_data / "train/pypi_nibabel/anatomical.nii"
    vol = bio.read(src)
    assert vol.data.dtype.str == ">i2"
    assert vol.data.shape == (25, 33, 41)
    assert vol.data.min() == -610 and vol.data.max() == 30393  # files.csv
    out = tmp_path / "be.nii"
    bio.write(vol, out)
    assert out.read_bytes() == src.read_bytes()
    out_gz = tmp_path / "be.nii.gz"
    bio.write(vol, out_gz)
    assert file_bytes(out_gz) == src.read_bytes()
    assert bio.read(out_gz).data.dtype.str == ">i2"


def test_nifti_int16_roundtrip(shared_data, tmp_path):
    src = shared_data / "train/sct_testing_data/t2_t2.nii.gz"
    vol = bio.read(src)
    assert vol.data.dtype == np.int16 and vol.data.shape == (52, 60, 55)
    out = tmp_path / "t2.nii.gz"
    bio.write(vol, out)
    assert header_bytes(out) == header_bytes(src)
    assert file_bytes(out) == file_bytes(src)
    np.testing.assert_array_equal(nib.load(str(out)).affine, nib.load(str(src)).affine)


def test_nifti_slices_along_last_axis(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    vol = bio.read(save_nifti(arr, tmp_path / "a.nii"))
    assert vol.data.shape == (6, 4, 5)
    for k in range(6):
        np.testing.assert_array_equal(vol.data[k], arr[:, :, k])


def test_nifti2_and_extensions_roundtrip(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    src = save_nifti(arr, tmp_path / "n2.nii", klass=nib.Nifti2Image)
    vol = bio.read(src)
    assert vol.meta["nifti"]["version"] == 2
    out = tmp_path / "n2_out.nii"
    bio.write(vol, out)
    assert out.read_bytes() == src.read_bytes()

    img = nib.Nifti1Image(arr.astype(np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"hello bmz"))
    src = tmp_path / "ext.nii.gz"
    nib.save(img, str(src))
    vol = bio.read(src)
    assert vol.meta["nifti"]["extensions"][0]["code"] == 6
    out = tmp_path / "ext_out.nii.gz"
    bio.write(vol, out)
    assert file_bytes(out) == file_bytes(src)
    assert nib.load(str(out)).header.extensions[0].get_content() == b"hello bmz"


def test_nifti_2d_and_trailing_singleton(shared_data, tmp_path):
    arr = np.arange(20, dtype=np.uint8).reshape(4, 5)
    src = save_nifti(arr, tmp_path / "two.nii")
    vol = bio.read(src)
    assert vol.data.shape == (1, 4, 5)
    bio.write(vol, tmp_path / "two_out.nii")
    assert (tmp_path / "two_out.nii").read_bytes() == src.read_bytes()
    assert nib.load(str(tmp_path / "two_out.nii")).shape == (4, 5)

    src = shared_data / "train/pypi_dipy/S0_10slices.nii.gz"  # 128x128x10x1
    vol = bio.read(src)
    assert vol.data.shape == (10, 128, 128) and vol.data.dtype == np.uint16
    out = tmp_path / "s0.nii.gz"
    bio.write(vol, out)
    assert file_bytes(out) == file_bytes(src)


def test_nifti_float_with_integer_values(shared_data, tmp_path):
    src = shared_data / "train/rniftyreg/epi_t2.nii.gz"  # float32, integer values 0..2503
    vol = bio.read(src)
    assert vol.data.dtype == np.uint16  # smallest integer dtype holding the values
    assert vol.meta["nifti"]["dtype"] == "<f4" and vol.meta["nifti"]["converted"]
    out = tmp_path / "epi.nii.gz"
    bio.write(vol, out)
    assert file_bytes(out) == file_bytes(src)
    assert nib.load(str(out)).get_data_dtype() == np.float32
    # to .npy: the original float dtype is restored too, and reads back to the same data
    bio.write(vol, tmp_path / "epi.npy")
    assert np.load(tmp_path / "epi.npy").dtype == np.float32
    np.testing.assert_array_equal(bio.read(tmp_path / "epi.npy").data, vol.data)


def test_nifti_sub_range_write(shared_data, tmp_path):
    src = ixi_file(shared_data)
    vol = bio.read(src)
    sub = Volume(data=vol.data[10:20], source=vol.source, meta=vol.meta, path=None)
    out = tmp_path / "sub.nii.gz"
    bio.write(sub, out)
    img, orig = nib.load(str(out)), nib.load(str(src))
    assert img.shape == (120, 120, 10)
    np.testing.assert_array_equal(img.affine, orig.affine)
    assert img.get_data_dtype() == orig.get_data_dtype()
    assert img.dataobj.slope == orig.dataobj.slope
    np.testing.assert_array_equal(bio.read(out).data, vol.data[10:20])
    # everything but dim is the original header
    h_out = nib.Nifti1Header.from_fileobj(gzip.open(out))  # the on-disk headers: nibabel's
    h_src = nib.Nifti1Header.from_fileobj(gzip.open(src))  # loaded ones reset scl_slope
    for key in ("pixdim", "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "scl_slope",
                "datatype", "vox_offset", "descrip"):
        np.testing.assert_array_equal(h_out[key], h_src[key])
    # and to .npy
    bio.write(sub, tmp_path / "sub.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "sub.npy"), vol.data[10:20])


def test_nifti_bad_inputs(shared_data, tmp_path):
    bad = tmp_path / "frac.nii"
    save_nifti(np.full((3, 3, 2), 0.5, np.float32), bad)
    with pytest.raises(InputError, match=r"frac\.nii.*non-integer values \(float32\)"):
        bio.read(bad)

    rgb = tmp_path / "rgb.nii"
    save_nifti(np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), rgb)
    with pytest.raises(InputError, match=r"rgb\.nii.*RGB"):
        bio.read(rgb)

    with pytest.raises(InputError, match=r"example4d\.nii\.gz: 4-D volume 128x96x24x2 \(x,y,z,t\)"):
        bio.read(shared_data / "train/pypi_nibabel/example4d.nii.gz")

    empty = tmp_path / "empty.nii"
    save_nifti(np.zeros((4, 0, 3), np.int16), empty)
    with pytest.raises(InputError, match=r"empty\.nii: empty"):
        bio.read(empty)

    wide = tmp_path / "wide.nii"
    save_nifti(np.array([[[0, 70000]]], np.int32), wide)
    with pytest.raises(InputError, match=r"wide\.nii: int32 values span \[0, 70000\]"):
        bio.read(wide)
    ok32 = tmp_path / "ok32.nii"
    save_nifti(np.array([[[0, 1000]]], np.int32), ok32)
    assert bio.read(ok32).data.dtype == np.int32  # kept as stored: values fit 16 bits

    text = tmp_path / "x.nii.gz"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"x\.nii\.gz"):
        bio.read(text)

    truncated = tmp_path / "trunc.nii"
    ixi_bytes = file_bytes(ixi_file(shared_data))
    truncated.write_bytes(ixi_bytes[: len(ixi_bytes) // 2])
    with pytest.raises(InputError, match=r"trunc\.nii: truncated"):
        bio.read(truncated)


# --------------------------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------------------------


def test_npy_roundtrip_2d_3d(tmp_path):
    a2 = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "a2.npy", a2)
    vol = bio.read(tmp_path / "a2.npy")
    assert vol.source == "numpy" and vol.data.shape == (1, 3, 4)
    assert vol.meta == {"npy": {"dtype": "<i2", "ndim": 2, "fortran_order": False}}
    bio.write(vol, tmp_path / "b2.npy")
    b2 = np.load(tmp_path / "b2.npy")
    assert b2.shape == (3, 4) and b2.dtype == np.int16
    np.testing.assert_array_equal(b2, a2)

    a3 = np.asfortranarray(np.arange(2 * 3 * 4, dtype=">u2").reshape(2, 3, 4))
    np.save(tmp_path / "a3.npy", a3)
    vol = bio.read(tmp_path / "a3.npy")
    assert vol.data.shape == (2, 3, 4) and vol.data.dtype.str == ">u2"
    assert vol.meta["npy"]["fortran_order"] is True
    np.testing.assert_array_equal(vol.data[1], a3[1])
    bio.write(vol, tmp_path / "b3.npy")
    assert (tmp_path / "b3.npy").read_bytes() == (tmp_path / "a3.npy").read_bytes()


def test_npy_bool_and_float(tmp_path):
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 1, 1] = True
    np.save(tmp_path / "m.npy", mask)
    vol = bio.read(tmp_path / "m.npy")
    assert vol.data.dtype == np.uint8 and vol.data.sum() == 1
    bio.write(vol, tmp_path / "m2.npy")
    back = np.load(tmp_path / "m2.npy")
    assert back.dtype == bool
    np.testing.assert_array_equal(back, mask)

    f = np.array([[-3.0, 200.0], [7.0, 0.0]], np.float64)
    np.save(tmp_path / "f.npy", f)
    vol = bio.read(tmp_path / "f.npy")
    assert vol.data.dtype == np.int16
    bio.write(vol, tmp_path / "f2.npy")
    assert (tmp_path / "f2.npy").read_bytes() == (tmp_path / "f.npy").read_bytes()

    np.save(tmp_path / "g.npy", np.array([[0.25, 1.0]], np.float32))
    with pytest.raises(InputError, match=r"g\.npy: has non-integer values \(float32\)"):
        bio.read(tmp_path / "g.npy")


def test_npy_bad_inputs(tmp_path):
    cases = {
        "obj.npy": np.array([[1, "a"]], dtype=object),
        "cplx.npy": np.ones((2, 2), np.complex64),
        "rec.npy": np.zeros((2, 2), dtype=[("r", "u1"), ("g", "u1"), ("b", "u1")]),
        "four.npy": np.zeros((2, 2, 2, 2), np.int16),
        "one.npy": np.zeros(5, np.int16),
        "empty.npy": np.zeros((0, 4, 4), np.int16),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            bio.read(tmp_path / name)
    # an (H, W, 3) uint8 array is H slices of (W, 3), not RGB
    np.save(tmp_path / "hw3.npy", np.zeros((5, 6, 3), np.uint8))
    assert bio.read(tmp_path / "hw3.npy").data.shape == (5, 6, 3)


def test_npy_to_nifti_identity_affine(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", arr)
    vol = bio.read(tmp_path / "a.npy")
    bio.write(vol, tmp_path / "a.nii.gz")
    img = nib.load(str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(img.affine, np.eye(4))
    assert img.shape == (3, 4, 2) and img.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(bio.read(tmp_path / "a.nii.gz").data, arr)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def check_against_csv(vol: Volume, folder: Path, shared_data: Path, csv_rows: dict) -> None:
    """Each slice's shape, dtype and stored min/max match files.csv."""
    rel = folder.relative_to(shared_data).as_posix()
    for k, name in enumerate(vol.meta["dicom"]["order"]):
        row = csv_rows[f"{rel}/{name}"]
        assert "x".join(map(str, vol.data.shape[1:])) == row["shape"]
        assert vol.data.dtype == np.dtype(row["dtype"])
        assert vol.data[k].min() == float(row["min"]) and vol.data[k].max() == float(row["max"])


def assert_sorted_along_normal(vol: Volume) -> None:
    geo = vol.meta["dicom"]["geometry"]
    assert geo["sorted_by"] == "position"
    iop = np.array(geo["orientation"])
    normal = np.cross(iop[:3], iop[3:])
    keys = [float(np.dot(normal, p)) for p in geo["positions"]]
    assert all(b > a for a, b in zip(keys, keys[1:]))


@pytest.mark.parametrize(
    "folder, shape, dtype",
    [
        ("val/dcm_qa_decubitus/HFS_t1_fl2d_sag", (35, 256, 256), np.uint16),
        ("val/datalad_example_dicom_structural", (20, 384, 274), np.int16),
        ("train/nichart_dicom_trio_b17", (64, 256, 256), np.uint16),
    ],
)
def test_dicom_series(shared_data, csv_rows, folder, shape, dtype):
    path = shared_data / folder
    vol = bio.read(path)
    assert vol.source == "dicom"
    assert vol.data.shape == shape and vol.data.dtype == dtype
    meta = vol.meta["dicom"]
    assert not meta["multiframe"] and meta["layout"] == 2
    kept = meta["kept"]["files"]
    assert len(kept) == len(meta["files"]) == shape[0]
    assert all(f["restore"] == "identical" and f["ts"] for f in kept)  # native: byte for byte
    assert vol.attachment and len(vol.attachment) == meta["kept"]["packed"]
    assert vol.meta["photometric"] == "MONOCHROME2"
    json.dumps(vol.meta, allow_nan=False)
    assert_sorted_along_normal(vol)
    # names in "order" are relative to the folder given (the Trio files sit in a subfolder)
    check_against_csv(vol, path, shared_data, csv_rows)


def _frames_of(vol: Volume, i: int) -> np.ndarray:
    """File ``i``'s frames, in frame order, from the volume's slices."""
    frames = vol.meta["dicom"]["frames"]
    ks = sorted((fr, k) for k, (fi, fr) in enumerate(frames) if fi == i)
    return np.stack([vol.data[k] for _, k in ks])


# the attachment (the kept non-pixel bytes, xz: everything, the elements over 64 KiB the
# DICOM-JSON meta of older files dropped included): bounds with room for another liblzma
@pytest.mark.parametrize("folder, n_files, max_kept", [
    ("val/dcm_qa_decubitus/HFS_t1_fl2d_sag", 35, 30_000),  # Siemens Prisma, CSA headers
    ("val/datalad_example_dicom_structural", 20, 3_000),  # studyforrest
    ("train/nichart_dicom_trio_b17/t1_MPRAGE", 64, 22_000),  # Siemens Trio, CSA headers
    ("train/dcm_qa_xa30", 1, 22_000),  # one enhanced multi-frame file (96 frames)
])
def test_dicom_kept_bytes_restore_every_file(shared_data, folder, n_files, max_kept):
    path = shared_data / folder
    vol = bio.read(path)
    meta = vol.meta["dicom"]
    assert len(meta["files"]) == len(meta["kept"]["files"]) == n_files
    store = dicom_kept.KeptStore(meta["kept"], vol.attachment)
    for i, name in enumerate(meta["files"]):  # every file, byte for byte, from slices + kept
        original = (path / name).read_bytes()
        assert store.restore(i, _frames_of(vol, i), lossless=True) == original
    # the non-pixel bytes of a series compress to little: the CSA headers repeat
    assert len(vol.attachment) < max_kept
    assert meta["kept"]["unpacked"] > 10 * len(vol.attachment) or n_files == 1
    # meta and attachment survive the .bmz container
    with BmzReader(pack(vol.meta, [], attachment=vol.attachment)) as r:
        assert {k: v for k, v in r.meta.items() if k != "attachment"} == vol.meta
        assert r.attachment() == vol.attachment
    json.dumps(vol.meta, allow_nan=False)


def test_dicom_legacy_meta_is_rebuilt():
    # layout 1 (files of older bmz): majority "common", "absent" markers, binary as hex
    common = {"00100010": {"vr": "PN"}, "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
              "00291010": {"vr": "OB", "bmz:hex": "0001020304"}}
    entries = [{"00200013": {"vr": "IS", "Value": [1]}},
               {"00200013": {"vr": "IS", "Value": [2]}},
               {"00200013": {"vr": "IS", "Value": [1.0]},
                "00280030": {"vr": "DS", "Value": [0.5, 0.7]}, "absent": ["00100010"]}]
    rebuilt = dicom_legacy.dicom_datasets({"dicom": {"common": common, "datasets": entries}})
    assert rebuilt[0]["00291010"] == {"vr": "OB", "InlineBinary": "AAECAwQ="}
    assert rebuilt[1]["00200013"] == {"vr": "IS", "Value": [2]} and "00100010" in rebuilt[1]
    assert "00100010" not in rebuilt[2] and rebuilt[2]["00280030"]["Value"] == [0.5, 0.7]
    rebuilt[0]["00100010"]["vr"] = "changed"  # rebuilt dicts share nothing with the stored form
    assert common["00100010"] == {"vr": "PN"}
    # full dicts without "common" (no de-duplication) are read as they are
    assert dicom_legacy.dicom_datasets({"dicom": {"datasets": entries[:2]}}) == entries[:2]
    # malformed stored forms raise ValueError
    for bad in [{"datasets": {}}, {"datasets": [1]}, {"datasets": [{"absent": "x"}]},
                {"datasets": [{}], "common": {"1": {"bmz:hex": "xyz"}}},
                {"datasets": [{}], "common": {"1": {"bmz:hex": 5}}}, {"files": []}]:
        with pytest.raises(ValueError):
            dicom_legacy.dicom_datasets({"dicom": bad})


def test_dicom_bits_stored_and_slice_values(shared_data):
    vol = bio.read(shared_data / "val/dcm_qa_decubitus/HFS_t1_fl2d_sag")
    assert vol.meta["bits_stored"] == 12
    # slice k is exactly the stored pixels of the file named in "order"
    name = vol.meta["dicom"]["order"][7]
    ds = pydicom.dcmread(shared_data / "val/dcm_qa_decubitus/HFS_t1_fl2d_sag" / name)
    np.testing.assert_array_equal(vol.data[7], ds.pixel_array)


def test_dicom_enhanced_multiframe(shared_data):
    vol = bio.read(shared_data / "train/dcm_qa_xa30")
    assert vol.data.shape == (96, 128, 128) and vol.data.dtype == np.uint16
    assert vol.data.max() == 2927  # files.csv
    meta = vol.meta["dicom"]
    assert meta["multiframe"] and len(meta["files"]) == 1
    assert len(meta["frames"]) == 96
    assert_sorted_along_normal(vol)
    json.dumps(vol.meta, allow_nan=False)


def test_dicom_transfer_syntaxes_decode_identically(shared_data):
    ts_dir = shared_data / "dicom/dcm_qa_ts"  # one image in 9 transfer syntaxes
    ref = bio.read(ts_dir / "1.dcm").data
    assert ref.shape == (1, 384, 384) and ref.max() == 2362
    seen = set()
    for i in range(2, 10):
        vol = bio.read(ts_dir / f"{i}.dcm")
        seen.add(vol.meta["dicom"]["kept"]["files"][0]["ts"])
        np.testing.assert_array_equal(vol.data, ref)
    assert bio.read(ts_dir / "3.dcm").data.dtype.str == ">u2"  # explicit big endian kept
    assert {
        "1.2.840.10008.1.2.2",  # big endian
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.4.70",  # JPEG lossless
        "1.2.840.10008.1.2.4.80",  # JPEG-LS
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    } <= seen

    mf = shared_data / "dicom/pypi_pydicom_data"
    ref = bio.read(mf / "emri_small.dcm").data
    assert ref.shape == (10, 64, 64)
    for name in ("emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                 "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(bio.read(mf / name).data, ref)


def test_dicom_lossy_and_8bit(shared_data):
    vol = bio.read(shared_data / "dicom/pypi_pydicom_data/MR2_J2KI.dcm")  # JPEG 2000 (lossy)
    assert vol.data.shape == (1, 1024, 1024) and (vol.data.min(), vol.data.max()) == (0, 600)
    vol = bio.read(shared_data / "dicom/divest/jpeg_01j.dcm")  # JPEG baseline, 8 bit
    assert vol.data.shape == (1, 256, 224) and vol.data.dtype == np.uint8


def test_dicom_json_serialisable_sample(shared_data):
    files = []
    for sub in sorted(p for p in (shared_data / "dicom").iterdir() if p.is_dir()):
        dcms = sorted(q for q in sub.rglob("*") if q.is_file())
        if dcms:
            files.append(dcms[0])
    assert len(files) >= 10
    for f in files:
        try:
            vol = bio.read(f)
        except InputError as exc:  # e.g. a colour or odd file: must name it
            assert str(f) in str(exc)
            continue
        text = json.dumps(vol.meta, allow_nan=False)
        assert json.loads(text) == vol.meta


def test_dicom_without_preamble(shared_data, tmp_path):
    raw = (shared_data / "dicom/pypi_pydicom/MR_small_implicit.dcm").read_bytes()
    (tmp_path / "IM0001").write_bytes(raw[132:])  # no preamble, no "DICM", no suffix
    vol = bio.read(tmp_path / "IM0001")
    assert vol.data.shape == (1, 64, 64) and vol.data.max() == 2145
    assert len(bio.list_series(tmp_path)) == 1


def _link(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.symlink(f, folder / f.name)


def test_dicom_folder_with_several_series(shared_data, tmp_path):
    a = sorted((shared_data / "val/dcm_qa_decubitus/HFS_t1_fl2d_sag").glob("*.dcm"))[:3]
    b = sorted((shared_data / "val/datalad_example_dicom_structural").glob("*.dcm"))[:2]
    mixed = tmp_path / "mixed"
    _link(a, mixed / "a")
    _link(b, mixed / "b")
    (mixed / "README.txt").write_text("not dicom")
    uid_a = pydicom.dcmread(a[0], stop_before_pixels=True).SeriesInstanceUID
    uid_b = pydicom.dcmread(b[0], stop_before_pixels=True)
    with pytest.raises(InputError) as exc:
        bio.read(mixed)
    msg = str(exc.value)
    assert str(mixed) in msg and uid_a in msg and uid_b.SeriesInstanceUID in msg
    assert "series" in msg and "(3 files)" in msg and "(2 files)" in msg

    series = bio.list_series(mixed)
    assert sorted(s["n_files"] for s in series) == [2, 3]
    assert {s["uid"] for s in series} == {uid_a, uid_b.SeriesInstanceUID}

    vol = bio.read(mixed, series=uid_a)
    assert vol.data.shape == (3, 256, 256)
    vol = bio.read(mixed, series=uid_b.SeriesInstanceUID[:-3])  # unique prefix
    assert vol.data.shape == (2, 384, 274)
    if uid_b.get("SeriesNumber") is not None and all(
        s["series_number"] != int(uid_b.SeriesNumber) for s in series if s["uid"] == uid_a
    ):
        vol = bio.read(mixed, series=str(uid_b.SeriesNumber))
        assert vol.data.shape == (2, 384, 274)
    with pytest.raises(InputError, match="no DICOM series matches"):
        bio.read(mixed, series="9.9.9.9")


def test_dicom_bad_inputs(shared_data, tmp_path, monkeypatch):
    small = shared_data / "dicom/pypi_pydicom/MR_small.dcm"

    # colour
    ds = pydicom.dcmread(small)
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.save_as(tmp_path / "rgb.dcm")
    with pytest.raises(InputError, match=r"rgb\.dcm: colour image"):
        bio.read(tmp_path / "rgb.dcm")

    # slices of different sizes in one series; a non-image DICOM file is skipped
    series = tmp_path / "sizes"
    series.mkdir()
    shutil.copy(small, series / "a.dcm")
    ds = pydicom.dcmread(small)
    ds.PixelData = ds.pixel_array[:32].tobytes()
    ds.Rows = 32
    ds.InstanceNumber = 99
    ds.save_as(series / "b.dcm")
    ds = pydicom.dcmread(small)
    del ds.PixelData
    ds.save_as(series / "c_no_pixels.dcm")
    with pytest.raises(InputError, match=r"b\.dcm: slice size 32x64 differs"):
        bio.read(series)
    (series / "b.dcm").unlink()
    assert bio.read(series).data.shape == (1, 64, 64)

    # folder without images
    empty = tmp_path / "no_images"
    empty.mkdir()
    shutil.copy(series / "c_no_pixels.dcm", empty)
    with pytest.raises(InputError, match="no DICOM images"):
        bio.read(empty)

    # missing decoder -> MissingDependencyError naming the pip package
    class _NoDecoder:
        is_available = False

    monkeypatch.setattr(pydicom_pixels, "get_decoder", lambda ts: _NoDecoder())
    with pytest.raises(MissingDependencyError, match=r"9\.dcm.*pip install pylibjpeg pylibjpeg-openjpeg"):
        bio.read(shared_data / "dicom/dcm_qa_ts/9.dcm")


def test_dicom_to_nifti_affine(shared_data, tmp_path):
    vol = bio.read(shared_data / "val/dcm_qa_decubitus/HFS_t1_fl2d_sag")
    out = tmp_path / "sag.nii.gz"
    bio.write(vol, out)
    img = nib.load(str(out))
    assert img.shape == (256, 256, 35) and img.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(bio.read(out).data, vol.data)
    geo = vol.meta["dicom"]["geometry"]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    aff = img.affine
    # voxel (0, 0, k) is each slice's ImagePositionPatient (converted to RAS)
    for k in (0, 17, 34):
        np.testing.assert_allclose(aff @ [0, 0, k, 1], list(np.array(geo["positions"][k]) * lps_to_ras) + [1], atol=1e-3)
    # voxel (i, j, 0) moves i rows down (col cosines) and j columns right (row cosines)
    iop, (dr, dc) = np.array(geo["orientation"]), geo["pixel_spacing"]
    p = np.array(geo["positions"][0]) + 5 * dr * iop[3:] + 7 * dc * iop[:3]
    np.testing.assert_allclose(aff @ [5, 7, 0, 1], list(p * lps_to_ras) + [1], atol=1e-3)
    np.testing.assert_allclose(img.header.get_zooms()[:2], [dr, dc], atol=1e-4)


def test_dicom_to_npy(shared_data, tmp_path):
    vol = bio.read(shared_data / "val/datalad_example_dicom_structural")
    bio.write(vol, tmp_path / "d.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), vol.data)


# --------------------------------------------------------------------------------------------
# errors and dispatch
# --------------------------------------------------------------------------------------------


def test_errors(shared_data, tmp_path):
    with pytest.raises(InputError, match=r"nothing\.nii: no such file or folder"):
        bio.read(tmp_path / "nothing.nii")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: unknown .*NIfTI.*DICOM.*NumPy"):
        bio.read(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="DICOM input only"):
        bio.read(shared_data / "train/pypi_nibabel/anatomical.nii", series="1")

    vol = bio.read(shared_data / "train/pypi_nibabel/anatomical.nii")
    with pytest.raises(OutputError, match=r"\.nii, \.nii\.gz or \.npy"):
        bio.write(vol, tmp_path / "out.dcm")
    with pytest.raises(OutputError, match=r"\.nii, \.nii\.gz or \.npy"):
        bio.write(vol, tmp_path / "outdir")
    bio.write(vol, tmp_path / "once.nii")
    with pytest.raises(OutputError, match="exists"):
        bio.write(vol, tmp_path / "once.nii", force=False)
    with pytest.raises(OutputError, match="does not exist"):
        bio.write(vol, tmp_path / "missing_dir" / "x.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "once.nii"]  # no leftovers
