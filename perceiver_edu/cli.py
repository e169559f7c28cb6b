"""The command line: `python -m perceiver_edu.train ...` (train.py hands its `main` to this module).

It lives apart from train.py so that the package can be imported without the command line, and
`python -m perceiver_edu.train` runs without runpy's "found in sys.modules" warning.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch.distributed as dist

from .config import PerceiverConfig
from .data import load_cifar10
from .device import (Processes, describe_device, device_of_process, join_processes, launched_by_torchrun,
                     leave_processes, pick_device)
from .model import Perceiver, count_parameters
from .optim import OPTIMIZERS
from .train import (CheckpointMismatchError, NonFiniteLossError, OtherProcessError, TrainConfig, autocast_dtype,
                    check_global_batch, train)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perceiver_edu.train",
                                description="Train a Perceiver on CIFAR-10 (CPU or CUDA). The last line printed "
                                            "is 'test accuracy: XX.XX%'. Data parallel on several GPUs or "
                                            "machines: torchrun --nproc_per_node=N -m perceiver_edu.train ... "
                                            "(--batch-size is then the global batch).")
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
    p.add_argument("--batch-size", type=int, help="images per step, over all processes under torchrun")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--eval-every", type=int, help="test evaluation every N epochs (0: only at the end)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: $PERCEIVER_EDU_DEVICE, else cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# Epochs for a budgeted run without --epochs: an upper bound only, the clock decides the length.
BUDGET_EPOCHS = 1000


def _recipe(args, preset: str) -> TrainConfig:
    overrides = {key: value for key, value in (
        ("epochs", args.epochs), ("seed", args.seed), ("batch_size", args.batch_size), ("lr", args.lr),
        ("optimizer", args.optimizer), ("eval_every", args.eval_every),
        ("train_images", args.train_images)) if value is not None}
    if args.time_budget is not None and args.epochs is None:
        overrides["epochs"] = BUDGET_EPOCHS
    if args.compile:
        overrides["compile"] = True
    return TrainConfig.recipe(preset, **overrides)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (a damaged or old checkpoint) as one line for a person, not a source location."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> float:
    """Train from the command line; under torchrun, as one of the processes of a data-parallel run."""
    start_time = time.perf_counter()
    args = _parser().parse_args(argv)
    processes = Processes.from_environment()  # rank 0 of 1 without torchrun
    with warnings.catch_warnings():  # restores the usual warning display afterwards
        warnings.showwarning = _print_warning
        if not processes.is_main:
            warnings.simplefilter("ignore")  # rank 0 says it once
        try:
            return _train_from_args(args, start_time, processes)
        finally:
            if launched_by_torchrun():
                leave_processes()


def _fail(error: BaseException, processes: Processes):
    """Exit with the error; in a data-parallel run say which process it was."""
    where = f" (process {processes.rank} of {processes.world_size})" if processes.world_size > 1 else ""
    sys.exit(f"error{where}: {error}")


def _train_from_args(args, start_time: float, processes: Processes) -> float:
    try:
        device = pick_device(args.device)
        preset = args.preset or ("seed" if device.type == "cuda" else "cpu")
        model_config = PerceiverConfig.preset(preset)
        train_config = _recipe(args, preset)
        check_global_batch(train_config.batch_size, processes.world_size)  # before anyone waits for anyone
        device = device_of_process(device, processes)
        data = load_cifar10(args.data, device=device, train_subset=args.train_subset, test_subset=args.test_subset)
        if launched_by_torchrun():
            processes = join_processes(device)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error, processes)
    say = print if processes.is_main else (lambda *_: None)
    parallel = (f"; {processes.world_size} processes, data parallel over {dist.get_backend()}"
                if processes.joined else "")
    say(f"{model_config.name} Perceiver: {count_parameters(Perceiver(model_config)) / 1e6:.2f}M parameters, "
        f"{model_config.num_latents} latents x {model_config.latent_dim}, {model_config.num_inputs} inputs "
        f"x {model_config.input_dim} channels; {describe_device(device)}, "
        f"{autocast_dtype(device, train_config.amp) or 'fp32'}{parallel}")
    say(data.describe())
    say(f"recipe: {train_config}")
    try:
        model, history = train(model_config, train_config, data, device=device, checkpoint_dir=args.checkpoint_dir,
                               resume=args.resume, time_budget=args.time_budget, start_time=start_time,
                               progress=not args.no_progress, log=print)
    except (NonFiniteLossError, CheckpointMismatchError, OtherProcessError, FileNotFoundError, ValueError) as error:
        _fail(error, processes)
    except KeyboardInterrupt:
        where = (f"continue with the same command plus --resume (checkpoint: {args.checkpoint_dir})"
                 if args.checkpoint_dir else "use --checkpoint-dir D to be able to --resume")
        sys.exit(f"interrupted; {where}")
    final = history[-1]
    say(f"trained {sum(h['fraction'] for h in history):.2f} epochs in {time.perf_counter() - start_time:.1f} s "
        f"(budget {args.time_budget or 'none'})")
    say(f"test accuracy: {100 * final['test_acc']:.2f}%")
    return final["test_acc"]
