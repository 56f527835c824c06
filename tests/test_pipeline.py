"""The run's data flow in process, without Holoscan: the same Pipeline the operators wrap."""

from __future__ import annotations

import shutil

import pytest

from app.app import DEFAULT_MODEL
from operators.input.batching import iter_batches
from operators.model.ensemble import Ensemble
from operators.model.model_package import load_package
from operators.pipeline import BatchFeed, Pipeline
from tests.conftest import read_results

pytestmark = pytest.mark.slow  # runs the whole data flow, the networks included

FILES = ("dx_pelvis_ddh_1.dcm", "dx_pelvis_ddh_10.dcm", "cr_dental_pano_modlut.dcm")


@pytest.fixture(scope="module")
def ensemble():
    return Ensemble(load_package(DEFAULT_MODEL), device="cpu")


@pytest.fixture
def inputs(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(corpus / name, folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def _feed(ensemble, inputs, pipeline, batches=None):
    return BatchFeed(batches or iter_batches(inputs, ensemble.package.preprocessing, 2, 0), pipeline.status)


def test_every_input_flows_through_to_results_and_dicom_outputs(ensemble, inputs, tmp_path):
    out = tmp_path / "out"
    pipeline = Pipeline(ensemble, out, inputs, app_version="test")
    path = pipeline.run(_feed(ensemble, inputs, pipeline))
    doc = read_results(out)
    assert path == out / "results.json" and doc["complete"] is True and doc["interrupted_reason"] is None
    by_source = {i["source"]: i for i in doc["instances"]}
    assert sorted(by_source) == sorted([*FILES, "notes.txt"])
    assert by_source["notes.txt"]["status"] == "failed"
    classified = [i for i in doc["instances"] if i["status"] == "classified"]
    assert len(classified) == 3 and doc["summary"]["classified"] == 3
    assert doc["model"] == ensemble.info.to_json() and doc["app"] == {"name": "bodypart-xr", "version": "test"}
    for record in classified:
        assert record["model_name"] == ensemble.package.name and record["thresholds"] == ensemble.info.thresholds
        corrected = record["outputs"].get("corrected")
        assert corrected is None or (out / corrected).is_file()
    pelvis = by_source["dx_pelvis_ddh_1.dcm"]
    assert (out / pelvis["outputs"]["sr"]).is_file() and (out / pelvis["outputs"]["sr_text"]).is_file()
    assert "sr" not in by_source["cr_dental_pano_modlut.dcm"]["outputs"]  # its UID is not valid: the reason says so
    assert "not a valid UID" in by_source["cr_dental_pano_modlut.dcm"]["sr_reason"]


def test_readers_that_fail_midway_end_the_run_incomplete_with_what_was_read(ensemble, inputs, tmp_path):
    def batches():
        yield from iter_batches(inputs, ensemble.package.preprocessing, 2, 0)
        raise OSError("input share went away")

    out = tmp_path / "out"
    pipeline = Pipeline(ensemble, out, inputs, dicom_outputs=False)
    pipeline.run(_feed(ensemble, inputs, pipeline, batches()))
    doc = read_results(out)
    assert doc["complete"] is False
    assert doc["interrupted_reason"] == "reading stopped: OSError: input share went away"
    assert len(doc["instances"]) == 4  # everything read before the fault is recorded
    assert all(i["outputs"] == {} for i in doc["instances"] if i["status"] == "classified")
    assert not (out / "sr").exists() and not (out / "dicom").exists()


def test_a_run_closed_before_its_last_batch_says_it_is_not_complete(ensemble, inputs, tmp_path):
    """What the operators' stop() does when the graph ends early (a signal): results.json says so."""
    out = tmp_path / "out"
    pipeline = Pipeline(ensemble, out, inputs)
    feed = _feed(ensemble, inputs, pipeline)
    pipeline.add(feed.next())
    pipeline.finish_dicom()  # DicomOutputsOperator.stop()
    pipeline.close_results()  # ResultsWriterOperator.stop()
    doc = read_results(out)
    assert doc["complete"] is False and "interrupted" in doc["interrupted_reason"]
    assert len(doc["instances"]) == 2


def test_the_writers_and_the_typed_results_do_not_pull_torch_in():
    """Tools that read or write results must not load the networks' stack (seconds, gigabytes)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys, operators.outputs.results, operators.outputs.dicom_outputs, operators.model.classification; "
            "print(sorted(m for m in ('torch', 'monai', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_add_and_close_without_a_feed_is_a_complete_run(ensemble, inputs, tmp_path):
    out = tmp_path / "out"
    pipeline = Pipeline(ensemble, out, inputs)
    for batch in iter_batches(inputs, ensemble.package.preprocessing, 2, 0):
        pipeline.add(batch)
    assert pipeline.close() == out / "results.json"
    assert read_results(out)["complete"] is True


def test_a_header_nested_deep_still_crosses_to_the_writers(ensemble, corpus, tmp_path):
    """Reader processes pickle the header they parsed; pickle recurses per nesting level, so a
    sequence nested 120 deep (pydicom reads it) is dropped from the carried header, not the file."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(corpus / "dx_pelvis_ddh_1.dcm")
    inner = Dataset()
    inner.CodeMeaning = "leaf"
    for _ in range(120):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "deep.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    pipeline = Pipeline(ensemble, out, folder)
    pipeline.run(iter_batches(folder, ensemble.package.preprocessing, 2, workers=1))  # a reader process
    (record,) = read_results(out)["instances"]
    assert record["status"] == "classified", record["reason"]
    assert record["outputs"]["sr"] and (out / record["outputs"]["sr"]).is_file()


def test_a_package_with_a_top_fraction_rule_labels_every_radiograph_and_says_so(ensemble, corpus, tmp_path):
    """A package whose decision carries ``top_fraction`` (as the shipped one does; set here on a copy,
    so the test holds whatever ships): every radiograph gets its most probable known part, flagged
    when below threshold, and the rule is in ``results.json``, valid against the schema."""
    from dataclasses import replace

    from operators.model.decision import Decision

    package = replace(ensemble.package, decision=Decision(top_fraction=0.5))
    ruled = Ensemble(package, device="cpu")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("cr_dental_pano_modlut.dcm", "dx_spine_lateral_nometa.dcm", "dx_pelvis_ddh_1.dcm"):
        shutil.copyfile(corpus / name, folder / name)
    out = tmp_path / "out"
    pipeline = Pipeline(ruled, out, folder, app_version="test")
    pipeline.run(_feed(ruled, folder, pipeline))
    doc = read_results(out)
    assert doc["schema_version"] == "1.2" and doc["model"]["top_fraction"] == 0.5 and doc["model"]["tta"] is package.tta
    below = 0
    for record in doc["instances"]:
        assert record["status"] == "classified" and record["labels"], record["source"]
        probs = record["probabilities"]
        top = max(probs, key=probs.get)
        assert top in record["labels"] and all(probs[c] >= 0.5 * probs[top] for c in record["labels"])
        if probs[top] < record["thresholds"][top]:
            below += 1
            assert record["needs_review"] and "is the most probable" in record["review_reason"]
    assert below >= 1  # the shipped package leaves the dental panoramic and the lateral spine film below their thresholds
