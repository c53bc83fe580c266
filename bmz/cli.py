"""``bmz`` command line: a thin layer on :mod:`bmz.api`.

Every failure prints one line ``bmz: error: …`` (which file, which slice, what is wrong) and exits
with the error class's code (see :mod:`bmz.errors`); nothing is left half-written.
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import BmzError, InputError


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


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(), help="output .bmz file")
@click.option("-q", "--quality", default=None, type=int, help="quality level, 1 (smallest) .. 8 (best); default 5")
@click.option("-m", "--model", default=None, help="model name (default: the flagship)")
@click.option("--series", default=None, help="DICOM folder with several series: the one to encode (UID or number)")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output")
@click.option("--verify", is_flag=True, help="decode the written file and report PSNR and max error")
@click.option("--quiet", is_flag=True, help="no progress bar, no summary")
def encode(src, dst, quality, model, series, force, verify, quiet) -> None:
    """Encode a NIfTI / DICOM / .npy image SRC into a .bmz file."""
    from . import api

    rep = api.encode_file(src, dst, quality=quality or api.DEFAULT_QUALITY, model=model,
                          series=series, force=force, progress=not quiet, verify=verify)
    if not quiet:
        click.echo(f"{dst}: {rep.n_bytes} bytes from {rep.raw_bytes} raw, shape {list(rep.shape)} "
                   f"{rep.dtype}, {rep.bpp:.3f} bpp, ratio {rep.ratio:.1f}:1")
        if verify:
            click.echo(f"verified: PSNR {rep.psnr:.2f} dB (peak = volume max - min), "
                       f"max abs error {rep.max_error}")


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "dst", required=True, type=click.Path(),
              help="output file: .nii, .nii.gz or .npy; or a folder (outdir/) for a DICOM original: "
                   "a derived, lossy-marked DICOM series")
@click.option("--slices", default=None, help="decode only these slices: A:B (end exclusive), K or K,L,M")
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output")
@click.option("--skip-damaged", is_flag=True, help="decode what is intact; damaged slices are reported and filled with the minimum")
@click.option("--quiet", is_flag=True)
def decode(src, dst, slices, force, skip_damaged, quiet) -> None:
    """Decode a .bmz file SRC (all slices, or a range read by random access)."""
    from . import api

    rep, damaged = api.decode_file(src, dst, slices=_parse_slices(slices), force=force,
                                   progress=not quiet, skip_damaged=skip_damaged)
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
    from . import api

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
        else:
            d = r["damaged"]
            line = (f"{f}: DAMAGED: {len(d)} of {r['n_slices']} slices fail their checksum: "
                    + ", ".join(map(str, d[:20])) + (" …" if len(d) > 20 else "")
                    + "; `bmz decode --skip-damaged` recovers the others")
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
    from . import api

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
    click.echo(f"size      {d['bytes']} bytes  {d['bpp']:.4f} bpp  ratio {d['ratio']:.1f}:1")
    if sizes:
        click.echo(f"slices    {len(sizes)}: min {min(sizes)} / mean {sum(sizes) / len(sizes):.0f} / "
                   f"max {max(sizes)} bytes")


@main.command()
@click.option("--model", "model_name", default="hyperprior", show_default=True)
@click.option("--lambdas", default=None, help="comma-separated λ, one per quality level (variable-rate models)")
@click.option("--data", multiple=True, help="training folders (default ../shared/data/train)")
@click.option("--val", "val_data", multiple=True, help="validation folders (default ../shared/data/val)")
@click.option("--steps", default=100000, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="base learning rate (default 2e-4, or the checkpoint's when resuming)")
@click.option("--resume", default=None, type=click.Path(exists=True), help="checkpoint to continue from")
@click.option("--threads", default=None, type=int)
@click.option("--checkpoint-minutes", default=5.0, show_default=True, type=float)
@click.option("--max-minutes", default=None, type=float, help="stop (with a checkpoint) after this long")
@click.option("--until", default=None, type=int, help="stop (with a checkpoint) at this step")
@click.option("-o", "--output", "out", required=True, help="output stem, e.g. models/hyperprior")
def train(model_name, lambdas, data, val_data, steps, batch_size, lr, resume, threads,
          checkpoint_minutes, max_minutes, until, out) -> None:
    """Train a model; writes OUT.ckpt (resumable, every few minutes) and OUT.log; when --steps is reached, also the frozen OUT.pt and its card OUT.json (see `bmz export`)."""
    from pathlib import Path

    from .train import train as run

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    run(model_name, out, list(data) or [str(root / "train")], list(val_data) or [str(root / "val")],
        steps, resume=resume, batch_size=batch_size, lr=lr, threads=threads,
        checkpoint_minutes=checkpoint_minutes, until=until, max_minutes=max_minutes,
        lambdas=[float(v) for v in lambdas.split(",")] if lambdas else None)


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
@click.option("--models", default=None, help="comma list of shipped bmz models (default: all)")
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


if __name__ == "__main__":  # pragma: no cover
    main()
