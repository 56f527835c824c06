"""Shortcut tests: the shipped package must name the anatomy, not the look of a training source.

Metamorphic, on real corpus films (``../shared/data/dicom``) through the app's own reading and
preprocessing: the training hands were children's films at 100 px and the training knees tight
crops, so a model that learned "blur means hand" or "a crop means knee" changes its answer when a
film is degraded or cropped. These tests hold the shipped package (``app/models/default``, trained
with whole sources held out) to the same answer.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.app import DEFAULT_MODEL
from operators.model.ensemble import Ensemble
from operators.model.model_package import load_package
from operators.input.radiograph import read_file
from operators.testing.probes import crop, degrade


@pytest.fixture(scope="module")
def shipped():
    package = load_package(DEFAULT_MODEL)
    return package, Ensemble(package, device="cpu")  # its own TTA and decision rule


def _labels(shipped, image: np.ndarray) -> set[str]:
    package, ensemble = shipped
    pre = package.preprocessing
    x = pre.normalise(pre.square(image))[None]
    return set(ensemble.predict(x)[0].labels)


def _film(corpus, name: str) -> np.ndarray:
    read = read_file(corpus / name)
    assert read.outcome is None, read.outcome
    return read.radiographs[0].image


@pytest.mark.parametrize("name, part", [
    ("cr_hand_j2k.dcm", "Hand"),  # an adult hand at full resolution; the training hands were 100 px
    ("wg04_RG1_UNCR.dcm", "Chest"),
    ("dx_pelvis_ddh_1.dcm", "Pelvis"),
])
def test_a_degraded_film_keeps_its_labels(shipped, corpus, name, part):
    film = _film(corpus, name)
    whole, degraded = _labels(shipped, film), _labels(shipped, degrade(film))
    assert part in whole, f"{name}: {sorted(whole)}"
    assert degraded == whole, f"{name}: {sorted(whole)} at full resolution, {sorted(degraded)} at 100 px"


HIP = ("wg04_RG2_J2KR.dcm", "Hip", (0.15, 0.65), (0.3, 0.9))  # femoral head, acetabulum
ANKLE = ("wg04_RG3_J2KR.dcm", "Ankle", (0.68, 1.0), (0.25, 0.72))  # the ankle joint


@pytest.mark.parametrize("name, joint, rows, cols", [
    pytest.param(*HIP, id="hip"),
    pytest.param(*ANKLE, id="ankle"),
])
def test_a_tight_crop_of_a_joint_gets_its_label_and_the_whole_film_keeps_it(shipped, corpus, name, joint, rows, cols):
    film = _film(corpus, name)
    cropped, whole = _labels(shipped, crop(film, rows, cols)), _labels(shipped, film)
    assert joint in cropped, f"{name}: crop of the {joint.lower()} labelled {sorted(cropped)}"
    assert joint in whole, f"{name}: whole film labelled {sorted(whole)}"
