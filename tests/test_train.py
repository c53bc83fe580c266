"""`bmz train` resumes exactly: stopping at a checkpoint and resuming gives the very same weights
as an uninterrupted run; a finished run ships frozen weights with a model card."""

from __future__ import annotations

import json
import math

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
                     batch_size=2, validate_every=1000, checkpoint_minutes=100, threads=1,
                     **{"model_config": TINY, **kw})
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


def test_resume_with_more_quality_levels(data_dir, tmp_path):
    """`bmz train --resume CKPT --lambdas ...` adds rates below and above the trained ones: every
    trained weight is kept, the gain rows of the new levels continue the trained ones, and the
    run goes on to ship weights with all levels."""
    from bmz.train import extend_qualities

    first = _run(tmp_path / "m", data_dir, until=3, lambdas=[0.01, 0.1, 1.0])
    old = torch.load(first, weights_only=False)
    lam = [0.001, 0.01, 0.1, 1.0, 10.0]
    new = extend_qualities(old, lam)
    g_old, g_new = old["model"]["log2_gain"], new["model"]["log2_gain"]
    assert g_new.shape == (5, g_old.shape[1])
    assert torch.equal(g_new[1:4], g_old) and torch.equal(new["model"]["log2_inv_gain"][1:4], old["model"]["log2_inv_gain"])
    half_log2_10 = 0.5 * math.log2(10.0)  # λ 10× apart: quantisation steps √10× apart
    assert torch.allclose(g_new[0], g_old[0] - half_log2_10) and torch.allclose(g_new[4], g_old[2] + half_log2_10)
    assert torch.equal(new["model"]["log2_inv_gain"][0], old["model"]["log2_inv_gain"][0])
    moments = [st for st in new["opt"]["state"].values() if st["exp_avg"].shape[:1] == (5,)]
    assert len(moments) == 2 and all(float(st["exp_avg"][[0, 4]].abs().sum()) == 0 for st in moments)
    for k, v in old["model"].items():  # everything else untouched
        if v.shape == new["model"][k].shape:
            assert torch.equal(v, new["model"][k]), k

    done = _run(tmp_path / "m", data_dir, resume=str(first), lambdas=lam)
    assert torch.load(done, weights_only=False)["step"] == 6
    card = json.loads((tmp_path / "m.json").read_text())
    assert [q["lambda"] for q in card["qualities"]] == lam

    with pytest.raises(ValueError, match="one run"):
        extend_qualities(old, [0.001, 0.01, 1.0])
    with pytest.raises(ValueError, match="ascending"):
        extend_qualities(old, [0.1, 0.01, 1.0])


def test_quality_levels_of_per_quality_priors_cannot_be_added(data_dir, tmp_path):
    """Models with one entropy model per quality (the factorized families) are refused: their
    new levels would need densities nobody trained."""
    from bmz.train import extend_qualities

    threads = torch.get_num_threads()
    try:
        ckpt = train("cnn-ae-8", str(tmp_path / "c"), [str(data_dir)], [str(data_dir)], steps=6,
                     batch_size=2, lambdas=[0.01, 0.1], validate_every=1000, checkpoint_minutes=100,
                     threads=1, until=1)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="cannot be added"):
        extend_qualities(torch.load(ckpt, weights_only=False), [0.001, 0.01, 0.1])
