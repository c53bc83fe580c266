"""bmz: learned compression for MRI.

>>> import bmz
>>> data = bmz.compress(volume)              # 2-D or 3-D integer array, slices along axis 0
>>> volume2 = bmz.decompress(data)              # same dtype and shape
"""

__version__ = "0.2.0"

from . import errors  # noqa: E402
from .api import (compress, compress_dataset, decode_file, decompress,  # noqa: E402
                  decompress_to_datasets, decompress_to_files, encode_file, info)

__all__ = ["compress", "decompress", "compress_dataset", "decompress_to_datasets",
           "decompress_to_files", "encode_file", "decode_file", "info", "errors", "__version__",
           "interpolate"]


def __getattr__(name):
    # bmz.interpolate (latent mixing of .bmz codes; a callable module: bmz.interpolate(codes,
    # weights)) is imported on first use, so that `import bmz` stays free of torch
    if name == "interpolate":
        import importlib

        return importlib.import_module(".interpolate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
