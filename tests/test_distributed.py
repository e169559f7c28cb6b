"""Data-parallel training (torchrun / DDP) on the CPU with gloo, two processes.

Two processes with the same global batch must train the same model as one process; a checkpoint
written by two resumes in one; a process that fails ends the others with a clear error; bad
launches are refused before anything starts. Tiny model, synthetic data: a few seconds each.
"""
import dataclasses
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from perceiver_edu import Perceiver
from perceiver_edu.train import TrainConfig, main, read_checkpoint, train

from test_data import make_fake_cifar
from test_train import REPO, TINY, synthetic_data

# Dropout off: each process draws its own dropout masks, so with dropout the runs could not match.
TINY_NO_DROPOUT = dataclasses.replace(TINY, dropout=0.0)
RECIPE = TrainConfig(epochs=3, batch_size=32, lr=2e-3, warmup_epochs=0.5)  # 4 steps per epoch
QUIET = dict(device="cpu", progress=False, log=lambda *_: None)


def data():
    return synthetic_data(train=128, test=40)


class StopAfter(Exception):
    """Raised from on_epoch_end: the run stops as if killed right after that epoch's checkpoint."""


def stop_after(epochs, seen):
    def on_epoch_end(epoch, model, history):
        if epoch == epochs:
            seen.update(weights={k: v.clone() for k, v in model.state_dict().items()}, history=list(history))
            raise StopAfter(epoch)
    return on_epoch_end


# What each of the two processes runs ---------------------------------------------------------------
def train_two_epochs_of_three(rank, out):
    seen = {"rows": []}  # (training?, batch rows) of every forward pass in this process
    torch.manual_seed(RECIPE.seed)  # the model train() would build from the config
    model = Perceiver(TINY_NO_DROPOUT)
    model.register_forward_hook(lambda module, inputs, output: seen["rows"].append((module.training,
                                                                                     len(inputs[0]))))
    with pytest.raises(StopAfter):
        train(model, RECIPE, data(), checkpoint_dir=out / "ck", on_epoch_end=stop_after(2, seen), **QUIET)
    return seen


def budget_then_failures(rank, out):
    """A time budget (each process has its own clock), a NaN loss in process 1 only, then a
    checkpoint folder that process 0 cannot create."""
    DistributedDataParallel(torch.nn.Linear(1, 1))  # the first one imports for seconds: not in the budget
    dist.barrier()  # nor the wait for the other process
    model, history = train(TINY, TrainConfig(epochs=1000, batch_size=32), data(), time_budget=4.0, **QUIET)
    outcomes = {"budget": {"weights": model.state_dict(), "steps": history[-1]["images_seen"] // 32,
                           "lr": history[-1]["lr"], "test_acc": history[-1]["test_acc"]}}
    torch.manual_seed(0)
    model = Perceiver(TINY_NO_DROPOUT)
    calls = {"n": 0}

    def poison(module, inputs, output):  # process 1, from its 3rd forward pass (3rd step of epoch 1)
        calls["n"] += 1
        return output * float("nan") if rank == 1 and calls["n"] >= 3 else output

    model.register_forward_hook(poison)
    for name, run in (("nan", lambda: train(model, RECIPE, data(), **QUIET)),
                      ("unwritable", lambda: train(TINY_NO_DROPOUT, RECIPE, data(), **QUIET,
                                                   checkpoint_dir=out / "a-file" / "ck"))):
        try:
            run()
            outcomes[name] = ("finished", "")
        except Exception as error:
            outcomes[name] = (type(error).__name__, str(error))
    return outcomes


JOBS = {"train": train_two_epochs_of_three, "fail": budget_then_failures}


def process_main(rank, world_size, job, out):
    torch.set_num_threads(1)  # two processes share two cores
    out = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))  # a hang fails the test instead of stalling it
    try:
        result = JOBS[job](rank, out)
    finally:
        dist.destroy_process_group()
    torch.save(result, out / f"rank{rank}.pt")


def spawn(job, out, world_size=2) -> list:
    """Run JOBS[job] in `world_size` gloo processes; what each returned, in rank order."""
    mp.spawn(process_main, args=(world_size, job, str(out)), nprocs=world_size, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


# The tests -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-processes")
    return out, spawn("train", out)


def key_biases(model) -> dict:
    """{parameter name: slice} of the key projections' biases.

    A key bias adds the same number q.b to every attention logit of a query, which softmax ignores:
    its gradient is zero in exact arithmetic, so what it receives is rounding noise, which Adam
    scales up to steps of about the learning rate. Two runs that add in a different order (one
    process or two) therefore drift apart there, without any effect on what the model computes."""
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, "to_kv"):     # cross-attention: [keys | values]
            found[f"{name}.to_kv.bias"] = slice(0, module.qk_dim)
        if hasattr(module, "to_qkv"):    # self-attention: [queries | keys | values]
            found[f"{name}.to_qkv.bias"] = slice(module.qk_dim, 2 * module.qk_dim)
    return found


def largest_difference(a: dict, b: dict) -> float:
    """Over every weight except the key biases' (see key_biases)."""
    ignored = key_biases(Perceiver(TINY_NO_DROPOUT))
    assert len(ignored) == 3  # one cross-attention, two latent self-attentions
    largest = 0.0
    for name in a:
        difference = (a[name].double() - b[name].double()).abs()
        if name in ignored:
            difference[ignored[name]] = 0
        largest = max(largest, difference.max().item())
    return largest


def output_difference(a: dict, b: dict) -> float:
    """Largest difference of the logits of two weight sets on the test images."""
    logits = []
    for weights in (a, b):
        model = Perceiver(TINY_NO_DROPOUT).eval()
        model.load_state_dict(weights)
        with torch.no_grad():
            logits.append(model(data().test_images.float() / 255))
    return (logits[0] - logits[1]).abs().max().item()


def test_two_processes_train_the_same_weights_as_one(two_process_run):
    _, (rank0, rank1) = two_process_run
    one = {}
    with pytest.raises(StopAfter):
        train(TINY_NO_DROPOUT, RECIPE, data(), on_epoch_end=stop_after(2, one), **QUIET)
    for rank in (rank0, rank1):  # each process trained on half of each global batch and tested half the images
        assert rank["rows"] == [(True, 16)] * 4 + [(False, 20)] + [(True, 16)] * 4 + [(False, 20)]
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])  # DDP keeps them equal
    # After 8 steps with the same global batches: the same weights, and the same function.
    assert largest_difference(one["weights"], rank0["weights"]) < 1e-5
    assert output_difference(one["weights"], rank0["weights"]) < 1e-5
    assert [h["test_acc"] for h in rank0["history"]] == [h["test_acc"] for h in one["history"]]  # sharded, summed
    for mine, single in zip(rank0["history"], one["history"]):
        assert mine["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
        assert mine["fraction"] == single["fraction"] == 1.0 and mine["images_seen"] == single["images_seen"]


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run):
    out, _ = two_process_run
    saved = read_checkpoint(out / "ck")
    assert saved["epoch"] == 2 and len(saved["rng"]["other_processes"]) == 1  # process 1's dropout state
    full_model, full_history = train(TINY_NO_DROPOUT, RECIPE, data(), **QUIET)
    lines = []
    resumed_model, resumed_history = train(TINY_NO_DROPOUT, RECIPE, data(), checkpoint_dir=out / "ck", resume=True,
                                           device="cpu", progress=False, log=lines.append)
    assert lines[0].startswith("resumed from") and "after epoch 2 (8 steps)" in lines[0]
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    assert [h["test_acc"] for h in resumed_history] == [h["test_acc"] for h in full_history]
    assert largest_difference(full_model.state_dict(), resumed_model.state_dict()) < 1e-5
    assert output_difference(full_model.state_dict(), resumed_model.state_dict()) < 1e-5


def test_processes_agree_on_the_budget_and_a_failing_one_ends_them_all_with_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("a file where the checkpoint folder should go")
    rank0, rank1 = spawn("fail", tmp_path)
    # Each process reads its own clock, yet they stop at the same step with the same learning rate
    # (the schedule follows the clock): the same model, evaluated once.
    a, b = rank0["budget"], rank1["budget"]
    assert a["steps"] == b["steps"] >= 1 and a["lr"] == b["lr"] and a["test_acc"] == b["test_acc"]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    # The loss is checked together: both stop at the same step, before the bad update.
    assert rank1["nan"][0] == rank0["nan"][0] == "NonFiniteLossError"
    assert re.search(r"loss became nan at epoch 1, step 3", rank1["nan"][1])
    assert re.search(r"loss became non-finite in another process at epoch 1, step 3", rank0["nan"][1])
    # Only process 0 writes; when it cannot, the others hear of it instead of waiting for it.
    assert rank0["unwritable"][0] in ("FileExistsError", "NotADirectoryError"), rank0["unwritable"]
    assert rank1["unwritable"] == ("OtherProcessError", f"process 0 could not write {tmp_path}/a-file/ck/last.pt "
                                                         f"(its error is printed above); this process stops with it")


def torchrun_environment(monkeypatch, world_size):
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", str(world_size)),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):  # nothing may connect to it
        monkeypatch.setenv(name, value)


def test_a_global_batch_that_does_not_divide_is_refused_before_the_processes_meet(monkeypatch, tmp_path):
    torchrun_environment(monkeypatch, world_size=3)
    with pytest.raises(SystemExit, match=r"error \(process 0 of 3\): --batch-size is the global batch, split "
                                         r"evenly among the 3 processes: 64 does not divide by 3\. Use a multiple "
                                         r"of 3, e.g\. 63 or 66\."):
        main(["--batch-size", "64", "--device", "cpu", "--data", str(tmp_path)])
    assert not dist.is_initialized()


def test_cuda_asked_for_but_absent_is_refused_before_the_processes_meet(monkeypatch, tmp_path):
    torchrun_environment(monkeypatch, world_size=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"error \(process 0 of 2\): device 'cuda' was asked for but CUDA is not "
                                         r"available; use 'cpu'"):
        main(["--device", "cuda", "--data", str(tmp_path)])
    assert not dist.is_initialized()


def test_torchrun_runs_the_command_line_in_two_processes_and_its_checkpoint_resumes(tmp_path):
    make_fake_cifar(tmp_path / "data", rows=40)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["-m", "perceiver_edu.train", "--data", str(tmp_path / "data"), "--device", "cpu", "--train-subset", "64",
            "--batch-size", "32", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert sum(line.startswith("test accuracy:") for line in lines) == 1  # process 0 alone prints
    assert sum(line.startswith("epoch 1/1") for line in lines) == 1
    assert "2 processes, data parallel over gloo" in run.stdout
    saved = read_checkpoint(tmp_path / "ck")
    assert saved["epoch"] == 1 and len(saved["rng"]["other_processes"]) == 1

    resumed = subprocess.run([sys.executable, *args, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'ck' / 'last.pt'} after epoch 1 (2 steps)" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == lines[-1]  # the same final accuracy
