"""MaxPool2D, AvgPool2D, AdaptiveAvgPool2D and GlobalAveragePooling2D."""
import numpy as np

from .. import functional as F
from . import _checks
from .base import Layer
from .conv import image_shape, spatial, window_output_hw


class _Pool2D(Layer):
    """Shared arguments of the windowed poolings; ``strides=None`` means ``pool_size``."""

    def __init__(self, pool_size, strides=None, padding="valid", ceil_mode=False, name=None,
                 input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.pool_size = _checks.pair(self.label, "pool_size", pool_size)
        self.strides = None if strides is None else _checks.pair(self.label, "strides", strides)
        self.padding = _checks.padding(self.label, padding)
        self.ceil_mode = _checks.boolean(self.label, "ceil_mode", ceil_mode)

    def compute_output_shape(self, input_shape):
        channels, hw = spatial(self, input_shape)
        strides = self.strides or self.pool_size
        out = window_output_hw(self, hw, self.pool_size, strides, self.padding, (1, 1),
                               ceil_mode=self.ceil_mode)
        return image_shape(self, channels, out)

    def _window_args(self):
        return dict(kernel_size=self.pool_size, stride=self.strides, padding=self.padding,
                    ceil_mode=self.ceil_mode, data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "ceil_mode": self.ceil_mode}


class MaxPool2D(_Pool2D):
    """Max pooling; padded positions never win. ``ceil_mode=True`` rounds the output size up
    (Caffe; GoogLeNet and AlexNet need it). Also available as ``MaxPooling2D``.

    >>> import fastconv
    >>> MaxPool2D(3, strides=2, ceil_mode=True)(fastconv.Input((64, 112, 112))).shape
    (None, 64, 56, 56)
    """

    def call(self, x):
        return F.max_pool2d(x, **self._window_args())


class AvgPool2D(_Pool2D):
    """Average pooling. ``count_include_pad=True`` (PyTorch's default) divides by the window
    positions inside the padded input, False by the real input positions. Also available as
    ``AveragePooling2D``.

    >>> import fastconv
    >>> AvgPool2D(2)(fastconv.Input((8, 7, 7))).shape
    (None, 8, 3, 3)
    """

    def __init__(self, pool_size, strides=None, padding="valid", ceil_mode=False,
                 count_include_pad=True, name=None, input_shape=None):
        super().__init__(pool_size, strides, padding, ceil_mode, name=name, input_shape=input_shape)
        self.count_include_pad = _checks.boolean(self.label, "count_include_pad", count_include_pad)

    def call(self, x):
        return F.avg_pool2d(x, count_include_pad=self.count_include_pad, **self._window_args())

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


MaxPooling2D = MaxPool2D
AveragePooling2D = AvgPool2D


class GlobalAveragePooling2D(Layer):
    """Mean over height and width: (C,) per sample, or (C, 1, 1) / (1, 1, C) with
    ``keepdims=True``.

    >>> import fastconv
    >>> GlobalAveragePooling2D()(fastconv.Input((512, 7, 7))).shape
    (None, 512)
    """

    def __init__(self, keepdims=False, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.keepdims = _checks.boolean(self.label, "keepdims", keepdims)

    def compute_output_shape(self, input_shape):
        channels, _ = spatial(self, input_shape)
        return image_shape(self, channels, (1, 1)) if self.keepdims else (channels,)

    def call(self, x):
        return F.global_avg_pool2d(x, data_format=self.data_format, keepdims=self.keepdims)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class AdaptiveAvgPool2D(Layer):
    """Average pooling to a fixed ``output_size`` (an int or a pair), whatever the input size:
    output cell i covers input rows floor(i * H / out) to ceil((i + 1) * H / out), as PyTorch's
    AdaptiveAvgPool2d. torchvision's AlexNet and VGG end their features with it; at 224x224
    inputs it is the identity.

    >>> import fastconv
    >>> AdaptiveAvgPool2D(7)(fastconv.Input((512, 14, 14))).shape
    (None, 512, 7, 7)
    """

    def __init__(self, output_size, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.output_size = _checks.pair(self.label, "output_size", output_size)

    def compute_output_shape(self, input_shape):
        channels, _ = spatial(self, input_shape)
        return image_shape(self, channels, self.output_size)

    def call(self, x):
        x = np.asarray(x, dtype=np.float32)
        if self.data_format == "channels_last":
            return np.moveaxis(self._pool_nchw(np.moveaxis(x, -1, 1)), 1, -1)
        return self._pool_nchw(x)

    def _pool_nchw(self, x):
        (h, w), (oh, ow) = x.shape[2:], self.output_size
        if (h, w) == (oh, ow):
            return x
        if h % oh == 0 and w % ow == 0:
            return F.avg_pool2d(x, (h // oh, w // ow))
        F.check_memory(self.label, "the output", x.shape[:2] + (oh, ow))
        y = np.empty(x.shape[:2] + (oh, ow), np.float32)
        for i in range(oh):
            rows = slice(i * h // oh, -(-(i + 1) * h // oh))
            for j in range(ow):
                y[:, :, i, j] = x[:, :, rows, j * w // ow:-(-(j + 1) * w // ow)].mean(axis=(2, 3))
        return y

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}
