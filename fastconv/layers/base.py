"""The layer base class, symbolic tensors and layer (de)serialisation.

A layer is configured in ``__init__`` (arguments checked there), creates its weights in
``build(input_shape)`` and computes on NumPy arrays in ``call``. Shapes handed to ``build`` and
``compute_output_shape`` are per sample, without the batch axis, in the layer's ``data_format``
(set by the graph it is called in; ``"channels_first"`` for a layer used on its own).
"""
import math
import re
from collections.abc import Mapping

import numpy as np

from .. import functional as F
from . import _checks


class SymbolicTensor:
    """The output of a layer called on symbolic tensors: a shape and the node that produces it.

    ``shape`` includes the batch axis as ``None``; ``sample_shape`` does not.

    >>> import fastconv
    >>> x = fastconv.Input((3, 32, 32))
    >>> fastconv.layers.Conv2D(8, 3, padding="same")(x).shape
    (None, 8, 32, 32)
    """

    def __init__(self, sample_shape, data_format, layer, inbound):
        self.sample_shape = tuple(sample_shape)
        self.data_format = data_format
        self.layer = layer
        self.inbound = list(inbound)

    @property
    def shape(self):
        return (None,) + self.sample_shape

    def __repr__(self):
        source = self.layer.name or type(self.layer).__name__
        return f"<SymbolicTensor shape={self.shape} from {source} ({type(self.layer).__name__})>"


def glorot_uniform(owner, shape, fan_in, fan_out, rng):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio, 2010)."""
    F.check_memory(owner, "the weights", shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def constant(owner, shape, value):
    F.check_memory(owner, "the weights", shape)
    return np.full(shape, value, np.float32)


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class Layer:
    """Base class of all layers.

    Subclasses set ``merges = True`` if they take a list of tensors, override
    ``compute_output_shape`` and ``call``, and, if they have weights, ``_make_weights`` and
    ``count_macs``. Calling a layer on a ``SymbolicTensor`` adds it to a graph; calling it on an
    array computes (building the weights first if needed).

    >>> import numpy as np, fastconv
    >>> relu = fastconv.layers.ReLU()
    >>> relu(np.array([[-1.0, 2.0]]))
    array([[0., 2.]], dtype=float32)
    """

    merges = False
    non_trainable = ()  # names of weights that are statistics or constants, not parameters
    default_name = None  # the snake_case class name unless a subclass sets it
    _registry = {}
    weights_version = 0  # counts assignments of any layer's weights (plans check it per predict)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Layer._registry[cls.__name__] = cls
        if "default_name" not in cls.__dict__:
            cls.default_name = _snake_case(cls.__name__)

    def __init__(self, name=None, input_shape=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"{type(self).__name__}: `name` must be a non-empty string or None; "
                            f"received {name!r}")
        self.name = name
        self.input_shape = None if input_shape is None else _checks.shape(
            self.label, "input_shape", input_shape)
        self.data_format = "channels_first"
        self.built = False
        self.weights = {}

    @property
    def weights(self):
        """The weights by name (a dict of float32 arrays), replaced whole by ``set_weights``."""
        return self._weights

    @weights.setter
    def weights(self, value):
        self._weights = value
        Layer.weights_version += 1

    @property
    def label(self):
        """How messages name the layer: ``Conv2D 'conv2d_1'`` (or the class before naming)."""
        kind = type(self).__name__
        return f"{kind} '{self.name}'" if self.name else kind

    # Shapes ------------------------------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        """Output sample shape for an input sample shape (a list of them for merging layers);
        raises ValueError naming the layer when the input does not fit."""
        return tuple(input_shape)

    def _channel_index(self, rank):
        """Index of the channel axis in a sample shape of ``rank`` dimensions."""
        return 0 if self.data_format == "channels_first" else rank - 1

    def _resolve_axis(self, axis, rank):
        """The batched-tensor axis meant by an ``axis`` argument (see _checks.channel_axis) for
        samples of ``rank`` dimensions."""
        if axis == -1:
            return 1 + self._channel_index(rank)
        if axis > rank:
            raise ValueError(f"{self.label}: `axis` must be -1 (the channel axis) or in 1..{rank} "
                             f"for inputs of rank {rank + 1}; received {axis}")
        return axis

    def _check_rank(self, input_shape, ranks, layout):
        if len(input_shape) not in ranks:
            raise ValueError(f"{self.label}: expects inputs shaped {layout} per sample "
                             f"({self.data_format}); received {(None,) + tuple(input_shape)}")

    # Weights -----------------------------------------------------------------------------------

    def build(self, input_shape, rng=None):
        """Creates the weights for inputs of ``input_shape`` (per sample). ``rng`` is a NumPy
        Generator for the initialisers (a fresh unseeded one if None)."""
        self.built, self.weights = False, {}
        self.compute_output_shape(input_shape)
        rng = np.random.default_rng() if rng is None else rng
        self.weights = dict(self._make_weights(tuple(input_shape), rng))
        self.built = True

    def _make_weights(self, input_shape, rng):
        return {}

    def get_weights(self):
        """Copies of the weights, in ``weights`` order."""
        return [w.copy() for w in self.weights.values()]

    def set_weights(self, weights):
        """Replaces the weights from a list (in ``weights`` order) or a name -> array mapping.
        Shapes must match exactly; values are copied as float32."""
        self.weights = self._checked_weights(weights)

    def _checked_weights(self, weights):
        self._require_built("set_weights")
        names = list(self.weights)
        if isinstance(weights, Mapping):
            if set(weights) != set(names):
                raise ValueError(f"{self.label}: set_weights expects the names {names}; received "
                                 f"{list(weights)}")
            values = [weights[n] for n in names]
        else:
            values = list(weights)
            if len(values) != len(names):
                raise ValueError(f"{self.label}: set_weights expects {len(names)} arrays {names}; "
                                 f"received {len(values)}")
        return {name: self._checked_array(name, value) for name, value in zip(names, values)}

    def _checked_array(self, name, value):
        expected = self.weights[name].shape
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{self.label}: weight '{name}' must hold real numbers; received dtype "
                            f"{array.dtype}")
        if array.shape != expected:
            raise ValueError(f"{self.label}: weight '{name}' must have shape {expected}; received "
                             f"shape {array.shape}")
        return np.array(array, dtype=np.float32, order="C")

    def count_params(self, include_non_trainable=False):
        """Trainable parameters (the figure papers and torchvision publish); with
        ``include_non_trainable``, also the statistics and constants (BatchNorm's moving mean
        and variance)."""
        self._require_built("count_params")
        return sum(w.size for name, w in self.weights.items()
                   if include_non_trainable or name not in self.non_trainable)

    def count_macs(self, input_shape, output_shape):
        """Multiply-accumulates per sample (convolution and dense layers; 0 for the others)."""
        return 0

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{self.label}: {what} needs the weights; the layer is not built yet "
                             f"(call it on an input, or put it in a model)")

    # Calling -----------------------------------------------------------------------------------

    def __call__(self, inputs):
        items = self._as_list(inputs)
        if any(isinstance(t, SymbolicTensor) for t in items):
            return self._call_symbolic(items)
        return self._call_eager(items)

    def _as_list(self, inputs):
        is_list = isinstance(inputs, (list, tuple))
        if self.merges and not (is_list and len(inputs) >= 2):
            length = f" of length {len(inputs)}" if is_list else ""
            raise TypeError(f"{self.label}: expects a list of at least 2 tensors; received "
                            f"{type(inputs).__name__}{length}")
        if not self.merges and is_list:
            raise TypeError(f"{self.label}: expects one tensor; received a list of {len(inputs)} "
                            f"(only Concatenate and Add take lists)")
        return list(inputs) if is_list else [inputs]

    def _call_symbolic(self, tensors):
        if not all(isinstance(t, SymbolicTensor) for t in tensors):
            raise TypeError(f"{self.label}: cannot mix symbolic tensors and arrays in one call")
        formats = {t.data_format for t in tensors}
        if len(formats) > 1:
            raise ValueError(f"{self.label}: inputs have different data formats {sorted(formats)}")
        data_format = formats.pop()
        if self.built and data_format != self.data_format:
            raise ValueError(f"{self.label}: was built for {self.data_format} inputs; received "
                             f"{data_format}")
        self.data_format = data_format
        shapes = [t.sample_shape for t in tensors]
        output_shape = self.compute_output_shape(shapes if self.merges else shapes[0])
        # A layer is called once per graph, so its output tensor is well defined (Keras's
        # ``layer.output``): ``Model(model.inputs, layer.output)`` cuts a model at the layer.
        self.output = SymbolicTensor(output_shape, data_format, self, tensors)
        return self.output

    def _call_eager(self, items):
        arrays = [np.asarray(a) for a in items]
        if any(a.dtype.kind not in "fiu" for a in arrays):
            raise TypeError(f"{self.label}: expects arrays of real numbers (float or integer); "
                            f"received dtypes {[str(a.dtype) for a in arrays]}")
        if any(a.ndim < 2 for a in arrays):
            raise ValueError(f"{self.label}: expects a batch (batch axis first, then at least one "
                             f"axis); received shapes {[a.shape for a in arrays]}")
        shapes = [a.shape[1:] for a in arrays]
        shape = shapes if self.merges else shapes[0]
        if self.built:
            self.compute_output_shape(shape)
        else:
            self.build(shape)
        return self.call(arrays if self.merges else arrays[0])

    def call(self, inputs):
        """Computes on arrays whose shapes were already checked (a list for merging layers)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement call")

    # Configuration -----------------------------------------------------------------------------

    def get_config(self):
        """The constructor arguments as a JSON-compatible dict (no weights)."""
        config = {"name": self.name}
        if self.input_shape is not None:
            config["input_shape"] = self.input_shape
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


def serialize(layer):
    """{"class_name": ..., "config": ...} for a layer.

    >>> import fastconv
    >>> serialize(fastconv.layers.Dense(10, activation="relu", name="fc"))
    {'class_name': 'Dense', 'config': {'name': 'fc', 'units': 10, 'activation': 'relu', 'use_bias': True}}
    """
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(entry):
    """The layer described by ``serialize``'s dict (any Layer subclass that has been imported).

    >>> layer = deserialize({"class_name": "Dense", "config": {"units": 10, "name": "fc"}})
    >>> layer
    <Dense name='fc' built=False>
    >>> layer.units
    10
    """
    if not isinstance(entry, Mapping) or not isinstance(entry.get("config"), Mapping):
        raise ValueError(f"a layer entry must be a dict with 'class_name' and a 'config' dict; "
                         f"received {entry!r:.200}")
    class_name = entry.get("class_name")
    cls = Layer._registry.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(f"unknown layer class {class_name!r}; known: {sorted(Layer._registry)}")
    return cls.from_config(dict(entry["config"]))


# Activations the functional ops cannot fuse into their store, applied after them.
UNFUSED = ("softmax", "lecun_tanh")


def lecun_tanh(x):
    """1.7159 * tanh(2x/3): LeCun et al.'s scaled squashing function (LeNet-5, 1998)."""
    return F.tanh(np.asarray(x, np.float32) * np.float32(2.0 / 3.0)) * np.float32(1.7159)


def apply_activation(x, activation, channel_axis):
    """Any layer activation on its own (not fused into an operator's store)."""
    if activation in (None, "linear"):
        return np.asarray(x, dtype=np.float32)
    if activation in UNFUSED:
        return finish_activation(x, activation, channel_axis)
    return getattr(F, activation)(x)


def finish_activation(y, activation, channel_axis):
    """Applies the activations the kernels cannot fuse (softmax, lecun_tanh) after the fused op."""
    if activation == "softmax":
        return F.softmax(y, axis=channel_axis)
    if activation == "lecun_tanh":
        return lecun_tanh(y)
    return y


def fused(activation):
    """The part of ``activation`` that the functional op fuses into its store."""
    return None if activation in UNFUSED else activation
