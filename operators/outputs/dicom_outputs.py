"""DICOM outputs of a run: a corrected copy per classified image (``OUT/dicom/``) as results come,
and a TID 1500 SR plus a plain-text SR per study (``OUT/sr/``) when the run ends."""

from __future__ import annotations

import logging
import re
import warnings

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import pydicom

from ..catalogue import AnatomyTerm, Catalogue
from .corrected_tags import corrected_dataset, write_corrected
from ..outcome import InputOutcome
from .output_files import fatal_output_error, write_atomically
from ..input.processes import worker_context
from ..input.discovery import file_identity
from ..input.radiograph import Radiograph
from .sr import Algorithm, ReportedImage, evidence_header, referenceable, text_report, tid1500_report

log = logging.getLogger("bodypart")

#: Studies from which the SRs are built in a process pool (measured on 2 cores: 20 studies take
#: 2.5 s in process and 4.3 s with a pool of 2).
POOL_FROM_STUDIES = 50


@dataclass(frozen=True)
class OutputRecord:
    """Where one classified input's DICOM outputs went (paths relative to OUT), or why not.

    ``corrected`` is ``None`` with ``corrected_reason`` when a copy was due but not written;
    ``sr``/``sr_text`` are ``None`` with ``sr_reason`` when the image is left out of its study's SR.
    """

    corrected_attempted: bool = False
    corrected: str | None = None
    corrected_reason: str | None = None
    sr: str | None = None
    sr_text: str | None = None
    sr_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        outputs: dict[str, str | None] = {}
        if self.corrected_attempted:
            outputs["corrected"] = self.corrected
        if self.sr is not None:
            outputs.update(sr=self.sr, sr_text=self.sr_text)
        data: dict[str, Any] = {"outputs": outputs}
        for key in ("corrected_reason", "sr_reason"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


def _safe(uid: str | None) -> str:
    return re.sub(r"[^0-9A-Za-z.]", "_", uid or "unknown-study")


class DicomOutputs:
    """Writes corrected copies and per-study SRs; adds their paths (relative to OUT) to outcomes.

    Parameters
    ----------
    output_dir
        The run's output folder.
    keep_uids
        Keep SOP Instance and Series Instance UIDs in corrected copies (for PACS that overwrite);
        by default copies are new instances of a derived series.
    workers
        Processes that build the SRs at :meth:`close` (1: in this process).
    """

    def __init__(self, output_dir: Path, algorithm: Algorithm, catalogue: Catalogue, keep_uids: bool = False,
                 corrected: bool = True, reports: bool = True, workers: int = 1):
        self.workers = workers
        self.output_dir = Path(output_dir)
        self.algorithm, self.catalogue, self.keep_uids = algorithm, catalogue, keep_uids
        self.write_corrected, self.write_reports = corrected, reports
        self.series_map: dict[str, str] = {}
        #: per study: each image's result and its source header as the SR copies it (read once, when
        #: the image is added: a source that changes or vanishes later cannot break its study's SR)
        self.studies: dict[str, list[tuple[ReportedImage, pydicom.Dataset]]] = {}
        self._last: tuple[pydicom.Dataset | None, pydicom.Dataset | None, str | None] | None = None  # the last file's

    def sr_paths(self, study_uid: str | None) -> dict[str, str]:
        name = _safe(study_uid)
        return {"sr": f"sr/{name}_tid1500.dcm", "sr_text": f"sr/{name}_text.dcm"}

    def add(self, items: Sequence[Radiograph | InputOutcome], outcomes: Sequence[InputOutcome]) -> list[InputOutcome]:
        """Handle one batch: ``items`` as the loader gave them, ``outcomes`` aligned with them.

        Returns the outcomes, each classified one with its :class:`OutputRecord`.
        """
        return [self._add(item, outcome) if isinstance(item, Radiograph) and outcome.classification is not None
                else outcome for item, outcome in zip(items, outcomes)]

    def _add(self, item: Radiograph, outcome: InputOutcome) -> InputOutcome:
        c = outcome.classification
        record = OutputRecord()
        if self.write_corrected:
            record = replace(record, corrected_attempted=True, **self._corrected(item, c.term))
        if self.write_reports:
            image = ReportedImage(
                source=item.source, sop_class_uid=item.info.sop_class_uid or "", sop_instance_uid=item.sop_instance_uid or "",
                frame=item.frame, labels=c.labels, probabilities=dict(c.probabilities),
                body_part_examined=c.body_part_examined, needs_review=c.needs_review, review_reason=c.review_reason,
            )
            if not referenceable(image):
                record = replace(record, sr_reason="not in the SR: the source's SOP Class or Instance UID is not a valid UID")
            else:
                header, reason = self._evidence(item)
                if header is None:
                    record = replace(record, sr_reason=reason)
                else:
                    self.studies.setdefault(item.study_instance_uid or "", []).append((image, header))
                    paths = self.sr_paths(item.study_instance_uid)
                    record = replace(record, sr=paths["sr"], sr_text=paths["sr_text"])
        return replace(outcome, outputs=record)

    def _evidence(self, item: Radiograph) -> tuple[pydicom.Dataset | None, str | None]:
        """The header the SR copies, made once per file from the one the reader parsed: the frames
        of a multi-frame file come one after another and share it."""
        if self._last is not None and self._last[0] is item.header:
            return self._last[1], self._last[2]
        header, reason = _evidence_or_reason(item)
        self._last = (item.header, header, reason)
        return header, reason

    def _corrected(self, item: Radiograph, term: AnatomyTerm | None) -> dict[str, str | None]:
        """Write the corrected copy; return the record's ``corrected`` path or ``corrected_reason``."""
        if item.frame not in (None, 0):
            return {}  # one copy per file; frames of one file share its header
        if term is None:
            return {"corrected_reason": "no anatomy term for these labels"}
        rel = PurePosixPath("dicom") / item.source
        if rel.suffix.lower() != ".dcm":
            rel = rel.with_name(rel.name + ".dcm")
        if item.file_identity is not None and file_identity(item.path) != item.file_identity:
            # the copy carries the file's pixels again: they must be the ones classified
            log.warning("%s: corrected copy not written (source changed after reading)", item.source)
            return {"corrected_reason": "not written: the source file changed or vanished after it was read"}
        try:
            ds = corrected_dataset(item.path, term, f"{self.algorithm.model_name} {self.algorithm.model_version}",
                                   keep_uids=self.keep_uids, series_uid_map=self.series_map)
            write_corrected(ds, self.output_dir / rel)
        except Exception as e:  # noqa: BLE001 - one file's copy never stops the run; a full disk does
            fatal = fatal_output_error(e, self.output_dir / rel)
            if fatal is not None:
                raise fatal from e
            # The message may quote attribute values: keep it out of the log unless debugging.
            log.warning("%s: corrected copy not written (%s)", item.source, type(e).__name__)
            log.debug("%s: %s", item.source, e)
            return {"corrected_reason": f"not written: {e}"}
        return {"corrected": rel.as_posix()}

    def close(self) -> list[Path]:
        """Write the SRs of every study seen, in ``workers`` processes when there are many; return their paths.

        A study's pair takes about 0.1 s here (more with many images); a large run has thousands,
        and they are independent, so they are built in parallel (the readers are done by now) once
        there are enough to repay the pool's start-up (about 2 s: imports in every process).
        """
        workers = self.workers
        jobs = [(self.sr_paths(study or None), study, entries) for study, entries in self.studies.items()]
        written: list[Path] = []
        step = max(1, len(jobs) // 10)

        def collect(done: int, result: tuple[list[Path], str | None, str | None]) -> None:
            paths, study, error = result
            written.extend(paths)
            if error:
                log.error("study %s: SR not written (%s; details at debug level)", study or "unknown", error)
            if len(jobs) >= 20 and (done % step == 0 or done == len(jobs)):
                log.info("structured reports: %d/%d studies", done, len(jobs))

        args = (self.output_dir, self.algorithm, self.catalogue)
        if workers > 1 and len(jobs) >= POOL_FROM_STUDIES:
            with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
                futures = [pool.submit(write_study_reports, *job, *args) for job in jobs]
                for done, future in enumerate(as_completed(futures), 1):
                    collect(done, future.result())
        else:
            for done, job in enumerate(jobs, 1):
                collect(done, write_study_reports(*job, *args))
        return sorted(written)


def write_study_reports(paths: dict[str, str], study: str, entries: list[tuple[ReportedImage, Path]], output_dir: Path,
                        algorithm: Algorithm, catalogue: Catalogue) -> tuple[list[Path], str, str | None]:
    """Build and write one study's TID 1500 and text SRs (picklable in and out, for worker processes).

    Returns the paths written, the study, and the error type name when they could not be written
    (the message can quote attribute values: it goes to the debug log only).
    """
    written = []
    try:
        with warnings.catch_warnings():
            # highdicom's person-name warnings quote the name: keep patient data out of logs
            warnings.filterwarnings("ignore", message=".*person name.*")
            evidence = _unique_evidence(header for _, header in entries)
            images = [img for img, _ in entries]
            for key, build in (("sr", lambda: tid1500_report(images, evidence, algorithm, catalogue)),
                               ("sr_text", lambda: text_report(images, evidence, algorithm))):
                report = build()
                written.append(write_atomically(Path(output_dir) / paths[key], lambda fh: report.save_as(fh, enforce_file_format=True)))
    except Exception as e:  # noqa: BLE001 - one study's SR never stops the others; a full disk does
        fatal = fatal_output_error(e, output_dir)
        if fatal is not None:
            raise fatal from e
        log.debug("study %s: %s", study or "unknown", e)
        return written, study, type(e).__name__
    return written, study, None


def _evidence_or_reason(item: Radiograph) -> tuple[pydicom.Dataset | None, str | None]:
    """The source header an SR copies, or ``None`` and the reason it cannot be copied."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*person name.*")  # the warning quotes the name
            header = evidence_header(item.header if item.header is not None else item.path)
            for _ in header.iterall():  # parse every value now, not in the middle of building a study's SR
                pass
    except Exception as e:  # noqa: BLE001 - a header that cannot be copied costs this image, not its study
        log.warning("%s: left out of its study's SR (%s)", item.source, type(e).__name__)
        return None, f"not in the SR: its header cannot be copied into an SR ({type(e).__name__})"
    return header, None


def _unique_evidence(headers) -> list:
    seen, out = set(), []
    for ds in headers:
        if ds.SOPInstanceUID not in seen:
            seen.add(ds.SOPInstanceUID)
            out.append(ds)
    return out
