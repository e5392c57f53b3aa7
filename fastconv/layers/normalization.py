"""BatchNormalization and LocalResponseNormalization (inference forms)."""
from .. import functional as F
from . import _checks
from .base import Layer, constant

_RANKS = (1, 2, 3)
_LAYOUTS = {"channels_first": "(C,), (C, L) or (C, H, W)",
            "channels_last": "(C,), (L, C) or (H, W, C)"}


class BatchNormalization(Layer):
    """Inference batch normalisation per channel:
    ``gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.

    ``epsilon`` defaults to 1e-5, as PyTorch and ONNX (Keras uses 1e-3: pass it when converting
    Keras models). Weights, each of shape (C,): gamma (1), beta (0), moving_mean (0),
    moving_variance (1); PyTorch calls them weight, bias, running_mean, running_var.

    >>> import numpy as np
    >>> bn = BatchNormalization()
    >>> bn(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    >>> list(bn.weights)
    ['gamma', 'beta', 'moving_mean', 'moving_variance']
    """

    non_trainable = ("moving_mean", "moving_variance")

    def __init__(self, epsilon=1e-5, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.epsilon = _checks.number(self.label, "epsilon", epsilon, minimum=0.0)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, _RANKS, _LAYOUTS[self.data_format])
        channels = input_shape[self._channel_index(len(input_shape))]
        if self.built and channels != self.weights["gamma"].shape[0]:
            raise ValueError(f"{self.label}: was built for {self.weights['gamma'].shape[0]} "
                             f"channels; received {channels}")
        return tuple(input_shape)

    def _make_weights(self, input_shape, rng):
        channels = input_shape[self._channel_index(len(input_shape))]
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0),
                            ("moving_variance", 1.0)):
            yield name, constant(self.label, (channels,), value)

    def call(self, x):
        w = self.weights
        return F.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"],
                            eps=self.epsilon, data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class LocalResponseNormalization(Layer):
    """Local response normalisation across channels (AlexNet, GoogLeNet), as Caffe, PyTorch and
    ONNX define it: ``x / (k + alpha / size * sum(x_j ** 2)) ** beta`` over ``size``
    neighbouring channels.

    >>> import numpy as np
    >>> LocalResponseNormalization(5, alpha=1e-4, beta=0.75, k=2.0)(np.ones((1, 8, 3, 3))).shape
    (1, 8, 3, 3)
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, name=None, input_shape=None):
        super().__init__(name=name, input_shape=input_shape)
        self.size = _checks.integer(self.label, "size", size, 1)
        self.alpha = _checks.number(self.label, "alpha", alpha)
        self.beta = _checks.number(self.label, "beta", beta)
        self.k = _checks.number(self.label, "k", k)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, _RANKS, _LAYOUTS[self.data_format])
        return tuple(input_shape)

    def call(self, x):
        return F.lrn(x, self.size, self.alpha, self.beta, self.k, data_format=self.data_format)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta,
                "k": self.k}
