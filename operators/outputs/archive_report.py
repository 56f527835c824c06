"""The archive report of a scan: one self-contained HTML file a data team hands to its PACS
administrator (``OUT/report.html``, pictures embedded), with its figures also as PNGs
(``OUT/report/*.png``).

It reads the scan's Parquet table (:mod:`.scan_table`) and shows: inputs by status; the Body
Part Examined each file states against the one predicted, as a confusion matrix (counts and per
cent of each stated term); the disagreements ranked by confidence, the top ones with thumbnails;
how many files state no Body Part Examined; how many results need review; breakdowns per
modality and per device (Manufacturer / model); and the scan's throughput.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

#: Disagreements shown with a thumbnail (the table lists them all, up to :data:`LISTED`).
THUMBNAILS = 12
LISTED = 200
NONE = "(none)"


def _rows(output: Path) -> list[dict]:
    from .scan_table import read_table

    return read_table(output).to_pylist()


def confidence(row: dict) -> float:
    """The probability of the most probable predicted label (0 without labels)."""
    labels = json.loads(row["labels"] or "[]")
    probabilities = json.loads(row["probabilities"] or "{}") or {}
    return max((probabilities.get(l, 0.0) for l in labels), default=0.0)


def confusion(rows: list[dict]) -> tuple[list[str], list[str], np.ndarray]:
    """Stated terms (rows) x predicted terms (columns) over the classified inputs, in counts."""
    pairs = [((r["stated_body_part_examined"] or NONE).strip().upper() or NONE, r["body_part_examined"] or NONE)
             for r in rows if r["status"] == "classified"]
    stated = sorted({s for s, _ in pairs}, key=lambda s: (s == NONE, s))
    predicted = sorted({p for _, p in pairs}, key=lambda p: (p == NONE, p))
    counts = np.zeros((len(stated), len(predicted)), int)
    for s, p in pairs:
        counts[stated.index(s), predicted.index(p)] += 1
    return stated, predicted, counts


def disagreements(rows: list[dict]) -> list[dict]:
    """Classified inputs whose stated Body Part Examined differs from the prediction, most confident first."""
    found = [r for r in rows if r["status"] == "classified" and r["agrees"] is False]
    return sorted(found, key=confidence, reverse=True)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figures(rows: list[dict], stated, predicted, counts) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    status = Counter(r["status"] for r in rows)
    fig, ax = plt.subplots(figsize=(5, 2.4))
    names = sorted(status)
    ax.barh(names, [status[n] for n in names], color=["#4c72b0" if n == "classified" else "#dd8452" if n == "skipped" else "#c44e52" for n in names])
    for i, n in enumerate(names):
        ax.text(status[n], i, f" {status[n]}", va="center")
    ax.set_xlabel("inputs")
    ax.set_title("Inputs by status")
    figures["status.png"] = _png(fig)
    plt.close(fig)
    if counts.size:
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(predicted), 1.0 + 0.45 * len(stated)))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(stated)):
            for j in range(len(predicted)):
                if counts[i, j]:
                    ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(predicted)), predicted, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(stated)), stated, fontsize=8)
        ax.set_xlabel("predicted Body Part Examined")
        ax.set_ylabel("stated in the file")
        ax.set_title("Stated vs predicted (count, % of the stated term)")
        figures["confusion.png"] = _png(fig)
        plt.close(fig)
    return figures


def _thumbnail(row: dict) -> bytes | None:
    """A small PNG of the input (read again with the input stage), or None when it cannot be read."""
    from PIL import Image

    from ..input.radiograph import read_file

    if not row["path"]:
        return None
    try:
        read = read_file(Path(row["path"]), max_side=256)
    except Exception:  # noqa: BLE001 - a thumbnail is a nicety: the table still lists the file
        return None
    if not read.radiographs:
        return None
    image = (read.radiographs[int(row["frame"] or 0) if row["frame"] is not None else 0].image * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _table(head: list[str], body: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{cells}</tr>{rows}</table>"


def _breakdown(rows: list[dict], key) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    body = []
    for name, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        classified = [r for r in rs if r["status"] == "classified"]
        body.append([name, len(rs), len(classified), sum(r["agrees"] is False for r in classified),
                     sum(not r["stated_body_part_examined"] for r in classified), sum(bool(r["needs_review"]) for r in classified)])
    return _table(["", "inputs", "classified", "disagree", "no Body Part Examined", "needs review"], body)


def write_report(output: Path) -> Path:
    """Write ``OUTPUT/report.html`` and ``OUTPUT/report/*.png`` from the scan in ``output``; the HTML's path."""
    output = Path(output)
    rows = _rows(output)
    summary = json.loads((output / "scan.json").read_text()) if (output / "scan.json").is_file() else {}
    stated, predicted, counts = confusion(rows)
    figures = _figures(rows, stated, predicted, counts)
    folder = output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (folder / name).write_bytes(data)
    embed = lambda data: f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'  # noqa: E731
    classified = [r for r in rows if r["status"] == "classified"]
    wrong = disagreements(rows)
    cards = []
    for r in wrong[:THUMBNAILS]:
        thumb = _thumbnail(r)
        cards.append(f'<div class="card">{embed(thumb) if thumb else "<div class=none>no picture</div>"}'
                     f"<div>{html.escape(r['source'])}</div><div>stated <b>{html.escape(str(r['stated_body_part_examined']))}"
                     f"</b>, predicted <b>{html.escape(str(r['body_part_examined']))}</b> ({confidence(r):.0%})</div></div>")
    rate = summary.get("inputs_per_s")
    parts = [
        "<!doctype html><meta charset=utf-8><title>Body part scan report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        ".card{display:inline-block;width:210px;margin:6px;vertical-align:top;font-size:12px}.card img{max-width:200px}"
        ".none{height:80px;background:#eee}</style>",
        f"<h1>Body part scan: {html.escape(str(summary.get('archive', output)))}</h1>",
        f"<p>{len(rows)} inputs; {len(classified)} classified; {len(wrong)} disagree with the Body Part Examined they state; "
        f"{sum(not r['stated_body_part_examined'] for r in classified)} state none; "
        f"{sum(bool(r['needs_review']) for r in classified)} need review. Scan "
        f"{'complete' if summary.get('complete') else 'NOT complete: ' + html.escape(str(summary.get('interrupted_reason')))}"
        + (f"; {rate:.1f} inputs/s in the last scan" if rate else "") + ".</p>",
        "<h2>Inputs by status</h2>" + embed(figures["status.png"]),
    ]
    reasons = Counter(f"{r['status']}: {r['reason']}" for r in rows if r["status"] != "classified")
    if reasons:
        parts.append(_table(["why not classified", "inputs"], [list(kv) for kv in reasons.most_common(20)]))
    if "confusion.png" in figures:
        parts += ["<h2>Stated vs predicted Body Part Examined</h2>", embed(figures["confusion.png"]),
                  _table(["stated \\ predicted", *predicted], [[s, *counts[i]] for i, s in enumerate(stated)])]
    parts += [f"<h2>Disagreements, most confident first ({len(wrong)})</h2>", "".join(cards),
              _table(["input", "stated", "predicted", "labels", "confidence", "needs review"],
                     [[r["source"], r["stated_body_part_examined"], r["body_part_examined"],
                       ", ".join(json.loads(r["labels"])), f"{confidence(r):.2f}", bool(r["needs_review"])] for r in wrong[:LISTED]]),
              "<h2>Per modality</h2>", _breakdown(rows, lambda r: r["modality"] or NONE),
              "<h2>Per device</h2>", _breakdown(rows, lambda r: " / ".join(x for x in (r["manufacturer"], r["manufacturer_model_name"]) if x) or NONE)]
    page = output / "report.html"
    page.write_text("\n".join(parts))
    return page
