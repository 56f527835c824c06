"""Decision rules on a training run's own split: which way of turning probabilities into labels
holds up on sources held out as a whole.

    python benchmarks/decision_rules.py runs/default [--tta 0|1] [--out rules.json]

Reads ``RUN/split.csv`` and ``RUN/package``, computes the members' mean probability for every
validation and test image through the package's preprocessing, tunes what needs tuning on
validation only, and prints macro F1 and exact match over the package's known classes on the test
images of held-out sources and on the random test part; as the training report does, a neighbour of
the one part a partial-label source names (the run's ``partial_label_sources``) counts neither way,
in tuning and in scoring. The rules: a fixed 0.5; per-class
thresholds tuned on validation; the top class alone; the top class plus others above a threshold
and within a fraction of the top probability. Not a test; numbers depend on the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.catalogue import Catalogue  # noqa: E402
from operators.model.ensemble import Ensemble  # noqa: E402
from operators.model.model_package import load_package  # noqa: E402
from training.data import Sample, load_grey  # noqa: E402
from training.metrics import multilabel_metrics, tune_thresholds  # noqa: E402
from training.pipeline import loss_masks  # noqa: E402


def mean_probabilities(ens: Ensemble, rows: list[dict[str, str]], batch: int = 32) -> np.ndarray:
    pre = ens.package.preprocessing
    out = []
    for i in range(0, len(rows), batch):
        x = torch.stack([pre.normalise(pre.square(load_grey(Path(r["path"]), pre.max_side))) for r in rows[i : i + batch]])
        out.append(ens.member_probabilities(x).mean(1))
    return np.concatenate(out)


def rules(val_p: np.ndarray, val_y: np.ndarray, classes: list[str], val_mask: np.ndarray | None = None) -> dict[str, callable]:
    tuned = tune_thresholds(val_p, val_y, classes, targets_mask=val_mask)
    th = np.array([tuned[c] for c in classes])

    def top1(p):
        t = np.zeros_like(p, bool)
        t[np.arange(len(p)), p.argmax(1)] = True
        return t

    out = {"p >= 0.5": lambda p: p >= 0.5, "p >= tuned threshold": lambda p: p >= th, "top class only": top1}
    for frac in (0.5, 0.7, 0.9):
        out[f"top + (p >= tuned, p >= {frac} top)"] = (
            lambda p, f=frac: top1(p) | ((p >= th) & (p >= f * p.max(1, keepdims=True))))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a `bodypart train` output folder")
    ap.add_argument("--tta", type=int, choices=(0, 1), help="1: average each member over flips, 0: not "
                    "(default: as the package was fitted, inference.tta)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cat = Catalogue.default()
    classes = cat.names
    metrics = json.loads((args.run / "metrics.json").read_text())
    held_sources = set(metrics["holdout_sources"])
    partial = json.loads((args.run / "config.json").read_text()).get("partial_label_sources") or []
    package = load_package(args.run / "package")
    known = np.asarray(package.known_mask, bool)
    ens = Ensemble(package, device="cpu", tta=None if args.tta is None else bool(args.tta))
    rows = list(csv.DictReader(open(args.run / "split.csv")))
    parts = {k: [r for r in rows if r["split"] == k] for k in ("val", "test")}
    y = {k: np.array([[c in r["labels"].split("|") for c in classes] for r in v]) for k, v in parts.items()}
    masks = {k: loss_masks([Sample(Path(r["path"]), tuple(r["labels"].split("|")), r["source"]) for r in v], cat, partial)
             for k, v in parts.items()}
    p = {k: np.where(known, mean_probabilities(ens, v), 0.0) for k, v in parts.items()}
    held = np.array([r["source"] in held_sources for r in parts["test"]])
    result = {"run": str(args.run), "tta": ens.tta, "partial_label_sources": partial, "date": time.strftime("%Y-%m-%d"), "held_out_sources": sorted(held_sources),
              "test_images": {"held_out": int(held.sum()), "random_split": int((~held).sum())}, "rules": {}}
    print(f"{args.run}: {held.sum()} held-out and {(~held).sum()} random-split test images; tta={ens.tta}")
    print("| rule | held-out macro F1 | held-out exact match | random-split macro F1 | random-split exact match |")
    print("|---|---|---|---|---|")
    for name, rule in rules(p["val"], y["val"], classes, masks["val"]).items():
        pred = rule(p["test"])
        h = multilabel_metrics(y["test"][held], pred[held], classes, known, targets_mask=masks["test"][held])
        r = multilabel_metrics(y["test"][~held], pred[~held], classes, known, targets_mask=masks["test"][~held])
        result["rules"][name] = {"held_out": {k: h[k] for k in ("macro_f1", "exact_match", "micro_f1")},
                                 "random_split": {k: r[k] for k in ("macro_f1", "exact_match", "micro_f1")}}
        print(f"| {name} | {h['macro_f1']:.3f} | {h['exact_match']:.3f} | {r['macro_f1']:.3f} | {r['exact_match']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
