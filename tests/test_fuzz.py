"""A seeded few hundred mutated copies of the real corpus through the input stage and the app.

``benchmarks/fuzz.py`` runs as many as you like (10,000+: the table in the README); this is the
bounded CI subset. Every mutant must end as ``classified``/``skipped``/``failed`` with a one-line
reason, with no crash of the run, no hang and bounded memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.fuzz import PeakMemory, check_outcomes
from benchmarks.mutations import MUTATIONS, write_mutants
from operators.input.batching import DecodeOptions, iter_prepared
from operators.input.preprocessing import Preprocessing
from tests.conftest import ROOT, read_results

pytestmark = pytest.mark.slow  # runs the app, trains or fuzzes: not in the fast tier

SEED = 20261201
COUNT = 300  # 30 of each kind


@pytest.fixture(scope="module")
def mutants(corpus, tmp_path_factory) -> tuple[Path, list[tuple[Path, str, str]]]:
    folder = tmp_path_factory.mktemp("mutants")
    return folder, write_mutants(sorted(corpus.glob("*.dcm")), folder, COUNT, seed=SEED)


def test_mutations_are_seeded_and_cover_every_kind(corpus, mutants, tmp_path):
    folder, files = mutants
    assert Counter(kind for _, kind, _ in files) == {kind: COUNT // len(MUTATIONS) for kind in MUTATIONS}
    again = write_mutants(sorted(corpus.glob("*.dcm")), tmp_path, 20, seed=SEED)
    for (a, _, _), (b, _, _) in zip(files, again):
        assert a.read_bytes() == b.read_bytes()  # the same seed, the same bytes: a failure can be replayed


def test_every_mutant_gets_one_outcome_with_a_one_line_reason_and_memory_stays_bounded(mutants):
    folder, files = mutants
    with PeakMemory() as mem:
        items = list(iter_prepared(folder, Preprocessing(), workers=2, decode=DecodeOptions()))
    problems, outcomes = check_outcomes(files, items, folder)
    assert not problems, problems[:20]
    statuses = Counter(status for status, _ in outcomes.values())
    assert statuses["failed"] > COUNT // 3 and statuses["classified"] > 0, statuses  # the mutations bite, not all
    # the bombs (60,000 x 60,000 pixels, 10,000 frames, 4 GB Pixel Data) are refused before allocation:
    # no reader comes near their decoded size (the readers' data limit would stop one that tried)
    assert mem.peak_child < 1.5 * 2**30, f"a reader reached {mem.peak_child / 2**20:.0f} MB"


def test_the_app_completes_on_mutants_and_lists_every_one(mutants, tiny_package, tmp_path):
    folder, files = mutants
    subset = tmp_path / "in"
    subset.mkdir()
    chosen = files[:: 5]  # 60 files, every kind
    for path, _, _ in chosen:
        os.link(path, subset / path.name)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "-i", str(subset), "-o", str(out), "-m", str(tiny_package)],
                          cwd=ROOT, env={**os.environ, "BODYPART_WORKERS": "2"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    doc = read_results(out)
    assert doc["complete"] is True and doc["interrupted_reason"] is None
    by_source: dict[str, list[dict]] = {}
    for record in doc["instances"]:
        by_source.setdefault(record["source"], []).append(record)
    assert set(by_source) == {p.name for p, _, _ in chosen}
    for source, records in by_source.items():
        assert len({r["status"] for r in records}) == 1, (source, records)
        for r in records:
            assert r["status"] in ("classified", "skipped", "failed"), r
            if r["status"] != "classified":
                assert r["reason"] and "\n" not in r["reason"], r
