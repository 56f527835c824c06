"""The MONAI Deploy application: DICOM radiographs in, body parts out.

    input folder --> radiograph loader (select, decode, grey, preprocess; batches)
                 --> body-part classifier (CNN ensemble -> stacker -> thresholds)
                 --> results writer (results.json)

Paths come from ``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/
``HOLOSCAN_MODEL_PATH`` (as in a MAP); without a model path the packaged default model is used.
Options that MONAI Deploy's argument parser does not know come from the environment:
``BODYPART_DEVICE`` (cuda, cpu), ``BODYPART_BATCH_SIZE``, ``BODYPART_STACKER`` (logistic, xgboost, mean).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai.deploy.core import Application
from holoscan.conditions import BooleanCondition

from operators.catalogue import Catalogue
from operators.ensemble import Ensemble
from operators.holoscan_operators import (
    MORE_INPUT,
    BodyPartClassifierOperator,
    RadiographLoaderOperator,
    ResultsWriterOperator,
)
from operators.model_package import ModelPackageError, load_package
from operators.results import ModelInfo

log = logging.getLogger("bodypart")

#: The model package that ships with the app.
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"


def resolve_model_path(given: str | os.PathLike | None) -> Path:
    """``-m``/``HOLOSCAN_MODEL_PATH`` when it exists, else the default package shipped with the app."""
    if given and Path(given).exists():
        return Path(given)
    if given and (os.environ.get("HOLOSCAN_MODEL_PATH") or str(given) != "models"):
        raise ModelPackageError(f"model package {given}: does not exist")
    return DEFAULT_MODEL


class BodyPartApp(Application):
    """Radiograph body-part identifier (MONAI Deploy App SDK)."""

    name = "bodypart-xr"
    description = "Identifies the body part(s) shown in CR/DX radiographs and writes results.json"
    version = "0.1.0"

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        package = load_package(resolve_model_path(context.model_path))  # fails before any work starts
        ensemble = Ensemble(package, device=os.environ.get("BODYPART_DEVICE") or None, stacker=os.environ.get("BODYPART_STACKER") or None)
        batch_size = int(os.environ.get("BODYPART_BATCH_SIZE", "16"))
        log.info("model %s %s on %s; input %s; output %s", package.name, package.version, ensemble.device, input_path, output_path)

        loader = RadiographLoaderOperator(self, BooleanCondition(self, name=MORE_INPUT), input_path=input_path,
                                          preprocessing=package.preprocessing, batch_size=batch_size, name="radiograph_loader")
        classifier = BodyPartClassifierOperator(self, ensemble=ensemble, catalogue=Catalogue.default(), name="bodypart_classifier")
        results = ResultsWriterOperator(self, output_path=output_path, name="results_writer",
                                        run={"app": {"name": self.name, "version": self.version}, "input": str(input_path),
                                             "model": ModelInfo.of(ensemble).to_json()})

        self.add_flow(loader, classifier, {("batch", "batch")})
        self.add_flow(classifier, results, {("results", "results")})
