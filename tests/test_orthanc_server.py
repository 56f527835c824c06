"""Smoke test of the test PACS: a real Orthanc, spoken to with dicomweb-client (STOW/QIDO/WADO)
and pynetdicom (C-ECHO/C-STORE), on 127.0.0.1 only."""

from __future__ import annotations

import pydicom
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE

pytest_plugins = ["tests.pacs_fixtures"]

#: Small corpus files (JPEG 2000, one study each): three for STOW-RS, one for C-STORE.
STOW_FILES = ["dx_pelvis_ddh_1.dcm", "dx_pelvis_ddh_10.dcm", "dx_pelvis_ddh_107.dcm"]
CSTORE_FILE = "dx_pelvis_ddh_115.dcm"


def _sop_uids(found: list[dict]) -> set[str]:
    return {inst["00080018"]["Value"][0] for inst in found}


def test_orthanc_dicomweb_and_dimse(orthanc, corpus):
    assert orthanc.url.startswith("http://127.0.0.1:") and orthanc.dicomweb_url.endswith("/dicom-web")
    client = DICOMwebClient(url=orthanc.dicomweb_url)

    # STOW-RS three instances
    stowed = [pydicom.dcmread(corpus / name) for name in STOW_FILES]
    response = client.store_instances(datasets=stowed)
    assert not response.get("FailedSOPSequence"), response
    assert {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence} == {ds.SOPInstanceUID for ds in stowed}
    assert all(item.RetrieveURL.startswith(orthanc.dicomweb_url) for item in response.ReferencedSOPSequence)

    # QIDO-RS: each is found in its study
    for ds in stowed:
        found = client.search_for_instances(study_instance_uid=ds.StudyInstanceUID)
        assert _sop_uids(found) == {ds.SOPInstanceUID}

    # WADO-RS: one back, as stored
    first = stowed[0]
    got = client.retrieve_instance(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID,
                                   media_types=(("application/dicom", "*"),))
    assert got.SOPInstanceUID == first.SOPInstanceUID
    assert got.PixelData == first.PixelData

    # C-ECHO and C-STORE of a fourth to the DICOM port
    ds = pydicom.dcmread(corpus / CSTORE_FILE)
    ae = AE(ae_title=orthanc.scu_aet)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established, f"no association with {orthanc.aet} at 127.0.0.1:{orthanc.dicom_port}"
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()

    found = client.search_for_instances(study_instance_uid=ds.StudyInstanceUID)
    assert _sop_uids(found) == {ds.SOPInstanceUID}
