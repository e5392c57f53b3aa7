"""MobileNetV2 (Sandler et al., 2018), in torchvision's form (width 1.0): inverted residual
blocks with depthwise 3x3 convolutions, BatchNorm and ReLU6, names as torchvision's modules.
The one ImageNet network whose real pretrained weights are at hand offline."""
from .. import layers as L
from ..model import Model
from ._common import finish

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(x, filters, kernel, name, stride=1, groups=1):
    x = L.Conv2D(filters, kernel, strides=stride, padding=(kernel - 1) // 2, groups=groups,
                 use_bias=False, name=f"{name}.0")(x)
    x = L.BatchNormalization(name=f"{name}.1")(x)
    return L.ReLU6(name=f"{name}.2")(x)


def inverted_residual(x, filters, stride, expansion, name):
    """Expand (1x1), filter (depthwise 3x3), project (1x1, linear); a residual when shapes allow."""
    channels = x.sample_shape[0]
    hidden = int(round(channels * expansion))
    y, index = x, 0
    if expansion != 1:
        y = conv_bn_relu6(y, hidden, 1, f"{name}.conv.0")
        index = 1
    y = conv_bn_relu6(y, hidden, 3, f"{name}.conv.{index}", stride=stride, groups=hidden)
    y = L.Conv2D(filters, 1, use_bias=False, name=f"{name}.conv.{index + 1}")(y)
    y = L.BatchNormalization(name=f"{name}.conv.{index + 2}")(y)
    if stride == 1 and channels == filters:
        y = L.Add(name=f"{name}.add")([x, y])
    return y


def mobilenet_v2(weights=None, num_classes=1000, input_shape=(3, 224, 224)):
    """MobileNetV2: 3,504,872 parameters, 0.3 GMACs at 224x224; top-1 71.878 % on ImageNet with
    torchvision's IMAGENET1K_V1 weights (``weights="mobilenet_v2-b0353104.pth"``).

    >>> import fastconv
    >>> model = fastconv.models.mobilenet_v2()
    >>> model.count_params()
    3504872
    """
    inputs = L.Input(input_shape, name="input")
    x = conv_bn_relu6(inputs, 32, 3, "features.0", stride=2)
    index = 1
    for expansion, filters, repeats, stride in SETTINGS:
        for i in range(repeats):
            x = inverted_residual(x, filters, stride if i == 0 else 1, expansion, f"features.{index}")
            index += 1
    x = conv_bn_relu6(x, 1280, 1, f"features.{index}")
    x = L.GlobalAveragePooling2D(name="avgpool")(x)
    x = L.Dropout(0.2, name="classifier.0")(x)
    outputs = L.Dense(num_classes, name="classifier.1")(x)
    return finish(Model(inputs, outputs, name="mobilenet_v2"), weights)
