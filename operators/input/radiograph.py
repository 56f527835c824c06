"""One input file -> selected, checked, decoded grey radiograph(s): the input stage's one code path.

Used for inference and training alike. Pure functions; the app streams them through reader
processes (:mod:`operators.input.batching`, :mod:`operators.input.reader_pool`). The steps live in
their own modules: :mod:`~operators.input.discovery` (walking and opening),
:mod:`~operators.input.dicom_header` (reading and selection), :mod:`~operators.input.image_limits`,
:mod:`~operators.input.decoding` and :mod:`~operators.input.grey` (display-ready pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException

from ..outcome import InputOutcome, Status, short_reason
from .decoding import DecodedPixels, DecodeError, decode_pixels, decode_reduced, transfer_syntax
from .dicom_header import DX_LIKE_MODALITIES, PIXEL_KEYWORDS, earlier_report, read_dataset, selection_reason
from .discovery import InputError, NotAnInput, iter_input_files, open_input, relative_source
from .grey import DEFAULT_MAX_SIDE, to_grey
from .image_limits import ImageLimits, check_image_header

if TYPE_CHECKING:  # nvImageCodec is optional: imported where a GPU decoder is made
    from .gpu_decoding import GpuDecoder

#: What pydicom raises when it converts a damaged element on first access (an unknown VR read
#: from the file, a value whose length does not fit its VR): the file's fault, said as such.
DAMAGED_ELEMENT = (NotImplementedError, BytesLengthException)
#: Sequences nested deeper than this are dropped from the carried header: it crosses process
#: boundaries by pickle, which recurses per level, and what the writers copy (patient, study and
#: series attributes) is never nested so deep; files nested deeper still are read and classified.
MAX_CARRIED_DEPTH = 16


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
    manufacturer: str | None = None  # the device: archive reports break results down by it
    manufacturer_model_name: str | None = None

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
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.manufacturer_model_name,
        }


@dataclass(frozen=True)
class Radiograph:
    """One display-ready grey radiograph (one frame of one file).

    ``image`` is float32, shape (rows, columns), values in [0, 1], bone bright. ``header`` is the
    file's data set as read, without its pixel data (:func:`carried_header`): the SR copies from it
    instead of reading the file again (the frames of one file share it); a corrected copy still
    reads the file, for the pixel data it copies.
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
    header: pydicom.Dataset | None = field(default=None, compare=False, repr=False)

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



@dataclass
class FileRead:
    """The result of reading one file: radiographs, or an outcome saying why there are none."""

    radiographs: list[Radiograph]
    outcome: InputOutcome | None = None


def read_file(path: Path, root: Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
              gpu: GpuDecoder | None = None, reduced_resolution: bool = True,
              follow_links: bool = False, limits: ImageLimits = ImageLimits()) -> FileRead:
    """Read one input file: select, check, decode and turn every frame into a grey radiograph.

    ``gpu``, an :class:`operators.input.gpu_decoding.GpuDecoder`, decodes and shrinks the JPEG 2000 and
    JPEG files it can on the GPU; ``reduced_resolution`` lets the CPU decode large grey JPEG 2000
    and 8-bit lossy JPEG images at reduced resolution (:func:`operators.input.decoding.decode_reduced`); the
    full CPU decoders take everything else. ``follow_links``: read through links to outside
    ``root``; ``limits``: the largest image decoded (:func:`operators.input.image_limits.check_image_header`).
    Never raises for bad input: the returned outcome names the reason. (A native decoder can
    still crash the process on a damaged file: the app reads in processes that contain that,
    :mod:`operators.input.reader_pool`.)
    """
    return read_files([path], root, max_side, gpu, reduced_resolution, follow_links, limits)[0]


def read_files(paths: list[Path], root: Path | None = None, max_side: int | None = DEFAULT_MAX_SIDE,
               gpu: GpuDecoder | None = None, reduced_resolution: bool = True,
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
            earlier = earlier_report(ds)
            if earlier is not None:
                reason = "an earlier result of this app (SR): a new report of the study supersedes it"
            return FileRead([], replace(_outcome(source, ds, Status.SKIPPED, reason), earlier_report=earlier))
        check_image_header(ds, limits)
        return _Opened(path, source, ds, meta_missing, identity)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - any fault of one file is that file's outcome
        if ds is None and isinstance(e, InputError) and path.name.lower().endswith(".json"):
            # the Informatics Gateway writes each instance's metadata beside it (NAME.dcm.json)
            return FileRead([], _outcome(source, None, Status.SKIPPED, "JSON file, not DICOM (instance metadata)"))
        return FileRead([], _outcome(source, ds, *_failure(e, "reading")))


def _finish(o: _Opened, decoded: DecodedPixels | None, max_side: int | None, reduced_resolution: bool) -> FileRead:
    """Decode on the CPU what the GPU did not, and make the grey radiographs of every frame."""
    ds, source = o.ds, o.source
    try:
        decoded = decoded or (decode_reduced(ds, max_side) if reduced_resolution else None) or decode_pixels(ds)
        carried_header(ds)
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
                manufacturer=_text(ds, "Manufacturer"),
                manufacturer_model_name=_text(ds, "ManufacturerModelName"),
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
                    header=ds,
                )
            )
        return FileRead(images)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - any decoder plugin's own types, even a Rust panic
        # (pyo3's PanicException, from pylibjpeg-rle on a damaged stream, is not an Exception)
        return FileRead([], _outcome(source, ds, *_failure(e, "decoding")))


def carried_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` made into the header a radiograph carries, in place: without its pixel data (decoded
    already) and without top-level sequences nested deeper than :data:`MAX_CARRIED_DEPTH`."""
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    for elem in list(ds):
        if elem.VR == "SQ" and _depth(elem) > MAX_CARRIED_DEPTH:
            del ds[elem.tag]
    return ds


def _depth(sequence) -> int:
    """How deep sequences nest inside ``sequence`` (1: items without sequences), without recursion."""
    deepest, stack = 0, [(sequence, 1)]
    while stack:
        elem, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_CARRIED_DEPTH:
            break
        stack.extend((inner, level + 1) for item in elem.value for inner in item if inner.VR == "SQ")
    return deepest


def _failure(e: BaseException, doing: str) -> tuple[Status, str]:
    """The status and reason of a file that ``e`` stopped while ``doing`` ("reading", "decoding")."""
    if isinstance(e, NotAnInput):
        return Status.SKIPPED, str(e)
    if isinstance(e, (InputError, DecodeError)):
        return Status.FAILED, str(e)
    if isinstance(e, MemoryError):
        return Status.FAILED, f"out of memory while {doing}"
    if isinstance(e, RecursionError):
        return Status.FAILED, f"data set nested too deeply while {doing}"
    if isinstance(e, DAMAGED_ELEMENT):
        return Status.FAILED, f"damaged data element: {short_reason(e)}"
    what = "cannot decode" if doing == "decoding" else "unexpected error"  # a bug or an unforeseen file
    return Status.FAILED, f"{what}: {type(e).__name__}: {short_reason(e)}"


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
        try:
            uids["series_number"] = int(ds.get("SeriesNumber"))
        except Exception:  # absent, empty or not a number: no series number to keep clear of
            pass
    return InputOutcome(source=source, status=status, reason=reason, **uids)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None
