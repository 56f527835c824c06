"""Scale benchmark of ``bodypart scan``: thousands of inputs, each engine, memory and resume.

    python benchmarks/scale.py --engines local ray --sizes 1000 10000 --out benchmarks/results/scale-cpu-2core.json
    python benchmarks/scale.py --table --out benchmarks/results/scale-cpu-2core.json   # the README's table

For each engine and size: an archive of that many links to the real corpus' DICOM files (round
robin, 1,000 per folder, under a temporary folder; read with ``--follow-links``), scanned by the
``bodypart scan`` command in a process group of its own, sampling every process of the group
(the scan, its readers, Ray's servers and workers) twice a second: peak RSS per process and of all
together. At the largest size the scan is killed (SIGKILL to the whole group) once half the inputs
are in the table, then run again: the check is that every input is then in the table exactly
once and that the rows the first run wrote are unchanged. Wall time and inputs/s count both runs.

RSS is sampled every 0.5 s (a shorter peak can be missed), with PSS and USS from
/proc/PID/smaps_rollup. Summed RSS counts the pages processes share (the torch libraries every
Ray worker maps, Ray's object store in /dev/shm, which a worker's RSS includes once it touched
them) once per process; summed PSS splits them, so it is what the machine needs. Flat memory is
judged per process and by PSS, 1,000 against 10,000 inputs.

Not a test: numbers depend on the machine, which the JSON records. The JSON is written after each
run, so a benchmark stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "dicom"


def make_archive(corpus: Path, n: int, folder: Path) -> Path:
    """``n`` links to the corpus' DICOM files, 1,000 per sub-folder."""
    files = sorted(corpus.glob("*.dcm"))
    for i in range(n):
        d = folder / f"{i // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        src = files[i % len(files)]
        os.symlink(src, d / f"{i:06d}_{src.name}")
    return folder


class Sampler(threading.Thread):
    """Peak RSS of every process in the tree under ``pid`` (and its process group), twice a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.stop = pid, threading.Event()
        self.peak: dict[int, tuple[str, int]] = {}  # pid -> (role, peak RSS bytes)
        self.peak_uss: dict[int, int] = {}  # pid -> peak USS (pages only it maps) bytes
        self.peak_total = 0
        self.peak_total_pss = 0  # shared pages split between the processes that map them

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        pgid = self.root  # the scan leads its own session; Ray's servers may be reparented to init
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid not in {q.pid for q in procs} and os.getpgid(p.pid) == pgid:
                    procs.append(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return procs

    def run(self) -> None:
        while not self.stop.is_set():
            total = total_pss = 0
            for p in self.processes():
                try:
                    rss = p.memory_info().rss
                    role = role_of(p)
                    pss, uss = _smaps_rollup(p.pid)
                except (psutil.Error, OSError):
                    continue
                total += rss
                total_pss += pss
                if rss > self.peak.get(p.pid, ("", 0))[1]:
                    self.peak[p.pid] = (role, rss)
                self.peak_uss[p.pid] = max(self.peak_uss.get(p.pid, 0), uss)
            self.peak_total = max(self.peak_total, total)
            self.peak_total_pss = max(self.peak_total_pss, total_pss)
            self.stop.wait(0.5)

    def by_role(self) -> dict[str, dict]:
        roles: dict[str, dict] = {}
        for role, rss in self.peak.values():
            r = roles.setdefault(role, {"processes": 0, "peak_rss_mib_max": 0.0, "peak_uss_mib_max": 0.0})
            r["processes"] += 1
            r["peak_rss_mib_max"] = max(r["peak_rss_mib_max"], round(rss / 2**20, 1))
        for pid, (role, _) in self.peak.items():
            roles[role]["peak_uss_mib_max"] = max(roles[role]["peak_uss_mib_max"], round(self.peak_uss.get(pid, 0) / 2**20, 1))
        return dict(sorted(roles.items()))


def _smaps_rollup(pid: int) -> tuple[int, int]:
    """(PSS, USS) of a process in bytes, from /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields.get("Pss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def role_of(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    name = p.name()
    if "app.cli scan" in cmd or "bodypart scan" in cmd:
        return "scan (driver)"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "forkserver" in cmd:
        return "reader process"
    if name.startswith("ray::"):
        return name  # ray::IDLE, ray::MapWorker(...), ray::ReadParquet...
    for server in ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py", "ray_client_server"):
        if server in cmd or server in name:
            return f"ray {server}"
    if "default_worker.py" in cmd:
        return "ray worker"
    return name


def rows_in(output: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (output / "results").glob("part-*.parquet"))


def scan_once(archive: Path, output: Path, engine: str, workers: int, kill_at: int | None) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "scan", str(archive), "-o", str(output), "--follow-links",
           "--engine", engine, "--workers", str(workers)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(output.parent / f"{output.name}-{'killed' if kill_at else 'run'}.log", "a")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    killed = False
    while proc.poll() is None:
        if kill_at is not None and output.joinpath("results").exists() and rows_in(output) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            proc.wait()
            break
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - t0
    log.close()
    sampler.stop.set()
    sampler.join()
    time.sleep(3)
    leftover = [p.pid for p in psutil.process_iter() if _in_group(p, proc.pid)]
    for pid in leftover:  # Ray servers a killed driver left behind would skew the next run
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run = {"rc": proc.returncode, "killed": killed, "wall_s": round(wall, 1), "rows_after": rows_in(output),
           "peak_rss_total_mib": round(sampler.peak_total / 2**20, 1),
           "peak_pss_total_mib": round(sampler.peak_total_pss / 2**20, 1), "processes_seen": len(sampler.peak),
           "peak_rss_by_role": sampler.by_role()}
    if killed:
        run["left_behind_after_kill"] = len(leftover)
    return run


def _in_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid
    except (ProcessLookupError, psutil.Error):
        return False


def check_table(output: Path, n: int, first_rows: list[dict] | None) -> dict:
    table = pq.read_table(output / "results").to_pylist()
    keys = Counter((r["source"], r["frame"]) for r in table)
    sources = {r["source"] for r in table}
    unchanged = None
    if first_rows:
        now = {(r["source"], r["frame"]): r["record"] for r in table}
        unchanged = all(now.get((r["source"], r["frame"])) == r["record"] for r in first_rows)
    return {"rows": len(table), "inputs_in_table": len(sources), "inputs": n,
            "duplicates": sum(c - 1 for c in keys.values() if c > 1), "first_run_rows_unchanged": unchanged,
            "statuses": dict(Counter(r["status"] for r in table))}


def table(result: dict) -> str:
    """The measurements as the Markdown table the README shows."""
    lines = ["| engine | inputs | wall | inputs/s | peak RSS: scan process | largest other process | all processes "
             "(RSS sum / PSS sum) | kill at half way, then resume |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        runs = [r[k] for k in ("run", "killed_run", "resumed_run") if k in r]
        roles: dict[str, float] = {}
        for run in runs:
            for role, v in run["peak_rss_by_role"].items():
                roles[role] = max(roles.get(role, 0.0), v["peak_rss_mib_max"])
        driver = roles.pop("scan (driver)", 0.0)
        other, other_mib = max(roles.items(), key=lambda kv: kv[1]) if roles else ("-", 0.0)
        total = max(run["peak_rss_total_mib"] for run in runs)
        pss = max(run.get("peak_pss_total_mib", 0) for run in runs)
        check = r["check"]
        if "killed_run" in r and not r["killed_run"]["killed"]:
            resume = f"NOT killed (the scan ended first, rc {r['killed_run']['rc']})"
        elif "killed_run" in r:
            resume = (f"killed at {r['killed_run']['rows_after']:,} rows; after the resume {check['inputs_in_table']:,} of "
                      f"{check['inputs']:,} inputs, {check['duplicates']} duplicates, earlier rows "
                      f"{'unchanged' if check['first_run_rows_unchanged'] else 'CHANGED'}")
        else:
            resume = f"{check['inputs_in_table']:,} of {check['inputs']:,} inputs in the table"
        lines.append(f"| {r['engine']} | {r['inputs']:,} | {r['wall_s'] / 60:.1f} min | {r['inputs_per_s']:.2f} | "
                     f"{driver / 1024:.2f} GiB | {other_mib / 1024:.2f} GiB ({other}) | {total / 1024:.2f} / "
                     f"{f'{pss / 1024:.2f} GiB' if pss else 'not measured'} | {resume} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write (with --table: to read)")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of --out and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    result = {"machine": {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d"), "workers": args.workers, "corpus_files": len(list(args.corpus.glob("*.dcm"))),
              "runs": []}
    largest = max(args.sizes)
    with tempfile.TemporaryDirectory(prefix="bodypart-scale-") as tmp:
        for n in sorted(args.sizes):
            archive = make_archive(args.corpus.resolve(), n, Path(tmp) / f"archive-{n}")
            for engine in args.engines:
                output = Path(tmp) / f"out-{engine}-{n}"
                output.mkdir()
                entry = {"engine": engine, "inputs": n}
                if n == largest:  # kill at half way, then resume
                    first = scan_once(archive, output, engine, args.workers, kill_at=n // 2)
                    first_rows = pq.read_table(output / "results").to_pylist() if rows_in(output) else []
                    second = scan_once(archive, output, engine, args.workers, kill_at=None)
                    entry.update(killed_run=first, resumed_run=second, check=check_table(output, n, first_rows))
                    wall = first["wall_s"] + second["wall_s"]
                else:
                    run = scan_once(archive, output, engine, args.workers, kill_at=None)
                    entry.update(run=run, check=check_table(output, n, None))
                    wall = run["wall_s"]
                entry.update(wall_s=round(wall, 1), inputs_per_s=round(n / wall, 2))
                summary = json.loads((output / "scan.json").read_text()) if (output / "scan.json").exists() else {}
                entry["last_scan_json"] = {k: summary.get(k) for k in ("complete", "this_scan", "parts", "seconds", "inputs_per_s")}
                result["runs"].append(entry)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
                print(json.dumps({k: entry[k] for k in ("engine", "inputs", "wall_s", "inputs_per_s", "check")}), flush=True)


if __name__ == "__main__":
    main()
