#!/usr/bin/env python3
"""Round-trip one DICOM series through a PACS (Orthanc) with bmz.

Pulls a series out of Orthanc with DICOMweb (QIDO-RS to find it, WADO-RS to retrieve it),
compresses it with bmz, decodes the ``.bmz`` bytes into a DERIVED series (new SeriesInstanceUID
and SOPInstanceUIDs, ImageType DERIVED, LossyImageCompression "01", pixel data = bmz's decode)
and stores that series back with STOW-RS. The original series is not modified.

    python examples/orthanc_pipeline.py --url http://127.0.0.1:8042 --series 1.2.3.4 --quality 8
    python examples/orthanc_pipeline.py --url https://pacs.example/orthanc --user alice \\
        --password-env ORTHANC_PASSWORD --series 1.2.3.4 --save series.bmz

Needs Orthanc's DICOMweb plugin (Debian/Ubuntu: ``apt-get install orthanc orthanc-dicomweb``)
and the ``dicomweb-client`` package (``pip install -e ".[test]"`` or
``pip install dicomweb-client``). ``tests/test_orthanc.py`` runs this module's functions against
an Orthanc it starts itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

DEFAULT_TIMEOUT = 30.0  # seconds, for every HTTP request (connect and read)
DEFAULT_DICOMWEB_ROOT = "/dicom-web"  # the Orthanc DICOMweb plugin's default "Root"

# DICOM JSON tags (QIDO-RS / STOW-RS responses)
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"


class PipelineError(RuntimeError):
    """Something the user can act on: unreachable server, missing series, refused store..."""


@dataclass
class RoundTrip:
    """What :func:`run` did."""

    study_uid: str
    series_uid: str
    original: list[Dataset]
    data: bytes  # the .bmz bytes
    derived: list[Dataset]
    stow_response: Dataset
    stored_sop_uids: list[str] = field(default_factory=list)

    @property
    def derived_series_uid(self) -> str:
        return str(self.derived[0].SeriesInstanceUID)

    @property
    def original_pixel_bytes(self) -> int:
        return sum(len(ds.PixelData) for ds in self.original if "PixelData" in ds)


def _client_module():
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PipelineError(
            "the 'dicomweb-client' package is needed: pip install dicomweb-client "
            "(or pip install -e \".[test]\" in the bmz repository)") from exc
    return DICOMwebClient


def connect(url: str, *, user: str | None = None, password: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, dicomweb_root: str = DEFAULT_DICOMWEB_ROOT,
            retries: int = 1):
    """A ``dicomweb_client.DICOMwebClient`` for the Orthanc at ``url`` (e.g.
    ``http://127.0.0.1:8042``): DICOMweb under ``url + dicomweb_root``, ``timeout`` seconds per
    request, HTTP basic authentication when ``user`` is given, ``retries`` attempts for 429/503/504
    answers (1 = no retry)."""
    DICOMwebClient = _client_module()
    import requests

    if not url.startswith(("http://", "https://")):
        raise PipelineError(f"--url must start with http:// or https://, got {url!r}")
    session = requests.Session()
    if user is not None:
        session.auth = (user, password or "")
    root = "/" + dicomweb_root.strip("/")
    client = DICOMwebClient(url=url.rstrip("/") + root, session=session, timeout=timeout)
    if retries > 1:
        client.set_http_retry_params(retry=True, max_attempts=retries,
                                     wait_exponential_multiplier=500)
    else:
        client.set_http_retry_params(retry=False)
    return client


def _failure_reasons(response) -> str | None:
    """'instances refused, FailureReason ...' from a STOW-RS error body (DICOM JSON), if any."""
    try:
        body = Dataset.from_json(response.json())
    except Exception:  # noqa: BLE001 - not a DICOM JSON body
        return None
    failed = body.get("FailedSOPSequence") or []
    if not failed:
        return None
    reasons = sorted({f"{int(item.FailureReason):#06x}" if "FailureReason" in item else "?"
                      for item in failed})
    return (f"{len(failed)} instance(s) refused, FailureReason {', '.join(reasons)} "
            "(0x0110 processing failure, 0xa900 identifiers do not match the study, "
            "0xc000 cannot understand)")


def _explain(exc: Exception, client, what: str) -> PipelineError:
    """Turn a requests/dicomweb-client exception into a message naming the likely cause."""
    import requests

    where = getattr(client, "base_url", "the server")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return PipelineError(f"{what}: cannot connect to {where} ({exc.__class__.__name__}); "
                             "is Orthanc running, and is --url right?")
    if isinstance(exc, requests.exceptions.Timeout):
        return PipelineError(f"{what}: no answer from {where} within the timeout (--timeout)")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {
            401: "Orthanc asks for credentials: pass --user and --password-env",
            403: "Orthanc refused the request (credentials, or RemoteAccessAllowed=false)",
            404: "not found (are the UIDs right? is Orthanc's DICOMweb plugin installed, with "
                 "its Root at --dicomweb-root?)",
        }.get(code) or _failure_reasons(exc.response) or exc.response.text[:300].strip()
        return PipelineError(f"{what}: HTTP {code} from {where}: {hint}")
    return PipelineError(f"{what}: {exc}")


def find_study_uid(client, series_uid: str) -> str:
    """The StudyInstanceUID of ``series_uid``, by QIDO-RS; :class:`PipelineError` if the server
    does not know the series."""
    try:
        found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
    except Exception as exc:  # noqa: BLE001 - re-raised with an explanation
        raise _explain(exc, client, f"looking up series {series_uid}") from exc
    studies = {r[_STUDY_UID]["Value"][0] for r in found
               if r.get(_SERIES_UID, {}).get("Value", [None])[0] == series_uid
               and r.get(_STUDY_UID, {}).get("Value")}
    if not studies:
        raise PipelineError(f"series {series_uid} not found on {client.base_url}")
    if len(studies) > 1:  # pragma: no cover - a corrupt archive
        raise PipelineError(f"series {series_uid} appears in several studies: {sorted(studies)}")
    return studies.pop()


def fetch_series(client, series_uid: str, study_uid: str | None = None
                 ) -> tuple[str, list[Dataset]]:
    """``(study_uid, datasets)``: every instance of the series, retrieved with WADO-RS into
    memory (nothing is written to disk)."""
    if study_uid is None:
        study_uid = find_study_uid(client, series_uid)
    try:
        datasets = client.retrieve_series(study_uid, series_uid)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, client, f"retrieving series {series_uid}") from exc
    datasets = [ds for ds in datasets if "PixelData" in ds]
    if not datasets:
        raise PipelineError(f"series {series_uid} has no image instances")
    return study_uid, datasets


def _part10(ds: Dataset) -> Dataset:
    """``ds`` with the file meta information a STOW-RS body needs (Part 10), filled in when the
    dataset lacks it; ``ds`` itself is not modified."""
    meta = getattr(ds, "file_meta", None)
    if (meta is not None and "TransferSyntaxUID" in meta and "MediaStorageSOPInstanceUID" in meta
            and getattr(ds, "preamble", None) is not None):
        return ds
    out = Dataset(ds)  # a shallow copy: same elements, new container
    new_meta = FileMetaDataset(meta) if meta is not None else FileMetaDataset()
    new_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    new_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in new_meta:
        new_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "ImplementationClassUID" not in new_meta:
        new_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = new_meta
    out.preamble = b"\x00" * 128
    return out


def store_series(client, datasets: Sequence[Dataset], study_uid: str | None = None
                 ) -> tuple[Dataset, list[str]]:
    """STOW-RS ``datasets``; returns the server's response and the SOPInstanceUIDs it reports as
    stored. :class:`PipelineError` when the request fails or the server refuses any instance."""
    try:
        response = client.store_instances([_part10(ds) for ds in datasets],
                                          study_instance_uid=study_uid)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, client, f"storing {len(datasets)} instances") from exc
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reasons = sorted({f"{int(item.FailureReason):#06x}" if "FailureReason" in item else "?"
                          for item in failed})
        raise PipelineError(f"the server refused {len(failed)} of {len(datasets)} instances "
                            f"(FailureReason {', '.join(reasons)})")
    stored = [str(item.ReferencedSOPInstanceUID)
              for item in (response.get("ReferencedSOPSequence") or [])
              if "ReferencedSOPInstanceUID" in item] if response is not None else []
    missing = {str(ds.SOPInstanceUID) for ds in datasets} - set(stored)
    if missing:
        raise PipelineError(f"the server did not confirm {len(missing)} of {len(datasets)} "
                            "stored instances")
    return response, stored


def run(client, series_uid: str, quality: int | None = None, *, save: str | os.PathLike | None = None,
        log=print) -> RoundTrip:
    """Fetch ``series_uid``, compress it with bmz at ``quality``, decode it into a DERIVED series
    and store that back. ``save``: also write the ``.bmz`` bytes to this file."""
    import bmz

    if not all(hasattr(bmz, f) for f in ("compress_dataset", "decompress_to_datasets")):
        raise PipelineError(f"this bmz ({getattr(bmz, '__version__', '?')}, {bmz.__file__}) lacks "
                            "compress_dataset/decompress_to_datasets: install a newer bmz")
    study_uid, original = fetch_series(client, series_uid)
    log(f"fetched {len(original)} instances of series {series_uid} (study {study_uid})")
    data = bmz.compress_dataset(original, quality=quality)
    raw = sum(len(ds.PixelData) for ds in original)
    log(f"bmz quality {bmz.info(data)['quality']}: {raw:,} pixel bytes -> {len(data):,} bytes "
        f"({raw / max(len(data), 1):.1f}:1)")
    if save is not None:
        Path(save).write_bytes(data)
        log(f"wrote {save}")
    derived = bmz.decompress_to_datasets(data)
    response, stored = store_series(client, derived)
    rt = RoundTrip(study_uid, series_uid, original, data, derived, response, stored)
    log(f"stored DERIVED series {rt.derived_series_uid}: {len(stored)} instances accepted")
    return rt


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Compress a DICOM series from Orthanc with bmz and store the decoded "
                    "DERIVED series back (DICOMweb: QIDO-RS, WADO-RS, STOW-RS).")
    p.add_argument("--url", required=True,
                   help="Orthanc's base URL, e.g. http://127.0.0.1:8042")
    p.add_argument("--series", required=True, help="SeriesInstanceUID of the series to compress")
    p.add_argument("--quality", type=int, default=None, help="bmz quality, 1 .. the model's levels (default: the model's default)")
    p.add_argument("--save", metavar="FILE.bmz", help="also write the compressed series here")
    p.add_argument("--user", help="HTTP basic-auth user name, if Orthanc asks for one")
    p.add_argument("--password-env", metavar="VAR", default="ORTHANC_PASSWORD",
                   help="environment variable holding the password (default ORTHANC_PASSWORD)")
    p.add_argument("--dicomweb-root", default=DEFAULT_DICOMWEB_ROOT,
                   help=f"the DICOMweb plugin's Root (default {DEFAULT_DICOMWEB_ROOT})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT:g})")
    args = p.parse_args(argv)
    if args.quality is not None:
        from bmz.codec import zoo

        n_q = zoo.card_qualities(zoo.read_card(zoo.DEFAULT_MODEL))[0]
        if not 1 <= args.quality <= n_q:
            p.error(f"--quality must be between 1 and {n_q}")
    password = os.environ.get(args.password_env) if args.user else None
    from bmz.errors import BmzError

    try:
        client = connect(args.url, user=args.user, password=password, timeout=args.timeout,
                         dicomweb_root=args.dicomweb_root, retries=3)
        rt = run(client, args.series, args.quality, save=args.save)
    except (PipelineError, BmzError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(rt.derived_series_uid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
