"""Attention maps saved while a model trains: how they sharpen, epoch by epoch (chapter 7).

    python -m perceiver_edu.map_history --data /work/data --out book/data/attention_map_history.npz

trains the experiments' base model (`experiments.BASE`: the `cpu` preset with 32 latents) with the
sweep's recipe on a fixed 10,000-image subset of the training set for 8 epochs (80,000 images),
on one CPU thread, and records after every epoch (the trainer's `on_epoch_end`), and once before
training:
- the pre-softmax cross-attention logits of 8 latents on 4 fixed test images (the pictures);
- over 200 test images and every latent: the median spread (exp entropy, in grid cells) and peak
  of the softmax maps, and the median `lattice_energy` of the logit maps (the paper's "tartan");
- the accuracy on a fixed 2,000-image subset of the test set.

Why a subset: the trainer calls back once per epoch, and 8 short epochs give 9 snapshots where the
sweep's 1.5 epochs over all 50,000 images would give 2. The weights (softmax) are not stored: they
are softmax(logits), computed on load.

Reproducible: budgets count images, the seed fixes the subset, the initial weights and the data
order, and the thread count is pinned and recorded, so the same command on the same kind of CPU
writes the same arrays (the file's `meta` also records seconds, which vary). The data source is
recorded: the offline copy is a JPEG re-encoding of CIFAR-10, and the official files give other
numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attention_maps import collect_attention, effective_pixels, lattice_energy
from .data import CLASSES, CIFAR10Data, load_cifar10, to_float
from .registry import build_model, config_from_dict
from .train import TrainConfig, evaluate, seed_everything, train

FORMAT = 1
DEFAULT_OUT = Path("book/data/attention_map_history.npz")
PROGRAM = "python -m perceiver_edu.map_history"
DEFAULT_CLASSES = ("ship", "automobile", "bird", "horse")  # the first test image of each
DEFAULT_LATENTS = tuple(range(8))                        # the first eight: no choosing by result
ARRAYS = ("logits", "images", "image_ids", "labels", "latents", "grid", "epochs", "images_seen",
          "test_acc", "median_spread", "median_peak", "median_lattice_axis", "median_lattice_high")


@dataclass(frozen=True)
class HistorySettings:
    """What a map-history run depends on (all of it is recorded in the file)."""
    train_subset: int = 10_000
    test_subset: int = 2_000
    epochs: int = 8
    seed: int = 0
    threads: int = 1
    probe_images: int = 200
    classes: tuple = DEFAULT_CLASSES
    latents: tuple = DEFAULT_LATENTS

    def command(self, data: str | None, out) -> str:
        parts = (["--data", str(data)] if data else []) + ["--out", str(out)]
        defaults = HistorySettings()
        for name, flag in (("train_subset", "--train-subset"), ("test_subset", "--test-subset"),
                           ("epochs", "--epochs"), ("seed", "--seed"), ("threads", "--threads"),
                           ("probe_images", "--probe-images")):
            if getattr(self, name) != getattr(defaults, name):
                parts += [flag, str(getattr(self, name))]
        if tuple(self.classes) != defaults.classes:
            parts += ["--classes", *self.classes]
        if tuple(self.latents) != defaults.latents:
            parts += ["--latents", *map(str, self.latents)]
        return f"{PROGRAM} {shlex.join(parts)}"


def base_model_and_recipe(settings: HistorySettings):
    """The sweep's base model and recipe, on a subset: warm-up over the same 78 steps as the sweep."""
    from .experiments import BASE, BASE_RECIPE

    steps_per_epoch = settings.train_subset // BASE_RECIPE.batch_size
    sweep_warmup_steps = BASE_RECIPE.warmup_epochs * (50_000 // BASE_RECIPE.batch_size)
    recipe = dataclasses.replace(
        BASE_RECIPE, train_images=None, epochs=settings.epochs, eval_every=1, seed=settings.seed,
        warmup_epochs=round(sweep_warmup_steps / steps_per_epoch, 3))
    return dataclasses.replace(BASE, name="map_history"), recipe


def first_of_classes(labels: torch.Tensor, classes) -> list[int]:
    """The test-set index of the first image of each named class."""
    return [int((labels == CLASSES.index(name)).nonzero()[0]) for name in classes]


class MapRecorder:
    """The `on_epoch_end` callback: one snapshot of logits and summary numbers per call."""

    def __init__(self, images: torch.Tensor, probe: torch.Tensor, latents, test: CIFAR10Data):
        self.images, self.probe, self.latents, self.test = images, probe, list(latents), test
        self.snapshots: list[dict] = []

    def __call__(self, epoch: int, model, history: list) -> None:
        shown = collect_attention(model, self.images, include_logits=True)
        probe = collect_attention(model, self.probe, include_logits=True)
        weights, logits = probe.cross[0][:, 0], probe.logit_maps(0)[:, 0]     # (P, N, M), (P, N, H, W)
        lattice = lattice_energy(logits)
        test_acc = history[-1]["test_acc"] if history else evaluate(
            model, self.test.test_images, self.test.test_labels)[1]
        self.snapshots.append({
            "epoch": epoch, "images_seen": history[-1]["images_seen"] if history else 0,
            "logits": shown.cross_logits[0][:, 0, self.latents].numpy(),      # (B, L, M)
            "test_acc": float(test_acc),
            "median_spread": float(effective_pixels(weights).median()),
            "median_peak": float(weights.amax(dim=-1).median()),
            "median_lattice_axis": float(lattice.axis.median()),
            "median_lattice_high": float(lattice.high.median())})


def record_map_history(data: CIFAR10Data, settings: HistorySettings = HistorySettings(), model_config=None,
                       recipe: TrainConfig | None = None, progress: bool = False, log=print) -> dict:
    """Train and snapshot; returns the file's arrays and its `meta` dict (see the module docstring).

    model_config, recipe: default `base_model_and_recipe(settings)` (tests pass tiny ones).
    """
    if model_config is None or recipe is None:
        model_config, recipe = base_model_and_recipe(settings)
    torch.set_num_threads(settings.threads)
    ids = first_of_classes(data.test_labels, settings.classes)
    images = to_float(data.test_images[ids])                                  # (B, 3, 32, 32)
    probe = to_float(data.test_images[:settings.probe_images])
    subset = data.subset(train=settings.train_subset, test=settings.test_subset, seed=settings.seed)
    seed_everything(recipe.seed)                    # the initial weights train() would build itself
    model = build_model(model_config)
    recorder = MapRecorder(images, probe, settings.latents, subset)
    began = time.perf_counter()
    recorder(0, model, [])                                                    # before training
    train(model, recipe, subset, device="cpu", progress=progress, log=log, on_epoch_end=recorder)
    seconds = time.perf_counter() - began
    snaps = recorder.snapshots
    arrays = {
        "logits": np.stack([s["logits"] for s in snaps]).astype(np.float32),  # (S, B, L, M)
        "images": data.test_images[ids].cpu().numpy().astype(np.uint8),
        "image_ids": np.array(ids, dtype=np.int64),
        "labels": data.test_labels[ids].cpu().numpy().astype(np.int64),
        "latents": np.array(settings.latents, dtype=np.int64),
        "grid": np.array(model_config.grid, dtype=np.int64),
        **{key: np.array([s[key] for s in snaps], dtype=np.int64 if key in ("epoch", "images_seen")
                         else np.float64) for key in ("images_seen", "test_acc", "median_spread", "median_peak",
                                                      "median_lattice_axis", "median_lattice_high")},
        "epochs": np.array([s["epoch"] for s in snaps], dtype=np.int64)}
    from .experiments import provenance

    meta = {"format": FORMAT, "settings": dataclasses.asdict(settings), "model_config": model_config.to_dict(),
            "recipe": recipe.to_dict(), "data_source": data.source, **provenance(),
            "threads": torch.get_num_threads(),
            "seconds": round(seconds, 1), "test_subset_note": f"test_acc is on a fixed {settings.test_subset}-image "
                                                              f"subset of the test set (seed {settings.seed})"}
    return {"arrays": arrays, "meta": meta}


def save_map_history(path, result: dict, command: str) -> Path:
    """Write the arrays and meta (with the command that made them) to a compressed .npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(result["meta"], command=command)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta, sort_keys=True)), **result["arrays"])
    tmp.replace(path)
    return path


@dataclass
class MapHistory:
    """A saved map history. logits: (S, B, L, H, W) tensor; the rest as in the module docstring."""
    logits: torch.Tensor
    images: torch.Tensor
    image_ids: list
    labels: list
    latents: list
    grid: tuple
    epochs: list
    images_seen: list
    test_acc: list
    median_spread: list
    median_peak: list
    median_lattice_axis: list
    median_lattice_high: list
    meta: dict

    @property
    def weights(self) -> torch.Tensor:
        """(S, B, L, H, W): softmax of each logit map over its H * W cells."""
        flat = self.logits.flatten(-2)
        return flat.softmax(dim=-1).reshape(self.logits.shape)

    @property
    def command(self) -> str:
        return self.meta["command"]

    def model_config(self):
        return config_from_dict(self.meta["model_config"])


def load_map_history(path=DEFAULT_OUT) -> MapHistory:
    """Read a file written by `save_map_history`; a clear error names the command if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: re-create it with\n  {PROGRAM} --data DIR --out {path}\n"
                                f"(DIR holds cifar-10-batches-py), or restore it from the repository")
    with np.load(path, allow_pickle=False) as stored:
        missing = [key for key in ARRAYS + ("meta",) if key not in stored.files]
        if missing:
            raise ValueError(f"{path} is not a map history (no {', '.join(missing)}); re-create it with {PROGRAM}")
        arrays = {key: stored[key] for key in ARRAYS}
        meta = json.loads(str(stored["meta"]))
    grid = tuple(int(g) for g in arrays["grid"])
    logits = torch.from_numpy(arrays["logits"])
    return MapHistory(
        logits=logits.reshape(*logits.shape[:-1], *grid), images=torch.from_numpy(arrays["images"]),
        **{key: arrays[key].tolist() for key in ("image_ids", "labels", "latents", "epochs", "images_seen",
                                                  "test_acc", "median_spread", "median_peak",
                                                  "median_lattice_axis", "median_lattice_high")},
        grid=grid, meta=meta)


def _parser() -> argparse.ArgumentParser:
    defaults = HistorySettings()
    p = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    p.add_argument("--data", help="folder that holds cifar-10-batches-py (default: $PERCEIVER_EDU_DATA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"the .npz to write (default {DEFAULT_OUT})")
    p.add_argument("--train-subset", type=int, default=defaults.train_subset)
    p.add_argument("--test-subset", type=int, default=defaults.test_subset)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--probe-images", type=int, default=defaults.probe_images)
    p.add_argument("--classes", nargs="+", default=list(defaults.classes), choices=CLASSES)
    p.add_argument("--latents", nargs="+", type=int, default=list(defaults.latents))
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    return p


def main(argv=None) -> Path:
    args = _parser().parse_args(argv)
    settings = HistorySettings(args.train_subset, args.test_subset, args.epochs, args.seed, args.threads,
                               args.probe_images, tuple(args.classes), tuple(args.latents))
    data = load_cifar10(args.data)
    command = settings.command(args.data, args.out)
    print(f"{command}\n{data.describe()}", flush=True)
    result = record_map_history(data, settings, progress=args.progress)
    path = save_map_history(args.out, result, command)
    meta = result["meta"]
    print(f"wrote {path}: {len(result['arrays']['epochs'])} snapshots in {meta['seconds']} s; test accuracy "
          f"{result['arrays']['test_acc'][-1]:.2%} on {settings.test_subset} test images", flush=True)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
