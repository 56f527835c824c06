"""JPEG 2000 and JPEG pixel data decoded on a CUDA device with nvImageCodec, shrunk there.

A 2k x 2k lossless JPEG 2000 radiograph takes 0.2-0.9 s to decode on one CPU core while the
networks need a few milliseconds: on a GPU machine the decoder, not the network, sets the pace.
nvImageCodec (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg2k-cu13`` and ``nvidia-nvjpeg``)
decodes these on the GPU; the image is then averaged down to the model's working size on the
same device, so only a few hundred kilobytes cross back to the host.

Only what the GPU path reproduces is sent to it: unsigned grey images without a Modality LUT table
(a table must see full-resolution values), and RGB/YBR colour ones (turned to RGB, as pydicom does). Everything else, and any file the
GPU decoder refuses, goes through the CPU decoders of :mod:`operators.input.decoding` unchanged.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import pydicom

from .decoding import JPEG2000_SYNTAXES, DecodedPixels, code_streams, full_resolution_reason, transfer_syntax
from ..outcome import short_reason

logger = logging.getLogger(__name__)

#: Transfer syntaxes nvImageCodec decodes on the GPU (nvJPEG2000 and nvJPEG), by UID.
GPU_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless",
    **JPEG2000_SYNTAXES,
}

MODES = ("auto", "on", "off")


class GpuDecodeUnavailable(RuntimeError):
    """GPU decoding was required (mode ``on``) but nvImageCodec or CUDA is missing."""


def gpu_suitable(ds: pydicom.Dataset) -> str | None:
    """Why ``ds`` stays on the CPU decoders, or ``None`` when the GPU path reproduces it exactly."""
    try:
        ts = str(transfer_syntax(ds))
    except Exception as e:
        return short_reason(e)
    if ts not in GPU_TRANSFER_SYNTAXES:
        return "transfer syntax not decoded on the GPU"
    if int(ds.get("SamplesPerPixel", 1) or 1) not in (1, 3):
        return "neither one nor three samples per pixel"
    if int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16) > 16:
        return "more than 16 bits stored"
    return full_resolution_reason(ds)


def unavailable_reason() -> str | None:
    """Why GPU decoding cannot run in this environment, or ``None`` when it can (no CUDA context made)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return "nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg2k-cu13 nvidia-nvjpeg)"
    return None


def resolve_mode(mode: str) -> str:
    """``mode`` where GPU decoding can run here, else ``off`` (``auto``, said once in the log).

    Raises
    ------
    ValueError
        Unknown mode.
    GpuDecodeUnavailable
        Mode ``on`` without a CUDA device or without nvImageCodec.
    """
    if mode not in MODES:
        raise ValueError(f"GPU decode mode must be one of {', '.join(MODES)}, not {mode!r}")
    reason = None if mode == "off" else unavailable_reason()
    if reason is None:
        return mode
    _turn_off(mode, reason)
    return "off"


def _turn_off(mode: str, reason: str) -> None:
    """GPU decoding cannot run: an error where it was required (``on``), a log line where not."""
    if mode == "on":
        raise GpuDecodeUnavailable(f"GPU decoding requested but unavailable: {reason}")
    logger.info("GPU decoding off: %s", reason)


@dataclass
class GpuDecoder:
    """An nvImageCodec decoder bound to one CUDA device (one per process: it holds a CUDA context).

    Build it with :meth:`create`, which returns ``None`` (and says why) where the GPU path cannot run.
    """

    decoder: object
    grey_params: object  # stored values as they are
    colour_params: object  # YBR turned to RGB, as pydicom's decoders do
    device: "torch.device"  # noqa: F821 - torch is imported lazily

    @classmethod
    def create(cls, mode: str = "auto", device: str = "cuda") -> "GpuDecoder | None":
        """A decoder for ``mode`` ``auto`` (when available), ``on`` (required) or ``off`` (never).

        Raises
        ------
        ValueError
            Unknown mode.
        GpuDecodeUnavailable
            Mode ``on`` without a CUDA device or without nvImageCodec.
        """
        if resolve_mode(mode) == "off":
            return None
        try:
            import torch
            from nvidia import nvimgcodec

            dev = torch.device(device)
            with torch.cuda.device(dev):  # nvImageCodec's default device is the current one
                decoder = nvimgcodec.Decoder(device_id=torch.cuda.current_device())
            grey = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED)
            colour = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.SRGB)
            return cls(decoder, grey, colour, dev)
        except Exception as e:  # CUDA or library initialisation errors come in many types
            _turn_off(mode, f"nvImageCodec could not start: {short_reason(e)}")
        return None

    def decode_many(self, datasets: list[pydicom.Dataset], max_side: int | None) -> list[DecodedPixels | None]:
        """Decode every frame of every suitable dataset in one nvImageCodec call per colour kind
        (a batch fills the GPU; single images leave it mostly idle), averaged down to ``max_side``
        on the GPU. ``None`` for a dataset that is not :func:`gpu_suitable` or that the GPU refused
        or gave at the wrong size: the caller decodes that one on the CPU. Never raises.

        The frames come back as float32 stored values (no LUT applied; colour as RGB), already
        shrunk as :func:`operators.input.grey.area_downsample` would have shrunk them on the CPU.
        """
        out: list[DecodedPixels | None] = [None] * len(datasets)
        jobs: dict[bool, list[tuple[int, list[bytes], tuple[int, ...]]]] = {False: [], True: []}  # colour -> jobs
        for i, ds in enumerate(datasets):
            if gpu_suitable(ds) is not None:
                continue
            try:
                streams = list(code_streams(ds))
            except Exception as e:  # noqa: BLE001 - the CPU decoders will say what is wrong
                logger.debug("no GPU decoding for SOP Instance %s: %s", ds.get("SOPInstanceUID"), short_reason(e))
                continue
            rows, cols, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1)
            jobs[samples != 1].append((i, streams, (rows, cols) if samples == 1 else (rows, cols, samples)))
        for colour, todo in jobs.items():
            if todo:
                self._decode_batch(datasets, todo, colour, max_side, out)
        return out

    def _decode_batch(self, datasets, todo, colour: bool, max_side: int | None, out: list) -> None:
        import torch

        from .grey import pool_to_side

        streams = [s for _, frames, _ in todo for s in frames]
        try:
            with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
                images = iter(self.decoder.decode(streams, params=self.colour_params if colour else self.grey_params))
                for i, frames, shape in todo:
                    pooled, ok = [], True
                    for _ in frames:  # consume this dataset's images even after a bad one
                        image = next(images)
                        if image is None or not ok:
                            ok = False
                            continue
                        t = torch.from_dlpack(image)
                        if t.ndim == 3 and t.shape[-1] == 1:
                            t = t[..., 0]
                        if tuple(t.shape) != shape:
                            ok = False
                            continue
                        pooled.append(pool_to_side(t.float(), max_side))
                    if ok:
                        name = GPU_TRANSFER_SYNTAXES[str(transfer_syntax(datasets[i]))]
                        out[i] = DecodedPixels(torch.stack(pooled).cpu().numpy(), f"nvImageCodec GPU ({name})")
                    else:
                        logger.debug("GPU decoding refused SOP Instance %s: CPU fallback", datasets[i].get("SOPInstanceUID"))
        except Exception as e:  # noqa: BLE001 - the whole call failed: every file of it goes to the CPU
            logger.debug("GPU batch decoding failed (%d files), CPU fallback: %s", len(todo), short_reason(e))
            for i, _, _ in todo:
                out[i] = None
