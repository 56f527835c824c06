"""UIDs of the app's outputs, derived from what they describe, so that a re-run writes the same objects.

A PACS keeps one copy of a SOP Instance UID: the same model on the same study gives the same SR
and corrected-copy UIDs, so running again (a retried workflow, a re-sent study) adds nothing. A
new model (another checksum) gives new UIDs, and its SR names the earlier one as predecessor.

UIDs are in the ``2.25`` form (PS3.5 B.2: a UUID as a decimal integer) with a name-based UUID
(RFC 4122 version 5, ITU-T X.667) of the named sources, so no organisation root is needed and
none can collide with another product's. (pydicom's ``generate_uid(prefix=None)`` is random
whatever its entropy sources: it cannot derive.)
"""

from __future__ import annotations

import re
import uuid

from pydicom.uid import UID

#: The UUID namespace of this product's derived UIDs.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/bodypart-xr/bodypart-xr/uids")


def derived_uid(kind: str, model_key: str, *sources: str) -> UID:
    """The UID of output ``kind`` (``"sr-instance"``, ``"corrected-instance"``, ...) made by the model
    and decision settings ``model_key`` names (:func:`model_key`) from ``sources`` (source UIDs, in
    a fixed order)."""
    if not model_key:
        raise ValueError("a derived UID needs the model's key")
    name = "\x00".join([kind, model_key, *sources])  # a separator no UID holds: no two lists give one name
    return UID(f"2.25.{uuid.uuid5(NAMESPACE, name).int}")


def uid_file_name(uid: str) -> str:
    """``uid`` as a file or folder name: anything but digits, letters and dots becomes ``_``
    (archives hold invalid UIDs, some with slashes)."""
    return re.sub(r"[^0-9A-Za-z.]", "_", uid)


def model_key(checksum: str, stacker: str) -> str:
    """What decides the labels: the package (its checksum) and the stacker a run chose. Another
    stacker can give other labels, so its outputs must not share UIDs with this one's."""
    return f"{checksum}/{stacker}"
