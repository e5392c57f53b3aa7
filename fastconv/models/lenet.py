"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998).

``variant="modern"`` (default): the common form of today's tutorials, 32x32x1 input, conv
6@5x5, max pool, conv 16@5x5, max pool, FC 120, 84, 10, ReLU (61,706 parameters).
``variant="1998"``: as the paper built it: every unit squashed by 1.7159 tanh(2a/3), trainable
subsampling (a coefficient and a bias per map), C3's partial connection table, F6, and the
Euclidean RBF output layer (the smallest of the ten outputs is the class).
"""
from .. import layers as L
from ..model import Sequential
from ._common import check_choice, finish

# Table I of the paper: the S2 maps each C3 map reads. Six read 3 neighbouring maps, six read 4
# neighbouring maps, three read 4 non-neighbouring maps and the last reads all six.
C3_TABLE = ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
            (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
            (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
            (0, 1, 2, 3, 4, 5))


def modern_lenet5(num_classes, input_shape):
    return Sequential([
        L.Input(input_shape, name="input"),
        L.Conv2D(6, 5, activation="relu", name="conv1"),
        L.MaxPool2D(2, name="pool1"),
        L.Conv2D(16, 5, activation="relu", name="conv2"),
        L.MaxPool2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(120, activation="relu", name="fc1"),
        L.Dense(84, activation="relu", name="fc2"),
        L.Dense(num_classes, name="fc3"),
    ], name="lenet5")


def lenet5_1998(num_classes, input_shape):
    squash = "lecun_tanh"
    return Sequential([
        L.Input(input_shape, name="input"),
        L.Conv2D(6, 5, activation=squash, name="C1"),
        L.Subsampling2D(2, activation=squash, name="S2"),
        L.PartialConv2D(C3_TABLE, 5, activation=squash, name="C3"),
        L.Subsampling2D(2, activation=squash, name="S4"),
        L.Conv2D(120, 5, activation=squash, name="C5"),
        L.Flatten(name="flatten"),
        L.Dense(84, activation=squash, name="F6"),
        L.EuclideanRBF(num_classes, name="output"),
    ], name="lenet5_1998")


def lenet5(weights=None, variant="modern", num_classes=10, input_shape=(1, 32, 32)):
    """LeNet-5: ``variant="modern"`` (61,706 parameters) or ``"1998"`` (C1 156, S2 12, C3 1,516,
    S4 32, C5 48,120, F6 10,164 and 840 RBF centers).

    >>> model = lenet5(variant="1998")  # doctest: +SKIP
    >>> model.predict(digits).argmin(axis=1)  # digits (N, 1, 32, 32); RBF: smallest wins  # doctest: +SKIP
    """
    check_choice("lenet5", "variant", variant, ("modern", "1998"))
    build = lenet5_1998 if variant == "1998" else modern_lenet5
    return finish(build(num_classes, input_shape), weights)
