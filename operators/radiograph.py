"""Radiograph input stage: DICOM file -> selection -> display-ready grey image(s).

One code path for inference and training. Pure functions; the Holoscan operator that wraps them
lives in :mod:`operators.radiograph_loader_operator`.

The grey image follows the DICOM grayscale pipeline (PS3.3 C.11): stored values -> Modality LUT
(rescale or LUT sequence) -> VOI LUT (first LUT sequence item, else first window) -> polarity
(MONOCHROME1 or Presentation LUT Shape INVERSE) so that bone is always bright -> a robust
percentile stretch to [0, 1], which also normalises images that carry no VOI at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian

from .decoding import DecodedPixels, DecodeError, decode_pixels, decode_reduced, shrink_factor, transfer_syntax
from .outcome import InputOutcome, Status, short_reason

#: Plain radiography: what the models are for.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
#: Projection X-ray modalities read the same way, reported as such.
DX_LIKE_MODALITIES = frozenset({"RF", "PX", "IO", "MG"})
#: Percentiles of the robust stretch: wide enough to keep anatomy, narrow enough to ignore
#: collimator edges, burnt-in labels and dead pixels.
PERCENTILES = (0.5, 99.5)
#: Default longest side kept after decoding; models need a few hundred pixels, not 3,000.
DEFAULT_MAX_SIDE = 1024
#: A window under which less than this fraction of pixels is neither black nor white does not
#: belong to the pixel data.
MIN_INSIDE_WINDOW = 0.01


class InputError(RuntimeError):
    """A file that should be readable but is not; the message is the user-facing reason."""


@dataclass(frozen=True)
class RadiographInfo:
    """What the file said and how it was read (no patient data)."""

    modality: str
    transfer_syntax: str
    decoder: str
    lenient_decoder: bool
    photometric_interpretation: str
    inverted: bool
    voi: str  # "lut", "window", or "none ..." (with the reason a VOI was not used)
    original_shape: tuple[int, int]
    stated_body_part_examined: str | None = None
    presentation_intent: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    dx_like: bool = False
    file_meta_missing: bool = False
    sop_class_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "transfer_syntax": self.transfer_syntax,
            "decoder": self.decoder,
            "lenient_decoder": self.lenient_decoder,
            "photometric_interpretation": self.photometric_interpretation,
            "inverted": self.inverted,
            "voi": self.voi,
            "original_shape": list(self.original_shape),
            "stated_body_part_examined": self.stated_body_part_examined,
            "presentation_intent": self.presentation_intent,
            "view_position": self.view_position,
            "laterality": self.laterality,
            "dx_like": self.dx_like,
            "file_meta_missing": self.file_meta_missing,
            "sop_class_uid": self.sop_class_uid,
        }


@dataclass(frozen=True)
class Radiograph:
    """One display-ready grey radiograph (one frame of one file).

    ``image`` is float32, shape (rows, columns), values in [0, 1], bone bright.
    """

    source: str
    image: np.ndarray
    info: RadiographInfo
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    frame: int | None = None
    path: Path | None = field(default=None, compare=False)

    def outcome(self, status: Status = Status.READY, reason: str | None = None, **details: Any) -> InputOutcome:
        return InputOutcome(
            source=self.source,
            status=status,
            reason=reason,
            frame=self.frame,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_instance_uid=self.sop_instance_uid,
            details={**self.info.to_json(), **details},
        )


# --------------------------------------------------------------------------------------------
# Discovery


def iter_input_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (or ``root`` itself), sorted, streamed.

    Hidden files and folders (``.name``) are left out: they are tool and OS litter, not images.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise FileNotFoundError(f"input {root} does not exist")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                path = Path(dirpath, name)
                if path.is_file():
                    yield path


def relative_source(path: Path, root: Path) -> str:
    root = Path(root)
    base = root.parent if root.is_file() else root
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return Path(path).name


# --------------------------------------------------------------------------------------------
# Reading and selection


def read_dataset(path: Path) -> tuple[pydicom.Dataset, bool]:
    """Read a DICOM file, with or without preamble and file-meta header.

    Returns the dataset and whether the file-meta header was missing. Never writes the file.

    Raises
    ------
    InputError
        Empty, unreadable, truncated or non-DICOM files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror or e}") from e
    if size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = _read_without_preamble(path)
    except Exception as e:  # truncated headers and broken elements surface as many types
        raise InputError(f"corrupt DICOM header: {short_reason(e)}") from e
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        # Every composite object has both; a header that ends early has neither.
        raise InputError("incomplete data set without SOP Class or SOP Instance UID (truncated or damaged file)")
    meta = getattr(ds, "file_meta", None)
    meta_missing = meta is None or "TransferSyntaxUID" not in meta
    if meta_missing:
        _infer_transfer_syntax(ds)
    return ds, meta_missing


def _read_without_preamble(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path, force=True)
        # Force-reading random bytes "succeeds"; real DICOM has identifying elements.
        if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality")):
            raise InvalidDicomError("no SOP Class, SOP Instance or Modality")
        ds.SOPClassUID  # noqa: B018 - touch to parse lazily read elements now
        return ds
    except Exception as e:
        raise InputError(f"not a DICOM file ({short_reason(e)})") from e


def _infer_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Give a header-less dataset the transfer syntax it was read with (in memory only)."""
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise InputError("compressed (encapsulated) Pixel Data but no file-meta header naming its transfer syntax")
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True  # PS3.5 default transfer syntax
    ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts


def selection_reason(ds: pydicom.Dataset) -> str | None:
    """Why ``ds`` is not a radiograph to classify, or ``None`` when it is."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = UID(str(ds.get("SOPClassUID", "") or ""))
    if "PixelData" not in ds:
        kind = sop_class.name if sop_class else "unknown SOP class"
        return f"non-image object ({modality or 'no Modality'}; {kind})"
    if not modality:
        return "no Modality: cannot tell whether this is a radiograph"
    if modality not in RADIOGRAPH_MODALITIES | DX_LIKE_MODALITIES:
        return f"modality {modality} is not plain radiography (CR/DX)"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer image"
    return None


# --------------------------------------------------------------------------------------------
# Grey image


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
    else:  # rescale is linear: shrinking first gives the same values for a fraction of the work
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        values = area_downsample(stored, max_side) * np.float32(slope) + np.float32(intercept)
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
        if w > 0:
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


def pool_to_side(t: "torch.Tensor", max_side: int | None) -> "torch.Tensor":  # noqa: F821
    """:func:`area_downsample` on a float tensor (rows, columns[, samples]), on whatever device it is.

    The one shrink for every decoder: CPU-decoded images and GPU-decoded ones (see
    :mod:`operators.gpu_decoding`) come out the same. Trailing rows and columns that do not fill a
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


# --------------------------------------------------------------------------------------------
# One file


@dataclass
class FileRead:
    """The result of reading one file: radiographs, or an outcome saying why there are none."""

    radiographs: list[Radiograph]
    outcome: InputOutcome | None = None


def read_file(path: Path, root: Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
              gpu: "GpuDecoder | None" = None, reduced_resolution: bool = True) -> FileRead:  # noqa: F821
    """Read one input file: select, decode and turn every frame into a grey radiograph.

    ``gpu``, an :class:`operators.gpu_decoding.GpuDecoder`, decodes and shrinks the JPEG 2000 and
    JPEG files it can on the GPU; ``reduced_resolution`` lets the CPU decode large grey JPEG 2000
    and 8-bit lossy JPEG images at reduced resolution (:func:`operators.decoding.decode_reduced`); the
    full CPU decoders take everything else. Never raises for bad input: the returned outcome
    names the reason.
    """
    return read_files([path], root, max_side, gpu, reduced_resolution)[0]


def read_files(paths: list[Path], root: Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
               gpu: "GpuDecoder | None" = None, reduced_resolution: bool = True) -> list[FileRead]:  # noqa: F821
    """:func:`read_file` for several files, whose GPU-suitable pixel data is decoded in one batch."""
    opened = [_open(Path(p), root) for p in paths]
    decoded: list = [None] * len(opened)
    if gpu is not None:
        todo = [i for i, o in enumerate(opened) if isinstance(o, _Opened)]
        for i, d in zip(todo, gpu.decode_many([opened[i].ds for i in todo], max_side)):
            decoded[i] = d
    return [o if isinstance(o, FileRead) else _finish(o, d, max_side, reduced_resolution) for o, d in zip(opened, decoded)]


@dataclass
class _Opened:
    """A file read and selected, its pixel data not decoded yet."""

    path: Path
    source: str
    ds: pydicom.Dataset
    meta_missing: bool


def _open(path: Path, root: Path | None) -> "_Opened | FileRead":
    source = relative_source(path, root if root is not None else path)
    ds = None
    try:
        ds, meta_missing = read_dataset(path)
        reason = selection_reason(ds)
        if reason:
            return FileRead([], _outcome(source, ds, Status.SKIPPED, reason))
        return _Opened(path, source, ds, meta_missing)
    except InputError as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, str(e)))
    except Exception as e:  # a bug or an unforeseen file: still one clear line, run goes on
        return FileRead([], _outcome(source, ds, Status.FAILED, f"unexpected error: {type(e).__name__}: {short_reason(e)}"))


def _finish(o: _Opened, decoded: DecodedPixels | None, max_side: int | None, reduced_resolution: bool) -> FileRead:
    """Decode on the CPU what the GPU did not, and make the grey radiographs of every frame."""
    ds, source = o.ds, o.source
    try:
        decoded = decoded or (decode_reduced(ds, max_side) if reduced_resolution else None) or decode_pixels(ds)
        modality = str(ds.Modality).upper()
        images = []
        for i, frame in enumerate(decoded.frames):
            grey, inverted, voi = to_grey(frame, ds, max_side)
            info = RadiographInfo(
                modality=modality,
                transfer_syntax=str(transfer_syntax(ds).name),
                decoder=decoded.decoder,
                lenient_decoder=decoded.lenient,
                photometric_interpretation=str(ds.get("PhotometricInterpretation", "")),
                inverted=inverted,
                voi=voi,
                original_shape=(int(ds.Rows), int(ds.Columns)),
                stated_body_part_examined=_text(ds, "BodyPartExamined"),
                presentation_intent=_text(ds, "PresentationIntentType"),
                view_position=_text(ds, "ViewPosition"),
                laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
                dx_like=modality in DX_LIKE_MODALITIES,
                file_meta_missing=o.meta_missing,
                sop_class_uid=_text(ds, "SOPClassUID"),
            )
            images.append(
                Radiograph(
                    source=source,
                    image=grey,
                    info=info,
                    study_instance_uid=_text(ds, "StudyInstanceUID"),
                    series_instance_uid=_text(ds, "SeriesInstanceUID"),
                    sop_instance_uid=_text(ds, "SOPInstanceUID"),
                    frame=i if len(decoded.frames) > 1 else None,
                    path=o.path,
                )
            )
        return FileRead(images)
    except (InputError, DecodeError) as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, str(e)))
    except MemoryError:
        return FileRead([], _outcome(source, ds, Status.FAILED, "out of memory while decoding"))
    except Exception as e:  # a bug or an unforeseen file: still one clear line, run goes on
        return FileRead([], _outcome(source, ds, Status.FAILED, f"unexpected error: {type(e).__name__}: {short_reason(e)}"))


def iter_radiographs(root: Path, max_side: int | None = DEFAULT_MAX_SIDE) -> Iterator[Radiograph | InputOutcome]:
    """Stream a folder: each radiograph as it is read, or the outcome of a file that gave none."""
    for path in iter_input_files(root):
        read = read_file(path, root, max_side)
        if read.outcome is not None:
            yield read.outcome
        yield from read.radiographs


def _outcome(source: str, ds: pydicom.Dataset | None, status: Status, reason: str) -> InputOutcome:
    uids = {}
    if ds is not None:
        for key, tag in (("study_instance_uid", "StudyInstanceUID"), ("series_instance_uid", "SeriesInstanceUID"), ("sop_instance_uid", "SOPInstanceUID")):
            try:
                uids[key] = _text(ds, tag)
            except Exception:
                uids[key] = None
    return InputOutcome(source=source, status=status, reason=reason, **uids)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None
