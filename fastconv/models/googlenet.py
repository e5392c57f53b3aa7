"""GoogLeNet (Szegedy et al., 2014): 22 layers deep, nine Inception modules.

``variant="torchvision"`` (default): torchvision's form, BatchNorm after every convolution
(epsilon 1e-3), Caffe-style ceil-mode pooling, the "5x5" branch with a 3x3 kernel (kept by
torchvision for weight compatibility), auxiliary heads omitted (they only serve training), and
``transform_input`` (re-normalises ImageNet-normalised input the way the converted Google
weights expect). ``variant="caffe"``: BVLC GoogLeNet, with LRN, biases and true 5x5 branches.
"""
from .. import layers as L
from ..model import Model
from ._common import check_choice, finish

# (name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), a max pool after 3b and 4e.
INCEPTIONS = (("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64),
              ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
              ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
              ("4e", 256, 160, 320, 32, 128, 128), ("5a", 256, 160, 320, 32, 128, 128),
              ("5b", 384, 192, 384, 48, 128, 128))
POOL_AFTER = {"3b": "maxpool3", "4e": "maxpool4"}
# torchvision's transform_input: x * std / 0.5 + (mean - 0.5) / 0.5 per channel.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def basic_conv(x, filters, kernel, name, stride=1, padding=0):
    """torchvision's BasicConv2d: convolution without bias, BatchNorm (eps 1e-3), ReLU."""
    x = L.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                 name=f"{name}.conv")(x)
    x = L.BatchNormalization(epsilon=1e-3, name=f"{name}.bn")(x)
    return L.ReLU(name=f"{name}.relu")(x)


def inception(x, name, c1, c3r, c3, c5r, c5, pool_proj):
    """Four parallel branches joined on the channel axis (torchvision names)."""
    p = f"inception{name}"
    b1 = basic_conv(x, c1, 1, f"{p}.branch1")
    b2 = basic_conv(basic_conv(x, c3r, 1, f"{p}.branch2.0"), c3, 3, f"{p}.branch2.1", padding=1)
    b3 = basic_conv(basic_conv(x, c5r, 1, f"{p}.branch3.0"), c5, 3, f"{p}.branch3.1", padding=1)
    b4 = L.MaxPool2D(3, strides=1, padding=1, ceil_mode=True, name=f"{p}.branch4.0")(x)
    b4 = basic_conv(b4, pool_proj, 1, f"{p}.branch4.1")
    return L.Concatenate(name=f"{p}.concat")([b1, b2, b3, b4])


def torchvision_googlenet(num_classes, input_shape, transform_input):
    inputs = L.Input(input_shape, name="input")
    x = inputs
    if transform_input:
        x = L.Rescaling([s / 0.5 for s in IMAGENET_STD], [(m - 0.5) / 0.5 for m in IMAGENET_MEAN],
                        name="transform_input")(x)
    x = basic_conv(x, 64, 7, "conv1", stride=2, padding=3)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="maxpool1")(x)
    x = basic_conv(x, 64, 1, "conv2")
    x = basic_conv(x, 192, 3, "conv3", padding=1)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="maxpool2")(x)
    for spec in INCEPTIONS:
        x = inception(x, *spec)
        if spec[0] in POOL_AFTER:
            size = 3 if spec[0] == "3b" else 2
            x = L.MaxPool2D(size, strides=2, ceil_mode=True, name=POOL_AFTER[spec[0]])(x)
    x = L.GlobalAveragePooling2D(name="avgpool")(x)
    x = L.Dropout(0.2, name="dropout")(x)
    outputs = L.Dense(num_classes, name="fc")(x)
    return Model(inputs, outputs, name="googlenet")


def caffe_conv(x, filters, kernel, name, stride=1, padding=0):
    return L.Conv2D(filters, kernel, strides=stride, padding=padding, activation="relu", name=name)(x)


def caffe_inception(x, name, c1, c3r, c3, c5r, c5, pool_proj):
    p = f"inception_{name}"
    b1 = caffe_conv(x, c1, 1, f"{p}/1x1")
    b2 = caffe_conv(caffe_conv(x, c3r, 1, f"{p}/3x3_reduce"), c3, 3, f"{p}/3x3", padding=1)
    b3 = caffe_conv(caffe_conv(x, c5r, 1, f"{p}/5x5_reduce"), c5, 5, f"{p}/5x5", padding=2)
    b4 = L.MaxPool2D(3, strides=1, padding=1, ceil_mode=True, name=f"{p}/pool")(x)
    b4 = caffe_conv(b4, pool_proj, 1, f"{p}/pool_proj")
    return L.Concatenate(name=f"{p}/output")([b1, b2, b3, b4])


def caffe_googlenet(num_classes, input_shape):
    lrn = dict(size=5, alpha=1e-4, beta=0.75)
    inputs = L.Input(input_shape, name="data")
    x = caffe_conv(inputs, 64, 7, "conv1/7x7_s2", stride=2, padding=3)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="pool1/3x3_s2")(x)
    x = L.LocalResponseNormalization(**lrn, name="pool1/norm1")(x)
    x = caffe_conv(x, 64, 1, "conv2/3x3_reduce")
    x = caffe_conv(x, 192, 3, "conv2/3x3", padding=1)
    x = L.LocalResponseNormalization(**lrn, name="conv2/norm2")(x)
    x = L.MaxPool2D(3, strides=2, ceil_mode=True, name="pool2/3x3_s2")(x)
    for spec in INCEPTIONS:
        x = caffe_inception(x, *spec)
        if spec[0] in POOL_AFTER:
            name = "pool3/3x3_s2" if spec[0] == "3b" else "pool4/3x3_s2"
            x = L.MaxPool2D(3, strides=2, ceil_mode=True, name=name)(x)
    x = L.AvgPool2D(7, strides=1, name="pool5/7x7_s1")(x)
    x = L.Dropout(0.4, name="pool5/drop_7x7_s1")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(num_classes, name="loss3/classifier")(x)
    outputs = L.Softmax(name="prob")(x)
    return Model(inputs, outputs, name="googlenet_caffe")


def googlenet(weights=None, variant="torchvision", num_classes=1000, input_shape=(3, 224, 224),
              transform_input=False):
    """GoogLeNet: 6,624,904 parameters (torchvision, no auxiliary heads), 1.5 GMACs at 224x224.

    ``transform_input=True`` for the torchvision weights converted from Google's (input is then
    normalised with the ImageNet mean and std, as for every torchvision model).

    >>> import fastconv
    >>> model = fastconv.models.googlenet()
    >>> model.count_params()
    6624904
    """
    check_choice("googlenet", "variant", variant, ("torchvision", "caffe"))
    if variant == "caffe":
        return finish(caffe_googlenet(num_classes, input_shape), weights)
    return finish(torchvision_googlenet(num_classes, input_shape, transform_input), weights)
