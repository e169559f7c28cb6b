"""Train a Perceiver on CIFAR-10: a resumable trainer with a wall-clock budget, as an API and a CLI.

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
- A NaN/inf loss raises NonFiniteLossError at once; the last good checkpoint is untouched.
- `time_budget` seconds: the learning-rate decay follows the clock so that it ends when the time does,
  and training stops early enough to leave room for the final test evaluation inside the budget.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import PerceiverConfig
from .device import describe_device, pick_device, seed_everything
from .data import CIFAR10Data, eval_batches, load_cifar10, to_float, train_batches
from .model import Perceiver, count_parameters
from .registry import architecture_of, build_model, config_from_dict
from .optim import OPTIMIZERS, SCHEDULES, LRSchedule, build_optimizer

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


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
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             amp: str = "auto") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over a labelled set already on the model's device."""
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
    count = max(len(labels), 1)
    return loss_sum.item() / count, correct.item() / count


# Checkpoints ----------------------------------------------------------------------------------
def _rng_state(data_generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "data": data_generator.get_state()}


def _set_rng_state(state: dict, data_generator: torch.Generator):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_generator.set_state(state["data"])


def save_checkpoint(path: str | os.PathLike, state: dict):
    """Write to PATH.tmp, flush to disk, then rename over PATH: a kill mid-write leaves PATH intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # weights_only=False: our checkpoints also hold Python/numpy RNG states. Only load files you made.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); "
                         f"delete it to start again") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a perceiver_edu checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def load_checkpoint(path: str | os.PathLike, device=None) -> tuple[torch.nn.Module, list[dict]]:
    """(model in eval mode, history) from a checkpoint file or a checkpoint directory."""
    device = torch.device(device) if device is not None else pick_device()
    state = read_checkpoint(path, map_location=device)
    model = build_model(config_from_dict(state["model_config"], state.get("architecture", "perceiver"))).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["history"]


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
            if _normalise(saved.get(k)) != _normalise(current.get(k))]


def _normalise(value):
    return tuple(value) if isinstance(value, list) else value


# Training ---------------------------------------------------------------------------------------
class _Budget:
    """Tracks a wall-clock budget: when to stop, and how far through the time we are."""

    def __init__(self, seconds: float | None, start_time: float, margin: float | None = None):
        self.seconds, self.deadline = seconds, (start_time + seconds if seconds else None)
        # Slack for what the estimates miss (process start-up, a slow last step): 3.5 s of a 600-s budget.
        self.margin = margin if margin is not None else (0.5 + 0.005 * seconds if seconds else 0.0)
        self.train_start = time.perf_counter()
        self.reserve = 0.0  # seconds to keep for the final evaluation and checkpoint

    def time_progress(self, base: float) -> float:
        """Progress in [base, 1] from the clock: `base` at the start of this run, 1 at the stop time."""
        if self.deadline is None:
            return 0.0
        stop = self.deadline - self.reserve - self.margin
        span = max(stop - self.train_start, 1e-9)
        return base + (1 - base) * (time.perf_counter() - self.train_start) / span

    def out_of_time(self, next_step_seconds: float) -> bool:
        if self.deadline is None:
            return False
        return time.perf_counter() + next_step_seconds + self.reserve + self.margin >= self.deadline


def train(model, train_config: TrainConfig | None = None,
          data: CIFAR10Data | None = None, *, device=None, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, time_budget: float | None = None, start_time: float | None = None,
          progress: bool = True, log=None) -> tuple[torch.nn.Module, list[dict]]:
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
    history: one dict per epoch with epoch, train_loss, train_acc, test_loss, test_acc (None when not
        evaluated that epoch), lr, img_per_s, epoch_seconds, elapsed_seconds, images_seen, fraction
        (of the epoch done: < 1 only for an epoch cut short by the budget).
    """
    start_time = time.perf_counter() if start_time is None else start_time
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    log = log or tqdm.write
    device = torch.device(device) if device is not None else pick_device()
    model_config = model.config if isinstance(model, torch.nn.Module) else model
    architecture = architecture_of(model_config)  # TypeError for anything but a registered config
    if getattr(model_config, "modality", "image") != "image" or tuple(model_config.input_axes) != (32, 32) or \
            model_config.input_channels != 3 or model_config.num_classes != 10:
        raise ValueError(f"CIFAR-10 needs an image model with input_axes=(32, 32), input_channels=3 and "
                         f"num_classes=10; config {model_config.name!r} has {model_config.input_axes}, "
                         f"{model_config.input_channels}, {model_config.num_classes}")
    tc = train_config or TrainConfig.recipe(model_config.name)
    data = (data if data is not None else load_cifar10()).to(device)
    steps_per_epoch = len(data.train_labels) // tc.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={tc.batch_size} is larger than the {len(data.train_labels)} training images")
    # An image budget fixes the number of steps; the last epoch may be partial.
    total_steps = tc.train_images // tc.batch_size if tc.train_images else tc.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    seed_everything(tc.seed)
    model = (model if isinstance(model, torch.nn.Module) else build_model(model_config)).to(device)
    # Seed again, so dropout's random numbers do not depend on whether the model was built here.
    seed_everything(tc.seed)
    data_generator = torch.Generator().manual_seed(tc.seed)
    model.train()
    optimizer = build_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, tc.betas)
    schedule = LRSchedule(optimizer, tc.lr, round(tc.warmup_epochs * steps_per_epoch), tc.schedule,
                          tc.final_lr_fraction)
    amp_dtype = autocast_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    forward = torch.compile(model) if tc.compile else model
    history: list[dict] = []
    epoch, step, finished = 0, 0, False
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    data_facts = {"train_images": len(data.train_labels), "test_images": len(data.test_labels)}

    if resume:
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}; run once without --resume "
                                    f"to start one")
        state = read_checkpoint(checkpoint_path, map_location=device)
        mismatches = (_differences(state["model_config"], model_config.to_dict())
                      + _differences(state["train_config"], tc.to_dict())
                      + _differences(state["data"], data_facts))
        if mismatches:
            raise CheckpointMismatchError(
                f"{checkpoint_path} was made with different settings, so resuming would not continue the "
                "same run:\n  " + "\n  ".join(mismatches) +
                "\nResume with the original settings, or use another --checkpoint-dir for a new run.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], data_generator)
        history, epoch, step, finished = state["history"], state["epoch"], state["step"], state["finished"]
        log(f"resumed from {checkpoint_path} after epoch {epoch} ({step} steps)")

    def checkpoint_state() -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng": _rng_state(data_generator), "history": history, "epoch": epoch, "step": step,
                "finished": finished, "architecture": architecture, "model_config": model_config.to_dict(),
                "train_config": tc.to_dict(),
                "data": data_facts, "data_source": data.source}

    budget = _Budget(time_budget, start_time)
    base_progress = schedule.progress
    step_seconds = None  # running estimate of one training step
    eval_seconds = None  # measured full test evaluation
    save_seconds = 0.0   # measured checkpoint write
    test_size = len(data.test_labels)

    def evaluate_test():
        nonlocal eval_seconds
        began = time.perf_counter()
        result = evaluate(model, data.test_images, data.test_labels, tc.eval_batch_size, tc.amp)
        eval_seconds = time.perf_counter() - began
        return result

    while not finished and epoch < num_epochs:
        epoch_began = time.perf_counter()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen, train_seconds = 0, 0.0
        stopped_early = False
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress,
                   leave=False, unit="step", dynamic_ncols=True)
        batches = train_batches(data.train_images, data.train_labels, tc.batch_size, data_generator,
                                augmentation=tc.augment)
        for batch_index, (x, y) in enumerate(batches):
            # The reserve keeps room for the final test pass: a measured one, or ~1/3 of a training step per image.
            if eval_seconds is not None:
                budget.reserve = 1.2 * eval_seconds + save_seconds
            elif step_seconds is not None:
                budget.reserve = 0.6 * step_seconds * test_size / tc.batch_size + save_seconds
            if budget.out_of_time(step_seconds or 0.0):
                stopped_early = True
                break
            if step >= total_steps:  # the image budget ends inside this epoch
                break
            step_began = time.perf_counter()
            with _autocast(device, amp_dtype):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += len(y)
            # On CPU checking every step is free; on CUDA it is a sync, so check every 20 steps.
            if device.type != "cuda" or batch_index % 20 == 0:
                if not torch.isfinite(loss_sum):
                    bar.close()
                    kept = (f"the last good checkpoint ({checkpoint_path}, after epoch {epoch}) is kept"
                            if checkpoint_path is not None and checkpoint_path.is_file()
                            else "no checkpoint was written for this run")
                    raise NonFiniteLossError(
                        f"the training loss became {loss.item()} at epoch {epoch + 1}, step {batch_index + 1} "
                        f"(learning rate {schedule.lr:.3g}). Training stopped before the bad step changed the "
                        f"weights on disk; {kept}. Lower the learning rate (--lr), keep gradient clipping on, "
                        f"and start a new run in a fresh --checkpoint-dir.")
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            schedule.step(max(step / total_steps, budget.time_progress(base_progress)))
            if device.type == "cuda" and batch_index % 20 == 0:
                torch.cuda.synchronize()  # honest step timings for the budget
            elapsed = time.perf_counter() - step_began
            train_seconds += elapsed
            step_seconds = elapsed if step_seconds is None else 0.9 * step_seconds + 0.1 * elapsed
            if progress and (batch_index % 10 == 0 or batch_index == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}",
                                lr=f"{schedule.lr:.2e}", refresh=False)
            bar.update(1)
        bar.close()
        if seen == 0:  # the budget ran out before this epoch began
            finished = True
            break
        epoch += 1
        finished = stopped_early or epoch >= num_epochs
        record = {"epoch": epoch, "fraction": seen / (steps_per_epoch * tc.batch_size),
                  "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                  "test_loss": None, "test_acc": None, "lr": schedule.lr,
                  "img_per_s": seen / max(train_seconds, 1e-9), "images_seen": step * tc.batch_size}
        if finished or (tc.eval_every and epoch % tc.eval_every == 0):
            record["test_loss"], record["test_acc"] = evaluate_test()
        record["epoch_seconds"] = time.perf_counter() - epoch_began
        record["elapsed_seconds"] = time.perf_counter() - start_time
        history.append(record)
        test_text = (f"test loss {record['test_loss']:.3f} acc {record['test_acc']:.2%}  "
                     if record["test_acc"] is not None else "")
        cut = f" (stopped at {record['fraction']:.0%}: time budget)" if stopped_early else ""
        log(f"epoch {epoch}/{num_epochs}{cut}  train loss {record['train_loss']:.3f} acc {record['train_acc']:.2%}  "
            f"{test_text}lr {record['lr']:.2e}  {record['img_per_s']:.0f} img/s  {record['epoch_seconds']:.1f} s")
        if checkpoint_path is not None:
            began = time.perf_counter()
            save_checkpoint(checkpoint_path, checkpoint_state())
            save_seconds = time.perf_counter() - began

    if not history or history[-1]["test_acc"] is None:
        # The budget ran out between two epochs whose last was not evaluated (or before the first).
        test_loss, test_acc = evaluate_test()
        if history:
            history[-1]["test_loss"], history[-1]["test_acc"] = test_loss, test_acc
        else:
            history.append({"epoch": 0, "fraction": 0.0, "train_loss": None, "train_acc": None,
                            "test_loss": test_loss, "test_acc": test_acc, "lr": schedule.lr, "img_per_s": None,
                            "images_seen": 0, "epoch_seconds": 0.0,
                            "elapsed_seconds": time.perf_counter() - start_time})
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, checkpoint_state())
    model.eval()
    return model, history


# Command line ------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perceiver_edu.train",
                                description="Train a Perceiver on CIFAR-10 (CPU or CUDA). The last line printed "
                                            "is 'test accuracy: XX.XX%'.")
    p.add_argument("--preset", help="model preset and its recipe (default: seed on CUDA, cpu on CPU); "
                                    f"one of {', '.join(PerceiverConfig.preset_names())}")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's; with --time-budget "
                                              "and no --epochs, as many as the time allows)")
    p.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: $PERCEIVER_EDU_DATA, "
                                  "else ~/.cache/perceiver_edu)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="finish (final evaluation included) within this many seconds")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="budget: train on N images in all (whole batches), instead of whole epochs")
    p.add_argument("--train-subset", type=int, metavar="N", help="train on a fixed random subset of N images")
    p.add_argument("--test-subset", type=int, metavar="N", help="evaluate on a fixed random subset of N images")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--checkpoint-dir", help="write last.pt here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint-dir")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--eval-every", type=int, help="test evaluation every N epochs (0: only at the end)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: $PERCEIVER_EDU_DEVICE, else cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# Epochs for a budgeted run without --epochs: an upper bound only, the clock decides the length.
BUDGET_EPOCHS = 1000


def main(argv=None) -> float:
    start_time = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        preset = args.preset or ("seed" if device.type == "cuda" else "cpu")
        model_config = PerceiverConfig.preset(preset)
        overrides = {key: value for key, value in (
            ("epochs", args.epochs), ("seed", args.seed), ("batch_size", args.batch_size), ("lr", args.lr),
            ("optimizer", args.optimizer), ("eval_every", args.eval_every),
            ("train_images", args.train_images)) if value is not None}
        if args.time_budget is not None and args.epochs is None:
            overrides["epochs"] = BUDGET_EPOCHS
        if args.compile:
            overrides["compile"] = True
        train_config = TrainConfig.recipe(preset, **overrides)
        data = load_cifar10(args.data, device=device, train_subset=args.train_subset, test_subset=args.test_subset)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    print(f"{model_config.name} Perceiver: {count_parameters(Perceiver(model_config)) / 1e6:.2f}M parameters, "
          f"{model_config.num_latents} latents x {model_config.latent_dim}, {model_config.num_inputs} inputs "
          f"x {model_config.input_dim} channels; {describe_device(device)}, "
          f"{autocast_dtype(device, train_config.amp) or 'fp32'}")
    print(data.describe())
    print(f"recipe: {train_config}")
    try:
        model, history = train(model_config, train_config, data, device=device, checkpoint_dir=args.checkpoint_dir,
                               resume=args.resume, time_budget=args.time_budget, start_time=start_time,
                               progress=not args.no_progress, log=print)
    except (NonFiniteLossError, CheckpointMismatchError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        where = (f"continue with the same command plus --resume (checkpoint: {args.checkpoint_dir})"
                 if args.checkpoint_dir else "use --checkpoint-dir D to be able to --resume")
        sys.exit(f"interrupted; {where}")
    final = history[-1]
    print(f"trained {sum(h['fraction'] for h in history):.2f} epochs in {time.perf_counter() - start_time:.1f} s "
          f"(budget {args.time_budget or 'none'})")
    print(f"test accuracy: {100 * final['test_acc']:.2f}%")
    return final["test_acc"]


if __name__ == "__main__":
    main()
