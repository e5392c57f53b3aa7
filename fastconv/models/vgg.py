"""VGG-11/13/16/19 (Simonyan and Zisserman, 2014), in torchvision's form, with or without
BatchNorm. Layer names are torchvision's (``features.0``, ``classifier.6``); the ReLU after
each convolution is fused into it, so the indices of the ReLU modules are simply skipped."""
from .. import layers as L
from ..model import Model
from ._common import finish

# Convolution widths per stage; each stage ends with a 2x2 max pool.
STAGES = {11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
          13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
          16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
          19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)}


def features(x, depth, batch_norm):
    """The convolutional stages, numbered as torchvision's ``features`` Sequential."""
    index = 0
    for stage in STAGES[depth]:
        for filters in stage:
            if batch_norm:
                x = L.Conv2D(filters, 3, padding=1, name=f"features.{index}")(x)
                x = L.BatchNormalization(name=f"features.{index + 1}")(x)
                x = L.ReLU(name=f"features.{index + 2}")(x)
                index += 3
            else:
                x = L.Conv2D(filters, 3, padding=1, activation="relu", name=f"features.{index}")(x)
                index += 2
        x = L.MaxPool2D(2, name=f"features.{index}")(x)
        index += 1
    return x


def vgg(depth, weights=None, batch_norm=False, num_classes=1000, input_shape=(3, 224, 224)):
    inputs = L.Input(input_shape, name="input")
    x = features(inputs, depth, batch_norm)
    x = L.AdaptiveAvgPool2D(7, name="avgpool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, activation="relu", name="classifier.0")(x)
    x = L.Dropout(0.5, name="classifier.2")(x)
    x = L.Dense(4096, activation="relu", name="classifier.3")(x)
    x = L.Dropout(0.5, name="classifier.5")(x)
    outputs = L.Dense(num_classes, name="classifier.6")(x)
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    return finish(Model(inputs, outputs, name=name), weights)


def vgg11(weights=None, **options):
    """VGG-11 (configuration A): 132,863,336 parameters (``batch_norm=True``: 132,868,840).

    >>> import fastconv
    >>> model = fastconv.models.vgg11(batch_norm=True)  # doctest: +SKIP
    >>> model.count_params()  # doctest: +SKIP
    132868840
    """
    return vgg(11, weights, **options)


def vgg13(weights=None, **options):
    """VGG-13 (configuration B): 133,047,848 parameters.

    >>> import fastconv
    >>> model = fastconv.models.vgg13()  # doctest: +SKIP
    >>> model.count_params()  # doctest: +SKIP
    133047848
    """
    return vgg(13, weights, **options)


def vgg16(weights=None, **options):
    """VGG-16 (configuration D): 13 convolutions and 3 fully connected layers, 138,357,544
    parameters, 15.5 GMACs at 224x224.

    Options: ``batch_norm`` (False), ``num_classes`` (1000), ``input_shape`` ((3, 224, 224)).

    >>> import fastconv
    >>> model = fastconv.models.vgg16()  # doctest: +SKIP
    >>> model.count_params()  # doctest: +SKIP
    138357544
    """
    return vgg(16, weights, **options)


def vgg19(weights=None, **options):
    """VGG-19 (configuration E): 143,667,240 parameters.

    >>> import fastconv
    >>> model = fastconv.models.vgg19()  # doctest: +SKIP
    >>> model.count_params()  # doctest: +SKIP
    143667240
    """
    return vgg(19, weights, **options)
