"""The input stage on its own: what each file is, how it was read, and a contact sheet to look at."""

from __future__ import annotations

import json
from pathlib import Path

from operators.outcome import InputOutcome
from operators.input.grey import DEFAULT_MAX_SIDE
from operators.input.radiograph import Radiograph, iter_radiographs
from operators.outputs.report import Progress, contact_sheet, thumbnail


def inspect_inputs(
    input_path: Path, output_dir: Path, max_side: int = DEFAULT_MAX_SIDE, sheet_limit: int = 60
) -> list[InputOutcome]:
    """Read every input under ``input_path``; write ``inputs.json`` and ``contact_sheet.png``.

    Only small thumbnails are kept in memory, so the folder may be as large as the archive.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    outcomes: list[InputOutcome] = []
    thumbs, titles = [], []
    for item in iter_radiographs(Path(input_path), max_side=max_side):
        if isinstance(item, Radiograph):
            outcome = item.outcome()
            if len(thumbs) < sheet_limit:
                thumbs.append(thumbnail(item.image))
                titles.append(item.source + (f" #{item.frame}" if item.frame is not None else ""))
        else:
            outcome = item
        progress.add(outcome)
        outcomes.append(outcome)
    document = {
        "input": str(input_path),
        "summary": dict(progress.counts),
        "instances": [o.to_json() for o in outcomes],
    }
    (output_dir / "inputs.json").write_text(json.dumps(document, indent=2))
    if thumbs:
        contact_sheet(thumbs, titles, output_dir / "contact_sheet.png")
    return outcomes
