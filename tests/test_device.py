"""Decoding on a GPU (``device=``): the fixed-point synthesis moves, the arrays stay the CPU's.

Where no CUDA GPU is present the GPU tests skip (saying so); the device wrapper itself is
exercised on the CPU, so its plumbing is tested everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bmz
from bmz.codec import device as bdev
from bmz.codec import zoo
from bmz.errors import InputError
from bmz.file import BmzFile

GOLDEN = Path(__file__).parent / "golden"
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def vol(shared_data):
    from bmz import io

    v = io.read(shared_data / "val/dcm_qa_uih").data
    mid = v.shape[0] // 2
    return np.ascontiguousarray(v[mid - 2:mid + 2, 100:260, 100:260])


def _files(vol):
    return {"hyperprior": bmz.compress(vol, quality=6, model="hyperprior"),
            "hyperprior-ctx": bmz.compress(vol, quality=6, model="hyperprior-ctx", group=4),
            "base layer": bmz.compress(vol, max_error=2)}


def test_device_wrapper_decodes_the_same_arrays(vol, monkeypatch):
    """The device path (the fixed-point synthesis copied to a device, inputs moved there, outputs
    back) on the CPU device: identical arrays for every kind of learned chunk."""
    monkeypatch.setattr(bdev, "parse_device", lambda d: None if d is None else torch.device("cpu"))
    for what, data in _files(vol).items():
        ref = bmz.decompress(data, threads=1)
        with BmzFile(data, device="cpu-wrapped") as f:
            m = f.model
            assert isinstance(m, bdev.OnDevice), what
            got = f.read(threads=2)
        assert np.array_equal(got, ref), what
    for p in sorted(GOLDEN.glob("*.bmz")):  # every shipped model family, old weights included
        data = p.read_bytes()
        with BmzFile(data, device="cpu-wrapped") as f:
            assert np.array_equal(f.read(threads=1), bmz.decompress(data, threads=1)), p.name


def test_device_batches_the_threads_slices_and_keeps_errors_with_their_slice(vol, monkeypatch):
    """With several decoding threads the device path synthesises their slices in batches (one
    product per layer for several slices) — the same arrays — and a slice whose arithmetic fails
    inside a batch fails alone."""
    monkeypatch.setattr(bdev, "parse_device", lambda d: None if d is None else torch.device("cpu"))
    data = _files(vol)["hyperprior"]
    ref = bmz.decompress(data, threads=1)
    with BmzFile(data, device="cpu-wrapped") as f:
        batcher = f.model._batcher
        sizes = []
        compute = batcher._compute
        monkeypatch.setattr(batcher, "_compute", lambda b: (sizes.append(len(b)), compute(b))[1])
        batcher.linger = 5.0  # generous: the test must not depend on timing
        got = f.read(threads=4)
    assert np.array_equal(got, ref)
    assert sum(sizes) == len(vol) and max(sizes) > 1, sizes

    from bmz.codec.fixedpoint import FixedPointError

    fx = batcher._fx
    bad = torch.zeros((1, 128, 4, 4), dtype=torch.int64)
    bad[0, 0, 0, 0] = 2**62  # beyond the exact range: refused
    good = torch.zeros((1, 128, 4, 4), dtype=torch.int64)
    items = [{"a": good, "out": None, "err": None}, {"a": bad, "out": None, "err": None}]
    batcher._compute(items)
    assert items[0]["err"] is None and torch.equal(items[0]["out"], fx(good))
    assert isinstance(items[1]["err"], FixedPointError)


def test_bad_devices_are_input_errors(vol):
    data = bmz.compress(vol[:1], quality=2)
    with pytest.raises(InputError, match="not a device name"):
        bmz.decompress(data, device="tpu")
    with pytest.raises(InputError, match="CPU or a CUDA GPU"):
        bmz.decompress(data, device="meta")
    if not HAS_CUDA:
        with pytest.raises(InputError, match="no CUDA GPU"):
            bmz.decompress(data, device="cuda")
    assert np.array_equal(bmz.decompress(data, device="cpu"), bmz.decompress(data))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine: GPU decoding not checked here")
def test_gpu_decodes_the_cpu_arrays(vol):
    """On a GPU: the golden files and fresh files of every learned kind decode to the CPU's arrays."""
    for what, data in _files(vol).items():
        assert np.array_equal(bmz.decompress(data, device="cuda"), bmz.decompress(data)), what
    for p in sorted(GOLDEN.glob("*.bmz")):
        data = p.read_bytes()
        assert np.array_equal(bmz.decompress(data, device="cuda"), bmz.decompress(data)), p.name


def test_batcher_serves_slices_of_different_shapes_at_once():
    """Two volumes of different slice sizes decoded at once through one model on one device: the
    batcher groups equal shapes and serves every caller (queued items are told apart by
    identity, not by comparing their tensors)."""
    import threading
    import time

    b = bdev._Batcher(lambda a: a * 2, torch.device("cpu"), linger=0.3)
    b.workers = 3
    shapes = [(1, 4, 8, 8), (1, 4, 6, 6), (1, 4, 8, 8)]
    got: dict[int, torch.Tensor] = {}

    def call(i):
        got[i] = b.run(torch.full(shapes[i], float(i + 1)))

    threads = []
    for i in range(3):
        t = threading.Thread(target=call, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a caller hangs"
    for i, s in enumerate(shapes):
        assert torch.equal(got[i], torch.full(s, 2.0 * (i + 1)))
    assert b.run(torch.ones(1, 4, 5, 5)).shape == (1, 4, 5, 5) and not b._leading
