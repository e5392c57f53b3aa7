"""Model and Sequential: a graph of layers built from symbolic tensors, run on NumPy arrays.

The graph is a list of nodes (the symbolic tensors) in topological order; each node's layer
computes it from its inbound nodes. ``Model._run`` is the one place that executes layers.
"""
import copy
import numbers
import threading
from collections import Counter

import numpy as np

from . import _core
from . import functional as F
from . import tuning
from . import summary as _summary
from .plan import Plan, plannable
from . import weights as _weights
from .layers import Conv2D, Input, InputLayer, Layer, SymbolicTensor, deserialize, serialize
from .layers import _checks

# predict follows an edited tuning cache file within this many seconds (plan_summary, profile
# and tune at once) without a file-system call per predict.
_TUNING_RECHECK_SECONDS = 1.0

def _topological_order(outputs):
    """Nodes reachable from ``outputs``, every node after its inbound nodes (depth first, inbound
    in call order, so an inception block lists each branch whole). Iterative: deep networks
    would exceed Python's recursion limit."""
    order, placed = [], set()
    stack = [(t, False) for t in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if node in placed:
            continue
        if expanded:
            placed.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((p, False) for p in reversed(node.inbound) if p not in placed)
    return order


def _assign_names(layers):
    """Unique names within one model: explicit names are kept, the others get the class's
    default name with the first free suffix (conv2d, conv2d_1, ...), in graph order, so that
    weight files keyed by layer name do not depend on what else the session built."""
    explicit = Counter(layer.name for layer in layers if layer.name)
    duplicates = sorted(name for name, count in explicit.items() if count > 1)
    if duplicates:
        raise ValueError(f"layer names must be unique within a model; duplicated: {duplicates}")
    taken = set(explicit)
    for layer in layers:
        if layer.name:
            continue
        candidate, suffix = layer.default_name, 0
        while candidate in taken:
            suffix += 1
            candidate = f"{layer.default_name}_{suffix}"
        layer.name = candidate
        taken.add(candidate)


class _Step:
    """One layer call of the schedule: tensor ids read, id written, ids dead afterwards."""

    __slots__ = ("layer", "inputs", "output", "release")

    def __init__(self, layer, inputs, output, release):
        self.layer, self.inputs, self.output, self.release = layer, inputs, output, release


def _schedule(nodes, position, outputs):
    """A step per computed node; each step releases the inputs it is the last reader of."""
    last_reader = {}
    for i, node in enumerate(nodes):
        for parent in node.inbound:
            last_reader[position[parent]] = i
    kept = {position[t] for t in outputs}
    steps = []
    for i, node in enumerate(nodes):
        if isinstance(node.layer, InputLayer):
            continue
        reads = [position[p] for p in node.inbound]
        release = sorted({r for r in reads if last_reader[r] == i and r not in kept})
        steps.append(_Step(node.layer, reads, i, release))
    return steps


def _swap_layout(array, to_channels_first):
    """NHWC -> NCHW (or NCHW -> NHWC) for 4-D arrays; other ranks are returned as they are."""
    array = np.asarray(array)
    if array.ndim != 4:
        return array
    F.check_memory("predict", "the transposed input", array.shape)
    return np.ascontiguousarray(array.transpose((0, 3, 1, 2) if to_channels_first else (0, 2, 3, 1)))


class Model:
    """A network from its input tensors to its output tensors (the functional API).

    Layers are named (uniquely within the model) and their weights created when the model is
    built, in graph order, from ``numpy.random.default_rng(seed)``.

    >>> import numpy as np, fastconv
    >>> from fastconv.layers import Add, Concatenate, Conv2D, Dense, GlobalAveragePooling2D
    >>> x = fastconv.Input((8, 16, 16))
    >>> branches = [Conv2D(4, 1)(x), Conv2D(4, 3, padding="same")(x)]
    >>> y = Add(activation="relu")([Conv2D(8, 1)(Concatenate()(branches)), x])
    >>> model = fastconv.Model(x, Dense(10)(GlobalAveragePooling2D()(y)), seed=0)
    >>> model.predict(np.zeros((2, 8, 16, 16), np.float32)).shape
    (2, 10)
    """

    def __init__(self, inputs, outputs, name=None, seed=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"Model: `name` must be a non-empty string or None; received {name!r}")
        self.name = name or self._default_name()
        self._list_outputs = isinstance(outputs, (list, tuple))
        self.inputs = self._tensors(inputs, "inputs")
        self.outputs = self._tensors(outputs, "outputs")
        self._nodes = _topological_order(self.outputs)
        self._check_graph()
        _assign_names([node.layer for node in self._nodes])
        self._build_layers(np.random.default_rng(seed))
        position = {node: i for i, node in enumerate(self._nodes)}
        self._input_ids = [position[t] for t in self.inputs]
        self._output_ids = [position[t] for t in self.outputs]
        self._steps = _schedule(self._nodes, position, self.outputs)
        # Where the weights come from, the input preprocessing and the class names, when known:
        # {"source": ..., "preprocessing": {...}, "labels": [...]}; saved with the weights.
        self.info = {}
        self._plan = None
        self._algorithms = {}  # layer name -> convolution algorithm forced by set_algorithm
        self._plan_lock = threading.Lock()  # one thread makes or replaces the plan at a time

    @staticmethod
    def _default_name():
        return "model"

    @property
    def label(self):
        return f"{type(self).__name__} '{self.name}'"

    @property
    def data_format(self):
        return self.inputs[0].data_format

    @property
    def input(self):
        """The input tensor (a list of them for several inputs)."""
        return self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)

    @property
    def output(self):
        """The output tensor (a list of them when the model was given a list)."""
        return list(self.outputs) if self._list_outputs else self.outputs[0]

    @property
    def layers(self):
        """The layers in graph order, input layers included."""
        return [node.layer for node in self._nodes]

    # Construction ------------------------------------------------------------------------------

    def _tensors(self, value, arg):
        tensors = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = [t for t in tensors if not isinstance(t, SymbolicTensor)]
        if not tensors or bad:
            received = type(bad[0]).__name__ if bad else "an empty list"
            raise TypeError(f"{self.label}: `{arg}` must be symbolic tensors (from fastconv.Input "
                            f"and layer calls); received {received}")
        return tensors

    def _check_graph(self):
        not_inputs = [t for t in self.inputs if not isinstance(t.layer, InputLayer)]
        if not_inputs:
            raise ValueError(f"{self.label}: `inputs` must come from fastconv.Input; received "
                             f"{not_inputs[0]!r}")
        reached = [n for n in self._nodes if isinstance(n.layer, InputLayer)]
        missing = [t for t in reached if t not in self.inputs]
        unused = [t for t in self.inputs if t not in reached]
        if missing:
            raise ValueError(f"{self.label}: the outputs depend on an input that is not in "
                             f"`inputs`: {missing[0]!r}")
        if unused or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"{self.label}: every input must be used once and reach the outputs; "
                             f"received inputs {self.inputs}")
        calls = Counter(id(n.layer) for n in self._nodes)
        shared = [n.layer.label for n in self._nodes if calls[id(n.layer)] > 1]
        if shared:
            raise ValueError(f"{self.label}: {shared[0]} is called more than once in this graph; "
                             f"shared layers are not supported (create one layer per call)")
        formats = {n.data_format for n in self._nodes}
        if len(formats) > 1:
            raise ValueError(f"{self.label}: all inputs must have one data_format; received "
                             f"{sorted(formats)}")

    def _build_layers(self, rng):
        for node in self._nodes:
            if not node.layer.built:
                shapes = [p.sample_shape for p in node.inbound]
                node.layer.build(shapes if node.layer.merges else shapes[0], rng)

    # Execution ---------------------------------------------------------------------------------

    def predict(self, x, batch_size=None, data_format=None):
        """Runs the model on an array (a list of arrays for several inputs), batch axis first,
        in chunks of ``batch_size`` samples if given. Returns an array, or a list of arrays if
        the model was given a list of outputs.

        ``data_format`` is the layout of ``x`` and of the 4-D results: None means the model's
        own; the other one is transposed at the boundary (NHWC images into an NCHW model)."""
        if batch_size is None and data_format is None:
            y = self._predict_direct(x)
            if y is not None:
                return y
        if not self._swaps_layout(data_format):
            return self._predict(x, batch_size)
        into_model = self.data_format == "channels_first"
        results = self._predict([_swap_layout(a, into_model) for a in self._input_items(x)],
                                batch_size)
        if not self._list_outputs:
            return _swap_layout(results, not into_model)
        return [_swap_layout(r, not into_model) for r in results]

    def _predict_direct(self, x):
        """The common case the short way (fastconv/plan.py, ``Plan.run_direct``): a current
        plan and one C-contiguous float32 input array; else None."""
        plan = self._plan
        if plan is None or not plan.is_current(_TUNING_RECHECK_SECONDS):
            return None
        try:
            return plan.run_direct(x)
        except _core.StaleWeightsError:  # the general path makes the plan again
            return None

    def _swaps_layout(self, data_format):
        if data_format is None or data_format == self.data_format:
            return False
        _checks.data_format(self.label, data_format)
        return True

    def _predict(self, x, batch_size):
        arrays = self._input_arrays(x)
        batch = arrays[0].shape[0]
        if batch_size is not None:
            batch_size = self._batch_size(batch_size)
        if batch_size is None or batch <= batch_size:
            results = self._run(arrays)
        else:
            chunks = [self._run([a[start:start + batch_size] for a in arrays])
                      for start in range(0, batch, batch_size)]
            results = [np.concatenate(parts) for parts in zip(*chunks)]
        return results if self._list_outputs else results[0]

    def __call__(self, x):
        items = x if isinstance(x, (list, tuple)) else [x]
        if any(isinstance(t, SymbolicTensor) for t in items):
            raise TypeError(f"{self.label}: calling a model on symbolic tensors (nesting models) "
                            f"is not supported yet; call its layers instead")
        return self.predict(x)

    def _run(self, arrays):
        """Runs checked float32 inputs through the model's plan (fused, prepacked steps; see
        fastconv/plan.py), made on first use and again when weights or kernels changed.

        Threads share the plan: running it only reads it (each run keeps its arrays in its own
        dict), and making or replacing it is serialised by a lock."""
        if not plannable(self):
            return self._run_layers(arrays)
        plan = self._current_plan(tuning_age=_TUNING_RECHECK_SECONDS)
        try:
            return plan.run(arrays)
        except _core.StaleWeightsError:  # the kernel table changed since the weights were packed
            return self._current_plan(stale=plan).run(arrays)

    def _current_plan(self, stale=None, tuning_age=0.0):
        """The up-to-date plan, made if there is none, it is out of date or it is ``stale``.
        Checked once without the lock (the common case) and again under it, so that threads
        finding the same old plan make one new plan between them. The tuning cache file is
        looked at if it was not in the last ``tuning_age`` seconds (fastconv.tuning)."""
        plan = self._plan
        if plan is not None and plan is not stale and plan.is_current(tuning_age):
            return plan
        with self._plan_lock:
            plan = self._plan
            if plan is None or plan is stale or not plan.is_current():
                plan = Plan(self)
                self._plan = plan  # published whole: readers see the old plan or the new one
            return plan

    def prepare(self):
        """Makes the plan now (BatchNorm folded, weights packed for the kernels) instead of at
        the first predict, and returns the model. ``fastconv.load``, ``load_weights`` and the
        converters call it, so that a loaded model's first predict costs about what the next
        ones do.

        >>> import fastconv
        >>> model = fastconv.models.lenet5().prepare()
        >>> model._plan is not None
        True
        """
        if plannable(self):
            self._current_plan()
        return self

    def plan_summary(self, print_fn=print):
        """Prints (unless ``print_fn`` is None) and returns the steps the model runs: which layers
        each fused step absorbed, the convolution algorithm it uses and, in brackets, the
        micro-kernels it runs on this CPU (e.g. ``[f32_gemm_minmax_ukernel_8x32__avx512f]``)."""
        if not plannable(self):
            text = "layer by layer (channels_last models are not planned)"
        else:
            text = self._current_plan().summary()
        if print_fn is not None:
            print_fn(text)
        return text

    def set_algorithm(self, layer_name, algorithm):
        """Forces the convolution algorithm of one Conv2D layer in the plan ("implicit",
        "im2col", "winograd", "winograd4", "gemm", "direct"), or gives it back to the tuning
        cache and the heuristic ("auto"). A runtime choice: not saved with the model.

        >>> import fastconv
        >>> model = fastconv.models.lenet5()
        >>> model.set_algorithm("conv2", "im2col")
        >>> "conv2d[im2col] conv2" in model.plan_summary(print_fn=None)
        True
        """
        layer = self.get_layer(layer_name)
        if not isinstance(layer, Conv2D):
            raise ValueError(f"{self.label}: set_algorithm needs a Conv2D layer; "
                             f"'{layer_name}' is a {type(layer).__name__}")
        if algorithm == "auto":
            self._algorithms.pop(layer_name, None)
            return
        node = next(n for n in self._nodes if n.layer is layer)
        kernel = layer.weights["kernel"]
        F._ConvGeometry(f"{self.label}: set_algorithm('{layer_name}')", node.inbound[0].sample_shape,
                        kernel.shape, None, layer.strides, layer.padding, layer.dilation,
                        layer.groups, None, algorithm, kernel.shape)  # raises if it cannot run
        self._algorithms = {**self._algorithms, layer_name: algorithm}

    def tune(self, batch_size=1, rounds=5, print_fn=print):
        """Times every algorithm that can run each convolution of the model at ``batch_size``
        with the current thread count, keeps the fastest in the tuning cache (a file per user,
        see fastconv.tuning; delete it to go back to the heuristic) and makes plans use it.
        Prints (unless ``print_fn`` is None) and returns one row per layer.

        >>> import fastconv, os, tempfile
        >>> os.environ["FASTCONV_TUNE_CACHE"] = os.path.join(tempfile.mkdtemp(), "tuning.json")
        >>> rows = fastconv.models.lenet5().tune(rounds=1, print_fn=None)
        >>> [row["layer"] for row in rows]
        ['conv1', 'conv2']
        >>> del os.environ["FASTCONV_TUNE_CACHE"]
        """
        if not plannable(self):
            raise ValueError(f"{self.label}: tune() needs a channels_first model (only those are "
                             f"planned)")
        batch_size = self._batch_size(batch_size)
        convs = [{"name": n.layer.name, "input_shape": n.inbound[0].sample_shape,
                  "kernel": n.layer.weights["kernel"], "strides": n.layer.strides,
                  "padding": n.layer.padding, "dilation": n.layer.dilation,
                  "groups": n.layer.groups}
                 for n in self._nodes if isinstance(n.layer, Conv2D)]
        rows = tuning.tune_convolutions(convs, batch_size, rounds)
        if print_fn is not None:
            for row in rows:
                times = ", ".join(f"{a} {ms:.3f}" for a, ms in row["times_ms"].items())
                print_fn(f"{row['layer']:40s} {row['algorithm']:9s} ({times} ms)")
        return rows

    def profile(self, x, repeats=5):
        """Times each step of the plan on ``x`` (median of ``repeats`` runs), slowest first, with
        its share of the total and its GFLOP/s (see fastconv.profiling)."""
        from .profiling import profile_plan

        return profile_plan(self, x, repeats)

    def _run_layers(self, arrays):
        """Executes the layers one by one, unfused (the reference the plan is tested against).
        Intermediate results are dropped after their last reader."""
        values = dict(zip(self._input_ids, arrays))
        for step in self._steps:
            args = [values[i] for i in step.inputs]
            values[step.output] = step.layer.call(args if step.layer.merges else args[0])
            for i in step.release:
                del values[i]
        return [values[i] for i in self._output_ids]

    def _batch_size(self, batch_size):
        is_integer = isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool)
        if not is_integer or batch_size < 1:
            raise ValueError(f"{self.label}: `batch_size` must be None or an integer >= 1; "
                             f"received {batch_size!r}")
        return int(batch_size)

    def _input_items(self, x):
        """One value per input: a one-input model takes an array (or nested lists) or a list
        holding one array."""
        one_array = isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray)
        if len(self.inputs) == 1:
            return list(x) if one_array else [x]
        if isinstance(x, (list, tuple)) and len(x) == len(self.inputs):
            return list(x)
        raise ValueError(f"{self.label}: expects a list of {len(self.inputs)} arrays, one per "
                         f"input {[t.layer.name for t in self.inputs]}; received "
                         f"{type(x).__name__}")

    def _input_arrays(self, x):
        if type(x) is np.ndarray and len(self.inputs) == 1:  # the common case, without the lists
            return [self._input_array(x, self.inputs[0])]
        arrays = [self._input_array(a, t) for a, t in zip(self._input_items(x), self.inputs)]
        if len({a.shape[0] for a in arrays}) > 1:
            raise ValueError(f"{self.label}: all inputs must have the same batch size; received "
                             f"shapes {[a.shape for a in arrays]}")
        return arrays

    def _input_array(self, value, tensor):
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{self.label}: input '{tensor.layer.name}' must hold real numbers; "
                            f"received dtype {array.dtype}")
        if array.ndim != len(tensor.shape) or array.shape[1:] != tensor.sample_shape:
            expected = "(batch, " + ", ".join(map(str, tensor.sample_shape)) + ")"
            raise ValueError(f"{self.label}: input '{tensor.layer.name}' expects arrays shaped "
                             f"{expected} ({self.data_format}); received shape {array.shape}")
        if array.dtype != np.float32 or not array.flags.c_contiguous:  # only then is it copied
            F.check_memory(self.label, f"input '{tensor.layer.name}' as float32", array.shape)
            array = np.ascontiguousarray(array, dtype=np.float32)
        return array

    # Inspection --------------------------------------------------------------------------------

    def summary(self, print_fn=print):
        """Prints (through ``print_fn``, unless None) and returns a table of the layers: output
        shapes, parameter and per-sample MAC counts, and for non-sequential graphs the inbound
        layers."""
        text = _summary.summarize(self)
        if print_fn is not None:
            print_fn(text)
        return text

    def get_layer(self, name):
        for node in self._nodes:
            if node.layer.name == name:
                return node.layer
        raise ValueError(f"{self.label}: no layer named {name!r}; layers: "
                         f"{[n.layer.name for n in self._nodes]}")

    def truncate(self, layer):
        """A model from this model's inputs to the output of the layer named ``layer``, sharing
        its layers and weights (the same as ``Model(model.input, model.get_layer(layer).output)``).
        ``info`` is copied without the class labels, which no longer describe the output.

        >>> import fastconv
        >>> model = fastconv.models.lenet5()
        >>> model.truncate("fc2").output.shape
        (None, 84)
        """
        if not isinstance(layer, str):
            raise TypeError(f"{self.label}: truncate expects a layer name (str); received "
                            f"{type(layer).__name__}")
        self.get_layer(layer)  # names the known layers when there is no such layer
        # The node from this graph, not ``layer.output``: the layer may since have been called
        # in another graph.
        end = next(node for node in self._nodes if node.layer.name == layer)
        reached = _topological_order([end])
        cut = Model([t for t in self.inputs if t in reached], end, name=f"{self.name}.{layer}")
        cut.info = {key: copy.deepcopy(value) for key, value in self.info.items()
                    if key != "labels"}
        return cut

    def features(self, x, layer=None, batch_size=None, data_format=None):
        """The output of the layer named ``layer`` (None: the model's output) for ``x``, as
        ``predict`` gives it; the model cut at each layer asked for is kept, so repeated calls
        pack its weights once.

        >>> import numpy as np, fastconv
        >>> model = fastconv.models.lenet5()
        >>> model.features(np.zeros((3, 1, 32, 32), np.float32), layer="fc2").shape
        (3, 84)
        """
        if layer is None:
            return self.predict(x, batch_size, data_format)
        cuts = self.__dict__.setdefault("_cuts", {})  # made on first use; never pickled
        cut = cuts.get(layer) if isinstance(layer, str) else None
        if cut is None:
            cut = cuts[layer] = self.truncate(layer)
        return cut.predict(x, batch_size, data_format)

    def count_params(self, include_non_trainable=False):
        """Trainable parameters (as papers and torchvision count them); see Layer.count_params."""
        return sum(layer.count_params(include_non_trainable) for layer in self.layers)

    def get_weights(self):
        """All weight arrays (copies), layer by layer in graph order."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Sets all weights from a list in ``get_weights`` order; checks every count and shape
        before changing anything."""
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"{self.label}: set_weights expects {expected} arrays; received "
                             f"{len(weights)}")
        checked, start = [], 0
        for layer in self.layers:
            end = start + len(layer.weights)
            checked.append((layer, layer._checked_weights(weights[start:end])))
            start = end
        for layer, values in checked:
            layer.weights = values

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} layers={len(self.layers)}>"

    # Weight files ------------------------------------------------------------------------------

    def save(self, path):
        """Writes architecture, weights and ``info`` to one safetensors file (see
        ``fastconv.load``); nothing in it is code."""
        _weights.save(self, path)

    def save_weights(self, path):
        """Writes the weights (and ``info``) to a safetensors file keyed ``layer/weight``."""
        _weights.save_weights(self, path)

    def load_weights(self, path):
        """Reads weights written by ``save_weights`` or ``save``; every name and shape is checked
        and all mismatches are reported at once, before any weight changes."""
        _weights.load_weights(self, path)
        self.prepare()

    # Serialisation -----------------------------------------------------------------------------

    def get_config(self):
        """The architecture as a JSON-compatible dict: layers in graph order, each with its
        class, constructor config and the names of its inbound layers."""
        output_names = [t.layer.name for t in self.outputs]
        return {
            "name": self.name,
            "layers": [{**serialize(n.layer), "inbound": [p.layer.name for p in n.inbound]}
                       for n in self._nodes],
            "inputs": [t.layer.name for t in self.inputs],
            "outputs": output_names if self._list_outputs else output_names[0],
        }

    @classmethod
    def from_config(cls, config):
        """A new model (fresh weights) with the architecture of ``get_config``'s dict."""
        tensors = {}
        for entry in config["layers"]:
            layer = deserialize(entry)
            if isinstance(layer, InputLayer):
                tensors[layer.name] = layer.output
                continue
            unknown = [n for n in entry["inbound"] if n not in tensors]
            if unknown:
                raise ValueError(f"{cls.__name__}.from_config: layer {layer.name!r} reads "
                                 f"{unknown}, which are not defined before it")
            args = [tensors[n] for n in entry["inbound"]]
            tensors[layer.name] = layer(args if layer.merges else args[0])
        outputs = config["outputs"]
        outputs = tensors[outputs] if isinstance(outputs, str) else [tensors[n] for n in outputs]
        return cls([tensors[n] for n in config["inputs"]], outputs, name=config["name"])

    def __getstate__(self):
        # Config and arrays only: workers rebuild the model without unpickling any code.
        return {"config": self.get_config(), "info": self.info,
                "weights": {layer.name: dict(layer.weights) for layer in self.layers
                            if layer.weights}}

    def __setstate__(self, state):
        rebuilt = type(self).from_config(state["config"])
        for name, weights in state["weights"].items():
            rebuilt.get_layer(name).set_weights(weights)
        rebuilt.info = state.get("info", {})
        self.__dict__.update(rebuilt.__dict__)


class Sequential(Model):
    """A plain stack of single-input layers.

    The list starts with ``fastconv.Input(shape)``, or its first layer is given
    ``input_shape=`` (one sample, no batch axis, in ``data_format``).

    >>> import fastconv
    >>> from fastconv.layers import Conv2D, Dense, Flatten, MaxPool2D
    >>> model = fastconv.Sequential([
    ...     Conv2D(6, 5, activation="relu", input_shape=(1, 32, 32)), MaxPool2D(2),
    ...     Conv2D(16, 5, activation="relu"), MaxPool2D(2), Flatten(),
    ...     Dense(120, activation="relu"), Dense(84, activation="relu"), Dense(10)])
    >>> model.count_params()
    61706
    """

    def __init__(self, layers, name=None, data_format=None, seed=None):
        items = list(layers)
        source, stack = self._source(items, data_format)
        x, offset = source, len(items) - len(stack)
        for i, layer in enumerate(stack, start=offset):
            if not isinstance(layer, Layer) or isinstance(layer, InputLayer) or layer.merges:
                raise TypeError(f"Sequential: element {i} must be a single-input layer; received "
                                f"{layer!r}")
            x = layer(x)
        super().__init__(source, x, name=name, seed=seed)

    @staticmethod
    def _default_name():
        return "sequential"

    @staticmethod
    def _source(items, data_format):
        """The Input tensor and the layers after it."""
        if data_format is not None:
            _checks.data_format("Sequential", data_format)
        first = items[0] if items else None
        if isinstance(first, SymbolicTensor):
            if not isinstance(first.layer, InputLayer):
                raise ValueError("Sequential: the first element must be fastconv.Input(...) or a "
                                 f"layer; received the output of {first.layer.label}")
            if data_format not in (None, first.data_format):
                raise ValueError(f"Sequential: data_format={data_format!r} disagrees with the "
                                 f"Input's {first.data_format!r}")
            stack = items[1:]
            declared = getattr(stack[0], "input_shape", None) if stack else None
            if declared is not None and declared != first.sample_shape:
                raise ValueError(f"Sequential: {stack[0].label} declares input_shape {declared} "
                                 f"but the Input has shape {first.sample_shape}")
        elif isinstance(first, Layer) and first.input_shape is not None:
            first = Input(first.input_shape, data_format=data_format or "channels_first")
            stack = items
        else:
            raise ValueError("Sequential: the list must start with fastconv.Input(shape) or with a "
                             "layer given `input_shape=` (one sample, e.g. (3, 224, 224)); "
                             f"received {first!r}")
        if not stack:
            raise ValueError("Sequential: needs at least one layer after the input")
        return first, stack

    @property
    def layers(self):
        """The layers in order, without the input layer."""
        return [layer for layer in super().layers if not isinstance(layer, InputLayer)]

    @classmethod
    def from_config(cls, config):
        items = []
        for entry in config["layers"]:
            layer = deserialize(entry)
            items.append(layer.output if isinstance(layer, InputLayer) else layer)
        return cls(items, name=config["name"])
