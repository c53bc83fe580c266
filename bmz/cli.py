"""``bmz`` command line: a thin layer on :mod:`bmz.api`.

Every failure prints one line ``bmz: error: …`` (which file, which slice, what is wrong) and exits
with the error class's code (see :mod:`bmz.errors`); nothing is left half-written.
"""

from __future__ import annotations

import json
import math
import sys

import click
import numpy as np

from . import api, target
from ._deps import optional
from ._fileutil import check_output_path
from ._version import __version__
from .codec import zoo
from .errors import BmzError, InputError, MissingDependencyError


def _fail(e: BaseException) -> None:
    code = getattr(e, "exit_code", 1)
    click.echo(f"bmz: error: {e}", err=True)
    sys.exit(code)


def _parse_slices(text: str | None):
    """``A:B`` (Python slice, end exclusive), ``A:B:S``, ``K`` or ``K,L,M`` → slice / list."""
    if text is None:
        return None
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise InputError(f"--slices {text!r}: expected A:B, A:B:STEP, K or K,L,M") from None


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BmzError as e:
            _fail(e)
        except MemoryError:
            sub = ctx.invoked_subcommand or ""
            click.echo(f"bmz: error: {sub}: not enough memory for this input on this machine "
                       "(nothing was written)", err=True)
            sys.exit(1)
        except OSError as e:  # an operating-system failure bmz did not anticipate: one line
            click.echo(f"bmz: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("bmz: interrupted; no output written", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmz")
def main() -> None:
    """bmz: learned compression for MRI (NIfTI, DICOM, NumPy ↔ .bmz)."""


def _check_fidelity_options(quality, max_error, lossless, base_quality,
                            keep_encapsulated=False) -> None:
    """--quality is for lossy files, --base-quality for bounded ones (--max-error / --lossless),
    --keep-encapsulated for lossless ones: :func:`bmz.api.check_fidelity_options`."""
    api.check_fidelity_options(quality, max_error, lossless, base_quality, keep_encapsulated)


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(), help="output .bmz file")
@click.option("-q", "--quality", default=None, type=int, help="quality level, 1 (smallest) .. the model's number of levels (`bmz models`); default: the model's default")
@click.option("-m", "--model", default=None, help="model name (default: the flagship)")
@click.option("--series", default=None, help="DICOM folder with several series: the one to encode (a whole UID, a series number, or an unambiguous UID prefix)")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output")
@click.option("--verify", is_flag=True, help="decode the written file and report PSNR and max error")
@click.option("--compare", is_flag=True,
              help="with the verification (implied), also code the volume with JPEG 2000 "
                   "(OpenJPEG, at its real bit depth) at the same size and report its PSNR "
                   "(needs imagecodecs: pip install 'bmz[bench]'; without it, says so)")
@click.option("--max-error", "max_error", default=None, type=int, metavar="D",
              help="guarantee |decoded - original| <= D stored units on every voxel (0 = lossless)")
@click.option("--lossless", is_flag=True, help="keep every bit (= --max-error 0)")
@click.option("--base-quality", default=None, metavar="auto|0|Q",
              help="with --max-error/--lossless: quality of the learned base layer (0: none; "
                   "default auto: whichever codes smaller)")
@click.option("--keep-encapsulated", is_flag=True,
              help="with --lossless, DICOM: also keep the compressed pixel bytes of originals in a "
                   "compressed transfer syntax, so that they decode byte-identical (otherwise: "
                   "every element identical, pixel data native)")
@click.option("--group", default=None, type=int, metavar="G",
              help="code slices in groups of G, each slice with the previous one as context "
                   "(inter-slice models, and --max-error / --lossless with any model; decoding a "
                   "slice touches at most G-1 others; 1 = every slice on its own); default: the "
                   "model's (`bmz models`), 8 with --max-error / --lossless")
@click.option("--target-psnr", "target_psnr", default=None, type=float, metavar="P",
              help="the smallest file whose PSNR (peak = volume max - min) reaches P dB: tries "
                   "the model's levels and --max-error bounds and keeps the smaller (reads the "
                   "volume whole; several trial encodes)")
@click.option("--jobs", "threads", default=None, type=click.IntRange(min=1),
              help="slices coded in parallel (default: every core; identical bytes for any number)")
@click.option("--quiet", is_flag=True, help="no progress bar, no summary")
def encode(src, dst, quality, model, series, force, verify, compare, max_error, lossless,
           base_quality, keep_encapsulated, group, target_psnr, threads, quiet) -> None:
    """Encode a NIfTI / DICOM / .npy image SRC into a .bmz file."""
    _check_fidelity_options(quality, max_error, lossless, base_quality, keep_encapsulated)
    verify = verify or compare
    if target_psnr is not None:
        if quality is not None or max_error is not None or lossless or base_quality:
            raise InputError("--target-psnr chooses the quality or the max error itself: leave "
                             "out --quality, --max-error, --lossless and --base-quality")
        check_output_path(dst, force=force)  # fail before the search, not after
        rep, choice = target.encode_file_for_psnr(src, dst, target_psnr, model=model,
                                                  series=series, group=group, force=force,
                                                  progress=not quiet, verify=verify,
                                                  threads=threads)
        max_error = choice.max_error
        if not quiet:
            click.echo(f"chosen for --target-psnr {target_psnr:g}: {choice.describe()}")
    else:
        rep = api.encode_file(src, dst, quality=quality, model=model,
                              series=series, force=force, progress=not quiet, verify=verify,
                              max_error=max_error, lossless=lossless,
                              base_quality=base_quality or "auto",
                              keep_encapsulated=keep_encapsulated, group=group,
                              threads=threads)
    for note in rep.notes:  # what a decode of this file cannot give back as it was
        click.echo(f"bmz: warning: {note}", err=True)
    if not quiet:
        click.echo(f"{dst}: {rep.n_bytes} bytes from {rep.raw_bytes} raw, shape {list(rep.shape)} "
                   f"{rep.dtype}, {rep.bpp:.3f} bpp, ratio {rep.ratio:.1f}:1")
        if max_error is not None or lossless:
            d = 0 if max_error is None else max_error
            click.echo("guaranteed: lossless (every bit), checked at encode time" if d == 0 else
                       f"guaranteed: max abs error <= {d} on every voxel, checked at encode time")
        dicom = api.info(dst).get("dicom")
        if dicom and dicom.get("restore"):
            click.echo(_dicom_summary(dicom, lossless or max_error == 0))
        if verify:
            click.echo(f"verified: PSNR {rep.psnr:.2f} dB (peak = volume max - min), "
                       f"max abs error {rep.max_error}")
        if compare:
            click.echo(_jpeg2000_comparison(src, series, rep, api.info(dst)["slice_bytes"]))


def _jpeg2000_comparison(src, series, rep, slice_bytes) -> str:
    """One line: JPEG 2000 (:func:`bmz.baselines.jpeg2000_at_bytes`) on the volume just encoded,
    at the size of its .bmz file (``slice_bytes``: its slices' sizes), and its PSNR against bmz's
    (``rep``, verified). imagecodecs is
    an optional extra (bench): without it, the line says how to get the comparison."""
    try:
        optional("imagecodecs", "bench", "the JPEG 2000 comparison")
    except MissingDependencyError as e:
        return f"JPEG 2000 at the same bpp: not measured ({e})"
    # the tool (bmz.baselines), imported only here, where its extra is installed
    from . import baselines, io, metrics

    vol = np.asarray(io.read(src, series=series).data)
    try:
        cv = baselines.jpeg2000_at_bytes(vol, rep.n_bytes, slice_bytes)
    except (baselines.UnsupportedBitDepth, RuntimeError, ValueError) as e:
        return f"JPEG 2000 at the same bpp: not measured ({e})"
    bpp = 8.0 * cv.n_bytes / max(1, vol.size)
    psnr = metrics.psnr(vol, cv.recon)
    diff = (f"bmz {rep.psnr - psnr:+.2f} dB" if math.isfinite(rep.psnr) and math.isfinite(psnr)
            else "bmz lossless" if math.isinf(rep.psnr) else "JPEG 2000 lossless")
    return (f"compared: JPEG 2000 (OpenJPEG, {cv.bits} bits) at {bpp:.3f} bpp: PSNR {psnr:.2f} dB "
            f"({diff})")


def _dicom_summary(d: dict, lossless: bool) -> str:
    """One line: a DICOM series' files, how a decode gives them back, the kept bytes."""
    n, restore = d["files"], d.get("restore") or {}
    kept = d.get("kept_bytes") or 0
    if lossless:
        parts = []
        if restore.get("identical"):
            parts.append(f"{restore['identical']} byte-identical")
        if restore.get("elements"):
            parts.append(f"{restore['elements']} with every element identical and native pixel "
                         "data")
        how = ", ".join(parts)
    else:
        how = "a derived (lossy-marked) series, every other element kept as it was"
    return (f"DICOM     {n} file{'s' if n != 1 else ''} decode to: {how}; kept non-pixel bytes "
            f"{kept} ({d.get('kept_unpacked_bytes') or 0} before compression)")


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(),
              help="output file: .nii, .nii.gz or .npy; or a folder (outdir/) for a DICOM original: "
                   "its files (a lossless .bmz gives the originals back), else a derived, "
                   "lossy-marked DICOM series")
@click.option("--slices", default=None, help="decode only these slices: A:B (end exclusive), K or K,L,M")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output")
@click.option("--skip-damaged", is_flag=True, help="decode what is intact; damaged slices are reported and filled with the minimum")
@click.option("--jobs", "threads", default=None, type=click.IntRange(min=1),
              help="slices decoded in parallel (default: every core; identical output for any number)")
@click.option("--device", default=None,
              help="where the synthesis runs: cpu (default), cuda or cuda:N (the same output)")
@click.option("--quiet", is_flag=True)
def decode(src, dst, slices, force, skip_damaged, threads, device, quiet) -> None:
    """Decode a .bmz file SRC (all slices, or a range read by random access)."""
    rep, damaged = api.decode_file(src, dst, slices=_parse_slices(slices), force=force,
                                   progress=not quiet, skip_damaged=skip_damaged, threads=threads,
                                   device=device)
    if damaged:
        click.echo(f"bmz: warning: {src}: damaged slices not recovered: "
                   f"{', '.join(map(str, damaged))}", err=True)
    for note in rep.notes:
        click.echo(f"bmz: warning: {note}", err=True)
    if not quiet:
        click.echo(f"{dst}: shape {list(rep.shape)} {rep.dtype}")
    if damaged:
        sys.exit(3)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def verify(files) -> None:
    """Check every checksum of .bmz FILES without decoding them.

    Prints one line per file; exits 3 if any file is damaged (naming its slices), 2 if one
    cannot be read, 0 when all are intact."""
    worst = 0
    for f in files:
        try:
            r = api.verify(f)
        except BmzError as e:
            click.echo(f"{f}: FAILED: {e}", err=True)
            worst = max(worst, getattr(e, "exit_code", 1))
            continue
        if r["ok"]:
            line = f"{f}: OK ({r['n_slices']} slices, every checksum valid)"
        elif not r["damaged"]:
            line = (f"{f}: DAMAGED: the attachment (the DICOM files' kept bytes) fails its "
                    "checksum; the slices are intact (decode to .nii/.npy still works)")
            worst = max(worst, 3)
        else:
            d = r["damaged"]
            line = (f"{f}: DAMAGED: {len(d)} of {r['n_slices']} slices fail their checksum: "
                    + ", ".join(map(str, d[:20])) + (" …" if len(d) > 20 else "")
                    + (f"; {len(r['affected'])} more depend on them (inter-slice context): "
                       + ", ".join(map(str, r["affected"][:20])) + (" …" if len(r["affected"]) > 20 else "")
                       if r.get("affected") else "")
                    + "; `bmz decode --skip-damaged` recovers the others"
                    + ("" if r.get("attachment_ok", True) else "; the attachment is damaged too"))
            worst = max(worst, 3)
        if not r["model_available"]:
            line += f"; cannot be decoded here: {r['model_note']}"
        elif r["model_note"]:
            line += f"; {r['model_note']}"
        click.echo(line, err=not r["ok"])
    if worst:
        sys.exit(worst)


@main.command()
@click.argument("src", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(src, as_json) -> None:
    """Show what a .bmz file holds, without decoding it."""
    d = api.info(src)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    sizes = d["slice_bytes"]
    click.echo(f"file      {src}")
    click.echo(f"shape     {d['shape']}  dtype {d['dtype']}  source {d['source']}")
    click.echo(f"model     {d['model']}  quality {d['quality']}  weights sha256 {str(d['weights_sha256'])[:16]}…")
    i = d["intensity"] or {}
    click.echo(f"intensity stored {i.get('min')}..{i.get('max')} ({i.get('bits')} bits) ↔ [0, 1]")
    if d.get("max_error") is not None:
        base = f"learned base layer quality {d['quality']}" if d["quality"] else "no base layer"
        click.echo("fidelity  lossless: every bit (max error 0)" if d["max_error"] == 0 else
                   f"fidelity  max abs error {d['max_error']} (stored units), guaranteed")
        click.echo(f"layers    {base} + residual coder")
    click.echo(f"format    .bmz {d['format_version']}, chunk format {d['chunk_format']}, written by bmz {d['bmz_version']}")
    if d.get("group") is not None:
        click.echo(f"groups    slices coded in groups of {d['group']} (inter-slice context): decoding "
                   f"a slice reads at most {d['group'] - 1} others")
    click.echo(f"size      {d['bytes']} bytes  {d['bpp']:.4f} bpp  ratio {d['ratio']:.1f}:1")
    if sizes:
        click.echo(f"slices    {len(sizes)}: min {min(sizes)} / mean {sum(sizes) / len(sizes):.0f} / "
                   f"max {max(sizes)} bytes")
    dicom = d.get("dicom")
    if dicom:
        if dicom.get("restore"):
            click.echo(_dicom_summary(dicom, d.get("max_error") == 0))
            click.echo(f"          transfer syntaxes: {', '.join(dicom['transfer_syntaxes'])}")
        else:
            click.echo(f"DICOM     {dicom['files']} files (written by an older bmz: DICOM-JSON "
                       "meta, binary elements over 64 KiB not kept)")
        for note in dicom.get("notes") or []:
            click.echo(f"note      {note}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models(as_json) -> None:
    """List the shipped models: quality levels, default level, measured rate range, status."""
    rows = []
    for name, path in sorted(zoo.available_models().items()):
        card = zoo.read_card(name)
        n_q, default = zoo.card_qualities(card)
        rd = {q["quality"]: q for q in card.get("rd_val") or [] if q.get("group") == "val/8-bit"}
        rows.append({"name": name, "qualities": n_q, "default_quality": default,
                     "default": name == zoo.DEFAULT_MODEL,
                     "default_native": name == zoo.DEFAULT_MODEL_NATIVE, "status": card.get("status", ""),
                     "steps": (card.get("training") or {}).get("steps"),
                     "val_8bit": [{"quality": q, "bpp": rd[q]["bpp"], "psnr": rd[q]["psnr"]}
                                  for q in sorted(rd)],
                     "weights": str(path), "sha256": card.get("sha256")})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        v = r["val_8bit"]
        rate = (f"{v[0]['bpp']:.2f}–{v[-1]['bpp']:.2f} bpp, {v[0]['psnr']:.1f}–{v[-1]['psnr']:.1f} dB on val/8-bit"
                if v else "not measured")
        d = next((x for x in v if x["quality"] == r["default_quality"]), None)
        dflt = f"default {r['default_quality']}" + (f" ({d['bpp']:.2f} bpp, {d['psnr']:.1f} dB)" if d else "")
        role = (" (default model)" if r["default"] else
                " (default model for lossy coding of volumes of more than 8 bits)" if r.get("default_native") else "")
        click.echo(f"{r['name']}{role}: qualities 1..{r['qualities']}, "
                   f"{dflt}; {rate}; {r['steps']} training steps")
        if r["status"]:
            click.echo(f"    {r['status']}")


@main.command()
@click.option("--model", "model_name", default="hyperprior", show_default=True)
@click.option("--lambdas", default=None, help="comma-separated λ, one per quality level (variable-rate models); with --resume, the checkpoint's λ plus new ones below or above add quality levels")
@click.option("--data", multiple=True, required=True, help="training folders (e.g. ../shared/data/train)")
@click.option("--val", "val_data", multiple=True, required=True, help="validation folders (e.g. ../shared/data/val)")
@click.option("--steps", default=100000, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="base learning rate (default 2e-4, or the checkpoint's when resuming)")
@click.option("--resume", default=None, type=click.Path(exists=True), help="checkpoint to continue from")
@click.option("--threads", default=None, type=int)
@click.option("--checkpoint-minutes", default=5.0, show_default=True, type=float)
@click.option("--max-minutes", default=None, type=float, help="stop (with a checkpoint) after this long")
@click.option("--until", default=None, type=int, help="stop (with a checkpoint) at this step")
@click.option("--init-from", default=None, type=click.Path(exists=True), help="new run: start from the same-named, same-shaped weights of this checkpoint or .pt (a warm start across architectures)")
@click.option("--budget-minutes", default=None, type=float, help="a run planned by wall time: the lr decay starts at 90 %% of it, the run stops (with a checkpoint) at it")
@click.option("--depth", default=None, type=int, help="consecutive slices per sample (default 2 for inter-slice models, else 1)")
@click.option("--patch", default=None, type=int,
              help="side of the square training patches (default 128, or the checkpoint's when resuming)")
@click.option("-o", "--output", "out", required=True, help="output stem, e.g. models/hyperprior")
def train(model_name, lambdas, data, val_data, steps, batch_size, lr, resume, threads,
          checkpoint_minutes, max_minutes, until, init_from, budget_minutes, depth, patch, out) -> None:
    """Train a model; writes OUT.ckpt (resumable, every few minutes) and OUT.log; when --steps is reached, also the frozen OUT.pt and its card OUT.json (see `bmz export`)."""
    from .train import train as run

    run(model_name, out, list(data), list(val_data),
        steps, resume=resume, batch_size=batch_size, lr=lr, threads=threads,
        checkpoint_minutes=checkpoint_minutes, until=until, max_minutes=max_minutes,
        lambdas=[float(v) for v in lambdas.split(",")] if lambdas else None,
        init_from=init_from, depth=depth, budget_minutes=budget_minutes, patch=patch)


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("-o", "--output", "out", required=True, help="output stem, e.g. models/hyperprior")
def export(checkpoint, out) -> None:
    """Freeze a training CHECKPOINT into shipped weights OUT.pt and its model card OUT.json
    (then measure it: python benchmarks/rd_val.py --update-cards)."""
    from .train import export as run

    weights = run(checkpoint, out)
    click.echo(f"{weights}: written with its model card {weights.with_suffix('.json')}")


@main.command("rd-curve")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="output folder (points.csv/json, curves.csv, bd_rate.*, plots, report.md)")
@click.option("--codecs", default=",".join(("bmz", "jpeg", "jpeg2000", "htj2k", "jpegls", "jpegxl", "avif")),
              show_default=True, help="comma list of codecs")
@click.option("--models", default=None, help="comma list of shipped bmz models and max-error (bmz --max-error at δ = 0, 1, 2, 4 …); default: all of them; with two or more, also bmz/envelope (their best points)")
@click.option("--max-slices", default=None, type=click.IntRange(min=1),
              help="code only the N middle slices of each volume")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="processes (one volume x codec per task, one thread each)")
@click.option("--anchor", default=None, help="extra BD-rate anchor: a codec name, bmz or bmz/MODEL (JPEG 2000 always)")
@click.option("--reuse", is_flag=True, help="keep the points already in OUTDIR/points.csv (same volume, codec version / model SHA-256, setting)")
@click.option("--quiet", is_flag=True, help="no progress bar, no summary")
def rd_curve(inputs, outdir, codecs, models, max_slices, jobs, anchor, reuse, quiet) -> None:
    """Rate-distortion curves of bmz and classical codecs on INPUT files / folders.

    INPUT: NIfTI, .npy, a DICOM file or series folder, or folders of them (searched recursively).
    Groups: the folder given on the command line x bit depth class (8-bit, >8-bit)."""
    from . import rdcurve

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    res = rdcurve.run(inputs, outdir, codecs=split(codecs), models=split(models),
                      max_slices=max_slices, jobs=jobs, anchor=anchor, reuse=reuse,
                      progress=not quiet, command=" ".join(["bmz", *sys.argv[1:]]) or None,
                      log=lambda m: click.echo(f"bmz: warning: {m}", err=True))
    if not quiet:
        click.echo(f"{outdir}: {len(res.rows)} points ({res.n_reused} reused), "
                   f"{len(res.errors)} error rows, groups: {', '.join(res.groups) or 'none'}")
        for b in res.bd:
            if b["anchor"] == rdcurve.J2K:
                v = b["bd_rate_psnr"]
                click.echo(f"  {b['group']} {b['curve']}: BD-rate vs JPEG 2000 (PSNR) "
                           + ("n/a" if v is None else f"{v:+.1f} %"))
        click.echo(f"report: {outdir}/report.md")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(),
              help=".nii / .nii.gz (one volume per mixture: NAME_LABEL.nii.gz when several), .npy "
                   "(all mixtures in one array) or .png (a grid of sources and mixtures)")
@click.option("--alpha", default=None, help="two files: comma list of α in [0, 1], weights (1-α, α)")
@click.option("--weights", multiple=True, help="one weight per file, comma-separated, summing to 1 "
                                               "(repeat for several mixtures)")
@click.option("--random", "n_random", default=None, type=int,
              help="K mixtures with weights drawn from Dirichlet(1, …, 1)")
@click.option("--seed", default=None, type=int, help="seed of --random")
@click.option("--concentration", default=1.0, show_default=True, type=float,
              help="Dirichlet concentration of --random (1 = uniform on the simplex)")
@click.option("--slices", default=None, help="output slices (the first file's grid): A:B, K or K,L,M; "
                                             ".png: the rows (default: the middle slice)")
@click.option("-f", "--force", is_flag=True, help="overwrite existing outputs")
@click.option("--quiet", is_flag=True)
def interpolate(files, dst, alpha, weights, n_random, seed, concentration, slices, force, quiet) -> None:
    """Mix the latent codes of .bmz FILES (one model) and synthesise new slices.

    Only the stored codes are entropy-decoded and mixed (no pixel decode and re-encode); the
    mixture is on the first file's slice grid, other lengths matched by relative position."""
    from . import interpolation as ip

    if sum(x is not None and x != () for x in (alpha, weights, n_random)) != 1:
        raise InputError("give exactly one of --alpha (two files), --weights or --random K")
    if seed is not None and n_random is None:
        raise InputError("--seed applies to --random only")
    if alpha is not None:
        if len(files) != 2:
            raise InputError(f"--alpha mixes two files, got {len(files)}; use --weights or --random "
                             "for more")
        alphas = ip.parse_numbers(alpha, "--alpha")
        w, labels = ip.alpha_weights(alphas), [f"a{a:g}" for a in alphas]
    elif weights:
        w = [ip.parse_numbers(t, "--weights") for t in weights]
        labels = [f"w{i + 1}" for i in range(len(w))]
    else:
        w = ip.dirichlet_weights(len(files), n_random, seed, concentration)
        labels = [f"r{i + 1:02d}" for i in range(len(w))]
    paths = ip.interpolate_files(list(files), dst, w, labels, slices=_parse_slices(slices),
                                 force=force, progress=not quiet)
    if not quiet:
        rows = ip.validate_weights(w, len(files))
        if len(paths) == len(rows):
            for p, lab, row in zip(paths, labels, rows):
                click.echo(f"{p}: {lab}, weights {', '.join(f'{x:.4f}' for x in row)}")
        else:
            click.echo(f"{paths[0]}: {len(rows)} mixtures ({', '.join(labels)}) of {len(files)} files")


# --------------------------------------------------------------------------------------------
# bmz batch: whole folders on a Dask cluster (bmz/batch.py)
# --------------------------------------------------------------------------------------------


def _batch_cluster_options(f):
    f = click.option("--quiet", is_flag=True, help="no progress bar, no summary")(f)
    f = click.option("--workers", default=None, type=click.IntRange(min=1),
                     help="worker processes of the local cluster (default: one per core); with "
                          "--scheduler, wait until that many workers are connected")(f)
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="a running Dask scheduler (tcp://host:8786) or its scheduler file; "
                          "default: a LocalCluster on this machine")(f)
    return f


def _batch_run(fn, *args, **kw):
    """Run a bmz.batch function; Ctrl-C says what is kept (finished inputs are in the manifest)."""
    try:
        return fn(*args, **kw)
    except KeyboardInterrupt:
        click.echo("bmz: interrupted; the inputs finished so far are complete and in the manifest "
                   "(run the same command again to continue)", err=True)
        sys.exit(130)


def _batch_report(res, quiet: bool, label: str = "error") -> None:
    """Failures one line each (at most 20, then a count), then the summary; exit 1 if any."""
    from . import batch

    bad = res.failures
    for r in bad[:20]:
        what = r["input"] + (f" (series {r['series']})" if r.get("series") else "")
        click.echo(f"bmz: {label}: {what}: {r.get('status')}: {r.get('error')}", err=True)
    if len(bad) > 20:
        click.echo(f"bmz: {label}: … and {len(bad) - 20} more"
                   + (f" (see {res.manifest})" if res.manifest else ""), err=True)
    if not quiet:
        click.echo(batch.summary(res))
    if bad:
        sys.exit(3 if res.kind == "verify" and all(r.get("status") in ("damaged", "mismatch", "missing")
                                                   for r in bad) else 1)


@main.group()
def batch() -> None:
    """Encode, decode or verify whole folders on a Dask cluster (local by default).

    Each input is one task; a manifest (DST_DIR/manifest.jsonl and .csv) records every input;
    a re-run skips what is done and intact. Exit status 1 when any input failed."""


@batch.command("encode")
@click.argument("src_dir", type=click.Path())
@click.option("-o", "--output", "dst_dir", required=True, type=click.Path(), help="output folder (same layout as SRC_DIR)")
@click.option("-q", "--quality", default=None, type=int, help="quality level, 1 (smallest) .. the model's number of levels (`bmz models`); default: the model's default")
@click.option("-m", "--model", default=None, help="model name (default: the flagship)")
@click.option("-f", "--force", is_flag=True, help="re-encode inputs the manifest says are done")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="decode each output and record PSNR and max error")
@click.option("--max-error", "max_error", default=None, type=int, metavar="D",
              help="guarantee |decoded - original| <= D stored units on every voxel (0 = lossless)")
@click.option("--lossless", is_flag=True, help="keep every bit (= --max-error 0)")
@click.option("--base-quality", default=None, metavar="auto|0|Q",
              help="with --max-error/--lossless: quality of the learned base layer")
@_batch_cluster_options
def batch_encode(src_dir, dst_dir, quality, model, force, verify, max_error, lossless,
                 base_quality, scheduler, workers, quiet) -> None:
    """Encode every NIfTI / .npy file and DICOM series under SRC_DIR, one .bmz each."""
    from . import batch as b

    _check_fidelity_options(quality, max_error, lossless, base_quality)
    res = _batch_run(b.encode, src_dir, dst_dir, quality=quality,
                     model=model, scheduler=scheduler, workers=workers, force=force,
                     verify=verify, progress=not quiet, max_error=max_error, lossless=lossless,
                     base_quality=base_quality or "auto")
    _batch_report(res, quiet)


@batch.command("decode")
@click.argument("src_dir", type=click.Path())
@click.option("-o", "--output", "dst_dir", required=True, type=click.Path(), help="output folder (same layout as SRC_DIR)")
@click.option("--format", "fmt", default="nii.gz", show_default=True,
              type=click.Choice(["nii.gz", "nii", "npy"]), help="output format")
@click.option("-f", "--force", is_flag=True, help="re-decode files the manifest says are done")
@_batch_cluster_options
def batch_decode(src_dir, dst_dir, fmt, force, scheduler, workers, quiet) -> None:
    """Decode every .bmz under SRC_DIR."""
    from . import batch as b

    res = _batch_run(b.decode, src_dir, dst_dir, fmt, scheduler=scheduler, workers=workers,
                     force=force, progress=not quiet)
    _batch_report(res, quiet)


@batch.command("verify")
@click.argument("folder", type=click.Path())
@click.option("--decode", "decode_all", is_flag=True, help="also decode every file in full")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per file on stdout")
@_batch_cluster_options
def batch_verify(folder, decode_all, as_json, scheduler, workers, quiet) -> None:
    """Check every .bmz under FOLDER (checksums; SHA-256 against its manifest, if any).

    Exit status 3 when a file is damaged, missing or not the one the manifest records."""
    from . import batch as b

    res = _batch_run(b.verify, folder, decode_all=decode_all, scheduler=scheduler,
                     workers=workers, progress=not quiet and not as_json)
    if as_json:
        for r in res.results:
            click.echo(json.dumps(r, sort_keys=True))
    _batch_report(res, quiet or as_json, label="problem")


if __name__ == "__main__":  # pragma: no cover
    main()
