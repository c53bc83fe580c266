"""Every registered architecture is a real codec: training path, frozen bitstream, shipping.

Runs on untrained weights (and small widths for the big U-Nets), so it checks the contract, not
the rate–distortion: the bitstream decodes to exactly what the training path's quantised forward
gives, the rate follows the quality, and a model saved by ``zoo.save_frozen`` encodes and decodes a
volume through the public API."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bmz import api
from bmz import errors as bmz_errors
from bmz.codec import zoo
from bmz.codec.models import build_model, decoder_macs_per_pixel, model_names

#: small configurations of the heavy architectures (the defaults have 28 M / 64 M parameters)
SMALL = {"unet-noskip-v1": {"widths": [4, 8, 8, 16, 16], "M": 16},
         "unet-noskip-v2": {"widths": [6, 12, 12, 24, 24], "M": 16},
         "unet-noskip-c": {"widths": [8, 8, 16, 16], "M": 16},
         "factorized": {"N": 16, "M": 16},
         "hyperprior": {"N": 16, "M": 16},
         "vqvae": {"N": 16, "D": 8, "K": 16}}

FAMILIES = ["factorized", "hyperprior", "unet-noskip-v1", "unet-noskip-v2", "unet-noskip-c",
            "cnn-ae-8", "cnn-ae-16", "cnn-ae-32", "vqvae"]


def test_every_seed_architecture_is_registered():
    assert set(FAMILIES) <= set(model_names())


def _small(name):
    torch.manual_seed(0)
    return build_model(name, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", FAMILIES)
def test_training_path_shapes_and_rates(name):
    m = _small(name)
    d = m.downsampling
    x = torch.rand(3, 1, 2 * d, 3 * d)
    q = torch.tensor([0, m.n_qualities - 1, 0])
    out = m(x, q)
    assert out["x_hat"].shape == x.shape
    for lik in out["likelihoods"].values():
        assert torch.all(lik > 0) and torch.all(lik <= 1)
    loss = out["x_hat"].mean() + sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    loss.backward()  # every parameter of the analysis side gets a gradient
    assert all(p.grad is not None for n, p in m.named_parameters()
               if n.startswith("g_a") and p.requires_grad)


@pytest.mark.parametrize("name", FAMILIES)
def test_config_rebuilds_the_same_architecture(name):
    m = _small(name)
    m2 = build_model(name, **m.config())
    assert m2.config() == m.config()
    m2.load_state_dict(m.state_dict())


@pytest.mark.parametrize("name", FAMILIES)
def test_bitstream_decodes_to_the_quantised_forward(name):
    m = _small(name).eval()
    m.freeze()
    d = m.downsampling
    H, W = 2 * d if d >= 16 else 4 * d, 3 * d if d >= 16 else 5 * d
    torch.manual_seed(1)
    x = torch.rand(1, 1, H, W)
    sizes = []
    for q in range(m.n_qualities):
        data = m.compress_slice(x, q)
        x_hat = m.decompress_slice(data, (H, W), q)
        assert x_hat.shape == (1, 1, H, W)
        with torch.no_grad():
            ref = m(x, torch.tensor([q]))["x_hat"]
        # eval-mode forward rounds like the coder (medians and all): same latent, same output
        # fixed-point synthesis: within 1e-3 of the float one (see test_fixedpoint for the bound)
        assert torch.allclose(x_hat, ref.double(), atol=1e-3), (name, q)
        sizes.append(len(data))
    assert all(s > 0 for s in sizes)


def test_family_gains_spread_with_lambda():
    m = build_model("cnn-ae-8")
    g = m.log2_gain.detach()[:, 0]
    assert torch.all(g[1:] > g[:-1])  # higher quality, larger gain, finer quantisation


def test_decoder_macs_per_pixel_counts_by_hand():
    # cnn-ae-8 synthesis on a 64² output: deconv 8→8 from 16² (2048·8·9), deconv 8→8 from 32²
    # (8192·8·9), conv 8→1 at 64² (4096·8·9) = 1 032 192 MACs / 4096 px
    assert decoder_macs_per_pixel(build_model("cnn-ae-8")) == pytest.approx(252.0)
    heavy = decoder_macs_per_pixel(build_model("unet-noskip-c"))
    assert heavy > 50 * decoder_macs_per_pixel(build_model("cnn-ae-8"))


@pytest.mark.parametrize("name", ["cnn-ae-8", "factorized", "unet-noskip-c", "vqvae"])
def test_saved_family_model_round_trips_through_the_api(name, tmp_path, monkeypatch):
    m = _small(name)
    stem = tmp_path / f"{name}-test"
    sha = zoo.save_frozen(m, stem.with_suffix(".pt"))
    zoo.write_card(stem.with_suffix(".json"), {"name": stem.name, "architecture": name, "sha256": sha})
    monkeypatch.setenv("BMZ_MODEL_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 4096, size=(3, 40, 52), dtype=np.uint16)
    vol[1] = 7  # a constant slice
    blob = api.compress(vol, quality=m.n_qualities, model=stem.name)
    back = api.decompress(blob)
    assert back.shape == vol.shape and back.dtype == vol.dtype
    assert np.all(back[1] == 7)
    assert back.min() >= vol.min() and back.max() <= vol.max()
    info = api.info(blob)
    assert info["model"] == stem.name and info["weights_sha256"] == sha
    assert math.isfinite(float(np.mean(back)))


def test_retrained_weights_keep_old_files_decodable(tmp_path, monkeypatch):
    """Exporting new weights over shipped ones archives the old pair (archive/NAME-<sha12>.pt):
    a file encoded before the retrain still decodes bit-exactly, with the archived weights."""
    from bmz import train
    from bmz.bitstream import BmzReader, pack

    repo_ckpt = zoo.find_weights("cnn-ae-8").parents[0] / "checkpoints" / "cnn-ae-8.ckpt"
    if not repo_ckpt.is_file():
        pytest.skip("models/checkpoints/cnn-ae-8.ckpt not in this checkout")
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("BMZ_MODEL_PATH", str(models))
    state = torch.load(repo_ckpt, map_location="cpu", weights_only=False)
    ckpt = tmp_path / "a.ckpt"
    torch.save(state, ckpt)
    train.export(ckpt, models / "mini")
    # the models folder named by BMZ_MODEL_PATH is searched first: "mini" is found there
    img = np.add.outer(np.arange(40), np.arange(48)).astype(np.uint16)[None].repeat(2, 0) * 20
    old_file = api.compress(img, quality=2, model="mini")
    old_back = api.decompress(old_file)
    old_sha = BmzReader(old_file).meta["codec"]["weights_sha256"]

    key = next(k for k, v in state["model"].items() if k.startswith("g_s") and v.dtype.is_floating_point)
    state["model"][key] = state["model"][key] * 1.01  # "retrained"
    torch.save(state, ckpt)
    train.export(ckpt, models / "mini")
    archived = models / "archive" / f"mini-{old_sha[:12]}.pt"
    assert archived.is_file() and archived.with_suffix(".json").is_file()
    assert zoo.sha256_file(models / "mini.pt") != old_sha
    np.testing.assert_array_equal(api.decompress(old_file), old_back)  # archived weights
    assert "archived" in api.verify(old_file)["model_note"]
    new_file = api.compress(img, quality=2, model="mini")
    assert BmzReader(new_file).meta["codec"]["weights_sha256"] != old_sha

    archived.unlink()  # weights nowhere: a clear error naming the weights and where bmz looked
    r = BmzReader(old_file)
    with pytest.raises(bmz_errors.ModelMismatchError, match=rf"mini.*{old_sha[:12]}.*archive"):
        api.decompress(pack(r.meta, [r.chunk(k) for k in range(r.n_slices)]))
    assert api.verify(old_file)["model_available"] is False


def test_default_quality_follows_the_lambdas():
    """The default level is the one nearest λ = 0.15625 (log scale; the higher on a tie), so it
    keeps its meaning (about the same rate and PSNR) when a model gains levels."""
    flagship8 = [0.004 * 2.5**i for i in range(8)]
    assert zoo.default_quality(flagship8) == 5
    assert zoo.default_quality([0.004 * 2.5**i for i in range(-3, 8)]) == 8
    assert zoo.default_quality([0.01, 0.0625, 0.390625, 2.44140625]) == 3  # a tie: the higher
    assert zoo.default_quality([2.0]) == 1
    for name in zoo.available_models():
        n_q, default = zoo.card_qualities(zoo.read_card(name))
        assert 1 <= default <= n_q


def test_encoding_without_a_quality_uses_the_models_default():
    rng = np.random.default_rng(3)
    vol = (rng.random((1, 40, 40)) * 200).astype(np.uint8)
    model, _ = zoo.load_model("hyperprior")
    default = zoo.default_quality(model.lambdas)
    data = api.compress(vol)
    assert api.info(data)["quality"] == default
    assert data == api.compress(vol, quality=default)
    with pytest.raises(bmz_errors.InputError, match=f"from 1 to {model.n_qualities}"):
        api.compress(vol, quality=model.n_qualities + 1)


@pytest.mark.parametrize("name", ["unet-noskip-c", "hyperprior"])
def test_compact_weights_decode_exactly_as_the_full_ones(name, tmp_path):
    """Shipped weights hold the fixed-point synthesis as exact integers (int16/32/64 instead of
    float64) and, with ``half`` (big models), the float transforms as float16: the decoder's
    tensors are unchanged, so the same symbols decode to the same array; the files shrink."""
    m = _small(name)
    m.freeze()
    full = zoo.compact_state(m)
    assert not [k for k, v in full.items() if k.startswith("fx_s.w") and v.is_floating_point()]
    paths = {}
    for half in (False, True):
        p = tmp_path / f"{name}-{half}.pt"
        zoo.save_frozen(m, p, half=half)
        paths[half] = p
    assert paths[True].stat().st_size < paths[False].stat().st_size
    loaded = {}
    for half, p in paths.items():
        blob = torch.load(p, weights_only=True)
        convs = [v for k, v in blob["state_dict"].items()
                 if k.startswith("g_a.") and k.endswith("weight") and v.dim() == 4]
        assert convs and all((v.dtype == torch.float16) == half for v in convs)
        mm = build_model(blob["model_name"], **blob["config"])
        mm.load_state_dict(blob["state_dict"])
        loaded[half] = mm.eval()
    for k, v in m.state_dict().items():  # everything but the float16 transforms comes back exact
        if not k.startswith(("g_a.", "g_s.")):
            assert torch.equal(loaded[True].state_dict()[k], v), k
            assert torch.equal(loaded[False].state_dict()[k], v), k
    rng = np.random.default_rng(1)
    sym = torch.from_numpy(rng.integers(-6, 7, size=(1, m.M, 5, 6))).to(torch.int32)
    ref = m.synthesize(sym, 0)
    assert torch.equal(loaded[False].synthesize(sym, 0), ref)
    assert torch.equal(loaded[True].synthesize(sym, 0), ref)
