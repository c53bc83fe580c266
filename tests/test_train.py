"""`bmz train` resumes exactly: stopping at a checkpoint and resuming gives the very same weights
as an uninterrupted run; a finished run ships frozen weights with a model card."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bmz.codec.models import build_model
from bmz.train import export, train

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


def _volume_dir(shared_data, tmp_path, n=6):
    from bmz import io

    vol = io.read(shared_data / "val/ixi_nichart/t1/IXI175-HH-1570_T1.nii.gz").data[40:40 + n]
    d = tmp_path / "pairs"
    d.mkdir()
    np.save(d / "vol.npy", vol)
    return d, vol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU training "
                    "path is checked only where one is present")
def test_training_runs_on_cuda(data_dir, tmp_path):
    """`bmz train` on a CUDA machine: λ and validation tensors follow the model's device."""
    ckpt = _run(tmp_path / "g" / "m", data_dir)
    assert torch.load(ckpt, weights_only=False)["step"] == 6
    ctx = train("hyperprior-ctx", str(tmp_path / "c" / "m"), [str(data_dir)], [str(data_dir)],
                steps=4, batch_size=2, validate_every=2, checkpoint_minutes=100,
                model_config=TINY)
    assert torch.load(ctx, weights_only=False)["depth"] == 2


def test_context_model_trains_in_pairs_and_decodes_exactly(shared_data, tmp_path):
    """hyperprior-ctx: trained on pairs of consecutive slices, warm-started from a hyperprior
    checkpoint (the untrained context reproduces the hyperprior's latents exactly); a slice coded
    with its predecessor as context decodes only with that predecessor."""
    d, vol = _volume_dir(shared_data, tmp_path)
    base = _run(tmp_path / "h" / "m", d)
    threads = torch.get_num_threads()
    try:
        ckpt = train("hyperprior-ctx", str(tmp_path / "c" / "m"), [str(d)], [str(d)], steps=3,
                     batch_size=2, validate_every=1000, checkpoint_minutes=100, threads=1,
                     model_config=TINY, init_from=str(base), until=0)
    finally:
        torch.set_num_threads(threads)
    st = torch.load(ckpt, weights_only=False)
    assert st["depth"] == 2 and st["step"] == 0
    from bmz.codec import pipeline
    from bmz.train import load_trained_state

    hp = build_model("hyperprior", **TINY)
    load_trained_state(hp, torch.load(base, weights_only=False)["model"])
    hp.freeze()
    cm = build_model("hyperprior-ctx", **TINY)
    load_trained_state(cm, st["model"])
    cm.freeze()
    mapping = pipeline.intensity_mapping(vol)
    x = pipeline.to_unit(vol, mapping)
    prev = None
    for k in range(3):
        s = torch.from_numpy(pipeline.pad_to_multiple(x[k], cm.downsampling))[None, None]
        data, y = cm.analyse(s, 1, single_stream=True, prev=prev)
        _, y_hp = hp.analyse(s, 1, single_stream=True)
        assert torch.equal(y, y_hp)  # zero-initialised context = the warm start's latents
        lat = cm.decode_latents(data, s.shape[2:], 1, single_stream=True, prev=prev)
        assert torch.equal(lat["y"], y)
        if prev is not None:  # without its predecessor the slice does not decode to the same latent
            try:
                wrong = cm.decode_latents(data, s.shape[2:], 1, single_stream=True, prev=None)["y"]
            except ValueError:
                wrong = None
            # untrained context: the prediction does not depend on prev yet, so equality is allowed
        prev = cm.context_input(y, 1)

    # after training steps the context is live: slices coded with a predecessor need it
    try:
        ckpt2 = train("hyperprior-ctx", str(tmp_path / "c2" / "m"), [str(d)], [str(d)], steps=4,
                      batch_size=2, validate_every=1000, checkpoint_minutes=100, threads=1,
                      model_config=TINY, init_from=str(base), lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    cm2 = build_model("hyperprior-ctx", **TINY)
    load_trained_state(cm2, torch.load(ckpt2, weights_only=False)["model"])
    cm2.freeze()
    s0 = torch.from_numpy(pipeline.pad_to_multiple(x[0], cm2.downsampling))[None, None]
    s1 = torch.from_numpy(pipeline.pad_to_multiple(x[1], cm2.downsampling))[None, None]
    _, y0 = cm2.analyse(s0, 1, single_stream=True)
    p0 = cm2.context_input(y0, 1)
    data1, y1 = cm2.analyse(s1, 1, single_stream=True, prev=p0)
    assert torch.equal(cm2.decode_latents(data1, s1.shape[2:], 1, single_stream=True, prev=p0)["y"], y1)
    try:
        wrong = cm2.decode_latents(data1, s1.shape[2:], 1, single_stream=True, prev=None)["y"]
        assert not torch.equal(wrong, y1)
    except ValueError:
        pass


def test_big_models_keep_lean_checkpoints_and_half_weights(data_dir, tmp_path, monkeypatch):
    """Above zoo.HALF_ABOVE_PARAMETERS (the full-width U-Nets) a checkpoint holds float16
    weights and no Adam moments, resuming restarts the moments, and the exported weights store
    their float transforms in float16 (their card says so)."""
    from bmz.codec import zoo

    monkeypatch.setattr(zoo, "HALF_ABOVE_PARAMETERS", 0)
    small = {"widths": [4, 8, 8], "M": 8, "lambdas": [0.01, 0.1]}
    threads = torch.get_num_threads()
    try:
        kw = dict(batch_size=2, validate_every=1000, checkpoint_minutes=100, threads=1,
                  model_config=small, patch=32)
        ckpt = train("unet-noskip-v1", str(tmp_path / "u"), [str(data_dir)], [str(data_dir)],
                     steps=4, until=2, **kw)
        st = torch.load(ckpt, weights_only=False)
        assert st["opt"] is None and st["step"] == 2
        assert {v.dtype for k, v in st["model"].items() if k.startswith("g_")} == {torch.float16}
        assert not any(k.startswith("fx_s.") for k in st["model"])  # derived at export
        ckpt = train("unet-noskip-v1", str(tmp_path / "u"), [str(data_dir)], [str(data_dir)],
                     steps=4, resume=str(ckpt), **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.load(ckpt, weights_only=False)["step"] == 4
    card = json.loads((tmp_path / "u.json").read_text())
    assert card["storage"].startswith("float16")
    blob = torch.load(tmp_path / "u.pt", weights_only=True)
    assert blob["state_dict"]["g_a.0.0.weight"].dtype == torch.float16


def test_export_refuses_weights_the_exact_decoder_cannot_decode(tmp_path):
    """Weights whose synthesis no rescaling brings back into the fixed-point decoder's exact
    range (here an output layer 2^40 times too strong: the last layer keeps its scale) decode in
    float but not bit-exactly: export refuses them, names the level, and writes nothing."""
    m = build_model("vqvae", N=8, D=4, K=8, lambdas=[0.01, 0.02])
    with torch.no_grad():
        m.g_s[-1].weight.mul_(2.0**40)
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"model_name": "vqvae", "model_config": m.config(), "model": m.state_dict(),
                "step": 1, "batch_size": 1, "seed": 0}, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="quality 1 cannot be decoded by the bit-exact decoder"):
        export(ckpt, out / "vqvae")
    assert list(out.iterdir()) == []


def test_export_rescales_a_drifted_synthesis(tmp_path):
    """The committed vqvae checkpoint (54,713 CPU steps) runs its synthesis at activations in
    the tens of thousands: freeze() folds powers of two into the fixed-point weights, and the
    exported weights decode a real slice bit-exactly, as close to the float synthesis as the
    other models' decoders are."""
    from pathlib import Path

    from bmz.codec import zoo

    ckpt = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "vqvae.ckpt"
    if not ckpt.is_file():
        pytest.skip("no vqvae checkpoint")
    weights = export(ckpt, tmp_path / "vqvae")
    m = zoo._load(str(weights), zoo.sha256_file(weights))
    assert m._synthesis_scales()  # this run needs them
    yy, xx = np.mgrid[0:96, 0:96] / 96
    x = torch.from_numpy((((yy - .5) ** 2 + (xx - .5) ** 2 < .2) * (.5 + .4 * np.sin(20 * xx * yy)))
                         .astype(np.float32))[None, None]
    for q in (0, m.n_qualities - 1):
        _, sym = m.analyse(x, q)
        exact = m.synthesize(sym, q)
        assert float((exact - m.synthesize_float(sym, q).double()).abs().max()) < 0.03
        assert torch.equal(exact, m.synthesize(sym.clone(), q))


def test_fast_decoder_trains_on_the_frozen_encoder_of_shipped_weights(data_dir, tmp_path):
    """hyperprior-fast starts from *shipped* weights (the ``.pt`` bmz.codec.zoo writes, not a
    training checkpoint), keeps every encoder tensor it copied bit for bit through training,
    trains its own synthesis, hyper-synthesis and decoder gains, and refuses to start without the
    encoder it keeps."""
    _run(tmp_path / "h" / "m", data_dir)  # a finished TINY hyperprior: ships m.pt
    shipped = tmp_path / "h" / "m.pt"
    cfg = {"N": 8, "M": 8, "c1": 4, "c2": 4}
    kw = dict(batch_size=2, validate_every=1000, checkpoint_minutes=100, threads=1, model_config=cfg)
    out = str(tmp_path / "f" / "m")
    threads = torch.get_num_threads()
    try:
        first = train("hyperprior-fast", out, [str(data_dir)], [str(data_dir)], steps=4,
                      init_from=str(shipped), lr=1e-2, until=0, **kw)
        start = torch.load(first, weights_only=False)
        last = train("hyperprior-fast", out, [str(data_dir)], [str(data_dir)], steps=4,
                     resume=str(first), **kw)
        with pytest.raises(SystemExit, match="--init-from"):
            train("hyperprior-fast", str(tmp_path / "g" / "m"), [str(data_dir)], [str(data_dir)],
                  steps=1, **kw)
    finally:
        torch.set_num_threads(threads)
    src = torch.load(shipped, weights_only=False)["state_dict"]
    end = torch.load(last, weights_only=False)
    assert end["step"] == 4
    assert end["model_config"]["lambdas"] == TINY["lambdas"]  # taken from the shipped weights
    kept = [k for k, _ in build_model("hyperprior-fast", **cfg, lambdas=TINY["lambdas"]).named_parameters()
            if k.startswith(("g_a.", "h_a.", "entropy_bottleneck.", "log2_gain"))]
    assert len(kept) >= 8
    for k in kept:
        assert torch.equal(src[k], start["model"][k]) and torch.equal(src[k], end["model"][k]), k
    for k in ("g_s.0.weight", "g_s.4.weight", "h_s.4.weight", "log2_inv_gain"):
        assert not torch.equal(start["model"][k], end["model"][k]), k
