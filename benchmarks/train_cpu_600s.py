"""The CPU training goal, measured: `python -m perceiver_edu.train --preset cpu --time-budget 600` must reach
at least 50% CIFAR-10 test accuracy on two CPU cores. Also prints the training and inference throughput
(img/s) of the `cpu` and `seed` presets with the trainer's own step (AdamW, clipping, label smoothing,
on-device augmentation).

    python benchmarks/train_cpu_600s.py [--data DIR] [--budget 600] [--skip-run] [--skip-throughput]

DIR as for the trainer (--data, else $PERCEIVER_EDU_DATA, else ~/.cache/perceiver_edu). The script says
which copy of CIFAR-10 was used (the offline JPEG copy is not the official one). On a shared machine run
it alone (we use `flock /tmp/perceiver-cpu.lock python benchmarks/train_cpu_600s.py`): the 600-s run
measures wall-clock time, so anything else running steals its epochs.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perceiver_edu import PerceiverConfig, count_parameters  # noqa: E402
from perceiver_edu.data import CIFAR10Data  # noqa: E402
from perceiver_edu.model import Perceiver  # noqa: E402
from perceiver_edu.train import TrainConfig, predict, train  # noqa: E402


def timed_run(data_dir: str | None, budget: float) -> float:
    command = [sys.executable, "-m", "perceiver_edu.train", "--preset", "cpu", "--time-budget", str(budget),
               "--no-progress", "--device", "cpu"] + (["--data", data_dir] if data_dir else [])
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - began
    print(result.stdout, end="")
    if result.returncode:
        print(result.stderr, file=sys.stderr)
        sys.exit(f"the training run failed with exit code {result.returncode}")
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", result.stdout.strip().splitlines()[-1]).group(1))
    speeds = [float(s) for s in re.findall(r" (\d+) img/s", result.stdout)]
    print(f"\nwall-clock time of the whole command: {wall:.1f} s (budget {budget:.0f} s)")
    print(f"mean training throughput: {sum(speeds) / max(len(speeds), 1):.0f} img/s over {len(speeds)} epochs")
    print(f"goal: >= 50% test accuracy -> {accuracy:.2f}% {'MET' if accuracy >= 50 else 'NOT MET'}")
    return accuracy


def throughput(preset: str, steps: int) -> tuple[float, float]:
    """(training img/s, inference img/s) for a preset with its recipe's batch size, on the CPU."""
    config = PerceiverConfig.preset(preset)
    recipe = TrainConfig.recipe(preset, epochs=2, eval_every=0, warmup_epochs=0)
    n = steps * recipe.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    data = CIFAR10Data(images, labels, images[:recipe.batch_size], labels[:recipe.batch_size],
                       root=Path("synthetic"), official=None, source="random images")
    model, history = train(config, recipe, data, device="cpu", progress=False, log=lambda *_: None)
    train_speed = history[-1]["img_per_s"]  # the second epoch: no first-step start-up cost
    predict(model, images[:recipe.batch_size])
    began = time.perf_counter()
    predict(model, images, batch_size=500)
    return train_speed, n / (time.perf_counter() - began)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--skip-run", action="store_true", help="only measure throughput")
    parser.add_argument("--skip-throughput", action="store_true", help="only the timed training run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average "
          f"{open('/proc/loadavg').read().split()[0] if os.path.exists('/proc/loadavg') else '?'}")
    if not args.skip_run:
        timed_run(args.data, args.budget)
    if not args.skip_throughput:
        print("\npreset  params   train img/s  inference img/s  (CPU, fp32, recipe batch size)")
        for preset, steps in (("cpu", 20), ("seed", 3)):
            train_speed, infer_speed = throughput(preset, steps)
            params = count_parameters(Perceiver(PerceiverConfig.preset(preset)))
            print(f"{preset:7s} {params / 1e6:5.2f}M  {train_speed:11.0f}  {infer_speed:15.0f}", flush=True)


if __name__ == "__main__":
    main()
