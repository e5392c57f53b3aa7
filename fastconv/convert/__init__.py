"""Converters: weights trained elsewhere, loaded into fastconv models."""
from .torch import from_torch, read_torch_state_dict

__all__ = ["from_torch", "read_torch_state_dict"]
