"""Run single-node ONNX backend conformance cases through fastconv.functional.

The ONNX package ships node tests as folders ``onnx/backend/test/data/node/<name>/`` holding a
one-node ``model.onnx`` and ``test_data_set_*/{input,output}_<i>.pb``. This module selects the
cases for the operators fastconv implements, loads their data, and maps the node (op_type,
attributes, inputs) onto fastconv.functional calls. Features fastconv deliberately lacks raise
``Unsupported`` whose message names the feature ("<category>: <detail>"); nothing is ignored.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fastconv import functional as F

NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"

# Attributes the adapter maps for each operator; any other attribute makes the case Unsupported.
KNOWN_ATTRIBUTES = {
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "MaxPool": {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides",
                "storage_order"},
    "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape",
                    "pads", "strides"},
    "GlobalAveragePool": set(),
    "GlobalMaxPool": set(),
    "LRN": {"alpha", "beta", "bias", "size"},
    # momentum only affects the running statistics of training mode (which is skipped).
    "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Relu": set(),
    "Softmax": {"axis"},
    "Concat": {"axis"},
    "Add": set(),
    "Flatten": {"axis"},
}
OPS = frozenset(KNOWN_ATTRIBUTES)


class Unsupported(Exception):
    """The case needs a feature fastconv deliberately does not provide."""


@dataclass
class Case:
    name: str
    node: onnx.NodeProto
    opset: int
    data_sets: list  # [(inputs: {name: array}, outputs: {name: array})]


def find_cases(root=NODE_DATA):
    """{folder name: op_type} for every node test whose single node is one of OPS."""
    cases = {}
    for folder in sorted(root.iterdir()):
        model = folder / "model.onnx"
        if not model.is_file():
            continue
        nodes = onnx.load(str(model)).graph.node
        if len(nodes) == 1 and nodes[0].op_type in OPS:
            cases[folder.name] = nodes[0].op_type
    return cases


def _read_tensors(folder, prefix):
    files = sorted(folder.glob(prefix + "_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


def load_case(name, root=NODE_DATA):
    folder = root / name
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    initialized = {t.name for t in graph.initializer}
    feed_names = [i.name for i in graph.input if i.name not in initialized]
    out_names = [o.name for o in graph.output]
    data_sets = []
    for ds in sorted(folder.glob("test_data_set_*"), key=lambda p: int(p.name.split("_")[-1])):
        ins, outs = _read_tensors(ds, "input"), _read_tensors(ds, "output")
        assert len(ins) == len(feed_names) and len(outs) == len(out_names), ds
        values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        values.update(zip(feed_names, ins))
        data_sets.append((values, dict(zip(out_names, outs))))
    assert data_sets, f"{name}: no test_data_set_*"
    return Case(name, graph.node[0], opset, data_sets)


def attributes(node):
    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        attrs[a.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


def check_supported(node, inputs, expected):
    """Raise Unsupported naming the first unsupported feature of this node and data."""
    op, attrs = node.op_type, attributes(node)
    unknown = sorted(set(attrs) - KNOWN_ATTRIBUTES[op])
    if unknown:
        raise Unsupported(f"unsupported attribute: {op} {', '.join(unknown)}")
    if op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN") \
            and inputs[0].ndim != 4:
        raise Unsupported(f"non-2-D spatial: {inputs[0].ndim - 2}-D {op}")
    if op == "MaxPool":
        reasons = []
        if len([o for o in node.output if o]) > 1:
            reasons.append("second output Indices (argmax)")
        if attrs.get("storage_order", 0) != 0:
            reasons.append(f"storage_order={attrs['storage_order']}")
        if reasons:
            raise Unsupported("MaxPool Indices/storage_order: " + ", ".join(reasons))
    if op == "BatchNormalization":
        n_out = len([o for o in node.output if o])
        if attrs.get("training_mode", 0) or n_out > 1:
            raise Unsupported(f"training-mode BatchNormalization: training_mode="
                              f"{attrs.get('training_mode', 0)}, {n_out} outputs")
        if attrs.get("spatial", 1) != 1:
            raise Unsupported("BatchNormalization spatial=0: per-element statistics")
        if not 2 <= inputs[0].ndim <= 4:
            raise Unsupported(f"non-2-D spatial: rank-{inputs[0].ndim} BatchNormalization")
    for arr in [a for a in inputs if a is not None] + list(expected):
        if arr.dtype != np.float32:
            raise Unsupported(f"non-float32 dtype: {arr.dtype}")


def _padding(attrs):
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        t, l, b, r = attrs.get("pads", (0, 0, 0, 0))
        return ((t, b), (l, r))
    modes = {"VALID": "valid", "SAME_UPPER": "same_upper", "SAME_LOWER": "same_lower"}
    if auto_pad not in modes:
        raise ValueError(f"invalid auto_pad {auto_pad!r}")
    return modes[auto_pad]


def _pair(attrs, key, default=(1, 1)):
    return tuple(attrs.get(key, default))


def run_node(node, opset, inputs):
    """Evaluate `node` on `inputs` (list in node-input order, None for an omitted optional input).

    Returns (outputs, reduction_length): the list of computed outputs and the longest sum that
    produces one output element, for scaling the comparison tolerance.
    """
    op, attrs = node.op_type, attributes(node)
    x = inputs[0]
    if op == "Conv":
        w = inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != w.shape[2:]:
            raise ValueError(f"kernel_shape {attrs['kernel_shape']} != weight {w.shape}")
        y = F.conv2d(x, w, b, stride=_pair(attrs, "strides"), padding=_padding(attrs),
                     dilation=_pair(attrs, "dilations"), groups=attrs.get("group", 1))
        return [y], w.shape[1] * w.shape[2] * w.shape[3]
    if op in ("MaxPool", "AveragePool"):
        kernel = tuple(attrs["kernel_shape"])
        common = dict(kernel_size=kernel, stride=_pair(attrs, "strides"),  # ONNX default 1
                      padding=_padding(attrs), dilation=_pair(attrs, "dilations"),
                      ceil_mode=bool(attrs.get("ceil_mode", 0)))
        if op == "MaxPool":
            y = F.max_pool2d(x, **common)
        else:
            y = F.avg_pool2d(x, count_include_pad=bool(attrs.get("count_include_pad", 0)),
                             **common)
        return [y], math.prod(kernel)
    if op == "GlobalAveragePool":
        return [F.global_avg_pool2d(x)], x.shape[2] * x.shape[3]
    if op == "GlobalMaxPool":
        return [F.global_max_pool2d(x)], 1
    if op == "LRN":
        y = F.lrn(x, attrs["size"], alpha=attrs.get("alpha", 1e-4), beta=attrs.get("beta", 0.75),
                  k=attrs.get("bias", 1.0))
        return [y], attrs["size"]
    if op == "BatchNormalization":
        scale, bias, mean, var = inputs[1:5]
        y = F.batch_norm(x, mean, var, gamma=scale, beta=bias, eps=attrs.get("epsilon", 1e-5))
        return [y], 1
    if op == "Gemm":
        a = x.T if attrs.get("transA", 0) else x  # views: fastconv must handle the strides
        b = inputs[1].T if attrs.get("transB", 0) else inputs[1]
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        if alpha != 1.0:
            a = a * np.float32(alpha)  # keeps a's (transposed) memory order
        c = inputs[2] if len(inputs) > 2 else None
        if c is not None and beta != 1.0:
            c = c * np.float32(beta)
        return [F.gemm(a, b, bias=c)], a.shape[1]
    if op == "Relu":
        return [F.relu(x)], 1
    if op == "Softmax":
        if opset >= 13:
            axis = attrs.get("axis", -1)
            return [F.softmax(x, axis=axis)], x.shape[axis]
        # Opsets 1-12: coerce to 2-D at `axis` (default 1) and normalise each row.
        axis = attrs.get("axis", 1) % x.ndim
        rows = x.reshape(math.prod(x.shape[:axis]), -1)
        return [F.softmax(rows, axis=-1).reshape(x.shape)], rows.shape[1]
    if op == "Concat":
        return [F.concat(list(inputs), axis=attrs["axis"])], 1
    if op == "Add":
        return [F.add(x, inputs[1])], 1
    if op == "Flatten":
        return [F.flatten(x, axis=attrs.get("axis", 1))], 1
    raise AssertionError(f"no mapping for {op}")


def node_inputs(node, values):
    return [values[name] if name else None for name in node.input]
