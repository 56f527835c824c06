"""Source-style augmentation, neighbour-masked loss and source-held-out splits (training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.catalogue import Catalogue
from training.augment import (AugmentConfig, RandAnnotations, RandExtent, RandJpeg, RandWindow, online_transform)
from training.config import TrainConfig
from training.data import DataError, Sample
from training.members import class_balanced_pos_weight, copy_factors, freeze_stages, masked_bce, offline_augment
from training.pipeline import imply_labels, known_classes, loss_masks, stratified_split


def _film(size: int = 64) -> torch.Tensor:
    """A synthetic 'film': a bright bar (bone) on a mid-grey field with fine stripes (texture)."""
    img = torch.full((1, size, size), 0.4)
    img[:, :, size // 3 : size // 2] = 0.9
    img[:, ::2, :] += 0.05
    return img.clamp(0, 1)


def test_config_validates_and_refuses_unknown_keys():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(p_jpeg=1.5)
    with pytest.raises(ValueError, match="unknown augment keys"):
        AugmentConfig.from_json({"p_blurr": 0.2})
    with pytest.raises(ValueError, match="low_resolution"):
        AugmentConfig(low_resolution=(0.0, 0.5))
    cfg = TrainConfig(augment={"p_jpeg": 0.3, "jpeg_quality": [20, 40]})
    assert cfg.augment.p_jpeg == 0.3 and cfg.augment.jpeg_quality == (20, 40)
    assert cfg.to_json()["augment"]["p_jpeg"] == 0.3


def test_study_default_is_flips_and_rotation_only():
    """With flips and rotation off, the default chain changes nothing: every source-style
    transform is opt-in (across-sources.yaml turns them on)."""
    t = online_transform(AugmentConfig(flip_prob=0.0, rotate_range_deg=0.0), seed=0)
    img = _film()
    assert torch.allclose(t(img), img)


def test_chain_is_seeded_keeps_shape_and_range():
    cfg = AugmentConfig(p_extent=1, p_low_resolution=1, p_blur=1, p_window=1, p_gamma=1, p_noise=1, p_jpeg=1, p_annotations=1)
    a = [online_transform(cfg, seed=7)(_film()) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    b = online_transform(cfg, seed=8)(_film())
    assert not torch.equal(a[0], b)
    assert a[0].shape == (1, 64, 64) and 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_extent_zooms_both_ways():
    img = torch.rand(1, 64, 64) * 0.5 + 0.25  # no exact 0 in the picture
    outs = []
    for seed in range(20):
        t = RandExtent(1.0, zoom_in=2.0, zoom_out=0.5)
        t.set_random_state(seed)
        outs.append(t(img))
    # zoom-out leaves a flat border (black or a shutter grey) on at least one side
    flat_edge = [o for o in outs if any(float(e.std()) == 0.0 for e in (o[0, 0], o[0, -1], o[0, :, 0], o[0, :, -1]))]
    assert 0 < len(flat_edge) < len(outs)  # and the others zoomed in: no flat edge
    assert all(o.shape == img.shape for o in outs)


def test_low_resolution_removes_fine_detail():
    cfg = AugmentConfig(flip_prob=0, rotate_range_deg=0, p_low_resolution=1.0, low_resolution=(0.25, 0.25))
    img = _film()
    out = online_transform(cfg, seed=0)(img)
    stripes = lambda x: float((x[0, 1::2, 5] - x[0, ::2, 5]).abs().mean())  # noqa: E731
    assert stripes(out) < 0.3 * stripes(img)


def test_window_jpeg_and_annotations_change_the_pixels():
    img = _film()
    for t in (RandWindow(1.0), RandJpeg(1.0, (10, 10)), RandAnnotations(1.0)):
        t.set_random_state(3)
        out = t(img)
        assert out.shape == img.shape and not torch.allclose(out, img, atol=1e-3)
    ann = RandAnnotations(1.0)
    ann.set_random_state(0)
    drawn = ann(torch.full((1, 128, 128), 0.5))
    assert ((drawn > 0.95) | (drawn < 0.05)).sum() > 10  # white or black marks burnt in


def test_neighbours_are_symmetric_and_known():
    cat = Catalogue.default()
    assert set(cat.neighbours("Wrist")) == {"Forearm", "Hand"}
    for c in cat.names:
        for n in cat.neighbours(c):
            assert c in cat.neighbours(n)
    assert cat.neighbours("Others") == ()


def test_loss_masks_leave_out_neighbours_of_one_part_sources_only():
    cat = Catalogue.default()
    samples = [Sample("a", ("Wrist",), "fractures"), Sample("b", ("Wrist",), "other"),
               Sample("c", ("Hand", "Wrist"), "fractures")]
    m = loss_masks(samples, cat, ["fractures"])
    zero = lambda i: {cat.names[k] for k in np.flatnonzero(m[i] == 0)}  # noqa: E731
    assert zero(0) == {"Forearm", "Hand"}
    assert zero(1) == set()
    assert zero(2) == {"Forearm", "Finger"}  # a neighbour the film's own labels name stays in


def test_implied_labels_add_what_a_radiologist_names_on_that_source_only():
    cat = Catalogue.default()
    samples = [Sample("a", ("Pelvis",), "medpix"), Sample("b", ("Pelvis",), "other"),
               Sample("c", ("Hip",), "medpix"), Sample("d", ("Pelvis", "Hip"), "medpix")]
    out = imply_labels(samples, {"medpix": {"Pelvis": ["Hip"]}}, cat)
    assert [s.labels for s in out] == [("Pelvis", "Hip"), ("Pelvis",), ("Hip",), ("Pelvis", "Hip")]
    assert out[1] is samples[1] and samples[0].labels == ("Pelvis",)  # the given samples are not changed
    with pytest.raises(DataError, match=r"not in the catalogue: \['Hips'\]"):
        imply_labels(samples, {"medpix": {"Pelvis": ["Hips"]}}, cat)
    for bad in ({"medpix": ["Hip"]}, {"medpix": {"Pelvis": [["Hip"]]}}):
        with pytest.raises(ValueError, match="implied_labels must map"):
            TrainConfig(implied_labels=bad)
    assert TrainConfig(implied_labels=None).implied_labels == {}  # `implied_labels:` left empty in YAML


def test_masked_targets_give_no_loss_and_no_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    mask = torch.tensor([[1.0, 0, 1], [1, 1, 1]])
    loss = masked_bce(logits, y, mask)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0
    # the masked target's value does not matter
    y2 = y.clone()
    y2[0, 1] = 1
    assert masked_bce(logits.detach(), y2, mask) == pytest.approx(loss.item())
    # class balance counts only targets that count
    w = class_balanced_pos_weight(np.array([[1, 0], [0, 0], [0, 1]], np.float32), np.array([[1, 1], [0, 1], [1, 1]], np.float32))
    assert w.tolist() == pytest.approx([1.0, 2.0])


def test_offline_copies_keep_their_masks():
    y = np.zeros((12, 2), np.float32)
    y[:10, 0] = 1
    y[10:, 1] = 1
    mask = np.ones_like(y)
    mask[10:, 0] = 0
    x = torch.randint(0, 255, (12, 1, 8, 8), dtype=torch.uint8)
    _, ay, am = offline_augment(x, y, max_factor=10, seed=0, mask=mask)
    assert len(am) == len(ay) and (am[ay[:, 1] == 1, 0] == 0).all()


def test_source_balance_copies_a_class_s_minority_sources():
    """Balanced by classes only, 2 lateral films of a class beside 20 AP films of it get no copies;
    balanced by sources too, they count as much as the AP films (up to the cap), and a class
    from one source is multiplied as before."""
    y = np.zeros((30, 2), np.float32)
    y[:22, 0] = 1
    y[22:, 1] = 1
    sources = ["ap"] * 20 + ["lateral"] * 2 + ["other"] * 8
    assert list(copy_factors(y, 10)) == [1] * 22 + [3] * 8
    f = copy_factors(y, 10, sources)
    assert list(f) == [1] * 20 + [10] * 2 + [3] * 8
    assert list(copy_factors(y, 4, sources)[20:22]) == [4, 4]
    x = torch.randint(0, 255, (30, 1, 8, 8), dtype=torch.uint8)
    _, ay, _ = offline_augment(x, y, max_factor=10, seed=0, sources=sources)
    assert ay[:, 0].sum() == 20 + 2 * 10 and ay[:, 1].sum() == 8 * 3
    with pytest.raises(ValueError, match="offline_balance"):
        TrainConfig(offline_balance="source")


def test_validation_and_test_sources_are_held_out_whole():
    y = np.tile(np.eye(3), (40, 1))
    sources = ["a", "b", "c", "d"] * 30
    s = stratified_split(y, (0.7, 0.15, 0.15), seed=0, sources=sources, holdout=["c"], val_holdout=["d"])
    where = lambda src: {i for i in range(120) if sources[i] == src}  # noqa: E731
    assert where("c") <= set(s.test) and where("d") <= set(s.val)
    assert not (where("c") | where("d")) & set(s.train)
    # the other sources keep a random test part: the random-split figures
    assert set(s.test) - where("c")
    with pytest.raises(ValueError, match="both in validation and test"):
        TrainConfig(val_sources=["x"], test_sources=["x"])


def test_known_classes_need_enough_images_and_training_positives():
    y = np.zeros((30, 3), np.float32)
    y[:20, 0] = 1
    y[20:29, 1] = 1  # 9 images
    y[29, 2] = 1  # 1 image
    train = np.arange(0, 25)
    assert known_classes(y, train, ["a", "b", "c"], 9) == ["a", "b"]
    assert known_classes(y, train, ["a", "b", "c"], 10) == ["a"]
    assert known_classes(y, np.arange(0, 20), ["a", "b", "c"], 1) == ["a"]  # b had no training positives


def test_freeze_stages_stops_gradients_of_the_stem_and_early_stages():
    from operators.model.networks import create_network

    net = create_network("efficientnet_lite0", 4, 3)
    n = freeze_stages(net, 3)
    assert n > 0
    assert not any(p.requires_grad for p in net.conv_stem.parameters())
    assert not any(p.requires_grad for p in net.blocks[2].parameters())
    assert all(p.requires_grad for p in net.blocks[3].parameters())
    with pytest.raises(ValueError, match="every one"):
        freeze_stages(create_network("efficientnet_lite0", 4, 3), 7)
    with pytest.raises(ValueError, match="EfficientNet-style"):
        freeze_stages(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_a_run_with_held_out_sources_reports_them_apart(train_dir, corpus, tmp_path):
    """A tiny real run with a validation source, a test source and test-only data (the corpus):
    nothing of them is trained on, and the report and card give held-out and random-split figures.
    With test-time augmentation, which the package then asks of the app."""
    import csv
    import json

    from operators.model.model_package import load_package
    from tests.conftest import write_subset_csv
    from training.pipeline import run_training

    data = write_subset_csv(train_dir, tmp_path / "data", per_class=3)
    config = TrainConfig(members=[{"arch": "efficientnet_lite0", "pretrained": "imagenet"}], image_size=48, epochs=1,
                         batch_size=16, max_steps_per_epoch=1, offline_augment=False, stackers=("logistic",),
                         augment={"p_extent": 0.5, "p_jpeg": 0.5, "p_annotations": 0.5},
                         partial_label_sources=["dennis-1240-cdm/diagnosis_of_bones_fractures"],
                         implied_labels={"thiliniprr/AquaNet_VQA": {"Pelvis": ["Hip"]}},
                         val_sources=["icgncl/Dissima"], test_sources=["dlab-berkeley/R-Deep-Learning"], min_class_images=3,
                         tta=True)
    run_training(config, [data], tmp_path / "run", test_data=[corpus])
    rows = list(csv.DictReader(open(tmp_path / "run/split.csv")))
    part = {r["source"]: {x["split"] for x in rows if x["source"] == r["source"]} for r in rows}
    assert part["icgncl/Dissima"] == {"val"} and part["dlab-berkeley/R-Deep-Learning"] == {"test"} and part["test:dicom"] == {"test"}
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    held = metrics["decision_by_part"]["held_out_sources"]
    assert held["n"] == 35 + sum(r["source"] == "dlab-berkeley/R-Deep-Learning" for r in rows)
    # each radiograph once: the corpus's NEMA films come in 4, 7 and 8 encodings
    pictures = {r["picture"] for r in rows if r["source"] in ("test:dicom", "dlab-berkeley/R-Deep-Learning")}
    assert metrics["decision_by_part"]["held_out_pictures"]["n"] == len(pictures) <= held["n"] - 16
    assert "test:dicom" in metrics["decision_by_source"] and metrics["untrained_classes"]["Thigh"] == 0
    card = (tmp_path / "run/package/docs/model_card.md").read_text()
    assert "held-out sources" in card and "test:dicom" in card and "| held_out_pictures |" in card
    assert "how many films the held-out figures rest on" in (tmp_path / "run/report.md").read_text()
    assert "shows its neighbours: dennis-1240-cdm/diagnosis_of_bones_fractures;" in card
    assert "thiliniprr/AquaNet_VQA: Pelvis films are also Hip." in card
    pelvis = [r for r in rows if r["source"] == "thiliniprr/AquaNet_VQA" and "Pelvis" in r["labels"]]
    assert pelvis and all(r["labels"] == "Pelvis|Hip" for r in pelvis)
    meta = json.loads((tmp_path / "run/package/configs/metadata.json").read_text())
    assert "test:dicom" not in {d["source"] for d in meta["training_data"]}
    # fitted on flip-averaged members: the app averages them too, and an app from before refuses it
    assert meta["inference"] == {"tta": True} and meta["format_version"] == 2 and load_package(tmp_path / "run/package").tta


def test_a_copy_of_a_held_out_film_is_held_out_with_it():
    y = np.tile(np.eye(2), (30, 1))
    sources = ["a"] * 58 + ["held", "held"]
    groups = np.arange(60)
    groups[58] = 0  # a held-out film is a copy of the first training-source film
    s = stratified_split(y, (0.7, 0.15, 0.15), seed=0, sources=sources, holdout=["held"], groups=groups)
    assert {0, 58, 59} <= set(s.test)


def test_sources_named_wrong_or_twice_are_refused_before_any_image_is_read(train_dir, tmp_path):
    from tests.conftest import write_subset_csv
    from training.pipeline import run_training

    data = write_subset_csv(train_dir, tmp_path / "data", per_class=1)
    with pytest.raises(DataError, match="dennis-1240-cdm/typo"):
        run_training(TrainConfig(partial_label_sources=["dennis-1240-cdm/typo"]), [data], tmp_path / "a")
    with pytest.raises(DataError, match="thiliniprr/typo"):
        run_training(TrainConfig(implied_labels={"thiliniprr/typo": {"Pelvis": ["Hip"]}}), [data], tmp_path / "c")
    with pytest.raises(DataError, match="both validation and test"):
        run_training(TrainConfig(val_sources=["Znarfran/CADMA"]), [data], tmp_path / "b", holdout_sources=["Znarfran/CADMA"])


def test_data_loader_workers_draw_their_own_augmentations():
    from operators.input.preprocessing import Preprocessing
    from training.members import TensorImages

    cfg = TrainConfig(augment={"p_noise": 1.0, "flip_prob": 0.0, "rotate_range_deg": 0.0})
    ds = TensorImages(torch.full((1, 1, 16, 16), 128, dtype=torch.uint8), np.zeros((1, 2), np.float32),
                      Preprocessing(size=16), augment=True, config=cfg, seed=0)
    first = ds[0][0]
    ds.reseed(0)
    assert torch.equal(ds[0][0], first)
    ds.reseed(1)
    assert not torch.equal(ds[0][0], first)
