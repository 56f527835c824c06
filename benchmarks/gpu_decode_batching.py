"""How much batching nvImageCodec decode calls buys on one GPU (GPU machines only).

The app's readers each decode one file per call in their own CUDA context, and end to end on the
H200 came out at about one image per single-image decode time. This decodes the corpus' GPU-ready
code streams in one process and one context, one per call and then many per call, and reports
images/s and megapixels/s per batch size: whether feeding the decoder batches from one process
can lift end to end towards the members-only ceiling, and how far.

    python benchmarks/gpu_decode_batching.py --corpus ../shared/data/dicom --copies 20 --out gpu_batching.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.input.decoding import code_streams  # noqa: E402
from operators.input.gpu_decoding import GPU_TRANSFER_SYNTAXES, gpu_suitable, unavailable_reason  # noqa: E402
from operators.input.dicom_header import read_dataset  # noqa: E402
from operators.input.discovery import iter_input_files  # noqa: E402


def gpu_ready_streams(corpus: Path) -> list[tuple[str, bytes, float]]:
    """(family, code stream, megapixels) of every frame the GPU path would decode; colour ones
    form families of their own (decoded with other parameters)."""
    out = []
    for path in iter_input_files(corpus):
        try:
            ds, _ = read_dataset(path)
        except Exception:  # noqa: BLE001 - not DICOM: not a GPU input either
            continue
        if "PixelData" not in ds or gpu_suitable(ds) is not None:
            continue
        family = GPU_TRANSFER_SYNTAXES[str(ds.file_meta.TransferSyntaxUID)]
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            family += " (colour)"
        mp = int(ds.Rows) * int(ds.Columns) / 1e6
        for frame in code_streams(ds):
            out.append((family, frame, mp))
    return out


def decode_rate(decoder, params, streams: list[bytes], batch: int) -> float:
    """Images/s decoding ``streams`` ``batch`` per call, to completion on the GPU."""
    import torch

    t = time.perf_counter()
    for i in range(0, len(streams), batch):
        images = decoder.decode(streams[i:i + batch], params=params)
        if any(im is None for im in images):
            raise RuntimeError("nvImageCodec refused a code stream")
        for im in images:
            torch.from_dlpack(im)  # the app's hand-over to torch
    torch.cuda.synchronize()
    return len(streams) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/dicom")
    ap.add_argument("--copies", type=int, default=20, help="times each code stream is decoded per measurement")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--out", type=Path, default=Path("gpu_batching.json"))
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"GPU decoding cannot run here: {reason}")
    import torch
    from nvidia import nvimgcodec

    found = gpu_ready_streams(args.corpus)
    if not found:
        sys.exit(f"no GPU-decodable grey images in {args.corpus}")
    decoder = nvimgcodec.Decoder()
    grey = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED)
    colour = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.SRGB)
    groups = defaultdict(list)
    for family, stream, mp in found:
        groups[family].append((stream, mp))
    batches = [int(b) for b in args.batches.split(",")]
    report = {"gpu": torch.cuda.get_device_name(0), "nvimgcodec": getattr(nvimgcodec, "__version__", "?"),
              "copies": args.copies, "families": {}}
    print(f"{'code streams':<28}{'files':>6}{'MP':>6}" + "".join(f"{f'batch {b}':>12}" for b in batches) + "  (img/s)")
    seconds = defaultdict(float)  # per batch size, for the whole mix
    for family, items in sorted(groups.items()):
        params = colour if "colour" in family else grey
        streams = [s for s, _ in items] * args.copies
        decode_rate(decoder, params, streams[: max(batches)], max(batches))  # warm-up: codec, memory pools
        mp = sum(m for _, m in items) / len(items)
        rates = {b: decode_rate(decoder, params, streams, b) for b in batches}
        for b, r in rates.items():
            seconds[b] += len(streams) / r
        report["families"][family] = {"streams": len(items), "megapixels": mp, "images_per_s": rates,
                                      "megapixels_per_s": {b: r * mp for b, r in rates.items()}}
        print(f"{family:<28}{len(items):>6}{mp:>6.1f}" + "".join(f"{rates[b]:>12.1f}" for b in batches))
    total = len(found) * args.copies
    report["all"] = {b: total / seconds[b] for b in batches}
    print(f"{'all of them':<40}" + "".join(f"{report['all'][b]:>12.1f}" for b in batches))
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
