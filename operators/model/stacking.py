"""Stackers: combine the members' per-class probabilities into one probability per class.

Stored in portable forms (JSON coefficients; XGBoost's own JSON model format), never pickles.
All take member probabilities shaped (N, M, C) and return (N, C).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


#: A per-class stacker fitted on fewer validation positives than this learns to silence the class
#: (one hip among 400 validation films: the intercept says "never"); such classes keep the mean.
MIN_POSITIVES = 5


def _fittable(y: np.ndarray, min_positives: int) -> bool:
    return len(y) > 0 and y.sum() >= max(min_positives, 1) and y.min() != y.max()


def _rows(targets: np.ndarray, targets_mask: np.ndarray | None) -> np.ndarray:
    """(N, C) booleans: the targets a stacker learns from (all, or those ``targets_mask`` keeps)."""
    return np.ones(targets.shape, bool) if targets_mask is None else np.asarray(targets_mask) > 0


class MeanStacker:
    """The simple mean of the members: the fallback, and what needs no fitting."""

    kind = "mean"

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        return member_probs.mean(axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass
class LogisticStacker:
    """Per-class logistic regression on the members' logits for that class.

    ``coef`` is (C, M), ``intercept`` (C,); a class with ``fitted[c]`` false (no positives or no
    negatives to fit on) falls back to the members' mean.
    """

    coef: np.ndarray
    intercept: np.ndarray
    fitted: np.ndarray
    kind = "logistic"

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        z = np.einsum("nmc,cm->nc", logit(member_probs), self.coef) + self.intercept
        return np.where(self.fitted, sigmoid(z), member_probs.mean(axis=1))

    @classmethod
    def fit(cls, member_probs: np.ndarray, targets: np.ndarray, C: float = 1.0,
            targets_mask: np.ndarray | None = None, min_positives: int = MIN_POSITIVES) -> "LogisticStacker":
        """Fit per class; targets with ``targets_mask`` 0 (unknown labels) are left out, and a class
        with fewer than ``min_positives`` keeps the members' mean."""
        from sklearn.linear_model import LogisticRegression

        n, m, c = member_probs.shape
        coef, intercept, fitted = np.zeros((c, m)), np.zeros(c), np.zeros(c, bool)
        x = logit(member_probs)
        rows_of = _rows(targets, targets_mask)
        for k in range(c):
            rows = rows_of[:, k]
            y = targets[rows, k]
            if not _fittable(y, min_positives):
                continue
            lr = LogisticRegression(C=C, max_iter=1000).fit(x[rows, :, k], y)
            coef[k], intercept[k], fitted[k] = lr.coef_[0], lr.intercept_[0], True
        return cls(coef, intercept, fitted)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "fitted": self.fitted.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LogisticStacker":
        return cls(np.asarray(data["coef"], float), np.asarray(data["intercept"], float), np.asarray(data["fitted"], bool))


class XGBoostStacker:
    """Per-class gradient-boosted trees on all members' probabilities for all classes (M*C features).

    Seeing every class's outputs lets a tree learn confusions between neighbouring parts, as in
    the study's XGBoost stack. Classes without a booster fall back to the members' mean.
    """

    kind = "xgboost"

    def __init__(self, boosters: Sequence[Any | None]):
        self.boosters = list(boosters)

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        n = member_probs.shape[0]
        out = member_probs.mean(axis=1).copy()
        if n == 0:
            return out
        features = xgb.DMatrix(member_probs.reshape(n, -1))
        for k, booster in enumerate(self.boosters):
            if booster is not None:
                out[:, k] = booster.predict(features)
        return out

    @classmethod
    def fit(cls, member_probs: np.ndarray, targets: np.ndarray, rounds: int = 60, seed: int = 0,
            targets_mask: np.ndarray | None = None, min_positives: int = MIN_POSITIVES) -> "XGBoostStacker":
        """Fit per class; targets with ``targets_mask`` 0 (unknown labels) are left out, and a class
        with fewer than ``min_positives`` keeps the members' mean."""
        import xgboost as xgb

        n, m, c = member_probs.shape
        features = member_probs.reshape(n, m * c)
        rows_of = _rows(targets, targets_mask)
        boosters = []
        params = {"objective": "binary:logistic", "max_depth": 2, "eta": 0.2, "subsample": 0.9,
                  "min_child_weight": 1, "seed": seed, "nthread": 1, "verbosity": 0}
        for k in range(targets.shape[1]):
            rows = rows_of[:, k]
            y = targets[rows, k]
            if not _fittable(y, min_positives):
                boosters.append(None)
                continue
            boosters.append(xgb.train(params, xgb.DMatrix(features[rows], label=y), num_boost_round=rounds))
        return cls(boosters)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "boosters": [None if b is None else json.loads(bytes(b.save_raw(raw_format="json"))) for b in self.boosters],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "XGBoostStacker":
        import xgboost as xgb

        boosters = []
        for item in data["boosters"]:
            if item is None:
                boosters.append(None)
                continue
            b = xgb.Booster()
            b.load_model(bytearray(json.dumps(item).encode()))
            boosters.append(b)
        return cls(boosters)


def stacker_from_json(data: dict[str, Any]):
    kind = data.get("kind")
    if kind == "mean":
        return MeanStacker()
    if kind == "logistic":
        return LogisticStacker.from_json(data)
    if kind == "xgboost":
        return XGBoostStacker.from_json(data)
    raise ValueError(f"unknown stacker kind {kind!r}")


def fit_temperatures(probs: np.ndarray, targets: np.ndarray, min_positives: int = 3) -> np.ndarray:
    """Per-class temperature T minimising the log-loss of sigmoid(logit(p) / T) on validation.

    T > 1 softens over-confident outputs (class-balanced losses make them so), T < 1 sharpens.
    Classes with too few positives keep T = 1. A grid search: robust with a few hundred images.
    """
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))
    z = logit(probs)
    out = np.ones(probs.shape[1])
    for k in range(probs.shape[1]):
        y = targets[:, k]
        if y.sum() < min_positives or (1 - y).sum() < min_positives:
            continue
        losses = [_log_loss(y, sigmoid(z[:, k] / t)) for t in grid]
        out[k] = float(grid[int(np.argmin(losses))])
    return out


def apply_temperatures(probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    return sigmoid(logit(probs) / temperatures)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
