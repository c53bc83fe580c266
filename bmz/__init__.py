"""bmz: learned compression for MRI.

>>> import bmz
>>> data = bmz.compress(volume)              # 2-D or 3-D integer array, slices along axis 0
>>> volume2 = bmz.decompress(data)              # same dtype and shape
"""

import importlib

from . import errors
from ._version import __version__
from .api import (compress, compress_dataset, decode_file, decompress,
                  decompress_to_datasets, decompress_to_files, encode_file, info)

__all__ = ["compress", "decompress", "compress_dataset", "decompress_to_datasets",
           "decompress_to_files", "encode_file", "decode_file", "info", "errors", "__version__",
           "interpolate", "interpolation"]


def __getattr__(name):
    # latent mixing (bmz.interpolation, and its bmz.interpolate(codes, weights)) is imported on
    # first use, so that `import bmz` stays free of torch
    if name in ("interpolate", "interpolation"):
        module = importlib.import_module(".interpolation", __name__)
        return module if name == "interpolation" else module.interpolate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
