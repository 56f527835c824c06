"""Pixel decoding: pydicom's plugins with faster decoders first where they give the same values,
a lenient fallback for real-archive JPEG files, and reduced-resolution JPEG 2000 and JPEG.

pydicom's plugins (pylibjpeg, GDCM, Pillow, its own RLE and native readers) decode every standard
transfer syntax. Some real 12-bit JPEG extended files carry scan parameters that those strict
decoders refuse (NEMA WG04 ``*_JPLY``); libjpeg-turbo through imagecodecs decodes them with a
warning, so we fall back to it frame by frame and record that a lenient decoder was used.

The models need a few hundred pixels, and a JPEG 2000 code stream holds its image at every
power-of-two resolution: decoding only the resolution levels that are needed (OpenJPEG through
Pillow's ``reduce``) skips most of the work, 3-4x at half resolution (:func:`decode_reduced_jpeg2000`);
lossy JPEG likewise skips part of its inverse DCT at 1/2, 1/4 or 1/8 scale (:func:`decode_reduced_jpeg`).
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

from ..outcome import short_reason

# JPEG process 1 (baseline), 2/4 (extended), 14 (lossless) and 14 SV1: what libjpeg-turbo reads.
_LENIENT_JPEG = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}


#: JPEG lossless (process 14): libjpeg-turbo 3 through imagecodecs decodes it in 0.38x GDCM's time
#: (pydicom's first choice; ``benchmarks/decoders.py``, 2026-12-01), bit for bit the same on the
#: corpus; both decode truncated code streams as far as they go, so neither is stricter.
_LOSSLESS_JPEG = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}


#: JPEG 2000 and HTJ2K transfer syntaxes (OpenJPEG reads both), by UID.
JPEG2000_SYNTAXES = {
    "1.2.840.10008.1.2.4.90": "JPEG 2000",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K",
    "1.2.840.10008.1.2.4.202": "HTJ2K",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}

#: Where several pydicom plugins decode a syntax, the fastest where that is clear-cut
#: (``benchmarks/decoders.py``, 15 interleaved rounds on the corpus, 2-core Xeon, 2026-12-01):
#: CharLS through pyjpegls takes 0.60-0.68x GDCM's time for JPEG-LS (pydicom's first choice),
#: its slowest quartile faster than GDCM's fastest. Elsewhere pydicom's order is kept: GDCM
#: fastest for JPEG 2000 lossless (OpenJPEG 1.28x, Pillow 1.34x), OpenJPEG and GDCM overlapping
#: for lossy JPEG 2000 (0.86x, quartiles 0.76-1.03: not clear-cut), pylibjpeg-rle for RLE (pydicom's
#: own 5.4x). JPEG lossless goes to libjpeg-turbo first (0.38x GDCM, :func:`_lossless_jpeg`).
PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
}

logger = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """Pixel data that no available decoder could turn into an image."""


@dataclass(frozen=True)
class DecodedPixels:
    """Stored pixel values as decoded, before any LUT.

    ``frames`` has shape (frames, rows, columns) or (frames, rows, columns, samples); ``decoder``
    names what decoded them and ``lenient`` is true when only a lenient fallback could. Decoders
    that shrink while decoding (GPU, reduced resolution) return fewer rows and columns
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


def code_streams(ds: pydicom.Dataset):
    """The encapsulated frames of ``ds``, one code stream each (an iterator)."""
    return generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))


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
    fast = _lossless_jpeg(ds, ts)
    if fast is not None:
        return fast
    try:
        # With a lenient fallback at hand, the strict plugins' tracebacks are noise, not news.
        with _quiet(logging.getLogger("pydicom")) if ts in _LENIENT_JPEG else nullcontext():
            arr, plugin = _pixel_array(ds, ts)
        decoder = "pydicom" if not ts.is_compressed else f"pydicom ({_plugin_family(ts)}{', ' + plugin if plugin else ''})"
        return DecodedPixels(_with_frame_axis(arr, ds, frames_expected), decoder)
    except Exception as strict_error:  # the plugins raise many types; we report the message
        if ts in _LENIENT_JPEG:
            try:
                return DecodedPixels(_libjpeg_turbo(ds), "imagecodecs libjpeg-turbo (lenient)", True)
            except Exception as lenient_error:
                raise DecodeError(
                    f"{ts.name}: strict decoders failed ({short_reason(strict_error)}); "
                    f"lenient decoder failed too ({short_reason(lenient_error)})"
                ) from lenient_error
        raise DecodeError(f"cannot decode {ts.name} pixel data: {short_reason(strict_error)}") from strict_error


def _pixel_array(ds: pydicom.Dataset, ts: UID) -> tuple[np.ndarray, str | None]:
    """``ds.pixel_array`` through the preferred plugin where it is installed (and its name);
    pydicom's own order (and ``None``) if it is not, or if it refuses the data."""
    plugin = PREFERRED_PLUGINS.get(str(ts))
    if plugin:
        from pydicom.pixels import get_decoder

        if plugin in get_decoder(ts).available_plugins:
            try:
                ds.pixel_array_options(decoding_plugin=plugin)
                return ds.pixel_array, plugin
            except Exception as e:  # noqa: BLE001 - the other plugins get their chance below
                logger.debug("%s could not decode SOP Instance %s: %s", plugin, ds.get("SOPInstanceUID"), short_reason(e))
            finally:
                ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array, None


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


def _lossless_jpeg(ds: pydicom.Dataset, ts: UID) -> DecodedPixels | None:
    """Grey unsigned JPEG lossless through libjpeg-turbo; ``None`` where that does not apply or
    fails (pydicom's plugins then decode it)."""
    if str(ts) not in _LOSSLESS_JPEG or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None  # pydicom's decoders apply the sign
    try:
        return DecodedPixels(_libjpeg_turbo(ds), "imagecodecs libjpeg-turbo (JPEG lossless)")
    except Exception as e:  # noqa: BLE001 - the plugins get their turn
        logger.debug("libjpeg-turbo could not decode SOP Instance %s: %s", ds.get("SOPInstanceUID"), short_reason(e))
        return None


def _libjpeg_turbo(ds: pydicom.Dataset) -> np.ndarray:
    import imagecodecs  # optional heavy import, only on this path

    decoded = []
    for frame in code_streams(ds):
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
    much the input stage shrinks an image (:func:`operators.input.grey.pool_to_side`)."""
    return math.ceil(max(shape) / max_side) if max_side else 1


#: Lossy JPEG processes whose 8-bit images libjpeg decodes at 1/2, 1/4 or 1/8 scale (DCT scaling).
JPEG_DCT_SCALABLE = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}


def full_resolution_reason(ds: pydicom.Dataset) -> str | None:
    """Why pixel values must be decoded at full resolution before any LUT, or ``None``.

    A decoder that shrinks while decoding (reduced resolution, the GPU path) averages stored
    values; that commutes with linear rescaling and windowing, not with a Modality LUT table, and
    signed values need the sign handling of the full decoders.
    """
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return "signed pixel values"
    if "ModalityLUTSequence" in ds:
        return "Modality LUT table needs full-resolution values"
    return None


def reduction_level(shape: tuple[int, int], max_side: int | None) -> int:
    """How many halvings a decoder may apply and still leave the longest side at least ``max_side``."""
    factor = shrink_factor(shape, max_side)
    return int(math.floor(math.log2(factor))) if factor > 1 else 0


def decode_reduced(ds: pydicom.Dataset, max_side: int | None) -> DecodedPixels | None:
    """Decode a large grey image at reduced resolution where its code stream allows it.

    JPEG 2000 at a lower resolution level (:func:`decode_reduced_jpeg2000`), 8-bit lossy JPEG
    with DCT scaling (:func:`decode_reduced_jpeg`). Returns ``None`` where neither applies or the
    decoder refuses; the full decoders then take the file.
    """
    if not max_side or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or full_resolution_reason(ds):
        return None
    level = reduction_level((int(ds.Rows), int(ds.Columns)), max_side)
    if level < 1:
        return None
    ts = str(transfer_syntax(ds))
    if ts in JPEG2000_SYNTAXES:
        return decode_reduced_jpeg2000(ds, level)
    if ts in JPEG_DCT_SCALABLE and int(ds.get("BitsAllocated", 8) or 8) == 8:
        return decode_reduced_jpeg(ds, min(level, 3))
    return None


def decode_reduced_jpeg2000(ds: pydicom.Dataset, level: int) -> DecodedPixels | None:
    """Decode a grey unsigned JPEG 2000 image ``level`` resolution levels down (fewer where the
    code stream has fewer), every frame at the same level; ``None`` where OpenJPEG refuses."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames, levels_used = [], set()
    try:
        from PIL import Image

        for stream in code_streams(ds):
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
            if arr.shape != (math.ceil(rows / 2**r), math.ceil(cols / 2**r)):
                return None
            frames.append(arr)
    except Exception as e:  # OpenJPEG refuses some reduced decodes ("broken data stream"): full decode instead
        logger.debug("reduced JPEG 2000 decoding not used for SOP Instance %s: %s", ds.get("SOPInstanceUID"), short_reason(e))
        return None
    if not frames:
        return None
    return DecodedPixels(np.stack(frames), f"OpenJPEG via Pillow (JPEG 2000 at 1/{2**r} resolution)")


def decode_reduced_jpeg(ds: pydicom.Dataset, level: int) -> DecodedPixels | None:
    """Decode a grey 8-bit lossy JPEG image at 1/2**``level`` scale (libjpeg's scaled inverse DCT,
    through Pillow's draft mode); ``None`` where the stream is not one libjpeg scales this way."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    expected = (math.ceil(rows / 2**level), math.ceil(cols / 2**level))
    frames = []
    try:
        from PIL import Image

        for stream in code_streams(ds):
            with Image.open(io.BytesIO(stream)) as im:
                if im.mode != "L" or im.size != (cols, rows):
                    return None
                # Pillow picks the scale by floor division: ask for the floor, get libjpeg's ceiling
                im.draft("L", (cols // 2**level, rows // 2**level))
                arr = np.asarray(im)
            if arr.shape != expected:
                return None
            frames.append(arr)
    except Exception as e:
        logger.debug("reduced JPEG decoding not used for SOP Instance %s: %s", ds.get("SOPInstanceUID"), short_reason(e))
        return None
    if not frames:
        return None
    return DecodedPixels(np.stack(frames), f"libjpeg via Pillow (JPEG at 1/{2**level} scale)")


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
