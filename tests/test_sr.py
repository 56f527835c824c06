"""The TID 1500 report's direct encoding says exactly what highdicom's template classes say."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from operators.catalogue import Catalogue
from operators.outputs.sr import Algorithm, ReportedImage, evidence_header, tid1500_report
from tests.sr_reference import reference_content

CAT = Catalogue.default()
ALGORITHM = Algorithm("bodypart-test", "2.1", "ab" * 32, "lr", "0.1.0")
TRACKING_UID = "112040"


def _images(evidence: list[Dataset], rng: np.random.Generator) -> list[ReportedImage]:
    labels = [("Chest",), ("Pelvis", "Hip"), ("Others",), ()]
    out = []
    for i, ev in enumerate(evidence):
        probs = {n: float(rng.random()) for n in CAT.names}
        probs[CAT.names[0]] = 1e-7  # DS needs the exponent form
        probs[CAT.names[1]] = 0.123456789123456789  # and more digits than DS holds
        out.append(ReportedImage(
            series_number=i, instance_number=None if i % 3 else i, sop_class_uid=ev.SOPClassUID, sop_instance_uid=ev.SOPInstanceUID,
            frame=None if i % 2 == 0 else i, labels=labels[i % len(labels)], probabilities=probs,
            body_part_examined=None, needs_review=False, review_reason=None))
    return out


def _canonical(ds: Dataset) -> list:
    """Content attributes as (tag, VR, value) trees, tracking UIDs (random by design) masked."""
    out = []
    tracking = "ConceptNameCodeSequence" in ds and ds.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID
    for elem in ds:
        if elem.VR == "SQ":
            out.append((elem.tag, "SQ", [_canonical(item) for item in elem.value]))
        elif tracking and elem.keyword == "UID":
            out.append((elem.tag, elem.VR, "*"))
        else:
            value = elem.value
            out.append((elem.tag, elem.VR, [str(v) for v in value] if isinstance(value, (list, pydicom.multival.MultiValue)) else str(value)))
    return out


def _written(ds: Dataset) -> Dataset:
    """``ds`` written and read back (explicit VR little endian), as a reader of the file sees it."""
    buf = io.BytesIO()
    plain = Dataset()
    plain.update(ds)
    pydicom.dcmwrite(buf, plain, implicit_vr=False, little_endian=True)
    buf.seek(0)
    return pydicom.dcmread(buf, force=True)


CONTENT = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence", "ContentSequence")


@pytest.fixture(scope="module")
def study(corpus):
    paths = sorted(corpus.glob("dx_pelvis_ddh_1*.dcm"))[:5]
    evidence = [evidence_header(p) for p in paths]
    return evidence, _images(evidence, np.random.default_rng(7))


def test_report_content_equals_highdicom_templates(study):
    evidence, images = study
    ours = tid1500_report(images, evidence, ALGORITHM, CAT).dataset()
    ref = _written(reference_content(images, ALGORITHM, CAT))
    pick = lambda ds: Dataset({ds[k].tag: ds[k] for k in CONTENT if k in ds})  # noqa: E731
    a, b = _canonical(pick(ours)), _canonical(pick(ref))
    assert a == b
    assert len(str(a)) > 20_000  # five groups of 24 probabilities each: the comparison compares something


def test_report_reads_back_as_a_measurement_report(study):
    evidence, images = study
    buf = io.BytesIO()
    tid1500_report(images, evidence, ALGORITHM, CAT).save_as(buf, enforce_file_format=True)
    buf.seek(0)
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(buf))
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == len(images)
    assert groups[1].source_images[0].referenced_frame_numbers == [2]  # frame 1 of image 2, one-based
    probs = [m.value for m in groups[0].get_measurements()]
    assert len(probs) == len(CAT.names) - 1  # every class with an anatomy code
    assert probs[1] == pytest.approx(0.123456789123456789)  # FD keeps what DS cannot


def test_report_refuses_images_without_evidence(study):
    evidence, images = study
    stray = ReportedImage(**{**images[0].__dict__, "sop_instance_uid": generate_uid()})
    with pytest.raises(ValueError, match="no evidence"):
        tid1500_report([*images, stray], evidence, ALGORITHM, CAT)


def test_encoded_items_read_back_with_padding_utf8_and_limits():
    from pydicom.sr.coding import Code

    from operators.outputs import sr_content as sc

    name = Code("121071", "DCM", "Finding")
    item = sc.as_dataset(sc.text(name, "Körper, Hand 97%", sc.CONTAINS))  # odd UTF-8 length: padded
    assert item.TextValue == "Körper, Hand 97%" and item.ValueType == "TEXT"
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    ref = sc.as_dataset(sc.image(name, "1.2.840.10008.5.1.4.1.1.1", "1.2.3", [1, 12], sc.CONTAINS))
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3"  # odd UI: null-padded, read back bare
    assert list(ref.ReferencedSOPSequence[0].ReferencedFrameNumber) == [1, 12]
    with pytest.raises(ValueError, match="longer than LO"):
        sc.code_item(Code("1", "DCM", "x" * 65))
