"""Bounded-error coding in slice groups (chunk format 6, ``max_error`` / ``lossless`` with
``group=G``): each slice of a group after the first is coded with the previous decoded slice, its
error map and the coder's state as context (kind 0x05); a group start is coded alone (0x02).

Round trips are bit-exact (δ = 0) or within δ for several G; random access inside a group gives
the slices of a full decode; a damaged slice makes the later slices of its group undecodable and
is named (``verify`` 'affected', decode errors), the next group decodes; a forged inter chunk at a
group start is refused; the bytes are the same for any thread count; the compiled coder equals
its plain-Python run. (Old format-3 golden files: test_golden.py.)"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import bmz
from bmz import api
from bmz.bitstream import container
from bmz.codec import residual3d
from bmz.codec.chunks import bounded, bounded_inter
from bmz.errors import FormatError, InputError


def _kinds(data: bytes) -> list[int]:
    with container.BmzReader(data) as r:
        return [r.chunk(k)[0] for k in range(r.n_slices)]


def _repack(data: bytes, k: int | None = None, chunk: bytes | None = None, meta_edit=None) -> bytes:
    with container.BmzReader(data) as r:
        meta = r.meta
        chunks = [r.chunk(i) for i in range(r.n_slices)]
    if k is not None:
        chunks[k] = chunk
    if meta_edit:
        meta_edit(meta)
    return container.pack(meta, chunks)


@pytest.fixture(scope="module")
def prisma7(shared_data) -> np.ndarray:
    """7 consecutive slices of the 12-bit Prisma series, cropped."""
    from bmz import io as bio

    p = next(p for p in sorted((shared_data / "val" / "dcm_qa_decubitus").iterdir()) if p.is_dir())
    v = np.asarray(bio.read(p).data)
    return np.ascontiguousarray(v[12:19, 70:150, 60:160])


@pytest.mark.parametrize("delta", [0, 2])
def test_groups_round_trip(prisma7, delta):
    v = prisma7
    sizes = {}
    for G in (1, 3, 8):
        data = bmz.compress(v, max_error=delta, group=G, base_quality=0)
        back = bmz.decompress(data)
        assert back.dtype == v.dtype
        err = int(np.abs(back.astype(np.int64) - v).max())
        assert err <= delta
        info = bmz.info(data)
        assert info["chunk_format"] == 6 and info["group"] == G and info["max_error"] == delta
        assert _kinds(data) == [2 if k % G == 0 else 5 for k in range(7)]
        sizes[G] = len(data)
    assert sizes[3] < sizes[1] and sizes[8] < sizes[3]


def test_default_group_and_lossless_file(prisma7, tmp_path):
    np.save(tmp_path / "a.npy", prisma7)
    rep = api.encode_file(tmp_path / "a.npy", tmp_path / "a.bmz", lossless=True, base_quality=0,
                          verify=True)
    assert rep.max_error == 0
    assert bmz.info(tmp_path / "a.bmz")["group"] == bounded_inter.DEFAULT_GROUP
    api.decode_file(tmp_path / "a.bmz", tmp_path / "b.npy")
    assert np.array_equal(np.load(tmp_path / "b.npy"), prisma7)


def test_random_access_inside_a_group(prisma7):
    data = bmz.compress(prisma7, max_error=1, group=4, base_quality=0)
    full = bmz.decompress(data)
    for ks in ([5], [6, 2], [3, 1, 6, 0, 4], [2, 2, 5]):
        assert np.array_equal(bmz.decompress(data, slices=ks), full[ks])


def test_constant_slices_inside_a_group(prisma7):
    v = prisma7.copy()
    v[2] = 7          # a constant slice in the middle of a group
    v[4, :, :] = v[4, 0, 0]
    for delta in (0, 3):
        data = bmz.compress(v, max_error=delta, group=8, base_quality=0)
        assert _kinds(data) == [2, 5, 0, 5, 0, 5, 5]
        back = bmz.decompress(data)
        assert int(np.abs(back.astype(np.int64) - v).max()) <= delta
        assert np.array_equal(bmz.decompress(data, slices=[3, 6]), back[[3, 6]])


def test_damaged_slice_names_its_dependents(prisma7, tmp_path):
    data = bytearray(bmz.compress(prisma7, lossless=True, group=3, base_quality=0))
    with container.BmzReader(bytes(data)) as r:
        off = r._entry(1)[0]  # slice 1: the middle of the first group
    data[off + 20] ^= 0xFF
    data = bytes(data)
    v = api.verify(data)
    assert v["damaged"] == [1] and v["affected"] == [2]
    with pytest.raises(FormatError, match=r"slice 2 of 7.*slice 1 of its group"):
        bmz.decompress(data, slices=[2])
    # the group's start and the next groups do not depend on it
    assert np.array_equal(bmz.decompress(data, slices=[0, 3, 4, 5, 6]), prisma7[[0, 3, 4, 5, 6]])
    (tmp_path / "d.bmz").write_bytes(data)
    _, damaged = api.decode_file(tmp_path / "d.bmz", tmp_path / "d.npy", skip_damaged=True)
    assert damaged == [1, 2]
    out = np.load(tmp_path / "d.npy")
    assert np.array_equal(out[[0, 3, 4, 5, 6]], prisma7[[0, 3, 4, 5, 6]])


def test_damaged_stream_behind_valid_checksums_is_caught(prisma7):
    """A forged inter chunk (valid container CRC) fails its reconstruction CRC, naming the slice."""
    data = bmz.compress(prisma7[:3], lossless=True, group=3, base_quality=0)
    c = bytearray(container.BmzReader(data).chunk(1))
    c[len(c) // 2] ^= 0x55
    forged = _repack(data, 1, bytes(c))
    with pytest.raises(FormatError, match="slice 1"):
        bmz.decompress(forged, slices=[1])
    with pytest.raises(FormatError, match=r"slice 2 of 3.*slice 1 of its group"):
        bmz.decompress(forged, slices=[2])


def test_forged_inter_chunk_at_group_start_is_refused(prisma7):
    data = bmz.compress(prisma7[:4], lossless=True, group=4, base_quality=0)

    def regroup(m):
        m["codec"]["group"] = 2  # slice 2 (kind 5) now starts a group

    with pytest.raises(FormatError, match="start of a group"):
        bmz.decompress(_repack(data, meta_edit=regroup), slices=[2])
    inter = container.BmzReader(data).chunk(1)
    with pytest.raises(FormatError, match="slice 0"):
        bmz.decompress(_repack(data, 0, inter), slices=[0])

    def bad_group(m):
        m["codec"]["group"] = 0

    with pytest.raises(FormatError, match="codec.group"):
        bmz.decompress(_repack(data, meta_edit=bad_group))

    def old_format(m):  # an inter chunk in a format-3 file
        m["codec"]["chunk_format"] = 3
        m["codec"]["residual"] = bounded.coder_id()

    with pytest.raises(FormatError, match="slice 1"):
        bmz.decompress(_repack(data, meta_edit=old_format), slices=[1])


def test_same_bytes_for_any_thread_count(prisma7):
    outs = [bmz.compress(prisma7, max_error=1, group=2, base_quality=0, threads=threads)
            for threads in (1, 2, 3)]
    assert outs[0] == outs[1] == outs[2]


def test_group_refusals(prisma7):
    for bad in (0, -1, 1025, 2.5, True):
        with pytest.raises(InputError, match="group must be"):
            bmz.compress(prisma7[:2], lossless=True, group=bad)


def test_base_layer_at_group_starts(prisma7):
    """A learned base layer (forced) at the group starts, the previous slice elsewhere."""
    v = prisma7[:4]
    data = bmz.compress(v, max_error=2, group=2, base_quality=1)
    back = bmz.decompress(data)
    assert int(np.abs(back.astype(np.int64) - v).max()) <= 2
    kinds = _kinds(data)
    assert kinds[1] == kinds[3] == 5 and kinds[0] == kinds[2] == 2
    assert np.array_equal(bmz.decompress(data, slices=[3]), back[[3]])


@pytest.mark.parametrize("delta,ref", [(0, 0), (2, 1), (5, 2), (0, 2)])
def test_compiled_coder_equals_python_integer_semantics(delta, ref, monkeypatch):
    """The numba-compiled coder of format 6 and the same function run as plain Python (arbitrary
    precision integers) write identical bytes, reconstructions, error maps and final states."""
    monkeypatch.setattr(residual3d, "_voxels", residual3d._voxels.py_func)  # its loop as Python
    rng = np.random.default_rng(delta + 10 * ref)
    x = (np.add.outer(np.arange(9), np.arange(12)) * 90 + rng.integers(0, 300, (9, 12))).astype(np.int64)
    maxv = int(x.max())
    other = np.clip(x + rng.integers(-40, 40, x.shape), 0, maxv)
    base = other if ref == 1 else None
    prev = None
    if ref == 2:
        _, prev = residual3d.encode(other, maxv, delta)
    data, ctx = residual3d.encode(x, maxv, delta, base, prev)
    r, kind, perr, state = residual3d._setup(x.shape, base, prev)
    buf = np.zeros(x.size * 4 + 1024, np.uint8)
    rec2, err2 = np.zeros_like(x), np.zeros_like(x)
    args = (residual3d.E_TAB, residual3d.STRETCH, residual3d._SQ_T, residual3d.LR,
            residual3d._NO_STATS, residual3d._NO_ACC, residual3d._NO_ACC)
    n, status = residual3d._code_slice.py_func(0, x, rec2, r, kind, perr, err2, maxv, delta, buf,
                                               *state, *args)
    assert status == 0 and buf[:n].tobytes() == data
    assert np.array_equal(ctx.rec, rec2) and np.array_equal(ctx.err, err2)
    assert all(np.array_equal(a, b) for a, b in zip(ctx.state, state))
    back = residual3d.decode(data, x.shape, maxv, delta, base, prev)
    assert np.array_equal(back.rec, ctx.rec) and int(np.abs(ctx.rec - x).max()) <= delta


def test_residual3d_rejects_garbage_quickly():
    rng = np.random.default_rng(3)
    _, prev = residual3d.encode(rng.integers(0, 4096, (17, 13)), 4095, 0)
    for i in range(20):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        try:
            out = residual3d.decode(junk, (17, 13), 4095, i % 3, prev=prev if i % 2 else None)
            assert out.rec.min() >= 0 and out.rec.max() <= 4095
        except ValueError:
            pass


def test_random_access_at_the_end_of_a_large_group():
    """Slice 1023 of a group of 1024 decodes its 1023 predecessors in order, without recursion
    (BmzFile walks the run back to the group start, then decodes forward)."""
    rng = np.random.default_rng(5)
    v = rng.integers(0, 50, (1030, 3, 4)).astype(np.uint8)
    data = bmz.compress(v, lossless=True, group=1024, base_quality=0)
    assert _kinds(data)[1023] == 5 and _kinds(data)[1024] == 2
    assert np.array_equal(bmz.decompress(data, slices=[1023, 1029]), v[[1023, 1029]])


def test_residual3d_codes_with_given_tables_without_touching_the_shipped_ones():
    """``encode(..., tables=)`` (what tools/fit_residual_prior.py codes with) starts a slice coded
    alone from the given tables; the module's shipped tables, and the bytes of the default, stay
    as they are; a slice after ``prev`` starts from what ``prev`` hands on."""
    rng = np.random.default_rng(4)
    x = np.clip(np.rint(500 + 200 * np.sin(np.arange(24 * 32).reshape(24, 32) / 9.0)
                        + rng.normal(0, 8, (24, 32))), 0, 1000).astype(np.int64)
    shipped = [a.copy() for a in (residual3d.PRIOR, residual3d.PRIOR_MIX, residual3d.PRIOR_APM)]
    d0, c0 = residual3d.encode(x, 1000, 0)
    flat = residual3d.flat_tables()
    d1, _ = residual3d.encode(x, 1000, 0, tables=flat)
    assert d1 != d0
    for a, b in zip(shipped, (residual3d.PRIOR, residual3d.PRIOR_MIX, residual3d.PRIOR_APM)):
        assert np.array_equal(a, b)
    assert residual3d.encode(x, 1000, 0)[0] == d0
    assert np.array_equal(residual3d.decode(d0, x.shape, 1000, 0).rec, x)
    assert residual3d.encode(x, 1000, 0, prev=c0, tables=flat)[0] == \
        residual3d.encode(x, 1000, 0, prev=c0)[0]


@pytest.mark.parametrize("coder", ["residual", "residual3d"])
def test_missing_residual_tables_are_an_error(coder, tmp_path, monkeypatch):
    """A broken install without the shipped ``.npz`` must not code from flat tables (files no
    other bmz decodes): the error names the missing file."""
    mod = importlib.import_module(f"bmz.codec.{coder}")
    missing = tmp_path / mod.TABLES_FILE.name
    monkeypatch.setattr(mod, "TABLES_FILE", missing)
    with pytest.raises(FileNotFoundError, match=str(missing.name)):
        mod._fitted_tables()
