"""A real PACS round trip (issue 7): Orthanc + its DICOMweb plugin + bmz.

The module starts its own Orthanc (the Debian package ``orthanc`` + ``orthanc-dicomweb``, which
``.ci/run`` installs) as a foreground subprocess: HTTP at a free port with remote access refused
(Orthanc 1.10 has no bind-address option: it listens on every interface but answers loopback
clients only), the DICOM (DIMSE) server disabled, no authentication, its database and storage in a
temporary folder, only the DICOMweb plugin loaded. It uploads a real MR series from
``../shared/data`` through Orthanc's REST API, then runs ``examples/orthanc_pipeline.py``'s
functions on it (WADO-RS retrieve -> ``bmz.compress_dataset`` -> ``bmz.decompress_to_datasets``
-> STOW-RS) and checks, through Orthanc, that the DERIVED series is stored with every instance,
that its pixel data equal ``bmz.decompress`` slice for slice and that the original is untouched.
A ``--lossless`` case (issue 17) takes the stored files from Orthanc, round-trips them through
``bmz.compress_dataset(..., lossless=True)`` / ``bmz.decompress_to_files``, stores the result in
place of the originals and checks through Orthanc that the instances are byte-identical.

Skipped, with the reason, where Orthanc, its DICOMweb plugin, ``dicomweb-client`` or the shared
data are missing, or Orthanc cannot start. Every HTTP request has a timeout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomweb_client",
                    reason="dicomweb-client is not installed (pip install -e \".[test]\")")
pydicom = pytest.importorskip("pydicom")
requests = pytest.importorskip("requests")

import bmz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "orthanc_pipeline.py"
# A classic single-frame MR series: Siemens XA30 T1w MPRAGE, 8 slices of 128 x 128, 12 bits
# stored in uint16, explicit VR little endian (1.4 MB, mostly Siemens private headers).
SERIES = "dicom/dcm_qa_xa30i/5001_anat-T1w_acq-tfl"
TIMEOUT = 30  # seconds, every HTTP request
STARTUP_TIMEOUT = 30  # seconds for Orthanc to answer /system

ORTHANC_BINARIES = ["/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/bin/Orthanc",
                    "/usr/local/bin/Orthanc"]
DICOMWEB_PLUGINS = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
                    "/usr/lib/orthanc/libOrthancDicomWeb.so"]
INSTALL_HINT = "install them with: apt-get install orthanc orthanc-dicomweb, as .ci/run does"


def _example():
    """``examples/orthanc_pipeline.py`` as a module (it is a script, not part of the package)."""
    name = "bmz_example_orthanc_pipeline"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def _orthanc_binary() -> str | None:
    env = os.environ.get("ORTHANC_BINARY")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("Orthanc")
    return found or next((b for b in ORTHANC_BINARIES if os.access(b, os.X_OK)), None)


def _dicomweb_plugin() -> str | None:
    env = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    candidates = [env] if env else DICOMWEB_PLUGINS
    found = next((p for p in candidates if Path(p).is_file()), None)
    if found is None and not env:  # a versioned file only (libOrthancDicomWeb.so.1.7, ...)
        found = next((str(p) for d in ("/usr/lib/orthanc", "/usr/local/lib/orthanc")
                      for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))), None)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(storage: Path, port: int, plugin: str) -> dict:
    return {
        "Name": "bmz-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # only loopback clients
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # no DIMSE listener
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"127.0.0.1:{port}", "Ssl": False},
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "HttpTimeout": TIMEOUT,
        "StorageCompression": False,
        "OverwriteInstances": False,
    }


def _log_tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # Orthanc stops cleanly on SIGTERM in about a second
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Base URL of a fresh Orthanc with the DICOMweb plugin, stopped after the module."""
    binary = _orthanc_binary()
    if binary is None:
        pytest.skip(f"Orthanc is not installed ({INSTALL_HINT})")
    plugin = _dicomweb_plugin()
    if plugin is None:
        pytest.skip(f"Orthanc's DICOMweb plugin (libOrthancDicomWeb.so) not found ({INSTALL_HINT})")
    root = tmp_path_factory.mktemp("orthanc")
    why = "?"
    for attempt in range(3):  # a new port if another process took ours in between
        port = _free_port()
        storage = root / f"db{attempt}"
        storage.mkdir()
        config = root / f"orthanc{attempt}.json"
        config.write_text(json.dumps(_config(storage, port, plugin), indent=1))
        log = root / f"orthanc{attempt}.log"
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=root)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        system = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.get(f"{url}/system", timeout=2)
                if r.ok:
                    system = r.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        if system is not None:
            break
        _stop(proc)
        why = (f"exit code {proc.returncode}" if proc.returncode not in (None, -15)
               else f"no answer within {STARTUP_TIMEOUT} s")
        why += f"; log:\n{_log_tail(log)}"
        if "already in use" not in why:  # only a lost port race is worth another try
            break
    if system is None:
        pytest.skip(f"Orthanc ({binary}) could not start: {why}")
    try:
        plugins = requests.get(f"{url}/plugins", timeout=TIMEOUT).json()
        if "dicom-web" not in plugins:
            pytest.skip(f"Orthanc {system.get('Version')} did not load the DICOMweb plugin "
                        f"{plugin}; log:\n{_log_tail(log)}")
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def series_files(shared_data):
    folder = shared_data / SERIES
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        pytest.skip(f"test series not found at {folder}")
    return files


def _lookup(url: str, uid: str) -> list[dict]:
    r = requests.post(f"{url}/tools/lookup", data=uid, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


def _orthanc_series(url: str, series_uid: str) -> dict:
    """Orthanc's /series/{id} resource for a SeriesInstanceUID (REST API, not DICOMweb)."""
    hits = [h for h in _lookup(url, series_uid) if h["Type"] == "Series"]
    assert len(hits) == 1, f"Orthanc does not know series {series_uid}: {hits}"
    r = requests.get(f"{url}/series/{hits[0]['ID']}", timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


def _instance_files(url: str, series: dict) -> list[bytes]:
    out = []
    for iid in series["Instances"]:
        r = requests.get(f"{url}/instances/{iid}/file", timeout=TIMEOUT)
        r.raise_for_status()
        out.append(r.content)
    return out


def _position(ds) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


@pytest.fixture(scope="module")
def uploaded(orthanc, series_files):
    """Upload the real series through Orthanc's REST API (the files' bytes as they are)."""
    blobs = [p.read_bytes() for p in series_files]
    for path, blob in zip(series_files, blobs):
        r = requests.post(f"{orthanc}/instances", data=blob, timeout=TIMEOUT)
        assert r.ok, f"Orthanc refused {path.name}: HTTP {r.status_code} {r.text[:200]}"
        assert r.json()["Status"] in ("Success", "AlreadyStored")
    first = pydicom.dcmread(series_files[0], stop_before_pixels=True)
    series_uid = str(first.SeriesInstanceUID)
    assert len(_orthanc_series(orthanc, series_uid)["Instances"]) == len(series_files)
    return blobs, first


def test_orthanc_round_trip(orthanc, series_files, uploaded, tmp_path):
    op = _example()
    url = orthanc
    blobs, first = uploaded
    series_uid, study_uid = str(first.SeriesInstanceUID), str(first.StudyInstanceUID)
    n = len(series_files)

    # the example's flow: QIDO-RS + WADO-RS retrieve, bmz encode/decode, STOW-RS
    client = op.connect(url, timeout=TIMEOUT)
    messages = []
    saved = tmp_path / "series.bmz"
    rt = op.run(client, series_uid, quality=2, save=saved, log=messages.append)
    assert rt.study_uid == study_uid and rt.series_uid == series_uid
    assert len(messages) == 4, messages
    assert saved.read_bytes() == rt.data

    # what WADO-RS gave bmz is the uploaded series, pixel for pixel
    files_by_sop = {str(ds.SOPInstanceUID): ds
                    for ds in (pydicom.dcmread(p) for p in series_files)}
    assert sorted(str(ds.SOPInstanceUID) for ds in rt.original) == sorted(files_by_sop)
    for ds in rt.original:
        np.testing.assert_array_equal(ds.pixel_array,
                                      files_by_sop[str(ds.SOPInstanceUID)].pixel_array)

    # the DERIVED series bmz made: new UIDs, same study, one instance per slice
    expected = bmz.decompress(rt.data)
    assert expected.shape == (n, int(first.Rows), int(first.Columns))
    assert len(rt.derived) == n
    new_uid = rt.derived_series_uid
    assert new_uid != series_uid
    assert {str(ds.SeriesInstanceUID) for ds in rt.derived} == {new_uid}
    assert {str(ds.StudyInstanceUID) for ds in rt.derived} == {study_uid}
    derived_sops = [str(ds.SOPInstanceUID) for ds in rt.derived]
    assert len(set(derived_sops)) == n and not set(derived_sops) & set(files_by_sop)

    # Orthanc accepted it: STOW-RS confirmed every instance, the REST API and QIDO-RS list them
    assert sorted(rt.stored_sop_uids) == sorted(derived_sops)
    stored = _orthanc_series(url, new_uid)
    assert len(stored["Instances"]) == n
    assert stored["MainDicomTags"]["SeriesInstanceUID"] == new_uid
    qido = client.search_for_series(search_filters={"SeriesInstanceUID": new_uid})
    assert len(qido) == 1 and int(qido[0]["00201209"]["Value"][0]) == n

    # its pixel data, fetched back through WADO-RS, are bmz's decode slice for slice
    _, back = op.fetch_series(client, new_uid, study_uid=study_uid)
    assert len(back) == n
    back_by_sop = {str(ds.SOPInstanceUID): ds for ds in back}
    assert set(back_by_sop) == set(derived_sops)
    original_volume = np.stack([ds.pixel_array for ds in files_by_sop.values()])
    peak = float(original_volume.max()) - float(original_volume.min())
    originals = list(files_by_sop.values())
    for k, sop in enumerate(derived_sops):
        got = back_by_sop[sop]
        assert got.LossyImageCompression == "01"
        assert "DERIVED" in [str(v) for v in got.ImageType]
        assert int(got.BitsAllocated) == int(first.BitsAllocated)
        assert int(got.PixelRepresentation) == int(first.PixelRepresentation)
        pixels = got.pixel_array
        assert pixels.dtype == original_volume.dtype
        np.testing.assert_array_equal(pixels, expected[k], err_msg=f"slice {k} ({sop})")
        # the right order: slice k sits where its original was, and resembles that original
        # more than any other slice of the series
        same_place = [o for o in originals if np.allclose(_position(o), _position(got), atol=1e-3)]
        assert len(same_place) == 1, f"slice {k}: no original at {_position(got)}"
        errors = [np.mean((o.pixel_array.astype(np.float64) - pixels) ** 2) for o in originals]
        assert originals[int(np.argmin(errors))] is same_place[0], f"slice {k} is out of order"
        psnr = 10 * np.log10(peak ** 2 / max(min(errors), 1e-12))
        assert psnr > 25, f"slice {k}: PSNR {psnr:.1f} dB"

    # the original series is untouched: same instances, byte for byte
    original = _orthanc_series(url, series_uid)
    assert len(original["Instances"]) == n
    digests = sorted(hashlib.sha256(b).hexdigest() for b in _instance_files(url, original))
    assert digests == sorted(hashlib.sha256(b).hexdigest() for b in blobs)


def test_example_cli(orthanc, series_files, uploaded, capsys):
    """The example as a user runs it: prints the new series' UID; Orthanc holds it."""
    op = _example()
    first = uploaded[1]
    assert op.main(["--url", orthanc, "--series", str(first.SeriesInstanceUID),
                    "--quality", "1", "--timeout", str(TIMEOUT)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out and "stored DERIVED series" in out[-2], out
    new_uid = out[-1]
    assert new_uid != str(first.SeriesInstanceUID)
    assert len(_orthanc_series(orthanc, new_uid)["Instances"]) == len(series_files)
    _, back = op.fetch_series(op.connect(orthanc, timeout=TIMEOUT), new_uid)
    assert {str(ds.LossyImageCompression) for ds in back} == {"01"}


def test_example_cli_errors(orthanc, capsys):
    """The example's command line: a clear error, exit code 1, for an unknown series and for a
    server that is not there; argparse refuses a bad quality."""
    op = _example()
    assert op.main(["--url", orthanc, "--series", "1.2.3.999", "--timeout", "10"]) == 1
    assert "series 1.2.3.999 not found" in capsys.readouterr().err
    assert op.main(["--url", f"http://127.0.0.1:{_free_port()}", "--series", "1.2.3",
                    "--timeout", "5"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        op.main(["--url", orthanc, "--series", "1.2.3", "--quality", "12"])


def test_orthanc_lossless_round_trip_is_byte_identical(orthanc, uploaded):
    """A PACS round trip of a --lossless .bmz: the files bmz gives back are the stored instances,
    byte for byte; stored again in their place, Orthanc holds the very same instances."""
    url = orthanc
    blobs, first = uploaded
    series_uid = str(first.SeriesInstanceUID)
    series = _orthanc_series(url, series_uid)
    stored = _instance_files(url, series)  # the instances as Orthanc stores them
    digests = sorted(hashlib.sha256(b).hexdigest() for b in stored)
    assert digests == sorted(hashlib.sha256(b).hexdigest() for b in blobs)

    data = bmz.compress_dataset(stored, lossless=True)
    info = bmz.info(data)
    assert info["max_error"] == 0 and info["dicom"]["restore"] == {"identical": len(stored)}
    back = [raw for _, raw in bmz.decompress_to_files(data)]
    assert sorted(hashlib.sha256(b).hexdigest() for b in back) == digests

    # replace the originals in Orthanc by bmz's decode: the same instances, byte for byte
    r = requests.delete(f"{url}/series/{series['ID']}", timeout=TIMEOUT)
    r.raise_for_status()
    for raw in back:
        r = requests.post(f"{url}/instances", data=raw, timeout=TIMEOUT)
        assert r.ok and r.json()["Status"] == "Success", r.text[:200]
    again = _orthanc_series(url, series_uid)
    assert len(again["Instances"]) == len(stored)
    assert sorted(hashlib.sha256(b).hexdigest() for b in _instance_files(url, again)) == digests
