"""Golden files: stored ``.bmz`` files must keep decoding to exactly the same arrays.

Each file in ``tests/golden`` was encoded from permissively licensed real MRI (see
``tests/golden/make_golden.py``); ``golden.json`` holds the SHA-256 of its decoded array. A change to
a model's weights, the format or the decoder's numerics that alters any decoded voxel fails here —
on any machine, since decoding is bit-exact by design (docs/FORMAT.md §10.1)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bmz import api

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD = json.loads((GOLDEN / "golden.json").read_text()) if (GOLDEN / "golden.json").is_file() else {}


def test_golden_files_exist():
    assert len(RECORD) >= 6, "tests/golden is empty: run python tests/golden/make_golden.py"
    for name in RECORD:
        assert (GOLDEN / name).is_file(), name


def _decoded_on_1_and_2_threads(blob: bytes) -> list[tuple[tuple, np.dtype, str]]:
    """(shape, dtype, SHA-256) of the array ``blob`` decodes to, on 1 and on 2 threads."""
    n = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            arr = np.ascontiguousarray(api.decompress(blob))
            out.append((arr.shape, arr.dtype, hashlib.sha256(arr.tobytes()).hexdigest()))
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.parametrize("name", sorted(RECORD))
def test_golden_file_decodes_bit_exactly(name):
    rec = RECORD[name]
    blob = (GOLDEN / name).read_bytes()
    expected = (tuple(rec["shape"]), np.dtype(rec["dtype"]), rec["decoded_sha256"])
    assert _decoded_on_1_and_2_threads(blob) == [expected] * 2, (
        f"{name} decodes differently than when it was stored (on 1 or 2 threads): a model, format or "
        "numerics change altered stored files. If that is intended, regenerate with "
        "python tests/golden/make_golden.py and say so in the commit")


def test_files_of_superseded_weights_stay_decodable():
    """Golden files name the weights they were encoded with; those of weights since replaced
    decode with the archived weights (models/archive), which must therefore ship."""
    from bmz.bitstream import BmzReader
    from bmz.codec import zoo

    superseded = []
    for name, rec in RECORD.items():
        with BmzReader(GOLDEN / name) as r:
            sha = r.meta["codec"]["weights_sha256"]
        assert sha == rec["weights_sha256"], name
        path = zoo.weights_for(rec["model"], sha)
        assert zoo.sha256_file(path) == sha
        if path.parent.name == zoo.ARCHIVE:
            superseded.append(name)
    installed = {rec["model"]: zoo.sha256_file(zoo.find_weights(rec["model"])) for rec in RECORD.values()}
    assert all(rec["weights_sha256"] == installed[rec["model"]] or name in superseded
               for name, rec in RECORD.items())


# ---- golden bounded files (max_error / lossless, chunk format 3) ------------------------------

BOUNDED = GOLDEN / "bounded"
BOUNDED_RECORD = (json.loads((BOUNDED / "golden.json").read_text())
                  if (BOUNDED / "golden.json").is_file() else {})


def test_golden_bounded_files_exist():
    assert len(BOUNDED_RECORD) >= 2, "tests/golden/bounded is empty: run python tests/golden/bounded/make_golden.py"


@pytest.mark.parametrize("name", sorted(BOUNDED_RECORD))
def test_golden_bounded_decodes_bit_exactly(name):
    rec = BOUNDED_RECORD[name]
    blob = (BOUNDED / name).read_bytes()
    assert [sha for _, _, sha in _decoded_on_1_and_2_threads(blob)] == [rec["sha256"]] * 2
    assert api.info(blob)["max_error"] == rec["max_error"]
