"""Caffe models (a deploy ``.prototxt`` plus a ``.caffemodel``) into fastconv models.

The prototxt (protobuf text format) gives the architecture; the caffemodel (a binary
``NetParameter``) gives the weights, matched to the prototxt's layers by name, as Caffe itself
copies trained weights. Both files are read by the small schema-less reader in ``_protobuf``: only
a few fields are needed, and it avoids generated code and protoc. Caffe keeps convolution
kernels OIHW, inner-product weights (out, in) and flattens NCHW, like a channels_first fastconv
model, so arrays are copied unchanged (BatchNorm statistics are divided by their stored
moving-average scale factor first).

Supported layers: Input (or the net-level ``input``/``input_dim``/``input_shape``),
Convolution, Pooling (MAX/AVE, Caffe's ceil rounding), InnerProduct, ReLU, LRN, Concat,
Eltwise (SUM with unit coefficients), BatchNorm (+ a following Scale, folded into one
BatchNormalization), Dropout, Softmax, Split and Flatten; both the current ``layer`` and the
legacy V1 ``layers`` forms. Anything else is refused with the file, layer, type and parameter.
"""
import math
import os
from collections import Counter, namedtuple

import numpy as np

from . import _protobuf as pb

__all__ = ["from_caffe", "read_caffemodel", "read_prototxt"]

# ---------------------------------------------------------------------------------------------
# Parameter schemas: which fields of each layer's parameter message are understood.


class _P(namedtuple("_P", "kind default repeated choices sub")):
    """One parameter field: ``kind`` int/uint/float/bool/enum/string/message/ignored.
    ``choices`` lists enum values by number (Caffe's enum order); ``sub`` is a message's schema."""


def _p(kind, default=None, repeated=False, choices=None, sub=None):
    return _P(kind, default, repeated, choices, sub)


# Training-only settings (fillers, learning-rate multipliers, compute engine) do not change
# inference, so they are accepted and skipped.
_IGNORED = _p("ignored")
_SHAPE = {"dim": _p("int", repeated=True)}
_WINDOW = {name: _p("uint", repeated=True) for name in ("pad", "kernel_size", "stride")}
_WINDOW.update({name: _p("uint") for name in ("pad_h", "pad_w", "kernel_h", "kernel_w",
                                                "stride_h", "stride_w")})

_PARAMS = {  # Caffe type -> (its parameter message, schema)
    "Input": ("input_param", {"shape": _p("message", repeated=True, sub=_SHAPE)}),
    "Convolution": ("convolution_param", {
        **_WINDOW, "num_output": _p("uint"), "bias_term": _p("bool", True),
        "dilation": _p("uint", repeated=True), "group": _p("uint", 1), "axis": _p("int", 1),
        "weight_filler": _IGNORED, "bias_filler": _IGNORED, "engine": _IGNORED,
        "force_nd_im2col": _IGNORED}),
    "Pooling": ("pooling_param", {
        **_WINDOW, "pool": _p("enum", "MAX", choices=("MAX", "AVE", "STOCHASTIC")),
        "global_pooling": _p("bool", False),
        "round_mode": _p("enum", "CEIL", choices=("CEIL", "FLOOR")), "engine": _IGNORED}),
    "InnerProduct": ("inner_product_param", {
        "num_output": _p("uint"), "bias_term": _p("bool", True), "axis": _p("int", 1),
        "transpose": _p("bool", False), "weight_filler": _IGNORED, "bias_filler": _IGNORED}),
    "ReLU": ("relu_param", {"negative_slope": _p("float", 0.0), "engine": _IGNORED}),
    "LRN": ("lrn_param", {
        "local_size": _p("uint", 5), "alpha": _p("float", 1.0), "beta": _p("float", 0.75),
        "k": _p("float", 1.0), "engine": _IGNORED,
        "norm_region": _p("enum", "ACROSS_CHANNELS", choices=("ACROSS_CHANNELS", "WITHIN_CHANNEL"))}),
    "Concat": ("concat_param", {"axis": _p("int"), "concat_dim": _p("uint")}),
    "Eltwise": ("eltwise_param", {
        "operation": _p("enum", "SUM", choices=("PROD", "SUM", "MAX")),
        "coeff": _p("float", repeated=True), "stable_prod_grad": _IGNORED}),
    "BatchNorm": ("batch_norm_param", {
        "use_global_stats": _p("bool"), "eps": _p("float", 1e-5),
        "moving_average_fraction": _IGNORED}),
    "Scale": ("scale_param", {
        "axis": _p("int", 1), "num_axes": _p("int", 1), "bias_term": _p("bool", False),
        "filler": _IGNORED, "bias_filler": _IGNORED}),
    "Dropout": ("dropout_param", {"dropout_ratio": _p("float", 0.5),
                                  "scale_train": _p("bool", True)}),
    "Softmax": ("softmax_param", {"axis": _p("int", 1), "engine": _IGNORED}),
    "Split": (None, {}),
    "Flatten": ("flatten_param", {"axis": _p("int", 1), "end_axis": _p("int", -1)}),
}

# V1 ``layers`` name their type with an enum (number in the caffemodel, name in the prototxt).
_V1_TYPES = {4: "Convolution", 17: "Pooling", 14: "InnerProduct", 18: "ReLU", 15: "LRN",
             3: "Concat", 25: "Eltwise", 6: "Dropout", 20: "Softmax", 22: "Split", 8: "Flatten"}
_V1_NAMES = {"CONVOLUTION": 4, "POOLING": 17, "INNER_PRODUCT": 14, "RELU": 18, "LRN": 15,
             "CONCAT": 3, "ELTWISE": 25, "DROPOUT": 6, "SOFTMAX": 20, "SPLIT": 22, "FLATTEN": 8}

_RULE = {"phase": _p("enum", choices=("TRAIN", "TEST")), "min_level": _p("int"),
         "max_level": _p("int"), "stage": _p("string", repeated=True),
         "not_stage": _p("string", repeated=True)}
_LAYER_COMMON = {"name": _p("string"), "bottom": _p("string", repeated=True),
                 "top": _p("string", repeated=True), "include": _p("message", repeated=True, sub=_RULE),
                 "exclude": _p("message", repeated=True, sub=_RULE), "loss_weight": _IGNORED,
                 "param": _IGNORED, "propagate_down": _IGNORED}
_LAYER_V2 = {**_LAYER_COMMON, "type": _p("string"), "phase": _IGNORED}
_LAYER_V1 = {**_LAYER_COMMON, "type": _p("enum"), "blobs_lr": _IGNORED, "weight_decay": _IGNORED,
             "blob_share_mode": _IGNORED}
_NET = {"name": _p("string"), "input": _p("string", repeated=True),
        "input_dim": _p("int", repeated=True),
        "input_shape": _p("message", repeated=True, sub=_SHAPE),
        "layer": _p("message", repeated=True), "layers": _p("message", repeated=True),
        "force_backward": _IGNORED, "debug_info": _IGNORED, "state": _IGNORED}

# A parsed prototxt: ``inputs`` [(blob name, shape with batch)], ``layers`` [_Layer].
_Net = namedtuple("_Net", "name inputs layers path")
_Layer = namedtuple("_Layer", "name type bottoms tops params line")
# A blob of the caffemodel: ``legacy`` when its shape came from num/channels/height/width.
_Blob = namedtuple("_Blob", "shape legacy values")
_Stored = namedtuple("_Stored", "type blobs")

# ---------------------------------------------------------------------------------------------
# The prototxt


def _layer_error(path, name, type_, problem, line=None):
    where = f", line {line}" if line else ""
    return ValueError(f"{path}: layer '{name}' (type {type_}{where}): {problem}")


def _convert(kind, choices, value, fail):
    """A text-format value as the Python value of a field of ``kind``, or ``fail(reason)``."""
    word = value if isinstance(value, pb.Identifier) else None
    if kind in ("int", "uint") and isinstance(value, int) and (kind == "int" or value >= 0):
        return value
    if kind == "float":
        if isinstance(value, (int, float)):
            return float(value)
        if word is not None and word.lower().lstrip("-") in ("inf", "infinity", "nan"):
            return float(word)
    if kind == "bool":
        if word in ("true", "True", "t"):
            return True
        if word in ("false", "False", "f"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    if kind == "enum":
        if word is not None and (choices is None or word in choices):
            return str(word)
        if isinstance(value, int) and choices is not None and 0 <= value < len(choices):
            return choices[value]
    if kind == "string" and isinstance(value, str) and word is None:
        return value
    if kind == "message" and isinstance(value, pb.TextMessage):
        return value
    expected = {"uint": "a non-negative integer", "int": "an integer", "float": "a number",
                "bool": "true or false", "string": "a quoted string", "message": "a { ... } block",
                "enum": f"one of {', '.join(choices)}" if choices else "an enum name"}[kind]
    fail(f"expected {expected}, found {value!r}")


def _read_fields(msg, schema, fail, prefix=""):
    """{field: value} for every non-ignored field of ``schema`` (defaults filled in); an
    unknown field or a bad value calls ``fail`` naming the parameter."""
    for name in msg.names():
        if name not in schema:
            fail(f"unsupported parameter '{prefix}{name}' (line {msg.line_of(name)})")
    values = {}
    for name, spec in schema.items():
        if spec.kind == "ignored":
            continue
        raw = msg.get_all(name)
        label = f"parameter '{prefix}{name}' (line {msg.line_of(name)})"
        if len(raw) > 1 and not spec.repeated:
            fail(f"{label} is given {len(raw)} times")

        def bad(reason, label=label):
            fail(f"{label}: {reason}")

        items = [_convert(spec.kind, spec.choices, v, bad) for v in raw]
        if spec.sub is not None:
            items = [_read_fields(v, spec.sub, fail, f"{prefix}{name}.") for v in items]
        values[name] = items if spec.repeated else (items[0] if items else spec.default)
    return values


def _included(rules, fail):
    """Whether NetStateRules accept a deploy net (phase TEST, level 0, no stages)."""
    def met(rule):
        return (rule["phase"] in (None, "TEST") and (rule["min_level"] or 0) <= 0
                and (rule["max_level"] is None or rule["max_level"] >= 0) and not rule["stage"])
    include, exclude = rules
    if include and exclude:
        fail("a layer takes 'include' or 'exclude' rules, not both")
    return any(map(met, include)) if include else not any(map(met, exclude))


def _read_layer(path, msg, v1):
    """A _Layer from one ``layer``/``layers`` block, or None when the TEST phase excludes it."""
    name = msg.get("name", "?")
    type_ = msg.get("type", "?")
    if v1 and isinstance(type_, str):
        type_ = _V1_TYPES.get(_V1_NAMES.get(type_), type_)

    def fail(problem):
        raise _layer_error(path, name, type_, problem, msg.line)

    # Rules first: a training-only layer (a Data layer, a loss) is skipped whatever its type.
    rules = [[_read_fields(r, _RULE, fail, f"{key}.") if isinstance(r, pb.TextMessage)
              else fail(f"parameter '{key}' must be a {{ ... }} block") for r in msg.get_all(key)]
             for key in ("include", "exclude")]
    if not _included(rules, fail):
        return None
    known = _PARAMS.get(type_)
    if known is None:
        fail("unsupported layer type" + ("" if type_ != "?" else ": the layer has no type"))
    param_name, param_schema = known
    schema = {**(_LAYER_V1 if v1 else _LAYER_V2)}
    if param_name:
        schema[param_name] = _p("message", sub=param_schema)
    fields = _read_fields(msg, schema, fail)
    if fields["name"] is None:
        fail("the layer has no name")
    params = fields.get(param_name) or (_read_fields(pb.TextMessage(msg.line), param_schema, fail)
                                        if param_name else {})
    return _Layer(name, type_, fields["bottom"], fields["top"], params, msg.line)


def _net_inputs(path, net, fail):
    names, dims, shapes = net["input"], net["input_dim"], net["input_shape"]
    if dims and shapes:
        fail("give 'input_dim' or 'input_shape', not both")
    if dims:
        if len(dims) != 4 * len(names):
            fail(f"{len(names)} 'input' blobs need {4 * len(names)} 'input_dim' values; "
                 f"found {len(dims)}")
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        shapes = [s["dim"] for s in shapes]
    if len(shapes) != len(names):
        fail(f"{len(names)} 'input' blobs but {len(shapes)} input shapes")
    return list(zip(names, shapes))


def read_prototxt(path):
    """The layers of a deploy prototxt, checked against the supported layers and parameters.

    Returns a ``_Net`` (name, inputs, layers, path); ``from_caffe`` builds the model from it.

    >>> net = read_prototxt("lenet.prototxt")                 # doctest: +SKIP
    >>> [(layer.name, layer.type) for layer in net.layers][:2]  # doctest: +SKIP
    [('data', 'Input'), ('conv1', 'Convolution')]
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a prototxt (text in UTF-8): {err}") from None
    try:
        root = pb.parse_text(text)
    except pb.ProtobufError as err:
        raise ValueError(f"{path}: not a valid prototxt: {err}") from None

    def fail(problem):
        raise ValueError(f"{path}: {problem}")

    net = _read_fields(root, _NET, fail)
    if net["layer"] and net["layers"]:
        fail("the net mixes 'layer' and legacy 'layers' blocks; Caffe refuses such files too")
    blocks, v1 = (net["layers"], True) if net["layers"] else (net["layer"], False)
    layers = [layer for layer in (_read_layer(path, b, v1) for b in blocks) if layer is not None]
    if not layers:
        fail("no layers")
    return _Net(net["name"], _net_inputs(path, net, fail), layers, path)

# ---------------------------------------------------------------------------------------------
# The caffemodel


def _read_blob(data, span):
    items = {}
    for field in pb.fields(data, *span):
        items.setdefault(field.number, []).append(field)
    shape, legacy = None, False
    if 7 in items:                                   # shape: BlobShape { repeated int64 dim = 1 }
        dims = []
        for field in pb.fields(data, *pb.expect(items[7][-1], pb.LENGTH, "blob shape")):
            if field.number == 1:
                dims += (pb.packed_varints(data, field.value) if field.wire_type == pb.LENGTH
                         else [pb.expect(field, pb.VARINT, "blob dimension")])
        shape = tuple(pb.signed64(d) for d in dims)
    elif any(n in items for n in (1, 2, 3, 4)):       # legacy num, channels, height, width
        shape = tuple(pb.signed64(pb.expect(items[n][-1], pb.VARINT, "blob dimension"))
                      if n in items else 0 for n in (1, 2, 3, 4))
        legacy = True
    values = pb.reals(data, items.get(5, []), "<f4")
    if not values.size and 8 in items:
        values = pb.reals(data, items[8], "<f8")
    if shape is None:
        shape = (values.size,)
    if any(d < 0 for d in shape) or math.prod(shape) != values.size:
        raise pb.ProtobufError(f"blob at byte {span[0]} has shape {shape} but holds "
                               f"{values.size} values", offset=span[0])
    return _Blob(shape, legacy, values)


def _read_stored_layer(data, span, v1):
    """(name, _Stored) of one LayerParameter (V2) or V1LayerParameter."""
    name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, type_, blobs = None, None, []
    for field in pb.fields(data, *span):
        if field.number == name_field and field.wire_type == pb.LENGTH:
            name = pb.string(data, field.value)
        elif field.number == type_field and v1:
            code = pb.expect(field, pb.VARINT, "layer type")
            type_ = _V1_TYPES.get(code, f"V1 type {code}")
        elif field.number == type_field:
            type_ = pb.string(data, pb.expect(field, pb.LENGTH, "layer type"))
        elif field.number == blobs_field and field.wire_type == pb.LENGTH:
            blobs.append(field.value)
    blobs = [_read_blob(data, span) if name is not None else None for span in blobs]
    return name, _Stored(type_, blobs)


def _name_near(data, offset):
    """Best effort: the name of the layer whose message starts at ``offset`` (for messages about
    damaged files)."""
    try:
        key, pos = pb.read_varint(data, offset, len(data))
        _, pos = pb.read_varint(data, pos, len(data))
        wanted = 4 if key >> 3 == 2 else 1
        for field in pb.fields(data, pos, len(data)):
            if field.number == wanted and field.wire_type == pb.LENGTH:
                return pb.string(data, field.value)
    except pb.ProtobufError:
        pass
    return None


def read_caffemodel(path):
    """{layer name: (type, [blobs])} from a binary caffemodel (``layer`` or V1 ``layers``).

    Each blob is a ``_Blob(shape, legacy, values)`` whose ``values`` is a flat float32 (or
    float64) view of the file. Layers without a name are skipped.

    >>> stored = read_caffemodel("lenet_iter_10000.caffemodel")   # doctest: +SKIP
    >>> [b.shape for b in stored["conv1"].blobs]                    # doctest: +SKIP
    [(20, 1, 5, 5), (20,)]
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    stored, offset = {}, 0
    try:
        for field in pb.fields(data):
            offset = field.offset
            if field.number in (2, 100) and field.wire_type == pb.LENGTH:
                try:
                    name, layer = _read_stored_layer(data, field.value, v1=field.number == 2)
                except pb.ProtobufError as err:
                    err.offset = field.offset        # report the layer whose blob is damaged
                    raise
                if name is not None:
                    stored.setdefault(name, layer)
    except pb.ProtobufError as err:
        name = _name_near(data, err.offset if err.offset is not None else offset)
        where = f" (in layer '{name}')" if name else ""
        raise ValueError(f"{path}: not a readable caffemodel, truncated or damaged{where}: "
                         f"{err}") from None
    if not stored:
        raise ValueError(f"{path}: not a caffemodel: no layers found")
    return stored

# ---------------------------------------------------------------------------------------------
# The graph


def _dataflow(net, fail):
    """Which value (blob name, version) each layer reads and writes; in-place layers (top ==
    bottom) write a new version. Returns (reads, writes, readers count)."""
    version = {name: 0 for name, _ in net.inputs}
    reads, writes, readers = [], [], Counter()
    for layer in net.layers:
        missing = [b for b in layer.bottoms if b not in version]
        if missing:
            fail(layer, f"bottom '{missing[0]}' is not produced by an earlier layer or input")
        values = [(b, version[b]) for b in layer.bottoms]
        readers.update(values)
        reads.append(values)
        for top in layer.tops:
            version[top] = version[top] + 1 if top in version else 0
        writes.append([(t, version[t]) for t in layer.tops])
    return reads, writes, readers


def _pair(layer, params, name, h_name, w_name, default, fail):
    """(height, width) from a repeated field or its ``_h``/``_w`` forms, as Caffe reads them."""
    values, h, w = params.get(name, []), params.get(h_name), params.get(w_name)
    if h is not None or w is not None:
        if values:
            fail(layer, f"parameter '{name}' and '{h_name}'/'{w_name}' cannot be combined")
        if h is None or w is None:
            fail(layer, f"parameters '{h_name}' and '{w_name}' must be given together")
        return h, w
    if not values:
        if default is None:
            fail(layer, f"parameter '{name}' is required")
        return default, default
    if len(values) > 2:
        fail(layer, f"parameter '{name}' has {len(values)} values: only 2-D windows are supported")
    return (values[0], values[-1])


def _caffe_pooled_size(size, kernel, stride, pad, ceil):
    """Caffe's pooled size: rounded up (or down), minus a last window starting in the padding."""
    out = (-(-(size + 2 * pad - kernel) // stride) if ceil
           else (size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class _GraphBuilder:
    """Turns the prototxt's layers into fastconv layers called on symbolic tensors."""

    def __init__(self, net):
        self.net = net
        self.inputs = []
        self.jobs = []   # (caffe layer, fastconv layer name, folded Scale layer or None)

    def fail(self, layer, problem):
        raise _layer_error(self.net.path, layer.name, layer.type, problem, layer.line)

    def build(self, name):
        from .. import layers as L
        from ..model import Model

        reads, writes, readers = _dataflow(self.net, self.fail)
        self.folds = self._scale_folds(reads, writes, readers)
        tensors = {}
        for name_, shape in self.net.inputs:
            tensors[(name_, 0)] = self._input(name_, shape, None, L)
        for index, layer in enumerate(self.net.layers):
            inputs = [tensors[v] for v in reads[index]]
            outputs = self._layer(index, layer, inputs, L)
            if len(outputs) != len(writes[index]):
                self.fail(layer, f"needs {len(outputs)} top blob(s); found {len(layer.tops)}")
            tensors.update(zip(writes[index], outputs))
        unread = [v for values in writes for v in values if readers[v] == 0]
        unused = [t.layer.name for t in self.inputs if (t.layer.name, 0) not in readers]
        if unused:
            raise ValueError(f"{self.net.path}: input '{unused[0]}' is not read by any layer")
        outputs = list({id(tensors[v]): tensors[v] for v in unread}.values())
        try:
            return Model(self.inputs[0] if len(self.inputs) == 1 else self.inputs,
                         outputs[0] if len(outputs) == 1 else outputs, name=name)
        except ValueError as err:  # e.g. weights larger than the machine's memory
            raise ValueError(f"{self.net.path}: {err}") from None

    def _scale_folds(self, reads, writes, readers):
        """{Scale index: BatchNorm index} for every Scale that only scales a BatchNorm's output
        (Caffe splits batch normalisation in two; fastconv's BatchNormalization is both)."""
        producer = {v: i for i, values in enumerate(writes) for v in values}
        folds = {}
        for index, layer in enumerate(self.net.layers):
            if layer.type != "Scale":
                continue
            source = producer.get(reads[index][0]) if len(reads[index]) == 1 else None
            if (source is None or self.net.layers[source].type != "BatchNorm"
                    or readers[reads[index][0]] != 1):
                self.fail(layer, "a Scale layer is supported only right after a BatchNorm layer "
                                 "whose output nothing else reads (it is folded into it)")
            folds[index] = source
        return folds

    def _input(self, name, shape, layer, L):
        if len(shape) < 2 or any(d <= 0 for d in shape):
            problem = f"input '{name}' needs a shape (batch, C, H, W) or (batch, features); " \
                      f"found {tuple(shape)}"
            if layer is None:
                raise ValueError(f"{self.net.path}: {problem}")
            self.fail(layer, problem)
        tensor = L.Input(tuple(shape[1:]), name=name)
        self.inputs.append(tensor)
        return tensor

    def _layer(self, index, layer, inputs, L):
        expected_bottoms = {"Input": (0, 0), "Concat": (1, None), "Eltwise": (2, None)}
        low, high = expected_bottoms.get(layer.type, (1, 1))
        if len(inputs) < low or (high is not None and len(inputs) > high):
            count = f"{low}" if low == high else f"at least {low}" if high is None else f"{low}-{high}"
            self.fail(layer, f"takes {count} bottom blob(s); found {len(inputs)}")
        handler = getattr(self, "_input_layer" if layer.type == "Input" else
                          "_" + layer.type.lower())
        try:
            return handler(index, layer, inputs, L)
        except (ValueError, TypeError) as err:
            if str(err).startswith(self.net.path):
                raise
            raise _layer_error(self.net.path, layer.name, layer.type, str(err), layer.line) from None

    def _spatial(self, layer, x):
        if len(x.sample_shape) != 3:
            self.fail(layer, f"needs a (batch, C, H, W) input; found {x.shape}")
        return x.sample_shape

    def _axis(self, layer, x, axis, param):
        """A Caffe axis of the batched tensor as a fastconv axis (-1: the channel axis)."""
        rank = len(x.sample_shape) + 1
        resolved = axis + rank if axis < 0 else axis
        if not 1 <= resolved < rank:
            self.fail(layer, f"parameter '{param}' = {axis} is not an axis >= 1 of a rank-{rank} "
                             f"input")
        return -1 if resolved == 1 else resolved

    # One handler per Caffe type: (layer index, _Layer, input tensors, layers module) -> outputs.

    def _input_layer(self, index, layer, inputs, L):
        shapes = [s["dim"] for s in layer.params["shape"]]
        if len(shapes) not in (1, len(layer.tops)):
            self.fail(layer, f"parameter 'input_param.shape' is given {len(shapes)} times for "
                             f"{len(layer.tops)} tops (1 or one per top)")
        shapes = shapes * len(layer.tops) if len(shapes) == 1 else shapes
        return [self._input(top, shape, layer, L) for top, shape in zip(layer.tops, shapes)]

    def _convolution(self, index, layer, inputs, L):
        p, (x,) = layer.params, inputs
        self._spatial(layer, x)
        if p["num_output"] is None:
            self.fail(layer, "parameter 'convolution_param.num_output' is required")
        if p["axis"] != 1:
            self.fail(layer, f"parameter 'convolution_param.axis' = {p['axis']}: only 1")
        kernel = _pair(layer, p, "kernel_size", "kernel_h", "kernel_w", None, self.fail)
        stride = _pair(layer, p, "stride", "stride_h", "stride_w", 1, self.fail)
        pad = _pair(layer, p, "pad", "pad_h", "pad_w", 0, self.fail)
        dilation = _pair(layer, p, "dilation", None, None, 1, self.fail)
        conv = L.Conv2D(p["num_output"], kernel, strides=stride, padding=pad, dilation=dilation,
                        groups=p["group"], use_bias=p["bias_term"], name=layer.name)
        self.jobs.append((layer, layer.name, None))
        return [conv(x)]

    def _pooling(self, index, layer, inputs, L):
        p, (x,) = layer.params, inputs
        _, height, width = self._spatial(layer, x)
        if p["pool"] == "STOCHASTIC":
            self.fail(layer, "parameter 'pooling_param.pool' = STOCHASTIC: only MAX and AVE")
        if p["global_pooling"]:
            if p["kernel_size"] or p["kernel_h"] is not None or p["kernel_w"] is not None:
                self.fail(layer, "parameter 'pooling_param.kernel_size' cannot be combined with "
                                 "global_pooling")
            kernel = (height, width)
        else:
            kernel = _pair(layer, p, "kernel_size", "kernel_h", "kernel_w", None, self.fail)
        stride = _pair(layer, p, "stride", "stride_h", "stride_w", 1, self.fail)
        pad = _pair(layer, p, "pad", "pad_h", "pad_w", 0, self.fail)
        if any(q >= k for q, k in zip(pad, kernel)):
            self.fail(layer, f"parameter 'pooling_param.pad' = {pad} must be smaller than the "
                             f"kernel {kernel}")
        ceil = p["round_mode"] == "CEIL"
        args = dict(strides=stride, padding=pad, ceil_mode=ceil, name=layer.name)
        pool = (L.MaxPool2D(kernel, **args) if p["pool"] == "MAX"
                else L.AvgPool2D(kernel, count_include_pad=True, **args))
        y = pool(x)
        caffe = tuple(_caffe_pooled_size(*a, ceil) for a in zip((height, width), kernel, stride, pad))
        if y.sample_shape[1:] != caffe:
            # PyTorch-style ceil mode drops a window starting past the input even without
            # padding; Caffe then keeps an empty window. Refuse rather than differ.
            self.fail(layer, f"Caffe pools to {caffe} here but fastconv would give "
                             f"{y.sample_shape[1:]} (a window lies wholly outside the input)")
        return [y]

    def _innerproduct(self, index, layer, inputs, L):
        p, (x,) = layer.params, inputs
        if p["num_output"] is None:
            self.fail(layer, "parameter 'inner_product_param.num_output' is required")
        if self._axis(layer, x, p["axis"], "inner_product_param.axis") != -1:
            self.fail(layer, f"parameter 'inner_product_param.axis' = {p['axis']}: only 1")
        if len(x.sample_shape) > 1:
            # Caffe's InnerProduct flattens (C, H, W) itself; fastconv's Dense needs a Flatten
            # (same C, H, W order), named after the layer.
            x = L.Flatten(name=f"{layer.name}/flatten")(x)
        dense = L.Dense(p["num_output"], use_bias=p["bias_term"], name=layer.name)
        self.jobs.append((layer, layer.name, None))
        return [dense(x)]

    def _relu(self, index, layer, inputs, L):
        if layer.params["negative_slope"] != 0:
            self.fail(layer, f"parameter 'relu_param.negative_slope' = "
                             f"{layer.params['negative_slope']}: only 0 (leaky ReLU is not "
                             f"supported)")
        return [L.ReLU(name=layer.name)(inputs[0])]

    def _lrn(self, index, layer, inputs, L):
        p = layer.params
        if p["norm_region"] != "ACROSS_CHANNELS":
            self.fail(layer, "parameter 'lrn_param.norm_region' = WITHIN_CHANNEL: only "
                             "ACROSS_CHANNELS")
        if p["local_size"] % 2 == 0:
            self.fail(layer, f"parameter 'lrn_param.local_size' = {p['local_size']}: Caffe "
                             f"needs an odd size")
        self._spatial(layer, inputs[0])
        lrn = L.LocalResponseNormalization(p["local_size"], alpha=p["alpha"], beta=p["beta"],
                                           k=p["k"], name=layer.name)
        return [lrn(inputs[0])]

    def _concat(self, index, layer, inputs, L):
        p = layer.params
        if p["axis"] is not None and p["concat_dim"] is not None:
            self.fail(layer, "parameters 'concat_param.axis' and 'concat_dim' cannot be combined")
        axis = next((a for a in (p["axis"], p["concat_dim"]) if a is not None), 1)
        axis = self._axis(layer, inputs[0], axis, "concat_param.axis")
        if len(inputs) == 1:
            return inputs        # Caffe's one-input Concat is a copy
        return [L.Concatenate(axis=axis, name=layer.name)(inputs)]

    def _eltwise(self, index, layer, inputs, L):
        p = layer.params
        if p["operation"] != "SUM":
            self.fail(layer, f"parameter 'eltwise_param.operation' = {p['operation']}: only SUM")
        if p["coeff"] and (len(p["coeff"]) != len(inputs) or any(c != 1 for c in p["coeff"])):
            self.fail(layer, f"parameter 'eltwise_param.coeff' = {p['coeff']}: only 1 for every "
                             f"bottom")
        return [L.Add(name=layer.name)(inputs)]

    def _batchnorm(self, index, layer, inputs, L):
        if layer.params["use_global_stats"] is False:
            self.fail(layer, "parameter 'batch_norm_param.use_global_stats' = false: a deploy "
                             "net uses the stored statistics")
        bn = L.BatchNormalization(epsilon=layer.params["eps"], name=layer.name)
        scale = next((self.net.layers[s] for s, b in self.folds.items() if b == index), None)
        self.jobs.append((layer, layer.name, scale))
        return [bn(inputs[0])]

    def _scale(self, index, layer, inputs, L):
        p = layer.params
        if p["axis"] != 1 or p["num_axes"] != 1:
            self.fail(layer, f"parameters 'scale_param.axis' = {p['axis']} and 'num_axes' = "
                             f"{p['num_axes']}: only 1 and 1 (one factor per channel)")
        return inputs            # folded into the BatchNormalization that made ``inputs[0]``

    def _dropout(self, index, layer, inputs, L):
        p = layer.params
        if not p["scale_train"]:
            self.fail(layer, "parameter 'dropout_param.scale_train' = false: Caffe then scales "
                             "at test time; only true")
        return [L.Dropout(p["dropout_ratio"], name=layer.name)(inputs[0])]

    def _softmax(self, index, layer, inputs, L):
        axis = self._axis(layer, inputs[0], layer.params["axis"], "softmax_param.axis")
        return [L.Softmax(axis=axis, name=layer.name)(inputs[0])]

    def _split(self, index, layer, inputs, L):
        return inputs * len(layer.tops)

    def _flatten(self, index, layer, inputs, L):
        p, x = layer.params, inputs[0]
        rank = len(x.sample_shape) + 1
        if p["axis"] not in (1, 1 - rank) or p["end_axis"] not in (-1, rank - 1):
            self.fail(layer, f"parameters 'flatten_param.axis' = {p['axis']} and 'end_axis' = "
                             f"{p['end_axis']}: only 1 and -1 (flatten all but the batch)")
        return [L.Flatten(name=layer.name)(x)]


# ---------------------------------------------------------------------------------------------
# Weights


class _WeightLoader:
    """Fills the built model's layers from the caffemodel's blobs, checking every shape."""

    def __init__(self, model, stored, path):
        self.model, self.stored, self.path = model, stored, path

    def fail(self, layer, problem):
        raise _layer_error(self.path, layer.name, layer.type, problem)

    def blobs(self, layer, shapes):
        """The layer's blobs as float32 arrays of ``shapes``; count and shapes checked."""
        entry = self.stored.get(layer.name)
        if entry is None:
            self.fail(layer, "no weights: the caffemodel has no layer of this name")
        if entry.type not in (None, layer.type):
            self.fail(layer, f"the caffemodel's layer of this name has type {entry.type}")
        if len(entry.blobs) != len(shapes):
            self.fail(layer, f"has {len(entry.blobs)} blob(s); the layer needs {len(shapes)} "
                             f"shaped {', '.join(map(str, shapes))}")
        arrays = []
        for i, (blob, shape) in enumerate(zip(entry.blobs, shapes)):
            # Legacy 4-D blobs pad smaller shapes with leading ones (1x1xOxI inner products).
            wanted = (1,) * (4 - len(shape)) + shape if blob.legacy and len(shape) <= 4 else shape
            if blob.shape != wanted:
                self.fail(layer, f"blob {i} has shape {blob.shape} but the layer needs {wanted}")
            arrays.append(np.asarray(blob.values, np.float32).reshape(shape))
        return arrays

    def load(self, jobs):
        for layer, target, scale in jobs:
            fc = self.model.get_layer(target)
            fc.set_weights(getattr(self, "_" + layer.type.lower())(layer, fc, scale))

    def _convolution(self, layer, fc, _):
        names = list(fc.weights)                     # kernel (OIHW) [, bias]
        return dict(zip(names, self.blobs(layer, [fc.weights[n].shape for n in names])))

    def _innerproduct(self, layer, fc, _):
        names = list(fc.weights)                     # kernel (out, in) [, bias]
        shapes = [fc.weights[n].shape for n in names]
        if layer.params["transpose"]:                # stored (in, out)
            shapes[0] = shapes[0][::-1]
        arrays = self.blobs(layer, shapes)
        if layer.params["transpose"]:
            arrays[0] = arrays[0].T
        return dict(zip(names, arrays))

    def _batchnorm(self, layer, fc, scale_layer):
        channels = fc.weights["gamma"].shape
        mean, var, factor = self.blobs(layer, [channels, channels, (1,)])
        # Caffe stores running sums scaled by a moving-average factor; 0 means "no statistics
        # yet", which Caffe itself maps to 0.
        inverse = 0.0 if factor[0] == 0 else 1.0 / float(factor[0])
        gamma, beta = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        if scale_layer is not None:
            has_bias = scale_layer.params["bias_term"]
            stored = self.blobs(scale_layer, [channels] * (2 if has_bias else 1))
            gamma = stored[0]
            beta = stored[1] if has_bias else beta
        return {"gamma": gamma, "beta": beta, "moving_mean": mean * inverse,
                "moving_variance": var * inverse}

# ---------------------------------------------------------------------------------------------
# Preprocessing and the entry point

_PREPROCESSING_KEYS = ("size", "resize", "interpolation", "scale", "mean", "std",
                       "channel_order", "color")


def _preprocessing(model, given, path):
    """Caffe's raw conventions (0..255 BGR, no mean) for the first image input, overridden by
    the caller's entries (a deploy prototxt does not say how its net was fed)."""
    if given is None and (len(model.inputs) != 1 or len(model.inputs[0].sample_shape) != 3):
        return None
    given = dict(given or {})
    unknown = sorted(set(given) - set(_PREPROCESSING_KEYS))
    if unknown:
        raise ValueError(f"from_caffe: unknown preprocessing key(s) {unknown}; known: "
                         f"{list(_PREPROCESSING_KEYS)}")
    shape = model.inputs[0].sample_shape
    channels = shape[0] if len(shape) == 3 else 1
    result = {"size": list(shape[1:3]) if len(shape) == 3 else None, "resize": None,
              "interpolation": "bilinear", "scale": 1.0, "mean": [0.0] * channels,
              "std": [1.0] * channels, "channel_order": "BGR",
              "color": "grayscale" if channels == 1 else "rgb", **given}
    for key in ("mean", "std"):
        values = result[key]
        values = [values] * channels if isinstance(values, (int, float)) else list(values)
        if len(values) != channels:
            raise ValueError(f"from_caffe: preprocessing '{key}' needs {channels} values (one per "
                             f"channel of {path}'s input); received {result[key]!r}")
        result[key] = [float(v) for v in values]
    if result["channel_order"] not in ("RGB", "BGR") or result["color"] not in ("rgb", "grayscale"):
        raise ValueError(f"from_caffe: preprocessing 'channel_order' must be 'RGB' or 'BGR' and "
                         f"'color' 'rgb' or 'grayscale'; received {result['channel_order']!r}, "
                         f"{result['color']!r}")
    result["scale"] = float(result["scale"])
    return result


def from_caffe(prototxt, caffemodel, preprocessing=None, name=None):
    """A channels_first fastconv Model from a Caffe deploy prototxt and its trained caffemodel.

    Layers keep the prototxt's names (an InnerProduct on an image gets a Flatten named
    ``<name>/flatten``; a Scale after a BatchNorm is folded into the BatchNormalization named
    after the BatchNorm). ``preprocessing`` overrides entries of
    ``model.info["preprocessing"]``, whose defaults are Caffe's raw input: ``scale`` 1.0 (the
    network sees 0..255 pixels), ``mean`` 0, ``std`` 1, ``channel_order`` "BGR"; the model sees
    ``(pixel * scale - mean) / std``, so a Caffe ``mean_value`` m with ``scale`` s is
    ``mean = m * s``. ``model.info["source"]`` is ``"caffe:<caffemodel file name>"``.

    >>> model = from_caffe("lenet.prototxt", "lenet_iter_10000.caffemodel",
    ...                    preprocessing={"scale": 0.00390625})        # doctest: +SKIP
    >>> model.predict(images[:, None] * 0.00390625).argmax(1)         # doctest: +SKIP
    """
    net = read_prototxt(prototxt)
    stored = read_caffemodel(caffemodel)
    builder = _GraphBuilder(net)
    default_name = net.name or os.path.splitext(os.path.basename(net.path))[0] or "caffe"
    model = builder.build(name or default_name)
    _WeightLoader(model, stored, os.fspath(caffemodel)).load(builder.jobs)
    model.info["source"] = f"caffe:{os.path.basename(os.fspath(caffemodel))}"
    info = _preprocessing(model, preprocessing, net.path)
    if info is not None:
        model.info["preprocessing"] = info
    return model.prepare()  # plan made now: the first predict costs a steady one
