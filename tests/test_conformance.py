"""The conformance files (tests/conformance): every chunk kind, chunk format and container version
in small files, each decoding to the array whose SHA-256 conformance.json records. Another
implementation of docs/FORMAT.md can be checked against the same files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bmz import api
from bmz.bitstream import BmzReader

HERE = Path(__file__).resolve().parent / "conformance"
RECORD = json.loads((HERE / "conformance.json").read_text())


def test_every_kind_format_and_version_is_covered():
    assert {k for r in RECORD.values() for k in r["kinds"]} == {0, 1, 2, 3}
    assert {r["chunk_format"] for r in RECORD.values()} == {2, 3, 4}
    assert {r["container"] for r in RECORD.values()} == {"1.0", "1.1"}


@pytest.mark.parametrize("name", sorted(RECORD))
def test_conformance_file_decodes_to_its_record(name):
    rec = RECORD[name]
    blob = (HERE / name).read_bytes()
    with BmzReader(blob) as r:
        assert f"{r.version[0]}.{r.version[1]}" == rec["container"]
        assert r.meta["codec"]["chunk_format"] == rec["chunk_format"]
        assert sorted({r.chunk(k)[0] for k in range(r.n_slices)}) == rec["kinds"]
    back = np.ascontiguousarray(api.decompress(blob))
    assert (list(back.shape), back.dtype.str) == (rec["shape"], rec["dtype"])
    assert hashlib.sha256(back.tobytes()).hexdigest() == rec["decoded_sha256"]


def test_container_versions_decode_alike():
    a, b = RECORD["v10_f4_hyperprior_q3.bmz"], RECORD["v11_f4_hyperprior_q3.bmz"]
    assert a["decoded_sha256"] == b["decoded_sha256"] and a["bytes"] == b["bytes"] + 8 * 3
