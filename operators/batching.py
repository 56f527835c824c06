"""Stream inputs as batches: radiographs become one input tensor, other outcomes ride along in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .outcome import InputOutcome
from .preprocessing import Preprocessing
from .radiograph import Radiograph, iter_radiographs


@dataclass
class Batch:
    """Up to ``batch_size`` radiographs (with their input tensor) plus the files that gave none.

    ``items`` keeps input order; ``tensor`` rows follow the radiographs among them. Grey images
    are dropped once preprocessed so a batch holds only small tensors.
    """

    items: list[Radiograph | InputOutcome] = field(default_factory=list)
    tensor: torch.Tensor | None = None

    @property
    def radiographs(self) -> list[Radiograph]:
        return [i for i in self.items if isinstance(i, Radiograph)]


def iter_batches(root: Path, preprocessing: Preprocessing, batch_size: int = 16) -> Iterator[Batch]:
    """Read ``root`` lazily and yield batches; memory is bounded by ``batch_size`` images."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    items: list[Radiograph | InputOutcome] = []
    tensors: list[torch.Tensor] = []
    for item in iter_radiographs(root, max_side=preprocessing.max_side):
        if isinstance(item, Radiograph):
            tensors.append(preprocessing.square(item.image))
            item = _without_image(item)
        items.append(item)
        if len(tensors) >= batch_size:
            yield _batch(items, tensors, preprocessing)
            items, tensors = [], []
    if items:
        yield _batch(items, tensors, preprocessing)


def _batch(items, tensors, preprocessing: Preprocessing) -> Batch:
    tensor = preprocessing.normalise(torch.stack(tensors)) if tensors else None
    return Batch(items=list(items), tensor=tensor)


def _without_image(r: Radiograph) -> Radiograph:
    from dataclasses import replace

    return replace(r, image=r.image[:0, :0])  # keep shape bookkeeping cheap: the pixels are in the tensor
