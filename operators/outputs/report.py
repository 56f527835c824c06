"""Human-facing summaries of a run: console lines, counts and a contact sheet of what was read."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..outcome import InputOutcome

log = logging.getLogger("bodypart")


class Progress:
    """Counts inputs as they stream by and logs a line per input (UIDs and file names only).

    Logs a line per file (``each``; failures always) and a rate every ``every`` items so long runs
    show they are alive.
    """

    def __init__(self, every: int = 50, each: bool = True):
        self.counts: Counter[str] = Counter()
        self.every = every
        self.each = each
        self.start = time.perf_counter()
        self.n = 0

    def add(self, outcome: InputOutcome) -> None:
        self.n += 1
        self.counts[outcome.status.value] += 1
        failed = outcome.status.value == "failed"
        if self.each or failed:
            log.log(logging.WARNING if failed else logging.INFO, "%s", outcome.one_line())
        if self.every and self.n % self.every == 0:
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            log.info("... %d inputs (%.1f/s): %s", self.n, rate, self.summary())

    def summary(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items())) or "no inputs"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("bodypart").setLevel(logging.DEBUG if verbose else logging.INFO)
    enable_project_loggers()
    quiet_pydicom(verbose)


def quiet_pydicom(verbose: bool = False) -> None:
    """Keep pydicom's own messages out of the run log unless ``verbose``.

    Its reading validation warns with the offending value (a patient's name, garbage bytes of a
    damaged file), and each decoder plugin that refuses a frame logs a traceback; the result's
    reason already says, in one line, why a file failed. Called in the app and in every reader.
    """
    import warnings

    import pydicom

    if verbose:
        return
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="pydicom")


def enable_project_loggers() -> None:
    """MONAI Deploy configures logging with ``disable_existing_loggers``; keep ours alive, and keep
    highdicom's per-module INFO lines (a dozen per SR) out of the run log."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("bodypart") and isinstance(logger, logging.Logger):
            logger.disabled = False
    logging.getLogger("highdicom").setLevel(logging.WARNING)


def contact_sheet(
    images: Sequence[np.ndarray], titles: Sequence[str], path: Path, columns: int = 6, tile: float = 2.2
) -> Path:
    """Write a grid of grey images with titles as PNG: the quickest way to see that inputs look right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(images), 1)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile, rows * (tile + 0.3)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(_fit(title), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def thumbnail(image: np.ndarray, side: int = 256) -> np.ndarray:
    step = max(1, int(np.ceil(max(image.shape) / side)))
    return image[::step, ::step]


def _fit(text: str, width: int = 30) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def outcome_table(outcomes: Iterable[InputOutcome]) -> str:
    rows = [(o.source + (f"#{o.frame}" if o.frame is not None else ""), o.status.value, o.reason or "") for o in outcomes]
    if not rows:
        return "(no inputs)"
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)
