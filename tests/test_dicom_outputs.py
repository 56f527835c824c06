"""Corrected copies and structured reports, with a test double for the classifier: the corpus's
own labels, so that codes and terms can be checked against the catalogue exactly."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.encaps import generate_frames

from operators.catalogue import Catalogue
from operators.input.radiograph import read_file
from operators.model.classification import ModelInfo, Prediction
from operators.model.classify import classified_outcome
from operators.outputs.dicom_outputs import DicomOutputs
from operators.outputs.sr import Algorithm
from tests.conftest import require_tool

CAT = Catalogue.default()
MODEL = ModelInfo("labels-double", "1.0", "0" * 64, "mean", "cpu", tuple(CAT.names), tuple(CAT.names), {c: 0.5 for c in CAT.names})
ALGORITHM = Algorithm("labels-double", "1.0", "0" * 64, "mean", "0.1.0")


def _double(labels):
    probs = {c: (0.9 - 0.05 * labels.index(c) if c in labels else 0.02) for c in CAT.names}
    return Prediction(probabilities=probs, member_probabilities={}, labels=list(labels), needs_review=False, review_reason=None)


def run_outputs(corpus, names, out, labels, keep_uids=False):
    outputs = DicomOutputs(out, ALGORITHM, CAT, keep_uids=keep_uids)
    items, outcomes = [], []
    for name in names:
        (r,) = read_file(corpus / name, corpus).radiographs
        items.append(r)
        outcomes.append(classified_outcome(r, _double(labels[name]), MODEL, CAT))
    outcomes = outputs.add(items, outcomes)
    return outcomes, outputs.close()


def dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run([require_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True).stderr.decode("latin-1")
    return {l.strip() for l in out.splitlines() if l.startswith("Error")}


@pytest.fixture(scope="module")
def written(corpus, corpus_labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_out")
    before = {n: hashlib.sha256((corpus / n).read_bytes()).hexdigest() for n in corpus_labels}
    outcomes, srs = run_outputs(corpus, sorted(corpus_labels), out, corpus_labels)
    after = {n: hashlib.sha256((corpus / n).read_bytes()).hexdigest() for n in corpus_labels}
    assert before == after, "sources must never be written"
    return out, {o.source: o for o in outcomes}, srs


EXPECTED_TERMS = {
    "Chest": ("CHEST", "816094009"), "Hand": ("HAND", "85562004"), "Hip": ("HIP", "24136001"),
    "Pelvis|Hip": ("PELVIS", "816092008"),  # no joint term: the most probable label names it
    "Lower leg|Ankle": ("LOWERLIMB", "61685007"),  # parts of one limb: the parent term
    "Thoracic Spine|Lumbar Spine": ("TLSPINE", "1217256009"),  # a combined term
}


def test_corrected_copies_carry_catalogue_terms_and_history(written, corpus, corpus_labels):
    out, outcomes, _ = written
    checked = 0
    for name, labels in corpus_labels.items():
        o = outcomes[name]
        rel = o.outputs.corrected
        key = "|".join(labels)
        if key == "Others":
            assert rel is None and "no anatomy term" in o.outputs.corrected_reason
            continue
        if name == "wg04_RG1_UNCI.dcm":  # the same SOP Instance UID as wg04_RG1_J2KI.dcm: one copy of it
            assert rel is None and o.outputs.corrected_reason == (
                "not written: another input has the same SOP Instance UID (wg04_RG1_J2KI.dcm)")
            continue
        term, code = EXPECTED_TERMS[key]
        src = pydicom.dcmread(corpus / name, force=True)
        copy = pydicom.dcmread(out / rel)
        assert copy.BodyPartExamined == term
        assert o.classification.body_part_examined == term
        region = copy.AnatomicRegionSequence[0]
        assert (region.CodeValue, region.CodingSchemeDesignator) == (code, "SCT")
        record = copy.OriginalAttributesSequence[-1]
        assert record.ModifyingSystem == "bodypart-xr" and record.ReasonForTheAttributeModification == "CORRECT"
        old = record.ModifiedAttributesSequence[0]
        if str(src.get("BodyPartExamined", "")).upper() != term:
            assert str(old.BodyPartExamined) == str(src.get("BodyPartExamined", ""))
        assert old.SOPInstanceUID == src.SOPInstanceUID
        # safe default: a new instance in a derived series
        assert copy.SOPInstanceUID != src.SOPInstanceUID and copy.SeriesInstanceUID != src.SeriesInstanceUID
        assert copy.StudyInstanceUID == src.StudyInstanceUID
        checked += 1
    assert checked >= 30


def test_pixel_data_is_copied_untouched(written, corpus):
    out, outcomes, _ = written
    for name, o in outcomes.items():
        rel = o.outputs.corrected
        if rel is None:
            continue
        a, b = pydicom.dcmread(corpus / name, force=True), pydicom.dcmread(out / rel)
        if a["PixelData"].is_undefined_length:
            # same fragments; only an odd fragment (invalid) gets one trailing pad byte
            fa = list(generate_frames(a.PixelData, number_of_frames=1))
            fb = list(generate_frames(b.PixelData, number_of_frames=1))
            assert all(y[: len(x)] == x and len(y) - len(x) in (0, 1) for x, y in zip(fa, fb)), name
        else:
            assert a.PixelData == b.PixelData, name
        assert b.file_meta.TransferSyntaxUID == (a.file_meta.get("TransferSyntaxUID") or b.file_meta.TransferSyntaxUID)


def test_corrected_copies_add_no_dciodvfy_errors(written, corpus):
    out, outcomes, _ = written
    for name, o in outcomes.items():
        rel = o.outputs.corrected
        if rel:
            new = dciodvfy_errors(out / rel) - dciodvfy_errors(corpus / name)
            assert not new, (name, sorted(new)[:3])


def test_keep_uids_option(corpus, tmp_path):
    outcomes, _ = run_outputs(corpus, ["cr_hand_j2k.dcm"], tmp_path, {"cr_hand_j2k.dcm": ["Hand"]}, keep_uids=True)
    copy = pydicom.dcmread(tmp_path / outcomes[0].outputs.corrected)
    src = pydicom.dcmread(corpus / "cr_hand_j2k.dcm")
    assert copy.SOPInstanceUID == src.SOPInstanceUID and copy.SeriesInstanceUID == src.SeriesInstanceUID


def test_one_sr_pair_per_study_and_all_valid(written, corpus):
    """No dciodvfy error in any SR but one its study's images have themselves: the keys a RIS
    matches on (an over-long Accession Number in dx_chest_pa_j2k.dcm) are copied as they are."""
    out, outcomes, srs = written
    studies = {o.study_instance_uid for o in outcomes.values() if o.outputs.sr}
    assert len(srs) == 2 * len(studies)
    inherited = 0
    for path in srs:
        sources = [name for name, o in outcomes.items() if o.outputs.sr and out / o.outputs.sr in (path, path.with_name(path.name.replace("_text", "_tid1500")))]
        of_sources = set().union(*(dciodvfy_errors(corpus / name) for name in sources))
        errors = dciodvfy_errors(path)
        assert not errors - of_sources, (path.name, sorted(errors - of_sources)[:3])
        inherited += bool(errors)
    assert inherited == 2  # the SR pair of that one study


def test_tid1500_round_trips(written, corpus_labels):
    out, outcomes, _ = written
    hand = outcomes["cr_hand_j2k.dcm"]
    sr = hd.sr.srread(out / hand.outputs.sr)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR, as IHE AIR has it
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    g = groups[0]
    assert g.source_images[0].referenced_sop_instance_uid == hand.sop_instance_uid
    assert [s.value.value for s in g.finding_sites] == ["85562004"]
    probs = {m.finding_sites[0].value.value: m.value for m in g.get_measurements()}
    assert probs["85562004"] == pytest.approx(0.9)
    assert probs["816094009"] == pytest.approx(0.02)  # chest: every known class is reported
    algorithm = [i for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111001"]  # Algorithm Name
    assert algorithm and algorithm[0].TextValue == "labels-double"
    assert sr.Modality == "SR"


def test_text_sr_says_it_in_words(written, corpus):
    out, outcomes, _ = written
    o = outcomes["dx_spine_lateral_nometa.dcm"]
    sr = pydicom.dcmread(out / o.outputs.sr_text)
    texts = [i.TextValue for i in sr.ContentSequence if i.ValueType == "TEXT"]
    src = pydicom.dcmread(Path(corpus) / "dx_spine_lateral_nometa.dcm", force=True)
    line = (f"series {src.SeriesNumber} image {src.InstanceNumber}: Thoracic Spine 90%, Lumbar Spine 85%; "
            f"Body Part Examined TLSPINE (SOP Instance UID {src.SOPInstanceUID})")
    assert line in texts
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    # file names can carry patient names: no report names one
    for name in outcomes:
        for path in (out / "sr").iterdir():
            assert name.encode() not in path.read_bytes(), (name, path.name)


def test_invalid_source_uid_is_left_out_of_the_sr_with_a_reason(written):
    _, outcomes, _ = written
    o = outcomes["cr_dental_pano_modlut.dcm"]  # its SOP Instance UID is not a valid UID
    assert o.outputs.sr is None and "not a valid UID" in o.outputs.sr_reason
    assert "sr" not in o.to_json()["outputs"]


@pytest.mark.slow  # starts a pool of worker processes
def test_reports_built_in_worker_processes_match_the_serial_ones(corpus, corpus_labels, written, tmp_path, caplog,
                                                                monkeypatch):
    """Many studies: SRs come from a process pool, with progress in the log, and say the same."""
    import logging

    from operators.outputs import dicom_outputs

    monkeypatch.setattr(dicom_outputs, "POOL_FROM_STUDIES", 8)  # the corpus has 20 studies, not 50
    pools = []

    class CountedPool(dicom_outputs.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs.get("max_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(dicom_outputs, "ProcessPoolExecutor", CountedPool)

    names = sorted(corpus_labels)
    outputs = DicomOutputs(tmp_path, ALGORITHM, CAT, corrected="none", workers=2)
    for name in names:
        (r,) = read_file(corpus / name, corpus).radiographs
        outputs.add([r], [classified_outcome(r, _double(corpus_labels[name]), MODEL, CAT)])
    assert len(outputs.studies) >= 8  # enough for the pool
    caplog.set_level(logging.INFO, logger="bodypart")
    parallel = outputs.close()
    assert pools == [2]
    _, _, serial = written
    assert [p.name for p in parallel] == [p.name for p in sorted(serial)]
    for a, b in zip(parallel, sorted(serial)):
        assert _said(pydicom.dcmread(a)) == _said(pydicom.dcmread(b)), a.name
    assert all(len(_said(pydicom.dcmread(p))) >= 2 for p in parallel)  # the comparison compares something
    assert max(len(_said(pydicom.dcmread(p))) for p in parallel) > 20
    reported = sum(1 for s in outputs.studies.values() if s.entries)  # not the one whose only image has an invalid UID
    assert "structured reports: " in caplog.text and f"{reported}/{reported} studies" in caplog.text


def _said(ds) -> list:
    """What an SR says, without its UIDs and times: concept names, codes, texts, numbers, references."""
    out = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else None
        value = (item.get("TextValue") or [c.CodeValue for c in item.get("ConceptCodeSequence", [])]
                 or [m.NumericValue for m in item.get("MeasuredValueSequence", [])]
                 or [r.ReferencedSOPInstanceUID for r in item.get("ReferencedSOPSequence", [])])
        if name not in ("Tracking Unique Identifier", "Observation UID"):
            out.append((name, str(value)))
        out.extend(_said(item))
    return out


def test_a_source_that_changes_after_it_was_read_is_not_copied_but_reported_as_read(corpus, tmp_path):
    """Files can change while a run goes on (an archive being written): the copy would put the
    file's pixels now beside a result for the pixels classified before, so it is not written, with
    the reason; the SR copies the header the reader parsed, so it describes what was classified."""
    import os
    import shutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("dx_pelvis_ddh_1.dcm", "dx_pelvis_ddh_10.dcm"):
        shutil.copyfile(corpus / name, inputs / name)
    (changed,) = read_file(inputs / "dx_pelvis_ddh_1.dcm", inputs).radiographs
    (kept,) = read_file(inputs / "dx_pelvis_ddh_10.dcm", inputs).radiographs
    with open(inputs / "dx_pelvis_ddh_1.dcm", "ab") as fh:  # appended to after it was read
        fh.write(b"\0" * 16)
    os.utime(inputs / "dx_pelvis_ddh_1.dcm", ns=(0, 0))
    outputs = DicomOutputs(tmp_path / "out", ALGORITHM, CAT)
    outcomes = outputs.add([changed, kept], [classified_outcome(r, _double(["Pelvis"]), MODEL, CAT) for r in (changed, kept)])
    outputs.close()
    bad, good = (o.outputs for o in outcomes)
    assert bad.corrected is None and bad.corrected_attempted
    assert bad.corrected_reason == "not written: the source file changed or vanished after it was read"
    assert bad.sr_reason is None and bad.sr is not None and (tmp_path / "out" / bad.sr).exists()
    assert good.corrected == "dicom/dx_pelvis_ddh_10.dcm" and good.corrected_reason is None
    assert not (tmp_path / "out/dicom/dx_pelvis_ddh_1.dcm").exists()
    assert outcomes[0].to_json()["corrected_reason"] == bad.corrected_reason and "sr_reason" not in outcomes[0].to_json()


def test_the_sr_copies_the_header_the_reader_parsed_without_reading_the_source_again(corpus, tmp_path):
    """The reader's header travels with the radiograph: a source gone after reading still gets
    its SR entry, with the attributes it had when it was read."""
    import shutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(corpus / "dx_pelvis_ddh_1.dcm", inputs / "dx_pelvis_ddh_1.dcm")
    (r,) = read_file(inputs / "dx_pelvis_ddh_1.dcm", inputs).radiographs
    assert r.header is not None and "PixelData" not in r.header
    (inputs / "dx_pelvis_ddh_1.dcm").unlink()
    outputs = DicomOutputs(tmp_path / "out", ALGORITHM, CAT, corrected="none")
    (o,) = outputs.add([r], [classified_outcome(r, _double(["Pelvis"]), MODEL, CAT)])
    (tid1500, _) = outputs.close()
    assert o.outputs.sr is not None and o.outputs.sr_reason is None
    sr = pydicom.dcmread(tmp_path / "out" / o.outputs.sr)
    assert sr.StudyInstanceUID == r.study_instance_uid and sr.PatientID == r.header.PatientID
    assert "PixelData" not in r.header  # the SR's copy did not change the carried header
