"""What the model says about one radiograph: typed objects the ensemble hands to the writers.

Nothing here imports torch: the results writer, the DICOM writers and tools that read results
use these classes without loading the networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..catalogue import SCT, AnatomyTerm, Catalogue


@dataclass(frozen=True)
class ModelInfo:
    """The model package and decision settings a run classified with (``results.json``'s ``model``)."""

    name: str
    version: str
    checksum: str
    stacker: str
    device: str
    classes: tuple[str, ...]
    trained_classes: tuple[str, ...]
    thresholds: dict[str, float]  # trained classes only
    top_fraction: float | None = None  # the decision rule (operators/model/decision.py)
    tta: bool = False  # members averaged over each image and its flips

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "sha256": self.checksum, "stacker": self.stacker,
            "device": self.device, "classes": list(self.classes), "trained_classes": list(self.trained_classes),
            "untrained_classes": [c for c in self.classes if c not in self.trained_classes],
            "thresholds": self.thresholds, "top_fraction": self.top_fraction, "tta": self.tta,
        }


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer for one image, before the catalogue names it."""

    probabilities: dict[str, float]  # known classes only
    member_probabilities: dict[str, dict[str, float]]
    labels: list[str]
    needs_review: bool
    review_reason: str | None


@dataclass(frozen=True)
class Classification:
    """One radiograph's classification: labels, probabilities, the anatomy term they map to, and
    whether it agrees with the Body Part Examined the file states.

    Build it with :meth:`of`; every writer reads it, none changes it.
    """

    labels: tuple[str, ...]
    probabilities: dict[str, float]
    member_probabilities: dict[str, dict[str, float]]
    needs_review: bool
    review_reason: str | None
    term: AnatomyTerm | None
    stated_body_part_examined: str | None
    model: ModelInfo

    def __post_init__(self):
        unknown = [c for c in self.labels if c not in self.model.classes]
        if unknown:
            raise ValueError(f"labels {unknown} are not classes of model {self.model.name}")
        if self.needs_review and not self.review_reason:
            raise ValueError("a classification that needs review must say why")

    @classmethod
    def of(cls, prediction: Prediction, model: ModelInfo, catalogue: Catalogue,
           stated_body_part_examined: str | None = None) -> "Classification":
        """Name ``prediction``'s labels with the catalogue's term (none when there are no labels)."""
        term = catalogue.term_for(prediction.labels, prediction.probabilities) if prediction.labels else None
        return cls(tuple(prediction.labels), dict(prediction.probabilities), dict(prediction.member_probabilities),
                   prediction.needs_review, prediction.review_reason, term, stated_body_part_examined, model)

    @property
    def body_part_examined(self) -> str | None:
        """The predicted (0018,0015) term; ``None`` without labels or for a term that has none (Sinus)."""
        return self.term.body_part_examined if self.term else None

    @property
    def agrees(self) -> bool | None:
        """Whether the stated Body Part Examined is the predicted one; ``None`` when either is missing."""
        predicted, stated = self.body_part_examined, self.stated_body_part_examined
        return None if (predicted is None or stated is None) else stated.strip().upper() == predicted

    def to_json(self) -> dict[str, Any]:
        term = self.term
        return {
            "labels": list(self.labels),
            "probabilities": self.probabilities,
            "member_probabilities": self.member_probabilities,
            "thresholds": self.model.thresholds,
            "needs_review": self.needs_review,
            "review_reason": self.review_reason,
            "body_part_examined": self.body_part_examined,
            "anatomic_region": (
                {"code_value": term.sct_code, "coding_scheme_designator": SCT, "code_meaning": term.sct_meaning}
                if term and term.sct_code else None
            ),
            "agrees": self.agrees,
            "model_name": self.model.name,
            "model_version": self.model.version,
        }
