"""Radiograph input stage: DICOM file -> selection -> display-ready grey image(s).

One code path for inference and training. Pure functions; the Holoscan operator that streams
them (through reader processes, :mod:`operators.batching`) is ``RadiographLoaderOperator`` in
:mod:`operators.holoscan_operators`.

The grey image follows the DICOM grayscale pipeline (PS3.3 C.11): stored values -> Modality LUT
(rescale or LUT sequence) -> VOI LUT (first LUT sequence item, else first window) -> polarity
(MONOCHROME1 or Presentation LUT Shape INVERSE) so that bone is always bright -> a robust
percentile stretch to [0, 1], which also normalises images that carry no VOI at all.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian

from .decoding import DecodedPixels, DecodeError, decode_pixels, decode_reduced, shrink_factor, transfer_syntax
from .image_limits import ImageLimits, check_image_header
from .outcome import InputOutcome, Status, short_reason

#: What pydicom raises when it converts a damaged element on first access (an unknown VR read
#: from the file, a value whose length does not fit its VR): the file's fault, said as such.
DAMAGED_ELEMENT = (NotImplementedError, BytesLengthException)

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


class NotAnInput(InputError):
    """An entry that is not a file to read (a FIFO, a link not followed, ...): skipped, with the reason."""


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
    #: (size, modification time in ns) of the file when it was read: writers that go back to the
    #: source check it has not changed since.
    file_identity: tuple[int, int] | None = field(default=None, compare=False)

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


def iter_input_files(root: Path, follow_links: bool = False) -> Iterator[Path]:
    """Every entry under ``root`` (or ``root`` itself) that is not a folder walked into, sorted, streamed.

    Regular files, and also what the reader must report rather than read: FIFOs, sockets,
    devices, broken links, links to folders, folders that cannot be listed. Hidden files and
    folders (``.name``) are left out: they are tool and OS litter, not images. Links to folders
    are walked into only with ``follow_links`` (each folder once: link loops end there). The walk
    keeps its own stack, so any depth of folders is walked; a path the system cannot open
    (too long) comes out as an entry whose reading says so.
    """
    root = Path(root)
    if not os.path.isdir(root):
        if not os.path.lexists(root):
            raise FileNotFoundError(f"input {root} does not exist")
        yield root
        return
    seen: set[tuple[int, int]] = set()
    stack: list[Iterator[Path]] = [iter([root])]
    while stack:
        folder = next(stack[-1], None)
        if folder is None:
            stack.pop()
            continue
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue  # a link loop, or the same folder through two links
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            yield folder  # cannot be listed: reading it says why
            continue
        folders = []
        for e in entries:
            path = Path(folder, e.name)
            try:
                walk = e.is_dir(follow_symlinks=False) or (follow_links and e.is_symlink() and e.is_dir())
            except OSError:
                walk = False
            if walk:
                folders.append(path)
            else:
                yield path
        stack.append(iter(folders))


def relative_source(path: Path, root: Path) -> str:
    """``path`` relative to the input ``root`` (POSIX separators), as results name it.

    File names that are not UTF-8 (possible on Linux) keep their bytes as ``\\xNN`` escapes, so
    every name fits in JSON and logs and still tells the file apart.
    """
    root = Path(root)
    base = root if os.path.isdir(root) else root.parent
    try:
        rel = Path(path).relative_to(base).as_posix()
    except ValueError:
        rel = Path(path).name
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------
# Reading and selection


def open_input(path: Path, root: Path | None = None, follow_links: bool = False) -> tuple[IO[bytes], tuple[int, int]]:
    """Open one input for reading, or say why it is not one.

    Never opens what is not a regular file (a FIFO would block the reader), never reads through
    a link to outside ``root`` unless ``follow_links``. Returns the open file and its (size,
    modification time in ns), taken from the open file itself.

    Raises
    ------
    NotAnInput
        FIFOs, sockets, devices, links to folders or outside the input folder: skipped.
    InputError
        Files that vanished, cannot be read, broken links, link loops, folders that cannot be listed.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise InputError(_os_reason(e, "file")) from e
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError("symbolic link loop") from e
            if e.errno == errno.ENOENT:
                raise InputError("broken symbolic link (its target does not exist)") from e
            raise InputError(_os_reason(e, "link")) from e
        if not follow_links and root is not None and os.path.isdir(root) and not _inside(path, root):
            raise NotAnInput("symbolic link to outside the input folder (not followed; set follow_links to read it)")
    if stat.S_ISDIR(st.st_mode):
        if link:
            raise NotAnInput("symbolic link to a folder (not followed)")
        try:
            os.scandir(path).close()
        except OSError as e:
            raise InputError(_os_reason(e, "folder")) from e
        raise InputError("folder that could not be walked")
    if not stat.S_ISREG(st.st_mode):
        raise NotAnInput(f"not a regular file ({_kind(st.st_mode)})")
    try:
        # non-blocking open: a FIFO put in the file's place since the check does not block us
        fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))
    except OSError as e:
        raise InputError(_os_reason(e, "file")) from e
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):  # replaced since the check above
        fh.close()
        raise NotAnInput(f"not a regular file ({_kind(st.st_mode)})")
    os.set_blocking(fh.fileno(), True)
    return fh, (st.st_size, st.st_mtime_ns)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of ``path`` now, or ``None`` when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _inside(path: Path, root: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _os_reason(e: OSError, what: str) -> str:
    if e.errno == errno.ENOENT:
        return f"{what} vanished before it could be read"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {what}: permission denied"
    if e.errno == errno.ENAMETOOLONG:
        return f"cannot read {what}: path too long for the operating system"
    return f"cannot read {what}: {e.strerror or e}"


def read_dataset(path: Path | IO[bytes]) -> tuple[pydicom.Dataset, bool]:
    """Read a DICOM file (a path or an open binary file), with or without preamble and file-meta header.

    Returns the dataset and whether the file-meta header was missing. Never writes the file.

    Raises
    ------
    InputError
        Empty, unreadable, truncated or non-DICOM files.
    """
    if isinstance(path, (str, os.PathLike)):
        try:
            with open(path, "rb") as fh:
                return read_dataset(fh)
        except OSError as e:
            raise InputError(_os_reason(e, "file")) from e
    fh = path
    try:
        size = os.fstat(fh.fileno()).st_size
    except OSError as e:
        raise InputError(_os_reason(e, "file")) from e
    if size == 0:
        raise InputError("empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(fh)
    except InvalidDicomError:
        fh.seek(0)
        ds = _read_without_preamble(fh)
    except RecursionError as e:
        raise InputError("corrupt DICOM header: sequences nested too deeply") from e
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


def _read_without_preamble(fh: IO[bytes]) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(fh, force=True)
        # Force-reading random bytes "succeeds"; real DICOM has identifying elements.
        if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "Modality")):
            raise InvalidDicomError("no SOP Class, SOP Instance or Modality")
        ds.SOPClassUID  # noqa: B018 - touch to parse lazily read elements now
        return ds
    except RecursionError as e:
        raise InputError("not a DICOM file (or sequences nested too deeply)") from e
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
    """Why ``ds`` is not a radiograph to classify, or ``None`` when it is.

    Raises
    ------
    InputError
        An image object (by its SOP class) without Pixel Data: a damaged file, not a skip.
    """
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = UID(str(ds.get("SOPClassUID", "") or ""))
    if "PixelData" not in ds:
        kind = sop_class.name if sop_class else "unknown SOP class"
        if "Image Storage" in kind:  # an image object without its pixels: cut short, not a non-image object
            raise InputError(f"no Pixel Data in a {kind} object (truncated or damaged file)")
        return f"non-image object ({modality or 'no Modality'}; {short_reason(ValueError(kind), 80)})"
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
        if not np.isfinite(values).all():
            raise InputError("the Modality LUT gives values out of range")
    else:  # rescale is linear: shrinking first gives the same values for a fraction of the work
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            values = area_downsample(stored, max_side) * np.float32(slope) + np.float32(intercept)
        if not np.isfinite(values).all():
            raise InputError(f"Rescale Slope {slope:g} and Intercept {intercept:g} give values out of range")
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
        if 0 < w < 1e30 and abs(c) < 1e30:  # NaN, infinite or absurd windows are no window (float32 range)
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
              gpu: "GpuDecoder | None" = None, reduced_resolution: bool = True,  # noqa: F821
              follow_links: bool = False, limits: ImageLimits = ImageLimits()) -> FileRead:
    """Read one input file: select, check, decode and turn every frame into a grey radiograph.

    ``gpu``, an :class:`operators.gpu_decoding.GpuDecoder`, decodes and shrinks the JPEG 2000 and
    JPEG files it can on the GPU; ``reduced_resolution`` lets the CPU decode large grey JPEG 2000
    and 8-bit lossy JPEG images at reduced resolution (:func:`operators.decoding.decode_reduced`); the
    full CPU decoders take everything else. ``follow_links``: read through links to outside
    ``root``; ``limits``: the largest image decoded (:func:`operators.image_limits.check_image_header`).
    Never raises for bad input: the returned outcome names the reason. (A native decoder can
    still crash the process on a damaged file: the app reads in processes that contain that,
    :mod:`operators.reader_pool`.)
    """
    return read_files([path], root, max_side, gpu, reduced_resolution, follow_links, limits)[0]


def read_files(paths: list[Path], root: Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
               gpu: "GpuDecoder | None" = None, reduced_resolution: bool = True,  # noqa: F821
               follow_links: bool = False, limits: ImageLimits = ImageLimits()) -> list[FileRead]:
    """:func:`read_file` for several files, whose GPU-suitable pixel data is decoded in one batch."""
    opened = [_open(Path(p), root, follow_links, limits) for p in paths]
    decoded: list = [None] * len(opened)
    if gpu is not None:
        todo = [i for i, o in enumerate(opened) if isinstance(o, _Opened)]
        try:
            for i, d in zip(todo, gpu.decode_many([opened[i].ds for i in todo], max_side)):
                decoded[i] = d
        except Exception:  # noqa: BLE001 - the CPU decoders take every file and report per file
            decoded = [None] * len(opened)
    return [o if isinstance(o, FileRead) else _finish(o, d, max_side, reduced_resolution) for o, d in zip(opened, decoded)]


@dataclass
class _Opened:
    """A file read, selected and checked, its pixel data not decoded yet."""

    path: Path
    source: str
    ds: pydicom.Dataset
    meta_missing: bool
    identity: tuple[int, int]


def _open(path: Path, root: Path | None, follow_links: bool = False, limits: ImageLimits = ImageLimits()) -> "_Opened | FileRead":
    source = relative_source(path, root if root is not None else path)
    ds = None
    try:
        fh, identity = open_input(path, root, follow_links)
        with fh:
            ds, meta_missing = read_dataset(fh)
        reason = selection_reason(ds)
        if reason:
            return FileRead([], _outcome(source, ds, Status.SKIPPED, reason))
        check_image_header(ds, limits)
        return _Opened(path, source, ds, meta_missing, identity)
    except NotAnInput as e:
        return FileRead([], _outcome(source, ds, Status.SKIPPED, str(e)))
    except (InputError, DecodeError) as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, str(e)))
    except MemoryError:
        return FileRead([], _outcome(source, ds, Status.FAILED, "out of memory while reading"))
    except DAMAGED_ELEMENT as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, f"damaged data element: {short_reason(e)}"))
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
                    file_identity=o.identity,
                )
            )
        return FileRead(images)
    except (InputError, DecodeError) as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, str(e)))
    except MemoryError:
        return FileRead([], _outcome(source, ds, Status.FAILED, "out of memory while decoding"))
    except RecursionError:
        return FileRead([], _outcome(source, ds, Status.FAILED, "data set nested too deeply to decode"))
    except DAMAGED_ELEMENT as e:
        return FileRead([], _outcome(source, ds, Status.FAILED, f"damaged data element: {short_reason(e)}"))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - any decoder plugin's own types, even a Rust panic
        # (pyo3's PanicException, from pylibjpeg-rle on a damaged stream, is not an Exception)
        return FileRead([], _outcome(source, ds, Status.FAILED, f"cannot decode: {type(e).__name__}: {short_reason(e)}"))


def iter_radiographs(root: Path, max_side: int | None = DEFAULT_MAX_SIDE, follow_links: bool = False) -> Iterator[Radiograph | InputOutcome]:
    """Stream a folder in this process: each radiograph as it is read, or the outcome of a file that gave none."""
    for path in iter_input_files(root, follow_links):
        read = read_file(path, root, max_side, follow_links=follow_links)
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
