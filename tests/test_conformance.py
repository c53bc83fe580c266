"""The conformance files (tests/conformance): every chunk kind, chunk format, container version
and shipped model in small files, each decoding to the array whose SHA-256 conformance.json
records. Another implementation of docs/FORMAT.md can be checked against the same files.

The expected sets come from bmz itself (the chunk kinds and formats of ``bmz.codec.chunks``, the
container versions of ``bmz.bitstream.container``, the models of ``models/*.json``): a new one
without a conformance file fails here (add it with ``tests/conformance/make_conformance.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bmz import api
from bmz.bitstream import BmzReader, container
from bmz.codec import chunks

HERE = Path(__file__).resolve().parent / "conformance"
RECORD = json.loads((HERE / "conformance.json").read_text())
SHIPPED_MODELS = {p.stem for p in (HERE.parents[1] / "models").glob("*.json")}


def test_every_kind_format_version_and_model_is_covered():
    assert {k for r in RECORD.values() for k in r["kinds"]} == set(chunks.KINDS)
    assert {r["chunk_format"] for r in RECORD.values()} == set(chunks.FORMATS)
    assert {r["container"] for r in RECORD.values()} == \
        {f"{a}.{b}" for a, b in container.KNOWN_VERSIONS}
    # a model is covered by a file whose chunks hold its latent codes (not a bounded file's name)
    coded = {r["model"] for r in RECORD.values()
             if any(k != chunks.constant.KIND and hasattr(chunks.KINDS[k], "latents") for k in r["kinds"])}
    assert SHIPPED_MODELS and SHIPPED_MODELS <= coded, f"no conformance file: {SHIPPED_MODELS - coded}"


def test_every_conformance_file_is_recorded():
    assert {p.name for p in HERE.glob("*.bmz")} == set(RECORD)


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
    with BmzReader(blob) as r:
        attachment = r.attachment()
    assert (attachment is None) == ("attachment_sha256" not in rec)
    if attachment is not None:
        assert hashlib.sha256(attachment).hexdigest() == rec["attachment_sha256"]


def test_container_versions_decode_alike():
    a, b = RECORD["v10_f4_hyperprior_q3.bmz"], RECORD["v11_f4_hyperprior_q3.bmz"]
    assert a["decoded_sha256"] == b["decoded_sha256"] and a["bytes"] == b["bytes"] + 8 * 3
