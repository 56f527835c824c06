"""PACS fixtures: a real Orthanc (tests/orthanc_server.py) for the session.

Load with ``pytest_plugins = ["tests.pacs_fixtures"]`` in a test module (or the root conftest), so
that every module shares the one session-scoped server.

Orthanc runs only where it cannot be reached from outside: in a loopback-only network namespace
(CI runs the session under ``unshare --net``) or with ``BODYPART_ORTHANC_ALL_INTERFACES=1``.
Elsewhere the tests skip, and under ``CI=true`` they fail, saying why.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.orthanc_server import DEBIAN_DICOMWEB_PLUGIN, DEBIAN_EXECUTABLE, OrthancError, OrthancServer, isolation_problem


def _unavailable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def orthanc():
    """A started :class:`OrthancServer` (``url``, ``dicomweb_url``, ``dicom_port``, ``aet``), stopped after the session."""
    if reason := isolation_problem():
        _unavailable(reason)
    if not (shutil.which("Orthanc") or os.access(DEBIAN_EXECUTABLE, os.X_OK)) or not DEBIAN_DICOMWEB_PLUGIN.is_file():
        _unavailable("Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc orthanc-dicomweb; .ci/run installs them)")
    server = OrthancServer(allow_all_interfaces=True)  # isolation checked above, with its opt-in
    try:
        server.start()
    except OrthancError as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.stop()
