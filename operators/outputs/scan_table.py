"""An archive scan's results: a Parquet table written as the scan goes, that a new scan resumes from.

    OUT/results/part-000001.parquet, part-000002.parquet, ...   one row per input
    OUT/scan.json                                                 written when the scan ends
    OUT/.listing/listing-*.parquet                                what this scan reads (removed at the end)

Rows are flushed in parts of :data:`ROWS_PER_PART` (or every :data:`SECONDS_PER_PART`), each
written to a hidden name and renamed, so a part is whole or absent: a scan killed at any moment
keeps every part it finished, and the next scan skips exactly the files in them (keyed by path
relative to the archive, size and modification time: a file changed since is read again). Rows
have the fields of ``results.json``'s instances (``app/results.schema.json``; lists and objects as
JSON text), plus ``path``, ``size`` and ``mtime_ns``; ``record`` holds the whole JSON record.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..input.discovery import display_path, iter_input_files, relative_source
from ..outcome import InputOutcome
from .output_files import write_atomically
from .results import instance_record

#: Rows per Parquet part, and the longest a row waits for its part to be written.
ROWS_PER_PART = 512
SECONDS_PER_PART = 30.0
#: Listing rows per Parquet file of a listing (a scan holds one chunk at a time).
LISTING_CHUNK = 50_000
#: Where a scan lists what it is to read.
LISTING = ".listing"
#: Scalar fields of an instance record kept as their own columns (the rest: ``record``).
SCALARS = ("source", "status", "reason", "frame", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
           "modality", "manufacturer", "manufacturer_model_name", "transfer_syntax", "decoder", "photometric_interpretation",
           "stated_body_part_examined", "view_position", "laterality", "body_part_examined", "agrees", "needs_review",
           "review_reason", "model_name", "model_version", "corrected_reason", "sr_reason")
JSON_FIELDS = ("labels", "probabilities", "outputs", "anatomic_region")


def _schema():
    import pyarrow as pa

    types = {"frame": pa.int64(), "agrees": pa.bool_(), "needs_review": pa.bool_()}
    fields = [pa.field("path", pa.string()), pa.field("size", pa.int64()), pa.field("mtime_ns", pa.int64())]
    fields += [pa.field(k, types.get(k, pa.string())) for k in SCALARS]
    fields += [pa.field(k, pa.string()) for k in JSON_FIELDS] + [pa.field("record", pa.string())]
    return pa.schema(fields)


class ScanTable:
    """The Parquet table of one archive scan in ``output_dir`` (a :class:`~.results.ResultsSink`).

    Call :meth:`expect` for each file before it is read (its identity at listing time), then the
    pipeline's :meth:`add` for its outcomes; :meth:`done` is what an earlier scan finished.
    """

    def __init__(self, output_dir: Path, run_info: dict):
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / "results"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial = self.folder
        self.run_info = dict(run_info)
        self.closed = False
        self.counts: dict[str, int] = {}
        self._started, self.started = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._rows: list[dict] = []
        self._since = time.monotonic()
        self._pending: dict[str, tuple[str, int, int]] = {}  # source -> (path, size, mtime_ns) in flight
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self.folder.glob("part-*.parquet")), default=0)

    def done(self) -> set[tuple[str, int, int]]:
        """(source, size, mtime_ns) of every input an earlier scan into this folder recorded."""
        import pyarrow.parquet as pq

        keys: set[tuple[str, int, int]] = set()
        for part in sorted(self.folder.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["source", "size", "mtime_ns"])
            keys.update(zip(*(table.column(c).to_pylist() for c in ("source", "size", "mtime_ns"))))
        return keys

    def expect(self, source: str, path: Path, size: int, mtime_ns: int) -> None:
        """Remember the identity of a file about to be read, for the rows its outcomes become."""
        self._pending[source] = (str(path), size, mtime_ns)

    def add(self, outcomes: Iterable[InputOutcome]) -> None:
        self.add_rows([scan_row(o, *self._pending.get(o.source, (None, None, None))) for o in outcomes])

    def add_rows(self, rows: Iterable[dict]) -> None:
        """Rows made by :func:`scan_row` elsewhere (a Ray engine's actors)."""
        for row in rows:
            self._rows.append(row)
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        if len(self._rows) >= ROWS_PER_PART or time.monotonic() - self._since > SECONDS_PER_PART:
            self.flush()

    def flush(self, whole_files_only: bool = True) -> Path | None:
        """Write the rows waiting as one part (whole or not at all); its path.

        The frames of a multi-frame file can arrive in two batches, and a file with a row in a
        part counts as done (:meth:`done`): the rows of the last file, when it has frames, wait
        for the next part, unless ``whole_files_only`` is false (the file is known to be whole).
        Rows come in the files' order, a file's frames one after another (both engines keep it).
        """
        rows, held = self._rows, []
        if whole_files_only and rows and rows[-1]["frame"] is not None:
            start = len(rows)
            while start > 0 and rows[start - 1]["source"] == rows[-1]["source"]:
                start -= 1
            rows, held = rows[:start], rows[start:]
        if not rows:
            return None
        import pyarrow.parquet as pq

        table = rows_table(rows)
        path = self.folder / f"part-{self._next:06d}.parquet"
        write_atomically(path, lambda fh: pq.write_table(table, fh))
        for row in rows:  # recorded: their identities are no longer in flight
            self._pending.pop(row["source"], None)
        self._next += 1
        self._rows, self._since = held, time.monotonic()
        return path

    def close(self, interrupted: str | None = None, reports_not_written: dict[str, str] | None = None) -> Path:
        """Write the last part and ``scan.json`` (what this scan did, whether it completed)."""
        if self.closed:
            return self.output_dir / "scan.json"
        # a scan that completed read its last file whole; one that stopped may have read part of
        # its frames: those rows are left out, and the next scan reads that file again
        self.flush(whole_files_only=interrupted is not None)
        if self._rows:
            self.counts = {k: v - sum(r["status"] == k for r in self._rows) for k, v in self.counts.items()}
            self.counts = {k: v for k, v in self.counts.items() if v}
            self._rows = []
        self.closed = True
        seconds = time.monotonic() - self._started
        done = sum(self.counts.values())
        summary = {**self.run_info, "complete": interrupted is None, "interrupted_reason": interrupted,
                   "this_scan": self.counts, "parts": len(list(self.folder.glob("part-*.parquet"))),
                   "started": self.started, "seconds": round(seconds, 1),
                   "inputs_per_s": round(done / seconds, 2) if done and seconds > 0 else None,
                   "reports_not_written": [{"study_instance_uid": s, "reason": r} for s, r in sorted((reports_not_written or {}).items())],
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = self.output_dir / "scan.json"
        write_atomically(path, lambda fh: fh.write(json.dumps(summary, indent=2).encode()))
        return path


def scan_row(outcome: InputOutcome, path: str | None, size: int | None, mtime_ns: int | None) -> dict:
    """The table row of one outcome of the file at ``path`` (its size and mtime when listed)."""
    record = instance_record(outcome)
    row = {"path": None if path is None else display_path(path), "size": size, "mtime_ns": mtime_ns, "record": json.dumps(record)}
    row.update({k: record.get(k) for k in SCALARS})
    row.update({k: json.dumps(record.get(k)) for k in JSON_FIELDS})
    return row


def rows_table(rows: list[dict]):
    """Rows as a pyarrow Table with the scan table's schema."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=_schema())


def read_table(output_dir: Path):
    """Every row of a scan as one pyarrow Table (all parts)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(output_dir) / "results")


def file_key(path: Path, source: str) -> tuple[str, int, int] | None:
    """(source, size, mtime_ns) of ``path`` now (of the link itself when its target cannot be
    stat'ed: a broken link is done once recorded), or ``None`` when it cannot be stat'ed at all."""
    for stat in (os.stat, os.lstat):
        try:
            st = stat(path)
            return source, st.st_size, st.st_mtime_ns
        except (OSError, ValueError):
            continue
    return None


def write_listing(archive: Path, output_dir: Path, done: set, follow_links: bool = False) -> tuple[Path, int]:
    """The files under ``archive`` that ``done`` (:meth:`ScanTable.done`) lacks, listed as Parquet
    (columns path as bytes, source, size, mtime_ns; -1 for a file that cannot be stat'ed: its
    reader says why) under ``OUT/.listing``; returns (that folder, how many).

    One walk and one stat per file, at most :data:`LISTING_CHUNK` rows held: the progress bar gets
    its total, the Ray engine a dataset, and each file is keyed as it was when listed.
    """
    import pyarrow.parquet as pq

    folder = Path(output_dir) / LISTING
    if folder.exists():  # an earlier scan's: the table says what is done
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows: dict[str, list] = {"path": [], "source": [], "size": [], "mtime_ns": []}
    count, chunks = 0, 0
    for path in iter_input_files(archive, follow_links):
        source = relative_source(path, archive)
        key = file_key(path, source)
        if key in done:
            continue
        for column, value in zip(rows, (os.fsencode(path), source, *(key[1:] if key else (-1, -1)))):
            rows[column].append(value)
        count += 1
        if len(rows["path"]) >= LISTING_CHUNK:
            pq.write_table(_listing_table(rows), folder / f"listing-{chunks:06d}.parquet")
            chunks += 1
            rows = {k: [] for k in rows}
    if rows["path"]:
        pq.write_table(_listing_table(rows), folder / f"listing-{chunks:06d}.parquet")
    return folder, count


def _listing_table(rows: dict[str, list]):
    import pyarrow as pa

    schema = pa.schema([("path", pa.binary()), ("source", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])
    return pa.table(rows, schema=schema)


def read_listing(folder: Path) -> Iterator[dict]:
    """The rows of a listing written by :func:`write_listing`, in listing order."""
    import pyarrow.parquet as pq

    for chunk in sorted(Path(folder).glob("listing-*.parquet")):
        yield from pq.read_table(chunk).to_pylist()
