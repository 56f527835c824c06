"""Ensemble decisions and stackers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from operators.input.batching import iter_batches
from operators.catalogue import Catalogue
from operators.model.classify import classify_batch
from operators.model.decision import Decision, decide, select_labels
from operators.model.ensemble import Ensemble
from operators.model.model_package import load_package
from operators.outcome import Status
from operators.model.stacking import LogisticStacker, MeanStacker, XGBoostStacker, stacker_from_json

CLASSES = ("A", "B", "C", "D")


def test_decide_reports_known_classes_above_threshold():
    probs = np.array([0.9, 0.2, 0.95, 0.05])
    known = np.array([True, True, False, True])
    labels, reason = decide(probs, np.full(4, 0.5), known, Decision(0.1, 3), CLASSES)
    assert labels == ["A"] and reason is None  # C is above threshold but unknown: never reported


def test_decide_flags_low_confidence_and_conflicts():
    th, known = np.full(4, 0.5), np.ones(4, bool)
    assert decide(np.array([0.3, 0.2, 0.1, 0.0]), th, known, Decision(0.1, 3), CLASSES) == ([], "no class above its threshold")
    labels, reason = decide(np.array([0.9, 0.55, 0.1, 0.0]), th, known, Decision(0.1, 3), CLASSES)
    assert labels == ["A", "B"] and "uncertain: B" in reason
    labels, reason = decide(np.array([0.9, 0.9, 0.9, 0.9]), th, known, Decision(0.1, 3), CLASSES)
    assert "conflicting" in reason


def test_top_fraction_keeps_the_top_class_and_drops_weak_seconds():
    th, known = np.full(4, 0.5), np.array([True, True, True, False])
    top = Decision(0.1, 3, top_fraction=0.7)
    # B is above its threshold but under 0.7 of A: dropped; D is unknown even as the top
    labels, reason = decide(np.array([0.95, 0.65, 0.1, 0.99]), th, known, top, CLASSES)
    assert labels == ["A"] and reason is None
    labels, _ = decide(np.array([0.95, 0.8, 0.1, 0.0]), th, known, top, CLASSES)
    assert labels == ["A", "B"]
    # nothing above threshold: the most probable known class, flagged for review
    labels, reason = decide(np.array([0.2, 0.3, 0.1, 0.9]), th, known, top, CLASSES)
    assert labels == ["B"] and reason == "no class above its threshold; B is the most probable"
    # the batch form agrees with the per-image one
    batch = np.array([[0.95, 0.65, 0.1, 0.99], [0.2, 0.3, 0.1, 0.9], [0.95, 0.8, 0.1, 0.0]])
    assert select_labels(batch, th, known, 0.7).tolist() == [
        [True, False, False, False], [False, True, False, False], [True, True, False, False]]
    assert select_labels(batch, th, known, None).tolist() == [
        [True, True, False, False], [False, False, False, False], [True, True, False, False]]


def test_with_top_fraction_only_a_class_that_could_join_the_labels_is_uncertain():
    """A threshold tuned down to 0.1 (the across-sources package's Shoulder) flagged every film whose
    Shoulder probability was near 0; under the top-fraction rule such a class cannot become a label."""
    th, known = np.array([0.4, 0.1, 0.9, 0.5]), np.array([True, True, True, False])
    probs = np.array([0.95, 0.05, 0.1, 0.0])
    assert decide(probs, th, known, Decision(0.1, 3, top_fraction=0.9), CLASSES) == (["A"], None)
    assert decide(probs, th, known, Decision(0.1, 3), CLASSES) == (["A"], "uncertain: B within 0.1 of threshold")
    # C near its threshold and near 0.9 of the top: a small change adds it, so it is uncertain
    near = np.array([0.95, 0.05, 0.84, 0.0])
    assert decide(near, th, known, Decision(0.1, 3, top_fraction=0.9), CLASSES) == (["A"], "uncertain: C within 0.1 of threshold")
    # the top class below its own threshold is flagged even when another class passes its (low) one
    assert decide(np.array([0.7, 0.12, 0.1, 0.0]), np.array([0.95, 0.1, 0.9, 0.5]), known, Decision(0.1, 3, top_fraction=0.9),
                  CLASSES) == (["A"], "A is the most probable but below its threshold")
    # the top class itself barely above its threshold stays uncertain
    assert decide(np.array([0.45, 0.05, 0.1, 0.0]), th, known, Decision(0.1, 3, top_fraction=0.9), CLASSES)[1] == \
        "uncertain: A within 0.1 of threshold"


@pytest.mark.parametrize("bad", [{"top_fraction": 0}, {"top_fraction": 1.5}, {"top_fraction": True}, {"top_fraction": "0.5"},
                                 {"max_labels": 0}, {"review_margin": -0.1}])
def test_decision_settings_are_checked(bad):
    with pytest.raises(ValueError):
        Decision(**bad)


def _toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(float)
    good = np.clip(y * 0.7 + rng.random((n, 3)) * 0.3, 0, 1)  # informative member
    noise = rng.random((n, 3))  # useless member
    return np.stack([good, noise], 1), y


@pytest.mark.parametrize("cls", [LogisticStacker, XGBoostStacker])
def test_stackers_learn_to_trust_the_informative_member_and_round_trip(cls):
    x, y = _toy()
    st = cls.fit(x, y)
    xt, yt = _toy(seed=1)
    acc = ((st.predict(xt) >= 0.5) == yt).mean()
    mean_acc = ((MeanStacker().predict(xt) >= 0.5) == yt).mean()
    assert acc > 0.95 and acc > mean_acc
    again = stacker_from_json(json.loads(json.dumps(st.to_json())))
    np.testing.assert_allclose(again.predict(xt), st.predict(xt), rtol=1e-6, atol=1e-6)


def test_stacker_falls_back_to_mean_for_classes_without_both_outcomes():
    x, y = _toy()
    y[:, 2] = 0
    st = LogisticStacker.fit(x, y)
    assert not st.fitted[2]
    np.testing.assert_allclose(st.predict(x)[:, 2], x[:, :, 2].mean(1))


def test_ensemble_on_real_files_reports_only_known_classes(tiny_package, corpus):
    pkg = load_package(tiny_package)
    ens = Ensemble(pkg, device="cpu")
    batch = next(iter_batches(corpus, pkg.preprocessing, batch_size=4))
    preds = ens.predict(batch.tensor)
    assert len(preds) == 4
    for p in preds:
        assert set(p.probabilities) == set(pkg.trained_classes)
        assert set(p.labels) <= set(pkg.trained_classes)
        assert p.needs_review == (p.review_reason is not None)
        assert set(p.member_probabilities) == {"efficientnet_lite0"}


def test_stacker_choice_changes_the_stack_not_the_members(tiny_package, corpus):
    pkg = load_package(tiny_package)
    batch = next(iter_batches(corpus, pkg.preprocessing, batch_size=3))
    a = Ensemble(pkg, device="cpu", stacker="mean").predict(batch.tensor)
    b = Ensemble(pkg, device="cpu", stacker="xgboost").predict(batch.tensor)
    assert a[0].member_probabilities == b[0].member_probabilities
    # one member: the mean stack is that member, through the mean stacker's own temperatures
    from operators.model.stacking import apply_temperatures

    member = a[0].member_probabilities["efficientnet_lite0"]
    temps = pkg.calibration("mean").temperatures
    for c, p in a[0].probabilities.items():
        assert p == pytest.approx(float(apply_temperatures(np.array(member[c]), np.array(temps[c]))), abs=1e-4)  # members rounded to 1e-6


def test_each_stacker_decides_with_its_own_thresholds_and_temperatures(tiny_package):
    pkg = load_package(tiny_package)
    assert set(pkg.calibrations) == {"mean", "logistic", "xgboost"}  # training tunes every stacker it writes
    for kind in pkg.calibrations:
        ens = Ensemble(pkg, device="cpu", stacker=kind)
        want = pkg.calibrations[kind]
        assert ens.thresholds.tolist() == [want.thresholds[c] for c in pkg.classes]
        assert ens.temperatures.tolist() == [want.temperatures[c] for c in pkg.classes]  # tiny.yaml calibrates
        assert ens.info.thresholds == {c: want.thresholds[c] for c in pkg.trained_classes}
    assert pkg.calibrations["logistic"] != pkg.calibrations["xgboost"]


def test_a_stacker_without_thresholds_is_refused_clearly(tiny_package, tmp_path):
    import shutil

    from operators.model.model_package import ModelPackageError
    from training.export import refresh_checksums

    pkg_dir = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg_dir)
    meta_path = pkg_dir / "configs/metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["stacker"]["calibrations"]["xgboost"]
    meta_path.write_text(json.dumps(meta))
    refresh_checksums(pkg_dir)
    pkg = load_package(pkg_dir)
    with pytest.raises(ModelPackageError, match="no thresholds were tuned for the 'xgboost' stacker .tuned for: logistic, mean."):
        Ensemble(pkg, device="cpu", stacker="xgboost")
    Ensemble(pkg, device="cpu", stacker="logistic")  # the others still load


def test_a_package_from_before_per_stacker_thresholds_offers_only_its_own_stacker(tiny_package, tmp_path):
    import shutil

    from operators.model.model_package import ModelPackageError
    from training.export import refresh_checksums

    pkg_dir = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg_dir)
    meta_path = pkg_dir / "configs/metadata.json"
    meta = json.loads(meta_path.read_text())
    own = meta["stacker"].pop("calibrations")["logistic"]
    meta["thresholds"], meta["calibration"] = own["thresholds"], {"stacker": "logistic", "temperature": own["temperatures"]}
    meta_path.write_text(json.dumps(meta))
    refresh_checksums(pkg_dir)
    pkg = load_package(pkg_dir)
    assert pkg.thresholds == own["thresholds"] and pkg.calibration().temperatures == own["temperatures"]
    with pytest.raises(ModelPackageError, match="'xgboost' stacker"):
        Ensemble(pkg, device="cpu", stacker="xgboost")


def test_a_failing_batch_marks_only_its_images_failed(tiny_package, corpus, monkeypatch):
    pkg = load_package(tiny_package)
    ens = Ensemble(pkg, device="cpu")
    batches = list(iter_batches(corpus, pkg.preprocessing, batch_size=8))
    cat = Catalogue.default()
    good = classify_batch(ens, batches[0], cat)
    monkeypatch.setattr(ens, "predict", lambda t: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    bad = classify_batch(ens, batches[1], cat)
    assert all(o.status is Status.CLASSIFIED and o.classification.model == ens.info for o in good if o.sop_instance_uid)
    assert all(o.status is Status.FAILED and "out of memory" in o.reason for o in bad if o.sop_instance_uid)
    assert len(bad) == len(batches[1].items)


def test_test_time_augmentation_averages_each_member_over_the_flips():
    package = load_package(__import__("app.app", fromlist=["DEFAULT_MODEL"]).DEFAULT_MODEL)
    plain, tta = Ensemble(package, device="cpu", tta=False), Ensemble(package, device="cpu", tta=True)
    x = torch.randn(2, package.preprocessing.channels, 64, 64)
    views = [plain.member_probabilities(v) for v in (x, x.flip(-1), x.flip(-2))]
    assert np.allclose(tta.member_probabilities(x), np.mean(views, axis=0), atol=1e-6)
    assert not np.allclose(views[0], views[1], atol=1e-4)  # the flips are different inputs to the network


def _with_inference(tiny_package, tmp_path, inference):
    import shutil

    from training.export import refresh_checksums

    pkg_dir = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg_dir)
    meta_path = pkg_dir / "configs/metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["inference"] = inference
    meta_path.write_text(json.dumps(meta))
    refresh_checksums(pkg_dir)
    return pkg_dir


def test_a_package_fitted_on_flips_is_classified_with_them(tiny_package, tmp_path):
    """``inference.tta`` (stackers and thresholds fitted on flip-averaged members): the app's
    ensemble averages the flips too, and results say so; a package without the key does not."""
    from operators.model.model_package import ModelPackageError

    assert load_package(tiny_package).tta is False and Ensemble(load_package(tiny_package), device="cpu").info.tta is False
    pkg = load_package(_with_inference(tiny_package, tmp_path, {"tta": True}))
    ens = Ensemble(pkg, device="cpu")
    assert pkg.tta is True and ens.tta is True and ens.info.to_json()["tta"] is True
    x = torch.randn(2, pkg.preprocessing.channels, 64, 64)
    assert np.allclose(ens.member_probabilities(x), Ensemble(pkg, device="cpu", tta=True).member_probabilities(x))
    assert not np.allclose(ens.member_probabilities(x), Ensemble(pkg, device="cpu", tta=False).member_probabilities(x), atol=1e-5)
    with pytest.raises(ModelPackageError, match="inference.tta must be true or false, got 'yes'"):
        load_package(_with_inference(tiny_package, tmp_path / "bad", {"tta": "yes"}))
