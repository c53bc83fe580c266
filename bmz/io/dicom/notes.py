"""The notes of a DICOM series: what a decode cannot give back as it was, one line per
distinct note (the files that share it named once)."""

from __future__ import annotations

try:
    from pydicom.uid import UID
except ImportError:  # pragma: no cover - pydicom is a hard dependency
    pass


def kept_notes(descriptor: dict, names: list[str], lossless: bool) -> list[str]:
    """What a decode of a ``.bmz`` with this kept-bytes ``descriptor`` cannot give back as it
    was, one line per distinct note (the files that share it named once): ``lossless``, for a
    lossless file decoded to its original files; otherwise for a derived series."""
    notes: list[tuple[str, str]] = []
    for name, f in zip(names, descriptor.get("files", [])):
        ts = str(f.get("ts") or "")
        ts_name = UID(ts).name if ts else "no transfer syntax"
        if lossless:
            if f.get("restore") == "elements":
                notes.append((name, f"comes back with every element identical but its pixel data "
                                    f"native, in Explicit VR Little Endian (the original's were "
                                    f"encapsulated, {ts_name}; --keep-encapsulated keeps them "
                                    "byte for byte)"))
                notes += [(name, f"native version: {c}") for c in f.get("native_changes", [])]
            continue
        p = f.get("pixels", {})
        if f.get("high_bits"):
            notes.append((name, f"bits above Bits Stored ({p.get('stored')} of {p.get('alloc')}) "
                                "of its pixel words are not its values' (set, or not "
                                "sign-extended); the derived file has the values alone"))
        if f.get("value_bits"):
            notes.append((name, f"its pixel words' low {p.get('stored')} bits are not the values "
                                "pydicom decodes from them; the derived file has those values"))
        if f.get("group_lengths"):
            notes.append((name, "group length elements (gggg,0000) are not written in the "
                                "derived file (retired; pydicom writes none)"))
        notes += [(name, f"derived file: {c}") for c in f.get("native_changes", [])
                  if "Lossy Image Compression" not in c]
    return summarise_notes(notes)


def summarise_notes(notes: list[tuple[str, str]]) -> list[str]:
    """One line per distinct ``(file name, what)`` note (of :func:`series_files`...), the same
    note of several files on one line naming the first (``a.dcm and 199 other files: …``)."""
    files: dict[str, list[str]] = {}
    for name, what in notes:
        files.setdefault(what, []).append(name)
    return [f"{names[0]}{f' and {len(names) - 1} other files' if len(names) > 1 else ''}: {what}"
            for what, names in files.items()]
