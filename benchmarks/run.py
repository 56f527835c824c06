"""Benchmark: per stage, end to end, ceiling, cold start and memory, on CPU or CUDA.

    python benchmarks/run.py --models app/models/default --device cpu --repeat 20 --out bench.json

Prints one table and writes JSON. Inputs are the real corpus (``../shared/data/dicom``), linked
``--repeat`` times into a temporary folder to reach thousands of files. Not a test: numbers depend
on the machine, which the JSON records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.input.batching import DecodeOptions, default_workers, iter_batches, iter_prepared  # noqa: E402
from operators.catalogue import Catalogue  # noqa: E402
from operators.model.classify import classified_outcome  # noqa: E402
from operators.model.ensemble import Ensemble, inference_autocast  # noqa: E402
from operators.input.gpu_decoding import GpuDecoder  # noqa: E402
from operators.model.model_package import load_package  # noqa: E402
from operators.model.networks import create_network  # noqa: E402
from operators.input.discovery import iter_input_files  # noqa: E402
from operators.input.radiograph import read_file  # noqa: E402
from operators.pipeline import BatchFeed, Pipeline  # noqa: E402


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": default_workers(), "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_decode(corpus: Path, gpu: GpuDecoder | None = None, reduced_resolution: bool = True) -> dict:
    """Input stage per transfer syntax, single process: read + decode + grey at the default working
    size (GPU decoder if given, warmed up first; files it does not take are read on the CPU as in
    the app; ``reduced_resolution``: JPEG 2000 and 8-bit JPEG at reduced resolution where they can be)."""
    per = defaultdict(list)
    if gpu is not None:
        for path in iter_input_files(corpus):
            read_file(path, corpus, gpu=gpu)
    for path in iter_input_files(corpus):
        t = time.perf_counter()
        read = read_file(path, corpus, gpu=gpu, reduced_resolution=reduced_resolution)
        dt = time.perf_counter() - t
        if read.radiographs:
            r = read.radiographs[0]
            per[r.info.transfer_syntax].append((dt, r.info.original_shape, r.info.decoder))
    return {ts: {"files": len(v), "s_per_image": statistics.mean(d for d, _, _ in v),
                 "megapixels": statistics.mean(s[0] * s[1] / 1e6 for _, s, _ in v),
                 "decoders": sorted({d for _, _, d in v})} for ts, v in sorted(per.items())}


def bench_members(ensemble: Ensemble, sizes: list[int], batch: int, extra_archs: list[str], seconds: float = 2.0) -> dict:
    """Members alone on ready tensors (the ceiling), per member and all together, per input size."""
    device, out = ensemble.device, {}
    n_classes = len(ensemble.package.classes)
    nets = {m.name: net for m, net in zip(ensemble.package.members, ensemble.networks)}
    for arch in extra_archs:
        nets[arch] = create_network(arch, n_classes).eval().to(device).to(memory_format=torch.channels_last)
    for size in sizes:
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        row = {}
        for name, net in nets.items():
            row[name] = _rate(lambda: _forward(net, x, device), batch, device, seconds)
        # the package as the app runs it: every member on each test-time view (the image and its flips)
        row["ensemble (package members)"] = _rate(lambda: ensemble.member_probabilities(x), batch, device, seconds)
        out[size] = row
    return out


def _forward(net, x, device):
    with torch.inference_mode(), inference_autocast(device):
        return net(x)


def _rate(fn, batch: int, device: torch.device, seconds: float, rounds: int = 3) -> float:
    """Images/s, the best of ``rounds`` timed rounds: a ceiling, so the least disturbed one (shared
    machines' neighbours slow single rounds by up to 2x)."""
    fn()
    sync(device)  # warm-up (cudnn autotune, allocator)
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds or n < 2:
            fn()
            n += 1
        sync(device)
        best = max(best, n * batch / (time.perf_counter() - t0))
    return best


def make_jpeg_twins(corpus: Path, dest: Path) -> Path:
    """8-bit JPEG baseline twins of the corpus' large grey images (the corpus holds no such file;
    many archives store radiographs so): inputs for measuring DCT-scaled decoding."""
    from operators.input.dicom_header import read_dataset
    from operators.testing.dicom_factory import as_jpeg_baseline

    dest.mkdir(parents=True)
    for path in iter_input_files(corpus):
        read = read_file(path, corpus, max_side=None, reduced_resolution=False)
        if read.radiographs and max(read.radiographs[0].image.shape) >= 1500 and read.radiographs[0].frame is None:
            ds, _ = read_dataset(path)
            if int(ds.get("SamplesPerPixel", 1) or 1) == 1:
                as_jpeg_baseline(ds, read.radiographs[0].image).save_as(dest / path.name, enforce_file_format=True)
    return dest


def link_inputs(corpus: Path, repeat: int, dest: Path) -> int:
    files = [p for p in iter_input_files(corpus) if p.suffix == ".dcm"]
    for i in range(repeat):
        d = dest / f"copy{i:04d}"
        d.mkdir(parents=True)
        for f in files:
            os.symlink(f, d / f.name)
    return repeat * len(files)


def bench_pipeline(ensemble: Ensemble, inputs: Path, out: Path, batch: int, workers: int, dicom_outputs: bool,
                   decode: DecodeOptions = DecodeOptions()) -> dict:
    """The app's data flow in process (the app's own :class:`Pipeline`, stage by stage, timed):
    readers -> ensemble -> DICOM outputs -> results."""
    pipeline = Pipeline(ensemble, out, inputs, dicom_outputs=dicom_outputs, workers=workers, app_version="bench")
    stage = defaultdict(float)
    n = 0
    t0 = time.perf_counter()
    t_wait = time.perf_counter()
    for batch_ in BatchFeed(iter_batches(inputs, ensemble.package.preprocessing, batch, workers, decode), pipeline.status):
        stage["waiting for readers"] += time.perf_counter() - t_wait
        t = time.perf_counter()
        results = pipeline.classify(batch_)
        sync(ensemble.device)
        stage["ensemble + stacker"] += time.perf_counter() - t
        t = time.perf_counter()
        pipeline.record(batch_, pipeline.write_dicom(batch_, results))
        stage["writers"] += time.perf_counter() - t
        n += len(batch_.radiographs)
        t_wait = time.perf_counter()
    t = time.perf_counter()
    pipeline.close()
    stage["writers"] += time.perf_counter() - t
    total = time.perf_counter() - t0
    if pipeline.status.incomplete_reason:
        raise RuntimeError(f"benchmark run incomplete: {pipeline.status.incomplete_reason}")
    return {"images": n, "seconds": total, "images_per_s": n / total, "stage_seconds": dict(stage)}


def bench_readers(inputs: Path, preprocessing, workers: int, decode: DecodeOptions, single_s_per_image: float) -> dict:
    """The reader pool alone (no networks, no writers): how far from ``workers`` times the
    single-process rate it gets tells whether feeding or the readers themselves limit end to end."""
    t0, t_first, n = time.perf_counter(), None, 0
    for _, tensor in iter_prepared(inputs, preprocessing, workers, decode):
        if tensor is not None:
            n += 1
            t_first = t_first or time.perf_counter()
    end = time.perf_counter()
    rate, steady = n / (end - t0), (n - 1) / max(end - (t_first or end), 1e-9)
    ideal = max(1, workers) / single_s_per_image
    return {"images": n, "images_per_s": rate, "start_s": (t_first or end) - t0, "steady_images_per_s": steady,
            "ideal_images_per_s": ideal, "parallel_efficiency": steady / ideal}


def _mean_s_per_file(decode_stage: dict) -> float:
    files = sum(d["files"] for d in decode_stage.values())
    return sum(d["s_per_image"] * d["files"] for d in decode_stage.values()) / max(files, 1)


def bench_stages(ensemble: Ensemble, corpus: Path, out: Path, dicom_outputs: bool = True) -> dict:
    """The stages after reading, one process, on the corpus' images: preprocessing (square +
    normalise), members (one batch of all), stacker, and each writer, in ms per image (SRs per study)."""
    pre, cat = ensemble.package.preprocessing, Catalogue.default()
    model = ensemble.info
    reads = [r for p in iter_input_files(corpus) for r in read_file(p, corpus, max_side=pre.max_side).radiographs]
    n = len(reads)
    t = time.perf_counter()
    x = pre.normalise(torch.stack([pre.square(r.image) for r in reads]))
    ms = {"preprocess": (time.perf_counter() - t) * 1000 / n}
    predictions = ensemble.predict(x)  # also the warm-up
    t = time.perf_counter()
    members = ensemble.member_probabilities(x)
    ms["members"] = (time.perf_counter() - t) * 1000 / n
    t = time.perf_counter()
    ensemble.stacker.predict(members)
    ms["stacker"] = (time.perf_counter() - t) * 1000 / n
    outcomes = [classified_outcome(r, p, model, cat) for r, p in zip(reads, predictions)]
    pipeline = Pipeline(ensemble, out, corpus, dicom_outputs=dicom_outputs, app_version="bench")
    t = time.perf_counter()
    pipeline.results.add(outcomes)
    pipeline.close_results()
    ms["results.json"] = (time.perf_counter() - t) * 1000 / n
    if dicom_outputs:
        t = time.perf_counter()
        pipeline.dicom.add(reads, outcomes)
        ms["corrected copies"] = (time.perf_counter() - t) * 1000 / n
        studies = len(pipeline.dicom.studies)
        t = time.perf_counter()
        pipeline.dicom.close()
        ms["SR pair, per study"] = (time.perf_counter() - t) * 1000 / max(studies, 1)
    return {"images": n, "ms_per_image": ms}


def bench_study_latency(ensemble: Ensemble, corpus: Path, tmp: Path, batch: int, dicom_outputs: bool = True,
                        decode: DecodeOptions = DecodeOptions()) -> dict:
    """Per study (files grouped by Study Instance UID): warm process, study in -> results written."""
    import pydicom

    studies = defaultdict(list)
    for f in iter_input_files(corpus):
        if f.suffix == ".dcm":
            studies[str(pydicom.dcmread(f, stop_before_pixels=True, force=True).get("StudyInstanceUID", f.name))].append(f)
    lat = []
    for i, files in enumerate(studies.values()):
        d = tmp / f"study{i}"
        d.mkdir(parents=True)
        for f in files:
            os.symlink(f, d / f.name)
        r = bench_pipeline(ensemble, d, tmp / f"study{i}_out", batch, workers=0, dicom_outputs=dicom_outputs,
                           decode=decode)
        lat.append((r["seconds"], len(files)))
    s = sorted(x for x, _ in lat)
    return {"studies": len(s), "files_per_study": [k for _, k in lat], "p50_s": float(np.percentile(s, 50)), "p95_s": float(np.percentile(s, 95))}


def bench_cold_start(models: Path, corpus: Path, tmp: Path, device: str) -> dict:
    """Process start to first result: the MONAI Deploy app when Holoscan is installed, else the same
    pipeline in a fresh Python process (said in ``how``)."""
    d = tmp / "cold"
    d.mkdir()
    os.symlink(corpus / "dx_pelvis_ddh_1.dcm", d / "one.dcm")
    env = {**os.environ, "BODYPART_DEVICE": device, "BODYPART_WORKERS": "0", "BODYPART_FOLLOW_LINKS": "1"}
    try:
        import holoscan  # noqa: F401

        cmd, how = [sys.executable, "-m", "app", "-i", str(d), "-o", str(tmp / "cold_out"), "-m", str(models)], "python -m app"
    except ImportError:
        cmd = [sys.executable, str(Path(__file__)), "--first-result", str(d), "--models", str(models), "--device", device]
        how = "in-process pipeline (no Holoscan here)"
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return {"seconds_to_first_result": time.perf_counter() - t, "returncode": proc.returncode, "how": how}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / "app/models/default")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/dicom")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=10, help="copies of the corpus for the end-to-end run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--sizes", default="224,512", help="input sizes for the members-only ceiling")
    ap.add_argument("--study-members", action="store_true", help="also time densenet121, resnet101, inception_v4")
    ap.add_argument("--compile", action="store_true", help="torch.compile the package members")
    ap.add_argument("--no-dicom-outputs", action="store_true", help="leave out corrected copies and SRs (no highdicom)")
    ap.add_argument("--gpu-decode", choices=["auto", "on", "off"], default="auto",
                    help="nvImageCodec decoding on the GPU (auto: when on CUDA and installed)")
    ap.add_argument("--no-reduced-decode", action="store_true", help="JPEG 2000 always at full resolution")
    ap.add_argument("--first-result", type=Path, help=argparse.SUPPRESS)  # cold-start child process
    ap.add_argument("--out", type=Path, default=Path("bench.json"))
    args = ap.parse_args()
    args.corpus = args.corpus.resolve()  # inputs are symlinked from a temporary folder
    if args.first_result:
        ens = Ensemble(load_package(args.models), device=args.device)
        with tempfile.TemporaryDirectory() as t:
            bench_pipeline(ens, args.first_result, Path(t), 1, 0, dicom_outputs=False)
        return

    torch.backends.cudnn.benchmark = True
    package = load_package(args.models)
    ensemble = Ensemble(package, device=args.device, compile=args.compile)
    gpu = GpuDecoder.create(args.gpu_decode if ensemble.device.type == "cuda" else "off")
    # inputs are links into the corpus: follow them
    decode = DecodeOptions(gpu="on" if gpu else "off", reduced_resolution=not args.no_reduced_decode, follow_links=True)
    report = {"machine": machine(), "device": str(ensemble.device), "model": f"{package.name} {package.version}",
              "members": [m.arch for m in package.members], "tta": ensemble.tta, "batch": args.batch, "workers": args.workers,
              "compile": args.compile, "gpu_decode": gpu is not None, "reduced_decode": decode.reduced_resolution}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        report["cold_start"] = bench_cold_start(args.models, args.corpus, tmp, args.device)
        report["decode"] = bench_decode(args.corpus, reduced_resolution=False)
        report["decode_reduced"] = bench_decode(args.corpus, reduced_resolution=True)
        twins = make_jpeg_twins(args.corpus, tmp / "jpeg_twins")
        report["decode_jpeg_twins"] = {"full": bench_decode(twins, reduced_resolution=False),
                                       "reduced": bench_decode(twins, reduced_resolution=True)}
        if gpu is not None:
            report["decode_gpu"] = bench_decode(args.corpus, gpu, decode.reduced_resolution)
        sizes = [int(s) for s in args.sizes.split(",")]
        extra = ["densenet121", "resnet101", "inception_v4"] if args.study_members else []
        report["ceiling"] = bench_members(ensemble, sizes, args.batch, extra)
        report["stages"] = bench_stages(ensemble, args.corpus, tmp / "stages_out", not args.no_dicom_outputs)
        n = link_inputs(args.corpus, args.repeat, tmp / "inputs")
        report["end_to_end"] = bench_pipeline(ensemble, tmp / "inputs", tmp / "e2e_out", args.batch, args.workers,
                                              dicom_outputs=not args.no_dicom_outputs, decode=decode)
        report["end_to_end"]["inputs"] = n
        single = _mean_s_per_file(report.get("decode_gpu") or report["decode_reduced" if decode.reduced_resolution else "decode"])
        report["readers_only"] = bench_readers(tmp / "inputs", package.preprocessing, args.workers, decode, single)
        report["study_latency"] = bench_study_latency(ensemble, args.corpus, tmp / "lat", args.batch, not args.no_dicom_outputs,
                                                      decode=decode)
    size = package.preprocessing.size
    ceiling = report["ceiling"].get(size, report["ceiling"][sizes[0]])["ensemble (package members)"]
    report["end_to_end_fraction_of_ceiling"] = report["end_to_end"]["images_per_s"] / ceiling
    report["peak_rss_mb"] = {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if ensemble.device.type == "cuda":
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report, size))


def table(r: dict, size: int) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if "gpu" in m else "") + f"; device {r['device']}; model {r['model']}",
             f"{'stage':<46}{'value':>14}"]
    add = lambda k, v: lines.append(f"{k:<46}{v:>14}")  # noqa: E731
    for ts, d in r["decode"].items():
        add(f"read+decode {ts[:30]} ({d['megapixels']:.1f} MP)", f"{d['s_per_image']*1000:.0f} ms/img")
    for ts, d in r.get("decode_reduced", {}).items():
        if any("resolution" in x for x in d["decoders"]):
            add(f"  reduced resolution: {ts[:30]}", f"{d['s_per_image']*1000:.0f} ms/img")
    twins = r.get("decode_jpeg_twins")
    if twins:
        for (ts, full), red in zip(twins["full"].items(), twins["reduced"].values()):
            add(f"  8-bit JPEG twins of large images ({full['files']})", f"{full['s_per_image']*1000:.0f} -> {red['s_per_image']*1000:.0f} ms")
    for ts, d in r.get("decode_gpu", {}).items():
        if any("GPU" in x for x in d["decoders"]):
            add(f"  on the GPU: {ts[:30]}", f"{d['s_per_image']*1000:.0f} ms/img")
    for s, row in r["ceiling"].items():
        for name, rate in row.items():
            views = ", image + 2 flips" if r.get("tta") and name.startswith("ensemble") else ""
            add(f"members only @{s}px: {name}{views}", f"{rate:.1f} img/s")
    if "stages" in r:
        lines.append(f"after reading, one process ({r['stages']['images']} corpus images):")
        for k, v in r["stages"]["ms_per_image"].items():
            add(f"  {k}" + ("" if "per study" in k else ", per image"), f"{v:.2f} ms" if v < 1 else f"{v:.1f} ms")
    e = r["end_to_end"]
    how = ", GPU decoding" if r.get("gpu_decode") else ""
    how += ", reduced-resolution JPEG 2000" if r.get("reduced_decode") else ""
    add(f"end to end ({e['inputs']} files, {r['workers']} readers{how})",
        f"{e['images_per_s']:.1f} img/s")
    for k, v in e["stage_seconds"].items():
        add(f"  {k}", f"{v:.1f} s")
    add(f"end to end / ceiling @{size}px", f"{r['end_to_end_fraction_of_ceiling']:.1%}")
    if "readers_only" in r:
        ro = r["readers_only"]
        add(f"readers alone ({r['workers']} processes; {ro['start_s']:.1f} s to start)", f"{ro['images_per_s']:.1f} img/s")
        add("  after the first image / x single-process rate", f"{ro['steady_images_per_s']:.1f} / {ro['parallel_efficiency']:.0%}")
    add("per-study latency p50 / p95", f"{r['study_latency']['p50_s']:.2f}/{r['study_latency']['p95_s']:.2f} s")
    add("cold start (process to first result)", f"{r['cold_start']['seconds_to_first_result']:.1f} s")
    add("peak RSS main / readers", f"{r['peak_rss_mb']['self']:.0f}/{r['peak_rss_mb']['children']:.0f} MB")
    if "peak_gpu_mb" in r:
        add("peak GPU memory", f"{r['peak_gpu_mb']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
