"""ResNet-18/34/50/101/152 (He et al., 2015), in torchvision's form.

Layer names follow torchvision's module paths (``layer2.0.conv1``, ``layer2.0.downsample.0``),
so a torchvision state_dict maps onto the model key for key. The default ``variant="v1.5"``
strides the 3x3 convolution of a bottleneck (torchvision); ``variant="v1"`` strides its first
1x1 convolution, as the original Caffe model and Keras do.
"""
from .. import layers as L
from ..model import Model
from ._common import check_choice, finish

BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
          152: ("bottleneck", (3, 8, 36, 3))}


def conv_bn(x, filters, kernel, name, bn_name, stride=1, relu=True):
    """Convolution without bias, BatchNorm, optional ReLU: the unit every ResNet is made of."""
    x = L.Conv2D(filters, kernel, strides=stride, padding=kernel // 2, use_bias=False, name=name)(x)
    x = L.BatchNormalization(name=bn_name)(x)
    return L.ReLU(name=f"{name}.relu")(x) if relu else x


def shortcut(x, filters, stride, name):
    """Identity, or a strided 1x1 projection when the shape changes."""
    if stride == 1 and x.sample_shape[0] == filters:
        return x
    return conv_bn(x, filters, 1, f"{name}.downsample.0", f"{name}.downsample.1", stride, relu=False)


def basic_block(x, filters, stride, name, variant=None):
    """Two 3x3 convolutions and a residual connection (ResNet-18/34)."""
    y = conv_bn(x, filters, 3, f"{name}.conv1", f"{name}.bn1", stride)
    y = conv_bn(y, filters, 3, f"{name}.conv2", f"{name}.bn2", relu=False)
    return L.Add(activation="relu", name=f"{name}.add")([y, shortcut(x, filters, stride, name)])


def bottleneck(x, filters, stride, name, variant="v1.5"):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a residual connection (ResNet-50/101/152)."""
    s1, s3 = (1, stride) if variant == "v1.5" else (stride, 1)
    y = conv_bn(x, filters, 1, f"{name}.conv1", f"{name}.bn1", s1)
    y = conv_bn(y, filters, 3, f"{name}.conv2", f"{name}.bn2", s3)
    y = conv_bn(y, filters * 4, 1, f"{name}.conv3", f"{name}.bn3", relu=False)
    return L.Add(activation="relu", name=f"{name}.add")([y, shortcut(x, filters * 4, stride, name)])


def resnet(depth, weights=None, num_classes=1000, input_shape=(3, 224, 224), variant="v1.5"):
    """A ResNet of ``depth`` 18, 34, 50, 101 or 152 layers."""
    check_choice(f"resnet{depth}", "variant", variant, ("v1.5", "v1"))
    kind, counts = BLOCKS[depth]
    block = basic_block if kind == "basic" else bottleneck
    inputs = L.Input(input_shape, name="input")
    x = conv_bn(inputs, 64, 7, "conv1", "bn1", stride=2)
    x = L.MaxPool2D(3, strides=2, padding=1, name="maxpool")(x)
    for stage, (filters, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for i in range(count):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(x, filters, stride, f"layer{stage}.{i}", variant)
    x = L.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = L.Dense(num_classes, name="fc")(x)
    return finish(Model(inputs, outputs, name=f"resnet{depth}"), weights)


def resnet18(weights=None, **options):
    """ResNet-18: 11,689,512 parameters, 1.8 GMACs at 224x224.

    >>> model = resnet18()  # doctest: +SKIP
    >>> model.predict(images).shape  # images (N, 3, 224, 224)  # doctest: +SKIP
    (N, 1000)
    """
    return resnet(18, weights, **options)


def resnet34(weights=None, **options):
    """ResNet-34: 21,797,672 parameters.

    >>> import fastconv
    >>> model = fastconv.models.resnet34()
    >>> model.count_params()
    21797672
    """
    return resnet(34, weights, **options)


def resnet50(weights=None, **options):
    """ResNet-50: 25,557,032 parameters, 4.1 GMACs at 224x224.

    Options: ``num_classes`` (1000), ``input_shape`` ((3, 224, 224)), ``variant`` ("v1.5" as
    torchvision, or "v1": stride on the first 1x1 convolution as Caffe and Keras).
    ``weights``: a path to a fastconv file or a torchvision state_dict file.

    >>> import fastconv
    >>> model = fastconv.models.resnet50()
    >>> model.count_params()
    25557032
    """
    return resnet(50, weights, **options)


def resnet101(weights=None, **options):
    """ResNet-101: 44,549,160 parameters.

    >>> import fastconv
    >>> model = fastconv.models.resnet101()
    >>> model.count_params()
    44549160
    """
    return resnet(101, weights, **options)


def resnet152(weights=None, **options):
    """ResNet-152: 60,192,808 parameters.

    >>> import fastconv
    >>> model = fastconv.models.resnet152()
    >>> model.count_params()
    60192808
    """
    return resnet(152, weights, **options)
