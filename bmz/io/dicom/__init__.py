"""DICOM reading and writing (pydicom 3): single files, series folders, enhanced multi-frame
files, and the same held in memory.

* :func:`read_dicom` (a path) and :func:`read_datasets` (pydicom Datasets, file objects or bytes,
  nothing touches the disk) give a :class:`Volume` whose ``attachment`` keeps every file's bytes
  but its pixel data (:mod:`bmz.io.dicom.kept`) and whose ``meta`` describes the series;
* :func:`write_dicom` (a folder, atomically) and :func:`series_files` (in memory) turn a
  decoded DICOM-origin volume back into its series: the original files for a lossless ``.bmz``,
  derived, lossy-marked files otherwise (the rules: :func:`series_files`; what changes:
  :mod:`bmz.io.dicom.derive`; the method string :data:`LOSSY_METHOD`).

What :func:`read_dicom` accepts:

* a single DICOM file: its frame(s) become the slices (a classic file gives ``(1, H, W)``, an
  enhanced multi-frame file ``(n_frames, H, W)``);
* a folder (searched recursively; hidden files ignored) holding ONE image series, or several
  series with ``series=`` choosing one: a whole SeriesInstanceUID, a SeriesNumber (a key of
  digits only is always a series number), or a prefix of exactly one series' UID. Several
  series and no choice -> :class:`InputError` listing them. Files that are not DICOM, or DICOM
  without PixelData (DICOMDIR, SR, presentation states...) are skipped. A series may hold
  several multi-frame files; their frames are all stacked.

Slice order: when every slice has ImagePositionPatient and the same ImageOrientationPatient
(per-frame functional groups for enhanced files) and their positions along the slice normal
``n = cross(row_cosines, col_cosines)`` are all distinct, slices are sorted by ``dot(n, position)``
(ascending). Otherwise (missing geometry, several orientations, repeated positions as in a time
series) by InstanceNumber, then file name and frame number; the rule used is recorded in
``meta["dicom"]["geometry"]["sorted_by"]``.

Pixel values are the STORED values (``ds.pixel_array``: no modality/VOI rescale), dtype from
BitsAllocated/PixelRepresentation as pydicom gives it (uint8/int8/uint16/int16, ``'>u2'``/``'>i2'``
for big-endian files; 32-bit only if values fit 16 bits). pydicom masks bits above BitsStored;
the kept bytes keep them (a lossless decode restores them). Compressed transfer syntaxes are
decoded by pydicom's plugins (pylibjpeg + pylibjpeg-libjpeg / -openjpeg, Pillow; RLE natively);
a missing decoder raises :class:`MissingDependencyError` naming the pip package. Colour
(SamplesPerPixel > 1 or PhotometricInterpretation other than MONOCHROME1/2), 1-bit pixel data
(segmentations), slices of different sizes or dtypes in one series, and files whose bytes would
not come back exactly from what bmz keeps are refused.

``meta`` layout (DICOM meta layout 2; layout 1, of older files, is :mod:`bmz.io.dicom.legacy`)::

    {"dicom": {
        "layout": 2,
        "multiframe": bool,            # an enhanced / multi-frame file is involved
        "files": [...],                # per file: name relative to the folder read (or basename)
        "order": [...],                # per slice (data[k]): the file name it came from
        "frames": [[file, frame], ...] # per slice: index into "files" and frame in that file
        "series_uid": str | None,
        "geometry": {"positions": [[x, y, z] | None per slice], "orientation": [6] | None,
                     "pixel_spacing": [row, col] | None, "slice_thickness": float | None,
                     "spacing_between_slices": float | None, "sorted_by": str,
                     "rescale": [[slope, intercept] per slice] | None},
        "kept": {...},                 # per file: how its kept bytes restore it
                                       # (bmz.io.dicom.kept.pack; the bytes: the attachment)
        "notes": [str, ...]},          # what a decode cannot give back as it was, per file
     "bits_stored": int, "photometric": str}

Files in "files" are in order of first appearance in the slices, so for a classic series
``files[k]`` is the file of slice ``k``.

:func:`nifti_geometry` turns that geometry into a NIfTI (RAS+) affine for DICOM -> NIfTI writing.

The modules, one job each: :mod:`~bmz.io.dicom.series` (finding files, choosing the series),
:mod:`~bmz.io.dicom.geometry` (slice geometry and order), :mod:`~bmz.io.dicom.read` (the
Volume), :mod:`~bmz.io.dicom.kept` (the kept bytes, on :mod:`~bmz.io.dicom.layout`, the files'
element layout), :mod:`~bmz.io.dicom.write` (the series back, changed as
:mod:`~bmz.io.dicom.derive` says), :mod:`~bmz.io.dicom.notes` (what a decode cannot give back),
:mod:`~bmz.io.dicom.legacy` (meta layout 1).
"""

from __future__ import annotations

from .derive import LOSSY_METHOD, LossyCoding
from .geometry import nifti_geometry
from .legacy import dicom_datasets, dicom_file_meta
from .notes import kept_notes, summarise_notes
from .read import LAYOUT, read_datasets, read_dicom
from .series import is_dicom_image, list_series
from .write import (
           SeriesFiles,
           check_dicom_source,
           check_output_folder,
           series_files,
           write_dicom,
)

__all__ = ["read_dicom", "read_datasets", "list_series", "write_dicom", "series_files",
           "SeriesFiles", "LossyCoding", "LOSSY_METHOD", "nifti_geometry", "dicom_datasets",
           "dicom_file_meta", "check_output_folder", "check_dicom_source", "summarise_notes",
           "kept_notes", "is_dicom_image", "LAYOUT"]
