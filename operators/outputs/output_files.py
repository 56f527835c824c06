"""The output folder: one run at a time, files that appear whole or not at all, disk faults that
stop the run with one clear reason.

- :class:`OutputFolderLock`: an exclusive lock (``OUT/.bodypart.lock``) for a run's lifetime, so
  two runs into one folder never interleave their results; the second is refused and told who
  holds it. The kernel releases the lock when its process ends, however it ends.
- :func:`write_atomically`: a DICOM file (or any file) is written under a hidden temporary name
  beside its target, flushed to disk, then renamed: a reader of the folder (a PACS import, the
  Workflow Manager's export) never sees half a file, even when the disk fills or the run is killed.
- :class:`OutputError`: the disk is full, read-only, over quota or failing. Not one file's
  problem: the run stops (``complete: false`` in ``results.json``) instead of failing every
  file that follows for the same reason.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Callable

#: Errors of the output folder itself rather than of one file.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})

LOCK_NAME = ".bodypart.lock"


class OutputError(RuntimeError):
    """The output folder cannot take the run's outputs (full, read-only, in use, failing)."""


class OutputFolderBusy(OutputError):
    """Another run holds the output folder."""


def fatal_output_error(e: BaseException, path: Path | str) -> OutputError | None:
    """The :class:`OutputError` that ``e`` stands for when it is a fault of the output folder, else ``None``."""
    if isinstance(e, OutputError):
        return e
    if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
        return OutputError(f"cannot write {path}: {e.strerror or e}")
    return None


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(file)`` on a hidden temporary file beside ``path``, sync it, rename it to ``path``.

    Raises
    ------
    OutputError
        The folder's faults (full, read-only, ...); the temporary file is removed.
    OSError, Exception
        Anything else ``write`` raises, after removing the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        fatal = fatal_output_error(e, path)
        if fatal is not None and fatal is not e:
            raise fatal from e
        raise
    return path


class OutputFolderLock:
    """Exclusive use of an output folder by one run (``flock`` on ``OUT/.bodypart.lock``).

    Creating the folder and the lock file also proves the folder is writable, before any work.

    Raises
    ------
    OutputFolderBusy
        Another run holds the folder (its process id, host and start time in the message).
    OutputError
        The folder cannot be created or written.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fh = None

    def acquire(self) -> "OutputFolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"output folder {self.folder} is not writable: {e.strerror or e}") from e
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputFolderBusy(f"output folder {self.folder} is in use by another run ({holder}); "
                                       "wait for it to finish or choose another output folder") from e
            raise OutputError(f"cannot lock output folder {self.folder}: {e.strerror or e}") from e
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
            fh.flush()
        except OSError as e:
            fh.close()
            raise OutputError(f"output folder {self.folder} is not writable: {e.strerror or e}") from e
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the lock
            self._fh = None

    def __enter__(self) -> "OutputFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
