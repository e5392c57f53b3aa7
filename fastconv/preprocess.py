"""Images into network input batches, and ImageNet scores into class names.

A model's ``info["preprocessing"]`` says how its training images were prepared (see
docs/convert-keras.md for the schema); ``preprocess`` applies it to one image:

1. colour: RGB, or grayscale with PIL's weights (L = 0.299 R + 0.587 G + 0.114 B);
2. resize: the shorter side to ``resize`` then a centre crop to ``size`` (torchvision's
   Resize + CenterCrop), or straight to ``size`` when ``resize`` is None (Keras's
   ``load_img(target_size=...)``);
3. values: ``(pixels * scale - mean) / std`` per channel, after reordering the channels to
   ``channel_order``, so ``mean`` and ``std`` are given in the network's channel order.

Resizing is done here in NumPy, for every kind of input, so that a path, a PIL image and the
same pixels as an array give the same batch. Bilinear resizing uses PIL's (and torchvision's)
antialiasing rule: when shrinking, the triangle filter is widened by the scale factor, so every
input pixel contributes (plain bilinear interpolation would skip rows and alias).
"""
import os
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["decode_predictions", "imagenet_classes", "imagenet_preprocessing",
           "keras_imagenet_preprocessing", "preprocess"]

DEFAULTS = {"size": None, "resize": None, "interpolation": "bilinear", "scale": 1.0 / 255.0,
            "mean": [0.0], "std": [1.0], "channel_order": "RGB", "color": "rgb"}
_INTERPOLATIONS = ("bilinear", "nearest")
_CHANNEL_ORDERS = ("RGB", "BGR")
_COLORS = ("rgb", "grayscale")
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def imagenet_preprocessing():
    """torchvision's ImageNet preprocessing, in the ``info["preprocessing"]`` schema.

    >>> imagenet_preprocessing()["mean"]
    [0.485, 0.456, 0.406]
    """
    return {"size": [224, 224], "resize": 256, "interpolation": "bilinear", "scale": 1.0 / 255.0,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
            "color": "rgb"}


def keras_imagenet_preprocessing(mode="caffe", size=(224, 224)):
    """keras.applications' ``preprocess_input`` modes, in the ``info["preprocessing"]`` schema:
    "caffe" (VGG16, ResNet50: BGR, 0..255 minus the BGR ImageNet mean), "tf" (MobileNet,
    InceptionV3: scaled to -1..1) or "torch" (DenseNet: as ``imagenet_preprocessing``).
    Keras resizes straight to ``size`` (no crop).

    >>> keras_imagenet_preprocessing("tf")["scale"]
    0.00784313725490196
    """
    common = {"size": list(size), "resize": None, "interpolation": "bilinear", "color": "rgb"}
    if mode == "caffe":
        return {**common, "scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
                "channel_order": "BGR"}
    if mode == "tf":
        return {**common, "scale": 1.0 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0],
                "channel_order": "RGB"}
    if mode == "torch":
        return {**imagenet_preprocessing(), **common}
    raise ValueError(f"keras_imagenet_preprocessing: `mode` must be 'caffe', 'tf' or 'torch'; "
                     f"received {mode!r}")


def preprocess(image, info_or_model, data_format=None):
    """The input batch (1, C, H, W) float32 for one image (or (1, H, W, C) for channels_last).

    ``image``: a file path, a PIL image, or an array HxWxC (C = 1, 3 or 4; alpha is dropped) or
    HxW of uint8 pixels. ``info_or_model``: a fastconv Model (its ``info["preprocessing"]`` and
    its input shape and data format), a model ``info`` dict, or a preprocessing dict itself.
    ``data_format`` overrides the model's (default channels_first). Paths and PIL images need
    Pillow; arrays do not.

    >>> import numpy as np
    >>> spec = {"size": [2, 2], "scale": 1.0, "mean": [10, 20, 30], "std": [1, 1, 1]}
    >>> preprocess(np.full((4, 4, 3), 100, np.uint8), spec)[0, :, 0, 0].tolist()
    [90.0, 80.0, 70.0]
    """
    spec, data_format = _spec(info_or_model, data_format)
    pixels = _as_pixels(image, spec["color"])
    pixels = _resize_and_crop(pixels, spec)
    x = pixels.astype(np.float64)
    if spec["channel_order"] == "BGR" and x.shape[2] == 3:
        x = x[:, :, ::-1]
    x = (x * spec["scale"] - _per_channel(spec, "mean", x.shape[2])) / \
        _per_channel(spec, "std", x.shape[2])
    x = x.astype(np.float32)[None]
    return np.ascontiguousarray(x if data_format == "channels_last" else x.transpose(0, 3, 1, 2))


# The preprocessing spec ------------------------------------------------------------------------

def _spec(info_or_model, data_format):
    """The preprocessing dict with defaults filled in and every field checked."""
    model_size, model_channels = None, None
    if hasattr(info_or_model, "info") and hasattr(info_or_model, "data_format"):
        data_format = data_format or info_or_model.data_format
        model_size, model_channels = _model_image_shape(info_or_model)
        given = info_or_model.info.get("preprocessing") or {}
    elif isinstance(info_or_model, dict):
        given = info_or_model.get("preprocessing", info_or_model)
    else:
        raise TypeError(f"preprocess: `info_or_model` must be a fastconv Model or a dict; "
                        f"received {type(info_or_model).__name__}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"preprocess: unknown preprocessing fields {unknown}; known: "
                         f"{sorted(DEFAULTS)}")
    spec = {**DEFAULTS, **given}
    if spec["size"] is None:
        spec["size"] = model_size
    if "color" not in given and model_channels == 1:
        spec["color"] = "grayscale"  # a one-channel network reads grayscale images
    _check_spec(spec)
    data_format = data_format or "channels_first"
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(f"preprocess: `data_format` must be 'channels_first' or 'channels_last'; "
                         f"received {data_format!r}")
    return spec, data_format


def _model_image_shape(model):
    """((H, W), C) of a model's image input, or (None, None) for a flat input."""
    shape = model.inputs[0].sample_shape
    if len(shape) != 3:
        return None, None
    if model.data_format == "channels_first":
        return list(shape[1:]), shape[0]
    return list(shape[:2]), shape[2]


def _check_spec(spec):
    size = spec["size"]
    if size is None or len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"preprocess: `size` must be [height, width] (positive ints); received "
                         f"{size!r}")
    if spec["resize"] is not None and not (isinstance(spec["resize"], int) and spec["resize"] >= 1):
        raise ValueError(f"preprocess: `resize` must be a positive int or None; received "
                         f"{spec['resize']!r}")
    for field, choices in (("interpolation", _INTERPOLATIONS), ("channel_order", _CHANNEL_ORDERS),
                           ("color", _COLORS)):
        if spec[field] not in choices:
            raise ValueError(f"preprocess: `{field}` must be one of {choices}; received "
                             f"{spec[field]!r}")
    if any(s == 0 for s in np.atleast_1d(spec["std"])):
        raise ValueError(f"preprocess: `std` must not contain 0; received {spec['std']!r}")


def _per_channel(spec, field, channels):
    values = np.asarray(spec[field], dtype=np.float64).reshape(-1)
    if values.size not in (1, channels):
        raise ValueError(f"preprocess: `{field}` must have 1 or {channels} values (one per "
                         f"channel); received {spec[field]!r}")
    return values


# Pixels ----------------------------------------------------------------------------------------

def _as_pixels(image, color):
    """An HxWxC uint8 array: C = 3 for "rgb", 1 for "grayscale"."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image)
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.dtype != np.uint8:
        raise ValueError(f"preprocess: an image array must be HxW or HxWxC (C = 1, 3 or 4) of "
                         f"uint8; received shape {array.shape}, dtype {array.dtype}")
    array = array[:, :, :3]  # drop alpha
    if color == "grayscale" and array.shape[2] == 3:
        return np.rint(array @ _GRAY_WEIGHTS).astype(np.uint8)[:, :, None]
    if color == "rgb" and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array


def _open_image(path):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("preprocess: reading image files needs Pillow: pip install pillow "
                          "(or pass the pixels as an HxWxC uint8 array)") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"preprocess: no image file at {path!r}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise ValueError(f"preprocess: {path!r} is not a readable image: {err}") from None


def _resize_and_crop(pixels, spec):
    height, width = spec["size"]
    if spec["resize"] is None:
        return _resize(pixels, height, width, spec["interpolation"])
    h, w = pixels.shape[:2]
    # torchvision's Resize(int): the shorter side becomes `resize`, the longer one keeps the
    # aspect ratio, truncated to an int.
    short = spec["resize"]
    new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    pixels = _resize(pixels, new_h, new_w, spec["interpolation"])
    if new_h < height or new_w < width:
        raise ValueError(f"preprocess: `resize`={short} gives {new_h}x{new_w}, smaller than the "
                         f"crop `size` {height}x{width}")
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return pixels[top:top + height, left:left + width]


def _resize(pixels, height, width, interpolation):
    """Resized float64 pixels (uint8-valued for "nearest")."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    if interpolation == "nearest":
        rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
        return pixels[rows][:, cols]
    rows, cols = _bilinear_weights(h, height), _bilinear_weights(w, width)
    # Two separable passes, each a matrix product: rows (H'xH) times each column, then columns.
    resized = np.tensordot(rows, pixels.astype(np.float64), axes=(1, 0))      # (H', W, C)
    resized = np.tensordot(resized, cols, axes=(1, 1)).transpose(0, 2, 1)     # (H', W', C)
    return np.clip(np.rint(resized), 0, 255)  # back to pixel values, as an 8-bit resize gives


@lru_cache(maxsize=32)
def _bilinear_weights(size_in, size_out):
    """(size_out, size_in) matrix: row i holds the triangle-filter weights of output pixel i.
    Output pixel centres map to input coordinates (i + 0.5) * scale; when shrinking, the filter
    support grows with the scale (antialiasing), as in PIL."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale
    distance = (np.arange(size_in)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.clip(1.0 - np.abs(distance), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


# Class names -----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def imagenet_classes():
    """The 1000 ImageNet-1k class names in the standard index order (WordNet-sorted).

    >>> imagenet_classes()[281]
    'tabby'
    """
    text = resources.files("fastconv").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = tuple(text.splitlines())
    if len(names) != 1000:  # a damaged install; better said here than as wrong labels
        raise RuntimeError(f"fastconv/data/imagenet_classes.txt holds {len(names)} names, not 1000")
    return names


def decode_predictions(scores, top=5, labels=None):
    """Per row of ``scores`` (batch, classes), the ``top`` classes as (index, name, score),
    best first. ``labels`` defaults to the ImageNet-1k names (1000 classes).

    >>> import numpy as np
    >>> scores = np.zeros((1, 1000)); scores[0, 967] = 5.0
    >>> decode_predictions(scores, top=1)
    [[(967, 'espresso', 5.0)]]
    """
    labels = imagenet_classes() if labels is None else list(labels)
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores[None]
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"decode_predictions: expects scores shaped (batch, {len(labels)}); "
                         f"received shape {scores.shape}")
    if not (isinstance(top, int) and 1 <= top <= len(labels)):
        raise ValueError(f"decode_predictions: `top` must be an int in 1..{len(labels)}; "
                         f"received {top!r}")
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return [[(int(i), labels[i], float(row[i])) for i in order] for row, order in zip(scores, best)]
