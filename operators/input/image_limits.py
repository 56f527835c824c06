"""Checks of an image's header and code streams before any decoder allocates memory for it.

A damaged or hostile file can claim 60,000 x 60,000 pixels, 10,000 frames or 64-bit samples;
decoders believe the header (or their code stream's own header) and allocate first. These checks
read only header values and the first bytes of each code stream, and refuse what no radiograph
needs or what the code stream contradicts (which is also what makes some native decoders abort
the process instead of raising: GDCM on a component count that differs from Samples per Pixel).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pydicom

from .decoding import DecodeError, code_streams, transfer_syntax

#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: JPEG-LS start of frame (ISO 14495-1).
_JPEG_LS_SOF = 0xF7


class ImageHeaderError(DecodeError):
    """An image header or code stream that the checks refuse; the message is the reason."""


@dataclass(frozen=True)
class ImageLimits:
    """What the input stage decodes at most, per file.

    The largest real radiographs are about 25 megapixels (43 x 35 cm at 0.1 mm, long-leg and
    whole-spine stitches); multi-frame projection images have tens of frames.
    """

    max_pixels_per_frame: int = 60_000_000
    max_frames: int = 1_000
    max_decoded_bytes: int = 1 << 30
    #: Shorter sides are icons or damage, not radiographs (the smallest real films here are 100 px).
    min_side: int = 16

    def describe(self) -> str:
        return (f"at most {self.max_pixels_per_frame / 1e6:g} megapixels a frame, {self.max_frames} frames and "
                f"{self.max_decoded_bytes / 2**30:g} GiB of decoded pixels a file")


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise ImageHeaderError(f"no {keyword} in an image")
            return default
        return int(value)
    except ImageHeaderError:
        raise
    except Exception:
        raise ImageHeaderError(f"{keyword} is not a whole number") from None


def check_image_header(ds: pydicom.Dataset, limits: ImageLimits = ImageLimits()) -> None:
    """Refuse image attributes that are impossible or beyond ``limits``, before any decoding.

    Raises
    ------
    ImageHeaderError
        Naming the attribute and its value.
    """
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1)
    samples = _int(ds, "SamplesPerPixel", 1)
    allocated = _int(ds, "BitsAllocated")
    stored = _int(ds, "BitsStored", allocated)
    representation = _int(ds, "PixelRepresentation", 0)
    if min(rows, columns) < limits.min_side:
        raise ImageHeaderError(f"image of {columns} x {rows} pixels is too small to be a radiograph")
    if frames < 1:
        raise ImageHeaderError(f"Number of Frames {frames}")
    if rows * columns > limits.max_pixels_per_frame:
        raise ImageHeaderError(f"image claims {columns} x {rows} pixels, over the limit of "
                               f"{limits.max_pixels_per_frame / 1e6:g} megapixels (refused before decoding)")
    if frames > limits.max_frames:
        raise ImageHeaderError(f"image claims {frames} frames, over the limit of {limits.max_frames} (refused before decoding)")
    if samples not in (1, 3):
        raise ImageHeaderError(f"Samples per Pixel {samples} (1 or 3 expected)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    implied = 1 if photometric.startswith(("MONOCHROME", "PALETTE")) else 3 if photometric.startswith(("RGB", "YBR")) else None
    if implied is not None and implied != samples:
        # GDCM aborts the process on this mismatch rather than raising
        raise ImageHeaderError(f"Photometric Interpretation {photometric} with Samples per Pixel {samples}")
    if allocated not in (1, 8, 16, 32):
        raise ImageHeaderError(f"Bits Allocated {allocated} (1, 8, 16 or 32 expected)")
    if not 1 <= stored <= allocated:
        raise ImageHeaderError(f"Bits Stored {stored} with Bits Allocated {allocated}")
    if representation not in (0, 1):
        raise ImageHeaderError(f"Pixel Representation {representation}")
    decoded = rows * columns * frames * samples * max(allocated, 8) // 8
    if decoded > limits.max_decoded_bytes:
        raise ImageHeaderError(f"image claims {decoded / 2**20:.0f} MiB of pixel data ({frames} frames of {columns} x {rows}), "
                               f"over the limit of {limits.max_decoded_bytes / 2**20:.0f} MiB (refused before decoding)")
    ts = transfer_syntax(ds)
    if not ts.is_compressed:
        have = len(ds.PixelData or b"") if "PixelData" in ds else 0  # an empty element reads as None
        need = (rows * columns * frames * samples * allocated + 7) // 8
        if have < need:
            raise ImageHeaderError(f"Pixel Data holds {have} bytes, the header needs {need} (truncated file?)")
    else:
        check_code_streams(ds, rows, columns, samples, allocated)


def check_code_streams(ds: pydicom.Dataset, rows: int, columns: int, samples: int, allocated: int) -> None:
    """Refuse JPEG, JPEG-LS and JPEG 2000 frames whose own header claims a larger image, more
    components or deeper samples than the DICOM header (decoders allocate by the code stream)."""
    family = _family(str(transfer_syntax(ds)))
    if family is None:
        return
    try:
        streams = list(code_streams(ds))
    except Exception as e:  # noqa: BLE001 - pydicom's fragment parser raises several types
        raise ImageHeaderError(f"encapsulated Pixel Data cannot be split into frames: {' '.join(str(e).split())[:120]}") from None
    if not streams:
        raise ImageHeaderError("encapsulated Pixel Data holds no frames")
    for i, stream in enumerate(streams):
        header = _jpeg2000_size(stream) if family == "j2k" else _jpeg_size(stream)
        if header is None:
            continue  # no header found: the decoder reports what is wrong
        width, height, components, precision = header
        where = f"frame {i + 1}: " if len(streams) > 1 else ""
        if width > columns or height > rows:
            raise ImageHeaderError(f"{where}code stream is {width} x {height} pixels, the header says {columns} x {rows}")
        if components != samples:
            raise ImageHeaderError(f"{where}code stream has {components} components, Samples per Pixel is {samples}")
        if precision > max(allocated, 8):
            raise ImageHeaderError(f"{where}code stream has {precision}-bit samples, Bits Allocated is {allocated}")


def _family(ts: str) -> str | None:
    if ts in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"):
        return "j2k"
    if ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
              "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        return "jpeg"
    return None


def _jpeg2000_size(stream: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, max precision) from the SIZ marker segment."""
    siz = stream.find(b"\xff\x4f\xff\x51")
    if siz < 0 or len(stream) < siz + 4 + 38:
        return None
    at = siz + 4
    xsiz, ysiz, xo, yo = struct.unpack_from(">4L", stream, at + 4)
    (csiz,) = struct.unpack_from(">H", stream, at + 36)
    precision = max(((stream[at + 38 + 3 * c] & 0x7F) + 1 for c in range(csiz) if at + 38 + 3 * c < len(stream)), default=0)
    return xsiz - xo, ysiz - yo, csiz, precision


def _jpeg_size(stream: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, precision) from the first JPEG or JPEG-LS start-of-frame segment."""
    if stream[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        if marker in _JPEG_SOF or marker == _JPEG_LS_SOF:
            if pos + 10 > len(stream):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", stream, pos + 4)
            return width, height, components, precision
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        pos += 2 + length
    return None
