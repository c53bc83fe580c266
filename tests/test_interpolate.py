"""Latent interpolation from stored codes (bmz.interpolate, `bmz interpolate`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bmz
from bmz import io as bio
from bmz.cli import main
from bmz.codec import pipeline, zoo
from bmz.errors import FormatError, InputError, ModelMismatchError

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sct_t1w.nii.gz"


@pytest.fixture(scope="module")
def vol() -> np.ndarray:
    return np.asarray(bio.read(SAMPLE).data)  # (77, 42, 76) int16, real spinal-cord T1


@pytest.fixture(scope="module")
def pair(vol):
    """Two hyperprior files of one model at different qualities, 4 slices each."""
    a, b = vol[30:34], vol[44:48]
    A, B = bmz.compress(a, quality=3), bmz.compress(b, quality=7)
    return A, B, bmz.decompress(A), bmz.decompress(B)


def _files(tmp_path, **named) -> dict[str, Path]:
    out = {}
    for name, data in named.items():
        p = tmp_path / f"{name}.bmz"
        p.write_bytes(data)
        out[name] = p
    return out


# ---- exactness at the ends, a real path in between --------------------------------------------


def test_weight_one_reproduces_each_decode_exactly(pair):
    A, B, dA, dB = pair
    out = bmz.interpolate([A, B], [[1, 0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0, 1]])
    assert out.shape == (5, *dA.shape) and out.dtype == dA.dtype
    np.testing.assert_array_equal(out[0], dA)
    np.testing.assert_array_equal(out[4], dB)
    # the path moves from A to B: distance to A grows, distance to B shrinks
    dA_ = [np.mean((o.astype(float) - dA) ** 2) for o in out]
    dB_ = [np.mean((o.astype(float) - dB) ** 2) for o in out]
    assert all(x < y for x, y in zip(dA_, dA_[1:])), dA_
    assert all(x > y for x, y in zip(dB_, dB_[1:])), dB_
    # a mixture is new: neither source
    assert dA_[2] > 0.1 * dA_[4] and dB_[2] > 0.1 * dB_[0]


@pytest.mark.parametrize("model", sorted(set(zoo.available_models()) - {"hyperprior"}))
def test_endpoints_exact_for_every_shipped_family(vol, model):
    A = bmz.compress(vol[30:32], quality=2, model=model)
    B = bmz.compress(vol[50:52], quality=4, model=model)
    out = bmz.interpolate([A, B], [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_array_equal(out[0], bmz.decompress(A))
    np.testing.assert_array_equal(out[2], bmz.decompress(B))
    assert not np.array_equal(out[1], out[0]) and not np.array_equal(out[1], out[2])


def test_single_weight_vector_and_slices(pair):
    A, B, dA, dB = pair
    one = bmz.interpolate([A, B], [0.5, 0.5])
    assert one.shape == dA.shape
    part = bmz.interpolate([A, B], [0.5, 0.5], slices=[3, 1])
    np.testing.assert_array_equal(part, one[[3, 1]])
    np.testing.assert_array_equal(bmz.interpolate([A, B], [0, 1], slices=slice(1, 3)), dB[1:3])


def test_bit_exact_whatever_the_batch(pair):
    """A mixture is the same array alone or among others (integer mixing, fixed-point synthesis)."""
    A, B, _, _ = pair
    ws = np.array([[1 - t, t] for t in np.linspace(0, 1, 11)])
    many = bmz.interpolate([A, B], ws, slices=[2])
    for r in (3, 7):
        np.testing.assert_array_equal(bmz.interpolate([A, B], ws[r], slices=[2]), many[r])


def test_three_way_and_file_sources(tmp_path, vol, pair):
    A, B, dA, dB = pair
    C = bmz.compress(vol[60:64], quality=5)
    f = _files(tmp_path, a=A, b=B, c=C)
    out = bmz.interpolate([f["a"], f["b"], f["c"]], [[0.2, 0.3, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(out[1], bmz.decompress(C))
    assert out.shape == (2, *dA.shape)
    with bmz.interpolation.open_codes(f["a"]) as ca, bmz.interpolation.open_codes(B) as cb:
        np.testing.assert_array_equal(bmz.interpolate([ca, cb], [1, 0]), dA)  # reusable objects


# ---- weights, models, sizes: clear errors -------------------------------------------------------


@pytest.mark.parametrize("weights, msg", [
    ([0.2, 0.3, 0.5], "3 weights for 2 files"),
    ([0.5, 0.6], "sum to 1.1, not 1"),
    ([-0.5, 1.5], "negative"),
    ([float("nan"), 1.0], "not a finite number"),
    ([[0.5, 0.5], [0.9, 0.2]], "mixture 2"),
    ("ab", "not numbers"),
])
def test_weights_validated(pair, weights, msg):
    A, B, _, _ = pair
    with pytest.raises(InputError, match=msg):
        bmz.interpolate([A, B], weights)


def test_weight_errors_name_the_file(tmp_path, pair):
    f = _files(tmp_path, a=pair[0], b=pair[1])
    with pytest.raises(InputError, match=r"for .*b\.bmz is negative"):
        bmz.interpolate([f["a"], f["b"]], [1.5, -0.5])


def test_alpha_and_dirichlet_weights():
    ip = bmz.interpolation
    np.testing.assert_allclose(ip.alpha_weights([0, 0.25, 1]), [[1, 0], [0.75, 0.25], [0, 1]])
    with pytest.raises(InputError, match="alpha 1.2 outside"):
        ip.alpha_weights([0.5, 1.2])
    w = ip.dirichlet_weights(5, 4, seed=7)
    assert w.shape == (4, 5) and np.allclose(w.sum(1), 1) and (w >= 0).all()
    np.testing.assert_array_equal(w, ip.dirichlet_weights(5, 4, seed=7))
    assert not np.array_equal(w, ip.dirichlet_weights(5, 4, seed=8))


def test_quantised_weights_sum_exactly_and_keep_one_hot():
    q = bmz.interpolation.quantise_weights(np.array([[1 / 3, 1 / 3, 1 / 3], [0, 1, 0], [0.1, 0.2, 0.7]]))
    assert (q.sum(1) == 1 << 16).all()
    assert q[1].tolist() == [0, 1 << 16, 0]
    assert np.abs(q / 65536 - [[1 / 3] * 3, [0, 1, 0], [0.1, 0.2, 0.7]]).max() <= 1 / 65536


def test_different_models_refused_naming_both(tmp_path, vol):
    A = bmz.compress(vol[30:32], quality=3)
    B = bmz.compress(vol[30:32], quality=2, model="cnn-ae-8")
    f = _files(tmp_path, a=A, b=B)
    with pytest.raises(ModelMismatchError) as e:
        bmz.interpolate([f["a"], f["b"]], [0.5, 0.5])
    m = str(e.value)
    assert "a.bmz" in m and "b.bmz" in m and "hyperprior" in m and "cnn-ae-8" in m


def test_other_weights_of_one_model_refused(pair):
    ip = bmz.interpolation
    with ip.open_codes(pair[0], name="a.bmz") as a, ip.open_codes(pair[1], name="b.bmz") as b:
        b.sha256 = "0" * 64  # as if encoded with retrained weights
        with pytest.raises(ModelMismatchError, match="different weights of one model"):
            ip.check_compatible([a, b])


def test_different_slice_sizes_refused(vol):
    A = bmz.compress(vol[30:32], quality=3)
    B = bmz.compress(vol[30:32, :32, :], quality=3)
    with pytest.raises(InputError, match=r"42×76 slices.*32×76 slices"):
        bmz.interpolate([A, B], [0.5, 0.5])


def test_one_file_is_not_a_mixture(pair):
    with pytest.raises(InputError, match="at least two"):
        bmz.interpolate([pair[0]], [1.0])


def test_damaged_chunk_names_file_and_slice(pair):
    A, B, _, _ = pair
    bad = bytearray(B)
    bad[-40] ^= 0xFF  # inside the last slice's chunk: its CRC fails
    with pytest.raises(FormatError, match=r"slice 3"):
        bmz.interpolate([A, bytes(bad)], [0.5, 0.5])


# ---- slice matching, constant slices, intensity mapping ----------------------------------------


def test_match_slices_by_relative_position():
    ip = bmz.interpolation
    assert ip.match_slices(5, 5) == [0, 1, 2, 3, 4]
    assert ip.match_slices(6, 3) == [0, 0, 1, 1, 2, 2]
    assert ip.match_slices(3, 7) == [0, 3, 6]
    assert ip.match_slices(1, 9) == [4]
    assert ip.match_slices(4, 1) == [0, 0, 0, 0]


def test_different_lengths_matched_by_relative_position(vol):
    A = bmz.compress(vol[20:26], quality=4)  # 6 slices: the output grid
    B = bmz.compress(vol[50:53], quality=4)  # 3 slices
    dB = bmz.decompress(B)
    out = bmz.interpolate([A, B], [[0, 1], [0.5, 0.5]])
    assert out.shape == (2, 6, 42, 76)
    np.testing.assert_array_equal(out[0], dB[[0, 0, 1, 1, 2, 2]])
    # reversed: the 3-slice file is the grid, the 6-slice one is sampled at 0, 3 (2.5 rounds up), 5
    back = bmz.interpolate([B, A], [0, 1])
    np.testing.assert_array_equal(back, bmz.decompress(A)[[0, 3, 5]])


def test_constant_slices_mix_on_the_unit_scale(vol):
    a = vol[30:33].copy()
    a[1] = a.min()  # a constant slice: stored as one value, no latent
    A = bmz.compress(a, quality=5)
    B = bmz.compress(vol[40:43], quality=5)
    dA, dB = bmz.decompress(A), bmz.decompress(B)
    assert (dA[1] == a.min()).all()
    out = bmz.interpolate([A, B], [[1, 0], [0.25, 0.75], [0, 1]])
    np.testing.assert_array_equal(out[0], dA)
    np.testing.assert_array_equal(out[2], dB)
    # slice 1: 0.25 · (constant on A's scale) + 0.75 · B's synthesis, mapped with the mixed range
    ip = bmz.interpolation
    with ip.open_codes(A) as ca, ip.open_codes(B) as cb:
        wq = ip.quantise_weights([[0.25, 0.75]])
        mp = ip.mixed_mapping([ca, cb], wq[0])
        _, x = ip.mix_slice([ca, cb], [1, 1], wq, [mp], np.int64)
        _, xb = ip.mix_slice([ca, cb], [1, 1], ip.quantise_weights([[0, 1]]), [cb.mapping], np.int64)
    np.testing.assert_allclose(x[0], 0.25 * ca.unit_constant(int(a.min())) + 0.75 * xb[0], atol=1e-12)
    # all sources constant: a constant
    c = np.full((2, 42, 76), 100, np.int16)
    c[1] = 300
    C1 = bmz.compress(c, quality=5)
    C2 = bmz.compress(np.full((2, 42, 76), 500, np.int16) * np.array([1, 1], np.int16)[:, None, None],
                      quality=5)
    mix = bmz.interpolate([C1, C2], [0.5, 0.5])
    assert all(np.unique(s).size == 1 for s in mix)


def test_mixed_intensity_mapping(vol):
    a = vol[30:32]
    b = (vol[40:42].astype(np.int32) // 2 + 1000).astype(np.int16)  # another range
    A, B = bmz.compress(a, quality=5), bmz.compress(b, quality=5)
    ip = bmz.interpolation
    with ip.open_codes(A) as ca, ip.open_codes(B) as cb:
        mp = ip.mixed_mapping([ca, cb], ip.quantise_weights([[0.5, 0.5]])[0])
        assert mp["min"] == round((ca.mapping["min"] + cb.mapping["min"]) / 2 + 1e-9)
        assert mp["scale"] == round((ca.mapping["scale"] + cb.mapping["scale"]) / 2 + 1e-9)
    out = bmz.interpolate([A, B], [0.5, 0.5])
    assert out.min() >= mp["min"] and out.max() <= mp["max"]
    assert out.mean() > a.mean() + 200  # mapped towards B's higher range


def test_mixed_dtypes_widen(vol):
    # one model for both (the default model depends on the bit depth: latents mix within one model)
    A = bmz.compress(vol[30:32].astype(np.int16), quality=5, model="hyperprior")
    B = bmz.compress((vol[30:32] // 4).astype(np.uint8), quality=5, model="hyperprior")
    out = bmz.interpolate([A, B], [[1, 0], [0, 1]])
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[1], bmz.decompress(B))


def test_no_pixel_decode_and_no_encoder(monkeypatch, pair):
    """Interpolation entropy-decodes latents only: the analysis transform, the encoder and the
    pixel decoder are never called."""
    A, B, _, _ = pair
    expected = bmz.interpolate([A, B], [[0.3, 0.7], [1, 0]])
    from bmz.codec import factorized, models

    def boom(*a, **k):
        raise AssertionError("encoder or pixel decoder called")

    for cls in (models.GainedScaleHyperprior, factorized.GainedFactorizedCodec):
        monkeypatch.setattr(cls, "analyse", boom)
        monkeypatch.setattr(cls, "compress_slice", boom)
        monkeypatch.setattr(cls, "decompress_slice", boom)
        monkeypatch.setattr(cls, "synthesize_float", boom)
    from bmz.codec import chunks

    for kind in chunks.KINDS.values():
        monkeypatch.setattr(kind, "decode", boom)
        if hasattr(kind, "encode"):
            monkeypatch.setattr(kind, "encode", boom)
    model, _ = zoo.load_model("hyperprior")
    monkeypatch.setattr(model.g_a, "forward", boom)
    monkeypatch.setattr(model.h_a, "forward", boom)
    np.testing.assert_array_equal(bmz.interpolate([A, B], [[0.3, 0.7], [1, 0]]), expected)


# ---- the Dataset -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def code_folder(tmp_path_factory, vol):
    d = tmp_path_factory.mktemp("codes")
    for i, s in enumerate((10, 30, 50)):
        (d / f"v{i}.bmz").write_bytes(bmz.compress(vol[s:s + 3], quality=4))
    (d / "other").mkdir()
    (d / "other" / "small.bmz").write_bytes(bmz.compress(vol[0:2, :32, :32], quality=4))  # own group
    return d


def test_dataset_deterministic_with_seed(code_folder):
    DS = bmz.interpolation.InterpolationDataset
    ds = DS(code_folder, n_sources=2, length=6, seed=3)
    assert len(ds) == 6 and len(ds.groups) == 1 and len(ds.groups[0]) == 3  # the 32×32 file alone
    x = ds[2]
    assert x.shape == (1, 42, 76) and x.dtype.is_floating_point
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    again = DS(code_folder, n_sources=2, length=6, seed=3)
    for i in (2, 5, 0):
        assert (again[i] == ds[i]).all()
    clone = pickle.loads(pickle.dumps(ds))  # as a DataLoader worker gets it
    assert (clone[5] == ds[5]).all()
    other = DS(code_folder, n_sources=2, length=6, seed=4)
    assert any(not (other[i] == ds[i]).all() for i in range(3))
    ds.set_epoch(1)
    assert not all((ds[i] == again[i]).all() for i in range(3))


def test_dataset_info_three_sources_and_loader(code_folder):
    import torch

    ds = bmz.interpolation.InterpolationDataset(code_folder, n_sources=3, length=4, seed=0,
                                              return_info=True)
    img, info = ds[1]
    assert len(set(info["files"])) == 3 and abs(float(info["weights"].sum()) - 1) < 1e-9
    # the item is the API's mixture of those files and slices, on the [0, 1] scale
    ip = bmz.interpolation
    cs = [ip.open_codes(f) for f in info["files"]]
    try:
        wq = ip.quantise_weights(info["weights"].numpy())
        mp = ip.mixed_mapping(cs, wq[0])
        v, _ = ip.mix_slice(cs, info["slices"], wq, [mp], np.int64)
    finally:
        for c in cs:
            c.close()
    np.testing.assert_array_equal(img[0].numpy(), pipeline.to_unit(v[0], mp))
    batch = next(iter(torch.utils.data.DataLoader(
        bmz.interpolation.InterpolationDataset(code_folder, length=4, seed=1), batch_size=4)))
    assert batch.shape == (4, 1, 42, 76)


def test_dataset_one_hot_is_a_decoded_slice(code_folder):
    ds = bmz.interpolation.InterpolationDataset(code_folder, length=3, seed=9, alpha_range=(0, 0),
                                              return_info=True)
    img, info = ds[0]
    dec = bmz.decompress(Path(info["files"][0]).read_bytes())[info["slices"][0]]
    with bmz.interpolation.open_codes(info["files"][0]) as c:
        np.testing.assert_array_equal(img[0].numpy(), pipeline.to_unit(dec, c.mapping))


def test_dataset_errors(code_folder, tmp_path):
    DS = bmz.interpolation.InterpolationDataset
    with pytest.raises(InputError, match="no group of at least 4"):
        DS(code_folder, n_sources=4)
    with pytest.raises(InputError, match="no .bmz files"):
        DS(tmp_path)
    with pytest.raises(InputError, match="at least two"):
        DS(code_folder, n_sources=1)


# ---- the CLI -----------------------------------------------------------------------------------


def test_cli_writes_nifti_npy_png(tmp_path, pair, vol):
    A, B, dA, dB = pair
    f = _files(tmp_path, a=A, b=B, c=bmz.compress(vol[60:64], quality=5))
    run = CliRunner().invoke
    r = run(main, ["interpolate", str(f["a"]), str(f["b"]), "--alpha", "0,0.5,1",
                   "-o", str(tmp_path / "mix.nii.gz"), "--quiet"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in tmp_path.glob("mix_*.nii.gz"))
    assert names == ["mix_a0.5.nii.gz", "mix_a0.nii.gz", "mix_a1.nii.gz"]
    np.testing.assert_array_equal(bio.read(tmp_path / "mix_a0.nii.gz").data, dA)
    np.testing.assert_array_equal(bio.read(tmp_path / "mix_a1.nii.gz").data, dB)
    r = run(main, ["interpolate", str(f["a"]), str(f["b"]), str(f["c"]), "--weights", "0.2,0.3,0.5",
                   "--weights", "0,0,1", "-o", str(tmp_path / "w.npy")])
    assert r.exit_code == 0, r.output
    w = np.load(tmp_path / "w.npy")
    assert w.shape == (2, 4, 42, 76)
    np.testing.assert_array_equal(w, bmz.interpolate([A, B, f["c"]], [[0.2, 0.3, 0.5], [0, 0, 1]]))
    r = run(main, ["interpolate", str(f["a"]), str(f["b"]), str(f["c"]), "--random", "2", "--seed", "5",
                   "-o", str(tmp_path / "grid.png"), "--slices", "1,2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # existing output without --force: refused before any work; with --force: replaced
    r = run(main, ["interpolate", str(f["a"]), str(f["b"]), "--alpha", "0.5", "-o", str(tmp_path / "w.npy")])
    assert r.exit_code == 5 and "exists" in r.output
    r = run(main, ["interpolate", str(f["a"]), str(f["b"]), "--alpha", "0.5", "-o",
                   str(tmp_path / "w.npy"), "--force", "--quiet"])
    assert r.exit_code == 0 and np.load(tmp_path / "w.npy").shape == (4, 42, 76)
    assert not list(tmp_path.glob(".*part"))


@pytest.mark.parametrize("args, code, msg", [
    (["--weights", "0.5,0.6"], 2, "sum to 1.1"),
    (["--weights", "0.5,x"], 2, "expected comma-separated numbers"),
    (["--alpha", "0.5", "--random", "2"], 2, "exactly one of"),
    (["--seed", "3", "--alpha", "0.5"], 2, "--seed applies to --random"),
    (["--alpha", "2"], 2, "outside [0, 1]"),
])
def test_cli_errors_one_line(tmp_path, pair, args, code, msg):
    f = _files(tmp_path, a=pair[0], b=pair[1])
    r = CliRunner().invoke(main, ["interpolate", str(f["a"]), str(f["b"]), *args,
                                  "-o", str(tmp_path / "x.npy")])
    assert r.exit_code == code, r.output
    assert msg in r.output and r.output.count("\n") == 1 and r.output.startswith("bmz: error:")
    assert not (tmp_path / "x.npy").exists()


def test_cli_refuses_other_model(tmp_path, vol):
    f = _files(tmp_path, a=bmz.compress(vol[30:32], quality=3),
               b=bmz.compress(vol[30:32], quality=2, model="cnn-ae-8"))
    r = CliRunner().invoke(main, ["interpolate", str(f["a"]), str(f["b"]), "--alpha", "0.5",
                                  "-o", str(tmp_path / "x.npy")])
    assert r.exit_code == 4 and "a.bmz" in r.output and "cnn-ae-8" in r.output


# ---- real data ---------------------------------------------------------------------------------


def test_real_ixi_pair(shared_data):
    files = sorted((shared_data / "val" / "ixi_nichart" / "t1").glob("*.nii.gz"))[:2]
    a, b = (np.asarray(bio.read(p).data)[44:47] for p in files)
    A, B = bmz.compress(a, quality=5), bmz.compress(b, quality=5)
    out = bmz.interpolate([A, B], [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_array_equal(out[0], bmz.decompress(A))
    np.testing.assert_array_equal(out[2], bmz.decompress(B))
    from bmz.metrics import psnr

    # the midpoint is about equally far from both sources, and far from either
    pa, pb = psnr(a, out[1]), psnr(b, out[1])
    assert abs(pa - pb) < 4 and max(pa, pb) < 30, (pa, pb)


# ---- stored golden files: the latent path is the decoder's own -----------------------------------

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("name", ["prisma_12bit_hyperprior_q1.bmz", "prisma_12bit_cnn-ae-8_q2.bmz",
                                  "bold_int32_14bit_hyperprior_q8.bmz"])
def test_golden_files_through_the_latent_path(name):
    """Weight 1 on a stored golden file gives exactly the array recorded when it was written."""
    import hashlib
    import json

    rec = json.loads((GOLDEN / "golden.json").read_text())[name]
    blob = (GOLDEN / name).read_bytes()
    other = (GOLDEN / name.replace("_q1", "_q8")).read_bytes() if "_q1" in name else blob
    out = bmz.interpolate([blob, other], [1, 0])
    assert hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest() == rec["decoded_sha256"]
