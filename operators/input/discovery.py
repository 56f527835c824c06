"""Finding the inputs: walking an input folder and opening each entry safely.

Every entry is streamed (sorted, depth-first, bounded memory) and opened without blocking or
escaping the input folder; what is not a file to read comes back as a reason, never an exception
that stops the run.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Iterator


class InputError(RuntimeError):
    """A file that should be readable but is not; the message is the user-facing reason."""


class NotAnInput(InputError):
    """An entry that is not a file to read (a FIFO, a link not followed, ...): skipped, with the reason."""


def iter_input_files(root: Path, follow_links: bool = False) -> Iterator[Path]:
    """Every entry under ``root`` (or ``root`` itself) that is not a folder walked into, sorted, streamed.

    Regular files, and also what the reader must report rather than read: FIFOs, sockets,
    devices, broken links, links to folders, folders that cannot be listed. Hidden files and
    folders (``.name``) are left out: they are tool and OS litter, not images. Links to folders
    are walked into only with ``follow_links`` (each folder once: link loops end there). The walk
    keeps its own stack, so any depth of folders is walked; a path the system cannot open
    (too long) comes out as an entry whose reading says so.
    """
    root = Path(root)
    if not os.path.isdir(root):
        if not os.path.lexists(root):
            raise FileNotFoundError(f"input {root} does not exist")
        yield root
        return
    seen: set[tuple[int, int]] = set()
    stack: list[Iterator[Path]] = [iter([root])]
    while stack:
        folder = next(stack[-1], None)
        if folder is None:
            stack.pop()
            continue
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue  # a link loop, or the same folder through two links
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            yield folder  # cannot be listed: reading it says why
            continue
        folders = []
        for e in entries:
            path = Path(folder, e.name)
            try:
                walk = e.is_dir(follow_symlinks=False) or (follow_links and e.is_symlink() and e.is_dir())
            except OSError:
                walk = False
            if walk:
                folders.append(path)
            else:
                yield path
        stack.append(iter(folders))


def relative_source(path: Path, root: Path) -> str:
    """``path`` relative to the input ``root`` (POSIX separators), as results name it.

    File names that are not UTF-8 (possible on Linux) keep their bytes as ``\\xNN`` escapes, so
    every name fits in JSON and logs and still tells the file apart.
    """
    root = Path(root)
    base = root if os.path.isdir(root) else root.parent
    try:
        rel = Path(path).relative_to(base).as_posix()
    except ValueError:
        rel = Path(path).name
    return display_path(rel)


def display_path(path: str | Path) -> str:
    """``path`` as text that JSON, Parquet and logs take: bytes that are not UTF-8 as ``\\xNN``."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def open_input(path: Path, root: Path | None = None, follow_links: bool = False) -> tuple[IO[bytes], tuple[int, int]]:
    """Open one input for reading, or say why it is not one.

    Never opens what is not a regular file (a FIFO would block the reader), never reads through
    a link to outside ``root`` unless ``follow_links``. Returns the open file and its (size,
    modification time in ns), taken from the open file itself.

    Raises
    ------
    NotAnInput
        FIFOs, sockets, devices, links to folders or outside the input folder: skipped.
    InputError
        Files that vanished, cannot be read, broken links, link loops, folders that cannot be listed.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise InputError(os_reason(e, "file")) from e
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InputError("symbolic link loop") from e
            if e.errno == errno.ENOENT:
                raise InputError("broken symbolic link (its target does not exist)") from e
            raise InputError(os_reason(e, "link")) from e
        if not follow_links and root is not None and os.path.isdir(root) and not _inside(path, root):
            raise NotAnInput("symbolic link to outside the input folder (not followed; set follow_links to read it)")
    if stat.S_ISDIR(st.st_mode):
        if link:
            raise NotAnInput("symbolic link to a folder (not followed)")
        try:
            os.scandir(path).close()
        except OSError as e:
            raise InputError(os_reason(e, "folder")) from e
        raise InputError("folder that could not be walked")
    if not stat.S_ISREG(st.st_mode):
        raise NotAnInput(f"not a regular file ({_kind(st.st_mode)})")
    try:
        # non-blocking open: a FIFO put in the file's place since the check does not block us
        fh = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))
    except OSError as e:
        raise InputError(os_reason(e, "file")) from e
    st = os.fstat(fh.fileno())
    if not stat.S_ISREG(st.st_mode):  # replaced since the check above
        fh.close()
        raise NotAnInput(f"not a regular file ({_kind(st.st_mode)})")
    os.set_blocking(fh.fileno(), True)
    return fh, (st.st_size, st.st_mtime_ns)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of ``path`` now, or ``None`` when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _inside(path: Path, root: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def os_reason(e: OSError, what: str) -> str:
    if e.errno == errno.ENOENT:
        return f"{what} vanished before it could be read"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read {what}: permission denied"
    if e.errno == errno.ENAMETOOLONG:
        return f"cannot read {what}: path too long for the operating system"
    return f"cannot read {what}: {e.strerror or e}"

