"""Converters: weights trained elsewhere, loaded into fastconv models."""
from .caffe import from_caffe, read_caffemodel, read_prototxt
from .torch import from_torch, read_torch_state_dict

__all__ = ["from_caffe", "from_torch", "read_caffemodel", "read_prototxt", "read_torch_state_dict"]
