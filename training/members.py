"""Train one ensemble member the study's way: class-balanced BCE, Adam (wd 0.01), cyclic LR,
early stopping on validation sensitivity, resumable checkpoints, MONAI augmentation."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from operators.model.ensemble import DEFAULT_PRECISION, inference_autocast, pick_device
from operators.model.networks import create_network
from operators.input.preprocessing import Preprocessing

from .augment import online_transform
from .config import MemberConfig, TrainConfig

log = logging.getLogger("bodypart.training")


class TensorImages(Dataset):
    """Cached squared images (uint8, (N, 1, S, S)) with online augmentation, normalised on the fly.

    Items are ``(x, y, mask)``: ``mask`` is 0 for the classes whose loss a film leaves out (the
    neighbours of a part that its source names alone), 1 elsewhere.
    """

    def __init__(self, images: torch.Tensor, y: np.ndarray, preprocessing: Preprocessing, augment: bool, config: TrainConfig,
                 seed: int = 0, mask: np.ndarray | None = None):
        self.images, self.y, self.pre, self.augment = images, torch.as_tensor(y), preprocessing, augment
        self.mask = torch.ones_like(self.y) if mask is None else torch.as_tensor(mask, dtype=self.y.dtype)
        self.config = config
        self.transform = online_transform(config.augment, seed) if augment else None

    def reseed(self, seed: int) -> None:
        """A new random stream for the augmentation (each data-loader worker gets its own)."""
        if self.transform is not None:
            self.transform = online_transform(self.config.augment, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i].float() / 255.0
        if self.transform is not None:
            x = self.transform(x)
        return self.pre.normalise(x), self.y[i], self.mask[i]


def copy_factors(y: np.ndarray, max_factor: int, sources: Sequence[str] | None = None) -> np.ndarray:
    """How many times each image appears after offline augmentation (1: no copies).

    A class with fewer images than the majority class is multiplied by its ratio to it; with
    ``sources``, a source's films of a class are also multiplied by their ratio to the class's
    largest source, so that one source's style does not define the class (4 MedPix lumbar images
    beside 103 AP scoliosis films). An image takes its largest factor over its labels, at most
    ``max_factor``.
    """
    counts = y.sum(0)
    present = counts > 0
    factor = np.ones(len(y), int)
    if not present.any() or max_factor <= 1:
        return factor
    per_class = np.ones_like(counts)
    per_class[present] = np.round(counts[present].max() / counts[present])
    src = np.asarray(sources if sources is not None else [""] * len(y))
    for k in np.flatnonzero(present):
        pos = y[:, k] > 0
        names, n = np.unique(src[pos], return_counts=True)
        within = dict(zip(names, np.round(n.max() / n)))
        f = np.array([per_class[k] * within[s] for s in src[pos]])
        factor[pos] = np.maximum(factor[pos], np.clip(f, 1, max_factor).astype(int))
    return factor


def offline_augment(images: torch.Tensor, y: np.ndarray, max_factor: int, seed: int,
                    mask: np.ndarray | None = None, sources: Sequence[str] | None = None
                    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Add flipped/rotated (0-360 degrees) copies of minority-class images (and, with ``sources``,
    of a class's minority sources), each up to ``max_factor`` times (:func:`copy_factors`;
    training split only). Copies keep their image's loss mask; returns images, targets and masks."""
    from monai.transforms import Compose, RandFlip, RandRotate

    mask = np.ones_like(y) if mask is None else mask
    factor = copy_factors(y, max_factor, sources)
    if (factor <= 1).all():
        return images, y, mask
    t = Compose([RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1),
                 RandRotate(range_x=math.pi, prob=1.0, padding_mode="zeros")])
    t.set_random_state(seed)
    extra_x, extra_y, extra_m = [], [], []
    for i in range(len(y)):
        for _ in range(int(factor[i]) - 1):
            aug = torch.as_tensor(t(images[i].float() / 255.0)).clamp(0, 1)
            extra_x.append((aug * 255).round().to(torch.uint8))
            extra_y.append(y[i])
            extra_m.append(mask[i])
    if not extra_x:
        return images, y, mask
    log.info("offline augmentation: %d images -> %d (factors up to %d)", len(y), len(y) + len(extra_x), int(factor.max()))
    return (torch.cat([images, torch.stack(extra_x)]), np.concatenate([y, np.stack(extra_y)]),
            np.concatenate([mask, np.stack(extra_m)]))


def class_balanced_pos_weight(y: np.ndarray, mask: np.ndarray | None = None, power: float = 1.0) -> torch.Tensor:
    """(neg/pos) ** ``power`` per class over the targets that count (``mask``), clipped to [1, 100];
    classes with no positives get 1. ``power`` 1 is the study's balance; below 1 it is softened,
    for data that offline copies have balanced already (both together inflate a rare class's
    probability on every film)."""
    mask = np.ones_like(y) if mask is None else mask
    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0) ** power
    return torch.as_tensor(np.clip(w, 1.0, 100.0), dtype=torch.float32)


def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy (class-balanced by ``pos_weight``) averaged over the targets that
    count: a 0 in ``mask`` takes that (image, class) out of the loss and its gradient."""
    per_target = nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
    return (per_target * mask).sum() / mask.sum().clamp(min=1)


def macro_sensitivity(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5, mask: np.ndarray | None = None) -> float:
    """Mean sensitivity at ``threshold`` over the classes with positives (the study's selection)."""
    del mask  # positives are never masked: sensitivity needs none
    pos = y.sum(0) > 0
    if not pos.any():
        return 0.0
    tp = ((probs >= threshold) & (y > 0)).sum(0)
    return float((tp[pos] / y.sum(0)[pos]).mean())


def macro_f1(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5, mask: np.ndarray | None = None) -> float:
    """Macro F1 at ``threshold`` (:func:`training.metrics.multilabel_metrics`: classes with
    positives; targets with ``mask`` 0, a neighbour on a one-part-per-film source, count neither
    way). Unlike sensitivity it pays for false positives, which is what fires a shoulder on other
    hospitals' chests."""
    from .metrics import multilabel_metrics

    classes = [str(k) for k in range(y.shape[1])]
    return multilabel_metrics(y > 0, probs >= threshold, classes, targets_mask=mask)["macro_f1"] or 0.0


#: ``selection_metric`` values: how validation picks a member's best epoch.
SELECTION_METRICS = {"sensitivity": macro_sensitivity, "f1": macro_f1}


@torch.inference_mode()
def predict(net: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device, batch_size: int = 64, tta: bool = False, amp: bool = True) -> np.ndarray:
    """Sigmoid probabilities (N, C) for cached squared images; ``tta`` averages flips.

    On CUDA this runs fp16 autocast, the inference precision of the app (see operators.model.ensemble),
    so that validation choices are made on the numbers users will get.
    """
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = pre.normalise(images[start : start + batch_size].float() / 255.0).to(device)
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
    train: tuple[torch.Tensor, np.ndarray, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray] | tuple[torch.Tensor, np.ndarray, np.ndarray],
    workdir: Path,
    resume: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``member`` on ``train`` (images, targets, loss masks); return the best network (by
    ``config.selection_metric`` on ``val``: images, targets and optionally loss masks) and its
    history."""
    from tqdm.auto import tqdm

    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    n_classes = train[1].shape[1]
    net = create_network(member.arch, n_classes, pre.channels, pretrained=member.pretrained).to(device)
    frozen = freeze_stages(net, config.freeze_stages)
    if frozen:
        log.info("%s: stem and first %d stages frozen (%d tensors)", member.key, config.freeze_stages, frozen)
    # channels-last: the fast layout for these convolutions on CUDA and on CPU (oneDNN) alike
    net = net.to(memory_format=torch.channels_last)
    ds = TensorImages(train[0], train[1], pre, augment=True, config=config, seed=config.seed, mask=train[2])
    g = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=g, num_workers=config.num_workers,
                        drop_last=len(ds) > config.batch_size, pin_memory=device.type == "cuda",
                        persistent_workers=config.num_workers > 0, worker_init_fn=_reseed_worker)
    steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    pos_weight = (class_balanced_pos_weight(train[1], train[2], config.pos_weight_power).to(device)
                  if config.class_balanced_loss else None)
    select = SELECTION_METRICS[config.selection_metric]
    val_mask = val[2] if len(val) > 2 else None
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr_min, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=config.lr_min, max_lr=config.lr_max,
                                              step_size_up=max(1, 2 * steps), cycle_momentum=False)
    ckpt_path = workdir / f"checkpoint_{member.key}.pt"
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": 0, "best_state": None, "history": [],
             "selection_metric": config.selection_metric}
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        log.info("%s: resumed from %s at epoch %d", member.key, ckpt_path, state["epoch"])
        chosen_by = _selection_metric_of(state)
        if chosen_by != config.selection_metric:
            # a best score in another metric would never be beaten (or always): start the choice afresh
            log.info("%s: best epoch so far was chosen by %s; choosing by %s from here", member.key,
                     chosen_by, config.selection_metric)
            state.update(best_score=-1.0, best_epoch=state["epoch"], best_state=None)
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
        for step, (x, y, m) in enumerate(loader):
            if step >= steps:
                break
            x, y, m = x.to(device, non_blocking=True), y.to(device, non_blocking=True), m.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and config.amp) else nullcontext():
                logits = net(x)
            loss = masked_bce(logits.float(), y, m, pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
            seen += len(x)
            bar.update(1)
        bar.close()
        val_probs = predict(net, val[0], pre, device, tta=False, amp=config.amp)
        score = select(val_probs, val[1], mask=val_mask)
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), f"val_{config.selection_metric}": score,
                  "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 1)}
        state["history"].append(record)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        state["epoch"], state["selection_metric"] = epoch, config.selection_metric
        log.info("%s epoch %d: loss %.4f, val %s %.3f%s (%.0fs)", member.key, epoch, record["train_loss"],
                 config.selection_metric, score, " *" if improved else "", record["seconds"])
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}, ckpt_path)
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    return net.eval(), {"best_epoch": state["best_epoch"], "selection_metric": config.selection_metric,
                        f"best_val_{config.selection_metric}": state["best_score"],
                        "stopped_by_time_budget": stopped_by_time_budget, "history": state["history"]}


def _selection_metric_of(state: dict[str, Any]) -> str:
    """The metric a checkpoint's best epoch was chosen by: recorded, else read off its history's
    ``val_<metric>`` keys (checkpoints from before it was recorded), else the study's sensitivity."""
    if "selection_metric" in state:
        return state["selection_metric"]
    keys = {k.removeprefix("val_") for r in state["history"] for k in r if k.startswith("val_")}
    return keys.pop() if len(keys) == 1 else "sensitivity"


def _reseed_worker(worker_id: int) -> None:
    """Data-loader workers start as copies of one dataset: without this they would all draw the
    same augmentations."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**31)


def freeze_stages(net: nn.Module, stages: int) -> int:
    """Keep the stem and the first ``stages`` block stages at their initial weights (no gradient);
    returns how many parameter tensors were frozen. For timm EfficientNet-style networks
    (``conv_stem``, ``bn1``, ``blocks``); other architectures with ``stages > 0`` are refused."""
    if stages <= 0:
        return 0
    blocks = getattr(net, "blocks", None)
    if blocks is None or not hasattr(net, "conv_stem"):
        raise ValueError(f"freeze_stages needs an EfficientNet-style network (conv_stem, blocks); {type(net).__name__} has not")
    if stages >= len(blocks):
        raise ValueError(f"freeze_stages={stages} would freeze every one of the {len(blocks)} stages")
    n = 0
    for part in (net.conv_stem, getattr(net, "bn1", None), *list(blocks)[:stages]):
        for p in part.parameters() if part is not None else ():
            p.requires_grad_(False)
            n += 1
    return n


def _next_epoch_overruns(history: list[dict[str, Any]], started: float, budget_s: float) -> bool:
    """Whether one more epoch, as long as the slowest of this run so far, would end past the budget."""
    return time.perf_counter() - started + max(r["seconds"] for r in history) > budget_s
