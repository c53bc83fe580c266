"""``bmz batch`` on Dask ``distributed``: connecting to (or starting) a cluster, and running
tasks on it with a bounded window of tasks in flight."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any, Iterator

from ..errors import BmzError, InputError
from .tasks import Job, _base_result, _fail, _require_distributed


def default_workers() -> int:
    """Worker processes of the default LocalCluster: one per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None,
            timeout: float = 30.0) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` (an address such as ``tcp://host:8786`` or a scheduler
    file), waiting for ``workers`` workers if given; otherwise to a new ``LocalCluster`` of
    ``workers`` (default: one per core) single-threaded worker processes, closed on exit."""
    _require_distributed()
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler:
            try:
                if os.path.isfile(scheduler):
                    client = Client(scheduler_file=scheduler, timeout=timeout)
                else:
                    client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as e:
                raise BmzError(f"--scheduler {scheduler}: cannot connect: {e}") from None
            if workers:
                try:
                    client.wait_for_workers(workers, timeout=timeout)
                except TimeoutError:
                    n = len(client.scheduler_info().get("workers", {}))
                    client.close()
                    raise BmzError(f"--scheduler {scheduler}: {n} workers after {timeout:.0f} s, "
                                   f"--workers asks for {workers}") from None
        else:
            n = workers or default_workers()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _check_workers_see(client, *paths: str) -> None:
    """Every worker must see the source and destination folders (same absolute paths)."""
    seen = client.run(lambda ps: [os.path.isdir(p) for p in ps], list(paths))
    for addr, oks in seen.items():
        for p, ok in zip(paths, oks):
            if not ok:
                raise InputError(f"{p}: not visible to worker {addr}; with --scheduler, the "
                                 "folders must be on a file system every worker mounts at the "
                                 "same path")


def _run_tasks(client, fn, items: list[tuple[Job, tuple]], window: int | None = None
               ) -> Iterator[tuple[Job, dict]]:
    """Submit ``fn(job, *args)`` for every item to Dask and yield (job, result) as tasks finish.
    At most ``window`` tasks are submitted at a time (the scheduler need not hold a million
    futures); Dask decides where each runs and re-runs those of a lost worker."""
    from distributed import as_completed

    if window is None:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = max(64, 8 * n_workers)
    run_id = uuid.uuid4().hex[:8]
    pending = iter(enumerate(items))
    owner: dict = {}
    ac = as_completed()

    def submit_next() -> bool:
        nxt = next(pending, None)
        if nxt is None:
            return False
        i, (job, args) = nxt
        fut = client.submit(fn, job, *args, key=f"bmz-{fn.__name__}-{run_id}-{i}", pure=False)
        owner[fut.key] = job
        ac.add(fut)
        return True

    for _ in range(window):
        if not submit_next():
            break
    for fut in ac:
        job = owner.pop(fut.key)
        try:
            res = fut.result()
        except Exception as e:  # noqa: BLE001 - KilledWorker (the input killed its workers), ...
            res = _fail(_base_result(job), e)
            if type(e).__name__ == "KilledWorker":
                res["error"] = ("the worker processing this input died "
                                f"{_allowed_failures()} times (out of memory, or a crash): {e}")
        finally:
            fut.release()
        yield job, res
        submit_next()


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures", 3)) + 1
