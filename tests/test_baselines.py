"""The ConvNet baseline: shapes, cost, config round trip, registry, and the permutation it cannot ignore."""
import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from perceiver_edu import PerceiverConfig
from perceiver_edu.baselines import ConvNet, ConvNetConfig
from perceiver_edu.experiments import forward_flops
from perceiver_edu.model import count_parameters
from perceiver_edu.registry import architecture_of, build_model, config_from_dict


def test_shapes_and_gradients():
    torch.manual_seed(0)
    model = ConvNet(ConvNetConfig.preset("cifar"))
    logits = model(torch.rand(4, 3, 32, 32))
    assert logits.shape == (4, 10)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    small = ConvNet(ConvNetConfig(input_axes=(16, 8), input_channels=1, pixel_mean=(0.5,), pixel_std=(0.25,),
                                  widths=(4, 8, 16), num_classes=3))
    assert small(torch.rand(2, 1, 16, 8)).shape == (2, 3)


def test_parameter_count_rebuilds_from_the_config_dict():
    config = ConvNetConfig.preset("cifar", pixel_permutation=3)
    values = config.to_dict()
    rebuilt = config_from_dict(values, "convnet")
    assert rebuilt == config and architecture_of(rebuilt) == "convnet"
    # 3x3 convs without bias + BatchNorm (scale, shift) + the final linear layer, counted by hand
    widths, channels, expected = (24, 48, 96, 192), 3, 0
    for width in widths:
        expected += 9 * channels * width + 2 * width
        channels = width
    expected += 192 * 10 + 10
    assert count_parameters(build_model(rebuilt)) == expected == 221_026


def test_flops_match_torch_flop_counter_and_the_perceiver_scale():
    model = ConvNet(ConvNetConfig.preset("cifar")).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 32, 32))
    assert model.flops() == counter.get_total_flops()
    # On the meta device attention goes through the counted math path (the CPU's fused kernel is
    # not counted): 52.2 MFLOPs for the experiments' base Perceiver against the ConvNet's 65.0.
    assert forward_flops(PerceiverConfig.preset("cpu", num_latents=32)) == 52_169_216
    assert forward_flops(ConvNetConfig.preset("cifar")) == model.flops() == 65_031_936


def test_the_permutation_changes_the_convnet():
    torch.manual_seed(0)
    plain = ConvNet(ConvNetConfig.preset("cifar")).eval()
    permuted = ConvNet(ConvNetConfig.preset("cifar", pixel_permutation=0)).eval()
    permuted.load_state_dict(plain.state_dict())  # the same weights: only the pixel order differs
    images = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(permuted(images), plain(images), atol=1e-3)
    order = permuted.pixel_order
    restored = torch.empty_like(images.flatten(2))
    restored[:, :, order] = images.flatten(2)  # scatter: feeding this, the model sees `images` again
    torch.testing.assert_close(permuted(restored.view_as(images)), plain(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides,message", [
    (dict(widths=()), "widths"),
    (dict(widths=(8, 0)), "widths"),
    (dict(input_axes=(30, 30)), "divisible by 4"),
    (dict(pixel_mean=(0.5,)), "one value per channel"),
    (dict(pixel_permutation=-1), "pixel_permutation"),
    (dict(num_classes=0), "positive integer"),
])
def test_bad_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        ConvNetConfig.preset("cifar", **overrides)


def test_unknown_fields_and_presets_are_named():
    with pytest.raises(ValueError, match="unknown ConvNetConfig fields"):
        ConvNetConfig.from_dict({**ConvNetConfig().to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="choose one of"):
        ConvNetConfig.preset("resnet")


@pytest.mark.parametrize("bad,error,message", [
    (torch.rand(2, 3, 64, 64), ValueError, r"expects images of shape \(B, 3, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "float"),
])
def test_bad_input_errors(bad, error, message):
    with pytest.raises(error, match=message):
        ConvNet(ConvNetConfig.preset("cifar"))(bad)


def test_lists_from_json_become_tuples():
    config = ConvNetConfig.from_dict(dataclasses.asdict(ConvNetConfig()) | {"widths": [8, 16], "input_axes": [32, 32]})
    assert config.widths == (8, 16) and config.input_axes == (32, 32)
