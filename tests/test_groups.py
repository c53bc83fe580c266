"""Inter-slice coding in groups (chunk format 5, ``--group G``): each slice of a group is coded
with the previous one as context; random access, damage reports and refusals."""

from __future__ import annotations

import numpy as np
import pytest

import bmz
from bmz.bitstream import BmzReader
from bmz.errors import FormatError, InputError

MODEL = "hyperprior-ctx"


@pytest.fixture(scope="module")
def vol(shared_data):
    from bmz import io

    v = io.read(shared_data / "val/dcm_qa_uih").data  # a 16-bit 3-D T1: thin, correlated slices
    mid = v.shape[0] // 2
    return np.ascontiguousarray(v[mid - 3:mid + 4, 64:192, 64:192])


@pytest.fixture(scope="module")
def coded(vol):
    return {g: bmz.compress(vol, quality=6, model=MODEL, group=g) for g in (1, 3)}


def _kinds(data: bytes) -> list[int]:
    with BmzReader(data) as r:
        return [r.chunk(k)[0] for k in range(r.n_slices)]


def test_groups_decode_identically_and_save_bits(vol, coded):
    one, three = bmz.decompress(coded[1]), bmz.decompress(coded[3])
    # the same latents whatever the grouping: only their entropy coding differs
    assert np.array_equal(one, three)
    err = one.astype(np.float64) - vol
    psnr = 10 * np.log10(float(vol.max() - vol.min()) ** 2 / np.mean(err**2))
    assert psnr > 35
    # thin slices of a 3-D scan: the previous slice as context saves bits
    assert len(coded[3]) < 0.98 * len(coded[1])
    assert _kinds(coded[1]) == [3] * 7
    assert _kinds(coded[3]) == [3, 4, 4, 3, 4, 4, 3]  # group starts are coded alone
    assert bmz.info(coded[3])["group"] == 3 and bmz.info(coded[3])["chunk_format"] == 5


def test_random_access_in_groups(coded):
    full = bmz.decompress(coded[3])
    for sel in ([5], [2, 0], range(4, 7), slice(1, 6, 2), [6, 5, 4, 3]):
        part = bmz.decompress(coded[3], slices=sel)
        assert np.array_equal(part, full[list(range(7))[sel] if isinstance(sel, slice) else list(sel)])


def test_damaged_slice_names_the_slices_it_affects(coded, tmp_path):
    data = bytearray(coded[3])
    with BmzReader(bytes(data)) as r:
        off = r._entry(1)[0]
    data[off + 5] ^= 0xFF  # slice 1: the middle of the first group
    p = tmp_path / "damaged.bmz"
    p.write_bytes(bytes(data))
    v = bmz.api.verify(str(p))
    assert v["damaged"] == [1] and v["affected"] == [2]
    with pytest.raises(FormatError, match=r"slice 2 of 7.*slice 1 of its group"):
        bmz.decompress(bytes(data), slices=[2])
    # the next group does not depend on it
    assert np.array_equal(bmz.decompress(bytes(data), slices=[3, 4]),
                          bmz.decompress(coded[3], slices=[3, 4]))
    rep, damaged = bmz.decode_file(str(p), str(tmp_path / "out.npy"), skip_damaged=True)
    assert damaged == [1, 2]


def test_group_refusals(vol):
    with pytest.raises(InputError, match="inter-slice"):
        bmz.compress(vol[:2], model="hyperprior", group=4)
    with pytest.raises(InputError, match="group must be"):
        bmz.compress(vol[:2], model=MODEL, group=0)
    # with --lossless / --max-error, G groups the residual coder's slices (chunk format 6,
    # tests/test_lossless_groups.py), whatever the model
    assert bmz.info(bmz.compress(vol[:2], model=MODEL, group=2, lossless=True))["chunk_format"] == 6


def test_context_is_kept_only_where_it_codes_smaller(shared_data):
    """Thick cardiac slices 10 mm apart: the encoder codes each slice alone where the previous
    one as context would cost more, so grouping never costs more than groups of 1."""
    from bmz import io

    v = io.read(shared_data / "val/sunnybrook_cardiac/SCD0000501").data
    mid = v.shape[0] // 2
    v = np.ascontiguousarray(v[mid - 2:mid + 2, 64:192, 64:192])
    d1, d4 = (bmz.compress(v, quality=6, model=MODEL, group=g) for g in (1, 4))
    assert len(d4) <= len(d1)
    assert np.array_equal(bmz.decompress(d1), bmz.decompress(d4))


def test_forged_inter_chunk_at_group_start_is_refused(coded):
    """A file that says group 3 but whose slice 3 is an inter-slice chunk is refused, not decoded
    with a guessed context."""
    from bmz.bitstream import BmzWriter
    import io as _io

    with BmzReader(coded[3]) as r:
        meta = r.meta
        chunks = [r.chunk(k) for k in range(r.n_slices)]
    meta["codec"]["group"] = 2  # slice 2 (kind 4) now starts a group
    buf = _io.BytesIO()
    with BmzWriter(buf, meta, len(chunks), force=True) as w:
        for c in chunks:
            w.add(c)
    with pytest.raises(FormatError, match="start of a group"):
        bmz.decompress(buf.getvalue(), slices=[2])


def test_context_layer_at_half_the_positions_equals_the_whole_convolution():
    """The context model's ctx layer computed only where it is needed (the non-anchor half,
    from the four taps that meet anchors) gives exactly the whole convolution's integers there;
    inputs outside that case (values off the anchors, anchors among the positions) take the
    whole convolution."""
    import torch

    from bmz.codec import zoo
    from bmz.codec.context import anchor_mask

    model, _ = zoo.load_model("hyperprior-ctx")
    ep = model.int_ep
    g = torch.Generator().manual_seed(3)
    a = torch.round(torch.randn((1, model.M, 9, 12), generator=g, dtype=torch.float64) * 300)
    anchors = anchor_mask((9, 12))[0, 0]
    full = ep._conv("ctx", a * anchors)
    got = ep._ctx_at(a * anchors, ~anchors)
    assert torch.equal(got[:, :, 0], full[:, :, ~anchors])
    # off the anchors not zero: the four taps would miss terms, so the whole convolution runs
    assert torch.equal(ep._ctx_at(a, ~anchors)[:, :, 0], ep._conv("ctx", a)[:, :, ~anchors])
    assert torch.equal(ep._ctx_at(a * anchors, anchors)[:, :, 0], full[:, :, anchors])
