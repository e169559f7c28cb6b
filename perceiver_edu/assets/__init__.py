"""Files shipped with the package: a small CIFAR-10 checkpoint so chapter 7 has a trained model in seconds.

How `cpu_cifar10.pt` was made (two commands, on 2 CPU cores, data: the offline JPEG re-encoding of
CIFAR-10 made by ../shared/data/prepare_cifar10.py, not the official files):

    python -m perceiver_edu.train --preset cpu --time-budget 600 --data /work/data --seed 0 \
        --checkpoint-dir /work/attn-run/cpu600 --no-progress
    python -m perceiver_edu.assets export /work/attn-run/cpu600/last.pt perceiver_edu/assets/cpu_cifar10.pt

`export` keeps what a reader needs (weights, configs, history, data source) and drops the optimizer
and RNG states; the weights are stored as float16 to halve the size and are loaded back as float32.
The file's SHA-256 is pinned below and checked on every load.

That run (torch 2.14.1, 2 CPU cores, alone on the machine) trained 4.73 epochs in 591.5 s and printed
"test accuracy: 57.02%" (full 10,000-image test set of the JPEG copy); `last.pt` had SHA-256
738ab67ef0c97b25e10de6bfd65a4ae4c82d525cdc2d6008ccd46186de5bb032 (kept as `source_sha256`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_NAME, read_checkpoint
from ..data import file_digest
from ..registry import build_model, config_from_dict

ASSETS = Path(__file__).resolve().parent
EXPORT_FORMAT = CHECKPOINT_FORMAT  # train.load_checkpoint reads these files too (cpu_cifar10.pt is format 1)

PRETRAINED = {
    "cpu-cifar10": {
        "file": "cpu_cifar10.pt",
        "sha256": "0983e6e704b68c4009001ac4d621dd0abf742294973e4c01ceba66f338eae2e4",
        "command": ("python -m perceiver_edu.train --preset cpu --time-budget 600 --data /work/data --seed 0 "
                    "--checkpoint-dir /work/attn-run/cpu600 --no-progress"),
        "export": "python -m perceiver_edu.assets export /work/attn-run/cpu600/last.pt "
                  "perceiver_edu/assets/cpu_cifar10.pt",
    },
}


class ChecksumError(ValueError):
    """A shipped file's SHA-256 is not the one recorded for it."""


def sha256_of(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def verified_path(name: str = "cpu-cifar10", path: str | os.PathLike | None = None,
                  expected_sha256: str | None = None) -> Path:
    """The checkpoint's path after checking its SHA-256; raises ChecksumError on a mismatch."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
    entry = PRETRAINED[name]
    path = Path(path) if path is not None else ASSETS / entry["file"]
    expected = expected_sha256 or entry["sha256"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. Reinstall perceiver-edu, or re-create it with\n  "
                                f"{entry['command']}\n  {entry['export']}")
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has SHA-256 {actual}, expected {expected}: the file is damaged or was replaced.\n"
            f"Restore it from the repository (git restore {Path('perceiver_edu/assets') / entry['file']}), or "
            f"re-create it with\n  {entry['command']}\n  {entry['export']}\nand record the new SHA-256 in "
            f"perceiver_edu/assets/__init__.py.")
    return path


def load_pretrained(name: str = "cpu-cifar10", device=None, path: str | os.PathLike | None = None,
                    expected_sha256: str | None = None):
    """(model in eval mode, info) from a shipped checkpoint whose SHA-256 matches the recorded one.

    info: dict with history (the trainer's per-epoch dicts), model_config, train_config, data_source,
    sha256, and the commands that made the file.
    """
    path = verified_path(name, path, expected_sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(config_from_dict(state["model_config"], state.get("architecture", "perceiver")))
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    model = model.to(device if device is not None else "cpu").eval()
    info = {key: state[key] for key in ("history", "model_config", "train_config", "data_source")}
    info.update(sha256=sha256_of(path), command=PRETRAINED[name]["command"], export=PRETRAINED[name]["export"])
    return model, info


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype=torch.float16) -> str:
    """Write the reader's part of a trainer checkpoint to `out`; returns the new file's SHA-256.

    The checkpoint is read with weights_only=True (see checkpoints.py): a crafted file runs nothing."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / CHECKPOINT_NAME
    state = read_checkpoint(checkpoint, map_location="cpu")
    if "model" not in state or "model_config" not in state:
        raise ValueError(f"{checkpoint} is not a perceiver_edu training checkpoint")
    slim = {"format": EXPORT_FORMAT,
            "model": {k: v.to(dtype) if v.is_floating_point() else v for k, v in state["model"].items()},
            "architecture": state.get("architecture", "perceiver"),
            "model_config": state["model_config"], "train_config": state["train_config"],
            "history": state["history"], "data_source": state.get("data_source", "unknown"),
            "source_sha256": sha256_of(checkpoint)}
    torch.save(slim, out)
    return sha256_of(out)
