"""The model zoo: the classic ConvNets, each ``name(weights=None, **options)`` returning a Model.

Layer names follow the source each form comes from (torchvision module paths, Caffe layer
names), so pretrained weights map onto them key for key.
"""
from .alexnet import alexnet
from .googlenet import googlenet
from .lenet import lenet5
from .mobilenet import mobilenet_v2
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg11, vgg13, vgg16, vgg19

__all__ = ["alexnet", "googlenet", "lenet5", "mobilenet_v2", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "vgg11", "vgg13", "vgg16", "vgg19"]
