"""Reading a DICOM header and deciding whether it is a radiograph to classify.

Real archives hold files without preamble or file-meta header, damaged headers and objects
that are not images: each is read if it can be, or named with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian

from ..outcome import ReportReference, short_reason
from .discovery import InputError, os_reason

#: Manufacturer (0008,0070) of the SRs this app writes: how an earlier result is recognised.
OWN_MANUFACTURER = "bodypart-xr"
#: Derivation Description (0008,2111) of this app's corrected copies (in a derived series).
CORRECTED_DERIVATION = "Body Part Examined and Anatomic Region corrected by"
#: Pixel data elements: dropped from every header copied on (the reader's carried one, the SR's).
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Plain radiography: what the models are for.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
#: Projection X-ray modalities read the same way, reported as such.
DX_LIKE_MODALITIES = frozenset({"RF", "PX", "IO", "MG"})


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
            raise InputError(os_reason(e, "file")) from e
    fh = path
    try:
        size = os.fstat(fh.fileno()).st_size
    except OSError as e:
        raise InputError(os_reason(e, "file")) from e
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
    if str(ds.get("DerivationDescription", "") or "").startswith(CORRECTED_DERIVATION):
        # a study pulled back from the PACS holds the copies of an earlier run: its source is here too
        return "a corrected copy this app wrote earlier (its source image is classified instead)"
    return None



def earlier_report(ds: pydicom.Dataset) -> ReportReference | None:
    """The reference to ``ds`` when it is an SR this app wrote, else ``None``."""
    if str(ds.get("Modality", "")).upper() != "SR" or str(ds.get("Manufacturer", "")) != OWN_MANUFACTURER:
        return None
    uids = [str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")]
    if not all(UID(u).is_valid for u in uids):
        return None
    try:
        number = int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    return ReportReference(*uids, series_number=number)
