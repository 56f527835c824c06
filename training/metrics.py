"""Multilabel metrics as in the study's Table 2, per class and overall."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], evaluated: Sequence[bool] | None = None,
                       targets_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Hamming loss, exact match, and per-class accuracy/sensitivity/specificity/F1 with macro/micro F1.

    ``evaluated`` restricts the overall figures to the classes the model knows (others are reported
    per class but left out of averages); macro averages use classes with at least one positive.
    ``targets_mask`` (N, C), 0 where a film's label is unknown (a neighbour of the one part a
    source names): such a target counts neither right nor wrong, in every figure.
    """
    y_true = np.asarray(y_true, bool).reshape(-1, len(classes))
    y_pred = np.asarray(y_pred, bool).reshape(-1, len(classes))
    known = np.ones(y_true.shape, bool) if targets_mask is None else np.asarray(targets_mask).reshape(y_true.shape) > 0
    mask = np.ones(len(classes), bool) if evaluated is None else np.asarray(evaluated, bool)
    t, p, kn = y_true[:, mask], y_pred[:, mask], known[:, mask]
    tp = (y_true & y_pred & known).sum(0)
    fp = (~y_true & y_pred & known).sum(0)
    fn = (y_true & ~y_pred & known).sum(0)
    tn = (~y_true & ~y_pred & known).sum(0)
    per_class = {}
    for k, c in enumerate(classes):
        pos = int(tp[k] + fn[k])
        per_class[c] = {
            "positives": pos,
            "accuracy": float((tp[k] + tn[k]) / max(int(known[:, k].sum()), 1)),
            "sensitivity": float(tp[k] / pos) if pos else None,
            "specificity": float(tn[k] / (tn[k] + fp[k])) if (tn[k] + fp[k]) else None,
            "precision": float(tp[k] / (tp[k] + fp[k])) if (tp[k] + fp[k]) else None,
            "f1": float(2 * tp[k] / (2 * tp[k] + fp[k] + fn[k])) if (2 * tp[k] + fp[k] + fn[k]) else None,
            "evaluated": bool(mask[k]),
        }
    with_pos = [c for k, c in enumerate(classes) if mask[k] and per_class[c]["positives"] > 0]
    mtp, mfp, mfn = tp[mask].sum(), fp[mask].sum(), fn[mask].sum()
    return {
        "n": int(len(y_true)),
        "hamming_loss": float(((t != p) & kn).sum() / max(int(kn.sum()), 1)) if t.size else None,
        "exact_match": float(((t == p) | ~kn).all(1).mean()) if len(t) else None,
        "macro_f1": _mean([per_class[c]["f1"] for c in with_pos]),
        "micro_f1": float(2 * mtp / (2 * mtp + mfp + mfn)) if (2 * mtp + mfp + mfn) else None,
        "macro_sensitivity": _mean([per_class[c]["sensitivity"] for c in with_pos]),
        "macro_specificity": _mean([per_class[c]["specificity"] for c in with_pos]),
        "classes_evaluated": with_pos,
        "per_class": per_class,
    }


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray, classes: Sequence[str], min_positives: int = 3, default: float = 0.5,
                    targets_mask: np.ndarray | None = None) -> dict[str, float]:
    """Per-class threshold maximising F1 on validation; default where too few positives to trust.
    Targets with ``targets_mask`` 0 (unknown labels) are left out."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    known = np.ones(y_true.shape, bool) if targets_mask is None else np.asarray(targets_mask) > 0
    out = {}
    for k, c in enumerate(classes):
        rows = known[:, k]
        y = y_true[rows, k].astype(bool)
        if y.sum() < min_positives or (~y).sum() == 0:
            out[c] = default
            continue
        f1s = []
        for th in grid:
            pred = probs[rows, k] >= th
            tp = (pred & y).sum()
            f1s.append(2 * tp / (pred.sum() + y.sum()))
        best = float(np.max(f1s))
        # among equally good thresholds take the one nearest the default: less tuned to noise
        candidates = [g for g, f in zip(grid, f1s) if f >= best - 1e-9]
        out[c] = float(min(candidates, key=lambda g: abs(g - default)))
    return out
