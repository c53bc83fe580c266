"""A core-only install (``pip install bmz``): the tools that need an extra say which one, and
``import bmz`` stays free of the heavy dependencies (the imports inside functions that keep it so
are deliberate)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

from bmz.errors import MissingDependencyError


def _without(monkeypatch, *modules: str) -> None:
    """Make ``import m`` fail for each module (as on a core-only install)."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_zarr_codec_names_its_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "bmz.zarr_codec", raising=False)  # imported afresh
    _without(monkeypatch, "numcodecs", "zarr")
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmz\[zarr\]'"):
        importlib.import_module("bmz.zarr_codec")


def test_ssim_and_bd_rate_name_their_extra(monkeypatch):
    from bmz import metrics

    _without(monkeypatch, "skimage", "scipy")
    a = np.zeros((16, 16), np.uint8)
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmz\[bench\]'"):
        metrics.ssim(a, a)
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmz\[bench\]'"):
        metrics.bd_rate([0.5, 1, 2, 3], [30, 35, 40, 45], [0.5, 1, 2, 3], [31, 36, 41, 46])


def test_plots_name_their_extra(monkeypatch):
    from bmz._deps import pyplot

    _without(monkeypatch, "matplotlib")
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmz\[plots\]'"):
        pyplot("a plot")


def test_import_bmz_stays_light():
    """``import bmz`` (and the CLI's start) loads no torch, numba, pydicom or nibabel: they load
    when a command needs them."""
    code = ("import sys, bmz, bmz.cli; "
            "print(sorted(m for m in ('torch', 'numba', 'pydicom', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
