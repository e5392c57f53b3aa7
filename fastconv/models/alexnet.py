"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012).

``variant="torchvision"`` (default): torchvision's single-tower form, 64-192-384-256-256
filters, an adaptive 6x6 average pool, 224x224 inputs, names as torchvision's modules.
``variant="caffe"``: the original as the BVLC model zoo has it: 227x227x3 input, CONV1 96@11x11
stride 4 (55x55x96), LRN, 3x3 stride-2 max pools with Caffe's rounding up, CONV2/4/5 in two
groups (the two GPU towers), names as the Caffe prototxt.
"""
from .. import layers as L
from ..model import Model
from ._common import check_choice, finish


def torchvision_alexnet(num_classes, input_shape):
    inputs = L.Input(input_shape, name="input")
    x = inputs
    for index, filters, kernel, stride, pad, pool in ((0, 64, 11, 4, 2, True), (3, 192, 5, 1, 2, True),
                                                      (6, 384, 3, 1, 1, False), (8, 256, 3, 1, 1, False),
                                                      (10, 256, 3, 1, 1, True)):
        x = L.Conv2D(filters, kernel, strides=stride, padding=pad, activation="relu",
                     name=f"features.{index}")(x)
        if pool:
            x = L.MaxPool2D(3, strides=2, name=f"features.{index + 2}")(x)
    x = L.AdaptiveAvgPool2D(6, name="avgpool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dropout(0.5, name="classifier.0")(x)
    x = L.Dense(4096, activation="relu", name="classifier.1")(x)
    x = L.Dropout(0.5, name="classifier.3")(x)
    x = L.Dense(4096, activation="relu", name="classifier.4")(x)
    outputs = L.Dense(num_classes, name="classifier.6")(x)
    return Model(inputs, outputs, name="alexnet")


def caffe_alexnet(num_classes, input_shape):
    inputs = L.Input(input_shape, name="data")
    x = L.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inputs)
    x = L.LocalResponseNormalization(5, alpha=1e-4, beta=0.75, name="norm1")(x)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="pool1")(x)
    x = L.Conv2D(256, 5, padding=2, groups=2, activation="relu", name="conv2")(x)
    x = L.LocalResponseNormalization(5, alpha=1e-4, beta=0.75, name="norm2")(x)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="pool2")(x)
    x = L.Conv2D(384, 3, padding=1, activation="relu", name="conv3")(x)
    x = L.Conv2D(384, 3, padding=1, groups=2, activation="relu", name="conv4")(x)
    x = L.Conv2D(256, 3, padding=1, groups=2, activation="relu", name="conv5")(x)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="pool5")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, activation="relu", name="fc6")(x)
    x = L.Dropout(0.5, name="drop6")(x)
    x = L.Dense(4096, activation="relu", name="fc7")(x)
    x = L.Dropout(0.5, name="drop7")(x)
    x = L.Dense(num_classes, name="fc8")(x)
    outputs = L.Softmax(name="prob")(x)
    return Model(inputs, outputs, name="alexnet_caffe")


def alexnet(weights=None, variant="torchvision", num_classes=1000, input_shape=None):
    """AlexNet: 61,100,840 parameters (torchvision), 60,965,224 (``variant="caffe"``).

    ``input_shape`` defaults to (3, 224, 224) (torchvision) or (3, 227, 227) (caffe).

    >>> import fastconv
    >>> model = fastconv.models.alexnet(variant="caffe")  # doctest: +SKIP
    >>> model.count_params(), model.outputs[0].shape  # doctest: +SKIP
    (60965224, (None, 1000))
    """
    check_choice("alexnet", "variant", variant, ("torchvision", "caffe"))
    if variant == "caffe":
        model = caffe_alexnet(num_classes, input_shape or (3, 227, 227))
    else:
        model = torchvision_alexnet(num_classes, input_shape or (3, 224, 224))
    return finish(model, weights)
