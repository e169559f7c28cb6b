"""Choosing where to run, the same way in every chapter, script and test."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


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


# Several processes training one model (torchrun) ------------------------------------------------------
# torchrun starts one process per GPU (or CPU share) and tells each, in environment variables, its
# RANK among all processes, the WORLD_SIZE, and its LOCAL_RANK on its own machine. The processes talk
# through a process group: NCCL between GPUs, gloo between CPU processes. As in nanoGPT's train.py.

# A collective that waits longer than this raises instead of hanging: a process that died mid-run
# (its error is printed by that process) then ends the others too. Checkpoint writes must fit in it.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes that train one model together (data parallel).

    Without torchrun it is rank 0 of 1 and every collective below does nothing, so the trainer's
    code reads the same either way."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0      # its index on its own machine: which GPU it uses
    joined: bool = False     # in an initialised process group

    @classmethod
    def from_environment(cls) -> "Processes":
        """The place torchrun gave this process (before joining the group); rank 0 of 1 without it."""
        if not launched_by_torchrun():
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))

    @classmethod
    def current(cls) -> "Processes":
        """The process group this process has joined (by `join_processes` or the caller's own code)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, shows progress bars and writes checkpoints."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous share of `count` items (sizes differ by at most one)."""
        return slice(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)

    def _flag_device(self) -> torch.device:
        nccl = dist.get_backend() == "nccl"  # NCCL moves only CUDA tensors
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over all processes (in place)."""
        if self.joined:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def maximum(self, value: float) -> float:
        """The largest of every process's value: how processes agree on one decision."""
        if not self.joined:
            return value
        tensor = torch.tensor(float(value), dtype=torch.float64, device=self._flag_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.item()

    def any(self, flag: bool) -> bool:
        return self.maximum(float(bool(flag))) > 0

    def all(self, flag: bool) -> bool:
        return not self.any(not flag)

    def gather(self, item) -> list:
        """Every process's `item` (picklable), in rank order."""
        if not self.joined:
            return [item]
        items = [None] * self.world_size
        dist.all_gather_object(items, item)
        return items


def device_of_process(asked: torch.device, processes: Processes) -> torch.device:
    """Under torchrun every process has a GPU of its own, cuda:LOCAL_RANK (made the current one)."""
    if asked.type != "cuda" or not launched_by_torchrun():
        return asked
    count = torch.cuda.device_count()
    if asked.index is not None and asked.index != processes.local_rank:
        raise ValueError(f"under torchrun each process uses the GPU of its LOCAL_RANK (cuda:{processes.local_rank}"
                         f" here), not {asked}; pass --device cuda")
    if processes.local_rank >= count:
        raise RuntimeError(f"LOCAL_RANK {processes.local_rank}, but this machine has {count} GPU(s): start at most "
                           f"{count} processes per machine (torchrun --nproc_per_node={count})")
    device = torch.device("cuda", processes.local_rank)
    torch.cuda.set_device(device)
    return device


def join_processes(device: torch.device) -> Processes:
    """Join torchrun's process group (it gives the ranks and the address): NCCL between GPUs, else gloo."""
    if device.type == "cuda":
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return Processes.current()


def leave_processes():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
