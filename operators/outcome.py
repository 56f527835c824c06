"""Per-input outcomes: every input file (or frame) ends in exactly one of these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    """What happened to one input."""

    READY = "ready"  # read and decoded; waiting for (or without) a classifier
    CLASSIFIED = "classified"
    SKIPPED = "skipped"  # not a radiograph we classify (CT, SR, localizer, ...)
    FAILED = "failed"  # should have been read but could not (corrupt, undecodable, ...)


@dataclass
class InputOutcome:
    """The record of one input in a run's results.

    ``source`` is the path relative to the input root (POSIX separators) so that results can be
    shared without revealing where the archive lives; ``frame`` is set for multi-frame files.
    """

    source: str
    status: Status
    reason: str | None = None
    frame: int | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        details = data.pop("details")
        data.update(details)
        return data

    def one_line(self) -> str:
        """A log line: the file, the outcome and the reason; no patient data."""
        where = self.source + (f" [frame {self.frame}]" if self.frame is not None else "")
        return f"{where}: {self.status.value}" + (f" ({self.reason})" if self.reason else "")


def short_reason(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line for a result's reason (decoder messages can be pages long)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(error)).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
