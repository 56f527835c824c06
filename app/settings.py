"""The app's options that MONAI Deploy's argument parser does not know, read from ``BODYPART_*``.

Read and checked once, before any work starts: a wrong value is one clear error naming the
variable, not a traceback halfway through a batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from operators.batching import DecodeOptions, default_workers
from operators.ensemble import pick_device
from operators.gpu_decoding import MODES as GPU_DECODE_MODES, unavailable_reason


class SettingsError(ValueError):
    """A ``BODYPART_*`` environment variable with a value the app cannot use."""


@dataclass(frozen=True)
class Settings:
    """Run options; see the README's table of environment variables."""

    device: str | None = None  # None: CUDA when present, else CPU
    stacker: str | None = None  # None: the package's
    batch_size: int = 16
    workers: int = 0
    decode: DecodeOptions = DecodeOptions()
    keep_uids: bool = False
    dicom_outputs: bool = True
    compile: bool = False
    scheduler: str = "event"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``env`` (default: ``os.environ``).

        Raises
        ------
        SettingsError
            Naming the variable, its value and what it accepts.
        """
        env = os.environ if env is None else env
        device = env.get("BODYPART_DEVICE") or None
        if device is not None:
            import torch

            if device.split(":")[0] not in ("cpu", "cuda"):
                raise SettingsError(f"BODYPART_DEVICE={device!r}: use cuda or cpu")
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise SettingsError(f"BODYPART_DEVICE={device!r}: no CUDA device on this machine (use cpu)")
        stacker = env.get("BODYPART_STACKER") or None
        if stacker not in (None, "logistic", "xgboost", "mean"):
            raise SettingsError(f"BODYPART_STACKER={stacker!r}: use logistic, xgboost or mean")
        on_cuda = pick_device(device).type == "cuda"
        # nvImageCodec in the readers where the networks run on CUDA: decoding is the bottleneck there.
        gpu_decode = env.get("BODYPART_GPU_DECODE") or ("auto" if on_cuda else "off")
        if gpu_decode not in GPU_DECODE_MODES:
            raise SettingsError(f"BODYPART_GPU_DECODE={gpu_decode!r}: use {', '.join(GPU_DECODE_MODES)}")
        if gpu_decode == "on" and (reason := unavailable_reason()):
            raise SettingsError(f"BODYPART_GPU_DECODE=on: GPU decoding is unavailable here ({reason})")
        time_limit = _int(env, "BODYPART_FILE_TIME_LIMIT", 120, minimum=0)
        decode = DecodeOptions(gpu=gpu_decode, gpu_device=device if device and device.startswith("cuda") else "cuda",
                               reduced_resolution=_flag(env, "BODYPART_REDUCED_DECODE", True),
                               follow_links=_flag(env, "BODYPART_FOLLOW_LINKS", False),
                               seconds_per_file=float(time_limit) if time_limit else None)
        scheduler = env.get("BODYPART_SCHEDULER", "event")
        if scheduler not in ("event", "greedy"):
            raise SettingsError(f"BODYPART_SCHEDULER={scheduler!r}: use event or greedy")
        return cls(
            device=device,
            stacker=stacker,
            batch_size=_int(env, "BODYPART_BATCH_SIZE", 16, minimum=1),
            workers=_int(env, "BODYPART_WORKERS", default_workers(), minimum=0),
            decode=decode,
            keep_uids=_flag(env, "BODYPART_KEEP_UIDS", False),
            dicom_outputs=_flag(env, "BODYPART_DICOM_OUTPUTS", True),
            compile=_flag(env, "BODYPART_COMPILE", False),
            scheduler=scheduler,
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw not in ("0", "1"):
        raise SettingsError(f"{name}={raw!r}: use 1 (on) or 0 (off)")
    return raw == "1"
