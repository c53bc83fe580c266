"""``bmz train``: rate–distortion training on real MRI, interruptible and exactly resumable.

Data: every integer volume bmz can read under the given folders (NIfTI, DICOM series, ``.npy``),
at stored precision, mapped to [0, 1] with the codec's own intensity mapping
(:func:`bmz.codec.pipeline.intensity_mapping`). Volumes are drawn at random, non-IXI ones four times as
often as IXI ones (so that the few high-bit-depth series are not drowned by 100 8-bit IXI subjects), then a slice with content, then a
random 128² patch with random flips/transposition.

Loss, per sample with quality index q drawn uniformly: ``bpp + λ[q] · 255² · MSE`` (CompressAI's
convention, MSE on the [0, 1] scale), plus the entropy bottleneck's auxiliary loss on its own
optimiser. Checkpoints (model, both optimisers, scheduler, every RNG, step, data-sampler state) are
written atomically every ``--checkpoint-minutes`` and at the end; ``--resume`` continues exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import io as bio
from .codec import pipeline, zoo
from .codec.fixedpoint import FixedPointError
from .codec.models import build_model
from .io.discover import inputs

log = logging.getLogger("bmz.train")

PATCH = 128
#: learning-rate multiplier of the entropy models' density parameters (new runs; see train())
DENSITY_LR_MULT = 10.0
MIN_CONTENT = 0.05  # fraction of a slice above 5 % of the volume range to count as content


@dataclass
class TrainVolume:
    name: str
    slices: np.ndarray  # float32 (n, H, W) in [0, 1], only slices with content
    bits: int
    positions: np.ndarray | None = None  # each kept slice's index in the volume (adjacency)
    scale: int = 0  # stored max − min (the intensity mapping's scale)


def load_pack(path: Path) -> list[TrainVolume]:
    """Volumes from a pack written by ``benchmarks/pack_train.py`` (stored values − min as
    uint16 with their scale: the same [0, 1] slices :func:`load_volumes` makes)."""
    z = np.load(path)
    ids = sorted({k.split("_")[0] for k in z.files}, key=lambda k: int(k[1:]))
    out = []
    for i in ids:
        scale, bits = (int(v) for v in z[f"{i}_meta"])
        x = z[f"{i}_data"].astype(np.float32) / np.float32(scale)
        out.append(TrainVolume(str(z[f"{i}_name"]), x, bits, z[f"{i}_pos"].astype(np.int64), scale))
    return out


def _discover(folders: list[str]) -> list[tuple[str, Path]]:
    """Candidate inputs, sorted by path: ``("file", path)`` for a file (a ``.npz`` pack, a volume)
    given itself, and what :func:`bmz.io.discover.inputs` finds under a folder given
    (``"volume"`` files, ``"dicom"`` folders)."""
    out: list[tuple[str, Path]] = []
    for folder in folders:
        root = Path(folder)
        if root.is_file() or root.suffix == ".npz":
            out.append(("file", root))
        else:
            out += inputs(root)
    return sorted(set(out), key=lambda found: found[1])


def _read(path: Path, kind: str) -> list[tuple[str, np.ndarray]]:
    """The volumes of one input, named: a DICOM folder gives each of its series (several are
    named ``folder#SeriesNumber``); an input that cannot be read is skipped, logged."""
    try:
        series = bio.list_series(path) if kind == "dicom" else []
        if len(series) <= 1:
            return [(str(path), bio.read(path).data)]
        return [(f"{path}#{s['series_number'] if s['series_number'] is not None else s['uid']}",
                 bio.read(path, series=s["uid"]).data) for s in series]
    except Exception as e:  # unreadable or unsupported inputs are skipped, logged
        log.info("skip %s: %s", path, str(e).splitlines()[0][:200])
        return []


def load_volumes(folders: list[str], exclude: tuple[str, ...] = ("phantom",)) -> list[TrainVolume]:
    """The training volumes of ``folders`` (see the module docstring); inputs whose path holds
    one of ``exclude`` are skipped."""
    vols = []
    for kind, path in _discover(folders):
        if any(e in str(path).lower() for e in exclude):
            continue
        if path.suffix == ".npz":
            vols += load_pack(path)
            continue
        for name, data in _read(path, kind):
            vol = _train_volume(name, data)
            if vol is not None:
                vols.append(vol)
    return vols


def _train_volume(name: str, data: np.ndarray) -> TrainVolume | None:
    """A volume's content slices in [0, 1], or ``None`` for one too small or without content."""
    if data.ndim != 3 or min(data.shape[1:]) < 32:
        return None
    mapping = pipeline.intensity_mapping(data)
    if mapping["scale"] <= 0:
        return None
    x = pipeline.to_unit(data, mapping)
    keep = np.asarray([(s > 0.05).mean() >= MIN_CONTENT for s in x])
    if not keep.any():
        return None
    log.info("use %s: %s slices %s, %d bits", name, int(np.sum(keep)), data.shape[1:], mapping["bits"])
    return TrainVolume(name, x[keep].astype(np.float32), mapping["bits"], np.flatnonzero(keep),
                       mapping["scale"])


class PatchSampler:
    """Draws training batches; its whole state is one numpy Generator (checkpointed)."""

    def __init__(self, vols: list[TrainVolume], seed: int, patch: int = PATCH):
        self.vols = vols
        self.size = int(patch)
        self.rng = np.random.default_rng(seed)
        # IXI (100 near-identical 8-bit subjects) must not drown the other scanners and bit depths
        w = np.array([1.0 if "ixi" in v.name.lower() else 4.0 for v in vols])
        self.p = w / w.sum()

    def _pairable(self) -> np.ndarray:
        """Per volume, the indices ``k`` of kept slices whose slice ``k − 1`` is the volume's
        previous slice (what a group of consecutive slices can start from)."""
        if getattr(self, "_pairs", None) is None:
            self._pairs = []
            for v in self.vols:
                pos = v.positions if v.positions is not None else np.arange(len(v.slices))
                self._pairs.append(np.flatnonzero(np.diff(pos) == 1) + 1)
        return self._pairs

    def patch(self, depth: int = 1) -> np.ndarray:
        """One ``(depth, P, P)`` patch (``P = self.size``): ``depth`` consecutive slices of one
        volume (the same crop and flips), drawn from volumes that have such runs."""
        p = self.p
        if depth > 1:
            ok = np.array([len(k) > 0 for k in self._pairable()], dtype=float)
            p = p * ok / (p * ok).sum()
        vi = self.rng.choice(len(self.vols), p=p)
        v = self.vols[vi]
        if depth > 1:  # a run of depth consecutive slices ending at k (runs of 2 are checked)
            cands = self._pairable()[vi]
            k = int(cands[self.rng.integers(len(cands))])
            ks = [max(0, k - depth + 1 + i) for i in range(depth)]
            s = v.slices[ks]
        else:
            s = v.slices[self.rng.integers(len(v.slices))][None]
        _, H, W = s.shape
        P = self.size
        ph, pw = max(0, P - H), max(0, P - W)
        if ph or pw:
            s = np.pad(s, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")
            _, H, W = s.shape
        i, j = self.rng.integers(H - P + 1), self.rng.integers(W - P + 1)
        p = s[:, i:i + P, j:j + P]
        if self.rng.random() < 0.5:
            p = p[:, :, ::-1]
        if self.rng.random() < 0.5:
            p = p[:, ::-1, :]
        if self.rng.random() < 0.5:
            p = p.transpose(0, 2, 1)
        return np.ascontiguousarray(p)

    def batch(self, n: int, n_qualities: int, depth: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, depth, P, P)`` patches and ``n`` quality indices."""
        x = np.stack([self.patch(depth) for _ in range(n)])
        q = self.rng.integers(n_qualities, size=n)
        return torch.from_numpy(x), torch.from_numpy(q)


def rd_loss(model, out: dict, x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, dict]:
    n_pix = x[0].numel()  # all slices of a sample (several for inter-slice models)
    bits = sum(torch.log2(l).sum(dim=(1, 2, 3)) for l in out["likelihoods"].values())
    bpp = -bits / n_pix
    mse = ((out["x_hat"] - x) ** 2).mean(dim=(1, 2, 3))
    if getattr(model, "distortion", "mse") == "psnr":
        # a decoder trained on a frozen encoder's latents: rate and distortion have disjoint
        # parameters, and -PSNR weighs every quality alike (λ·MSE lets the top λ's dominate)
        loss = bpp + 10.0 * torch.log10(mse.clamp_min(1e-12))
    else:
        lam = torch.tensor(model.lambdas, dtype=torch.float32, device=q.device)[q]
        loss = bpp + lam * 255.0**2 * mse
    if "extra_loss" in out:  # a model's own training term (the VQ-VAE's commitment loss)
        loss = loss + out["extra_loss"]
    loss = loss.mean()
    return loss, {"bpp": bpp.mean().item(), "mse": mse.mean().item(), "loss": loss.item()}


def lr_factor(step: int, total: int) -> float:
    """Constant, then ×0.1 for the last 10 % of the planned steps."""
    return 1.0 if step < 0.9 * total else 0.1


def _rng_state(sampler: PatchSampler) -> dict:
    return {"torch": torch.get_rng_state(), "numpy_sampler": sampler.rng.bit_generator.state,
            "python": random.getstate(), "numpy_global": np.random.get_state()}


def _set_rng_state(state: dict, sampler: PatchSampler) -> None:
    torch.set_rng_state(state["torch"])
    sampler.rng.bit_generator.state = state["numpy_sampler"]
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def _optimizer_groups(model, groups: int) -> list[list[str]]:
    """Names of the parameters of each optimiser group, in the optimiser's order.

    The factorized priors' density parameters start wide (CompressAI's init_scale 10) and learn
    slowly at the transforms' rate: new runs give them ``DENSITY_LR_MULT``× the learning rate, in a
    second group (checkpoints written with one group resume with one). The entropy bottlenecks'
    ``quantiles`` have their own (auxiliary) optimiser."""
    names = [n for n, _ in model.named_parameters() if not n.endswith(".quantiles")]
    if groups == 1:
        return [names]
    dens = {n for n in names if "entropy_bottleneck" in n}
    return [[n for n in names if n not in dens], [n for n in names if n in dens]]


def extend_qualities(state: dict, lambdas: list[float]) -> dict:
    """A training checkpoint of a variable-rate model, given more quality levels.

    ``lambdas`` must hold the checkpoint's λ as one contiguous run, with new λ below and/or above
    it (ascending). Every trained weight is kept; each parameter with one row per quality (the gain
    units) gets rows for the new levels: ``log2_gain`` is the nearest trained row plus
    ``0.5 · log2(λ_new / λ_nearest)`` (the quantisation step ∝ λ^-1/2 of high-rate theory), any
    other per-quality parameter (``log2_inv_gain``) copies its nearest trained row. The optimiser's
    moments follow (first moment 0, second moment of the nearest row); buffers that ``freeze()``
    derives start empty. Models whose per-quality state is more than rows of a tensor (one entropy
    model per quality) are refused.

    (Extrapolating the trained gains' own slope instead went too far down for the flagship: its
    lowest trained levels drop 1.1–1.3 per level where channels switch off, and levels started
    there coded every latent as zero, where the gradient could not lift them.)"""
    old = [float(v) for v in state["model_config"]["lambdas"]]
    new = [float(v) for v in lambdas]
    if new != sorted(new) or len(set(new)) != len(new):
        raise ValueError(f"λ must be distinct and ascending, got {new}")
    k0 = next((k for k in range(len(new) - len(old) + 1) if new[k:k + len(old)] == old), None)
    if k0 is None:
        raise ValueError(f"the new λ {new} do not contain the checkpoint's {old} as one run")
    nq_old, nq_new = len(old), len(new)
    src = [min(max(i - k0, 0), nq_old - 1) for i in range(nq_new)]  # nearest trained row

    def widen(name: str, t: torch.Tensor, moment: str | None = None) -> torch.Tensor:
        out = t[src].clone()
        if moment == "exp_avg":
            out[:k0] = 0
            out[k0 + nq_old:] = 0
        elif moment is None and name.endswith("log2_gain"):
            for i in range(nq_new):
                if not k0 <= i < k0 + nq_old:
                    out[i] = t[src[i]] + 0.5 * math.log2(new[i] / old[src[i]])
        return out

    model = build_model(state["model_name"], **{**state["model_config"], "lambdas": new})
    if not getattr(model, "levels_extendable", True):
        raise ValueError(f"{state['model_name']}: quality levels cannot be added to this model "
                         f"(its levels are trained state that new rows would not continue)")
    fresh = model.state_dict()
    params = dict(model.named_parameters())
    missing = [k for k in fresh if k not in state["model"] and not k.startswith(_DERIVED)]
    if missing:
        raise ValueError(f"{state['model_name']}: quality levels cannot be added to this model "
                         f"(new per-quality state: {', '.join(missing[:4])})")
    sd, widened = {}, set()
    for k, v in state["model"].items():
        f = fresh.get(k)
        if f is None or f.shape == v.shape:
            sd[k] = v
        elif v.shape[0] == nq_old and f.shape == (nq_new, *v.shape[1:]):
            if k in params:
                sd[k] = widen(k, v)
                widened.add(k)
            else:  # derived by freeze() from the parameters
                sd[k] = f
        else:
            raise ValueError(f"{k}: shape {tuple(v.shape)} cannot become {tuple(f.shape)}")
    opt = copy.deepcopy(state["opt"])
    order = [n for names in _optimizer_groups(model, len(opt["param_groups"])) for n in names]
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    for i, name in zip(ids, order):
        if name in widened and i in opt["state"]:
            st = opt["state"][i]
            for m in ("exp_avg", "exp_avg_sq"):
                st[m] = widen(name, st[m], moment=m)
    out = dict(state, model=sd, opt=opt, model_config={**state["model_config"], "lambdas": new})
    return out


def validate(model, val: list[np.ndarray], qualities: list[int]) -> dict:
    """Estimated bpp and PSNR on fixed validation slices (padded to the model's downsampling multiple)."""
    model.eval()
    device = next(model.parameters()).device
    res = {}
    for qi in qualities:
        bpp_sum, mse_sum, n_sum = 0.0, 0.0, 0
        for s in val:
            x = torch.from_numpy(pipeline.pad_to_multiple(s, model.downsampling))[None, None].to(device)
            out = model(x, torch.tensor([qi], device=device))
            H, W = s.shape
            bits = sum(-torch.log2(l).sum() for l in out["likelihoods"].values()).item()
            bpp_sum += bits
            mse_sum += ((out["x_hat"][0, 0, :H, :W].clamp(0, 1).cpu() - torch.from_numpy(s)) ** 2).sum().item()
            n_sum += H * W
        mse = mse_sum / n_sum
        res[f"q{qi}"] = {"bpp": bpp_sum / n_sum, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}
    model.train()
    return res


#: buffers that ``freeze()`` derives from the trained parameters (absent from older checkpoints)
_DERIVED = ("fx_s.", "dec_inv_gain_fx", "dec_offset_fx")
#: buffers of earlier bmz versions that nothing reads any more
_LEGACY = ("dec_inv_gain",)


def load_trained_state(model, state_dict: dict) -> None:
    """Load a training checkpoint's weights; buffers that ``freeze()`` derives may be missing
    (checkpoints written before they existed), anything else must match exactly."""
    sd = {k: v for k, v in state_dict.items() if k not in _LEGACY}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith(_DERIVED)] + list(unexpected)
    if bad:
        raise RuntimeError(f"checkpoint does not fit {model.model_name}: {', '.join(bad[:8])}")


def frozen_from_checkpoint(path: str | os.PathLike):
    """The model of a training checkpoint, frozen (CDF tables, integer networks) for coding."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["model_name"], **state["model_config"])
    load_trained_state(model, state["model"])
    model.freeze()
    return model.eval()


def _rel(path: str) -> str:
    """A data path relative to the repository root when it lies beside it (``../shared/...``)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return os.path.relpath(Path(path).resolve(), root)
    except ValueError:
        return str(path)


def check_decodable(model, size: int = 64) -> None:
    """Refuse weights whose bit-exact decoder cannot decode their own files: every quality of a
    smooth test slice (a disc with texture, the shape of an MRI slice) is analysed and decoded
    through the fixed-point synthesis; a model whose activations leave the exact range
    (:class:`~bmz.codec.fixedpoint.FixedPointError`) raises ValueError naming the level."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16) * (0.6 + 0.3 * np.sin(12 * xx) * np.cos(9 * yy))
    x = torch.from_numpy(disc.astype(np.float32))[None, None]
    for q in range(model.n_qualities):
        _, sym = model.analyse(x, q)
        try:
            model.synthesize(sym, q)
        except FixedPointError as e:
            raise ValueError(f"{model.model_name}: quality {q + 1} cannot be decoded by the "
                             f"bit-exact decoder ({e}); not exported") from None


def export(ckpt: str | os.PathLike, out: str | os.PathLike, description: str = "") -> Path:
    """Freeze a training checkpoint into shipped weights ``OUT.pt`` and its model card ``OUT.json``.

    The card's measured RD (``rd_val``) is written by ``benchmarks/rd_val.py --update-cards``,
    which measures every shipped model through the real codec on ``val/``."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model(state["model_name"], **state["model_config"])
    load_trained_state(model, state["model"])
    out_p = Path(out)
    weights = out_p.with_suffix(".pt")
    tmp = weights.with_name(weights.stem + ".new.pt")
    n_params = sum(p.numel() for n, p in model.named_parameters())
    half = n_params > zoo.HALF_ABOVE_PARAMETERS  # float16 transforms: the repository stays cloneable
    sha = zoo.save_frozen(model, tmp, half=half)
    try:
        check_decodable(zoo._load(str(tmp), sha))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    zoo.archive_superseded(weights, sha)  # files encoded with the old weights stay decodable
    os.replace(tmp, weights)
    card = {
        "name": out_p.stem,
        "architecture": state["model_name"],
        "description": description or (model.__doc__ or "").strip().splitlines()[0],
        "config": model.config(),
        "parameters": n_params,
        "qualities": [{"quality": i + 1, "lambda": lam} for i, lam in enumerate(model.lambdas)],
        "loss": ("bpp - PSNR (10 log10 1/MSE) on [0,1]-mapped slices: every quality weighed "
                 "alike; the encoder's parameters frozen (" + ", ".join(model.frozen_parameters) + ")"
                 if getattr(model, "distortion", "mse") == "psnr" else
                 "bpp + lambda * 255^2 * MSE on [0,1]-mapped slices (CompressAI convention)"),
        "normalisation": "per volume: x = (v - min) / (max - min) of stored values; decode "
                         "clip(rint(x_hat * (max - min)) + min, min, max)",
        "training": {"data": [_rel(d) for d in state.get("data") or []], "steps": state["step"], "batch_size": state["batch_size"],
                     "patch": state.get("patch", PATCH), "seed": state["seed"],
                     "sampling": "volumes at random (non-IXI x4), slices with content, random "
                                 f"{state.get('patch', PATCH)}^2 patches, flips and transposition; quality drawn uniformly per sample",
                     "optimizer": "Adam, grad-norm clip 1.0; aux Adam 1e-3 for the entropy bottleneck",
                     "validation_history": state.get("history", [])[-5:]},
        "licence": "weights: BSD-3-Clause (trained on IXI CC BY-SA 3.0 and permissively licensed data)",
        "file": weights.name,
        "storage": ("float16 analysis/synthesis convolutions, exact integer fixed-point synthesis"
                    if half else "float32, exact integer fixed-point synthesis"),
        "sha256": sha,
        "rd_val": [],
    }
    zoo.write_card(weights.with_suffix(".json"), card)
    return weights


def train(model_name: str, out: str, data: list[str], val_data: list[str], steps: int,
          resume: str | None = None, batch_size: int = 8, lr: float | None = None, seed: int = 0,
          checkpoint_minutes: float = 5.0, validate_every: int = 500, threads: int | None = None,
          model_config: dict | None = None, lambdas: list[float] | None = None,
          until: int | None = None, max_minutes: float | None = None,
          init_from: str | None = None, depth: int | None = None,
          budget_minutes: float | None = None, patch: int | None = None) -> Path:
    """Train ``model_name``; write the checkpoint ``OUT.ckpt`` (resumable) and, when ``steps`` is
    reached, the frozen weights ``OUT.pt`` and its card ``OUT.json`` (see :func:`export`).

    ``until`` (a step) and ``max_minutes`` stop this run early with a checkpoint, without touching
    the learning-rate schedule, which is set by ``steps``: resuming continues exactly as if the run
    had never stopped. SIGTERM / SIGINT do the same.

    ``init_from`` (new runs): a checkpoint or shipped weights whose parameters of the same name
    and shape start this model (a warm start across architectures: layers it lacks keep their
    initialisation); its λ are used unless ``lambdas`` are given. ``depth``: consecutive slices
    per training sample — 2 by default for inter-slice models (the first coded on its own, the
    second with it as context), 1 otherwise. ``budget_minutes``: a run planned by wall time (a
    leased GPU): the ×0.1 decay phase starts at 90 % of the budget (or of ``steps``, whichever
    comes first) and the run stops with a checkpoint at the budget. ``patch``: the side of the
    square training patches (default 128; kept by the checkpoint: a resumed run goes on with its
    own unless given) — smaller patches make big models trainable on a CPU."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    ckpt_p = out_p.with_suffix(".ckpt")
    logfile = out_p.with_suffix(".log")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(logfile), logging.StreamHandler()])

    state = torch.load(resume, map_location="cpu", weights_only=False) if resume else None
    init = None
    if init_from and state is None:
        init = torch.load(init_from, map_location="cpu", weights_only=False)
        if "model" in init:  # a training checkpoint
            if not lambdas:
                lambdas = init["model_config"]["lambdas"]
            init = init["model"]
        elif "state_dict" in init:  # shipped weights (bmz.codec.zoo.save_frozen)
            if not lambdas and "lambdas" in init.get("config", {}):
                lambdas = init["config"]["lambdas"]
            init = {k: v.float() if v.dtype == torch.float16 else v
                    for k, v in init["state_dict"].items()}
        elif not lambdas and "lambdas" in init.get("_config", {}):
            lambdas = init["_config"]["lambdas"]
    if state is not None:
        if lambdas and [float(v) for v in lambdas] != [float(v) for v in state["model_config"].get("lambdas", [])]:
            state = extend_qualities(state, lambdas)
            log.info("%s: quality levels extended to λ = %s", resume, lambdas)
        model_name, model_config = state["model_name"], state["model_config"]
        seed, batch_size = state["seed"], state["batch_size"]
        patch = patch or state.get("patch", PATCH)
    config = dict(model_config or {})
    if lambdas:
        config["lambdas"] = lambdas
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = build_model(model_name, **config)
    if init is not None:
        own = model.state_dict()
        take = {k: v for k, v in init.items() if k in own and own[k].shape == v.shape
                and not k.startswith(_DERIVED) and "_quantized_cdf" not in k
                and "_cdf_length" not in k and not k.endswith("._offset")}
        model.load_state_dict(take, strict=False)
        log.info("warm start from %s: %d tensors taken, new: %s", init_from, len(take),
                 ", ".join(sorted({k.split(".")[0] for k in own if k not in take})))
    frozen = tuple(getattr(model, "frozen_parameters", ()))
    if frozen and state is None:  # a model that keeps copied parameters must get all of them
        missing = [n for n, _ in model.named_parameters() if n.startswith(frozen)
                   and (init is None or n not in take)]
        if missing:
            raise SystemExit(f"{model_name} keeps {', '.join(frozen)} from the model it starts from: "
                             f"--init-from must give them ({len(missing)} missing, e.g. {missing[0]})")
    model = model.to(device)
    config = model.config()
    if depth is None:
        depth = state.get("depth", 1) if state is not None else (2 if getattr(model, "inter_slice", False) else 1)

    vols = load_volumes(data)
    if not vols:
        raise SystemExit(f"no usable training volumes under {data}")
    log.info("training on %d volumes, %d slices", len(vols), sum(len(v.slices) for v in vols))
    val = [s for v in load_volumes(val_data) for s in v.slices[:: max(1, len(v.slices) // 4)][:4]]
    patch = int(patch or PATCH)
    if patch % model.downsampling:
        raise SystemExit(f"--patch {patch} is not a multiple of {model_name}'s downsampling {model.downsampling}")
    sampler = PatchSampler(vols, seed, patch)

    # a model may keep parameters it copied (init_from) out of training: the fast decoder's encoder
    for n, p in model.named_parameters():
        if frozen and n.startswith(frozen):
            p.requires_grad_(False)
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    groups = 2 if state is None or state["opt"] is None or len(state["opt"]["param_groups"]) == 2 else 1
    mults = [1.0, DENSITY_LR_MULT][:groups]
    params = dict(model.named_parameters())
    param_groups = [{"params": [params[n] for n in names]} for names in _optimizer_groups(model, groups)]
    if groups == 2:
        param_groups[1]["lr"] = (lr or 2e-4) * DENSITY_LR_MULT
    opt = torch.optim.Adam(param_groups, lr=lr or 2e-4)
    # models without entropy bottlenecks (vqvae) have no auxiliary parameters: an optimiser
    # over nothing, never stepped (its empty state still checkpoints and resumes)
    aux_opt = torch.optim.Adam(aux_params or [torch.zeros(0, requires_grad=True)], lr=1e-3)
    timed = {"decay": False}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 if timed["decay"] else lr_factor(s, steps))
    step, history = 0, []
    if state is not None:
        load_trained_state(model, state["model"])
        if state["opt"] is None:  # a lean checkpoint (big models): Adam's moments start afresh
            log.info("lean checkpoint: float16 weights, no optimiser moments (Adam restarts)")
        else:
            opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        sched.load_state_dict(state["sched"])
        _set_rng_state(state["rng"], sampler)
        step, history = state["step"], state["history"]
        if lr is not None:  # an explicit --lr on resume replaces the checkpoint's base rate
            sched.base_lrs = [lr * m for m in mults]
            for g, base in zip(opt.param_groups, sched.base_lrs):
                g["initial_lr"] = base
        for g, base in zip(opt.param_groups, sched.base_lrs):  # the schedule of this run's --steps
            g["lr"] = base * lr_factor(step, steps)
        log.info("resumed %s at step %d (base lr %.2e)", resume, step, sched.base_lrs[0])

    # models over zoo.HALF_ABOVE_PARAMETERS keep lean checkpoints — float16 weights and no
    # Adam moments (a 28 M-parameter U-Net's full state is 342 MB, its lean one 57 MB) — so that
    # one checkpoint per model fits the repository; resuming restarts the moments
    lean = sum(p.numel() for p in model.parameters()) > zoo.HALF_ABOVE_PARAMETERS

    def _model_state() -> dict:
        sd = model.state_dict()
        if not lean:
            return sd
        # the fixed-point twins are derived by freeze(): a lean checkpoint leaves them out
        return {k: v.to(torch.float16) if v.dtype == torch.float32 else v for k, v in sd.items()
                if not k.startswith(_DERIVED)}

    def save_checkpoint():
        _atomic_torch_save({"model_name": model_name, "model_config": config, "seed": seed,
                            "batch_size": batch_size, "step": step, "steps": steps,
                            "model": _model_state(), "opt": None if lean else opt.state_dict(),
                            "aux_opt": aux_opt.state_dict(), "sched": sched.state_dict(),
                            "rng": _rng_state(sampler), "history": history, "data": data,
                            "depth": depth, "patch": patch}, ckpt_p)

    stop = {"signal": None}

    def _on_signal(signum, _frame):  # finish the step, checkpoint, exit cleanly
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    model.train()
    started = last_ckpt = time.time()
    bar = tqdm(total=steps, initial=step, desc=f"train {model_name}", mininterval=5)
    stats = []
    while step < steps and (until is None or step < until):
        x, q = sampler.batch(batch_size, model.n_qualities, depth)
        x, q = x.to(device), q.to(device)
        opt.zero_grad()
        aux_opt.zero_grad()
        out_d = model(x, q)
        loss, st = rd_loss(model, out_d, x, q)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux = model.aux_loss()
        if aux_params:
            aux.backward()
            aux_opt.step()
        sched.step()
        step += 1
        stats.append(st)
        bar.update(1)
        if step % 100 == 0:
            m = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
            stats = []
            bar.set_postfix(loss=f"{m['loss']:.3f}", bpp=f"{m['bpp']:.3f}")
            log.info("step %d loss %.4f bpp %.4f mse %.2e aux %.1f", step, m["loss"], m["bpp"],
                     m["mse"], float(aux))
            if hasattr(model, "train_stats"):  # e.g. the VQ-VAE's codebook usage
                log.info("step %d model %s", step, json.dumps(model.train_stats()))
        if step % validate_every == 0 or step == steps:
            v = validate(model, val, [0, model.n_qualities // 2, model.n_qualities - 1])
            history.append({"step": step, "val": v})
            log.info("val step %d %s", step, json.dumps(v))
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            save_checkpoint()
            last_ckpt = time.time()
        if stop["signal"] is not None:
            log.info("signal %s at step %d: checkpoint and stop", stop["signal"], step)
            break
        if budget_minutes is not None and not timed["decay"] and \
                time.time() - started > 0.9 * budget_minutes * 60:
            timed["decay"] = True
            log.info("step %d: 90 %% of the %.1f-minute budget: learning rate x0.1", step, budget_minutes)
        if (until is not None and step >= until) or (
                max_minutes is not None and time.time() - started > max_minutes * 60) or (
                budget_minutes is not None and time.time() - started > budget_minutes * 60):
            log.info("stop requested at step %d: checkpoint and stop", step)
            break
    bar.close()
    save_checkpoint()
    for s, h in old_handlers.items():
        signal.signal(s, h)
    if step >= steps:  # finished: ship frozen weights and the model card beside the checkpoint
        export(ckpt_p, out_p)
    return ckpt_p
