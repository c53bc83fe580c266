"""The package version (one place; ``bmz.__version__`` re-exports it)."""

__version__ = "0.3.0"
