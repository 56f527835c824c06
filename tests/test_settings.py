"""The app's settings: app.yaml's bodypart: section, BODYPART_* overrides, one clear error per wrong value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yaml

from app.settings import OPTIONS, Settings, SettingsError, config_path, existing_config_path, markdown_table
from tests.conftest import ROOT
from operators.input.batching import DecodeOptions, default_workers


def test_defaults_follow_the_machine():
    s = Settings.from_env({})
    assert (s.batch_size, s.workers, s.stacker, s.scheduler) == (16, default_workers(), None, "event")
    assert s.dicom_outputs and not s.keep_uids and not s.compile
    assert s.decode == DecodeOptions(gpu="auto" if torch.cuda.is_available() else "off", reduced_resolution=True)
    assert Settings.from_env({"BODYPART_DEVICE": "cpu"}).decode.gpu == "off"  # networks on the CPU: readers too


def test_values_are_read():
    s = Settings.from_env({"BODYPART_DEVICE": "cpu", "BODYPART_STACKER": "xgboost", "BODYPART_BATCH_SIZE": "4",
                           "BODYPART_WORKERS": "0", "BODYPART_KEEP_UIDS": "1", "BODYPART_DICOM_OUTPUTS": "0",
                           "BODYPART_COMPILE": "1", "BODYPART_SCHEDULER": "greedy", "BODYPART_GPU_DECODE": "off",
                           "BODYPART_REDUCED_DECODE": "0", "BODYPART_FOLLOW_LINKS": "1", "BODYPART_FILE_TIME_LIMIT": "30",
                           "BODYPART_CORRECTED": "all", "BODYPART_SR_FOLDER": "/var/holoscan/sr",
                           "BODYPART_DICOM_FOLDER": "copies"})
    assert s == Settings("cpu", "xgboost", 4, 0, DecodeOptions("off", reduced_resolution=False, follow_links=True, seconds_per_file=30.0),
                         keep_uids=True, dicom_outputs=False, corrected="all", sr_folder=Path("/var/holoscan/sr"),
                         dicom_folder=Path("copies"), compile=True, scheduler="greedy")
    assert s.folders(Path("/out")) == (Path("/var/holoscan/sr"), Path("/out/copies"))
    assert Settings.from_env({}).folders(Path("/out")) == (Path("/out/sr"), Path("/out/dicom"))
    assert Settings.from_env({"BODYPART_FILE_TIME_LIMIT": "0"}).decode.seconds_per_file is None  # 0: no limit


@pytest.mark.parametrize("name, value, message", [
    ("BODYPART_DEVICE", "tpu", "use cuda, cuda:N or cpu"),
    ("BODYPART_DEVICE", "cuda:x", "use cuda, cuda:N or cpu"),
    ("BODYPART_STACKER", "forest", "use logistic, xgboost or mean"),
    ("BODYPART_BATCH_SIZE", "sixteen", "not a whole number"),
    ("BODYPART_BATCH_SIZE", "0", "at least 1"),
    ("BODYPART_WORKERS", "-1", "at least 0"),
    ("BODYPART_KEEP_UIDS", "yes", "use 1 (on) or 0 (off)"),
    ("BODYPART_GPU_DECODE", "fast", "use auto, on or off"),
    ("BODYPART_REDUCED_DECODE", "off", "use 1 (on) or 0 (off)"),
    ("BODYPART_SCHEDULER", "multi", "use event or greedy"),
    ("BODYPART_FOLLOW_LINKS", "true", "use 1 (on) or 0 (off)"),
    ("BODYPART_FILE_TIME_LIMIT", "-5", "at least 0"),
])
def test_each_wrong_value_names_the_variable(name, value, message):
    with pytest.raises(SettingsError) as e:
        Settings.from_env({name: value})
    assert str(e.value).startswith(f"{name}={value!r}: ") and message in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_only_settings_fail_clearly_without_a_gpu():
    with pytest.raises(SettingsError, match="no CUDA device on this machine"):
        Settings.from_env({"BODYPART_DEVICE": "cuda"})
    with pytest.raises(SettingsError, match=r"BODYPART_GPU_DECODE='on': GPU decoding is unavailable here \(no CUDA device\)"):
        Settings.from_env({"BODYPART_GPU_DECODE": "on"})


def test_the_shipped_config_holds_every_setting_at_its_default():
    section = yaml.safe_load((ROOT / "app.yaml").read_text())["bodypart"]
    assert list(section) == [o.key for o in OPTIONS]
    assert Settings.load(section, env={}) == Settings.from_env({})
    assert config_path({}) == ROOT / "app.yaml"
    assert config_path({"HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml"}) == Path("/var/holoscan/app.yaml")


def test_a_named_config_that_is_not_a_file_is_one_clear_error(tmp_path):
    """The app and ``bodypart run`` both check the config through ``existing_config_path``."""
    missing = tmp_path / "site.yaml"
    with pytest.raises(SettingsError, match=f"config file {missing} .HOLOSCAN_CONFIG_PATH. does not exist"):
        existing_config_path({"HOLOSCAN_CONFIG_PATH": str(missing)})
    missing.write_text("bodypart: {}\n")
    assert existing_config_path({"HOLOSCAN_CONFIG_PATH": str(missing)}) == missing
    assert existing_config_path({}) == ROOT / "app.yaml"


def test_the_config_file_sets_values_and_the_environment_overrides_them():
    config = {"batch_size": 4, "workers": 0, "follow_links": True, "stacker": "mean", "file_time_limit": 0}
    s = Settings.load(config, env={"BODYPART_BATCH_SIZE": "8"})
    assert (s.batch_size, s.workers, s.decode.follow_links, s.stacker, s.decode.seconds_per_file) == (8, 0, True, "mean", None)
    assert Settings.load({"follow_links": "1"}, env={"BODYPART_FOLLOW_LINKS": ""}).decode.follow_links  # empty: not set


@pytest.mark.parametrize("config, message", [
    ({"batch_size": 0}, "app.yaml bodypart.batch_size: 0: must be at least 1"),
    ({"batch_size": True}, "app.yaml bodypart.batch_size: True: not a whole number"),
    ({"follow_links": "yes"}, "app.yaml bodypart.follow_links: 'yes': use 1 (on) or 0 (off)"),
    ({"scheduler": "multi"}, "app.yaml bodypart.scheduler: 'multi': use event or greedy"),
    ({"batchsize": 4}, "app.yaml: unknown setting bodypart.batchsize (known: device, stacker, batch_size"),
    (["batch_size"], "app.yaml: bodypart: must be a mapping of settings, got ['batch_size']"),
    ("ab", "app.yaml: bodypart: must be a mapping of settings, got 'ab'"),
])
def test_a_wrong_config_value_names_the_key(config, message):
    with pytest.raises(SettingsError) as e:
        Settings.load(config, env={})
    assert str(e.value).startswith(message)


def test_the_readme_table_is_generated_from_the_one_definition():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README settings table is stale: python -m app.settings --markdown"
    for option in OPTIONS:
        assert option.env in readme and option.flag in markdown_table()
