"""Nothing a reader loads can run code: crafted checkpoints and data batches are refused unexecuted.

Each crafted file carries a payload that writes a marker file when unpickled the unsafe way; every test
asserts that the marker was never written (the payload did not run) and that the error says what to do.
"""
import pickle
import re
import warnings

import numpy as np
import pytest
import torch

from perceiver_edu import data as D
from perceiver_edu.assets import export_weights, verified_path
from perceiver_edu.train import TrainConfig, load_checkpoint, main, read_checkpoint, train

from test_data import make_fake_cifar
from test_train import TINY, synthetic_data, without_timings

QUIET = dict(device="cpu", progress=False, log=lambda *_: None)


class WritesAFile:
    """Unpickled the unsafe way, this calls exec(code): here, code that writes `marker`."""

    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').write('the payload ran')"

    def __reduce__(self):
        return exec, (self.code,)


def crafted_checkpoint(path, marker):
    """A file shaped like a trainer checkpoint, with a payload among its entries (as in issue 17)."""
    torch.save({"format": 2, "model": {}, "model_config": {}, "x": WritesAFile(marker)}, path)
    return path


def assert_refused(caught, marker, *patterns):
    assert not marker.exists(), "the crafted file's payload ran"
    message = str(caught.value)
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)


def test_a_crafted_checkpoint_is_refused_by_load_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = crafted_checkpoint(tmp_path / "last.pt", marker)
    with pytest.raises(Exception) as caught:
        load_checkpoint(path, device="cpu")
    assert_refused(caught, marker, r"was not loaded: it refers to builtins\.exec", "Nothing in it was run")
    assert isinstance(caught.value, ValueError)


def test_a_crafted_checkpoint_is_refused_by_resume_on_the_command_line(tmp_path):
    marker = tmp_path / "pwned"
    make_fake_cifar(tmp_path / "data", rows=40)
    crafted_checkpoint((tmp_path / "ck").mkdir() or tmp_path / "ck" / "last.pt", marker)
    with pytest.raises(BaseException) as caught:
        main(["--data", str(tmp_path / "data"), "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ck"),
              "--resume", "--no-progress"])
    assert_refused(caught, marker, r"^error: .*last\.pt was not loaded: it refers to builtins\.exec")
    assert isinstance(caught.value, SystemExit)


def test_a_crafted_checkpoint_is_refused_by_export_weights(tmp_path):
    marker = tmp_path / "pwned"
    path = crafted_checkpoint(tmp_path / "last.pt", marker)
    with pytest.raises(Exception) as caught:
        export_weights(path, tmp_path / "out.pt")
    assert_refused(caught, marker, r"was not loaded: it refers to builtins\.exec")
    assert not (tmp_path / "out.pt").exists()


def test_a_crafted_data_batch_is_refused_by_load_cifar10(tmp_path):
    marker = tmp_path / "pwned"
    folder = make_fake_cifar(tmp_path, rows=8)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"batch_label": "x", "data": WritesAFile(marker), "labels": [0] * 8}, f, protocol=2)
    with pytest.raises(Exception) as caught:
        D.load_cifar10(tmp_path, download=False, check_md5=False)
    assert_refused(caught, marker, r"data_batch_3 was not loaded: it refers to (__builtin__|builtins)\.exec",
                   r"Delete .*cifar-10-batches-py and download it again", "prepare_cifar10.py")
    assert isinstance(caught.value, D.CorruptDatasetError)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_batches_as_numpy_pickles_them_still_load(tmp_path, protocol):
    folder = make_fake_cifar(tmp_path, rows=8)
    images = np.arange(8 * 3072, dtype=np.int64).reshape(8, 3072).astype(np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": b"bytes too", "data": images, "labels": list(range(8)),
                     "filenames": [f"{i}.png" for i in range(8)]}, f, protocol=protocol)
    data = D.load_cifar10(tmp_path, download=False, check_md5=False)
    assert torch.equal(data.test_images.flatten(1), torch.from_numpy(images))
    assert data.test_labels.tolist() == list(range(8))


def test_a_new_checkpoint_needs_no_allowances_to_load(tmp_path):
    train(TINY, TrainConfig(epochs=1, batch_size=32), synthetic_data(train=64, test=32), checkpoint_dir=tmp_path,
          **QUIET)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "last.pt") == []
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["format"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def as_format_1(path):
    """Rewrite a checkpoint in the previous layout: numpy's RNG state as numpy's own tuple (an array)."""
    state = torch.load(path, weights_only=True)
    numpy = state["rng"]["numpy"]
    state["format"] = 1
    state["rng"]["numpy"] = (numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                             numpy["has_gauss"], numpy["cached_gaussian"])
    state["rng"]["cuda"] = None
    torch.save(state, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)


class StopAfter(Exception):
    """Raised from on_epoch_end: the run stops as if killed right after that epoch's checkpoint."""


def stop_after(epochs):
    def on_epoch_end(epoch, model, history):
        if epoch == epochs:
            raise StopAfter(epoch)
    return on_epoch_end


def test_a_format_1_checkpoint_is_read_safely_with_a_warning_and_resumes_exactly(tmp_path):
    data = synthetic_data(train=128, test=32)
    recipe = TrainConfig(epochs=3, batch_size=32, lr=2e-3)  # TINY has dropout: the RNG states matter
    full_model, full_history = train(TINY, recipe, data, **QUIET)
    with pytest.raises(StopAfter):
        train(TINY, recipe, data, checkpoint_dir=tmp_path, on_epoch_end=stop_after(2), **QUIET)
    as_format_1(tmp_path / "last.pt")

    with pytest.warns(UserWarning, match=r"format-1 checkpoint[\s\S]*weights_only=True"):
        resumed_model, resumed_history = train(TINY, recipe, data, checkpoint_dir=tmp_path, resume=True, **QUIET)
    assert without_timings(resumed_history) == without_timings(full_history)
    assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(),
                                                 resumed_model.state_dict().values()))
    assert read_checkpoint(tmp_path)["format"] == 2  # written in the new format from then on


def test_the_shipped_checkpoint_loads_without_allowances():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no OldCheckpointWarning: exports hold no RNG state
        model, history = load_checkpoint(verified_path(), device="cpu")
    assert history[-1]["test_acc"] == pytest.approx(0.5702)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(verified_path()) == []
