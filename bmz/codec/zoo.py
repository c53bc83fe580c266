"""Shipped weights: finding, verifying, freezing and describing them.

A shipped model is two files side by side in a models folder:

* ``NAME.pt`` — ``{"format": "bmz-weights/1", "model_name", "config", "state_dict"}`` saved by
  :func:`save_frozen` after ``model.freeze()``: the CDF tables and integer hyper-synthesis are part
  of the state dict, so loading never recomputes them.
* ``NAME.json`` — the model card: architecture, config, qualities with λ and measured RD, training
  data and steps, normalisation, licence and the SHA-256 of ``NAME.pt``.

Models folders searched, in order: ``$BMZ_MODEL_PATH`` (``os.pathsep``-separated), the ``models/``
folder of a source checkout, and ``<sys.prefix>/share/bmz/models`` (a wheel install).

Superseded weights stay decodable. A ``.bmz`` file names the model and the SHA-256 of the
weights it was encoded with; retraining a model changes that SHA. So when new weights replace
shipped ones (:func:`archive_superseded`, run by ``bmz export``), the old pair moves to the
folder's ``archive/`` as ``NAME-<first 12 hex of its SHA-256>.pt`` / ``.json`` and ships on.
Decoding looks for the exact weights a file names: ``NAME.pt`` in any models folder whose SHA-256
matches, else ``archive/NAME-<sha12>.pt`` in any models folder (verified against the full SHA).
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

from .. import _fileutil
from ..errors import ModelError, ModelMismatchError, UnknownModelError

DEFAULT_MODEL = "hyperprior"
#: the default for lossy coding of native-precision volumes (more than 8 bits): the context
#: model, trained on them, which beats DEFAULT_MODEL there (benchmarks/results/native/)
DEFAULT_MODEL_NATIVE = "hyperprior-ctx"
#: λ of every model's default quality level (the rate and PSNR it gives: the model cards and
#: benchmarks/results)
DEFAULT_LAMBDA = 0.15625


def default_quality(lambdas) -> int:
    """A model's default quality level (1-based): the level whose λ is nearest ``DEFAULT_LAMBDA``
    on a log scale, the higher one on a tie (fidelity first). Follows from the λ alone, so it
    stays right when a model gains levels."""
    d = [abs(math.log(float(v) / DEFAULT_LAMBDA)) for v in lambdas]
    best = min(d)
    return max(i for i, v in enumerate(d) if v <= best + 1e-9) + 1


def default_model(bits: int) -> str:
    """The model lossy coding uses unless told, for a volume of ``bits`` bits:
    :data:`DEFAULT_MODEL_NATIVE` above 8 bits (where its weights are installed), else
    :data:`DEFAULT_MODEL`."""
    if bits > 8 and DEFAULT_MODEL_NATIVE in available_models():
        return DEFAULT_MODEL_NATIVE
    return DEFAULT_MODEL


def default_group(name: str) -> int:
    """The slice group size a model codes with unless told (its card's ``default_group``, chosen
    by measurement; 1 = every slice on its own, also for models without a card entry)."""
    try:
        g = read_card(name).get("default_group", 1)
    except Exception:  # noqa: BLE001 - no card: slices on their own
        return 1
    return int(g) if isinstance(g, int) and g >= 1 else 1


def card_qualities(card: dict) -> tuple[int, int]:
    """(number of quality levels, default level) from a model card, without loading the weights."""
    lambdas = [q["lambda"] for q in card.get("qualities") or []]
    if not lambdas:
        raise ModelError(f"model card of {card.get('name', '?')} lists no quality levels")
    return len(lambdas), default_quality(lambdas)


def model_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("BMZ_MODEL_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    dirs.append(Path(sys.prefix) / "share" / "bmz" / "models")
    return [d for d in dirs if d.is_dir()]


def sha256_file(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, _mtime_ns: int, _size: int) -> str:
    """SHA-256 of a file, recomputed whenever its modification time or size changes."""
    return _fileutil.sha256_file(path)


def available_models() -> dict[str, Path]:
    """Shipped model name → weights path (first folder wins)."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        for p in sorted(d.glob("*.pt")):
            if p.with_suffix(".json").is_file():
                found.setdefault(p.stem, p)
    return found


def find_weights(name: str) -> Path:
    found = available_models()
    if name not in found:
        where = ", ".join(str(d) for d in model_dirs()) or "no models folder found"
        known = ", ".join(sorted(found)) or "none"
        raise UnknownModelError(f"no shipped weights for model {name!r} (searched {where}); "
                                f"available: {known}")
    return found[name]


ARCHIVE = "archive"


def archived_weights(name: str, sha256: str) -> Path | None:
    """The archived weights of ``name`` whose SHA-256 is ``sha256``, if any models folder has them."""
    if not isinstance(sha256, str) or len(sha256) < 12:
        return None
    for d in model_dirs():
        p = d / ARCHIVE / f"{name}-{sha256[:12]}.pt"
        if p.is_file() and p.with_suffix(".json").is_file() and sha256_file(p) == sha256:
            return p
    return None


def weights_for(name: str, sha256: str) -> Path:
    """The weights file of ``name`` with exactly this SHA-256: installed or archived.

    Raises :class:`UnknownModelError` (no such model at all) or :class:`ModelMismatchError`."""
    path = find_weights(name)
    _check_card(path)  # a damaged installation is reported, not stepped over
    for cand in [path] + [d / f"{name}.pt" for d in model_dirs()]:
        if cand.is_file() and cand.with_suffix(".json").is_file() and sha256_file(cand) == sha256:
            return cand
    old = archived_weights(name, sha256)
    if old is not None:
        return old
    where = ", ".join(str(d / ARCHIVE) for d in model_dirs())
    raise ModelMismatchError(
        f"this file was encoded with {name!r} weights {str(sha256)[:12]}…, which are neither the "
        f"installed ones ({sha256_file(path)[:12]}…, {path}) nor archived (looked for "
        f"{name}-{str(sha256)[:12]}.pt in {where}); install the bmz version or model files it was "
        f"written with, or put them in a folder named by $BMZ_MODEL_PATH")


def archive_superseded(weights: str | os.PathLike, new_sha256: str | None = None) -> Path | None:
    """Before ``weights`` (``NAME.pt`` with its card) is replaced: move the current pair to
    ``archive/NAME-<sha12>.pt/.json`` beside it, so that files encoded with it stay decodable.
    Nothing happens when there is no current pair or it has ``new_sha256``. → the archived path."""
    weights = Path(weights)
    card = weights.with_suffix(".json")
    if not (weights.is_file() and card.is_file()):
        return None
    sha = sha256_file(weights)
    if sha == new_sha256:
        return None
    dest = weights.parent / ARCHIVE / f"{weights.stem}-{sha[:12]}.pt"
    dest.parent.mkdir(exist_ok=True)
    if not dest.is_file():
        os.replace(weights, dest)
        os.replace(card, dest.with_suffix(".json"))
    return dest


def read_card(name: str) -> dict:
    return json.loads(find_weights(name).with_suffix(".json").read_text())


@lru_cache(maxsize=8)
def _load(path: str, sha: str):
    import torch  # heavy: only loading a model needs it (reading a file's header does not)

    from .models import build_model

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != "bmz-weights/1":
        raise ModelError(f"{path}: not a bmz weights file")
    # built for coding: the priors are the frozen tables the file holds, never CompressAI's
    # trainable entropy models (bmz.codec.priors), so that coding does not import CompressAI
    model = build_model(blob["model_name"], for_coding=True, **blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_model(name: str, expect_sha256: str | None = None):
    """The frozen model ``name``, verified against its card (and ``expect_sha256`` if given).

    Raises :class:`ModelMismatchError` when the weights differ from what the card or the file
    being decoded says — decoding with other weights would give garbage."""
    path = find_weights(name) if expect_sha256 is None else weights_for(name, expect_sha256)
    sha = _check_card(path)
    return _load(str(path), sha), sha


def _check_card(path: Path) -> str:
    """The SHA-256 of weights ``path``, checked against its model card's."""
    sha = sha256_file(path)
    card_sha = json.loads(path.with_suffix(".json").read_text()).get("sha256")
    if card_sha != sha:
        raise ModelMismatchError(f"{path}: SHA-256 {sha[:12]}… does not match its model card "
                                 f"({str(card_sha)[:12]}…); reinstall the model files")
    return sha


#: models of more parameters are stored with ``half`` (:func:`save_frozen`) by ``bmz export``
HALF_ABOVE_PARAMETERS = 10_000_000


def compact_state(model, half: bool = False) -> dict:
    """``model``'s state dict in the smallest dtypes that change nothing decoding reads:
    float64 tensors holding integers (the fixed-point synthesis' weights) as int16 / int32 /
    int64, whichever holds them. With ``half``, also the float convolution weights and biases of
    the analysis and (float) synthesis transforms as float16: the encoder then runs with those
    values (what the shipped file says), while the decoder's fixed-point tensors stay exact.
    Loading needs nothing special: ``load_state_dict`` copies each tensor into the model's own
    dtype (what a float16 value says, a float32 holds exactly)."""
    import torch

    halves = set()
    if half:
        for prefix in ("g_a", "g_s"):
            mod = getattr(model, prefix, None)
            if mod is None:
                continue
            for name, m in mod.named_modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    base = f"{prefix}.{name}." if name else f"{prefix}."
                    halves |= {base + "weight", base + "bias"}
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        if v.dtype == torch.float64 and v.numel() and bool(torch.all(v == torch.round(v))):
            m = float(v.abs().max())
            for dt in (torch.int16, torch.int32, torch.int64):
                if m <= torch.iinfo(dt).max:
                    v = v.to(dt)
                    break
        elif k in halves and v.dtype == torch.float32:
            h = v.to(torch.float16)
            if bool(torch.all(torch.isfinite(h))):
                v = h
        out[k] = v
    return out


def save_frozen(model, path: str | os.PathLike, half: bool = False) -> str:
    """Freeze ``model`` (CDF tables, integer hyper-synthesis) and write it atomically, its state
    in the smallest exact dtypes (:func:`compact_state`; ``half``: float16 transforms); →
    SHA-256."""
    import torch

    model = model.cpu().eval()
    model.freeze()
    blob = {"format": "bmz-weights/1", "model_name": model.model_name, "config": model.config(),
            "state_dict": compact_state(model, half)}
    with _fileutil.atomic_output(path) as f:
        torch.save(blob, f)
    return sha256_file(path)


def write_card(path: str | os.PathLike, card: dict) -> None:
    with _fileutil.atomic_output(path) as f:
        f.write((json.dumps(card, indent=2, sort_keys=False) + "\n").encode())
