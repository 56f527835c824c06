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
from operators.input.preprocessing import Preprocessing
from operators.model.decision import Decision, select_labels
from operators.model.model_package import Member

from .config import TrainConfig
from .export import write_package
from .data import Sample, load_grey, load_samples, targets
from .members import offline_augment, predict, train_member
from .metrics import multilabel_metrics
from .selection import TOP_FRACTIONS, calibrate, calibrated, choose_decision, fit_stackers, source_groups

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
                     holdout: Sequence[str] = (), groups: np.ndarray | None = None, val_holdout: Sequence[str] = ()) -> Split:
    """Multilabel-stratified train/val/test indices over duplicate groups (a group never spans two
    splits). Samples of ``holdout`` sources go to test only, of ``val_holdout`` sources to
    validation only; the other sources are split by ``fractions``."""
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    reps, inverse = np.unique(groups, return_inverse=True)
    first = np.array([np.flatnonzero(inverse == g)[0] for g in range(len(reps))])
    rep_sources = None
    if sources is not None:
        # a group of copies is held out when any copy is: a held-out film never trains through its twin
        def group_source(g: int) -> str:
            members = [sources[i] for i in np.flatnonzero(inverse == g)]
            return next((s for s in members if s in set(holdout)), next((s for s in members if s in set(val_holdout)), members[0]))

        rep_sources = [group_source(g) for g in range(len(reps))]
    part = _split_indices(y[first], fractions, seed, rep_sources, holdout, val_holdout)
    expand = lambda idx: sorted(np.flatnonzero(np.isin(inverse, idx)).tolist())  # noqa: E731
    return Split(expand(part.train), expand(part.val), expand(part.test))


def _split_indices(y: np.ndarray, fractions: Sequence[float], seed: int, groups: Sequence[str] | None,
                   holdout: Sequence[str], val_holdout: Sequence[str] = ()) -> Split:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    idx = np.arange(len(y))
    in_ = lambda names: (np.array([g in set(names) for g in groups]) if (groups is not None and names)  # noqa: E731
                         else np.zeros(len(y), bool))
    held_test, held_val = in_(holdout), in_(val_holdout)
    pool = idx[~held_test & ~held_val]
    _, val_f, test_f = fractions
    # the other sources keep a random test part too: the random-split figures beside the held-out ones
    test_n = int(round(test_f * len(pool)))
    if test_n and len(pool) - test_n >= 2:
        s1 = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_n / len(pool), random_state=seed)
        rest, test = next(s1.split(pool, y[pool]))
        rest, test = pool[rest], pool[test]
    else:
        rest, test = pool, np.array([], int)
    s2 = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_f / (1 - test_f), random_state=seed + 1)
    tr, va = next(s2.split(rest, y[rest]))
    return Split(sorted(rest[tr].tolist()), sorted(np.concatenate([rest[va], idx[held_val]]).astype(int).tolist()),
                 sorted(np.concatenate([test, idx[held_test]]).astype(int).tolist()))


def imply_labels(samples: Sequence[Sample], implied: dict[str, dict[str, list[str]]], catalogue: Catalogue) -> list[Sample]:
    """``samples`` with the parts each ``implied`` rule adds: on films of source ``src`` labelled
    ``label``, every part in ``implied[src][label]`` is a label too (what a radiologist would name
    where a source gives one part of several).

    Raises
    ------
    DataError
        A rule names a class that is not in the catalogue.
    """
    from .data import DataError

    unknown = sorted({c for rule in implied.values() for k, v in rule.items() for c in (k, *v)} - set(catalogue.names))
    if unknown:
        raise DataError(f"implied_labels names classes that are not in the catalogue: {unknown}")
    out, changed = [], {}
    for s in samples:
        rule = implied.get(s.source, {})
        extra = [c for label in s.labels for c in rule.get(label, ()) if c not in s.labels]
        if extra:
            changed[s.source] = changed.get(s.source, 0) + 1
        out.append(Sample(s.path, tuple(dict.fromkeys([*s.labels, *extra])), s.source, s.license) if extra else s)
    for src in implied:  # a rule that changes nothing is most likely a misspelt label
        log.info("implied_labels: %d films of %s got labels added", changed.get(src, 0), src)
    return out


def loss_masks(samples: Sequence[Sample], catalogue: Catalogue, partial_sources: Sequence[str]) -> np.ndarray:
    """(N, C) loss weights: 0 for the anatomical neighbours of the named parts on films of a source
    that names one part per film (``partial_sources``), 1 elsewhere. A neighbour that the film's own
    labels name stays 1."""
    mask = np.ones((len(samples), len(catalogue)), np.float32)
    partial = set(partial_sources)
    for i, s in enumerate(samples):
        if s.source in partial:
            for label in s.labels:
                for near in catalogue.neighbours(label):
                    if near not in s.labels:
                        mask[i, catalogue.index(near)] = 0
    return mask


def known_classes(y: np.ndarray, train_rows: np.ndarray, classes: Sequence[str], min_images: int) -> list[str]:
    """Classes the package reports: at least ``min_images`` labelled images in the labelled data
    (``y``, test-only data excluded) and positives in the training split."""
    total = y.sum(0)
    in_train = y[train_rows].sum(0) > 0
    return [c for k, c in enumerate(classes) if total[k] >= min_images and in_train[k]]


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
    test_data: Sequence[Path] = (),
) -> Path:
    """Train, evaluate and export; returns the package folder (``output/package``).

    ``holdout_sources`` add to the config's ``test_sources``; ``test_data`` are labelled sets used
    for testing only (other hospitals' films), each a held-out source of its own.
    """
    from .report import write_report

    catalogue = Catalogue.default()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    samples: list[Sample] = []
    for d in data:
        samples += load_samples(Path(d), layout, catalogue)
    n_labelled = len(samples)
    external: list[str] = []
    for d in test_data:
        extra = load_samples(Path(d), None, catalogue)
        name = f"test:{Path(d).name}"
        samples += [Sample(s.path, s.labels, name, s.license) for s in extra]
        external.append(name)
    log.info("%d labelled images from %s; %d for testing only", n_labelled, ", ".join(str(d) for d in data),
             len(samples) - n_labelled)
    test_sources = tuple(dict.fromkeys([*config.test_sources, *holdout_sources, *external]))
    held_out = [*config.val_sources, *test_sources]
    from .data import DataError

    named = set(config.val_sources) | set(config.test_sources) | set(holdout_sources) | set(config.partial_label_sources) \
        | set(config.implied_labels)
    missing = sorted(named - {s.source for s in samples})
    if missing:  # a misspelt name would silently hold out or mask nothing
        raise DataError(f"source(s) {missing} named in the config or command are not in the data; "
                        f"sources: {sorted({s.source for s in samples})}")
    if set(config.val_sources) & set(test_sources):
        raise DataError(f"source(s) {sorted(set(config.val_sources) & set(test_sources))} held out for both validation and test")
    pre = Preprocessing(size=config.image_size, mean=config.mean, std=config.std)
    given_y = targets(samples, catalogue)  # the split follows the sources' own labels: a label policy moves no film
    samples = imply_labels(samples, config.implied_labels, catalogue)
    y = targets(samples, catalogue)
    images = cache_images(samples, pre)
    groups = duplicate_groups(images)
    if (n_dup := len(samples) - len(np.unique(groups))):
        log.info("%d images are copies of others (same picture, other encoding): kept in the same split", n_dup)
    split = stratified_split(given_y, config.split, config.seed, [s.source for s in samples], test_sources, groups,
                             val_holdout=config.val_sources)
    _save_split(output / "split.csv", samples, split, groups)
    (output / "config.json").write_text(json.dumps(config.to_json(), indent=2))
    tr, va, te = (np.asarray(v, int) for v in (split.train, split.val, split.test))
    if len(tr) == 0 or len(va) == 0:
        raise DataError(f"{len(samples)} images ({len(set(groups))} distinct) are too few for a train/validation split")
    masks = loss_masks(samples, catalogue, config.partial_label_sources)
    train_x, train_y, train_m = images[tr], y[tr], masks[tr]
    if config.offline_augment:
        by_source = [samples[i].source for i in tr] if config.offline_balance == "sources" else None
        train_x, train_y, train_m = offline_augment(train_x, train_y, config.offline_max_factor, config.seed, train_m,
                                                    sources=by_source)

    trained = known_classes(y[:n_labelled], tr, catalogue.names, config.min_class_images)
    trained_mask = np.array([c in trained for c in catalogue.names])
    untrained_counts = {c: int(y[:n_labelled, k].sum()) for k, c in enumerate(catalogue.names) if c not in trained}
    from operators.model.ensemble import pick_device

    device = pick_device(config.device)
    members, val_probs, test_probs, histories = [], [], [], {}
    for m in config.members:
        net, history = train_member(m, config, pre, (train_x, train_y, train_m), (images[va], y[va], masks[va]), output, resume=resume)
        histories[m.key] = history
        val_probs.append(predict(net, images[va], pre, device, tta=config.tta, amp=config.amp))
        test_probs.append(predict(net, images[te], pre, device, tta=config.tta, amp=config.amp))
        members.append((Member(m.key, m.arch, f"models/{m.key}.pt", {"best_epoch": history["best_epoch"],
                        f"best_val_{config.selection_metric}": history[f"best_val_{config.selection_metric}"], "pretrained": m.pretrained,
                        "epochs_trained": len(history["history"]), "stopped_by_time_budget": history["stopped_by_time_budget"]}),
                        {k: v.detach().cpu() for k, v in net.state_dict().items()}))
    val_m, test_m = np.stack(val_probs, 1), np.stack(test_probs, 1)  # (N, M, C)

    classes = catalogue.names
    val_y, val_mask, test_y, test_mask = y[va], masks[va], y[te], masks[te]
    stackers = fit_stackers(config.stackers, val_m, val_y, val_mask, config.seed, config.stacker_min_positives)
    # every stacker gets its own temperatures and thresholds: one stacker's do not fit another's probabilities
    calibrations = {name: calibrate(st.predict(val_m), val_y, val_mask, classes, config.calibrate, config.tune_thresholds)
                    for name, st in stackers.items()}
    choice = choose_decision(
        val_m, val_y, val_mask, trained_mask, classes, config.seed, config.calibrate, config.tune_thresholds,
        stackers=(["mean", *[k for k in ("logistic", "xgboost") if k in stackers]] if config.default_stacker == "auto"
                  else [config.default_stacker if config.default_stacker in stackers else "mean"]),
        fractions=TOP_FRACTIONS if config.top_fraction == "auto" else (config.top_fraction,),
        groups=(source_groups([s.source for s in samples], groups) if config.choice_folds == "sources" else groups)[va],
        min_positives=config.stacker_min_positives, groups_are=config.choice_folds)
    default, top_fraction = choice.stacker, choice.top_fraction
    if choice.stacker_scores or choice.top_fraction_scores:
        log.info("chosen on validation (out of fold): stacker %s, top_fraction %s (%s)", default, top_fraction,
                 json.dumps(choice.to_json()))
    decision = Decision(review_margin=config.review_margin, top_fraction=top_fraction)
    temperatures = calibrations[default].temperatures

    def metrics(pred: np.ndarray, rows: np.ndarray | slice = slice(None)) -> dict[str, Any]:
        return multilabel_metrics(test_y[rows], pred[rows], classes, trained_mask, targets_mask=test_mask[rows])

    evaluations: dict[str, Any] = {}
    for k, m in enumerate(config.members):
        evaluations[m.key] = metrics(test_m[:, k] >= 0.5)
    default_test, th = calibrated(stackers[default].predict(test_m), calibrations[default], classes)
    th_pred = select_labels(default_test, th, trained_mask, top_fraction)  # the package's decision
    for name, st in stackers.items():
        evaluations[f"stack:{name}"] = metrics(st.predict(test_m) >= 0.5)
        if name == default:
            label = (f"stack:{name}" + ("+calibration" if temperatures else "") + "+thresholds"
                     + (f"+top{top_fraction:g}" if top_fraction is not None else ""))
            evaluations[label] = metrics(th_pred)
    counts = {c: int(y[:n_labelled, k].sum()) for k, c in enumerate(catalogue.names)}
    test_sources_of = np.array([samples[i].source for i in te])
    held = np.isin(test_sources_of, list(held_out))
    # the same radiograph in several encodings (the corpus's NEMA sets) counts once here: how many
    # pictures the held-out figure rests on
    held_rows = np.flatnonzero(held)
    first_copy = np.zeros(len(te), bool)
    first_copy[held_rows[np.unique(groups[te][held_rows], return_index=True)[1]]] = True
    by_part = {"random_split": metrics(th_pred, ~held), "held_out_sources": metrics(th_pred, held),
               "held_out_pictures": metrics(th_pred, first_copy)}
    by_source = {src: metrics(th_pred, test_sources_of == src) for src in sorted(set(test_sources_of))}
    summary = {
        "data": [str(d) for d in data],
        "test_data": [str(d) for d in test_data],
        "images": len(samples),
        "split_sizes": {"train": len(tr), "val": len(va), "test": len(te), "train_after_offline_augmentation": len(train_x)},
        "holdout_sources": list(test_sources),
        "val_sources": list(config.val_sources),
        "partial_label_sources": list(config.partial_label_sources),
        "implied_labels": config.implied_labels,
        "class_counts": counts,
        "trained_classes": trained,
        "untrained_classes": untrained_counts,
        "min_class_images": config.min_class_images,
        "decision_choice": choice.to_json(),
        "evaluations": evaluations,
        "decision_by_part": by_part,
        "decision_by_source": by_source,
        "histories": histories,
        "device": str(device),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    write_report(output, summary, catalogue.names, test_y, default_test, test_m, [m.key for m in config.members], default)

    sources = sorted({(s.source, s.license) for s in samples[:n_labelled]})
    headline = next((v for k, v in evaluations.items() if k.startswith(f"stack:{default}+")), evaluations[f"stack:{default}"])
    card = model_card(config, summary, headline, sources, default)
    package = write_package(
        output / "package", name=config.name, version=config.version, classes=catalogue.names, trained_classes=trained,
        preprocessing=pre, members=members,
        stackers={k: v.to_json() for k, v in stackers.items() if k != "mean"}, default_stacker=default,
        calibrations=calibrations, decision=decision, tta=config.tta,
        extra={
            "class_counts": counts,
            "training_data": [{"source": s, "license": l} for s, l in sources],
            "metrics": {"test": {k: _headline(v) for k, v in evaluations.items()}, "split": summary["split_sizes"],
                        "holdout_sources": list(test_sources), "val_sources": list(config.val_sources),
                        "test_by_part": {k: _headline(v) for k, v in by_part.items()},
                        "test_by_source": {k: _headline(v) for k, v in by_source.items()},
                        "decision_choice": choice.to_json()},
            "training_config": config.to_json(),
        },
        model_card=card,
        weights_dtype=getattr(torch, config.weights_dtype),
    )
    log.info("package written to %s (%.0fs in all)", package, summary["seconds"])
    return package


def _decision_line(choice: dict[str, Any] | None) -> str:
    if not choice:
        return ""
    rule = ("every known class at or above its threshold" if choice["top_fraction"] is None else
            f"the most probable known class, plus others at or above their thresholds and at least "
            f"{choice['top_fraction']} of its probability")
    chosen = lambda scores: " (chosen on validation, out of fold)" if scores else ""  # noqa: E731
    return (f"Decision: stacker {choice['stacker']}{chosen(choice['stacker_scores'])}; labels: {rule}"
            f"{chosen(choice['top_fraction_scores'])}.")


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("n", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "macro_sensitivity", "macro_specificity")}


def _save_split(path: Path, samples: Sequence[Sample], split: Split, groups: np.ndarray) -> None:
    """One row per image: its labels, source, split and picture (the row number of the first copy
    of the same radiograph, from :func:`duplicate_groups`)."""
    part = {i: "train" for i in split.train} | {i: "val" for i in split.val} | {i: "test" for i in split.test}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels", "source", "split", "picture"])
        for i, s in enumerate(samples):
            w.writerow([str(s.path), "|".join(s.labels), s.source, part[i], int(groups[i])])


def model_card(config: TrainConfig, summary: dict[str, Any], headline: dict[str, Any], sources, stacker: str) -> str:
    counts = summary["class_counts"]
    trained = summary["trained_classes"]
    untrained = summary["untrained_classes"]
    parts = summary["decision_by_part"]
    lines = [
        f"# Model card: {config.name} {config.version}",
        "",
        "Multilabel body-part classifier for plain radiographs (CR/DX), 25 catalogue classes.",
        "Members: " + ", ".join(f"{m.key} ({m.arch}, init: {f'model package {m.package}' if m.package else m.pretrained or 'random'})" for m in config.members) + "; "
        f"stacker: {stacker}; input {config.image_size} px"
        + ("; test-time augmentation: each member averages the image and its two flips (three times the work)."
           if config.tta else "."),
        "",
        "## Intended use",
        "Correcting Body Part Examined, routing exams to downstream AI, curating archives; every result",
        "with `needs_review` goes to a person. Not a diagnostic device.",
        "",
        "## Classes",
        f"Known (reported; at least {summary['min_class_images']} labelled images): "
        f"{', '.join(f'{c} ({counts[c]})' for c in trained)}.",
        f"Not known (never reported; labelled images in brackets): "
        f"{', '.join(f'{c} ({n})' for c, n in untrained.items()) or 'none'}.",
        "Classes with fewer than 20 images are few-shot: expect low sensitivity on them.",
        "",
        "## How it was trained",
        f"Validation (epochs, stackers, thresholds, decision rule) on sources held out as a whole: {', '.join(summary['val_sources']) or 'none (random split)'}"
        " plus a random part of the others.",
        f"Sources that name one part per film although the film shows its neighbours: "
        f"{', '.join(summary['partial_label_sources']) or 'none'}; for their films the neighbouring parts "
        "(operators/data/neighbours.csv) are left out of the loss, neither positive nor negative.",
        *([("Labels added where a source names one part of several: " + "; ".join(
            f"{src}: {label} films are also {' + '.join(parts)}" for src, rule in summary["implied_labels"].items()
            for label, parts in rule.items()) + ".")] if summary.get("implied_labels") else []),
        "Online augmentation: " + ", ".join(f"{k}={v}" for k, v in config.augment.to_json().items()) + ".",
        _decision_line(summary.get("decision_choice")),
        "",
        "## Test metrics (the package's decision: stacker, calibration, thresholds, rule)",
        f"Held-out test sources: {', '.join(summary['holdout_sources']) or 'none'}.",
        "",
        "| test part | images | macro F1 | micro F1 | exact match | Hamming loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in [*parts.items(), *summary["decision_by_source"].items()]:
        lines.append(f"| {name} | {m['n']} | {_f(m['macro_f1'])} | {_f(m['micro_f1'])} | {_f(m['exact_match'])} | {_f(m['hamming_loss'])} |")
    if "held_out_pictures" in parts:
        from .report import PICTURES_NOTE

        lines += ["", PICTURES_NOTE]
    lines += ["", "Per class on the held-out sources (known classes with positives there):", "",
              "| class | positives | sensitivity | specificity | F1 |", "|---|---|---|---|---|"]
    for c, v in parts["held_out_sources"]["per_class"].items():
        if v["evaluated"] and v["positives"]:
            lines.append(f"| {c} | {v['positives']} | {_f(v['sensitivity'])} | {_f(v['specificity'])} | {_f(v['f1'])} |")
    lines += ["", "All test images, members and stackers:", "",
              "| model | macro F1 | micro F1 | exact match | Hamming loss |", "|---|---|---|---|---|"]
    for name, m in summary["evaluations"].items():
        lines.append(f"| {name} | {_f(m['macro_f1'])} | {_f(m['micro_f1'])} | {_f(m['exact_match'])} | {_f(m['hamming_loss'])} |")
    lines += ["", "## Training data", "", "| source | licence |", "|---|---|"]
    lines += [f"| {s} | {l or 'not stated'} |" for s, l in sources]
    lines += ["", "Research-use sources make this package for evaluation and demonstration; images from other",
              "hospitals and devices may differ (see the project README)."]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
