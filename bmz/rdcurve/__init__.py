"""Rate–distortion curves of bmz and classical codecs on your own images (``bmz rd-curve``).

    bmz rd-curve INPUT... [--codecs bmz,jpeg,jpeg2000,htj2k,jpegls,jpegxl,avif] [--models a,b]
                 [--max-slices N] [--jobs N] [--anchor CODEC] [--reuse] -o OUTDIR

Inputs
    Anything ``bmz encode`` reads — a NIfTI file, a ``.npy`` file, a DICOM file or a DICOM series
    folder — and folders of them. A folder given on the command line is searched recursively
    (hidden entries skipped, sorted): every ``.nii``/``.nii.gz``/``.npy`` file is a volume; a folder
    that directly holds DICOM files (a ``.dcm``/``.ima`` suffix or the ``DICM`` preamble) is a DICOM
    input — one volume per series in it — and is not searched further (the DICOM reader takes its
    subfolders along). A path that does not exist, or a file that cannot be read, becomes an error
    row (never silently dropped).

Groups
    Each volume belongs to the group ``SOURCE/8-bit`` or ``SOURCE/>8-bit``: SOURCE is the name of
    the folder given on the command line that held it (for a file given directly: the name of its
    parent folder), the suffix the class of its bit depth B = ceil(log2(max − min + 1)) of the
    stored values (B ≤ 8 or B > 8). Curves, BD-rates, plots and error maps are per group.

Measurements (one row per volume × codec × setting)
    Classical codecs: :mod:`bmz.baselines` (one image per slice, ``stored − min`` at the true bit
    depth, REFERENCE.md §2's traps handled, lossless settings checked bit-exact); bmz: every quality
    level of every chosen shipped model through :func:`bmz.api.compress` / ``decompress``, and
    ``max-error`` — bmz's bounded-error mode (``--max-error δ``, δ = 0, 1, 2, 4 … 2^(B − 4), each
    point checked against its bound) — as one more bmz curve (``--models`` picks among both).

    * ``bpp``: every byte a user stores × 8 / voxels — the whole ``.bmz`` file (container,
      metadata, index, chunks) or every codec stream with its headers;
    * ``bpp_nohdr``: without headers — bmz: the slice chunks only; classical codecs: minus the
      per-image header estimate of :meth:`bmz.baselines.SliceCodec.header_bytes` (marker / box
      parsing, or a 1×1 image for JPEG XL);
    * ``ratio``: stored bytes (voxels × the stored dtype's size) / bytes;
    * ``psnr``: peak = volume max − min, from the volume MSE; ``ssim``: skimage per slice, data range
      = volume range, mean over slices; ``ms_ssim``: 5-scale, slices ≥ 161 px only (else empty);
      ``maxerr``: max absolute error;
    * ``enc_s``/``dec_s`` wall seconds on one thread, ``enc_MBps``/``dec_MBps`` in MB of 16-bit raw
      (voxels × 2 / 1e6) per second.

    A codec that refuses the bit depth, an unreadable input or a lossless setting that is not
    bit-exact gives a row with ``error`` set (and no numbers).

``--max-slices N`` keeps the N middle slices of each volume. ``--jobs N`` runs one volume × codec
per task in N processes (one thread each). ``--reuse`` keeps the rows of ``OUTDIR/points.csv``
whose volume, slice selection, codec version (bmz: model SHA-256) and setting match; rows of codecs,
models or inputs that a run does not select stay in ``points.csv`` (never discarded by a partial
run) but are not part of that run's curves and reports.

Outputs in OUTDIR
    ``points.csv`` / ``points.json`` (every row, error rows included), ``curves.csv`` (group means
    per codec and setting, as the reference did; with two or more bmz curves also
    ``bmz/envelope``, bmz's best operating points — the Pareto front over them, see
    :func:`.curves.envelope`), ``bd_rate.csv`` / ``bd_rate.md`` (BD-rate of every
    curve vs JPEG 2000 and vs ``--anchor``, PSNR and SSIM), ``rd_<group>.png`` (bpp–PSNR and
    bpp–SSIM, log-rate axis), ``errormap_<group>.png`` (one slice per codec at about the same bpp)
    and ``report.md`` tying them together.

Modules: :mod:`.inputs` (discovery, groups), :mod:`.measure` (codecs, one task per volume ×
codec in worker processes), :mod:`.points` (CSV / JSON, ``--reuse`` keys), :mod:`.curves` (group
curves, BD-rates, comparisons, the reference check), :mod:`.plots` (figures), :mod:`.report`
(``report.md``, ``bd_rate.md``); this module ties them together (:func:`run`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from .. import baselines
from ..errors import InputError
from .common import (ALL_CODECS, BMZ, CHECK_BPP, CHECK_DB, CURVE_FIELDS, D8, DHI, ENVELOPE,
                     FIELDS, GUIDANCE, J2K, MAX_ERROR, RATES, _err)
from .curves import (at_rates, bd_table, compare, curves_by, envelope, group_curves, lossy,
                     read_reference, reference_check)
from .inputs import InputItem, depth_class, discover, load_volume, middle_slices
from .measure import (CodecSpec, Task, _base_row, _init_worker, bmz_file_format, code_bmz,
                      code_point, resolve_codecs, run_task, settings_for)
from .plots import _slug, errormaps, plot_group
from .points import _sort_rows, load_points, point_key, write_csv, write_json
from .report import Result, machine_info, report_reference_check, write_bd_md, write_report

__all__ = [
    "InputItem", "Result", "discover", "run", "group_curves", "envelope", "bd_table", "compare",
    "reference_check", "FIELDS", "CURVE_FIELDS", "ALL_CODECS", "J2K", "RATES", "GUIDANCE",
    "D8", "DHI", "MAX_ERROR", "ENVELOPE", "CHECK_DB", "CHECK_BPP", "at_rates", "curves_by", "lossy", "read_reference",
    "depth_class", "load_volume", "middle_slices", "CodecSpec", "bmz_file_format", "code_bmz",
    "code_point", "resolve_codecs", "load_points", "point_key", "write_csv", "write_json",
    "machine_info", "report_reference_check", "write_bd_md", "write_report", "plot_group",
    "errormaps",
]


def resolve_anchor(anchor: str | None, specs: list[CodecSpec]) -> str:
    """``--anchor`` → curve id: a codec name (``jpeg2000``, ``avif``…), ``bmz`` (the first bmz
    model) or ``bmz/MODEL``; default JPEG 2000."""
    if not anchor:
        return J2K
    a = anchor.strip()
    curves = [s.curve for s in specs]
    if a in curves:
        return a
    if a.lower() == BMZ:
        bm = [c for c in curves if c.startswith(BMZ + "/")]
        if bm:
            return bm[0]
        raise InputError("--anchor bmz: no bmz model among the curves")
    try:
        return baselines.canonical_name(a)
    except KeyError as e:
        raise InputError(f"--anchor: {e.args[0]}") from None


def run(inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike,
        codecs: Sequence[str] | None = None, models: Sequence[str] | None = None,
        max_slices: int | None = None, jobs: int = 1, anchor: str | None = None,
        reuse: bool = False, progress: bool = True, reference: str | os.PathLike | None = None,
        reference_groups: dict[str, str] | None = None, command: str | None = None,
        plots: bool = True, items: list[InputItem] | None = None,
        log: Callable[[str], None] | None = None) -> Result:
    """Measure, aggregate and write everything to ``outdir`` (see the module docstring).

    ``reference`` / ``reference_groups`` ({our group: reference csv group}) add a reference check
    to the report; ``items`` replaces the discovery of ``inputs``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else discover(inputs)
    specs = resolve_codecs(codecs, models)
    anchor_id = resolve_anchor(anchor, specs)
    info = machine_info()
    info.update(jobs=max(1, int(jobs)), max_slices=max_slices,
                command=command or " ".join(["bmz rd-curve", *map(str, inputs)]))
    max_slices = max_slices or None

    points_path = out / "points.csv"
    cache: dict[tuple, dict] = {}
    if reuse:
        for r in load_points(points_path):
            if not r.get("error"):
                cache[point_key(r)] = r
    # tasks, skipping what the cache holds
    tasks: list[Task] = []
    reused: list[dict] = []
    for it in items:
        for sp in specs:
            base = _base_row(it, sp, max_slices)
            have = {k[6]: r for k, r in cache.items()
                    if k[:6] == point_key(dict(base, setting=""))[:6]}
            skip = frozenset(have)
            if have and not it.error and not sp.error:
                bits = int(next(iter(have.values()))["bits"])
                try:
                    wanted = {s.name for s in settings_for(sp, bits)}
                except Exception:  # noqa: BLE001
                    wanted = set()
                reused += [r for n, r in have.items() if n in wanted]
                if wanted and wanted <= skip:
                    continue
            tasks.append(Task(it, sp, max_slices, skip))
    rows: list[dict] = list(reused)
    order = {s.curve: i for i, s in enumerate(specs)}
    # cached points this run does not select (other codecs, models, inputs) stay in points.csv:
    # a partial run never discards measurements; curves and reports cover this run's selection
    used = {id(r) for r in reused}
    measured_models = {s.model for s in specs if s.codec == BMZ}
    kept = [r for r in cache.values() if id(r) not in used  # superseded weights of a model measured now: dropped
            and not (r.get("codec") == BMZ and r.get("model") in measured_models)]

    def save():
        write_csv(points_path, _sort_rows(rows, order) + kept, FIELDS)

    bar = tqdm(total=len(tasks), desc="rd-curve", unit="task", disable=not progress,
               dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 30.0)
    n_measured = 0
    jobs = max(1, int(jobs))
    if jobs == 1 or len(tasks) <= 1:
        import torch

        nt = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for t in tasks:
                bar.set_postfix_str(f"{Path(t.item.name).name[:24]} {t.spec.curve}", refresh=False)
                got = run_task(t)
                rows += got
                n_measured += len(got)
                save()
                bar.update(1)
        finally:
            torch.set_num_threads(nt)
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as ex:
            futs = {ex.submit(run_task, t): t for t in tasks}
            for fu in as_completed(futs):
                t = futs[fu]
                try:
                    got = fu.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker is an error row
                    got = [dict(_base_row(t.item, t.spec, max_slices),
                                group=f"{t.item.source}/?", setting="", error=_err(e))]
                rows += got
                n_measured += len(got)
                save()
                bar.update(1)
    bar.close()
    save()
    rows = _sort_rows(rows, order)
    write_json(out / "points.json", {"info": info, "fields": FIELDS,
                                     "points": [{k: r.get(k) for k in FIELDS} for r in rows]})

    curves = group_curves(rows)
    curves += envelope(curves)
    write_csv(out / "curves.csv", curves, CURVE_FIELDS)
    anchors = [J2K] + ([anchor_id] if anchor_id != J2K else [])
    bd = bd_table(curves, anchors)
    write_csv(out / "bd_rate.csv", bd, ["group", "curve", "anchor", "bd_rate_psnr",
                                        "bd_rate_psnr_025_2", "bd_rate_ssim", "bd_psnr"])
    write_bd_md(out / "bd_rate.md", bd)
    groups = sorted({c["group"] for c in curves})
    res = Result(out, rows, curves, bd, groups, specs, info, n_reused=len(reused),
                 n_measured=n_measured, reference_groups=dict(reference_groups or {}))
    ref_rows = read_reference(reference)
    for g, rg in res.reference_groups.items():
        if ref_rows and g in groups:
            res.checks[g] = reference_check(curves, ref_rows, g, rg)
    if plots:
        items_by = {it.name: it for it in items}
        specs_by = {s.curve: s for s in specs}
        for g in groups:
            f = f"rd_{_slug(g)}.png"
            plot_group(out / f, g, curves, ref_rows, res.reference_groups.get(g))
            res.plots[g] = f
            f = f"errormap_{_slug(g)}.png"
            try:
                em = errormaps(out / f, g, rows, curves, items_by, specs_by, max_slices)
            except Exception as e:  # noqa: BLE001
                em = None
                if log:
                    log(f"error maps for {g} failed: {_err(e)}")
            if em:
                res.errormaps[g] = {"file": f, "info": em}
    write_report(out / "report.md", res)
    return res
