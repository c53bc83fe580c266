"""Latent interpolation: new slices mixed from the codes stored in ``.bmz`` files.

>>> import bmz
>>> mid = bmz.interpolate(["a.bmz", "b.bmz"], [0.5, 0.5])          # (n_slices, H, W), a's grid
>>> path = bmz.interpolate(["a.bmz", "b.bmz"], [[1 - t, t] for t in (0, .25, .5, .75, 1)])
>>> ds = bmz.interpolation.InterpolationDataset("codes/", n_sources=3, length=10_000, seed=0)

(``bmz.interpolate`` is this module's :func:`interpolate`.) On the command line:
``bmz interpolate A.bmz B.bmz --alpha 0.25,0.5,0.75 -o mix.nii.gz``.

What is mixed
-------------
Only the stored codes are used: each slice's chunk is entropy-decoded with the real decoder
(:func:`bmz.codec.chunks.latents`, the range decoder of ``bmz decode`` stopped before
the synthesis) — nothing is decoded to pixels and encoded again, the analysis transform is never
run. For every model the mixed quantity is the **ungained latent ŷ = (symbol + offset) · inv_gain[q]**,
the synthesis transform's input:

* ``hyperprior``: ŷ only. The hyper-latent ẑ only parametrises the entropy model (the scale of
  each ŷ element), not the image, so it is decoded (it must be, to decode ŷ) and then dropped.
  Rejected alternative, measured (``benchmarks/results/interpolation.md``): mixing the
  *whitened* latent ŷ/σ(ẑ) and the hyper-latents ẑ, then re-scaling by σ(ẑ_mix). It makes the α
  path less even, lowers PSNR to the nearest source and α-precision at α = ½, and needs the
  float hyper-synthesis, for a slightly better FD — not worth it.
* ``factorized``, ``cnn-ae-*`` (factorized priors): ŷ, the only latent there is.

What to expect (same benchmark, for the numbers): with the shipped models a latent mixture is
close to blending the decoded sources voxel by voxel — closest for the factorized families, a
little below it (and less sharp) for the hyperprior. Mixtures are new in the sense of
authenticity (not copies of a real slice; α = 0 and 1 are) but stay nearest to their own
sources and contract towards the mean.

ŷ is on the same scale for every quality of a model (the quality lives in the gain), so files of
different qualities of one model mix; files of different models (or other weights of one model)
have unrelated latent spaces and are refused (:class:`~bmz.errors.ModelMismatchError` naming both
files and models).

How it is computed (exact where it can be)
------------------------------------------
``model.activations(y, q)`` gives ŷ as int64 in units of 2**-14 — the input of the fixed-point
synthesis every decode uses. Weights are quantised to integers ``W_i`` in units of 2**-16 summing
to exactly 2**16 (largest remainders), and the mixture is ``a = round(Σ W_i a_i / Σ W_i)`` in int64,
then the same fixed-point synthesis. So a mixture is bit-identical on every machine, and a weight
of 1 reproduces that file's ``bmz decode`` exactly (tested). The mixture is *not* re-quantised to
the coder's symbol grid: the synthesis input has 2**-14 resolution, far finer than a quantisation
step. Alternatives measured in the benchmark: the float32 synthesis of the float mixture (within
a few stored units of this one — but not bit-exact across machines); re-quantising the mixture
to the quality's symbol grid and the integer synthesis (a second quantisation that makes the α
path step unevenly) — both rejected.

Slices, sizes, intensities
--------------------------
* **Which slices.** The mixture lives on the first file's slice grid: it has as many slices as
  the first file, and output slice ``k`` mixes, from each file ``i`` of ``n_i`` slices, slice
  ``round(k · (n_i − 1) / (n_0 − 1))`` — the same index when the lengths are equal, the same
  relative position otherwise (:func:`match_slices`).
* **Slice size.** Latent grids must align: files whose slices differ in size are refused with an
  :class:`~bmz.errors.InputError` naming both files and sizes (no silent crop or pad).
* **Intensities.** Each file maps its stored range ``[min_i, max_i]`` to [0, 1]; latents code
  images on that scale. A mixture maps back with the mixed mapping ``min = round(Σ w_i min_i)``,
  ``scale = round(Σ w_i (max_i − min_i))`` (integer arithmetic on the quantised weights), and the
  per-slice floor (decoded values near the minimum snap to it) is mixed on the [0, 1] scale. The
  output dtype is the files' dtype (or the smallest that holds them all, when they differ).
* **Constant slices** are stored as one value, without a latent. They enter a mixture on the
  [0, 1] scale: the learned sources are mixed in latent space with their weights renormalised,
  synthesised, and blended with the constants by their total weights (all-constant → a constant).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import io as bio
from ._deps import pyplot
from ._fileutil import atomic_output, check_output_path
from .codec import pipeline
from .errors import FormatError, InputError, ModelMismatchError, OutputError
from .file import BmzFile, slice_indices
from .io.discover import suffix

#: weights are quantised to integers in units of 2**-WEIGHT_BITS summing to exactly 2**WEIGHT_BITS
WEIGHT_BITS = 16
_WSUM = 1 << WEIGHT_BITS
#: tolerance on Σ weights = 1
SUM_TOLERANCE = 1e-6
#: |activation| bound that keeps Σ W_i a_i inside int64 with a wide margin
_ACT_LIMIT = 1 << 44
#: mixtures synthesised per call of the fixed-point synthesis
_BATCH = 8

__all__ = ["interpolate", "open_codes", "LatentCodes", "InterpolationDataset", "validate_weights",
           "alpha_weights", "dirichlet_weights", "quantise_weights", "match_slices",
           "mixed_mapping", "check_compatible", "mix_slice", "finish_slice", "interpolate_files", "output_paths",
           "parse_numbers", "WEIGHT_BITS"]


# --------------------------------------------------------------------------------------------
# one file's codes
# --------------------------------------------------------------------------------------------


class LatentCodes(BmzFile):
    """The stored codes of one ``.bmz`` file (a :class:`~bmz.file.BmzFile`): metadata checked, each
    slice's latents entropy-decoded on demand (the ``cache`` most recent slices are kept). Use as
    a context manager or ``close()``.

    ``src``: a path, ``bytes`` or a binary file object."""

    def __init__(self, src, name: str | None = None, cache: int = 32):
        if name is None and not isinstance(src, (str, os.PathLike)):
            name = "<bytes>"
        super().__init__(src, name, cache=cache)
        self.hw = self.slice_shape
        self.model_name, self.sha256 = self.codec["model"], self.codec["weights_sha256"]
        self.quality = int(self.codec["quality"])

    def activations(self, k: int) -> torch.Tensor | None:
        """Slice ``k``'s ungained latent as the fixed-point synthesis's int64 input, or ``None`` for
        a constant slice."""
        lat = self.latents(k)
        if lat.symbols is None:
            return None
        a = self.model.activations(lat.symbols["y"], lat.quality)
        if a.numel() and int(a.abs().max()) >= _ACT_LIMIT:
            raise FormatError(f"{self.name}: slice {k}: latent values out of the mixable range "
                              "(a damaged or forged stream)")
        return a

    def unit_constant(self, value: int) -> float:
        """A stored value on this file's [0, 1] scale."""
        s = self.mapping["scale"]
        return (value - self.mapping["offset"]) / s if s > 0 else 0.0

    def describe(self) -> str:
        return f"{self.name} (model {self.model_name}, weights {self.sha256[:12]}…)"

    def __enter__(self) -> "LatentCodes":
        return self

    def __repr__(self) -> str:
        return (f"LatentCodes({self.name!r}, {self.n_slices}×{self.hw[0]}×{self.hw[1]}, "
                f"{self.model_name} q{self.quality})")


def open_codes(src, name: str | None = None, cache: int = 32) -> LatentCodes:
    """Open a ``.bmz`` path / bytes / file object for mixing (see :class:`LatentCodes`)."""
    return LatentCodes(src, name=name, cache=cache)


# --------------------------------------------------------------------------------------------
# checks, weights, slice matching, mapping
# --------------------------------------------------------------------------------------------


def check_compatible(codes: Sequence[LatentCodes]) -> None:
    """Refuse codes that cannot be mixed: other models or weights (:class:`ModelMismatchError`),
    other slice sizes (:class:`InputError`); each message names both files."""
    if len(codes) < 2:
        raise InputError(f"interpolation needs at least two .bmz files, got {len(codes)}")
    a = codes[0]
    for b in codes[1:]:
        if (b.model_name, b.sha256) != (a.model_name, a.sha256):
            what = "different models" if b.model_name != a.model_name else \
                "different weights of one model"
            raise ModelMismatchError(
                f"{a.describe()} and {b.describe()} were encoded with {what}: latent codes mix "
                f"only within one model's latent space; encode both with the same model "
                f"(bmz encode --model NAME)")
        if b.hw != a.hw:
            raise InputError(
                f"{a.name} has {a.hw[0]}×{a.hw[1]} slices, {b.name} has {b.hw[0]}×{b.hw[1]} slices: "
                f"latent grids must align, so only slices of one size mix; resample the volumes "
                f"to one slice size before encoding")


def validate_weights(weights, n: int, names: Sequence[str] | None = None) -> np.ndarray:
    """``weights`` (one mixture ``(n,)`` or several ``(m, n)``) → float64 ``(m, n)``: finite,
    non-negative, one per file, each row summing to 1 (within :data:`SUM_TOLERANCE`; then
    renormalised). Raises :class:`InputError` saying which weight or row is wrong."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"weights {weights!r} are not numbers") from None
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[0] == 0:
        raise InputError(f"weights must be one list of {n} numbers or a list of such lists, "
                         f"got shape {w.shape}")
    names = list(names) if names is not None else [f"file {i + 1}" for i in range(n)]
    if w.shape[1] != n:
        raise InputError(f"{w.shape[1]} weights for {n} files ({', '.join(names)}): give one "
                         f"weight per file")
    for r, row in enumerate(w):
        where = f"mixture {r + 1}: " if len(w) > 1 else ""
        for i, v in enumerate(row):
            if not np.isfinite(v):
                raise InputError(f"{where}weight {v} for {names[i]} is not a finite number")
            if v < 0:
                raise InputError(f"{where}weight {v:g} for {names[i]} is negative: weights are "
                                 f"convex-combination coefficients (≥ 0, summing to 1)")
        s = float(row.sum())
        if abs(s - 1.0) > SUM_TOLERANCE:
            raise InputError(f"{where}weights {', '.join(f'{v:g}' for v in row)} sum to {s:.6g}, "
                             f"not 1")
    return w / w.sum(axis=1, keepdims=True)


def alpha_weights(alphas: Iterable[float]) -> np.ndarray:
    """α path between two files → weights ``(1 − α, α)`` per α (α = 0: the first file).
    Raises :class:`InputError` for α outside [0, 1] (extrapolation is not offered)."""
    out = []
    for a in alphas:
        a = float(a)
        if not np.isfinite(a) or not 0.0 <= a <= 1.0:
            raise InputError(f"alpha {a:g} outside [0, 1]: α = 0 is the first file, 1 the second")
        out.append((1.0 - a, a))
    if not out:
        raise InputError("no alpha given")
    return np.asarray(out, dtype=np.float64)


def dirichlet_weights(n: int, k: int, seed: int | None = None, concentration: float = 1.0) -> np.ndarray:
    """``k`` random mixtures of ``n`` files: rows drawn from Dirichlet(concentration · 1ₙ)
    (concentration 1 = uniform on the simplex), reproducible with ``seed``."""
    if k < 1:
        raise InputError(f"--random {k}: ask for at least one mixture")
    if not concentration > 0:
        raise InputError(f"Dirichlet concentration {concentration:g} must be positive")
    return np.random.default_rng(seed).dirichlet(np.full(n, float(concentration)), size=k)


def quantise_weights(w: np.ndarray) -> np.ndarray:
    """Float weights ``(m, n)`` (rows summing to 1) → int64 in units of 2**-16, each row summing
    to exactly 2**16 (largest remainders; a weight of 1 stays exactly 2**16)."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    scaled = w * _WSUM
    q = np.floor(scaled).astype(np.int64)
    for r in range(len(q)):
        short = _WSUM - int(q[r].sum())
        if short > 0:
            order = np.argsort(-(scaled[r] - q[r]), kind="stable")
            q[r, order[:short]] += 1
    return q


def match_slices(n_out: int, n_src: int) -> list[int]:
    """Slice of a file with ``n_src`` slices mixed into each of ``n_out`` output slices: the same
    relative position, ``round(k (n_src − 1) / (n_out − 1))`` (halves up; the middle slice when
    ``n_out`` is 1). Equal lengths give the identity."""
    if n_out == n_src:
        return list(range(n_out))
    if n_out == 1:
        return [(n_src - 1) // 2]
    d = n_out - 1
    return [(2 * k * (n_src - 1) + d) // (2 * d) for k in range(n_out)]


def mixed_mapping(codes: Sequence[LatentCodes], wq: np.ndarray) -> dict:
    """The intensity mapping of a mixture with quantised weights ``wq`` (one row): min and scale
    are the weighted means of the files' (integer arithmetic, halves up)."""
    half = _WSUM // 2
    lo = (sum(int(w) * c.mapping["min"] for w, c in zip(wq, codes)) + half) // _WSUM
    sc = (sum(int(w) * c.mapping["scale"] for w, c in zip(wq, codes)) + half) // _WSUM
    return pipeline.mapping_for_range(lo, lo + sc)


def output_dtype(codes: Sequence[LatentCodes]) -> np.dtype:
    dts = {np.dtype(c.dtype) for c in codes}
    return dts.pop() if len(dts) == 1 else np.result_type(*dts)


# --------------------------------------------------------------------------------------------
# mixing one slice
# --------------------------------------------------------------------------------------------


def mix_slice(codes: Sequence[LatentCodes], ks: Sequence[int], wq: np.ndarray,
              mappings: Sequence[dict], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Mix slice ``ks[i]`` of each ``codes[i]`` with every row of the quantised weights ``wq``
    ``(m, n)`` → (stored values ``(m, H, W)`` in ``dtype``, each row mapped back with
    ``mappings[r]``; the mixtures on the [0, 1] scale, float64 ``(m, H, W)``, before mapping).

    Run inside :func:`bmz.codec.pipeline.single_thread` for speed (results do not depend on it)."""
    wq = np.atleast_2d(np.asarray(wq, dtype=np.int64))
    m, n = wq.shape
    H, W = codes[0].hw
    lats = [c.latents(k) for c, k in zip(codes, ks)]
    learned = [i for i in range(n) if lats[i].symbols is not None]
    acts = {i: codes[i].activations(ks[i]) for i in learned if wq[:, i].any()}
    x = np.zeros((m, H, W), dtype=np.float64)
    # learned part: one integer mixture per row, synthesised in batches
    rows = [r for r in range(m) if any(wq[r, i] for i in learned)]
    for b in range(0, len(rows), _BATCH):
        batch = rows[b:b + _BATCH]
        mixes = []
        for r in batch:
            wl = int(sum(int(wq[r, i]) for i in learned))
            acc = None
            for i in learned:
                if wq[r, i]:
                    t = acts[i] * int(wq[r, i])
                    acc = t if acc is None else acc + t
            mixes.append(torch.div(acc + wl // 2, wl, rounding_mode="floor"))
        out = pipeline.synthesize_latents(codes[0].model, torch.cat(mixes), (H, W))
        for j, r in enumerate(batch):
            wl = int(sum(int(wq[r, i]) for i in learned))
            x[r] = out[j] if wl == _WSUM else out[j] * (wl / _WSUM)
    # constant sources, on the [0, 1] scale
    for i in range(n):
        if lats[i].symbols is None:
            c = codes[i].unit_constant(lats[i].value)
            for r in range(m):
                if wq[r, i]:
                    x[r] += (int(wq[r, i]) / _WSUM) * c
    v = np.empty((m, H, W), dtype=dtype)
    for r in range(m):
        v[r] = finish_slice(x[r], wq[r], codes, lats, mappings[r], dtype)
    return v, x


def finish_slice(x: np.ndarray, wq_row, codes: Sequence[LatentCodes], lats, mapping: dict,
                 dtype) -> np.ndarray:
    """A mixture ``x`` on the [0, 1] scale → stored values: the mixed ``mapping`` (as a decode
    maps back, clipped to its range), then the floor mixed on the [0, 1] scale — each learned
    source's ``floor / scale`` weighted by its weight (``lats``: the sources' SliceLatents)."""
    out = pipeline.from_unit(x, mapping, dtype)
    funit = sum((int(w) / _WSUM) * (lat.floor / c.mapping["scale"])
                for w, c, lat in zip(wq_row, codes, lats)
                if w and lat.symbols is not None and c.mapping["scale"] > 0)
    floor = int(round(funit * mapping["scale"]))
    if floor:
        out[out <= mapping["min"] + floor] = mapping["min"]
    return out


# --------------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------------


def _as_codes(items) -> tuple[list[LatentCodes], list[LatentCodes]]:
    """→ (codes, the ones opened here, to close)."""
    if isinstance(items, (str, os.PathLike, bytes, LatentCodes)):
        raise InputError("interpolate() takes a list of .bmz files (paths, bytes or LatentCodes)")
    codes, opened = [], []
    try:
        for i, it in enumerate(items):
            if isinstance(it, LatentCodes):
                codes.append(it)
            else:
                c = open_codes(it, None if isinstance(it, (str, os.PathLike)) else f"<input {i + 1}>")
                codes.append(c)
                opened.append(c)
    except BaseException:
        for c in opened:
            c.close()
        raise
    return codes, opened


def interpolate(codes, weights, slices=None, progress: bool = False) -> np.ndarray:
    """Mix the latent codes of ``.bmz`` files and synthesise the mixture(s).

    ``codes``: two or more ``.bmz`` paths, ``bytes`` or :class:`LatentCodes` of one model.
    ``weights``: one weight per file (``(n,)``, non-negative, summing to 1) → an array
    ``(n_slices, H, W)``; or several mixtures ``(m, n)`` → ``(m, n_slices, H, W)``.
    ``slices``: output slices to compute (int, slice or indices on the first file's grid).

    The output is on the first file's slice grid, in the files' dtype, mapped back with the
    mixed intensity mapping (see the module docstring). A weight of 1 gives exactly
    ``bmz.decompress`` of that file (at the matched slices).

    Raises :class:`ModelMismatchError` (different models), :class:`InputError` (weights, slice
    sizes), :class:`FormatError` (a damaged file, naming it and the slice)."""
    cs, opened = _as_codes(codes)
    try:
        check_compatible(cs)
        single = np.asarray(weights, dtype=object).ndim == 1
        w = validate_weights(weights, len(cs), [c.name for c in cs])
        wq = quantise_weights(w)
        n0 = cs[0].n_slices
        ks = slice_indices(n0, slices)
        match = [match_slices(n0, c.n_slices) for c in cs]
        dtype = output_dtype(cs)
        maps = [mixed_mapping(cs, row) for row in wq]
        out = np.empty((len(wq), len(ks), *cs[0].hw), dtype=dtype)
        it: Iterable = enumerate(ks)
        if progress and len(ks) > 1:
            it = tqdm(it, total=len(ks), desc="interpolate", unit="slice", leave=False)
        with pipeline.single_thread():
            for j, k in it:
                out[:, j], _ = mix_slice(cs, [mt[k] for mt in match], wq, maps, dtype)
    finally:
        for c in opened:
            c.close()
    return out[0] if single else out


# --------------------------------------------------------------------------------------------
# files out (the CLI's `bmz interpolate`)
# --------------------------------------------------------------------------------------------


def parse_numbers(text: str, option: str) -> list[float]:
    """``"0.2,0.3,0.5"`` → floats; an :class:`InputError` naming ``option`` otherwise."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.25,0.5,0.75")
    return vals


def output_paths(dst, labels: Sequence[str]) -> list[Path]:
    """Where :func:`interpolate_files` writes: ``.png`` and ``.npy`` one file; NIfTI one file per
    mixture (``dst`` itself for one, ``STEM_LABEL.nii.gz`` for several)."""
    p = Path(os.fspath(dst))
    sfx = suffix(p)
    if sfx not in (".nii", ".nii.gz", ".npy", ".png"):
        raise OutputError(f"{p}: cannot write '{sfx or p.name}'; write .nii, .nii.gz, .npy or "
                          ".png (a grid of sources and mixtures)")
    if sfx in (".npy", ".png") or len(labels) == 1:
        return [p]
    stem = p.name[: len(p.name) - len(sfx)]
    return [p.with_name(f"{stem}_{lab}{sfx}") for lab in labels]


def interpolate_files(files: Sequence, dst, weights, labels: Sequence[str] | None = None,
                      slices=None, force: bool = False, progress: bool = False) -> list[Path]:
    """Mix ``.bmz`` ``files`` with each row of ``weights`` and write ``dst`` by its suffix:

    * ``.nii`` / ``.nii.gz`` — one volume per mixture (``STEM_LABEL.nii.gz`` when several), on the
      first file's grid: a NIfTI-origin first file lends its header (affine, units); others get a
      new header, as ``bmz decode`` writes them;
    * ``.npy`` — one array: ``(n_slices, H, W)``, or ``(m, n_slices, H, W)`` for several mixtures;
    * ``.png`` — a grid: a row per slice (``slices``, default the first file's middle slice), the
      sources (their decodes at the matched slices) then the mixtures, each on its own range.

    Every output is checked before the work and written atomically. → the paths written."""
    cs, opened = _as_codes(files)
    try:
        check_compatible(cs)
        w = validate_weights(weights, len(cs), [c.name for c in cs])
        labels = list(labels) if labels is not None else [f"m{i + 1}" for i in range(len(w))]
        paths = output_paths(dst, labels)
        for p in paths:
            check_output_path(p, force=force)
        sfx = suffix(paths[0])
        n0 = cs[0].n_slices
        if sfx == ".png":
            ks = slice_indices(n0, slices if slices is not None else [(n0 - 1) // 2])
            _write_grid(cs, w, labels, ks, paths[0], force)
            return paths
        arr = interpolate(cs, w, slices=slices, progress=progress)  # (m, k, H, W)
        if sfx == ".npy":
            with atomic_output(paths[0], force=force) as f:
                np.save(f, arr[0] if len(w) == 1 else arr, allow_pickle=False)
            return paths
        c0 = cs[0]
        same = np.dtype(arr.dtype) == np.dtype(c0.dtype)
        source = c0.meta.get("source", "numpy") if same else "numpy"
        meta = c0.meta.get("source_meta", {}) if same and source in ("nifti", "dicom") else {}
        for p, vol in zip(paths, arr):
            bio.write(bio.Volume(data=vol, source=source, meta=meta), p, force=force)
        return paths
    finally:
        for c in opened:
            c.close()


def _write_grid(cs: list[LatentCodes], w: np.ndarray, labels: Sequence[str], ks: list[int],
                dst: Path, force: bool) -> None:
    """The PNG grid of :func:`interpolate_files`."""
    plt = pyplot("bmz interpolate's PNG grid")

    n = len(cs)
    allw = np.vstack([np.eye(n), w])
    wq = quantise_weights(allw)
    maps = [mixed_mapping(cs, row) for row in wq]
    dtype = output_dtype(cs)
    match = [match_slices(cs[0].n_slices, c.n_slices) for c in cs]
    cols = len(allw)
    H, W = cs[0].hw
    size = 1.8
    fig, axes = plt.subplots(len(ks), cols, squeeze=False,
                             figsize=(size * cols * max(0.6, W / H), size * len(ks) + 0.5))
    with pipeline.single_thread():
        shown = []
        for k in ks:
            src_ks = [mt[k] for mt in match]
            v, _ = mix_slice(cs, src_ks, wq, maps, dtype)
            shown.append((src_ks, [pipeline.to_unit(v[j], maps[j]) for j in range(cols)]))
    # one display window for the whole grid: [0, 99.5th percentile] of the [0, 1] scale
    top = float(np.percentile(np.stack([u for _, us in shown for u in us]), 99.5)) or 1.0
    for r, (k, (src_ks, us)) in enumerate(zip(ks, shown)):
        for j in range(cols):
            ax = axes[r, j]
            ax.imshow(us[j], cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(Path(cs[j].name).name if j < n else f"{labels[j - n]}\n"
                             + ", ".join(f"{x:.2f}" for x in allw[j]), fontsize=7)
            if j == 0:
                ax.set_ylabel(f"slice {k}", fontsize=7)
            elif j < n and src_ks[j] != k:
                ax.set_xlabel(f"its slice {src_ks[j]}", fontsize=6)
    fig.tight_layout()
    with atomic_output(dst, force=force) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# a training-time Dataset
# --------------------------------------------------------------------------------------------


class InterpolationDataset(torch.utils.data.Dataset):
    """Mixed slices from a folder of ``.bmz`` files, synthesised on the fly, for augmentation.

    Item ``i`` is a float32 tensor ``(1, H, W)`` on the [0, 1] scale (the mixture's stored values
    under its mixed mapping, as ``to_unit`` gives the network real slices): ``n_sources`` distinct
    files of one group (same model, weights and slice size) are drawn, a relative slice position
    ``t`` ~ U(0, 1) (each file's slice nearest to it), and weights — for two sources
    ``(1 − α, α)`` with α ~ U(``alpha_range``), for more Dirichlet(``concentration`` · 1).
    Everything is drawn from ``numpy.random.default_rng([seed, epoch, i])``, and the synthesis
    is bit-exact, so an item is the same array in any process, worker or order;
    :meth:`set_epoch` gives a fresh set of mixtures per epoch.

    ``files``: a folder (searched recursively for ``*.bmz``) or a list of paths. Groups with fewer
    than ``n_sources`` files are left out; none left is an :class:`InputError`.
    ``return_info``: items are ``(image, {"files", "slices", "weights"})`` instead.
    ``transform``: applied to the image tensor."""

    def __init__(self, files, n_sources: int = 2, length: int = 1000, seed: int = 0,
                 alpha_range: tuple[float, float] = (0.0, 1.0), concentration: float = 1.0,
                 return_info: bool = False, transform=None, cache: int = 64):
        if isinstance(files, (str, os.PathLike)):
            root = Path(files)
            if not root.is_dir():
                raise InputError(f"{root}: not a folder of .bmz files")
            paths = sorted(str(p) for p in root.rglob("*.bmz"))
            if not paths:
                raise InputError(f"{root}: no .bmz files found")
        else:
            paths = [os.fspath(p) for p in files]
        if int(n_sources) < 2:
            raise InputError(f"n_sources = {n_sources}: a mixture needs at least two sources")
        lo, hi = (float(v) for v in alpha_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise InputError(f"alpha_range {alpha_range!r} must satisfy 0 ≤ low ≤ high ≤ 1")
        if not concentration > 0:
            raise InputError(f"concentration {concentration:g} must be positive")
        self.n_sources, self.length, self.seed = int(n_sources), int(length), int(seed)
        self.alpha_range, self.concentration = (lo, hi), float(concentration)
        self.return_info, self.transform, self.cache = return_info, transform, int(cache)
        self.epoch = 0
        groups: dict[tuple, list[str]] = {}
        for p in paths:
            with open_codes(p, cache=0) as c:
                groups.setdefault((c.model_name, c.sha256, c.hw), []).append(p)
        self.groups = [g for _, g in sorted(groups.items()) if len(g) >= self.n_sources]
        if not self.groups:
            sizes = ", ".join(f"{k[0]} {k[2][0]}×{k[2][1]}: {len(v)}" for k, v in sorted(groups.items()))
            raise InputError(f"no group of at least {self.n_sources} .bmz files of one model and "
                             f"slice size among {len(paths)} files ({sizes})")
        self._sizes = np.array([len(g) for g in self.groups], dtype=np.float64)
        self._open: dict[str, LatentCodes] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _codes(self, path: str) -> LatentCodes:
        if self._pid != os.getpid():  # a DataLoader worker: its own readers
            self._open, self._pid = {}, os.getpid()
        c = self._open.get(path)
        if c is None:
            c = self._open[path] = open_codes(path, cache=self.cache)
        return c

    def draw(self, i: int) -> tuple[list[str], float, np.ndarray]:
        """Item ``i``'s files, relative slice position and weights (no decoding)."""
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} out of range ({self.length})")
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        g = self.groups[int(rng.choice(len(self.groups), p=self._sizes / self._sizes.sum()))]
        files = [g[j] for j in rng.choice(len(g), size=self.n_sources, replace=False)]
        t = float(rng.uniform())
        if self.n_sources == 2:
            a = float(rng.uniform(*self.alpha_range))
            w = np.array([1.0 - a, a])
        else:
            w = rng.dirichlet(np.full(self.n_sources, self.concentration))
        return files, t, w

    def __getitem__(self, i: int):
        files, t, w = self.draw(int(i))
        cs = [self._codes(p) for p in files]
        ks = [int(round(t * (c.n_slices - 1))) for c in cs]
        wq = quantise_weights(w)
        mp = mixed_mapping(cs, wq[0])
        with pipeline.single_thread():
            v, _ = mix_slice(cs, ks, wq, [mp], np.int64)
        img = torch.from_numpy(pipeline.to_unit(v[0], mp))[None]
        if self.transform is not None:
            img = self.transform(img)
        if self.return_info:
            return img, {"files": files, "slices": ks, "weights": torch.from_numpy(wq[0] / _WSUM)}
        return img

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_open"] = {}
        return d

    def close(self) -> None:
        for c in self._open.values():
            c.close()
        self._open = {}


