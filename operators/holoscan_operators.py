"""Thin MONAI Deploy (Holoscan) operators over the project's pure functions.

Each class only moves data between ports; the logic lives in the modules it calls, so it is
tested without Holoscan. Data flow::

    RadiographLoaderOperator --batch--> BodyPartClassifierOperator --results-->
        DicomOutputsOperator (corrected copies, SRs) --results--> ResultsWriterOperator
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .batching import Batch, DecodeOptions, iter_batches
from .catalogue import Catalogue
from .classify import classify_batch
from .dicom_outputs import DicomOutputs
from .ensemble import Ensemble
from .outcome import InputOutcome
from .report import Progress
from .results import ModelInfo, ResultsWriter

log = logging.getLogger("bodypart")

#: Name of the BooleanCondition that keeps the loader ticking while inputs remain.
MORE_INPUT = "more_input"


class RadiographLoaderOperator(Operator):
    """Streams the input folder as batches of preprocessed radiographs (one batch per tick).

    Pass a ``BooleanCondition`` named ``more_input``: the operator disables it after the last batch.
    """

    def __init__(self, fragment: Fragment, *args, input_path: Path, batches: Iterator[Batch] | None = None,
                 preprocessing=None, batch_size: int = 16, workers: int = 0, decode: DecodeOptions = DecodeOptions(), **kwargs):
        self.input_path = Path(input_path)
        self._batches = batches if batches is not None else iter_batches(self.input_path, preprocessing, batch_size, workers, decode)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("batch")

    def compute(self, op_input, op_output, context) -> None:
        batch = next(self._batches, None)
        if batch is None:
            self.conditions[MORE_INPUT].disable_tick()
            return
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
    results on with their output paths."""

    def __init__(self, fragment: Fragment, *args, outputs: DicomOutputs, **kwargs):
        self.outputs = outputs
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def compute(self, op_input, op_output, context) -> None:
        batch, results = op_input.receive("results")
        op_output.emit((batch, self.outputs.add(batch.items, results)), "results")

    def stop(self) -> None:
        written = self.outputs.close()
        log.info("wrote %d structured reports", len(written))


class ResultsWriterOperator(Operator):
    """Appends each batch's outcomes to ``results.jsonl`` and writes ``results.json`` at stop."""

    def __init__(self, fragment: Fragment, *args, output_path: Path, run: dict[str, Any], **kwargs):
        self.writer = ResultsWriter(Path(output_path), run)
        self.progress = Progress()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input, op_output, context) -> None:
        _, results = op_input.receive("results")
        outcomes: list[InputOutcome] = list(results)
        for o in outcomes:
            self.progress.add(o)
        self.writer.add(outcomes)

    def stop(self) -> None:
        path = self.writer.close()
        log.info("results: %s (%s)", path, self.progress.summary())
