"""DICOM networking with the field's libraries: studies from a DICOMweb server, results to a PACS.

- :func:`pull_study`: QIDO-RS finds a study's instances, WADO-RS retrieves each into a folder
  (``dicomweb-client``), so the app reads it as any input folder.
- :func:`send_files`: SRs and corrected copies to a DICOMweb server by STOW-RS
  (``dicomweb-client``) or to a DICOM node by C-STORE (``pynetdicom``), one instance at a time, so
  that a failure names the instances not sent; the files stay where they are.

A :class:`Destination` is parsed from ``http(s)://...`` (DICOMweb) or ``AE@host:port`` (DIMSE).
Network faults (refused connections, HTTP errors, time-outs, rejected associations) become a
:class:`NetworkError` with one clear line; no protocol code lives here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

log = logging.getLogger("bodypart")

#: Seconds a connection or a response may take before the transfer counts as failed.
DEFAULT_TIMEOUT = 30.0


class NetworkError(RuntimeError):
    """A transfer that could not be made; the message says where and why (no patient data)."""


@dataclass(frozen=True)
class DicomwebAuth:
    """Credentials for a DICOMweb server: a bearer token, or a user and password (HTTP basic)."""

    token: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.token and self.user:
            raise ValueError("give a token or a user and password, not both")
        if bool(self.user) != bool(self.password):
            raise ValueError("a DICOMweb user needs a password (and a password a user)")


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOMweb base URL (STOW-RS) or a DICOM node (C-STORE)."""

    url: str | None = None
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``http(s)://host[:port]/path`` or ``AE@host:port``."""
        if re.match(r"https?://", text):
            return cls(url=check_url(text))
        m = re.fullmatch(r"([^@\\]{1,16})@([^:@]+):(\d{1,5})", text)
        if not m or not m.group(1).strip() or int(m.group(3)) > 65535:
            raise ValueError(f"destination {text!r}: use http(s)://... for DICOMweb or AE@host:port for a DICOM node")
        return cls(ae_title=m.group(1), host=m.group(2), port=int(m.group(3)))

    def __str__(self) -> str:
        return self.url if self.url else f"{self.ae_title}@{self.host}:{self.port}"


def check_url(url: str) -> str:
    """``url`` without a trailing slash; refused when it carries credentials (they would end up in
    logs and error messages: the environment holds them instead)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"DICOMweb URL {url!r}: use http(s)://host[:port]/path")
    if parts.username or parts.password:
        raise ValueError("DICOMweb URL with a user or password in it: give them in BODYPART_DICOMWEB_TOKEN or "
                         "--dicomweb-user and BODYPART_DICOMWEB_PASSWORD instead")
    return url.rstrip("/")


def dicomweb_client(url: str, auth: DicomwebAuth | None = None, timeout: float = DEFAULT_TIMEOUT):
    """A ``DICOMwebClient`` for ``url`` whose every request has ``timeout``."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if auth and auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    elif auth and auth.user:
        session.auth = (auth.user, auth.password)
    return DICOMwebClient(url=check_url(url), session=session, timeout=timeout)


def _web_error(e: Exception, what: str, url: str) -> NetworkError:
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        r = e.response
        return NetworkError(f"{what}: {url} answered HTTP {r.status_code} {r.reason}")
    if isinstance(e, requests.Timeout):
        return NetworkError(f"{what}: {url} did not answer in time")
    if isinstance(e, requests.ConnectionError):
        return NetworkError(f"{what}: cannot connect to {url} ({type(e).__name__})")
    return NetworkError(f"{what}: {url}: {type(e).__name__}: {e}")


def pull_study(url: str, study_uid: str, dest: Path, auth: DicomwebAuth | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> list[Path]:
    """Find every instance of ``study_uid`` (QIDO-RS) and retrieve each (WADO-RS, as stored) into
    ``dest/<series>/<instance>.dcm``; return the files.

    Raises
    ------
    NetworkError
        The server cannot be reached, refuses, times out, or has no such study.
    """
    import pydicom

    from .outputs.uids import uid_file_name

    client = dicomweb_client(url, auth, timeout)
    try:
        found = client.search_for_instances(study_instance_uid=study_uid, get_remaining=True)  # every page
    except Exception as e:  # noqa: BLE001 - requests' and dicomweb-client's errors, said once
        raise _web_error(e, f"finding study {study_uid}", url) from e
    if not found:
        raise NetworkError(f"finding study {study_uid}: {url} has no instances of it")
    files = []
    for item in found:
        meta = pydicom.Dataset.from_json(item)
        series, sop = str(meta.SeriesInstanceUID), str(meta.SOPInstanceUID)
        try:
            ds = client.retrieve_instance(study_uid, series, sop, media_types=(("application/dicom", "*"),))
        except Exception as e:  # noqa: BLE001
            raise _web_error(e, f"retrieving instance {sop}", url) from e
        path = Path(dest) / uid_file_name(series) / f"{uid_file_name(sop)}.dcm"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        except OSError as e:
            raise NetworkError(f"retrieving study {study_uid}: cannot write {path.parent}: {e.strerror or e}") from e
        files.append(path)
    log.info("retrieved %d instances of study %s from %s", len(files), study_uid, url)
    return files


@dataclass
class SendReport:
    """What a send did: the instances sent and, for each one not sent, why."""

    destination: str
    sent: list[str] = field(default_factory=list)  # SOP Instance UIDs
    failed: dict[str, str] = field(default_factory=dict)  # file (as given) -> reason

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"sent {len(self.sent)} instance(s) to {self.destination}"
        if self.failed:
            text += f"; {len(self.failed)} NOT sent (the files stay in place): " + "; ".join(
                f"{name}: {why}" for name, why in sorted(self.failed.items())[:10])
        return text


def send_files(files: Iterable[Path], destination: Destination, auth: DicomwebAuth | None = None,
               timeout: float = DEFAULT_TIMEOUT, calling_ae: str = "BODYPART") -> SendReport:
    """Send each file to ``destination``; every file ends sent or in ``failed`` with its reason.

    Raises
    ------
    NetworkError
        Nothing could be sent: the destination cannot be reached or refuses the association.
    """
    files = [Path(f) for f in files]
    if destination.url:
        return _stow(files, destination, auth, timeout)
    return _c_store(files, destination, timeout, calling_ae)


def _stow(files: list[Path], destination: Destination, auth: DicomwebAuth | None, timeout: float) -> SendReport:
    import pydicom

    client = dicomweb_client(destination.url, auth, timeout)
    report = SendReport(str(destination))
    for path in files:
        ds = pydicom.dcmread(path)
        try:
            response = client.store_instances([ds])
        except Exception as e:  # noqa: BLE001
            error = _web_error(e, "storing", destination.url)
            if not report.sent and _unreachable(e):
                raise error from e  # nothing can go there: say it once
            report.failed[str(path)] = str(error)
            continue
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason")
            report.failed[str(path)] = f"refused by {destination.url} (failure reason {reason})"
        else:
            report.sent.append(str(ds.SOPInstanceUID))
    return report


def _unreachable(e: Exception) -> bool:
    import requests

    return isinstance(e, (requests.ConnectionError, requests.Timeout))


def _c_store(files: list[Path], destination: Destination, timeout: float, calling_ae: str) -> SendReport:
    import pydicom
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    datasets = [(path, pydicom.dcmread(path)) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets})
    if len(contexts) > 128:
        raise NetworkError(f"C-STORE to {destination}: more than 128 kinds of object in one association")
    for sop_class, syntax in contexts:
        ae.requested_contexts.append(build_context(sop_class, [syntax]))  # as stored: nothing re-encoded
    report = SendReport(str(destination))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        # pynetdicom reports a refused or silent connection as aborted: only a rejection is the node's answer
        why = "rejected the association" if assoc.is_rejected else "could not be reached or did not answer"
        raise NetworkError(f"C-STORE to {destination}: the node {why} (check its AE title, host, port and that it "
                           f"accepts {calling_ae})")
    try:
        for path, ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, ValueError) as e:  # no accepted presentation context for this object
                report.failed[str(path)] = f"not accepted by {destination}: {e}"
                continue
            code = getattr(status, "Status", None)
            if code is None:
                report.failed[str(path)] = f"no answer from {destination} (connection lost or timed out)"
                if not assoc.is_established:
                    break
            elif code in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or stored with warnings
                report.sent.append(str(ds.SOPInstanceUID))
            else:
                report.failed[str(path)] = f"refused by {destination} (status 0x{code:04X})"
    finally:
        if assoc.is_established:
            assoc.release()
    done = set(report.failed) | {str(p) for p, ds in datasets if str(ds.SOPInstanceUID) in report.sent}
    for path, _ in datasets:  # what a lost association left unsent
        if str(path) not in done:
            report.failed[str(path)] = f"not sent: the association with {destination} was lost"
    return report


def result_files(output: Path) -> list[Path]:
    """The DICOM files a run wrote, as its ``results.json`` lists them: SRs first, then corrected copies.

    Raises
    ------
    NetworkError
        ``output`` holds no ``results.json`` (not a run's output folder).
    """
    import json

    path = Path(output) / "results.json"
    if not path.is_file():
        raise NetworkError(f"{output}: no results.json (not the output folder of a run)")
    doc = json.loads(path.read_text())
    srs, copies = [], []
    for record in doc.get("instances", []):
        outputs = record.get("outputs") or {}
        srs += [outputs[k] for k in ("sr", "sr_text") if outputs.get(k)]
        copies += [outputs["corrected"]] if outputs.get("corrected") else []
    seen, files = set(), []
    for rel in srs + copies:
        file = Path(rel) if Path(rel).is_absolute() else Path(output) / rel
        if file not in seen and file.is_file():
            seen.add(file)
            files.append(file)
    return files
