"""How probabilities become labels: one rule for the app, for training's tuning and for its reports.

Pure numpy (no torch): training evaluates exactly the decision the package will make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Decision:
    """How probabilities become labels.

    Parameters
    ----------
    review_margin
        A known class this close to its threshold makes the image ``needs_review`` (with
        ``top_fraction``: a class that could join the labels, at least that fraction of the top
        probability less the margin).
    max_labels
        More labels than this is a conflict (real radiographs show one region or a few
        neighbouring ones).
    top_fraction
        ``None``: every known class at or above its threshold is a label (the study's rule).
        A number in (0, 1]: the most probable known class is always a label, and another class
        joins it only at or above its threshold *and* at least this fraction of the top
        probability. A weak second class is, on films from other hospitals, more often noise than
        a neighbour; and a film of a known class is never left without a label (when the top
        class is below its threshold the image needs review).
    """

    review_margin: float = 0.1
    max_labels: int = 3
    top_fraction: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.review_margin < 1.0:
            raise ValueError(f"review_margin must lie in [0, 1), got {self.review_margin}")
        if self.max_labels < 1:
            raise ValueError(f"max_labels must be at least 1, got {self.max_labels}")
        if self.top_fraction is not None:
            if isinstance(self.top_fraction, bool) or not isinstance(self.top_fraction, (int, float)) \
                    or not 0.0 < self.top_fraction <= 1.0:
                raise ValueError(f"top_fraction must be a number in (0, 1] or null, got {self.top_fraction!r}")
            object.__setattr__(self, "top_fraction", float(self.top_fraction))

    def to_json(self) -> dict[str, Any]:
        return {"review_margin": self.review_margin, "max_labels": self.max_labels, "top_fraction": self.top_fraction}


def select_labels(probs: np.ndarray, thresholds: np.ndarray, known: np.ndarray, top_fraction: float | None = None) -> np.ndarray:
    """Boolean labels for probabilities shaped (C,) or (N, C), by :class:`Decision`'s rule."""
    probs = np.asarray(probs, float)
    known = np.asarray(known, bool)
    labels = (probs >= thresholds) & known
    if top_fraction is None or not known.any():
        return labels
    p = np.where(known, probs, -np.inf)
    top = p.argmax(-1)
    top_p = np.take_along_axis(p, top[..., None], -1)
    labels &= probs >= top_fraction * top_p
    np.put_along_axis(labels, top[..., None], True, -1)
    return labels


def decide(probs: np.ndarray, thresholds: np.ndarray, known: np.ndarray, decision: Decision,
           classes: tuple[str, ...]) -> tuple[list[str], str | None]:
    """One image's labels among known classes, and why it needs review (or None)."""
    chosen = select_labels(probs, thresholds, known, decision.top_fraction)
    labels = [c for k, c in enumerate(classes) if chosen[k]]
    above = (probs >= thresholds) & known
    if not above.any():
        if not labels:
            return labels, "no class above its threshold"
        return labels, f"no class above its threshold; {labels[0]} is the most probable"
    top = int(np.argmax(np.where(known, probs, -np.inf)))  # the rule's top class (always known here)
    if decision.top_fraction is not None:
        if not above[top]:  # labelled by the rule although another class passed its own threshold
            return labels, f"{classes[top]} is the most probable but below its threshold"
    if len(labels) > decision.max_labels:
        return labels, f"{len(labels)} classes above threshold (conflicting outputs)"
    margin = decision.review_margin
    near = known & (np.abs(probs - thresholds) < margin)
    if decision.top_fraction is not None:
        # a class that cannot join the top class (far below the fraction) cannot change the labels,
        # however close to its threshold: a threshold tuned down to 0.1 must not flag every film
        near &= probs >= decision.top_fraction * probs[top] - margin
    if near.any():
        names = ", ".join(c for k, c in enumerate(classes) if near[k])
        return labels, f"uncertain: {names} within {margin} of threshold"
    return labels, None
