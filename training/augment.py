"""Online augmentation that takes the style of a film away from its class.

Several training sources are one class each and each has a look of its own (children's hands at
100 px, tight knee crops, teaching-file figures with letters and arrows). A network learns the look
instead of the anatomy unless every class is shown in every look: so every transform here is applied
to every class, with the probabilities and ranges in :class:`AugmentConfig` (config data, measured in
``docs/training.md``). Images are the cached network squares, ``(1, S, S)`` float in [0, 1].

MONAI's transforms do what they can (flips, rotation, low resolution, blur, gamma, noise); the rest
(crop extent both ways, window changes, JPEG recompression, burnt-in annotations) are small
``RandomizableTransform`` classes below, so one ``set_random_state`` seeds the whole chain.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandomizableTransform


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_*``) and ranges of the online augmentation.

    The defaults are the study's (flips and rotations only); ``training/configs/across-sources.yaml``
    turns on the source-style transforms.
    """

    flip_prob: float = 0.5
    rotate_range_deg: float = 180.0
    # crop extent: zoom in on a random window (a joint out of a whole film) or out, with a border
    p_extent: float = 0.0
    zoom_in: float = 1.8  # up to this factor (window side = S / factor)
    zoom_out: float = 0.55  # down to this factor, the rest a collimation-like border
    # resolution: down to this fraction of the side and back (a 100 px hand in a 224 input is 0.45)
    p_low_resolution: float = 0.0
    low_resolution: tuple[float, float] = (0.2, 0.9)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    # window / level and gamma: other devices' processing
    p_window: float = 0.0
    p_gamma: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.7)
    p_noise: float = 0.0
    noise_std: float = 0.04
    # lossy JPEG as exported teaching files and web figures are
    p_jpeg: float = 0.0
    jpeg_quality: tuple[int, int] = (15, 90)
    # burnt-in letters, arrows and markers (teaching files, side markers)
    p_annotations: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") or f.name == "flip_prob":
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"augment.{f.name} must be a probability in [0, 1], got {v}")
            if isinstance(v, list):  # YAML gives lists; keep the dataclass hashable
                object.__setattr__(self, f.name, tuple(v))
        lo, hi = self.low_resolution
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.low_resolution must be 0 < low <= high <= 1, got {self.low_resolution}")
        if self.zoom_in < 1.0 or not 0.0 < self.zoom_out <= 1.0:
            raise ValueError("augment.zoom_in must be >= 1 and augment.zoom_out in (0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"augment.jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data or {}) - known
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**(data or {}))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _RandImage(RandomizableTransform):
    """A transform applied with probability ``prob`` to a ``(1, S, S)`` [0, 1] image; subclasses
    write ``apply`` only."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize(None)
        return self.apply(torch.as_tensor(img)) if self._do_transform else img

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _grey8(img: torch.Tensor) -> np.ndarray:
    """(1, S, S) [0, 1] -> (S, S) uint8, as PIL takes it."""
    return (img[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


class RandExtent(_RandImage):
    """Zoom in on a random window or out onto a border, keeping the size: neither a tight crop nor a
    whole film may tell the class."""

    def __init__(self, prob: float, zoom_in: float, zoom_out: float):
        super().__init__(prob)
        self.zoom_in, self.zoom_out = zoom_in, zoom_out

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        s = img.shape[-1]
        if self.R.rand() < 0.5 and self.zoom_in > 1.0:
            side = max(8, int(round(s / self.R.uniform(1.0, self.zoom_in))))
            top, left = self.R.randint(0, s - side + 1), self.R.randint(0, s - side + 1)
            window = img[..., top : top + side, left : left + side]
            return F.interpolate(window[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        side = max(8, int(round(s * self.R.uniform(self.zoom_out, 1.0))))
        small = F.interpolate(img[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
        # a border as collimation leaves it: black, or a flat grey to white shutter
        fill = 0.0 if self.R.rand() < 0.5 else float(self.R.uniform(0.3, 1.0))
        out = torch.full_like(img, fill)
        top, left = self.R.randint(0, s - side + 1), self.R.randint(0, s - side + 1)
        out[..., top : top + side, left : left + side] = small
        return out


class RandWindow(_RandImage):
    """Another window: stretch (clip a little at both ends) or compress the grey range."""

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        lo, hi = self.R.uniform(0.0, 0.15), self.R.uniform(0.85, 1.0)
        if self.R.rand() < 0.5:
            return ((img - lo) / (hi - lo)).clamp(0, 1)
        return lo + img * (hi - lo)


class RandJpeg(_RandImage):
    """Lossy JPEG round trip at a random quality (8-bit, as exported figures are)."""

    def __init__(self, prob: float, quality: tuple[int, int]):
        super().__init__(prob)
        self.quality = quality

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(_grey8(img)).save(buf, format="JPEG", quality=int(self.R.randint(self.quality[0], self.quality[1] + 1)))
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), np.float32) / 255.0
        return torch.from_numpy(back)[None]


class RandAnnotations(_RandImage):
    """Burnt-in letters (side markers, figure labels), arrows and boxes, white or black, as teaching
    files and some devices put on the pixels."""

    _TEXT = ("L", "R", "A", "B", "PA", "AP", "LAT", "1", "2", "a", "b", "c", "SUPINE", "ERECT", "*")

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image, ImageDraw, ImageFont

        s = img.shape[-1]
        pil = Image.fromarray(_grey8(img))
        draw = ImageDraw.Draw(pil)
        for _ in range(self.R.randint(1, 4)):
            colour = 255 if self.R.rand() < 0.8 else 0
            x, y = int(self.R.randint(0, s - 8)), int(self.R.randint(0, s - 8))
            kind = self.R.rand()
            if kind < 0.55:
                font = ImageFont.load_default(size=int(self.R.randint(max(8, s // 20), max(9, s // 7))))
                draw.text((x, y), self._TEXT[self.R.randint(len(self._TEXT))], fill=colour, font=font)
            elif kind < 0.85:  # an arrow: a shaft and a head
                length, angle = self.R.uniform(s / 12, s / 4), self.R.uniform(0, 2 * math.pi)
                x2, y2 = x + length * math.cos(angle), y + length * math.sin(angle)
                width = max(1, s // 100)
                draw.line((x, y, x2, y2), fill=colour, width=width)
                for da in (2.6, -2.6):
                    draw.line((x2, y2, x2 + length / 3 * math.cos(angle + da), y2 + length / 3 * math.sin(angle + da)),
                              fill=colour, width=width)
            else:  # a marker box
                w = int(self.R.uniform(s / 20, s / 8))
                draw.rectangle((x, y, x + w, y + w), outline=colour, width=max(1, s // 120))
        return torch.from_numpy(np.asarray(pil, np.float32) / 255.0)[None]


def online_transform(config: AugmentConfig, seed: int):
    """The training transform chain for ``config``, seeded."""
    from monai.transforms import (Compose, RandAdjustContrast, RandFlip, RandGaussianNoise, RandGaussianSmooth,
                                  RandRotate, RandSimulateLowResolution)

    chain = [
        RandExtent(config.p_extent, config.zoom_in, config.zoom_out),
        RandFlip(prob=config.flip_prob, spatial_axis=0),
        RandFlip(prob=config.flip_prob, spatial_axis=1),
        RandRotate(range_x=math.radians(config.rotate_range_deg), prob=1.0 if config.rotate_range_deg else 0.0,
                   padding_mode="zeros"),
        RandAnnotations(config.p_annotations),
        RandSimulateLowResolution(prob=config.p_low_resolution, downsample_mode="area", upsample_mode="bilinear",
                                  zoom_range=config.low_resolution),
        RandGaussianSmooth(sigma_x=config.blur_sigma, sigma_y=config.blur_sigma, prob=config.p_blur),
        RandWindow(config.p_window),
        RandAdjustContrast(prob=config.p_gamma, gamma=config.gamma),
        RandGaussianNoise(prob=config.p_noise, std=config.noise_std),
        RandJpeg(config.p_jpeg, config.jpeg_quality),
    ]
    t = Compose(chain)
    t.set_random_state(seed)

    def apply(img: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t(img)).float().clamp(0, 1)

    return apply
