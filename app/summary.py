"""What a person looks at after a run: a table of results and a picture of each image with its labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def results_table(doc: dict[str, Any]) -> str:
    rows = [("input", "status", "body part", "labels (probability)", "review")]
    for i in doc["instances"]:
        labels = ", ".join(f"{l} {i['probabilities'].get(l, 0):.2f}" for l in i["labels"])
        rows.append((
            i["source"] + (f"#{i['frame']}" if i["frame"] is not None else ""),
            i["status"],
            i["body_part_examined"] or "-",
            labels or (i["reason"] or "-"),
            ("yes: " + (i["review_reason"] or "")) if i["status"] == "classified" and i["needs_review"] else "",
        ))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4] for r in rows]
    s = doc["summary"]
    lines.append(f"\n{doc['model']['name']} {doc['model']['version']} on {doc['model']['device']}: "
                 + ", ".join(f"{v} {k}" for k, v in s.items()))
    return "\n".join(l.rstrip() for l in lines)


def results_sheet(doc: dict[str, Any], input_root: Path, path: Path) -> Path | None:
    """A contact sheet of the classified images titled with their labels."""
    from operators.input.radiograph import read_file
    from operators.outputs.report import contact_sheet, thumbnail

    images, titles = [], []
    for i in doc["instances"]:
        if i["status"] != "classified" or len(images) >= 48:
            continue
        read = read_file(Path(input_root) / i["source"], input_root, max_side=512)
        if not read.radiographs:
            continue
        images.append(thumbnail(read.radiographs[i["frame"] or 0].image))
        mark = " (review)" if i["needs_review"] else ""
        titles.append(f"{Path(i['source']).name}\n{', '.join(i['labels']) or 'none'}{mark}")
    return contact_sheet(images, titles, path) if images else None
