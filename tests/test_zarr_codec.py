"""The numcodecs codec ``bmz`` (bmz/zarr_codec.py) with real MRI in Zarr stores: format 3 (as the
array's serializer) and format 2 (as its compressor), 3-D and 2-D chunks; registration through
the package's entry points; settings and refusals; the README's snippet."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")

import bmz  # noqa: E402
from bmz.errors import InputError, UnknownModelError  # noqa: E402
from bmz.zarr_codec import Bmz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
needs_zarr3 = pytest.mark.skipif(not ZARR3, reason=f"zarr {zarr.__version__}: format 3 needs zarr>=3.1.3")

pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")


def _ixi(shared: Path, n: int) -> np.ndarray:
    """``n`` middle slices of a real IXI T1 (uint8), slices first."""
    from bmz import io as bio

    f = sorted((shared / "val" / "ixi_nichart" / "t1").iterdir())[0]
    vol = np.asarray(bio.read(f).data)
    mid = vol.shape[0] // 2
    return np.ascontiguousarray(vol[mid - n // 2: mid - n // 2 + n])


def _create_v2(path: Path, shape, chunks, dtype, codec):
    """A Zarr format 2 array with ``codec`` as its compressor (zarr 3 or zarr 2)."""
    if ZARR3:
        return zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype, zarr_format=2,
                                 compressors=codec)
    return zarr.open(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, compressor=codec)


def _stored(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _psnr(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return 10 * np.log10((a.max() - a.min()) ** 2 / np.mean((a - b) ** 2))


@needs_zarr3
def test_zarr3_store_of_a_real_volume(shared_data, tmp_path):
    from bmz.zarr_codec import BmzZarr3

    vol = _ixi(shared_data, 20)  # 20 slices in chunks of 8: the last chunk is partial
    store = tmp_path / "ixi.zarr"
    z = zarr.create_array(store, shape=vol.shape, chunks=(8, *vol.shape[1:]), dtype=vol.dtype,
                          serializer=BmzZarr3(quality=8), compressors=None)
    z[:] = vol
    back = zarr.open_array(store, mode="r")
    assert back.metadata.to_dict()["codecs"][0] == {
        "name": "numcodecs.bmz", "configuration": {"quality": 8, "model": "hyperprior"}}
    out = back[:]
    assert out.dtype == vol.dtype and out.shape == vol.shape
    # chunks are exactly what bmz.compress gives for them, and decode as bmz.decompress does
    for k in (0, 2):
        raw = (store / "c" / str(k) / "0" / "0").read_bytes()
        part = slice(8 * k, 8 * (k + 1))
        chunk = vol[part]
        if chunk.shape[0] < 8:  # zarr pads an edge chunk with the fill value (0)
            chunk = np.concatenate([chunk, np.zeros((8 - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        assert raw == bmz.compress(chunk, 8)
        assert np.array_equal(out[part], bmz.decompress(raw)[: len(out[part])])
    # size and fidelity of the flagship's default quality on 8-bit IXI: loose bounds (the measured
    # values are in its model card)
    assert _stored(store) < vol.nbytes / 3
    assert _psnr(vol, out) > 38
    # a region read decodes only the chunks it touches, and agrees with the whole
    assert np.array_equal(back[7:9, 30:40, 50:60], out[7:9, 30:40, 50:60])


def test_zarr2_store_with_2d_and_3d_chunks_of_12_bit_dicom(shared_data, tmp_path):
    from bmz import io as bio

    vol = np.asarray(bio.read(shared_data / "val" / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag").data)[10:14]
    assert vol.dtype.itemsize == 2 and vol.max() > 255  # native 12-bit
    codec = Bmz(quality=2, model="cnn-ae-8")
    z = _create_v2(tmp_path / "s3.zarr", vol.shape, (2, 128, 128), vol.dtype, codec)
    z[:] = vol
    out3 = zarr.open(str(tmp_path / "s3.zarr"), mode="r")[:]
    img = np.ascontiguousarray(vol[0])  # a 2-D array, 2-D chunks
    z2 = _create_v2(tmp_path / "s2.zarr", img.shape, (128, 128), img.dtype, codec)
    z2[:] = img
    out2 = zarr.open(str(tmp_path / "s2.zarr"), mode="r")[:]
    for a, b in ((vol, out3), (img, out2)):
        assert b.dtype == a.dtype and b.shape == a.shape
        assert _psnr(a, b) > 25  # cnn-ae-8 is an undertrained zoo model; the point is the path
    # the 2-D chunk is the 2-D bmz image of that tile
    assert np.array_equal(out2[:128, :128], bmz.decompress(bmz.compress(img[:128, :128], 2, "cnn-ae-8")))


def test_a_fresh_process_opens_the_store_through_the_entry_points(tmp_path):
    # constant slices are stored exactly and decode without the model: the subprocess needs
    # no torch, and still finds the codec only through the entry point
    vol = np.stack([np.full((40, 48), v, np.uint16) for v in (100, 700, 4095)])
    z = _create_v2(tmp_path / "a.zarr", vol.shape, vol.shape, vol.dtype, Bmz(quality=1, model="cnn-ae-8"))
    z[:] = vol
    np.save(tmp_path / "expect.npy", z[:])
    code = (
        "import sys, numpy as np, zarr\n"
        f"a = zarr.open({str(tmp_path / 'a.zarr')!r}, mode='r')[:]\n"
        f"assert np.array_equal(a, np.load({str(tmp_path / 'expect.npy')!r}))\n"
        "assert 'bmz.zarr_codec' in sys.modules  # loaded by numcodecs through the entry point\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_config_round_trip_and_registry():
    c = Bmz(quality=3, model="cnn-ae-8")
    cfg = c.get_config()
    assert cfg == {"id": "bmz", "quality": 3, "model": "cnn-ae-8"}
    c2 = numcodecs.get_codec(cfg)
    assert isinstance(c2, Bmz) and c2 == c and c2.get_config() == cfg
    assert Bmz.from_config({"quality": 3, "model": "cnn-ae-8"}) == c
    from bmz.codec import zoo

    default = zoo.card_qualities(zoo.read_card("hyperprior"))[1]  # the flagship's default level
    assert Bmz().get_config() == {"id": "bmz", "quality": default, "model": "hyperprior"}
    a = np.array([[0, 5, 9], [3, 3, 3]], dtype=np.int16)
    data = c.encode(a)
    assert bytes(data[:4]) == bmz.compress(a, 3, "cnn-ae-8")[:4]
    out = np.zeros_like(a)
    assert c.decode(data, out=out) is out and np.array_equal(out, c.decode(data))


def test_refusals_are_clear():
    c = Bmz(quality=1, model="cnn-ae-8")
    with pytest.raises(InputError, match="floating point"):
        c.encode(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InputError, match="boolean"):
        c.encode(np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="2 or more dimensions"):
        c.encode(np.zeros(64, np.uint8))
    with pytest.raises(InputError, match="quality must be an integer from 1 to 4"):
        Bmz(quality=5, model="cnn-ae-8")
    with pytest.raises(UnknownModelError):
        Bmz(model="no-such-model")
    with pytest.raises(InputError, match="has no setting 'speed'"):
        Bmz(speed=2)
    with pytest.raises(InputError, match="max_error must be"):
        Bmz(max_error=-1)
    with pytest.raises(InputError, match="base_quality needs max_error or lossless"):
        Bmz(base_quality=0)
    with pytest.raises(InputError, match="needs more than 16 bits"):
        c.encode(np.array([[0, 1 << 20]], dtype=np.int32))
    if ZARR3:
        from bmz.zarr_codec import BmzZarr3

        with pytest.raises(InputError, match="not an integer type"):
            zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 8, 8), chunks=(4, 8, 8),
                              dtype="float32", serializer=BmzZarr3(quality=1, model="cnn-ae-8"),
                              compressors=None)


@needs_zarr3
def test_lossless_and_max_error_zarr_stores_of_12_bit_dicom(shared_data, tmp_path):
    from bmz import io as bio
    from bmz.zarr_codec import BmzZarr3

    vol = np.asarray(bio.read(shared_data / "val" / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag").data)[12:16]
    vol = np.ascontiguousarray(vol[:, 64:192, 64:192])  # 4 slices of 128x128, 12-bit
    sizes = {}
    for name, cfg in (("lossless", {"lossless": True}), ("d4", {"max_error": 4})):
        store = tmp_path / f"{name}.zarr"
        z = zarr.create_array(store, shape=vol.shape, chunks=(2, 128, 128), dtype=vol.dtype,
                              serializer=BmzZarr3(model="cnn-ae-8", quality=1, **cfg),
                              compressors=None)
        z[:] = vol
        out = zarr.open_array(store, mode="r")[:]
        err = int(np.abs(out.astype(np.int64) - vol).max())
        assert err == 0 if name == "lossless" else err <= 4
        assert zarr.open_array(store).metadata.to_dict()["codecs"][0]["configuration"] == {
            "quality": 1, "model": "cnn-ae-8", **cfg}
        sizes[name] = _stored(store)
    assert sizes["d4"] < sizes["lossless"] < vol.nbytes


def test_4d_chunks_are_stacks_of_slices():
    c = Bmz(quality=1, model="cnn-ae-8")
    a = (np.arange(2 * 3 * 16 * 16) % 97).astype(np.uint8).reshape(2, 3, 16, 16)
    back = c.decode(c.encode(a))
    assert back.shape == (6, 16, 16)
    out = np.zeros_like(a)
    c.decode(c.encode(a), out=out)
    assert np.array_equal(out.reshape(6, 16, 16), back)


@needs_zarr3
def test_readme_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Zarr\n.*?```python\n(.*?)```", text, re.S)
    assert m, "README has a '## Zarr' section with a python snippet"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(m.group(1), "README.md (Zarr)", "exec"), {})
    assert (tmp_path / "sct_t1w.zarr").is_dir()
