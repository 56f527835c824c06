"""``bodypart scan``: an archive into a Parquet table, and a resume after a kill that loses nothing
and counts nothing twice (real corpus files, the shipped package, reader processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from operators.outputs import scan_table
from operators.outputs.scan_table import read_table
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # classifies the corpus two times over

FILES = sorted(["dx_pelvis_ddh_1.dcm", "dx_pelvis_ddh_10.dcm", "dx_pelvis_ddh_107.dcm", "dx_pelvis_ddh_115.dcm",
                "dx_pelvis_ddh_116.dcm", "dx_pelvis_ddh_12.dcm", "wg04_RG3_J2KR.dcm", "dx_chest_pa_j2k.dcm"])


@pytest.fixture
def archive(corpus, tmp_path):
    folder = tmp_path / "archive"
    for i, name in enumerate(FILES):
        sub = folder / f"site{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / name, sub / name)
    (folder / "site0" / "notes.txt").write_text("not DICOM")
    return folder


def _scan(archive, out, **env):
    return subprocess.run([sys.executable, "-m", "app.cli", "scan", str(archive), "-o", str(out), "--workers", "1",
                           "--batch-size", "2"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900)


def test_a_scan_writes_one_row_per_input_with_the_results_fields(archive, tmp_path):
    out = tmp_path / "out"
    proc = _scan(archive, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_table(out).to_pylist()
    assert sorted(r["source"] for r in rows) == sorted([f"site{i % 3}/{n}" for i, n in enumerate(FILES)] + ["site0/notes.txt"])
    by = {r["source"]: r for r in rows}
    assert by["site0/notes.txt"]["status"] == "failed" and "not a DICOM file" in by["site0/notes.txt"]["reason"]
    chest = by[f"site{FILES.index('dx_chest_pa_j2k.dcm') % 3}/dx_chest_pa_j2k.dcm"]
    assert chest["status"] == "classified" and chest["body_part_examined"] == "CHEST"
    assert json.loads(chest["labels"]) == ["Chest"] and json.loads(chest["record"])["labels"] == ["Chest"]
    stat = os.stat(archive / chest["source"])
    assert (chest["size"], chest["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    summary = json.loads((out / "scan.json").read_text())
    assert summary["complete"] is True and sum(summary["this_scan"].values()) == len(FILES) + 1
    assert not (out / "sr").exists() and not (out / "dicom").exists()  # DICOM outputs are off for scans
    assert not (out / ".listing").exists()  # what the scan listed goes once it completes
    changed = archive / "site0" / "notes.txt"  # a file changed since the scan is read again, alone
    changed.write_text("not DICOM, longer now")
    assert _scan(archive, out).returncode == 0
    assert json.loads((out / "scan.json").read_text())["this_scan"] == {"failed": 1}
    notes = [r for r in read_table(out).to_pylist() if r["source"] == "site0/notes.txt"]
    assert sorted(r["size"] for r in notes) == sorted([len("not DICOM"), len("not DICOM, longer now")])
    again = _scan(archive, out)  # nothing left to do: nothing added
    assert again.returncode == 0 and read_table(out).num_rows == len(rows) + 1
    assert json.loads((out / "scan.json").read_text())["this_scan"] == {}


def test_a_killed_scan_resumes_without_loss_or_duplicates(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # parts of two rows, so that a kill lands between parts
    proc = subprocess.Popen([sys.executable, "-c", "import operators.outputs.scan_table as t, sys; t.ROWS_PER_PART = 2; "
                             "from app.cli import main; sys.exit(main(sys.argv[1:]))", "scan", str(archive), "-o", str(out),
                             "--workers", "1", "--batch-size", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(list((out / "results").glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_table(out).to_pylist()
    assert 0 < len(first) < len(FILES) + 1, "the kill should land half way"
    assert not (out / "scan.json").exists()  # the killed scan never said it completed
    proc = _scan(archive, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_table(out).to_pylist()
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == len(FILES) + 1  # every input once
    assert {r["source"]: r["record"] for r in rows if r["source"] in {f["source"] for f in first}} == {
        f["source"]: f["record"] for f in first}  # what was recorded stays as it was
    assert sum(json.loads((out / "scan.json").read_text())["this_scan"].values()) == len(FILES) + 1 - len(first)
    assert scan_table.ROWS_PER_PART == 512  # the kill's setting stayed in the killed process


def test_the_archive_report_shows_the_disagreements_and_renders_in_a_browser(corpus, tmp_path):
    """Two chests, one stated HAND: the report's confusion matrix, the ranked disagreement with its
    thumbnail, and a page Chromium renders with every picture loaded."""
    import pydicom

    from tests.conftest import require_tool

    folder = tmp_path / "archive"
    folder.mkdir()
    for name, stated in (("dx_chest_pa_j2k.dcm", "HAND"), ("dx_chest_raw_j2k.dcm", None)):
        ds = pydicom.dcmread(corpus / name)
        if stated:
            ds.BodyPartExamined = stated
        elif "BodyPartExamined" in ds:
            del ds.BodyPartExamined
        ds.save_as(folder / name)
    out = tmp_path / "out"
    assert _scan(folder, out).returncode == 0
    page = (out / "report.html").read_text()
    assert "2 inputs; 2 classified; 1 disagree with the Body Part Examined they state; 1 state none" in page
    assert "<td>dx_chest_pa_j2k.dcm</td><td>HAND</td><td>CHEST</td>" in page
    assert page.count("data:image/png;base64,") == 3  # status, confusion, one thumbnail
    assert {p.name for p in (out / "report").iterdir()} == {"status.png", "confusion.png"}
    chromium = require_tool("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        tab = browser.new_page()
        errors = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto((out / "report.html").as_uri())
        broken = tab.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth == 0).length")
        tab.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert broken == 0 and not errors
