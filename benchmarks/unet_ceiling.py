#!/usr/bin/env python
"""Why the U-Nets without skips stall: their transforms alone, without quantisation or rate.

    python benchmarks/unet_ceiling.py --pack PACK.npz [--steps 1000] [--variants a,b]
                                      [--out benchmarks/results]

``unet-noskip-c`` (and ``-v1`` on its CPU schedule) stall at a PSNR that does not move with the
rate (``family.md``, the cards' validation history). To tell the transforms from the entropy
model, this trains each variant's ``g_s(g_a(x))`` as a plain autoencoder — continuous latent, no
quantisation, no rate term, MSE only — on the training pack (``benchmarks/pack_train.py``), 64²
patches, batch 8, Adam with the training's grad-norm clip 1.0, one thread, the same seed and
batches for every variant; and, for the shipped architecture, how far it overfits one fixed
batch (capacity). Variants of ``unet-noskip-c`` (each changes one thing):

* ``plain``: as shipped (max-pool down, 2×2 transposed conv up, double conv3 + ReLU, He init);
* ``stride``: a 2×2 stride-2 convolution instead of each max-pool;
* ``up4``: 4×4 stride-2 transposed convolutions (overlapping) instead of 2×2;
* ``single``: one conv3 + ReLU per level instead of two (half the depth);
* ``res``: each double conv as a residual block (``relu(y + conv(y))``, ``y = relu(conv(x))``);
* ``bn``: batch normalisation after every convolution of the double convs;
* ``default-init``: PyTorch's initialisation instead of He's;
* ``lr1e-3``: five times the learning rate;
* ``gdn-factorized``: the reference, the ``factorized`` model's GDN transforms (3 × conv5↓2).

Writes ``unet_ceiling.md`` (PSNR of the training batches, mean of the last 100 steps).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bmz import train  # noqa: E402
from bmz.codec.factorized import GainedFactorizedPrior, UNetNoSkipC  # noqa: E402

VARIANTS = ("plain", "stride", "up4", "single", "res", "bn", "default-init", "lr1e-3",
            "gdn-factorized")


class _Residual(nn.Module):
    def __init__(self, c1: nn.Conv2d, c2: nn.Conv2d):
        super().__init__()
        self.c1, self.c2 = c1, c2

    def forward(self, x):
        y = torch.relu(self.c1(x))
        return torch.relu(y + self.c2(y))


def _is_double_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and len(m) == 4 and isinstance(m[0], nn.Conv2d)


def _he(m: nn.Module) -> nn.Module:
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu", mode="fan_in")
            nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu", mode="fan_out")
            nn.init.zeros_(mod.bias)
    return m


def _swap(seq: nn.Sequential, variant: str) -> nn.Sequential:
    out = []
    for m in seq:
        if _is_double_conv(m) and variant == "single":
            m = nn.Sequential(m[0], nn.ReLU(inplace=True))
        elif _is_double_conv(m) and variant == "res":
            m = _Residual(m[0], m[2])
        elif _is_double_conv(m) and variant == "bn":
            m = nn.Sequential(m[0], nn.BatchNorm2d(m[0].out_channels), nn.ReLU(inplace=True),
                              m[2], nn.BatchNorm2d(m[2].out_channels), nn.ReLU(inplace=True))
        elif isinstance(m, nn.MaxPool2d) and variant == "stride":
            c = out[-1][-2].out_channels  # the width of the level above
            m = _he(nn.Conv2d(c, c, 2, stride=2))
        elif isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and variant == "up4":
            m = _he(nn.ConvTranspose2d(m.in_channels, m.out_channels, 4, stride=2, padding=1))
        out.append(m)
    return nn.Sequential(*out)


def build(variant: str) -> nn.Module:
    """The autoencoder ``g_s ∘ g_a`` of a variant (see the module docstring)."""
    if variant == "gdn-factorized":
        m = GainedFactorizedPrior()
        return nn.Sequential(m.g_a, m.g_s)
    m = UNetNoSkipC()
    g_a, g_s = _swap(m.g_a, variant), _swap(m.g_s, variant)
    net = nn.Sequential(g_a, g_s)
    if variant == "default-init":
        for mod in net.modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                mod.reset_parameters()
    return net


def run(net: nn.Module, batches, lr: float, steps: int, fixed=None) -> list[float]:
    """Per-step MSE of training ``net`` on ``batches`` (or on one ``fixed`` batch)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    hist = []
    for s in range(steps):
        x = fixed if fixed is not None else batches(s)
        mse = ((net(x) - x) ** 2).mean()
        opt.zero_grad()
        mse.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        hist.append(mse.item())
    return hist


def _psnr(hist: list[float], at: int) -> float:
    return -10 * math.log10(float(np.mean(hist[max(0, at - 100):at])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", required=True, help="training pack (benchmarks/pack_train.py)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--overfit-steps", type=int, default=500)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vols = train.load_pack(args.pack)
    sampler = train.PatchSampler(vols, 0, 64)
    cache = [sampler.batch(8, 1)[0] for _ in range(args.steps)]  # the same batches for all
    marks = [m for m in (250, 500, 1000, 2000, 3000) if m <= args.steps]
    rows = []
    for v in args.variants.split(","):
        torch.manual_seed(0)
        net = build(v)
        t = time.time()
        hist = run(net, cache.__getitem__, 1e-3 if v == "lr1e-3" else 2e-4, args.steps)
        rows.append((v, [_psnr(hist, m) for m in marks], time.time() - t))
        print(v, " ".join(f"{p:.2f}" for p in rows[-1][1]), f"{rows[-1][2]:.0f} s", flush=True)
    torch.manual_seed(0)
    over = run(build("plain"), None, 2e-4, args.overfit_steps, fixed=cache[0])
    over_psnr = -10 * math.log10(over[-1])
    lines = ["# The U-Net without skips: its transforms alone (`benchmarks/unet_ceiling.py`)", "",
             f"`unet-noskip-c` variants trained as plain autoencoders (no quantisation, no rate), "
             f"{args.steps} steps of 64² patches, batch 8, the same batches for all; PSNR of the "
             "training batches (mean MSE of the 100 steps before the mark). One thing changed per "
             "row (see the script's docstring).", "",
             "| variant | " + " | ".join(f"step {m}" for m in marks) + " | s |",
             "|---|" + "---|" * (len(marks) + 1)]
    for v, ps, secs in rows:
        lines.append(f"| `{v}` | " + " | ".join(f"{p:.2f}" for p in ps) + f" | {secs:.0f} |")
    lines += ["", f"Capacity: the shipped architecture (`plain`) fits one fixed batch to "
              f"{over_psnr:.2f} dB in {args.overfit_steps} steps.", ""]
    (Path(args.out) / "unet_ceiling.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
