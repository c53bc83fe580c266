"""bmz's error hierarchy.

Every error bmz raises on purpose is a :class:`BmzError`. Each message says what is wrong, where
(which file, which slice or block) and, where it can, how to fix it. The CLI prints the message on
one line and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class BmzError(Exception):
    """Base class of every error bmz raises on purpose."""

    exit_code = 1


class InputError(BmzError, ValueError):
    """The input image, array or file cannot be encoded (wrong dtype, shape, values, unreadable)."""

    exit_code = 2


class FormatError(BmzError, ValueError):
    """A ``.bmz`` file is not valid: bad magic, unsupported version, damaged or truncated."""

    exit_code = 3


class BadMagicError(FormatError):
    """The data does not start with the ``.bmz`` signature."""


class UnsupportedVersionError(FormatError):
    """The file was written by a newer (or unknown) version of the format."""


class TruncatedError(FormatError):
    """The file ends before a block it declares."""


class ChecksumError(FormatError):
    """A block's checksum does not match its bytes.

    ``slice_index`` is the slice whose chunk is damaged, or ``None`` for a header block.
    """

    def __init__(self, message: str, slice_index: int | None = None):
        super().__init__(message)
        self.slice_index = slice_index


class ModelError(BmzError):
    """A model is unknown, missing, or is not the one a file was encoded with."""

    exit_code = 4


class UnknownModelError(ModelError, KeyError):
    """No model of that name (or quality) is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelMismatchError(ModelError):
    """The weights at hand differ (SHA-256) from those a file was encoded with."""


class OutputError(BmzError, OSError):
    """The output cannot be written (missing folder, read-only, exists without --force)."""

    exit_code = 5


class MissingDependencyError(BmzError, ImportError):
    """An optional package is needed; the message names the pip package to install."""

    exit_code = 6
