"""The app's BODYPART_* settings: defaults, and one clear error per wrong value before any work."""

from __future__ import annotations

import pytest
import torch

from app.settings import Settings, SettingsError
from operators.batching import DecodeOptions, default_workers


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
                           "BODYPART_REDUCED_DECODE": "0", "BODYPART_FOLLOW_LINKS": "1", "BODYPART_FILE_TIME_LIMIT": "30"})
    assert s == Settings("cpu", "xgboost", 4, 0, DecodeOptions("off", False, True, 30.0), True, False, True, "greedy")
    assert Settings.from_env({"BODYPART_FILE_TIME_LIMIT": "0"}).decode.seconds_per_file is None  # 0: no limit


@pytest.mark.parametrize("name, value, message", [
    ("BODYPART_DEVICE", "tpu", "use cuda or cpu"),
    ("BODYPART_STACKER", "forest", "use logistic, xgboost or mean"),
    ("BODYPART_BATCH_SIZE", "sixteen", "not a whole number"),
    ("BODYPART_BATCH_SIZE", "0", "at least 1"),
    ("BODYPART_WORKERS", "-1", "at least 0"),
    ("BODYPART_KEEP_UIDS", "yes", "use 1 (on) or 0 (off)"),
    ("BODYPART_GPU_DECODE", "fast", "use auto, on, off"),
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
    with pytest.raises(SettingsError, match=r"BODYPART_GPU_DECODE=on: GPU decoding is unavailable here \(no CUDA device\)"):
        Settings.from_env({"BODYPART_GPU_DECODE": "on"})
