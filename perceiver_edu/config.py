"""One dataclass describes every Perceiver in this book; named presets give the ones we use."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODALITIES = ("image", "array")
POSITION_ENCODINGS = ("fourier", "learned", "none")
DECODERS = ("mean", "query", "none")  # "none": encoder only, no classifier (perceiver_edu.io decodes)
WEIGHT_SHARING = ("paper", "after_first", "none")


@dataclass(frozen=True)
class PerceiverConfig:
    name: str = "custom"
    # The input. "image": (B, C, H, W) floats in [0, 1], normalised inside the model with
    # pixel_mean/std. "array": any (B, *input_axes, C) array, used as given (audio, point clouds...).
    modality: str = "image"
    input_axes: tuple = (32, 32)
    input_channels: int = 3
    patch_size: int = 1  # images: space-to-depth p x p patches before the cross-attend (Perceiver IO)
    pixel_mean: tuple = CIFAR10_MEAN
    pixel_std: tuple = CIFAR10_STD
    # Position features concatenated to every input element.
    position_encoding: str = "fourier"
    num_bands: int = 16              # K in the paper
    max_resolution: tuple | None = None  # mu per axis; None = the input grid's own size
    # The learned encoding as in the paper (Sec. 4.1: 128-dimensional; App. B: initialised at scale
    # 1.0, best for Tab. 2), not DeepMind's code default (0.02): that is the model we test here.
    learned_position_dim: int = 128
    learned_position_scale: float = 1.0  # std of its truncated-normal initialisation
    # The latent array and the cross-attends that write into it.
    num_latents: int = 128           # N
    latent_dim: int = 256            # D
    cross_heads: int = 1
    cross_qk_dim: int | None = None  # None: the input's channel count, as in DeepMind's code
    cross_widening: int = 1
    num_cross_attends: int = 1
    # The latent Transformer.
    num_blocks: int | None = None    # None: one latent block after each cross-attend
    self_attends_per_block: int = 4
    latent_heads: int = 8
    latent_widening: int = 4
    weight_sharing: str = "paper"
    # Output.
    decoder: str = "mean"            # "mean": average latents + linear; "query": Perceiver IO query
    # Permuted images (paper Table 2): the seed of one fixed random order of the H*W pixels,
    # applied to every image as the model's first step; None = the image as it is.
    pixel_permutation: int | None = None
    num_classes: int = 10
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "input_axes", tuple(int(a) for a in self.input_axes))
        for name in ("pixel_mean", "pixel_std", "max_resolution"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def fail(message):
            raise ValueError(f"PerceiverConfig {self.name!r}: {message}")

        for field, allowed in (("modality", MODALITIES), ("position_encoding", POSITION_ENCODINGS),
                               ("decoder", DECODERS), ("weight_sharing", WEIGHT_SHARING)):
            if getattr(self, field) not in allowed:
                fail(f"{field}={getattr(self, field)!r} is not one of {allowed}")
        positive = ("input_channels", "patch_size", "num_bands", "learned_position_dim", "num_latents",
                    "latent_dim", "cross_heads", "cross_widening", "num_cross_attends",
                    "self_attends_per_block", "latent_heads", "latent_widening", "num_classes")
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(f"{field} must be a positive integer, got {value!r}")
        if not self.input_axes or min(self.input_axes) < 1:
            fail(f"input_axes must be positive sizes, got {self.input_axes}")
        if self.modality == "image":
            if len(self.input_axes) != 2:
                fail(f"images have two axes (H, W), got input_axes={self.input_axes}")
            if any(a % self.patch_size for a in self.input_axes):
                fail(f"patch_size={self.patch_size} does not divide the image size {self.input_axes}")
            if len(self.pixel_mean) != self.input_channels or len(self.pixel_std) != self.input_channels:
                fail(f"pixel_mean and pixel_std need one value per channel ({self.input_channels})")
        elif self.patch_size != 1:
            fail("patch_size applies to images only; use patch_size=1 for modality='array'")
        if self.latent_dim % self.latent_heads:
            fail(f"latent_dim={self.latent_dim} is not divisible by latent_heads={self.latent_heads}")
        if self.cross_qk_dim is not None and self.cross_qk_dim % self.cross_heads:
            fail(f"cross_qk_dim={self.cross_qk_dim} is not divisible by cross_heads={self.cross_heads}")
        if self.cross_qk_dim is None and self.input_dim % self.cross_heads:
            fail(f"the input has {self.input_dim} channels (with position features), not divisible by "
                 f"cross_heads={self.cross_heads}; set cross_qk_dim to a multiple of cross_heads")
        if self.num_blocks is not None and self.num_blocks < self.num_cross_attends:
            fail(f"num_blocks={self.num_blocks} < num_cross_attends={self.num_cross_attends}: "
                 f"every cross-attend is followed by a latent block")
        if self.max_resolution is not None and len(self.max_resolution) != len(self.input_axes):
            fail(f"max_resolution needs one value per input axis {self.input_axes}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if not (isinstance(self.learned_position_scale, (int, float)) and self.learned_position_scale > 0):
            fail(f"learned_position_scale must be a positive number, got {self.learned_position_scale!r}")
        if self.pixel_permutation is not None:
            if self.modality != "image":
                fail("pixel_permutation applies to images only; use pixel_permutation=None for arrays")
            if not isinstance(self.pixel_permutation, int) or self.pixel_permutation < 0:
                fail(f"pixel_permutation must be None or a seed (an integer >= 0), "
                     f"got {self.pixel_permutation!r}")

    # Derived sizes -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple:
        """The index grid of the input array the latents attend to (after patching)."""
        return tuple(a // self.patch_size for a in self.input_axes)

    @property
    def num_inputs(self) -> int:
        """M, the number of input elements."""
        return math.prod(self.grid)

    @property
    def position_dim(self) -> int:
        if self.position_encoding == "fourier":
            return len(self.grid) * (2 * self.num_bands + 1)
        return self.learned_position_dim if self.position_encoding == "learned" else 0

    @property
    def input_dim(self) -> int:
        """C, channels of one input element: its values (a whole patch) plus position features."""
        return self.input_channels * self.patch_size ** len(self.grid) + self.position_dim

    @property
    def depth(self) -> int:
        """How many latent blocks run (each of `self_attends_per_block` layers)."""
        return self.num_blocks or self.num_cross_attends

    # Presets -------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "PerceiverConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @staticmethod
    def preset_names() -> list:
        return sorted(PRESETS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PerceiverConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown PerceiverConfig fields {sorted(unknown)}")
        return cls(**values)


PRESETS = {
    # The seed reproduction's size: 128 x 256 latents, one cross-attend, 4 self-attention layers.
    # Keys and values stay at the input's own width (69 channels), as in DeepMind's code.
    "seed": PerceiverConfig(
        name="seed", num_latents=128, latent_dim=256, cross_widening=4,
        num_cross_attends=1, self_attends_per_block=4, latent_heads=8, latent_widening=4, num_bands=16),
    # Small enough to learn CIFAR-10 in minutes on two CPU cores (tuned with benchmarks/).
    "cpu": PerceiverConfig(
        name="cpu", patch_size=2, num_bands=8, num_latents=64, latent_dim=128, cross_qk_dim=128,
        cross_widening=2, num_cross_attends=1, self_attends_per_block=4, latent_heads=4,
        latent_widening=2),
    # Paper Table 1 / Sec. 4.1: 8 cross-attends (all but the first shared), a latent Transformer
    # of 6 layers shared across blocks, 512 x 1024 latents, 64 bands up to 224 px. 44.9M params.
    "imagenet_perceiver": PerceiverConfig(
        name="imagenet_perceiver", input_axes=(224, 224), pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD, num_bands=64, max_resolution=(224, 224), num_latents=512,
        latent_dim=1024, cross_heads=1, cross_widening=1, num_cross_attends=8,
        self_attends_per_block=6, latent_heads=8, latent_widening=1, weight_sharing="paper",
        decoder="mean", num_classes=1000),
    # Perceiver IO (Jaegle et al. 2022) ImageNet config A: one cross-attend, 8 blocks of 6 shared
    # layers, a single learned query decoding the class. 48.4M params.
    "imagenet_io": PerceiverConfig(
        name="imagenet_io", input_axes=(224, 224), pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
        num_bands=64, max_resolution=(224, 224), num_latents=512, latent_dim=1024, cross_heads=1,
        cross_widening=1, num_cross_attends=1, num_blocks=8, self_attends_per_block=6,
        latent_heads=8, latent_widening=1, weight_sharing="paper", decoder="query", num_classes=1000),
}
