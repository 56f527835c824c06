"""One command: labelled data -> split -> members -> stackers -> thresholds -> evaluation -> package."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from operators.catalogue import Catalogue
from operators.model_package import Decision, Member, StackerCalibration, write_package
from operators.preprocessing import Preprocessing
from operators.stacking import LogisticStacker, MeanStacker, XGBoostStacker, apply_temperatures, fit_temperatures

from .config import TrainConfig
from .data import Sample, load_grey, load_samples, targets
from .members import offline_augment, predict, train_member
from .metrics import multilabel_metrics, tune_thresholds

log = logging.getLogger("bodypart.training")


@dataclass
class Split:
    train: list[int]
    val: list[int]
    test: list[int]


def duplicate_groups(images: torch.Tensor, tolerance: float = 6.0) -> np.ndarray:
    """Group ids that put copies of one picture together (the same radiograph in several encodings
    or sizes), so that no picture lands in two splits. Compares 8x8 thumbnails (mean abs, 0-255)."""
    thumbs = torch.nn.functional.adaptive_avg_pool2d(images.float(), 8).flatten(1).numpy()
    group = -np.ones(len(thumbs), int)
    for i in range(len(thumbs)):
        if group[i] >= 0:
            continue
        same = (np.abs(thumbs - thumbs[i]).mean(1) <= tolerance) & (group < 0)
        group[same] = i
    return group


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int, sources: Sequence[str] | None = None,
                     holdout: Sequence[str] = (), groups: np.ndarray | None = None) -> Split:
    """Multilabel-stratified train/val/test indices over duplicate groups (a group never spans two
    splits); samples of ``holdout`` sources go to test only."""
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    reps, inverse = np.unique(groups, return_inverse=True)
    first = np.array([np.flatnonzero(inverse == g)[0] for g in range(len(reps))])
    rep_sources = None if sources is None else [sources[i] for i in first]
    part = _split_indices(y[first], fractions, seed, rep_sources, holdout)
    expand = lambda idx: sorted(np.flatnonzero(np.isin(inverse, idx)).tolist())  # noqa: E731
    return Split(expand(part.train), expand(part.val), expand(part.test))


def _split_indices(y: np.ndarray, fractions: Sequence[float], seed: int, groups: Sequence[str] | None, holdout: Sequence[str]) -> Split:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    idx = np.arange(len(y))
    held = np.array([g in set(holdout) for g in groups]) if (groups is not None and holdout) else np.zeros(len(y), bool)
    pool = idx[~held]
    _, val_f, test_f = fractions
    test_n = max(0, int(round(test_f * len(y))) - int(held.sum()))
    if test_n:
        s1 = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_n / len(pool), random_state=seed)
        rest, test = next(s1.split(pool, y[pool]))
        rest, test = pool[rest], pool[test]
    else:
        rest, test = pool, np.array([], int)
    s2 = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_f / (1 - test_f), random_state=seed + 1)
    tr, va = next(s2.split(rest, y[rest]))
    return Split(sorted(rest[tr].tolist()), sorted(rest[va].tolist()), sorted(np.concatenate([test, idx[held]]).astype(int).tolist()))


def cache_images(samples: Sequence[Sample], pre: Preprocessing) -> torch.Tensor:
    """Every sample through the input stage and the shared preprocessing, kept as uint8 squares."""
    from tqdm.auto import tqdm

    out = torch.empty((len(samples), 1, pre.size, pre.size), dtype=torch.uint8)
    for i, s in enumerate(tqdm(samples, desc="reading images", leave=False, disable=None)):
        out[i] = (pre.square(load_grey(s.path, pre.max_side)) * 255).round().to(torch.uint8)
    return out


def run_training(
    config: TrainConfig,
    data: Sequence[Path],
    output: Path,
    layout: str | None = None,
    holdout_sources: Sequence[str] = (),
    resume: bool = True,
) -> Path:
    """Train, evaluate and export; returns the package folder (``output/package``)."""
    from .report import write_report

    catalogue = Catalogue.default()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    samples: list[Sample] = []
    for d in data:
        samples += load_samples(Path(d), layout, catalogue)
    log.info("%d labelled images from %s", len(samples), ", ".join(str(d) for d in data))
    pre = Preprocessing(size=config.image_size, mean=config.mean, std=config.std)
    y = targets(samples, catalogue)
    images = cache_images(samples, pre)
    groups = duplicate_groups(images)
    if (n_dup := len(samples) - len(np.unique(groups))):
        log.info("%d images are copies of others (same picture, other encoding): kept in the same split", n_dup)
    split = stratified_split(y, config.split, config.seed, [s.source for s in samples], holdout_sources, groups)
    _save_split(output / "split.csv", samples, split)
    (output / "config.json").write_text(json.dumps(config.to_json(), indent=2))
    tr, va, te = (np.asarray(v, int) for v in (split.train, split.val, split.test))
    if len(tr) == 0 or len(va) == 0:
        from .data import DataError

        raise DataError(f"{len(samples)} images ({len(set(groups))} distinct) are too few for a train/validation split")
    train_x, train_y = images[tr], y[tr]
    if config.offline_augment:
        train_x, train_y = offline_augment(train_x, train_y, config.offline_max_factor, config.seed)

    trained_mask = y[tr].sum(0) > 0
    trained = [c for k, c in enumerate(catalogue.names) if trained_mask[k]]
    from operators.ensemble import pick_device

    device = pick_device(config.device)
    members, val_probs, test_probs, histories = [], [], [], {}
    for m in config.members:
        net, history = train_member(m, config, pre, (train_x, train_y), (images[va], y[va]), output, resume=resume)
        histories[m.key] = history
        val_probs.append(predict(net, images[va], pre, device, tta=config.tta, amp=config.amp))
        test_probs.append(predict(net, images[te], pre, device, tta=config.tta, amp=config.amp))
        members.append((Member(m.key, m.arch, f"models/{m.key}.pt", {"best_epoch": history["best_epoch"],
                        "best_val_sensitivity": history["best_val_sensitivity"], "pretrained": m.pretrained,
                        "epochs_trained": len(history["history"]), "stopped_by_time_budget": history["stopped_by_time_budget"]}),
                        {k: v.detach().cpu() for k, v in net.state_dict().items()}))
    val_m, test_m = np.stack(val_probs, 1), np.stack(test_probs, 1)  # (N, M, C)

    stackers: dict[str, Any] = {"mean": MeanStacker()}
    if "logistic" in config.stackers:
        stackers["logistic"] = LogisticStacker.fit(val_m, y[va])
    if "xgboost" in config.stackers:
        stackers["xgboost"] = XGBoostStacker.fit(val_m, y[va], seed=config.seed)
    default = config.default_stacker if config.default_stacker in stackers else "mean"
    # every stacker gets its own temperatures and thresholds: one stacker's do not fit another's probabilities
    calibrations = {name: _calibrate(st.predict(val_m), y[va], catalogue.names, config) for name, st in stackers.items()}
    temperatures = (np.asarray([calibrations[default].temperatures[c] for c in catalogue.names])
                    if calibrations[default].temperatures else None)
    thresholds = calibrations[default].thresholds

    evaluations: dict[str, Any] = {}
    test_y = y[te]
    for k, m in enumerate(config.members):
        evaluations[m.key] = multilabel_metrics(test_y, test_m[:, k] >= 0.5, catalogue.names, trained_mask)
    th = np.asarray([thresholds[c] for c in catalogue.names])
    default_test = stackers[default].predict(test_m)
    if temperatures is not None:
        default_test = apply_temperatures(default_test, temperatures)
    for name, st in stackers.items():
        probs = st.predict(test_m)
        evaluations[f"stack:{name}"] = multilabel_metrics(test_y, probs >= 0.5, catalogue.names, trained_mask)
        if name == default:
            label = f"stack:{name}" + ("+calibration" if temperatures is not None else "") + "+thresholds"
            evaluations[label] = multilabel_metrics(test_y, default_test >= th, catalogue.names, trained_mask)
    counts = {c: int(y[:, k].sum()) for k, c in enumerate(catalogue.names)}
    summary = {
        "data": [str(d) for d in data],
        "images": len(samples),
        "split_sizes": {"train": len(tr), "val": len(va), "test": len(te), "train_after_offline_augmentation": len(train_x)},
        "holdout_sources": list(holdout_sources),
        "class_counts": counts,
        "trained_classes": trained,
        "evaluations": evaluations,
        "histories": histories,
        "device": str(device),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    write_report(output, summary, catalogue.names, test_y, default_test, test_m, [m.key for m in config.members], default)

    sources = sorted({(s.source, s.license) for s in samples})
    headline = next((v for k, v in evaluations.items() if k.startswith(f"stack:{default}+")), evaluations[f"stack:{default}"])
    card = model_card(config, summary, headline, sources, default)
    package = write_package(
        output / "package", name=config.name, version=config.version, classes=catalogue.names, trained_classes=trained,
        preprocessing=pre, members=members,
        stackers={k: v.to_json() for k, v in stackers.items() if k != "mean"}, default_stacker=default,
        calibrations=calibrations, decision=Decision(review_margin=config.review_margin),
        extra={
            "class_counts": counts,
            "training_data": [{"source": s, "license": l} for s, l in sources],
            "metrics": {"test": {k: _headline(v) for k, v in evaluations.items()}, "split": summary["split_sizes"],
                        "holdout_sources": list(holdout_sources)},
            "training_config": config.to_json(),
        },
        model_card=card,
        weights_dtype=getattr(torch, config.weights_dtype),
    )
    log.info("package written to %s (%.0fs in all)", package, summary["seconds"])
    return package


def _calibrate(val_probs: np.ndarray, val_y: np.ndarray, classes: list[str], config) -> StackerCalibration:
    """Temperatures (when ``config.calibrate``) and thresholds of one stacker, on validation."""
    temperatures = fit_temperatures(val_probs, val_y) if config.calibrate else None
    if temperatures is not None:
        val_probs = apply_temperatures(val_probs, temperatures)
    thresholds = tune_thresholds(val_probs, val_y, classes) if config.tune_thresholds else {c: 0.5 for c in classes}
    return StackerCalibration({c: float(thresholds[c]) for c in classes},
                              dict(zip(classes, temperatures.tolist())) if temperatures is not None else None)


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("n", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "macro_sensitivity", "macro_specificity")}


def _save_split(path: Path, samples: Sequence[Sample], split: Split) -> None:
    part = {i: "train" for i in split.train} | {i: "val" for i in split.val} | {i: "test" for i in split.test}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels", "source", "split"])
        for i, s in enumerate(samples):
            w.writerow([str(s.path), "|".join(s.labels), s.source, part[i]])


def model_card(config: TrainConfig, summary: dict[str, Any], headline: dict[str, Any], sources, stacker: str) -> str:
    counts = summary["class_counts"]
    trained = summary["trained_classes"]
    lines = [
        f"# Model card: {config.name} {config.version}",
        "",
        "Multilabel body-part classifier for plain radiographs (CR/DX), 25 catalogue classes.",
        "Members: " + ", ".join(f"{m.key} ({m.arch}, init: {m.pretrained or 'random'})" for m in config.members) + "; "
        f"stacker: {stacker}; input {config.image_size} px.",
        "",
        "## Intended use",
        "Correcting Body Part Examined, routing exams to downstream AI, curating archives; every result",
        "with `needs_review` goes to a person. Not a diagnostic device.",
        "",
        "## Classes",
        f"Known (had training images): {', '.join(f'{c} ({counts[c]})' for c in trained)}.",
        f"Not known (never reported): {', '.join(c for c in counts if c not in trained) or 'none'}.",
        "Classes with fewer than 20 images are few-shot: expect low sensitivity on them.",
        "",
        "## Test-split metrics",
        f"Test images: {headline['n']}; held-out sources: {', '.join(summary['holdout_sources']) or 'none (random split)'}.",
        "",
        "| model | macro F1 | micro F1 | exact match | Hamming loss |",
        "|---|---|---|---|---|",
    ]
    for name, m in summary["evaluations"].items():
        lines.append(f"| {name} | {_f(m['macro_f1'])} | {_f(m['micro_f1'])} | {_f(m['exact_match'])} | {_f(m['hamming_loss'])} |")
    lines += ["", "## Training data", "", "| source | licence |", "|---|---|"]
    lines += [f"| {s} | {l or 'not stated'} |" for s, l in sources]
    lines += ["", "Research-use sources make this package for evaluation and demonstration; images from other",
              "hospitals and devices may differ (see the project README)."]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
