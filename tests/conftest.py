"""Shared fixtures: the real corpus beside the checkout, and DICOM twins written to temp folders."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BODYPART_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "data" / "dicom"
TRAIN = SHARED / "data" / "train"


def _require(path: Path) -> Path:
    if not path.exists():
        # A missing corpus is an error, not a skip: these tests are what proves the input stage.
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared beside the checkout (or BODYPART_SHARED)")
    return path


#: Fixtures that train a model: a test that uses one belongs to the slow tier.
SLOW_FIXTURES = {"tiny_run", "tiny_package", "train_dir"}


def pytest_collection_modifyitems(config, items):
    """Tiers: ``-m "not slow"`` is the fast unit tier; a test is slow when it trains a model
    (the fixtures above) or its module says so (``pytestmark``: whole-app runs, fuzzing)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


RESULTS_SCHEMA = json.loads((ROOT / "app/results.schema.json").read_text())


def read_results(out: Path) -> dict:
    """``OUT/results.json`` validated against the exact schema: every test that runs the app reads it so."""
    doc = json.loads((Path(out) / "results.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    return doc


def start_app_until_results(inputs: Path, out: Path, package: Path, lines: int, **env: str) -> subprocess.Popen:
    """Start ``python -m app`` and return it running once ``OUT/results.jsonl`` holds ``lines``
    results (or it ended, or 300 s passed): a run to interrupt with something already recorded."""
    proc = subprocess.Popen([sys.executable, "-m", "app", "-i", str(inputs), "-o", str(out), "-m", str(package)], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = Path(out) / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) >= lines:
            break
        time.sleep(0.2)
    return proc


def require_tool(name: str, package: str) -> str:
    """The path of a system tool; a test without it skips (fails under ``CI=true``, where ``.ci/run`` installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package {package}; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def corpus() -> Path:
    return _require(CORPUS)


@pytest.fixture(scope="session")
def corpus_labels(corpus) -> dict[str, list[str]]:
    with open(corpus / "labels.csv", newline="") as fh:
        return {row["file"]: row["labels"].split("|") for row in csv.DictReader(fh)}


@pytest.fixture(scope="session")
def train_dir() -> Path:
    return _require(TRAIN)


def write_subset_csv(train_dir: Path, folder: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A labels.csv with a few images of each class combination from the shared training set."""
    import random

    rows = list(csv.DictReader(open(train_dir / "labels.csv", newline="")))
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["labels"], []).append(r)
    rng = random.Random(seed)
    chosen = [r for group in by_label.values() for r in rng.sample(group, min(per_class, len(group)))]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "labels.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in chosen:
            w.writerow({**r, "file": str((train_dir / r["file"]).resolve())})
    return out


@pytest.fixture(scope="session")
def tiny_run(train_dir, corpus, tmp_path_factory) -> Path:
    """A real (tiny) training run: pretrained Lite0 at 64 px, a few steps. Its package is what the
    app tests load; it is small and fast, not accurate."""
    from training.config import TrainConfig
    from training.pipeline import run_training

    work = tmp_path_factory.mktemp("tiny_run")
    data = write_subset_csv(train_dir, work / "data")
    config = TrainConfig.load(ROOT / "training/configs/tiny.yaml")
    run_training(config, [data, corpus], work / "run")
    return work / "run"


@pytest.fixture(scope="session")
def tiny_package(tiny_run) -> Path:
    return tiny_run / "package"
