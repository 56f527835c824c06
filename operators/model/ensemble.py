"""The CNN ensemble: members -> stacker -> per-class thresholds -> labels, on CUDA or CPU."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch

from .classification import ModelInfo, Prediction
from .decision import decide
from .model_package import ModelPackage, ModelPackageError
from ..outcome import short_reason
from .networks import create_network
from .stacking import apply_temperatures

log = logging.getLogger("bodypart")


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Autocast dtypes by name; "float32" runs without autocast.
PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: What CUDA inference runs unless a package says otherwise (see Ensemble).
DEFAULT_PRECISION = "float16"


def inference_autocast(device: torch.device, precision: str = DEFAULT_PRECISION):
    """The autocast context of inference: ``precision`` on CUDA, plain fp32 elsewhere.

    Shared by the app, training's validation predictions and the benchmark, so that all three
    compute the numbers users get.
    """
    dtype = PRECISIONS[precision]
    return torch.autocast("cuda", dtype=dtype) if (device.type == "cuda" and dtype is not None) else nullcontext()


class Ensemble:
    """Loaded members and stacker of a package, ready to predict batches.

    On CUDA it runs channels_last with fp16 autocast by default: measured on the first default
    package (Lite0 + Lite1; the same Lite0 architecture as the default now),
    bf16's 8-bit mantissa moved member probabilities by up to 0.49 against fp32 and flipped labels,
    fp16 by 0.009 with no flip (``benchmarks/cuda_check.py``, ``benchmarks/results/h200-cuda-check.json``). The package may name another
    precision (``inference.precision``). CPU runs fp32 (bf16 is slower on CPUs without AMX), also
    channels_last: measured 29 -> 43 img/s for Lite0 on 2 Xeon cores. ``compile=True`` adds
    torch.compile: twice as fast again on that CPU, after about a minute of compiling, so it pays off
    for large archives, not for one study per process.
    """

    def __init__(self, package: ModelPackage, device: str | torch.device | None = None, stacker: str | None = None,
                 precision: str | None = None, compile: bool = False, tta: bool | None = None):
        self.package = package
        # average each member over the image and its two flips (3x the work); by default as the
        # package's stackers and thresholds were fitted
        self.tta = package.tta if tta is None else tta
        self.device = pick_device(str(device) if device else None)
        self.precision = precision or (package.metadata.get("inference") or {}).get("precision", DEFAULT_PRECISION)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} ({', '.join(PRECISIONS)})")
        self.stacker_kind = stacker or package.stacker_kind
        calibration = package.calibration(self.stacker_kind)  # refuses a stacker without thresholds
        self.stacker = package.load_stacker(self.stacker_kind)
        n = len(package.classes)
        self.networks: list[torch.nn.Module] = []
        for member in package.members:
            net = create_network(member.arch, n, package.preprocessing.channels)
            try:
                net.load_state_dict(package.load_state_dict(member))
            except RuntimeError as e:
                raise ModelPackageError(f"model package {package.root}: weights of {member.name} do not fit {member.arch}: "
                                        f"{short_reason(e, 200)}") from None
            net = net.eval().to(self.device).to(memory_format=torch.channels_last)
            self.networks.append(torch.compile(net) if compile else net)
        self.compiled = compile
        self._padded_batch = 0  # compiled graphs are specialised to a batch size: pad to one size
        self.known = np.asarray(package.known_mask, bool)
        temps = calibration.temperatures
        self.temperatures = np.asarray([temps[c] for c in package.classes], float) if temps else None
        self.thresholds = np.asarray([calibration.thresholds[c] for c in package.classes], float)

    @property
    def info(self) -> ModelInfo:
        """The package and decision settings this ensemble classifies with, as results record them."""
        return model_info(self.package, self.stacker_kind, str(self.device), self.tta)

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.package.members]

    @torch.inference_mode()
    def member_probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(N, C, S, S) normalised inputs -> (N, M, C) sigmoid probabilities."""
        x = batch.to(self.device, non_blocking=True)
        n = x.shape[0]
        if self.compiled:
            self._padded_batch = max(self._padded_batch, n)
            if n < self._padded_batch:
                x = torch.cat([x, x.new_zeros((self._padded_batch - n, *x.shape[1:]))])
        x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        views = [x, x.flip(-1), x.flip(-2)] if self.tta else [x]
        with inference_autocast(self.device, self.precision):
            for net in self.networks:
                outs.append(torch.stack([torch.sigmoid(net(v).float()) for v in views]).mean(0))
        return torch.stack(outs, dim=1)[:n].cpu().numpy().astype(np.float64)

    def predict(self, batch: torch.Tensor) -> list[Prediction]:
        members = self.member_probabilities(batch)
        stacked = self.stacker.predict(members)
        if self.temperatures is not None:
            stacked = apply_temperatures(stacked, self.temperatures)  # fitted for this stacker
        return [self._decide(stacked[i], members[i]) for i in range(stacked.shape[0])]

    def _decide(self, probs: np.ndarray, members: np.ndarray) -> Prediction:
        classes = self.package.classes
        labels, reason = decide(probs, self.thresholds, self.known, self.package.decision, classes)
        return Prediction(
            probabilities={c: round(float(probs[k]), 6) for k, c in enumerate(classes) if self.known[k]},
            member_probabilities={
                name: {c: round(float(members[m, k]), 6) for k, c in enumerate(classes) if self.known[k]}
                for m, name in enumerate(self.member_names)
            },
            labels=labels,
            needs_review=reason is not None,
            review_reason=reason,
        )


def model_info(package: ModelPackage, stacker: str | None = None, device: str = "cpu", tta: bool | None = None) -> ModelInfo:
    """What an ensemble of ``package`` with ``stacker`` on ``device`` classifies with, without loading it."""
    p, stacker = package, stacker or package.stacker_kind
    thresholds = p.calibration(stacker).thresholds
    return ModelInfo(p.name, p.version, p.checksum, stacker, device, p.classes, p.trained_classes,
                     {c: float(thresholds[c]) for c in p.trained_classes}, p.decision.top_fraction,
                     p.tta if tta is None else tta)
