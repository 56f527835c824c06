"""Stream inputs as batches: radiographs become one input tensor, other outcomes ride along in order.

Reading and decoding dominate the cost (a 2k x 2k JPEG 2000 radiograph takes 0.2-0.9 s to decode
on one core, the networks a few milliseconds on a GPU), so files are read in worker processes
that run ahead of inference. In flight at most ``workers * 4`` files: memory stays bounded
however large the folder is, and each worker returns only small preprocessed tensors.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch

from .gpu_decoding import MODES as GPU_DECODE_MODES, GpuDecoder, resolve_mode
from .outcome import InputOutcome
from .preprocessing import Preprocessing
from .processes import worker_context
from .radiograph import Radiograph, iter_input_files, read_files

#: Inputs this small are read in the calling process (a reader pool costs seconds to start).
IN_PROCESS_UP_TO = 8

#: Files a reader decodes in one GPU call when decoding on the GPU: one image per call leaves
#: the GPU mostly idle, and each reader's CUDA context gets the GPU only in turn.
GPU_FILES_PER_CALL = 8

#: Per reader process: its own GPU decoder (a CUDA context cannot cross processes). Set once by
#: :func:`_worker_init`; never used in the parent process.
_WORKER_GPU: list[GpuDecoder | None] = [None]


@dataclass(frozen=True)
class DecodeOptions:
    """How readers decode pixel data.

    ``gpu``: ``auto`` (nvImageCodec on the GPU where available), ``on`` (required) or ``off``;
    ``reduced_resolution``: decode large grey JPEG 2000 and 8-bit lossy JPEG at reduced resolution
    on the CPU (:func:`operators.decoding.decode_reduced`).
    """

    gpu: str = "off"
    reduced_resolution: bool = True

    def __post_init__(self) -> None:
        if self.gpu not in GPU_DECODE_MODES:
            raise ValueError(f"GPU decode mode must be one of {', '.join(GPU_DECODE_MODES)}, not {self.gpu!r}")


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


def default_workers() -> int:
    """Worker processes for reading: the cores this process may use, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def prepare_files(paths: list[Path], root: Path, preprocessing: Preprocessing, gpu: GpuDecoder | None = None,
                  reduced_resolution: bool = True) -> list[tuple[Radiograph | InputOutcome, torch.Tensor | None]]:
    """Read files (their GPU-suitable pixel data in one batch) and preprocess their radiographs:
    what a worker does (picklable in and out)."""
    out: list[tuple[Radiograph | InputOutcome, torch.Tensor | None]] = []
    for read in read_files(paths, root, max_side=preprocessing.max_side, gpu=gpu, reduced_resolution=reduced_resolution):
        if read.outcome is not None:
            out.append((read.outcome, None))
        else:
            out += [(replace(r, image=r.image[:0, :0]), preprocessing.square(r.image)) for r in read.radiographs]
    return out


def iter_prepared(root: Path, preprocessing: Preprocessing, workers: int = 0,
                  decode: DecodeOptions = DecodeOptions()) -> Iterator[tuple[Radiograph | InputOutcome, torch.Tensor | None]]:
    """Every input in order, read in ``workers`` processes (0: in this process), decoded as ``decode`` says.

    Inputs of at most :data:`IN_PROCESS_UP_TO` files are read in this process whatever ``workers``
    says, and a pool never has more processes than files: starting a reader costs about as much
    as decoding several radiographs (imports), which a one-study run should not pay. With GPU
    decoding a reader takes :data:`GPU_FILES_PER_CALL` files at a time, decoded in one GPU call.
    """
    files = iter_input_files(root)
    head = list(islice(files, max(workers, IN_PROCESS_UP_TO) + 1))  # a bounded peek, not a listing
    workers = 0 if len(head) <= IN_PROCESS_UP_TO else min(workers, len(head))
    files = chain(head, files)
    if workers <= 0:
        gpu = GpuDecoder.create(decode.gpu)
        for chunk in _chunks(files, GPU_FILES_PER_CALL if gpu else 1):
            yield from prepare_files(chunk, root, preprocessing, gpu, decode.reduced_resolution)
        return
    decode = replace(decode, gpu=resolve_mode(decode.gpu))  # decided here, once, not in every reader
    per_task = 1 if decode.gpu == "off" else GPU_FILES_PER_CALL
    # Workers each get one intra-op thread: parallelism comes from the processes.
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(decode.gpu,),
                             mp_context=worker_context()) as pool:
        pending: deque[Future] = deque()
        limit = workers * (4 if per_task == 1 else 2)  # tasks in flight per worker: reads ahead, bounded
        for chunk in _chunks(files, per_task):
            pending.append(pool.submit(_prepare_in_worker, chunk, root, preprocessing, decode.reduced_resolution))
            if len(pending) >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _chunks(items: Iterator[Path], n: int) -> Iterator[list[Path]]:
    while chunk := list(islice(items, n)):
        yield chunk


def _worker_init(gpu_decode: str = "off") -> None:
    torch.set_num_threads(1)
    _WORKER_GPU[0] = GpuDecoder.create(gpu_decode)


def _prepare_in_worker(paths: list[Path], root: Path, preprocessing: Preprocessing, reduced_resolution: bool):
    return prepare_files(paths, root, preprocessing, _WORKER_GPU[0], reduced_resolution)


def iter_batches(root: Path, preprocessing: Preprocessing, batch_size: int = 16, workers: int = 0,
                 decode: DecodeOptions = DecodeOptions()) -> Iterator[Batch]:
    """Read ``root`` lazily and yield batches of at most ``batch_size`` radiographs."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    items: list[Radiograph | InputOutcome] = []
    tensors: list[torch.Tensor] = []
    for item, tensor in iter_prepared(Path(root), preprocessing, workers, decode):
        items.append(item)
        if tensor is not None:
            tensors.append(tensor)
        if len(tensors) >= batch_size:
            yield _batch(items, tensors, preprocessing)
            items, tensors = [], []
    if items:
        yield _batch(items, tensors, preprocessing)


def _batch(items, tensors, preprocessing: Preprocessing) -> Batch:
    tensor = preprocessing.normalise(torch.stack(tensors)) if tensors else None
    if tensor is not None and torch.cuda.is_available():
        tensor = tensor.pin_memory()  # lets the copy to the GPU overlap (non_blocking)
    return Batch(items=list(items), tensor=tensor)
