"""Which model a config builds, so the trainer, checkpoints and experiments handle any classifier.

Each architecture pairs a frozen config dataclass (with `name`, `input_axes`, `input_channels`,
`num_classes`, `to_dict()` and `from_dict()`) with the `nn.Module` built from it. A checkpoint
stores the architecture's name beside the config, so it can be rebuilt without guessing.
"""
from __future__ import annotations

from torch import nn

ARCHITECTURES: dict[str, tuple[type, type]] = {}  # name -> (config class, model class)


def register(name: str, config_class: type, model_class: type) -> None:
    ARCHITECTURES[name] = (config_class, model_class)


def _builtin() -> dict[str, tuple[type, type]]:
    from . import baselines, model  # noqa: F401  (importing registers the built-in architectures)
    return ARCHITECTURES


def architecture_of(config) -> str:
    for name, (config_class, _) in _builtin().items():
        if type(config) is config_class:
            return name
    raise TypeError(f"{type(config).__name__} is not a registered model config; "
                    f"known: {', '.join(c.__name__ for c, _ in ARCHITECTURES.values())}")


def build_model(config) -> nn.Module:
    """A fresh model for a registered config (a PerceiverConfig gives a Perceiver)."""
    return _builtin()[architecture_of(config)][1](config)


def config_from_dict(values: dict, architecture: str = "perceiver"):
    """Rebuild a config from `to_dict()` output; old checkpoints name no architecture: Perceiver."""
    if architecture not in _builtin():
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture][0].from_dict(values)
