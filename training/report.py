"""Evaluation report: figures like the study's (PNG), a Markdown report and the metrics JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_distribution(path: Path, counts: dict[str, int]) -> Path:
    """Fig. 4: images per class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    names = list(counts)
    ax.bar(names, [counts[n] for n in names], color="#4477aa")
    ax.set_ylabel("images")
    ax.set_title("Class distribution")
    ax.tick_params(axis="x", rotation=70)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def per_class_bars(path: Path, metrics: dict[str, Any], title: str) -> Path:
    """Figs. 5-7: per-class accuracy and F1, positives on a secondary axis."""
    plt = _plt()
    per = {c: v for c, v in metrics["per_class"].items() if v["evaluated"]}
    names = list(per)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, [per[c]["accuracy"] for c in names], 0.4, label="accuracy", color="#66ccee")
    ax.bar(x + 0.2, [per[c]["f1"] or 0 for c in names], 0.4, label="F1", color="#228833")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(x, names, rotation=70)
    ax2 = ax.twinx()
    ax2.plot(x, [per[c]["positives"] for c in names], "o", color="#ee6677", label="positives in test")
    ax2.set_ylabel("positives in test")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def comparison(path: Path, evaluations: dict[str, Any]) -> Path:
    """Figs. 8-9: members versus stackers on macro/micro F1 and exact match."""
    plt = _plt()
    names = list(evaluations)
    keys = ("macro_f1", "micro_f1", "exact_match")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.2), 4))
    for j, k in enumerate(keys):
        ax.bar(x + (j - 1) * 0.27, [evaluations[n][k] or 0 for n in names], 0.27, label=k)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Members and stackers on the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def reliability(path: Path, y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> tuple[Path, float]:
    """Reliability diagram over all (image, class) pairs; returns the expected calibration error."""
    plt = _plt()
    p, t = probs.ravel(), y_true.ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    conf, acc, n = [], [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf.append(p[sel].mean()); acc.append(t[sel].mean()); n.append(sel.sum())
    ece = float(sum(k * abs(a - c) for a, c, k in zip(acc, conf, n)) / max(len(p), 1))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(conf, acc, "o-", color="#4477aa")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path, ece


def _choice_section(choice: dict[str, Any] | None) -> list[str]:
    """What validation chose for the package's decision, with the scores it chose by."""
    if not choice or not (choice["stacker_scores"] or choice["top_fraction_scores"]):
        return []
    folds = {"sources": "whole sources per fold (scored on sources a stacker was not fitted on)",
             "pictures": "copies of one picture in one fold"}.get(choice.get("folds", "pictures"))
    lines = ["", "## Decision chosen on validation", "", f"Score: {choice['score']}; folds: {folds}.", ""]
    if choice["stacker_scores"]:
        lines.append(f"Stacker: **{choice['stacker']}** (out of fold: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in choice["stacker_scores"].items()) + ").")
    if choice["top_fraction_scores"]:
        lines.append(f"Top fraction: **{choice['top_fraction']}** ("
                     + ", ".join(f"{k} {v:.3f}" for k, v in choice["top_fraction_scores"].items())
                     + "; None: every class above its threshold).")
    return lines


def write_report(out: Path, summary: dict[str, Any], classes: Sequence[str], test_y: np.ndarray, stacked: np.ndarray,
                 members: np.ndarray, member_names: Sequence[str], stacker: str) -> Path:
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    evals = summary["evaluations"]
    class_distribution(figs / "class_distribution.png", summary["class_counts"])
    for name, m in evals.items():
        per_class_bars(figs / f"per_class_{name.replace(':', '_').replace('+', '_')}.png", m, f"{name}: per-class accuracy and F1")
    comparison(figs / "members_vs_stackers.png", evals)
    _, ece = reliability(figs / "reliability.png", test_y, stacked) if len(test_y) else (None, None)
    summary["calibration_ece"] = ece
    lines = ["# Training report", "", f"Images: {summary['images']}; split: {summary['split_sizes']}; device: {summary['device']}; "
             f"{summary['seconds']} s.", "", "![classes](figures/class_distribution.png)", "",
             "## Test split (Table 2 of the study)", "",
             "| model | macro F1 | micro F1 | exact match | Hamming loss | macro sensitivity | macro specificity |",
             "|---|---|---|---|---|---|---|"]
    for name, m in evals.items():
        lines.append("| " + " | ".join([name] + [_f(m[k]) for k in ("macro_f1", "micro_f1", "exact_match", "hamming_loss", "macro_sensitivity", "macro_specificity")]) + " |")
    lines += ["", "![comparison](figures/members_vs_stackers.png)", "", "![reliability](figures/reliability.png)", "",
              "## Per class", ""]
    for name in evals:
        lines.append(f"![{name}](figures/per_class_{name.replace(':', '_').replace('+', '_')}.png)")
    head_name = next((k for k in evals if k.startswith(f"stack:{stacker}+")), f"stack:{stacker}")
    head = evals[head_name]
    lines += ["", f"### {head_name} (the package's decision)", "", "| class | positives | sensitivity | specificity | F1 |", "|---|---|---|---|---|"]
    for c, v in head["per_class"].items():
        if v["evaluated"]:
            lines.append(f"| {c} | {v['positives']} | {_f(v['sensitivity'])} | {_f(v['specificity'])} | {_f(v['f1'])} |")
    lines += _choice_section(summary.get("decision_choice"))
    lines += _parts_section(summary, stacker)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


PICTURES_NOTE = ("held_out_pictures: the held-out test images with each radiograph once (copies of one picture in "
                 "other encodings, `picture` in split.csv, counted once): how many films the held-out figures rest on.")


def _parts_section(summary: dict[str, Any], stacker: str) -> list[str]:
    """Held-out sources against the random split, per source and per class (the package's decision)."""
    parts, by_source = summary.get("decision_by_part"), summary.get("decision_by_source")
    if not parts:
        return []
    lines = ["", "## Across sources (the package's decision)", "",
             f"Validation sources held out: {', '.join(summary.get('val_sources') or []) or 'none'}; "
             f"test sources held out: {', '.join(summary.get('holdout_sources') or []) or 'none'}.", "",
             "| test part | images | macro F1 | micro F1 | exact match | macro sensitivity |", "|---|---|---|---|---|---|"]
    for name, m in [*parts.items(), *by_source.items()]:
        lines.append(f"| {name} | {m['n']} | " + " | ".join(_f(m[k]) for k in ("macro_f1", "micro_f1", "exact_match", "macro_sensitivity")) + " |")
    if "held_out_pictures" in parts:
        lines += ["", PICTURES_NOTE]
    lines += ["", "| class | random split: positives | F1 | held-out sources: positives | F1 |", "|---|---|---|---|---|"]
    rnd, held = parts["random_split"]["per_class"], parts["held_out_sources"]["per_class"]
    for c, v in rnd.items():
        if v["evaluated"]:
            lines.append(f"| {c} | {v['positives']} | {_f(v['f1'])} | {held[c]['positives']} | {_f(held[c]['f1'])} |")
    untrained = summary.get("untrained_classes") or {}
    if untrained:
        lines += ["", f"Not reported (fewer than {summary.get('min_class_images')} labelled images, or none in training): "
                  + ", ".join(f"{c} ({n})" for c, n in untrained.items()) + "."]
    return lines


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
