"""The layers of LeNet-5 as LeCun, Bottou, Bengio and Haffner built it in 1998
("Gradient-based learning applied to document recognition"): a convolution whose output maps
read only some input maps (C3), trainable subsampling (S2, S4) and the Euclidean RBF output."""
import numpy as np

from .. import functional as F
from . import _checks
from .base import Layer, apply_activation, constant, finish_activation, fused, glorot_uniform
from .conv import image_shape, spatial, window_output_hw


class PartialConv2D(Layer):
    """A valid, stride-1 convolution in which output map ``o`` reads only the input maps
    ``connections[o]`` (LeNet-5's C3 table). Only connected kernels are weights:
    ``kernel`` has shape (sum of len(connections[o]), kh, kw), stored output map by output map.

    >>> from fastconv.models.lenet import C3_TABLE
    >>> layer = PartialConv2D(C3_TABLE, 5)
    >>> layer.build((6, 14, 14)); layer.count_params()
    1516
    """

    def __init__(self, connections, kernel_size, activation=None, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        if not isinstance(connections, (list, tuple)) or not connections:
            raise ValueError(f"{self.label}: `connections` must be a list, per output map, of the "
                             f"input maps it reads; received {connections!r}")
        self.connections = [sorted(_checks.integer(self.label, "connections", c, 0) for c in maps)
                            for maps in connections]
        if any(not maps or len(set(maps)) != len(maps) for maps in self.connections):
            raise ValueError(f"{self.label}: each output map must read distinct input maps, at "
                             f"least one; received {connections!r}")
        self.kernel_size = _checks.pair(self.label, "kernel_size", kernel_size)
        self.activation = _checks.activation(self.label, activation)

    def compute_output_shape(self, input_shape):
        channels, hw = spatial(self, input_shape)
        highest = max(max(maps) for maps in self.connections)
        if highest >= channels:
            raise ValueError(f"{self.label}: `connections` reads input map {highest}; received "
                             f"inputs with {channels} channels")
        out = window_output_hw(self, hw, self.kernel_size, (1, 1), "valid", (1, 1))
        return image_shape(self, len(self.connections), out)

    def _make_weights(self, input_shape, rng):
        kh, kw = self.kernel_size
        count = sum(len(maps) for maps in self.connections)
        fan_in = max(len(maps) for maps in self.connections) * kh * kw
        yield "kernel", glorot_uniform(self.label, (count, kh, kw), fan_in, kh * kw, rng)
        yield "bias", constant(self.label, (len(self.connections),), 0.0)

    def dense_kernel(self, channels):
        """The equivalent OIHW kernel, zero where a map is not connected."""
        kernel = np.zeros((len(self.connections), channels) + self.kernel_size, np.float32)
        start = 0
        for out, maps in enumerate(self.connections):
            kernel[out, maps] = self.weights["kernel"][start:start + len(maps)]
            start += len(maps)
        return kernel

    def count_macs(self, input_shape, output_shape):
        per_pixel = sum(len(maps) for maps in self.connections) * self.kernel_size[0] * self.kernel_size[1]
        return per_pixel * int(np.prod(output_shape)) // len(self.connections)

    def call(self, x):
        channels_first = self.data_format == "channels_first"
        kernel = self.dense_kernel(x.shape[1] if channels_first else x.shape[-1])
        y = F.conv2d(x, kernel if channels_first else kernel.transpose(2, 3, 1, 0),
                     self.weights["bias"], activation=fused(self.activation),
                     data_format=self.data_format)
        return finish_activation(y, self.activation, self._resolve_axis(-1, 3))

    def get_config(self):
        return {**super().get_config(), "connections": self.connections,
                "kernel_size": self.kernel_size, "activation": self.activation}


class Subsampling2D(Layer):
    """LeNet-5's trainable subsampling: each map's non-overlapping ``pool_size`` windows are
    summed, multiplied by a trainable ``coefficient`` and shifted by a trainable ``bias`` (one
    of each per map), then squashed by ``activation``.

    >>> import fastconv
    >>> layer = Subsampling2D(2, activation="lecun_tanh")
    >>> layer(fastconv.Input((6, 28, 28))).shape
    (None, 6, 14, 14)
    """

    def __init__(self, pool_size=2, activation=None, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.pool_size = _checks.pair(self.label, "pool_size", pool_size)
        self.activation = _checks.activation(self.label, activation)

    def compute_output_shape(self, input_shape):
        channels, hw = spatial(self, input_shape)
        out = window_output_hw(self, hw, self.pool_size, self.pool_size, "valid", (1, 1), False)
        return image_shape(self, channels, out)

    def _make_weights(self, input_shape, rng):
        channels, _ = spatial(self, input_shape)
        area = self.pool_size[0] * self.pool_size[1]
        yield "coefficient", constant(self.label, (channels,), 1.0 / area)
        yield "bias", constant(self.label, (channels,), 0.0)

    def call(self, x):
        mean = F.avg_pool2d(x, self.pool_size, data_format=self.data_format)
        area = self.pool_size[0] * self.pool_size[1]
        channels = self.weights["bias"].shape[0]
        # coefficient * window sum + bias == (coefficient * area) * window mean + bias.
        y = F.batch_norm(mean, np.zeros(channels), np.ones(channels),
                         self.weights["coefficient"] * area, self.weights["bias"], eps=0.0,
                         data_format=self.data_format)
        return apply_activation(y, self.activation, self._resolve_axis(-1, 3))

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "activation": self.activation}


class EuclideanRBF(Layer):
    """LeNet-5's output layer: unit j computes the squared Euclidean distance between its input
    and its parameter vector ``centers[j]``, y_j = sum_i (x_i - c_ji)^2. The smallest output
    is the predicted class (it is a penalty, not a score).

    >>> import numpy as np
    >>> layer = EuclideanRBF(2)
    >>> layer.build((3,)); layer.set_weights([np.array([[0, 0, 0], [1, 1, 1]], np.float32)])
    >>> layer(np.ones((1, 3), np.float32)).tolist()
    [[3.0, 0.0]]
    """

    non_trainable = ("centers",)  # fixed by hand in the paper

    def __init__(self, units, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.units = _checks.integer(self.label, "units", units, 1)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.label}: expects flat inputs (features,) per sample; received "
                             f"{(None,) + tuple(input_shape)}")
        return (self.units,)

    def _make_weights(self, input_shape, rng):
        # The paper fixes the centers to stylised 7x12 bitmaps of the characters, in {-1, +1}.
        shape = (self.units, input_shape[0])
        F.check_memory(self.label, "the weights", shape)
        yield "centers", rng.choice(np.array([-1.0, 1.0], np.float32), shape)

    def count_macs(self, input_shape, output_shape):
        return input_shape[0] * self.units

    def call(self, x):
        difference = np.asarray(x, np.float32)[:, None, :] - self.weights["centers"][None]
        return np.einsum("nji,nji->nj", difference, difference).astype(np.float32)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
