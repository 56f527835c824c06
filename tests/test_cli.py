"""The command line as a user meets it."""

from __future__ import annotations

import json
import subprocess
import sys

from app.cli import main


def test_help_explains_itself(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    for word in ("inspect", "demo", "run", "train", "map-context", "never modified"):
        assert word in text


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "app.cli", "inspect", "--help"], capture_output=True, text=True, check=True)
    assert "inputs.json" in out.stdout


def test_inspect_lists_every_corpus_file(corpus, tmp_path, capsys):
    assert main(["inspect", str(corpus), "-o", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "inputs.json").read_text())
    sources = {i["source"]: i for i in doc["instances"]}
    dicoms = {p.name for p in corpus.glob("*.dcm")}
    assert dicoms <= set(sources)
    assert all(sources[n]["status"] == "ready" for n in dicoms)
    assert sources["labels.csv"]["status"] == "failed"  # every input appears, even the CSV beside them
    assert (tmp_path / "contact_sheet.png").stat().st_size > 10_000
    assert "ready" in capsys.readouterr().out


def test_inspect_missing_input_is_a_clear_error(tmp_path, caplog):
    assert main(["inspect", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in caplog.text


def test_demo_runs_the_app_with_the_default_model_on_bundled_samples(tmp_path, capsys):
    """The README's first command: the shipped default package on the pydicom-data samples."""
    assert main(["demo", "-o", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "output/results.json").read_text())
    by_source = {i["source"]: i for i in doc["instances"]}
    assert by_source["not_a_radiograph_mr"]["status"] == "skipped"
    assert by_source["chest_cr_mono1_j2k.dcm"]["labels"] == ["Chest"]
    assert by_source["chest_cr_mono1_j2k.dcm"]["body_part_examined"] == "CHEST"
    assert "Lower leg" in by_source["leg_cr_mono1_j2k.dcm"]["labels"]
    assert (tmp_path / "output/results.png").is_file()
    assert "CHEST" in capsys.readouterr().out
