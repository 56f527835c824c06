"""Write DICOM twins and broken files for tests (always into temporary folders)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def load(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def with_pixels(ds: pydicom.Dataset, arr: np.ndarray, **attrs) -> pydicom.Dataset:
    """A copy of ``ds`` holding ``arr`` uncompressed, with attributes overridden (None deletes)."""
    pixels = ds["PixelData"] if "PixelData" in ds else None
    if pixels is not None:  # don't deep-copy megabytes we replace anyway
        del ds["PixelData"]
    out = copy.deepcopy(ds)
    if pixels is not None:
        ds["PixelData"] = pixels
    out.file_meta = copy.deepcopy(ds.file_meta) if hasattr(ds, "file_meta") else FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = arr.shape[0] if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1 else 1
    out.Rows, out.Columns = arr.shape[-2], arr.shape[-1]
    if frames > 1:
        out.NumberOfFrames = frames
    out.BitsAllocated = arr.dtype.itemsize * 8
    out.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    out.PixelData = np.ascontiguousarray(arr).tobytes()
    out["PixelData"].VR = "OW" if out.BitsAllocated > 8 else "OB"
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    for key, value in attrs.items():
        if value is None:
            if key in out:
                del out[key]
        else:
            setattr(out, key, value)
    return out


def save(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def save_without_meta(ds: pydicom.Dataset, path: Path, implicit_vr: bool) -> Path:
    """Write only the data set: no preamble, no file-meta header (as old archives hold)."""
    out = copy.copy(ds)
    out.preamble = None
    out.file_meta = FileMetaDataset()
    out.save_as(path, enforce_file_format=False, implicit_vr=implicit_vr, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    return path


def minimal(modality: str = "DX", rows: int = 64, cols: int = 48, **attrs) -> pydicom.Dataset:
    """A small valid grey radiograph with a bright 'bone' bar in the middle."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.BitsStored = 12
    ds.HighBit = 11
    arr = np.full((rows, cols), 200, np.uint16)
    arr[:, cols // 3 : 2 * cols // 3] = 3000
    arr += np.arange(rows, dtype=np.uint16)[:, None]  # a gradient so percentiles differ
    out = with_pixels(ds, arr)
    for key, value in attrs.items():
        setattr(out, key, value)
    return out


def as_jpeg_baseline(ds: pydicom.Dataset, grey: np.ndarray, quality: int = 90) -> pydicom.Dataset:
    """A copy of ``ds`` holding ``grey`` (floats in [0, 1]) as an 8-bit MONOCHROME2 JPEG baseline
    image (process 1), the lossy form many archives store radiographs in."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    pixels = np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)
    out = with_pixels(ds, pixels, BitsStored=8, HighBit=7, PhotometricInterpretation="MONOCHROME2",
                      SamplesPerPixel=1, PlanarConfiguration=None, RescaleSlope=None, RescaleIntercept=None, WindowCenter=None, WindowWidth=None,
                      VOILUTSequence=None, ModalityLUTSequence=None, PresentationLUTShape=None)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    out.PixelData = encapsulate([buf.getvalue()])
    out["PixelData"].VR = "OB"
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.LossyImageCompression = "01"
    return out
