"""Decoding on several threads (the default: every core) gives the very arrays one thread gives,
for independent slices and for slice groups, whole volumes and selections, damaged files too."""

from __future__ import annotations

import numpy as np
import pytest

import bmz
from bmz.bitstream import BmzReader
from bmz.file import BmzFile, default_threads


@pytest.fixture(scope="module")
def vol(shared_data):
    from bmz import io

    v = io.read(shared_data / "val/dcm_qa_uih").data
    mid = v.shape[0] // 2
    return np.ascontiguousarray(v[mid - 5:mid + 5, 100:228, 100:228])


@pytest.mark.parametrize("model,group", [("hyperprior", None), ("hyperprior-ctx", 4)])
def test_threads_decode_identically(vol, model, group):
    data = bmz.compress(vol, quality=5, model=model, group=group)
    one = bmz.decompress(data, threads=1)
    for threads in (2, 3, None):
        assert np.array_equal(bmz.decompress(data, threads=threads), one)
    for sel in ([9, 0, 5], range(3, 8), slice(None, None, 3), [2]):
        ks = list(range(10))[sel] if isinstance(sel, slice) else list(sel)
        assert np.array_equal(bmz.decompress(data, slices=sel, threads=3), one[ks])
    assert default_threads() >= 1


def test_threads_report_damage_like_one_thread(vol, tmp_path):
    data = bytearray(bmz.compress(vol, quality=5, model="hyperprior-ctx", group=4))
    with BmzReader(bytes(data)) as r:
        off = r._entry(5)[0]
    data[off + 4] ^= 0x55  # slice 5: inside the second group (4..7)
    p = tmp_path / "d.bmz"
    p.write_bytes(bytes(data))
    outs = {}
    for threads in (1, 3):
        rep, damaged = bmz.decode_file(str(p), str(tmp_path / f"o{threads}.npy"), skip_damaged=True,
                                       threads=threads)
        outs[threads] = (np.load(tmp_path / f"o{threads}.npy"), damaged)
    assert outs[1][1] == outs[3][1] and 5 in outs[1][1]
    assert np.array_equal(outs[1][0], outs[3][0])
    with BmzFile(bytes(data)) as f, pytest.raises(bmz.errors.FormatError, match="slice 5"):
        f.read(threads=3)
