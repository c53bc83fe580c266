"""The ``.bmz`` file container: signature, versioned header, JSON metadata, per-slice chunks
with an index for random access, CRC-32 on every block. See ``docs/FORMAT.md``."""

from .container import ATTACHMENT_VERSION, FORMAT_VERSION, MAGIC, BmzReader, BmzWriter, is_bmz, pack

__all__ = ["MAGIC", "FORMAT_VERSION", "ATTACHMENT_VERSION", "pack", "BmzWriter", "BmzReader", "is_bmz"]
