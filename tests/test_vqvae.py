"""The VQ-VAE (``vqvae``) is a real codec: container round trip, bit-exact decoding, valid
tables, a rate that grows with the level, refusal of bad payloads, interpolation, training.

Runs on a tiny model (small D/K/S) whose codebooks start from real data, trained for a few
steps where the test needs an error that falls with the level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmz import api
from bmz.bitstream import BmzReader, pack
from bmz.codec import entropy, zoo
from bmz.codec.chunks import learned_compact
from bmz.codec.models import build_model, model_names
from bmz.errors import FormatError
from bmz.train import rd_loss

IXI = "val/ixi_nichart/t1/IXI067-HH-1356_T1.nii.gz"
TINY = {"N": 16, "D": 8, "K": 16, "lambdas": [0.01, 0.02, 0.04, 0.08]}


@pytest.fixture(scope="module")
def ixi(shared_data):
    from bmz import io

    return np.asarray(io.read(shared_data / IXI).data)


def _unit(s: np.ndarray) -> torch.Tensor:
    s = s.astype(np.float32)
    return torch.from_numpy((s - s.min()) / max(float(s.max() - s.min()), 1.0))


def _patches(vol: np.ndarray, n: int, size: int, rng) -> torch.Tensor:
    out = []
    for _ in range(n):
        k = rng.integers(len(vol) // 3, 2 * len(vol) // 3)
        i, j = rng.integers(0, vol.shape[1] - size), rng.integers(0, vol.shape[2] - size)
        out.append(_unit(vol[k])[i:i + size, j:j + size])
    return torch.stack(out)[:, None]


@pytest.fixture(scope="module")
def trained(ixi):
    """A tiny vqvae: codebooks from real data, then 300 training steps (trained-ish), frozen."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = build_model("vqvae", **TINY)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    m.train()
    for _ in range(300):
        x = _patches(ixi, 8, 32, rng)
        q = torch.from_numpy(rng.integers(m.n_qualities, size=8))
        loss, _ = rd_loss(m, m(x, q), x, q)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(n)
    m.eval()
    m.freeze()
    return m


@pytest.fixture()
def installed(trained, tmp_path, monkeypatch):
    """The tiny model shipped as ``vq-mini`` in a models folder named by $BMZ_MODEL_PATH."""
    stem = tmp_path / "vq-mini"
    sha = zoo.save_frozen(trained, stem.with_suffix(".pt"))
    zoo.write_card(stem.with_suffix(".json"), {"name": "vq-mini", "architecture": "vqvae", "sha256": sha,
                                               "qualities": [{"quality": i + 1, "lambda": v}
                                                             for i, v in enumerate(trained.lambdas)]})
    monkeypatch.setenv("BMZ_MODEL_PATH", str(tmp_path))
    m, _ = zoo.load_model("vq-mini")
    return m


def test_registered_with_its_config():
    assert "vqvae" in model_names()
    m = build_model("vqvae", **TINY)
    assert m.n_qualities == 4 and m.downsampling == 4
    m2 = build_model("vqvae", **m.config())
    assert m2.config() == m.config()
    m2.load_state_dict(m.state_dict())
    # the default: 8 levels, 4x, log2 K bits per latent position and stage at most
    d = build_model("vqvae")
    assert d.n_qualities == 8 and d.downsampling == 4 and d.K == 256


def test_round_trip_through_the_container_is_bit_exact(installed, ixi):
    vol = ixi[60:63]
    outs = []
    for threads in (1, 2, 1):
        n = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            blob = api.compress(vol, quality=3, model="vq-mini")
            outs.append((blob, api.decompress(blob)))
        finally:
            torch.set_num_threads(n)
    (b0, d0), (b1, d1), (b2, d2) = outs
    assert b0 == b1 == b2  # encoding: the same bytes on any thread count
    assert np.array_equal(d0, d1) and np.array_equal(d0, d2)  # decoding: the same array
    assert d0.shape == vol.shape and d0.dtype == vol.dtype
    info = api.info(blob)
    assert info["model"] == "vq-mini" and info["quality"] == 3
    err = np.mean((d0.astype(float) - vol) ** 2)
    assert err < np.var(vol.astype(float))  # better than the mean: it is an image


def test_decoded_latent_is_the_sum_of_the_integer_codes(installed, ixi):
    m = installed
    x = _unit(ixi[60])[None, None]
    H, W = x.shape[-2:]
    for q in range(m.n_qualities):
        data, sym = m.analyse(x, q)
        lat = m.decode_latents(data, (H, W), q)
        idx = lat["indices"].numpy()[0]
        assert idx.shape == (q + 1, H // 4, W // 4) and idx.min() >= 0 and idx.max() < m.K
        cb = m.codebooks_fx.numpy()
        want = sum(cb[s][idx[s]] for s in range(q + 1)).transpose(2, 0, 1)[None]
        assert np.array_equal(lat["y"].numpy(), want)
        assert torch.equal(lat["y"], sym)  # the encoder's latent is the decoder's
        # the synthesis input is that latent, unchanged (integer inverse gain 1)
        assert torch.equal(m.activations(lat["y"], q), lat["y"].long())
        a = m.decompress_slice(data, (H, W), q)
        assert torch.equal(a, m.decompress_slice(data, (H, W), q))


def test_cdf_tables_are_valid(installed):
    m = installed
    cdf, length = m.prior_cdf.numpy(), m.prior_cdf_length.numpy()
    assert cdf.shape == (m.n_qualities, m.K + 2) and np.all(length == m.K + 2)
    assert np.all(cdf[:, 0] == 0) and np.all(cdf[:, -1] == 1 << 16)
    assert np.all(np.diff(cdf, axis=1) >= 1)  # every index (and the escape) codable
    p = m._prior().double().numpy()
    table = np.diff(cdf, axis=1)[:, :m.K] / 65536.0
    big = p > 1e-3
    assert np.all(np.abs(np.log(table[big] / p[big])) < 0.05)  # the tables are the priors


def test_more_stages_more_bytes_and_less_error(trained, ixi):
    m = trained
    sizes, errs, lat_errs = [], [], []
    for k in (50, 60, 70):
        x = _unit(ixi[k])[None, None]
        H, W = x.shape[-2:]
        y = m.g_a(x).detach().double() * 2.0**14
        row, erow, lrow = [], [], []
        for q in range(m.n_qualities):
            data, sym = m.analyse(x, q)
            row.append(len(data))
            erow.append(float(((m.decompress_slice(data, (H, W), q) - x) ** 2).mean()))
            lrow.append(float(((y - sym.double()) ** 2).mean()))
        sizes.append(row)
        errs.append(erow)
        lat_errs.append(lrow)
    sizes, errs, lat_errs = (np.array(v) for v in (sizes, errs, lat_errs))
    assert np.all(np.diff(sizes, axis=1) > 0), sizes
    assert np.all(np.diff(lat_errs, axis=1) < 0), lat_errs
    assert np.all(np.diff(errs.mean(axis=0)) < 0), errs


def _forge(blob: bytes, payloads) -> list[bytes]:
    with BmzReader(blob) as r:
        meta, chunks = r.meta, [r.chunk(i) for i in range(r.n_slices)]
    out = []
    for p in payloads:
        c = chunks[0]
        head = c[:learned_compact.read_varint(c, 1)[1]]
        out.append(pack(meta, [head + p]))
    return out


def test_bad_payloads_raise_format_errors(installed, ixi):
    m = installed
    blob = api.compress(ixi[60:61], quality=2, model="vq-mini")
    with BmzReader(blob) as r:
        c = r.chunk(0)
    assert c[0] == learned_compact.KIND
    payload = c[learned_compact.read_varint(c, 1)[1]:]
    H, W = ixi.shape[1:]
    # a stream that decodes an index outside the codebook (the tables' escape symbol)
    idx = m.decode_latents(payload, (H, W), 1)["indices"].clone()
    idx[0, 1, 3, 5] = m.K + 3
    escaped = m.coder.encode(idx, entropy.channel_indexes(idx.shape))
    with pytest.raises(ValueError, match="codebook index"):
        m.decode_latents(escaped, (H, W), 1)
    bad = [payload[:-1], payload[:len(payload) // 2 + 1], escaped]
    for forged in _forge(blob, bad):
        with pytest.raises(FormatError):
            api.decompress(forged)
    # truncated or random streams of whole words: decoded to some valid slice, or refused
    rng = np.random.default_rng(1)
    others = [b"", payload[:4], payload[:len(payload) // 8 * 4],
              rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()]
    for forged in _forge(blob, others):
        try:
            out = api.decompress(forged)
        except FormatError:
            continue
        assert out.shape == (1, H, W) and out.min() >= ixi[60].min() and out.max() <= ixi[60].max()
    with pytest.raises(ValueError, match="quality index"):
        m.decode_latents(payload, (H, W), m.n_qualities)


def test_interpolation_mixes_vqvae_files(installed, ixi):
    import bmz

    A = api.compress(ixi[60:62], quality=2, model="vq-mini")
    B = api.compress(ixi[70:72], quality=4, model="vq-mini")
    out = bmz.interpolate([A, B], [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_array_equal(out[0], api.decompress(A))
    np.testing.assert_array_equal(out[2], api.decompress(B))
    assert not np.array_equal(out[1], out[0]) and not np.array_equal(out[1], out[2])


def test_other_models_do_not_load_it(installed, ixi, monkeypatch):
    """A shipped vqvae is loaded only when a file or a call names it."""
    loaded = []
    real = zoo._load

    def spy(path, sha):
        loaded.append(path)
        return real(path, sha)

    monkeypatch.setattr(zoo, "_load", spy)
    api.decompress(api.compress(ixi[60:61], quality=1, model="cnn-ae-8"))
    assert loaded and not any("vq-mini" in p for p in loaded)


def test_training_logs_codebook_health_and_resumes_exactly(shared_data, tmp_path, ixi):
    from bmz.train import train

    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "vol.npy", ixi[50:54])
    cfg = dict(TINY, lambdas=[0.01, 0.04])

    def run(out, **kw):
        n = torch.get_num_threads()
        try:
            return train("vqvae", str(out), [str(d)], [str(d)], steps=6, batch_size=2, patch=32,
                         validate_every=1000, checkpoint_minutes=100, threads=1, model_config=cfg, **kw)
        finally:
            torch.set_num_threads(n)

    straight = run(tmp_path / "a" / "m")
    resumed = run(tmp_path / "b" / "m", resume=str(run(tmp_path / "b" / "m", until=3)))
    a, b = (torch.load(p, weights_only=False) for p in (straight, resumed))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert int(a["model"]["initialised"]) == 1
    frozen = zoo._load.__wrapped__(str(tmp_path / "a" / "m.pt"), "")  # exported and frozen
    assert int(frozen.frozen) == 1
    st = frozen.train_stats()
    assert len(st["perplexity"]) == 2 and all(1.0 <= v <= frozen.K for v in st["perplexity"])


def test_entropy_constrained_search_spends_fewer_bits(trained, ixi):
    """The encoder's rate-priced index choice costs fewer bytes than the nearest code, at every
    level; both streams decode with the same decoder (the choice is the encoder's alone)."""
    m = trained
    x = _unit(ixi[60])[None, None]
    H, W = x.shape[-2:]
    w = m.rate_weight
    assert w > 0
    try:
        m.rate_weight = 0.0
        plain = [m.analyse(x, q) for q in range(m.n_qualities)]
    finally:
        m.rate_weight = w
    for q, (data0, sym0) in enumerate(plain):
        data, sym = m.analyse(x, q)
        assert len(data) < len(data0), (q, len(data), len(data0))
        for d, s in ((data, sym), (data0, sym0)):
            assert torch.equal(m.decode_latents(d, (H, W), q)["y"], s)


def test_levels_cannot_be_added_on_resume():
    from bmz.train import extend_qualities

    m = build_model("vqvae", **TINY)
    state = {"model_name": "vqvae", "model_config": m.config(), "model": m.state_dict(),
             "opt": {"state": {}, "param_groups": []}}
    with pytest.raises(ValueError, match="cannot be added"):
        extend_qualities(state, TINY["lambdas"] + [0.16])


def test_a_drifted_latent_scale_is_normalised_at_freeze(trained, ixi):
    """Training does not pin the latent's scale (the analysis' last and the synthesis' first
    convolution trade a factor freely); a model whose latent grew 2^16× (as a 54k-step CPU run's
    did) would overflow the integer codebook sums. freeze() divides it back by a power of two:
    the same indices, the same decoded slice as the undrifted model."""
    big = build_model("vqvae", **TINY)
    big.load_state_dict(trained.state_dict())
    big.eval()
    s = 2.0 ** 16
    with torch.no_grad():
        big.g_a[-1].weight.mul_(s)
        big.g_a[-1].bias.mul_(s)
        big.g_s[0].weight.div_(s)
        big.codebooks.mul_(s)
        big.ema_sum.mul_(s)
        big.latent_energy.mul_(s * s)
    big.freeze()
    assert torch.equal(big.codebooks_fx, trained.codebooks_fx)
    x = _unit(ixi[len(ixi) // 2])[None, None, :64, :64]
    for q in range(trained.n_qualities):
        a, sym_a = trained.analyse(x, q)
        b, sym_b = big.analyse(x, q)
        assert a == b and torch.equal(big.synthesize(sym_b, q), trained.synthesize(sym_a, q))
