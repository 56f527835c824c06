"""Whether a run went through: shared by the operators of one run, read when it ends.

A run is complete when every input was read and every batch the loader emitted reached the
results writer, and nothing stopped it. Anything else (a full output disk, readers that cannot
start, a signal that ended the graph early) makes ``results.json`` say ``complete: false`` with
the reason, and the app exit with an error.
"""

from __future__ import annotations

import threading


class RunStatus:
    """The run's progress and the first reason it stopped early (thread-safe: operators run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self.inputs_done = False
        self.batches_emitted = 0
        self.batches_recorded = 0

    def stop(self, reason: str) -> None:
        """Ask the run to stop; the first reason given is the one reported."""
        with self._lock:
            if self._reason is None:
                self._reason = reason

    @property
    def stopped(self) -> bool:
        return self._reason is not None

    @property
    def incomplete_reason(self) -> str | None:
        """Why the run is not complete, or ``None`` when it is (call when it has ended)."""
        if self._reason is not None:
            return self._reason
        if not self.inputs_done:
            return "the run ended before every input was read (interrupted)"
        if self.batches_recorded < self.batches_emitted:
            return (f"the run ended before every result was recorded ({self.batches_emitted - self.batches_recorded} "
                    "batches lost; interrupted)")
        return None
