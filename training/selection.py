"""Choices made on validation after the members are trained: stackers, thresholds, the decision rule.

Validation holds whole sources the members never saw (``val_sources``) plus a random part of the
others, so these choices favour what carries over to other hospitals' films. Targets with a loss
mask of 0 (a neighbour of the one part a source names) count neither way in stacker fits,
thresholds and scores (temperatures, when asked for, are fitted on every target).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from operators.model.decision import select_labels
from operators.model.model_package import StackerCalibration
from operators.model.stacking import (MIN_POSITIVES, LogisticStacker, MeanStacker, XGBoostStacker, apply_temperatures,
                                      fit_temperatures)

from .metrics import multilabel_metrics, tune_thresholds

log = logging.getLogger("bodypart.training")

#: ``top_fraction: auto`` tries these (None: every class above its threshold, the study's rule).
TOP_FRACTIONS: tuple[float | None, ...] = (None, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class DecisionChoice:
    """What validation chose for the package's decision, and the scores it chose by."""

    stacker: str
    top_fraction: float | None
    stacker_scores: dict[str, float]  # out-of-fold validation score of each stacker (when chosen)
    top_fraction_scores: dict[str, float]  # the chosen stacker's, out of fold, per rule (when chosen)
    folds: str = "pictures"  # what a fold keeps together: copies of one picture, or whole sources

    def to_json(self) -> dict[str, Any]:
        return {"stacker": self.stacker, "top_fraction": self.top_fraction, "stacker_scores": self.stacker_scores,
                "top_fraction_scores": self.top_fraction_scores, "folds": self.folds,
                "score": "out-of-fold validation macro F1 + exact match over known classes (masked targets left out)"}


def fit_stackers(kinds: Sequence[str], member_probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None, seed: int,
                 min_positives: int = MIN_POSITIVES) -> dict[str, Any]:
    """The mean plus every stacker named in ``kinds``, fitted on (N, M, C) member probabilities
    (per class, where it has ``min_positives``; else that class keeps the mean)."""
    out: dict[str, Any] = {"mean": MeanStacker()}
    if "logistic" in kinds:
        out["logistic"] = LogisticStacker.fit(member_probs, y, targets_mask=mask, min_positives=min_positives)
    if "xgboost" in kinds:
        out["xgboost"] = XGBoostStacker.fit(member_probs, y, seed=seed, targets_mask=mask, min_positives=min_positives)
    return out


def calibrate(probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None, classes: list[str], calibrate_temperature: bool,
              tune: bool) -> StackerCalibration:
    """Temperatures (optional) and per-class thresholds of one stacker's validation probabilities."""
    temperatures = fit_temperatures(probs, y) if calibrate_temperature else None
    if temperatures is not None:
        probs = apply_temperatures(probs, temperatures)
    thresholds = tune_thresholds(probs, y, classes, targets_mask=mask) if tune else {c: 0.5 for c in classes}
    return StackerCalibration({c: float(thresholds[c]) for c in classes},
                              dict(zip(classes, temperatures.tolist())) if temperatures is not None else None)


def calibrated(probs: np.ndarray, calibration: StackerCalibration, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A stacker's probabilities after its temperatures, and its thresholds as an array."""
    if calibration.temperatures:
        probs = apply_temperatures(probs, np.asarray([calibration.temperatures[c] for c in classes]))
    return probs, np.asarray([calibration.thresholds[c] for c in classes])


def decision_score(probs: np.ndarray, thresholds: np.ndarray, y: np.ndarray, mask: np.ndarray | None, known: np.ndarray,
                   classes: list[str], top_fraction: float | None) -> float:
    """Macro F1 plus exact match of the package's decision over known classes: both are the
    product's targets, and the rule that wins one by losing the other is not wanted."""
    m = multilabel_metrics(y, select_labels(probs, thresholds, known, top_fraction), classes, known, targets_mask=mask)
    return float((m["macro_f1"] or 0.0) + (m["exact_match"] or 0.0))


def source_groups(sources: Sequence[str], pictures: np.ndarray) -> np.ndarray:
    """Fold groups that hold whole sources and keep copies of one picture together: each image
    takes the source of its picture's first copy (``pictures``: that copy's row, as from
    :func:`training.pipeline.duplicate_groups`)."""
    names = np.asarray(sources, dtype=object)[np.asarray(pictures)]
    return np.unique(names, return_inverse=True)[1]


def choose_decision(member_probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None, known: np.ndarray,
                    classes: list[str], seed: int, calibrate_temperature: bool, tune: bool, stackers: Sequence[str],
                    fractions: Sequence[float | None], groups: np.ndarray | None = None, folds: int = 5,
                    min_positives: int = MIN_POSITIVES, groups_are: str = "pictures") -> DecisionChoice:
    """The stacker (among ``stackers``) and the rule (among ``fractions``) with the best
    out-of-fold :func:`decision_score` on validation: each fitted stacker is fitted on the other
    folds and predicts the held-out one (a stacker scored where it was fitted would always win),
    and each stacker's thresholds (and temperatures) are tuned on the other folds too, so that a
    rule is scored with thresholds that never saw the images it labels. Folds keep each of
    ``groups`` together (``groups_are``: "pictures", copies of one radiograph; "sources", whole
    sources, so that stacker and thresholds are scored on sources they were not fitted on, as the
    package will be used). Ties go to the mean, then to the simpler rule. With fewer than two
    groups of validation images (one validation source, with source folds) no stacker can be fitted
    out of fold: the mean is taken, its rule scored with thresholds tuned on all of validation (the
    first stacker as it is, when the mean is not a candidate).

    ``source_groups`` gives a copy its first copy's source, so a validation source's film with a
    copy in another source sits in that source's fold."""
    if len(stackers) == 1 and len(fractions) == 1:
        return DecisionChoice(stackers[0], fractions[0], {}, {}, groups_are)  # nothing to choose
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    n_folds = min(folds, len(uniq))
    if n_folds < 2 and "mean" in stackers and len(stackers) > 1:
        log.warning("validation has one %s group: no stacker can be scored out of fold; the mean is taken", groups_are[:-1])
        stackers = ["mean"]
    fitted_kinds = [k for k in stackers if k != "mean"]
    if fitted_kinds and n_folds < 2:  # nothing to score a fitted stacker on, and no mean to fall back to
        return DecisionChoice(stackers[0], fractions[0], {}, {}, groups_are)
    oof = {k: np.zeros(y.shape) for k in stackers}
    if "mean" in oof:
        oof["mean"] = member_probs.mean(axis=1)
    fold_of = np.zeros(len(y), int)
    if n_folds >= 2:
        fold_of_group = np.empty(len(uniq), int)
        fold_of_group[np.random.default_rng(seed).permutation(len(uniq))] = np.arange(len(uniq)) % n_folds
        fold_of = fold_of_group[inverse]
    for f in range(n_folds if fitted_kinds else 0):
        fit_rows, out_rows = fold_of != f, fold_of == f
        fitted = fit_stackers(fitted_kinds, member_probs[fit_rows], y[fit_rows], None if mask is None else mask[fit_rows], seed,
                              min_positives)
        for k in fitted_kinds:
            oof[k][out_rows] = fitted[k].predict(member_probs[out_rows])
    stacker_scores, fraction_scores = {}, {}
    for k in stackers:
        probs, th = np.zeros(y.shape), np.zeros(y.shape)
        for f in range(max(n_folds, 1)):
            out_rows = fold_of == f
            tune_rows = ~out_rows if n_folds >= 2 else out_rows
            cal = calibrate(oof[k][tune_rows], y[tune_rows], None if mask is None else mask[tune_rows], classes,
                            calibrate_temperature, tune)
            probs[out_rows], th[out_rows] = calibrated(oof[k][out_rows], cal, classes)
        fraction_scores[k] = {str(f): decision_score(probs, th, y, mask, known, classes, f) for f in fractions}
        stacker_scores[k] = max(fraction_scores[k].values())
    best = max(stackers, key=lambda k: (round(stacker_scores[k], 9), k == "mean"))
    rule = max(fractions, key=lambda f: (round(fraction_scores[best][str(f)], 9), -list(fractions).index(f)))
    return DecisionChoice(best, rule, stacker_scores if len(stackers) > 1 else {},
                          fraction_scores[best] if len(fractions) > 1 else {}, groups_are)
