"""CIFAR-10 held as uint8 tensors on the training device, with batched on-device augmentation.

Where the data lives
--------------------
The loader reads ``DIR/cifar-10-batches-py/`` (the official "python version" layout: ``data_batch_1``
.. ``data_batch_5``, ``test_batch``, ``batches.meta``). ``DIR`` is, in order of precedence:

1. the ``data_dir`` argument (``--data DIR`` on the command line),
2. the environment variable ``PERCEIVER_EDU_DATA``,
3. ``~/.cache/perceiver_edu``.

If the folder is absent the official archive is downloaded with torchvision's download utilities,
checked against its published md5 and extracted. Without internet, make the offline copy with
``python ../shared/data/prepare_cifar10.py DIR``.

Which copy was used
-------------------
Every batch file is compared with the official per-file md5 sums (the ones torchvision lists).
``CIFAR10Data.official`` says whether all of them matched and ``CIFAR10Data.source`` says what the
copy is (the text of ``SOURCE.txt`` when the folder has one). The offline copy is a JPEG re-encoding,
so it is *not* official and its accuracies are not exactly comparable to published CIFAR-10 numbers.

Why everything is on the device
-------------------------------
The whole training set is one uint8 tensor (50,000 x 3 x 32 x 32 = 150 MB). A batch is drawn by
indexing it, and the augmentation (random crop with 4-pixel zero padding, horizontal flip) is one
gather for the whole batch. No per-image Python transforms and no worker processes: on a GPU this
removes the input bottleneck of a classic DataLoader; on a CPU it costs well under 1% of a step.
Normalisation by the CIFAR mean/std happens inside the model, so batches are floats in [0, 1].
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

DATA_ENV_VAR = "PERCEIVER_EDU_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/perceiver_edu")
FOLDER_NAME = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
# Per-file md5 sums of the official archive's contents (identical to torchvision.datasets.CIFAR10's lists).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)


class DatasetNotFoundError(FileNotFoundError):
    """CIFAR-10 is not on disk and could not be downloaded."""


class CorruptDatasetError(ValueError):
    """A batch file is missing, truncated or does not hold what a CIFAR-10 batch holds."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """DIR from the argument, else $PERCEIVER_EDU_DATA, else ~/.cache/perceiver_edu (user-expanded)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def _offline_help(root: Path) -> str:
    return (f"CIFAR-10 was not found in {root / FOLDER_NAME}.\n"
            f"Either point to a folder that contains {FOLDER_NAME}/ with --data DIR or the environment "
            f"variable {DATA_ENV_VAR}=DIR, or create the offline copy with\n"
            f"    python ../shared/data/prepare_cifar10.py {root}\n"
            f"(with internet access the official archive is downloaded there automatically).")


def download_cifar10(root: str | os.PathLike) -> Path:
    """Download and extract the official archive into ROOT (md5-checked). Returns ROOT/cifar-10-batches-py."""
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(CIFAR10_URL, download_root=str(root), md5=CIFAR10_ARCHIVE_MD5,
                                     remove_finished=True)
    except Exception as error:  # URLError, socket timeouts, md5 mismatch, full disk, ...
        raise DatasetNotFoundError(f"{_offline_help(root)}\nThe download from {CIFAR10_URL} failed: "
                                   f"{type(error).__name__}: {error}") from error
    return root / FOLDER_NAME


def file_digest(path: str | os.PathLike, algorithm: str = "md5", chunk: int = 1 << 22) -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class that a CIFAR-10 batch never contains."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How pickle protocol 2 under Python 3 writes bytes: _codecs.encode(text, "latin1")."""
    if encoding != "latin1":
        raise _RefusedGlobal(f"it calls _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Every name a CIFAR-10 batch's pickle refers to: numpy's array and dtype rebuilders (numpy 1.x writes
# numpy.core, numpy 2.x numpy._core; protocol 5 uses _frombuffer, 2 to 4 _reconstruct), plus how
# protocol 2 under Python 3 stores bytes. The functions come from numpy's own reductions, so they are
# this numpy's whatever its module layout.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROM_BUFFER = np.zeros(1).__reduce_ex__(5)[0]
_BATCH_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROM_BUFFER, ("numpy._core.numeric", "_frombuffer"): _FROM_BUFFER,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """Reads only what a CIFAR-10 batch holds: dicts, lists, str, bytes, numbers and numpy arrays.

    A pickle may name any importable function and have it called while loading: that is how a
    tampered file runs code. This unpickler refuses every name but those in _BATCH_GLOBALS."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise _RefusedGlobal(f"it refers to {module}.{name}, which a CIFAR-10 batch never contains")
        return _BATCH_GLOBALS[module, name]


def _read_pickle(path: Path) -> dict:
    clean_copy = (f"Delete {path.parent} and download it again (the official archive is md5-checked), or "
                  f"re-run python ../shared/data/prepare_cifar10.py {path.parent.parent}")
    if not path.is_file():
        raise CorruptDatasetError(f"{path} is missing. The folder {path.parent} is incomplete: delete it and "
                                  f"download again, or re-run python ../shared/data/prepare_cifar10.py "
                                  f"{path.parent.parent}")
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()  # the official files were pickled by Python 2
    except _RefusedGlobal as error:
        raise CorruptDatasetError(f"{path} was not loaded: {error}. Nothing in it was run; the file was "
                                  f"not written by the CIFAR-10 tools and may have been tampered with. "
                                  f"{clean_copy}") from None
    except Exception as error:  # EOFError, UnpicklingError, ValueError, ... all mean a damaged file
        raise CorruptDatasetError(f"{path} is truncated or corrupted ({type(error).__name__}: {error}). "
                                  f"{clean_copy}") from error
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"{path} does not hold a CIFAR-10 batch (found a {type(obj).__name__}, "
                                  f"expected a dict)")
    return obj


def _read_batch(path: Path, expected_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images (n, 3, 32, 32) uint8, labels (n,) int64, with every shape checked."""
    batch = _read_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise CorruptDatasetError(f"{path} has no 'data'/'labels' entries (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        raise CorruptDatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],):
        raise CorruptDatasetError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if expected_rows is not None and data.shape[0] != expected_rows:
        raise CorruptDatasetError(f"{path}: {data.shape[0]} images, but batches.meta says every batch "
                                  f"has {expected_rows}: the file is incomplete")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CorruptDatasetError(f"{path}: labels outside 0..9")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


@dataclass(frozen=True)
class CIFAR10Data:
    """Both splits as tensors on one device.

    train_images, test_images: (N, 3, 32, 32) uint8.  train_labels, test_labels: (N,) int64.
    official: True when every batch file matched its official md5 (None when not checked).
    source: a sentence saying which copy this is.
    """
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path
    official: bool | None
    source: str
    classes: tuple[str, ...] = CLASSES

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device) -> "CIFAR10Data":
        return replace(self, **{name: getattr(self, name).to(device) for name in
                                ("train_images", "train_labels", "test_images", "test_labels")})

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "CIFAR10Data":
        """A fixed random subset of each split (the same for the same seed, whatever the device)."""
        changes = {}
        for split, n in (("train", train), ("test", test)):
            if n is None:
                continue
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if not 0 < n <= len(labels):
                raise ValueError(f"{split} subset must be between 1 and {len(labels)}, got {n}")
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
            keep = keep.to(images.device)
            changes[f"{split}_images"], changes[f"{split}_labels"] = images[keep], labels[keep]
        return replace(self, **changes)

    def describe(self) -> str:
        return (f"CIFAR-10 from {self.root / FOLDER_NAME}: {len(self.train_labels)} train / "
                f"{len(self.test_labels)} test images on {self.device}; {self.source}")


def load_cifar10(data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 download: bool = True, check_md5: bool = True, train_subset: int | None = None,
                 test_subset: int | None = None, subset_seed: int = 0) -> CIFAR10Data:
    """Load CIFAR-10 from DIR/cifar-10-batches-py onto `device` (see the module docstring for DIR).

    download: fetch the official archive when the folder is absent (needs internet).
    check_md5: compare each batch file with its official md5 (about 0.5 s) to fill `official`.
    train_subset / test_subset: keep a fixed random subset of that many images (for quick runs).
    Raises DatasetNotFoundError (nothing on disk, no download) or CorruptDatasetError (a damaged file).
    """
    root = resolve_data_dir(data_dir)
    folder = root / FOLDER_NAME
    if not folder.is_dir():
        if not download:
            raise DatasetNotFoundError(_offline_help(root))
        folder = download_cifar10(root)

    meta = _read_pickle(folder / "batches.meta") if (folder / "batches.meta").exists() else {}
    rows = meta.get("num_cases_per_batch")
    splits = {}
    for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        parts = [_read_batch(folder / name, rows) for name in files]
        splits[split] = (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                         torch.from_numpy(np.concatenate([p[1] for p in parts])))

    official, source = None, "md5 sums not checked"
    if check_md5:
        mismatched = [name for name, md5 in OFFICIAL_MD5.items() if file_digest(folder / name) != md5]
        official = not mismatched
        source = ("the official CIFAR-10 python batches (every md5 matches)" if official else
                  f"NOT the official CIFAR-10 files (md5 differs for {', '.join(mismatched)})")
    marker = folder / "SOURCE.txt"
    if marker.is_file():
        source += ". SOURCE.txt: " + marker.read_text().strip()

    data = CIFAR10Data(splits["train"][0], splits["train"][1], splits["test"][0], splits["test"][1],
                       root=root, official=official, source=source)
    if train_subset is not None or test_subset is not None:
        data = data.subset(train_subset, test_subset, seed=subset_seed)
    return data.to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1]. The model applies the mean/std normalisation itself."""
    return images.float().div_(255)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding, plus random horizontal flip, for a whole batch in one gather.

    images: (B, C, H, W), any dtype, on any device. generator: a CPU torch.Generator; the random
    offsets are drawn on the CPU so the same seed gives the same crops on every device.
    Returns a tensor of the same shape, dtype and device.
    """
    batch, _, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # (B, C, H+2p, W+2p), zeros outside
    top = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    mirrored = torch.rand(batch, 1, generator=generator) < 0.5 if flip else torch.zeros(batch, 1, dtype=torch.bool)
    rows = top + torch.arange(height)                                               # (B, H)
    columns = left + torch.where(mirrored, torch.arange(width - 1, -1, -1), torch.arange(width))  # (B, W)
    rows, columns = rows.to(device, non_blocking=True), columns.to(device, non_blocking=True)
    batch_index = torch.arange(batch, device=device)[:, None, None]
    out = padded[batch_index, :, rows[:, :, None], columns[:, None, :]]              # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()                                       # (B, C, H, W)


def train_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                  augmentation: bool = True, drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float images in [0, 1], labels) batches, augmented on the device.

    The permutation and every crop/flip come from `generator`, so a seed fixes the whole epoch.
    """
    order = torch.randperm(len(labels), generator=generator)
    if images.device.type == "cuda":
        order = order.pin_memory()  # lets the index copies below run asynchronously
    stop = len(labels) - len(labels) % batch_size if drop_last else len(labels)
    for first in range(0, stop, batch_size):
        take = order[first:first + batch_size].to(images.device, non_blocking=True)
        batch = images[take]
        if augmentation:
            batch = augment(batch, generator)
        yield to_float(batch), labels[take]


def eval_batches(images: torch.Tensor, labels: torch.Tensor,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed-order, unaugmented (float images in [0, 1], labels) batches."""
    for first in range(0, len(labels), batch_size):
        yield to_float(images[first:first + batch_size]), labels[first:first + batch_size]
