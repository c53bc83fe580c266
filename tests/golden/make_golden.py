#!/usr/bin/env python
"""Regenerate the golden files (run deliberately, after a model or format change that is meant to
change what stored files decode to — and say so in the commit).

    python tests/golden/make_golden.py

Sources (all permissively licensed real MRI): the README sample (SCT T1w, MIT, 8-bit), a crop of
the native 12-bit Siemens Prisma FLASH series (dcm_qa_decubitus, BSD-2-Clause) and a crop of a
BOLD EPI volume stored as int32 with 14 significant bits (niivue demo images, BSD-2-Clause). Each is
encoded with the flagship at its lowest and highest quality and with one factorized-prior model;
``golden.json`` records what each file must decode to (SHA-256 of the C-order array bytes).
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


def sources() -> dict[str, np.ndarray]:
    sct = io.read(REPO / "samples" / "sct_t1w.nii.gz").data[10:14]
    prisma = io.read(SHARED / "val" / "dcm_qa_decubitus" / "HFS_t1_fl2d_sag").data[15:18, 80:176, 64:176]
    bold = io.read(SHARED / "train" / "niivue_demo_images" / "fmri.nii.gz").data[28:30]
    return {"sct_t1w_8bit": np.ascontiguousarray(sct), "prisma_12bit": np.ascontiguousarray(prisma),
            "bold_int32_14bit": np.ascontiguousarray(bold)}


def decoded_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def main() -> int:
    flagship = zoo.DEFAULT_MODEL
    family = "cnn-ae-8" if "cnn-ae-8" in zoo.available_models() else None
    record = {}
    for old in HERE.glob("*.bmz"):
        old.unlink()
    for name, vol in sources().items():
        model, _ = zoo.load_model(flagship)
        plans = [(flagship, 1), (flagship, model.n_qualities)]
        if family:
            plans.append((family, 2))
        for mdl, q in plans:
            blob = api.compress(vol, quality=q, model=mdl)
            fname = f"{name}_{mdl}_q{q}.bmz"
            (HERE / fname).write_bytes(blob)
            back = api.decompress(blob)
            record[fname] = {"model": mdl, "quality": q, "shape": list(vol.shape), "dtype": vol.dtype.str,
                             "decoded_sha256": decoded_sha(back), "bytes": len(blob)}
            print(fname, len(blob), "bytes")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
