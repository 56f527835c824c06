"""Writing a model package: the exporter training uses (the app only reads packages).

The layout and the checks that loading makes are in :mod:`operators.model.model_package`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from operators.input.preprocessing import Preprocessing
from operators.model.model_package import (
    FORMAT,
    FORMAT_VERSION,
    FORMAT_VERSION_TTA,
    METADATA,
    Decision,
    Member,
    StackerCalibration,
    sha256_file,
)


def refresh_checksums(root: Path) -> None:
    """Recompute the checksums in the metadata after an intended edit (e.g. the model card)."""
    meta_path = Path(root) / METADATA
    meta = json.loads(meta_path.read_text())
    meta["files"] = {rel: sha256_file(Path(root) / rel) for rel in meta["files"]}
    meta_path.write_text(json.dumps(meta, indent=2))


def write_package(
    root: Path,
    *,
    name: str,
    version: str,
    classes: list[str],
    trained_classes: list[str],
    preprocessing: Preprocessing,
    members: list[tuple[Member, dict[str, torch.Tensor]]],
    stackers: dict[str, dict[str, Any]],
    default_stacker: str,
    calibrations: dict[str, StackerCalibration],
    decision: Decision = Decision(),
    tta: bool = False,
    extra: dict[str, Any] | None = None,
    model_card: str | None = None,
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a package folder (created) with checksums; return its root.

    ``calibrations`` holds the thresholds (and temperatures) of each stacker the package offers;
    the default stacker must have one.

    ``tta``: the stackers and thresholds were fitted on members averaged over each image and its
    flips, so the app must classify that way too (``inference.tta``).

    ``weights_dtype=torch.float16`` halves the size on disk; weights are cast back to float32 on
    loading (the difference in outputs is far below the decision margins).
    """
    if default_stacker not in calibrations:
        raise ValueError(f"no thresholds for the default stacker {default_stacker!r}")
    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    files: dict[str, str] = {}
    member_meta = []
    for member, state in members:
        rel = f"models/{member.name}.pt"
        torch.save({k: (v.to(weights_dtype) if v.is_floating_point() else v) for k, v in state.items()}, root / rel)
        files[rel] = sha256_file(root / rel)
        member_meta.append({"name": member.name, "arch": member.arch, "weights": rel, "metrics": member.metrics})
    stacker_files = {}
    if stackers:
        (root / "stackers").mkdir(exist_ok=True)
    for kind, data in stackers.items():
        rel = f"stackers/{kind}.json"
        (root / rel).write_text(json.dumps(data))
        files[rel] = sha256_file(root / rel)
        stacker_files[kind] = rel
    if model_card is not None:
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs/model_card.md").write_text(model_card)
        files["docs/model_card.md"] = sha256_file(root / "docs/model_card.md")
    import monai

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION_TTA if tta else FORMAT_VERSION,
        "name": name,
        "version": version,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "task": "multilabel body-part classification of plain radiographs",
        "classes": classes,
        "trained_classes": trained_classes,
        "preprocessing": preprocessing.to_json(),
        "members": member_meta,
        "stacker": {"kind": default_stacker, "files": stacker_files,
                    "calibrations": {kind: c.to_json() for kind, c in calibrations.items()}},
        "decision": decision.to_json(),
        "inference": {"tta": bool(tta)},
        "files": files,
        **(extra or {}),
    }
    (root / METADATA).write_text(json.dumps(meta, indent=2))
    return root
