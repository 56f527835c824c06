"""The app's run settings: one typed definition, read from the app's YAML config, overridden by
``BODYPART_*`` environment variables.

A MAP reads its settings from its YAML config (``app.yaml``'s ``bodypart:`` section, at
``HOLOSCAN_CONFIG_PATH`` inside a MAP, replaceable at run time); an environment variable, where
set, wins over the file, so one run can change one setting. ``bodypart run`` has a flag for each.
Read and checked once, before any work starts: a wrong value is one clear error naming where it
came from (the variable or the config key), not a traceback halfway through a batch.

:data:`OPTIONS` is the one definition: the parser, the command-line flags and the README's table
(``python -m app.settings --markdown``) all come from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from operators.input.batching import DecodeOptions, default_workers
from operators.model.ensemble import pick_device
from operators.input.gpu_decoding import MODES as GPU_DECODE_MODES, unavailable_reason
from operators.outputs.dicom_outputs import CORRECTED_MODES

#: The config file section holding these settings.
SECTION = "bodypart"


class SettingsError(ValueError):
    """A setting with a value the app cannot use; the message names its source."""


@dataclass(frozen=True)
class Option:
    """One setting: its config key, its environment variable, how to parse it and what it means."""

    key: str
    kind: str  # "choice", "int", "flag", "device" or "path"
    default: Any  # None: decided at run time, as ``default_text`` says
    default_text: str
    help: str
    choices: tuple[str, ...] = ()
    minimum: int = 0

    @property
    def env(self) -> str:
        return f"BODYPART_{self.key.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("device", "device", None, "`cuda` when present", "`cuda`, `cuda:N` or `cpu`: where the networks (and GPU decoding) run"),
    Option("stacker", "choice", None, "package's", "`logistic`, `xgboost` or `mean`: one the package has thresholds for "
           "(packages trained now have all three; the shipped default uses `mean`)",
           choices=("logistic", "xgboost", "mean")),
    Option("batch_size", "int", 16, "16", "images per network batch", minimum=1),
    Option("workers", "int", None, "usable cores (max 16)", "reader processes (never more than files); 0 reads in the "
           "main process, without the isolation of reader processes"),
    Option("file_time_limit", "int", 120, "120", "seconds a reader may spend on one file before it is stopped and the "
           "file `failed` (0: no limit; with GPU decoding a reader takes 8 files at once and gets 8 times this)"),
    Option("follow_links", "flag", False, "0", "1: follow symbolic links to files and folders outside the input folder "
           "(each folder walked once)"),
    Option("keep_uids", "flag", False, "0", "1: corrected copies keep SOP/Series Instance UIDs (for PACS that overwrite)"),
    Option("dicom_outputs", "flag", True, "1", "0: `results.json` only, no SRs or corrected copies"),
    Option("corrected", "choice", "confident", "`confident`", "which images get a corrected copy: `confident` (results "
           "with `needs_review: false`), `all`, or `none` (the SRs always carry every result)",
           choices=CORRECTED_MODES),
    Option("sr_folder", "path", None, "`OUT/sr`", "folder for the SRs (absolute, or relative to OUT): a Workflow "
           "Manager output artifact of its own"),
    Option("dicom_folder", "path", None, "`OUT/dicom`", "folder for the corrected copies (absolute, or relative to OUT)"),
    Option("compile", "flag", False, "0", "1: torch.compile the members (pays off on large archives)"),
    Option("gpu_decode", "choice", None, "`auto` on CUDA, else `off`", "`auto`: JPEG 2000/JPEG decoded on the GPU by "
           "nvImageCodec when installed (`pip install .[gpu]`); `on`: required (clear error if missing); `off`: CPU "
           "decoders only", choices=GPU_DECODE_MODES),
    Option("reduced_decode", "flag", True, "1", "0: always decode at full resolution (1: large grey JPEG 2000 and 8-bit "
           "lossy JPEG decoded at the resolution the model needs)"),
    Option("scheduler", "choice", "event", "`event`", "`event`: operators in worker threads; `greedy`: one thread",
           choices=("event", "greedy")),
)
BY_KEY = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Run settings, checked; see :data:`OPTIONS` for what each means."""

    device: str | None = None  # None: CUDA when present, else CPU
    stacker: str | None = None  # None: the package's
    batch_size: int = 16
    workers: int = 0  # load(): the usable cores unless set
    decode: DecodeOptions = DecodeOptions()
    keep_uids: bool = False
    dicom_outputs: bool = True
    corrected: str = "confident"
    sr_folder: Path | None = None  # None: OUT/sr
    dicom_folder: Path | None = None  # None: OUT/dicom
    compile: bool = False
    scheduler: str = "event"

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
             config_name: str = "app.yaml") -> "Settings":
        """Settings from the config section ``config`` (``bodypart:`` of ``config_name``), each
        overridden by its ``BODYPART_*`` variable in ``env`` (default: ``os.environ``) where set.

        Raises
        ------
        SettingsError
            An unknown config key, or a value that does not fit, naming its source.
        """
        env = os.environ if env is None else env
        if config is not None and not isinstance(config, Mapping):
            raise SettingsError(f"{config_name}: {SECTION}: must be a mapping of settings, got {config!r}")
        config = dict(config or {})
        unknown = sorted(set(config) - set(BY_KEY))
        if unknown:
            raise SettingsError(f"{config_name}: unknown setting {SECTION}.{unknown[0]} (known: {', '.join(BY_KEY)})")
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = env.get(option.env)
            if raw not in (None, ""):
                values[option.key] = _parse(option, raw, f"{option.env}={raw!r}")
            elif config.get(option.key) is not None:
                values[option.key] = _parse(option, config[option.key], f"{config_name} {SECTION}.{option.key}: {config[option.key]!r}")
            else:
                values[option.key] = option.default
        return cls._build(values, source=lambda key: _source(key, env, config, config_name))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Defaults overridden by the environment only (no config file)."""
        return cls.load({}, env)

    @classmethod
    def _build(cls, v: dict[str, Any], source: Callable[[str], str]) -> "Settings":
        device = v["device"]
        if device is not None and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SettingsError(f"{source('device')}: no CUDA device on this machine (use cpu)")
            index = int(device.split(":")[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise SettingsError(f"{source('device')}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                    f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        on_cuda = pick_device(device).type == "cuda"
        # nvImageCodec in the readers where the networks run on CUDA: decoding is the bottleneck there.
        gpu_decode = v["gpu_decode"] or ("auto" if on_cuda else "off")
        if gpu_decode == "on" and (reason := unavailable_reason()):
            raise SettingsError(f"{source('gpu_decode')}: GPU decoding is unavailable here ({reason})")
        decode = DecodeOptions(gpu=gpu_decode, gpu_device=device if device and device.startswith("cuda") else "cuda",
                               reduced_resolution=v["reduced_decode"], follow_links=v["follow_links"],
                               seconds_per_file=float(v["file_time_limit"]) if v["file_time_limit"] else None)
        return cls(device=device, stacker=v["stacker"], batch_size=v["batch_size"],
                   workers=default_workers() if v["workers"] is None else v["workers"], decode=decode,
                   keep_uids=v["keep_uids"], dicom_outputs=v["dicom_outputs"], corrected=v["corrected"],
                   sr_folder=v["sr_folder"], dicom_folder=v["dicom_folder"], compile=v["compile"],
                   scheduler=v["scheduler"])

    def folders(self, output_path: Path) -> tuple[Path, Path]:
        """The SR and corrected-copy folders of a run writing to ``output_path``."""
        def under(folder: Path | None, default: str) -> Path:
            return output_path / default if folder is None else (folder if folder.is_absolute() else output_path / folder)
        return under(self.sr_folder, "sr"), under(self.dicom_folder, "dicom")


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The app's YAML config: ``HOLOSCAN_CONFIG_PATH`` (a MAP sets it), else ``app.yaml`` beside
    the checkout's ``app/``; ``None`` where neither exists (defaults apply)."""
    env = os.environ if env is None else env
    if env.get("HOLOSCAN_CONFIG_PATH"):
        return Path(env["HOLOSCAN_CONFIG_PATH"])
    beside = Path(__file__).resolve().parents[1] / "app.yaml"
    return beside if beside.is_file() else None


def existing_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """:func:`config_path`, checked: a named config that is not a file is a :class:`SettingsError`."""
    path = config_path(env)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file {path} (HOLOSCAN_CONFIG_PATH) does not exist")
    return path


def _source(key: str, env: Mapping[str, str], config: Mapping[str, Any], config_name: str) -> str:
    option = BY_KEY[key]
    if env.get(option.env) not in (None, ""):
        return f"{option.env}={env[option.env]!r}"
    if config.get(key) is not None:
        return f"{config_name} {SECTION}.{key}: {config[key]!r}"
    return f"{option.env} (default)"


def _parse(option: Option, raw: Any, where: str) -> Any:
    if option.kind == "flag":
        if isinstance(raw, bool):
            return raw
        if str(raw) in ("0", "1"):
            return str(raw) == "1"
        raise SettingsError(f"{where}: use 1 (on) or 0 (off)")
    if option.kind == "int":
        if isinstance(raw, bool):
            raise SettingsError(f"{where}: not a whole number")
        try:
            value = int(str(raw))
        except ValueError:
            raise SettingsError(f"{where}: not a whole number") from None
        if value < option.minimum:
            raise SettingsError(f"{where}: must be at least {option.minimum}")
        return value
    text = str(raw)
    if option.kind == "path":
        if not text.strip() or "\0" in text:
            raise SettingsError(f"{where}: not a folder path")
        return Path(text)
    if option.kind == "device":
        if text.split(":")[0] not in ("cpu", "cuda") or (":" in text and not text.split(":", 1)[1].isdigit()):
            raise SettingsError(f"{where}: use cuda, cuda:N or cpu")
        return text
    if text not in option.choices:
        raise SettingsError(f"{where}: use {', '.join(option.choices[:-1])} or {option.choices[-1]}")
    return text


def markdown_table() -> str:
    """The README's settings table, from :data:`OPTIONS`."""
    rows = ["| `app.yaml` `bodypart:` key | variable | `bodypart run` flag | default | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{o.key}` | `{o.env}` | `{o.flag}` | {o.default_text} | {o.help} |" for o in OPTIONS]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m app.settings --markdown: the README table
    print(markdown_table())
