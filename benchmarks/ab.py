"""End to end of two checkouts, interleaved on one machine: a before/after that machine noise
(shared cloud cores drift by 20-40% within an hour) does not decide.

    git worktree add /tmp/before <commit>
    python benchmarks/ab.py /tmp/before . --rounds 2 --out ab.json

Each round runs ``benchmarks/run.py``'s in-process pipeline (readers -> ensemble -> DICOM outputs
-> results) of each checkout in a fresh process, on the corpus linked ``--repeat`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
root = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(root), str(root / "benchmarks")]
import run as b
from operators.input.batching import DecodeOptions
from operators.model.ensemble import Ensemble
from operators.model.model_package import load_package

if __name__ == "__main__":
    ens = Ensemble(load_package(root / "app/models/default"), device="cpu")
    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        b.link_inputs(Path(sys.argv[2]).resolve(), int(sys.argv[3]), t / "in")
        try:  # the inputs are links; checkouts before 2026-12-01 followed links without being asked
            decode = DecodeOptions(follow_links=True)
        except TypeError:
            decode = DecodeOptions()
        r = b.bench_pipeline(ens, t / "in", t / "out", 16, int(sys.argv[4]), True, decode)
    print("RESULT " + json.dumps(r))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs=2, type=Path, help="before and after")
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dicom")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = []
    for i in range(args.rounds):
        for tree in args.checkouts:
            # run in the checkout: reader processes start from a fresh server whose sys.path begins
            # with its working directory, and must import this checkout's operators
            proc = subprocess.run([sys.executable, "-c", CHILD, str(tree.resolve()), str(args.corpus.resolve()), str(args.repeat),
                                   str(args.workers)], capture_output=True, text=True, cwd=tree,
                                  env={**os.environ, "PYTHONPATH": str(tree.resolve())})
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{tree}: no result\n{proc.stderr[-2000:]}")
            r = json.loads(line[7:])
            commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
            runs.append({"round": i + 1, "checkout": str(tree), "commit": commit, **r})
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stage_seconds"].items())
            print(f"round {i + 1} {str(tree):<30} {r['images_per_s']:6.2f} img/s ({stages})")
    if args.out:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
        args.out.write_text(json.dumps({"machine": cpu, "repeat": args.repeat, "workers": args.workers, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
