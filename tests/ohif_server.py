"""OHIF Viewer 3 for browser tests: the prebuilt viewer from the npm package ``@ohif/app``,
served on one origin with a DICOMweb server (the test Orthanc), as a site deploys it.

OHIF fetches its studies with ``fetch`` from the page's origin; Orthanc sends no CORS headers, so
viewer and DICOMweb must share an origin. Orthanc's own ServeFolders plugin cannot do it for OHIF
3: it serves files only under ``/<prefix>/`` with no fallback to ``index.html`` (``/ohif/`` and
the viewer route ``/ohif/viewer`` answer 404), and the prebuilt ``dist/`` has its public path
``/`` compiled into its bundles, stylesheet and ``index.html``. So a small threaded server here
serves ``dist/`` at ``/`` (any extension-less path that is no file answers ``index.html``, for
OHIF's client-side routes), answers ``/app-config.js`` with the configuration under test, and
forwards ``/dicom-web/...`` and ``/wado`` to Orthanc as they come. It binds 127.0.0.1 only.

The viewer is not vendored: fetch it once, outside the loopback-only namespace the tests run in::

    mkdir -p ~/.cache/bodypart/ohif/3.13.2 && cd ~/.cache/bodypart/ohif
    npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz -C 3.13.2   # -> 3.13.2/package/dist

    with OhifServer(orthanc.url, ohif_dist(), site_config()) as ohif:
        page.goto(ohif.url)
"""

from __future__ import annotations

import http.client
import http.server
import mimetypes
import os
import posixpath
import threading
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The OHIF release the tests run; ``.ci/run`` fetches the same one.
OHIF_VERSION = "3.13.2"
#: Where ``npm pack`` output is kept between runs (outside the repository).
CACHE = Path(os.environ.get("BODYPART_CACHE", "~/.cache/bodypart")).expanduser()
#: Set to a ``dist/`` folder to test another OHIF build.
DIST_ENV = "BODYPART_OHIF_DIST"
#: The OHIF configuration shipped to sites (``app/ohif/``, see docs/ohif.md).
SITE_FILES = (ROOT / "app/ohif/app-config.js", ROOT / "app/ohif/bodypart-customization.js")
FETCH_COMMAND = (f"mkdir -p {CACHE}/ohif/{OHIF_VERSION} && cd {CACHE}/ohif && npm pack @ohif/app@{OHIF_VERSION} "
                 f"&& tar xzf ohif-app-{OHIF_VERSION}.tgz -C {OHIF_VERSION}")
#: Paths forwarded to the DICOMweb server: QIDO/WADO-RS/STOW under /dicom-web, WADO-URI at /wado.
PROXIED = ("/dicom-web/", "/dicom-web?", "/wado?", "/wado/")
LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
          ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2", ".ico": "image/x-icon", ".html": "text/html"}


def ohif_dist() -> Path | None:
    """The prebuilt viewer's ``dist/`` folder, or None when it has not been fetched."""
    dist = Path(os.environ[DIST_ENV]) if os.environ.get(DIST_ENV) else CACHE / "ohif" / OHIF_VERSION / "package" / "dist"
    return dist if (dist / "index.html").is_file() and (dist / "app-config.js").is_file() else None


def ohif_version(dist: Path) -> str:
    import json

    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def site_config() -> str:
    """``app-config.js`` as a site would have it: the shipped example configuration followed by
    the body-part customization appended to it (docs/ohif.md)."""
    return "\n".join(p.read_text() for p in SITE_FILES)


class OhifServer:
    """``dist`` served at ``url`` with ``config_js`` as ``/app-config.js`` and DICOMweb forwarded
    to ``upstream`` (``http://127.0.0.1:PORT`` of Orthanc). ``failures`` lists ``(status, path)``
    of the answers of 400 and above, for a test's message."""

    def __init__(self, upstream: str, dist: Path, config_js: str, port: int = 0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.dist = Path(dist).resolve()
        self.config_js = config_js.encode("utf-8")
        self.failures: list[tuple[int, str]] = []
        self._port = port
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    def start(self) -> "OhifServer":
        if self._httpd is not None:
            raise RuntimeError("this OHIF server is already started")
        self._httpd = http.server.ThreadingHTTPServer((LOOPBACK, self._port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
        self._httpd = self._thread = None

    def __enter__(self) -> "OhifServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what one request gets --------------------------------------------------------------

    def file_for(self, url_path: str) -> Path | None:
        """The file under ``dist`` that answers ``url_path``: the file itself, ``index.html`` for
        a client-side route (no such file, no extension), None otherwise (404)."""
        path = posixpath.normpath(urllib.parse.unquote(url_path.split("?", 1)[0]))
        candidate = (self.dist / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.dist):
            return None
        if candidate.is_file():
            return candidate
        if "." not in posixpath.basename(path):
            return self.dist / "index.html"
        return None


def _handler(server: OhifServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the viewer opens few connections and reuses them

        def log_message(self, *args) -> None:  # quiet: failures are collected instead
            pass

        def _failed(self, status: int) -> None:
            if status >= 400:
                server.failures.append((status, self.path))

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_POST(self) -> None:
            self._forward() if self.path.startswith(PROXIED) else self._send(405, b"", "text/plain")

        def _answer(self, head: bool) -> None:
            if self.path.startswith(PROXIED):
                return self._forward()
            if self.path.split("?", 1)[0] == "/app-config.js":
                return self._send(200, server.config_js, "text/javascript", head)
            path = server.file_for(self.path)
            if path is None:
                return self._send(404, b"not found", "text/plain", head)
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(200, path.read_bytes(), kind, head)

        def _send(self, status: int, body: bytes, kind: str, head: bool = False) -> None:
            self._failed(status)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn = http.client.HTTPConnection(*server.upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                status, reply_headers, data = reply.status, reply.getheaders(), reply.read()  # read whole: de-chunked
            except OSError as err:
                return self._send(502, f"DICOMweb server unreachable: {err}".encode(), "text/plain")
            finally:
                conn.close()
            self._failed(status)
            self.send_response(status)
            for k, v in reply_headers:
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.ohif_server [FOLDER ...]``: Orthanc and OHIF on this machine, as the tests
    run them, loaded with the DICOM files under each FOLDER; Ctrl-C stops both (and deletes
    Orthanc's temporary storage)."""
    import argparse
    import time

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from tests.orthanc_server import OrthancServer, isolation_problem

    parser = argparse.ArgumentParser(prog="python -m tests.ohif_server", description=main.__doc__)
    parser.add_argument("folders", nargs="*", type=Path, help="folders whose DICOM files are stored in Orthanc")
    args = parser.parse_args(argv)
    dist = ohif_dist()
    if dist is None:
        print(f"OHIF {OHIF_VERSION} is not in {CACHE}/ohif; fetch it: {FETCH_COMMAND}")
        return 2
    if problem := isolation_problem():
        print(problem)
        return 2
    with OrthancServer(allow_all_interfaces=True) as orthanc, OhifServer(orthanc.url, dist, site_config()) as ohif:
        client = DICOMwebClient(url=orthanc.dicomweb_url)
        stored = 0
        for folder in args.folders:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                try:
                    ds = pydicom.dcmread(path)
                except Exception:  # noqa: BLE001 - results.json, pictures: not DICOM, not stored
                    continue
                try:
                    client.store_instances([ds])
                    stored += 1
                except Exception as e:  # noqa: BLE001 - a file Orthanc cannot parse: say so, go on
                    print(f"not stored: {path} ({type(e).__name__}: {e})")
        print(f"stored {stored} instances\nDICOMweb: {orthanc.dicomweb_url}\nC-STORE:  {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}\n"
              f"OHIF:     {ohif.url}\nCtrl-C stops both.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
