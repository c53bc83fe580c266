#!/usr/bin/env python
"""Regenerate the golden bounded-error files (run deliberately, after a change to the residual
coder or its tables that is meant to change what stored files decode to — say so in the commit).

    python tests/golden/bounded/make_golden.py

Sources as in ``tests/golden/make_golden.py`` (permissively licensed real MRI): the README sample
(SCT T1w, 8-bit) lossless; a crop of the 12-bit Siemens Prisma series at max error 2 with a
learned base layer in every slice (the per-slice fallback to no base is switched off, so the base
path is exercised); the int32 14-bit BOLD crop lossless. ``golden.json`` records the SHA-256 of each
decoded array (C order) and δ."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "conformance"))

import numpy as np  # noqa: E402

from bmz import api  # noqa: E402
from make_conformance import bounded_format3  # noqa: E402  (format 3, base kept)
from make_golden import decoded_sha, sources  # noqa: E402


def main() -> int:
    src = sources()
    plans = {"sct_t1w_8bit_lossless.bmz": lambda: bounded_format3(src["sct_t1w_8bit"], 0, 0),
             "prisma_12bit_d2_base_q1.bmz": lambda: bounded_format3(src["prisma_12bit"], 2, 1),
             "bold_int32_14bit_lossless.bmz": lambda: bounded_format3(src["bold_int32_14bit"], 0, 0)}
    record = {}
    for old in HERE.glob("*.bmz"):
        old.unlink()
    for fname, make in plans.items():
        blob = make()
        (HERE / fname).write_bytes(blob)
        back = api.decompress(blob)
        info = api.info(blob)
        record[fname] = {"max_error": info["max_error"], "base_quality": info["quality"],
                         "shape": list(back.shape), "dtype": back.dtype.str,
                         "sha256": decoded_sha(back), "bytes": len(blob)}
        print(fname, record[fname], file=sys.stderr)
    (HERE / "golden.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
