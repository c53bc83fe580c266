"""Threads for coding: how many (every core unless told), the worker pools, and an ordered map
with a bounded window of work in flight — shared by decoding (:meth:`bmz.file.BmzFile.stack`)
and encoding (the chunk encoders' ``chunks(vol, threads)``).

Every worker runs torch on one thread (:func:`pin_torch`): the slices themselves run in
parallel, and one torch thread per slice makes each slice's float arithmetic (the learned
analysis, whose sums may be ordered otherwise on more torch threads) the very same as on one
thread, so encoding gives the same bytes for any thread count. Decoding is integer-exact anyway.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from .errors import InputError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["default_threads", "resolve", "pin_torch", "worker_pool", "ordered", "wait",
           "handing_on", "Future"]


def default_threads() -> int:
    """The threads coding uses unless told: every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve(threads) -> int:
    """``threads`` (None: :func:`default_threads`) → a count ≥ 1; InputError otherwise."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise InputError(f"threads must be a whole number ≥ 1 (None: every core), "
                         f"got {threads!r}")
    n = int(threads)
    if n < 1:
        raise InputError(f"threads must be ≥ 1 (None: every core), got {n}")
    return n


def pin_torch() -> None:
    """Run torch on one thread in the calling thread (a worker), when torch is loaded. torch's
    thread count is per thread (OpenMP): a fresh worker started while the caller holds
    :func:`bmz.codec.pipeline.single_thread` already has one; this makes sure of it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _pinned(fn: Callable[..., R], *args) -> R:
    pin_torch()
    return fn(*args)


class _PinnedPool(ThreadPoolExecutor):
    """A thread pool whose tasks run with torch on one thread (:func:`pin_torch`)."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_pinned, functools.partial(fn, **kwargs), *args)


def worker_pool(threads: int, name: str = "bmz") -> ThreadPoolExecutor:
    """A pool of ``threads`` worker threads whose tasks run torch on one thread."""
    return _PinnedPool(max_workers=max(1, int(threads)), thread_name_prefix=name)


def ordered(fn: Callable[[T], R], items: Iterable[T], threads: int | None,
            window: int | None = None, name: str = "bmz-encode") -> Iterator[R]:
    """``fn(item)`` for each of ``items``, yielded in order.

    ``threads`` (None: every core) = 1: on the calling thread, one item at a time. Otherwise at
    most ``threads`` items compute at once (torch on one thread in each): items are drawn from
    ``items`` on the calling thread (a lazy reader's slices are read in order there) as results
    are taken, at most ``window`` (default ``2 × threads``) of them submitted and not yet yielded,
    so memory stays bounded whatever the number of items.

    An item's work may wait for what an earlier item hands on: a :class:`Future` the earlier
    one sets inside :func:`handing_on`, waited for with :func:`wait`. Every item in the window
    has a thread of its own, and one that waits gives its turn to compute to another, so a
    chain of items waiting on each other never holds the cores (nor deadlocks: the earlier item
    is running). Closing the generator early (or an error) waits for the items started."""
    threads = resolve(threads)
    it = iter(items)
    if threads == 1:  # inline: a hand-on is always there before the item that waits for it
        for item in it:
            yield fn(item)
        return
    window = max(1, int(window or 2 * threads))
    turns = threading.BoundedSemaphore(threads)

    def run(item):
        with turns:
            _local.turns = turns
            try:
                return fn(item)
            finally:
                _local.turns = None

    pool = worker_pool(window, name)  # a thread per item in the window (started as needed)
    pending: deque = deque()
    end = object()
    try:
        while True:
            while len(pending) < window:
                item = next(it, end)
                if item is end:
                    break
                pending.append(pool.submit(run, item))
            if not pending:
                return
            out = pending.popleft().result()
            yield out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_local = threading.local()


def wait(f: Future):
    """``f.result()`` — what an earlier item of :func:`ordered` hands on — giving this item's
    turn to compute to another while it waits."""
    turns = getattr(_local, "turns", None)
    if turns is None or f.done():
        return f.result()
    turns.release()
    try:
        return f.result()
    finally:
        turns.acquire()


@contextlib.contextmanager
def handing_on(*futures: Future) -> Iterator[None]:
    """Around the work that computes what a unit hands on to the next (``futures``, each set
    with ``set_result`` by that work): an error inside also fails those not yet set, so a unit
    waiting on one (:func:`wait`) fails with it instead of waiting for ever."""
    try:
        yield
    except BaseException as e:
        for f in futures:
            if not f.done():
                f.set_exception(e)
        raise
