"""Optimizers and the learning-rate schedule used by the trainer.

Paper, Sec. 4.1 ("Optimization and hyperparameters"): "we found it easier to optimize Perceiver
models using the LAMB optimizer (You et al., 2020), which was developed for optimizing
Transformer-based models. We trained models for 120 epochs with an initial learning rate of 0.004,
decaying it by a factor of 10 at [84, 102, 114] epochs." This module offers AdamW (PyTorch's own, the
usual choice at small batch sizes) and a compact LAMB (You et al. 2020, "Large Batch Optimization for
Deep Learning"), with warmup followed by cosine or linear decay instead of the paper's steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("cosine", "linear", "constant")


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam's update, rescaled per parameter tensor by the trust ratio ||w|| / ||update||.

    update = m_hat / (sqrt(v_hat) + eps) + weight_decay * w;   w <- w - lr * trust * update.
    Tensors without weight decay (biases, norms) use trust ratio 1, as in the reference code.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid LAMB settings lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # A block, not the @torch.no_grad() decorator: mutmut (make mutation) skips decorated functions.
        with torch.no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                    exp_avg.lerp_(p.grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    m_hat = exp_avg / (1 - beta1 ** state["step"])
                    v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                    update = m_hat / (v_hat.sqrt() + group["eps"])
                    trust = 1.0
                    if group["weight_decay"]:
                        update.add_(p, alpha=group["weight_decay"])
                        weight_norm, update_norm = p.norm(), update.norm()
                        trust = torch.where((weight_norm > 0) & (update_norm > 0),
                                            weight_norm / update_norm, torch.ones_like(weight_norm))
                    p.add_(update * trust, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases and LayerNorm gains (1-D tensors) are left alone."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


class LRSchedule:
    """Linear warmup over `warmup_steps`, then cosine / linear decay to `final_fraction` of the peak.

    The decay follows a progress value in [0, 1] that the trainer supplies: step / total_steps for a
    run of fixed length, or the fraction of the wall-clock budget used when a time budget decides the
    length (so the learning rate reaches its floor just as the time runs out). Progress never moves
    backwards. `state_dict()` holds everything needed to continue after a restart.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int,
                 shape: str = "cosine", final_fraction: float = 0.0):
        if shape not in SCHEDULES:
            raise ValueError(f"unknown schedule {shape!r}; choose one of {SCHEDULES}")
        self.optimizer, self.peak_lr, self.shape = optimizer, peak_lr, shape
        self.warmup_steps, self.final_fraction = max(0, int(warmup_steps)), final_fraction
        self.step_count, self.progress = 0, 0.0
        self._apply()

    def factor(self) -> float:
        warmup = min(1.0, (self.step_count + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        p = min(max(self.progress, 0.0), 1.0)
        if self.shape == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * p))
        elif self.shape == "linear":
            decay = 1.0 - p
        else:
            decay = 1.0
        return warmup * (self.final_fraction + (1 - self.final_fraction) * decay)

    @property
    def lr(self) -> float:
        return self.peak_lr * self.factor()

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self, progress: float):
        """Call after each optimizer step with the progress reached (0 = start, 1 = end of training)."""
        self.step_count += 1
        self.progress = max(self.progress, float(progress))
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "progress": self.progress}

    def load_state_dict(self, state: dict):
        self.step_count, self.progress = int(state["step_count"]), float(state["progress"])
        self._apply()
