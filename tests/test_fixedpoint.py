"""Bit-exact decoding: the fixed-point synthesis, the range coder, and forged streams.

The fixed-point synthesis must (1) follow the float synthesis closely, (2) be *exactly* the integer
computation the format specifies — checked against an independent int64 implementation, so a
summation order that changed a single bit would fail — and (3) refuse activations outside its exact
range. The table coder must round-trip any int32 value and turn any forged stream into a
``ValueError`` (never a crash, hang or other exception)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bmz.codec import fixedpoint as fp
from bmz.codec.layers import GDN
from bmz.codec.models import build_model


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1),
                        GDN(5, inverse=True), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.ReLU()),
                        nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, GDN):  # non-trivial γ, β
                m.gamma.add_(0.05 * torch.rand_like(m.gamma))
                m.beta.add_(0.1 * torch.rand_like(m.beta))
    return net


def _ref_conv_int(m, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Integer convolution in pure int64 numpy (explicit loops over taps): the specification."""
    a = a.astype(np.int64)
    w = w.astype(np.int64)
    B, Ci, H, W = a.shape
    if isinstance(m, nn.ConvTranspose2d):
        s, p, op = m.stride[0], m.padding[0], m.output_padding[0]
        k = w.shape[2]
        Co = w.shape[1]
        Ho, Wo = (H - 1) * s - 2 * p + k + op, (W - 1) * s - 2 * p + k + op
        full = np.zeros((B, Co, (H - 1) * s + k + op, (W - 1) * s + k + op), dtype=np.int64)
        for i in range(k):
            for j in range(k):
                contrib = np.einsum("bchw,co->bohw", a, w[:, :, i, j])
                full[:, :, i:i + (H - 1) * s + 1:s, j:j + (W - 1) * s + 1:s] += contrib
        return full[:, :, p:p + Ho, p:p + Wo]
    k = w.shape[2]
    p = (k - 1) // 2 if not hasattr(m, "padding") else m.padding[0]
    ap = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((B, w.shape[0], H, W), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            out += np.einsum("bchw,oc->bohw", ap[:, :, i:i + H, j:j + W], w[:, :, i, j])
    return out


def _ref_forward(fx: fp.FixedPointSynthesis, a0: np.ndarray) -> np.ndarray:
    """docs/FORMAT.md's fixed-point synthesis, in int64 numpy (sqrt step in float64 as specified)."""
    A, F, G = fp.ACT_BITS, fp.WEIGHT_BITS, fp.GDN_ACT_BITS
    a = a0.astype(np.int64)
    ops = fx._ops
    last = max(i for i, m in enumerate(ops) if not isinstance(m, nn.ReLU))
    for i, m in enumerate(ops):
        if isinstance(m, nn.ReLU):
            a = np.maximum(a, 0)
            continue
        w = getattr(fx, f"w{i}").numpy().astype(np.int64)
        b = getattr(fx, f"b{i}").numpy()[None, :, None, None]
        if isinstance(m, GDN):
            g = (a + 2 ** (A - G - 1)) >> (A - G)
            n = _ref_conv_int(nn.Conv2d(1, 1, 1, padding=0), g * g, w) + b
            y = a.astype(np.float64) * np.sqrt(n.astype(np.float64)) * 2.0 ** -(G + F // 2)
            a = np.floor(y + 0.5).astype(np.int64)
            continue
        s = _ref_conv_int(m, a, w) + b
        if i == last:
            return s.astype(np.float64) * 2.0 ** -(A + F)
        a = (s + 2 ** (F - 1)) >> F
    raise AssertionError("no output layer")


def test_fixed_point_equals_the_integer_specification():
    net = _net()
    fx = fp.FixedPointSynthesis(net)
    fx.build()
    rng = np.random.default_rng(0)
    a0 = rng.integers(-40 * 2**fp.ACT_BITS, 40 * 2**fp.ACT_BITS, size=(2, 6, 5, 7))
    got = fx(torch.from_numpy(a0)).numpy()
    ref = _ref_forward(fx, a0)
    assert got.shape == ref.shape
    assert np.array_equal(got, ref)  # bit for bit


def test_fixed_point_follows_the_float_net():
    net = _net(1)
    fx = fp.FixedPointSynthesis(net)
    fx.build()
    torch.manual_seed(2)
    y = torch.randn(1, 6, 8, 8) * 3
    a0 = torch.round(y.double() * 2**fp.ACT_BITS).long()
    with torch.no_grad():
        ref = net(y)
    got = fx(a0)
    # a random net with unit-scale weights; the shipped models: see benchmarks/results/fixedpoint.md
    assert float((got - ref.double()).abs().max()) < 2e-3


def test_fixed_point_independent_of_threads_batch_and_order():
    net = _net(3)
    fx = fp.FixedPointSynthesis(net)
    fx.build()
    rng = np.random.default_rng(4)
    a0 = torch.from_numpy(rng.integers(-2**18, 2**18, size=(4, 6, 16, 16)))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fx(a0)
        torch.set_num_threads(max(2, n))
        many = fx(a0)
        singles = torch.cat([fx(a0[i:i + 1]) for i in reversed(range(4))][::-1])
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, many) and torch.equal(one, singles)


def test_exact_conv_splits_channels_beyond_2_to_52():
    m = nn.Conv2d(32, 2, 3, padding=1)
    rng = np.random.default_rng(5)
    w = rng.integers(-2**20, 2**20, size=(2, 32, 3, 3))
    a = rng.integers(-2**27, 2**27, size=(1, 32, 6, 6))  # bound ≈ 2**27 · 32·9·2**19 > 2**52
    assert np.abs(a).max() * np.abs(w).sum(axis=(1, 2, 3)).max() > fp.EXACT_LIMIT
    got = fp.exact_conv(m, torch.from_numpy(a).double(), torch.from_numpy(w).double())
    ref = _ref_conv_int(m, a, w)
    # the int64 group sum is exact; its one rounding to float64 is the specified one
    assert np.array_equal(got.numpy(), ref.astype(np.float64))


def test_fixed_point_refuses_absurd_activations():
    fx = fp.FixedPointSynthesis(_net())
    fx.build()
    with pytest.raises(fp.FixedPointError):
        fx(torch.full((1, 6, 2, 2), 2**62, dtype=torch.int64))
    assert issubclass(fp.FixedPointError, ValueError)


def test_a_drifted_synthesis_is_rescaled_into_the_exact_range():
    """A synthesis whose first layer's output grew 2^14× (nothing in training pins the scale
    inside it; the inverse GDN and the next convolution absorb the factor) computes the same
    function in float, but its activations leave the exact range. activation_scales() finds the
    powers of two that build() folds into the integer weights, and the fixed-point net follows
    the float one again as closely as the undrifted net."""
    net, y = _net(1), torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    drifted = _net(1)
    s = 2.0**14
    with torch.no_grad():
        drifted[0].weight.mul_(s)
        drifted[0].bias.mul_(s)
        g = drifted[1]
        g.gamma.copy_(g.gamma_reparam.init(g.gamma_reparam(g.gamma) / s**2))
        drifted[3][0].weight.div_(s)
        ref = net(y)
        assert float((drifted(y) - ref).abs().max()) < 1e-4  # the same function in float
    a0 = torch.round(y.double() * 2**fp.ACT_BITS).long()
    plain = fp.FixedPointSynthesis(drifted)
    plain.build()
    with pytest.raises(fp.FixedPointError):
        plain(a0)
    scales = fp.activation_scales(drifted, [y])
    assert set(scales) == {0} and scales[0] <= -12
    fx = fp.FixedPointSynthesis(drifted)
    fx.build(scales)
    assert float((fx(a0) - ref.double()).abs().max()) < 2e-3
    assert np.array_equal(fx(a0).numpy(), _ref_forward(fx, a0.numpy()))  # still the specified integers
    # an undrifted net needs no scales: its weights stay bit-identical
    assert fp.activation_scales(net, [y]) == {}


def test_unsupported_layers_are_refused():
    with pytest.raises(TypeError):
        fp.FixedPointSynthesis(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sigmoid()))
    with pytest.raises(TypeError):
        fp.FixedPointSynthesis(nn.Sequential(GDN(2)))  # forward GDN belongs to the encoder
    with pytest.raises(RuntimeError):
        fp.FixedPointSynthesis(_net())(torch.zeros(1, 6, 2, 2, dtype=torch.int64))  # not built


# ---- the range coder ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coder():
    m = build_model("factorized", N=8, M=8)
    m.eval()
    m.freeze()
    return m.coders[0]


def test_table_coder_round_trips_any_int32(coder):
    rng = np.random.default_rng(6)
    n = 3000
    vals = rng.integers(-20, 20, size=n)
    vals[::97] = rng.integers(-2**31, 2**31 - 1, size=len(vals[::97]))  # escapes, to the extremes
    vals[5], vals[6] = -2**31, 2**31 - 1
    sym = torch.from_numpy(vals.astype(np.int32))
    idx = torch.from_numpy(rng.integers(0, len(coder.cdf), size=n).astype(np.int32))
    data = coder.encode(sym, idx)
    assert len(data) % 4 == 0
    assert torch.equal(coder.decode(data, idx), sym)


def test_table_coder_forged_streams_raise_value_error_only(coder):
    rng = np.random.default_rng(7)
    idx = torch.from_numpy(rng.integers(0, len(coder.cdf), size=500).astype(np.int32))
    for trial in range(300):
        n = int(rng.integers(0, 400))
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        try:
            out = coder.decode(data, idx)
        except ValueError:
            continue
        assert out.shape == idx.shape and out.dtype == torch.int32
    with pytest.raises(ValueError, match="whole number of words"):
        coder.decode(b"\x00" * 5, idx)
    with pytest.raises(ValueError, match="table index"):
        coder.decode(b"", torch.tensor([len(coder.cdf)], dtype=torch.int32))


def test_model_decoder_turns_forged_payloads_into_value_errors():
    """The whole slice decoder (entropy decoding + integer hyper-synthesis + fixed-point synthesis)
    on random payloads: decodes to something finite, or raises ValueError — nothing else."""
    m = build_model("hyperprior", N=8, M=8)
    m.eval()
    m.freeze()
    rng = np.random.default_rng(8)
    for trial in range(150):
        n = int(rng.integers(0, 300))
        nz = int(rng.integers(0, n + 1))
        data = nz.to_bytes(4, "little") + rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        try:
            x = m.decompress_slice(data, (64, 64), int(rng.integers(0, m.n_qualities)))
        except (ValueError, OverflowError):
            continue
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("model", ["hyperprior", "hyperprior-ctx", "cnn-ae-8"])
def test_words_after_a_learned_stream_are_refused(model):
    """A learned chunk with data after its last stream (two or more 32-bit words: the range
    decoder's look-ahead) names the slice as damaged instead of decoding as if they were not
    there; the other slices still decode."""
    from bmz import api
    from bmz.bitstream import BmzReader, pack
    from bmz.errors import FormatError

    rng = np.random.default_rng(10)
    vol = (rng.random((2, 40, 44)) * 300).astype(np.uint16)
    good = api.compress(vol, quality=3, model=model)
    with BmzReader(good) as r:
        meta, chunks = r.meta, [r.chunk(k) for k in range(r.n_slices)]
    for extra in (b"\x00" * 8, bytes(range(1, 13))):
        forged = pack(meta, [chunks[0], chunks[1] + extra])
        with pytest.raises(FormatError, match="slice 1"):
            api.decompress(forged)
        assert np.array_equal(api.decompress(forged, slices=[0]), api.decompress(good, slices=[0]))


@pytest.mark.parametrize("model", ["hyperprior", "hyperprior-ctx"])
def test_forged_files_with_valid_checksums_give_bmz_errors_only(model):
    """A file whose CRCs are all valid but whose learned chunks are forged (random bytes, truncated,
    spliced from another slice or quality) decodes or raises bmz's FormatError — the decoder never
    crashes the process, never raises anything else. In slice groups (hyperprior-ctx) a forged
    slice can also make the slices coded with it as context fail: the error names a slice of the
    forged one's group, at or after it."""
    from bmz import api
    from bmz.bitstream import BmzReader, pack
    from bmz.errors import FormatError

    rng = np.random.default_rng(9)
    vol = (rng.random((4, 40, 44)) * 300).astype(np.uint16)
    good = api.compress(vol, quality=3, model=model, group=2 if model == "hyperprior-ctx" else None)
    with BmzReader(good) as r:
        meta, chunks = r.meta, [r.chunk(k) for k in range(r.n_slices)]
    for trial in range(24):
        forged = list(chunks)
        k = int(rng.integers(len(forged)))
        c = forged[k]
        kind = trial % 4
        if kind == 0:  # random payload behind a learned-chunk byte
            forged[k] = b"\x01" + rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        elif kind == 1:  # truncated
            forged[k] = c[: int(rng.integers(0, len(c)))]
        elif kind == 2:  # bit flips inside the payload
            b = bytearray(c)
            for _ in range(int(rng.integers(1, 8))):
                p = int(rng.integers(1, len(b)))
                b[p] ^= 1 << int(rng.integers(8))
            forged[k] = bytes(b)
        else:  # another slice's chunk, or a constant chunk with an absurd value
            forged[k] = chunks[(k + 1) % len(chunks)] if trial % 8 == 3 else \
                b"\x00" + int(rng.integers(-2**62, 2**62)).to_bytes(8, "little", signed=True)
        blob = pack(meta, forged)
        try:
            out = api.decompress(blob)
        except FormatError as e:
            named = [j for j in range(len(forged)) if f"slice {j} of" in str(e)]
            if model == "hyperprior":
                assert named == [k], str(e)
            else:  # k or a later slice of its group of 2
                assert named and named[0] in (k, k + 1 - k % 2) and named[0] // 2 == k // 2, str(e)
            continue
        assert out.shape == vol.shape and out.dtype == vol.dtype
        assert out.min() >= vol.min() and out.max() <= vol.max()


@pytest.mark.parametrize("field,value", [
    ("shape", [0.5, 3]), ("shape", [1, 65536, 65536]), ("shape", "40x44"), ("dtype", "|O"),
    ("dtype", "<f4"), ("dtype", "nonsense"), ("intensity", [0]), ("intensity", {"min": 5, "max": 1}),
    ("intensity", {"min": 0, "max": 70000, "offset": 0, "scale": 70000, "bits": 17}),
    ("codec", None), ("codec.quality", 0), ("codec.quality", "3"), ("codec.model", 7),
    ("codec.chunk_format", 1),
])
def test_forged_metadata_with_valid_checksums_is_a_format_error(field, value):
    from bmz import api
    from bmz.bitstream import BmzReader, pack
    from bmz.errors import FormatError

    vol = (np.arange(2 * 40 * 44).reshape(2, 40, 44) % 300).astype(np.uint16)
    with BmzReader(api.compress(vol, quality=2)) as r:
        meta, chunks = r.meta, [r.chunk(k) for k in range(r.n_slices)]
    if "." in field:
        a, b = field.split(".")
        meta[a][b] = value
    else:
        meta[field] = value
    with pytest.raises(FormatError):
        api.decompress(pack(meta, chunks))


@pytest.mark.parametrize("cin,cout,k,s,p,op,shape", [
    (64, 64, 5, 2, 2, 1, (2, 64, 13, 17)),   # the flagship's synthesis and hyper-synthesis
    (128, 32, 2, 2, 0, 0, (1, 128, 9, 11)),  # hyperprior-fast's first layer
    (64, 64, 3, 2, 1, 1, (1, 64, 5, 6)),
    (16, 16, 5, 2, 2, 1, (1, 16, 40, 7)),
])
def test_transposed_convolution_as_a_matrix_product_is_exact(cin, cout, k, s, p, op, shape, monkeypatch):
    """The BLAS path of the fixed-point transposed convolution (phases of the sub-pixel view, one
    matrix product, in row strips) gives PyTorch's direct result exactly, on integers whose
    partial sums are large (2**14-scale activations, 2**20-scale weights)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(k * 100 + cin)
    m = torch.nn.ConvTranspose2d(cin, cout, k, s, p, op)
    w = torch.round(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * 2**20)
    a = torch.round(torch.randn(shape, generator=g, dtype=torch.float64) * 2**14)
    ref = F.conv_transpose2d(a, w, stride=s, padding=p, output_padding=op)
    for strip in (fp.GEMM_STRIP_VALUES, 1000):  # one strip, and many
        monkeypatch.setattr(fp, "GEMM_STRIP_VALUES", strip)
        got = fp._gemm_conv(m, a, w)
        assert got is not None and torch.equal(got, ref)
    # a layer to few channels is left to PyTorch (the product would have too few rows to pay)
    assert fp._gemm_conv(torch.nn.ConvTranspose2d(cin, 1, k, s, p, op), a, w[:, :1]) is None


def test_integer_hyper_synthesis_range_rule_is_the_per_output_one():
    """FORMAT.md 10.5.2 (e): a hyper-latent is damaged where the layer applied to |a|, |W|, |B|
    reaches 2**52 at some output — not where the cheaper whole-layer bound max|a| · max_o Σ|W_o|
    (which the decoder checks first) would: a huge value meeting tiny weights still decodes,
    exactly; the same value meeting large weights is refused."""
    from bmz.codec.entropy import IntegerHyperSynthesis

    layer = nn.ConvTranspose2d(2, 1, 5, 2, 2, 1)
    with torch.no_grad():
        layer.weight[0].fill_(2.0**16)  # input channel 0: large weights
        layer.weight[1].fill_(2.0**-12)  # input channel 1: one unit each
        layer.bias.zero_()
    ihs = IntegerHyperSynthesis(nn.Sequential(layer), nn.Parameter(torch.zeros(1, 1)), -3.0, 10.0, 76)
    ihs.build()
    z = torch.zeros(1, 2, 3, 3)
    z[0, 1, 1, 1] = 2.0**37  # a = 2**45 in units 2**-8: cheap bound 2**45 · 25 · 2**28 ≥ 2**52
    h = ihs.log2_scale_fixed(z)
    ref = torch.floor(torch.nn.functional.conv_transpose2d(
        torch.round(z.double() * 256), ihs.w0, ihs.b0, stride=2, padding=2, output_padding=1) / 2**12)
    assert torch.equal(h, ref.long()) and int(h.max()) > 0
    z[0, 0, 1, 1] = 2.0**37
    with pytest.raises(OverflowError):
        ihs.log2_scale_fixed(z)
