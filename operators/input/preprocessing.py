"""Grey radiograph -> network input tensor. The one copy used by training and inference.

Images from the input stage (DICOM) or from plain image files (training sets shipped as JPEG/PNG)
end up as float32 [0, 1] arrays with bone bright; this module pads them to a square (keeping the
anatomy's proportions), resizes with anti-aliasing and normalises as the package's config says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .grey import DEFAULT_MAX_SIDE, area_downsample, stretch

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Preprocessing:
    """How a grey image becomes a network input; stored in the model package's metadata.

    Parameters
    ----------
    size
        Side of the square network input, pixels.
    channels
        Input channels; the grey image is repeated (ImageNet-pretrained members take 3).
    mean, std
        Per-channel normalisation after scaling to [0, 1] (0.5/0.5 suits EfficientNet-Lite).
    max_side
        Longest side kept right after decoding, before any other work.
    """

    size: int = 224
    channels: int = 3
    mean: Sequence[float] = field(default=(0.5, 0.5, 0.5))
    std: Sequence[float] = field(default=(0.5, 0.5, 0.5))
    max_side: int = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"input size {self.size} is too small")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resize": "pad-to-square, bilinear anti-aliased"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(**{k: data[k] for k in ("size", "channels", "mean", "std", "max_side") if k in data})

    def square(self, image: np.ndarray) -> torch.Tensor:
        """(H, W) [0, 1] -> (1, size, size) [0, 1]: pad to square with black, then resize."""
        t = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        h, w = t.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        t = F.pad(t, (left, side - w - left, top, side - h - top))
        t = F.interpolate(t[None, None], size=(self.size, self.size), mode="bilinear", antialias=side > self.size, align_corners=False)
        return t[0]

    def normalise(self, squared: torch.Tensor) -> torch.Tensor:
        """(…, 1, S, S) [0, 1] -> (…, C, S, S) normalised; works on batches too."""
        x = squared.expand(*squared.shape[:-3], self.channels, *squared.shape[-2:])
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


def read_image_file(path: Path, max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """A plain image file (JPEG, PNG...) as a [0, 1] grey image, normalised like DICOM input.

    Training sets often come as exported images: they pass the same downsampling and percentile
    stretch as DICOM pixels, so the network sees the same distribution either way.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32)
        else:
            arr = np.asarray(im.convert("L"), dtype=np.float32)
    return stretch(area_downsample(arr, max_side))
