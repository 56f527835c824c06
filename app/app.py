"""The MONAI Deploy application: DICOM radiographs in, body parts out.

    input folder --> radiograph loader (select, decode, grey, preprocess; batches)
                 --> body-part classifier (CNN ensemble -> stacker -> thresholds)
                 --> DICOM outputs (corrected copies in OUT/dicom, SR per study in OUT/sr)
                 --> results writer (OUT/results.json)

Paths come from ``-i/-o/-m`` or ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/
``HOLOSCAN_MODEL_PATH`` (as in a MAP); without a model path the packaged default model is used.
Run settings come from the ``bodypart:`` section of the app's YAML config (``app.yaml``, or
``HOLOSCAN_CONFIG_PATH`` in a MAP), each overridden by its ``BODYPART_*`` environment variable;
see :data:`app.settings.OPTIONS`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai.deploy.core import Application
from holoscan.conditions import BooleanCondition
from holoscan.schedulers import EventBasedScheduler

from operators.catalogue import Catalogue
from operators.ensemble import Ensemble
from operators.holoscan_operators import (
    MORE_INPUT,
    BodyPartClassifierOperator,
    DicomOutputsOperator,
    RadiographLoaderOperator,
    ResultsWriterOperator,
)
from operators.model_package import ModelPackageError, load_package
from operators.dicom_outputs import DicomOutputs
from operators.output_files import OutputFolderLock
from operators.results import ModelInfo
from operators.run_status import RunStatus
from operators.sr import Algorithm

from .settings import SECTION, Settings, SettingsError, config_path

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


class InputPathError(FileNotFoundError):
    """The input path given to the app does not exist."""


class BodyPartApp(Application):
    """Radiograph body-part identifier (MONAI Deploy App SDK)."""

    name = "bodypart-xr"
    description = "Identifies the body part(s) shown in CR/DX radiographs and writes results.json"
    version = "0.1.0"

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        settings = self._settings()  # fails, like the package, before any work starts
        if not os.path.lexists(input_path):
            raise InputPathError(f"input {input_path} does not exist")
        # One run per output folder; also proves the folder writable before any work.
        self.output_lock = OutputFolderLock(output_path).acquire()
        self.run_status = run = RunStatus()
        package = load_package(resolve_model_path(context.model_path))
        ensemble = Ensemble(package, device=settings.device, stacker=settings.stacker, compile=settings.compile)
        log.info("model %s %s on %s; input %s; output %s", package.name, package.version, ensemble.device, input_path, output_path)

        loader = RadiographLoaderOperator(self, BooleanCondition(self, name=MORE_INPUT), input_path=input_path, run=run,
                                          preprocessing=package.preprocessing, batch_size=settings.batch_size,
                                          workers=settings.workers, decode=settings.decode, name="radiograph_loader")
        catalogue = Catalogue.default()
        classifier = BodyPartClassifierOperator(self, ensemble=ensemble, catalogue=catalogue, name="bodypart_classifier")
        algorithm = Algorithm(package.name, package.version, package.checksum, ensemble.stacker_kind, self.version)
        dicom = DicomOutputsOperator(self, name="dicom_outputs", run=run, outputs=DicomOutputs(
            output_path, algorithm, catalogue, keep_uids=settings.keep_uids,
            corrected=settings.dicom_outputs, reports=settings.dicom_outputs, workers=max(1, settings.workers)))
        results = ResultsWriterOperator(self, output_path=output_path, name="results_writer", run=run,
                                        run_info={"app": {"name": self.name, "version": self.version}, "input": str(input_path),
                                                  "model": ModelInfo.of(ensemble).to_json()})

        self.add_flow(loader, classifier, {("batch", "batch")})
        self.add_flow(classifier, dicom, {("results", "results")})
        self.add_flow(dicom, results, {("results", "results")})

        if settings.scheduler == "event":
            # Operators in their own threads: the networks (torch releases the GIL) run while the
            # writers of the previous batch and the reader hand-off go on.
            self.scheduler(EventBasedScheduler(self, worker_thread_number=3, stop_on_deadlock=True, name="scheduler"))

    def _settings(self) -> Settings:
        """The ``bodypart:`` section of the app's YAML config (``HOLOSCAN_CONFIG_PATH`` in a MAP),
        read the Holoscan way, with ``BODYPART_*`` variables overriding it."""
        path = config_path()
        if path is None:
            return Settings.load({})
        if not path.is_file():
            raise SettingsError(f"config file {path} (HOLOSCAN_CONFIG_PATH) does not exist")
        self.config(str(path))
        return Settings.load(self.kwargs(SECTION), config_name=str(path))
