"""Decoding on several threads (the default: every core) gives the very arrays one thread gives,
for independent slices and for slice groups, whole volumes and selections, damaged files too."""

from __future__ import annotations

import numpy as np
import pytest

import bmz
from bmz.bitstream import BmzReader
from bmz.file import BmzFile, default_threads


@pytest.fixture(scope="module")
def vol(shared_data):
    from bmz import io

    v = io.read(shared_data / "val/dcm_qa_uih").data
    mid = v.shape[0] // 2
    return np.ascontiguousarray(v[mid - 5:mid + 5, 100:228, 100:228])


@pytest.mark.parametrize("model,group", [("hyperprior", None), ("hyperprior-ctx", 4)])
def test_threads_decode_identically(vol, model, group):
    data = bmz.compress(vol, quality=5, model=model, group=group)
    one = bmz.decompress(data, threads=1)
    for threads in (2, 3, None):
        assert np.array_equal(bmz.decompress(data, threads=threads), one)
    for sel in ([9, 0, 5], range(3, 8), slice(None, None, 3), [2]):
        ks = list(range(10))[sel] if isinstance(sel, slice) else list(sel)
        assert np.array_equal(bmz.decompress(data, slices=sel, threads=3), one[ks])
    assert default_threads() >= 1


def test_threads_report_damage_like_one_thread(vol, tmp_path):
    data = bytearray(bmz.compress(vol, quality=5, model="hyperprior-ctx", group=4))
    with BmzReader(bytes(data)) as r:
        off = r._entry(5)[0]
    data[off + 4] ^= 0x55  # slice 5: inside the second group (4..7)
    p = tmp_path / "d.bmz"
    p.write_bytes(bytes(data))
    outs = {}
    for threads in (1, 3):
        rep, damaged = bmz.decode_file(str(p), str(tmp_path / f"o{threads}.npy"), skip_damaged=True,
                                       threads=threads)
        outs[threads] = (np.load(tmp_path / f"o{threads}.npy"), damaged)
    assert outs[1][1] == outs[3][1] and 5 in outs[1][1]
    assert np.array_equal(outs[1][0], outs[3][0])
    with BmzFile(bytes(data)) as f, pytest.raises(bmz.errors.FormatError, match="slice 5"):
        f.read(threads=3)


# ---- encoding ----------------------------------------------------------------------------------

ENCODINGS = {
    "hyperprior": dict(quality=5, model="hyperprior"),
    "ctx-G4": dict(quality=5, model="hyperprior-ctx", group=4),
    "ctx-default": dict(model="hyperprior-ctx"),  # the card's group (8): groups of 8 and 2
    "max-error": dict(max_error=1),  # format 6, G = 8, base quality auto (chosen on all cores)
    "max-error-base": dict(max_error=2, group=4, base_quality=1),  # torch base layers in workers
}


@pytest.fixture(scope="module")
def vol_constant(vol):
    """``vol`` with slice 5 constant: inside a group of 4, after it a slice coded after a
    constant one."""
    v = vol.copy()
    v[5] = v[5].min()
    return v


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_threads_encode_identically(vol, vol_constant, name):
    """``bmz.compress`` gives the very same bytes on 1, 2, 3 threads and every core."""
    kw = ENCODINGS[name]
    for v in (vol, vol_constant):
        one = bmz.compress(v, threads=1, **kw)
        for threads in (2, 3, None):
            assert bmz.compress(v, threads=threads, **kw) == one, (name, threads)
        back = bmz.decompress(one)
        if "max_error" in kw:
            assert int(np.abs(back.astype(np.int64) - v).max()) <= kw["max_error"]


@pytest.mark.parametrize("fmt", ["grouped", "bounded"])
def test_parallel_chunks_equal_sequential_encoder(vol_constant, fmt):
    """The slice-group encoders' parallel ``chunks`` give the chunks their sequential
    ``encode_slice`` gives, slice after slice (the reference: one slice at a time, in order)."""
    from bmz.codec import chunks, pipeline, zoo

    v = vol_constant
    mapping = pipeline.mapping_for_range(int(v.min()), int(v.max()))

    def encoder():
        if fmt == "grouped":
            model, _ = zoo.load_model("hyperprior-ctx")
            return chunks.GROUPED.encoder(model, mapping, 4, 4)
        model, _ = zoo.load_model(zoo.DEFAULT_MODEL)
        return chunks.BOUNDED.Encoder(model, mapping, 1, 1, 3)  # base layer at group starts

    with pipeline.single_thread():
        seq = encoder()
        ref = [seq.encode_slice(s) for s in v]
        for threads in (1, 3):
            par = encoder()
            assert list(par.chunks(v, threads)) == ref
            if fmt == "bounded":
                assert par.parts == seq.parts


def test_one_slice_decodes_on_every_thread_allowed(vol, monkeypatch):
    """A single slice (a viewer's first) has no other slice to run beside it: its synthesis gets
    every thread allowed (several slices: one each, the slices in parallel), the array is the
    same, and the caller's torch setting comes back."""
    import torch

    from bmz.codec import zoo

    data = bmz.compress(vol, quality=5, model="hyperprior")
    model, _ = zoo.load_model("hyperprior")
    seen = []
    synthesize = type(model).synthesize

    def spy(self, sym, q):
        seen.append(torch.get_num_threads())
        return synthesize(self, sym, q)

    monkeypatch.setattr(type(model), "synthesize", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        two = bmz.decompress(data, slices=[4], threads=2)
        assert torch.get_num_threads() == 1
        assert seen == [2]
        one = bmz.decompress(data, slices=[4], threads=1)
        several = bmz.decompress(data, slices=[4, 5], threads=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 1, 1]
    assert np.array_equal(two, one) and np.array_equal(several[0], one[0])
    with BmzFile(data) as f:
        assert f.transform_threads([3]) == default_threads()
        assert f.transform_threads(None) == 1 and f.transform_threads([3], threads=5) == 5


def test_encode_workers_run_torch_on_one_thread(vol, monkeypatch):
    """Each slice's float analysis runs with one torch thread, on the worker threads, whatever
    the caller's torch setting (which comes back unchanged)."""
    import threading

    import torch

    from bmz.codec import zoo

    model, _ = zoo.load_model("hyperprior-ctx")
    seen = []
    analysis = type(model).analysis

    def spy(self, x, q):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return analysis(self, x, q)

    monkeypatch.setattr(type(model), "analysis", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = bmz.compress(vol, quality=5, model="hyperprior-ctx", group=4, threads=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seen) == len(vol)
    assert {n for _, n in seen} == {1}
    assert all(name.startswith("bmz-encode") for name, _ in seen)
    assert data == bmz.compress(vol, quality=5, model="hyperprior-ctx", group=4, threads=1)


def test_encode_error_in_a_worker_is_raised_not_hung(vol, monkeypatch, tmp_path):
    """An error coding one slice (here the 6th analysed) is the encode's error on any thread
    count: the slices waiting for it fail too, nothing hangs, no output is left."""
    from bmz.codec import zoo

    model, _ = zoo.load_model("hyperprior-ctx")
    analysis = type(model).analysis
    calls = []

    def failing(self, x, q):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("boom in slice analysis")
        return analysis(self, x, q)

    monkeypatch.setattr(type(model), "analysis", failing)
    src = tmp_path / "v.npy"
    np.save(src, vol)
    for threads in (1, 3):
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            bmz.encode_file(src, tmp_path / "v.bmz", quality=5, model="hyperprior-ctx", group=4,
                            threads=threads)
        assert not (tmp_path / "v.bmz").exists()


def test_encode_file_and_cli_jobs_identical(vol, tmp_path):
    """``encode_file`` (and its verify decode) and ``bmz encode --jobs N``: the same file for
    any N."""
    from click.testing import CliRunner

    from bmz.cli import main

    src = tmp_path / "v.npy"
    np.save(src, vol)
    outs = []
    for jobs in (1, 3):
        out = tmp_path / f"j{jobs}.bmz"
        r = CliRunner().invoke(main, ["encode", str(src), "-o", str(out), "--model",
                                      "hyperprior-ctx", "--group", "4", "--jobs", str(jobs),
                                      "--quiet"])
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    rep = bmz.encode_file(src, tmp_path / "api.bmz", model="hyperprior-ctx", group=4, verify=True)
    assert outs[0] == outs[1] == (tmp_path / "api.bmz").read_bytes()
    assert rep.max_error is not None and rep.psnr > 30
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "x.bmz"), "--jobs", "0"])
    assert r.exit_code != 0 and not (tmp_path / "x.bmz").exists()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_refused(vol, bad):
    with pytest.raises(bmz.errors.InputError, match="threads"):
        bmz.compress(vol[:1], quality=1, threads=bad)


@pytest.mark.parametrize("fmt", ["lossy", "grouped", "bounded"])
def test_encode_window_is_bounded(vol, fmt):
    """Streaming: the encoders read slices in order as chunks are taken, never more than their
    window ahead of the chunk being handed out — whatever the volume's depth: 2 × threads slices,
    for bounded-error groups (two threads busy per group) max(2 × threads, (threads // 2 + 1) ×
    G)."""
    from bmz.codec import chunks, pipeline, zoo

    v = np.concatenate([vol, vol[::-1], vol, vol[::-1]])  # 40 slices
    mapping = pipeline.mapping_for_range(int(v.min()), int(v.max()))
    if fmt == "lossy":
        enc = chunks.LOSSY.encoder(zoo.load_model("hyperprior")[0], mapping, 4)
    elif fmt == "grouped":
        enc = chunks.GROUPED.encoder(zoo.load_model("hyperprior-ctx")[0], mapping, 4, 4)
    else:
        enc = chunks.BOUNDED.Encoder(None, mapping, 1, 0, 8)

    class Counting:  # a lazy volume: counts the slices read
        shape, read = v.shape, 0

        def __getitem__(self, k):
            Counting.read += 1
            return v[k]

    threads = 2
    window = 2 * threads if fmt != "bounded" else max(2 * threads, (threads // 2 + 1) * 8)
    with pipeline.single_thread():
        for k, chunk in enumerate(enc.chunks(Counting(), threads)):
            assert Counting.read <= k + window, (k, Counting.read)
    assert Counting.read == len(v) and k == len(v) - 1
