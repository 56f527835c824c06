"""``bodypart scan --engine ray`` on a local Ray instance with 2 CPUs: the local engine's rows, a
resume after a kill, and files whose Ray worker dies (real corpus files, the shipped package)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from operators.outputs.scan_table import read_table
from tests.conftest import ROOT
from tests.test_scan import FILES, _scan, archive  # noqa: F401 - the same archive fixture

pytestmark = pytest.mark.slow  # starts Ray (about 15 s) and classifies the corpus files


def _scan_ray(archive, out, *extra):
    return subprocess.run([sys.executable, "-m", "app.cli", "scan", str(archive), "-o", str(out), "--engine", "ray",
                           "--workers", "2", "--batch-size", "2", *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, start_new_session=True)


def _comparable(row: dict) -> dict:
    record = json.loads(row["record"])
    probabilities = record.pop("probabilities", None) or {}
    record.pop("member_probabilities", None)
    return {"path": row["path"], "size": row["size"], "mtime_ns": row["mtime_ns"], **record,
            "_probabilities": {k: round(v, 4) for k, v in probabilities.items()}}


@pytest.fixture
def larger_archive(archive, corpus):  # noqa: F811
    """The archive twice over, a name that is not UTF-8 and a broken link (20 inputs): Ray's rows
    come in bursts of a read task's 4 files."""
    shutil.copytree(archive, archive / "copy", ignore=shutil.ignore_patterns("copy*"))
    shutil.copyfile(corpus / FILES[0], os.fsencode(archive) + b"/caf\xe9.dcm")
    (archive / "broken.dcm").symlink_to(archive / "nowhere.dcm")
    return archive


def test_a_killed_ray_scan_resumes_to_the_local_engines_rows(larger_archive, tmp_path):
    """Killed half way and run again, the Ray engine's table holds every input once, with the rows
    the local engine gives (a name that is not UTF-8 and a broken link too); a scan with nothing
    left then does nothing and starts no Ray."""
    archive, inputs = larger_archive, 2 * (len(FILES) + 1) + 2
    out = tmp_path / "out"
    # parts of two rows, so that a kill lands between parts; the whole group is killed (Ray's servers too)
    proc = subprocess.Popen([sys.executable, "-c", "import operators.outputs.scan_table as t, sys; t.ROWS_PER_PART = 2; "
                             "from app.cli import main; sys.exit(main(sys.argv[1:]))", "scan", str(archive), "-o", str(out),
                             "--engine", "ray", "--workers", "2", "--batch-size", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(list((out / "results").glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_table(out).to_pylist()
    assert 0 < len(first) < inputs, "the kill should land half way"
    assert not (out / "scan.json").exists()
    again = _scan_ray(archive, out)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = read_table(out).to_pylist()
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == inputs  # every input once
    assert {r["source"]: r["record"] for r in rows if r["source"] in {f["source"] for f in first}} == {
        f["source"]: f["record"] for f in first}
    assert sum(json.loads((out / "scan.json").read_text())["this_scan"].values()) == inputs - len(first)
    status = {r["source"]: r["status"] for r in rows}
    assert status["broken.dcm"] == "failed" and status["caf\\xe9.dcm"] == "classified"
    summary = json.loads((out / "scan.json").read_text())
    assert summary["complete"] is True and summary["engine"] == "ray" and summary["ray_nodes"] == 1
    assert (out / "report.html").exists() and not (out / ".listing").exists()
    local = tmp_path / "local"
    assert _scan(archive, local).returncode == 0
    by_local = {r["source"]: r for r in read_table(local).to_pylist()}
    assert set(by_local) == set(sources)
    for row in rows:
        ra, rb = _comparable(by_local[row["source"]]), _comparable(row)
        # the same labels, statuses, reasons and tags; probabilities equal to 1e-4 (float sums in
        # another order: the actor classifies with one thread, the local engine with two)
        assert ra == rb, row["source"]
        pa, pb = json.loads(by_local[row["source"]]["probabilities"]), json.loads(row["probabilities"])
        assert (pa is None) == (pb is None) and all(abs(pa[k] - pb[k]) < 1e-4 for k in pa or {})
    again = _scan_ray(archive, out)  # nothing left: nothing for Ray to do, so no Ray is started
    assert again.returncode == 0 and read_table(out).num_rows == inputs
    summary = json.loads((out / "scan.json").read_text())
    assert summary["this_scan"] == {} and summary["complete"] and summary["ray_nodes"] is None
    assert "nothing left to read: Ray not started" in again.stderr


def crash_on_marked_files(batch: dict, **kwargs) -> dict:
    """The read task, except that a file named ``*crash*`` kills its worker as a crashing decoder does."""
    from app.scan_ray import read_files_task

    if any(os.path.basename(os.fsdecode(p)).startswith("crash") for p in batch["path"]):
        os.kill(os.getpid(), signal.SIGSEGV)
    return read_files_task(batch, **kwargs)


def test_a_file_that_kills_its_ray_worker_fails_alone(corpus, tmp_path):
    """Its block's other files are read again one per task and classified; it is recorded failed."""
    from app import scan_ray
    from operators.input.batching import DecodeOptions
    from operators.model.model_package import load_package
    from operators.outputs.scan_table import ScanTable, write_listing
    from app.app import DEFAULT_MODEL

    folder = tmp_path / "archive"
    folder.mkdir()
    names = FILES[:5] + ["crash.dcm"]
    for name in names:
        shutil.copyfile(corpus / (FILES[0] if name == "crash.dcm" else name), folder / name)
    out = tmp_path / "out"
    package = load_package(DEFAULT_MODEL)
    table = ScanTable(out, {"archive": str(folder)})
    listing, todo = write_listing(folder, out, set())
    assert todo == len(names)
    rt = scan_ray.start_ray(None, 2)
    try:
        failed = scan_ray.run(rt, listing, table, DEFAULT_MODEL, folder, package.preprocessing, DecodeOptions(),
                              batch_size=4, device="cpu", actors=1, on_rows=lambda rows: None, read=crash_on_marked_files)
    finally:
        rt.shutdown()
    table.close()
    rows = {r["source"]: r for r in read_table(out).to_pylist()}
    assert failed == 1 and set(rows) == set(names) and len(read_table(out)) == len(names)
    assert rows["crash.dcm"]["status"] == "failed" and "its Ray worker died reading it, 3 times" in rows["crash.dcm"]["reason"]
    assert all(rows[n]["status"] == "classified" for n in names if n != "crash.dcm")


def test_dicom_outputs_and_ray_options_are_refused_where_they_cannot_work(archive, tmp_path):  # noqa: F811
    proc = _scan_ray(archive, tmp_path / "a", "--dicom-outputs")
    assert proc.returncode == 2 and "--dicom-outputs needs the local engine" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "app.cli", "scan", str(archive), "-o", str(tmp_path / "b"),
                           "--ray-address", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "need --engine ray" in proc.stderr
    assert not (tmp_path / "a" / "results").exists() and not (tmp_path / "b").exists()


def test_a_ray_that_cannot_start_ends_the_scan_before_any_file_is_read(archive, tmp_path, monkeypatch):  # noqa: F811
    """A rescan lists before Ray starts (a finished archive needs no Ray); when Ray then cannot
    start, the error is the scan's, the listing is gone and the earlier rows stay as they were."""
    from app import scan_ray
    from app.scan import scan
    from operators.outcome import InputOutcome, Status
    from operators.outputs.scan_table import ScanTable, scan_row

    out = tmp_path / "out"
    earlier = ScanTable(out, {"engine": "ray"})  # as if an earlier scan had recorded one file
    earlier.add_rows([scan_row(InputOutcome("gone.dcm", Status.FAILED, "empty file (0 bytes)"), str(archive / "gone.dcm"), 0, 1)])
    earlier.flush()

    def refuse(address, cpus):
        raise scan_ray.RayEngineError("cannot join Ray at 10.0.0.1:6379: no cluster there")

    monkeypatch.setattr(scan_ray, "start_ray", refuse)
    with pytest.raises(scan_ray.RayEngineError, match="cannot join Ray"):
        scan(archive, out, engine="ray", ray_address="10.0.0.1:6379", progress=False)
    assert not (out / ".listing").exists() and not (out / "scan.json").exists()
    assert [r["source"] for r in read_table(out).to_pylist()] == ["gone.dcm"]
