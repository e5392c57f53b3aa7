"""PyTorch state_dicts into fastconv models.

A state_dict maps module paths to tensors (``layer1.0.conv1.weight``). The zoo names its layers
after torchvision's modules, so the key of a weight is ``<layer name>.<torch parameter name>``;
both frameworks keep convolution kernels OIHW and linear weights (out, in), and flatten NCHW, so
arrays are copied unchanged. Files are read with ``torch.load(..., weights_only=True)``: a file
that would run code is refused by torch, never executed.
"""
import io
import os
from collections.abc import Mapping

import numpy as np

# Torch parameter name -> fastconv weight name, by layer class (default for all others).
_DEFAULT_NAMES = {"weight": "kernel", "bias": "bias"}
_NAMES = {"BatchNormalization": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                                 "running_var": "moving_variance"}}
_IGNORED_SUFFIXES = ("num_batches_tracked",)  # a training counter, not a weight
# Heads that only serve training, which the zoo's inference forms leave out, by model name.
_TRAINING_ONLY = {"googlenet": ("aux1.", "aux2.")}


def read_torch_state_dict(path):
    """The state_dict in a ``.pt``/``.pth`` file (legacy or zip format) or a ``.safetensors``
    file, as name -> array.

    >>> state = read_torch_state_dict("resnet18.pth")  # torch.save(net.state_dict(), ...)  # doctest: +SKIP
    >>> len(state), state["fc.weight"].shape  # doctest: +SKIP
    (122, (1000, 512))
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no PyTorch file at {path!r}")
    if path.endswith(".safetensors"):
        from ..weights import read

        return read(path)[0]
    try:
        import torch
    except ImportError:
        raise ImportError("reading PyTorch files needs torch: pip install torch") from None
    # Anything torch will not open as a zip archive (it looks at the first bytes, as here) goes
    # to its legacy unpickler, which reads each string with file.read(declared length): a file
    # object allocates that length before reading, a BytesIO only what is there.
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    source = path if is_zip else io.BytesIO(_read_bytes(path))
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path!r} cannot be read as a PyTorch state_dict with weights_only=True: "
                         f"{err}") from None
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state_dict (a mapping "
                         f"of names to tensors)")
    try:
        return {key: _to_numpy(key, value) for key, value in state.items()}
    except (TypeError, RuntimeError) as err:  # e.g. a function, or a dtype NumPy lacks
        raise ValueError(f"{path!r}: {err}") from None


def _read_bytes(path):
    with open(path, "rb") as file:
        return file.read()


def _to_numpy(key, value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"state_dict entry {key!r} is not numeric: {type(value).__name__}")
    return array


def _torch_names(layer):
    """{torch key: fastconv weight name} for one layer."""
    names = _NAMES.get(type(layer).__name__, _DEFAULT_NAMES)
    ours_to_torch = {ours: theirs for theirs, ours in names.items()}
    return {f"{layer.name}.{ours_to_torch.get(weight, weight)}": weight for weight in layer.weights}


def from_torch(state_dict_or_path, arch=None, model=None, match="auto", verify=False,
               print_fn=None, **options):
    """A fastconv model holding the weights of a PyTorch state_dict.

    ``state_dict_or_path``: a mapping of names to tensors or arrays, or a ``.pt``/``.pth`` (legacy
    or zip) or ``.safetensors`` file. The architecture is ``model`` (a fastconv Model) or the
    zoo's ``arch`` (e.g. "resnet50") built with ``options``.

    ``match``: "name" (keys ``<layer>.<param>``; unknown, missing and mis-shaped entries are
    reported together), "order" (the state_dict's entries in order onto the model's weights in
    graph order, every shape checked: for a model whose layer names differ from the module
    names), or "auto" (by name when every name is found, else by order). ``print_fn`` receives
    the mapping made by order, one line per tensor. ``num_batches_tracked`` entries are ignored,
    and so are GoogLeNet's auxiliary heads (``aux1.*``, ``aux2.*``), which serve training only.

    ``verify=True`` (a torchvision ``arch`` and torchvision installed) runs torchvision's model
    with the same weights and this model on one random input and stores the largest absolute
    difference in ``model.info["verification"]``.

    >>> import torchvision  # doctest: +SKIP
    >>> model = from_torch(torchvision.models.resnet50().state_dict(), arch="resnet50")  # doctest: +SKIP
    """
    source = None
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = os.path.basename(os.fspath(state_dict_or_path))
        state = read_torch_state_dict(state_dict_or_path)
    elif isinstance(state_dict_or_path, Mapping):
        state = {key: _to_numpy(key, value) for key, value in state_dict_or_path.items()}
    else:
        raise TypeError(f"from_torch: expected a state_dict (mapping) or a file path; received "
                        f"{type(state_dict_or_path).__name__}")
    if match not in ("auto", "name", "order"):
        raise ValueError(f"from_torch: `match` must be 'auto', 'name' or 'order'; received {match!r}")
    model = _architecture(arch, model, options)
    skipped = _TRAINING_ONLY.get(model.name, ())
    state = {k: v for k, v in state.items()
             if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith(skipped)}
    _load(model, state, match, print_fn)
    model.info["source"] = f"torch:{source}" if source else "torch"
    if verify:
        model.info["verification"] = _verify(model, arch, state, options)
    return model.prepare()  # plan made now: the first predict costs a steady one


def _load(model, state, match, print_fn):
    """Matches the state_dict by name or by order (see from_torch) and sets the weights; nothing
    changes unless everything fits."""
    by_name = [] if match == "order" else _name_problems(model, state)
    if match == "name" or (match == "auto" and not by_name):
        _raise_if(by_name, model, "")
        _assign(model, state)
        return
    by_order = _order_problems(model, state)
    if match == "auto" and by_order:  # neither fits: report both ways of matching
        _raise_if(by_name + [f"by order: {p}" for p in by_order], model, "")
    _raise_if(by_order, model, " by order")
    _assign_by_order(model, state, print_fn)


def _order_slots(model):
    return [(layer, weight) for layer in model.layers for weight in _torch_order(layer)]


def _order_problems(model, state):
    """Why the state_dict's tensors, in order, do not fit the model's weights in graph order."""
    slots, entries = _order_slots(model), list(state.items())
    problems = [f"{key} {tuple(array.shape)} -> {layer.name}/{weight} {layer.weights[weight].shape}"
                for (key, array), (layer, weight) in zip(entries, slots)
                if tuple(array.shape) != layer.weights[weight].shape]
    if len(entries) != len(slots):
        problems.insert(0, f"{len(entries)} tensors for {len(slots)} weights")
    return problems


def _assign_by_order(model, state, print_fn):
    """The i-th tensor of the state_dict onto the i-th weight of the model (graph order, each
    layer's weights in torch's order); counts and shapes were checked by _order_problems."""
    per_layer = {}
    for (key, array), (layer, weight) in zip(state.items(), _order_slots(model)):
        if print_fn is not None:
            print_fn(f"{key} {tuple(array.shape)} -> {layer.name}/{weight} {layer.weights[weight].shape}")
        per_layer.setdefault(layer, {})[weight] = array
    for layer, weights in per_layer.items():
        layer.set_weights(weights)


def _raise_if(problems, model, how):
    if problems:
        raise ValueError(f"the state_dict does not fit {model.label}{how}:\n  " + "\n  ".join(problems))


def _torch_order(layer):
    """The layer's weight names in the order torch modules register their tensors."""
    names = _NAMES.get(type(layer).__name__, _DEFAULT_NAMES)
    ordered = [ours for ours in names.values() if ours in layer.weights]
    return ordered + [w for w in layer.weights if w not in ordered]


def _verify(model, arch, state, options):
    """Largest |fastconv - torchvision| on one random input, with the same weights."""
    try:
        import torch
        import torchvision
    except ImportError:
        raise ImportError("verify=True needs torch and torchvision") from None
    if arch is None or not hasattr(torchvision.models, arch):
        raise ValueError(f"verify=True needs a torchvision `arch`; received {arch!r}")
    extra = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
    net = getattr(torchvision.models, arch)(weights=None, **extra, **_torchvision_options(options))
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False)
    x = np.random.default_rng(0).standard_normal((1,) + model.inputs[0].sample_shape).astype(np.float32)
    with torch.inference_mode():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    difference = float(np.abs(model.predict(x) - expected).max())
    return {"reference": f"torchvision {torchvision.__version__}", "max_abs_difference": difference,
            "output_scale": float(np.abs(expected).max())}


def _torchvision_options(options):
    return {"num_classes": options["num_classes"]} if "num_classes" in options else {}


def _architecture(arch, model, options):
    from .. import models
    from ..model import Model

    if model is not None:
        if arch is not None or options or not isinstance(model, Model):
            raise TypeError("from_torch: give either `model` (a fastconv Model, no options) or "
                            f"`arch` (a zoo name); received model={model!r}, arch={arch!r}")
        return model
    if arch not in models.__all__:
        raise ValueError(f"from_torch: `arch` must be one of {models.__all__}; received {arch!r}")
    return getattr(models, arch)(**options)


def _name_problems(model, state):
    """Missing, unexpected and mis-shaped keys when matching by name."""
    targets = {key: layer.weights[weight].shape for layer in model.layers
               for key, weight in _torch_names(layer).items()}
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    wrong = [f"{key}: expected {targets[key]}, state_dict has {state[key].shape}"
             for key in sorted(set(targets) & set(state)) if state[key].shape != targets[key]]
    return ([f"missing: {', '.join(missing)}"] if missing else []) + \
           ([f"unexpected: {', '.join(unexpected)}"] if unexpected else []) + wrong


def _assign(model, state):
    for layer in model.layers:
        if layer.weights:
            names = {weight: key for key, weight in _torch_names(layer).items()}
            layer.set_weights({weight: state[names[weight]] for weight in layer.weights})
