"""Fuzz the input stage (and optionally the app) with mutated copies of the real corpus.

    python benchmarks/fuzz.py --count 10000 [--round 500] [--app-every 5] [--out benchmarks/results/fuzz-cpu-2core.json]

Writes ``--round`` mutated files at a time (``benchmarks/mutations.py``: bit flips, truncation at
element boundaries, wrong lengths and VRs, broken fragments and offset tables, pixel and frame
bombs, deep sequence nesting, spliced streams) into a temporary folder, reads them through the
app's reader pool (``operators.input.batching.iter_prepared``, 2 readers, the app's per-file time
limit) and, every ``--app-every`` rounds, runs ``python -m app`` on the same folder. Checks
that every file ends with exactly one outcome and a one-line reason, that the run completes,
and samples the memory of every process. Prints the outcome table per mutation kind and writes
JSON. Not a test (``tests/test_fuzz.py`` runs a seeded few hundred in CI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mutations import MUTATIONS, write_mutants  # noqa: E402
from benchmarks.run import machine  # noqa: E402
from operators.input.batching import DecodeOptions, iter_prepared  # noqa: E402
from operators.model.model_package import load_package  # noqa: E402
from operators.outcome import InputOutcome  # noqa: E402


class PeakMemory:
    """Samples the resident memory of a process and all its descendants (the readers, the app)."""

    def __init__(self, pid: int | None = None, every: float = 0.25):
        self.root = psutil.Process(pid or os.getpid())
        self.every = every
        self.peak_main = 0
        self.peak_child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_main = max(self.peak_main, self.root.memory_info().rss)
                for c in self.root.children(recursive=True):
                    try:
                        self.peak_child = max(self.peak_child, c.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class ReaderEvents(logging.Handler):
    """Counts what the reader pool reports: readers that died, files stopped by the time limit."""

    def __init__(self) -> None:
        super().__init__()
        self.died = 0
        self.timed_out = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "time limit" in msg:
            self.timed_out += 1
        elif "reader process died" in msg:
            self.died += 1


def check_outcomes(files: list[tuple[Path, str, str]], items: list, folder: Path) -> tuple[list[str], dict]:
    """Problems (empty when all is well) and, per file name, its (status, reason)."""
    problems = []
    per_file: dict[str, list] = defaultdict(list)
    for item, _ in items:
        if isinstance(item, InputOutcome):
            per_file[item.source].append((item.status.value, item.reason))
        else:
            per_file[item.source].append(("classified", None))  # read: the app would classify it
    for path, _, _ in files:
        got = per_file.get(path.name)
        if not got:
            problems.append(f"{path.name}: no outcome")
            continue
        statuses = {s for s, _ in got}
        if len(statuses) != 1 or (len(got) > 1 and statuses != {"classified"}):
            problems.append(f"{path.name}: several outcomes {got}")
        for s, reason in got:
            if s in ("failed", "skipped") and (not reason or "\n" in reason):
                problems.append(f"{path.name}: {s} without a one-line reason")
    extra = set(per_file) - {p.name for p, _, _ in files}
    problems += [f"{name}: outcome for a file that was not written" for name in extra]
    return problems, {k: v[0] for k, v in per_file.items()}


def run_app(folder: Path, out: Path, models: Path | None) -> dict:
    cmd = [sys.executable, "-m", "app", "-i", str(folder), "-o", str(out)] + (["-m", str(models)] if models else [])
    env = {**os.environ, "BODYPART_WORKERS": "2"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid) as mem:
        _, err = proc.communicate()
    seconds = time.perf_counter() - t
    doc = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    return {"returncode": proc.returncode, "seconds": seconds, "complete": doc and doc["complete"],
            "instances": len({i["source"] for i in doc["instances"]}) if doc else 0,
            "summary": doc and doc["summary"], "peak_rss_main_mb": mem.peak_main / 2**20,
            "peak_rss_reader_mb": mem.peak_child / 2**20, "stderr_tail": err[-2000:] if proc.returncode else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/dicom")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--round", type=int, default=500, help="files per round (written, read, deleted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--app-every", type=int, default=0, help="also run the app on every N-th round (0: never)")
    ap.add_argument("--models", type=Path, help="model package for the app runs (default: the shipped one)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    events = ReaderEvents()
    logging.getLogger("bodypart").addHandler(events)
    logging.getLogger("bodypart").setLevel(logging.INFO)
    from operators.outputs.report import quiet_pydicom

    quiet_pydicom()
    corpus = sorted(args.corpus.glob("*.dcm"))
    pre = load_package(args.models or ROOT / "app/models/default").preprocessing
    table: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    problems: list[str] = []
    app_runs = []
    started = time.perf_counter()
    peak_main = peak_reader = 0
    with tempfile.TemporaryDirectory(prefix="bodypart-fuzz-") as tmp:
        for r, first in enumerate(range(0, args.count, args.round)):
            folder = Path(tmp) / f"round{r}"
            files = write_mutants(corpus, folder, min(args.round, args.count - first), seed=args.seed + first)
            with PeakMemory() as mem:  # the reader pool alone (app runs are measured on their own)
                items = list(iter_prepared(folder, pre, workers=args.workers, decode=DecodeOptions()))
            peak_main, peak_reader = max(peak_main, mem.peak_main), max(peak_reader, mem.peak_child)
            found, outcomes = check_outcomes(files, items, folder)
            problems += [f"round {r}: {p}" for p in found]
            for path, kind, _ in files:
                status, reason = outcomes.get(path.name, ("missing", None))
                table[kind][status] += 1
                if reason:
                    reasons[reason.split(":")[0][:60]] += 1
            if args.app_every and r % args.app_every == 0:
                result = run_app(folder, Path(tmp) / f"out{r}", args.models)
                if result["returncode"] != 0 or not result["complete"] or result["instances"] != len(files):
                    problems.append(f"round {r}: app run {result}")
                app_runs.append(result)
            done = first + len(files)
            rate = done / (time.perf_counter() - started)
            print(f"{done}/{args.count} files ({rate:.1f}/s): readers died {events.died}, time limit {events.timed_out}, "
                  f"problems {len(problems)}", flush=True)
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()
    seconds = time.perf_counter() - started
    statuses = ["classified", "skipped", "failed", "missing"]
    print(f"\n| mutation | tried | {' | '.join(statuses)} |\n|---|---|{'---|' * len(statuses)}")
    for kind in MUTATIONS:
        c = table[kind]
        print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c[s]) for s in statuses) + " |")
    total = Counter()
    for c in table.values():
        total.update(c)
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[s]) for s in statuses) + " |")
    print(f"\n{args.count} files in {seconds / 60:.1f} min; readers that died: {events.died}; stopped by the time limit: "
          f"{events.timed_out}; peak RSS of the pool: main {peak_main / 2**20:.0f} MB, a reader {peak_reader / 2**20:.0f} MB")
    if app_runs:
        print(f"app runs: {len(app_runs)} of {args.round} files, {min(a['seconds'] for a in app_runs):.0f}-"
              f"{max(a['seconds'] for a in app_runs):.0f} s each; peak RSS main {max(a['peak_rss_main_mb'] for a in app_runs):.0f} MB, "
              f"a reader {max(a['peak_rss_reader_mb'] for a in app_runs):.0f} MB")
    print(f"problems: {len(problems)}")
    for p in problems[:20]:
        print("  ", p)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "count": args.count, "seed": args.seed,
              "seconds": seconds, "table": {k: dict(v) for k, v in table.items()}, "top_reasons": reasons.most_common(40),
              "readers_died": events.died, "time_limit_stops": events.timed_out,
              "peak_rss_main_mb": peak_main / 2**20, "peak_rss_reader_mb": peak_reader / 2**20,
              "app_runs": app_runs, "problems": problems}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"written {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
