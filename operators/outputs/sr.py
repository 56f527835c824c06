"""DICOM Structured Reports of the result, one pair per study.

- a Comprehensive 3D SR on TID 1500 (Measurement Report), the IHE AI Results way: one measurement
  group per classified image, with its finding sites (SNOMED CT, from the catalogue), the labels
  as qualitative findings (anatomical structure = the part), one
  probability per known class, the algorithm identification (name, version, model checksum), the
  device observer and a reference to the source image;
- an Enhanced SR with the same result as plain text, which viewers that do not render TID 1500
  (OHIF's SR text viewport, for one) show as is.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ..catalogue import SCT, Catalogue
from ..outcome import ReportReference
from ..input.dicom_header import OWN_MANUFACTURER, PIXEL_KEYWORDS
from . import sr_content as sc
from .uids import derived_uid

log = logging.getLogger("bodypart")

#: SNOMED CT 363680008 |Radiographic imaging procedure|
RADIOGRAPHY = Code("363680008", SCT, "Radiographic imaging procedure")
#: LOINC 18748-4 Diagnostic imaging report: root of the plain-text SR
IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic imaging report")
SERIES_NUMBER = 9901  # high, so viewers list our series after the acquired ones (the text SR: 9902)
MANUFACTURER = OWN_MANUFACTURER
#: Series Descriptions: what tells the two SRs apart comes first (viewers cut long names).
TID1500_DESCRIPTION = "Body part AI: TID 1500"
TEXT_DESCRIPTION = "Body part AI: text"

#: Type 2 attributes (present, may be empty) of modules the SR copies from the source images; old
#: or anonymised sources often lack them, and an SR must not inherit that gap.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class ReportedImage:
    """What the SR says about one classified image (UIDs and numbers only: file names can carry
    patient names, so they stay out of the report)."""

    series_number: int | None
    instance_number: int | None
    sop_class_uid: str
    sop_instance_uid: str
    frame: int | None
    labels: tuple[str, ...]
    probabilities: dict[str, float]
    body_part_examined: str | None
    needs_review: bool
    review_reason: str | None


@dataclass(frozen=True)
class Algorithm:
    """Who produced the result: model and app identity, for the SR's algorithm and observer items."""

    model_name: str
    model_version: str
    model_sha256: str
    stacker: str
    app_version: str

    @property
    def device_uid(self) -> str:
        # Stable per app and model version: the same "device" across runs and sites.
        return generate_uid(entropy_srcs=[MANUFACTURER, self.app_version, self.model_name, self.model_version])

    @property
    def parameters(self) -> tuple[str, ...]:
        return (f"model-sha256={self.model_sha256}", f"stacker={self.stacker}")


def evidence_header(source: "pydicom.Dataset | str | Path") -> pydicom.Dataset:
    """The source's header (no pixels), made fit to copy into an SR: a copy of the data set the
    reader parsed (or of the file at ``source``); the source itself is not changed.

    Type 2 attributes the source lacks become empty; dates and times that do not parse (seen in
    anonymised archives: hashes in Study Date, day 31 of February) become empty rather than make
    the report invalid; strings longer than their VR allows are cut to length, except the keys a
    RIS or PACS matches on (:data:`MATCHING_KEYS`), which stay as the images have them. Text in a
    source without Specific Character Set is ASCII by the standard: a value with other bytes
    cannot be decoded right, so it is left empty (and the attribute's name logged) rather than
    written garbled into the UTF-8 report. Patient Sex other than M, F or O is left empty.
    """
    if isinstance(source, pydicom.Dataset):
        ds = copy.deepcopy(source)
        for keyword in PIXEL_KEYWORDS:
            if keyword in ds:
                del ds[keyword]
    else:
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if str(ds.PatientSex).strip().upper() not in ("M", "F", "O", ""):
        ds.PatientSex = ""  # 'U' and other non-standard values
    for keyword in _TYPE3_SEQUENCES:  # present but empty is invalid for Type 3: drop instead
        if keyword in ds and not ds[keyword].value:
            del ds[keyword]
    undeclared = not str(ds.get("SpecificCharacterSet", "") or "").strip()
    for elem in list(ds):
        if undeclared and elem.VR in _TEXT_VRS and not _ascii(elem.value):
            log.warning("source %s: %s has non-ASCII bytes but no Specific Character Set: left empty in the SR",
                        ds.get("SOPInstanceUID", "?"), elem.keyword or elem.tag)
            ds[elem.tag].value = ""
        elif elem.VR in _DATE_PARSERS and elem.value not in (None, ""):
            try:
                _DATE_PARSERS[elem.VR](str(elem.value))
            except (ValueError, TypeError):
                ds[elem.tag].value = ""
        elif (elem.VR in _MAX_LEN and elem.keyword not in MATCHING_KEYS and isinstance(elem.value, str)
              and len(elem.value) > _MAX_LEN[elem.VR]):
            ds[elem.tag].value = elem.value[: _MAX_LEN[elem.VR]]
    return ds


_TYPE3_SEQUENCES = ("ProcedureCodeSequence", "ReferencedStudySequence", "ReferencedPatientSequence")
_DATE_PARSERS = {
    "DA": lambda v: dt.datetime.strptime(v.strip().replace(".", ""), "%Y%m%d"),
    "TM": lambda v: pydicom.valuerep.TM(v.strip()),
    "DT": lambda v: pydicom.valuerep.DT(v.strip()),
}
_MAX_LEN = {"SH": 16, "LO": 64, "CS": 16, "AE": 16}
#: Values a RIS or PACS matches the report to its study by: copied as they are, even when longer
#: than their VR allows (the corrected copies keep them so too).
MATCHING_KEYS = frozenset({"AccessionNumber", "PatientID", "StudyID"})
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})


def _ascii(value) -> bool:
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return all(str(v).isascii() for v in values if v is not None)


def referenceable(img: ReportedImage) -> bool:
    """Whether an image can be referenced from a valid SR (some archives hold invalid UIDs)."""
    return pydicom.uid.UID(img.sop_instance_uid).is_valid and pydicom.uid.UID(img.sop_class_uid).is_valid


def _site_code(catalogue: Catalogue, name: str) -> Code | None:
    term = catalogue.get(name).term
    return Code(term.sct_code, SCT, term.sct_meaning) if term.sct_code else None


def measurement_group(img: ReportedImage, n: int, algorithm: Algorithm, catalogue: Catalogue,
                      tracking_uid: str | None = None) -> bytes:
    """TID 1501 Measurement Group of one image, encoded: finding sites of its labels, one
    probability per known class (each with its site), the algorithm, the source image."""
    site = codes.SCT.FindingSite
    items = [
        sc.text(codes.DCM.TrackingIdentifier, f"Body part, image {n}", sc.HAS_OBS_CONTEXT),
        sc.uidref(codes.DCM.TrackingUniqueIdentifier, tracking_uid or generate_uid(), sc.HAS_OBS_CONTEXT),
        sc.code(codes.DCM.Finding, codes.SCT.AnatomicalStructure, sc.CONTAINS),
    ]
    items += [sc.code(site, c, sc.HAS_CONCEPT_MOD) for c in (_site_code(catalogue, l) for l in img.labels) if c]
    items += [sc.text(codes.DCM.AlgorithmName, algorithm.model_name, sc.HAS_CONCEPT_MOD),
              sc.text(codes.DCM.AlgorithmVersion, algorithm.model_version, sc.HAS_CONCEPT_MOD)]
    items += [sc.text(codes.DCM.AlgorithmParameters, p, sc.HAS_CONCEPT_MOD) for p in algorithm.parameters]
    for name, p in img.probabilities.items():
        c = _site_code(catalogue, name)
        if c is not None:  # a class without an anatomy code (Others) has no site to measure
            items.append(sc.num(codes.DCM.Probability, float(p), codes.UCUM.NoUnits, sc.CONTAINS,
                                [sc.code(site, c, sc.HAS_CONCEPT_MOD)]))
    # the classification itself as IHE AIR's qualitative finding: "anatomical structure = Chest"
    items += [sc.code(codes.SCT.AnatomicalStructure, c, sc.CONTAINS) for c in (_site_code(catalogue, l) for l in img.labels) if c]
    items.append(sc.image(codes.DCM.SourceOfMeasurement, img.sop_class_uid, img.sop_instance_uid,
                          None if img.frame is None else [img.frame + 1], sc.CONTAINS))
    return sc.container(codes.DCM.MeasurementGroup, items, sc.CONTAINS, template="1501")


def root_items(algorithm: Algorithm) -> list[bytes]:
    """The TID 1500 root's items before its Imaging Measurements: language, device observer, procedure."""
    return [
        sc.code(codes.DCM.LanguageOfContentItemAndDescendants, Code("en-US", "RFC5646", "English (United States)"),
                sc.HAS_CONCEPT_MOD),
        sc.code(codes.DCM.ObserverType, codes.DCM.Device, sc.HAS_OBS_CONTEXT),
        sc.uidref(codes.DCM.DeviceObserverUID, algorithm.device_uid, sc.HAS_OBS_CONTEXT),
        sc.text(codes.DCM.DeviceObserverName, MANUFACTURER, sc.HAS_OBS_CONTEXT),
        sc.text(codes.DCM.DeviceObserverManufacturer, MANUFACTURER, sc.HAS_OBS_CONTEXT),
        sc.text(codes.DCM.DeviceObserverModelName, algorithm.model_name, sc.HAS_OBS_CONTEXT),
        sc.code(codes.DCM.ProcedureReported, RADIOGRAPHY, sc.HAS_CONCEPT_MOD),
    ]


@dataclass
class EncodedReport:
    """An SR document whose Content Sequence is encoded already.

    ``document`` is highdicom's (patient, study, evidence, SR document modules) with the root's
    first items only; ``content`` is the whole encoded Content Sequence, written in its place.
    Content Sequence (0040,A730) is the document's last top-level attribute, so the file is
    pydicom's encoding of the document followed by that one element.
    """

    document: hd.sr.Comprehensive3DSR
    content: list[bytes]

    def __post_init__(self) -> None:
        tag = self.document["ContentSequence"].tag
        later = [t for t in self.document.keys() if t > tag]
        if later:
            raise ValueError(f"attributes after Content Sequence: {later}")
        if self.document.file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRLittleEndian:
            raise ValueError("encoded content is explicit VR little endian; the document is not")

    def save_as(self, target, enforce_file_format: bool = True) -> None:
        """Write a DICOM Part 10 file (``target``: a path or a binary file object)."""
        if not enforce_file_format:
            raise ValueError("an SR is always written as a Part 10 file")
        if isinstance(target, (str, Path)):
            with open(target, "wb") as fh:
                self._write(fh)
        else:
            self._write(target)

    def _write(self, fh) -> None:
        root = self.document["ContentSequence"]  # the root's first items, as highdicom saw them
        del self.document.ContentSequence
        try:
            self.document.save_as(fh, enforce_file_format=True)
        finally:
            self.document["ContentSequence"] = root
        fh.write(sc.element("ContentSequence", self.content))

    def dataset(self) -> pydicom.Dataset:
        """The document as a reader of the file sees it."""
        buf = io.BytesIO()
        self.save_as(buf)
        buf.seek(0)
        return pydicom.dcmread(buf)


@dataclass(frozen=True)
class ReportIdentity:
    """Where one SR goes: its UIDs and Series Number (derived by the caller, see :mod:`.uids`)
    and the earlier reports it supersedes (Predecessor Documents Sequence)."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    predecessors: tuple[ReportReference, ...] = ()

    def previous_versions(self) -> list[pydicom.Dataset] | None:
        out = []
        for ref in self.predecessors:
            ds = pydicom.Dataset()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = ref.study_instance_uid, ref.series_instance_uid
            ds.SOPInstanceUID, ds.SOPClassUID = ref.sop_instance_uid, ref.sop_class_uid
            out.append(ds)
        return out or None


def _identity(identity: ReportIdentity | None, number: int) -> ReportIdentity:
    return identity or ReportIdentity(generate_uid(), generate_uid(), number)


def tid1500_report(images: Sequence[ReportedImage], evidence: Sequence[pydicom.Dataset], algorithm: Algorithm,
                   catalogue: Catalogue, identity: ReportIdentity | None = None) -> EncodedReport:
    """A TID 1500 Measurement Report over the images of one study.

    highdicom builds the document from the root's first items; the Imaging Measurements (most
    of the content) are encoded by :mod:`.sr_content` and written after it. The evidence check
    highdicom does on the content tree is done here.
    """
    if not images:
        raise ValueError("an SR needs at least one classified image")
    missing = {img.sop_instance_uid for img in images} - {str(e.SOPInstanceUID) for e in evidence}
    if missing:
        raise ValueError(f"no evidence for {len(missing)} referenced image(s): {sorted(missing)[:3]}")
    first = root_items(algorithm)
    identity = _identity(identity, SERIES_NUMBER)
    sr = hd.sr.Comprehensive3DSR(  # the SOP class IHE AI Results uses for TID 1500
        evidence=list(evidence), specific_character_set="ISO_IR 192",
        content=sc.as_dataset(sc.container(codes.DCM.ImagingMeasurementReport, first, template="1500")),
        series_instance_uid=identity.series_instance_uid, series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid, instance_number=1, manufacturer=MANUFACTURER,
        previous_versions=identity.previous_versions(),
        series_description=TID1500_DESCRIPTION, is_complete=True,
        content_date=dt.date.today(), content_time=dt.datetime.now().time(),
    )
    # tracking UIDs from the report's own: the same report, the same content, run after run
    groups = [measurement_group(img, n, algorithm, catalogue, derived_uid("tracking", identity.sop_instance_uid, str(n)))
              for n, img in enumerate(images, start=1)]
    return EncodedReport(sr, first + [sc.container(codes.DCM.ImagingMeasurements, groups, sc.CONTAINS)])


def result_text(img: ReportedImage) -> str:
    """One human line per image: what a radiologist reads in the viewer, the image named by its
    Series and Instance Numbers and its UID."""
    shown = ", ".join(f"{l} {img.probabilities.get(l, 0):.0%}" for l in img.labels) or "no body part identified"
    term = f"; Body Part Examined {img.body_part_examined}" if img.body_part_examined else ""
    review = f". NEEDS REVIEW: {img.review_reason}" if img.needs_review else ""
    where = " ".join(part for part in (
        f"series {img.series_number}" if img.series_number is not None else "",
        f"image {img.instance_number}" if img.instance_number is not None else "",
        f"frame {img.frame + 1}" if img.frame is not None else "") if part)
    return f"{(where + ': ') if where else ''}{shown}{term}{review} (SOP Instance UID {img.sop_instance_uid})"


def text_report(images: Sequence[ReportedImage], evidence: Sequence[pydicom.Dataset], algorithm: Algorithm,
                identity: ReportIdentity | None = None) -> hd.sr.EnhancedSR:
    """The same result as plain text (an Enhanced SR with TEXT items)."""
    root = hd.sr.ContainerContentItem(name=IMAGING_REPORT, template_id=None, is_content_continuous=False)  # a line each
    items = [hd.sr.TextContentItem(
        name=codes.DCM.Finding, value=result_text(img)[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for img in images]
    items.append(hd.sr.TextContentItem(
        name=codes.DCM.AlgorithmName, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        value=f"{algorithm.model_name} {algorithm.model_version} ({MANUFACTURER} {algorithm.app_version}); "
              "AI result, to be confirmed by a person"))
    root.ContentSequence = hd.sr.ContentSequence(items)
    identity = _identity(identity, SERIES_NUMBER + 1)
    return hd.sr.EnhancedSR(
        evidence=list(evidence), specific_character_set="ISO_IR 192", content=root,
        series_instance_uid=identity.series_instance_uid, series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid, instance_number=1, manufacturer=MANUFACTURER,
        previous_versions=identity.previous_versions(),
        series_description=TEXT_DESCRIPTION, is_complete=True,
        content_date=dt.date.today(), content_time=dt.datetime.now().time(),
    )
