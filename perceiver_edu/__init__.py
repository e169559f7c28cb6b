"""perceiver-edu: the Perceiver (Jaegle et al., ICML 2021) built piece by piece, for teaching."""
from .attention import Attention, AttentionMaps, CrossAttentionBlock, MLP, SelfAttentionBlock
from .config import PerceiverConfig
from .model import Perceiver, count_parameters, parameter_count
from .positional import FourierPositionEncoding, LearnedPositionEncoding, fourier_features, linear_positions

__version__ = "0.1.0"
from .device import describe_device, pick_device, seed_everything
from .attention_maps import AttentionRecord, collect_attention, to_grid
from .scaling import AttentionWorkload, TensorMemoryTracker, attention_cost, measure, peak_memory, time_call
from .data import CLASSES, CIFAR10Data, load_cifar10
from .io import PerceiverIO, psnr, reconstruction_error, train_autoencoder

# The trainer's names load on first use, not here: importing perceiver_edu.train with the package would
# make `python -m perceiver_edu.train` warn that the module was already imported. `train` the function
# is not offered: it would hide the module perceiver_edu.train (use `from perceiver_edu.train import train`).
_FROM_TRAIN = ("TrainConfig", "confusion_matrix", "evaluate", "load_checkpoint", "predict")


def __getattr__(name):
    if name in _FROM_TRAIN:
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FROM_TRAIN))
