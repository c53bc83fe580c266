"""Coding to a quality target: the smallest ``.bmz`` whose PSNR reaches a given value
(``bmz encode --target-psnr P``, :func:`choose_for_psnr`).

bmz has two ways to code a volume: the learned model at one of its quality levels, and the
bounded-error coder (``--max-error δ``: every voxel within δ). Which one gives fewer bits for a
quality depends on the volume: the learned levels win at low and middle rates, the bounded
coder at high fidelity (``benchmarks/results/native_precision.md``). :func:`choose_for_psnr`
tries both and keeps the smaller file that reaches the target:

1. the probe: the whole volume when it has at most ``2 × probe_slices`` slices, else
   ``probe_slices`` slices taken as evenly spaced runs of 8 consecutive slices (so slice groups
   see real neighbours);
2. on the probe, the lowest quality level of the model whose PSNR reaches the target (binary
   search over the levels), and the largest bound δ that does (δ = ⌊peak / 10^(P/20)⌋ always
   does, since MSE ≤ δ²: search upwards from it by doubling, then bisect);
3. the one of the two with fewer bytes on the probe is coded on the whole volume; if the whole
   volume misses the target (it rarely does: the probe is the harder part of most volumes), the
   next better setting of the same kind is tried, up to lossless, which always reaches it.

PSNR is bmz's everywhere: peak = the volume's max − min, from the volume's MSE. The choice is
deterministic (same input, same choice); the files it produces are ordinary ``.bmz`` files of
the chosen kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import api, metrics
from .codec import pipeline, zoo
from .errors import InputError

RUN = 8  # consecutive slices per probe run


@dataclass(frozen=True)
class TargetChoice:
    """What :func:`choose_for_psnr` chose and what it measured on the whole volume."""

    target_psnr: float
    model: str  # the model (learned) or the base-layer model (bounded)
    quality: int | None  # learned: the level; bounded: None
    max_error: int | None  # bounded: δ; learned: None
    group: int | None  # the slice groups asked for (None: the default of the kind)
    psnr: float  # of the chosen file, on the whole volume
    n_bytes: int
    data: bytes  # the chosen file

    @property
    def options(self) -> dict:
        """Keyword arguments of :func:`bmz.compress` / ``encode_file`` that give this file."""
        if self.max_error is not None:
            return {"max_error": self.max_error, "model": self.model, "group": self.group}
        return {"quality": self.quality, "model": self.model, "group": self.group}

    def describe(self) -> str:
        how = (f"--max-error {self.max_error}" if self.max_error is not None
               else f"--model {self.model} --quality {self.quality}")
        return f"{how} (PSNR {self.psnr:.2f} dB >= target {self.target_psnr:g} dB)"


def _probe(vol: np.ndarray, probe_slices: int) -> np.ndarray:
    n = vol.shape[0]
    if n <= 2 * probe_slices:
        return vol
    runs = max(1, probe_slices // RUN)
    starts = np.linspace(0, n - RUN, runs + 2)[1:-1].round().astype(int)
    return np.concatenate([vol[s:s + RUN] for s in starts])


def _psnr(ref: np.ndarray, data: bytes, peak: int) -> float:
    back = api.decompress(data)
    d = ref.astype(np.int64) - back.reshape(ref.shape).astype(np.int64)
    return metrics.psnr_from_mse(float(np.mean(d * d)), peak)


def _try(ref, peak, **options) -> tuple[int, float, bytes]:
    data = api.compress(ref, **options)
    return len(data), _psnr(ref, data, peak), data


def _learned(ref, peak, target, model, group, top: int):
    """The lowest level in 1..top whose PSNR on ``ref`` reaches ``target`` → (level, (bytes,
    psnr, data)), or None when even ``top`` misses it."""
    lo, hi, best = 1, top, None
    while lo <= hi:
        q = (lo + hi) // 2
        got = _try(ref, peak, quality=q, model=model, group=group)
        if got[1] >= target:
            best, hi = (q, got), q - 1
        else:
            lo = q + 1
    return best


def _bounded(ref, peak, target, model, group):
    """The largest δ whose PSNR on ``ref`` reaches ``target`` → (δ, (bytes, psnr, data))."""
    safe = int(peak // (10.0 ** (target / 20.0)))  # MSE <= δ² guarantees the target
    best = (safe, _try(ref, peak, max_error=safe, model=model, group=group))
    if safe == 0:
        return best
    lo, hi = safe, None  # lo reaches the target; hi (if known) does not
    d = safe * 2
    while d <= peak:
        got = _try(ref, peak, max_error=d, model=model, group=group)
        if got[1] < target:
            hi = d
            break
        best, lo = (d, got), d
        d *= 2
    if hi is None:
        return best
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = _try(ref, peak, max_error=mid, model=model, group=group)
        if got[1] >= target:
            best, lo = (mid, got), mid
        else:
            hi = mid
    return best


def choose_for_psnr(array, target_psnr: float, model: str | None = None,
                    group: int | None = None, probe_slices: int = 32) -> TargetChoice:
    """The smallest ``.bmz`` of ``array`` (2-D or 3-D integer, slices on axis 0) whose PSNR
    reaches ``target_psnr`` dB, among the learned levels of ``model`` (default: the model bmz
    picks for the data's bit depth) and bounded-error files (``max_error``; base layer as
    :func:`bmz.compress` chooses with ``model``). See the module docstring for the search."""
    if (isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float))
            or not math.isfinite(target_psnr) or target_psnr <= 0):
        raise InputError(f"target PSNR must be a positive number of dB, got {target_psnr!r}")
    a = np.asarray(array)
    if a.dtype.kind not in "iu" or a.ndim not in (2, 3) or a.size == 0:
        api.compress(a)  # refuses it, saying what is wrong, as every encode does
    vol = a if a.ndim == 3 else a[None]
    vmin, vmax = int(a.min()), int(a.max())
    peak = vmax - vmin
    bits = pipeline.mapping_for_range(vmin, vmax)["bits"]
    learned_model = model or zoo.default_model(bits)
    m, _ = zoo.load_model(learned_model)
    top = int(m.n_qualities)
    # slices of a model without inter-slice context are independent: any group bound holds
    lgroup = group if getattr(m, "inter_slice", False) else None
    if peak == 0:  # one value: every file is exact
        n, p, data = _try(a, 1, quality=1, model=learned_model, group=lgroup)
        return TargetChoice(float(target_psnr), learned_model, 1, None, lgroup, math.inf, n, data)
    probe = _probe(vol, probe_slices)
    learned = _learned(probe, peak, target_psnr, learned_model, lgroup, top)
    bounded = _bounded(probe, peak, target_psnr, model, group)
    use_learned = learned is not None and learned[1][0] <= bounded[1][0]
    full = a
    if probe is vol or probe.shape == vol.shape:
        got = learned[1] if use_learned else bounded[1]
        if a.ndim == 2:  # the probe was coded as (1, H, W): code the 2-D array itself
            got = _try(a, peak, **({"quality": learned[0], "model": learned_model, "group": lgroup}
                                   if use_learned else {"max_error": bounded[0], "model": model,
                                                        "group": group}))
    else:
        got = None
    if use_learned:
        q = learned[0]
        while True:
            if got is None:
                got = _try(full, peak, quality=q, model=learned_model, group=lgroup)
            if got[1] >= target_psnr or q == top:
                break
            q, got = q + 1, None
        if got[1] >= target_psnr:
            return TargetChoice(float(target_psnr), learned_model, q, None, lgroup, got[1], got[0],
                                got[2])
        d, got = bounded[0], None  # even the top level misses on the whole volume
    else:
        d = bounded[0]
    while True:
        if got is None:
            got = _try(full, peak, max_error=d, model=model, group=group)
        if got[1] >= target_psnr or d == 0:
            return TargetChoice(float(target_psnr), model or zoo.DEFAULT_MODEL, None, d, group,
                                got[1], got[0], got[2])
        d, got = (d * 3) // 4, None


def encode_file_for_psnr(src, dst, target_psnr: float, model: str | None = None,
                         series: str | None = None, group: int | None = None,
                         probe_slices: int = 32, **options) -> tuple[api.CodingReport, TargetChoice]:
    """:func:`bmz.api.encode_file` at the setting :func:`choose_for_psnr` picks for the image
    ``src`` (read whole for the search) → (report, choice). ``options``: ``encode_file``'s
    others (``force``, ``progress``, ``verify``…); the written file is an ordinary ``.bmz``
    with the input's metadata, its slices coded as the choice says."""
    from . import io as bio  # loads nibabel and pydicom: only when a file is read

    vol = bio.read(src, series=series)
    choice = choose_for_psnr(vol.data, target_psnr, model=model, group=group,
                             probe_slices=probe_slices)
    rep = api.encode_file(src, dst, series=series, **choice.options, **options)
    return rep, choice
