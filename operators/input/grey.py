"""Stored pixel values -> display-ready grey image, the DICOM grayscale pipeline (PS3.3 C.11).

Stored values -> Modality LUT (rescale or LUT sequence) -> VOI LUT (first LUT sequence item,
else first window) -> polarity (MONOCHROME1 or Presentation LUT Shape INVERSE) so that bone is
always bright -> a robust percentile stretch to [0, 1], which also normalises images that carry
no VOI at all. Images are shrunk as early as the pipeline allows (area averaging).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi

from .decoding import shrink_factor
from .discovery import InputError

if TYPE_CHECKING:  # torch is imported only when an image is shrunk
    import torch

#: Percentiles of the robust stretch: wide enough to keep anatomy, narrow enough to ignore
#: collimator edges, burnt-in labels and dead pixels.
PERCENTILES = (0.5, 99.5)
#: Default longest side kept after decoding; models need a few hundred pixels, not 3,000.
DEFAULT_MAX_SIDE = 1024
#: A window under which less than this fraction of pixels is neither black nor white does not
#: belong to the pixel data.
MIN_INSIDE_WINDOW = 0.01


def to_grey(stored: np.ndarray, ds: pydicom.Dataset, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[np.ndarray, bool, str]:
    """One frame of stored values -> float32 image in [0, 1] with bone bright.

    Returns the image, whether it was inverted for display, and which VOI was applied.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # colour: already display values; luminance (ITU-R BT.601)
        if not photometric.startswith(("RGB", "YBR")):
            raise InputError(f"{stored.shape[-1]}-sample image with Photometric Interpretation {photometric}")
        values = stored[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return stretch(area_downsample(values, max_side)), False, "none"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"unsupported Photometric Interpretation {photometric}")

    if "ModalityLUTSequence" in ds:  # a table: look up full-resolution values, then shrink
        values = area_downsample(np.asarray(apply_modality_lut(stored, ds), dtype=np.float32), max_side)
        if not np.isfinite(values).all():
            raise InputError("the Modality LUT gives values out of range")
    else:  # rescale is linear: shrinking first gives the same values for a fraction of the work
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            values = area_downsample(stored, max_side) * np.float32(slope) + np.float32(intercept)
        if not np.isfinite(values).all():
            raise InputError(f"Rescale Slope {slope:g} and Intercept {intercept:g} give values out of range")
    values, voi = _apply_voi(values, ds)
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    inverted = photometric == "MONOCHROME1" or shape == "INVERSE"
    if voi.startswith("none") and _raw_intensity_polarity(ds):
        inverted = not inverted
    if inverted:
        values = -values  # the stretch below maps it back to [0, 1]
    return stretch(values), inverted, voi


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    seq = ds.get("VOILUTSequence")
    if seq:
        item = seq[0]
        lut_ds = pydicom.Dataset()
        lut_ds.VOILUTSequence = [item]
        lut_ds.PixelRepresentation = ds.get("PixelRepresentation", 0)
        lut_ds.BitsStored = ds.get("BitsStored", 16)
        first = int(item.LUTDescriptor[1])
        n = int(item.LUTDescriptor[0]) or 65536
        idx = np.clip(np.rint(values), first, first + n - 1).astype(np.int64)
        return np.asarray(apply_voi(idx, lut_ds, index=0), dtype=np.float32), "lut"
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is not None and widths is not None:
        c = float(centers[0] if isinstance(centers, pydicom.multival.MultiValue) else centers)
        w = float(widths[0] if isinstance(widths, pydicom.multival.MultiValue) else widths)
        if 0 < w < 1e30 and abs(c) < 1e30:  # NaN, infinite or absurd windows are no window (float32 range)
            windowed = _window(values, c, w, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
            inside = np.count_nonzero((windowed > 0) & (windowed < 1)) / windowed.size
            # Raw detector images sometimes carry a window for other data: ignore one that
            # leaves the picture saturated rather than return a blank image.
            if inside >= MIN_INSIDE_WINDOW:
                return windowed, "window"
            return values, "none (window does not fit the pixel values)"
    return values, "none"


def _raw_intensity_polarity(ds: pydicom.Dataset) -> bool:
    """True for unprocessed data whose values grow with X-ray intensity (air bright).

    Only used when no VOI applies: processed images often carry these tags wrongly, while a raw
    linear detector image (Pixel Intensity Relationship LIN, sign +1) shows bone dark.
    """
    relationship = str(ds.get("PixelIntensityRelationship", "") or "").upper()
    sign = ds.get("PixelIntensityRelationshipSign")
    return relationship == "LIN" and sign is not None and int(sign) == 1


def _window(x: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 window to [0, 1]."""
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    if w < 1:  # LINEAR requires width >= 1
        w = 1.0
    if w == 1:
        return (x > c - 0.5).astype(np.float32)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, PERCENTILES)
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise InputError("blank image: every pixel has the same value")
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def area_downsample(values: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink by the smallest integer factor that fits ``max_side``, averaging blocks (anti-aliased).

    torch's pooling does this about twice as fast as a NumPy block mean, single-threaded too.
    """
    values = np.asarray(values, dtype=np.float32)
    if shrink_factor(values.shape[:2], max_side) <= 1:
        return values
    import torch

    return pool_to_side(torch.from_numpy(np.ascontiguousarray(values)), max_side).numpy()


def pool_to_side(t: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """:func:`area_downsample` on a float tensor (rows, columns[, samples]), on whatever device it is.

    The one shrink for every decoder: CPU-decoded images and GPU-decoded ones (see
    :mod:`operators.input.gpu_decoding`) come out the same. Trailing rows and columns that do not fill a
    block are dropped.
    """
    f = shrink_factor(tuple(t.shape[:2]), max_side)
    if f <= 1:
        return t
    import torch

    r, c = t.shape[0] // f * f, t.shape[1] // f * f
    planes = t[:r, :c].permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None, :r, :c]
    pooled = torch.nn.functional.avg_pool2d(planes, f)[0]
    return pooled.permute(1, 2, 0) if t.ndim == 3 else pooled[0]


