"""How a model package does on films from other sources, and whether it took shortcuts.

    python benchmarks/generalisation.py --models app/models/default \\
        --data ../shared/data/dicom --data ../shared/data/train --source dlab-berkeley/R-Deep-Learning \\
        --out benchmarks/results/generalisation-cpu.json

For labelled images (the layouts ``bodypart train`` reads; ``--source`` keeps only those sources of
a set that has a ``source`` column) it reports, through the package's own preprocessing and
decision, with and without test-time augmentation (flips):

- macro F1 over the package's known classes, exact match, per class and per source (for a source
  given as ``--partial-source``, which names one part per film, the neighbours of that part count
  neither way, as in the training report);
- *degrade consistency*: the share of images whose labels stay the same when the image is brought
  down to 100 px on the long side and back (the resolution of the training set's hands);
- *crop extent*: the share whose labels keep every label when a centred 60 % window is cut out.

Numbers depend on the data; the JSON records the machine and date. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
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
from operators.testing.probes import centre_crop, degrade  # noqa: E402
from training.data import load_grey, load_samples, targets  # noqa: E402
from training.metrics import multilabel_metrics  # noqa: E402
from training.pipeline import loss_masks  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / "app/models/default")
    ap.add_argument("--data", type=Path, action="append", required=True)
    ap.add_argument("--source", action="append", default=[], help="keep only these sources of sets that name theirs")
    ap.add_argument("--partial-source", action="append", default=[],
                    help="a source that names one part per film (its neighbours' labels unknown)")
    ap.add_argument("--stacker", help="a stacker of the package other than its default (mean, logistic, xgboost)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    cat = Catalogue.default()
    package = load_package(args.models)
    pre = package.preprocessing
    samples = []
    for d in args.data:
        got = load_samples(d, None, cat)
        named = {s.source for s in got} - {Path(d).name}
        samples += [s for s in got if not named or not args.source or s.source in args.source]
    y = targets(samples, cat)
    masks = loss_masks(samples, cat, args.partial_source)
    known = np.asarray(package.known_mask, bool)
    images = [load_grey(s.path, pre.max_side) for s in samples]
    started = time.perf_counter()
    out = {"package": f"{package.metadata.get('name')} {package.metadata.get('version')}", "images": len(samples), "partial_label_sources": args.partial_source,
           "stacker": args.stacker or package.stacker_kind,
           "package_tta": package.tta,  # which of the two rows is the package's own way
           "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"), "results": {}}
    for tta in (False, True):
        ens = Ensemble(package, device="cpu", tta=tta, stacker=args.stacker)

        def labels_of(imgs):
            batch = torch.stack([pre.normalise(pre.square(im)) for im in imgs])
            return [set(p.labels) for p in ens.predict(batch)]

        full = labels_of(images)
        low = labels_of([degrade(im) for im in images])
        crop = labels_of([centre_crop(im) for im in images])
        pred = np.array([[c in l for c in cat.names] for l in full])
        m = multilabel_metrics(y, pred, cat.names, known, targets_mask=masks)
        by_source = {}
        for src in sorted({s.source for s in samples}):
            idx = [i for i, s in enumerate(samples) if s.source == src]
            by_source[src] = {k: v for k, v in multilabel_metrics(y[idx], pred[idx], cat.names, known, targets_mask=masks[idx]).items() if k != "per_class"}
        out["results"]["tta" if tta else "plain"] = {
            "macro_f1": m["macro_f1"], "exact_match": m["exact_match"], "micro_f1": m["micro_f1"],
            "degrade_consistency": float(np.mean([a == b for a, b in zip(full, low)])),
            "crop_keeps_labels": float(np.mean([a <= b for a, b in zip(full, crop)])),
            "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items() if v["evaluated"] and v["positives"]},
            "by_source": by_source,
            "images": {str(s.path.name): {"truth": list(s.labels), "full": sorted(a), "100px": sorted(b), "crop": sorted(c)}
                       for s, a, b, c in zip(samples, full, low, crop)},
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{out['package']} on {len(samples)} images")
    print("| inference | macro F1 | exact match | micro F1 | same labels at 100 px | crop keeps labels |")
    print("|---|---|---|---|---|---|")
    for k, r in out["results"].items():
        print(f"| {k} | {r['macro_f1']:.3f} | {r['exact_match']:.3f} | {r['micro_f1']:.3f} | "
              f"{r['degrade_consistency']:.3f} | {r['crop_keeps_labels']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
