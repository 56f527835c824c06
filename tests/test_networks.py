"""The network factory and loading pretrained weights."""

from __future__ import annotations

import pytest
import torch

from operators.model.networks import create_network, load_backbone


def _state(arch: str, seed: int, classes: int = 25) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_network(arch, classes).state_dict()


def test_wrapped_checkpoints_load_whole_but_the_new_head(tmp_path):
    source = _state("efficientnet_lite0", 1, classes=1000)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.items()}}  # DataParallel, Lightning-style
    path = tmp_path / "ckpt.pt"
    torch.save(wrapped, path)
    net = create_network("efficientnet_lite0", 25, pretrained=path)
    got = net.state_dict()
    assert torch.equal(got["conv_stem.weight"], source["conv_stem.weight"])
    assert not torch.equal(got["classifier.weight"][:25], source["classifier.weight"][:25])
    result = load_backbone(create_network("efficientnet_lite0", 25), wrapped)
    assert result.left_initialised == ["classifier.bias", "classifier.weight"]
    assert result.unused == ["classifier.bias", "classifier.weight"]
    assert 0.9 < result.loaded_fraction < 1.0


def test_a_checkpoint_of_another_architecture_is_refused():
    net = create_network("efficientnet_lite0", 25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"fit only 0% of the network's values .* another architecture"):
        load_backbone(net, _state("resnet18", 2), source="resnet18.pt")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded


def test_a_checkpoint_that_mostly_does_not_fit_is_refused():
    source = _state("efficientnet_lite0", 3)
    partial = {k: v for i, (k, v) in enumerate(source.items()) if i % 2}  # half the tensors
    with pytest.raises(ValueError, match="fit only"):
        load_backbone(create_network("efficientnet_lite0", 25), partial)
    assert load_backbone(create_network("efficientnet_lite0", 25), partial, min_fraction=0.0).loaded_fraction < 0.9
