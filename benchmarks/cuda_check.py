"""CUDA and CPU give the same labels: run the classification path on both devices and compare.

    python benchmarks/cuda_check.py --models PKG --corpus DIR --out cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.input.batching import iter_batches  # noqa: E402
from operators.model.ensemble import Ensemble  # noqa: E402
from operators.model.model_package import load_package  # noqa: E402


def predictions(package, corpus: Path, device: str):
    ens = Ensemble(package, device=device)
    out = {}
    for batch in iter_batches(corpus, package.preprocessing, 16, workers=4):
        for r, p in zip(batch.radiographs, ens.predict(batch.tensor)):
            out[r.source] = p
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("cuda_check.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    package = load_package(args.models)
    cpu, gpu = predictions(package, args.corpus, "cpu"), predictions(package, args.corpus, "cuda")
    diffs = [max(abs(cpu[s].probabilities[c] - gpu[s].probabilities[c]) for c in cpu[s].probabilities) for s in cpu]
    same = [s for s in cpu if cpu[s].labels == gpu[s].labels]
    report = {"gpu": torch.cuda.get_device_name(0), "images": len(cpu), "same_labels": len(same),
              "different": {s: [cpu[s].labels, gpu[s].labels] for s in cpu if s not in same},
              "max_abs_probability_difference": float(np.max(diffs)), "mean_abs_probability_difference": float(np.mean(diffs))}
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if len(same) == len(cpu) else 1


if __name__ == "__main__":
    sys.exit(main())
