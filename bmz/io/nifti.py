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
from ..errors import InputError, MissingDependencyError, OutputError
from .dicom.geometry import nifti_geometry
from .volume import SliceStack, Volume, cast_exact, integer_slices

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
        raise MissingDependencyError("NIfTI support needs nibabel: pip install nibabel")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc.strerror or exc})") from None


def _read_file_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of a .nii / .nii.gz file."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from None


class _Bytes:
    """The decompressed bytes of a NIfTI file, read at offsets: from memory (``raw``) or, lazily,
    from the (gzip) file itself, which is then opened once and read forward (a gzip stream can
    only be read forward cheaply: seeking back restarts its decompression)."""

    def __init__(self, path: Path, raw: bytes | None):
        self.path, self.raw = path, raw
        self._f = None

    def read_at(self, offset: int, n: int, what: str) -> bytes:
        if self.raw is not None:
            return self.raw[offset : offset + n]
        try:
            if self._f is None:
                self._f = gzip.open(self.path, "rb") if _is_gzip(self.path) else open(self.path, "rb")
            self._f.seek(offset)
            return self._f.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{self.path}: {what}: cannot read ({exc})") from None

    def size_hint(self) -> int | None:
        """The total size where it is known without decompressing."""
        if self.raw is not None:
            return len(self.raw)
        return None if _is_gzip(self.path) else self.path.stat().st_size

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


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


def read_nifti(path: Path, lazy: bool = False) -> Volume:
    """Read a single-file NIfTI-1/NIfTI-2 image (``.nii`` or ``.nii.gz``) into a Volume.

    With ``lazy``, ``data`` is a :class:`~bmz.io.SliceStack` reading one slice at a time from the
    file (NIfTI stores slice ``k`` of the last axis as one contiguous block), after one checking
    pass over every slice; memory stays that of a few slices whatever the volume's size.

    Raises :class:`InputError` naming the file (and slice) for anything bmz cannot encode (4-D
    data, RGB, non-integer floats, empty images, truncated or invalid files).
    """
    _require_nibabel()
    path = Path(path)
    src = _Bytes(path, None if lazy else _read_file_bytes(path))
    try:
        return _read(path, src, lazy)
    except BaseException:
        src.close()
        raise


def _read(path: Path, src: _Bytes, lazy: bool) -> Volume:
    head = src.read_at(0, 540, "header")
    version = _header_version(head, path)
    hsize = _HEADER_SIZE[version]
    klass = Nifti1Header if version == 1 else Nifti2Header
    try:
        hdr = klass(binaryblock=head[:hsize], check=False)
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
    nx, ny = squeezed[0], squeezed[1]
    nz = squeezed[2] if len(squeezed) == 3 else 1
    slice_bytes = nx * ny * dtype.itemsize
    end = vox_offset + nz * slice_bytes
    size = src.size_hint()
    if size is not None and size < end:
        raise InputError(f"{path}: truncated NIfTI file ({size} bytes, header declares {end})")
    extra = src.read_at(hsize, vox_offset - hsize, "extensions")

    def get(k: int) -> np.ndarray:
        # slice k = arr[:, :, k]: X*Y voxels, X fastest (Fortran order)
        b = src.read_at(vox_offset + k * slice_bytes, slice_bytes, f"slice {k}")
        if len(b) < slice_bytes:
            raise InputError(f"{path}: truncated NIfTI file (the voxel data ends in slice {k} "
                             f"of {nz}; header declares {end} bytes)")
        return np.ascontiguousarray(np.frombuffer(b, dtype).reshape((nx, ny), order="F"))

    raw_stack = SliceStack((nz, nx, ny), dtype, get, close=src.close)
    stack, converted_from = integer_slices(raw_stack, str(path))  # reads every slice once

    trailing = bytearray()
    n_trailing = 0
    while True:  # after the checking pass a lazy gzip stream is already at the data's end
        b = src.read_at(end + n_trailing, 1 << 20, "data after the voxels")
        if not b:
            break
        if len(trailing) <= _MAX_TRAILING:
            trailing += b
        n_trailing += len(b)
    notes: list[str] = []
    if n_trailing > _MAX_TRAILING:
        notes.append(f"{n_trailing} bytes after the voxel data were dropped")
        trailing = bytearray()
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    scaling = None
    if np.isfinite(slope) and slope != 0 and np.isfinite(inter) and (slope, inter) != (1.0, 0.0):
        scaling = [slope, inter]
    meta = {
        "nifti": {
            "version": version,
            "header": _b64(head[:hsize]),
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
    if lazy:
        data = stack
    else:
        data = np.asarray(stack)
        src.close()
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
        affine, scaling = nifti_geometry(volume.meta, k)
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
