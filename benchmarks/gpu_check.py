"""Decoding on a GPU gives the same arrays as on the CPU: the fixed-point synthesis and the
integer entropy parameters of a model, run on both devices over real latents, compared exactly.

    python benchmarks/gpu_check.py MODEL.ckpt|MODEL.pt PACK.npz  → JSON on stdout

(Run where CUDA is present; latents come from the model's own analysis of the pack's slices.)"""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
import torch

from bmz.codec import pipeline
from bmz.train import frozen_from_checkpoint, load_pack


@torch.no_grad()
def main() -> None:
    m = frozen_from_checkpoint(sys.argv[1])
    dev = os.environ.get("BMZ_CHECK_DEVICE", "cuda")
    g = copy.deepcopy(m).to(dev)
    vols = load_pack(sys.argv[2])
    res = {"slices": 0, "synthesis_equal": 0, "entropy_params_equal": 0, "max_abs_diff": 0.0}
    qs = sorted({0, m.n_qualities // 2, m.n_qualities - 1})
    for v in vols:
        s = v.slices[len(v.slices) // 2]
        x = torch.from_numpy(pipeline.pad_to_multiple(s, m.downsampling))[None, None]
        for q in qs:
            y = torch.round(m.g_a(x) * torch.exp2(m.log2_gain[q])[None, :, None, None]).to(torch.int32)
            a = m.synthesize(y, q)
            b = g.synthesize(y.to(dev), q).cpu()
            res["slices"] += 1
            res["synthesis_equal"] += int(torch.equal(a, b))
            res["max_abs_diff"] = max(res["max_abs_diff"], float((a - b).abs().max()))
            if hasattr(m, "int_ep"):
                z = torch.round(m.h_a(torch.abs(m.g_a(x))) - m._z_medians()[None, :, None, None])
                h = m.int_hs.log2_scale_fixed(z + m._z_medians()[None, :, None, None])
                ci = m.context_input(y, q)
                i1, m1 = m.int_ep.params(h, ci, ci, q, m.int_hs.gain_int, m.int_hs.thresholds)
                i2, m2 = g.int_ep.params(h.to(dev), ci.to(dev), ci.to(dev), q, g.int_hs.gain_int,
                                         g.int_hs.thresholds)
                res["entropy_params_equal"] += int(torch.equal(i1, i2.cpu()) and torch.equal(m1, m2.cpu()))
    res["device"] = torch.cuda.get_device_name(0) if dev == "cuda" else dev
    print(json.dumps(res))


if __name__ == "__main__":
    main()
