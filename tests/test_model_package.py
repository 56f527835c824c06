"""Model package: layout, verification and clear failures."""

from __future__ import annotations

import json
import shutil

import pytest

from operators.catalogue import Catalogue
from operators.model.model_package import ModelPackageError, load_package


def test_package_has_bundle_layout_and_loads(tiny_package):
    for rel in ("configs/metadata.json", "models/efficientnet_lite0.pt", "stackers/logistic.json", "stackers/xgboost.json", "docs/model_card.md"):
        assert (tiny_package / rel).is_file(), rel
    p = load_package(tiny_package)
    assert list(p.classes) == Catalogue.default().names
    assert set(p.trained_classes) < set(p.classes)  # some classes have no training data at all
    assert "Sinus" not in p.trained_classes and "Chest" in p.trained_classes
    meta = p.metadata
    for key in ("name", "version", "preprocessing", "members", "stacker", "training_data", "metrics", "class_counts"):
        assert key in meta, key
    assert set(meta["stacker"]["calibrations"]) == {"mean", "logistic", "xgboost"}
    assert p.thresholds == meta["stacker"]["calibrations"][meta["stacker"]["kind"]]["thresholds"]
    assert all(0 < t < 1 for c in p.calibrations.values() for t in c.thresholds.values())
    assert len(p.checksum) == 64


def _copy(src, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst)
    return dst


def test_damaged_weights_fail_with_checksum_message(tiny_package, tmp_path):
    pkg = _copy(tiny_package, tmp_path)
    with open(pkg / "models/efficientnet_lite0.pt", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelPackageError, match="checksum mismatch for models/efficientnet_lite0.pt"):
        load_package(pkg)


@pytest.mark.parametrize("damage,message", [
    (lambda p: (p / "configs/metadata.json").unlink(), "missing configs/metadata.json"),
    (lambda p: (p / "configs/metadata.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "stackers/logistic.json").unlink(), "missing file stackers/logistic.json"),
    (lambda p: _edit(p, classes=["Chest", "Knee"]), "class list differs"),
    (lambda p: _edit(p, classes=Catalogue.default().names[:-1] + ["Tail"]), "unknown: Tail"),
    (lambda p: _edit(p, format_version=99), "format version 99"),
    (lambda p: _edit(p, members=[]), "no members"),
])
def test_broken_packages_say_what_is_wrong(tiny_package, tmp_path, damage, message):
    pkg = _copy(tiny_package, tmp_path)
    damage(pkg)
    with pytest.raises(ModelPackageError, match=message):
        load_package(pkg)


def test_missing_package_folder(tmp_path):
    with pytest.raises(ModelPackageError, match="not a folder"):
        load_package(tmp_path / "nowhere")


def _edit(pkg, **changes):
    meta = json.loads((pkg / "configs/metadata.json").read_text())
    meta.update(changes)
    (pkg / "configs/metadata.json").write_text(json.dumps(meta))
