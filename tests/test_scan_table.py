"""The scan table's parts: what a resumed scan counts as done (no images, no app)."""

from __future__ import annotations

from operators.outcome import InputOutcome, Status
from operators.outputs import scan_table
from operators.outputs.scan_table import ScanTable, read_table, scan_row


def _rows(source: str, frames: int | None, size: int = 10) -> list[dict]:
    outcomes = [InputOutcome(source, Status.SKIPPED, "not a radiograph", frame=f)
                for f in (range(1, frames + 1) if frames else [None])]
    return [scan_row(o, f"/archive/{source}", size, 1) for o in outcomes]


def test_a_multi_frame_file_split_across_batches_is_read_again_after_a_stop(tmp_path, monkeypatch):
    """Its first frames arrive with a full part; they wait for the rest, and a scan that stops
    before the rest leaves the file out, so that the next scan reads it whole."""
    monkeypatch.setattr(scan_table, "ROWS_PER_PART", 2)
    table = ScanTable(tmp_path, {})
    table.add_rows(_rows("a.dcm", None) + _rows("cine.dcm", 3)[:2])  # a batch ends inside cine.dcm
    assert {k[0] for k in table.done()} == {"a.dcm"}
    table.close(interrupted="stopped")
    assert {k[0] for k in table.done()} == {"a.dcm"}
    assert table.counts == {"skipped": 1}

    again = ScanTable(tmp_path, {})
    again.add_rows(_rows("cine.dcm", 3)[:1])
    again.add_rows(_rows("cine.dcm", 3)[1:] + _rows("b.dcm", None))
    again.add_rows(_rows("cine2.dcm", 2))
    again.close()  # a scan that completed: its last file is whole
    rows = read_table(tmp_path).to_pylist()
    assert sorted((r["source"], r["frame"]) for r in rows) == [
        ("a.dcm", None), ("b.dcm", None), ("cine.dcm", 1), ("cine.dcm", 2), ("cine.dcm", 3), ("cine2.dcm", 1), ("cine2.dcm", 2)]
    assert again.counts == {"skipped": 6}
