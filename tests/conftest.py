"""Shared fixtures: the real corpus beside the checkout, and DICOM twins written to temp folders."""

from __future__ import annotations

import csv
import os
from pathlib import Path

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
