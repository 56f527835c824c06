"""The one way this app starts worker processes: a forkserver that imported the input stage once.

forkserver, not fork: forking a process that already runs Holoscan and torch threads can
deadlock. The server imports :mod:`operators.input.batching` (torch, pydicom, the decoders) when it
starts, so every reader or SR worker forked from it starts in milliseconds instead of importing
for a second or more. The app starts the server first thing (:func:`start_early`), so those
imports run while its own (MONAI, about 7 s) do. This module imports nothing heavy itself.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

#: Imported once in the server, inherited by every worker.
PRELOAD = ["operators.input.batching"]


def worker_context() -> BaseContext:
    """The multiprocessing context for every pool of the app."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # takes effect when the server starts; later calls change nothing
    return context


def start_early() -> None:
    """Start the server now (its imports overlap the caller's); pools started later fork from it."""
    from multiprocessing import forkserver

    worker_context()
    forkserver.ensure_running()


def loaded_modules() -> list[str]:
    """This app's modules this process has imported (run in a worker: what it inherited)."""
    import sys

    return sorted(m for m in sys.modules if m.startswith("operators."))
