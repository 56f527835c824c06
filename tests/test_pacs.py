"""A PACS round trip against a real Orthanc: pull a study by DICOMweb, run the app, push the results
by STOW-RS and by C-STORE, find them in their studies, run again and find nothing doubled; and the
failure modes of each transfer. Orthanc runs on loopback only (see tests/pacs_fixtures.py)."""

from __future__ import annotations

import socket

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from app.cli import main as bodypart
from operators.dicom_network import Destination, NetworkError, pull_study, result_files, send_files

pytest_plugins = ["tests.pacs_fixtures"]
pytestmark = pytest.mark.slow  # runs the app three times

#: One study each, touched by no other test of the session's Orthanc (the smoke test, the OHIF test);
#: both confident results of the shipped package, so each gets a corrected copy.
CHEST, HAND = "dx_chest_raw_j2k.dcm", "dx_pelvis_ddh_12.dcm"


@pytest.fixture(scope="module")
def pacs(orthanc, corpus):
    """Orthanc holding the two studies; their UIDs."""
    client = DICOMwebClient(url=orthanc.dicomweb_url)
    studies = {}
    for name in (CHEST, HAND):
        ds = pydicom.dcmread(corpus / name)
        response = client.store_instances([ds])
        assert not response.get("FailedSOPSequence")
        studies[name] = str(ds.StudyInstanceUID)
    return orthanc, client, studies


def _instances(client, study) -> dict[str, dict]:
    """SOP Instance UID -> a few attributes of every instance of ``study``, as QIDO-RS tells them."""
    found = client.search_for_instances(study_instance_uid=study, fields=["00180015", "0008103E", "00080060", "00200011"])
    out = {}
    for item in found:
        ds = pydicom.Dataset.from_json(item)
        out[str(ds.SOPInstanceUID)] = {"modality": ds.get("Modality"), "series": ds.get("SeriesDescription"),
                                       "body_part": ds.get("BodyPartExamined"), "series_number": ds.get("SeriesNumber")}
    return out


def test_pull_classify_push_by_stow_and_again_without_duplicates(pacs, tmp_path):
    orthanc, client, studies = pacs
    study = studies[CHEST]
    url = orthanc.dicomweb_url
    before = _instances(client, study)
    assert bodypart(["run", "--from-dicomweb", url, "--study", study, "-o", str(tmp_path / "one"), "--send-to", url]) == 0
    after = _instances(client, study)
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in result_files(tmp_path / "one")}
    assert len(sent) == 3 and set(after) - set(before) == set(sent)  # the SR pair and the copy, in their study
    kinds = sorted(v["series"] for k, v in after.items() if v["modality"] == "SR")
    assert kinds == ["Body part AI: TID 1500", "Body part AI: text"]
    copies = [v for k, v in after.items() if v["modality"] != "SR" and k in sent]
    assert len(copies) == 1 and copies[0]["body_part"] == "CHEST"

    # the same study again, pulled with this run's results in it: the PACS still holds one result
    assert bodypart(["run", "--from-dicomweb", url, "--study", study, "-o", str(tmp_path / "two"), "--send-to", url]) == 0
    assert _instances(client, study) == after
    import json

    doc = json.loads((tmp_path / "two/results.json").read_text())
    reasons = sorted(r["reason"] for r in doc["instances"] if r["status"] == "skipped")
    assert reasons == ["a corrected copy this app wrote earlier (its source image is classified instead)"] * len(copies) + [
        "an earlier result of this app (SR): a new report of the study supersedes it"] * 2


def test_push_by_c_store_lands_in_the_study(pacs, tmp_path):
    orthanc, client, studies = pacs
    study = studies[HAND]
    target = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    before = _instances(client, study)
    assert bodypart(["run", "--from-dicomweb", orthanc.dicomweb_url, "--study", study, "-o", str(tmp_path / "out"),
                     "--send-to", target]) == 0
    after = _instances(client, study)
    new = {k: v for k, v in after.items() if k not in before}
    assert sorted(v["modality"] for v in new.values()).count("SR") == 2
    assert set(new) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in result_files(tmp_path / "out")}


def test_a_pull_that_cannot_be_made_says_why(pacs, tmp_path):
    orthanc, _, _ = pacs
    with pytest.raises(NetworkError, match="has no instances of it"):
        pull_study(orthanc.dicomweb_url, "1.2.3.4.5.6.7.8.9", tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(NetworkError, match=r"cannot connect to http://127.0.0.1:\d+"):
        pull_study(f"http://127.0.0.1:{closed}/dicom-web", "1.2.3", tmp_path, timeout=5)
    with pytest.raises(NetworkError, match="answered HTTP 404"):
        pull_study(orthanc.url + "/no-such-service", "1.2.3", tmp_path)
    assert bodypart(["run", "--from-dicomweb", orthanc.dicomweb_url, "--study", "1.2.3.4.5.6.7.8.9", "-o",
                     str(tmp_path / "out")]) == 1


def test_a_send_that_fails_names_what_was_not_sent_and_keeps_the_files(pacs, corpus, tmp_path):
    orthanc, _, _ = pacs
    files = [corpus / "dx_pelvis_ddh_116.dcm", corpus / "dx_pelvis_ddh_12.dcm"]
    # an AE title the node does not answer to: the association is rejected, nothing is sent
    with pytest.raises(NetworkError, match="rejected the association"):
        send_files(files, Destination.parse(f"NOT_THE_PACS@127.0.0.1:{orthanc.dicom_port}"))
    # an HTTP error per instance: each named, none lost
    report = send_files(files, Destination.parse(orthanc.url + "/no-such-service"))
    assert not report.sent and set(report.failed) == {str(f) for f in files}
    assert all("HTTP 404" in why for why in report.failed.values())
    assert all(f.is_file() for f in files)
    # a server that accepts and never answers: a time-out, not a hang
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(NetworkError, match="did not answer in time"):
            send_files(files, Destination.parse(f"http://127.0.0.1:{port}/dicom-web"), timeout=1)
        # a DICOM node that never answers the association request
        with pytest.raises(NetworkError, match="could not be reached or did not answer"):
            send_files(files, Destination.parse(f"PACS@127.0.0.1:{port}"), timeout=1)


def test_send_command_reports_unsent_instances_and_exit_code(pacs, tmp_path):
    orthanc, _, studies = pacs
    out = tmp_path / "out"
    assert bodypart(["run", "--from-dicomweb", orthanc.dicomweb_url, "--study", studies[HAND], "-o", str(out)]) == 0
    files = result_files(out)
    assert files
    assert bodypart(["send", str(out), "--to", orthanc.url + "/no-such-service"]) == 1
    assert all(f.is_file() for f in files)
    assert bodypart(["send", str(out), "--to", orthanc.dicomweb_url]) == 0


def test_credentials_never_ride_in_a_url(tmp_path):
    with pytest.raises(ValueError, match="BODYPART_DICOMWEB_TOKEN"):
        Destination.parse("https://user:secret@pacs.example/dicom-web")
    with pytest.raises(ValueError, match="BODYPART_DICOMWEB_TOKEN") as e:
        pull_study("http://user:secret@127.0.0.1:1/dicom-web", "1.2.3", tmp_path)
    assert "secret" not in str(e.value)


def test_destinations_parse_or_say_how_to_write_them():
    assert Destination.parse("https://pacs.example/dicom-web/") == Destination(url="https://pacs.example/dicom-web")
    assert Destination.parse("ORTHANC@10.0.0.5:4242") == Destination(ae_title="ORTHANC", host="10.0.0.5", port=4242)
    for bad in ("pacs:4242", "A_VERY_LONG_AE_TITLE_X@h:1", "AE@host:99999", "ftp://x"):
        with pytest.raises(ValueError, match="AE@host:port"):
            Destination.parse(bad)
