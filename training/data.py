"""Labelled data in the layouts users have, read through the same input stage as inference.

Layouts
-------
- ``csv``: a CSV with an image or DICOM path column (``file``/``path``/``image``) and ``labels``
  holding ``|``-separated class names (optional ``source`` and ``license`` columns), paths
  relative to the CSV (as ``shared/data/train/labels.csv``);
- ``unifesp``: the UNIFESP X-ray Body Part Classification layout, a ``train.csv`` with
  ``SOPInstanceUID`` and ``Target`` (space-separated class ids 0-21 in that dataset's
  alphabetical order) beside a folder tree of DICOMs named by SOP Instance UID;
- ``folders``: one folder per class name, images or DICOMs inside.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from operators.catalogue import Catalogue
from operators.input.preprocessing import IMAGE_SUFFIXES, read_image_file
from operators.input.grey import DEFAULT_MAX_SIDE

#: The 22 classes of the UNIFESP Kaggle set, in its (alphabetical) id order 0-21.
from operators.input.radiograph import read_file

#: The 22 classes of the UNIFESP Kaggle set, in its (alphabetical) id order 0-21.
UNIFESP_CLASSES = (
    "Abdomen", "Ankle", "Cervical Spine", "Chest", "Clavicles", "Elbow", "Feet", "Finger", "Forearm", "Hand",
    "Hip", "Knee", "Lower leg", "Lumbar Spine", "Others", "Pelvis", "Shoulder", "Sinus", "Skull", "Thigh",
    "Thoracic Spine", "Wrist",
)


class DataError(ValueError):
    """Labelled data that cannot be used as given; the message names the file and row."""


@dataclass(frozen=True)
class Sample:
    path: Path
    labels: tuple[str, ...]
    source: str = "unknown"
    license: str = ""


def load_samples(path: Path, layout: str | None = None, catalogue: Catalogue | None = None) -> list[Sample]:
    """Read a labelled data set; ``layout`` is guessed when not given."""
    catalogue = catalogue or Catalogue.default()
    path = Path(path)
    layout = layout or guess_layout(path)
    if layout == "csv":
        return _from_csv(path if path.is_file() else path / "labels.csv", catalogue)
    if layout == "unifesp":
        return _from_unifesp(path if path.is_dir() else path.parent, catalogue)
    if layout == "folders":
        return _from_folders(path, catalogue)
    raise DataError(f"unknown data layout {layout!r} (csv, unifesp, folders)")


def guess_layout(path: Path) -> str:
    if path.is_file() and path.suffix == ".csv":
        return "unifesp" if path.name == "train.csv" and _has_column(path, "Target") else "csv"
    if (path / "train.csv").is_file() and _has_column(path / "train.csv", "Target"):
        return "unifesp"
    if (path / "labels.csv").is_file():
        return "csv"
    if path.is_dir():
        return "folders"
    raise DataError(f"{path}: no labelled data found (labels.csv, train.csv or class folders)")


def _has_column(path: Path, name: str) -> bool:
    with open(path, newline="") as fh:
        return name in (next(csv.reader(fh), []) or [])


def _canonical(labels: Sequence[str], catalogue: Catalogue, where: str) -> tuple[str, ...]:
    unknown = [l for l in labels if l not in catalogue]
    if unknown:
        raise DataError(f"{where}: unknown class name(s) {unknown}; known: {', '.join(catalogue.names)}")
    if not labels:
        raise DataError(f"{where}: no labels")
    return tuple(catalogue.canonical(labels))


def _from_csv(csv_path: Path, catalogue: Catalogue) -> list[Sample]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found")
    samples = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        path_col = next((c for c in ("file", "path", "image", "filename") if c in cols), None)
        if path_col is None or "labels" not in cols:
            raise DataError(f"{csv_path}: needs a path column (file/path/image) and a labels column; has {cols}")
        for n, row in enumerate(reader, start=2):
            labels = [l.strip() for l in row["labels"].split("|") if l.strip()]
            samples.append(Sample(
                path=(csv_path.parent / row[path_col]).resolve(),
                labels=_canonical(labels, catalogue, f"{csv_path}:{n}"),
                source=row.get("source") or csv_path.parent.name,
                license=row.get("license") or "",
            ))
    return samples


def _from_unifesp(folder: Path, catalogue: Catalogue) -> list[Sample]:
    table = folder / "train.csv"
    by_uid = {p.stem.removesuffix("-c"): p for p in folder.rglob("*.dcm")}
    samples = []
    with open(table, newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            uid = row["SOPInstanceUID"].strip()
            try:
                ids = [int(t) for t in row["Target"].split()]
                labels = [UNIFESP_CLASSES[i] for i in ids]
            except (ValueError, IndexError):
                raise DataError(f"{table}:{n}: Target {row['Target']!r} is not space-separated ids 0-21") from None
            if uid not in by_uid:
                raise DataError(f"{table}:{n}: no DICOM file for SOPInstanceUID {uid} under {folder}")
            samples.append(Sample(by_uid[uid], _canonical(labels, catalogue, f"{table}:{n}"), source="UNIFESP"))
    return samples


def _from_folders(folder: Path, catalogue: Catalogue) -> list[Sample]:
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = sub.name.replace("_", " ")
        labels = _canonical([l for l in name.split("+")], catalogue, f"folder {sub}")
        for f in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            samples.append(Sample(f, labels, source=folder.name))
    if not samples:
        raise DataError(f"{folder}: no class folders with files")
    return samples


def load_grey(path: Path, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """A training image as the input stage gives it: DICOM through the radiograph reader, image files
    through the same stretch."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image_file(path, max_side)
    read = read_file(path, max_side=max_side)
    if read.outcome is not None:
        raise DataError(read.outcome.one_line())
    return read.radiographs[0].image


def targets(samples: Sequence[Sample], catalogue: Catalogue) -> np.ndarray:
    y = np.zeros((len(samples), len(catalogue)), np.float32)
    for i, s in enumerate(samples):
        for l in s.labels:
            y[i, catalogue.index(l)] = 1
    return y
