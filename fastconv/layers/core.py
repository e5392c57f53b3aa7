"""Input, Dense, Flatten, Dropout, activations and Softmax."""
import math

import numpy as np

from .. import functional as F
from . import _checks
from .base import (Layer, SymbolicTensor, apply_activation, constant, finish_activation, fused,
                   glorot_uniform)


class InputLayer(Layer):
    """The source of a graph; use ``Input``, which returns its output tensor.

    >>> layer = InputLayer((3, 32, 32), name="image")
    >>> layer.output.shape
    (None, 3, 32, 32)
    """

    default_name = "input"

    def __init__(self, shape, name=None, data_format="channels_first"):
        super().__init__(name=name)
        self.shape = _checks.shape(self.label, "shape", shape)
        self.data_format = _checks.data_format(self.label, data_format)
        self.built = True
        self.output = SymbolicTensor(self.shape, self.data_format, self, [])

    def __call__(self, inputs):
        raise TypeError(f"{self.label}: an input layer is not called; use fastconv.Input(shape) "
                        f"and call layers on the tensor it returns")

    def get_config(self):
        return {"name": self.name, "shape": self.shape, "data_format": self.data_format}


def Input(shape, name=None, data_format="channels_first"):
    """A symbolic input of ``shape`` (one sample, no batch axis) in ``data_format``.

    ``shape`` is (C, H, W) for ``"channels_first"`` (the default) and (H, W, C) for
    ``"channels_last"``; (features,) for a flat input.

    >>> import fastconv
    >>> fastconv.Input((3, 224, 224)).shape
    (None, 3, 224, 224)
    """
    return InputLayer(shape, name=name, data_format=data_format).output


class Dense(Layer):
    """Fully connected layer: ``activation(x @ kernel.T + bias)`` on (batch, features) inputs.

    ``kernel`` is (units, in_features), the PyTorch/ONNX layout, in both data formats.
    ``activation``: None, "linear", "relu", "relu6", "tanh", "sigmoid" (fused into the GEMM
    store) or "softmax".

    >>> import numpy as np
    >>> layer = Dense(3, activation="relu")
    >>> layer(np.ones((2, 4), np.float32)).shape
    (2, 3)
    >>> {name: w.shape for name, w in layer.weights.items()}
    {'kernel': (3, 4), 'bias': (3,)}
    """

    def __init__(self, units, activation=None, use_bias=True, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.units = _checks.integer(self.label, "units", units, 1)
        self.activation = _checks.activation(self.label, activation)
        self.use_bias = _checks.boolean(self.label, "use_bias", use_bias)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.label}: expects flat inputs (features,) per sample; received "
                             f"{(None,) + tuple(input_shape)} (add a Flatten layer before it)")
        if self.built and input_shape[0] != self.weights["kernel"].shape[1]:
            raise ValueError(f"{self.label}: was built for {self.weights['kernel'].shape[1]} input "
                             f"features; received {input_shape[0]}")
        return (self.units,)

    def _make_weights(self, input_shape, rng):
        features = input_shape[0]
        yield "kernel", glorot_uniform(self.label, (self.units, features), features, self.units, rng)
        if self.use_bias:
            yield "bias", constant(self.label, (self.units,), 0.0)

    def count_macs(self, input_shape, output_shape):
        return input_shape[0] * self.units

    def call(self, x):
        y = F.dense(x, self.weights["kernel"], self.weights.get("bias"), fused(self.activation))
        return finish_activation(y, self.activation, -1)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias}


class Flatten(Layer):
    """Reshapes each sample to one axis, in memory order: C, H, W for channels_first (as
    ``torch.flatten(x, 1)``), H, W, C for channels_last (as Keras).

    >>> import numpy as np
    >>> Flatten()(np.zeros((2, 16, 5, 5))).shape
    (2, 400)
    """

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def call(self, x):
        return F.flatten(x, axis=1)


class Dropout(Layer):
    """Dropout with probability ``rate``: the identity at inference, kept so that converted
    architectures keep their layer names.

    >>> import numpy as np
    >>> Dropout(0.5)(np.ones((1, 3))).tolist()
    [[1.0, 1.0, 1.0]]
    """

    def __init__(self, rate, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.rate = _checks.number(self.label, "rate", rate, minimum=0.0)
        if self.rate >= 1.0:
            raise ValueError(f"{self.label}: `rate` must be in [0, 1); received {rate!r}")

    def call(self, x):
        return np.asarray(x, dtype=np.float32)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Activation(Layer):
    """An elementwise activation: "linear" (or None), "relu", "relu6", "tanh", "sigmoid",
    "lecun_tanh" (1.7159 tanh(2x/3), LeNet-5 1998) or "softmax" (over the channel/feature axis).

    >>> import numpy as np
    >>> Activation("relu6")(np.array([[-1.0, 3.0, 9.0]])).tolist()
    [[0.0, 3.0, 6.0]]
    """

    def __init__(self, activation, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.activation = _checks.activation(self.label, activation)

    def call(self, x):
        return apply_activation(x, self.activation, self._resolve_axis(-1, np.ndim(x) - 1))

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class _NamedActivation(Activation):
    """An Activation whose function is fixed by the class (``kind``): no argument to configure."""

    kind = None

    def __init__(self, name=None, input_shape=None):
        super().__init__(self.kind, name=name, input_shape=input_shape)

    def get_config(self):
        return {k: v for k, v in super().get_config().items() if k != "activation"}


class ReLU(_NamedActivation):
    """max(x, 0).

    >>> import numpy as np
    >>> ReLU()(np.array([[-1.0, 2.0]])).tolist()
    [[0.0, 2.0]]
    """

    default_name = kind = "relu"


class ReLU6(_NamedActivation):
    """min(max(x, 0), 6) (MobileNetV2).

    >>> import numpy as np
    >>> ReLU6()(np.array([[-1.0, 9.0]])).tolist()
    [[0.0, 6.0]]
    """

    default_name = kind = "relu6"


class Softmax(Layer):
    """Softmax along ``axis``: -1 (the default) is the channel/feature axis in either data format
    (axis 1 for channels_first, the last axis for channels_last); an int >= 1 is that axis of
    the batched tensor.

    >>> import numpy as np
    >>> Softmax()(np.zeros((1, 4))).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """

    def __init__(self, axis=-1, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.axis = _checks.channel_axis(self.label, axis)

    def compute_output_shape(self, input_shape):
        self._resolve_axis(self.axis, len(input_shape))
        return tuple(input_shape)

    def call(self, x):
        return F.softmax(x, axis=self._resolve_axis(self.axis, np.ndim(x) - 1))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Rescaling(Layer):
    """``x * scale + offset`` per channel (or with scalars), with no trainable weights: fixed
    input normalisation such as torchvision GoogLeNet's ``transform_input``.

    >>> import numpy as np
    >>> Rescaling([2.0, 1.0], [0.0, -1.0])(np.ones((1, 2, 1, 1))).ravel().tolist()
    [2.0, 0.0]
    """

    def __init__(self, scale, offset=0.0, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.scale = self._values("scale", scale)
        self.offset = self._values("offset", offset)

    def _values(self, arg, value):
        try:
            values = np.atleast_1d(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):  # strings, ragged lists, None
            values = np.zeros((0, 0))
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"{self.label}: `{arg}` must be a finite number or a list of them, one "
                             f"per channel; received {value!r}")
        return [float(v) for v in values]

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, (1, 2, 3), "(C,), (C, L) or (C, H, W) (channels last: "
                                                 "(C,), (L, C) or (H, W, C))")
        channels = input_shape[self._channel_index(len(input_shape))]
        for arg, values in (("scale", self.scale), ("offset", self.offset)):
            if len(values) not in (1, channels):
                raise ValueError(f"{self.label}: `{arg}` has {len(values)} values for inputs with "
                                 f"{channels} channels")
        return tuple(input_shape)

    def call(self, x):
        channels = x.shape[self._resolve_axis(-1, x.ndim - 1)]
        scale = np.broadcast_to(self.scale, (channels,))
        offset = np.broadcast_to(self.offset, (channels,))
        # batch_norm with mean 0, variance 1 and epsilon 0 is exactly scale * x + offset.
        return F.batch_norm(x, np.zeros(channels), np.ones(channels), scale, offset, eps=0.0,
                            data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
