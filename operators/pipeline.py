"""One run's data flow in process: batches -> ensemble -> DICOM outputs -> ``results.json``.

    BatchFeed (readers) --batch--> Pipeline.classify --> Pipeline.write_dicom --> Pipeline.record

The Holoscan operators (:mod:`operators.holoscan_operators`) each call one stage of one
:class:`Pipeline`; tools call :meth:`Pipeline.run`, or :meth:`Pipeline.add` per batch and
:meth:`Pipeline.close`; the benchmark calls the stages one by one to time each. No stage raises for a fault of the run: an exception inside a Holoscan
operator makes it drop the batches in flight, so faults are recorded in the shared
:class:`~operators.run_status.RunStatus`, reading stops, the batches already read are written, and
``results.json`` says why the run is not complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from .catalogue import Catalogue
from .input.batching import Batch
from .model.classify import classify_batch
from .model.ensemble import Ensemble
from .outcome import InputOutcome, short_reason
from .outputs.dicom_outputs import DicomOutputs, OutputsStopped
from .outputs.output_files import OutputError, fatal_output_error
from .outputs.report import Progress
from .outputs.results import ResultsSink, ResultsWriter
from .outputs.sr import Algorithm
from .run_status import RunStatus

log = logging.getLogger("bodypart")


class BatchFeed:
    """Batches from the readers until they end or the run stops, then one empty ``last`` batch
    (the writers finish when it arrives). Counts what it emits in ``status``."""

    def __init__(self, batches: Iterator[Batch], status: RunStatus):
        self._batches = batches
        self.status = status
        self.ended = False

    def __iter__(self) -> Iterator[Batch]:
        while (batch := self.next()) is not None:
            yield batch

    def next(self) -> Batch | None:
        """The next batch; ``None`` once the last one was given."""
        if self.ended:
            return None
        batch = None
        if not self.status.stopped:
            try:
                batch = next(self._batches, None)
                if batch is None:
                    self.status.inputs_done = True
            except Exception as e:  # noqa: BLE001 - readers that cannot start, an input folder that vanished
                log.error("reading stopped: %s", short_reason(e))
                self.status.stop(f"reading stopped: {type(e).__name__}: {short_reason(e)}")
        if batch is None:
            if hasattr(self._batches, "close"):
                self._batches.close()  # stops the readers now
            batch, self.ended = Batch(last=True), True
        self.status.batches_emitted += 1
        return batch


class Pipeline:
    """The stages after reading, for one run writing to ``output_dir``.

    Parameters
    ----------
    ensemble
        The loaded model.
    output_dir
        The run's output folder (locked by the caller).
    input_path
        What the run reads, as ``results.json`` names it.
    dicom_outputs
        Write corrected copies and the per-study SRs.
    corrected, keep_uids, sr_dir, corrected_dir
        Which images get corrected copies, whether they keep their UIDs, and where the SRs and
        copies go (see :class:`~operators.outputs.dicom_outputs.DicomOutputs`).
    workers
        Processes that build SRs.
    app_name, app_version
        The application that ran, as ``results.json`` and the SRs name it.
    results
        Where the outcomes are recorded: by default ``results.json`` (:class:`ResultsWriter`);
        an archive scan records them in a Parquet table instead.
    """

    def __init__(self, ensemble: Ensemble, output_dir: Path, input_path: Path, *, dicom_outputs: bool = True,
                 corrected: str = "confident", keep_uids: bool = False, sr_dir: Path | None = None,
                 corrected_dir: Path | None = None, workers: int = 1, app_name: str = "bodypart-xr",
                 app_version: str = "", status: RunStatus | None = None, catalogue: Catalogue | None = None,
                 results: ResultsSink | None = None):
        self.ensemble = ensemble
        self.catalogue = catalogue or Catalogue.default()
        self.status = status or RunStatus()
        self.output_dir = Path(output_dir)
        p = ensemble.package
        algorithm = Algorithm(p.name, p.version, p.checksum, ensemble.stacker_kind, app_version)
        self.dicom = DicomOutputs(self.output_dir, algorithm, self.catalogue, keep_uids=keep_uids,
                                  corrected=corrected if dicom_outputs else "none", reports=dicom_outputs,
                                  workers=max(1, workers), sr_dir=sr_dir, corrected_dir=corrected_dir)
        run_info = {"app": {"name": app_name, "version": app_version}, "input": str(input_path),
                    "model": ensemble.info.to_json()}
        self.results = results if results is not None else ResultsWriter(self.output_dir, run_info)
        self.progress = Progress()
        self._dicom_done = False  # the SRs were written, or the output folder failed
        self._results_path: Path | None = None

    # -- the stages, in order ------------------------------------------------------------------

    def classify(self, batch: Batch) -> list[InputOutcome]:
        """One outcome per item of ``batch``, in order (a failing ensemble fails only this batch)."""
        return classify_batch(self.ensemble, batch, self.catalogue)

    def write_dicom(self, batch: Batch, outcomes: list[InputOutcome]) -> list[InputOutcome]:
        """Corrected copies now, the SRs after the last batch; the outcomes with their output records.

        A run stopped elsewhere (reading, a signal) still gets the outputs of what it classified, so
        that every SR a result names is written; only a fault of the output folder ends them.
        """
        if self._dicom_done:
            return outcomes
        try:
            outcomes = self.dicom.add(batch.items, outcomes)
        except OutputsStopped as e:  # the folder's faults stop the run; results still pass on
            self._dicom_failed(e.__cause__ or e)
            return e.outcomes
        if batch.last:
            self.finish_dicom()
        return outcomes

    def finish_dicom(self) -> None:
        """Write the SRs of every study seen (once; also when the graph ended before the last batch)."""
        if self._dicom_done:
            return
        self._dicom_done = True
        try:
            written = self.dicom.close()
        except Exception as e:  # noqa: BLE001
            self._dicom_failed(e)
            return
        if written:
            log.info("wrote %d structured reports", len(written))

    def record(self, batch: Batch, outcomes: list[InputOutcome]) -> None:
        """Append the outcomes to ``results.jsonl``; write ``results.json`` after the last batch."""
        for o in outcomes:
            self.progress.add(o)
        try:
            self.results.add(outcomes)
            self.status.batches_recorded += 1
        except Exception as e:  # noqa: BLE001 - a full disk: stop, keep what is on disk
            fatal = fatal_output_error(e, self.results.partial)
            self.status.stop(str(fatal) if fatal else f"results not recorded: {type(e).__name__}: {short_reason(e)}")
            log.error("%s; stopping the run", self.status.incomplete_reason)
        if batch.last:
            self.close_results()

    def close_results(self) -> Path | None:
        """Write ``results.json`` (once), saying whether the run was complete; its path, or ``None``."""
        if self.results.closed:
            return self._results_path
        reason = self.status.incomplete_reason
        try:
            path = self.results.close(interrupted=reason, reports_not_written=self.dicom.failed_studies)
        except (OSError, OutputError) as e:
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
            why = getattr(cause, "strerror", None) or cause
            log.error("results.json not written (%s); %s holds every result recorded", why, self.results.partial)
            self.status.stop(f"results.json not written: {why}")  # the exit code must say so
            return None
        self._results_path = path
        if reason:
            log.error("results: %s (%s); the run is NOT complete: %s", path, self.progress.summary(), reason)
        else:
            log.info("results: %s (%s)", path, self.progress.summary())
        return path

    # -- all stages at once ----------------------------------------------------------------------

    def add(self, batch: Batch) -> list[InputOutcome]:
        """Run every stage on one batch; return its outcomes as recorded."""
        outcomes = self.write_dicom(batch, self.classify(batch))
        self.record(batch, outcomes)
        return outcomes

    def close(self, all_inputs_read: bool = True) -> Path | None:
        """End the run: the SRs, then ``results.json``; its path, or ``None`` when it could not be
        written. ``all_inputs_read``: the caller gave every batch (else the run is not complete)."""
        if all_inputs_read:
            self.status.inputs_done = True
        self.finish_dicom()
        return self.close_results()

    def run(self, batches: Iterator[Batch]) -> Path | None:
        """Every batch of ``batches`` (fed through a :class:`BatchFeed`, which stops reading when the
        run stops), then :meth:`close`."""
        feed = batches if isinstance(batches, BatchFeed) else BatchFeed(iter(batches), self.status)
        for batch in feed:
            self.add(batch)
        return self.close(all_inputs_read=False)  # the feed says whether every input was read

    def _dicom_failed(self, e: Exception) -> None:
        self._dicom_done = True  # nothing more is written
        fatal = fatal_output_error(e, self.output_dir)
        reason = str(fatal) if fatal else f"DICOM outputs failed: {type(e).__name__}: {short_reason(e)}"
        log.error("%s; stopping the run", reason)
        self.status.stop(reason)
