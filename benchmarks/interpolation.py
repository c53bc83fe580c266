#!/usr/bin/env python
"""Latent interpolation from stored codes, measured: fidelity, novelty, realism, smoothness.

    python benchmarks/interpolation.py [--data DIR] [--volumes 6] [--pairs 24] [--nway 24]
                                       [--models a,b] [--features model.ts] [--out DIR]

What is generated. ``--volumes`` IXI T1 volumes of ``val/`` (first by name; uint8, 90 × 120 × 120)
are cut to their central ``--slices`` slices and encoded with every shipped model (hyperprior at
quality 5, the factorized families at quality 3 of 4). Mixtures are drawn once (``--seed``) and
made by every method:

* 2-way: ``--pairs`` draws (two different subjects, one slice position), the α path
  0, 1/8, …, 1 (α = 0: the first subject's decode);
* 3-way and 5-way: ``--nway`` draws each (distinct subjects, one slice position), weights from
  Dirichlet(1, …, 1).

Methods: **latent** — bmz's mixture (``bmz.interpolate``: integer mix of the ungained latent ŷ,
fixed-point synthesis); **pixel** — blending the same model's decoded sources voxel by voxel (the
baseline, same information); **pixel (originals)** — blending the original slices (no codec).
For the hyperprior also the alternatives: **float32 synthesis** of the same mixture, **requantised**
(the mixture rounded to quality 5's symbol grid, then the integer synthesis: a mixture that could
be stored as a .bmz), and **whitened ŷ/σ + mixed ẑ** (the hyper-latents mixed too, the result
rescaled by σ(ẑ_mix), float synthesis). For the VQ-VAE: **re-quantised to the codebooks** (the
mixture of code sums snapped back onto the level's residual codebooks: itself a VQ code) and
**continuous latents (encoder)** (the sources' pre-quantisation latents g_a(x) mixed, float
synthesis: needs the original slices, which interpolation from stored files does not have).

Measures (images on the stored scale / 255, i.e. [0, 1]):

* **fidelity** — PSNR and SSIM of a mixture to its source *originals*: to A and B along the α
  path; to the nearest source for n-way mixtures;
* **novelty** — RMSE to the nearest slice of the source set T (all ``--volumes`` × ``--slices``
  original slices, the sources among them) and how often that nearest slice is one of the
  mixture's own sources;
* **sharpness** — mean gradient magnitude over the weighted mean of the sources' (originals):
  blending misaligned anatomy cancels edges (< 1);
* **α-precision, β-recall, authenticity** (Alaa et al., "How faithful is your synthetic data?",
  ICML 2022), simplified and stated here: features φ = the image average-pooled 4× (30 × 30) and
  projected on the 16 leading principal components of R (or a user-supplied TorchScript
  ``--features`` network: nothing is downloaded). α-precision P(α) = share of generated samples
  within the ball around the real mean that holds a fraction α of the real samples; β-recall
  R(β) = share of real samples within the ball around the generated mean that holds a fraction β
  of the generated ones (the hypersphere mirror of α-precision: Alaa et al.'s k-NN-ball β-recall
  gives ≈ 0 for every set at these sample sizes, real slices included, so it says nothing here);
  both summarised as Δ = 1 − 2·mean over a 20-point grid of |P(α) − α| (1 = matched; a set
  contracted towards the mean, as averages are, scores low recall). The real samples here are H,
  the central slices of the held-out val IXI subjects. Authenticity = share of generated samples
  farther from their nearest source slice t* (in T, the source subjects' original slices) than
  t* is from its nearest other slice of T;
* **FD** — Fréchet distance between Gaussian fits of H and the generated set in φ (an FID
  computed in this feature space, not Inception's);
* **smoothness of the α path** — per pair, the RMSE between consecutive images of the 9-point path:
  *uniformity* = largest step / mean step (1 = even), *path ratio* = path length / RMSE(end, start)
  (1 = a straight line, as pixel blending is by construction).

A calibration row, **real slices**: real slices scored as if generated — novelty and authenticity
of the held-out subjects' slices against T, precision / recall / FD of T's own slices against H.

Writes ``interpolation.md``, ``interpolation.csv`` (one row per generated image) and
``interpolation_grid.png`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bmz  # noqa: E402
from bmz import interpolation as ip  # noqa: E402
from bmz import io as bio  # noqa: E402
from bmz.codec import pipeline, zoo  # noqa: E402

ALPHAS = np.linspace(0.0, 1.0, 9)
REPORT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PEAK = 255.0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "val")
    ap.add_argument("--volumes", type=int, default=6, help="IXI volumes mixed (default 6)")
    ap.add_argument("--slices", type=int, default=36, help="central slices per volume (default 36)")
    ap.add_argument("--pairs", type=int, default=24, help="2-way draws (default 24)")
    ap.add_argument("--nway", type=int, default=24, help="3-way and 5-way draws each (default 24)")
    ap.add_argument("--models", default=None, help="comma list (default: every shipped model)")
    ap.add_argument("--features", type=Path, default=None,
                    help="a TorchScript network (B,1,H,W) in [0,1] → (B, D) features for "
                         "precision/recall/authenticity/FD; weights supplied by you, never downloaded")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return ap.parse_args(argv)


# ---- data and draws ----------------------------------------------------------------------------


def central(n: int, k: int) -> slice:
    k = min(k, n)
    a = (n - k) // 2
    return slice(a, a + k)


def load_ixi(folder: Path, n: int, k: int) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    files = sorted((folder / "ixi_nichart" / "t1").glob("*.nii.gz"))
    if len(files) < n:
        raise SystemExit(f"need {n} IXI volumes under {folder}/ixi_nichart/t1, found {len(files)}")
    used = [np.asarray(bio.read(p).data)[central(90, k)] for p in files[:n]]
    held = [np.asarray(bio.read(p).data)[central(90, k)] for p in files[n:]]
    return [p.name.split("_")[0] for p in files[:n]], used, held


def draws(rng, n_vol: int, n_sl: int, pairs: int, nway: int) -> dict:
    out = {"2": [], "3": [], "5": []}
    for _ in range(pairs):
        i, j = rng.choice(n_vol, 2, replace=False)
        out["2"].append(([int(i), int(j)], int(rng.integers(n_sl)), None))
    for n in (3, 5):
        if n > n_vol:
            continue
        for _ in range(nway):
            vs = [int(v) for v in rng.choice(n_vol, n, replace=False)]
            out[str(n)].append((vs, int(rng.integers(n_sl)), rng.dirichlet(np.ones(n))))
    return out


# ---- generation ---------------------------------------------------------------------------------


def unit(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float64) / PEAK


def latent_mix(codes, vs, k, w):
    """bmz's mixtures (rows of w) of slice k of codes[vs] → (stored (m,H,W), unit (m,H,W))."""
    cs = [codes[v] for v in vs]
    wq = ip.quantise_weights(w)
    maps = [ip.mixed_mapping(cs, row) for row in wq]
    v, _ = ip.mix_slice(cs, [k] * len(cs), wq, maps, np.dtype(np.uint8))
    return v, unit(v)


def _float_latent(model, lat):
    q = lat.quality
    off = model._latent_offsets()[q].float()[None, :, None, None]
    return (lat.symbols["y"].float() + off) * torch.exp2(model.log2_inv_gain[q]).float()[None, :, None, None]


def _sources(codes, vs, k, w):
    """What every alternative starts from: (the sources' codes, their model, slice k's latents,
    the slice size, the quantised weights, each row's mixed mapping, the sources' synthesis
    inputs on the latent scale)."""
    cs = [codes[v] for v in vs]
    lats = [c.latents(k) for c in cs]
    wq = ip.quantise_weights(w)
    acts = [c.activations(k).double() * 2.0**-14 for c in cs]
    return cs, cs[0].model, lats, cs[0].hw, wq, [ip.mixed_mapping(cs, row) for row in wq], acts


@torch.no_grad()
def alternatives(codes, vs, k, w) -> dict[str, np.ndarray]:
    """The rejected alternatives for rows of w → name → stored (m, H, W) uint8."""
    cs, model, lats, (H, W), wq, maps, acts = _sources(codes, vs, k, w)
    ys = [_float_latent(model, lat) for lat in lats]
    out = {"float32 synthesis": [], "requantised": [], "whitened ŷ/σ + mixed ẑ": []}
    hyper = hasattr(model, "h_s")
    if hyper:
        med = model._z_medians()[None, :, None, None]
        zs = [lat.symbols["z"].float() + med for lat in lats]
        sig = [torch.exp2(model.h_s(z)) for z in zs]
    q = lats[0].quality
    # the decoder's own inverse of inv_gain (the encoder's gain is a separately trained
    # parameter, not its exact inverse): a weight of 1 gives back that source's symbols
    gain = 1.0 / (model.dec_inv_gain_fx[q].double() / 2.0**14)[None, :, None, None]
    off = model._latent_offsets()[q][None, :, None, None]
    for r, row in enumerate(wq):
        wr = [int(x) / 65536.0 for x in row]
        fin = lambda x: ip.finish_slice(x, row, cs, lats, maps[r], np.dtype(np.uint8))  # noqa: E731
        y = sum(wi * yi for wi, yi in zip(wr, ys))
        out["float32 synthesis"].append(fin(model.g_s(y)[0, 0, :H, :W].double().numpy()))
        a = sum(wi * ai for wi, ai in zip(wr, acts))
        sym = torch.round(a * gain - off).to(torch.int32)
        out["requantised"].append(fin(model.synthesize(sym, q)[0, 0, :H, :W].numpy()))
        if hyper:
            zm = sum(wi * zi for wi, zi in zip(wr, zs))
            eps = sum(wi * (yi / si) for wi, yi, si in zip(wr, ys, sig))
            yw = eps * torch.exp2(model.h_s(zm))
            out["whitened ŷ/σ + mixed ẑ"].append(fin(model.g_s(yw)[0, 0, :H, :W].double().numpy()))
    return {k2: np.stack(v) for k2, v in out.items() if v}


@torch.no_grad()
def vq_alternatives(codes, originals, vs, k, w) -> dict[str, np.ndarray]:
    """The VQ-VAE's two other ways to mix (rows of w) → name → stored (m, H, W) uint8:
    **re-quantised to the codebooks** — bmz's mixture of the code sums ŷ snapped back onto the
    level's residual codebooks (nearest code per stage, as a plain VQ search) and synthesised
    exactly: a mixture that is itself a VQ code, storable as indices; **continuous latents** —
    the sources' pre-quantisation latents y = g_a(x) (which need the original slices, i.e. the
    encoder, not the stored codes) mixed and synthesised in float."""
    cs, model, lats, (H, W), wq, maps, acts = _sources(codes, vs, k, w)
    q = lats[0].quality
    d = model.downsampling
    ys = []
    for o in originals:
        lo, hi = float(o.min()), float(o.max())
        x = torch.from_numpy((o[k].astype(np.float32) - lo) / max(hi - lo, 1.0))
        x = torch.nn.functional.pad(x[None, None], (0, (-W) % d, 0, (-H) % d), mode="replicate")
        ys.append(model.g_a(x).double())
    C = model.codebooks_fx.double() * 2.0**-14
    out = {"re-quantised to the codebooks": [], "continuous latents (encoder)": []}
    for r, row in enumerate(wq):
        wr = [int(x) / 65536.0 for x in row]
        fin = lambda x: ip.finish_slice(x, row, cs, lats, maps[r], np.dtype(np.uint8))  # noqa: E731
        a = sum(wi * ai for wi, ai in zip(wr, acts))
        _, Dm, h, ww = a.shape
        idx, _, _ = model._rvq(a.permute(0, 2, 3, 1).reshape(-1, Dm), C, q + 1)
        sym = model._latent_sum(idx.reshape(q + 1, h, ww)[None])
        out["re-quantised to the codebooks"].append(fin(model.synthesize(sym, q)[0, 0, :H, :W].numpy()))
        y = sum(wi * yi for wi, yi in zip(wr, ys))
        out["continuous latents (encoder)"].append(fin(model.g_s(y.float())[0, 0, :H, :W].double().numpy()))
    return {k2: np.stack(v) for k2, v in out.items()}


# ---- metrics ------------------------------------------------------------------------------------


def psnr(ref, x) -> float:
    m = float(np.mean((ref - x) ** 2))
    return math.inf if m == 0 else 10 * math.log10(1.0 / m)


def ssim(ref, x) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, x, data_range=1.0))


class Reference:
    """The real sets: T (the source subjects' slices: novelty, authenticity) and H (held-out
    subjects' slices: the real distribution for α-precision, β-recall and FD)."""

    def __init__(self, imgs: np.ndarray, ids: list[tuple[int, int]], held: np.ndarray,
                 features: Path | None):
        self.imgs = imgs.reshape(len(imgs), -1)
        self.ids = ids
        self.net = torch.jit.load(str(features)).eval() if features else None
        both = np.concatenate([imgs, held])
        pooled = self._pool(both)
        self.mu = pooled.mean(0)
        if self.net is None:
            _, _, vt = np.linalg.svd(pooled - self.mu, full_matrices=False)
            self.pcs = vt[:16]
        self.f = self.feat(imgs)
        self.held_f = self.feat(held)
        d = _cdist(self.f, self.f)
        np.fill_diagonal(d, np.inf)
        self.nn_real = d.min(1)  # each source slice's distance to its nearest other source slice

    @staticmethod
    def _pool(imgs: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.float32))[:, None]
        return torch.nn.functional.avg_pool2d(t, 4).reshape(len(imgs), -1).double().numpy()

    def feat(self, imgs: np.ndarray) -> np.ndarray:
        imgs = np.asarray(imgs, dtype=np.float64)
        if self.net is not None:
            with torch.no_grad():
                t = torch.from_numpy(imgs.astype(np.float32))[:, None]
                return self.net(t).reshape(len(imgs), -1).double().numpy()
        return (self._pool(imgs) - self.mu) @ self.pcs.T

    def novelty(self, img: np.ndarray) -> tuple[float, int]:
        d = np.sqrt(np.mean((self.imgs - img.reshape(1, -1)) ** 2, axis=1))
        j = int(np.argmin(d))
        return float(d[j]), j


def _cdist(a, b) -> np.ndarray:
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


GRID = np.linspace(0.05, 1.0, 20)


def set_metrics(ref: Reference, gen_f: np.ndarray, k: int = 3) -> dict:
    """α-precision Δ, β-recall Δ and FD of generated features against the held-out real set H;
    authenticity against the source set T."""
    real = ref.held_f
    if len(gen_f) <= k:
        return {}
    c_r = real.mean(0)
    dr, dg_r = np.linalg.norm(real - c_r, axis=1), np.linalg.norm(gen_f - c_r, axis=1)
    P = np.array([np.mean(dg_r <= np.quantile(dr, a)) for a in GRID])
    c_g = gen_f.mean(0)
    dg, dr_g = np.linalg.norm(gen_f - c_g, axis=1), np.linalg.norm(real - c_g, axis=1)
    R = np.array([np.mean(dr_g <= np.quantile(dg, b)) for b in GRID])
    d_gt = _cdist(gen_f, ref.f)
    jt = np.argmin(d_gt, axis=1)
    auth = float(np.mean(d_gt[np.arange(len(gen_f)), jt] > ref.nn_real[jt]))
    return {"alpha_precision": 1 - 2 * float(np.mean(np.abs(P - GRID))),
            "beta_recall": 1 - 2 * float(np.mean(np.abs(R - GRID))),
            "authenticity": auth, "fd": frechet(real, gen_f)}


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s = linalg.sqrtm(ca @ cb)
    return float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * np.real(s)))


def sharpness(x: np.ndarray) -> float:
    """Mean gradient magnitude (forward differences)."""
    return float(np.hypot(np.diff(x, axis=0)[:, :-1], np.diff(x, axis=1)[:-1, :]).mean())


def smoothness(path: np.ndarray) -> tuple[float, float]:
    steps = np.sqrt(np.mean((path[1:] - path[:-1]) ** 2, axis=(1, 2)))
    chord = math.sqrt(float(np.mean((path[-1] - path[0]) ** 2)))
    return float(steps.max() / max(steps.mean(), 1e-12)), float(steps.sum() / max(chord, 1e-12))


# ---- the run -----------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(1)
    names, used, held = load_ixi(args.data, args.volumes, args.slices)
    n_sl = used[0].shape[0]
    R_imgs = np.concatenate([unit(v) for v in used])
    R_ids = [(i, k) for i in range(len(used)) for k in range(n_sl)]
    if not held:
        raise SystemExit("no held-out IXI volume left for the real reference set: lower --volumes")
    H_imgs = np.concatenate([unit(v) for v in held])
    ref = Reference(R_imgs, R_ids, H_imgs, args.features)
    rng = np.random.default_rng(args.seed)
    dr = draws(rng, len(used), n_sl, args.pairs, args.nway)
    models = args.models.split(",") if args.models else sorted(zoo.available_models())
    models = ["hyperprior"] + [m for m in models if m != "hyperprior"] if "hyperprior" in models else models
    quality = {m: 5 if m == "hyperprior" else 3 for m in models}

    rows: list[dict] = []   # one per generated image
    feats: dict[tuple, list] = {}  # (model, method, setting) → features
    smooth: list[dict] = []
    examples: dict[str, np.ndarray] = {}  # method label → 9-image α path of pair 0
    alt_diff: dict[str, list] = {}
    sha = {}

    def record(model, method, setting, draw_i, img, vs, k, w):
        sources = [unit(used[v][k]) for v in vs]
        ps = [psnr(s, img) for s in sources]
        ss = [ssim(s, img) for s in sources]
        nn, j = ref.novelty(img)
        sharp = sharpness(img) / max(sum(wi * sharpness(s) for wi, s in zip(w, sources)), 1e-12)
        row = {"model": model, "method": method, "setting": setting, "draw": draw_i,
               "weights": " ".join(f"{x:.4f}" for x in w),
               "psnr_a": ps[0], "psnr_b": ps[1] if len(ps) > 1 else "",
               "ssim_a": ss[0], "ssim_b": ss[1] if len(ss) > 1 else "",
               "psnr_near": max(ps), "ssim_near": max(ss),
               "psnr_heavy": ps[int(np.argmax(w))], "ssim_heavy": ss[int(np.argmax(w))],
               "nn_rmse": nn, "nn_is_source": int(R_ids[j] in [(v, k) for v in vs]),
               "sharpness": sharp}
        rows.append(row)
        feats.setdefault((model, method, setting), []).append(img)

    def run_pairs(model, method, gen):
        """gen(vs, k) → (9, H, W) unit images along ALPHAS."""
        for d, (vs, k, _) in enumerate(dr["2"]):
            path = gen(vs, k)
            u, pr = smoothness(path)
            smooth.append({"model": model, "method": method, "uniformity": u, "path_ratio": pr})
            if d == 0:
                examples[f"{model}: {method}" if model else method] = path
            for a, img in zip(ALPHAS, path):
                if any(abs(a - r) < 1e-9 for r in REPORT_ALPHAS):
                    record(model, method, f"α={a:g}", d, img, vs, k, [1 - a, a])

    def run_nway(model, method, gen):
        for n in ("3", "5"):
            for d, (vs, k, w) in enumerate(dr[n]):
                record(model, method, f"{n}-way", d, gen(vs, k, w), vs, k, w)

    aw = ip.alpha_weights(ALPHAS)

    def cached_methods(make, on_new=None):
        """name → generator of that method's images, for run_pairs / run_nway; ``make(vs, k,
        weights)`` computes every method of a draw at once (cached), ``on_new`` sees each result."""
        cache: dict[tuple, dict] = {}

        def gen(name):
            def g(vs, k, w=None):
                ww = aw if w is None else w[None]
                key = (tuple(vs), k, None if w is None else tuple(w))
                if key not in cache:
                    cache[key] = make(vs, k, ww)
                    if on_new is not None:
                        on_new(vs, k, ww, cache[key])
                x = unit(cache[key][name])
                return x if w is None else x[0]
            return g
        return gen
    # the model-free baseline: blending the original slices
    run_pairs("", "pixel (originals)",
              lambda vs, k: np.stack([(1 - a) * unit(used[vs[0]][k]) + a * unit(used[vs[1]][k])
                                      for a in ALPHAS]))
    run_nway("", "pixel (originals)",
             lambda vs, k, w: sum(wi * unit(used[v][k]) for wi, v in zip(w, vs)))

    with pipeline.single_thread():
        for m in models:
            tm = time.time()
            q = quality[m]
            blobs = [bmz.compress(v, quality=q, model=m) for v in used]
            codes = [ip.open_codes(b, name=f"{names[i]}.bmz", cache=n_sl) for i, b in enumerate(blobs)]
            sha[m] = codes[0].sha256
            bpp = np.mean([8 * len(b) / v.size for b, v in zip(blobs, used)])
            label = f"{m} q{q}"
            cache2: dict = {}

            def lat_path(vs, k, codes=codes, cache2=cache2):
                v, x = latent_mix(codes, vs, k, aw)
                cache2[(tuple(vs), k)] = v
                return x

            run_pairs(label, "latent", lat_path)
            run_pairs(label, "pixel", lambda vs, k, c=cache2: np.stack(
                [np.rint((1 - a) * c[(tuple(vs), k)][0].astype(float) + a * c[(tuple(vs), k)][-1]) / PEAK
                 for a in ALPHAS]))

            def lat_n(vs, k, w, codes=codes):
                return latent_mix(codes, vs, k, w[None])[1][0]

            def pix_n(vs, k, w, codes=codes):
                dec = latent_mix(codes, vs, k, np.eye(len(vs)))[0].astype(float)
                return np.rint(np.tensordot(w, dec, 1)) / PEAK

            run_nway(label, "latent", lat_n)
            run_nway(label, "pixel", pix_n)
            if m == "hyperprior":
                def diff(vs, k, ww, alts, codes=codes):
                    ref_v = latent_mix(codes, vs, k, ww)[0]
                    for nm, v in alts.items():
                        d = np.abs(v.astype(int) - ref_v.astype(int))
                        alt_diff.setdefault(nm, []).append(
                            (psnr(unit(ref_v), unit(v)), int(d.max()), float(np.mean(d > 0))))

                alt_gen = cached_methods(lambda vs, k, ww, codes=codes: alternatives(codes, vs, k, ww), diff)
                for nm in ("float32 synthesis", "requantised", "whitened ŷ/σ + mixed ẑ"):
                    run_pairs(label, nm, alt_gen(nm))
                    run_nway(label, nm, alt_gen(nm))
            if m == "vqvae":
                vq_gen = cached_methods(lambda vs, k, ww, codes=codes: vq_alternatives(
                    codes, [used[v] for v in vs], vs, k, ww))
                for nm in ("re-quantised to the codebooks", "continuous latents (encoder)"):
                    run_pairs(label, nm, vq_gen(nm))
                    run_nway(label, nm, vq_gen(nm))
            for c in codes:
                c.close()
            print(f"{label}: {bpp:.2f} bpp, {time.time() - tm:.0f} s", flush=True)
            quality[m] = (q, bpp)

    # ---- set metrics ---------------------------------------------------------------------------
    # calibration: real slices scored as if generated — novelty / authenticity of the held-out
    # subjects against T; precision / recall / FD of (120 of) T's own slices against H
    held_imgs = H_imgs
    t_sample = R_imgs[np.random.default_rng(1).choice(len(R_imgs), min(120, len(R_imgs)), replace=False)]
    setm: dict[tuple, dict] = {}
    for key, imgs in feats.items():
        setm[key] = set_metrics(ref, ref.feat(np.stack(imgs)))
    pooled: dict[tuple, dict] = {}
    for (mdl, meth) in {(k[0], k[1]) for k in feats}:
        imgs = [img for (a, b, s), li in feats.items() if (a, b) == (mdl, meth)
                and s in ("α=0.25", "α=0.5", "α=0.75", "3-way", "5-way") for img in li]
        pooled[(mdl, meth)] = set_metrics(ref, ref.feat(np.stack(imgs)))
    held_m = set_metrics(ref, ref.feat(t_sample))
    held_m["authenticity"] = set_metrics(ref, ref.held_f)["authenticity"]
    held_nn = [ref.novelty(img)[0] for img in held_imgs]

    write_outputs(args, rows, setm, pooled, smooth, held_m, held_nn, examples, alt_diff, quality,
                  sha, names, n_sl, dr, time.time() - t0)


# ---- report -------------------------------------------------------------------------------------


def _mean(rows, key):
    v = [r[key] for r in rows if r[key] != "" and np.isfinite(r[key])]
    return float(np.mean(v)) if v else float("nan")


def _f(v, nd=2):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def write_outputs(args, rows, setm, pooled, smooth, held_m, held_nn, examples, alt_diff, quality,
                  sha, names, n_sl, dr, seconds) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_held = len(held_nn)
    fields = list(rows[0].keys())
    with open(out / "interpolation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in r.items()})

    methods = []
    for r in rows:
        key = (r["model"], r["method"])
        if key not in methods:
            methods.append(key)
    interior = ("α=0.25", "α=0.5", "α=0.75", "3-way", "5-way")

    def sel(mdl, meth, settings):
        return [r for r in rows if r["model"] == mdl and r["method"] == meth and r["setting"] in settings]

    def sm(mdl, meth):
        s = [x for x in smooth if x["model"] == mdl and x["method"] == meth]
        return (float(np.mean([x["uniformity"] for x in s])), float(np.mean([x["path_ratio"] for x in s]))) \
            if s else (float("nan"), float("nan"))

    L = []
    L.append("# Latent interpolation from stored codes (`bmz interpolate`)\n")
    L.append(f"`python benchmarks/interpolation.py --volumes {args.volumes} --slices {args.slices} "
             f"--pairs {args.pairs} --nway {args.nway}` — {seconds / 60:.1f} min on one CPU thread. "
             f"Sources: the central {n_sl} slices of {len(names)} IXI T1 volumes of `val/` "
             f"({', '.join(names)}; uint8, 120 × 120 slices), encoded with each shipped model; "
             f"{len(dr['2'])} two-subject pairs (α path 0, 1/8, …, 1), {len(dr['3'])} 3-way and "
             f"{len(dr['5'])} 5-way Dirichlet(1) mixtures of distinct subjects at one slice position. "
             "Method and measures: the docstring of `benchmarks/interpolation.py`; images on the "
             "stored scale / 255. Weights (SHA-256): "
             + ", ".join(f"`{m}` {s[:12]}…" for m, s in sha.items()) + ".\n")
    L.append("**latent** = bmz's mixture (integer mix of the ungained latent ŷ, fixed-point synthesis); "
             "**pixel** = blending that model's decoded sources voxel by voxel; **pixel (originals)** = "
             "blending the original slices. Fidelity = PSNR / SSIM to the nearest source original; "
             "novelty = RMSE to the nearest slice of the source set T (all "
             f"{len(names) * n_sl} original slices of the source subjects) and the share of mixtures "
             "whose nearest slice is one of their own sources; α-precision / β-recall Δ (1 = matched) "
             f"and FD against H, the {n_held} central slices of the held-out val IXI subjects; "
             "authenticity (share of samples not closer to a slice of T than T's slices are to each "
             "other); all four in the 16-PC pooled-pixel feature space"
             + (f" (here: user features `{args.features}`)" if args.features else "")
             + "; path uniformity (largest / mean step, 1 = even) and path ratio (length / chord, "
             "1 = straight) over the 9-point α paths.\n")

    L.append("## Headline: every interior mixture pooled (α = 0.25, 0.5, 0.75, 3-way, 5-way)\n")
    L.append("| model | method | source bpp | PSNR near | SSIM near | sharpness | NN-RMSE | NN is own source | "
             "α-precision Δ | β-recall Δ | authenticity | FD | path uniformity | path ratio |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if held_m:
        L.append(f"| real slices¹ | – | – | – | – | 1 | "
                 f"{_f(float(np.mean(held_nn)), 4)} | – | {_f(held_m['alpha_precision'])} | "
                 f"{_f(held_m['beta_recall'])} | {_f(held_m['authenticity'])} | {_f(held_m['fd'], 1)} | – | – |")
    for mdl, meth in methods:
        rs = sel(mdl, meth, interior)
        pm = pooled.get((mdl, meth), {})
        u, pr = sm(mdl, meth)
        q = quality.get(mdl.split(" ")[0]) if mdl else None
        bpp = _f(q[1]) if isinstance(q, tuple) else "–"
        L.append(f"| {mdl or '–'} | {meth} | {bpp} | {_f(_mean(rs, 'psnr_near'))} | "
                 f"{_f(_mean(rs, 'ssim_near'), 3)} | {_f(_mean(rs, 'sharpness'))} | {_f(_mean(rs, 'nn_rmse'), 4)} | "
                 f"{_f(_mean(rs, 'nn_is_source'))} | {_f(pm.get('alpha_precision'))} | "
                 f"{_f(pm.get('beta_recall'))} | {_f(pm.get('authenticity'))} | {_f(pm.get('fd'), 1)} | "
                 f"{_f(u)} | {_f(pr)} |")
    L.append("")
    L.append(f"¹ Real slices scored as if generated (what a generator of genuinely new anatomy would get): "
             f"novelty and authenticity of the {len(held_nn)} central slices of the held-out subjects "
             "against the source set T; α-precision, β-recall and FD of 120 of T's own original slices "
             "against the held-out set H. Sharpness = mean gradient magnitude of a mixture over the "
             "weighted mean of its sources' (originals).\n")

    L.append("## Which latent space interpolates best: latent mixing minus pixel blending\n")
    L.append("Per model, bmz's latent mixture minus blending the same model's decoded sources (pooled "
             "interior mixtures; positive = the latent mixture is closer to its sources / sharper / "
             "more novel). Source PSNR = the model's decode of the sources (α = 0 and 1).\n")
    L.append("| model | source PSNR | Δ PSNR near | Δ SSIM near | Δ sharpness | Δ NN-RMSE | path uniformity (latent) |")
    L.append("|---|---|---|---|---|---|---|")
    for mdl in [k[0] for k in methods if k[1] == "latent"]:
        lat, pix = sel(mdl, "latent", interior), sel(mdl, "pixel", interior)
        ends = [r["psnr_a"] for r in sel(mdl, "latent", ("α=0",))] + \
            [r["psnr_b"] for r in sel(mdl, "latent", ("α=1",))]
        d = {k: _mean(lat, k) - _mean(pix, k) for k in ("psnr_near", "ssim_near", "sharpness", "nn_rmse")}
        L.append(f"| {mdl} | {_f(float(np.mean(ends)))} | {d['psnr_near']:+.2f} dB | {d['ssim_near']:+.3f} | "
                 f"{d['sharpness']:+.2f} | {d['nn_rmse']:+.4f} | {_f(sm(mdl, 'latent')[0])} |")
    L.append("")

    L.append("## The α path (2-way): fidelity to each source, novelty, authenticity\n")
    L.append("PSNR / SSIM to A and to B (originals); α = 0 is A's decode, α = 1 B's.\n")
    L.append("| model | method | α | PSNR→A | PSNR→B | SSIM→A | SSIM→B | sharpness | NN-RMSE | NN own | authenticity | α-prec Δ |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mdl, meth in methods:
        for a in REPORT_ALPHAS:
            s = f"α={a:g}"
            rs = sel(mdl, meth, (s,))
            m = setm.get((mdl, meth, s), {})
            L.append(f"| {mdl or '–'} | {meth} | {a:g} | {_f(_mean(rs, 'psnr_a'))} | {_f(_mean(rs, 'psnr_b'))} | "
                     f"{_f(_mean(rs, 'ssim_a'), 3)} | {_f(_mean(rs, 'ssim_b'), 3)} | "
                     f"{_f(_mean(rs, 'sharpness'))} | {_f(_mean(rs, 'nn_rmse'), 4)} | {_f(_mean(rs, 'nn_is_source'))} | "
                     f"{_f(m.get('authenticity'))} | {_f(m.get('alpha_precision'))} |")
    L.append("")

    L.append("## n-way mixtures (Dirichlet(1) weights)\n")
    L.append("| model | method | n | PSNR near | SSIM near | PSNR heaviest | sharpness | NN-RMSE | NN own | "
             "α-prec Δ | β-rec Δ | authenticity |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mdl, meth in methods:
        for s in ("3-way", "5-way"):
            rs = sel(mdl, meth, (s,))
            if not rs:
                continue
            m = setm.get((mdl, meth, s), {})
            L.append(f"| {mdl or '–'} | {meth} | {s[0]} | {_f(_mean(rs, 'psnr_near'))} | "
                     f"{_f(_mean(rs, 'ssim_near'), 3)} | {_f(_mean(rs, 'psnr_heavy'))} | "
                     f"{_f(_mean(rs, 'sharpness'))} | {_f(_mean(rs, 'nn_rmse'), 4)} | {_f(_mean(rs, 'nn_is_source'))} | "
                     f"{_f(m.get('alpha_precision'))} | {_f(m.get('beta_recall'))} | {_f(m.get('authenticity'))} |")
    L.append("")

    if alt_diff:
        L.append("## Which latent, which synthesis (hyperprior)\n")
        L.append("Each alternative against bmz's mixture (integer mix of ŷ, fixed-point synthesis) on the "
                 "same draws: PSNR between the two outputs, largest difference in stored units, share of "
                 "voxels that differ (all α-path and n-way images, sources included).\n")
        L.append("| alternative | PSNR to bmz's mixture | max abs diff | voxels differing |")
        L.append("|---|---|---|---|")
        for nm, v in alt_diff.items():
            p = [x[0] for x in v if np.isfinite(x[0])]
            L.append(f"| {nm} | {_f(float(np.mean(p))) if p else 'identical'} | {max(x[1] for x in v)} | "
                     f"{100 * float(np.mean([x[2] for x in v])):.2f} % |")
        L.append("")

    vq = sorted({r["model"] for r in rows if r["model"].startswith("vqvae")})
    if vq:
        interior = ("α=0.25", "α=0.5", "α=0.75", "3-way", "5-way")
        L.append("## Which latent mixes best (vqvae): code sums, re-quantised codes or continuous latents\n")
        L.append("Every interior mixture pooled, the same draws for the three: **latent** is what `bmz "
                 "interpolate` does from stored files (mix the sums of code vectors ŷ, fixed-point "
                 "synthesis); **re-quantised to the codebooks** snaps that mixture back onto the "
                 "level's codebooks (so it could be stored as indices); **continuous latents** mixes "
                 "the pre-quantisation latents g_a(x), which needs the original slices.\n")
        L.append("| method | PSNR near | SSIM near | sharpness | NN-RMSE | path uniformity | path ratio |")
        L.append("|---|---|---|---|---|---|---|")
        best, ratio = None, {}
        for meth in ("latent", "re-quantised to the codebooks", "continuous latents (encoder)"):
            sel = [r for r in rows if r["model"] == vq[0] and r["method"] == meth and r["setting"] in interior]
            sm = [x for x in smooth if x["model"] == vq[0] and x["method"] == meth]
            if not sel:
                continue
            ps, ss = _mean(sel, "psnr_near"), _mean(sel, "ssim_near")
            best = max(best or (ps, meth), (ps, meth))
            ratio[meth] = float(np.mean([x["path_ratio"] for x in sm]))
            L.append(f"| {meth} | {_f(ps)} | {_f(ss, 3)} | {_f(_mean(sel, 'sharpness'))} | "
                     f"{_f(_mean(sel, 'nn_rmse'), 4)} | {_f(float(np.mean([x['uniformity'] for x in sm])))} | "
                     f"{_f(float(np.mean([x['path_ratio'] for x in sm])))} |")
        if best:
            L.append(f"\nMeasured: **{best[1]}** gives the mixtures closest to the sources; the α path's "
                     "length over its chord is "
                     + ", ".join(f"{_f(v)} ({k})" for k, v in ratio.items())
                     + ". The continuous latents need the encoder and the original slices, so `bmz "
                     "interpolate`, which works from stored files alone, mixes the code sums.\n")

    if examples:
        L.append("![example α paths](interpolation_grid.png)\n")
        plot_grid(out / "interpolation_grid.png", examples)
    (out / "interpolation.md").write_text("\n".join(L) + "\n")
    print(f"wrote {out / 'interpolation.md'}, .csv, _grid.png")


def plot_grid(path: Path, examples: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(np.percentile(np.concatenate([v.ravel() for v in examples.values()]), 99.5))
    keys = [k for k in examples if "float32" not in k and "requantised" not in k
            and not (k.endswith(": pixel") and not k.startswith("hyperprior"))]
    fig, axes = plt.subplots(len(keys), len(ALPHAS), figsize=(1.3 * len(ALPHAS), 1.4 * len(keys)),
                             squeeze=False)
    for r, k in enumerate(keys):
        for c, a in enumerate(ALPHAS):
            ax = axes[r, c]
            ax.imshow(examples[k][c], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"α={a:g}", fontsize=8)
            if c == 0:
                ax.set_ylabel(k.replace(": ", "\n"), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
