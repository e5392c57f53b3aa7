"""ONNX graphs into fastconv models (see docs/convert-onnx.md).

An ONNX file holds the architecture and the weights together, so ``from_onnx`` rebuilds the whole
graph: every operator node becomes one fastconv layer named after the node, initializers and
``Constant`` nodes become that layer's weights, and small integer computations on constants (the
shape arithmetic torch writes before a ``Reshape``) are evaluated while importing. The model is
channels_first, as ONNX. Anything the importer cannot map faithfully (an operator, an attribute
value, a broadcast the layers do not have) is refused with a ``ValueError`` naming the file, the
node and the problem; nothing is silently ignored.
"""
import math
import os

import numpy as np

from .. import layers as L
from ..model import Model

MIN_OPSET = 7  # opset 6 and older differ in BatchNormalization, Dropout and broadcasting
_DEFAULT_DOMAINS = ("", "ai.onnx")

# Attributes each operator may carry, across opsets 7 and later; any other is refused. Values are
# checked by the handlers (an attribute whose value cannot be mapped is refused there).
_ATTRIBUTES = {
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "MatMul": set(),
    "MaxPool": {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order",
                "strides"},
    "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape",
                    "pads", "strides"},
    "GlobalAveragePool": set(),
    "Relu": set(),
    "Clip": {"min", "max"},  # attributes before opset 11, inputs from 11 on
    "LRN": {"alpha", "beta", "bias", "size"},
    # momentum only steers training statistics; spatial (before opset 9) is checked below.
    "BatchNormalization": {"epsilon", "momentum", "spatial", "training_mode"},
    "Concat": {"axis"},
    "Add": set(),
    "Sum": set(),
    "Reshape": {"allowzero"},
    "Flatten": {"axis"},
    "Softmax": {"axis"},
    "Dropout": {"ratio", "seed"},  # ratio is an attribute before opset 12, an input from 12 on
    "Identity": set(),
    "Pad": {"mode", "pads", "value"},  # torch writes an all-zero Pad before old-opset AveragePool
    "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints"},
    # Evaluated on constants only (torch's shape arithmetic for x.view(x.size(0), -1)).
    "Shape": {"start", "end"},
    "Cast": {"to", "saturate"},
    "Unsqueeze": {"axes"},
    "Squeeze": {"axes"},
    "Gather": {"axis"},
    "Mul": set(),
}
SUPPORTED_OPS = tuple(sorted(_ATTRIBUTES))


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX files needs onnx: pip install onnx") from None
    return onnx


def read_onnx_model(path):
    """The ``onnx.ModelProto`` in ``path`` (external data files next to it are read too).

    A missing file raises FileNotFoundError; a truncated or non-ONNX file ValueError naming it.

    >>> proto = read_onnx_model("resnet18.onnx")  # exported as in from_onnx  # doctest: +SKIP
    >>> from_onnx(proto).predict(images).shape  # images (N, 3, 224, 224)  # doctest: +SKIP
    (N, 1000)
    """
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {path!r}")
    try:
        proto = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError, or a missing external-data file
        raise ValueError(f"{os.path.basename(path)}: not a readable ONNX model ({err})") from None
    _check_is_model(proto, os.path.basename(path))
    return proto


def _check_is_model(proto, where):
    # Protobuf parses many byte strings as an almost empty message, so "it parsed" proves little:
    # a real model has an IR version, an opset and a graph with an input.
    if not proto.ir_version or not proto.opset_import or not proto.graph.input:
        raise ValueError(f"{where}: not an ONNX model (no IR version, opset or graph inputs)")
    # ONNX is proto2, whose parser hands out a string field holding invalid UTF-8 as bytes.
    graph = proto.graph
    names = [o.domain for o in proto.opset_import] + [graph.name] + \
        [v.name for v in list(graph.input) + list(graph.output) + list(graph.initializer)] + \
        [name for node in graph.node for name in
         [node.name, node.op_type, node.domain, *node.input, *node.output,
          *(attribute.name for attribute in node.attribute)]]
    damaged = next((name for name in names if not isinstance(name, str)), None)
    if damaged is not None:
        raise ValueError(f"{where}: a name or operator is not valid UTF-8: {damaged!r}")


def from_onnx(path_or_model, name=None, verify=False):
    """A fastconv model (channels_first) rebuilt from an ONNX file or ``onnx.ModelProto``.

    Layers are named after the nodes (unique: a repeated or empty node name gets a suffix or the
    operator's name), the inputs after the graph inputs; the batch axis of the graph inputs is
    dropped (fastconv models take any batch). ``name`` defaults to the graph's name.
    ``model.info["source"]`` is ``"onnx:<file name>"``. ``verify=True`` runs ONNX Runtime on one
    random input (see ``verify_onnx``) and stores the largest absolute difference in
    ``model.info["verification"]``.

    >>> import torch, torchvision  # doctest: +SKIP
    >>> torch.onnx.export(torchvision.models.resnet18().eval(), torch.zeros(1, 3, 224, 224),
    ...                   "resnet18.onnx", dynamo=False)  # doctest: +SKIP
    >>> model = from_onnx("resnet18.onnx")  # doctest: +SKIP
    >>> model.predict(images).shape  # images (N, 3, 224, 224)  # doctest: +SKIP
    (N, 1000)
    >>> verify_onnx(model, "resnet18.onnx") < 1e-4  # doctest: +SKIP
    True
    """
    proto, where, source = _load(path_or_model, "from_onnx")
    model = _GraphImporter(proto, where).build(name)
    model.info["source"] = source
    if verify:
        import onnxruntime

        model.info["verification"] = {"reference": f"onnxruntime {onnxruntime.__version__}",
                                      "max_abs_difference": float(verify_onnx(model, proto))}
    return model.prepare()  # plan made now: the first predict costs a steady one


def _load(path_or_model, caller):
    """(ModelProto, how messages name it, info source) for a path or a ModelProto."""
    if isinstance(path_or_model, (str, os.PathLike)):
        where = os.path.basename(os.fspath(path_or_model))
        return read_onnx_model(path_or_model), where, f"onnx:{where}"
    onnx = _onnx()
    if not isinstance(path_or_model, onnx.ModelProto):
        raise TypeError(f"{caller}: expected a path to an .onnx file or an onnx.ModelProto; "
                        f"received {type(path_or_model).__name__}")
    where = f"ONNX graph {path_or_model.graph.name!r}" if path_or_model.graph.name else "ONNX model"
    _check_is_model(path_or_model, where)
    return path_or_model, where, "onnx"


def verify_onnx(model, path_or_model, x=None, seed=0):
    """The largest absolute difference between ``model`` and ONNX Runtime on the same input.

    ``x`` is an array (a list, one per input, for several inputs), batch axis first; by default
    one standard-normal sample per input (from ``seed``), with the batch the graph declares (1 if
    it is symbolic). Needs onnxruntime (ImportError otherwise).

    >>> model = from_onnx("resnet18.onnx")  # doctest: +SKIP
    >>> verify_onnx(model, "resnet18.onnx")  # doctest: +SKIP
    3.0e-06
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("verify_onnx needs onnxruntime: pip install onnxruntime") from None
    proto, _, _ = _load(path_or_model, "verify_onnx")
    if isinstance(path_or_model, (str, os.PathLike)):
        session_source = os.fspath(path_or_model)  # lets ORT find external data next to the file
    else:
        session_source = proto.SerializeToString()
    session = onnxruntime.InferenceSession(session_source, providers=["CPUExecutionProvider"])
    feeds = _verification_inputs(session.get_inputs(), x, seed)
    theirs = session.run(None, dict(zip([i.name for i in session.get_inputs()], feeds)))
    ours = model.predict(feeds if len(feeds) > 1 else feeds[0])
    ours = ours if isinstance(ours, list) else [ours]
    if len(ours) != len(theirs):
        raise ValueError(f"verify_onnx: the model has {len(ours)} outputs, the ONNX graph "
                         f"{len(theirs)}")
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(ours, theirs))


def _verification_inputs(inputs, x, seed):
    if x is not None:
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
        return [np.asarray(a, np.float32) for a in arrays]
    rng = np.random.default_rng(seed)
    # A symbolic dimension (a string or None) can only be the batch: the rest must be fixed.
    return [rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
            .astype(np.float32) for i in inputs]


# The importer --------------------------------------------------------------------------------


class _SkippedInitialisation:
    """Stands in for the NumPy Generator that ``Layer.build`` draws initial weights from: every
    draw is zeros, because the importer replaces the weights at once (drawing VGG's 138 million
    Glorot values would take seconds for nothing)."""

    def __getattr__(self, method):
        return lambda *args, size=None, **kwargs: np.zeros(size, np.float32)


def _attributes(node):
    from onnx import helper

    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


class _GraphImporter:
    """Walks one graph in dependency order. ``values`` maps each tensor name to a NumPy array (a
    constant: initializer, Constant node, or computed from constants) or a SymbolicTensor (data
    flowing from the inputs)."""

    def __init__(self, proto, where):
        self.proto, self.graph, self.where = proto, proto.graph, where
        self.opset = self._opset()
        self.values = {}
        self.names = set()
        self.rng = _SkippedInitialisation()
        self.batch = 1
        self.dense_from_matmul = {}  # Dense output -> (MatMul node, its input, kernel)
        self.readers = _reader_counts(self.graph)

    # Errors and names --------------------------------------------------------------------------

    def fail(self, node, problem):
        label = f"node {node.name!r}" if node.name else "an unnamed node"
        return ValueError(f"{self.where}: {label} ({node.op_type}): {problem}")

    def layer_name(self, node):
        """The node's name, or its operator's, with the first free suffix."""
        base = node.name or node.op_type
        name, suffix = base, 0
        while name in self.names:
            suffix += 1
            name = f"{base}_{suffix}"
        self.names.add(name)
        return name

    # Graph -------------------------------------------------------------------------------------

    def _opset(self):
        versions = [o.version for o in self.proto.opset_import if o.domain in _DEFAULT_DOMAINS]
        if not versions:
            raise ValueError(f"{self.where}: imports no version of the default ONNX operator set")
        if versions[0] < MIN_OPSET:
            raise ValueError(f"{self.where}: opset {versions[0]} is not supported; opsets "
                             f"{MIN_OPSET} and later are (re-export the model at opset >= "
                             f"{MIN_OPSET})")
        return versions[0]

    def build(self, name):
        self._read_initializers()
        inputs = self._read_inputs()
        for node in _dependency_order(self.graph, self.where):
            self._import_node(node)
        outputs = [self._output(o.name) for o in self.graph.output]
        name = name or self.graph.name or "onnx_model"
        try:
            return Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)
        except ValueError as err:  # e.g. a graph input that no output depends on
            raise ValueError(f"{self.where}: {err}") from None

    def _read_initializers(self):
        from onnx import numpy_helper

        for tensor in self.graph.initializer:
            try:
                self.values[tensor.name] = numpy_helper.to_array(tensor)
            except Exception as err:  # e.g. external data that was not loaded
                raise ValueError(f"{self.where}: initializer {tensor.name!r} cannot be read: "
                                 f"{err}") from None

    def _read_inputs(self):
        # Old exporters also list initializers among the graph inputs: those are constants.
        inputs = []
        for value_info in self.graph.input:
            if value_info.name not in self.values:
                inputs.append(self._input(value_info))
        if not inputs:
            raise ValueError(f"{self.where}: the graph has no data input (every input is an "
                             f"initializer)")
        return inputs

    def _input(self, value_info):
        from onnx import TensorProto

        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type != TensorProto.FLOAT:
            raise ValueError(f"{self.where}: input {value_info.name!r} has element type "
                             f"{TensorProto.DataType.Name(tensor_type.elem_type)}; only FLOAT "
                             f"inputs are supported")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if len(dims) < 2 or any(d is None or d < 1 for d in dims[1:]):
            raise ValueError(f"{self.where}: input {value_info.name!r} must have a batch axis and "
                             f"fixed sizes for the others; received dimensions "
                             f"{[d if d else '?' for d in dims]}")
        if dims[0]:
            self.batch = dims[0]  # what torch's folded x.size(0) refers to in Reshape shapes
        self.names.add(value_info.name)
        tensor = L.Input(tuple(dims[1:]), name=value_info.name)
        self.values[value_info.name] = tensor
        return tensor

    def _output(self, name):
        value = self.values.get(name)
        if not isinstance(value, L.SymbolicTensor):
            raise ValueError(f"{self.where}: graph output {name!r} is a constant (or is never "
                             f"computed); only outputs computed from the inputs are supported")
        return value

    # Nodes -------------------------------------------------------------------------------------

    def _import_node(self, node):
        if node.domain not in _DEFAULT_DOMAINS:
            raise self.fail(node, f"unsupported operator {node.domain}.{node.op_type}")
        if node.op_type not in _ATTRIBUTES:
            raise self.fail(node, f"unsupported operator {node.op_type!r}; supported: "
                                  f"{', '.join(SUPPORTED_OPS)}")
        attrs = _attributes(node)
        unknown = sorted(set(attrs) - _ATTRIBUTES[node.op_type])
        if unknown:
            raise self.fail(node, f"unsupported attribute {', '.join(unknown)} for "
                                  f"{node.op_type} (opset {self.opset})")
        inputs = [self.values[n] if n else None for n in node.input]
        data = [v for v in inputs if isinstance(v, L.SymbolicTensor)]
        handler = getattr(self, f"_op_{node.op_type}", None)
        if data and handler is None:
            raise self.fail(node, f"{node.op_type} is supported only on constants (shape "
                                  f"arithmetic); here it reads data computed from the graph inputs")
        try:
            if data or node.op_type == "Shape":
                results = handler(node, attrs, inputs)
            else:
                results = self._fold(node, attrs, inputs)
        except KeyError as err:  # the handlers read required attributes as attrs[name]
            raise self.fail(node, f"the required attribute {err.args[0]!r} is missing") from None
        except (ValueError, TypeError) as err:
            if str(err).startswith(self.where):
                raise
            # A layer refused its arguments or input shape: say which node asked for it.
            raise self.fail(node, str(err)) from None
        results = results if isinstance(results, list) else [results]
        for output, value in zip(node.output, results):
            if output:
                self.values[output] = value

    def constant(self, node, inputs, index, what, default=None):
        """The constant input ``index`` (``default`` when absent); data there is refused."""
        if index >= len(inputs) or inputs[index] is None:
            return default
        value = inputs[index]
        if isinstance(value, L.SymbolicTensor):
            raise self.fail(node, f"input {index} ({what}, tensor {node.input[index]!r}) must be "
                                  f"a constant (an initializer or Constant), not computed from the "
                                  f"graph inputs")
        return value

    def data(self, node, inputs, index=0):
        """The symbolic input ``index``; a constant there is refused."""
        value = inputs[index] if index < len(inputs) else None
        if not isinstance(value, L.SymbolicTensor):
            raise self.fail(node, f"input {index} (tensor {node.input[index]!r}) must be computed "
                                  f"from the graph inputs; constants there are not supported")
        return value

    def add_layer(self, node, layer, tensors, weights=None):
        """Calls ``layer`` on ``tensors`` and gives it ``weights`` (name -> array)."""
        y = layer(tensors)
        if weights is not None:
            shape = [t.sample_shape for t in tensors] if layer.merges else tensors.sample_shape
            layer.build(shape, self.rng)
            layer.set_weights(weights)
        return y

    def no_extra_outputs(self, node, what):
        if any(node.output[1:]):
            raise self.fail(node, f"the optional output {what} is not supported")

    # Constant folding --------------------------------------------------------------------------

    def _fold(self, node, attrs, inputs):
        """Evaluates a node whose inputs are all constants (shape arithmetic, weight Identity)."""
        fold = _FOLD.get(node.op_type)
        if fold is None:
            raise self.fail(node, f"{node.op_type} on constants only is not supported (no graph "
                                  f"input reaches it)")
        try:
            return fold(self, node, attrs, inputs)
        except (ValueError, IndexError, TypeError, np.exceptions.AxisError) as err:
            if str(err).startswith(self.where):
                raise
            raise self.fail(node, f"cannot evaluate it on its constant inputs: {err}") from None

    def _axes(self, node, attrs, inputs):
        axes = attrs.get("axes") if self.opset < 13 else self.constant(node, inputs, 1, "axes")
        return None if axes is None else [int(a) for a in np.ravel(axes)]

    def _fold_constant(self, node, attrs, inputs):
        from onnx import numpy_helper

        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                 "value_ints": np.int64}
        for key, dtype in kinds.items():
            if key in attrs:
                return np.array(attrs[key], dtype)
        raise self.fail(node, "a Constant needs one of value, value_float(s), value_int(s)")

    def _fold_unsqueeze(self, node, attrs, inputs):
        axes = self._axes(node, attrs, inputs)
        rank = inputs[0].ndim + len(axes)
        return np.expand_dims(inputs[0], tuple(sorted(a % rank for a in axes)))

    def _fold_squeeze(self, node, attrs, inputs):
        axes = self._axes(node, attrs, inputs)
        return np.squeeze(inputs[0], None if axes is None else tuple(axes))

    # Layers ------------------------------------------------------------------------------------

    def _op_Conv(self, node, attrs, inputs):
        x = self.data(node, inputs)
        kernel = self.constant(node, inputs, 1, "weight")
        bias = self.constant(node, inputs, 2, "bias")
        if kernel is None or kernel.ndim != 4 or len(x.sample_shape) != 3:
            raise self.fail(node, f"only 2-D convolutions are supported (input "
                                  f"{x.shape}, weight {None if kernel is None else kernel.shape})")
        channels, group = x.sample_shape[0], attrs.get("group", 1)
        if channels % group:
            raise self.fail(node, f"group {group} does not divide the {channels} input channels")
        expected = (kernel.shape[0], channels // group) + kernel.shape[2:]
        self.check_shape(node, 1, "weight", kernel, expected,
                         f"for {channels} input channels in {group} group(s)")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != kernel.shape[2:]:
            raise self.fail(node, f"kernel_shape {attrs['kernel_shape']} disagrees with the "
                                  f"weight's shape {kernel.shape}")
        if bias is not None:
            self.check_shape(node, 2, "bias", bias, (kernel.shape[0],), "one per output channel")
        layer = L.Conv2D(kernel.shape[0], kernel.shape[2:], strides=self.pair(node, attrs, "strides"),
                         padding=self.padding(node, attrs), dilation=self.pair(node, attrs, "dilations"),
                         groups=group, use_bias=bias is not None, name=self.layer_name(node))
        weights = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
        return self.add_layer(node, layer, x, weights)

    def _op_Gemm(self, node, attrs, inputs):
        x = self.data(node, inputs)
        if attrs.get("transA", 0):
            raise self.fail(node, "transA=1 on the data input is not supported: it would put the "
                                  "batch axis second")
        b = self.constant(node, inputs, 1, "B")
        trans_b = attrs.get("transB", 0)
        features = self.features(node, x)
        if b is None or b.ndim != 2:
            raise self.fail(node, f"B must be a 2-D constant; received shape "
                                  f"{None if b is None else b.shape}")
        expected = (b.shape[0], features) if trans_b else (features, b.shape[1])
        self.check_shape(node, 1, "B", b, expected, f"(transB={trans_b}) for {features} input "
                                                    f"features")
        kernel = b if trans_b else b.T
        if attrs.get("alpha", 1.0) != 1.0:
            kernel = kernel * np.float32(attrs["alpha"])
        bias = self.constant(node, inputs, 2, "C")
        if bias is not None:
            bias = self.dense_bias(node, bias * np.float32(attrs.get("beta", 1.0)), kernel.shape[0])
        return self.dense(node, x, kernel, bias)

    def _op_MatMul(self, node, attrs, inputs):
        x = self.data(node, inputs)
        weight = self.constant(node, inputs, 1, "B (the weight)")
        features = self.features(node, x)
        if weight.ndim != 2:
            raise self.fail(node, f"the weight must be 2-D (K, N); received shape {weight.shape}")
        self.check_shape(node, 1, "B", weight, (features, weight.shape[1]),
                         f"for {features} input features")
        y = self.dense(node, x, weight.T, None)
        self.dense_from_matmul[y] = (node, x, weight.T)
        return y

    def features(self, node, x):
        if len(x.sample_shape) != 1:
            raise self.fail(node, f"expects a 2-D (batch, features) input; received {x.shape}")
        return x.sample_shape[0]

    def dense(self, node, x, kernel, bias):
        """A Dense layer with an (out, in) kernel (shape already checked) on (features,) samples."""
        layer = L.Dense(kernel.shape[0], use_bias=bias is not None, name=self.layer_name(node))
        weights = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
        return self.add_layer(node, layer, x, weights)

    def dense_bias(self, node, bias, units):
        """A bias broadcast over the batch, as (units,); a bias that varies along the batch (or
        is shaped otherwise) is refused."""
        if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, units):
            raise self.fail(node, f"the bias must broadcast as ({units},) or (1, {units}); "
                                  f"received shape {bias.shape}")
        return np.broadcast_to(np.ravel(bias), (units,))

    def _op_MaxPool(self, node, attrs, inputs):
        self.no_extra_outputs(node, "Indices")
        if attrs.get("storage_order", 0):
            raise self.fail(node, "storage_order=1 is not supported")
        layer = L.MaxPool2D(**self.pool_arguments(node, attrs), name=self.layer_name(node))
        return self.add_layer(node, layer, self.spatial_data(node, inputs))

    def _op_AveragePool(self, node, attrs, inputs):
        # ONNX's default excludes the padding from the divisor, PyTorch's includes it.
        layer = L.AvgPool2D(**self.pool_arguments(node, attrs),
                            count_include_pad=bool(attrs.get("count_include_pad", 0)),
                            name=self.layer_name(node))
        return self.add_layer(node, layer, self.spatial_data(node, inputs))

    def pool_arguments(self, node, attrs):
        if len(attrs.get("kernel_shape", ())) != 2:
            raise self.fail(node, f"only 2-D pooling is supported; kernel_shape is "
                                  f"{attrs.get('kernel_shape')}")
        if self.pair(node, attrs, "dilations") != (1, 1):
            raise self.fail(node, f"dilations {attrs['dilations']} are not supported by the "
                                  f"pooling layers (only 1)")
        # ONNX strides default to 1, the layers' to the window size: always pass them.
        return dict(pool_size=tuple(attrs["kernel_shape"]), strides=self.pair(node, attrs, "strides"),
                    padding=self.padding(node, attrs), ceil_mode=bool(attrs.get("ceil_mode", 0)))

    def spatial_data(self, node, inputs):
        x = self.data(node, inputs)
        if len(x.sample_shape) != 3:
            raise self.fail(node, f"only 2-D (N, C, H, W) inputs are supported; received {x.shape}")
        return x

    def pair(self, node, attrs, key):
        values = tuple(attrs.get(key, (1, 1)))
        if len(values) != 2:
            raise self.fail(node, f"{key} {list(values)} must have 2 values (2-D only)")
        return values

    def padding(self, node, attrs):
        """The layers' padding for ONNX auto_pad/pads: ((top, bottom), (left, right))."""
        auto_pad = attrs.get("auto_pad", "NOTSET")
        modes = {"VALID": "valid", "SAME_UPPER": "same_upper", "SAME_LOWER": "same_lower"}
        if auto_pad in modes:
            return modes[auto_pad]
        if auto_pad != "NOTSET":
            raise self.fail(node, f"unsupported auto_pad {auto_pad!r}")
        pads = attrs.get("pads", (0, 0, 0, 0))
        if len(pads) != 4 or min(pads) < 0:
            raise self.fail(node, f"pads {list(pads)} must be 4 values >= 0 (2-D only)")
        top, left, bottom, right = pads  # ONNX: all begins, then all ends
        return ((top, bottom), (left, right))

    def _op_GlobalAveragePool(self, node, attrs, inputs):
        x = self.spatial_data(node, inputs)
        return self.add_layer(node, L.GlobalAveragePooling2D(keepdims=True,
                                                             name=self.layer_name(node)), x)

    def _op_Relu(self, node, attrs, inputs):
        return self.add_layer(node, L.ReLU(name=self.layer_name(node)), self.data(node, inputs))

    def _op_Clip(self, node, attrs, inputs):
        if self.opset < 11:
            low, high = attrs.get("min", -np.inf), attrs.get("max", np.inf)
        else:
            low = self.constant(node, inputs, 1, "min", -np.inf)
            high = self.constant(node, inputs, 2, "max", np.inf)
        low, high = float(np.ravel(low)[0]), float(np.ravel(high)[0])
        # Opset 6 wrote the float limits for an absent bound; treat them as unbounded.
        high = np.inf if high >= np.finfo(np.float32).max else high
        if low == 0.0 and high == 6.0:
            layer = L.ReLU6(name=self.layer_name(node))
        elif low == 0.0 and high == np.inf:
            layer = L.ReLU(name=self.layer_name(node))
        else:
            raise self.fail(node, f"Clip(min={low}, max={high}) is not supported: only min 0 "
                                  f"with max 6 (ReLU6) or no max (ReLU)")
        return self.add_layer(node, layer, self.data(node, inputs))

    def _op_LRN(self, node, attrs, inputs):
        layer = L.LocalResponseNormalization(attrs["size"], alpha=attrs.get("alpha", 1e-4),
                                             beta=attrs.get("beta", 0.75), k=attrs.get("bias", 1.0),
                                             name=self.layer_name(node))
        return self.add_layer(node, layer, self.data(node, inputs))

    def _op_BatchNormalization(self, node, attrs, inputs):
        if attrs.get("spatial", 1) != 1:
            raise self.fail(node, "spatial=0 (statistics per element, not per channel) is not "
                                  "supported")
        if attrs.get("training_mode", 0):
            raise self.fail(node, "training_mode=1 is not supported (inference only)")
        self.no_extra_outputs(node, "running statistics (training mode)")
        x = self.data(node, inputs)
        channels = x.sample_shape[0]
        names = ("gamma", "beta", "moving_mean", "moving_variance")
        weights = {}
        for index, (weight, onnx_name) in enumerate(zip(names, ("scale", "B", "mean", "var")), 1):
            weights[weight] = self.constant(node, inputs, index, onnx_name)
            self.check_shape(node, index, onnx_name, weights[weight], (channels,),
                             "one per channel")
        layer = L.BatchNormalization(epsilon=attrs.get("epsilon", 1e-5), name=self.layer_name(node))
        return self.add_layer(node, layer, x, weights)

    def _op_Concat(self, node, attrs, inputs):
        tensors = [self.data(node, inputs, i) for i in range(len(inputs))]
        if len(tensors) == 1:
            return tensors[0]
        axis = self.batched_axis(node, attrs["axis"], tensors[0])
        return self.add_layer(node, L.Concatenate(axis=axis, name=self.layer_name(node)), tensors)

    def batched_axis(self, node, axis, tensor):
        """A non-negative axis of the batched tensor; the batch axis is refused."""
        rank = len(tensor.shape)
        resolved = axis + rank if axis < 0 else axis
        if not 1 <= resolved < rank:
            raise self.fail(node, f"axis {axis} is not supported for inputs of rank {rank} "
                                  f"(the batch axis 0 cannot be used)")
        return resolved

    def _op_Add(self, node, attrs, inputs):
        if all(isinstance(v, L.SymbolicTensor) for v in inputs):
            return self._op_Sum(node, attrs, inputs)
        data_index = 0 if isinstance(inputs[0], L.SymbolicTensor) else 1
        return self.bias_after_matmul(node, inputs[data_index],
                                      self.constant(node, inputs, 1 - data_index, "bias"))

    def bias_after_matmul(self, node, x, bias):
        """MatMul followed by Add of a constant: one Dense with a bias, named after the MatMul
        (the bias-free Dense made for the MatMul is dropped from the graph)."""
        matmul = self.dense_from_matmul.get(x, (None,))[0]
        if matmul is None or self.readers[matmul.output[0]] != 1:
            raise self.fail(node, "adding a constant is supported only as the bias of a MatMul "
                                  "whose output nothing else reads")
        matmul, matmul_input, kernel = self.dense_from_matmul.pop(x)
        self.names.discard(x.layer.name)
        bias = self.dense_bias(node, bias, kernel.shape[0])
        return self.dense(matmul, matmul_input, kernel, bias)

    def _op_Sum(self, node, attrs, inputs):
        tensors = [self.data(node, inputs, i) for i in range(len(inputs))]
        shapes = {t.sample_shape for t in tensors}
        if len(shapes) > 1:
            raise self.fail(node, f"inputs of different shapes {[t.shape for t in tensors]}: "
                                  f"broadcasting is not supported")
        if len(tensors) == 1:
            return tensors[0]
        return self.add_layer(node, L.Add(name=self.layer_name(node)), tensors)

    def _op_Reshape(self, node, attrs, inputs):
        x = self.data(node, inputs)
        shape = self.constant(node, inputs, 1, "shape")
        target = self.reshaped(node, x, np.ravel(shape).astype(np.int64), attrs)
        features = math.prod(x.sample_shape)
        if target == x.shape[1:]:
            return x
        if target == (features,):
            return self.add_layer(node, L.Flatten(name=self.layer_name(node)), x)
        raise self.fail(node, f"Reshape of {x.shape} to {tuple(int(s) for s in np.ravel(shape))} "
                              f"is not supported: only "
                              f"flattening each sample (torch's x.view(x.size(0), -1))")

    def reshaped(self, node, x, shape, attrs):
        """The per-sample shape a Reshape gives, for the batch the graph declares."""
        full = (self.batch,) + x.sample_shape
        if attrs.get("allowzero", 0) and 0 in shape:
            raise self.fail(node, "allowzero=1 with a 0 in the shape is not supported")
        resolved = [full[i] if s == 0 else int(s) for i, s in enumerate(shape)]
        if resolved.count(-1) == 1:
            known = math.prod(s for s in resolved if s != -1)
            resolved[resolved.index(-1)] = math.prod(full) // known if known else -1
        if math.prod(resolved) != math.prod(full) or resolved[0] != self.batch:
            raise self.fail(node, f"cannot reshape {x.shape} (batch {self.batch}) to "
                                  f"{tuple(int(s) for s in shape)} keeping the batch axis first")
        return tuple(resolved[1:])

    def _op_Flatten(self, node, attrs, inputs):
        x = self.data(node, inputs)
        if self.batched_axis(node, attrs.get("axis", 1), x) != 1:
            raise self.fail(node, f"axis {attrs['axis']} is not supported: only 1 (flatten each "
                                  f"sample)")
        return self.add_layer(node, L.Flatten(name=self.layer_name(node)), x)

    def _op_Softmax(self, node, attrs, inputs):
        x = self.data(node, inputs)
        rank = len(x.shape)
        if self.opset < 13:
            # Before opset 13 Softmax normalises the 2-D matrix "axes before axis" x "axes from
            # axis on"; over one axis only when that axis is the last.
            axis = self.batched_axis(node, attrs.get("axis", 1), x)
            if axis != rank - 1:
                raise self.fail(node, f"axis {axis} on a rank-{rank} input normalises over "
                                      f"several axes at opset {self.opset}; only the last axis "
                                      f"is supported")
        else:
            axis = self.batched_axis(node, attrs.get("axis", -1), x)
        return self.add_layer(node, L.Softmax(axis=axis, name=self.layer_name(node)), x)

    def _op_Dropout(self, node, attrs, inputs):
        if len(node.output) > 1 and self.readers.get(node.output[1], 0):
            raise self.fail(node, "its mask output is read by the graph; only the inference "
                                  "output is supported")
        if self.opset < 12:
            rate = attrs.get("ratio", 0.5)
        else:
            rate = float(self.constant(node, inputs, 1, "ratio", 0.5))
            if bool(self.constant(node, inputs, 2, "training_mode", False)):
                raise self.fail(node, "training_mode=True is not supported (inference only)")
        if not 0.0 <= rate < 1.0:
            raise self.fail(node, f"ratio {rate} must be in [0, 1)")
        layer = L.Dropout(rate, name=self.layer_name(node))
        return [self.add_layer(node, layer, self.data(node, inputs)), None]

    def _op_Identity(self, node, attrs, inputs):
        return self.data(node, inputs)  # an alias: no layer, the tensor keeps flowing

    def _op_Pad(self, node, attrs, inputs):
        x = self.spatial_data(node, inputs)
        if attrs.get("mode", "constant") != "constant":
            raise self.fail(node, f"mode {attrs['mode']!r} is not supported (only 'constant')")
        if self.opset < 11:
            pads, value = attrs.get("pads"), attrs.get("value", 0.0)
        else:
            pads = self.constant(node, inputs, 1, "pads")
            value = self.constant(node, inputs, 2, "constant_value", 0.0)
            if len(inputs) > 3 and inputs[3] is not None:
                raise self.fail(node, "the axes input is not supported")
        pads = [int(p) for p in np.ravel(pads)]
        if float(np.ravel(value)[0]) != 0.0 or len(pads) != 8 or min(pads) < 0 or any(
                pads[i] for i in (0, 1, 4, 5)):
            raise self.fail(node, f"only zero padding of height and width is supported; received "
                                  f"pads {pads}, value {float(np.ravel(value)[0])}")
        if not any(pads):
            return x
        padding = ((pads[2], pads[6]), (pads[3], pads[7]))
        return self.add_layer(node, L.ZeroPadding2D(padding, name=self.layer_name(node)), x)

    def _op_Shape(self, node, attrs, inputs):
        value = inputs[0]
        shape = (self.batch,) + value.sample_shape if isinstance(value, L.SymbolicTensor) \
            else value.shape
        return np.array(shape[attrs.get("start", 0):attrs.get("end", None)], np.int64)

    def check_shape(self, node, index, what, array, expected, reason):
        """Refuses a constant input whose shape is not what the layer needs."""
        if tuple(array.shape) != tuple(expected):
            raise self.fail(node, f"{what} (tensor {node.input[index]!r}) has shape "
                                  f"{tuple(array.shape)}; the layer needs {tuple(expected)} "
                                  f"{reason}")


def _fold_cast(importer, node, attrs, inputs):
    from onnx import helper

    return inputs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _fold_gather(importer, node, attrs, inputs):
    return np.take(inputs[0], inputs[1], axis=attrs.get("axis", 0))


def _fold_concat(importer, node, attrs, inputs):
    return np.concatenate(inputs, axis=attrs["axis"])


# Operators evaluated with NumPy when every input is a constant.
_FOLD = {
    "Constant": _GraphImporter._fold_constant,
    "Identity": lambda imp, node, attrs, inputs: inputs[0],
    "Cast": _fold_cast,
    "Unsqueeze": _GraphImporter._fold_unsqueeze,
    "Squeeze": _GraphImporter._fold_squeeze,
    "Gather": _fold_gather,
    "Concat": _fold_concat,
    "Add": lambda imp, node, attrs, inputs: inputs[0] + inputs[1],
    "Mul": lambda imp, node, attrs, inputs: inputs[0] * inputs[1],
}


def _reader_counts(graph):
    """How many times each tensor is read (by nodes, or as a graph output)."""
    counts = {}
    for name in [n for node in graph.node for n in node.input] + [o.name for o in graph.output]:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _dependency_order(graph, where):
    """The nodes of ``graph`` so that each comes after the producers of its inputs (Kahn's
    algorithm, file order among ready nodes). A dangling input or a cycle is a ValueError naming
    the node and the tensor."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    producer = {}
    for node in graph.node:
        for output in filter(None, node.output):
            if output in producer or output in available:
                raise ValueError(f"{where}: node {node.name!r} ({node.op_type}) writes tensor "
                                 f"{output!r}, which is already produced elsewhere in the graph")
            producer[output] = node
    for node in graph.node:
        for name in node.input:
            if name not in available and name not in producer:
                raise ValueError(f"{where}: node {node.name!r} ({node.op_type}) reads tensor "
                                 f"{name!r}, which no node, initializer or graph input produces")
    order, pending = [], list(graph.node)
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise _cycle_error(pending, available, producer, where)
        for node in ready:
            order.append(node)
            available.update(node.output)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    return order


def _cycle_error(pending, available, producer, where):
    """Follows unmet inputs from a waiting node until a node repeats: that loop is the cycle."""
    node, path = pending[0], []
    while all(node is not step[0] for step in path):
        tensor = next(name for name in node.input if name not in available)
        path.append((node, tensor))
        node = producer[tensor]
    loop = path[[step[0] for step in path].index(node):]
    described = " -> ".join(f"node {n.name!r} ({n.op_type}) reads {t!r}" for n, t in loop)
    first, tensor = loop[0]
    return ValueError(f"{where}: the graph has a cycle: node {first.name!r} ({first.op_type}) "
                      f"needs tensor {tensor!r}, which depends on its own output ({described})")
