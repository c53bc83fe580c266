"""``bmz rd-curve``'s measurements: the codecs (classical ones from :mod:`bmz.baselines`, bmz
models as one more kind), one task per volume × codec (run in worker processes), one row per
setting."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import api, baselines, metrics
from ..bitstream import BmzReader
from ..bitstream.container import FORMAT_VERSION
from ..codec import chunks, zoo
from ..errors import InputError
from .common import ALL_CODECS, BMZ, MAX_ERROR, _err
from .inputs import InputItem, depth_class, load_volume


@dataclass(frozen=True)
class CodecSpec:
    """One curve family to run: a classical codec, or a bmz model."""

    kind: str  # "classical" | "bmz"
    name: str  # registry name (JPEG2000…) or model name
    version: str  # codec version, or the model weights' SHA-256
    error: str = ""  # set when the codec cannot run at all (no shipped model…)

    @property
    def curve(self) -> str:
        return f"{BMZ}/{self.name}" if self.kind == BMZ else self.name

    @property
    def codec(self) -> str:
        return BMZ if self.kind == BMZ else self.name

    @property
    def model(self) -> str:
        return self.name if self.kind == BMZ else ""


def resolve_codecs(codecs: Sequence[str] | None, models: Sequence[str] | None) -> list[CodecSpec]:
    """Codec specs for ``codecs`` (command-line names; default all) and bmz ``models`` (default
    every shipped one and ``max-error``, bmz's bounded-error mode). Unknown names raise
    :class:`bmz.errors.InputError`."""
    names = list(codecs) if codecs else list(ALL_CODECS)
    specs: list[CodecSpec] = []
    for n in names:
        key = n.strip()
        if not key:
            continue
        if key.lower() == BMZ:
            avail = zoo.available_models()
            chosen = list(models) if models else sorted(avail) + ([MAX_ERROR] if avail else [])
            if not chosen:
                specs.append(CodecSpec(BMZ, "(none)", "", error=(
                    "no shipped bmz model found (models/ or $BMZ_MODEL_PATH); train and export "
                    "one, or leave bmz out of --codecs")))
            for m in chosen:
                if m == MAX_ERROR:
                    specs.append(CodecSpec(BMZ, m, chunks.BOUNDED.coder_id()))
                    continue
                if m not in avail:
                    raise InputError(f"--models: no shipped model {m!r}; available: "
                                     f"{', '.join(sorted(avail) + [MAX_ERROR])}")
                specs.append(CodecSpec(BMZ, m, zoo.sha256_file(avail[m])))
            continue
        try:
            cname = baselines.canonical_name(key)
        except KeyError as e:
            raise InputError(f"--codecs: {e.args[0]}; or bmz") from None
        specs.append(CodecSpec("classical", cname, baselines.get_codec(cname).version()))
    seen, out = set(), []
    for s in specs:
        if s.curve not in seen:
            seen.add(s.curve)
            out.append(s)
    return out


def bmz_settings(model: str, bits: int = 8) -> list[baselines.Setting]:
    """A model's quality levels (``q1``…), or for ``max-error`` the bounds δ = 0 (lossless),
    1, 2, 4 … 2^(bits − 4) of a ``bits``-deep volume (``d0``…): max error ≤ 1/16 of its range."""
    if model == MAX_ERROR:
        deltas = [0] + [2 ** i for i in range(max(1, int(bits) - 3))]
        return [baselines.Setting(f"d{d}", d, lossless=d == 0) for d in deltas]
    m, _ = zoo.load_model(model)
    return [baselines.Setting(f"q{q}", q) for q in range(1, int(m.n_qualities) + 1)]


def settings_for(spec: CodecSpec, bits: int) -> list[baselines.Setting]:
    if spec.kind == BMZ:
        return bmz_settings(spec.name, bits)
    return list(baselines.get_codec(spec.name).settings_for(bits))


def quality_metrics(ref: np.ndarray, rec: np.ndarray) -> dict:
    rng = metrics.volume_range(ref)
    return {"psnr": metrics.psnr(ref, rec, rng), "ssim": metrics.ssim(ref, rec, rng),
            "ms_ssim": metrics.ms_ssim(ref, rec, rng), "maxerr": metrics.max_abs_error(ref, rec)}


def code_bmz(vol: np.ndarray, model: str, param: int) -> tuple[dict, np.ndarray]:
    """bmz at one setting (a model's quality level, or for ``max-error`` the bound δ): sizes
    (whole file, chunks only), times and the reconstruction."""
    t0 = time.perf_counter()  # one thread, as the baselines (and --jobs processes) run
    if model == MAX_ERROR:
        data = api.compress(vol, max_error=int(param), threads=1)
    else:
        data = api.compress(vol, quality=param, model=model, threads=1)
    t1 = time.perf_counter()
    rec = api.decompress(data, threads=1)
    t2 = time.perf_counter()
    if rec.shape != vol.shape or rec.dtype != vol.dtype:
        raise RuntimeError(f"decoded {rec.shape} {rec.dtype}, expected {vol.shape} {vol.dtype}")
    if model == MAX_ERROR:
        err = metrics.max_abs_error(vol, rec)
        if err > int(param):
            raise RuntimeError(f"max error {err} > the bound {int(param)}")
    with BmzReader(data, name="<bytes>") as r:
        chunks = int(sum(r.chunk_sizes()))
    return {"n_bytes": len(data), "hdr_bytes": len(data) - chunks, "enc_s": t1 - t0,
            "dec_s": t2 - t1}, rec


def code_point(spec: CodecSpec, vol: np.ndarray, setting: baselines.Setting,
               vmin: int, bits: int) -> tuple[dict, np.ndarray]:
    """One codec setting on ``vol`` → (size/time dict, reconstruction)."""
    if spec.kind == BMZ:
        return code_bmz(vol, spec.name, int(setting.param))
    cv = baselines.code_volume(baselines.get_codec(spec.name), vol, setting, vmin=vmin, bits=bits)
    return {"n_bytes": cv.n_bytes, "hdr_bytes": cv.header_bytes, "enc_s": cv.enc_s,
            "dec_s": cv.dec_s}, cv.recon


def _base_row(item: InputItem, spec: CodecSpec | None, max_slices: int | None) -> dict:
    return {"source": item.source, "volume": item.name, "path": item.path,
            "series": item.series or "", "codec": spec.codec if spec else "",
            "model": spec.model if spec else "", "version": spec.version if spec else "",
            "format": bmz_file_format(spec.name) if spec and spec.kind == BMZ else "",
            "max_slices": max_slices or 0, "threads": 1, "error": ""}


def bmz_file_format(model: str | None = None) -> str:
    """What bmz's output bytes depend on besides the weights: container version / chunk format
    (e.g. ``1.1/4``; ``1.1/5 G8`` for a model with inter-slice context coding groups of 8; for
    ``max-error`` the bounded-error format and its groups). Part of a bmz point's cache key: a
    format or grouping change re-measures the model."""
    v = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"
    if model == MAX_ERROR:
        return f"{v}/{chunks.BOUNDED.FORMAT} G{chunks.BOUNDED.DEFAULT_GROUP}"
    if model is not None:
        from ..codec import models  # PyTorch: loaded when a bmz model is measured

        try:
            arch = zoo.read_card(model).get("architecture", model)
        except Exception:  # noqa: BLE001 - no card: as its name says
            arch = model
        if getattr(models.model_class(arch), "inter_slice", False):
            return f"{v}/{chunks.GROUPED.FORMAT} G{zoo.default_group(model)}"
    return f"{v}/{chunks.LOSSY.FORMAT}"


@dataclass
class Task:
    item: InputItem
    spec: CodecSpec
    max_slices: int | None
    skip: frozenset = frozenset()  # setting names already measured (reuse)


def run_task(task: Task) -> list[dict]:
    """All settings of one codec on one volume → rows (error rows instead of exceptions)."""
    item, spec = task.item, task.spec
    base = _base_row(item, spec, task.max_slices)
    if item.error:
        return [dict(base, group=f"{item.source}/?", setting="", error=item.error)]
    if spec.error:
        return [dict(base, group=f"{item.source}/?", setting="", error=spec.error)]
    try:
        vol = load_volume(item, task.max_slices)
    except Exception as e:  # noqa: BLE001
        return [dict(base, group=f"{item.source}/?", setting="", error=_err(e))]
    vmin, vmax = int(vol.min()), int(vol.max())
    bits = baselines.bit_depth(vmin, vmax)
    base.update(group=f"{item.source}/{depth_class(bits)}", n_slices=vol.shape[0],
                height=vol.shape[1], width=vol.shape[2], dtype=vol.dtype.str, bits=bits,
                vmin=vmin, vmax=vmax, n_voxels=int(vol.size))
    try:
        sets = settings_for(spec, bits)
    except Exception as e:  # noqa: BLE001
        return [dict(base, setting="", error=_err(e))]
    rows = []
    mb = vol.size * 2 / 1e6
    raw = vol.size * vol.dtype.itemsize
    for s in sets:
        if s.name in task.skip:
            continue
        row = dict(base, setting=s.name, mode=s.mode, param=s.param)
        try:
            m, rec = code_point(spec, vol, s, vmin, bits)
            m.update(quality_metrics(vol, rec))
        except Exception as e:  # noqa: BLE001 - one bad point must not lose the run
            row["error"] = _err(e)
        else:
            row.update(m, bpp=metrics.bpp(m["n_bytes"], vol.size),
                       bpp_nohdr=metrics.bpp(m["n_bytes"] - m["hdr_bytes"], vol.size),
                       ratio=raw / max(1, m["n_bytes"]),
                       enc_MBps=mb / m["enc_s"] if m["enc_s"] > 0 else math.inf,
                       dec_MBps=mb / m["dec_s"] if m["dec_s"] > 0 else math.inf)
        rows.append(row)
    return rows


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
