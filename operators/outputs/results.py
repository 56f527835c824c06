"""Classification results and the run's ``results.json`` (schema: ``app/results.schema.json``).

Results are appended to ``results.jsonl`` as each batch finishes (flushed), so an interrupted or
crashed run keeps every result it produced; ``results.json`` is written from it at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..outcome import InputOutcome, Status
from .output_files import write_atomically

SCHEMA_VERSION = "1.2"  # 1.1: model.top_fraction; 1.2: model.tta
#: Keys every instance carries, whatever its status: routing engines rely on them.
INSTANCE_KEYS = (
    "source", "frame", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "status", "reason",
    "labels", "probabilities", "thresholds", "needs_review", "review_reason", "body_part_examined",
    "anatomic_region", "stated_body_part_examined", "agrees", "model_name", "model_version",
)


def instance_record(outcome: InputOutcome) -> dict[str, Any]:
    """The JSON record of one input with every stable key present (null where not applicable)."""
    data = outcome.to_json()
    defaults: dict[str, Any] = {"labels": [], "probabilities": {}, "thresholds": {}, "needs_review": False}
    for key in INSTANCE_KEYS:
        data.setdefault(key, defaults.get(key))
    if outcome.status is Status.READY:
        data["needs_review"] = True  # read but never classified
    return data


class ResultsSink(Protocol):
    """Where a run records its outcomes as batches finish (``results.json``, or a scan's table)."""

    partial: Path  # what holds the results recorded so far (named when the disk fails)
    closed: bool

    def add(self, outcomes: Iterable[InputOutcome]) -> None: ...

    def close(self, interrupted: str | None = None, reports_not_written: dict[str, str] | None = None) -> Path: ...


class ResultsWriter:
    """Append results as they come; write the final document on ``close``.

    Parameters
    ----------
    output_dir
        Created if missing. Holds ``results.jsonl`` (during the run) and ``results.json``.
    run
        Run-level fields (input, model, ...) for the final document.
    """

    def __init__(self, output_dir: Path, run: dict[str, Any]):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run = dict(run)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.partial = self.output_dir / "results.jsonl"
        self._fh = open(self.partial, "wb", buffering=0)  # unbuffered: a failed write can be undone
        self.counts: dict[str, int] = {}
        self.needs_review = 0
        self.closed = False

    def add(self, outcomes: Iterable[InputOutcome]) -> None:
        """Append one batch's records; on a write error (a full disk) the file keeps only whole lines."""
        records = [instance_record(outcome) for outcome in outcomes]
        data = "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")
        start = self._fh.tell()
        try:
            view = memoryview(data)
            while view:
                view = view[self._fh.write(view):]
            os.fsync(self._fh.fileno())
        except OSError:
            os.ftruncate(self._fh.fileno(), start)  # no half line for a reader of the JSONL
            self._fh.seek(start)
            raise
        for record in records:
            self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
            self.needs_review += bool(record["status"] == "classified" and record["needs_review"])

    def close(self, interrupted: str | None = None, reports_not_written: dict[str, str] | None = None) -> Path:
        """Write ``results.json`` (streamed from the JSONL, so memory stays flat, and atomically).

        ``reports_not_written``: study UID -> why its SRs are missing (known only at the end).

        Raises
        ------
        OutputError
            The output folder is full, read-only or failing (``results.jsonl`` is kept).
        """
        if self.closed:
            return self.output_dir / "results.json"
        self._fh.close()
        self.closed = True
        final = self.output_dir / "results.json"
        head = {
            "schema_version": SCHEMA_VERSION,
            **self.run,
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": interrupted is None,
            "interrupted_reason": interrupted,
            "summary": {**self.counts, "needs_review": self.needs_review},
            "reports_not_written": [{"study_instance_uid": study, "reason": reason}
                                    for study, reason in sorted((reports_not_written or {}).items())],
        }

        def write(out) -> None:
            with open(self.partial, encoding="utf-8") as src:
                text = json.dumps(head, indent=2)
                out.write((text[:-2] + ',\n  "instances": [').encode("utf-8"))
                first = True
                for line in src:
                    out.write((("\n    " if first else ",\n    ") + line.strip()).encode("utf-8"))
                    first = False
                out.write(b"\n  ]\n}\n")

        write_atomically(final, write)  # on failure results.jsonl keeps every result recorded
        self.partial.unlink()
        return final
