"""What bmz changes in a DICOM file it writes from a decoded volume (the derived series).

:func:`derive` turns an original file's dataset, holding the decoded pixels, into the file bmz
writes: for a lossy (or bounded-error) ``.bmz`` a derived, lossy-marked instance; for a lossless
one (when it is written through pydicom at all: a file of an old ``.bmz``) the original instance.
:func:`set_series_range` updates the series-wide Smallest/Largest Pixel Value in Series once the
whole series is known; :func:`file_meta` is the new file meta; :func:`to_little_endian` turns a
big-endian dataset's binary words around. The rules are listed in
:func:`bmz.io.dicom.write.series_files`; :class:`LossyCoding` says how the volume was coded.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from ..._version import __version__
from .kept import LOSSY_TS_METHOD

try:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    Dataset = None  # type: ignore[assignment,misc]


#: Lossy Image Compression Method (0028,2114) of bmz output (CS; the model and quality are in
#: Derivation Description)
LOSSY_METHOD = "BMZ"

# the (0028,2114) method of a lossy transfer syntax, for an original that records its lossy
# ratio but not its method (the values of the two attributes must pair up)
_LOSSY_TS_METHOD = LOSSY_TS_METHOD
#: binary VRs with multi-byte words (swapped when a big-endian original is written little endian)
SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


@dataclass(frozen=True)
class LossyCoding:
    """How a volume's pixels were compressed; :func:`write_dicom` records it in every file.

    ``ratio`` is the original's uncompressed pixel bytes over the compressed (``.bmz``) bytes;
    ``model`` and ``quality`` are the codec's; ``max_error`` the guaranteed bound of a bounded
    (``--max-error``) file, ``None`` for plain lossy coding. ``max_error == 0`` (``--lossless``)
    is no lossy compression at all: the files are the originals, with their UIDs, bit for bit in
    the pixels (:attr:`lossless`)."""

    ratio: float
    model: str
    quality: int
    max_error: int | None = None

    @property
    def lossless(self) -> bool:
        return self.max_error == 0

    def ratio_text(self) -> str:
        """The ratio as a DICOM decimal string (at most 16 characters)."""
        r = float(self.ratio)
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"lossy compression ratio must be a positive number, got {r!r}")
        text = f"{r:.2f}"
        return text if len(text) <= 16 else f"{r:.6e}"

    def description(self) -> str:
        if self.max_error is not None:
            base = (f"learned base layer {self.model} quality {self.quality}" if self.quality
                    else "no base layer")
            return (f"Near-lossless compression by bmz {__version__} (maximum error "
                    f"{self.max_error}, {base}), compression ratio {self.ratio_text()}:1")
        return (f"Lossy compression by bmz {__version__} (learned codec, model {self.model}, "
                f"quality {self.quality}), compression ratio {self.ratio_text()}:1")


def _code(value: str, meaning: str) -> "Dataset":
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _multi(ds: "Dataset", keyword: str) -> list:
    v = ds.get(keyword)
    if v is None or v == "":
        return []
    return list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]


def _set_lossy(ds: "Dataset", ts: str, lossy: LossyCoding, name: str,
               notes: list[tuple[str, str]]) -> bool:
    """Mark ``ds`` lossy-compressed by bmz, keeping a recorded history; returns whether the
    original was already lossy."""
    was_lossy = str(ds.get("LossyImageCompression", "")).strip() == "01"
    ratios = _multi(ds, "LossyImageCompressionRatio")
    methods = _multi(ds, "LossyImageCompressionMethod")
    if was_lossy and ratios and not methods and len(ratios) == 1 and ts in _LOSSY_TS_METHOD:
        methods = [_LOSSY_TS_METHOD[ts]]  # the method the transfer syntax implies
    if was_lossy and ratios and len(ratios) == len(methods):
        ratios, methods = ratios + [lossy.ratio_text()], methods + [LOSSY_METHOD]
    else:
        if was_lossy or ts in _LOSSY_TS_METHOD:
            notes.append((name, "the original was lossy-compressed but does not record each "
                                "step's ratio and method; only bmz's is recorded"))
            was_lossy = True
        ratios, methods = [lossy.ratio_text()], [LOSSY_METHOD]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    return was_lossy


def _derivation_item(description: str, source: "Dataset") -> "Dataset":
    """A Derivation Image Sequence item (enhanced images)."""
    item = Dataset()
    item.DerivationDescription = description
    item.DerivationCodeSequence = [_code("113040", "Lossy Compression")]
    item.SourceImageSequence = [source]
    return item


def _add_evidence(ds: "Dataset", series_uid: str, original: tuple[str, str]) -> None:
    """Reference the original in Source Image Evidence Sequence (hierarchical: study, series,
    instance), which an enhanced image needs once a Source Image Sequence refers to it."""
    study = str(ds.get("StudyInstanceUID", "")).strip()
    evidence = list(ds.get("SourceImageEvidenceSequence") or [])
    study_item = next((it for it in evidence if str(it.get("StudyInstanceUID", "")) == study), None)
    if study_item is None:
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = []
        evidence.append(study_item)
    series_items = list(study_item.get("ReferencedSeriesSequence") or [])
    series_item = next((it for it in series_items
                        if str(it.get("SeriesInstanceUID", "")) == series_uid), None)
    if series_item is None:
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedSOPSequence = []
        series_items.append(series_item)
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = original
    series_item.ReferencedSOPSequence = [*(series_item.get("ReferencedSOPSequence") or []), sop]
    study_item.ReferencedSeriesSequence = series_items
    ds.SourceImageEvidenceSequence = evidence


def _mark_derived(ds: "Dataset", lossy: LossyCoding, was_lossy: bool,
                  original: tuple[str, str], enhanced: bool) -> None:
    """Image Type / Frame Type DERIVED and the derivation (description, code, source); call it
    before the SeriesInstanceUID changes (an enhanced image references the original series)."""
    image_type = _multi(ds, "ImageType")
    ds.ImageType = ["DERIVED", *image_type[1:]] if image_type else ["DERIVED", "PRIMARY"]
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original
    source.PurposeOfReferenceCodeSequence = [
        _code("121330", "Lossy compressed predecessor") if was_lossy
        else _code("121320", "Uncompressed predecessor")]
    description = lossy.description()
    if not enhanced:
        previous = str(ds.get("DerivationDescription", "")).strip()
        ds.DerivationDescription = (f"{description}; {previous}" if previous else description)[:1024]
        ds.DerivationCodeSequence = [*(ds.get("DerivationCodeSequence") or []),
                                     _code("113040", "Lossy Compression")]
        ds.SourceImageSequence = [*(ds.get("SourceImageSequence") or []), source]
        return
    _add_evidence(ds, str(ds.get("SeriesInstanceUID", "")).strip(), original)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for groups in [*shared, *per_frame]:
        for elem in groups:
            if elem.VR == "SQ":
                for item in elem.value:
                    types = _multi(item, "FrameType")
                    if types:
                        item.FrameType = ["DERIVED", *types[1:]]
    if any("DerivationImageSequence" in g for g in per_frame):
        for i, groups in enumerate(per_frame):
            ref = copy.deepcopy(source)
            ref.ReferencedFrameNumber = i + 1
            groups.DerivationImageSequence = [*(groups.get("DerivationImageSequence") or []),
                                              _derivation_item(description, ref)]
        return
    if not shared:
        ds.SharedFunctionalGroupsSequence = [Dataset()]
        shared = ds.SharedFunctionalGroupsSequence
    shared[0].DerivationImageSequence = [*(shared[0].get("DerivationImageSequence") or []),
                                         _derivation_item(description, source)]


def derive(ds: "Dataset", ts: str, lossy: LossyCoding, series_uid: str, enhanced: bool,
           value_range: list[int], signed: bool, name: str,
           notes: list[tuple[str, str]]) -> tuple[str, str]:
    """Make ``ds`` (an original file's dataset, holding the decoded pixels; ``ts`` its original
    transfer syntax) the file bmz writes; returns its (SOP Class UID, SOP Instance UID).

    Lossy or bounded-error: marked lossy with its history (:func:`_set_lossy`) and derived
    (:func:`_mark_derived`), a new SOP Instance UID and the series' new ``series_uid``.
    Lossless: the original instance (a new SOP Instance UID only when it had none). Either way
    Smallest/Largest Image Pixel Value, when present, hold ``value_range`` with their VR."""
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    original = (sop_class, str(ds.get("SOPInstanceUID", "")).strip() or "0")
    if not lossy.lossless:
        was_lossy = _set_lossy(ds, ts, lossy, name, notes)
        _mark_derived(ds, lossy, was_lossy, original, enhanced)
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
    elif original[1] == "0":
        ds.SOPInstanceUID = generate_uid()
    _set_values(ds, ("SmallestImagePixelValue", "LargestImagePixelValue"), value_range, signed,
                name, notes)
    return sop_class, str(ds.SOPInstanceUID)


def set_series_range(ds: "Dataset", lo: int, hi: int, signed: bool, name: str,
                     notes: list[tuple[str, str]]) -> bool:
    """Smallest/Largest Pixel Value in Series, when ``ds`` has them, to ``lo``/``hi`` (their VR
    kept); returns whether ``ds`` has them."""
    keys = ("SmallestPixelValueInSeries", "LargestPixelValueInSeries")
    if not any(k in ds for k in keys):
        return False
    _set_values(ds, keys, [lo, hi], signed, name, notes)
    return True


def _set_values(ds: "Dataset", keywords: tuple[str, str], values: list[int], signed: bool,
                name: str, notes: list[tuple[str, str]]) -> None:
    """Set the US/SS elements ``keywords`` that ``ds`` has to ``values``, keeping each one's VR
    (an implicit-VR file's "US or SS" stays ambiguous, resolved on writing by Pixel
    Representation as the original's was); a value its VR cannot hold switches it, with a note."""
    for keyword, value in zip(keywords, values):
        if keyword not in ds:
            continue
        elem = ds[keyword]
        vr = elem.VR
        if vr not in ("US", "SS", "US or SS"):
            vr = "SS" if signed else "US"
        if (vr == "US" and value < 0) or (vr == "SS" and value > 32767):
            new = "SS" if value < 0 else "US"
            notes.append((name, f"{keyword} {value} does not fit the original's VR {vr}: written "
                                f"as {new}"))
            vr = new
        ds[elem.tag] = DataElement(elem.tag, vr, int(value))


def file_meta(ds: "Dataset", transfer_syntax: str) -> "Dataset":
    """A new file meta for ``ds`` written by bmz in ``transfer_syntax``."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = str(ds.get("SOPClassUID", "")).strip()
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = UID(transfer_syntax)
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = f"BMZ_{__version__}"[:16]
    return fm


def to_little_endian(ds: "Dataset") -> None:
    """Swap the words of ``ds``'s binary elements of multi-byte words (OW, OL, OF, OD, OV; at any
    depth) from big to little endian: pydicom re-encodes numbers and text when a big-endian
    dataset is written little endian, but keeps these values' bytes as they are."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                to_little_endian(item)
        elif elem.VR in SWAP_WIDTH and isinstance(elem.value, (bytes, bytearray)):
            width = SWAP_WIDTH[elem.VR]
            raw = bytes(elem.value)
            if len(raw) % width == 0:
                elem.value = np.frombuffer(raw, f">u{width}").astype(f"<u{width}").tobytes()
