"""Argument checks for layer constructors.

Each check takes ``owner`` (the layer's label, e.g. ``"Conv2D 'conv2d'"``) and the argument's
name, so that a message says which layer and argument failed, what was expected and what was
received. Checked values come back normalised (pairs as tuples, strings lower-case), so that
``get_config`` gives the same dict before and after a JSON round trip.
"""
import math
import numbers

from ..functional import MAX_ARGUMENT

ACTIVATIONS = (None, "linear", "relu", "relu6", "tanh", "sigmoid", "softmax", "lecun_tanh")
DATA_FORMATS = ("channels_first", "channels_last")
PADDING_MODES = ("valid", "same", "same_upper", "same_lower")


def integer(owner, arg, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: `{arg}` must be an integer >= {minimum}; received {value!r} "
                        f"of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: `{arg}` must be an integer >= {minimum}; received {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{owner}: `{arg}` must be at most {maximum}; received {value!r}")
    return int(value)


def pair(owner, arg, value, minimum=1):
    """An int or a (height, width) pair -> (height, width); window geometry, so at most
    functional.MAX_ARGUMENT."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner}: `{arg}` must be an int or a pair (height, width); "
                             f"received {value!r}")
        return tuple(integer(owner, arg, v, minimum, MAX_ARGUMENT) for v in value)
    v = integer(owner, arg, value, minimum, MAX_ARGUMENT)
    return (v, v)


def number(owner, arg, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: `{arg}` must be a real number; received {value!r} of type "
                        f"{type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{arg}` must be a finite number; received {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: `{arg}` must be >= {minimum}; received {value!r}")
    return float(value)


def boolean(owner, arg, value):
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: `{arg}` must be True or False; received {value!r}")
    return value


def padding(owner, value, allow_modes=True):
    """The padding forms of functional.conv2d: a mode string, an int, a pair, or
    ((top, bottom), (left, right)). ZeroPadding2D passes ``allow_modes=False``."""
    expected = ("an int >= 0, a pair (ph, pw), ((top, bottom), (left, right))"
                + (f" or one of {PADDING_MODES}" if allow_modes else ""))
    if isinstance(value, str) and allow_modes:
        if value.lower() not in PADDING_MODES:
            raise ValueError(f"{owner}: `padding` must be {expected}; received {value!r}")
        return value.lower()
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(p, (tuple, list)) for p in value):
        if any(len(p) != 2 for p in value):
            raise ValueError(f"{owner}: `padding` must be {expected}; received {value!r}")
        return tuple(tuple(integer(owner, "padding", v, 0, MAX_ARGUMENT) for v in p) for p in value)
    if isinstance(value, (tuple, list)):
        return pair(owner, "padding", value, minimum=0)
    if isinstance(value, str):
        raise ValueError(f"{owner}: `padding` must be {expected}; received {value!r}")
    return integer(owner, "padding", value, 0, MAX_ARGUMENT)


def activation(owner, value):
    key = value.lower() if isinstance(value, str) else value
    if key not in ACTIVATIONS:
        raise ValueError(f"{owner}: `activation` must be one of {ACTIVATIONS}; received {value!r}")
    return key


def data_format(owner, value):
    if value not in DATA_FORMATS:
        raise ValueError(f"{owner}: `data_format` must be 'channels_first' or 'channels_last'; "
                         f"received {value!r}")
    return value


def shape(owner, arg, value):
    """A sample shape (no batch axis): a non-empty tuple of ints >= 1."""
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{owner}: `{arg}` must be a non-empty tuple of ints (one sample, without "
                        f"the batch axis, e.g. (3, 224, 224)); received {value!r}")
    return tuple(integer(owner, arg, v, 1) for v in value)


def channel_axis(owner, value):
    """An axis argument: -1 names the channel/feature axis; >= 1 is a literal axis of the batched
    tensor (0, the batch axis, is never allowed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: `axis` must be an integer; received {value!r} of type "
                        f"{type(value).__name__}")
    if value == 0 or value < -1:
        raise ValueError(f"{owner}: `axis` must be -1 (the channel axis) or >= 1 (axis 0 is the "
                         f"batch); received {value}")
    return int(value)
