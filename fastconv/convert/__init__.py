"""Converters: weights trained elsewhere, loaded into fastconv models."""
from .caffe import from_caffe, read_caffemodel, read_prototxt
from .keras import from_keras, model_from_keras_config, read_keras_file
from .onnx import from_onnx, read_onnx_model, verify_onnx
from .torch import from_torch, read_torch_state_dict

__all__ = ["from_caffe", "from_keras", "from_onnx", "from_torch", "model_from_keras_config",
           "read_caffemodel", "read_keras_file", "read_onnx_model", "read_prototxt",
           "read_torch_state_dict", "verify_onnx"]
