"""fastconv.convert.onnx: whole ONNX graphs into fastconv models, checked against ONNX Runtime.

Three kinds of graphs: torchvision's networks exported by torch.onnx at random weights (every
torchvision-form network of the zoo, and a small net plus ResNet-18 across opsets 7 to 17);
small graphs written with onnx.helper for the attributes torch never writes (auto_pad, opset-7
Clip and Dropout attributes, MatMul + Add, Sum, LRN, ...); and broken files, each of which must be
refused with a message naming the file or node and the problem.
"""
import io
import sys
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import layers as L

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastconv.convert.onnx import from_onnx, read_onnx_model, verify_onnx  # noqa: E402

SEED = 20240611
RELATIVE_TOLERANCE = 1e-4  # of the largest output magnitude


def run_onnxruntime(path_or_model, x):
    ort = pytest.importorskip("onnxruntime")
    source = path_or_model if isinstance(path_or_model, (str, bytes)) else str(path_or_model)
    if isinstance(path_or_model, onnx.ModelProto):
        source = path_or_model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_matches_onnxruntime(model, path_or_model, x, label):
    """max |fastconv - ORT| <= 1e-4 * max |ORT|; returns (difference, scale) for the report."""
    theirs = run_onnxruntime(path_or_model, x)
    ours = model.predict(x)
    assert ours.shape == theirs.shape, label
    diff, scale = float(np.max(np.abs(ours - theirs))), float(np.max(np.abs(theirs)))
    print(f"\n{label}: max |fastconv - onnxruntime| = {diff:.3g} (output scale {scale:.3g})")
    assert scale > 0, f"{label}: the output is all zeros, the comparison would prove nothing"
    assert diff <= RELATIVE_TOLERANCE * scale, f"{label}: difference {diff} at scale {scale}"
    return diff, scale


# Graphs exported by torch ----------------------------------------------------------------------

ZOO = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
       "vgg19_bn", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
       "mobilenet_v2"]
SLOW = {"vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
        "resnet101", "resnet152"}
OPSETS = [7, 9, 11, 13, 17]
# Node kinds that become a layer named after the node (the others fold away or alias a tensor).
LAYER_OPS = {"Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "LRN",
             "BatchNormalization", "Concat", "Add", "Sum", "Flatten", "Softmax"}


def randomize(net, seed):
    """Random weights at a scale that keeps activations O(1) through the depth (He-normal
    kernels), and random BatchNorm statistics so that folded and unfolded BN both matter."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # in place: VGG has 138 million weights, copies would cost seconds
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5,
                                      generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        for module in net.modules():
            # ResNet's residual sums grow with depth (to 1e12 for ResNet-152 at gamma ~ 1);
            # small gammas on each block's last BatchNorm keep outputs O(10-100) as trained nets.
            last_bn = {"BasicBlock": "bn2", "Bottleneck": "bn3"}.get(type(module).__name__)
            if last_bn:
                getattr(module, last_bn).weight.mul_(0.2)
    return net.eval()


def export(net, path, input_shape, opset=None, fold=True):
    """torch.onnx.export with the TorchScript exporter (dynamo=False: needs no onnxscript)."""
    import torch

    options = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros((1,) + input_shape), str(path), dynamo=False,
                          do_constant_folding=fold, **options)
    return path


def torchvision_net(arch):
    torchvision = pytest.importorskip("torchvision")
    options = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
    return randomize(getattr(torchvision.models, arch)(**options), SEED)


def check_layer_names(model, proto):
    """Every node that maps to a layer gives its name to one (made unique), in its kind."""
    names = {layer.name for layer in model.layers}
    for node in proto.graph.node:
        if node.op_type in LAYER_OPS:
            assert node.name in names, f"no layer named after node {node.name!r}"


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a
                                  for a in ZOO])
def test_torchvision_network_matches_onnxruntime(arch, tmp_path):
    pytest.importorskip("torch")
    path = export(torchvision_net(arch), tmp_path / f"{arch}.onnx", (3, 224, 224))
    try:
        model = from_onnx(path)
        x = np.random.default_rng(SEED).standard_normal((1, 3, 224, 224)).astype(np.float32)
        assert_matches_onnxruntime(model, path, x, f"{arch} (default opset)")
        assert model.info["source"] == f"onnx:{arch}.onnx"
        assert model.data_format == "channels_first"
        check_layer_names(model, read_onnx_model(path))
    finally:
        path.unlink()  # VGG files are half a gigabyte each


class SmallNet:
    """conv, bn, relu, maxpool ceil_mode, conv, bn, relu6, avgpool, view(N, -1), linear,
    softmax: every operator torch writes for the classic networks, in a net that exports in
    well under a second."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16),
                    nn.ReLU6(), nn.AvgPool2d(2))
                self.classifier = nn.Linear(16 * 3 * 3, 10)

            def forward(self, x):
                x = self.features(x)
                return torch.softmax(self.classifier(x.view(x.size(0), -1)), dim=1)

        return randomize(Net(), SEED)


@pytest.fixture(scope="module")
def small_net_exports(tmp_path_factory):
    """{(opset, constant folding): path or the reason torch refused}, exported once."""
    pytest.importorskip("torch")
    folder, net, exports = tmp_path_factory.mktemp("small_net"), SmallNet.build(), {}
    for opset in OPSETS:
        for fold in (True, False):
            try:
                exports[opset, fold] = export(net, folder / f"small_{opset}_{fold}.onnx",
                                              (3, 16, 16), opset, fold)
            except Exception as err:  # torch refuses some opsets for some operators
                exports[opset, fold] = f"torch cannot export at opset {opset}: {err}"
    return exports


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("opset", OPSETS)
def test_small_net_across_opsets(small_net_exports, opset, fold):
    path = small_net_exports[opset, fold]
    if isinstance(path, str):
        pytest.skip(path)
    proto = read_onnx_model(path)
    ops = {node.op_type for node in proto.graph.node}
    # What the sweep is meant to exercise is really in the files:
    assert "Clip" in ops and "Softmax" in ops and "Reshape" in ops
    if not fold:
        assert "BatchNormalization" in ops
    model = from_onnx(path)
    x = np.random.default_rng(SEED).standard_normal((2, 3, 16, 16)).astype(np.float32) * 3
    # The file declares batch 1 (x.size(0) was folded into the Reshape shape); the model takes
    # any batch, ORT only the declared one.
    for sample in x:
        assert_matches_onnxruntime(model, path, sample[None], f"small net opset {opset} "
                                                              f"{'folded' if fold else 'unfolded'}")
    assert any(isinstance(layer, L.ReLU6) for layer in model.layers)
    assert np.allclose(model.predict(x).sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def resnet18_exports(tmp_path_factory):
    pytest.importorskip("torch")
    folder, net, exports = tmp_path_factory.mktemp("resnet18"), torchvision_net("resnet18"), {}
    for opset in OPSETS:
        try:
            exports[opset] = export(net, folder / f"resnet18_{opset}.onnx", (3, 224, 224), opset)
        except Exception as err:
            exports[opset] = f"torch cannot export ResNet-18 at opset {opset}: {err}"
    return exports


@pytest.mark.parametrize("opset", OPSETS)
def test_resnet18_across_opsets(resnet18_exports, opset):
    path = resnet18_exports[opset]
    if isinstance(path, str):
        pytest.skip(path)
    model = from_onnx(path)
    x = np.random.default_rng(SEED).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert_matches_onnxruntime(model, path, x, f"resnet18 opset {opset}")
    assert verify_onnx(model, path) <= RELATIVE_TOLERANCE * np.max(np.abs(model.predict(x)))


# Graphs written with onnx.helper ---------------------------------------------------------------


def make_model(nodes, input_shape, initializers=None, opset=13, outputs=("y",), name="graph"):
    """A one-input ONNX model (batch 1) whose initializers are given as name -> array."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *input_shape])
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    tensors = [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()]
    graph = helper.make_graph(nodes, name, [x], ys, initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # understood by every ONNX Runtime this suite meets
    return model


def weights(*shape, scale=0.5):
    return (np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape) * scale
            ).astype(np.float32)


def conv(name, inputs, **attrs):
    return helper.make_node("Conv", inputs, [name], name=name, **attrs)


def positive(n):
    return np.random.default_rng(n).uniform(0.5, 1.5, n).astype(np.float32)


def bn_stats(c):
    return {"scale": positive(c), "B": weights(c), "mean": weights(c), "var": positive(c + 1)[:c]}


# (id, nodes, input shape, initializers, opset, the layer classes the model must contain)
HELPER_GRAPHS = [
    ("conv_same_upper_strided",
     [conv("y", ["x", "W", "B"], auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3])],
     (3, 9, 8), {"W": weights(4, 3, 3, 3), "B": weights(4)}, 13, {L.Conv2D}),
    ("conv_same_lower_even_kernel",
     [conv("y", ["x", "W"], auto_pad="SAME_LOWER")],
     (3, 8, 8), {"W": weights(4, 3, 2, 2)}, 11, {L.Conv2D}),
    ("conv_valid_dilated_grouped",
     [conv("y", ["x", "W", "B"], auto_pad="VALID", dilations=[2, 1], group=2)],
     (4, 10, 10), {"W": weights(6, 2, 3, 3), "B": weights(6)}, 7, {L.Conv2D}),
    ("conv_asymmetric_pads",
     [conv("y", ["x", "W"], pads=[1, 0, 2, 1], strides=[1, 2])],
     (2, 7, 7), {"W": weights(3, 2, 3, 3)}, 17, {L.Conv2D}),
    ("maxpool_same_upper",
     [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                       strides=[2, 2], auto_pad="SAME_UPPER")],
     (2, 7, 7), {}, 13, {L.MaxPool2D}),
    ("maxpool_ceil_mode_default_strides",
     [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3, 3], ceil_mode=1,
                       pads=[1, 1, 1, 1]),
      helper.make_node("MaxPool", ["p"], ["y"], name="pool2", kernel_shape=[3, 3],
                       strides=[2, 2], ceil_mode=1)],
     (2, 8, 8), {}, 11, {L.MaxPool2D}),
    ("avgpool_excluding_pads_ceil",
     [helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[3, 3],
                       strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
     (2, 8, 8), {}, 11, {L.AvgPool2D}),
    ("avgpool_including_pads",
     [helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[3, 3],
                       strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
     (2, 9, 9), {}, 7, {L.AvgPool2D}),
    ("avgpool_same_lower",
     [helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[2, 3],
                       auto_pad="SAME_LOWER")],
     (2, 6, 6), {}, 13, {L.AvgPool2D}),
    ("lrn",
     [helper.make_node("LRN", ["x"], ["n"], name="lrn", size=3, alpha=2e-4, beta=0.5, bias=2.0),
      helper.make_node("LRN", ["n"], ["y"], name="lrn_default", size=5)],
     (7, 4, 4), {}, 13, {L.LocalResponseNormalization}),
    ("batchnorm_opset7_spatial",
     [helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y"],
                       name="bn", epsilon=1e-3, spatial=1)],
     (5, 3, 3), bn_stats(5), 7, {L.BatchNormalization}),
    ("batchnorm_opset15_flat",
     [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
      helper.make_node("BatchNormalization", ["f", "scale", "B", "mean", "var"], ["y"],
                       name="bn")],
     (2, 2, 2), bn_stats(8), 15, {L.Flatten, L.BatchNormalization}),
    ("clip_attributes_relu6_opset7",
     [helper.make_node("Clip", ["x"], ["c"], name="relu6", min=0.0, max=6.0),
      helper.make_node("Clip", ["c"], ["y"], name="relu", min=0.0)],
     (3, 4, 4), {}, 7, {L.ReLU6, L.ReLU}),
    ("clip_inputs_opset13",
     [helper.make_node("Constant", [], ["zero"], name="zero", value_float=0.0),
      helper.make_node("Clip", ["x", "zero", "six"], ["c"], name="relu6"),
      helper.make_node("Clip", ["c", "zero", ""], ["y"], name="relu")],
     (3, 4, 4), {"six": np.array(6.0, np.float32)}, 13, {L.ReLU6, L.ReLU}),
    ("sum_add_identity",
     [helper.make_node("Relu", ["x"], ["r"], name="relu"),
      helper.make_node("Identity", ["x"], ["i"], name="same"),
      helper.make_node("Sum", ["x", "r", "i"], ["s"], name="sum3"),
      helper.make_node("Sum", ["s"], ["s1"], name="sum1"),
      helper.make_node("Add", ["s1", "r"], ["y"], name="add")],
     (3, 4, 4), {}, 13, {L.ReLU, L.Add}),
    ("matmul_add_softmax_opset11",
     [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
      helper.make_node("MatMul", ["f", "W"], ["m"], name="fc"),
      helper.make_node("Add", ["bias", "m"], ["a"], name="fc_bias"),
      helper.make_node("Softmax", ["a"], ["y"], name="prob")],
     (2, 3, 3), {"W": weights(18, 5), "bias": weights(5)}, 11, {L.Flatten, L.Dense, L.Softmax}),
    ("matmul_without_bias",
     [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
      helper.make_node("MatMul", ["f", "W"], ["y"], name="fc")],
     (2, 3, 3), {"W": weights(18, 4)}, 13, {L.Flatten, L.Dense}),
    ("gemm_alpha_beta_no_transpose",
     [helper.make_node("Flatten", ["x"], ["f"], name="flatten", axis=1),
      helper.make_node("Gemm", ["f", "B", "C"], ["y"], name="fc", alpha=0.5, beta=2.0)],
     (2, 2, 2), {"B": weights(8, 3), "C": weights(1, 3)}, 9, {L.Flatten, L.Dense}),
    ("reshape_constant_dropout_opset7",
     [helper.make_node("Constant", [], ["shape"], name="shape",
                       value=numpy_helper.from_array(np.array([0, -1], np.int64))),
      helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
      helper.make_node("Dropout", ["r"], ["y"], name="drop", ratio=0.3)],
     (2, 3, 3), {}, 7, {L.Flatten, L.Dropout}),
    ("gap_reshape_concat_dropout_opset13",
     [helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
      helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),
      helper.make_node("Dropout", ["r", "ratio"], ["d", "mask"], name="drop"),
      helper.make_node("Relu", ["r"], ["rr"], name="relu"),
      helper.make_node("Concat", ["d", "rr"], ["c"], name="cat", axis=-1),
      helper.make_node("Softmax", ["c"], ["y"], name="prob", axis=-1)],
     (4, 3, 3), {"shape": np.array([1, -1], np.int64), "ratio": np.array(0.2, np.float32)}, 13,
     {L.GlobalAveragePooling2D, L.Flatten, L.Dropout, L.ReLU, L.Concatenate, L.Softmax}),
    ("concat_channels_negative_axis",
     [conv("a", ["x", "W"]), helper.make_node("Relu", ["x"], ["b"], name="relu"),
      helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=-3)],
     (2, 4, 4), {"W": weights(3, 2, 1, 1)}, 13, {L.Conv2D, L.ReLU, L.Concatenate}),
    ("pad_attributes_opset7",
     [helper.make_node("Pad", ["x"], ["p"], name="pad", pads=[0, 0, 1, 2, 0, 0, 2, 1]),
      helper.make_node("AveragePool", ["p"], ["y"], name="avg", kernel_shape=[2, 2])],
     (2, 5, 5), {}, 7, {L.ZeroPadding2D, L.AvgPool2D}),
    ("pad_inputs_opset11_and_zero_pad",
     [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
      helper.make_node("Pad", ["p", "zeros"], ["y"], name="nothing")],
     (2, 5, 5), {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 3], np.int64),
                 "zeros": np.zeros(8, np.int64)}, 11, {L.ZeroPadding2D}),
    ("shape_arithmetic_opset13",
     [helper.make_node("Shape", ["x"], ["s"], name="shape"),
      helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
      helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
      helper.make_node("Cast", ["minus_one"], ["m"], name="cast", to=TensorProto.INT64),
      helper.make_node("Concat", ["n1", "m"], ["target"], name="target", axis=0),
      helper.make_node("Reshape", ["x", "target"], ["y"], name="view")],
     (2, 3, 3), {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                 "minus_one": np.array([-1.0], np.float32)}, 13, {L.Flatten}),
]


@pytest.mark.parametrize("case", HELPER_GRAPHS, ids=[c[0] for c in HELPER_GRAPHS])
def test_helper_graph_matches_onnxruntime(case):
    label, nodes, input_shape, initializers, opset, classes = case
    proto = make_model(nodes, input_shape, initializers, opset)
    model = from_onnx(proto)
    # Scaled so that ReLU6 clips, and shifted so that the pooling's padding matters.
    x = (np.random.default_rng(SEED).standard_normal((1,) + input_shape) * 4 + 1
         ).astype(np.float32)
    assert_matches_onnxruntime(model, proto, x, label)
    assert verify_onnx(model, proto, x) <= RELATIVE_TOLERANCE * np.max(np.abs(model.predict(x)))
    kinds = {type(layer) for layer in model.layers} - {L.InputLayer}
    assert kinds == classes, label
    assert model.info["source"] == "onnx"


def test_matmul_add_becomes_one_dense_named_after_the_matmul():
    _, nodes, shape, initializers, opset, _ = next(c for c in HELPER_GRAPHS
                                                   if c[0] == "matmul_add_softmax_opset11")
    model = from_onnx(make_model(nodes, shape, initializers, opset))
    dense = model.get_layer("fc")
    np.testing.assert_array_equal(dense.weights["kernel"], initializers["W"].T)
    np.testing.assert_array_equal(dense.weights["bias"], initializers["bias"])
    assert [layer.name for layer in model.layers] == ["x", "flatten", "fc", "prob"]


def test_layer_names_are_node_names_made_unique():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="act"),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = from_onnx(make_model(nodes, (2, 3, 3), name="chain"))
    assert [layer.name for layer in model.layers] == ["x", "act", "act_1", "Relu", "Relu_1"]
    assert model.name == "chain"
    assert from_onnx(make_model(nodes, (2, 3, 3)), name="mine").name == "mine"


def test_file_import_records_source_and_saves(tmp_path):
    _, nodes, shape, initializers, opset, _ = HELPER_GRAPHS[0]
    path = tmp_path / "conv.onnx"
    onnx.save(make_model(nodes, shape, initializers, opset), str(path))
    model = from_onnx(path)
    assert model.info["source"] == "onnx:conv.onnx"
    # Batch 2 although the file declares 1: the batch axis is free in fastconv.
    x = np.random.default_rng(SEED).standard_normal((2,) + shape).astype(np.float32)
    model.save(tmp_path / "conv.safetensors")
    again = fastconv.load(tmp_path / "conv.safetensors")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.info["source"] == "onnx:conv.onnx"


def test_verify_onnx_without_onnxruntime(monkeypatch):
    _, nodes, shape, initializers, opset, _ = HELPER_GRAPHS[0]
    proto = make_model(nodes, shape, initializers, opset)
    model = from_onnx(proto)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(ImportError, match="verify_onnx needs onnxruntime"):
        verify_onnx(model, proto)


def test_verify_onnx_sees_a_wrong_weight():
    """verify_onnx must be able to fail: change one weight and the difference shows."""
    pytest.importorskip("onnxruntime")
    _, nodes, shape, initializers, opset, _ = HELPER_GRAPHS[0]
    proto = make_model(nodes, shape, initializers, opset)
    model = from_onnx(proto)
    assert verify_onnx(model, proto) < 1e-5
    conv_layer = model.get_layer("y")
    kernel = conv_layer.get_weights()[0]
    kernel[0, 0, 0, 0] += 1.0
    conv_layer.set_weights([kernel, conv_layer.get_weights()[1]])
    assert verify_onnx(model, proto) > 1e-2


def test_from_onnx_verify_records_the_difference():
    pytest.importorskip("onnxruntime")
    _, nodes, shape, initializers, opset, _ = HELPER_GRAPHS[0]
    check = from_onnx(make_model(nodes, shape, initializers, opset), verify=True).info["verification"]
    assert check["reference"].startswith("onnxruntime ") and check["max_abs_difference"] < 1e-5


# Files and graphs that must be refused ---------------------------------------------------------


@pytest.fixture
def good_file(tmp_path):
    _, nodes, shape, initializers, opset, _ = HELPER_GRAPHS[0]
    path = tmp_path / "good.onnx"
    onnx.save(make_model(nodes, shape, initializers, opset), str(path))
    return path


def test_truncated_file(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"good\.onnx: not a readable ONNX model"):
        from_onnx(good_file)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a protobuf\n")
    with pytest.raises(ValueError, match=r"notes\.onnx: not (a readable ONNX|an ONNX) model"):
        from_onnx(path)


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        from_onnx(tmp_path / "absent.onnx")
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        from_onnx(b"bytes")


LSTM = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="rnn", hidden_size=2)
RESIZE = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upsample", mode="nearest")
REFUSED = [
    ("lstm", [LSTM], (2, 3), {"W": weights(1, 8, 3), "R": weights(1, 8, 2)}, 13,
     r"node 'rnn' \(LSTM\): unsupported operator 'LSTM'"),
    ("resize", [RESIZE], (2, 4, 4), {"scales": np.array([1, 1, 2, 2], np.float32)}, 13,
     r"node 'upsample' \(Resize\): unsupported operator 'Resize'"),
    ("unknown_attribute",
     [helper.make_node("Relu", ["x"], ["y"], name="act", alpha=0.1)], (2, 3, 3), {}, 13,
     r"node 'act' \(Relu\): unsupported attribute alpha"),
    ("pool_dilations",
     [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                       dilations=[2, 2])], (2, 6, 6), {}, 13,
     r"node 'pool' \(MaxPool\): dilations \[2, 2\] are not supported"),
    ("pool_storage_order",
     [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                       storage_order=1)], (2, 6, 6), {}, 11,
     r"node 'pool' \(MaxPool\): storage_order=1"),
    ("clip_not_relu",
     [helper.make_node("Clip", ["x"], ["y"], name="clamp", min=-1.0, max=1.0)], (2, 3, 3), {}, 9,
     r"node 'clamp' \(Clip\): Clip\(min=-1.0, max=1.0\) is not supported"),
    ("bn_spatial_0",
     [helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y"],
                       name="bn", spatial=0)], (3, 2, 2), bn_stats(3), 7,
     r"node 'bn' \(BatchNormalization\): spatial=0"),
    ("cycle",
     [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
      helper.make_node("Relu", ["a"], ["b"], name="relu"),
      helper.make_node("Relu", ["b"], ["y"], name="out")], (2, 3, 3), {}, 13,
     r"cycle: node 'add' \(Add\) needs tensor 'b'"),
    ("dangling_input",
     [helper.make_node("Relu", ["x"], ["a"], name="relu"),
      helper.make_node("Add", ["a", "ghost"], ["y"], name="add")], (2, 3, 3), {}, 13,
     r"node 'add' \(Add\) reads tensor 'ghost', which no node, initializer or graph input"),
    ("conv_weight_channels",
     [conv("y", ["x", "W"])], (3, 5, 5), {"W": weights(4, 2, 3, 3)}, 13,
     r"node 'y' \(Conv\): weight \(tensor 'W'\) has shape \(4, 2, 3, 3\); the layer needs "
     r"\(4, 3, 3, 3\)"),
    ("conv_bias_length",
     [conv("y", ["x", "W", "B"])], (3, 5, 5), {"W": weights(4, 3, 3, 3), "B": weights(5)}, 13,
     r"node 'y' \(Conv\): bias \(tensor 'B'\) has shape \(5,\); the layer needs \(4,\)"),
    ("batchnorm_mean_length",
     [helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y"],
                       name="bn")], (3, 2, 2), {**bn_stats(3), "mean": weights(4)}, 13,
     r"node 'bn' \(BatchNormalization\): mean \(tensor 'mean'\) has shape \(4,\)"),
    ("gemm_weight_features",
     [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
      helper.make_node("Gemm", ["f", "B"], ["y"], name="fc", transB=1)], (2, 2, 2),
     {"B": weights(3, 7)}, 13,
     r"node 'fc' \(Gemm\): B \(tensor 'B'\) has shape \(3, 7\); the layer needs \(3, 8\)"),
    ("gemm_trans_a",
     [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
      helper.make_node("Gemm", ["f", "B"], ["y"], name="fc", transA=1)], (2, 2, 2),
     {"B": weights(1, 3)}, 13, r"node 'fc' \(Gemm\): transA=1"),
    ("reshape_not_flat",
     [helper.make_node("Reshape", ["x", "shape"], ["y"], name="view")], (2, 3, 4),
     {"shape": np.array([1, 6, 4], np.int64)}, 13,
     r"node 'view' \(Reshape\): Reshape of \(None, 2, 3, 4\) to \(1, 6, 4\) is not supported"),
    ("add_constant_without_matmul",
     [helper.make_node("Add", ["x", "c"], ["y"], name="shift")], (2, 3, 3),
     {"c": weights(2, 1, 1)}, 13, r"node 'shift' \(Add\): adding a constant is supported only"),
    ("add_broadcast",
     [helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
      helper.make_node("Add", ["x", "g"], ["y"], name="add")], (2, 3, 3), {}, 13,
     r"node 'add' \(Add\): inputs of different shapes"),
    ("softmax_old_axis",
     [helper.make_node("Softmax", ["x"], ["y"], name="prob")], (2, 3, 3), {}, 11,
     r"node 'prob' \(Softmax\): axis 1 on a rank-4 input normalises over several axes"),
    ("conv_3d", [conv("y", ["x", "W"])], (2, 3, 3, 3), {"W": weights(2, 2, 1, 1, 1)}, 13,
     r"node 'y' \(Conv\): only 2-D convolutions"),
    ("opset_6", [helper.make_node("Relu", ["x"], ["y"], name="act")], (2, 3, 3), {}, 6,
     r"opset 6 is not supported"),
    ("mul_on_data",
     [helper.make_node("Mul", ["x", "two"], ["y"], name="double")], (2, 3, 3),
     {"two": np.array(2.0, np.float32)}, 13,
     r"node 'double' \(Mul\): Mul is supported only on constants"),
    ("dropout_mask_used",
     [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
      helper.make_node("Cast", ["mask"], ["y"], name="cast", to=TensorProto.FLOAT)],
     (2, 3, 3), {}, 13, r"node 'drop' \(Dropout\): its mask output is read"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_graph(case, tmp_path):
    label, nodes, shape, initializers, opset, message = case
    path = tmp_path / f"{label}.onnx"
    onnx.save(make_model(nodes, shape, initializers, opset), str(path))
    with pytest.raises(ValueError, match=rf"^{label}\.onnx: .*{message}"):
        from_onnx(path)


def test_non_float_input():
    proto = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], (2, 3, 3))
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(ValueError, match="input 'x' has element type INT64"):
        from_onnx(proto)


def test_symbolic_spatial_size():
    proto = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], (2, 3, 3))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(ValueError, match=r"input 'x' must have a batch axis and fixed sizes"):
        from_onnx(proto)


def test_torch_export_in_memory_matches_file_import(tmp_path):
    """A ModelProto and the file it came from give the same model."""
    torch = pytest.importorskip("torch")
    net = SmallNet.build()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 16, 16), buffer, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    path = tmp_path / "small.onnx"
    path.write_bytes(buffer.getvalue())
    x = np.random.default_rng(SEED).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(from_onnx(proto).predict(x), from_onnx(path).predict(x))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(from_onnx(path).predict(x), expected, atol=1e-5)
