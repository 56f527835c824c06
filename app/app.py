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

from operators.input.batching import iter_batches
from operators.model.ensemble import Ensemble
from operators.holoscan_operators import (
    MORE_INPUT,
    BodyPartClassifierOperator,
    DicomOutputsOperator,
    RadiographLoaderOperator,
    ResultsWriterOperator,
)
from operators.model.model_package import ModelPackageError, load_package
from operators.outputs.output_files import OutputFolderLock
from operators.pipeline import BatchFeed, Pipeline

from .settings import SECTION, Settings, existing_config_path

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
        package = load_package(resolve_model_path(context.model_path))
        ensemble = Ensemble(package, device=settings.device, stacker=settings.stacker, compile=settings.compile)
        log.info("model %s %s on %s; input %s; output %s", package.name, package.version, ensemble.device, input_path, output_path)
        sr_dir, corrected_dir = settings.folders(output_path)
        pipeline = Pipeline(ensemble, output_path, input_path, dicom_outputs=settings.dicom_outputs,
                            corrected=settings.corrected, keep_uids=settings.keep_uids, sr_dir=sr_dir,
                            corrected_dir=corrected_dir, workers=settings.workers, app_name=self.name,
                            app_version=self.version)
        self.run_status = pipeline.status
        feed = BatchFeed(iter_batches(input_path, package.preprocessing, settings.batch_size, settings.workers, settings.decode),
                         pipeline.status)

        loader = RadiographLoaderOperator(self, BooleanCondition(self, name=MORE_INPUT), feed=feed, name="radiograph_loader")
        classifier = BodyPartClassifierOperator(self, pipeline=pipeline, name="bodypart_classifier")
        dicom = DicomOutputsOperator(self, pipeline=pipeline, name="dicom_outputs")
        results = ResultsWriterOperator(self, pipeline=pipeline, name="results_writer")

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
        path = existing_config_path()
        if path is None:
            return Settings.load({})
        self.config(str(path))
        return Settings.load(self.kwargs(SECTION), config_name=str(path))
