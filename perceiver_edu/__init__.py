"""perceiver-edu: the Perceiver (Jaegle et al., ICML 2021) built piece by piece, for teaching."""
from .attention import Attention, AttentionMaps, CrossAttentionBlock, MLP, SelfAttentionBlock
from .config import PerceiverConfig
from .model import Perceiver, count_parameters, parameter_count
from .positional import FourierPositionEncoding, LearnedPositionEncoding, fourier_features, linear_positions

__version__ = "0.1.0"
from .device import describe_device, pick_device, seed_everything
