"""Pixel decoding with a lenient fallback for real-archive JPEG files, and reduced-resolution JPEG 2000.

pydicom's plugins (pylibjpeg, GDCM, Pillow, its own RLE and native readers) decode every standard
transfer syntax. Some real 12-bit JPEG extended files carry scan parameters that those strict
decoders refuse (NEMA WG04 ``*_JPLY``); libjpeg-turbo through imagecodecs decodes them with a
warning, so we fall back to it frame by frame and record that a lenient decoder was used.

The models need a few hundred pixels, and a JPEG 2000 code stream holds its image at every
power-of-two resolution: decoding only the resolution levels that are needed (OpenJPEG through
Pillow's ``reduce``) skips most of the work, 3-4x at half resolution (:func:`decode_reduced_jpeg2000`).
"""

from __future__ import annotations

import io
import logging
import math
import struct
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from .outcome import short_reason

# JPEG process 1 (baseline), 2/4 (extended), 14 (lossless) and 14 SV1: what libjpeg-turbo reads.
_LENIENT_JPEG = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}


#: JPEG 2000 and HTJ2K transfer syntaxes (OpenJPEG reads both).
JPEG2000_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}

logger = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """Pixel data that no available decoder could turn into an image."""


@dataclass(frozen=True)
class DecodedPixels:
    """Stored pixel values as decoded, before any LUT.

    ``frames`` has shape (frames, rows, columns) or (frames, rows, columns, samples); ``decoder``
    names what decoded them and ``lenient`` is true when only a lenient fallback could. Decoders
    that shrink while decoding (GPU, reduced-resolution JPEG 2000) return fewer rows and columns
    than the header states; the input stage shrinks what remains to its working size.
    """

    frames: np.ndarray
    decoder: str
    lenient: bool = False


def transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        raise DecodeError("no Transfer Syntax UID")
    return UID(uid)


def decode_pixels(ds: pydicom.Dataset) -> DecodedPixels:
    """Decode all frames of ``ds`` into stored values (YBR colour already turned to RGB).

    Raises
    ------
    DecodeError
        With the transfer syntax and the decoders' own reasons.
    """
    if "PixelData" not in ds:
        raise DecodeError("no Pixel Data")
    ts = transfer_syntax(ds)
    frames_expected = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        # With a lenient fallback at hand, the strict plugins' tracebacks are noise, not news.
        with _quiet(logging.getLogger("pydicom")) if ts in _LENIENT_JPEG else nullcontext():
            arr = ds.pixel_array
        decoder = "pydicom" if not ts.is_compressed else f"pydicom ({_plugin_family(ts)})"
        return DecodedPixels(_with_frame_axis(arr, ds, frames_expected), decoder)
    except Exception as strict_error:  # the plugins raise many types; we report the message
        if ts in _LENIENT_JPEG:
            try:
                return DecodedPixels(_lenient_jpeg(ds, frames_expected), "imagecodecs libjpeg-turbo (lenient)", True)
            except Exception as lenient_error:
                raise DecodeError(
                    f"{ts.name}: strict decoders failed ({short_reason(strict_error)}); "
                    f"lenient decoder failed too ({short_reason(lenient_error)})"
                ) from lenient_error
        raise DecodeError(f"cannot decode {ts.name} pixel data: {short_reason(strict_error)}") from strict_error


@contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _plugin_family(ts: UID) -> str:
    if "2000" in ts.name:
        return "JPEG 2000"
    if "LS" in ts.name:
        return "JPEG-LS"
    if "RLE" in ts.name:
        return "RLE"
    if "Deflate" in ts.name:
        return "deflate"
    return "JPEG"


def _with_frame_axis(arr: np.ndarray, ds: pydicom.Dataset, frames: int) -> np.ndarray:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    single_ndim = 2 if samples == 1 else 3
    return arr[np.newaxis] if arr.ndim == single_ndim else arr


def _lenient_jpeg(ds: pydicom.Dataset, frames_expected: int) -> np.ndarray:
    import imagecodecs  # optional heavy import, only on this path

    decoded = []
    for frame in generate_frames(ds.PixelData, number_of_frames=frames_expected):
        img = imagecodecs.jpeg8_decode(frame)
        decoded.append(np.asarray(img))
    if not decoded:
        raise DecodeError("no frames in encapsulated Pixel Data")
    arr = np.stack(decoded)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.shape[1:3] != (rows, cols):
        raise DecodeError(f"decoded size {arr.shape[1:3]} differs from Rows x Columns {(rows, cols)}")
    return arr


def shrink_factor(shape: tuple[int, int], max_side: int | None) -> int:
    """The smallest integer factor that brings the longest side of ``shape`` to ``max_side``: how
    much the input stage shrinks an image (:func:`operators.radiograph.pool_to_side`)."""
    return math.ceil(max(shape) / max_side) if max_side else 1


def decode_reduced_jpeg2000(ds: pydicom.Dataset, max_side: int | None) -> DecodedPixels | None:
    """Decode a grey JPEG 2000 image at the lowest resolution level still at least ``max_side``/2.

    Returns ``None`` where this does not apply or fails (the full decoders then take the file):
    not JPEG 2000, colour, signed, a Modality LUT table (it must see full-resolution values), an
    image small enough already, or a code stream OpenJPEG's reduced decoding refuses.
    """
    if not max_side or str(transfer_syntax(ds)) not in JPEG2000_SYNTAXES:
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    if "ModalityLUTSequence" in ds:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    factor = shrink_factor((rows, cols), max_side)
    level = int(math.floor(math.log2(factor))) if factor > 1 else 0
    if level < 1:
        return None
    frames, levels_used = [], set()
    try:
        from PIL import Image

        for stream in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)):
            precision, signed, levels = _j2k_header(stream)
            r = min(level, levels)
            levels_used.add(r)
            if signed or r < 1 or len(levels_used) > 1:  # frames of one file must come out the same size
                return None
            with Image.open(io.BytesIO(stream)) as im:
                im.reduce = r
                im.load()
                arr = np.asarray(im)
            if im.mode == "I;16" and precision < 16:
                arr = arr >> (16 - precision)  # Pillow scales samples up to 16 bits
            elif im.mode not in ("L", "I;16"):
                return None
            expected = (math.ceil(rows / 2**r), math.ceil(cols / 2**r))
            if arr.shape != expected:
                return None
            frames.append(arr)
    except Exception as e:  # OpenJPEG refuses some reduced decodes ("broken data stream"): full decode instead
        logger.debug("reduced JPEG 2000 decoding not used for SOP Instance %s: %s", ds.get("SOPInstanceUID"), short_reason(e))
        return None
    if not frames:
        return None
    return DecodedPixels(np.stack(frames), f"OpenJPEG via Pillow (JPEG 2000 at 1/{2**r} resolution)")


def _j2k_header(stream: bytes) -> tuple[int, bool, int]:
    """(precision, signed, decomposition levels) of a one-component code stream's SIZ and COD markers."""
    siz = stream.find(b"\xff\x51")
    cod = stream.find(b"\xff\x52")
    if siz < 0 or cod < 0:
        raise DecodeError("no SIZ or COD marker in the JPEG 2000 code stream")
    (components,) = struct.unpack(">H", stream[siz + 38:siz + 40])
    if components != 1:
        raise DecodeError(f"{components} components")
    ssiz = stream[siz + 40]
    return (ssiz & 0x7F) + 1, bool(ssiz & 0x80), stream[cod + 9]
