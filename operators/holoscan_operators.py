"""Thin MONAI Deploy (Holoscan) operators over the project's pure functions.

Each class only moves data between ports; the logic lives in the modules it calls, so it is
tested without Holoscan. Data flow::

    RadiographLoaderOperator --batch--> BodyPartClassifierOperator --results-->
        DicomOutputsOperator (corrected copies, SRs) --results--> ResultsWriterOperator

No ``compute`` raises: an exception in an operator makes Holoscan drop the batches in flight,
so a fault is recorded in the shared :class:`~operators.run_status.RunStatus` instead, the loader
stops reading, the batches already emitted are written, and ``results.json`` says why the run
is not complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .batching import Batch, DecodeOptions, iter_batches
from .catalogue import Catalogue
from .classify import classify_batch
from .dicom_outputs import DicomOutputs
from .ensemble import Ensemble
from .outcome import InputOutcome, short_reason
from .output_files import OutputError, fatal_output_error
from .preprocessing import Preprocessing
from .report import Progress
from .results import ModelInfo, ResultsWriter
from .run_status import RunStatus

log = logging.getLogger("bodypart")

#: Name of the BooleanCondition that keeps the loader ticking while inputs remain.
MORE_INPUT = "more_input"


class RadiographLoaderOperator(Operator):
    """Streams the input folder as batches of preprocessed radiographs (one batch per tick).

    Pass a ``BooleanCondition`` named ``more_input``: the operator disables it after the last batch.
    """

    def __init__(self, fragment: Fragment, *args, input_path: Path, run: RunStatus, preprocessing: Preprocessing,
                 batch_size: int = 16, workers: int = 0, decode: DecodeOptions = DecodeOptions(), **kwargs):
        self.input_path = Path(input_path)
        self.run = run
        self._ended = False
        self._batches = iter_batches(self.input_path, preprocessing, batch_size, workers, decode)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("batch")

    def compute(self, op_input, op_output, context) -> None:
        if self._ended:
            self.conditions[MORE_INPUT].disable_tick()
            return
        batch = None
        if not self.run.stopped:
            try:
                batch = next(self._batches, None)
                if batch is None:
                    self.run.inputs_done = True
            except Exception as e:  # noqa: BLE001 - readers that cannot start, an input folder that vanished
                log.error("reading stopped: %s", short_reason(e))
                self.run.stop(f"reading stopped: {type(e).__name__}: {short_reason(e)}")
        if batch is None:
            if hasattr(self._batches, "close"):
                self._batches.close()  # stops the readers now
            batch, self._ended = Batch(last=True), True  # the writers finish when this arrives
        self.run.batches_emitted += 1
        op_output.emit(batch, "batch")


class BodyPartClassifierOperator(Operator):
    """Runs the ensemble on each batch; emits one outcome per input (classified, skipped, failed)."""

    def __init__(self, fragment: Fragment, *args, ensemble: Ensemble, catalogue: Catalogue, **kwargs):
        self.ensemble = ensemble
        self.catalogue = catalogue
        self.model = ModelInfo.of(ensemble)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("batch")
        spec.output("results")

    def compute(self, op_input, op_output, context) -> None:
        batch = op_input.receive("batch")
        results = classify_batch(self.ensemble, batch, self.model, self.catalogue)
        op_output.emit((batch, results), "results")


class DicomOutputsOperator(Operator):
    """Writes corrected DICOM copies as results arrive and the per-study SRs at stop; passes the
    results on with their output paths. A fault of the output folder stops the run."""

    def __init__(self, fragment: Fragment, *args, outputs: DicomOutputs, run: RunStatus, **kwargs):
        self.outputs = outputs
        self.run = run
        self._finished = False
        self._failed = False  # the output folder failed: nothing more is written
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def compute(self, op_input, op_output, context) -> None:
        batch, results = op_input.receive("results")
        # A run stopped elsewhere (reading, a signal) still gets the outputs of what it classified,
        # so that every SR a result names is written; only a fault of the outputs ends them.
        if not self._failed:
            try:
                results = self.outputs.add(batch.items, results)
                if batch.last:
                    self._finish()
            except Exception as e:  # noqa: BLE001 - the folder's faults stop the run; results still pass on
                self._stop(e)
        op_output.emit((batch, results), "results")

    def stop(self) -> None:
        if not self._finished and not self._failed:  # the graph ended before the last batch
            try:
                self._finish()
            except Exception as e:  # noqa: BLE001
                self._stop(e)

    def _finish(self) -> None:
        self._finished = True
        written = self.outputs.close()
        log.info("wrote %d structured reports", len(written))

    def _stop(self, e: Exception) -> None:
        self._failed = True
        fatal = fatal_output_error(e, self.outputs.output_dir)
        reason = str(fatal) if fatal else f"DICOM outputs failed: {type(e).__name__}: {short_reason(e)}"
        log.error("%s; stopping the run", reason)
        self.run.stop(reason)


class ResultsWriterOperator(Operator):
    """Appends each batch's outcomes to ``results.jsonl`` and writes ``results.json`` at stop,
    saying whether the run was complete."""

    def __init__(self, fragment: Fragment, *args, output_path: Path, run_info: dict[str, Any], run: RunStatus, **kwargs):
        self.writer = ResultsWriter(Path(output_path), run_info)
        self.progress = Progress()
        self.run = run
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input, op_output, context) -> None:
        batch, results = op_input.receive("results")
        outcomes: list[InputOutcome] = list(results)
        for o in outcomes:
            self.progress.add(o)
        try:
            self.writer.add(outcomes)
            self.run.batches_recorded += 1
        except Exception as e:  # noqa: BLE001 - a full disk: stop, keep what is on disk
            fatal = fatal_output_error(e, self.writer.partial)
            self.run.stop(str(fatal) if fatal else f"results not recorded: {type(e).__name__}: {short_reason(e)}")
            log.error("%s; stopping the run", self.run.incomplete_reason)
        if batch.last:
            self._close()

    def stop(self) -> None:
        self._close()  # a graph that ended before the last batch: results.json says so

    def _close(self) -> None:
        if self.writer.closed:
            return
        reason = self.run.incomplete_reason
        try:
            path = self.writer.close(interrupted=reason)
        except (OSError, OutputError) as e:
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else e
            why = getattr(cause, "strerror", None) or cause
            log.error("results.json not written (%s); %s holds every result recorded", why, self.writer.partial)
            self.run.stop(f"results.json not written: {why}")  # the exit code must say so
            return
        if reason:
            log.error("results: %s (%s); the run is NOT complete: %s", path, self.progress.summary(), reason)
        else:
            log.info("results: %s (%s)", path, self.progress.summary())
