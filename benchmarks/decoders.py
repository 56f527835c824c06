"""Benchmark: which decoder is fastest on this machine, per transfer syntax of the corpus.

    python benchmarks/decoders.py [--rounds 15] [--out benchmarks/results/decoders-cpu-2core.json]

Times every pydicom plugin that decodes each corpus file, the app's own fast paths (libjpeg-turbo
for JPEG lossless) and the reduced-resolution decoders against full decoding, one file at a time,
interleaved round by round so that machine drift hits every candidate alike. Reports medians
and quartiles and says, per transfer syntax, whether the order the app uses
(``operators.input.decoding.PREFERRED_PLUGINS``) is clear-cut here: the preferred decoder's slowest
quartile faster than every alternative's fastest. Correctness (same values) is the tests' job
(``tests/test_radiograph.py``); speed lives here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.pixels import get_decoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run import machine  # noqa: E402
from operators.input.decoding import PREFERRED_PLUGINS, _lossless_jpeg, decode_reduced, transfer_syntax  # noqa: E402
from operators.input.dicom_header import read_dataset  # noqa: E402
from operators.input.grey import DEFAULT_MAX_SIDE  # noqa: E402


def candidates(ds: pydicom.Dataset) -> dict[str, callable]:
    """Every way this file can be decoded here: name -> function of a fresh dataset."""
    ts = transfer_syntax(ds)
    out = {}
    if ts.is_compressed:
        for plugin in get_decoder(ts).available_plugins:
            out[f"pydicom {plugin}"] = lambda d, p=plugin: d.pixel_array_options(decoding_plugin=p) or d.pixel_array
        if _lossless_jpeg(ds, ts) is not None:
            out["imagecodecs libjpeg-turbo"] = lambda d: _lossless_jpeg(d, transfer_syntax(d)).frames
        if decode_reduced(ds, DEFAULT_MAX_SIDE) is not None:
            out["reduced resolution"] = lambda d: decode_reduced(d, DEFAULT_MAX_SIDE).frames
    return out


def measure(corpus: Path, rounds: int) -> dict:
    files = sorted(corpus.glob("*.dcm"))
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    names: dict[str, str] = {}
    refused: dict[str, dict[str, str]] = {}
    plans = {}
    for path in files:
        ds, _ = read_dataset(path)
        ways = candidates(ds)
        if len(ways) > 1:
            plans[path] = ways
            names[path.name] = str(transfer_syntax(ds))
    for r in range(rounds):
        for path, ways in plans.items():
            order = list(ways.items())
            if r % 2:
                order.reverse()  # neither candidate always runs with warm caches
            for name, fn in order:
                ds, _ = read_dataset(path)
                t = time.perf_counter()
                try:
                    fn(ds)
                except Exception as e:  # noqa: BLE001 - a plugin that refuses this file is no candidate for it
                    refused.setdefault(path.name, {})[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
                    del ways[name]
                    times.pop((path.name, name), None)
                    continue
                times[(path.name, name)].append(time.perf_counter() - t)
    per_file = {}
    for (file, name), ts_ in times.items():
        per_file.setdefault(file, {})[name] = _stats(ts_)
    return {"per_file": per_file, "refused": refused, "per_transfer_syntax": _verdicts(times, names)}


def _stats(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), statistics.median(values), max(values)]
    return {"median_ms": 1e3 * statistics.median(values), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2], "n": len(values)}


def _verdicts(times: dict[tuple[str, str], list[float]], names: dict[str, str]) -> dict:
    """Per transfer syntax: each candidate's speed relative to pydicom's default (ratio per file and
    round, so files of different sizes can be pooled), and whether the app's choice is clear-cut."""
    out = {}
    for ts in sorted(set(names.values())):
        files = [f for f, t in names.items() if t == ts]
        default = None
        ratios: dict[str, list[float]] = defaultdict(list)
        for f in files:
            ways = {n: v for (file, n), v in times.items() if file == f}
            default = next((n for n in ways if n.startswith("pydicom ")), None)
            first = _default_plugin(ts)
            if first and f"pydicom {first}" in ways:
                default = f"pydicom {first}"
            for n, v in ways.items():
                ratios[n] += [a / b for a, b in zip(v, ways[default])]
        summary = {n: {"median_ratio_to_default": statistics.median(r), **_quartiles(r)} for n, r in ratios.items()}
        preferred = PREFERRED_PLUGINS.get(ts)
        verdict = "pydicom's order (no preference set)"
        if preferred and f"pydicom {preferred}" in summary:
            mine = summary[f"pydicom {preferred}"]
            others = [s for n, s in summary.items() if n != f"pydicom {preferred}" and n.startswith("pydicom ")]
            clear = all(mine["q3"] < o["q1"] for o in others)
            verdict = (f"{preferred} first: clear-cut here" if clear else
                       f"{preferred} first: NOT clear-cut here (quartiles overlap); consider pydicom's order")
        out[ts] = {"name": pydicom.uid.UID(ts).name, "default": default, "candidates": summary, "verdict": verdict}
    return out


def _default_plugin(ts: str) -> str | None:
    # pydicom tries plugins in registration order; ``available_plugins`` is sorted by name
    plugins = [p for p in get_decoder(pydicom.uid.UID(ts))._available]
    return plugins[0] if plugins else None


def _quartiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) >= 4 else [min(values), statistics.median(values), max(values)]
    return {"q1": q[0], "q3": q[2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/dicom")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, **measure(args.corpus, args.rounds)}
    for ts, v in result["per_transfer_syntax"].items():
        print(f"{v['name']} (default {v['default']}): {v['verdict']}")
        for n, s in sorted(v["candidates"].items(), key=lambda kv: kv[1]["median_ratio_to_default"]):
            print(f"    {n:30s} {s['median_ratio_to_default']:.2f}x the default's time (quartiles {s['q1']:.2f}-{s['q3']:.2f})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
