"""Outputs a PACS keeps once and reads right: derived UIDs, predecessors, Series Numbers, matching
keys, character sets, duplicates and which images get corrected copies (real corpus files)."""

from __future__ import annotations

import shutil

import pydicom
import pytest

from operators.catalogue import Catalogue
from operators.input.radiograph import read_file
from operators.model.classification import ModelInfo, Prediction
from operators.model.classify import classified_outcome
from operators.outputs.dicom_outputs import DicomOutputs
from operators.outputs.sr import Algorithm

CAT = Catalogue.default()


def _model(checksum: str, stacker: str = "mean") -> tuple[ModelInfo, Algorithm]:
    return (ModelInfo("labels-double", checksum[:3], checksum, stacker, "cpu", tuple(CAT.names), tuple(CAT.names),
                      {c: 0.5 for c in CAT.names}),
            Algorithm("labels-double", checksum[:3], checksum, stacker, "0.1.0"))


def _prediction(labels, needs_review=False):
    probs = {c: (0.9 if c in labels else 0.02) for c in CAT.names}
    return Prediction(probs, {}, list(labels), needs_review, "within 0.1 of a threshold" if needs_review else None)


def _run(folder, out, checksum="a" * 64, labels=("Pelvis",), needs_review=False, stacker="mean", **options):
    """Every file of ``folder`` through the DICOM writers, as the pipeline passes them."""
    model, algorithm = _model(checksum, stacker)
    outputs = DicomOutputs(out, algorithm, CAT, **options)
    results = []
    for path in sorted(folder.iterdir()):
        read = read_file(path, folder)
        items = read.radiographs or [read.outcome]
        outcomes = [classified_outcome(r, _prediction(labels, needs_review), model, CAT) for r in read.radiographs] or [read.outcome]
        results += outputs.add(items, outcomes)
    return {o.source: o for o in results}, outputs.close()


@pytest.fixture
def study(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("dx_pelvis_ddh_1.dcm", "dx_chest_pa_j2k.dcm"):
        shutil.copyfile(corpus / name, folder / name)
    return folder


def _uids(out):
    return sorted((p.relative_to(out).as_posix(), str(pydicom.dcmread(p).SOPInstanceUID), str(pydicom.dcmread(p).SeriesInstanceUID))
                  for p in out.rglob("*.dcm"))


def test_a_rerun_of_the_same_model_writes_the_same_objects_and_a_new_model_new_ones(study, tmp_path):
    _run(study, tmp_path / "one")
    _run(study, tmp_path / "two")
    _run(study, tmp_path / "new", checksum="b" * 64)
    _run(study, tmp_path / "stacker", stacker="logistic")  # other labels can come: other objects
    one, two, new = _uids(tmp_path / "one"), _uids(tmp_path / "two"), _uids(tmp_path / "new")
    assert len(one) == 2 + 2 * 2  # two copies, an SR pair for each of the two studies
    assert one == two
    assert not {u for _, u, _ in one} & {u for _, u, _ in new}
    assert not {u for _, u, _ in one} & {u for _, u, _ in _uids(tmp_path / "stacker")}
    for path in (tmp_path / "one/sr").iterdir():  # the same content too, tracking UIDs included
        a, b = pydicom.dcmread(path), pydicom.dcmread(tmp_path / "two/sr" / path.name)
        assert a.ContentSequence == b.ContentSequence
    assert all(u.startswith("2.25.") and pydicom.uid.UID(u).is_valid for _, u, s in one for u in (u, s))


def test_an_earlier_report_among_the_inputs_is_the_new_reports_predecessor(study, tmp_path):
    old = tmp_path / "old"
    _run(study, old)
    again = tmp_path / "again"
    shutil.copytree(study, again)
    for sr in (old / "sr").iterdir():  # the study as pulled back from the PACS: images and our SRs
        shutil.copyfile(sr, again / sr.name)
    outcomes, _ = _run(again, tmp_path / "same")  # same model: the same reports, nothing to supersede
    earlier = [o for o in outcomes.values() if o.earlier_report is not None]
    assert len(earlier) == 4 and all("earlier result of this app" in o.reason for o in earlier)
    for path in (tmp_path / "same/sr").iterdir():
        ds, before = pydicom.dcmread(path), pydicom.dcmread(old / "sr" / path.name)
        assert "PredecessorDocumentsSequence" not in ds
        # the same object: same UIDs and the same Series Number (its own earlier copy does not push it on)
        assert (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber) == (
            before.SOPInstanceUID, before.SeriesInstanceUID, before.SeriesNumber)
    outcomes, _ = _run(again, tmp_path / "newer", checksum="b" * 64)
    for path in (tmp_path / "newer/sr").iterdir():
        ds = pydicom.dcmread(path)
        before = pydicom.dcmread(old / "sr" / path.name)
        (ref,) = ds.PredecessorDocumentsSequence
        assert ref.StudyInstanceUID == ds.StudyInstanceUID
        (series,) = ref.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == before.SeriesInstanceUID
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == before.SOPInstanceUID


def test_series_numbers_stay_clear_of_the_sources(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(corpus / "dx_pelvis_ddh_1.dcm")
    ds.SeriesNumber = 9901  # where the SR would go
    ds.save_as(folder / "a.dcm")
    uids = ds.SeriesInstanceUID, ds.SOPInstanceUID
    ds.Modality, ds.SeriesNumber = "CT", 9903  # a series of the study that is not classified
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uids[0] + ".1", uids[1] + ".1"
    ds.save_as(folder / "b.dcm")
    ds.Modality, ds.SeriesNumber = "DX", 9904  # a damaged image of the study: its pixel data cut short
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uids[0] + ".2", uids[1] + ".2"
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(folder / "c.dcm")
    outcomes, _ = _run(folder, tmp_path / "out")
    o = outcomes["a.dcm"]
    assert outcomes["b.dcm"].status.value == "skipped" and outcomes["c.dcm"].status.value == "failed"
    assert pydicom.dcmread(tmp_path / "out" / o.outputs.corrected).SeriesNumber == 9901 + 1000
    numbers = {int(pydicom.dcmread(tmp_path / "out" / p).SeriesNumber) for p in (o.outputs.sr, o.outputs.sr_text)}
    assert numbers == {9902, 9905}


def test_an_image_whose_classification_failed_keeps_its_series_number(corpus, tmp_path):
    """The model failed on one image of the study (its batch): the SRs of the rest skip its number."""
    from operators.outcome import Status

    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(corpus / "dx_pelvis_ddh_1.dcm")
    ds.SeriesNumber = 9901
    ds.save_as(folder / "a.dcm")
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesNumber = ds.SeriesInstanceUID + ".1", ds.SOPInstanceUID + ".1", 9902
    ds.save_as(folder / "b.dcm")
    model, algorithm = _model("a" * 64)
    outputs = DicomOutputs(tmp_path / "out", algorithm, CAT)
    (a,), (b,) = (read_file(folder / n, folder).radiographs for n in ("a.dcm", "b.dcm"))
    (done,) = outputs.add([a], [classified_outcome(a, _prediction(("Pelvis",)), model, CAT)])
    outputs.add([b], [b.outcome(Status.FAILED, "classification failed: RuntimeError: out of memory")])
    outputs.close()
    numbers = {int(pydicom.dcmread(tmp_path / "out" / p).SeriesNumber) for p in (done.outputs.sr, done.outputs.sr_text)}
    assert numbers == {9903, 9904}


def test_matching_keys_are_the_same_in_the_report_and_the_copy(study, corpus, tmp_path):
    """dx_chest_pa_j2k.dcm holds a 56-character Accession Number (SH allows 16): a RIS matches on
    the value it has, so neither output cuts it."""
    outcomes, _ = _run(study, tmp_path / "out", labels=("Chest",))
    o = outcomes["dx_chest_pa_j2k.dcm"]
    source = pydicom.dcmread(corpus / "dx_chest_pa_j2k.dcm", stop_before_pixels=True)
    assert len(source.AccessionNumber) == 56
    copy = pydicom.dcmread(tmp_path / "out" / o.outputs.corrected, stop_before_pixels=True)
    for rel in (o.outputs.sr, o.outputs.sr_text):
        sr = pydicom.dcmread(tmp_path / "out" / rel)
        assert sr.AccessionNumber == copy.AccessionNumber == source.AccessionNumber
        assert sr.PatientID == source.PatientID


def test_text_without_a_declared_character_set_is_left_out_not_garbled(corpus, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    plain = pydicom.dcmread(corpus / "dx_pelvis_ddh_1.dcm")
    assert "SpecificCharacterSet" not in plain
    plain.PatientName = "M\xfcller^J\xfcrgen".encode("latin-1")  # raw bytes, no character set said
    plain.save_as(folder / "undeclared.dcm")
    declared = pydicom.dcmread(corpus / "dx_pelvis_ddh_10.dcm")
    declared.SpecificCharacterSet = "ISO_IR 100"
    declared.PatientName = "M\xfcller^J\xfcrgen"
    declared.save_as(folder / "declared.dcm")
    outcomes, _ = _run(folder, tmp_path / "out")
    undeclared = pydicom.dcmread(tmp_path / "out" / outcomes["undeclared.dcm"].outputs.sr)
    assert str(undeclared.PatientName) == ""
    assert "PatientName has non-ASCII bytes but no Specific Character Set" in caplog.text
    assert "ller" not in caplog.text  # the value itself is never logged
    right = pydicom.dcmread(tmp_path / "out" / outcomes["declared.dcm"].outputs.sr)
    assert str(right.PatientName) == "M\xfcller^J\xfcrgen" and right.SpecificCharacterSet == "ISO_IR 192"


def test_an_image_met_twice_is_reported_and_copied_once(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copyfile(corpus / "dx_pelvis_ddh_1.dcm", folder / name)
    outcomes, _ = _run(folder, tmp_path / "out")
    a, b = outcomes["a.dcm"].outputs, outcomes["b.dcm"].outputs
    assert a.corrected and a.sr
    assert b.corrected is None and b.corrected_reason == "not written: another input has the same SOP Instance UID (a.dcm)"
    assert b.sr is None and b.sr_reason == "not in the SR: another input has the same SOP Instance UID (a.dcm)"
    assert len(list((tmp_path / "out/dicom").iterdir())) == 1
    sr = pydicom.dcmread(tmp_path / "out" / a.sr)
    assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 1


def test_corrected_copies_only_for_confident_results_unless_asked(study, tmp_path):
    outcomes, _ = _run(study, tmp_path / "confident", needs_review=True)
    for o in outcomes.values():
        assert o.outputs.corrected is None and "needs review" in o.outputs.corrected_reason
        assert o.outputs.sr is not None  # the SR carries every result
    assert not (tmp_path / "confident/dicom").exists()
    outcomes, _ = _run(study, tmp_path / "all", needs_review=True, corrected="all")
    assert all(o.outputs.corrected for o in outcomes.values())
    with pytest.raises(ValueError, match="confident, all, none"):
        DicomOutputs(tmp_path, _model("a" * 64)[1], CAT, corrected="some")


def test_outputs_go_to_their_own_folders_when_asked(study, tmp_path):
    outcomes, written = _run(study, tmp_path / "out", sr_dir=tmp_path / "sr-artifact", corrected_dir=tmp_path / "out/copies")
    o = outcomes["dx_pelvis_ddh_1.dcm"]
    assert o.outputs.sr == (tmp_path / "sr-artifact").as_posix() + "/" + o.outputs.sr.rsplit("/", 1)[1]
    assert o.outputs.corrected == "copies/dx_pelvis_ddh_1.dcm"  # inside OUT: relative to it
    assert {p.parent for p in written} == {tmp_path / "sr-artifact"}


def test_json_metadata_beside_the_images_is_skipped_not_failed(study, tmp_path):
    (study / "dx_pelvis_ddh_1.dcm.json").write_text('{"00080018": {"vr": "UI"}}')
    outcomes, _ = _run(study, tmp_path / "out")
    o = outcomes["dx_pelvis_ddh_1.dcm.json"]
    assert o.status.value == "skipped" and o.reason == "JSON file, not DICOM (instance metadata)"


def test_without_dicom_outputs_nothing_is_kept_per_image(study, tmp_path):
    """An archive scan without DICOM outputs passes millions of images: the writers must keep no state."""
    outcomes, written = _run(study, tmp_path / "out", corrected="none", reports=False)
    assert written == [] and all(o.to_json()["outputs"] == {} for o in outcomes.values())
    model, algorithm = _model("a" * 64)
    outputs = DicomOutputs(tmp_path / "out", algorithm, CAT, corrected="none", reports=False)
    for path in sorted(study.iterdir()):
        (r,) = read_file(path, study).radiographs
        outputs.add([r], [classified_outcome(r, _prediction(("Pelvis",)), model, CAT)])
    assert outputs.studies == {} and outputs._seen == {}
