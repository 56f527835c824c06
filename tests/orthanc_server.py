"""A real Orthanc PACS for integration tests: started from a temporary configuration, stopped after.

Orthanc 1.10 (Debian ``orthanc`` + ``orthanc-dicomweb``) cannot bind to one address: its HTTP and
DICOM servers listen on every interface. So it is only started when this process is in a network
namespace whose only interface is ``lo`` (CI runs the test session under ``unshare --net``), or when
the developer opts in with ``BODYPART_ORTHANC_ALL_INTERFACES=1``. Every client request goes to
127.0.0.1 either way.

    with OrthancServer() as pacs:
        DICOMwebClient(pacs.dicomweb_url).search_for_studies()
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import requests

#: Set to ``1`` to accept an Orthanc that listens on all interfaces (outside a loopback-only namespace).
ALL_INTERFACES_ENV = "BODYPART_ORTHANC_ALL_INTERFACES"
#: Where Debian installs the server and the DICOMweb plugin (``orthanc``, ``orthanc-dicomweb``).
DEBIAN_EXECUTABLE = "/usr/sbin/Orthanc"
DEBIAN_PLUGINS = Path("/usr/share/orthanc/plugins")
DEBIAN_DICOMWEB_PLUGIN = DEBIAN_PLUGINS / "libOrthancDicomWeb.so"  # -> /usr/lib/orthanc/libOrthancDicomWeb.so.1.7
LOOPBACK = "127.0.0.1"
_PORT_CLASH = re.compile(r"address already in use|cannot bind|port .* (?:busy|in use)", re.I)


class OrthancError(RuntimeError):
    """Orthanc is missing, refused to start, or did not answer in time."""


def _interfaces() -> list[str]:
    # The interfaces of *this process's* network namespace. /sys/class/net is no guide: after a
    # bare `unshare --net` it still shows the sysfs mounted for the parent namespace (eth0 ...).
    return sorted(name for _, name in socket.if_nameindex())


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def ensure_loopback_up() -> None:
    """Bring ``lo`` up (a fresh namespace starts with it down); needs root in that namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))


def isolation_problem() -> str | None:
    """Why starting Orthanc here would expose it beyond loopback, or None when it would not."""
    if os.environ.get(ALL_INTERFACES_ENV) == "1":
        return None
    others = [name for name in _interfaces() if name != "lo"]
    if others:
        return (f"Orthanc 1.10 listens on all interfaces and this process sees {', '.join(others)}: run the tests in a "
                f"loopback-only network namespace (as root: unshare --net bash -c 'ip link set lo up; ...'), "
                f"or set {ALL_INTERFACES_ENV}=1 to accept all-interface listening")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, workdir: Path | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class OrthancServer:
    """One Orthanc process with its own temporary storage, index, ports and configuration.

    ``url`` (REST API), ``dicomweb_url`` (``/dicom-web``), ``dicom_port`` and ``aet`` are set once
    :meth:`start` returns. ``scu_aet``/``scu_port`` declare a modality on 127.0.0.1 (the test SCU),
    the target of C-MOVE and of ``/modalities/<scu_aet>/store``.
    """

    def __init__(self, aet: str = "BODYPART_PACS", scu_aet: str = "BODYPART_SCU", scu_port: int | None = None,
                 executable: str | None = None, dicomweb_plugin: Path | str = DEBIAN_DICOMWEB_PLUGIN,
                 startup_timeout: float = 60.0, allow_all_interfaces: bool = False):
        self.aet = aet
        self.scu_aet = scu_aet
        self.scu_port = scu_port or _free_port()
        self.executable = executable
        self.dicomweb_plugin = Path(dicomweb_plugin)
        self.startup_timeout = startup_timeout
        self.allow_all_interfaces = allow_all_interfaces
        self.http_port: int | None = None
        self.dicom_port: int | None = None
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._finalizer = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
        except (OSError, TypeError):
            return "(no log)"

    def config(self) -> dict:
        return {
            "Name": f"{self.aet} (tests)",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [str(self.dicomweb_plugin)],  # the plugin file alone: not the folder's worklist/serve-folders
            # Without "Host", the plugin's RetrieveURLs say http://127.0.0.1/dicom-web/... (no port)
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                         "Host": f"{LOOPBACK}:{self.http_port}", "Ssl": False},
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # refuse HTTP from anything but localhost (listening is still all-interface)
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "HttpThreadsCount": 8,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,  # a client that calls the wrong AE title fails loudly
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {self.scu_aet.lower(): [self.scu_aet, LOOPBACK, self.scu_port]},
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
        }

    def start(self) -> "OrthancServer":
        if self.proc is not None:
            raise OrthancError("this Orthanc is already started")
        if not self.allow_all_interfaces and (reason := isolation_problem()):
            raise OrthancError(f"refusing to start Orthanc: {reason}")
        if _interfaces() == ["lo"] and os.geteuid() == 0:  # a fresh namespace has lo down
            ensure_loopback_up()
        exe = self.executable or shutil.which("Orthanc") or (DEBIAN_EXECUTABLE if os.access(DEBIAN_EXECUTABLE, os.X_OK) else None)
        if exe is None:
            raise OrthancError("Orthanc is not installed (Debian packages orthanc and orthanc-dicomweb)")
        if not self.dicomweb_plugin.is_file():
            raise OrthancError(f"the Orthanc DICOMweb plugin {self.dicomweb_plugin} is missing (Debian package orthanc-dicomweb)")
        for attempt in range(3):  # a port picked as free can be taken before Orthanc binds it: pick again
            try:
                return self._start_once(exe)
            except OrthancError as err:
                self.stop()
                if attempt == 2 or not _PORT_CLASH.search(str(err)):
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, exe: str) -> "OrthancServer":
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.http_port, self.dicom_port = _free_port(), _free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = _free_port()
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([exe, "--no-jobs", str(cfg)], cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.workdir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        http_ok = dicom_ok = False
        while True:
            if self.proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with status {self.proc.returncode} while starting; "
                                   f"end of its log:\n{self.log_tail()}")
            if not http_ok:
                try:
                    http_ok = requests.get(f"{self.url}/system", timeout=2).ok
                except requests.RequestException:
                    pass
            if http_ok and not dicom_ok:
                try:
                    socket.create_connection((LOOPBACK, self.dicom_port), timeout=2).close()
                    dicom_ok = True
                except OSError:
                    pass
            if http_ok and dicom_ok:
                break
            if time.monotonic() > deadline:
                raise OrthancError(f"Orthanc did not answer on {self.url}/system and DICOM port {self.dicom_port} within "
                                   f"{self.startup_timeout:.0f} s; end of its log:\n{self.log_tail()}")
            time.sleep(0.1)
        plugins = requests.get(f"{self.url}/plugins", timeout=5).json()
        if "dicom-web" not in plugins:
            raise OrthancError(f"Orthanc started without the DICOMweb plugin (loaded: {plugins}); end of its log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate (then kill) Orthanc and remove its folders; safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once
        self._finalizer = None
        self.proc = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
