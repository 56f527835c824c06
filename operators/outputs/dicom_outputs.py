"""DICOM outputs of a run: a corrected copy per confidently classified image (``OUT/dicom/``) as
results come, and a TID 1500 SR plus a plain-text SR per study (``OUT/sr/``) when the run ends.

What a PACS keeps once: the outputs' UIDs derive from the source UIDs and the model's checksum
(:mod:`.uids`), an image met twice (the same SOP Instance UID in two files) is reported once, and
an earlier SR of this app found among the inputs is named as the new report's predecessor.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pydicom
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from ..catalogue import AnatomyTerm, Catalogue
from ..input.discovery import file_identity
from ..input.processes import worker_context
from ..input.radiograph import Radiograph
from ..outcome import InputOutcome, ReportReference
from .corrected_tags import SERIES_NUMBER_OFFSET, corrected_dataset, write_corrected
from .output_files import fatal_output_error, write_atomically
from .sr import (SERIES_NUMBER, Algorithm, ReportedImage, ReportIdentity, evidence_header, referenceable,
                 text_report, tid1500_report)
from .uids import derived_uid, model_key, uid_file_name

log = logging.getLogger("bodypart")

#: Studies from which the SRs are built in a process pool (measured on 2 cores: 20 studies take
#: 2.5 s in process and 4.3 s with a pool of 2).
POOL_FROM_STUDIES = 50
#: Which images get a corrected copy: ``confident`` (``needs_review`` false), ``all``, ``none``.
CORRECTED_MODES = ("confident", "all", "none")




@dataclass(frozen=True)
class OutputRecord:
    """Where one classified input's DICOM outputs went (paths relative to OUT, or absolute when
    the folder is outside OUT), or why not.

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


class OutputsStopped(RuntimeError):
    """The output folder failed in the middle of a batch (``__cause__`` says how); ``outcomes``
    are the batch's, those handled before the fault with their records."""

    def __init__(self, outcomes: list[InputOutcome]):
        super().__init__("DICOM outputs stopped")
        self.outcomes = outcomes


@dataclass
class _Study:
    """What one study's SRs are built from, gathered as its images pass."""

    entries: list[tuple[ReportedImage, pydicom.Dataset]]
    series_numbers: set[int]
    earlier: list[ReportReference]


class DicomOutputs:
    """Writes corrected copies and per-study SRs; returns each classified outcome with its :class:`OutputRecord`.

    Parameters
    ----------
    output_dir
        The run's output folder.
    keep_uids
        Keep SOP Instance and Series Instance UIDs in corrected copies (for PACS that overwrite);
        by default copies are new instances of a derived series.
    corrected
        Which images get a corrected copy (:data:`CORRECTED_MODES`): by default only those whose
        result needs no review, so a router acting on the copies never spreads an uncertain one.
    reports
        Write the per-study SRs (they carry every result, confident or not).
    workers
        Processes that build the SRs at :meth:`close` (1: in this process).
    sr_dir, corrected_dir
        Where SRs and corrected copies go (default ``OUT/sr`` and ``OUT/dicom``); separate folders
        let a Workflow Manager export each on its own.
    """

    def __init__(self, output_dir: Path, algorithm: Algorithm, catalogue: Catalogue, keep_uids: bool = False,
                 corrected: str = "confident", reports: bool = True, workers: int = 1, sr_dir: Path | None = None,
                 corrected_dir: Path | None = None):
        if corrected not in CORRECTED_MODES:
            raise ValueError(f"corrected must be one of {', '.join(CORRECTED_MODES)}, not {corrected!r}")
        self.workers = workers
        self.output_dir = Path(output_dir)
        self.sr_dir = Path(sr_dir) if sr_dir else self.output_dir / "sr"
        self.corrected_dir = Path(corrected_dir) if corrected_dir else self.output_dir / "dicom"
        self.algorithm, self.catalogue, self.keep_uids = algorithm, catalogue, keep_uids
        self.model_key = model_key(algorithm.model_sha256, algorithm.stacker)
        self.corrected_mode, self.write_reports = corrected, reports
        #: per study: each image's result and its source header as the SR copies it (copied once
        #: from the header the reader parsed: a source that changes later cannot break the SR)
        self.studies: dict[str, _Study] = {}
        #: (SOP Instance UID, frame) -> the source that first brought it
        self._seen: dict[tuple[str, int | None], str] = {}
        #: the last file's carried header, its SR copy and the reason it has none
        self._last: tuple[pydicom.Dataset | None, pydicom.Dataset | None, str | None] | None = None
        #: studies whose SRs could not be written, with the reason (results.json lists them)
        self.failed_studies: dict[str, str] = {}

    @property
    def write_corrected(self) -> bool:
        return self.corrected_mode != "none"

    def _study(self, uid: str | None) -> _Study:
        return self.studies.setdefault(uid or "", _Study([], set(), []))

    def sr_paths(self, study_uid: str | None) -> dict[str, str]:
        name = uid_file_name(study_uid or "unknown-study")
        return {"sr": self._shown(self.sr_dir / f"{name}_tid1500.dcm"), "sr_text": self._shown(self.sr_dir / f"{name}_text.dcm")}

    def _shown(self, path: Path) -> str:
        """``path`` as results name it: relative to OUT (POSIX), or absolute outside OUT."""
        try:
            return path.relative_to(self.output_dir).as_posix()
        except ValueError:
            return path.as_posix()

    def add(self, items: Sequence[Radiograph | InputOutcome], outcomes: Sequence[InputOutcome]) -> list[InputOutcome]:
        """Handle one batch: ``items`` as the loader gave them, ``outcomes`` aligned with them.

        Returns the outcomes, each classified one with its :class:`OutputRecord`.
        """
        out: list[InputOutcome] = []
        try:
            for item, outcome in zip(items, outcomes):
                if isinstance(item, Radiograph) and outcome.classification is not None:
                    outcome = self._add(item, outcome)
                elif isinstance(item, Radiograph):  # read, but its classification failed: its series stays
                    header = item.header if item.header is not None else pydicom.Dataset()
                    self._keep_number(item.study_instance_uid, _int(header.get("SeriesNumber")))
                elif outcome.earlier_report is not None:
                    self._study(outcome.earlier_report.study_instance_uid).earlier.append(outcome.earlier_report)
                    self._keep_number(outcome.earlier_report.study_instance_uid, outcome.earlier_report.series_number)
                else:  # a series of the study not classified (another modality, a damaged image) keeps its number
                    self._keep_number(outcome.study_instance_uid, outcome.series_number)
                out.append(outcome)
        except Exception as e:
            raise OutputsStopped(out + list(outcomes[len(out):])) from e
        return out

    def _keep_number(self, study_uid: str | None, number: int | None) -> None:
        """Keep the SRs off a Series Number that a series of the study not classified (or an earlier
        SR) uses (only numbers from :data:`SERIES_NUMBER` up can meet them: no entry for the others)."""
        if self.write_reports and study_uid and number is not None and number >= SERIES_NUMBER:
            self._study(study_uid).series_numbers.add(number)

    def _add(self, item: Radiograph, outcome: InputOutcome) -> InputOutcome:
        if not self.write_corrected and not self.write_reports:
            return replace(outcome, outputs=OutputRecord())  # nothing kept per image: a scan's memory stays flat
        c = outcome.classification
        study = self._study(item.study_instance_uid)
        header = item.header if item.header is not None else pydicom.Dataset()
        series_number = _int(header.get("SeriesNumber"))
        if series_number is not None:
            study.series_numbers.add(series_number)
        key = (item.sop_instance_uid, item.frame)
        if item.sop_instance_uid and key in self._seen:
            # a second file with the same image: the PACS holds one, so do the outputs
            why = f"another input has the same SOP Instance UID ({self._seen[key]})"
            return replace(outcome, outputs=OutputRecord(corrected_attempted=self.write_corrected,
                                                        corrected_reason=f"not written: {why}" if self.write_corrected else None,
                                                        sr_reason=f"not in the SR: {why}" if self.write_reports else None))
        if item.sop_instance_uid:
            self._seen[key] = item.source
        record = OutputRecord()
        if self.write_corrected:
            if self.corrected_mode == "confident" and c.needs_review:
                result = {"corrected_reason": "not written: the result needs review (setting corrected: all writes it)"}
            else:
                result = self._corrected(item, c.term)
            record = replace(record, corrected_attempted=True, **result)
            if result.get("corrected") and not self.keep_uids:
                study.series_numbers.add((series_number or 0) + SERIES_NUMBER_OFFSET)
        if self.write_reports:
            image = ReportedImage(
                series_number=series_number, instance_number=_int(header.get("InstanceNumber")),
                sop_class_uid=item.info.sop_class_uid or "", sop_instance_uid=item.sop_instance_uid or "",
                frame=item.frame, labels=c.labels, probabilities=dict(c.probabilities),
                body_part_examined=c.body_part_examined, needs_review=c.needs_review, review_reason=c.review_reason,
            )
            if not referenceable(image):
                record = replace(record, sr_reason="not in the SR: the source's SOP Class or Instance UID is not a valid UID")
            else:
                evidence, reason = self._evidence(item)
                if evidence is None:
                    record = replace(record, sr_reason=reason)
                else:
                    study.entries.append((image, evidence))
                    paths = self.sr_paths(item.study_instance_uid)
                    record = replace(record, sr=paths["sr"], sr_text=paths["sr_text"])
        return replace(outcome, outputs=record)

    def _evidence(self, item: Radiograph) -> tuple[pydicom.Dataset | None, str | None]:
        """The header the SR copies, made once per file from the one the reader parsed: the frames
        of a multi-frame file come one after another and share it."""
        if item.header is not None and self._last is not None and self._last[0] is item.header:
            return self._last[1], self._last[2]
        header, reason = _evidence_or_reason(item)
        self._last = (item.header, header, reason)
        return header, reason

    def _corrected(self, item: Radiograph, term: AnatomyTerm | None) -> dict[str, str | None]:
        """Write the corrected copy; return the record's ``corrected`` path or ``corrected_reason``."""
        if item.frame not in (None, 0):  # one copy per file; frames of one file share its header
            return {"corrected_reason": "the copy of this file is the first frame's"}
        if term is None:
            return {"corrected_reason": "no anatomy term for these labels"}
        path = self.corrected_dir / item.source
        if path.suffix.lower() != ".dcm":
            path = path.with_name(path.name + ".dcm")
        if item.file_identity is not None and file_identity(item.path) != item.file_identity:
            # the copy carries the file's pixels again: they must be the ones classified
            log.warning("%s: corrected copy not written (source changed after reading)", item.source)
            return {"corrected_reason": "not written: the source file changed or vanished after it was read"}
        try:
            ds = corrected_dataset(item.path, term, f"{self.algorithm.model_name} {self.algorithm.model_version}",
                                   self.model_key, keep_uids=self.keep_uids)
            write_corrected(ds, path)
        except Exception as e:  # noqa: BLE001 - one file's copy never stops the run; a full disk does
            fatal = fatal_output_error(e, path)
            if fatal is not None:
                raise fatal from e
            # The message may quote attribute values: keep it out of the log unless debugging.
            log.warning("%s: corrected copy not written (%s)", item.source, type(e).__name__)
            log.debug("%s: %s", item.source, e)
            return {"corrected_reason": f"not written: {e}"}
        return {"corrected": self._shown(path)}

    def identities(self, study_uid: str) -> dict[str, ReportIdentity]:
        """The UIDs, Series Numbers and predecessors of one study's two SRs: the same images and
        model give the same UIDs; Series Numbers from 9901 up that no series of the study uses."""
        study = self.studies[study_uid]
        checksum = self.model_key
        images = sorted(f"{img.sop_instance_uid}/{img.frame}" for img, _ in study.entries)
        taken, out = set(study.series_numbers), {}
        # (earlier versions of this app wrote the TID 1500 report as Comprehensive SR)
        for key, sop_classes in (("sr", {Comprehensive3DSRStorage, ComprehensiveSRStorage}), ("sr_text", {EnhancedSRStorage})):
            series_uid = derived_uid(f"{key}-series", checksum, study_uid)
            # the same model wrote this series before (a study pulled back from the PACS): keep its
            # number, so that the same object is the same object
            same = [e.series_number for e in study.earlier if e.series_instance_uid == series_uid and e.series_number is not None]
            if same:
                number = min(same)
            else:
                number = SERIES_NUMBER
                while number in taken:
                    number += 1
            taken.add(number)
            uid = derived_uid(f"{key}-instance", checksum, study_uid, *images)
            earlier = tuple(e for e in study.earlier if e.sop_class_uid in sop_classes and e.sop_instance_uid != uid)
            out[key] = ReportIdentity(series_uid, uid, number, earlier)
        return out

    def close(self) -> list[Path]:
        """Write the SRs of every study seen, in ``workers`` processes when there are many; return their paths.

        A study's pair takes about 0.1 s here (more with many images); a large run has thousands,
        and they are independent, so they are built in parallel (the readers are done by now) once
        there are enough to repay the pool's start-up (about 2 s: imports in every process).
        """
        workers = self.workers
        jobs = [(self.sr_paths(uid or None), uid, study.entries, self.identities(uid))
                for uid, study in self.studies.items() if study.entries]
        written: list[Path] = []
        step = max(1, len(jobs) // 10)

        def collect(done: int, result: tuple[list[Path], str | None, str | None]) -> None:
            paths, study, error = result
            written.extend(paths)
            if error:
                log.error("study %s: SR not written (%s; details at debug level)", study or "unknown", error)
                self.failed_studies[study] = f"SRs not written: {error}"
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


def write_study_reports(paths: dict[str, str], study: str, entries: list[tuple[ReportedImage, pydicom.Dataset]],
                        identities: dict[str, ReportIdentity], output_dir: Path, algorithm: Algorithm,
                        catalogue: Catalogue) -> tuple[list[Path], str, str | None]:
    """Build and write one study's TID 1500 and text SRs (picklable in and out, for worker processes).

    Returns the paths written, the study, and the error type name when they could not be written
    (the message can quote attribute values: it goes to the debug log only).
    """
    written = []
    try:
        with warnings.catch_warnings():
            # highdicom's person-name warnings quote the name: keep patient data out of logs
            warnings.filterwarnings("ignore", message=".*person name.*")
            entries = sorted(entries, key=lambda e: (e[0].sop_instance_uid, e[0].frame or 0))  # not arrival order
            evidence = _unique_evidence(header for _, header in entries)
            images = [img for img, _ in entries]
            for key, build in (("sr", lambda: tid1500_report(images, evidence, algorithm, catalogue, identities["sr"])),
                               ("sr_text", lambda: text_report(images, evidence, algorithm, identities["sr_text"]))):
                report = build()
                written.append(write_atomically(Path(output_dir) / paths[key], lambda fh: report.save_as(fh, enforce_file_format=True)))
    except Exception as e:  # noqa: BLE001 - one study's SR never stops the others; a full disk does
        fatal = fatal_output_error(e, output_dir)
        if fatal is not None:
            raise fatal from e
        log.debug("study %s: %s", study or "unknown", e)
        return written, study, type(e).__name__
    return written, study, None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
