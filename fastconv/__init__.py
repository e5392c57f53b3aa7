"""fastconv: fast CPU inference for convolutional networks.

C and Cython kernels (packed GEMM, im2col and direct convolution, pooling) with OpenMP, chosen at
import for the CPU's instruction set, behind a functional API (``fastconv.functional``).
"""
from . import functional
from ._version import __version__
from .runtime import get_num_threads, set_num_threads, show_config

__all__ = ["functional", "get_num_threads", "set_num_threads", "show_config", "__version__"]
from . import layers
from .layers import Input
from .model import Model, Sequential

__all__ += ["layers", "Input", "Model", "Sequential"]
