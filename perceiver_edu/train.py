"""Train a Perceiver on CIFAR-10: a resumable trainer with a wall-clock budget (its CLI is cli.py).

    python -m perceiver_edu.train --preset cpu --time-budget 600
    python -m perceiver_edu.train --preset seed --epochs 30 --checkpoint-dir runs/seed [--resume]

From a notebook:

    model, history = train(PerceiverConfig.preset("cpu"), TrainConfig.recipe("cpu", epochs=2), data)

What the trainer does, and why:
- AdamW (or LAMB, the paper's optimizer), linear warmup then cosine decay, label smoothing, gradient
  clipping. Weight decay only on matrices.
- CUDA: bf16 autocast where supported, else fp16 with a GradScaler; optional torch.compile. The data
  already lives on the device (see `data.py`). CPU: plain fp32 (bf16 is very slow on these CPUs).
- A checkpoint after every epoch, written to a temporary file and renamed over `last.pt`, so a kill
  never leaves a broken checkpoint. It holds model, optimizer, schedule, every RNG state and the
  history, so `resume=True` finishes exactly where an uninterrupted run would (bit-identical on CPU).
  Checkpoints are read with weights_only=True, so loading one never runs code (see `checkpoints.py`).
- A NaN/inf loss raises NonFiniteLossError at once; the last good checkpoint is untouched.
- `time_budget` seconds: the learning-rate decay follows the clock so that it ends when the time does,
  and training stops early enough to leave room for the final test evaluation inside the budget.
- Data parallel under torchrun (`torchrun --nproc_per_node=N -m perceiver_edu.train ...`): DDP, the
  batch size is the global batch, each process trains on its slice of it (see `Trainer`).

How it is built, in the spirit of minGPT's Trainer and nanoGPT's loop (read it top to bottom):
- one step: `forward_backward` (forward, `training_loss`, backward, clip), then `update_weights`;
  `make_optimizer`, `make_schedule` and `make_grad_scaler` build what the step uses;
- `TrainState`: everything that changes while training (model, optimizer, schedule, scaler, the
  data generator, history, epoch, step), so exactly what a checkpoint holds;
- `Trainer`: `run` -> `run_epoch` -> `train_step`, then `end_epoch` (`evaluate_test`, `save`,
  the `on_epoch_end` callback); `TimeBudget` decides when to stop;
- `train()` puts these together and is what notebooks and the CLI call.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .device import Processes, pick_device, seed_everything
from .data import CIFAR10Data, eval_batches, load_cifar10, to_float, train_batches
from .registry import architecture_of, build_model
from .checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, PREVIOUS_NAME, DamagedCheckpointError,  # noqa: F401
                          OldCheckpointWarning, UnsafeCheckpointError, find_checkpoint, load_checkpoint,
                          previous_path, process_rng_state, read_checkpoint, rng_state, save_checkpoint,
                          set_rng_state)
from .optim import OPTIMIZERS, SCHEDULES, LRSchedule, build_optimizer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class OtherProcessError(RuntimeError):
    """Another process of a data-parallel run failed (it prints its own error); this one stops too."""


class CheckpointMismatchError(ValueError):
    """--resume found a checkpoint made with different settings."""


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. `TrainConfig.recipe(preset)` gives the tuned one for a model preset."""
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adamw"          # "adamw" or "lamb"
    lr: float = 1e-3                  # peak learning rate
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    schedule: str = "cosine"          # after warmup: "cosine", "linear" or "constant"
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0     # max global gradient norm; None = no clipping
    augment: bool = True              # random crop (4-px padding) + horizontal flip
    seed: int = 0
    eval_every: int = 1               # test evaluation every N epochs (0: only at the end)
    eval_batch_size: int = 500
    amp: str = "auto"                 # "auto": bf16/fp16 on CUDA, fp32 on CPU; "off": always fp32
    compile: bool = False             # torch.compile the model (CUDA; slow to start)
    train_images: int | None = None   # budget in training images (whole batches); overrides epochs

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer, got {self.epochs!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be a positive integer, got {self.batch_size!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}"),
            (self.lr > 0 and np.isfinite(self.lr), f"lr must be a positive number, got {self.lr!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas!r}"),
            (self.schedule in SCHEDULES, f"schedule {self.schedule!r} is not one of {SCHEDULES}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}"),
            (0 <= self.final_lr_fraction <= 1, f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive or None, got {self.grad_clip!r}"),
            (isinstance(self.eval_every, int) and self.eval_every >= 0, f"eval_every must be an integer >= 0, got {self.eval_every!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be positive, got {self.eval_batch_size!r}"),
            (self.amp in ("auto", "off"), f"amp must be 'auto' or 'off', got {self.amp!r}"),
            (self.train_images is None or (isinstance(self.train_images, int) and self.train_images >= self.batch_size),
             f"train_images must be None or an integer >= batch_size ({self.batch_size}), got {self.train_images!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

    @classmethod
    def recipe(cls, preset: str, **overrides) -> "TrainConfig":
        """The recipe tuned for a model preset (the defaults for presets without one)."""
        return dataclasses.replace(RECIPES.get(preset, cls()), **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES = {
    # Tuned on 2 CPU cores for `--time-budget 600` (see benchmarks/train_cpu_600s.py).
    "cpu": TrainConfig(epochs=30, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=0.5,
                       label_smoothing=0.1, grad_clip=1.0, eval_every=1),
    "seed": TrainConfig(epochs=30, batch_size=128, lr=5e-4, weight_decay=0.05, warmup_epochs=1.0),
}


# Small helpers the chapters use ------------------------------------------------------------------
def autocast_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, else fp16 on CUDA; None (fp32) on CPU or with amp='off'."""
    if amp == "off" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500,
            amp: str = "auto") -> torch.Tensor:
    """Class probabilities (N, num_classes) on the CPU for images (N, 3, H, W): uint8, or floats in [0, 1]."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, amp)
    was_training = model.training
    model.eval()
    out = []
    for first in range(0, len(images), batch_size):
        batch = images[first:first + batch_size]
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory()
        batch = _as_float_images(batch.to(device, non_blocking=True))
        with _autocast(device, dtype):
            out.append(model(batch).float().softmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.config.num_classes)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class.

    `predicted` may be class indices (N,) or scores/probabilities (N, num_classes)."""
    if predicted.dim() == 2:
        predicted = predicted.argmax(-1)
    predicted, labels = predicted.long().cpu(), labels.long().cpu()
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape[0]} predictions but {labels.shape[0]} labels")
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)


@torch.no_grad()
def evaluation_sums(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
                    amp: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy float64, number correct int64), both 0-d tensors on the model's device.

    Sums rather than means, so that shards of a test set (one per process) add up exactly."""
    device = next(model.parameters()).device
    dtype = autocast_dtype(device, amp)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for x, y in eval_batches(images, labels, batch_size):
        with _autocast(device, dtype):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(-1) == y).sum()
    model.train(was_training)
    return loss_sum, correct


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             amp: str = "auto") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over a labelled set already on the model's device."""
    loss_sum, correct = evaluation_sums(model, images, labels, batch_size, amp)
    count = max(len(labels), 1)
    return loss_sum.item() / count, correct.item() / count


# The pieces of one training step -----------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, recipe: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer (AdamW or LAMB), with weight decay on matrices only."""
    return build_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.betas)


def make_schedule(optimizer: torch.optim.Optimizer, recipe: TrainConfig, steps_per_epoch: int) -> LRSchedule:
    """Linear warmup over `recipe.warmup_epochs`, then the recipe's decay."""
    return LRSchedule(optimizer, recipe.lr, round(recipe.warmup_epochs * steps_per_epoch), recipe.schedule,
                      recipe.final_lr_fraction)


def make_grad_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so that small gradients do not underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


def training_loss(logits: torch.Tensor, labels: torch.Tensor, recipe: TrainConfig) -> torch.Tensor:
    """Mean label-smoothed cross-entropy. logits (B, classes), labels (B,).

    In fp32 even under autocast: the softmax of low-precision logits loses the small probabilities."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)


def forward_backward(model: torch.nn.Module, forward, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None, x: torch.Tensor, y: torch.Tensor,
                     recipe: TrainConfig, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward on one batch; gradients end unscaled and clipped. Returns (loss, logits).

    `forward` is the model, or a compiled or data-parallel wrapper of it; `model` owns the parameters.
    The weights do not change here: `update_weights` does that, after the caller has checked the loss."""
    with _autocast(x.device, amp_dtype):
        logits = forward(x)                                  # (B, classes)
    loss = training_loss(logits, y, recipe)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if recipe.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    return loss, logits


def update_weights(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None):
    if scaler:
        scaler.step(optimizer)  # skips the step if the fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()


# Checkpoints: see checkpoints.py -------------------------------------------------------------
def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
            if _normalise(saved.get(k)) != _normalise(current.get(k))]


def _normalise(value):
    return tuple(value) if isinstance(value, list) else value


def check_global_batch(batch_size: int, world_size: int):
    """The batch size is the global batch: every process takes an equal slice of each one."""
    if batch_size % world_size:
        below, above = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ValueError(f"--batch-size is the global batch, split evenly among the {world_size} processes: "
                         f"{batch_size} does not divide by {world_size}. Use a multiple of {world_size}, "
                         f"e.g. {below or above} or {above}.")


def process_seed(seed: int, rank: int, step: int) -> int:
    """Dropout's seed for process `rank` > 0 (rank 0 uses `seed` itself, as a single process does)."""
    return (seed * 1009 + rank) * 1_000_003 + step


# What a run is made of ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """How long a run is, in optimizer steps. An image budget may end the last epoch part-way."""
    steps_per_epoch: int
    total_steps: int
    num_epochs: int

    @classmethod
    def for_recipe(cls, recipe: TrainConfig, train_images: int, processes: Processes = Processes()) -> "RunPlan":
        check_global_batch(recipe.batch_size, processes.world_size)
        steps_per_epoch = train_images // recipe.batch_size  # whole batches only (drop_last)
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size={recipe.batch_size} is larger than the {train_images} training images")
        total_steps = (recipe.train_images // recipe.batch_size if recipe.train_images
                       else recipe.epochs * steps_per_epoch)
        return cls(steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch))


@dataclass
class TrainState:
    """Everything that changes while training: what a checkpoint must hold to continue exactly."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler | None
    data_generator: torch.Generator   # shuffling and augmentation (CPU, so the same on every device)
    history: list[dict] = field(default_factory=list)
    epoch: int = 0                    # epochs done
    step: int = 0                     # optimizer steps done
    finished: bool = False

    @classmethod
    def fresh(cls, model: torch.nn.Module, recipe: TrainConfig, plan: RunPlan, amp_dtype: torch.dtype | None,
              rank: int = 0) -> "TrainState":
        # Seed here, so dropout's random numbers do not depend on whether the model was built by us.
        seed_everything(recipe.seed)
        if rank:  # each process its own dropout masks; every process the same data order (below)
            torch.manual_seed(process_seed(recipe.seed, rank, 0))
        data_generator = torch.Generator().manual_seed(recipe.seed)
        model.train()
        optimizer = make_optimizer(model, recipe)
        return cls(model, optimizer, make_schedule(optimizer, recipe, plan.steps_per_epoch),
                   make_grad_scaler(amp_dtype), data_generator)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rng_state(self.data_generator, self.device), "history": self.history, "epoch": self.epoch,
                "step": self.step, "finished": self.finished}

    def load_state_dict(self, saved: dict, rank: int = 0, seed: int = 0):
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if not set_rng_state(saved["rng"], self.data_generator, self.device, rank):  # more processes than before
            torch.manual_seed(process_seed(seed, rank, saved["step"]))
        self.history, self.epoch, self.step, self.finished = (saved["history"], saved["epoch"], saved["step"],
                                                              saved["finished"])


@dataclass
class RunFacts:
    """What identifies a run: resuming is refused when any of it changed."""
    architecture: str
    model_config: object
    recipe: TrainConfig
    data: CIFAR10Data

    def checkpoint(self, state: TrainState) -> dict:
        return {"format": CHECKPOINT_FORMAT, **state.state_dict(), "architecture": self.architecture,
                "model_config": self.model_config.to_dict(), "train_config": self.recipe.to_dict(),
                "data": self.data_sizes(), "data_source": self.data.source}

    def data_sizes(self) -> dict:
        return {"train_images": len(self.data.train_labels), "test_images": len(self.data.test_labels)}

    def check_same_run(self, saved: dict, path: Path):
        mismatches = (_differences(saved["model_config"], self.model_config.to_dict())
                      + _differences(saved["train_config"], self.recipe.to_dict())
                      + _differences(saved["data"], self.data_sizes()))
        if mismatches:
            raise CheckpointMismatchError(
                f"{path} was made with different settings, so resuming would not continue the "
                "same run:\n  " + "\n  ".join(mismatches) +
                "\nResume with the original settings, or use another --checkpoint-dir for a new run.")


# The time budget --------------------------------------------------------------------------------
class TimeBudget:
    """A wall-clock budget: when to stop, and how far through the time we are.

    After the last step the final test evaluation and checkpoint must still fit, so it keeps a
    reserve for them: measured once they have run, estimated from the step time before."""

    def __init__(self, seconds: float | None, start_time: float, margin: float | None = None):
        self.seconds, self.deadline = seconds, (start_time + seconds if seconds else None)
        # Slack for what the estimates miss (process start-up, a slow last step): 3.5 s of a 600-s budget.
        self.margin = margin if margin is not None else (0.5 + 0.005 * seconds if seconds else 0.0)
        self.train_start = time.perf_counter()
        self.reserve = 0.0        # seconds to keep for the final evaluation and checkpoint
        self.step_seconds = None  # running estimate of one training step
        self.eval_seconds = None  # measured full test evaluation
        self.save_seconds = 0.0   # measured checkpoint write

    def record_step(self, seconds: float):
        self.step_seconds = seconds if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * seconds

    def time_progress(self, base: float) -> float:
        """Progress in [base, 1] from the clock: `base` at the start of this run, 1 at the stop time."""
        if self.deadline is None:
            return 0.0
        stop = self.deadline - self.reserve - self.margin
        span = max(stop - self.train_start, 1e-9)
        return base + (1 - base) * (time.perf_counter() - self.train_start) / span

    def out_of_time(self, test_images: int, batch_size: int) -> bool:
        """Would one more step leave too little time for the final evaluation?"""
        # The reserve: a measured test pass, or ~1/3 of a training step per image before there is one.
        if self.eval_seconds is not None:
            self.reserve = 1.2 * self.eval_seconds + self.save_seconds
        elif self.step_seconds is not None:
            self.reserve = 0.6 * self.step_seconds * test_images / batch_size + self.save_seconds
        if self.deadline is None:
            return False
        next_step = self.step_seconds or 0.0
        return time.perf_counter() + next_step + self.reserve + self.margin >= self.deadline


# The trainer ------------------------------------------------------------------------------------
class EpochTotals:
    """Running sums over one epoch's batches, kept on the device so that adding costs no sync."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.images = 0
        self.seconds = 0.0           # spent in training steps
        self.stopped_early = False   # the time budget cut the epoch short

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        self.loss_sum += loss.detach().double() * len(labels)
        self.correct += (logits.detach().argmax(-1) == labels).sum()
        self.images += len(labels)


class Trainer:
    """Runs the epochs of one training run: steps, evaluation, checkpoints and the time budget.

    Data parallel (under torchrun, or in any initialised process group): every process draws the
    same global batch from the same generator and trains on its slice; DDP averages the gradients,
    so all processes hold the same weights. Evaluation is split between them and summed, every
    decision (stop for time, a bad loss) is agreed, and rank 0 alone logs and writes checkpoints."""

    def __init__(self, state: TrainState, facts: RunFacts, plan: RunPlan, device: torch.device, *,
                 checkpoint_path: Path | None = None, time_budget: float | None = None,
                 start_time: float | None = None, progress: bool = True, log=print, on_epoch_end=None,
                 processes: Processes = Processes()):
        self.state, self.facts, self.plan, self.device = state, facts, plan, device
        self.recipe, self.data, self.processes = facts.recipe, facts.data, processes
        self.amp_dtype = autocast_dtype(device, self.recipe.amp)
        self.forward = torch.compile(state.model) if self.recipe.compile else state.model
        if processes.joined:  # its backward averages the gradients over the processes (nanoGPT does the same)
            self.forward = DistributedDataParallel(self.forward, device_ids=[device] if device.type == "cuda" else None)
        self.checkpoint_path, self.time_budget = checkpoint_path, time_budget
        self.start_time = time.perf_counter() if start_time is None else start_time
        self.progress = progress and processes.is_main
        self.log = log if processes.is_main else (lambda *_: None)
        self.on_epoch_end = on_epoch_end
        self.budget = TimeBudget(None, self.start_time)
        self.latest_is_good = True  # may the checkpoint on disk become previous.pt when the next is saved?

    def run(self) -> list[dict]:
        """Train until the plan or the time budget ends, then make sure the last epoch was evaluated."""
        state = self.state
        self.budget = TimeBudget(self.time_budget, self.start_time)  # after any resume: it times training
        self.base_progress = state.schedule.progress                  # where a resumed schedule starts
        while not state.finished and state.epoch < self.plan.num_epochs:
            epoch_began = time.perf_counter()
            totals = self.run_epoch()
            if totals.images == 0:  # the budget ran out before this epoch began
                state.finished = True
                break
            self.end_epoch(totals, epoch_began)
        if not state.history or state.history[-1]["test_acc"] is None:
            self.final_evaluation()
        return state.history

    def run_epoch(self) -> EpochTotals:
        """Train one epoch, or until the step plan or the time budget ends it."""
        state, recipe, plan = self.state, self.recipe, self.plan
        totals = EpochTotals(self.device)
        batches = train_batches(self.data.train_images, self.data.train_labels, recipe.batch_size,
                                state.data_generator, augmentation=recipe.augment)
        with tqdm(total=plan.steps_per_epoch, desc=f"epoch {state.epoch + 1}/{plan.num_epochs}",
                  disable=not self.progress, leave=False, unit="step", dynamic_ncols=True) as bar:
            for batch_index, (x, y) in enumerate(batches):  # x (B, 3, 32, 32) floats in [0, 1], y (B,)
                if self.out_of_time():
                    totals.stopped_early = True
                    break
                if state.step >= plan.total_steps:  # the image budget ends inside this epoch
                    break
                mine = self.processes.share(len(y))  # this process's slice of the global batch
                began = time.perf_counter()
                self.train_step(x[mine], y[mine], totals, batch_index)  # (B / processes, 3, 32, 32)
                elapsed = time.perf_counter() - began
                totals.seconds += elapsed
                self.budget.record_step(elapsed)
                if self.progress and (batch_index % 10 == 0 or batch_index == plan.steps_per_epoch - 1):
                    bar.set_postfix(loss=f"{totals.loss_sum.item() / totals.images:.3f}",
                                    acc=f"{totals.correct.item() / totals.images:.1%}",
                                    lr=f"{state.schedule.lr:.2e}", refresh=False)
                bar.update(1)
        return totals

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: EpochTotals, batch_index: int):
        """One optimizer step; raises NonFiniteLossError before a bad step can change the weights."""
        state = self.state
        loss, logits = forward_backward(state.model, self.forward, state.optimizer, state.scaler, x, y,
                                        self.recipe, self.amp_dtype)
        totals.add(loss, logits, y)
        # On CPU checking every step is free; on CUDA it is a sync, so check every 20 steps.
        if self.device.type != "cuda" or batch_index % 20 == 0:
            if not self.processes.all(bool(torch.isfinite(totals.loss_sum))):  # any process's loss
                raise self.non_finite_error(loss, batch_index)
        update_weights(state.optimizer, state.scaler)
        state.step += 1
        state.schedule.step(max(state.step / self.plan.total_steps, self.time_progress()))
        if self.device.type == "cuda" and batch_index % 20 == 0:
            torch.cuda.synchronize()  # honest step timings for the budget

    def out_of_time(self) -> bool:
        """The budget's stop decision, agreed: if one process stops, all do (none waits in vain)."""
        stop = self.budget.out_of_time(len(self.data.test_labels), self.recipe.batch_size)
        return self.processes.any(stop) if self.budget.deadline is not None else stop

    def time_progress(self) -> float:
        """How far through the budget, agreed, so that every process sets the same learning rate."""
        progress = self.budget.time_progress(self.base_progress)
        return self.processes.maximum(progress) if self.budget.deadline is not None else progress

    def non_finite_error(self, loss: torch.Tensor, batch_index: int) -> NonFiniteLossError:
        path = self.checkpoint_path
        kept = (f"the last good checkpoint ({path}, after epoch {self.state.epoch}) is kept"
                if path is not None and path.is_file() else "no checkpoint was written for this run")
        here = not torch.isfinite(loss) or not self.processes.joined  # else it happened in another process
        value = loss.item() if here else "non-finite in another process"
        return NonFiniteLossError(
            f"the training loss became {value} at epoch {self.state.epoch + 1}, step {batch_index + 1} "
            f"(learning rate {self.state.schedule.lr:.3g}). Training stopped before the bad step changed the "
            f"weights on disk; {kept}. Lower the learning rate (--lr), keep gradient clipping on, "
            f"and start a new run in a fresh --checkpoint-dir.")

    def end_epoch(self, totals: EpochTotals, epoch_began: float):
        """Record the epoch, evaluate when due, log, checkpoint, then call the caller's callback."""
        state, recipe, plan = self.state, self.recipe, self.plan
        state.epoch += 1
        state.finished = totals.stopped_early or state.epoch >= plan.num_epochs
        # Sums over every process's slices: the figures a single process would report.
        loss_sum, correct, images = self.processes.sum(torch.stack([
            totals.loss_sum, totals.correct.double(), torch.tensor(float(totals.images), device=self.device,
                                                                   dtype=torch.float64)])).tolist()
        record = {"epoch": state.epoch, "fraction": images / (plan.steps_per_epoch * recipe.batch_size),
                  "train_loss": loss_sum / images, "train_acc": correct / images, "test_loss": None,
                  "test_acc": None, "lr": state.schedule.lr, "img_per_s": images / max(totals.seconds, 1e-9),
                  "images_seen": state.step * recipe.batch_size}
        if state.finished or (recipe.eval_every and state.epoch % recipe.eval_every == 0):
            record["test_loss"], record["test_acc"] = self.evaluate_test()
        record["epoch_seconds"] = time.perf_counter() - epoch_began
        record["elapsed_seconds"] = time.perf_counter() - self.start_time
        state.history.append(record)
        self.log_epoch(record, totals.stopped_early)
        self.save()
        if self.on_epoch_end is not None:
            self.on_epoch_end(state.epoch, state.model, state.history)

    def log_epoch(self, record: dict, stopped_early: bool):
        test_text = (f"test loss {record['test_loss']:.3f} acc {record['test_acc']:.2%}  "
                     if record["test_acc"] is not None else "")
        cut = f" (stopped at {record['fraction']:.0%}: time budget)" if stopped_early else ""
        self.log(f"epoch {record['epoch']}/{self.plan.num_epochs}{cut}  train loss {record['train_loss']:.3f} "
                 f"acc {record['train_acc']:.2%}  {test_text}lr {record['lr']:.2e}  "
                 f"{record['img_per_s']:.0f} img/s  {record['epoch_seconds']:.1f} s")

    def evaluate_test(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the test set; each process evaluates its share and the sums are added."""
        began = time.perf_counter()
        images, labels = self.data.test_images, self.data.test_labels
        mine = self.processes.share(len(labels))
        loss_sum, correct = evaluation_sums(self.state.model, images[mine], labels[mine],
                                            self.recipe.eval_batch_size, self.recipe.amp)
        loss_sum, correct = self.processes.sum(torch.stack([loss_sum, correct.double()])).tolist()
        self.budget.eval_seconds = time.perf_counter() - began
        count = max(len(labels), 1)
        return loss_sum / count, correct / count

    def final_evaluation(self):
        """The budget ran out between two epochs whose last was not evaluated (or before the first)."""
        state = self.state
        test_loss, test_acc = self.evaluate_test()
        if state.history:
            state.history[-1]["test_loss"], state.history[-1]["test_acc"] = test_loss, test_acc
        else:
            state.history.append({"epoch": 0, "fraction": 0.0, "train_loss": None, "train_acc": None,
                                  "test_loss": test_loss, "test_acc": test_acc, "lr": state.schedule.lr,
                                  "img_per_s": None, "images_seen": 0, "epoch_seconds": 0.0,
                                  "elapsed_seconds": time.perf_counter() - self.start_time})
        self.save()

    def save(self):
        """Rank 0 writes the checkpoint (with every process's dropout state); all learn if it worked."""
        if self.checkpoint_path is None:
            return
        began = time.perf_counter()
        dropout_states = self.processes.gather(process_rng_state(self.device))
        error = None
        if self.processes.is_main:
            contents = self.facts.checkpoint(self.state)
            if self.processes.joined:
                contents["rng"]["other_processes"] = dropout_states[1:]
            try:
                save_checkpoint(self.checkpoint_path, contents, keep_previous=self.latest_is_good)
            except BaseException as failure:  # a full disk, a read-only folder, a kill
                error = failure
        if not self.processes.all(error is None):
            raise error or OtherProcessError(f"process 0 could not write {self.checkpoint_path} (its error is printed "
                                        f"above); this process stops with it")
        self.latest_is_good = True
        self.budget.save_seconds = time.perf_counter() - began

    def resume(self):
        """Every process reads the checkpoint (several machines: --checkpoint-dir must be shared)."""
        error = None
        try:
            saved, used = self.read_checkpoint()
        except Exception as failure:
            error = failure
        if not self.processes.all(error is None):
            raise error or OtherProcessError("another process could not read the checkpoint (its error is printed "
                                        "by it); with several machines, --checkpoint-dir must be a folder they share")
        read = self.processes.gather((str(used.name), saved["epoch"], saved["step"]))
        if len(set(read)) > 1:
            raise OtherProcessError(f"the processes read different checkpoints (file, epoch, step): {read}; with "
                               f"several machines, --checkpoint-dir must be a folder they share")
        self.latest_is_good = used == self.checkpoint_path  # else a damaged last.pt must not replace previous.pt
        self.facts.check_same_run(saved, used)
        self.state.load_state_dict(saved, self.processes.rank, self.recipe.seed)
        self.log(f"resumed from {used} after epoch {self.state.epoch} ({self.state.step} steps)")

    def read_checkpoint(self) -> tuple[dict, Path]:
        path = self.checkpoint_path
        if path is None or not (path.is_file() or previous_path(path).is_file()):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; run once without --resume to start one")
        return find_checkpoint(path, map_location=self.device)


def _check_image_model(model_config):
    if getattr(model_config, "modality", "image") != "image" or tuple(model_config.input_axes) != (32, 32) or \
            model_config.input_channels != 3 or model_config.num_classes != 10:
        raise ValueError(f"CIFAR-10 needs an image model with input_axes=(32, 32), input_channels=3 and "
                         f"num_classes=10; config {model_config.name!r} has {model_config.input_axes}, "
                         f"{model_config.input_channels}, {model_config.num_classes}")


def train(model, train_config: TrainConfig | None = None,
          data: CIFAR10Data | None = None, *, device=None, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, time_budget: float | None = None, start_time: float | None = None,
          progress: bool = True, log=None, on_epoch_end=None) -> tuple[torch.nn.Module, list[dict]]:
    """Train on CIFAR-10 and return (model, history).

    model: a registered model config such as a PerceiverConfig (a fresh model is built from
        `train_config.seed`, see `registry.build_model`), or a model whose `.config` is one.
    train_config: the recipe; default `TrainConfig.recipe(config.name)`.
    data: a CIFAR10Data (moved to `device` if needed); default `load_cifar10()`.
    device: default `pick_device()`: $PERCEIVER_EDU_DEVICE, else CUDA if available, else CPU.
    checkpoint_dir: write `last.pt` there after every epoch. resume: continue from it.
    time_budget: seconds, counted from `start_time` (time.perf_counter(); default now), by which the
        whole run, final evaluation included, should be over.
    progress: tqdm bars. log: a function for the per-epoch lines (default tqdm.write).
    on_epoch_end: called as on_epoch_end(epoch, model, history) after each epoch's checkpoint, e.g. to
        save attention maps; `model` is in training mode, `history` the records so far. In a
        data-parallel run every process calls it (write files from rank 0 only).
    Data parallel: inside a torch.distributed process group (torchrun and `python -m perceiver_edu.train`
        set it up) the processes train one model together; `batch_size` is the global batch. See Trainer.
    history: one dict per epoch with epoch, train_loss, train_acc, test_loss, test_acc (None when not
        evaluated that epoch), lr, img_per_s, epoch_seconds, elapsed_seconds, images_seen, fraction
        (of the epoch done: < 1 only for an epoch cut short by the budget).
    """
    start_time = time.perf_counter() if start_time is None else start_time
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    device = torch.device(device) if device is not None else pick_device()
    model_config = model.config if isinstance(model, torch.nn.Module) else model
    architecture = architecture_of(model_config)  # TypeError for anything but a registered config
    _check_image_model(model_config)
    recipe = train_config or TrainConfig.recipe(model_config.name)
    data = (data if data is not None else load_cifar10()).to(device)
    processes = Processes.current()  # rank 0 of 1, unless torchrun (or the caller) started a process group
    plan = RunPlan.for_recipe(recipe, len(data.train_labels), processes)

    seed_everything(recipe.seed)
    model = (model if isinstance(model, torch.nn.Module) else build_model(model_config)).to(device)
    state = TrainState.fresh(model, recipe, plan, autocast_dtype(device, recipe.amp), processes.rank)
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    trainer = Trainer(state, RunFacts(architecture, model_config, recipe, data), plan, device,
                      checkpoint_path=checkpoint_path, time_budget=time_budget, start_time=start_time,
                      progress=progress, log=log or tqdm.write, on_epoch_end=on_epoch_end, processes=processes)
    if resume:
        trainer.resume()
    history = trainer.run()
    model.eval()
    return model, history


# Command line: see cli.py ----------------------------------------------------------------------
def main(argv=None) -> float:
    """`python -m perceiver_edu.train ...`: the command line, which lives in cli.py."""
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    main()
