"""Keras HDF5 files into fastconv models.

Three containers are read, all with h5py (which never unpickles anything) or as plain JSON:

- Keras 1/2 HDF5 (``save_weights``, ``save``, the fchollet deep-learning-models and
  keras.applications weight files; also Keras 3's legacy ``model.save("x.h5")``): the attribute
  ``layer_names`` lists the layers in order, each layer group's ``weight_names`` lists its
  datasets (``block1_conv1/kernel:0``). Full-model files put this under a ``model_weights`` group
  and keep the architecture as JSON in the root attribute ``model_config``.
- Keras 3 ``.weights.h5``: ``layers/<class name>[_<n>]/vars/0..k``; the group key counts layers of
  one class in model order, and recent Keras writes the layer's own name as the ``vars`` group's
  ``name`` attribute. No architecture.
- Keras 3 ``.keras`` (a zip): ``config.json`` (the architecture) and ``model.weights.h5`` as above.

Layouts: Keras kernels are HWIO (kh, kw, in, out), Dense kernels (in, out), activations
channels_last, and Flatten flattens (H, W, C). Converting into a channels_first fastconv model
transposes kernels to OIHW, Dense kernels to (out, in), and permutes the input columns of a Dense
fed by a Flatten of a spatial map from (H, W, C) to (C, H, W) order. Into a channels_last fastconv
model only the Dense kernels are transposed.
"""
import io
import json
import mmap
import os
import re
import zipfile
import zlib

import numpy as np

from ..functional import check_memory

SUPPORTED_CLASSES = ("Activation", "Add", "AveragePooling2D", "BatchNormalization", "Concatenate",
                     "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAveragePooling2D",
                     "InputLayer", "MaxPooling2D", "ReLU", "Softmax", "ZeroPadding2D")
_ACTIVATIONS = {"linear": None, "relu": "relu", "relu6": "relu6", "tanh": "tanh",
                "sigmoid": "sigmoid", "softmax": "softmax"}
# Keras 3 .weights.h5 group keys are snake_case class names: the classes with weights we convert.
_KERAS3_KINDS = {"conv2d": "Conv2D", "dense": "Dense", "batch_normalization": "BatchNormalization"}
_BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
KERAS_BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default
# What h5py raises when the structure of a file is damaged: OSError, KeyError and RuntimeError
# from the HDF5 library, TypeError and AttributeError where an object has an unexpected kind.
_DAMAGED_HDF5 = (OSError, KeyError, RuntimeError, TypeError, AttributeError, IndexError)


class KerasLayer:
    """One layer of a Keras file: its name (None if the file does not say), its class when known
    (``kind``), and its weight arrays in file order with their roles (``kernel``, ``gamma``,
    ...; None where the file gives only positions)."""

    def __init__(self, name, kind, arrays, roles):
        self.name, self.kind, self.arrays, self.roles = name, kind, arrays, roles

    def describe(self):
        shapes = ", ".join(str(a.shape) for a in self.arrays)
        return f"Keras {self.kind or 'layer'} {self.name!r} [{shapes}]"


class KerasFile:
    """What ``read_keras_file`` found: the layers (in file order), the architecture config
    (a dict, or None for weights-only files) and the file's format."""

    def __init__(self, path, layers, config, layout, keras_version=None):
        self.path, self.layers, self.config = path, layers, config
        self.layout, self.keras_version = layout, keras_version

    @property
    def weighted(self):
        return [layer for layer in self.layers if layer.arrays]


# Reading files ---------------------------------------------------------------------------------

def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras .h5 files needs h5py: pip install h5py "
                          "(or pip install 'fastconv[keras]')") from None
    return h5py


def read_keras_file(path):
    """The layers, weights and architecture of a Keras ``.h5``, ``.weights.h5`` or ``.keras``
    file, as a ``KerasFile``. Nothing in the file is executed or unpickled.

    >>> f = read_keras_file("Model1.h5")  # doctest: +SKIP
    >>> [(layer.name, [a.shape for a in layer.arrays]) for layer in f.weighted][0]  # doctest: +SKIP
    ('block1_conv1', [(5, 5, 1, 4), (4,)])
    """
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Keras file at {path!r}")
    if zipfile.is_zipfile(path):
        return _read_keras_zip(path, h5py)
    if os.path.getsize(path):
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check_global_heaps(data, path)
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable HDF5 file (truncated, damaged or another "
                         f"format): {err}") from None
    with handle:
        return _read_damaged_as_value_error(_read_h5, handle, path)


def _check_global_heaps(data, path):
    """Refuses a file with a global heap collection that HDF5 would read forever.

    HDF5 keeps variable-length strings (a ``model_config`` among them) in global heap
    collections: "GCOL", version 1, 3 reserved bytes, the collection's size (8 bytes), then
    objects of a 16-byte header (index, references, reserved, size) and 8-byte aligned data;
    object 0 is the free space and its size spans its header. HDF5's reader steps by each
    object's size, so a free-space object of size 0 keeps it in place with the GIL held (found
    by tests/test_fuzz_files.py). This walks every collection as HDF5 does, before h5py
    touches the file."""
    start = data.find(b"GCOL")
    while start >= 0:
        if start + 16 <= len(data) and data[start + 4] == 1:
            end = min(start + int.from_bytes(data[start + 8:start + 16], "little"), len(data))
            position = start + 16
            while position + 16 <= end:
                index = int.from_bytes(data[position:position + 2], "little")
                size = int.from_bytes(data[position + 8:position + 16], "little")
                step = size if index == 0 else 16 + -(-size // 8) * 8
                if step == 0:
                    raise ValueError(f"{path!r}: damaged HDF5 global heap at byte {position} (a "
                                     f"free-space object of size 0, which HDF5 would read forever)")
                position += step
        start = data.find(b"GCOL", start + 4)


def _read_damaged_as_value_error(read, handle, path, *args):
    """``read(handle, path, *args)``, with h5py's errors about a damaged file as ValueError."""
    try:
        return read(handle, path, *args)
    except _DAMAGED_HDF5 as err:
        raise ValueError(f"{path!r}: damaged HDF5 structure ({type(err).__name__}: {err})") from None


def _read_h5(handle, path, config=None):
    if "layer_names" in handle.attrs or "model_weights" in handle:
        return _read_legacy(handle, path)
    if "layers" in handle:
        return _read_keras3(handle, path, config)
    raise ValueError(f"{path!r} is HDF5 but holds no Keras weights (no 'layer_names' attribute, "
                     f"'model_weights' group or Keras 3 'layers' group)")


def _read_keras_zip(path, h5py):
    """A Keras 3 ``.keras`` archive: JSON config plus a ``.weights.h5`` inside the zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = _json(_archive_member(archive, "config.json", path), path, "config.json")
            weights = _archive_member(archive, "model.weights.h5", path)
    except (KeyError, OSError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path!r} is a zip but not a readable .keras archive (needs "
                         f"config.json and model.weights.h5): {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path!r}: config.json holds a {type(config).__name__}, not a model "
                         f"config (a JSON object)")
    _check_global_heaps(weights, path)
    try:
        handle = h5py.File(io.BytesIO(weights), "r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r}: model.weights.h5 inside the archive is not readable "
                         f"HDF5: {err}") from None
    with handle:
        return _read_damaged_as_value_error(_read_keras3, handle, path, config)


def _archive_member(archive, name, path):
    """The bytes of one member; its declared size is checked before it is decompressed."""
    check_memory(f"{path!r}: {name}", "the decompressed member",
                 (archive.getinfo(name).file_size,), itemsize=1)
    return archive.read(name)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _string_list(attrs, key):
    """A list-of-strings attribute; Keras splits long ones into ``key0``, ``key1``, ..."""
    if key in attrs:
        values = attrs[key]
    else:
        values, n = [], 0
        while f"{key}{n}" in attrs:
            values.extend(attrs[f"{key}{n}"])
            n += 1
    # An empty list is stored as an empty float array: size 0, no strings.
    return [_text(v) for v in np.asarray(values).reshape(-1)] if np.size(values) else []


def _read_array(group, key, path, layer_name):
    where = f"{path!r}: layer {layer_name!r}: weight {key!r}"
    try:
        dataset = group[key]
        if not hasattr(dataset, "dtype") or dataset.dtype.kind not in "fiu":
            raise ValueError(f"holds {getattr(dataset, 'dtype', type(dataset).__name__)}, not "
                             f"real numbers")
        check_memory(where, "its declared shape", dataset.shape, itemsize=dataset.dtype.itemsize)
        return np.asarray(dataset[()])
    except (KeyError, OSError, ValueError) as err:
        if str(err).startswith(where):
            raise
        raise ValueError(f"{where} cannot be read (truncated or damaged file?): {err}") from None


def _read_legacy(handle, path):
    root = handle["model_weights"] if "model_weights" in handle else handle
    backend = _text(handle.attrs.get("backend", root.attrs.get("backend", "")))
    if backend == "theano":
        raise ValueError(f"{path!r} was written by the Theano backend, whose convolution kernels "
                         f"are flipped; convert it with Keras first (convert_all_kernels_in_model)")
    config = None
    if "model_config" in handle.attrs:
        config = _json(handle.attrs["model_config"], path)
        if not isinstance(config, dict):
            raise ValueError(f"{path!r}: the model_config attribute holds a "
                             f"{type(config).__name__}, not a model config (a JSON object)")
    layers = []
    for name in _string_list(root.attrs, "layer_names"):
        if name not in root:
            raise ValueError(f"{path!r}: layer {name!r} is listed in layer_names but has no "
                             f"group (truncated or damaged file?)")
        weight_names = _string_list(root[name].attrs, "weight_names")
        arrays = [_read_array(root[name], key, path, name) for key in weight_names]
        roles = [_role(key) for key in weight_names]
        layers.append(KerasLayer(name, None, arrays, roles))
    version = _text(handle.attrs.get("keras_version", root.attrs.get("keras_version", ""))) or None
    return _with_kinds(KerasFile(path, layers, config, "keras2", version))


def _role(weight_name):
    """``block1_conv1/kernel:0`` -> ``kernel``; Keras 1 ``conv1_W`` -> None (use positions)."""
    role = weight_name.rsplit("/", 1)[-1].split(":")[0]
    return role if role in ("kernel", "bias") + _BN_ROLES else None


def _json(text, path, what="the model_config attribute"):
    try:
        return json.loads(_text(text))
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path!r}: {what} is not valid JSON: {err}") from None


def _read_keras3(handle, path, config):
    records = []
    for key in handle["layers"]:
        group = handle["layers"][key]
        if "layers" in group:
            raise ValueError(f"{path!r}: layer group {key!r} is a nested model; fastconv converts "
                             f"flat models only")
        kind_key, index = re.fullmatch(r"(.*?)(?:_(\d+))?", key).groups()
        variables = group["vars"] if "vars" in group else {}
        name = _text(variables.attrs["name"]) if hasattr(variables, "attrs") and \
            "name" in variables.attrs else None
        arrays = [_read_array(variables, str(i), path, name or key) for i in range(len(variables))]
        kind = _KERAS3_KINDS.get(kind_key)
        if arrays and kind is None:
            raise ValueError(f"{path!r}: layer {name or key!r} ({kind_key}) has weights but is not "
                             f"a class fastconv converts ({', '.join(SUPPORTED_CLASSES)})")
        records.append((kind_key, int(index or 0), KerasLayer(name, kind, arrays,
                                                              [None] * len(arrays))))
    # Group keys count per class in model order; h5py lists them alphabetically (conv2d_10
    # before conv2d_2), so sort by the number.
    records.sort(key=lambda r: (r[0], r[1]))
    layers = [layer for _, _, layer in records]
    if config is not None:
        _name_by_config_order(layers, records, config)
    return _with_kinds(KerasFile(path, layers, config, "keras3"))


def _name_by_config_order(layers, records, config):
    """Files from Keras versions that do not store names: the n-th group of a class is the n-th
    layer of that class in the config."""
    by_kind = {}
    for entry in _config_layers(config):
        by_kind.setdefault(_snake_case(str(entry.get("class_name"))), []).append(_layer_name(entry))
    for kind_key, index, layer in records:
        names = by_kind.get(kind_key, [])
        if layer.name is None and index < len(names):
            layer.name = names[index]


def _snake_case(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _with_kinds(keras_file):
    """Fills each layer's class from the config when the file has one."""
    if keras_file.config is not None:
        classes = {_layer_name(e): e.get("class_name") for e in _config_layers(keras_file.config)}
        for layer in keras_file.layers:
            layer.kind = classes.get(layer.name, layer.kind)
    return keras_file


# Architecture from a Keras config ---------------------------------------------------------------

def _config_layers(config):
    """The layer entries (dicts) of a model config; the builders report malformed ones."""
    inner = config.get("config", config) if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    return [entry for entry in layers if isinstance(entry, dict)] if isinstance(layers, list) else []


def _layer_name(entry):
    """The layer's name (a string), or None if the entry has none."""
    config = entry.get("config")
    name = (config.get("name") if isinstance(config, dict) else None) or entry.get("name")
    return name if isinstance(name, str) else None


def model_from_keras_config(config, data_format="channels_first", input_shape=None,
                            source="the Keras config"):
    """A fastconv Model (random weights) with the architecture of a Keras model config (the
    ``model_config`` JSON of a ``.h5`` file or ``config.json`` of a ``.keras`` file, as a dict).

    ``data_format`` is the fastconv model's; ``input_shape`` (H, W, C), Keras order, fills in
    sizes the config leaves open. Layer names are kept. Classes outside ``SUPPORTED_CLASSES``
    (``Lambda`` among them: it holds code) are errors naming the layer.

    >>> config = {"class_name": "Sequential", "config": {"name": "tiny", "layers": [
    ...     {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 4]}},
    ...     {"class_name": "Dense", "config": {"name": "out", "units": 2}}]}}
    >>> model_from_keras_config(config).get_layer("out").weights["kernel"].shape
    (2, 4)
    """
    from ..model import Model

    class_name = config.get("class_name")
    entries = _config_layers(config)
    if class_name == "Sequential":
        inputs, outputs = _build_sequential(entries, config, data_format, input_shape, source)
    elif class_name in ("Model", "Functional"):
        inputs, outputs = _build_functional(entries, config["config"], data_format, input_shape,
                                            source)
    else:
        raise ValueError(f"{source}: the model is a Keras {class_name!r}; fastconv converts "
                         f"'Sequential', 'Model' and 'Functional' configs")
    inner = config.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    try:
        return Model(inputs, outputs, name=name or None)
    except ValueError as err:  # e.g. weights larger than the machine's memory
        raise ValueError(f"{source}: {err}") from None


def _build_sequential(entries, config, data_format, input_shape, source):
    from ..layers import Input

    first = entries[0] if entries else {}
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    shape = _batch_shape(first.get("config", {})) or inner.get("build_input_shape")
    x = inputs = Input(_input_shape(shape, input_shape, data_format, source, _layer_name(first)),
                       name=_layer_name(first) if first.get("class_name") == "InputLayer"
                       else None, data_format=data_format)
    for entry in entries:
        if entry.get("class_name") != "InputLayer":
            x = _call(_make_layer(entry, source), [x], entry, source)
    return inputs, x


def _build_functional(entries, inner, data_format, input_shape, source):
    from ..layers import Input

    tensors = {}
    for entry in entries:
        name = _layer_name(entry)
        if entry.get("class_name") == "InputLayer":
            shape = _input_shape(_batch_shape(entry["config"]), input_shape, data_format, source,
                                 name)
            tensors[name] = Input(shape, name=name, data_format=data_format)
            continue
        inbound = _inbound_names(entry, source)
        missing = [n for n in inbound if n not in tensors]
        if missing:
            raise ValueError(f"{source}: layer {name!r} reads {missing}, which no earlier layer "
                             f"of the config produces")
        tensors[name] = _call(_make_layer(entry, source), [tensors[n] for n in inbound], entry,
                              source)
    inputs = [tensors[n] for n in _endpoint_names(inner.get("input_layers"))]
    outputs = [tensors[n] for n in _endpoint_names(inner.get("output_layers"))]
    return inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0]


def _call(layer, tensors, entry, source):
    try:
        return layer(tensors if layer.merges else tensors[0])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: layer {_layer_name(entry)!r} ({entry['class_name']}) does "
                         f"not fit its input: {err}") from None


def _batch_shape(layer_config):
    return layer_config.get("batch_shape") or layer_config.get("batch_input_shape")


def _input_shape(batch_shape, override, data_format, source, name):
    """fastconv's per-sample input shape from a Keras (None, H, W, C) batch shape (or the
    caller's (H, W, C)): (C, H, W) for a channels_first model."""
    shape = tuple(override) if override is not None else \
        (tuple(batch_shape[1:]) if batch_shape else None)
    if not shape or any(s is None for s in shape):
        raise ValueError(f"{source}: input {name!r} has shape {shape} with unknown sizes; pass "
                         f"input_shape=(H, W, C)")
    if len(shape) == 3 and data_format == "channels_first":
        return (shape[2], shape[0], shape[1])
    return shape


def _endpoint_names(endpoints):
    """[["input_1", 0, 0], ...] or one ["input_1", 0, 0] -> ["input_1", ...]."""
    if not endpoints:
        return []
    if isinstance(endpoints[0], str):
        return [endpoints[0]]
    return [e[0] for e in endpoints]


def _inbound_names(entry, source):
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ValueError(f"{source}: layer {_layer_name(entry)!r} is called {len(nodes)} times "
                         f"(a shared layer); fastconv calls each layer once")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [tensor or [tensors]], "kwargs": {}}
        return [h[0] for h in _keras_histories(node.get("args", []))]
    return [item[0] for item in node]  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]


def _keras_histories(value):
    if isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if \
            value.get("class_name") == "__keras_tensor__" else None
        return [history] if history else []
    if isinstance(value, list):
        return [h for item in value for h in _keras_histories(item)]
    return []


# One layer ------------------------------------------------------------------------------------

def _make_layer(entry, source):
    class_name, cfg = entry.get("class_name"), entry.get("config", {})
    name = _layer_name(entry)
    if class_name == "Lambda":
        raise ValueError(f"{source}: layer {name!r} is a Keras Lambda, which holds Python code; "
                         f"fastconv never runs or unpickles code from a file")
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise ValueError(f"{source}: layer {name!r} is a Keras {class_name}, which fastconv "
                         f"cannot convert (supported: {', '.join(SUPPORTED_CLASSES)})")
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"{source}: layer {name!r} ({class_name}) is channels_first; fastconv "
                         f"converts channels_last Keras models (the Keras default)")
    try:
        return builder(cfg, name)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: layer {name!r} ({class_name}): {err}") from None


def _activation(value):
    if isinstance(value, dict):  # some Keras versions serialise activations as dicts
        value = value.get("config", value.get("class_name"))
    if value is None:
        return None
    if value not in _ACTIVATIONS:
        raise ValueError(f"activation {value!r} is not supported (supported: "
                         f"{', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[value]


def _padding(value):
    if value not in ("valid", "same"):
        raise ValueError(f"padding {value!r} is not supported ('valid' or 'same')")
    return value


def _pair(value):
    """JSON gives lists where fastconv takes tuples; ints stay ints."""
    return tuple(value) if isinstance(value, list) else value


def _conv2d(cfg, name):
    from ..layers import Conv2D
    return Conv2D(cfg["filters"], _pair(cfg["kernel_size"]), strides=_pair(cfg.get("strides", 1)),
                  padding=_padding(cfg.get("padding", "valid")),
                  dilation=_pair(cfg.get("dilation_rate", 1)), groups=cfg.get("groups", 1),
                  activation=_activation(cfg.get("activation")),
                  use_bias=cfg.get("use_bias", True), name=name)


def _dense(cfg, name):
    from ..layers import Dense
    return Dense(cfg["units"], activation=_activation(cfg.get("activation")),
                 use_bias=cfg.get("use_bias", True), name=name)


def _pool_args(cfg):
    pool = _pair(cfg.get("pool_size", (2, 2)))
    strides = cfg.get("strides")
    return pool, (_pair(strides) if strides else pool), _padding(cfg.get("padding", "valid"))


def _max_pool(cfg, name):
    from ..layers import MaxPool2D
    pool, strides, padding = _pool_args(cfg)
    return MaxPool2D(pool, strides=strides, padding=padding, name=name)


def _avg_pool(cfg, name):
    from ..layers import AvgPool2D
    pool, strides, padding = _pool_args(cfg)
    # TensorFlow's "same" average pooling divides by the real (unpadded) positions.
    return AvgPool2D(pool, strides=strides, padding=padding, count_include_pad=False, name=name)


def _global_avg_pool(cfg, name):
    from ..layers import GlobalAveragePooling2D
    return GlobalAveragePooling2D(keepdims=cfg.get("keepdims", False), name=name)


def _flatten(cfg, name):
    from ..layers import Flatten
    return Flatten(name=name)


def _dropout(cfg, name):
    from ..layers import Dropout
    return Dropout(cfg.get("rate", 0.0), name=name)


def _activation_layer(cfg, name):
    from ..layers import Activation
    return Activation(_activation(cfg.get("activation")) or "linear", name=name)


def _relu(cfg, name):
    from ..layers import ReLU, ReLU6
    if cfg.get("negative_slope") or cfg.get("threshold"):
        raise ValueError("ReLU with negative_slope or threshold is not supported")
    max_value = cfg.get("max_value")
    if max_value is None:
        return ReLU(name=name)
    if float(max_value) == 6.0:
        return ReLU6(name=name)
    raise ValueError(f"ReLU max_value={max_value} is not supported (None or 6)")


def _channel_axis(axis):
    """Keras channels_last axes that mean "the channel axis": -1, or 3 on images."""
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, 3):
        raise ValueError(f"axis={axis!r} is not supported (only the channel axis, -1)")
    return -1


def _softmax(cfg, name):
    from ..layers import Softmax
    return Softmax(_channel_axis(cfg.get("axis", -1)), name=name)


def _concatenate(cfg, name):
    from ..layers import Concatenate
    return Concatenate(_channel_axis(cfg.get("axis", -1)), name=name)


def _add(cfg, name):
    from ..layers import Add
    return Add(name=name)


def _batch_norm(cfg, name):
    from ..layers import BatchNormalization
    _channel_axis(cfg.get("axis", -1))
    return BatchNormalization(epsilon=cfg.get("epsilon", KERAS_BN_EPSILON), name=name)


def _zero_padding(cfg, name):
    from ..layers import ZeroPadding2D
    padding = cfg.get("padding", 1)
    if isinstance(padding, (list, tuple)):
        padding = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in padding)
    return ZeroPadding2D(padding, name=name)


_BUILDERS = {"Conv2D": _conv2d, "Dense": _dense, "MaxPooling2D": _max_pool,
             "AveragePooling2D": _avg_pool, "GlobalAveragePooling2D": _global_avg_pool,
             "Flatten": _flatten, "Dropout": _dropout, "Activation": _activation_layer,
             "BatchNormalization": _batch_norm, "ZeroPadding2D": _zero_padding, "Add": _add,
             "Concatenate": _concatenate, "ReLU": _relu, "Softmax": _softmax}


# Matching file layers to model layers ---------------------------------------------------------

def match_layers(keras_file, model):
    """[(fastconv layer, KerasLayer, how)] for every fastconv layer with weights: ``how`` is
    "name" when every weighted layer name of the model is a weighted layer of the file, else
    "order" (file order; for Keras 3 weights files, order within each class, since their group
    keys count per class). Raises ValueError naming the file when the counts differ."""
    ours = [layer for layer in model.layers if layer.weights]
    theirs = keras_file.weighted
    by_name = {layer.name: layer for layer in theirs if layer.name}
    if {layer.name for layer in ours} <= set(by_name) and len(ours) == len(theirs):
        return [(layer, by_name[layer.name], "name") for layer in ours]
    if keras_file.layout == "keras3" and not all(layer.name for layer in theirs):
        return _match_per_class(ours, theirs, keras_file.path)
    if len(ours) != len(theirs):
        raise ValueError(_count_message(keras_file.path, model, ours, theirs))
    return [(mine, other, "order") for mine, other in zip(ours, theirs)]


def _match_per_class(ours, theirs, path):
    pairs = []
    for kind in sorted({type(layer).__name__ for layer in ours} | {t.kind for t in theirs}):
        mine = [layer for layer in ours if type(layer).__name__ == kind]
        other = [layer for layer in theirs if layer.kind == kind]
        if len(mine) != len(other):
            raise ValueError(f"{path!r}: the model has {len(mine)} {kind} layers with weights, "
                             f"the file {len(other)}")
        pairs += list(zip(mine, other, ["order"] * len(mine)))
    position = {id(layer): i for i, layer in enumerate(ours)}
    return sorted(pairs, key=lambda pair: position[id(pair[0])])


def _count_message(path, model, ours, theirs):
    return (f"{path!r}: layer names differ from {model.label}'s and the number of layers with "
            f"weights differs, so they cannot be matched by order either: the model has "
            f"{len(ours)} ({', '.join(l.label for l in ours)}), the file {len(theirs)} "
            f"({', '.join(repr(t.name) for t in theirs)})")


def mapping_report(pairs):
    """One line per matched layer: fastconv layer <- Keras layer (how matched)."""
    return "\n".join(f"{mine.label} <- {other.describe()} (by {how})" for mine, other, how in pairs)


# Converting weights ----------------------------------------------------------------------------

def _bn_roles(keras_layer, keras_config):
    """Roles of a BatchNormalization's arrays: named in Keras 2 files; by position in Keras 3
    files (gamma, beta, moving_mean, moving_variance, minus the ones ``scale=False`` and
    ``center=False`` leave out, which only the config tells). None where it cannot be told."""
    if all(keras_layer.roles):
        return keras_layer.roles
    count = len(keras_layer.arrays)
    if keras_config is None and count == 3:
        return [None] * count  # no gamma, or no beta: a weights-only file does not say which
    cfg = keras_config or {}
    roles = [r for r in _BN_ROLES if (r != "gamma" or cfg.get("scale", True))
             and (r != "beta" or cfg.get("center", True))]
    return roles if len(roles) == count else [None] * count


def _flattened_map_shape(dense):
    """(C, H, W) when ``dense`` reads a Flatten of a channels_first spatial map (through
    Dropout/Activation layers), else None: the case whose input columns Keras orders (H, W, C)."""
    from ..layers import Activation, Dropout, Flatten

    tensor = dense.output.inbound[0] if getattr(dense, "output", None) is not None else None
    while tensor is not None and isinstance(tensor.layer, (Dropout, Activation)):
        tensor = tensor.inbound[0]
    if tensor is None or not isinstance(tensor.layer, Flatten):
        return None
    source = tensor.inbound[0]
    if source.data_format != "channels_first" or len(source.sample_shape) != 3 or \
            source.sample_shape[1:] == (1, 1):
        return None
    return source.sample_shape


def _dense_kernel(kernel, dense):
    """Keras (in, out) -> fastconv (out, in), in (C, H, W) column order after a Flatten."""
    shape = _flattened_map_shape(dense)
    if shape is not None and kernel.ndim == 2 and kernel.shape[0] == int(np.prod(shape)):
        channels, height, width = shape
        kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
        kernel = kernel.reshape(channels * height * width, -1)
    return kernel.T


def _converted(mine, other, keras_config):
    """{weight name: array} in ``mine``'s layout, or a problem string."""
    kind = type(mine).__name__
    if other.kind is not None and other.kind != kind:
        return f"is a Keras {other.kind}, the fastconv layer a {kind}"
    arrays = other.arrays
    if kind in ("Conv2D", "Dense"):
        if len(arrays) != len(mine.weights):
            return (f"has {len(arrays)} arrays; {mine.label} expects {len(mine.weights)} "
                    f"({', '.join(mine.weights)})")
        kernel = arrays[0]
        if kind == "Conv2D" and mine.data_format == "channels_first" and kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif kind == "Dense":
            kernel = _dense_kernel(kernel, mine)
        return dict(zip(mine.weights, [kernel] + list(arrays[1:])))
    if kind == "BatchNormalization":
        roles = _bn_roles(other, keras_config)
        if None in roles:
            return (f"has {len(arrays)} arrays and the file has no config to say which of gamma "
                    f"(scale=False) or beta (center=False) is absent; convert the .keras or .h5 "
                    f"file that holds the config")
        values = dict(zip(roles, arrays))
        channels = arrays[-1].shape
        values.setdefault("gamma", np.ones(channels, np.float32))  # scale=False
        values.setdefault("beta", np.zeros(channels, np.float32))  # center=False
        return values
    return f"{mine.label} is a {kind}, which has no Keras counterpart"


def _problems(pairs, keras_file):
    """Every mismatch of class, array count, shape or epsilon, as lines naming both layers."""
    configs = {_layer_name(e): e["config"] for e in _config_layers(keras_file.config)
               if isinstance(e.get("config"), dict)}
    converted, problems = {}, []
    for mine, other, _ in pairs:
        keras_config = configs.get(other.name) if other.name in configs else None
        values = _converted(mine, other, keras_config)
        where = f"{other.describe()} -> {mine.label}"
        if isinstance(values, str):
            problems.append(f"{where}: {values}")
            continue
        problems += [f"{where}: weight '{name}' has shape {tuple(values[name].shape)} (after "
                     f"conversion), the model expects {tuple(mine.weights[name].shape)}"
                     for name in mine.weights if values[name].shape != mine.weights[name].shape]
        epsilon = keras_config.get("epsilon") if keras_config else None
        if epsilon is not None and (not isinstance(epsilon, (int, float)) or
                                    not np.isclose(mine.epsilon, epsilon, rtol=1e-6, atol=0)):
            problems.append(f"{where}: epsilon is {keras_config['epsilon']} in the file, "
                            f"{mine.epsilon} in the model")
        converted[id(mine)] = values
    return converted, problems


def _assign(model, pairs, keras_file):
    converted, problems = _problems(pairs, keras_file)
    if problems:
        raise ValueError(f"{keras_file.path!r} does not fit {model.label}:\n  " +
                         "\n  ".join(problems))
    for mine, _, _ in pairs:
        mine.set_weights({name: converted[id(mine)][name] for name in mine.weights})


# The converter -----------------------------------------------------------------------------

def from_keras(path, model=None, arch=None, *, data_format="channels_first", input_shape=None,
               preprocessing=None, print_fn=None, verify=False, **options):
    """A fastconv model holding the weights of a Keras file (``.h5``, ``.weights.h5``,
    ``.keras``).

    The architecture is ``model`` (a fastconv Model you built), the zoo's ``arch`` built with
    ``options``, or else the file's own config (``model.save`` files), built as a
    ``data_format`` model (channels_first by default; ``input_shape`` (H, W, C) fills in open
    sizes). Layers are matched by name when the names agree, else by order of the layers with
    weights; ``print_fn`` (e.g. ``print``) receives the mapping. Every mismatch is reported in
    one ValueError before any weight changes. ``preprocessing``: the input preparation to record
    in ``model.info`` (a dict, see ``fastconv.preprocess``, or "caffe", "tf" or "torch" for
    keras.applications' modes at the model's input size). ``verify=True`` (a file holding its
    architecture, Keras installed) runs Keras's own model and this one on one random input and
    stores the largest absolute difference in ``model.info["verification"]``.

    >>> model = from_keras("vgg16.h5")                                  # doctest: +SKIP
    >>> model = from_keras("Model1.h5", model=lenet1, print_fn=print)   # doctest: +SKIP
    """
    keras_file = read_keras_file(path)
    model = _architecture(keras_file, model, arch, data_format, input_shape, options)
    pairs = match_layers(keras_file, model)
    if print_fn is not None:
        print_fn(mapping_report(pairs))
    _assign(model, pairs, keras_file)
    model.info["source"] = f"keras:{os.path.basename(keras_file.path)}"
    if keras_file.keras_version:
        model.info["keras_version"] = keras_file.keras_version
    if preprocessing is not None:
        model.info["preprocessing"] = _preprocessing(preprocessing, model)
    if verify:
        model.info["verification"] = _verify(model, keras_file.path)
    return model.prepare()  # plan made now: the first predict costs a steady one


def _verify(model, path):
    """Largest |fastconv - Keras| on one random input (Keras reads the same file)."""
    try:
        import keras
    except ImportError:
        raise ImportError("verify=True needs keras (e.g. pip install keras, KERAS_BACKEND=torch)") from None
    try:
        reference = keras.models.load_model(path, compile=False)
    except Exception as err:
        raise ValueError(f"{path!r}: verify=True needs a file Keras can load as a model "
                         f"(model.save, not save_weights): {err}") from None
    sample = model.inputs[0].sample_shape
    x = np.random.default_rng(0).standard_normal((1,) + sample).astype(np.float32)
    nhwc = np.moveaxis(x, 1, -1) if model.data_format == "channels_first" and len(sample) == 3 else x
    expected = np.asarray(reference.predict(nhwc, verbose=0))
    difference = float(np.abs(model.predict(x) - expected).max())
    return {"reference": f"keras {keras.__version__}", "max_abs_difference": difference,
            "output_scale": float(np.abs(expected).max())}


def _architecture(keras_file, model, arch, data_format, input_shape, options):
    from .. import models
    from ..model import Model

    if model is not None:
        if arch is not None or options or not isinstance(model, Model):
            raise TypeError(f"from_keras: give either `model` (a fastconv Model, no options) or "
                            f"`arch` (a zoo name); received model={model!r}, arch={arch!r}")
        return model
    if arch is not None:
        if arch not in models.__all__:
            raise ValueError(f"from_keras: `arch` must be one of {models.__all__}; received "
                             f"{arch!r}")
        return getattr(models, arch)(**options)
    if options:
        raise TypeError(f"from_keras: unexpected options {sorted(options)} (zoo options need "
                        f"`arch`)")
    if keras_file.config is None:
        raise ValueError(f"{keras_file.path!r} holds weights only (no model config): pass "
                         f"model= (a fastconv model with this architecture) or arch= (a zoo name)")
    try:
        return model_from_keras_config(keras_file.config, data_format, input_shape,
                                       source=repr(keras_file.path))
    except (KeyError, TypeError, AttributeError, IndexError) as err:  # a damaged config
        raise ValueError(f"{keras_file.path!r}: the model config is malformed "
                         f"({type(err).__name__}: {err})") from None


def _preprocessing(preprocessing, model):
    from ..preprocess import keras_imagenet_preprocessing

    if isinstance(preprocessing, dict):
        return dict(preprocessing)
    shape = model.inputs[0].sample_shape
    size = shape[1:] if model.data_format == "channels_first" else shape[:2]
    return keras_imagenet_preprocessing(preprocessing, size=size)
