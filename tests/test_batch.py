"""bmz batch on a real Dask LocalCluster (2 worker processes) over real MRI from ../shared/data:
one worker is killed in the middle of a task, and every output must still be complete and
byte-identical to a direct single-process ``bmz encode``; re-runs skip what is intact and redo
what is damaged or missing; the CLI's exit status and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402
from distributed import Client, LocalCluster, WorkerPlugin  # noqa: E402

from bmz import api, batch  # noqa: E402
from bmz.cli import main  # noqa: E402

MODEL, QUALITY = "cnn-ae-8", 1  # the smallest shipped model: the test is about the batch machinery
N_GOOD = 6


class KillOnce(WorkerPlugin):
    """Kills the worker process it runs in (SIGKILL, no clean-up), once across the cluster: when
    a worker starts its ``after``-th encode task, ``delay`` s later — in the middle of that task.
    Writes the pid and the keys of the tasks then executing to ``flag`` first."""

    name = "test-kill-once"

    def __init__(self, flag: str, after: int = 1, delay: float = 0.2):
        self.flag, self.after, self.delay = flag, after, delay

    def setup(self, worker):
        self.worker = worker
        self.started = 0

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("bmz-encode_task"):
            return
        self.started += 1
        if self.started != self.after:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another worker (or this one before a restart) did it
            return
        threading.Timer(self.delay, self._kill, args=(fd,)).start()

    def _kill(self, fd):
        executing = [str(ts.key) for ts in list(self.worker.state.executing)]
        os.write(fd, json.dumps({"pid": os.getpid(), "executing": executing}).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _build_source(shared: Path, root: Path) -> Path:
    """4 NIfTI crops of IXI volumes (two in a subfolder), two real DICOM series (12 slices of a
    12-bit Siemens Prisma series, 10 of a 16-bit structural one), an unreadable NIfTI and a text
    file."""
    import nibabel as nib

    src = root / "archive"
    (src / "nifti" / "sub").mkdir(parents=True)
    t1 = shared / "val" / "ixi_nichart" / "t1"
    for i, f in enumerate(sorted(t1.iterdir())[:4]):
        img = nib.load(f)
        a = np.asarray(img.dataobj.get_unscaled())[:, :, 40:52]
        sub = "sub/" if i % 2 else ""
        nib.save(nib.Nifti1Image(a, img.affine), src / "nifti" / f"{sub}{f.name.replace('_T1', '_crop')}")
    for series, name, n in (("dcm_qa_decubitus/HFS_t1_fl2d_sag", "sag", 12),
                            ("datalad_example_dicom_structural", "structural", 10)):
        (src / "dicom" / name).mkdir(parents=True)
        for f in sorted((shared / "val" / series).iterdir())[:n]:
            shutil.copy(f, src / "dicom" / name / f.name)
    (src / "nifti" / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 2)
    (src / "notes.txt").write_text("not an image\n")
    return src


@pytest.fixture(scope="module")
def src(shared_data, tmp_path_factory) -> Path:
    return _build_source(shared_data, tmp_path_factory.mktemp("batch"))


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def encoded(src, client, tmp_path_factory):
    """The batch run during which a worker is killed: (dst, result, what was killed)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    root = tmp_path_factory.mktemp("encoded")
    flag = root / "killed.json"
    client.register_plugin(KillOnce(str(flag)))
    try:
        res = batch.encode(str(src), str(root / "out"), QUALITY, MODEL, client=client)
    finally:
        client.unregister_worker_plugin(KillOnce.name)
    return root / "out", res, json.loads(flag.read_text())


@pytest.fixture(scope="module")
def direct(src, tmp_path_factory) -> dict:
    """Every input encoded directly in this process → {job key: .bmz bytes}."""
    jobs, errors = batch.discover_encode(str(src))
    assert not errors
    out = tmp_path_factory.mktemp("direct")
    got = {}
    for i, j in enumerate(jobs):
        if j.input.endswith("broken.nii.gz"):
            continue
        p = out / f"{i}.bmz"
        api.encode_file(j.src, p, quality=QUALITY, model=MODEL, series=j.series)
        got[j.key] = p.read_bytes()
    assert len(got) == N_GOOD
    return got


def test_discovery_layout(src):
    jobs, errors = batch.discover_encode(str(src))
    assert not errors and len(jobs) == N_GOOD + 1
    outs = {j.input: j.output for j in jobs}
    assert outs["dicom/sag"] == "dicom/sag.bmz" and outs["dicom/structural"] == "dicom/structural.bmz"
    crops = sorted(k for k in outs if "crop" in k)
    assert len(crops) == 4 and sum("/sub/" in k for k in crops) == 2
    for k in crops:
        assert outs[k] == k[: -len(".nii.gz")] + ".bmz"
    assert all(j.series for j in jobs if j.kind == "dicom")
    assert "notes.txt" not in " ".join(outs)


def test_discovery_gives_every_input_its_own_output(shared_data, tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4))
    for name in ("x.nii", "x.nii.gz", "y.nii.gz"):
        nib.save(img, tmp_path / name)
    dcm = sorted((shared_data / "val" / "datalad_example_dicom_structural").iterdir())[0]
    for folder in ("x", "y", "deep/two"):  # DICOM folders named like the NIfTI files
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(dcm, tmp_path / folder / dcm.name)
    shutil.copy(dcm, tmp_path / "deep" / dcm.name)  # deep/ holds a file and deep/two/ the same series
    jobs, errors = batch.discover_encode(str(tmp_path))
    assert not errors
    outs = {(j.kind, j.input): j.output for j in jobs}
    uid = next(j.series for j in jobs if j.kind == "dicom")
    # every name two inputs would share (x.bmz thrice, y.bmz twice) falls back to the full input
    # name (NIfTI) or the per-series name (DICOM); a name nobody shares stays short
    assert outs == {
        ("nifti", "x.nii"): "x.nii.bmz", ("nifti", "x.nii.gz"): "x.nii.gz.bmz",
        ("dicom", "x"): f"x/{batch._safe(uid)}.bmz",
        ("nifti", "y.nii.gz"): "y.nii.gz.bmz", ("dicom", "y"): f"y/{batch._safe(uid)}.bmz",
        ("dicom", "deep"): "deep.bmz",  # the series found from its top-most folder, once
    }


def test_discovery_takes_what_bmz_encode_takes(shared_data, tmp_path):
    """batch finds its inputs with the discovery of every command (bmz.io.discover.inputs):
    ``.npy`` files as well as NIfTI (an archive of what ``bmz encode`` accepts), volume files
    inside and below a DICOM folder too (an archive run skips no input file), and a DICOM folder
    below another one is read with it, not listed again. An ``.npy`` job encodes like
    ``bmz encode`` does."""
    import nibabel as nib

    from bmz.io import discover

    vol = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) * 7
    (tmp_path / "arr").mkdir()
    np.save(tmp_path / "arr" / "a.npy", vol)
    dcm = sorted((shared_data / "val" / "datalad_example_dicom_structural").iterdir())[0]
    (tmp_path / "scan" / "inner").mkdir(parents=True)
    shutil.copy(dcm, tmp_path / "scan" / dcm.name)
    shutil.copy(dcm, tmp_path / "scan" / "inner" / dcm.name)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)),
             tmp_path / "scan" / "inner" / "conv.nii.gz")
    jobs, errors = batch.discover_encode(str(tmp_path))
    assert not errors
    assert {(j.kind, j.input): j.output for j in jobs} == {
        ("numpy", "arr/a.npy"): "arr/a.bmz", ("dicom", "scan"): "scan.bmz",
        ("nifti", "scan/inner/conv.nii.gz"): "scan/inner/conv.bmz"}
    # train / rd-curve keep pruning below DICOM folders (a NIfTI there is usually the same scan)
    assert [(k, p.relative_to(tmp_path).as_posix()) for k, p in discover.inputs(tmp_path)] == \
        [("volume", "arr/a.npy"), ("dicom", "scan")]
    job = next(j for j in jobs if j.kind == "numpy")
    r = batch.encode_task(job, str(tmp_path / "out"), None, MODEL, True, None, 0, "auto")
    assert r["status"] == "ok", r["error"]
    assert np.array_equal(api.decompress((tmp_path / "out" / "arr" / "a.bmz").read_bytes()), vol)


def test_a_killed_worker_loses_nothing(encoded):
    dst, res, killed = encoded
    # the kill happened in the middle of a task, and Dask ran that task again elsewhere
    assert killed["executing"], "the worker was not running a task when it was killed"
    by_task = {r.get("task"): r for r in res.results}
    for key in killed["executing"]:
        assert by_task[key]["status"] == "ok"
        assert by_task[key]["pid"] != killed["pid"]
    ok = [r for r in res.results if r["status"] == "ok"]
    assert len(ok) == N_GOOD and res.n_done == N_GOOD
    assert [r["input"] for r in res.failures] == ["nifti/broken.nii.gz"]
    assert "not a valid NIfTI file" in res.failures[0]["error"]
    # each worker process (the restarted one too) loaded the model once, and ran on one thread
    assert {r["model_loads"] for r in ok} == {1} and {r["threads"] for r in ok} == {1}
    # no temporary file survives the killed writer, nor an output for the failed input
    assert not [p for p in dst.rglob("*") if p.name.endswith(".part")]
    assert not (dst / "nifti" / "broken.bmz").exists()


def test_outputs_are_complete_and_identical_to_direct_encoding(encoded, direct):
    dst, res, _ = encoded
    entries = [json.loads(line) for line in (dst / batch.MANIFEST).read_text().splitlines()]
    assert len(entries) == N_GOOD + 1
    done = {(e["input"], e["series"] or ""): e for e in entries if e["status"] == "ok"}
    assert set(done) == set(direct)
    for key, data in direct.items():
        e = done[key]
        out = dst / e["output"]
        assert out.read_bytes() == data, f"{out} differs from a direct encode"
        assert e["bytes"] == len(data) and e["sha256"] == batch.sha256_file(out)
        assert api.verify(out)["ok"]
        assert e["psnr"] > 20 and e["max_error"] > 0 and e["bpp"] == pytest.approx(
            8 * len(data) / np.prod(e["shape"]))
    # and each decodes to its input within the max error the manifest records
    from bmz import io as bio

    for j in batch.discover_encode(str(encoded[1].src))[0]:
        if j.key in done:
            orig = np.asarray(bio.read(j.src, series=j.series).data).astype(np.int64)
            back = api.decompress((dst / j.output).read_bytes()).astype(np.int64)
            assert back.shape == orig.shape
            assert int(np.abs(back - orig).max()) == done[j.key]["max_error"]
    assert (dst / batch.MANIFEST_CSV).read_text().splitlines()[0].startswith("input,series,output,status")


def test_rerun_skips_intact_outputs_and_redoes_damaged_ones(encoded, direct, client, tmp_path):
    dst0, _, _ = encoded
    dst = tmp_path / "out"
    shutil.copytree(dst0, dst)
    src = Path(encoded[1].src)
    res = batch.encode(str(src), str(dst), QUALITY, MODEL, client=client)
    assert res.n_skipped == N_GOOD and res.n_done == 0 and res.n_failed == 1
    # damage one output (a byte of a slice chunk), delete another, touch an input; run again
    damaged, deleted = dst / "dicom" / "structural.bmz", dst / "dicom" / "sag.bmz"
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    deleted.unlink()
    touched = sorted((src / "nifti" / "sub").glob("*.nii.gz"))[0]
    st = touched.stat()
    try:
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        res = batch.encode(str(src), str(dst), QUALITY, MODEL, client=client)
    finally:
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert res.n_done == 3 and res.n_skipped == N_GOOD - 3
    redone = {r["output"]: r for r in res.results if r["status"] == "ok" and not r.get("skipped")}
    touched_out = "nifti/sub/" + touched.name.replace(".nii.gz", ".bmz")
    assert set(redone) == {"dicom/structural.bmz", "dicom/sag.bmz", touched_out}
    for key, data in direct.items():
        e = next(r for r in res.results if (r["input"], r["series"] or "") == key)
        assert (dst / e["output"]).read_bytes() == data
    # a manifest entry only stands for the same input, settings and weights
    e = redone["dicom/sag.bmz"]
    job = next(j for j in batch.discover_encode(str(src))[0] if j.output == "dicom/sag.bmz")
    sha = e["weights_sha256"]
    assert batch._still_valid(e, job, QUALITY, MODEL, sha, verify=True)
    assert not batch._still_valid(e, job, QUALITY + 1, MODEL, sha, verify=True)
    assert not batch._still_valid(e, job, QUALITY, "hyperprior", sha, verify=True)
    assert not batch._still_valid(e, job, QUALITY, MODEL, "0" * 64, verify=True)
    assert not batch._still_valid({**e, "status": "error"}, job, QUALITY, MODEL, sha, verify=True)
    assert not batch._still_valid({**e, "fingerprint": [1, 2]}, job, QUALITY, MODEL, sha, True)


def test_cli_encode_decode_verify(encoded, client, tmp_path):
    dst0, res0, _ = encoded
    src = res0.src
    addr = client.scheduler.address
    dst = tmp_path / "out"
    shutil.copytree(dst0, dst)
    runner = CliRunner()

    r = runner.invoke(main, ["batch", "encode", src, "-o", str(dst), "-m", MODEL, "-q", str(QUALITY),
                             "--scheduler", addr, "--quiet"])
    assert r.exit_code == 1, r.output
    assert "broken.nii.gz: error: " in r.output and "not a valid NIfTI file" in r.output

    dec = tmp_path / "decoded"
    r = runner.invoke(main, ["batch", "decode", str(dst), "-o", str(dec), "--scheduler", addr])
    assert r.exit_code == 0, r.output
    assert f"{N_GOOD} decoded, 0 already done, 0 failed" in r.output
    from bmz import io as bio

    for bmz_file in (dst / "nifti" / "sub").glob("*.bmz"):
        back = bio.read(dec / "nifti" / "sub" / bmz_file.name.replace(".bmz", ".nii.gz"))
        assert np.array_equal(np.asarray(back.data), api.decompress(bmz_file.read_bytes()))

    # verify: its own LocalCluster (1 worker); then a damaged and a missing file
    r = runner.invoke(main, ["batch", "verify", str(dst), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert f"{N_GOOD} files checked, {N_GOOD} intact" in r.output
    blob = bytearray((dst / "dicom" / "sag.bmz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (dst / "dicom" / "sag.bmz").write_bytes(bytes(blob))
    (dst / "dicom" / "structural.bmz").unlink()
    r = runner.invoke(main, ["batch", "verify", str(dst), "--scheduler", addr, "--quiet"])
    assert r.exit_code == 3, r.output
    assert "dicom/sag.bmz: damaged:" in r.output
    assert "dicom/structural.bmz: missing:" in r.output

    r = runner.invoke(main, ["batch", "encode", str(tmp_path / "nowhere"), "-o", str(dst)])
    assert r.exit_code == 2 and "no such folder" in r.output and len(r.output.splitlines()) == 1
    r = runner.invoke(main, ["batch", "encode", src, "-o", str(dst), "--lossless", "-q", "3"])
    assert r.exit_code == 2 and "--base-quality" in r.output and len(r.output.splitlines()) == 1


def test_lossless_task_and_its_manifest_entry(src, tmp_path):
    """--lossless / --max-error through the task a worker runs (here in-process: the bounded
    coder's first use in a process is slow, and the cluster part is the same as above)."""
    job = batch.discover_encode(str(src / "nifti" / "sub"))[0][0]
    r = batch.encode_task(job, str(tmp_path), None, MODEL, True, None, 0, "auto")
    assert r["status"] == "ok", r["error"]
    assert r["bound"] == 0 and r["max_error"] == 0 and r["psnr"] == "inf"
    orig = np.asarray(__import__("nibabel").load(job.src).dataobj.get_unscaled())
    back = api.decompress((tmp_path / job.output).read_bytes())
    assert np.array_equal(np.moveaxis(orig, 2, 0), back)
    sha = r["weights_sha256"]
    assert batch._still_valid(r, job, None, MODEL, sha, True, 0, "auto")
    assert not batch._still_valid(r, job, None, MODEL, sha, True, 2, "auto")  # another bound
    assert not batch._still_valid(r, job, None, MODEL, sha, True, 0, 0)  # another base layer
    assert not batch._still_valid(r, job, QUALITY, MODEL, sha, True)  # lossy
    # the same task with an input that cannot be encoded: an error entry, no output
    bad = batch.Job("nifti", str(src / "nifti" / "broken.nii.gz"), "broken.nii.gz", "broken.bmz")
    r = batch.encode_task(bad, str(tmp_path), None, MODEL, True, None, 0, "auto")
    assert r["status"] == "error" and "not a valid NIfTI" in r["error"]
    assert not (tmp_path / "broken.bmz").exists()


def test_manifest_reader_ignores_a_torn_last_line(tmp_path):
    m = batch.Manifest(tmp_path)
    m.record({"input": "a.nii.gz", "series": None, "output": "a.bmz", "status": "ok"})
    m.close()
    with open(tmp_path / batch.MANIFEST, "a") as f:
        f.write('{"input": "b.nii.gz", "status": "o')  # a crash in the middle of a line
    m = batch.Manifest(tmp_path)
    assert list(m.entries) == [("a.nii.gz", "")]
    m.record({"input": "c.nii.gz", "series": None, "output": "c.bmz", "status": "ok"})
    m.compact()
    lines = (tmp_path / batch.MANIFEST).read_text().splitlines()
    assert [json.loads(x)["input"] for x in lines] == ["a.nii.gz", "c.nii.gz"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    (tmp_path / "a").mkdir()
    names = [".x.bmz.k2j_9q.part", ".x.bmz.zz1.part", ".y.bmz.abc.part", "x.bmz", ".x.bmz",
             ".notes.part"]
    for n in names:
        (tmp_path / "a" / n).write_bytes(b"")
    assert batch._remove_part_files(str(tmp_path), ["a/x.bmz", "b/z.bmz"]) == 2
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(names[2:])


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    from bmz.errors import OutputError

    with batch._locked(str(tmp_path)):
        with pytest.raises(OutputError, match="another bmz batch run"):
            with batch._locked(str(tmp_path)):
                pass
