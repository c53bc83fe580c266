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


# ---- re-encoding: the same input and weights give the same bytes -------------------------------


def _current(rec: dict) -> bool:
    """Whether a golden file was written by today's encoder: installed weights, current format."""
    from bmz.codec import zoo
    from bmz.rdcurve import bmz_file_format

    try:
        installed = zoo.sha256_file(zoo.find_weights(rec["model"]))
    except Exception:  # noqa: BLE001 - a model not installed here: nothing to compare
        return False
    return rec["weights_sha256"] == installed and rec["format"] == bmz_file_format(rec["model"])


def _golden_sources():
    import sys

    sys.path.insert(0, str(GOLDEN))
    try:
        from make_golden import sources
    finally:
        sys.path.remove(str(GOLDEN))
    return sources()


def test_golden_files_re_encode_byte_identically(shared_data):
    """Every golden file of today's weights and format is what encoding its source gives now
    (the metadata's ``bmz_version`` aside): the encoder's bytes do not drift either."""
    import json as _json

    from bmz.bitstream import BmzReader, pack

    current = {name: rec for name, rec in RECORD.items() if _current(rec)}
    if not current:
        pytest.skip("no golden file of the installed weights and the current format")
    src = _golden_sources()
    for name, rec in sorted(current.items()):
        vol = src[name.split(f"_{rec['model']}")[0]]
        blob = api.compress(vol, quality=rec["quality"], model=rec["model"])
        stored = (GOLDEN / name).read_bytes()
        with BmzReader(stored) as r:
            meta, chunks = dict(r.meta), [r.chunk(k) for k in range(r.n_slices)]
        with BmzReader(blob) as r:
            meta["bmz_version"] = r.meta["bmz_version"]
        assert blob == pack(meta, chunks), f"{name}: re-encoding gives other bytes"


def test_golden_bounded_files_re_encode_byte_identically(shared_data):
    """The bounded golden files: re-encoding gives the same chunks and metadata (bar
    ``bmz_version``, and the weights' SHA-256 where no chunk holds a base layer), wherever the
    chunks do not depend on weights since replaced."""
    import importlib.util

    from bmz.bitstream import BmzReader
    from bmz.codec import zoo

    spec = importlib.util.spec_from_file_location("bounded_make_golden", BOUNDED / "make_golden.py")
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    src = _golden_sources()
    installed = zoo.sha256_file(zoo.find_weights(zoo.DEFAULT_MODEL))
    plans = {"sct_t1w_8bit_lossless.bmz": lambda: mg.bounded_format3(src["sct_t1w_8bit"], 0, 0),
             "prisma_12bit_d2_base_q1.bmz": lambda: mg.bounded_format3(src["prisma_12bit"], 2, 1),
             "bold_int32_14bit_lossless.bmz": lambda: mg.bounded_format3(src["bold_int32_14bit"], 0, 0)}
    compared = 0
    for name, make in plans.items():
        with BmzReader(BOUNDED / name) as r:
            meta, chunks = dict(r.meta), [r.chunk(k) for k in range(r.n_slices)]
        if meta["codec"]["quality"] and meta["codec"]["weights_sha256"] != installed:
            continue  # base layers of superseded weights
        with BmzReader(make()) as r:
            new_meta, new_chunks = dict(r.meta), [r.chunk(k) for k in range(r.n_slices)]
        for m in (meta, new_meta):
            m.pop("bmz_version")
            m["codec"] = {k: v for k, v in m["codec"].items() if k != "weights_sha256"}
        assert (new_meta, new_chunks) == (meta, chunks), f"{name}: re-encoding gives other bytes"
        compared += 1
    assert compared >= 2
