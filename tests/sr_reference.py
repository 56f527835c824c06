"""The TID 1500 content built with highdicom's template classes: the reference that the app's
direct encoding (``operators/outputs/sr_content.py``) is compared with, item for item."""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from operators.catalogue import SCT, Catalogue
from operators.outputs.sr import MANUFACTURER, RADIOGRAPHY, Algorithm, ReportedImage


def _site(catalogue: Catalogue, name: str) -> hd.sr.FindingSite | None:
    term = catalogue.get(name).term
    return hd.sr.FindingSite(Code(term.sct_code, SCT, term.sct_meaning)) if term.sct_code else None


def reference_content(images: Sequence[ReportedImage], algorithm: Algorithm, catalogue: Catalogue) -> Dataset:
    """The root content item of the report, as highdicom's MeasurementReport builds it."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid, name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=algorithm.model_name,
        ),
    )
    groups = []
    for n, img in enumerate(images, start=1):
        measurements = []
        for name, p in img.probabilities.items():
            site = _site(catalogue, name)
            if site is None:
                continue
            measurements.append(hd.sr.Measurement(name=codes.DCM.Probability, value=float(p), unit=codes.UCUM.NoUnits,
                                                  finding_sites=[site]))
        sites = [s for s in (_site(catalogue, l) for l in img.labels) if s is not None]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"Body part, image {n}"),
            finding_type=codes.SCT.AnatomicalStructure,
            algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.model_name, version=algorithm.model_version,
                                                       parameters=list(algorithm.parameters)),
            finding_sites=sites or None,
            measurements=measurements or None,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.AnatomicalStructure, s.value) for s in sites] or None,
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                img.sop_class_uid, img.sop_instance_uid, None if img.frame is None else [img.frame + 1])],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=RADIOGRAPHY,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    return report[0]
