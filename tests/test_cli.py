"""The command line as a user meets it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.cli import main
from tests.conftest import read_results


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


@pytest.mark.slow
def test_demo_runs_the_app_with_the_default_model_on_bundled_samples(tmp_path, capsys):
    """The README's first command: the shipped default package on the pydicom-data samples."""
    assert main(["demo", "-o", str(tmp_path)]) == 0
    doc = read_results(tmp_path / "output")
    by_source = {i["source"]: i for i in doc["instances"]}
    assert by_source["not_a_radiograph_mr"]["status"] == "skipped"
    assert by_source["chest_cr_mono1_j2k.dcm"]["labels"] == ["Chest"]
    assert by_source["chest_cr_mono1_j2k.dcm"]["body_part_examined"] == "CHEST"
    assert "Lower leg" in by_source["leg_cr_mono1_j2k.dcm"]["labels"]
    assert (tmp_path / "output/results.png").is_file()
    assert "CHEST" in capsys.readouterr().out


def test_run_reads_the_config_file_and_its_flags_override_it(corpus, tiny_package, tmp_path, monkeypatch, caplog):
    """A MAP's config (HOLOSCAN_CONFIG_PATH) turns DICOM outputs off; `--dicom-outputs 1` turns them back on."""
    config = tmp_path / "site.yaml"
    config.write_text("bodypart:\n  dicom_outputs: false\n  batch_size: 2\n")
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(config))
    monkeypatch.delenv("BODYPART_DICOM_OUTPUTS", raising=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "leg.dcm").symlink_to(corpus / "wg04_RG3_J2KI.dcm")
    common = ["run", "-i", str(inputs), "-m", str(tiny_package), "--follow-links", "1"]
    monkeypatch.chdir(tmp_path)  # a relative config path means the file here, not beside the checkout
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", config.name)
    assert main(common + ["-o", str(tmp_path / "config")]) == 0
    assert read_results(tmp_path / "config")["summary"]["classified"] == 1 and not (tmp_path / "config/sr").exists()
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(config))
    assert main(common + ["-o", str(tmp_path / "flag"), "--dicom-outputs", "1"]) == 0
    assert len(list((tmp_path / "flag/sr").glob("*.dcm"))) == 2
    caplog.clear()
    assert main(common + ["-o", str(tmp_path / "bad"), "--batch-size", "0"]) == 2
    assert "BODYPART_BATCH_SIZE='0': must be at least 1" in caplog.text
    config.write_text("bodypart:\n  batchsize: 2\n")
    assert main(common + ["-o", str(tmp_path / "bad2")]) == 2
    assert f"{config}: unknown setting bodypart.batchsize" in caplog.text
    config.write_text("bodypart: [\n")
    assert main(common + ["-o", str(tmp_path / "bad3")]) == 2
    assert f"config file {config} is not valid YAML" in caplog.text
    config.write_text("- bodypart\n")
    assert main(common + ["-o", str(tmp_path / "bad4")]) == 2
    assert f"config file {config}: not a mapping of sections" in caplog.text
    # checked before the app starts (or a study is pulled): nothing written
    assert not any((tmp_path / name).exists() for name in ("bad", "bad2", "bad3", "bad4"))
