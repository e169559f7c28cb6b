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
# `train` the function is not re-exported: it would hide the module perceiver_edu.train (use
# `from perceiver_edu.train import train`).
from .train import TrainConfig, confusion_matrix, evaluate, load_checkpoint, predict
