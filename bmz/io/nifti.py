"""NIfTI-1 / NIfTI-2 reading and writing (``.nii`` and ``.nii.gz``), byte-exact.

bmz does not go through nibabel's image API for the bytes on disk: nibabel's loaded header has
``scl_slope``/``scl_inter``/``vox_offset`` reset (scaling moves into the data proxy) and its writer
recomputes them. Instead the file is parsed directly (nibabel's header classes are only used to
interpret the 348/540 header bytes) and written back as::

    header bytes (verbatim) + bytes up to vox_offset (verbatim: extension flag, extensions,
    padding) + the voxel data in the header's dtype and byte order, Fortran order

so a read -> write -> read gives the same header bytes, extensions, affine, scaling, dtype (byte
order included) and, when the data is unchanged, identical data bytes. ``.nii.gz`` output is
gzip-compressed (level 6, mtime 0, no file name), so its decompressed bytes match.

Reading (:func:`read_nifti`):

* 3-D ``(X, Y, Z)`` images are sliced along the LAST axis: ``data[k] == arr[:, :, k]``, i.e.
  ``data = moveaxis(arr, -1, 0)`` with shape ``(Z, X, Y)``; 2-D ``(X, Y)`` gives ``(1, X, Y)``;
  trailing singleton dimensions beyond the 3rd are squeezed; a real 4th dimension is refused.
* The STORED values are returned unscaled, in the on-disk dtype (``'>i2'`` stays big-endian).
* dtype rules are those of :func:`bmz.io.as_integer_array` (float only with integer values,
  recorded so that writing restores the float dtype; RGB refused; int32/uint32 only within 16 bits).
* Only single-file NIfTI (magic ``n+1`` / ``n+2``) is read; ``.hdr``/``.img`` pairs are not.

``meta["nifti"]``::

    {"version": 1 | 2, "header": base64 of the 348/540 header bytes,
     "extra": base64 of the bytes between the header and vox_offset (extension flag + extensions),
     "extensions": [{"code": int, "content": base64}, ...]    # parsed copy, informative
     "shape": [...], "ndim": int,                              # as in the file (before squeezing)
     "dtype": on-disk dtype str (e.g. "<i2", ">i2", "|u1", "<f4"),
     "converted": bool,                                        # True if data was cast from dtype
     "scaling": [scl_slope, scl_inter] or None,                # informative copy of the header
     "trailing": base64 of bytes after the voxel data, or None}

Writing (:func:`write_nifti`): a volume whose meta has ``"nifti"`` is written with its original
header (only ``dim`` is updated when ``data`` has a different shape, e.g. a sub-range of slices);
any other volume gets a new NIfTI-1 header (NIfTI-2 if a dimension exceeds 32767): dtype from the
data (or the original dtype recorded by the ``.npy`` reader), little-endian, ``vox_offset`` 352,
and for DICOM-origin volumes the affine and scaling from the DICOM geometry
(:func:`bmz.io.dicom.nifti_geometry`); otherwise an identity sform (code 2, "aligned").
"""

from __future__ import annotations

import base64
import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._fileutil import atomic_output
from ..errors import InputError, OutputError
from . import Volume, as_integer_array, cast_exact

try:  # nibabel interprets the header fields; bmz handles the bytes
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header
except ImportError:  # pragma: no cover - nibabel is a hard dependency
    Nifti1Header = Nifti2Header = None  # type: ignore[assignment,misc]

_HEADER_SIZE = {1: 348, 2: 540}
_MAX_TRAILING = 64 * 1024


def _b64(b: bytes) -> str:
    return base64.b64encode(bytes(b)).decode("ascii")


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _require_nibabel() -> None:
    if Nifti1Header is None:  # pragma: no cover
        from ..errors import MissingDependencyError

        raise MissingDependencyError("NIfTI support needs nibabel: pip install nibabel")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _read_file_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of a .nii / .nii.gz file."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from None


def _header_version(raw: bytes, path: Path) -> int:
    if len(raw) < 348:
        raise InputError(f"{path}: not a NIfTI file (only {len(raw)} bytes)")
    for order in "<>":
        size = struct.unpack(order + "i", raw[:4])[0]
        if size == 348 and raw[344:347] in (b"n+1", b"ni1"):
            if raw[344:347] == b"ni1":
                raise InputError(
                    f"{path}: NIfTI header of a .hdr/.img pair; bmz reads single-file .nii/.nii.gz"
                )
            return 1
        if size == 540 and raw[4:7] in (b"n+2", b"ni2"):
            if raw[4:7] == b"ni2":
                raise InputError(
                    f"{path}: NIfTI-2 header of a .hdr/.img pair; bmz reads single-file .nii/.nii.gz"
                )
            return 2
    raise InputError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header found)")


def _parse_extensions(extra: bytes, endian: str) -> list[dict]:
    """Parse the extension list in the bytes between header and vox_offset (best effort)."""
    out: list[dict] = []
    if len(extra) < 4 or extra[0] == 0:
        return out
    pos = 4
    while pos + 8 <= len(extra):
        esize, ecode = struct.unpack(endian + "ii", extra[pos : pos + 8])
        if esize < 8 or pos + esize > len(extra):
            break
        out.append({"code": int(ecode), "content": _b64(extra[pos + 8 : pos + esize])})
        pos += esize
    return out


def _shape_str(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def read_nifti(path: Path) -> Volume:
    """Read a single-file NIfTI-1/NIfTI-2 image (``.nii`` or ``.nii.gz``) into a Volume.

    Raises :class:`InputError` naming the file for anything bmz cannot encode (4-D data, RGB,
    non-integer floats, empty images, truncated or invalid files).
    """
    _require_nibabel()
    path = Path(path)
    raw = _read_file_bytes(path)
    version = _header_version(raw, path)
    hsize = _HEADER_SIZE[version]
    klass = Nifti1Header if version == 1 else Nifti2Header
    try:
        hdr = klass(binaryblock=raw[:hsize], check=False)
        dtype = hdr.get_data_dtype()
        shape = tuple(int(s) for s in hdr.get_data_shape())
        vox_offset = int(hdr["vox_offset"])
    except Exception as exc:  # nibabel raises various errors for invalid headers
        raise InputError(f"{path}: invalid NIfTI header ({exc})") from None

    if len(shape) == 0:
        raise InputError(f"{path}: NIfTI header declares no dimensions")
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: empty image (shape {_shape_str(shape)})")
    if any(s < 0 for s in shape):
        raise InputError(f"{path}: invalid NIfTI shape {shape}")
    if dtype.fields is not None or dtype.kind == "V":
        raise InputError(
            f"{path}: RGB/structured voxels ({dtype}) are not supported; bmz encodes "
            "single-channel integer images"
        )
    squeezed = list(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) > 3:
        axes = ",".join("xyztuvw"[: len(shape)])
        raise InputError(
            f"{path}: {len(squeezed)}-D volume {_shape_str(shape)} ({axes}); bmz encodes 2-D "
            "and 3-D images"
        )
    if len(squeezed) == 1:
        raise InputError(f"{path}: 1-D image {_shape_str(shape)}; bmz encodes 2-D and 3-D images")

    if vox_offset < hsize:
        vox_offset = hsize  # invalid in a single file; nibabel treats it the same way
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    end = vox_offset + nbytes
    if len(raw) < end:
        raise InputError(
            f"{path}: truncated NIfTI file ({len(raw)} bytes, header declares {end})"
        )
    arr = np.ndarray(shape=tuple(squeezed), dtype=dtype, buffer=raw, offset=vox_offset, order="F")
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    data = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    data, converted_from = as_integer_array(data, str(path))

    extra = raw[hsize:vox_offset]
    trailing = raw[end:]
    notes: list[str] = []
    if len(trailing) > _MAX_TRAILING:
        notes.append(f"{len(trailing)} bytes after the voxel data were dropped")
        trailing = b""
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    scaling = None
    if np.isfinite(slope) and slope != 0 and np.isfinite(inter) and (slope, inter) != (1.0, 0.0):
        scaling = [slope, inter]
    meta = {
        "nifti": {
            "version": version,
            "header": _b64(raw[:hsize]),
            "extra": _b64(extra),
            "extensions": _parse_extensions(extra, hdr.endianness),
            "shape": list(shape),
            "ndim": len(shape),
            "dtype": dtype.str,
            "converted": converted_from is not None,
            "scaling": scaling,
            "trailing": _b64(trailing) if trailing else None,
        }
    }
    if notes:
        meta["nifti"]["notes"] = notes
    return Volume(data=data, source="nifti", meta=meta, path=str(path))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _set_dims(hdr, shape: tuple[int, ...], path: Path) -> None:
    limit = 32767 if isinstance(hdr, Nifti1Header) and not isinstance(hdr, Nifti2Header) else 2**62
    if any(s > limit for s in shape):
        raise OutputError(f"{path}: dimension {max(shape)} too large for this NIfTI header")
    dim = np.array(hdr["dim"])
    dim[:] = 1
    dim[0] = len(shape)
    dim[1 : 1 + len(shape)] = shape
    hdr["dim"] = dim


def _from_original(volume: Volume, info: dict, path: Path):
    """Header bytes, extra bytes, vox_offset and data (in the output dtype) for a NIfTI-origin
    volume: the original header, with ``dim`` changed only if the data shape changed."""
    version = int(info.get("version", 1))
    klass = Nifti1Header if version == 1 else Nifti2Header
    hdr_bytes = _unb64(info["header"])
    try:
        hdr = klass(binaryblock=hdr_bytes, check=False)
        dtype = hdr.get_data_dtype()
    except Exception as exc:
        raise OutputError(f"{path}: the NIfTI header stored in meta is invalid ({exc})") from None
    k, h, w = volume.data.shape
    orig = [int(s) for s in info.get("shape", [])]
    orig_ndim = int(info.get("ndim", len(orig)))
    orig3 = (orig + [1, 1, 1])[:3]
    if [h, w, k] != orig3:
        if orig_ndim == 2 and k == 1:
            new_shape: tuple[int, ...] = (h, w)
        else:
            new_shape = (h, w, k) + (1,) * max(0, orig_ndim - 3)
        _set_dims(hdr, new_shape, path)
        hdr_bytes = hdr.binaryblock
    data = cast_exact(volume.data, dtype, str(path))
    extra = _unb64(info.get("extra"))
    vox_offset = max(int(hdr["vox_offset"]), _HEADER_SIZE[version])
    trailing = _unb64(info.get("trailing")) if [h, w, k] == orig3 else b""
    return hdr_bytes, extra, vox_offset, data, trailing


def _original_dtype(volume: Volume) -> np.dtype:
    """The dtype the source recorded as original (e.g. float32 or bool of a .npy), else the
    data's dtype."""
    npy = volume.meta.get("npy") if isinstance(volume.meta, dict) else None
    if isinstance(npy, dict) and npy.get("dtype"):
        try:
            return np.dtype(npy["dtype"])
        except TypeError:
            pass
    return volume.data.dtype


def _new_header(volume: Volume, path: Path):
    """Header bytes, extra bytes, vox_offset and data for a volume without a NIfTI header."""
    from . import dicom as _dicom

    data = volume.data
    k, h, w = data.shape
    dtype = _original_dtype(volume)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<")
    npy = volume.meta.get("npy") if isinstance(volume.meta, dict) else None
    shape: tuple[int, ...] = (h, w, k)
    if isinstance(npy, dict) and npy.get("ndim") == 2 and k == 1:
        shape = (h, w)
    klass = Nifti2Header if max(shape) > 32767 else Nifti1Header
    hdr = klass()
    try:
        hdr.set_data_dtype(dtype)
    except Exception:
        dtype = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
        hdr.set_data_dtype(dtype)
    _set_dims(hdr, shape, path)
    affine, scaling = None, None
    if isinstance(volume.meta, dict) and "dicom" in volume.meta:
        affine, scaling = _dicom.nifti_geometry(volume.meta, k)
        hdr["descrip"] = b"bmz: converted from DICOM"
    if affine is not None:
        hdr.set_qform(affine, code=1)
        hdr.set_sform(affine, code=1)
        hdr.set_xyzt_units("mm")
        # set_qform/set_sform also set pixdim from the affine
    else:
        hdr.set_sform(np.eye(4), code=2)
    if scaling is not None:
        hdr["scl_slope"], hdr["scl_inter"] = scaling
    vox_offset = _HEADER_SIZE[2 if klass is Nifti2Header else 1] + 4
    hdr["vox_offset"] = vox_offset
    out = cast_exact(data, dtype, str(path))
    return hdr.binaryblock, b"\x00\x00\x00\x00", vox_offset, out, b""


def _write_payload(f: BinaryIO, hdr_bytes: bytes, extra: bytes, vox_offset: int,
                   data: np.ndarray, trailing: bytes, path: Path) -> None:
    head = bytes(hdr_bytes) + bytes(extra)
    if len(head) > vox_offset:
        raise OutputError(
            f"{path}: inconsistent NIfTI meta (header + extensions {len(head)} bytes > "
            f"vox_offset {vox_offset})"
        )
    f.write(head)
    f.write(b"\x00" * (vox_offset - len(head)))
    # NIfTI voxel order is Fortran over (X, Y, Z): slice k is data[k] = arr[:, :, k], X fastest
    for k in range(data.shape[0]):
        f.write(data[k].tobytes(order="F"))
    if trailing:
        f.write(trailing)


def write_nifti(volume: Volume, path: Path, force: bool = True) -> None:
    """Write ``volume`` as ``.nii`` or ``.nii.gz`` (by suffix), atomically.

    See the module docstring for how the header is chosen. Raises :class:`OutputError` if the
    data cannot be stored in the header's dtype or the output cannot be written.
    """
    _require_nibabel()
    path = Path(path)
    info = volume.meta.get("nifti") if isinstance(volume.meta, dict) else None
    if isinstance(info, dict) and info.get("header"):
        parts = _from_original(volume, info, path)
    else:
        parts = _new_header(volume, path)
    gz = path.name.lower().endswith(".gz")
    with atomic_output(path, force=force) as f:
        if gz:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=6, mtime=0) as g:
                _write_payload(g, *parts, path=path)
        else:
            _write_payload(f, *parts, path=path)
