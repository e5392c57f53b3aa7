"""fastconv: fast CPU inference for convolutional networks.

C and Cython kernels (packed GEMM, im2col and direct convolution, pooling) with OpenMP, chosen at
import for the CPU's instruction set, behind a functional API (``fastconv.functional``), a
Keras-like layer API (``Input``, ``Sequential``, ``Model``, ``fastconv.layers``) and a zoo of the
classic ConvNets (``fastconv.models``).
"""
from . import functional, layers, models
from ._version import __version__
from .layers import Input
from .model import Model, Sequential
from .runtime import get_num_threads, set_num_threads, show_config
from .weights import load

__all__ = ["Input", "Model", "Sequential", "functional", "get_num_threads", "layers", "load",
           "models", "set_num_threads", "show_config", "__version__"]
