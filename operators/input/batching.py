"""Stream inputs as batches: radiographs become one input tensor, other outcomes ride along in order.

Reading and decoding dominate the cost (a 2k x 2k JPEG 2000 radiograph takes 0.2-0.9 s to decode
on one core, the networks a few milliseconds on a GPU), so files are read in reader processes
that run ahead of inference. In flight at most ``workers * 4`` files: memory stays bounded
however large the folder is, and each reader returns only small preprocessed tensors. Reader
processes also contain what damaged files do to native decoders (crashes, aborts, endless
loops, huge allocations): :mod:`operators.input.reader_pool`.
"""

from __future__ import annotations

import logging
import os
import re
import resource
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .gpu_decoding import MODES as GPU_DECODE_MODES, GpuDecoder, resolve_mode
from .image_limits import ImageLimits
from ..outcome import InputOutcome, Status
from .preprocessing import Preprocessing
from .processes import worker_context
from .discovery import iter_input_files, relative_source
from .radiograph import Radiograph, read_files
from .reader_pool import ReaderPool

log = logging.getLogger("bodypart")

#: Memory a reader may take beyond what it holds after its imports, in multiples of the largest
#: image it decodes (decoder buffers, the stored values, float copies), plus 1 GiB: a decoder
#: that asks for more gets an allocation failure (the file fails) instead of the OOM killer.
READER_MEMORY_FACTOR = 4

#: Files a reader decodes in one GPU call when decoding on the GPU: one image per call leaves
#: the GPU mostly idle, and each reader's CUDA context gets the GPU only in turn.
GPU_FILES_PER_CALL = 8

#: Per reader process: its own GPU decoder (a CUDA context cannot cross processes). Set once by
#: :func:`_reader_init`; never used in the parent process.
_WORKER_GPU: list[GpuDecoder | None] = [None]
_WORKER_STARTED = [False]


@dataclass(frozen=True)
class DecodeOptions:
    """How readers find, check and decode inputs.

    ``gpu``: ``auto`` (nvImageCodec on the GPU where available), ``on`` (required) or ``off``;
    ``reduced_resolution``: decode large grey JPEG 2000 and 8-bit lossy JPEG at reduced resolution
    on the CPU (:func:`operators.input.decoding.decode_reduced`); ``follow_links``: read through links to
    outside the input folder; ``seconds_per_file``: a reader that takes longer on one file is
    stopped and the file fails (``None``: no limit); ``limits``: the largest image decoded;
    ``gpu_device``: the CUDA device GPU decoding runs on (the networks' device, ``cuda:1`` say).
    """

    gpu: str = "off"
    gpu_device: str = "cuda"
    reduced_resolution: bool = True
    follow_links: bool = False
    seconds_per_file: float | None = 120.0
    limits: ImageLimits = ImageLimits()

    def __post_init__(self) -> None:
        if self.gpu not in GPU_DECODE_MODES:
            raise ValueError(f"GPU decode mode must be one of {', '.join(GPU_DECODE_MODES)}, not {self.gpu!r}")
        if not re.fullmatch(r"cuda(:\d+)?", self.gpu_device):
            raise ValueError(f"GPU decoding runs on a CUDA device (cuda or cuda:N), not {self.gpu_device!r}")
        if self.seconds_per_file is not None and not self.seconds_per_file > 0:
            raise ValueError(f"seconds_per_file must be positive, not {self.seconds_per_file!r}")


@dataclass
class Batch:
    """Up to ``batch_size`` radiographs (with their input tensor) plus the files that gave none.

    ``items`` keeps input order; ``tensor`` rows follow the radiographs among them. Grey images
    are dropped once preprocessed so a batch holds only small tensors. ``last`` marks the empty
    batch that follows the last input: the writers finish (SRs, ``results.json``) when it
    arrives, inside the data flow, so a fault there is still recorded in the results.
    """

    items: list[Radiograph | InputOutcome] = field(default_factory=list)
    tensor: torch.Tensor | None = None
    last: bool = False

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
                  decode: DecodeOptions = DecodeOptions()) -> list[tuple[Radiograph | InputOutcome, torch.Tensor | None]]:
    """Read files (their GPU-suitable pixel data in one batch) and preprocess their radiographs:
    what a reader does (picklable in and out)."""
    out: list[tuple[Radiograph | InputOutcome, torch.Tensor | None]] = []
    for read in read_files(paths, root, max_side=preprocessing.max_side, gpu=gpu, reduced_resolution=decode.reduced_resolution,
                           follow_links=decode.follow_links, limits=decode.limits):
        if read.outcome is not None:
            out.append((read.outcome, None))
        else:
            out += [(replace(r, image=r.image[:0, :0]), preprocessing.square(r.image)) for r in read.radiographs]
    return out


def iter_prepared(root: Path, preprocessing: Preprocessing, workers: int = 0, decode: DecodeOptions = DecodeOptions(),
                  files: Iterable[Path] | None = None) -> Iterator[tuple[Radiograph | InputOutcome, torch.Tensor | None]]:
    """Every input in order, read in ``workers`` reader processes (0: in this process), decoded as ``decode`` says.

    In this process a native decoder that crashes on a damaged file takes the caller down with
    it, and there is no time limit: use it for trusted files and debugging. With readers a pool
    never has more processes than files (a one-study run starts one reader). With GPU decoding a
    reader takes :data:`GPU_FILES_PER_CALL` files at a time, decoded in one GPU call. ``files``:
    the entries under ``root`` to read (a resumed scan leaves out those done), default all.
    """
    files = iter(files) if files is not None else iter_input_files(root, decode.follow_links)
    if workers <= 0:
        gpu = GpuDecoder.create(decode.gpu, decode.gpu_device)
        for chunk in _chunks(files, GPU_FILES_PER_CALL if gpu else 1):
            yield from prepare_files(chunk, root, preprocessing, gpu, decode)
        return
    head = list(islice(files, workers))  # a bounded peek, not a listing
    workers = max(1, min(workers, len(head)))
    files = chain(head, files)
    decode = replace(decode, gpu=resolve_mode(decode.gpu))  # decided here, once, not in every reader
    per_task = 1 if decode.gpu == "off" else GPU_FILES_PER_CALL

    def failed(paths: list[Path], reason: str) -> list[tuple[InputOutcome, None]]:
        return [(InputOutcome(relative_source(p, root), Status.FAILED, reason), None) for p in paths]

    with ReaderPool(workers, prepare_in_reader, failed, worker_context(), args=(root, preprocessing, decode),
                    initializer=_reader_init, initargs=(decode.gpu, decode.gpu_device, decode.limits, logging.getLogger("bodypart").isEnabledFor(logging.DEBUG)),
                    seconds_per_item=decode.seconds_per_file) as pool:
        read_ahead = workers * (4 if per_task == 1 else 2)  # tasks in flight per reader: reads ahead, bounded
        for prepared in pool.imap(_chunks(files, per_task), read_ahead):
            yield from prepared


def _chunks(items: Iterator[Path], n: int) -> Iterator[list[Path]]:
    while chunk := list(islice(items, n)):
        yield chunk


def _reader_init(gpu_decode: str = "off", gpu_device: str = "cuda", limits: ImageLimits = ImageLimits(),
                 verbose: bool = False) -> None:
    from ..outputs.report import quiet_pydicom

    torch.set_num_threads(1)  # parallelism comes from the processes
    quiet_pydicom(verbose)
    _WORKER_GPU[0] = GpuDecoder.create(gpu_decode, gpu_device)  # before the cap: CUDA maps a lot
    limit_reader_memory(limits)
    try:  # when memory runs out, the kernel should take a reader (one file lost), not the app
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass


def limit_reader_memory(limits: ImageLimits) -> int | None:
    """Cap this process's data segment at what it holds now plus room for the largest image
    (``RLIMIT_DATA``); returns the cap in bytes, or ``None`` where it cannot be set."""
    try:
        with open("/proc/self/status") as fh:
            data_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        return None
    cap = data_kb * 1024 + READER_MEMORY_FACTOR * limits.max_decoded_bytes + (1 << 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (ValueError, OSError):
        return None
    return cap


def start_reader(decode: DecodeOptions) -> None:
    """Make this process a reader once (as :func:`_reader_init` does for the reader pool's): for
    workers that a scheduler such as Ray starts and reuses."""
    if _WORKER_STARTED[0]:
        return
    _reader_init(resolve_mode(decode.gpu), decode.gpu_device, decode.limits, logging.getLogger("bodypart").isEnabledFor(logging.DEBUG))
    _WORKER_STARTED[0] = True


def prepare_in_reader(paths: list[Path], root: Path, preprocessing: Preprocessing, decode: DecodeOptions):
    """:func:`prepare_files` with this reader's GPU decoder (set once by :func:`_reader_init`)."""
    return prepare_files(paths, root, preprocessing, _WORKER_GPU[0], decode)


def iter_batches(root: Path, preprocessing: Preprocessing, batch_size: int = 16, workers: int = 0,
                 decode: DecodeOptions = DecodeOptions(), files: Iterable[Path] | None = None) -> Iterator[Batch]:
    """Read ``root`` (or ``files`` under it) lazily and yield batches of at most ``batch_size`` radiographs."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    items: list[Radiograph | InputOutcome] = []
    tensors: list[torch.Tensor] = []
    for item, tensor in iter_prepared(Path(root), preprocessing, workers, decode, files):
        items.append(item)
        if tensor is not None:
            tensors.append(tensor)
        if len(tensors) >= batch_size:
            yield make_batch(items, tensors, preprocessing)
            items, tensors = [], []
    if items:
        yield make_batch(items, tensors, preprocessing)


def make_batch(items: list[Radiograph | InputOutcome], tensors: list[torch.Tensor], preprocessing: Preprocessing) -> Batch:
    """A batch of prepared items and their radiographs' tensors (normalised here, once per batch)."""
    tensor = preprocessing.normalise(torch.stack(tensors)) if tensors else None
    if tensor is not None and torch.cuda.is_available():
        tensor = tensor.pin_memory()  # lets the copy to the GPU overlap (non_blocking)
    return Batch(items=list(items), tensor=tensor)
