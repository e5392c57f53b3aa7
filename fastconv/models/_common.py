"""What every model constructor of the zoo shares: option checks and loading weights."""
import os


def check_choice(owner, arg, value, choices):
    if value not in choices:
        raise ValueError(f"{owner}: `{arg}` must be one of {choices}; received {value!r}")


def finish(model, weights):
    """The model with ``weights`` loaded: None keeps the random initialisation; a path to a
    fastconv ``.safetensors`` file or a torchvision state_dict (``.pt``/``.pth``) loads it."""
    if weights is None:
        return model
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{model.name}: `weights` must be None or a path; received {type(weights).__name__}")
    path = os.fspath(weights)
    if path.endswith((".pt", ".pth")):
        from ..convert import from_torch
        from_torch(path, model=model)
    else:
        model.load_weights(path)
    return model
