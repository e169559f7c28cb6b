"""Choosing where to run, the same way in every chapter, script and test."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred`, else $PERCEIVER_EDU_DEVICE, else CUDA when present, else the CPU."""
    name = preferred or os.environ.get("PERCEIVER_EDU_DEVICE")
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use 'cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
