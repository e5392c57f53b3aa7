"""Keras-like layers on top of ``fastconv.functional`` (see docs/layers.md).

>>> import fastconv
>>> from fastconv.layers import Conv2D, MaxPool2D
>>> x = fastconv.Input((1, 32, 32))
>>> MaxPool2D(2)(Conv2D(6, 5, activation="relu")(x)).shape
(None, 6, 14, 14)
"""
from .base import Layer, SymbolicTensor, deserialize, serialize
from .conv import Conv2D, ZeroPadding2D
from .classic import EuclideanRBF, PartialConv2D, Subsampling2D
from .core import (Activation, Dense, Dropout, Flatten, Input, InputLayer, ReLU, ReLU6,
                   Rescaling, Softmax)
from .merge import Add, Concatenate
from .normalization import BatchNormalization, LocalResponseNormalization
from .pooling import (AdaptiveAvgPool2D, AveragePooling2D, AvgPool2D, GlobalAveragePooling2D,
                      MaxPool2D, MaxPooling2D)

__all__ = [
    "Activation", "AdaptiveAvgPool2D", "Add", "AveragePooling2D", "AvgPool2D", "BatchNormalization",
    "Concatenate", "Conv2D", "Dense", "Dropout", "EuclideanRBF", "Flatten",
    "GlobalAveragePooling2D", "Input", "InputLayer", "Layer", "LocalResponseNormalization", "MaxPool2D",
    "MaxPooling2D", "PartialConv2D", "ReLU", "ReLU6", "Rescaling", "Softmax",
    "Subsampling2D", "SymbolicTensor", "ZeroPadding2D", "deserialize", "serialize",
]
