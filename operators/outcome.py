"""Per-input outcomes: every input file (or frame) ends in exactly one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typed links only: this module stays free of the model and writer imports
    from .model.classification import Classification
    from .outputs.dicom_outputs import OutputRecord


class Status(str, Enum):
    """What happened to one input."""

    READY = "ready"  # read and decoded; waiting for (or without) a classifier
    CLASSIFIED = "classified"
    SKIPPED = "skipped"  # not a radiograph we classify (CT, SR, localizer, ...)
    FAILED = "failed"  # should have been read but could not (corrupt, undecodable, ...)


@dataclass(frozen=True)
class ReportReference:
    """An SR this app wrote in an earlier run, met among the inputs (a study pulled back from the
    PACS holds it): a new report of the study names it in its Predecessor Documents Sequence."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    series_number: int | None = None


@dataclass
class InputOutcome:
    """The record of one input in a run's results.

    ``source`` is the path relative to the input root (POSIX separators) so that results can be
    shared without revealing where the archive lives; ``frame`` is set for multi-frame files.
    ``details`` holds what the reader found (:class:`~operators.input.radiograph.RadiographInfo`);
    a classified input carries its :class:`~operators.model.classification.Classification`, and
    the DICOM writers add their :class:`~operators.outputs.dicom_outputs.OutputRecord` (with
    :func:`dataclasses.replace`: outcomes are not changed in place).
    """

    source: str
    status: Status
    reason: str | None = None
    frame: int | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    classification: Classification | None = None
    outputs: OutputRecord | None = None
    earlier_report: ReportReference | None = None  # not in results.json: the reason says it
    # the Series Number of an input not classified (a CT series, a damaged image): our SRs' series
    # must not take it (not in results.json)
    series_number: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The flat JSON record of ``results.json`` (``app/results.schema.json``)."""
        data = {
            "source": self.source, "status": self.status.value, "reason": self.reason, "frame": self.frame,
            "study_instance_uid": self.study_instance_uid, "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid, **self.details,
        }
        if self.classification is not None:
            data.update(self.classification.to_json())
        if self.outputs is not None:
            data.update(self.outputs.to_json())
        return data

    def one_line(self) -> str:
        """A log line: the file, the outcome and the reason; no patient data."""
        where = self.source + (f" [frame {self.frame}]" if self.frame is not None else "")
        return f"{where}: {self.status.value}" + (f" ({self.reason})" if self.reason else "")


def short_reason(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line for a result's reason (decoder messages can be pages long)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(error)).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
