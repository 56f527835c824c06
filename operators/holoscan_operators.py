"""Thin MONAI Deploy (Holoscan) operators over one in-process :class:`~operators.pipeline.Pipeline`.

Each class only moves data between ports and calls one stage; the logic and the fault handling
live in :mod:`operators.pipeline`, tested without Holoscan. Data flow::

    RadiographLoaderOperator --batch--> BodyPartClassifierOperator --results-->
        DicomOutputsOperator (corrected copies, SRs) --results--> ResultsWriterOperator

No ``compute`` raises (the pipeline records faults in its ``RunStatus``): an exception in an
operator makes Holoscan drop the batches in flight.
"""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .input.batching import Batch
from .pipeline import BatchFeed, Pipeline

#: Name of the BooleanCondition that keeps the loader ticking while inputs remain.
MORE_INPUT = "more_input"


class RadiographLoaderOperator(Operator):
    """Emits the reader's batches, one per tick, then a last empty one.

    Pass a ``BooleanCondition`` named ``more_input``: the operator disables it after the last batch.
    """

    def __init__(self, fragment: Fragment, *args, feed: BatchFeed, **kwargs):
        self.feed = feed
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("batch")

    def compute(self, op_input, op_output, context) -> None:
        batch = self.feed.next()
        if batch is None:
            self.conditions[MORE_INPUT].disable_tick()
            return
        op_output.emit(batch, "batch")


class BodyPartClassifierOperator(Operator):
    """Runs the ensemble on each batch; emits one outcome per input (classified, skipped, failed)."""

    def __init__(self, fragment: Fragment, *args, pipeline: Pipeline, **kwargs):
        self.pipeline = pipeline
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("batch")
        spec.output("results")

    def compute(self, op_input, op_output, context) -> None:
        batch: Batch = op_input.receive("batch")
        op_output.emit((batch, self.pipeline.classify(batch)), "results")


class DicomOutputsOperator(Operator):
    """Writes corrected DICOM copies as results arrive and the per-study SRs after the last batch
    (or at stop); passes the results on with their output records."""

    def __init__(self, fragment: Fragment, *args, pipeline: Pipeline, **kwargs):
        self.pipeline = pipeline
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def compute(self, op_input, op_output, context) -> None:
        batch, results = op_input.receive("results")
        op_output.emit((batch, self.pipeline.write_dicom(batch, results)), "results")

    def stop(self) -> None:
        self.pipeline.finish_dicom()  # the graph ended before the last batch


class ResultsWriterOperator(Operator):
    """Appends each batch's outcomes to ``results.jsonl`` and writes ``results.json`` after the last
    batch (or at stop), saying whether the run was complete."""

    def __init__(self, fragment: Fragment, *args, pipeline: Pipeline, **kwargs):
        self.pipeline = pipeline
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input, op_output, context) -> None:
        batch, results = op_input.receive("results")
        self.pipeline.record(batch, results)

    def stop(self) -> None:
        self.pipeline.close_results()
