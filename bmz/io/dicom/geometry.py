"""Slice geometry of a DICOM series: each frame's position, orientation, spacing and rescale
(classic attributes or the functional groups of an enhanced file), the slice order that follows
from them, and the NIfTI affine of a decoded series (:func:`nifti_geometry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .values import as_float, first_item, floats

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def frame_geometry(ds: "Dataset", n_frames: int) -> list[dict[str, Any]]:
    """Per frame: position, orientation, pixel spacing, thickness, spacing, rescale."""
    base = {
        "position": floats(ds.get("ImagePositionPatient"), 3),
        "orientation": floats(ds.get("ImageOrientationPatient"), 6),
        "pixel_spacing": floats(ds.get("PixelSpacing"), 2),
        "thickness": as_float(ds.get("SliceThickness")),
        "between": as_float(ds.get("SpacingBetweenSlices")),
        "slope": as_float(ds.get("RescaleSlope")),
        "intercept": as_float(ds.get("RescaleIntercept")),
    }
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    except Exception:
        per_frame = []
    if shared is None and not per_frame:
        return [dict(base) for _ in range(n_frames)]

    def from_groups(groups: "Dataset | None", out: dict[str, Any]) -> None:
        if groups is None:
            return
        item = first_item(groups, "PlanePositionSequence")
        if item is not None and floats(item.get("ImagePositionPatient"), 3):
            out["position"] = floats(item.get("ImagePositionPatient"), 3)
        item = first_item(groups, "PlaneOrientationSequence")
        if item is not None and floats(item.get("ImageOrientationPatient"), 6):
            out["orientation"] = floats(item.get("ImageOrientationPatient"), 6)
        item = first_item(groups, "PixelMeasuresSequence")
        if item is not None:
            if floats(item.get("PixelSpacing"), 2):
                out["pixel_spacing"] = floats(item.get("PixelSpacing"), 2)
            if as_float(item.get("SliceThickness")) is not None:
                out["thickness"] = as_float(item.get("SliceThickness"))
            if as_float(item.get("SpacingBetweenSlices")) is not None:
                out["between"] = as_float(item.get("SpacingBetweenSlices"))
        item = first_item(groups, "PixelValueTransformationSequence")
        if item is not None:
            if as_float(item.get("RescaleSlope")) is not None:
                out["slope"] = as_float(item.get("RescaleSlope"))
            if as_float(item.get("RescaleIntercept")) is not None:
                out["intercept"] = as_float(item.get("RescaleIntercept"))

    common = dict(base)
    from_groups(shared, common)
    frames = []
    for i in range(n_frames):
        g = dict(common)
        if i < len(per_frame):
            from_groups(per_frame[i], g)
        frames.append(g)
    return frames


def sort_order(slices: list[dict[str, Any]]) -> tuple[list[int], str]:
    """Slice permutation and the rule used ('position', 'instance_number' or 'file_order')."""
    n = len(slices)
    if n > 1 and all(s["position"] and s["orientation"] for s in slices):
        o0 = np.array(slices[0]["orientation"])
        if all(np.allclose(s["orientation"], o0, atol=1e-4) for s in slices):
            normal = np.cross(o0[:3], o0[3:])
            keys = [float(np.dot(normal, s["position"])) for s in slices]
            if len({round(k, 4) for k in keys}) == n:
                return sorted(range(n), key=lambda i: keys[i]), "position"
    instances = [s["instance"] for s in slices]
    if n > 1 and None not in instances and len(set(instances)) > 1:
        return sorted(range(n), key=lambda i: (slices[i]["instance"], i)), "instance_number"
    return list(range(n)), "file_order"


def nifti_geometry(meta: dict, n_slices: int) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    """A NIfTI affine (RAS+, for the array ``arr[i, j, k] = data[k, i, j]``) and ``(scl_slope,
    scl_inter)`` from the DICOM geometry in ``meta``; each is ``None`` when it cannot be made.

    Voxel ``(i, j, k)`` = (row, column, slice) lies at, in DICOM LPS,
    ``P_0 + i * dr * col_cosines + j * dc * row_cosines + k * step`` where ``P_0`` is the first
    slice's ImagePositionPatient, ``(dr, dc)`` = PixelSpacing and ``step`` = (P_last - P_0)/(n-1)
    for a position-sorted stack, else the normal times SpacingBetweenSlices (or SliceThickness,
    or 1 mm). LPS -> RAS negates the first two rows. Scaling is set only when every slice has the
    same RescaleSlope/Intercept and it is not the identity. For a volume holding a sub-range of
    the slices the geometry of the first slices of the file is used.
    """
    geo = (meta.get("dicom") or {}).get("geometry") or {}
    iop = geo.get("orientation")
    spacing = geo.get("pixel_spacing")
    positions = geo.get("positions") or []
    scaling = None
    rescale = geo.get("rescale")
    if rescale and all(r == rescale[0] for r in rescale) and rescale[0][0] is not None:
        slope, inter = float(rescale[0][0]), float(rescale[0][1] or 0.0)
        if slope != 0 and (slope, inter) != (1.0, 0.0):
            scaling = (slope, inter)
    if not iop or not spacing or not positions or positions[0] is None:
        return None, scaling
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        return None, scaling
    normal /= np.linalg.norm(normal)
    p0 = np.array(positions[0], float)
    step = None
    if geo.get("sorted_by") == "position" and len(positions) > 1 and positions[-1] is not None:
        step = (np.array(positions[-1], float) - p0) / (len(positions) - 1)
        if np.linalg.norm(step) < 1e-6:
            step = None
    if step is None:
        dz = geo.get("spacing_between_slices") or geo.get("slice_thickness") or 1.0
        step = normal * abs(float(dz))
    dr, dc = float(spacing[0]), float(spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = col * dr
    lps[:3, 1] = row * dc
    lps[:3, 2] = step
    lps[:3, 3] = p0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, scaling
