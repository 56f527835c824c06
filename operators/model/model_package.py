"""The model package: a folder in MONAI bundle layout that the app loads with ``-m``.

::

    MODELS/
      configs/metadata.json    name, version, classes, trained classes, preprocessing, members,
                               stackers, thresholds, decision rule, inference (tta, precision),
                               data sources and licences, metrics, checksums
      models/<member>.pt       member weights (state dicts for the network factory)
      stackers/<kind>.json     logistic-regression coefficients / XGBoost models, as JSON
      docs/model_card.md       what it knows, what it does not, how well, from which data

Loading checks everything before any work starts and fails with one clear message. Training
writes packages with :func:`training.export.write_package`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..catalogue import Catalogue
from ..input.preprocessing import Preprocessing
from .decision import Decision
from .stacking import MeanStacker, stacker_from_json

FORMAT = "bodypart-model-package"
FORMAT_VERSION = 1
#: Format 2 adds ``inference.tta``, which a reader must honour: a package that needs the flips is
#: written as 2, so that an app from before refuses it instead of classifying it without them.
FORMAT_VERSION_TTA = 2
READABLE_FORMAT_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_TTA)
METADATA = Path("configs/metadata.json")


class ModelPackageError(RuntimeError):
    """A model package that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Member:
    """One network of the ensemble."""

    name: str
    arch: str
    weights: str  # relative path in the package
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StackerCalibration:
    """What was tuned on validation for one stacker: per-class thresholds and, optionally,
    temperatures (applied to the stacker's probabilities before the thresholds).

    Thresholds tuned for one stacker do not fit another's probabilities, so a package holds one
    of these per stacker it offers, and the app refuses a stacker without one.
    """

    thresholds: dict[str, float]
    temperatures: dict[str, float] | None = None

    def __post_init__(self):
        bad = {c: t for c, t in self.thresholds.items() if not 0.0 < float(t) < 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1): {bad}")
        if self.temperatures is not None:
            bad = {c: t for c, t in self.temperatures.items() if not float(t) > 0.0}
            if bad:
                raise ValueError(f"temperatures must be positive: {bad}")

    def to_json(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds, **({"temperatures": self.temperatures} if self.temperatures else {})}


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, verified package description (weights are loaded by the ensemble)."""

    root: Path
    name: str
    version: str
    classes: tuple[str, ...]
    trained_classes: tuple[str, ...]
    preprocessing: Preprocessing
    members: tuple[Member, ...]
    stacker_kind: str
    stacker_files: dict[str, str]
    calibrations: dict[str, StackerCalibration]  # per stacker kind
    decision: Decision
    tta: bool  # members average each image and its flips (how the stackers and thresholds were fitted)
    metadata: dict[str, Any]
    checksum: str  # sha256 over the metadata file, which holds every file's sha256

    @property
    def known_mask(self) -> list[bool]:
        trained = set(self.trained_classes)
        return [c in trained for c in self.classes]

    def member_path(self, member: Member) -> Path:
        return self.root / member.weights

    def load_state_dict(self, member: Member) -> dict[str, torch.Tensor]:
        return torch.load(self.member_path(member), map_location="cpu", weights_only=True)

    @property
    def thresholds(self) -> dict[str, float]:
        """The thresholds of the package's own stacker."""
        return self.calibration().thresholds

    def calibration(self, kind: str | None = None) -> StackerCalibration:
        """Thresholds (and temperatures) tuned for stacker ``kind``.

        Raises
        ------
        ModelPackageError
            The package holds none for that stacker.
        """
        kind = kind or self.stacker_kind
        if kind not in self.calibrations:
            raise ModelPackageError(f"model package {self.root}: no thresholds were tuned for the {kind!r} stacker "
                                    f"(tuned for: {', '.join(sorted(self.calibrations)) or 'none'}); choose one of those")
        return self.calibrations[kind]

    def load_stacker(self, kind: str | None = None):
        kind = kind or self.stacker_kind
        if kind == "mean":
            return MeanStacker()
        if kind not in self.stacker_files:
            raise ModelPackageError(f"{self.root}: no {kind!r} stacker in the package (has: mean, {', '.join(self.stacker_files)})")
        data = json.loads((self.root / self.stacker_files[kind]).read_text())
        return stacker_from_json(data)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_package(root: Path, catalogue: Catalogue | None = None) -> ModelPackage:
    """Read and verify a package folder.

    Raises
    ------
    ModelPackageError
        Missing folder or files, malformed metadata, wrong format version, checksum mismatch,
        classes unknown to the catalogue, members without weights.
    """
    root = Path(root)
    catalogue = catalogue or Catalogue.default()
    where = f"model package {root}"
    if not root.is_dir():
        raise ModelPackageError(f"{where}: not a folder")
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise ModelPackageError(f"{where}: missing {METADATA}")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{where}: {METADATA} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise ModelPackageError(f"{where}: not a {FORMAT} (format={meta.get('format')!r})")
    if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ModelPackageError(f"{where}: format version {meta.get('format_version')} but this app reads "
                                f"{' and '.join(map(str, READABLE_FORMAT_VERSIONS))}")
    try:
        classes = tuple(meta["classes"])
        trained = tuple(meta["trained_classes"])
        members = tuple(Member(m["name"], m["arch"], m["weights"], m.get("metrics", {})) for m in meta["members"])
        preprocessing = Preprocessing.from_json(meta["preprocessing"])
        files = dict(meta["files"])
        stacker = meta.get("stacker", {"kind": "mean"})
    except (KeyError, TypeError, ValueError) as e:
        raise ModelPackageError(f"{where}: metadata incomplete or malformed ({type(e).__name__}: {e})") from None
    if list(classes) != catalogue.names:
        unknown = [c for c in classes if c not in catalogue]
        raise ModelPackageError(
            f"{where}: class list differs from the catalogue"
            + (f" (unknown: {', '.join(unknown)})" if unknown else " (order or count)")
        )
    if not set(trained) <= set(classes):
        raise ModelPackageError(f"{where}: trained classes not in the class list: {sorted(set(trained) - set(classes))}")
    if not members:
        raise ModelPackageError(f"{where}: no members")
    for rel in [m.weights for m in members] + list(stacker.get("files", {}).values()):
        if rel not in files:
            raise ModelPackageError(f"{where}: {rel} has no checksum in metadata")
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            raise ModelPackageError(f"{where}: missing file {rel}")
        if sha256_file(path) != digest:
            raise ModelPackageError(f"{where}: checksum mismatch for {rel} (file damaged or changed)")
    try:
        calibrations = _calibrations(meta, stacker, classes)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelPackageError(f"{where}: thresholds malformed ({type(e).__name__}: {e})") from None
    try:
        decision = Decision(**meta.get("decision", {}))
    except (TypeError, ValueError) as e:
        raise ModelPackageError(f"{where}: decision settings malformed ({e})") from None
    inference = meta.get("inference") or {}
    if not isinstance(inference, dict):
        raise ModelPackageError(f"{where}: inference settings malformed (not a mapping: {inference!r})")
    tta = inference.get("tta", False)  # packages written before inference.tta: no flips
    if not isinstance(tta, bool):
        raise ModelPackageError(f"{where}: inference.tta must be true or false, got {tta!r}")
    return ModelPackage(
        root=root,
        name=str(meta["name"]),
        version=str(meta["version"]),
        classes=classes,
        trained_classes=trained,
        preprocessing=preprocessing,
        members=members,
        stacker_kind=str(stacker.get("kind", "mean")),
        stacker_files=dict(stacker.get("files", {})),
        calibrations=calibrations,
        decision=decision,
        tta=tta,
        metadata=meta,
        checksum=sha256_file(meta_path),
    )


def _calibrations(meta: dict[str, Any], stacker: dict[str, Any], classes: tuple[str, ...]) -> dict[str, StackerCalibration]:
    """Per-stacker thresholds and temperatures; packages written before they were per stacker hold
    one set (``thresholds``, ``calibration``) for their own stacker only."""
    def for_classes(values: dict[str, Any] | None) -> dict[str, float] | None:
        return None if values is None else {c: float(values[c]) for c in classes}

    if "calibrations" in stacker:
        return {kind: StackerCalibration(for_classes(c["thresholds"]), for_classes(c.get("temperatures")))
                for kind, c in stacker["calibrations"].items()}
    kind = str(stacker.get("kind", "mean"))
    legacy = meta.get("calibration", {})
    temperatures = legacy.get("temperature") if legacy.get("stacker", kind) == kind else None
    return {kind: StackerCalibration(for_classes(meta["thresholds"]), for_classes(temperatures))}
