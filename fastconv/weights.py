"""The native weight file: safetensors (no code runs on load; memory-mappable).

Each tensor is keyed ``<layer name>/<weight name>`` (``layer1.0.conv1/kernel``); layer names may
contain dots and slashes, weight names never do. The file's metadata (string to string) holds:

- ``format``: ``fastconv``, and ``format_version``;
- ``fastconv_version``: the version that wrote it;
- ``architecture``: the model's ``get_config()`` as JSON (``Model.save`` only), so that
  ``fastconv.load`` rebuilds the model without any code;
- ``info``: JSON of ``model.info``: where the weights come from (``source``), the input
  preprocessing (``preprocessing``) and the class names (``labels``), when known.

Loading checks every name and shape and reports all mismatches at once, before changing any
weight.
"""
import json
import os

import numpy as np

from ._version import __version__

FORMAT_VERSION = "1"


def _safetensors():
    try:
        from safetensors import safe_open
        from safetensors.numpy import save_file
    except ImportError:  # a core dependency, but say what to do if it went missing
        raise ImportError("fastconv weight files need the `safetensors` package: "
                          "pip install safetensors") from None
    return safe_open, save_file


def weight_key(layer_name, weight_name):
    return f"{layer_name}/{weight_name}"


def model_tensors(model):
    """{key: array} of every weight of the model."""
    return {weight_key(layer.name, name): np.ascontiguousarray(array)
            for layer in model.layers for name, array in layer.weights.items()}


def write(path, tensors, metadata):
    _, save_file = _safetensors()
    header = {"format": "fastconv", "format_version": FORMAT_VERSION, "fastconv_version": __version__}
    save_file(tensors, os.fspath(path), metadata={**header, **metadata})


def read(path):
    """(tensors, metadata) of a safetensors file; a clear error for a missing or damaged file."""
    safe_open, _ = _safetensors()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file at {path!r}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path!r} is not a readable safetensors file: {err}") from None
    return tensors, metadata


def check_against(model, tensors, path):
    """Raises one ValueError listing every missing, unexpected and mis-shaped tensor."""
    expected = {key: array.shape for key, array in model_tensors(model).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{key}: expected {expected[key]}, file has {tuple(tensors[key].shape)}"
             for key in sorted(set(expected) & set(tensors))
             if tuple(tensors[key].shape) != expected[key]]
    wrong += [f"{key}: dtype {tensors[key].dtype} is not a real number type"
              for key in sorted(set(expected) & set(tensors)) if tensors[key].dtype.kind not in "fiu"]
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
               ([f"unexpected: {', '.join(unexpected)}"] if unexpected else []) + wrong
    if problems:
        raise ValueError(f"{os.fspath(path)!r} does not fit {model.label}:\n  " + "\n  ".join(problems))


def assign(model, tensors):
    """Sets every layer's weights from checked ``tensors``."""
    for layer in model.layers:
        if layer.weights:
            layer.set_weights({name: tensors[weight_key(layer.name, name)] for name in layer.weights})


def save_weights(model, path):
    write(path, model_tensors(model), {"info": json.dumps(model.info)})


def load_weights(model, path):
    tensors, metadata = read(path)
    check_against(model, tensors, path)
    assign(model, tensors)
    if "info" in metadata:
        model.info = {**model.info, **_json(metadata["info"], path, "info")}


def save(model, path):
    architecture = {"class_name": type(model).__name__, "config": model.get_config()}
    write(path, model_tensors(model),
          {"architecture": json.dumps(architecture), "info": json.dumps(model.info)})


def load(path):
    """The model saved by ``Model.save``: architecture, weights and info, with no code run.

    >>> import fastconv
    >>> fastconv.models.lenet5().save("lenet5.safetensors")  # doctest: +SKIP
    >>> fastconv.load("lenet5.safetensors").count_params()  # doctest: +SKIP
    61706
    """
    from .model import Model, Sequential

    tensors, metadata = read(path)
    if metadata.get("format") != "fastconv" or "architecture" not in metadata:
        raise ValueError(f"{os.fspath(path)!r} holds no fastconv architecture (write it with "
                         f"model.save; for a weights-only file use model.load_weights)")
    architecture = _json(metadata["architecture"], path, "architecture")
    try:
        cls = {"Model": Model, "Sequential": Sequential}[architecture["class_name"]]
        model = cls.from_config(architecture["config"])
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"{os.fspath(path)!r}: the architecture is damaged: {err!r}") from None
    except ValueError as err:  # a layer refused its config, or weights beyond the memory
        raise ValueError(f"{os.fspath(path)!r}: the architecture is damaged: {err}") from None
    check_against(model, tensors, path)
    assign(model, tensors)
    model.info = _json(metadata.get("info", "{}"), path, "info")
    return model.prepare()


def _json(text, path, field):
    """The JSON object (a dict) in the ``field`` metadata."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{os.fspath(path)!r}: the {field} metadata is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{os.fspath(path)!r}: the {field} metadata holds a "
                         f"{type(value).__name__}, not a JSON object")
    return value
