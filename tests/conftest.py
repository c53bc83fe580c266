"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-MRI data folder (``../shared/data`` beside the repository root).

    Tests using it are skipped when it is absent (e.g. on a machine without the data)."""
    if not (SHARED_DATA / "files.csv").is_file():
        pytest.skip(f"shared MRI data not found at {SHARED_DATA} (needs ../shared/data/files.csv)")
    return SHARED_DATA
