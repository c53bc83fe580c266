"""Optional dependencies: the tools (rd-curve, baselines, plots, batch, Zarr) live in extras, so
that ``pip install bmz`` stays small; a missing one is a MissingDependencyError naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def optional(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a MissingDependencyError saying ``purpose`` needs ``bmz[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {module.split('.')[0]}: "
                                     f"pip install 'bmz[{extra}]'") from None


def pyplot(purpose: str) -> ModuleType:
    """matplotlib's pyplot on the non-interactive Agg backend (extra ``plots``)."""
    optional("matplotlib", "plots", purpose).use("Agg")
    return importlib.import_module("matplotlib.pyplot")
