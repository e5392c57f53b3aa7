"""Conv2D and ZeroPadding2D."""
import numpy as np

from .. import functional as F
from . import _checks
from .base import Layer, finish_activation, fused, glorot_uniform, constant


def spatial(layer, input_shape):
    """(channels, (height, width)) of a (C, H, W) or (H, W, C) sample shape."""
    layer._check_rank(input_shape, (3,), "(C, H, W)" if layer.data_format == "channels_first"
                      else "(H, W, C)")
    if layer.data_format == "channels_first":
        return input_shape[0], tuple(input_shape[1:])
    return input_shape[2], tuple(input_shape[:2])


def image_shape(layer, channels, hw):
    if layer.data_format == "channels_first":
        return (channels,) + tuple(hw)
    return tuple(hw) + (channels,)


def window_output_hw(layer, hw, kernel, strides, padding, dilation, ceil_mode=None):
    """Output (height, width) of a sliding window, with the functional ops' own arithmetic (so
    that a model's shapes are the shapes its operators produce); ``ceil_mode`` None means
    convolution rounding. A window that fits the padded input gives an output of at least 1."""
    pads = F._resolve_padding(padding, layer.label, hw, kernel, strides, dilation)
    F._check_window_fits(layer.label, hw, kernel, dilation, pads)
    if ceil_mode is None:
        return tuple(F.conv_output_size(hw[a], kernel[a], strides[a], pads[a], dilation[a])
                     for a in (0, 1))
    return tuple(F.pool_output_size(hw[a], kernel[a], strides[a], pads[a], dilation[a], ceil_mode)
                 for a in (0, 1))


class Conv2D(Layer):
    """2-D convolution, ``activation(conv(x, kernel) + bias)``.

    ``kernel`` is OIHW (filters, in_channels / groups, kh, kw) for channels_first (PyTorch,
    ONNX, Caffe) and HWIO (kh, kw, in_channels / groups, filters) for channels_last (Keras).
    ``padding``: an int, a pair, ((top, bottom), (left, right)), "valid", "same" (TensorFlow/ONNX
    SAME_UPPER), "same_upper" or "same_lower". ``groups`` > 1 gives grouped and depthwise
    convolution. ``activation`` as in Dense (ReLU/ReLU6/tanh/sigmoid fused into the store).

    >>> import fastconv
    >>> x = fastconv.Input((3, 32, 32))
    >>> Conv2D(16, 3, strides=2, padding="same", activation="relu")(x).shape
    (None, 16, 16, 16)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation=1, groups=1,
                 activation=None, use_bias=True, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        label = self.label
        self.filters = _checks.integer(label, "filters", filters, 1)
        self.kernel_size = _checks.pair(label, "kernel_size", kernel_size)
        self.strides = _checks.pair(label, "strides", strides)
        self.padding = _checks.padding(label, padding)
        self.dilation = _checks.pair(label, "dilation", dilation)
        self.groups = _checks.integer(label, "groups", groups, 1)
        if self.filters % self.groups:
            raise ValueError(f"{label}: `groups` must divide `filters`; received filters="
                             f"{self.filters}, groups={self.groups}")
        self.activation = _checks.activation(label, activation)
        self.use_bias = _checks.boolean(label, "use_bias", use_bias)

    def _in_channels(self):
        kernel = self.weights["kernel"]
        per_group = kernel.shape[1] if self.data_format == "channels_first" else kernel.shape[2]
        return per_group * self.groups

    def compute_output_shape(self, input_shape):
        channels, hw = spatial(self, input_shape)
        if channels % self.groups:
            raise ValueError(f"{self.label}: `groups`={self.groups} must divide the input "
                             f"channels; received {channels} channels")
        if self.built and channels != self._in_channels():
            raise ValueError(f"{self.label}: was built for {self._in_channels()} input channels; "
                             f"received {channels}")
        out = window_output_hw(self, hw, self.kernel_size, self.strides, self.padding,
                               self.dilation)
        return image_shape(self, self.filters, out)

    def _make_weights(self, input_shape, rng):
        channels, _ = spatial(self, input_shape)
        kh, kw = self.kernel_size
        per_group = channels // self.groups
        shape = ((self.filters, per_group, kh, kw) if self.data_format == "channels_first"
                 else (kh, kw, per_group, self.filters))
        fan_in, fan_out = per_group * kh * kw, self.filters // self.groups * kh * kw
        yield "kernel", glorot_uniform(self.label, shape, fan_in, fan_out, rng)
        if self.use_bias:
            yield "bias", constant(self.label, (self.filters,), 0.0)

    def count_macs(self, input_shape, output_shape):
        channels, _ = spatial(self, input_shape)
        return (np.prod(output_shape, dtype=np.int64).item() * channels // self.groups
                * self.kernel_size[0] * self.kernel_size[1])

    def call(self, x):
        y = F.conv2d(x, self.weights["kernel"], self.weights.get("bias"), stride=self.strides,
                     padding=self.padding, dilation=self.dilation, groups=self.groups,
                     activation=fused(self.activation), data_format=self.data_format)
        return finish_activation(y, self.activation, self._resolve_axis(-1, 3))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups, "activation": self.activation, "use_bias": self.use_bias}


class ZeroPadding2D(Layer):
    """Pads height and width with zeros: ``padding`` is an int, a pair (ph, pw) or
    ((top, bottom), (left, right)).

    >>> import numpy as np
    >>> ZeroPadding2D(((1, 0), (2, 2)))(np.ones((1, 3, 4, 4))).shape
    (1, 3, 5, 8)
    """

    def __init__(self, padding=1, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.padding = _checks.padding(self.label, padding, allow_modes=False)

    def _pads(self):
        if isinstance(self.padding, int):
            return ((self.padding,) * 2,) * 2
        if isinstance(self.padding[0], int):
            return tuple((p, p) for p in self.padding)
        return self.padding

    def compute_output_shape(self, input_shape):
        channels, hw = spatial(self, input_shape)
        return image_shape(self, channels, [size + sum(p) for size, p in zip(hw, self._pads())])

    def call(self, x):
        spatial_axes = (2, 3) if self.data_format == "channels_first" else (1, 2)
        widths = [(0, 0)] * 4
        for axis, pad in zip(spatial_axes, self._pads()):
            widths[axis] = pad
        padded = tuple(size + sum(pad) for size, pad in zip(np.shape(x), widths))
        F.check_memory(self.label, "the output", padded)
        return np.pad(np.asarray(x, dtype=np.float32), widths)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}
