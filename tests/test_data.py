"""The CIFAR-10 loader and the on-device augmentation, on tiny fake `cifar-10-batches-py` folders."""
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from perceiver_edu import data as D

ROWS = 12  # images per fake batch file


def make_fake_cifar(root, rows=ROWS, seed=0, source_text="a fake copy for tests"):
    """Write DIR/cifar-10-batches-py with the official layout and `rows` images per batch file."""
    folder = root / D.FOLDER_NAME
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in D.TRAIN_FILES + D.TEST_FILES:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, rows).tolist(), "filenames": [f"{name}_{i}.png" for i in range(rows)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": rows, "label_names": list(D.CLASSES), "num_vis": 3072}, f)
    if source_text:
        (folder / "SOURCE.txt").write_text(source_text)
    return folder


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    assert D.resolve_data_dir() == D.DEFAULT_DATA_DIR.expanduser()
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "env"))
    assert D.resolve_data_dir() == tmp_path / "env"
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_loads_fake_folder_with_shapes_and_source(tmp_path):
    folder = make_fake_cifar(tmp_path)
    data = D.load_cifar10(tmp_path, download=False)
    assert data.train_images.shape == (5 * ROWS, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (ROWS, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (5 * ROWS,)
    # Rows are the files' rows, channel-major, in file order.
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert torch.equal(data.train_images[ROWS:2 * ROWS].reshape(ROWS, -1), torch.from_numpy(batch["data"]))
    assert data.train_labels[ROWS:2 * ROWS].tolist() == batch["labels"]
    assert data.official is False
    assert "NOT the official" in data.source and "a fake copy for tests" in data.source


def test_official_when_every_md5_matches(tmp_path, monkeypatch):
    folder = make_fake_cifar(tmp_path, source_text=None)
    monkeypatch.setattr(D, "OFFICIAL_MD5", {n: D.file_digest(folder / n) for n in D.TRAIN_FILES + D.TEST_FILES})
    data = D.load_cifar10(tmp_path, download=False)
    assert data.official is True and "official" in data.source and "NOT" not in data.source


def test_official_md5_table_matches_torchvision():
    from torchvision.datasets import CIFAR10
    assert D.OFFICIAL_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list)
    assert (D.CIFAR10_URL, D.CIFAR10_ARCHIVE_MD5) == (CIFAR10.url, CIFAR10.tgz_md5)


def test_truncated_batch_file_names_the_file(tmp_path):
    folder = make_fake_cifar(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(D.CorruptDatasetError, match="data_batch_3.*truncated or corrupted"):
        D.load_cifar10(tmp_path, download=False)


def test_batch_with_too_few_images_is_not_a_partial_dataset(tmp_path):
    folder = make_fake_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:  # a valid pickle, but 5 of 12 images
        pickle.dump({"data": np.zeros((5, 3072), np.uint8), "labels": [0] * 5}, f)
    with pytest.raises(D.CorruptDatasetError, match="test_batch.*incomplete"):
        D.load_cifar10(tmp_path, download=False)


def test_missing_batch_file_names_the_file(tmp_path):
    folder = make_fake_cifar(tmp_path)
    (folder / "data_batch_5").unlink()
    with pytest.raises(D.CorruptDatasetError, match="data_batch_5 is missing"):
        D.load_cifar10(tmp_path, download=False)


def _assert_offline_help(message, root):
    assert str(root / D.FOLDER_NAME) in message
    assert D.DATA_ENV_VAR in message
    assert f"python ../shared/data/prepare_cifar10.py {root}" in message


def test_missing_data_without_download(tmp_path):
    with pytest.raises(D.DatasetNotFoundError) as error:
        D.load_cifar10(tmp_path / "nowhere", download=False)
    _assert_offline_help(str(error.value), tmp_path / "nowhere")


def test_missing_data_offline_download_fails_clearly(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    calls = []

    def offline(url, download_root, **kwargs):
        calls.append((url, kwargs.get("md5")))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(D.DatasetNotFoundError) as error:
        D.load_cifar10(tmp_path / "offline")
    assert calls == [(D.CIFAR10_URL, D.CIFAR10_ARCHIVE_MD5)]  # the real download was attempted, md5-checked
    _assert_offline_help(str(error.value), tmp_path / "offline")
    assert "name resolution" in str(error.value)


def test_subset_is_fixed_and_sized(tmp_path):
    make_fake_cifar(tmp_path)
    a = D.load_cifar10(tmp_path, download=False, train_subset=20, test_subset=5, check_md5=False)
    b = D.load_cifar10(tmp_path, download=False, train_subset=20, test_subset=5, check_md5=False)
    assert a.train_images.shape[0] == 20 and a.test_labels.shape[0] == 5
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    with pytest.raises(ValueError, match="between 1 and 60"):
        D.load_cifar10(tmp_path, download=False, train_subset=61)


def _reference_crop(image, top, left, flipped, padding=4):
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crop = padded[:, top:top + image.shape[1], left:left + image.shape[2]]
    return crop.flip(-1) if flipped else crop


def test_augment_keeps_shape_dtype_range_and_is_a_padded_crop():
    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding is visible
    out = D.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    floats = D.to_float(out)
    assert floats.dtype == torch.float32 and 0.0 <= floats.min() and floats.max() <= 1.0
    offsets = range(9)
    for image, result in zip(images, out):
        matches = [(t, l, f) for t in offsets for l in offsets for f in (False, True)
                   if torch.equal(_reference_crop(image, t, l, f), result)]
        assert matches, "an augmented image is not a flipped/unflipped crop of the zero-padded original"
    # Over 16 images, crops and flips actually vary.
    assert not torch.equal(out, images)


def test_augment_is_deterministic_per_seed():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = D.augment(images, torch.Generator().manual_seed(1))
    b = D.augment(images, torch.Generator().manual_seed(1))
    c = D.augment(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_batches_cover_an_epoch_once_and_keep_labels():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous()
    labels = torch.arange(10)
    batches = list(D.train_batches(images, labels, 4, torch.Generator().manual_seed(0), augmentation=False))
    assert len(batches) == 2  # drop_last: 2 full batches of 4
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == 8
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())  # each image still has its own label
