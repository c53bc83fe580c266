"""Streaming: encode_file and decode_file hold a few slices, never the volume (issue 6, "Load").

The lazy readers (``bmz.io.read(..., lazy=True)``) must give exactly what the eager ones give, and
memory must not grow with the number of slices."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bmz import api
from bmz import io as bio
from bmz.codec import zoo
from bmz.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sct_t1w.nii.gz"  # a real spinal-cord T1, 77 slices of 42×76 int16


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return bio.read(SAMPLE).data


def _nifti(arr: np.ndarray, path: Path, dtype=None) -> Path:
    """Save slices (n, X, Y) as a NIfTI (X, Y, n) file."""
    data = np.moveaxis(arr, 0, -1)
    img = nib.Nifti1Image(data.astype(dtype) if dtype else data, np.diag([0.5, 0.5, 2.0, 1.0]))
    nib.save(img, path)
    return path


def _same_volume(lazy: bio.Volume, eager: bio.Volume) -> None:
    assert isinstance(lazy.data, bio.SliceStack)
    assert lazy.data.shape == eager.data.shape and lazy.data.dtype == eager.data.dtype
    np.testing.assert_array_equal(np.asarray(lazy.data), eager.data)
    assert (lazy.data.vmin, lazy.data.vmax) == (int(eager.data.min()), int(eager.data.max()))
    assert lazy.meta == eager.meta
    lazy.data.close()


@pytest.mark.parametrize("variant", ["gz", "plain", "big-endian", "float", "2d", "trailing"])
def test_lazy_nifti_equals_eager(tmp_path, sample, variant):
    if variant == "gz":
        p = SAMPLE
    elif variant == "plain":
        p = _nifti(sample, tmp_path / "a.nii")
    elif variant == "big-endian":
        p = _nifti(sample, tmp_path / "a.nii", dtype=">i2")
    elif variant == "float":  # integer-valued float32: converted to the smallest integer dtype
        p = _nifti(sample, tmp_path / "a.nii.gz", dtype=np.float32)
    elif variant == "2d":
        p = tmp_path / "a.nii"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(sample[30]), np.eye(4)), p)
    else:  # bytes after the voxel data are kept
        p = _nifti(sample, tmp_path / "a.nii")
        with open(p, "ab") as f:
            f.write(b"trailing bytes")
    _same_volume(bio.read(p, lazy=True), bio.read(p))
    if variant == "float":
        assert bio.read(p, lazy=True).data.dtype == np.uint16  # the smallest holding 0..max


def test_lazy_npy_equals_eager(tmp_path, sample):
    for name, arr in [("c.npy", sample), ("f.npy", np.asfortranarray(sample)),
                      ("b.npy", sample > 300), ("s.npy", sample[5].astype(np.float64))]:
        np.save(tmp_path / name, arr)
        _same_volume(bio.read(tmp_path / name, lazy=True), bio.read(tmp_path / name))


def test_lazy_errors_name_file_and_slice(tmp_path, sample):
    bad = sample.astype(np.float32)
    bad[40, 3, 3] = 0.5
    p = _nifti(bad, tmp_path / "half.nii.gz")
    with pytest.raises(InputError, match=r"half\.nii\.gz: slice 40: has non-integer values"):
        bio.read(p, lazy=True)
    # a gzip stream cut inside slice 60: found by the checking pass, before anything is encoded
    raw = gzip.decompress(SAMPLE.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: 352 + 60 * 42 * 76 * 2 + 100]))
    with pytest.raises(InputError, match=r"cut\.nii\.gz: truncated NIfTI file \(the voxel data "
                                         r"ends in slice 60 of 77"):
        bio.read(cut, lazy=True)
    with pytest.raises(InputError, match=r"cut\.nii\.gz: truncated"):
        api.encode_file(cut, tmp_path / "cut.bmz")
    assert not (tmp_path / "cut.bmz").exists()


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("threads", [1, 3])
def test_memory_does_not_grow_with_slices(tmp_path, sample, threads):
    """Peak Python/NumPy memory of encode_file and decode_file (to .nii.gz and .npy) is the same
    for a volume 4× as deep: slices stream through, the volume is never held. Holding it would add
    its 1.5 MB of extra slices (more, for the float copies) to the peak. On several threads too:
    a window of 2 × threads slices in flight (that the encoders' window holds, slice groups
    included: tests/test_threads.py, ``test_encode_window_is_bounded``)."""
    model = "cnn-ae-8"  # the memory behaviour is the model's; the smallest shipped one is fastest
    zoo.load_model(model)

    def run(reps: int) -> tuple[int, int, int]:
        src = _nifti(np.concatenate([sample] * reps), tmp_path / f"v{reps}.nii.gz")
        bmz = tmp_path / f"v{reps}.bmz"
        # on several threads the peak also depends on how far ahead the workers are when it is
        # taken: the lowest of two runs
        tries = 1 if threads == 1 else 2
        enc = min(_peak(lambda: api.encode_file(src, bmz, quality=2, model=model,
                                                threads=threads)) for _ in range(tries))
        dec = min(_peak(lambda: api.decode_file(bmz, tmp_path / f"o{reps}.nii.gz",
                                                threads=threads)) for _ in range(tries))
        npy = min(_peak(lambda: api.decode_file(bmz, tmp_path / f"o{reps}.npy", threads=threads))
                  for _ in range(tries))
        back = np.load(tmp_path / f"o{reps}.npy")
        assert back.shape == (77 * reps, 42, 76)
        np.testing.assert_array_equal(back, api.decompress(bmz.read_bytes()))
        np.testing.assert_array_equal(bio.read(tmp_path / f"o{reps}.nii.gz").data, back)
        return enc, dec, npy

    run(1)  # warm-up: one-time allocations (imports, caches) are not the volume's
    small, deep = run(1), run(4)
    extra = 3 * sample.nbytes  # what holding the deeper volume once would add
    for what, a, b in zip(("encode", "decode .nii.gz", "decode .npy"), small, deep):
        assert b - a < extra / 8, f"{what}: peak {a} → {b} bytes for 4× the slices"


def test_decode_streams_damaged_slice_then_removes_output(tmp_path, sample):
    """A damaged slice met half-way through a streamed decode aborts it: nothing is left."""
    data = bytearray(api.compress(sample[:20], quality=1, model="cnn-ae-8"))
    from bmz.bitstream import BmzReader

    with BmzReader(bytes(data)) as r:
        off = r._entry(12)[0]  # the offset of slice 12's chunk
    data[off + 20] ^= 0xFF
    src = tmp_path / "damaged.bmz"
    src.write_bytes(bytes(data))
    with pytest.raises(Exception, match="slice 12"):
        api.decode_file(src, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == [src]
    rep, damaged = api.decode_file(src, tmp_path / "out.nii.gz", skip_damaged=True)
    assert damaged == [12] and rep.shape == (20, 42, 76)
