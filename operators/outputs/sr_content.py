"""SR content items encoded directly to bytes (explicit VR little endian, UTF-8 text).

A TID 1500 report holds about 25 probability items per image, some 660 data elements. Built
with highdicom's template classes and written by pydicom that costs about 0.16 s per image here,
more than decoding the image; encoded here it costs about 1 ms. Items come out exactly as
highdicom encodes them (``tests/test_sr.py`` compares the two, item for item, against
``tests/sr_reference.py``), and the document around them is still built by highdicom
(:class:`operators.outputs.sr.EncodedReport`).

Every function returns one encoded sequence item (``(FFFE,E000)``, length, elements in tag
order); a list of them is the value of a sequence element.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Iterable

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DSfloat

CONTAINS, HAS_CONCEPT_MOD, HAS_OBS_CONTEXT = "CONTAINS", "HAS CONCEPT MOD", "HAS OBS CONTEXT"

_KEYWORDS = (
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning", "MappingResource",
    "ReferencedSOPClassUID", "ReferencedSOPInstanceUID", "ReferencedFrameNumber", "ReferencedSOPSequence",
    "MeasurementUnitsCodeSequence", "RelationshipType", "ValueType", "ConceptNameCodeSequence",
    "ContinuityOfContent", "UID", "TextValue", "FloatingPointValue", "ConceptCodeSequence",
    "MeasuredValueSequence", "NumericValue", "ContentTemplateSequence", "ContentSequence", "TemplateIdentifier",
)
_ELEMENTS = {kw: (tag_for_keyword(kw), dictionary_VR(tag_for_keyword(kw))) for kw in _KEYWORDS}
#: VRs with a 4-byte length (PS3.5 7.1.2)
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
#: Value lengths PS3.5 6.2 allows, in characters, for the string VRs written here
_MAX_CHARS = {"CS": 16, "SH": 16, "LO": 64, "UI": 64, "DS": 16}
_ITEM = b"\xfe\xff\x00\xe0"


def element(keyword: str, value) -> bytes:
    """One data element: a sequence takes a list of encoded items, strings are padded to even length."""
    tag, vr = _ELEMENTS[keyword]
    if vr == "SQ":
        data = b"".join(value)
    elif vr == "FD":
        data = struct.pack("<d", float(value))
    else:
        text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        if vr in _MAX_CHARS and len(text) > _MAX_CHARS[vr] * (len(value) if isinstance(value, (list, tuple)) else 1):
            raise ValueError(f"{keyword} value {text[:80]!r} is longer than {vr} allows")
        data = text.encode("utf-8")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG:
        return head + b"\0\0" + struct.pack("<I", len(data)) + data
    if len(data) > 0xFFFF:
        raise ValueError(f"{keyword} value too long for a 2-byte length")
    return head + struct.pack("<H", len(data)) + data


def item(**elements) -> bytes:
    """A sequence item from keyword=value pairs (``None`` values are left out)."""
    present = sorted((_ELEMENTS[k][0], k, v) for k, v in elements.items() if v is not None)
    body = b"".join(element(k, v) for _, k, v in present)
    return _ITEM + struct.pack("<I", len(body)) + body


def as_dataset(encoded: bytes) -> Dataset:
    """One encoded item read back as a pydicom dataset."""
    if encoded[:4] != _ITEM:
        raise ValueError("not an encoded sequence item")
    return read_dataset(BytesIO(encoded[8:]), is_implicit_VR=False, is_little_endian=True, parent_encoding="utf_8")


def code_item(code: Code) -> bytes:
    """A Code Sequence item (short code values only: every code this app writes is one)."""
    return item(CodeValue=code.value, CodingSchemeDesignator=code.scheme_designator,
                CodingSchemeVersion=code.scheme_version or None, CodeMeaning=code.meaning)


def _content(relationship: str | None, value_type: str, name: Code, **elements) -> bytes:
    return item(RelationshipType=relationship, ValueType=value_type, ConceptNameCodeSequence=[code_item(name)], **elements)


def text(name: Code, value: str, relationship: str) -> bytes:
    return _content(relationship, "TEXT", name, TextValue=value)


def uidref(name: Code, value: str, relationship: str) -> bytes:
    return _content(relationship, "UIDREF", name, UID=value)


def code(name: Code, value: Code, relationship: str) -> bytes:
    return _content(relationship, "CODE", name, ConceptCodeSequence=[code_item(value)])


def num(name: Code, value: float, unit: Code, relationship: str, modifiers: Iterable[bytes] = ()) -> bytes:
    """A NUM item with the value as DS (auto-formatted to 16 characters) and exactly as FD."""
    measured = item(MeasurementUnitsCodeSequence=[code_item(unit)], NumericValue=str(DSfloat(value, auto_format=True)),
                    FloatingPointValue=float(value))
    return _content(relationship, "NUM", name, MeasuredValueSequence=[measured], ContentSequence=list(modifiers) or None)


def image(name: Code, sop_class_uid: str, sop_instance_uid: str, frame_numbers: list[int] | None,
          relationship: str) -> bytes:
    ref = item(ReferencedSOPClassUID=sop_class_uid, ReferencedSOPInstanceUID=sop_instance_uid,
               ReferencedFrameNumber=[int(f) for f in frame_numbers] if frame_numbers else None)
    return _content(relationship, "IMAGE", name, ReferencedSOPSequence=[ref])


def container(name: Code, items: list[bytes], relationship: str | None = None, template: str | None = None) -> bytes:
    tpl = [item(MappingResource="DCMR", TemplateIdentifier=template)] if template else None
    return _content(relationship, "CONTAINER", name, ContinuityOfContent="CONTINUOUS", ContentTemplateSequence=tpl,
                    ContentSequence=items)
