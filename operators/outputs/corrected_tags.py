"""Corrected copies: the source image with Body Part Examined and Anatomic Region Sequence set
from the classification, the replaced values kept in the Original Attributes Sequence.

Pixel data is copied byte for byte (never decoded). By default the copy is a new instance in a
derived series (SOP Instance and Series Instance UIDs derived from the source's and the model's
checksum, :mod:`.uids`: a re-run gives the same copy) so that it cannot silently replace the
acquired image; its Series Number is the source's plus :data:`SERIES_NUMBER_OFFSET`. ``keep_uids``
keeps both UIDs (and the Series Number) for PACS set to overwrite on re-send.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from ..catalogue import SCT, AnatomyTerm
from ..input.dicom_header import CORRECTED_DERIVATION, read_dataset
from .output_files import write_atomically
from .uids import derived_uid

MODIFYING_SYSTEM = "bodypart-xr"
#: A corrected series is numbered the source's Series Number plus this, apart from the acquired
#: series (which rarely reach 1000) and from the SRs (9901 and up, see :mod:`.sr`).
SERIES_NUMBER_OFFSET = 1000
#: Body Part Examined terms of paired structures: General Series Laterality (0020,0060) is Type 2C,
#: required for these and not allowed for others (PS3.3 C.7.3.1; the list dicom3tools checks).
PAIRED = frozenset({"ANKLE", "CLAVICLE", "ELBOW", "FINGER", "FOOT", "FOREARM", "HAND", "HIP", "KNEE", "LOWERLEG",
                    "LOWERLIMB", "NASOPHARYNX", "SHOULDER", "SIJOINT", "THIGH", "UPPERARM", "UPPERLIMB", "WRIST"})


def corrected_dataset(source: Path, term: AnatomyTerm, algorithm: str, model_checksum: str,
                      keep_uids: bool = False) -> Dataset:
    """The corrected copy of ``source`` as a dataset (nothing is written).

    Parameters
    ----------
    term
        The catalogue term for the labels. A term without a Body Part Examined value (Sinus)
        leaves (0018,0015) as it was and sets only the Anatomic Region Sequence.
    algorithm
        Name and version for the modification record.
    model_checksum
        The model's key (:func:`.uids.model_key`: package checksum and stacker): with the source's
        UIDs it gives the copy's UIDs, so copies of one series form one derived series, the same in
        every run of the same model.
    """
    ds, _ = read_dataset(source)  # header-less files get their transfer syntax here
    if term.body_part_examined is None and term.sct_code is None:
        raise ValueError("no anatomy term to write")
    original = Dataset()
    changed = False
    if term.body_part_examined and str(ds.get("BodyPartExamined", "")).strip().upper() != term.body_part_examined:
        _keep(ds, original, "BodyPartExamined")
        ds.BodyPartExamined = term.body_part_examined
        changed = True
        _fit_laterality(ds, original, term.body_part_examined)
    if term.sct_code:
        region = Dataset()
        region.CodeValue = term.sct_code
        region.CodingSchemeDesignator = SCT
        region.CodeMeaning = term.sct_meaning
        old = ds.get("AnatomicRegionSequence")
        if not old or old[0].get("CodeValue") != term.sct_code or old[0].get("CodingSchemeDesignator") != SCT:
            _keep(ds, original, "AnatomicRegionSequence")
            ds.AnatomicRegionSequence = Sequence([region])
            changed = True
    if not keep_uids:
        _keep(ds, original, "SOPInstanceUID")
        _keep(ds, original, "SeriesInstanceUID")
        if pydicom.uid.UID(str(ds.SOPInstanceUID)).is_valid:  # some archives hold invalid UIDs
            source_ref = Dataset()
            source_ref.ReferencedSOPClassUID = ds.SOPClassUID
            source_ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            ds.SourceImageSequence = Sequence([source_ref])
        ds.DerivationDescription = f"{CORRECTED_DERIVATION} {algorithm}"
        ds.SeriesInstanceUID = corrected_series_uid(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                                                    model_checksum)
        ds.SOPInstanceUID = derived_uid("corrected-instance", model_checksum, str(ds.SOPInstanceUID))
        ds.SeriesNumber = corrected_series_number(ds.get("SeriesNumber"))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = (str(ds.get("SeriesDescription", "")) + " (body part corrected)").strip()[:64]
    if changed or not keep_uids:
        record = Dataset()
        record.ModifiedAttributesSequence = Sequence([original]) if len(original) else Sequence([Dataset()])
        record.AttributeModificationDateTime = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        record.ModifyingSystem = MODIFYING_SYSTEM
        record.SourceOfPreviousValues = ""
        record.ReasonForTheAttributeModification = "CORRECT"
        ds.OriginalAttributesSequence = Sequence([*ds.get("OriginalAttributesSequence", []), record])
    _complete_file_meta(ds)
    _even_fragments(ds)
    return ds


def corrected_series_uid(study_uid: str, source_series_uid: str, model_checksum: str) -> str:
    """The derived series that holds the corrected copies of one source series (of one study:
    sources without a Series Instance UID in different studies do not share one)."""
    return derived_uid("corrected-series", model_checksum, study_uid, source_series_uid)


def corrected_series_number(source_number) -> int:
    """The corrected series' number: the source's plus :data:`SERIES_NUMBER_OFFSET` (an empty
    or unreadable source number counts as 0)."""
    try:
        return int(source_number) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET


def _even_fragments(ds: Dataset) -> None:
    """Pad odd-length encapsulated fragments with one trailing null byte.

    Some archives hold fragments of odd length, which Part 5 forbids; written as they are, the
    copy would be unreadable. Codestreams keep every byte; decoders ignore the pad.
    """
    elem = ds["PixelData"] if "PixelData" in ds else None
    if elem is None or not elem.is_undefined_length:
        return
    data = bytes(elem.value)
    out, pos, changed = bytearray(), 0, False
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"\xfe\xff\xdd\xe0":  # sequence delimiter
            break
        if tag != b"\xfe\xff\x00\xe0" or pos + 8 + length > len(data):
            return  # not a clean item stream: leave the bytes alone
        value = data[pos + 8 : pos + 8 + length]
        if length % 2:
            value += b"\x00"
            changed = True
        out += tag + len(value).to_bytes(4, "little") + value
        pos += 8 + length
    if changed:
        elem.value = bytes(out)


def _fit_laterality(ds: Dataset, original: Dataset, term: str) -> None:
    """Keep General Series Laterality consistent with the new Body Part Examined."""
    if term in PAIRED:
        if "Laterality" not in ds and "ImageLaterality" not in ds:
            _keep(ds, original, "Laterality")
            ds.Laterality = ""  # Type 2: present, value unknown
    elif "Laterality" in ds:
        _keep(ds, original, "Laterality")
        del ds.Laterality


def _keep(ds: Dataset, original: Dataset, keyword: str) -> None:
    """Record the current value (or an empty one, meaning 'was absent') before it changes."""
    if keyword in original:
        return
    if keyword in ds:
        original[keyword] = copy.deepcopy(ds[keyword])
    else:
        setattr(original, keyword, [] if keyword.endswith("Sequence") else "")


def _complete_file_meta(ds: Dataset) -> None:
    meta = ds.file_meta if isinstance(getattr(ds, "file_meta", None), FileMetaDataset) else FileMetaDataset(getattr(ds, "file_meta", Dataset()))
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta


def write_corrected(ds: Dataset, path: Path) -> Path:
    """Write as a DICOM Part 10 file, in the source's transfer syntax; the file appears whole or
    not at all (:func:`operators.outputs.output_files.write_atomically`)."""
    return write_atomically(path, lambda fh: ds.save_as(fh, enforce_file_format=True))
