"""The class catalogue: the 25 body-part classes with their DICOM terms and SNOMED CT codes.

The table is data (``operators/data/classes.csv`` and ``combined_terms.csv``, from the project's
shared reference, PS3.16 terms); this module only reads and queries it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Iterable, Sequence

#: SNOMED CT coding scheme designator as used in DICOM code sequences.
SCT = "SCT"


@dataclass(frozen=True)
class AnatomyTerm:
    """A Body Part Examined term with its SNOMED CT code.

    Parameters
    ----------
    body_part_examined
        Defined term for (0018,0015), or ``None`` where the standard has none.
    sct_code, sct_meaning
        SNOMED CT code value and meaning for the Anatomic Region Sequence, or ``None``.
    """

    body_part_examined: str | None
    sct_code: str | None
    sct_meaning: str | None


@dataclass(frozen=True)
class BodyPartClass:
    """One class of the catalogue, in catalogue order."""

    name: str
    term: AnatomyTerm
    note: str = ""


class UnknownClassError(KeyError):
    """A class name that is not in the catalogue."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Catalogue:
    """The class catalogue, immutable and cheap to query.

    Parameters
    ----------
    classes
        The classes, in their canonical order (the order of model outputs).
    combined
        Terms for label pairs that DICOM names as one region (e.g. Thoracic + Lumbar Spine).
    """

    def __init__(
        self,
        classes: Sequence[BodyPartClass],
        combined: dict[frozenset[str], AnatomyTerm],
        regions: Sequence[tuple[frozenset[str], AnatomyTerm]] = (),
        neighbours: dict[str, Sequence[str]] | None = None,
    ):
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            raise ValueError("duplicate class names in catalogue")
        for key in [*combined, *(r for r, _ in regions)]:
            missing = set(key) - set(names)
            if missing:
                raise ValueError(f"combined term refers to unknown classes {sorted(missing)}")
        self.classes: tuple[BodyPartClass, ...] = tuple(classes)
        self.combined = dict(combined)
        self.regions = tuple(regions)
        self._by_key = {c.name.casefold(): c for c in self.classes}
        self._neighbours: dict[str, tuple[str, ...]] = {}
        for name, near in (neighbours or {}).items():
            unknown = {name, *near} - set(names)
            if unknown:
                raise ValueError(f"neighbours refer to unknown classes {sorted(unknown)}")
            self._neighbours[name] = tuple(near)
        for name, near in self._neighbours.items():
            for other in near:  # adjacency is symmetric: a table that says otherwise has a typo
                if name not in self._neighbours.get(other, ()):
                    raise ValueError(f"neighbours are not symmetric: {name} lists {other}, not the reverse")

    @classmethod
    def default(cls) -> "Catalogue":
        """The catalogue shipped with the project (read once per process)."""
        return _default_catalogue()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().casefold() in self._by_key

    def get(self, name: str) -> BodyPartClass:
        """The class of that name (case and surrounding space ignored).

        Raises
        ------
        UnknownClassError
            Naming the unknown class and the known ones.
        """
        try:
            return self._by_key[name.strip().casefold()]
        except KeyError:
            raise UnknownClassError(
                f"unknown class {name!r}; the catalogue has: {', '.join(self.names)}"
            ) from None

    def canonical(self, names: Iterable[str]) -> list[str]:
        """Canonical spelling of ``names``, de-duplicated, in catalogue order."""
        wanted = {self.get(n).name for n in names}
        return [n for n in self.names if n in wanted]

    def index(self, name: str) -> int:
        return self.names.index(self.get(name).name)

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Classes whose anatomy a film of ``name`` usually shows too (a wrist film shows the hand's
        base and the forearm's end), from ``operators/data/neighbours.csv``.

        Training uses them where a source names one part per film although the film shows more:
        the neighbours of the named part are neither positive nor negative for that film.
        """
        return self._neighbours.get(self.get(name).name, ())

    def term_for(self, labels: Iterable[str], probabilities: dict[str, float] | None = None) -> AnatomyTerm | None:
        """The single term that names a set of labels, or ``None`` when there is none.

        One label gives its own term; a pair that DICOM names as one region gives the combined
        term; several parts of one limb give the limb's parent term (UPPERLIMB, LOWERLIMB). For
        other mixes, given ``probabilities``, the most probable label's term names the image (DICOM
        has one Body Part Examined); without them there is no single term. Classes without an
        anatomy code (Others) have no term.
        """
        names = self.canonical(labels)
        term = self._joint_term(names)
        if term is None and probabilities and len(names) > 1:
            coded = [n for n in names if self.get(n).term.sct_code]
            if coded:
                return self._joint_term([max(coded, key=lambda n: probabilities.get(n, 0.0))])
        return term

    def _joint_term(self, names: list[str]) -> AnatomyTerm | None:
        if len(names) == 1:
            term = self.get(names[0]).term
            return term if (term.body_part_examined or term.sct_code) else None
        key = frozenset(names)
        if key in self.combined:
            return self.combined[key]
        for members, term in self.regions:
            if len(key) > 1 and key <= members:
                return term
        return None


def _read_csv(name: str) -> list[dict[str, str]]:
    with resources.files("operators").joinpath("data", name).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _none_if_blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


@cache
def _default_catalogue() -> Catalogue:
    classes = [
        BodyPartClass(
            name=row["class"].strip(),
            term=AnatomyTerm(
                _none_if_blank(row["body_part_examined"]),
                _none_if_blank(row["sct_code"]),
                _none_if_blank(row["sct_meaning"]),
            ),
            note=row.get("note", "") or "",
        )
        for row in _read_csv("classes.csv")
    ]
    names = [c.name for c in classes]
    combined: dict[frozenset[str], AnatomyTerm] = {}
    regions: list[tuple[frozenset[str], AnatomyTerm]] = []
    for row in _read_csv("combined_terms.csv"):
        term = AnatomyTerm(
            _none_if_blank(row["body_part_examined"]), _none_if_blank(row["sct_code"]), _none_if_blank(row["sct_meaning"])
        )
        span = _RANGE.search(row["labels"])
        if span:  # "upper-limb parts (Clavicles..Finger) mixed": a catalogue range, any mix of it
            first, last = names.index(span["first"]), names.index(span["last"])
            regions.append((frozenset(names[first : last + 1]), term))
        else:
            combined[frozenset(p.strip() for p in row["labels"].split("+"))] = term
    neighbours = {row["class"].strip(): [n.strip() for n in row["neighbours"].split("|") if n.strip()]
                  for row in _read_csv("neighbours.csv")}
    return Catalogue(classes, combined, regions, neighbours)


_RANGE = re.compile(r"\((?P<first>[^.()]+)\.\.(?P<last>[^.()]+)\)")
