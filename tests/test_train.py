"""The trainer: it learns, resumes exactly, guards against NaN, respects its budget, and its CLI runs."""
import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perceiver_edu import Perceiver, PerceiverConfig
from perceiver_edu.data import CIFAR10Data
from perceiver_edu.optim import Lamb
from perceiver_edu.train import (CHECKPOINT_NAME, CheckpointMismatchError, NonFiniteLossError, TrainConfig,
                                 confusion_matrix, evaluate, load_checkpoint, main, predict, read_checkpoint,
                                 save_checkpoint, train)

from test_data import make_fake_cifar

REPO = Path(__file__).resolve().parents[1]
# A small relative of the `cpu` preset, so each test takes a second or two on two cores.
TINY = dataclasses.replace(PerceiverConfig.preset("cpu"), name="tiny", patch_size=4, num_bands=4, num_latents=8, latent_dim=32,
                           cross_qk_dim=32, latent_heads=2, self_attends_per_block=2, dropout=0.1)
TIMING_KEYS = {"img_per_s", "epoch_seconds", "elapsed_seconds"}


def synthetic_data(train=256, test=64, seed=0) -> CIFAR10Data:
    """Learnable fake CIFAR: the class sets the mean colour of a noisy image."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.randint(0, 10, (n,), generator=g)
        base = torch.stack([labels * 25, 250 - labels * 25, (labels * 77) % 256], 1).view(n, 3, 1, 1)
        noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=g)
        return (base + noise).clamp(0, 255).to(torch.uint8), labels

    (xtr, ytr), (xte, yte) = split(train), split(test)
    return CIFAR10Data(xtr, ytr, xte, yte, root=Path("synthetic"), official=None, source="synthetic test data")


def without_timings(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_overfits_64_images_to_near_zero_loss():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)  # pure noise,
    labels = torch.randint(0, 10, (64,), generator=g)                                  # random labels
    data = CIFAR10Data(images, labels, images, labels, root=Path("x"), official=None, source="noise")
    config = PerceiverConfig.preset("cpu", patch_size=4, num_latents=16, latent_dim=64, cross_qk_dim=64,
                                    self_attends_per_block=2)
    recipe = TrainConfig(epochs=150, batch_size=64, lr=3e-3, weight_decay=0.0, warmup_epochs=5,
                         label_smoothing=0.0, augment=False, eval_every=0)
    model, history = train(config, recipe, data, device="cpu", progress=False, log=lambda *_: None)
    test_loss, test_acc = evaluate(model, images, labels)
    assert test_acc == 1.0 and test_loss < 0.05, (test_loss, test_acc)
    assert history[-1]["test_loss"] == pytest.approx(test_loss)


def test_learns_synthetic_classes_and_helpers_agree():
    data = synthetic_data(train=512, test=200)
    recipe = TrainConfig(epochs=4, batch_size=64, lr=3e-3, warmup_epochs=0.5)
    model, history = train(TINY, recipe, data, device="cpu", progress=False, log=lambda *_: None)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["test_acc"] > 0.5  # chance is 0.1
    probabilities = predict(model, data.test_images)
    assert probabilities.shape == (200, 10)
    assert torch.allclose(probabilities.sum(-1), torch.ones(200), atol=1e-5)
    matrix = confusion_matrix(probabilities, data.test_labels)
    assert matrix.shape == (10, 10) and matrix.sum() == 200
    assert matrix.trace().item() / 200 == pytest.approx(history[-1]["test_acc"])
    assert matrix[3].sum() == (data.test_labels == 3).sum()  # rows are the true classes


def _interrupt_after(model, calls):
    """Simulate a kill: raise KeyboardInterrupt on the `calls`-th forward pass."""
    count = {"n": 0}

    def hook(module, inputs, output):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt

    return model.register_forward_hook(hook)


def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    data = synthetic_data()
    recipe = TrainConfig(epochs=3, batch_size=32, lr=2e-3, warmup_epochs=0.5)  # dropout on: global RNG matters
    quiet = dict(device="cpu", progress=False, log=lambda *_: None)

    full_model, full_history = train(TINY, recipe, data, checkpoint_dir=tmp_path / "full", **quiet)

    torch.manual_seed(recipe.seed)
    interrupted = Perceiver(TINY)
    # 8 train steps + 1 test batch per epoch: call 2 * 9 + 4 is the 4th step of epoch 3.
    _interrupt_after(interrupted, 2 * 9 + 4)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, recipe, data, checkpoint_dir=tmp_path / "cut", **quiet)
    assert read_checkpoint(tmp_path / "cut")["epoch"] == 2
    assert not (tmp_path / "cut" / (CHECKPOINT_NAME + ".tmp")).exists()

    # Meanwhile other code consumes random numbers: resume must not depend on the process's RNG state.
    torch.rand(100)
    resumed_model, resumed_history = train(TINY, recipe, data, checkpoint_dir=tmp_path / "cut", resume=True,
                                           **quiet)
    assert without_timings(resumed_history) == without_timings(full_history)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = read_checkpoint(tmp_path / "full"), read_checkpoint(tmp_path / "cut")
    for key in ("epoch", "step", "schedule", "finished"):
        assert a[key] == b[key]
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])


def test_resume_refuses_a_different_recipe(tmp_path):
    data = synthetic_data(train=64, test=32)
    recipe = TrainConfig(epochs=1, batch_size=32)
    train(TINY, recipe, data, device="cpu", checkpoint_dir=tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointMismatchError, match=r"lr: checkpoint 0.001 vs now 0.005[\s\S]*another --checkpoint-dir"):
        train(TINY, TrainConfig(epochs=1, batch_size=32, lr=5e-3), data, device="cpu", checkpoint_dir=tmp_path,
              resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TINY, recipe, data, device="cpu", checkpoint_dir=tmp_path / "empty", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = synthetic_data(train=128, test=32)
    recipe = TrainConfig(epochs=3, batch_size=32)
    torch.manual_seed(0)
    model = Perceiver(TINY)
    count = {"n": 0}

    def poison(module, inputs, output):  # from the 3rd step of epoch 2 on (4 steps + 1 eval per epoch)
        count["n"] += 1
        return output * float("nan") if count["n"] >= 5 + 3 else output

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 2, step 3[\s\S]*last good checkpoint") as error:
        train(model, recipe, data, device="cpu", checkpoint_dir=tmp_path, progress=False, log=lambda *_: None)
    assert str(tmp_path / CHECKPOINT_NAME) in str(error.value)
    state = read_checkpoint(tmp_path)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    restored, history = load_checkpoint(tmp_path, device="cpu")
    assert history[0]["epoch"] == 1 and isinstance(restored, Perceiver)


def test_a_kill_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"format": 1, "epoch": 1})

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": 1, "epoch": 2})
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1


class TickingClock:
    """Stands in for time.perf_counter: each reading advances `tick` seconds, whatever the machine's
    load, so a time-budget test sees the same clock, and stops at the same step, everywhere."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_budget_ends_in_time_with_a_final_evaluation(monkeypatch):
    import importlib
    import time
    import types
    trainer = importlib.import_module("perceiver_edu.train")
    clock = TickingClock(0.02)
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(**{**vars(time), "perf_counter": clock}))
    data = synthetic_data(train=512, test=64)
    start = clock()
    model, history = train(TINY, TrainConfig(epochs=1000, batch_size=32), data, device="cpu", time_budget=3.0,
                           start_time=start, progress=False, log=lambda *_: None)
    assert clock.now - start <= 3.0, clock.now - start  # ended in time, final evaluation included
    assert 1 <= len(history) < 1000 and history[-1]["fraction"] <= 1.0
    assert history[-1]["images_seen"] >= 32  # at least one step
    assert history[-1]["test_acc"] is not None
    assert history[-1]["lr"] < 0.2 * 1e-3  # the decay followed the clock to (nearly) zero


@pytest.mark.parametrize("bad, message", [
    (dict(epochs=-1), "epochs must be a positive integer"),
    (dict(batch_size=0), "batch_size"),
    (dict(optimizer="sgd"), "optimizer 'sgd'"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(schedule="step"), "schedule 'step'"),
])
def test_bad_recipes_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_bad_inputs_to_train_are_refused():
    data = synthetic_data(train=64, test=16)
    with pytest.raises(ValueError, match="larger than the 64 training images"):
        train(TINY, TrainConfig(batch_size=128), data, device="cpu", progress=False)
    with pytest.raises(ValueError, match="input_axes=\\(32, 32\\)"):
        train(PerceiverConfig.preset("cpu", input_axes=(16, 16)), TrainConfig(), data, device="cpu")
    with pytest.raises(ValueError, match="time_budget"):
        train(TINY, TrainConfig(), data, device="cpu", time_budget=-5)


def test_lamb_minimises_a_quadratic():
    w = torch.nn.Parameter(torch.full((4, 4), 3.0))
    optimizer = Lamb([{"params": [w], "weight_decay": 0.01}], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        (w ** 2).sum().backward()
        optimizer.step()
    assert w.abs().max() < 0.3


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    import urllib.error
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(SystemExit, match="unknown preset 'huge'"):
        main(["--preset", "huge", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="epochs must be a positive integer"):
        main(["--epochs", "-2", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"PERCEIVER_EDU_DATA[\s\S]*prepare_cifar10.py"):
        main(["--data", str(tmp_path / "missing"), "--device", "cpu"])


def test_cli_smoke_run_on_a_subset(tmp_path):
    make_fake_cifar(tmp_path / "data", rows=40)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PERCEIVER_EDU_DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "perceiver_edu.train", "--data", str(tmp_path / "data"), "--epochs", "2",
         "--train-subset", "128", "--batch-size", "64", "--seed", "1", "--checkpoint-dir", str(tmp_path / "ck"),
         "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"test accuracy: \d{1,3}\.\d\d%", lines[-1]), lines[-1]
    assert any("img/s" in line and line.startswith("epoch 2/2") for line in lines)
    assert "NOT the official" in result.stdout  # the copy used is reported
    state = read_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 2 and state["train_config"]["seed"] == 1
    assert math.isclose(float(lines[-1].split()[-1][:-1]), 100 * state["history"][-1]["test_acc"], abs_tol=0.006)


def test_an_image_budget_stops_mid_epoch_and_the_schedule_ends_there():
    data = synthetic_data(train=256, test=64)
    recipe = TrainConfig(epochs=30, batch_size=64, lr=3e-3, warmup_epochs=0.5, train_images=384,
                         final_lr_fraction=0.0)
    _, history = train(TINY, recipe, data, device="cpu", progress=False, log=lambda *_: None)
    # 384 images = 6 steps of 64 = one full epoch (4 steps) and half of the next; epochs is ignored
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["fraction"] for h in history] == [1.0, 0.5]
    assert history[-1]["images_seen"] == 384
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine decay reached its floor
    assert history[-1]["test_acc"] is not None
    with pytest.raises(ValueError, match="train_images"):
        TrainConfig(batch_size=64, train_images=10)


def test_trains_and_checkpoints_any_registered_classifier(tmp_path):
    from perceiver_edu import registry

    @dataclasses.dataclass(frozen=True)
    class LinearConfig:
        name: str = "linear"
        input_axes: tuple = (32, 32)
        input_channels: int = 3
        num_classes: int = 10

        def to_dict(self):
            return dataclasses.asdict(self)

        @classmethod
        def from_dict(cls, values):
            return cls(**{**values, "input_axes": tuple(values["input_axes"])})

    class Linear(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.layer = torch.nn.Linear(3 * 32 * 32, config.num_classes)

        def forward(self, x):
            return self.layer(x.flatten(1))

    registry.register("test-linear", LinearConfig, Linear)
    try:
        data = synthetic_data(train=256, test=64)
        recipe = TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup_epochs=0.0)
        model, history = train(LinearConfig(), recipe, data, device="cpu", checkpoint_dir=tmp_path,
                               progress=False, log=lambda *_: None)
        assert isinstance(model, Linear) and history[-1]["test_acc"] > 0.3
        restored, _ = load_checkpoint(tmp_path, device="cpu")
        assert isinstance(restored, Linear)
        assert torch.equal(restored.layer.weight, model.layer.weight)
        with pytest.raises(TypeError, match="not a registered model config"):
            train(object(), recipe, data, device="cpu", progress=False)
    finally:
        registry.ARCHITECTURES.pop("test-linear")


def test_on_epoch_end_sees_each_epoch_after_its_checkpoint(tmp_path):
    data = synthetic_data(train=128, test=32)
    recipe = TrainConfig(epochs=3, batch_size=32, eval_every=2)
    calls = []

    def on_epoch_end(epoch, model, history):
        saved = read_checkpoint(tmp_path)  # the epoch's checkpoint is already on disk
        calls.append((epoch, len(history), history[-1]["test_acc"] is not None, saved["epoch"],
                      {k: v.clone() for k, v in model.state_dict().items()}))

    model, history = train(TINY, recipe, data, device="cpu", checkpoint_dir=tmp_path, progress=False,
                           log=lambda *_: None, on_epoch_end=on_epoch_end)
    assert [c[:4] for c in calls] == [(1, 1, False, 1), (2, 2, True, 2), (3, 3, True, 3)]
    assert all(torch.equal(a, b) for a, b in zip(calls[-1][4].values(), model.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(calls[0][4].values(), model.state_dict().values()))


def test_the_command_line_runs_without_warnings():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-W", "error", "-m", "perceiver_edu.train", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "--resume" in result.stdout


class _StopAfter(Exception):
    pass


def _stop_after(epochs):
    def on_epoch_end(epoch, model, history):
        if epoch == epochs:
            raise _StopAfter(epoch)
    return on_epoch_end


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data = synthetic_data(train=128, test=32)
    recipe = TrainConfig(epochs=3, batch_size=32, lr=2e-3)
    quiet = dict(device="cpu", progress=False, log=lambda *_: None)
    full_model, full_history = train(TINY, recipe, data, **quiet)
    with pytest.raises(_StopAfter):
        train(TINY, recipe, data, checkpoint_dir=tmp_path, on_epoch_end=_stop_after(2), **quiet)
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    assert read_checkpoint(last)["epoch"] == 2 and read_checkpoint(previous)["epoch"] == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated on disk

    lines = []
    with pytest.warns(UserWarning, match=r"last\.pt is not a readable checkpoint[\s\S]*using \S*previous\.pt "
                                         r"instead \(the checkpoint before it, after epoch 1\)"):
        with pytest.raises(_StopAfter):
            train(TINY, recipe, data, checkpoint_dir=tmp_path, resume=True, device="cpu", progress=False,
                  log=lines.append, on_epoch_end=_stop_after(2))
    assert lines[0] == f"resumed from {previous} after epoch 1 (4 steps)"
    assert read_checkpoint(previous)["epoch"] == 1  # the damaged file did not replace the good one
    assert read_checkpoint(last)["epoch"] == 2

    resumed_model, resumed_history = train(TINY, recipe, data, checkpoint_dir=tmp_path, resume=True, **quiet)
    assert without_timings(resumed_history) == without_timings(full_history)
    assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(),
                                                 resumed_model.state_dict().values()))
    assert read_checkpoint(previous)["epoch"] == 2 and read_checkpoint(last)["epoch"] == 3

    for path in (last, previous):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"last\.pt is not a readable[\s\S]*previous\.pt is not a readable"
                                         r"[\s\S]*Delete both to start again"):
        read_checkpoint(tmp_path)
