"""Maps saved during training (perceiver_edu.map_history): one snapshot per epoch plus one before
training, deterministic for a seed, saved and loaded with the command that made them."""
import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver_edu import PerceiverConfig
from perceiver_edu.attention_maps import collect_attention
from perceiver_edu.data import CLASSES, CIFAR10Data
from perceiver_edu.map_history import (DEFAULT_OUT, HistorySettings, _parser, base_model_and_recipe,
                                       load_map_history, record_map_history, save_map_history)
from perceiver_edu.registry import build_model
from perceiver_edu.train import TrainConfig, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def tiny_data() -> CIFAR10Data:
    """Random images whose class shows in the red channel's mean, so training has something to learn."""
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(count) % 10
        images = torch.randint(0, 120, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
        images[:, 0] += (labels * 13).to(torch.uint8)[:, None, None]
        return images, labels

    (train_images, train_labels), (test_images, test_labels) = split(256), split(60)
    return CIFAR10Data(train_images, train_labels, test_images, test_labels, Path("/nowhere"), False,
                       "synthetic test data")


TINY = dataclasses.replace(PerceiverConfig.preset("cpu"), name="tiny", num_latents=8, latent_dim=32,
                           cross_qk_dim=32, self_attends_per_block=1, latent_heads=2)
TINY_RECIPE = TrainConfig(epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.5, eval_every=1, augment=True)
SETTINGS = HistorySettings(train_subset=128, test_subset=40, epochs=2, probe_images=12,
                           classes=("airplane", "ship"), latents=(1, 5, 6))


@pytest.fixture(scope="module")
def result():
    return record_map_history(tiny_data(), SETTINGS, TINY, TINY_RECIPE, log=lambda line: None)


def test_one_snapshot_before_training_and_one_per_epoch(result):
    arrays = result["arrays"]
    assert arrays["epochs"].tolist() == [0, 1, 2]
    assert arrays["images_seen"].tolist() == [0, 128, 256]           # 4 steps of 32 per epoch
    assert arrays["logits"].shape == (3, 2, 3, 16 * 16)              # (snapshots, images, latents, M)
    labels = tiny_data().test_labels
    ids = arrays["image_ids"].tolist()
    assert ids == [CLASSES.index("airplane"), CLASSES.index("ship")]  # the first test image of each class
    assert arrays["labels"].tolist() == labels[ids].tolist()
    assert np.all((arrays["test_acc"] >= 0) & (arrays["test_acc"] <= 1))
    assert np.all((arrays["median_spread"] >= 1) & (arrays["median_spread"] <= 256))
    assert np.all((arrays["median_lattice_axis"] > 0) & (arrays["median_lattice_axis"] <= 1))
    assert not np.array_equal(arrays["logits"][0], arrays["logits"][2]), "training changed nothing"


def test_snapshot_zero_is_the_seeded_untrained_model(result):
    """The first snapshot is the model train() starts from: rebuilt from the seed, its logits agree."""
    seed_everything(TINY_RECIPE.seed)
    model = build_model(TINY)
    images = tiny_data().test_images[result["arrays"]["image_ids"]].float() / 255
    logits = collect_attention(model, images, include_logits=True).cross_logits[0][:, 0, list(SETTINGS.latents)]
    assert torch.equal(logits, torch.from_numpy(result["arrays"]["logits"][0]))


def test_the_same_settings_give_the_same_arrays(result):
    again = record_map_history(tiny_data(), SETTINGS, TINY, TINY_RECIPE, log=lambda line: None)
    for key, value in result["arrays"].items():
        assert np.array_equal(value, again["arrays"][key]), key


def test_save_and_load_round_trip(result, tmp_path):
    command = SETTINGS.command("/data", tmp_path / "h.npz")
    path = save_map_history(tmp_path / "h.npz", result, command)
    history = load_map_history(path)
    assert history.command == command and history.meta["data_source"] == "synthetic test data"
    assert history.logits.shape == (3, 2, 3, 16, 16) and history.grid == (16, 16)
    assert torch.equal(history.logits.flatten(-2), torch.from_numpy(result["arrays"]["logits"]))
    weights = history.weights
    torch.testing.assert_close(weights.sum(dim=(-2, -1)), torch.ones(3, 2, 3))
    assert history.epochs == [0, 1, 2] and history.latents == [1, 5, 6]
    assert history.model_config() == TINY


def test_missing_or_wrong_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m perceiver_edu.map_history --data DIR"):
        load_map_history(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a map history"):
        load_map_history(tmp_path / "other.npz")


def test_command_round_trips_through_the_parser():
    settings = HistorySettings(epochs=3, latents=(2, 4), classes=("cat", "dog"))
    command = settings.command("/work/data", "out.npz")
    assert command == ("python -m perceiver_edu.map_history --data /work/data --out out.npz --epochs 3 "
                       "--classes cat dog --latents 2 4")
    args = _parser().parse_args(shlex.split(command)[3:])
    assert (args.epochs, args.latents, args.classes, args.data) == (3, [2, 4], ["cat", "dog"], "/work/data")
    assert HistorySettings().command(None, DEFAULT_OUT) == f"python -m perceiver_edu.map_history --out {DEFAULT_OUT}"


def test_the_default_run_is_the_sweeps_base_model_with_the_sweeps_warmup():
    from perceiver_edu.experiments import BASE, BASE_RECIPE

    config, recipe = base_model_and_recipe(HistorySettings())
    assert dataclasses.replace(config, name=BASE.name) == BASE
    steps_per_epoch = 10_000 // 128
    assert recipe.warmup_epochs * steps_per_epoch == pytest.approx(BASE_RECIPE.warmup_epochs * (50_000 // 128), abs=0.1)
    assert (recipe.epochs, recipe.train_images, recipe.lr, recipe.seed) == (8, None, BASE_RECIPE.lr, 0)


def test_the_committed_file_holds_what_the_chapter_reads():
    path = ROOT / DEFAULT_OUT
    if not path.is_file():
        pytest.skip(f"{DEFAULT_OUT} is not committed yet")
    history = load_map_history(path)
    assert history.command.startswith("python -m perceiver_edu.map_history ")
    assert history.epochs == list(range(len(history.epochs))) and len(history.epochs) >= 5
    assert history.images_seen[0] == 0 and history.images_seen == sorted(history.images_seen)
    assert path.stat().st_size < 1_000_000
    meta = json.loads(json.dumps(history.meta))
    assert {"torch", "data_source", "recipe", "model_config", "settings", "seconds"} <= set(meta)
