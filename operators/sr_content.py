"""SR content items as plain pydicom datasets, for the large part of a TID 1500 report.

highdicom builds and validates every content item as an object and, in the document constructor,
deep-copies and re-parses the whole tree: about 0.13 s per classified image here (25 probability
items each), more than decoding the image. The measurement groups are regular, so they are
encoded here directly, item for item as highdicom encodes them (``tests/sr_reference.py`` builds
the same content with highdicom and the tests compare the two); the document around them is
still highdicom's.
"""

from __future__ import annotations

from typing import Iterable

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DSfloat

CONTAINS, HAS_CONCEPT_MOD, HAS_OBS_CONTEXT = "CONTAINS", "HAS CONCEPT MOD", "HAS OBS CONTEXT"


def code_item(code: Code) -> Dataset:
    """A Code Sequence item (short code values only: every code this app writes is one)."""
    if len(code.value) > 16 or len(code.meaning) > 64:
        raise ValueError(f"code {code.value!r} ({code.scheme_designator}) does not fit a short Code Value")
    ds = Dataset()
    ds.CodeValue = code.value
    ds.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version:
        ds.CodingSchemeVersion = code.scheme_version
    ds.CodeMeaning = code.meaning
    return ds


def _item(relationship: str | None, value_type: str, name: Code) -> Dataset:
    ds = Dataset()
    if relationship:
        ds.RelationshipType = relationship
    ds.ValueType = value_type
    ds.ConceptNameCodeSequence = [code_item(name)]
    return ds


def text(name: Code, value: str, relationship: str) -> Dataset:
    ds = _item(relationship, "TEXT", name)
    ds.TextValue = value
    return ds


def uidref(name: Code, value: str, relationship: str) -> Dataset:
    ds = _item(relationship, "UIDREF", name)
    ds.UID = value
    return ds


def code(name: Code, value: Code, relationship: str) -> Dataset:
    ds = _item(relationship, "CODE", name)
    ds.ConceptCodeSequence = [code_item(value)]
    return ds


def num(name: Code, value: float, unit: Code, relationship: str, modifiers: Iterable[Dataset] = ()) -> Dataset:
    """A NUM item with the value as DS (auto-formatted to 16 characters) and exactly as FD."""
    ds = _item(relationship, "NUM", name)
    measured = Dataset()
    measured.MeasurementUnitsCodeSequence = [code_item(unit)]
    measured.NumericValue = DSfloat(value, auto_format=True)
    measured.FloatingPointValue = float(value)
    ds.MeasuredValueSequence = [measured]
    modifiers = list(modifiers)
    if modifiers:
        ds.ContentSequence = modifiers
    return ds


def image(name: Code, sop_class_uid: str, sop_instance_uid: str, frame_numbers: list[int] | None,
          relationship: str) -> Dataset:
    ds = _item(relationship, "IMAGE", name)
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class_uid
    ref.ReferencedSOPInstanceUID = sop_instance_uid
    if frame_numbers:
        ref.ReferencedFrameNumber = frame_numbers
    ds.ReferencedSOPSequence = [ref]
    return ds


def container(name: Code, items: list[Dataset], relationship: str | None = None,
              template: str | None = None) -> Dataset:
    ds = _item(relationship, "CONTAINER", name)
    ds.ContinuityOfContent = "CONTINUOUS"
    if template:
        tpl = Dataset()
        tpl.MappingResource = "DCMR"
        tpl.TemplateIdentifier = template
        ds.ContentTemplateSequence = [tpl]
    ds.ContentSequence = items
    return ds
