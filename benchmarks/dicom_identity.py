#!/usr/bin/env python
"""Do ``--lossless`` DICOM files come back as the originals, and what does keeping the non-pixel
bytes cost? (issue 17)

    python benchmarks/dicom_identity.py [--base-quality 0|auto] [--lossy-quality Q]

Every series of ``../shared/data/dicom`` and ``../shared/data/val`` (the files of each folder
grouped by SeriesInstanceUID; test files that share a UID but not a pixel layout are encoded one
by one) is encoded with ``bmz.compress_dataset(files, lossless=True)`` — the files' bytes as they
are on disk — and decoded with ``bmz.decompress_to_files``. Each file is then

* **byte-identical** (same SHA-256) — what every native-syntax original must be;
* **element-identical**: every data element the same (tag, VR, value bytes, order, sequences;
  ``bmz.io.dicom.layout.elements``) but those the native version of an encapsulated original
  must change, and the same pixel values (pydicom) — what an encapsulated original gives;
* or **different** (the script exits 1).

Series with encapsulated files are encoded again with ``keep_encapsulated=True`` (then every
file must be byte-identical). Sizes: the ``.bmz`` file; the pixel payload (the slice chunks);
the kept bytes (the attachment: every file but its pixel data, xz) before and after
compression; the metadata block and headers (the rest). bpp is per voxel of the series.
``--lossy-quality Q`` also encodes every series lossy at quality Q and reports the kept bytes
against that (much smaller) payload.

Writes ``benchmarks/results/dicom_identity.md`` and ``dicom_identity.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
OUT = HERE / "results"

import pydicom  # noqa: E402

import bmz  # noqa: E402
from bmz.bitstream import BmzReader  # noqa: E402
from bmz.errors import InputError  # noqa: E402
from bmz.io.dicom import kept as dicom_kept  # noqa: E402
from bmz.io.dicom.layout import EXPLICIT_LE, layout  # noqa: E402


def series_of_folder(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    """The image series of the files directly in ``folder``: (UID, {name: bytes})."""
    groups: dict[str, dict[str, bytes]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.endswith((".nii", ".nii.gz")):
            continue
        raw = p.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" in ds:
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), {})[p.name] = raw
    return sorted(groups.items())


def folders() -> list[Path]:
    out = []
    for sub in ("dicom", "val"):
        for d, _, files in sorted(os.walk(DATA / sub)):
            if any(not f.endswith((".nii", ".nii.gz", ".json", ".txt", ".csv")) for f in files):
                out.append(Path(d))
    return out


def is_encapsulated(raw: bytes) -> bool:
    return pydicom.uid.UID(layout(raw).transfer_syntax or EXPLICIT_LE).is_encapsulated


def sizes(data: bytes) -> dict:
    with BmzReader(data) as r:
        payload = sum(r.chunk_sizes())
        attachment = (r.meta.get("attachment") or {}).get("length", 0)
        meta = r.meta
        voxels = 1
        for v in meta["shape"]:
            voxels *= int(v)
    kept = meta["source_meta"]["dicom"]["kept"]
    return {"bytes": len(data), "payload": payload, "kept": attachment,
            "kept_unpacked": kept["unpacked"], "verbatim": kept["verbatim"],
            "header": len(data) - payload - attachment, "voxels": voxels}


def check(raws: dict[str, bytes], data: bytes) -> tuple[int, int, list[str]]:
    """(byte-identical, element-identical, problems) of the decoded files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = dict(bmz.decompress_to_files(data))
    names = {f"IM{i + 1:05d}.dcm": n for i, n in enumerate(raws)}
    same = elements = 0
    problems = []
    for stored, name in names.items():
        raw, got = raws[name], back.get(stored)
        if got is None:
            problems.append(f"{name}: missing")
        elif dicom_kept.sha256(got) == dicom_kept.sha256(raw):
            same += 1
        elif is_encapsulated(raw):
            frames = pydicom.dcmread(io.BytesIO(raw)).pixel_array
            why = dicom_kept.native_differences(raw, got, frames)
            if why:
                problems.append(f"{name}: {why}")
            else:
                elements += 1
        else:
            problems.append(f"{name}: not byte-identical")
    return same, elements, problems


def encode(raws: dict[str, bytes], base_quality, **kw) -> bytes:
    return bmz.compress_dataset(list(raws.values()), lossless=True, base_quality=base_quality,
                                **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-quality", default="0", help="lossless base layer: 0 (none) or auto")
    ap.add_argument("--lossy-quality", type=int, default=None,
                    help="also encode every series lossy at this quality")
    args = ap.parse_args()
    base = args.base_quality if args.base_quality == "auto" else int(args.base_quality)
    rows, problems = [], []
    t0 = time.time()
    for folder in folders():
        rel = folder.relative_to(DATA).as_posix()
        for uid, members in series_of_folder(folder):
            try:
                groups = [(members, encode(members, base))]
            except InputError as e:  # a shared UID over different pixel layouts: file by file
                if "differs from" not in str(e):
                    raise
                groups = [({n: r}, encode({n: r}, base)) for n, r in members.items()]
            for raws, data in groups:
                same, elements, bad = check(raws, data)
                problems += [f"{rel}/{p}" for p in bad]
                row = {"folder": rel, "series": uid[-12:], "files": len(raws),
                       "ts": ", ".join(sorted({layout(r).transfer_syntax for r in raws.values()})),
                       "identical": same, "elements": elements, "different": len(bad),
                       **sizes(data)}
                encapsulated = {n: r for n, r in raws.items() if is_encapsulated(r)}
                row["verbatim_identical"] = row["verbatim_kept"] = ""
                if encapsulated:
                    full = encode(raws, base, keep_encapsulated=True)
                    s2, e2, bad2 = check(raws, full)
                    problems += [f"{rel}/{p} (keep_encapsulated)" for p in bad2]
                    if s2 != len(raws):
                        problems.append(f"{rel}: keep_encapsulated: {s2} of {len(raws)} "
                                        "byte-identical")
                    row["verbatim_identical"] = s2
                    row["verbatim_kept"] = sizes(full)["kept"]
                if args.lossy_quality is not None:
                    lossy = bmz.compress_dataset(list(raws.values()), quality=args.lossy_quality)
                    row["lossy_payload"] = sizes(lossy)["payload"]
                rows.append(row)
                print(f"{rel} {uid[-12:]}: {row['files']} files, {same} identical, "
                      f"{elements} element-identical, kept {row['kept']} B "
                      f"({row['kept_unpacked']} B raw), payload {row['payload']} B", flush=True)
    write(rows, problems, base, args.lossy_quality, time.time() - t0)
    return 1 if problems else 0


def write(rows: list[dict], problems: list[str], base, lossy_q, seconds: float) -> None:
    OUT.mkdir(exist_ok=True)
    keys = list(rows[0])
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(OUT / "dicom_identity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)

    def tot(k: str) -> int:
        return sum(int(r.get(k) or 0) for r in rows)

    n_files, n_series = tot("files"), len(rows)
    vox = tot("voxels")
    bpp = lambda b: 8 * b / max(1, vox)  # noqa: E731
    enc = [r for r in rows if r["verbatim_identical"] != ""]  # series with encapsulated files
    native = [r for r in rows if r["verbatim_identical"] == ""]
    lines = [
        "# DICOM `--lossless`: the original files back, and what keeping them costs",
        "",
        f"`python benchmarks/dicom_identity.py --base-quality {base}"
        + (f" --lossy-quality {lossy_q}" if lossy_q is not None else "") + "` — bmz "
        f"{bmz.__version__}, {n_series} series ({n_files} files) of `../shared/data/dicom` and "
        f"`val/`, each encoded with `bmz.compress_dataset(files, lossless=True, "
        f"base_quality={base!r})` from the files' bytes and decoded with "
        f"`bmz.decompress_to_files`; {seconds:.0f} s on this machine "
        f"(load average {os.getloadavg()[0]:.1f}).",
        "",
        "## Identity",
        "",
        "| | series | files | byte-identical | every element identical, native pixels | different |",
        "|---|---:|---:|---:|---:|---:|",
        f"| native transfer syntaxes | {len(native)} | {sum(r['files'] for r in native)} | "
        f"{sum(r['identical'] for r in native)} | {sum(r['elements'] for r in native)} | "
        f"{sum(r['different'] for r in native)} |",
        f"| with encapsulated files (default) | {len(enc)} | {sum(r['files'] for r in enc)} | "
        f"{sum(r['identical'] for r in enc)} | {sum(r['elements'] for r in enc)} | "
        f"{sum(r['different'] for r in enc)} |",
        f"| the same with `keep_encapsulated` | {len(enc)} | {sum(r['files'] for r in enc)} | "
        f"{sum(int(r['verbatim_identical']) for r in enc)} | 0 | "
        f"{sum(r['files'] - int(r['verbatim_identical']) for r in enc)} |",
        "",
        ("Every file came back as promised." if not problems else
         "**Problems:**\n\n" + "\n".join(f"* {p}" for p in problems)),
        "",
        "## What the kept bytes cost",
        "",
        f"All series together: {vox / 1e6:.1f} M voxels; original files "
        f"{tot('kept_unpacked') / 1e6:.2f} MB of non-pixel bytes (preamble, file meta, every "
        f"element but Pixel Data, padding), kept in **{tot('kept') / 1e3:.1f} kB** "
        f"({bpp(tot('kept')):.3f} bpp, {100 * tot('kept') / max(1, tot('payload')):.1f} % of "
        f"the {tot('payload') / 1e6:.2f} MB lossless pixel payload, "
        f"{tot('kept_unpacked') / max(1, tot('kept')):.0f}:1 compression); metadata and headers "
        f"{tot('header') / 1e3:.1f} kB ({bpp(tot('header')):.3f} bpp). The whole `.bmz` files: "
        f"{tot('bytes') / 1e6:.2f} MB ({bpp(tot('bytes')):.3f} bpp).",
        "",
    ]
    if enc:
        v = sum(int(r["verbatim_kept"]) for r in enc)
        k = sum(r["kept"] for r in enc)
        p = sum(r["payload"] for r in enc)
        lines += [f"`keep_encapsulated` on the {len(enc)} series with encapsulated files: kept "
                  f"bytes {k / 1e3:.1f} kB → {v / 1e3:.1f} kB (the compressed pixel data, stored "
                  f"as they are), {100 * v / max(1, p):.0f} % of their lossless payload "
                  f"({p / 1e3:.1f} kB).", ""]
    if lossy_q is not None:
        lp = tot("lossy_payload")
        lines += [f"Lossy at quality {lossy_q}: pixel payload {lp / 1e6:.2f} MB "
                  f"({bpp(lp):.3f} bpp); the same kept bytes are {100 * tot('kept') / max(1, lp):.1f} "
                  "% of it.", ""]
    lines += [
        "## Per series",
        "",
        "kept: the attachment (xz of every file but its pixel data); raw: those bytes before xz; "
        "payload: the lossless slice chunks; bpp per voxel of the series.",
        "",
        "| folder | series (UID end) | files | transfer syntax | identical | element-identical | "
        "kept B | raw B | kept bpp | kept / payload | keep_encapsulated kept B |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['folder']} | …{r['series']} | {r['files']} | {r['ts']} | {r['identical']} | "
            f"{r['elements']} | {r['kept']} | {r['kept_unpacked']} | "
            f"{8 * r['kept'] / max(1, r['voxels']):.3f} | "
            f"{100 * r['kept'] / max(1, r['payload']):.1f} % | {r['verbatim_kept']} |")
    (OUT / "dicom_identity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
