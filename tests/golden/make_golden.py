#!/usr/bin/env python
"""Golden files: add those of newly shipped weights, or regenerate all after a deliberate change.

    python tests/golden/make_golden.py          # add files for installed weights not yet covered
    python tests/golden/make_golden.py --all    # a format or numerics change meant to alter what
                                                # stored files decode to: regenerate every file
                                                # (and say so in the commit)

Sources (all permissively licensed real MRI): the README sample (SCT T1w, MIT, 8-bit), a crop of
the native 12-bit Siemens Prisma FLASH series (dcm_qa_decubitus, BSD-2-Clause) and a crop of a
BOLD EPI volume stored as int32 with 14 significant bits (niivue demo images, BSD-2-Clause). Each is
encoded with the flagship at its lowest and highest quality, with one factorized-prior model and
with the native-precision context model (slice groups) and the VQ-VAE at their lowest and
highest quality;
``golden.json`` records what each file must decode to (SHA-256 of the C-order array bytes) and the
weights it names. Retraining a model does not retire its files: the superseded weights are
archived (``models/archive``) and the old files must keep decoding with them, so the default mode
only adds files (named with the new weights' short SHA-256) beside the existing ones. A new file
format (container version / chunk format) is covered the same way: files of the old format stay,
and files in the new one are added (named with the format too).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

import numpy as np  # noqa: E402

from bmz import api, io  # noqa: E402
from bmz.codec import zoo  # noqa: E402
from bmz.rdcurve import bmz_file_format  # noqa: E402


def sources() -> dict[str, np.ndarray]:
    sct = io.read(REPO / "samples" / "sct_t1w.nii.gz").data[10:14]
    prisma = io.read(SHARED / "val" / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag").data[15:18, 80:176, 64:176]
    bold = io.read(SHARED / "train" / "niivue_demo_images" / "fmri.nii.gz").data[28:30]
    return {"sct_t1w_8bit": np.ascontiguousarray(sct), "prisma_12bit": np.ascontiguousarray(prisma),
            "bold_int32_14bit": np.ascontiguousarray(bold)}


def decoded_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def main(argv=None) -> int:
    regenerate = "--all" in (argv if argv is not None else sys.argv[1:])
    flagship = zoo.DEFAULT_MODEL
    family = "cnn-ae-8" if "cnn-ae-8" in zoo.available_models() else None
    path = HERE / "golden.json"
    record = {} if regenerate or not path.is_file() else json.loads(path.read_text())
    if regenerate:
        for old in HERE.glob("*.bmz"):
            old.unlink()
    fmt = bmz_file_format()
    covered = {(r["model"], r.get("weights_sha256") or _weights_of(HERE / f), r.get("format") or _format_of(HERE / f))
               for f, r in record.items()}
    for name, vol in sources().items():
        model, _ = zoo.load_model(flagship)
        plans = [(flagship, 1), (flagship, model.n_qualities)]
        if family:
            plans.append((family, 2))
        native = zoo.DEFAULT_MODEL_NATIVE  # the context model: slice groups (chunk format 5)
        if native in zoo.available_models():
            plans += [(native, 1), (native, zoo.load_model(native)[0].n_qualities)]
        if "vqvae" in zoo.available_models():  # codebook sums, a rescaled fixed-point synthesis
            plans += [("vqvae", 1), ("vqvae", zoo.load_model("vqvae")[0].n_qualities)]
        for mdl, q in plans:
            sha = zoo.sha256_file(zoo.find_weights(mdl))
            fmt = bmz_file_format(mdl)
            if (mdl, sha, fmt) in covered:
                continue
            blob = api.compress(vol, quality=q, model=mdl)
            tag = fmt.replace(".", "").replace("/", "f").replace(" ", "")  # 1.1/4 -> 11f4
            fname = next(f for f in (f"{name}_{mdl}_q{q}.bmz", f"{name}_{mdl}-{sha[:12]}_q{q}.bmz",
                                     f"{name}_{mdl}-{sha[:12]}-v{tag}_q{q}.bmz")
                         if not (HERE / f).exists())
            (HERE / fname).write_bytes(blob)
            back = api.decompress(blob)
            record[fname] = {"model": mdl, "quality": q, "shape": list(vol.shape), "dtype": vol.dtype.str,
                             "weights_sha256": sha, "format": fmt, "decoded_sha256": decoded_sha(back),
                             "bytes": len(blob)}
            print(fname, len(blob), "bytes")
    for fname, rec in record.items():
        rec.setdefault("weights_sha256", _weights_of(HERE / fname))
        rec.setdefault("format", _format_of(HERE / fname))
    path.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _format_of(path: Path) -> str:
    """``container major.minor/chunk format`` of a stored file (as :func:`bmz_file_format`)."""
    from bmz.bitstream import BmzReader

    with BmzReader(path) as r:
        codec = r.meta["codec"]
        group = f" G{codec['group']}" if "group" in codec else ""
        return f"{r.version[0]}.{r.version[1]}/{codec['chunk_format']}{group}"


def _weights_of(path: Path) -> str:
    from bmz.bitstream import BmzReader

    with BmzReader(path) as r:
        return r.meta["codec"]["weights_sha256"]


if __name__ == "__main__":
    sys.exit(main())
