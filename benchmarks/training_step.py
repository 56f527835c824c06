"""Training step time on this machine: the CPU settings of ``freeze_stages`` and channels-last
side by side, in interleaved rounds, reported as ratios to the plain step.

    python benchmarks/training_step.py [--arch efficientnet_lite0] [--size 224] [--rounds 3]

One step = forward, backward and Adam update of a batch of 32 (random inputs: the time does not
depend on the pixels). Not a test; numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.model.networks import create_network  # noqa: E402
from training.members import freeze_stages  # noqa: E402

VARIANTS = {"plain": (0, False), "channels-last": (0, True), "freeze 3": (3, False), "freeze 3 + channels-last": (3, True)}


def step_seconds(arch: str, size: int, frozen: int, channels_last: bool, steps: int) -> float:
    net = create_network(arch, 25, 3, pretrained="imagenet")
    freeze_stages(net, frozen)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-4)
    x, y = torch.randn(32, 3, size, size), torch.zeros(32, 25)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    runs = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
        for name, (frozen, cl) in VARIANTS.items():
            runs[name].append(step_seconds(args.arch, args.size, frozen, cl, args.steps))
    base = statistics.median(runs["plain"])
    print(f"{args.arch} at {args.size} px, batch 32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| variant | median s/step | speed-up vs plain |")
    print("|---|---|---|")
    for name, t in runs.items():
        m = statistics.median(t)
        print(f"| {name} | {m:.2f} | {base / m:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
