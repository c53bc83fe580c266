"""Coding with shipped weights never imports CompressAI (nor scipy): a cold ``bmz decode`` pays
for torch, not for CompressAI's package import (torch_geometric, torch._dynamo, scipy.stats:
seconds), nor for readers and writers it does not use (nibabel imports scipy, pydicom).
Models loaded for coding hold their priors as frozen tables (bmz.codec.priors; that they code
as the training-built models do: tests/test_priors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import bmz


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter importing the bmz under test (whatever the working directory holds)."""
    root = str(Path(bmz.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


#: encodes and decodes with the default models (8-bit: DEFAULT_MODEL; deeper:
#: DEFAULT_MODEL_NATIVE), then lists what it imported of the modules coding must not need
_CODE_AND_LIST = r"""
import sys
import numpy as np
import bmz
from bmz.codec import zoo

yy, xx = np.mgrid[0:40, 0:52]
base = 120 + 90 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
v8 = np.stack([base + 3 * k for k in range(3)]).clip(0, 255).astype(np.uint8)
used = []
for vol in (v8, v8.astype(np.uint16) * 13):
    blob = bmz.compress(vol)
    used.append(bmz.info(blob)["model"])
    back = bmz.decompress(blob)
    assert back.shape == vol.shape and back.dtype == vol.dtype
    assert np.array_equal(bmz.decompress(blob, slices=[1])[0], back[1])
assert used == [zoo.DEFAULT_MODEL, zoo.DEFAULT_MODEL_NATIVE], used
print(sorted(m for m in sys.modules if m.split(".")[0] in ("compressai", "scipy", "torch_geometric")))
"""


def test_coding_with_the_default_models_imports_neither_compressai_nor_scipy(tmp_path):
    out = _run(["-c", _CODE_AND_LIST], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_cli_decode_of_one_slice_imports_neither_compressai_nor_scipy(tmp_path):
    yy, xx = np.mgrid[0:48, 0:40]
    vol = np.stack([(100 + 80 * np.sin(xx / 4.0 + k) * np.cos(yy / 6.0)) for k in range(4)]).astype(np.uint8)
    src = tmp_path / "v.bmz"
    src.write_bytes(bmz.compress(vol))
    out = _run(["-X", "importtime", "-m", "bmz.cli", "decode", str(src), "--slices", "2",
                "-o", str(tmp_path / "s.npy"), "--quiet"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")]
    assert "torch" in imported  # the log is the one of a decode
    assert not [m for m in imported
                if m.split(".")[0] in ("compressai", "scipy", "torch_geometric", "nibabel", "pydicom")]
    assert np.array_equal(np.load(tmp_path / "s.npy"), bmz.decompress(src.read_bytes(), slices=[2]))


def test_cli_decode_of_a_lossless_file_never_imports_torch(tmp_path):
    """A bounded-error file without a learned base layer needs no model: decoding it imports
    neither torch nor CompressAI (torch alone is about a second of a cold start)."""
    yy, xx = np.mgrid[0:32, 0:36]
    vol = np.stack([(900 + 700 * np.sin(xx / 4.0 + k) * np.cos(yy / 6.0)) for k in range(3)]).astype(np.uint16)
    src = tmp_path / "l.bmz"
    src.write_bytes(bmz.compress(vol, lossless=True))
    assert bmz.info(src.read_bytes()).get("max_error") == 0
    out = _run(["-X", "importtime", "-m", "bmz.cli", "decode", str(src), "--slices", "1",
                "-o", str(tmp_path / "s.npy"), "--quiet"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")]
    assert "bmz.codec.residual3d" in imported or "bmz.codec.residual" in imported
    assert not [m for m in imported if m.split(".")[0] in ("torch", "compressai")]
    assert np.array_equal(np.load(tmp_path / "s.npy"), vol[1:2])
