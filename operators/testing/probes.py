"""Metamorphic probes of a classifier: the same radiograph at another resolution or crop extent.

A model that recognises anatomy gives the same labels; one that learnt a source's style (the
training set's 100 px children's hands, its tight knee crops) does not. Used by the shortcut
tests (``tests/test_shortcuts.py``) and ``benchmarks/generalisation.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def degrade(image: np.ndarray, long_side: int = 100) -> np.ndarray:
    """Down to ``long_side`` pixels on the long side (area average) and back up (bilinear), in [0, 1]."""
    t = torch.as_tensor(image, dtype=torch.float32)[None, None]
    h, w = image.shape
    scale = long_side / max(h, w)
    small = F.interpolate(t, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def crop(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> np.ndarray:
    """The window between the given fractions of the height and width."""
    h, w = image.shape
    return image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)]


def centre_crop(image: np.ndarray, keep: float = 0.6) -> np.ndarray:
    """The centred window holding ``keep`` of each side."""
    margin = (1 - keep) / 2
    return crop(image, (margin, 1 - margin), (margin, 1 - margin))
