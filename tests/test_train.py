"""`bmz train` resumes exactly: stopping at a checkpoint and resuming gives the very same weights
as an uninterrupted run; a finished run ships frozen weights with a model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bmz.train import train

TINY = {"N": 8, "M": 8, "lambdas": [0.01, 0.1]}


@pytest.fixture()
def data_dir(shared_data, tmp_path):
    from bmz import io

    vol = io.read(shared_data / "val/ixi_nichart/t1/IXI175-HH-1570_T1.nii.gz").data[40:44]
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "vol.npy", vol)
    return d


def _run(out, data_dir, **kw):
    threads = torch.get_num_threads()
    try:
        return train("hyperprior", str(out), [str(data_dir)], [str(data_dir)], steps=6,
                     batch_size=2, model_config=TINY, validate_every=1000,
                     checkpoint_minutes=100, threads=1, **kw)
    finally:
        torch.set_num_threads(threads)


def test_resume_is_exact(data_dir, tmp_path):
    straight = _run(tmp_path / "a" / "m", data_dir)
    first = _run(tmp_path / "b" / "m", data_dir, until=3)
    mid = torch.load(first, weights_only=False)
    assert mid["step"] == 3
    resumed = _run(tmp_path / "b" / "m", data_dir, resume=str(first))
    a = torch.load(straight, weights_only=False)
    b = torch.load(resumed, weights_only=False)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    # a finished run ships weights and a card whose hash matches
    from bmz.codec.zoo import sha256_file

    card = json.loads((tmp_path / "a" / "m.json").read_text())
    assert card["sha256"] == sha256_file(tmp_path / "a" / "m.pt")
    assert card["training"]["steps"] == 6 and [q["lambda"] for q in card["qualities"]] == [0.01, 0.1]
