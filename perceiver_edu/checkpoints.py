"""Checkpoint files: written atomically, read without running code, with every RNG state in them.

Safe to load, from anyone: a checkpoint is read with `torch.load(..., weights_only=True)`, which
rebuilds only tensors, numbers, strings and plain containers and refuses any other Python object, so
a file crafted to run code when unpickled raises `UnsafeCheckpointError` and nothing in it runs.
That is why every random-number state is stored as tensors, ints and tuples (format 2).

Damage: a checkpoint is written to a temporary file and renamed into place, so a kill never leaves
half a file; the one it replaces is kept as previous.pt, so that a latest file damaged later (a
failing disk, a truncated copy) falls back to the one before, with a warning that names it.

Format 1 (before) kept numpy's RNG state as a numpy array. Such a file is still read with
weights_only=True, allowing exactly numpy's array rebuilders (`_reconstruct`, `ndarray`, `dtype`),
and an `OldCheckpointWarning` says so.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .device import pick_device
from .registry import build_model, config_from_dict

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"  # the checkpoint last.pt replaced, kept for when last.pt is damaged
CHECKPOINT_FORMAT = 2      # 2: RNG states as tensors and plain values, readable with weights_only=True
READABLE_FORMATS = (1, 2)  # 1: numpy's RNG state as a numpy array (trainer before format 2; exports)


class UnsafeCheckpointError(ValueError):
    """The file refers to Python code that no checkpoint contains; it was not loaded."""


class DamagedCheckpointError(ValueError):
    """The file is truncated or otherwise unreadable (and so is previous.pt, if any)."""


class DamagedCheckpointWarning(UserWarning):
    """The latest checkpoint was damaged: the previous one was used instead."""


class OldCheckpointWarning(UserWarning):
    """A format-1 checkpoint was read (safely); the next one written is format 2."""


# Random-number states ----------------------------------------------------------------------------
def _numpy_rng_state() -> dict:
    """numpy's global RNG state without numpy objects: the safe loader reads tensors, not arrays."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # keys: (624,) uint32
    return {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state):
    if not isinstance(state, dict):  # format 1: numpy's own tuple
        np.random.set_state(state)
        return
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((state["bit_generator"], keys, state["position"], state["has_gauss"],
                         state["cached_gaussian"]))


def process_rng_state(device: torch.device) -> dict:
    """The random-number states that differ between data-parallel processes: dropout's."""
    return {"torch": torch.get_rng_state(),  # dropout on the CPU
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}  # dropout on CUDA


def rng_state(data_generator: torch.Generator, device: torch.device) -> dict:
    """Every random-number state a run uses, in forms weights_only loading accepts.

    A data-parallel run adds "other_processes": process_rng_state() of ranks 1, 2, ..."""
    return {"data": data_generator.get_state(),  # (5056,) uint8: shuffling and augmentation
            **process_rng_state(device),
            "python": random.getstate(),           # (version, 625 ints, gauss): plain values already
            "numpy": _numpy_rng_state()}


def set_process_rng_state(state: dict, device: torch.device):
    # .cpu(): the states load onto the training device with the rest, but must be set from the CPU.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # format 1: one state per visible GPU
        cuda = cuda[device.index or 0] if device.type == "cuda" and len(cuda) > (device.index or 0) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def set_rng_state(state: dict, data_generator: torch.Generator, device: torch.device, rank: int = 0) -> bool:
    """Restore `rng_state()`'s states for process `rank`; False if the file has none for that rank
    (it was written by fewer processes), which the caller then seeds itself."""
    data_generator.set_state(state["data"].cpu())
    random.setstate(tuple(state["python"]))
    _set_numpy_rng_state(state["numpy"])
    own = [state, *state.get("other_processes", [])]
    set_process_rng_state(own[rank] if rank < len(own) else state, device)
    return rank < len(own)


# Writing ----------------------------------------------------------------------------------------------
def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint that PATH replaced is kept: previous.pt beside last.pt."""
    path = Path(path)
    return path.with_name(PREVIOUS_NAME if path.name == CHECKPOINT_NAME else f"{path.stem}.previous{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: dict, keep_previous: bool = True):
    """Write PATH atomically; the checkpoint it replaces stays beside it as previous.pt.

    PATH.tmp is written and flushed to disk first, so a kill mid-write leaves PATH intact. Only then
    does the old PATH become previous.pt and PATH.tmp replace PATH, both by renames (atomic). If PATH
    is later found damaged (a failing disk, a truncated copy), `read_checkpoint` falls back to
    previous.pt. keep_previous=False leaves previous.pt alone (when PATH is known to be damaged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.is_file():
        _keep_as_previous(path)
    os.replace(tmp, path)


def _keep_as_previous(path: Path):
    """previous.pt := PATH, atomically, and without a moment when PATH is missing."""
    staged = previous_path(path).with_name(previous_path(path).name + ".tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)  # a second name for the same bytes: nothing to copy
    except OSError:            # a filesystem without hard links
        shutil.copyfile(path, staged)
    os.replace(staged, previous_path(path))


# Reading ----------------------------------------------------------------------------------------------
def _format_1_numpy_globals() -> list:
    """What rebuilds numpy's (624,) uint32 RNG keys, under the names numpy 1.x and 2.x pickle it with.

    The uint32 dtype's own class is needed too: the safe loader only sets the state of allowed types."""
    reconstruct = np.zeros(1).__reduce__()[0]  # this numpy's _reconstruct, whatever its module layout
    return [(reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_FORMAT_1_NAMES = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                   "numpy.dtype"}


def _refused_globals(path: Path) -> set[str]:
    """The Python names the file refers to that weights_only loading refuses (a static scan: runs nothing)."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or an opcode the scanner does not know
        return set()


def load_safely(path: str | os.PathLike, map_location="cpu"):
    """torch.load with weights_only=True: tensors, numbers, strings and containers, never code.

    Raises UnsafeCheckpointError for a file that refers to anything else; other errors (a damaged
    file) pass through."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path)
        if not refused and "Weights only load failed" not in str(error):
            raise  # a damaged file, not a refused one
    if not refused or not refused <= _FORMAT_1_NAMES:
        raise UnsafeCheckpointError(
            f"{path} was not loaded: it refers to {', '.join(sorted(refused)) or 'Python objects'}, which a "
            f"perceiver_edu checkpoint never contains (only tensors, numbers, strings and lists). Nothing in it "
            f"was run. Loading it fully could run any code it holds: it was not written by this trainer, or "
            f"was changed since. Use a checkpoint you trained, or ask its author for one written by "
            f"perceiver_edu.")
    with torch.serialization.safe_globals(_format_1_numpy_globals()):
        state = torch.load(path, map_location=map_location, weights_only=True)
    warnings.warn(f"{path} is a format-1 checkpoint (numpy's RNG state stored as a numpy array). It was read "
                  f"with weights_only=True, allowing only numpy's array rebuilders; a resumed run writes "
                  f"format {CHECKPOINT_FORMAT} from its next epoch.", OldCheckpointWarning, stacklevel=3)
    return state


def _read_one(path: Path, map_location) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = load_safely(path, map_location)
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # a truncated or otherwise damaged file
        raise DamagedCheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                                     f"{error})") from error
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise DamagedCheckpointError(f"{path} is not a perceiver_edu checkpoint (formats {READABLE_FORMATS})")
    return state


def find_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[dict, Path]:
    """(the checkpoint's dict, the file it came from): PATH (or DIR/last.pt), else previous.pt beside it.

    A damaged or missing PATH falls back to previous.pt with a DamagedCheckpointWarning that names it.
    A file that refers to code (UnsafeCheckpointError) is never passed over: that needs a person."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    previous = previous_path(path)
    try:
        return _read_one(path, map_location), path
    except (DamagedCheckpointError, FileNotFoundError) as error:
        if not previous.is_file():
            if isinstance(error, FileNotFoundError):
                raise
            raise DamagedCheckpointError(f"{error}; there is no {previous.name} beside it to fall back to. "
                                         f"Delete it to start again") from error
        problem = error
    try:
        state = _read_one(previous, map_location)
    except DamagedCheckpointError as error:
        raise DamagedCheckpointError(f"{problem}, and {error}. Delete both to start again") from error
    warnings.warn(f"{problem}; using {previous} instead (the checkpoint before it, after epoch "
                  f"{state.get('epoch')}).", DamagedCheckpointWarning, stacklevel=2)
    return state, previous


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The dict a trainer checkpoint holds, from a file or a checkpoint directory; runs no code.

    Falls back to previous.pt when the latest is damaged (see `find_checkpoint`)."""
    return find_checkpoint(path, map_location)[0]


def load_checkpoint(path: str | os.PathLike, device=None) -> tuple[torch.nn.Module, list[dict]]:
    """(model in eval mode, history) from a checkpoint file or a checkpoint directory."""
    device = torch.device(device) if device is not None else pick_device()
    state = read_checkpoint(path, map_location=device)
    model = build_model(config_from_dict(state["model_config"], state.get("architecture", "perceiver"))).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["history"]
