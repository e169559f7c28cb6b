"""The experiment runner: plans, records, skips on rerun, shares identical runs, and its commands reproduce."""
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver_edu import PerceiverConfig
from perceiver_edu import experiments as E
from perceiver_edu.baselines import ConvNetConfig
from perceiver_edu.train import TrainConfig

from test_data import make_fake_cifar
from test_train import synthetic_data

REPO = Path(__file__).resolve().parents[1]
TINY = dataclasses.replace(PerceiverConfig.preset("cpu"), name="tiny", patch_size=4, num_bands=4, num_latents=8,
                           latent_dim=32, cross_qk_dim=32, latent_heads=2, self_attends_per_block=2)
TINY_RECIPE = TrainConfig(batch_size=32, lr=2e-3, train_images=64, eval_every=0)


def tiny_experiments():
    """Two small experiments; `a/base` and `b/same` are the same run under two names."""
    return {
        "a": E.Experiment("a", "?", {
            "base": E.Variant(TINY, TINY_RECIPE),
            "permuted": E.Variant(dataclasses.replace(TINY, name="p", pixel_permutation=0), TINY_RECIPE),
            "convnet": E.Variant(ConvNetConfig(widths=(4, 8)), TINY_RECIPE)}),
        "b": E.Experiment("b", "?", {
            "same": E.Variant(dataclasses.replace(TINY, name="another name"), TINY_RECIPE),
            "wider": E.Variant(dataclasses.replace(TINY, latent_dim=64), TINY_RECIPE)}, seeds=1),
    }


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_the_experiments_of_the_issue_are_all_there():
    expected = {
        "permutation": ["perceiver_pixels", "perceiver_pixels_permuted", "perceiver_patches",
                        "perceiver_patches_permuted", "convnet", "convnet_permuted"],
        "position_encoding": ["fourier", "learned", "none"],
        "cross_attends": ["1", "2", "4"],
        "weight_sharing": ["none", "paper"],
        "latents": ["8", "16", "32", "64", "128"],
        "decoder": ["mean", "query"],
    }
    assert {name: list(e.variants) for name, e in E.EXPERIMENTS.items()} == expected
    assert all(e.seeds >= 2 for name, e in E.EXPERIMENTS.items() if name != "latents")
    assert all(v.recipe.train_images for e in E.EXPERIMENTS.values() for v in e.variants.values())


def test_the_variants_differ_only_where_the_experiment_says():
    v = {name: e.variants for name, e in E.EXPERIMENTS.items()}
    pixels, permuted = v["permutation"]["perceiver_pixels"].model, v["permutation"]["perceiver_pixels_permuted"].model
    assert pixels.patch_size == 1 and dataclasses.replace(permuted, name=pixels.name, pixel_permutation=None) == pixels
    assert v["permutation"]["convnet_permuted"].model.pixel_permutation == E.PERMUTATION_SEED
    # latent depth is 4 layers whatever the number of cross-attends
    for name in ("1", "2", "4"):
        config = v["cross_attends"][name].model
        assert config.num_cross_attends == int(name) and config.depth * config.self_attends_per_block == 4
    none, paper = v["weight_sharing"]["none"].model, v["weight_sharing"]["paper"].model
    assert E.forward_flops(none) == E.forward_flops(paper)  # the same compute ...
    assert E.rebuild_parameter_count({"model_config": paper.to_dict(), "architecture": "perceiver"}) < \
        E.rebuild_parameter_count({"model_config": none.to_dict(), "architecture": "perceiver"}) / 2  # ... fewer weights
    assert {v["latents"][n].model.num_latents for n in v["latents"]} == {8, 16, 32, 64, 128}
    assert len({v["latents"][n].model.latent_dim for n in v["latents"]}) == 1


def test_the_base_run_is_shared_between_experiments():
    runs = E.plan()
    by_label = {(r.experiment, r.variant, r.seed): r.identity() for r in runs}
    base = by_label[("permutation", "perceiver_patches", 0)]
    for key in [("position_encoding", "fourier", 0), ("cross_attends", "1", 0), ("decoder", "mean", 0),
                ("latents", "32", 0)]:
        assert by_label[key] == base, key
    assert by_label[("weight_sharing", "none", 1)] == by_label[("cross_attends", "4", 1)]
    assert by_label[("permutation", "perceiver_patches", 1)] != base  # seeds are different runs
    assert len(runs) == 37 and len(set(by_label.values())) == 28


@pytest.mark.parametrize("kwargs,message", [
    (dict(only=["permutations"]), "unknown experiment 'permutations'; choose from permutation, "),
    (dict(only=["latents"], variant="12"), "has no variant '12'; its variants: 8, 16, 32, 64, 128"),
    (dict(seeds=0), "at least 1"),
])
def test_bad_names_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E.plan(**kwargs)


@pytest.mark.parametrize("argv,message", [
    (["--only", "nope"], "unknown experiment 'nope'"),
    (["--only", "latents", "--variant", "8"], "needs --only EXPERIMENT, --variant VARIANT and --seed N"),
    (["--variant", "8", "--seed", "0"], "needs --only"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_command_lines_exit_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        E.main(argv)
    assert message in str(exit_info.value)


def test_sweep_end_to_end_records_shares_and_skips(tmp_path):
    data, out = synthetic_data(train=128, test=64), tmp_path / "results.jsonl"
    experiments = tiny_experiments()
    runs = E.plan(experiments)
    new = E.sweep(runs, data, out, threads=1, progress=False)
    records = lines(out)
    assert len(records) == len(new) == 3 * 2 + 2 * 1
    for record in records:
        assert set(E.REQUIRED_KEYS) <= set(record), set(E.REQUIRED_KEYS) - set(record)
        assert 0 <= record["test_acc"] <= 1 and record["test_images"] == 64 and record["train_images"] == 64
        assert record["threads"] == 1 and record["data_source"] == "synthetic test data"
        # the processor decides the kernels, and so the bits: every line names it
        assert record["cpu"] == E.cpu_model() != "" and record["cpu_capability"]
        assert E.rebuild_parameter_count(record) == record["params"]
        assert record["command"].startswith(
            f"python -m perceiver_edu.experiments --only {record['experiment']} --variant {record['variant']} "
            f"--seed {record['seed']} --threads 1")
    by_key = {(r["experiment"], r["variant"], r["seed"]): r for r in records}
    shared, trained = by_key[("b", "same", 0)], by_key[("a", "base", 0)]
    assert shared["trained_as"] == "a/base" and trained["trained_as"] is None
    assert shared["test_acc"] == trained["test_acc"] and shared["model_config"]["name"] == "another name"
    # a rerun finds everything done: nothing trained, the file unchanged
    before = out.read_text()
    assert E.sweep(runs, data, out, threads=1, progress=False) == []
    assert out.read_text() == before


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path):
    data, out = synthetic_data(train=128, test=64), tmp_path / "results.jsonl"
    runs = E.plan(tiny_experiments(), only=["a"], seeds=1)
    E.sweep(runs[:2], data, out, threads=1, progress=False)  # "stopped" after two runs
    rest = E.sweep(runs, data, out, threads=1, progress=False)
    assert [(r["variant"], r["seed"]) for r in rest] == [("convnet", 0)]
    straight = tmp_path / "straight.jsonl"
    E.sweep(runs, data, straight, threads=1, progress=False)
    assert [r["test_acc"] for r in lines(out)] == [r["test_acc"] for r in lines(straight)]


def test_stale_and_damaged_lines_are_errors(tmp_path):
    data, out = synthetic_data(train=128, test=64), tmp_path / "results.jsonl"
    experiments = tiny_experiments()
    E.sweep(E.plan(experiments, only=["b"]), data, out, threads=1, progress=False)
    changed = dict(experiments)
    changed["b"] = dataclasses.replace(experiments["b"], variants={
        "same": experiments["b"].variants["same"],
        "wider": E.Variant(dataclasses.replace(TINY, latent_dim=128), TINY_RECIPE)})
    with pytest.raises(ValueError, match="holds b/wider/seed 0 made with other settings"):
        E.sweep(E.plan(changed, only=["b"]), data, out, threads=1, progress=False)
    with open(out, "a") as f:
        f.write('{"experiment": "b", "varia')  # a run cut off while writing
    with pytest.raises(ValueError, match="line 3, is not JSON.*Delete that line"):
        E.read_results(out)


def test_the_recorded_command_reproduces_its_line(tmp_path):
    """Run a small sweep from the command line, then run one line's command: same accuracy and loss."""
    make_fake_cifar(tmp_path / "data", rows=64)
    out = tmp_path / "results.jsonl"
    quick = ["--train-images", "128", "--test-subset", "48", "--threads", "1", "--no-progress"]
    env = {**os.environ, "PERCEIVER_EDU_DATA": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    sweep = subprocess.run([sys.executable, "-m", "perceiver_edu.experiments", "--only", "latents",
                            "--out", str(out), *quick], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    recorded = {r["variant"]: r for r in lines(out)}
    assert set(recorded) == {"8", "16", "32", "64", "128"}
    record = recorded["16"]
    assert record["command"] == ("python -m perceiver_edu.experiments --only latents --variant 16 --seed 0 "
                                 "--threads 1 --train-images 128 --test-subset 48")
    words = shlex.split(record["command"])
    assert words[:3] == ["python", "-m", "perceiver_edu.experiments"]
    again = subprocess.run([sys.executable, *words[1:], "--no-progress"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    line = json.loads(again.stdout.strip().splitlines()[-1])
    assert (line["test_acc"], line["test_loss"], line["params"]) == \
        (record["test_acc"], record["test_loss"], record["params"])
    assert len(lines(out)) == 5  # the single run printed its line; it did not touch the sweep's file


def test_summaries_follow_the_experiment_and_average_the_seeds():
    experiments = tiny_experiments()
    records = []
    for variant, accuracies in (("permuted", (0.5, 0.25)), ("base", (0.75, 0.5))):
        for seed, accuracy in enumerate(accuracies):
            records.append({"experiment": "a", "variant": variant, "seed": seed, "test_acc": accuracy,
                            "params": 10, "flops_per_image": 2e6, "train_images": 64, "img_per_s": 100.0 + seed})
    summaries = E.summarise(records, "a", experiments)
    assert [s.variant for s in summaries] == ["base", "permuted"]  # the experiment's order, not the file's
    base = summaries[0]
    assert base.seeds == (0, 1) and base.mean == 0.625 and base.spread == 0.25 and base.img_per_s == 100.5
    table = E.markdown_table(summaries).splitlines()
    assert len(table) == 4 and table[2].startswith("| `base` | 62.50% | 25.00 points | 2 | 10 | 2.0 | 64 |")


def test_two_workers_share_the_runs_and_give_the_same_numbers(tmp_path):
    """--workers 2: every run once, each identity trained once, and the same accuracy as one process."""
    make_fake_cifar(tmp_path / "data", rows=64)
    env = {**os.environ, "PERCEIVER_EDU_DATA": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    quick = ["--only", "latents", "--only", "decoder", "--seeds", "1", "--train-images", "128",
             "--test-subset", "48", "--threads", "1", "--no-progress"]
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}.jsonl"
        done = subprocess.run([sys.executable, "-m", "perceiver_edu.experiments", *quick, "--workers", str(workers),
                               "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        results[workers] = {(r["experiment"], r["variant"], r["seed"]): r for r in lines(out)}
    assert len(results[2]) == len(lines(tmp_path / "workers2.jsonl")) == 7  # 5 latents + 2 decoders, no duplicates
    assert {k: r["test_acc"] for k, r in results[2].items()} == {k: r["test_acc"] for k, r in results[1].items()}
    shared = [r for r in results[2].values() if r["trained_as"]]
    assert [(r["experiment"], r["variant"]) for r in shared] in ([("decoder", "mean")], [("latents", "32")])
