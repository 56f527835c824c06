"""One batch in, one outcome per input out: the classification step shared by the app and tools."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..catalogue import Catalogue
from ..input.batching import Batch
from ..input.radiograph import Radiograph
from ..outcome import InputOutcome, Status, short_reason
from .classification import Classification, ModelInfo, Prediction
from .ensemble import Ensemble

log = logging.getLogger("bodypart")


def classify_batch(ensemble: Ensemble, batch: Batch, catalogue: Catalogue) -> list[InputOutcome]:
    """Classify the radiographs of ``batch``; pass other outcomes through, in input order.

    A failure of the ensemble on this batch (out of memory, a bad tensor) marks only its
    radiographs as failed, with the reason; the run goes on.
    """
    radiographs = batch.radiographs
    predictions = []
    if radiographs:
        try:
            predictions = ensemble.predict(batch.tensor)
        except Exception as e:  # noqa: BLE001 - reported per image, never fatal for the run
            log.exception("classification failed for a batch of %d images", len(radiographs))
            reason = f"classification failed: {type(e).__name__}: {short_reason(e)}"
            return [i.outcome(Status.FAILED, reason) if isinstance(i, Radiograph) else i for i in batch.items]
    it, model = iter(predictions), ensemble.info
    return [classified_outcome(i, next(it), model, catalogue) if isinstance(i, Radiograph) else i for i in batch.items]


def classified_outcome(r: Radiograph, prediction: Prediction, model: ModelInfo, catalogue: Catalogue) -> InputOutcome:
    """The classified record of one radiograph, its labels named by the catalogue."""
    classification = Classification.of(prediction, model, catalogue, r.info.stated_body_part_examined)
    return replace(r.outcome(Status.CLASSIFIED), classification=classification)
