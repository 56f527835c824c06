"""Train one ensemble member the study's way: class-balanced BCE, Adam (wd 0.01), cyclic LR,
early stopping on validation sensitivity, resumable checkpoints, MONAI augmentation."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from operators.ensemble import DEFAULT_PRECISION, inference_autocast, pick_device
from operators.networks import create_network
from operators.preprocessing import Preprocessing

from .config import MemberConfig, TrainConfig

log = logging.getLogger("bodypart.training")


class TensorImages(Dataset):
    """Cached squared images (uint8, (N, 1, S, S)) with online MONAI augmentation, normalised on the fly."""

    def __init__(self, images: torch.Tensor, y: np.ndarray, preprocessing: Preprocessing, augment: bool, config: TrainConfig, seed: int = 0):
        self.images, self.y, self.pre, self.augment = images, torch.as_tensor(y), preprocessing, augment
        self.transform = online_transform(config, seed) if augment else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i].float() / 255.0
        if self.transform is not None:
            x = torch.as_tensor(self.transform(x)).float()
        return self.pre.normalise(x), self.y[i]


def online_transform(config: TrainConfig, seed: int):
    from monai.transforms import Compose, RandFlip, RandRotate

    t = Compose([
        RandFlip(prob=config.flip_prob, spatial_axis=0),
        RandFlip(prob=config.flip_prob, spatial_axis=1),
        RandRotate(range_x=math.radians(config.rotate_range_deg), prob=1.0 if config.rotate_range_deg else 0.0, padding_mode="zeros"),
    ])
    t.set_random_state(seed)
    return t


def offline_augment(images: torch.Tensor, y: np.ndarray, max_factor: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Add flipped/rotated (0-360 degrees) copies of minority-class images, each class up to
    ``max_factor`` times its count, by its ratio to the majority class (training split only)."""
    from monai.transforms import Compose, RandFlip, RandRotate

    counts = y.sum(0)
    present = counts > 0
    if not present.any() or max_factor <= 1:
        return images, y
    majority = counts[present].max()
    factor = np.ones_like(counts)
    factor[present] = np.clip(np.round(majority / counts[present]), 1, max_factor)
    t = Compose([RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1),
                 RandRotate(range_x=math.pi, prob=1.0, padding_mode="zeros")])
    t.set_random_state(seed)
    extra_x, extra_y = [], []
    for i in range(len(y)):
        labels = y[i] > 0
        copies = int(factor[labels].max()) - 1 if labels.any() else 0
        for _ in range(copies):
            aug = torch.as_tensor(t(images[i].float() / 255.0)).clamp(0, 1)
            extra_x.append((aug * 255).round().to(torch.uint8))
            extra_y.append(y[i])
    if not extra_x:
        return images, y
    log.info("offline augmentation: %d images -> %d (factors up to %d)", len(y), len(y) + len(extra_x), int(factor.max()))
    return torch.cat([images, torch.stack(extra_x)]), np.concatenate([y, np.stack(extra_y)])


def class_balanced_pos_weight(y: np.ndarray) -> torch.Tensor:
    """neg/pos per class, clipped to [1, 100]; classes with no positives get 1."""
    pos = y.sum(0)
    neg = len(y) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(w, 1.0, 100.0), dtype=torch.float32)


def macro_sensitivity(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    pos = y.sum(0) > 0
    if not pos.any():
        return 0.0
    tp = ((probs >= threshold) & (y > 0)).sum(0)
    return float((tp[pos] / y.sum(0)[pos]).mean())


@torch.inference_mode()
def predict(net: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device, batch_size: int = 64, tta: bool = False, amp: bool = True) -> np.ndarray:
    """Sigmoid probabilities (N, C) for cached squared images; ``tta`` averages flips.

    On CUDA this runs fp16 autocast, the inference precision of the app (see operators.ensemble),
    so that validation choices are made on the numbers users will get.
    """
    net.eval()
    cuda = device.type == "cuda"
    out = []
    for start in range(0, len(images), batch_size):
        x = pre.normalise(images[start : start + batch_size].float() / 255.0).to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1), x.flip(-2)] if tta else [x]
        with inference_autocast(device, DEFAULT_PRECISION if amp else "float32"):
            p = torch.stack([torch.sigmoid(net(v).float()) for v in views]).mean(0)
        out.append(p.cpu())
    if not out:  # an empty split: keep the class axis so that stacking and metrics still line up
        n = next(m for m in reversed(list(net.modules())) if isinstance(m, nn.Linear)).out_features
        return np.zeros((0, n))
    return torch.cat(out).numpy().astype(np.float64)


def train_member(
    member: MemberConfig,
    config: TrainConfig,
    pre: Preprocessing,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    workdir: Path,
    resume: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``member``; return the best network (by validation macro sensitivity) and its history."""
    from tqdm.auto import tqdm

    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    n_classes = train[1].shape[1]
    net = create_network(member.arch, n_classes, pre.channels, pretrained=member.pretrained).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    ds = TensorImages(train[0], train[1], pre, augment=True, config=config, seed=config.seed)
    g = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=g, num_workers=config.num_workers,
                        drop_last=len(ds) > config.batch_size, pin_memory=device.type == "cuda",
                        persistent_workers=config.num_workers > 0)
    steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    pos_weight = class_balanced_pos_weight(train[1]).to(device) if config.class_balanced_loss else None
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr_min, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=config.lr_min, max_lr=config.lr_max,
                                              step_size_up=max(1, 2 * steps), cycle_momentum=False)
    ckpt_path = workdir / f"checkpoint_{member.key}.pt"
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "best_state": None, "history": []}
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        log.info("%s: resumed from %s at epoch %d", member.key, ckpt_path, state["epoch"])
    cuda = device.type == "cuda"
    started, stopped_by_time_budget = time.perf_counter(), False
    budget_s = None if config.max_minutes_per_member is None else 60.0 * config.max_minutes_per_member
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if epoch - state["best_epoch"] > config.patience and state["best_state"] is not None:
            log.info("%s: early stop at epoch %d (best %d)", member.key, epoch - 1, state["best_epoch"])
            break
        if budget_s is not None and state["history"] and _next_epoch_overruns(state["history"], started, budget_s):
            log.info("%s: time budget of %.1f min reached after epoch %d (best %d)", member.key,
                     config.max_minutes_per_member, epoch - 1, state["best_epoch"])
            stopped_by_time_budget = True
            break
        net.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(total=steps, desc=f"{member.key} epoch {epoch}/{config.epochs}", leave=False, disable=None)
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and config.amp) else nullcontext():
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
            seen += len(x)
            bar.update(1)
        bar.close()
        val_probs = predict(net, val[0], pre, device, tta=False, amp=config.amp)
        score = macro_sensitivity(val_probs, val[1])
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), "val_sensitivity": score,
                  "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 1)}
        state["history"].append(record)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        state["epoch"] = epoch
        log.info("%s epoch %d: loss %.4f, val sensitivity %.3f%s (%.0fs)", member.key, epoch, record["train_loss"], score,
                 " *" if improved else "", record["seconds"])
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}, ckpt_path)
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    return net.eval(), {"best_epoch": state["best_epoch"], "best_val_sensitivity": state["best_score"],
                        "stopped_by_time_budget": stopped_by_time_budget, "history": state["history"]}


def _next_epoch_overruns(history: list[dict[str, Any]], started: float, budget_s: float) -> bool:
    """Whether one more epoch, as long as the slowest of this run so far, would end past the budget."""
    return time.perf_counter() - started + max(r["seconds"] for r in history) > budget_s
