"""``--lossless`` DICOM gives back the original files (issue 17), and no DICOM output, lossless
or not, drops or re-renders an element.

* every series of ``../shared/data/dicom`` and ``val/`` and pydicom's own test images, encoded
  losslessly and decoded: native transfer syntaxes byte-identical (SHA-256), encapsulated ones
  element-identical (tag, VR, value bytes, order, sequences) with the same pixel values in
  Explicit VR Little Endian — or byte-identical with ``keep_encapsulated``;
* crafted files holding each reported defect: decimal and integer strings that are not plain
  numbers, bytes invalid in the declared character set, private elements over 64 KiB, overlays,
  bits above Bits Stored, odd lengths, group lengths, file meta elements, pixel padding,
  Smallest/Largest (Image) Pixel Value, a JPEG-LS near-lossless original without a lossy flag,
  1-bit images, ``--series`` matching, option combinations;
* ``.bmz`` files of the DICOM-JSON meta (before the kept bytes) still decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from click.testing import CliRunner

import bmz
import bmz.io as bio
from bmz.bitstream import BmzReader
from bmz.cli import main
from bmz.errors import ChecksumError, InputError
from bmz.io.dicom import kept as dicom_kept
from bmz.io.dicom.layout import EXPLICIT_LE, elements, layout

from conftest import SHARED_DATA

GOLDEN = Path(__file__).parent / "golden" / "dicom_legacy"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def lossless(items, **kw) -> bytes:
    return bmz.compress_dataset(items, lossless=True, base_quality=0, **kw)


def files_back(data: bytes) -> dict[str, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notes (native pixel data...) are checked elsewhere
        return dict(bmz.decompress_to_files(data))


def is_encapsulated(raw: bytes) -> bool:
    return pydicom.uid.UID(layout(raw).transfer_syntax or EXPLICIT_LE).is_encapsulated


def assert_same_file(original: bytes, back: bytes, what: str) -> None:
    """Native: byte-identical. Encapsulated: every element identical but what the native
    version must change, the same pixel values, pixel data native in Explicit VR LE."""
    if not is_encapsulated(original):
        assert sha(back) == sha(original), f"{what}: not byte-identical"
        return
    frames = pydicom.dcmread(io.BytesIO(original)).pixel_array
    assert layout(back).transfer_syntax == EXPLICIT_LE, what
    assert dicom_kept.native_differences(original, back, frames) == "", what


# --------------------------------------------------------------------------------------------
# every series of the shared data, and pydicom's test images
# --------------------------------------------------------------------------------------------


def _dicom_folders() -> list[str]:
    """Folders of ../shared/data/dicom and val holding DICOM files directly (relative)."""
    out = []
    for sub in ("dicom", "val"):
        root = SHARED_DATA / sub
        if not root.is_dir():
            continue
        for d, _, files in sorted(os.walk(root)):
            if any(not f.endswith((".nii", ".nii.gz", ".json", ".txt", ".csv")) for f in files):
                out.append(Path(d).relative_to(SHARED_DATA).as_posix())
    return out


def _round_trip(raws: dict[str, bytes], **kw) -> dict[str, bytes]:
    """The files given as bytes (named IM00001.dcm... in the order given), back by name."""
    back = files_back(lossless(list(raws.values()), **kw))
    names = {f"IM{i + 1:05d}.dcm": name for i, name in enumerate(raws)}
    assert set(back) == set(names)
    return {names[n]: b for n, b in back.items()}


@pytest.mark.parametrize("folder", _dicom_folders())
def test_every_series_round_trips_lossless(shared_data, folder):
    """Each series of the folder (its files given as bytes, the way they are on disk) encoded
    losslessly and decoded: the original files."""
    path = shared_data / folder
    raws = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    series: dict[str, dict[str, bytes]] = {}
    for name, raw in raws.items():
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        except Exception:
            continue  # not DICOM
        if "Rows" not in ds:
            continue  # not an image
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), {})[name] = raw
    assert series, folder
    n_files = 0
    for uid, members in series.items():
        try:
            groups, backs = [members], [_round_trip(members)]
        except InputError as e:  # test files sharing a UID but not a pixel layout: one by one
            assert "differs from" in str(e), str(e)
            groups = [{n: r} for n, r in members.items()]
            backs = [_round_trip(g) for g in groups]
        for group, back in zip(groups, backs):
            for name, raw in group.items():
                assert_same_file(raw, back[name], f"{folder}/{name}")
                n_files += 1
        encapsulated = {n: r for n, r in members.items() if is_encapsulated(r)}
        if encapsulated:  # with keep_encapsulated: byte-identical too
            for name, raw in encapsulated.items():
                back = _round_trip({name: raw}, keep_encapsulated=True)
                assert sha(back[name]) == sha(raw), f"{folder}/{name}"
    assert n_files == sum(len(m) for m in series.values())


# pydicom's bundled test images that bmz refuses, and why (all others must round-trip)
PYDICOM_REFUSED = {
    "liver_1frame.dcm": "1-bit", "liver_expb_1frame.dcm": "1-bit",  # segmentations
    "image_dfl.dcm": "deflated",
    "MR_truncated.dcm": "cannot decode",  # pixel data shorter than the image
    "JPEG-lossy.dcm": "cannot decode", "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode",
    "badVR.dcm": "",  # no valid Bits Allocated
    # dose grids, 32 bits: values beyond the 16 bits bmz encodes
    "rtdose.dcm": "16-bit range", "rtdose_1frame.dcm": "16-bit range",
    "rtdose_expb.dcm": "16-bit range", "rtdose_expb_1frame.dcm": "16-bit range",
    "rtdose_rle.dcm": "16-bit range", "rtdose_rle_1frame.dcm": "16-bit range",
}


def _pydicom_images() -> list[str]:
    out = []
    for p in sorted(PYDICOM_FILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        except Exception:
            continue
        if "Rows" in ds and int(ds.get("SamplesPerPixel", 1) or 1) == 1 \
                and str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
            out.append(p.name)
    return out


def test_pydicom_test_images_round_trip_or_are_refused():
    images = _pydicom_images()
    assert {"MR_small.dcm", "CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "JPEGLSNearLossless_16.dcm",
            "emri_small.dcm" if (PYDICOM_FILES / "emri_small.dcm").exists() else "CT_small.dcm",
            } <= set(images)
    done, wrong = [], []
    for name in images:
        raw = (PYDICOM_FILES / name).read_bytes()
        try:
            data = lossless(raw)
        except InputError as e:
            if PYDICOM_REFUSED.get(name) is None or PYDICOM_REFUSED[name] not in str(e):
                wrong.append(f"{name} refused: {e}")
            continue
        if name in PYDICOM_REFUSED:
            wrong.append(f"{name} not refused")
        (back,) = files_back(data).values()
        assert_same_file(raw, back, name)
        done.append(name)
    assert not wrong, wrong
    assert len(done) >= 15, done


# --------------------------------------------------------------------------------------------
# crafted files: the reported defects
# --------------------------------------------------------------------------------------------

_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def element(tag: int, vr: str, value: bytes) -> bytes:
    """An explicit VR little endian element, exactly these value bytes (no padding added)."""
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    if vr in _LONG:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def with_elements(raw: bytes, new: list[tuple[int, str, bytes]]) -> bytes:
    """The explicit VR LE file ``raw`` with top-level (or file meta) elements added, or replaced
    when the tag is there, at their sorted places; file meta group length fixed."""
    for tag, vr, value in sorted(new):
        lay = layout(raw)
        elems = lay.meta if tag >> 16 == 2 else lay.elements
        same = next((e for e in elems if e.tag == tag), None)
        if same is not None:
            start, end = same.start, same.end
        else:
            after = next((e for e in elems if e.tag > tag), None)
            start = end = after.start if after else (elems[-1].end if elems else len(raw))
        raw = raw[:start] + element(tag, vr, value) + raw[end:]
    lay = layout(raw)
    gl = lay.find(0x00020000)
    if gl is not None:
        n = lay.meta[-1].end - lay.meta[1].start if len(lay.meta) > 1 else 0
        raw = raw[:gl.value_start] + struct.pack("<I", n) + raw[gl.end:]
    return raw


def mr_small() -> bytes:
    return (PYDICOM_FILES / "MR_small.dcm").read_bytes()


def dump(raw: bytes) -> dict[str, tuple[str, bytes | None]]:
    return {path: (vr, value) for path, vr, value in elements(raw)}


# what a derived (lossy) file changes on purpose; every other element keeps its bytes
DERIVED = {"(0002,", "(7FE0,0010)", "(0008,0018)", "(0020,000E)", "(0008,0008)", "(0028,2110)",
           "(0028,2112)", "(0028,2114)", "(0008,2111)", "(0008,9215)", "(0008,2112)",
           "(0028,0106)", "(0028,0107)", "(0028,0108)", "(0028,0109)"}


def assert_derived_keeps_bytes(original: bytes, derived: bytes) -> None:
    a, b = dump(original), dump(derived)
    for path, (vr, value) in a.items():
        if any(path.startswith(p) for p in DERIVED) or path.endswith(",0000)"):
            continue
        assert path in b, f"{path} dropped"
        assert b[path] == (vr, value), f"{path}: {a[path]!r:.80} became {b[path]!r:.80}"


def test_strings_are_kept_as_bytes_never_re_rendered():
    """DS/IS that are not plain numbers, or not in canonical form, and text whose bytes are
    invalid in the declared character set: the same bytes, lossless and lossy."""
    crafted = with_elements(mr_small(), [
        (0x00080005, "CS", b"ISO_IR 192"),  # UTF-8 declared ...
        (0x00100010, "PN", b"M\xfcller^J\xfcrgen"),  # ... Latin-1 bytes (invalid UTF-8)
        (0x00180050, "DS", b"63.9mm"),  # SliceThickness: not a number
        (0x00180080, "DS", b"80.0000 "),  # RepetitionTime
        (0x00180081, "DS", b"1,5 "),  # EchoTime with a decimal comma
        (0x00180088, "DS", b"1.23456789012345"),  # 16 characters
        (0x00181314, "DS", b"90"),  # FlipAngle
        (0x00200013, "IS", b"+0005 "),  # InstanceNumber
    ])
    back = files_back(lossless(crafted))
    assert sha(next(iter(back.values()))) == sha(crafted)
    (derived,) = files_back(bmz.compress_dataset(crafted, quality=1)).values()
    assert_derived_keeps_bytes(crafted, derived)
    ds = pydicom.dcmread(io.BytesIO(derived))
    assert ds.LossyImageCompression == "01" and ds[0x00180081].value is not None


def test_large_private_elements_overlays_and_odd_lengths_round_trip():
    overlay = bytes(range(256)) * 512  # a 1024x1024 overlay plane, 128 KiB
    crafted = with_elements(mr_small(), [
        (0x00290010, "LO", b"BMZ TEST"),
        (0x00291011, "US", b"\x01\x02\x03"),  # odd-length US
        (0x00291020, "OB", os.urandom(70_001) + b"\x00"),  # private, over 64 KiB
        (0x60000010, "US", struct.pack("<H", 1024)), (0x60000011, "US", struct.pack("<H", 1024)),
        (0x60000040, "CS", b"G "), (0x60000050, "SS", struct.pack("<hh", 1, 1)),
        (0x60000100, "US", struct.pack("<H", 1)), (0x60000102, "US", struct.pack("<H", 0)),
        (0x60003000, "OW", overlay),
    ])
    (back,) = files_back(lossless(crafted)).values()
    assert sha(back) == sha(crafted)
    (derived,) = files_back(bmz.compress_dataset(crafted, quality=1)).values()
    assert_derived_keeps_bytes(crafted, derived)


def test_group_lengths_file_meta_and_pixel_padding_round_trip():
    raw = mr_small()
    lay = layout(raw)
    px = lay.find(0x7FE00010)
    group8 = sum(e.end - e.start for e in lay.elements if e.group == 0x0008)
    padded = raw[:px.value_start - 4] + struct.pack("<I", px.end - px.value_start + 6) \
        + raw[px.value_start:px.end] + b"\x00\x00\xab\xcd\x00\x00" + raw[px.end:]
    crafted = with_elements(padded, [
        (0x00080000, "UL", struct.pack("<I", group8)),  # a group length
        (0x00020003, "UI", b"1.2.3.4.5.6.7.8\x00"),  # Media Storage SOP Instance UID: differs
        (0x00020016, "AE", b"SOME_AE_TITLE   "),  # Source Application Entity Title
    ])
    (back,) = files_back(lossless(crafted)).values()
    assert sha(back) == sha(crafted)
    # the derived file: no group length (pydicom writes none), said at encode time
    rep_notes = bmz.info(bmz.compress_dataset(crafted, quality=1))["dicom"]["notes"]
    assert any("group length" in n for n in rep_notes)


def test_bits_above_bits_stored_are_kept():
    raw = mr_small()
    ds = pydicom.dcmread(io.BytesIO(raw))
    words = np.abs(ds.pixel_array.astype(np.int32)).astype(np.uint16) & 0x0FFF
    words[0, :8] |= 0x1000  # 0x0113 stored, 0x1113 in the file
    words[5, 5] = 0x1113
    lay = layout(raw)
    px = lay.find(0x7FE00010)
    crafted = raw[:px.value_start] + words.astype("<u2").tobytes() + raw[px.end:]
    crafted = with_elements(crafted, [(0x00280101, "US", struct.pack("<H", 12)),
                                      (0x00280102, "US", struct.pack("<H", 11)),
                                      (0x00280103, "US", struct.pack("<H", 0)),
                                      (0x00280106, "US", struct.pack("<H", 0)),
                                      (0x00280107, "US", struct.pack("<H", 4095))])
    assert pydicom.dcmread(io.BytesIO(crafted)).pixel_array[5, 5] == 0x0113  # masked by pydicom
    data = lossless(crafted)
    (back,) = files_back(data).values()
    assert sha(back) == sha(crafted)
    assert struct.unpack_from("<H", back, px.value_start + 2 * (5 * 64 + 5))[0] == 0x1113
    # a lossy file says, at encode time, that the derived file has the stored values only
    r = run_encode_lossy(crafted)
    assert "bits above Bits Stored (12 of 16)" in r


def run_encode_lossy(raw: bytes) -> str:
    rep = bmz.info(bmz.compress_dataset(raw, quality=1))
    return "\n".join(rep["dicom"]["notes"])


def test_smallest_largest_pixel_values():
    raw = mr_small()  # signed 16-bit; Smallest/Largest Image Pixel Value written as US here
    crafted = with_elements(raw, [(0x00280106, "US", struct.pack("<H", 0)),
                                  (0x00280107, "US", struct.pack("<H", 4000)),
                                  (0x00280108, "US", struct.pack("<H", 0)),
                                  (0x00280109, "US", struct.pack("<H", 4000))])
    (back,) = files_back(lossless(crafted)).values()
    assert sha(back) == sha(crafted)  # lossless: untouched
    data = bmz.compress_dataset(crafted, quality=1)
    (derived,) = files_back(data).values()
    ds = pydicom.dcmread(io.BytesIO(derived))
    decoded = bmz.decompress(data)[0]
    for tag, value in ((0x00280106, decoded.min()), (0x00280107, decoded.max()),
                       (0x00280108, decoded.min()), (0x00280109, decoded.max())):
        assert ds[tag].VR == "US" and ds[tag].value == int(value)  # the original VR, new values


def test_series_wide_pixel_values_follow_the_whole_decoded_series(shared_data, tmp_path):
    files = sorted((shared_data / "val/dcm_qa_decubitus/HFS_t1_fl2d_sag").iterdir())[:3]
    raws = [with_elements(f.read_bytes(), [(0x00280108, "US", struct.pack("<H", 0)),
                                           (0x00280109, "US", struct.pack("<H", 9999))])
            for f in files]
    folder = tmp_path / "src"
    folder.mkdir()
    for f, raw in zip(files, raws):
        (folder / f.name).write_bytes(raw)
    assert run("encode", folder, "-o", tmp_path / "a.bmz", "-q", 1, "--quiet").exit_code == 0
    r = run("decode", tmp_path / "a.bmz", "-o", f"{tmp_path}/out/", "--quiet")
    assert r.exit_code == 0, r.output
    decoded = bmz.decompress((tmp_path / "a.bmz").read_bytes())
    for f in files:
        ds = pydicom.dcmread(tmp_path / "out" / f.name)
        assert ds.SmallestPixelValueInSeries == int(decoded.min())
        assert ds.LargestPixelValueInSeries == int(decoded.max())
        assert ds[0x00280109].VR == "US"


def test_jpeg_ls_near_lossless_history_is_kept():
    raw = (PYDICOM_FILES / "JPEGLSNearLossless_16.dcm").read_bytes()
    assert "LossyImageCompression" not in pydicom.dcmread(io.BytesIO(raw))
    (back,) = files_back(lossless(raw)).values()  # native version: marked lossy
    ds = pydicom.dcmread(io.BytesIO(back))
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    assert_same_file(raw, back, "JPEGLSNearLossless_16.dcm")
    (back,) = files_back(lossless(raw, keep_encapsulated=True)).values()
    assert back == raw  # kept encapsulated: the original itself, its transfer syntax says lossy
    (derived,) = files_back(bmz.compress_dataset(raw, quality=1)).values()
    ds = pydicom.dcmread(io.BytesIO(derived))
    assert list(ds.LossyImageCompressionMethod) == ["ISO_14495_1", "BMZ"]
    assert len(ds.LossyImageCompressionRatio) == 2
    assert ds.SourceImageSequence[-1].PurposeOfReferenceCodeSequence[0].CodeValue == "121330"


def test_refusals_one_bit_series_and_options(shared_data, tmp_path):
    seg = (PYDICOM_FILES / "liver_1frame.dcm").read_bytes()
    with pytest.raises(InputError, match="1-bit pixel data"):
        bmz.compress_dataset(seg)
    (tmp_path / "seg.dcm").write_bytes(seg)
    r = run("encode", tmp_path / "seg.dcm", "-o", tmp_path / "seg.bmz")
    assert r.exit_code == 2 and "1-bit" in r.output and not (tmp_path / "seg.bmz").exists()

    for kw in ({"lossless": True, "quality": 3}, {"max_error": 2, "quality": 3},
               {"base_quality": 1}, {"keep_encapsulated": True},
               {"max_error": 2, "keep_encapsulated": True}):
        with pytest.raises(InputError):
            bmz.compress_dataset(mr_small(), **kw)
    with pytest.raises(InputError):
        bmz.compress(np.zeros((2, 8, 8), np.uint8), quality=3, lossless=True)
    r = run("encode", PYDICOM_FILES / "MR_small.dcm", "-o", tmp_path / "x.bmz", "--lossless",
            "-q", "3")
    assert r.exit_code == 2 and "quality" in r.output

    # --series: a series number, never a prefix of every UID ("1" starts them all)
    folder = tmp_path / "two"
    folder.mkdir()
    for number, uid in ((1, "1.2.826.0.1.3680043.2.1143.111"), (2, "1.2.826.0.1.3680043.2.1143.222")):
        raw = with_elements(mr_small(), [(0x0020000E, "UI", uid.encode() + b"\x00"),
                                         (0x00200011, "IS", str(number).encode() + b" ")])
        (folder / f"s{number}.dcm").write_bytes(raw)
    assert bio.read(folder, series="1").meta["dicom"]["series_uid"].endswith(".111")
    assert bio.read(folder, series="2").meta["dicom"]["series_uid"].endswith(".222")
    assert bio.read(folder, series="1.2.826.0.1.3680043.2.1143.2").meta["dicom"]["series_uid"] \
        .endswith(".222")  # an unambiguous prefix
    with pytest.raises(InputError, match="no DICOM series has number 3"):
        bio.read(folder, series="3")
    with pytest.raises(InputError, match="prefix of several"):
        bio.read(folder, series="1.2.826")
    r = run("encode", folder, "-o", tmp_path / "s1.bmz", "--series", "1", "--quiet")
    assert r.exit_code == 0, r.output


def test_dciodvfy_finds_nothing_new_in_native_versions(shared_data, tmp_path):
    """The native version of encapsulated originals (JPEG 2000, JPEG baseline, JPEG-LS
    near-lossless, JPEG lossless, lossy JPEG 2000): dicom3tools' dciodvfy reports no error the
    original does not have."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian: apt-get install dicom3tools)")

    def errors(path: Path) -> set[str]:
        r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        return {line.strip() for line in (r.stdout + r.stderr).splitlines()
                if line.startswith("Error")}

    sources = [sorted((shared_data / "dicom/dcm_qa_frag/6001_j2k").iterdir())[0],
               shared_data / "dicom/divest/jpeg_01j.dcm", shared_data / "dicom/dcm_qa_ts/5.dcm",
               shared_data / "dicom/pypi_pydicom_data/MR2_J2KI.dcm",
               PYDICOM_FILES / "JPEGLSNearLossless_16.dcm"]
    for src in sources:
        (back,) = files_back(lossless(src.read_bytes())).values()
        out = tmp_path / src.name
        out.write_bytes(back)
        assert not errors(out) - errors(src), src.name


# --------------------------------------------------------------------------------------------
# the CLI, info, verify, damage
# --------------------------------------------------------------------------------------------


def test_cli_lossless_series_is_byte_identical_and_info_says_so(shared_data, tmp_path):
    src = shared_data / "dicom/dcm_qa_frag/6001_j2k"  # JPEG 2000: element-identical
    r = run("encode", src, "-o", tmp_path / "j.bmz", "--lossless", "--base-quality", "0",
            "--quiet")
    assert r.exit_code == 0, r.output
    assert "comes back with every element identical but its pixel data native" in r.output
    r = run("info", tmp_path / "j.bmz")
    assert "12 with every element identical and native pixel data" in r.output
    assert "note      6001" in r.output and "1.2.840.10008.1.2.4.90" in r.output
    r = run("encode", src, "-o", tmp_path / "k.bmz", "--lossless", "--base-quality", "0",
            "--keep-encapsulated")
    assert r.exit_code == 0 and "12 byte-identical" in r.output and "warning" not in r.output
    r = run("decode", tmp_path / "k.bmz", "-o", f"{tmp_path}/k/", "--quiet")
    assert r.exit_code == 0 and "warning" not in r.output
    for p in sorted(src.iterdir()):
        assert sha((tmp_path / "k" / p.name).read_bytes()) == sha(p.read_bytes())
    info = bmz.info(tmp_path / "k.bmz")
    assert info["format_version"] == "1.2" and info["dicom"]["restore"] == {"identical": 12}
    assert info["dicom"]["kept_encapsulated_bytes"] > 0


def test_a_damaged_attachment_is_detected(tmp_path):
    data = bytearray(lossless(mr_small()))
    data[-5] ^= 0xFF  # the attachment ends the file
    (tmp_path / "d.bmz").write_bytes(bytes(data))
    r = run("verify", tmp_path / "d.bmz")
    assert r.exit_code == 3 and "attachment" in r.output
    with pytest.raises(ChecksumError, match="attachment"):
        bmz.decompress_to_files(bytes(data))
    r = run("decode", tmp_path / "d.bmz", "-o", f"{tmp_path}/out/")
    assert r.exit_code == 3 and not (tmp_path / "out").exists()
    assert run("decode", tmp_path / "d.bmz", "-o", tmp_path / "d.npy").exit_code == 0


def test_a_forged_kept_byte_is_refused_at_decode():
    """Kept bytes that do not give back the recorded SHA-256 (a forged file with valid CRCs)."""
    from bmz.bitstream import container

    data = lossless(mr_small())
    with BmzReader(data) as r:
        meta, att = dict(r.meta), r.attachment()
        chunks = [r.chunk(k) for k in range(r.n_slices)]
    kept = meta["source_meta"]["dicom"]["kept"]
    kept["files"][0]["sha256"] = "0" * 64
    del meta["attachment"]
    forged = container.pack(meta, chunks, attachment=att)
    with pytest.raises(bmz.errors.FormatError, match="SHA-256 differs"):
        bmz.decompress_to_files(forged)


# --------------------------------------------------------------------------------------------
# files written before the kept bytes (DICOM meta layout 1)
# --------------------------------------------------------------------------------------------


def test_legacy_dicom_files_still_decode(tmp_path):
    """tests/golden/dicom_legacy: MR_small encoded by bmz before the kept bytes (commit
    f709e78): lossy q1 and lossless. They decode to the same volumes and to DICOM as then."""
    golden = json.loads((GOLDEN / "golden.json").read_text())
    original = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    for name, want in golden.items():
        data = (GOLDEN / name).read_bytes()
        arr = bmz.decompress(data)
        assert sha(np.ascontiguousarray(arr).tobytes()) == want["decoded_sha256"]
        assert bmz.info(data)["dicom"]["layout"] == 1
        r = run("decode", GOLDEN / name, "-o", f"{tmp_path}/{name}/", "--quiet")
        assert r.exit_code == 0, r.output
        (out,) = (tmp_path / name).iterdir()  # given as bytes then: named IM00001.dcm
        ds = pydicom.dcmread(out)
        np.testing.assert_array_equal(ds.pixel_array, arr.reshape(ds.pixel_array.shape))
        assert ds.PatientName == original.PatientName and ds.EchoTime == original.EchoTime
        if "lossless" in name:
            assert ds.SOPInstanceUID == original.SOPInstanceUID
            np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
        else:
            assert ds.SOPInstanceUID != original.SOPInstanceUID
            assert ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
