"""DICOM output: ``bmz decode scan.bmz -o outdir/`` and the in-memory pipeline API
(``bmz.compress_dataset`` / ``bmz.decompress_to_datasets``), on real series from ../shared/data.

Each output file must hold the decoded pixels in the original's bit layout, the lossy-compression
and derivation attributes DICOM asks for, new UIDs, and every other original attribute unchanged
(private elements of any size included); dicom3tools' ``dciodvfy`` must find no error in it that
it does not also find in the original. (Lossless round trips: tests/test_dicom_lossless.py.)"""

from __future__ import annotations

import builtins
import io
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset

import bmz
import bmz.io as bio
from bmz.bitstream import BmzReader
from bmz.cli import main
from bmz.errors import FormatError, InputError, OutputError
from bmz.io.dicom import LOSSY_METHOD

Q = 1  # lowest quality: the fastest, and the most lossy (pixels surely differ from the original)

# name -> (path under ../shared/data/dicom, files to use (None: all), what it covers)
SERIES = {
    "j2k-series": ("dcm_qa_frag/6001_j2k", 4, "classic 16-bit series, JPEG 2000 lossless original"),
    "12bit-signed": ("dcm_qa_12bit/12bitSigned_0x0F0F.dcm", None, "12 bits stored, signed"),
    "12bit-unsigned": ("dcm_qa_12bit/12bitUnsigned.dcm", None, "12 bits stored, unsigned"),
    "enhanced": ("dcm_qa_enh/Siemens_XA10_6_1.dcm", None,
                 "enhanced MR multi-frame, a nested private element over 64 KiB"),
    "implicit": ("pypi_pydicom/MR_small_implicit.dcm", None, "implicit VR little endian"),
    "big-endian-enhanced": ("pypi_pydicom_data/emri_small_big_endian.dcm", None,
                            "explicit VR big endian, multi-frame"),
    "big-endian": ("pypi_pydicom/MR_small_bigendian.dcm", None, "explicit VR big endian, signed"),
    "jpeg-lossy-8bit": ("divest/jpeg_01j.dcm", None,
                        "8-bit JPEG baseline original, already lossy (history kept)"),
}

# What bmz changes on purpose; every other top-level attribute must be the original's.
CHANGED = {
    "SOPInstanceUID", "SeriesInstanceUID", "ImageType", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "DerivationDescription",
    "DerivationCodeSequence", "SourceImageSequence", "SourceImageEvidenceSequence", "PixelData",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
}

# dciodvfy (dicom3tools, Debian) reports the MR Pulse Sequence and Bulk Motion Synchronization
# attributes of an enhanced MR image whose Image Type value 1 is DERIVED as "present when
# condition unsatisfied"; PS3.3 C.8.13.4 says of each "Required if Image Type (0008,0008) Value 1
# is ORIGINAL or MIXED. May be present otherwise." -- the validator is stricter than the standard.
ALLOWED = re.compile(r"^Error - Attribute present when condition unsatisfied \(which may not be "
                     r"present otherwise\) Type 1C Conditional Element=<\w+> "
                     r"Module=<(MRPulseSequence|BulkMotionSynchronization)>$")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def source_of(shared_data: Path, key: str, tmp: Path) -> Path:
    rel, n_files, _ = SERIES[key]
    src = shared_data / "dicom" / rel
    if n_files is None:
        return src
    folder = tmp / f"src_{key}"  # a few files of the series, linked
    folder.mkdir()
    for f in sorted(src.iterdir())[:n_files]:
        os.symlink(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def decoded(shared_data, tmp_path_factory):
    """Every series of SERIES encoded (q1) and decoded to a DICOM folder through the CLI, once:
    key -> (source, .bmz path, output folder, CLI output)."""
    tmp = tmp_path_factory.mktemp("dicom_out")
    out = {}
    for key in SERIES:
        src = source_of(shared_data, key, tmp)
        bmz_path, folder = tmp / f"{key}.bmz", tmp / key
        r = run("encode", src, "-o", bmz_path, "-q", Q, "--quiet")
        assert r.exit_code == 0, r.output
        r = run("decode", bmz_path, "-o", f"{folder}/", "--quiet")
        assert r.exit_code == 0, r.output
        out[key] = (src, bmz_path, folder, r.output)
    return out


def originals(src: Path) -> dict[str, Path]:
    """Relative name -> original file (a single file: its own name)."""
    if src.is_file():
        return {src.name: src}
    return {p.relative_to(src).as_posix(): p for p in sorted(src.rglob("*")) if p.is_file()}


def functional_groups_equal(a, b) -> bool:
    """Functional groups equal but for what bmz adds: Frame Type value 1, Derivation Image."""
    if len(a) != len(b):
        return False
    for ga, gb in zip(a, b):
        gb = Dataset(gb)  # a copy
        if "DerivationImageSequence" in gb and "DerivationImageSequence" not in ga:
            del gb.DerivationImageSequence
        for ea in ga:
            eb = gb.get(ea.tag)
            if eb is None or ea.VR != "SQ" or eb.VR != "SQ":
                if eb is None or ea.value != eb.value:
                    return False
                continue
            for ia, ib in zip(ea.value, eb.value):
                for e in ia:
                    v = ib.get(e.tag)
                    if v is None:
                        return False
                    if e.keyword == "FrameType":
                        if list(v.value)[1:] != list(e.value)[1:] or v.value[0] != "DERIVED":
                            return False
                    elif v.value != e.value:
                        return False
        if set(gb.keys()) != set(ga.keys()):
            return False
    return True


@pytest.mark.parametrize("key", list(SERIES))
def test_decode_to_folder_writes_the_derived_series(decoded, key):
    src, bmz_path, folder, output = decoded[key]
    data = bmz_path.read_bytes()
    expected = bmz.decompress(data)
    expected = expected if expected.ndim == 3 else expected[None]
    info = bmz.info(bmz_path)
    olds = originals(src)
    news = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    assert set(news) == set(olds)  # one file per original file, under its name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{key}.")]  # no temp

    # read back by bmz (sorted as the original was) and by pydicom: the decoded pixels exactly
    back = bio.read(folder)
    np.testing.assert_array_equal(back.data, expected)
    assert not np.array_equal(back.data, bio.read(src).data)  # q1 is lossy: the check can fail

    series_uids, sop_uids = set(), set()
    for name, path in news.items():
        new = pydicom.dcmread(path)
        old = pydicom.dcmread(olds[name])
        # the original's transfer syntax when native little endian, else explicit VR LE
        ts = old.file_meta.TransferSyntaxUID
        assert new.file_meta.TransferSyntaxUID == (
            ts if ts == pydicom.uid.ImplicitVRLittleEndian else pydicom.uid.ExplicitVRLittleEndian)
        assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
        assert new.pixel_array.shape[-2:] == old.pixel_array.shape[-2:]
        n_frames = int(old.get("NumberOfFrames", 1))
        assert int(new.get("NumberOfFrames", 1)) == n_frames
        # the lossy-compression attributes, with the history of an already lossy original
        assert new.LossyImageCompression == "01"
        ratios = list(np.atleast_1d(new.LossyImageCompressionRatio))
        methods = list(np.atleast_1d(new.LossyImageCompressionMethod))
        if old.get("LossyImageCompression") == "01":
            assert ratios[:-1] == list(np.atleast_1d(old.LossyImageCompressionRatio))
            assert methods[:-1] == list(np.atleast_1d(old.LossyImageCompressionMethod))
        else:
            assert len(ratios) == len(methods) == 1
        assert methods[-1] == LOSSY_METHOD
        assert abs(float(ratios[-1]) - info["ratio"]) < 0.01 * info["ratio"]
        # derived, new UIDs, a reference to the original
        assert new.ImageType[0] == "DERIVED"
        assert list(new.ImageType[1:]) == list(old.ImageType[1:])
        assert new.SOPInstanceUID != old.SOPInstanceUID
        assert new.SeriesInstanceUID != old.SeriesInstanceUID
        series_uids.add(new.SeriesInstanceUID)
        sop_uids.add(new.SOPInstanceUID)
        if "SharedFunctionalGroupsSequence" in old:
            deriv = new.SharedFunctionalGroupsSequence[0].DerivationImageSequence[-1]
            source = deriv.SourceImageSequence[-1]
            evidence = new.SourceImageEvidenceSequence[-1].ReferencedSeriesSequence[-1]
            assert evidence.ReferencedSOPSequence[-1].ReferencedSOPInstanceUID == old.SOPInstanceUID
            assert functional_groups_equal(old.get("PerFrameFunctionalGroupsSequence", []),
                                           new.get("PerFrameFunctionalGroupsSequence", []))
        else:
            deriv, source = new, new.SourceImageSequence[-1]
        assert deriv.DerivationCodeSequence[-1].CodeValue == "113040"
        assert f"model {info['model']}, quality {Q}" in deriv.DerivationDescription
        assert source.ReferencedSOPInstanceUID == old.SOPInstanceUID
        purpose = source.PurposeOfReferenceCodeSequence[0].CodeValue
        assert purpose == ("121330" if old.get("LossyImageCompression") == "01" else "121320")
        # every other original attribute, unchanged: nothing is dropped (elements over 64 KiB
        # included)
        assert "omitted" not in output
        for elem in old:
            if elem.keyword in CHANGED or elem.tag.group == 0x7FE0:
                continue
            assert elem.tag in new, f"{name}: {elem.tag} {elem.keyword} missing"
            assert new[elem.tag].value == elem.value, f"{name}: {elem.tag} {elem.keyword} changed"
        extra = {e.keyword or str(e.tag) for e in new if e.tag not in old}
        assert extra <= CHANGED, f"{name}: unexpected new attributes {extra - CHANGED}"
    assert len(series_uids) == 1 and len(sop_uids) == len(news)


def test_elements_over_64k_are_kept(decoded):
    # the enhanced Siemens file has an 83 KB private element nested in its functional groups,
    # each classic file of the JPEG 2000 series a 144680-byte Siemens CSA header: the derived
    # files hold them, byte for byte
    for key, tag, size in (("enhanced", None, 83336), ("j2k-series", 0x00211019, 144680)):
        src, _, folder, output = decoded[key]
        assert "warning" not in output
        for name, path in originals(src).items():
            old, new = pydicom.dcmread(path), pydicom.dcmread(folder / name)
            if tag is None:  # nested: (5200,9229) > item 0 > (0021,1059) > item 0 > (0021,1019)
                def big(ds):
                    return [e for e in ds.iterall() if e.tag == 0x00211019]
                (a,), (b,) = big(old), big(new)
            else:
                a, b = old[tag], new[tag]
            assert len(a.value) == size and b.value == a.value and b.VR == a.VR


@pytest.mark.parametrize("key", list(SERIES))
def test_dciodvfy_finds_no_new_errors(decoded, key):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian: apt-get install dicom3tools)")
    src, _, folder, _ = decoded[key]

    def errors(path: Path) -> set[str]:
        r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        return {line.strip() for line in (r.stdout + r.stderr).splitlines()
                if line.startswith("Error")}

    olds = originals(src)
    for name, old in olds.items():
        new = errors(folder / name) - errors(old)
        assert not {e for e in new if not ALLOWED.match(e)}, f"{name}: {sorted(new)}"


def test_in_memory_api_writes_nothing(shared_data, tmp_path, monkeypatch):
    src = shared_data / "dicom/dcm_qa_frag/6001_j2k"
    files = sorted(src.iterdir())[:3]
    datasets = [pydicom.dcmread(f) for f in files]
    buffers = [io.BytesIO(f.read_bytes()) for f in files]
    raw = files[0].read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError(f"a temporary file was made: {args} {kwargs}")

    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        assert not set(mode) & set("wax+"), f"opened {file} for writing"
        return real_open(file, mode, *args, **kwargs)

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile",
                 "SpooledTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.chdir(tmp_path)
    data = bmz.compress_dataset(datasets, quality=Q)
    from_buffers = bmz.compress_dataset(buffers, quality=Q)  # file objects: the same pixels
    single = bmz.compress_dataset(raw, quality=Q)  # bytes of one file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped: no warning
        back = bmz.decompress_to_datasets(io.BytesIO(data))
        (one,) = bmz.decompress_to_datasets(single)
    assert one.Rows == 128 and one.filename == "IM00001.dcm"  # bytes have no file name
    assert len(one[0x00211019].value) == 144680  # the Siemens CSA header, kept
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []

    expected = bmz.decompress(data)
    np.testing.assert_array_equal(bmz.decompress(from_buffers), expected)
    assert sorted(ds.filename for ds in back) == [f.name for f in files]
    by_name = {f.name: ds for f, ds in zip(files, datasets)}
    for k, ds in enumerate(back):  # in slice order: one slice per classic file
        orig = by_name[ds.filename]
        np.testing.assert_array_equal(ds.pixel_array, expected[k])
        assert ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
        assert ds.SOPInstanceUID != orig.SOPInstanceUID and ds.PatientName == orig.PatientName
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)  # a complete DICOM file
        assert buf.getvalue()[128:132] == b"DICM"
    assert len({ds.SeriesInstanceUID for ds in back}) == 1
    # the derived datasets encode again; their names come along
    again = bmz.decompress_to_datasets(bmz.compress_dataset(back, quality=Q))  # nothing dropped
    assert [ds.filename for ds in again] == [ds.filename for ds in back]
    assert list(again[0].LossyImageCompressionMethod) == [LOSSY_METHOD, LOSSY_METHOD]


def _small(shared_data) -> Dataset:
    return pydicom.dcmread(shared_data / "dicom/pypi_pydicom/MR_small.dcm")


def test_elements_over_64k_and_overlays_are_kept(shared_data, tmp_path):
    ds = _small(shared_data)
    ds.add_new(0x00291010, "LO", "BMZ TEST")  # private creator
    ds.add_new(0x00291020, "OB", bytes(range(256)) * 300)  # private, over 64 KiB
    for tag, vr, value in ((0x60000010, "US", 1024), (0x60000011, "US", 1024),
                           (0x60000040, "CS", "G"), (0x60000050, "SS", [1, 1]),
                           (0x60000100, "US", 1), (0x60000102, "US", 0),
                           (0x60003000, "OW", bytes(range(256)) * 512)):  # a 1024² overlay
        ds.add_new(tag, vr, value)
    data = bmz.compress_dataset(ds, quality=Q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (out,) = bmz.decompress_to_datasets(data)
    assert out[0x00291020].value == ds[0x00291020].value
    assert [(e.tag, e.VR, e.value) for e in out if e.tag.group == 0x6000] == \
        [(e.tag, e.VR, e.value) for e in ds if e.tag.group == 0x6000]
    assert out[0x00291010].value == "BMZ TEST" and out.PatientID == ds.PatientID
    out.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "x.dcm").pixel_array.shape == (64, 64)


def test_bad_inputs_give_bmz_errors(shared_data, tmp_path):
    small = _small(shared_data)
    no_pixels = _small(shared_data)
    del no_pixels.PixelData
    with pytest.raises(InputError, match=r"dataset 2 .*no pixel data"):
        bmz.compress_dataset([small, no_pixels])
    colour = _small(shared_data)
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    with pytest.raises(InputError, match=r"dataset 1 .*colour image \(RGB, 3 samples"):
        bmz.compress_dataset(colour)
    other = _small(shared_data)
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(InputError, match="2 series"):
        bmz.compress_dataset([small, other])
    with pytest.raises(InputError, match="dataset 1: not a DICOM"):
        bmz.compress_dataset(b"hello, not DICOM")
    with pytest.raises(InputError, match="dataset 2: expected a pydicom Dataset"):
        bmz.compress_dataset([small, 42])
    with pytest.raises(InputError, match="no DICOM datasets"):
        bmz.compress_dataset([])
    bare = Dataset(small)  # no file meta, so no transfer syntax
    with pytest.raises(InputError, match="dataset 1: no Transfer Syntax UID"):
        bmz.compress_dataset(bare)

    # a .bmz of an array: no DICOM to write
    arr_bmz = tmp_path / "arr.bmz"
    arr_bmz.write_bytes(bmz.compress(np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64),
                                     quality=Q))
    with pytest.raises(OutputError, match="needs a DICOM-origin .bmz; got numpy"):
        bmz.decode_file(arr_bmz, tmp_path / "out")
    with pytest.raises(InputError, match="not a DICOM series"):
        bmz.decompress_to_datasets(arr_bmz.read_bytes())
    r = run("decode", arr_bmz, "-o", f"{tmp_path}/out2/")
    assert r.exit_code == 5 and r.output.count("\n") == 1, r.output
    assert "bmz: error:" in r.output and "DICOM-origin" in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()

    dcm_bmz = tmp_path / "small.bmz"
    dcm_bmz.write_bytes(bmz.compress_dataset(small, quality=Q))
    r = run("decode", dcm_bmz, "-o", tmp_path / "x.dcm")
    assert r.exit_code == 5 and "DICOM output goes to a folder" in r.output
    r = run("decode", dcm_bmz, "-o", f"{tmp_path}/part/", "--slices", "0")
    assert r.exit_code == 5 and "needs every slice" in r.output


def test_existing_folder_needs_force_and_never_loses_other_files(shared_data, tmp_path):
    dcm_bmz = tmp_path / "small.bmz"
    dcm_bmz.write_bytes(bmz.compress_dataset(_small(shared_data), quality=Q))
    out = tmp_path / "out"
    assert run("decode", dcm_bmz, "-o", out, "--quiet").exit_code == 0  # no suffix: a folder
    first = pydicom.dcmread(out / "MR_small.dcm").SOPInstanceUID
    r = run("decode", dcm_bmz, "-o", out)
    assert r.exit_code == 5 and "not empty (use --force" in r.output
    assert pydicom.dcmread(out / "MR_small.dcm").SOPInstanceUID == first  # untouched
    assert run("decode", dcm_bmz, "-o", out, "--force", "--quiet").exit_code == 0
    assert pydicom.dcmread(out / "MR_small.dcm").SOPInstanceUID != first  # replaced
    (out / "notes.txt").write_text("mine")
    r = run("decode", dcm_bmz, "-o", out, "--force")
    assert r.exit_code == 5 and "notes.txt, which is not a DICOM file" in r.output
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small.bmz"]  # no temp left


def test_a_failure_midway_leaves_no_folder(shared_data, tmp_path):
    src = shared_data / "dicom/dcm_qa_frag/6001_j2k"
    data = bytearray(bmz.compress_dataset([pydicom.dcmread(f) for f in sorted(src.iterdir())[:3]],
                                          quality=Q))
    with BmzReader(bytes(data)) as r:
        end = r.data_start + sum(r.chunk_sizes())
    data[end - 3] ^= 0xFF  # damage the last slice's chunk: found only after two files are written
    damaged = tmp_path / "damaged.bmz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="slice 2"):
        bmz.decode_file(damaged, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.bmz"]


@pytest.mark.parametrize("key", ["j2k-series", "12bit-signed"])
def test_lossless_file_restores_the_original_instances(shared_data, tmp_path, key):
    """A --lossless .bmz decoded to DICOM is the original series: same UIDs, no lossy marking,
    identical pixels; --max-error 2 is marked lossy (near-lossless, its bound in the
    description) with every pixel within 2 of the original's."""
    src = source_of(shared_data, key, tmp_path)
    for opts, folder in ((["--lossless"], tmp_path / "exact"), (["--max-error", "2"], tmp_path / "near")):
        r = run("encode", src, "-o", tmp_path / f"{folder.name}.bmz", *opts, "--quiet")
        assert r.exit_code == 0, r.output
        r = run("decode", tmp_path / f"{folder.name}.bmz", "-o", f"{folder}/", "--quiet")
        assert r.exit_code == 0, r.output
    for rel, orig_path in originals(src).items():
        orig = pydicom.dcmread(orig_path)
        exact = pydicom.dcmread(tmp_path / "exact" / rel)
        assert exact.SOPInstanceUID == orig.SOPInstanceUID
        assert exact.SeriesInstanceUID == orig.SeriesInstanceUID
        assert exact.get("LossyImageCompression") == orig.get("LossyImageCompression")
        assert list(exact.ImageType) == list(orig.ImageType)
        np.testing.assert_array_equal(exact.pixel_array, orig.pixel_array)
        near = pydicom.dcmread(tmp_path / "near" / rel)
        assert near.LossyImageCompression == "01" and near.SOPInstanceUID != orig.SOPInstanceUID
        assert "maximum error 2" in near.DerivationDescription
        diff = near.pixel_array.astype(np.int64) - orig.pixel_array.astype(np.int64)
        assert np.abs(diff).max() <= 2


def test_in_memory_lossless_gives_the_original_datasets(shared_data):
    files = sorted((shared_data / "dicom" / "dcm_qa_frag" / "6001_j2k").iterdir())[:3]
    originals_ = [pydicom.dcmread(f) for f in files]
    data = bmz.compress_dataset([f.read_bytes() for f in files], lossless=True)
    back = bmz.decompress_to_datasets(data)
    assert sorted(d.SOPInstanceUID for d in back) == sorted(d.SOPInstanceUID for d in originals_)
    by_uid = {d.SOPInstanceUID: d for d in originals_}
    for d in back:
        np.testing.assert_array_equal(d.pixel_array, by_uid[d.SOPInstanceUID].pixel_array)
        assert d.get("LossyImageCompression") == by_uid[d.SOPInstanceUID].get("LossyImageCompression")
