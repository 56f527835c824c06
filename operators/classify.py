"""One batch in, one outcome per input out: the classification step shared by the app and tools."""

from __future__ import annotations

import logging

from .batching import Batch
from .catalogue import Catalogue
from .ensemble import Ensemble
from .outcome import InputOutcome, Status, short_reason
from .radiograph import Radiograph
from .results import ModelInfo, classified_outcome

log = logging.getLogger("bodypart")


def classify_batch(ensemble: Ensemble, batch: Batch, model: ModelInfo, catalogue: Catalogue) -> list[InputOutcome]:
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
    it = iter(predictions)
    return [classified_outcome(i, next(it), model, catalogue) if isinstance(i, Radiograph) else i for i in batch.items]
