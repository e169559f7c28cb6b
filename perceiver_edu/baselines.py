"""A small ConvNet: the baseline that has the locality prior the Perceiver gives up.

Paper, Sec. 4.1 ("Permuted ImageNet"): a ConvNet is built on the assumption that nearby pixels
belong together, so shuffling the pixels of every image with one fixed permutation should hurt it,
while a Perceiver whose pixels carry their position features with them computes the same function
(Table 2 compares them on ImageNet with a ResNet-50). Here the ConvNet is four 3x3 convolutions
with BatchNorm and ReLU, two at full resolution and one after each of two 2x2 max-pools, then a
global average and one linear layer: about the cost of the small patch Perceiver of chapter 9's
experiments (see `ConvNet.flops`).

    model = ConvNet(ConvNetConfig.preset("cifar"))
    logits = model(images)   # images: (B, 3, 32, 32) floats in [0, 1]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .config import CIFAR10_MEAN, CIFAR10_STD
from .model import fixed_pixel_order, permute_pixels
from .registry import register


@dataclass(frozen=True)
class ConvNetConfig:
    name: str = "convnet"
    input_axes: tuple = (32, 32)
    input_channels: int = 3
    pixel_mean: tuple = CIFAR10_MEAN   # images are normalised inside the model, as in the Perceiver
    pixel_std: tuple = CIFAR10_STD
    # One 3x3 conv + BatchNorm + ReLU per entry; a 2x2 max-pool before every conv after the second.
    widths: tuple = (24, 48, 96, 192)
    num_classes: int = 10
    # Permuted images (paper Table 2), exactly as PerceiverConfig.pixel_permutation.
    pixel_permutation: int | None = None

    def __post_init__(self):
        for name in ("input_axes", "pixel_mean", "pixel_std", "widths"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def fail(message):
            raise ValueError(f"ConvNetConfig {self.name!r}: {message}")

        for field in ("input_channels", "num_classes"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(f"{field} must be a positive integer, got {value!r}")
        if len(self.input_axes) != 2 or min(self.input_axes) < 1:
            fail(f"images have two positive axes (H, W), got input_axes={self.input_axes}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            fail(f"widths must be positive integers, one per conv layer, got {self.widths}")
        halvings = 2 ** self.num_pools
        if any(a % halvings for a in self.input_axes):
            fail(f"{len(self.widths)} conv layers halve the image {self.num_pools} times; "
                 f"input_axes={self.input_axes} must be divisible by {halvings}")
        if len(self.pixel_mean) != self.input_channels or len(self.pixel_std) != self.input_channels:
            fail(f"pixel_mean and pixel_std need one value per channel ({self.input_channels})")
        if self.pixel_permutation is not None and (not isinstance(self.pixel_permutation, int)
                                                   or self.pixel_permutation < 0):
            fail(f"pixel_permutation must be None or a seed (an integer >= 0), got {self.pixel_permutation!r}")

    @property
    def num_pools(self) -> int:
        return max(len(self.widths) - 2, 0)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ConvNetConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown ConvNet preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ConvNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown ConvNetConfig fields {sorted(unknown)}")
        return cls(**values)


PRESETS = {
    # 65 MFLOPs per 32x32 image and 0.22M parameters; the experiments' base Perceiver (the `cpu`
    # preset with 32 latents) has 52 MFLOPs and 0.65M parameters.
    "cifar": ConvNetConfig(name="convnet"),
}


class ConvNet(nn.Module):
    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = config
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, -1, 1, 1), persistent=False)
        if config.pixel_permutation is not None:
            self.register_buffer("pixel_order", fixed_pixel_order(*config.input_axes, config.pixel_permutation),
                                 persistent=False)
        layers, channels = [], config.input_channels
        for index, width in enumerate(config.widths):
            if index >= 2:
                layers.append(nn.MaxPool2d(2))
            # No conv bias: the BatchNorm that follows has its own shift.
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        config = self.config
        expected = (config.input_channels, *config.input_axes)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ConvNet {config.name!r} expects images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}. Resize the images, or build a config with matching "
                             f"input_axes and input_channels.")
        if not x.is_floating_point():
            raise TypeError(f"images must be floats in [0, 1], got dtype {x.dtype}; use x.float() / 255")
        x = (x - self.pixel_mean) / self.pixel_std
        if config.pixel_permutation is not None:
            x = permute_pixels(x, self.pixel_order)  # after the trainer's augmentation, as for the Perceiver
        x = self.features(x)                        # (B, C_last, H / 2^k, W / 2^k)
        return self.classifier(x.mean(dim=(2, 3)))  # global average, then (B, num_classes)

    def flops(self) -> int:
        """Forward multiply-adds x 2 for one image (convolutions and the linear layer; BN/ReLU/pool ignored)."""
        config = self.config
        height, width = config.input_axes
        total, channels = 0, config.input_channels
        for index, out in enumerate(config.widths):
            if index >= 2:
                height, width = height // 2, width // 2
            total += 2 * height * width * 9 * channels * out
            channels = out
        return total + 2 * channels * config.num_classes


register("convnet", ConvNetConfig, ConvNet)
