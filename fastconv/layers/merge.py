"""Concatenate and Add: the layers that take a list of tensors."""
from .. import functional as F
from . import _checks
from .base import Layer, finish_activation, fused


class Concatenate(Layer):
    """Joins tensors along ``axis``: -1 (the default) is the channel axis in either data format
    (an inception block's branches); an int >= 1 is that axis of the batched tensor.

    >>> import fastconv
    >>> a, b = fastconv.Input((64, 28, 28)), fastconv.Input((32, 28, 28))
    >>> Concatenate()([a, b]).shape
    (None, 96, 28, 28)
    """

    merges = True

    def __init__(self, axis=-1, name=None):
        super().__init__(name=name)
        self.axis = _checks.channel_axis(self.label, axis)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len({len(s) for s in shapes}) > 1:
            raise ValueError(f"{self.label}: inputs must have the same rank; received "
                             f"{[(None,) + s for s in shapes]}")
        axis = self._resolve_axis(self.axis, len(shapes[0])) - 1
        rest = {s[:axis] + s[axis + 1:] for s in shapes}
        if len(rest) > 1:
            raise ValueError(f"{self.label}: input shapes must match except on axis {axis + 1}; "
                             f"received {[(None,) + s for s in shapes]}")
        return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]

    def call(self, inputs):
        return F.concat(inputs, axis=self._resolve_axis(self.axis, inputs[0].ndim - 1))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Add(Layer):
    """Elementwise sum of tensors of one shape, with an optional activation applied to the sum
    ("relu" is fused into the last addition: a ResNet residual connection).

    >>> import fastconv
    >>> x = fastconv.Input((64, 56, 56))
    >>> Add(activation="relu")([x, x]).shape
    (None, 64, 56, 56)
    """

    merges = True

    def __init__(self, activation=None, name=None):
        super().__init__(name=name)
        self.activation = _checks.activation(self.label, activation)

    def compute_output_shape(self, input_shape):
        shapes = {tuple(s) for s in input_shape}
        if len(shapes) > 1:
            raise ValueError(f"{self.label}: inputs must all have the same shape; received "
                             f"{[(None,) + tuple(s) for s in input_shape]}")
        return shapes.pop()

    def call(self, inputs):
        y = inputs[0]
        for i, x in enumerate(inputs[1:], start=2):
            y = F.add(y, x, fused(self.activation) if i == len(inputs) else None)
        return finish_activation(y, self.activation, self._resolve_axis(-1, y.ndim - 1))

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}
