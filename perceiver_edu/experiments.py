"""The paper's ablations in miniature: named experiments, trained for several seeds, one JSON line each.

    python -m perceiver_edu.experiments --workers 2          # the whole sweep (skips finished runs)
    python -m perceiver_edu.experiments --only permutation --seeds 1
    python -m perceiver_edu.experiments --only latents --variant 16 --seed 0   # one run: prints its line

An experiment is a set of variants; a variant is a model config (a Perceiver, or the ConvNet
baseline) plus a training recipe (`TrainConfig`). Every variant is trained for seeds 0, 1, ...

Why it is built like this:
- Budgets count training images (`TrainConfig.train_images`), never seconds, and the thread count is
  pinned (`--threads`, recorded), so a run on the CPU is deterministic: on the same machine its
  command gives the same test accuracy again. (Here, 1 and 2 threads give different weights after a
  few steps; 2 and 2 give the same bits.) Another processor may pick other kernels and end up to
  two points away (seen for 12 of 36 lines recorded in earlier sessions), so each line names its
  CPU (`cpu_model`). Seconds and img/s are recorded
  beside the result, not used to decide it.
- One thread per run, and `--workers 2` processes on two cores: measured here (training steps of
  the base model), 381 img/s on one thread against 353 on two threads that sleep while they wait
  (OMP_WAIT_POLICY=PASSIVE) and 96 on two threads that spin, while another process held a core.
  Small matrices leave two threads waiting for each other more than working. Two workers keep
  both cores busy with whole runs instead. The wait policy changes timings only, never results.
- Every finished run appends one JSON line to the results file (written and flushed at once), so a
  sweep that is stopped loses at most the run in progress; a rerun skips the runs the file holds.
- A line holds what rebuilds the run: the model config and its architecture, the recipe, the seed,
  the command, the commit, the torch version and the data source; and what it gave: test accuracy
  on the full test set, parameters, forward FLOPs per image, seconds, img/s.
- The same (architecture, config, recipe, seed) appears in several experiments (the base model is
  `permutation/perceiver_patches`, `position_encoding/fourier`, `cross_attends/1`, `decoder/mean`
  and `latents/32`). It is trained once and recorded for each, with `trained_as` naming the run
  that trained it. Config names are ignored in that comparison; nothing else is.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .baselines import ConvNetConfig
from .config import PerceiverConfig
from .data import CIFAR10Data, load_cifar10
from .model import count_parameters
from .registry import architecture_of, build_model, config_from_dict
from .train import TrainConfig, train

DEFAULT_OUT = Path("book/data/experiments.jsonl")
DEFAULT_THREADS = 1  # fastest per core for these small models, and the same bits on any core count
PERMUTATION_SEED = 0  # the one fixed pixel order of every permuted variant (not the training seed)
PROGRAM = "python -m perceiver_edu.experiments"


# The experiments -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    model: object          # a registered config: PerceiverConfig or ConvNetConfig
    recipe: TrainConfig    # its seed is replaced by the run's seed


@dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    variants: dict         # variant name -> Variant, in the order to report them
    seeds: int = 2         # default number of seeds (0, 1, ...)


# The base model: the `cpu` preset with 32 latents instead of 64 (2x2 patches, 32 x 128 latents,
# one cross-attend, 4 latent layers): 0.65M parameters, 52 MFLOPs per image. Half the latents
# halve the latent tower, which is what lets the 28 trainings of the sweep fit in about an hour on
# two CPU cores; `latents` shows what that costs. Measured while choosing: 47.1% after 75,008
# images (seed 0), against 40.4% for the 64-latent `cpu` preset after 40,064.
BASE = dataclasses.replace(PerceiverConfig.preset("cpu"), name="base", num_latents=32)
BASE_RECIPE = TrainConfig(batch_size=128, lr=2e-3, weight_decay=0.05, warmup_epochs=0.2,
                          label_smoothing=0.1, grad_clip=1.0, augment=True, eval_every=0,
                          train_images=75_008)  # 586 steps of 128 images, 1.5 epochs
# The ConvNet trains with the same recipe and budget.
CONVNET = ConvNetConfig.preset("cifar")
CONVNET_RECIPE = BASE_RECIPE
# Pixels instead of patches: M = 1024 inputs instead of 256, so fewer images in the same time.
PIXELS = dataclasses.replace(BASE, patch_size=1)


def _perceiver(name: str, **changes) -> Variant:
    return Variant(dataclasses.replace(BASE, name=name, **changes), BASE_RECIPE)


def _interleaved(cross_attends: int, sharing: str) -> dict:
    """`cross_attends` cross-attends, each followed by 4 / cross_attends latent layers: the latent
    depth stays 4 layers whatever the number of cross-attends."""
    return dict(num_cross_attends=cross_attends, num_blocks=cross_attends,
                self_attends_per_block=4 // cross_attends, weight_sharing=sharing)


def build_experiments() -> dict:
    """Every experiment of the sweep, by name."""
    permuted = dict(pixel_permutation=PERMUTATION_SEED)
    experiments = [
        Experiment("permutation", "Does a fixed pixel permutation hurt a Perceiver whose pixels keep "
                   "their position features (paper Table 2)? And with patches, and a ConvNet?", {
                       "perceiver_pixels": Variant(dataclasses.replace(PIXELS, name="perceiver_pixels"), BASE_RECIPE),
                       "perceiver_pixels_permuted": Variant(
                           dataclasses.replace(PIXELS, name="perceiver_pixels_permuted", **permuted), BASE_RECIPE),
                       "perceiver_patches": _perceiver("perceiver_patches"),
                       "perceiver_patches_permuted": _perceiver("perceiver_patches_permuted", **permuted),
                       "convnet": Variant(CONVNET, CONVNET_RECIPE),
                       "convnet_permuted": Variant(dataclasses.replace(CONVNET, name="convnet_permuted", **permuted),
                                                   CONVNET_RECIPE)}),
        Experiment("position_encoding", "How much do Fourier features help, against learned positions "
                   "and none (paper Sec. 4.1, Table 2)?", {
                       "fourier": _perceiver("fourier"),
                       "learned": _perceiver("learned", position_encoding="learned"),
                       "none": _perceiver("none", position_encoding="none")}),
        Experiment("cross_attends", "Do more cross-attends, interleaved with the latent layers, help at a "
                   "fixed latent depth (paper Table 6)?", {
                       "1": _perceiver("cross_attends_1"),
                       "2": _perceiver("cross_attends_2", **_interleaved(2, "none")),
                       "4": _perceiver("cross_attends_4", **_interleaved(4, "none"))}),
        Experiment("weight_sharing", "What does sharing weights cost in accuracy and save in parameters, at "
                   "the same compute (paper Table 7)?", {
                       "none": _perceiver("sharing_none", **_interleaved(4, "none")),
                       "paper": _perceiver("sharing_paper", **_interleaved(4, "paper"))}),
        Experiment("latents", "How do accuracy and speed change with the number of latents N at a fixed "
                   "width D = 128 (paper Sec. 3.1: the latent array is the bottleneck)?", {
                       str(n): _perceiver(f"latents_{n}", num_latents=n) for n in (8, 16, 32, 64, 128)},
                   seeds=1),
        Experiment("decoder", "Does Perceiver IO's query decoder beat the Perceiver's average over the "
                   "latents for classification (Perceiver IO, Sec. 3)?", {
                       "mean": _perceiver("decoder_mean"),
                       "query": _perceiver("decoder_query", decoder="query")}),
    ]
    return {experiment.name: experiment for experiment in experiments}


EXPERIMENTS = build_experiments()


# Planning ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    experiment: str
    variant: str
    seed: int
    model: object
    recipe: TrainConfig    # with the run's seed

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.variant}/seed {self.seed}"

    def identity(self) -> str:
        """What the result depends on: architecture, config (bar its name), recipe with seed."""
        model = {k: v for k, v in self.model.to_dict().items() if k != "name"}
        return json.dumps([architecture_of(self.model), model, self.recipe.to_dict()], sort_keys=True,
                          default=list)


def plan(experiments: dict | None = None, only: list | None = None, seeds: int | None = None,
         variant: str | None = None, seed: int | None = None, train_images: int | None = None) -> list:
    """The runs to do, in order. Raises ValueError naming the choices for an unknown name."""
    experiments = experiments or EXPERIMENTS
    names = only or list(experiments)
    unknown = [name for name in names if name not in experiments]
    if unknown:
        raise ValueError(f"unknown experiment {', '.join(map(repr, unknown))}; choose from {', '.join(experiments)}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    runs = []
    for name in names:
        experiment = experiments[name]
        if variant is not None and variant not in experiment.variants:
            raise ValueError(f"experiment {name!r} has no variant {variant!r}; "
                             f"its variants: {', '.join(experiment.variants)}")
        for variant_name, spec in experiment.variants.items():
            if variant is not None and variant_name != variant:
                continue
            recipe = spec.recipe if train_images is None else dataclasses.replace(spec.recipe, train_images=train_images)
            for s in ([seed] if seed is not None else range(seeds or experiment.seeds)):
                runs.append(Run(name, variant_name, s, spec.model, dataclasses.replace(recipe, seed=s)))
    return runs


# One run -----------------------------------------------------------------------------------------
def forward_flops(model_config) -> int:
    """FLOPs of one forward pass on one image (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(model_config).eval()
        images = torch.rand(1, model_config.input_channels, *model_config.input_axes)
        with FlopCounterMode(display=False) as counter:
            model(images)
    return int(counter.get_total_flops())


def _training_throughput(history: list) -> float:
    """Training images per second over the whole run (the trainer measures each epoch)."""
    seconds, previous = 0.0, 0
    for record in history:
        seen = record["images_seen"] - previous
        previous = record["images_seen"]
        if record.get("img_per_s"):
            seconds += seen / record["img_per_s"]
    return previous / seconds if seconds else float("nan")


def command_for(run: Run, threads: int, extra: list | None = None) -> str:
    """The command that trains this one run again and prints its line (it never skips)."""
    words = [PROGRAM, "--only", run.experiment, "--variant", run.variant, "--seed", str(run.seed),
             "--threads", str(threads)] + list(extra or [])
    return " ".join(shlex.quote(w) if w != PROGRAM else w for w in words)


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


def provenance() -> dict:
    """Where the code came from: the commit, and the package's files that differed from it."""
    commit = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--", ".")  # this package's folder only
    files = sorted(line[3:] for line in changed.splitlines()) if changed else []
    return {"git_commit": commit, "package_changes": files if changed is not None else None,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo; else what `platform` knows, or "unknown").

    Recorded because the bits of a CPU run depend on it: MKL and torch pick their kernels (AVX2,
    AVX-512, ...) by processor, and different kernels add in different orders. Measured here: one
    command gave test accuracies 48.01% (recorded in an earlier session), 47.75% (AMD EPYC, AVX-512)
    and 46.84% (the same machine with ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2); on one machine and
    kernel path, the same command gives the same bits every time."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(run: Run, data: CIFAR10Data, threads: int = DEFAULT_THREADS, checkpoint_dir=None,
            progress: bool = False, command_extra: list | None = None, log=None) -> dict:
    """Train one run on the CPU and return its record (the JSON line)."""
    torch.set_num_threads(threads)
    began = time.perf_counter()
    model, history = train(run.model, run.recipe, data, device="cpu", checkpoint_dir=checkpoint_dir,
                           progress=progress, log=log or (lambda *_: None))
    seconds = time.perf_counter() - began
    final = history[-1]
    return {
        "experiment": run.experiment, "variant": run.variant, "seed": run.seed,
        "test_acc": final["test_acc"], "test_loss": final["test_loss"], "test_images": len(data.test_labels),
        # Accuracy on the augmented batches of the last epoch, as they were trained on (not a
        # clean pass over the training set): a cheap sign of over- or underfitting.
        "train_acc_last_epoch": final["train_acc"],
        "train_images": final["images_seen"], "epochs": round(final["images_seen"] / len(data.train_labels), 4),
        "seconds": round(seconds, 2), "img_per_s": round(_training_throughput(history), 1),
        "params": count_parameters(model), "flops_per_image": forward_flops(run.model),
        "architecture": architecture_of(run.model), "model_config": run.model.to_dict(),
        "recipe": run.recipe.to_dict(), "command": command_for(run, threads, command_extra),
        "threads": torch.get_num_threads(), "data_source": data.source,
        "train_set_images": len(data.train_labels), **provenance(), "trained_as": None,
    }


def rebuild_parameter_count(record: dict) -> int:
    """Parameters of the model a record describes, rebuilt from its settings alone."""
    config = config_from_dict(record["model_config"], record["architecture"])
    with torch.device("meta"):
        return count_parameters(build_model(config))


# The results file ----------------------------------------------------------------------------------
REQUIRED_KEYS = ("experiment", "variant", "seed", "test_acc", "train_images", "seconds", "img_per_s",
                 "params", "command", "torch", "data_source", "model_config", "architecture", "recipe",
                 "git_commit", "threads")


def read_results(path) -> list:
    """Every record in a results file ([] when it does not exist). A damaged line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            missing = [key for key in REQUIRED_KEYS if key not in record]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}, is not JSON ({error}); a run was probably cut off "
                             f"while writing. Delete that line and run again: only that run is redone.") from None
        if missing:
            raise ValueError(f"{path}, line {number}, lacks {missing}: it was not written by this runner. "
                             f"Remove it, or write results to another file with --out.")
        records.append(record)
    return records


def append_record(path, record: dict) -> None:
    """Append one line and force it to disk, so a later kill cannot lose a finished run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # worker processes append to the same file
        f.write(json.dumps(record, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _check_same_settings(run: Run, record: dict, path) -> None:
    """A line for this run made with other settings is stale: say so instead of skipping it."""
    now = {"model_config": run.model.to_dict(), "recipe": run.recipe.to_dict(),
           "architecture": architecture_of(run.model)}
    recorded = {"model_config": config_from_dict(record["model_config"], record["architecture"]).to_dict(),
                "recipe": dataclasses.asdict(TrainConfig(**record["recipe"])), "architecture": record["architecture"]}
    if json.dumps(now, sort_keys=True, default=list) != json.dumps(recorded, sort_keys=True, default=list):
        raise ValueError(f"{path} holds {run.label} made with other settings than the current definition "
                         f"in perceiver_edu/experiments.py. Delete its lines to run it again, or write to "
                         f"another file with --out.")


# The sweep ---------------------------------------------------------------------------------------
def sweep(runs: list, data: CIFAR10Data, out=DEFAULT_OUT, threads: int = DEFAULT_THREADS,
          checkpoint_dir=None, command_extra: list | None = None, progress: bool = True,
          claims=None) -> list:
    """Do every run not yet in `out`, appending a line per run; returns the new records.

    Runs with the same identity form a group, trained once. With `claims` (a file shared by the
    worker processes of `--workers`), a group is done only by the worker that claims it first.
    """
    groups, trained = _pending(runs, out)
    new = []
    bar = tqdm(total=sum(len(g) for g in groups), desc="experiments", unit="run", disable=not progress,
               dynamic_ncols=True)
    for group in groups:
        if claims is not None and not _claim(claims, group[0].identity()):
            bar.update(len(group))
            continue
        bar.set_postfix_str(group[0].label)
        twin = trained.get(group[0].identity())
        for run in group:
            if twin is not None:
                record = _shared(run, twin, threads, command_extra)
            else:
                folder = (Path(checkpoint_dir) / run.experiment / run.variant / f"seed{run.seed}"
                          if checkpoint_dir else None)
                record = twin = run_one(run, data, threads, folder, progress=progress,
                                        command_extra=command_extra, log=tqdm.write if progress else None)
            append_record(out, record)
            new.append(record)
            bar.update(1)
            if progress:
                tqdm.write(f"{run.label}: test accuracy {record['test_acc']:.2%}"
                           + (f" (trained as {record['trained_as']})" if record["trained_as"] else
                              f", {record['seconds']:.0f} s, {record['img_per_s']:.0f} img/s"))
    bar.close()
    return new


def _pending(runs: list, out) -> tuple[list, dict]:
    """The runs `out` lacks, grouped by identity in plan order; and the trainings it already holds."""
    records = read_results(out)
    done = {(r["experiment"], r["variant"], r["seed"]): r for r in records}
    trained = {}  # identity -> the record of the run that trained it
    for record in records:
        if record.get("trained_as") is None:
            run = Run(record["experiment"], record["variant"], record["seed"],
                      config_from_dict(record["model_config"], record["architecture"]),
                      TrainConfig(**record["recipe"]))
            trained.setdefault(run.identity(), record)
    groups = {}
    for run in runs:
        key = (run.experiment, run.variant, run.seed)
        if key in done:
            _check_same_settings(run, done[key], out)
        else:
            groups.setdefault(run.identity(), []).append(run)
    return list(groups.values()), trained


def _claim(claims, identity: str) -> bool:
    """True when this process is the first to claim `identity` in the shared claims file."""
    import fcntl

    with open(claims, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        taken = set(f.read().splitlines())
        if identity in taken:  # an identity is one line of JSON
            return False
        f.write(identity + "\n")
        f.flush()
        return True


def _shared(run: Run, twin: dict, threads: int, command_extra: list | None) -> dict:
    """The record of an identical run trained under another name, relabelled for this one."""
    record = dict(twin)
    record.update(experiment=run.experiment, variant=run.variant, model_config=run.model.to_dict(),
                  command=command_for(run, threads, command_extra),
                  trained_as=f"{twin['experiment']}/{twin['variant']}")
    return record


# Reading the results -------------------------------------------------------------------------------
RESULTS_URL = ("https://raw.githubusercontent.com/perceiver-edu/perceiver-edu/main/"
               "book/data/experiments.jsonl")


def results_path(download_to="~/.cache/perceiver_edu/experiments.jsonl") -> Path:
    """The sweep's committed results: the repository's file when this package is a checkout of it,
    else (an installed package, as on Colab) a copy downloaded once from the repository."""
    checkout = Path(__file__).resolve().parents[1] / DEFAULT_OUT
    if checkout.is_file():
        return checkout
    target = Path(download_to).expanduser()
    if not target.is_file():
        import urllib.request

        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            urllib.request.urlretrieve(RESULTS_URL, target)
        except OSError as error:
            raise FileNotFoundError(f"{DEFAULT_OUT} is not here (the package is not a checkout of its "
                                    f"repository) and downloading {RESULTS_URL} failed ({error}). Clone the "
                                    f"repository, or pass the file's path.") from error
    return target


@dataclass(frozen=True)
class Summary:
    """One variant of one experiment, over its seeds."""
    experiment: str
    variant: str
    seeds: tuple
    accuracies: tuple      # test accuracy of each seed, in seed order
    params: int
    flops_per_image: int
    train_images: int
    img_per_s: float       # mean over the runs trained for this variant (timings vary run to run)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def spread(self) -> float:
        """max - min over seeds (0 for one seed): with two seeds, the honest measure of noise."""
        return max(self.accuracies) - min(self.accuracies)


def summarise(records: list, experiment: str, experiments: dict | None = None) -> list:
    """The variants of `experiment` in the order it defines them, each over its recorded seeds."""
    order = list((experiments or EXPERIMENTS)[experiment].variants)
    summaries = []
    for variant in order:
        runs = sorted((r for r in records if r["experiment"] == experiment and r["variant"] == variant),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        speeds = [r["img_per_s"] for r in runs]
        summaries.append(Summary(experiment, variant, tuple(r["seed"] for r in runs),
                                 tuple(r["test_acc"] for r in runs), runs[0]["params"],
                                 runs[0].get("flops_per_image", 0), runs[0]["train_images"],
                                 sum(speeds) / len(speeds)))
    return summaries


def markdown_table(summaries: list) -> str:
    """A Markdown table: accuracy (mean, range over seeds), parameters, FLOPs, images, speed."""
    rows = ["| variant | test accuracy (mean) | range over seeds | seeds | parameters | MFLOPs / image "
            "| training images | training img/s |",
            "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        spread = f"{100 * s.spread:.2f} points" if len(s.seeds) > 1 else "(1 seed)"
        rows.append(f"| `{s.variant}` | {100 * s.mean:.2f}% | {spread} | {len(s.seeds)} | {s.params:,} "
                    f"| {s.flops_per_image / 1e6:.1f} | {s.train_images:,} | {s.img_per_s:.0f} |")
    return "\n".join(rows)


# Command line ------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description=(
        "Train the experiments of chapter 9 on the CPU and append one JSON line per run to --out. "
        "Runs already in the file are skipped. With --variant and --seed, train that one run and print "
        "its line (never skipped; appended to --out only when --out is given)."))
    p.add_argument("--only", action="append", metavar="EXPERIMENT",
                   help=f"run only this experiment (repeatable); one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 for every experiment "
                   "(default: 2 each, 1 for latents)")
    p.add_argument("--variant", help="one run: this variant of the --only experiment (needs --seed)")
    p.add_argument("--seed", type=int, help="one run: this seed (needs --variant)")
    p.add_argument("--out", help=f"results file (default for a sweep: {DEFAULT_OUT})")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}); results can depend on it, so it is recorded")
    p.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: $PERCEIVER_EDU_DATA, "
                                  "else ~/.cache/perceiver_edu)")
    p.add_argument("--checkpoint-dir", help="keep each trained run's checkpoint under DIR/experiment/variant/seedK")
    p.add_argument("--train-images", type=int, metavar="N", help="override every budget (for quick checks)")
    p.add_argument("--train-subset", type=int, metavar="N", help="train on a fixed subset (for quick checks)")
    p.add_argument("--test-subset", type=int, metavar="N", help="test on a fixed subset (for quick checks)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the sweep in N processes that share the runs (each with --threads threads; "
                        "on 2 cores, --workers 2 --threads 1 is fastest for these small models)")
    p.add_argument("--claims", help=argparse.SUPPRESS)  # internal: the workers' shared claims file
    p.add_argument("--list", action="store_true", help="list the experiments and their variants, then stop")
    p.add_argument("--no-progress", action="store_true")
    return p


def _overrides(args) -> list:
    """The options that change a run's result, as they must appear in its command."""
    words = []
    for flag, value in (("--train-images", args.train_images), ("--train-subset", args.train_subset),
                        ("--test-subset", args.test_subset)):
        if value is not None:
            words += [flag, str(value)]
    return words


def main(argv=None) -> list:
    args = _parser().parse_args(argv)
    if args.list:
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name} ({experiment.seeds} seed{'s' * (experiment.seeds > 1)}): "
                  f"{', '.join(experiment.variants)}")
        return []
    single = args.variant is not None or args.seed is not None
    try:
        if single and (args.variant is None or args.seed is None or not args.only or len(args.only) != 1):
            raise ValueError("one run needs --only EXPERIMENT, --variant VARIANT and --seed N together")
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        if args.workers < 1 or (single and args.workers != 1):
            raise ValueError(f"--workers must be at least 1, and 1 for one run; got {args.workers}")
        runs = plan(only=args.only, seeds=args.seeds, variant=args.variant, seed=args.seed,
                    train_images=args.train_images)
        data = load_cifar10(args.data, device="cpu", train_subset=args.train_subset, test_subset=args.test_subset)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(args.threads)
    if single:
        record = run_one(runs[0], data, args.threads, args.checkpoint_dir, progress=not args.no_progress,
                         command_extra=_overrides(args))
        if args.out:
            append_record(args.out, record)
        print(f"test accuracy: {100 * record['test_acc']:.2f}%")
        print(json.dumps(record))
        return [record]
    began, out = time.perf_counter(), args.out or DEFAULT_OUT
    try:
        if args.workers > 1:
            new = _run_workers(args, runs, out, argv if argv is not None else sys.argv[1:])
        else:
            new = sweep(runs, data, out, args.threads, args.checkpoint_dir, _overrides(args),
                        progress=not args.no_progress, claims=args.claims)
    except ValueError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted; the finished runs are in the file: run the same command to continue")
    print(f"{len(new)} runs recorded in {out} in {time.perf_counter() - began:.0f} s "
          f"({len(runs) - len(new)} were already there)")
    return new


def _run_workers(args, runs: list, out, argv: list) -> list:
    """Start `--workers` copies of this command that share the runs; show their joint progress."""
    import tempfile

    groups, _ = _pending(runs, out)  # also checks the file for stale lines before anything starts
    total, before = sum(len(g) for g in groups), _finished_lines(out)
    with tempfile.TemporaryDirectory() as scratch:
        claims = Path(scratch) / "claims"
        claims.touch()
        worker_argv = [a for a in _without_option(argv, "--workers")] + ["--claims", str(claims), "--no-progress"]
        workers = [subprocess.Popen([sys.executable, "-m", "perceiver_edu.experiments", *worker_argv],
                                    stdout=subprocess.DEVNULL) for _ in range(args.workers)]
        bar = tqdm(total=total, desc=f"experiments ({args.workers} workers)", unit="run",
                   disable=args.no_progress, dynamic_ncols=True)
        try:
            while any(w.poll() is None for w in workers):
                time.sleep(5)  # the workers append to `out`; count their lines
                bar.update(_finished_lines(out) - before - bar.n)
        except KeyboardInterrupt:
            for w in workers:
                w.terminate()
            raise
        bar.update(_finished_lines(out) - before - bar.n)
        bar.close()
    failed = [w.returncode for w in workers if w.returncode]
    if failed:
        raise ValueError(f"{len(failed)} worker(s) failed (exit {failed}); the finished runs are in {out}: "
                         f"run the same command again to continue")
    return read_results(out)[before:]


def _finished_lines(path) -> int:
    """Complete lines in the results file (a worker may be writing the next one right now)."""
    path = Path(path)
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _without_option(argv: list, name: str) -> list:
    """argv without `name VALUE` or `name=VALUE`."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == name:
            skip = True
        elif not word.startswith(name + "="):
            kept.append(word)
    return kept


if __name__ == "__main__":
    main()
