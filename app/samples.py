"""Sample radiographs for the demo, taken from the ``pydicom-data`` package (MIT).

Nothing is downloaded: the package ships NEMA WG04 CR test images (a chest and a distal leg) and
a few non-radiographs, which show how the app skips what it does not classify.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: file in pydicom-data -> name in the demo folder (no .dcm on one, as archives often have).
SAMPLES = {
    "RG1_J2KR.dcm": "chest_cr_mono1_j2k.dcm",
    "RG3_J2KR.dcm": "leg_cr_mono1_j2k.dcm",
    "MR2_J2KR.dcm": "not_a_radiograph_mr",
}


def sample_source_dir() -> Path:
    try:
        import data_store  # the pydicom-data package's module
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the demo needs the 'pydicom-data' package: pip install pydicom-data") from e
    return Path(data_store.__file__).parent / "data"


def write_samples(folder: Path) -> Path:
    """Copy the demo inputs into ``folder`` (created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = sample_source_dir()
    for name, target in SAMPLES.items():
        shutil.copyfile(src / name, folder / target)
    return folder
