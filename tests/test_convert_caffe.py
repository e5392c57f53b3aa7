"""fastconv.convert.caffe: the BVLC Caffe LeNet on MNIST, a synthetic net with every supported
layer (V2 ``layer`` and legacy V1 ``layers``), damaged and unsupported files.

References, all written here: a NumPy forward pass that follows Caffe's layer code (its pooled
size and window clipping, its AVE divisor, its LRN window, BatchNorm's scale factor), a tiny
protobuf encoder that writes caffemodels from arrays this file owns, and OpenCV's dnn module
(which runs Caffe nets with Caffe's semantics) when it is installed.
"""
import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.convert import _protobuf as pb
from fastconv.convert.caffe import from_caffe, read_caffemodel, read_prototxt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LENET = DATA / "caffe_lenet"
MNIST = DATA / "mnist"
LENET_SCALE = 0.00390625          # the Caffe MNIST example's transform_param scale (1/256)

try:
    import cv2
except ImportError:
    cv2 = None
needs_lenet = pytest.mark.skipif(not (LENET / "lenet_iter_10000.caffemodel").exists()
                                 or not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="../shared/data (Caffe LeNet, MNIST) is absent")
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="opencv-python-headless is not installed")

# ---------------------------------------------------------------------------------------------
# A protobuf encoder, enough for NetParameter / LayerParameter / BlobProto.


def varint(value):
    value &= (1 << 64) - 1                       # negative int64: ten bytes, two's complement
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def key(number, wire_type):
    return varint(number << 3 | wire_type)


def length_delimited(number, payload):
    return key(number, 2) + varint(len(payload)) + payload


def text(number, value):
    return length_delimited(number, value.encode())


def packed(number, values, fmt):
    return length_delimited(number, struct.pack(f"<{len(values)}{fmt}", *values))


def blob(array, style="shape"):
    """A BlobProto: ``shape`` + packed floats, ``legacy`` 4-D num/channels/height/width +
    unpacked floats, or ``double`` (shape with unpacked dims + packed doubles)."""
    array = np.asarray(array, np.float64)
    flat = array.ravel().tolist()
    if style == "legacy":
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(key(n, 0) + varint(d) for n, d in zip((1, 2, 3, 4), dims))
        return head + b"".join(key(5, 5) + struct.pack("<f", v) for v in flat)
    if style == "double":
        shape = b"".join(key(1, 0) + varint(d) for d in array.shape)
        return length_delimited(7, shape) + packed(8, flat, "d")
    dims = b"".join(varint(d) for d in array.shape)          # BlobShape.dim, packed
    return length_delimited(7, length_delimited(1, dims)) + packed(5, flat, "f")


def v2_layer(name, type_, blobs=(), styles=None):
    styles = styles or ["shape"] * len(blobs)
    body = text(1, name) + text(2, type_)
    return length_delimited(100, body + b"".join(length_delimited(7, blob(b, s))
                                                 for b, s in zip(blobs, styles)))


def v1_layer(name, type_number, blobs=(), style="legacy"):
    body = text(4, name) + key(5, 0) + varint(type_number)
    return length_delimited(2, body + b"".join(length_delimited(6, blob(b, style)) for b in blobs))


# ---------------------------------------------------------------------------------------------
# A NumPy forward pass with Caffe's semantics (float64).


def ref_conv(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Cross-correlation as Caffe's im2col + GEMM, one group at a time."""
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    extent = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=(2, 3))
    windows = windows[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]
    og = o // group
    y = np.concatenate([np.tensordot(windows[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og],
                                     axes=([1, 4, 5], [1, 2, 3])) for g in range(group)], axis=-1)
    y = y.transpose(0, 3, 1, 2)                  # (n, oh, ow, o) -> NCHW
    return y if b is None else y + np.asarray(b)[None, :, None, None]


def caffe_pooled(size, k, s, p):
    out = int(np.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def ref_pool(x, method, k, s, p):
    """Caffe's PoolingLayer::Forward_cpu, window by window."""
    n, c, h, w = x.shape
    oh, ow = caffe_pooled(h, k[0], s[0], p[0]), caffe_pooled(w, k[1], s[1], p[1])
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)                      # counts padding up to h + p
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else \
                window.sum(axis=(2, 3)) / size
    return y


def ref_lrn(x, size, alpha, beta, k):
    sq = np.pad(x ** 2, ((0, 0), ((size - 1) // 2, (size - 1) // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x * (k + alpha / size * window) ** -beta


def ref_batchnorm(x, mean, var, factor, eps, gamma=None, beta=None):
    f = 0.0 if factor == 0 else 1.0 / factor
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - (mean * f).reshape(shape)) / np.sqrt((var * f).reshape(shape) + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape) + (0 if beta is None else beta.reshape(shape))
    return y


def ref_ip(x, w, b):
    return x.reshape(len(x), -1) @ np.asarray(w, np.float64).T + b


def ref_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The Caffe LeNet on MNIST


def read_idx(path, offset):
    with gzip.open(path, "rb") as file:
        raw = file.read()
    return np.frombuffer(raw, np.uint8, offset=offset)


@pytest.fixture(scope="module")
def mnist():
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", 8)
    return images.astype(np.float32) * LENET_SCALE, labels


@pytest.fixture(scope="module")
def lenet():
    return from_caffe(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                      preprocessing={"scale": LENET_SCALE})


@pytest.fixture(scope="module")
def lenet_scores(lenet, mnist):
    return lenet.predict(mnist[0], batch_size=1000)


def lenet_reference(x, w):
    """The lenet.prototxt forward pass, transcribed by hand."""
    x = ref_pool(ref_conv(x, *w["conv1"]), "MAX", (2, 2), (2, 2), (0, 0))
    x = ref_pool(ref_conv(x, *w["conv2"]), "MAX", (2, 2), (2, 2), (0, 0))
    x = np.maximum(ref_ip(x, *w["ip1"]), 0)
    return ref_softmax(ref_ip(x, *w["ip2"]))


@needs_lenet
def test_lenet_reproduces_caffe_accuracy(lenet_scores, mnist):
    accuracy = (lenet_scores.argmax(1) == mnist[1]).mean()
    assert round(100 * accuracy, 2) == 99.14


@needs_lenet
def test_lenet_matches_numpy_caffe_reference_on_every_image(lenet_scores, mnist):
    stored = read_caffemodel(LENET / "lenet_iter_10000.caffemodel")
    weights = {name: [b.values.reshape(b.shape) for b in stored[name].blobs]
               for name in ("conv1", "conv2", "ip1", "ip2")}
    x = mnist[0].astype(np.float64)
    reference = np.concatenate([lenet_reference(x[i:i + 1000], weights)
                                for i in range(0, len(x), 1000)])
    np.testing.assert_array_equal(lenet_scores.argmax(1), reference.argmax(1))
    np.testing.assert_allclose(lenet_scores, reference, atol=2e-5)


@needs_lenet
def test_lenet_model_layout_and_info(lenet):
    assert [layer.name for layer in lenet.layers] == [
        "data", "conv1", "pool1", "conv2", "pool2", "ip1/flatten", "ip1", "relu1", "ip2", "prob"]
    assert lenet.name == "LeNet" and lenet.data_format == "channels_first"
    assert lenet.count_params() == 431_080
    assert lenet.info["source"] == "caffe:lenet_iter_10000.caffemodel"
    assert lenet.info["preprocessing"] == {
        "size": [28, 28], "resize": None, "interpolation": "bilinear", "scale": LENET_SCALE,
        "mean": [0.0], "std": [1.0], "channel_order": "BGR", "color": "grayscale"}


@needs_lenet
def test_lenet_save_load_round_trip(lenet, mnist, tmp_path):
    lenet.save(tmp_path / "lenet.safetensors")
    copy = fastconv.load(tmp_path / "lenet.safetensors")
    np.testing.assert_array_equal(copy.predict(mnist[0][:64]), lenet.predict(mnist[0][:64]))
    assert copy.info == lenet.info


@needs_lenet
@needs_cv2
def test_lenet_agrees_with_opencv_dnn(lenet_scores, mnist):
    net = cv2.dnn.readNetFromCaffe(str(LENET / "lenet.prototxt"),
                                   str(LENET / "lenet_iter_10000.caffemodel"))
    stored = read_caffemodel(LENET / "lenet_iter_10000.caffemodel")
    for name in ("conv1", "conv2", "ip1", "ip2"):      # the reader, checked independently
        for i, b in enumerate(stored[name].blobs):
            theirs = net.getParam(name, i)
            np.testing.assert_array_equal(b.values, theirs.ravel())
    net.setInput(mnist[0])
    theirs = net.forward()
    assert round(100 * (theirs.argmax(1) == mnist[1]).mean(), 2) == 99.14
    np.testing.assert_array_equal(lenet_scores.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(lenet_scores, theirs, atol=1e-5)

# ---------------------------------------------------------------------------------------------
# A synthetic net with every supported layer type (V2 ``layer`` format)


EVERY_LAYER = r'''# every layer type fastconv converts; comments, lists and both block styles
name: "every" "_layer"          # adjacent strings concatenate
layer { name: "data" type: "Input" top: "data"
        input_param { shape: { dim: 2 dim: 4 dim: 11 dim: 11 } } }
layer {
  name: 'conv1'  type: "Convolution"  bottom: "data"  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2
                      weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.2 } }
}
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true eps: 1e-3 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"   # 11 -> 6: drops a window
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "split" type: "Split" bottom: "pool1" top: "a" top: "b" top: "c" }
layer { name: "conv2a" type: "Convolution" bottom: "a" top: "conv2a"
        convolution_param < num_output: 4 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1
                            bias_term: false > }
layer { name: "conv2b" type: "Convolution" bottom: "b" top: "conv2b"
        convolution_param { num_output: 4; kernel_size: [3]; pad: 2; dilation: 2 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2b" top: "bn2" }
layer { name: "concat" type: "Concat" bottom: "conv2a" bottom: "bn2" top: "concat" }
layer { name: "conv2c" type: "Convolution" bottom: "c" top: "conv2c"
        convolution_param { num_output: 8 kernel_size: 1 stride: 1 engine: CAFFE } }
layer { name: "sum" type: "Eltwise" bottom: "concat" bottom: "conv2c" top: "sum"
        eltwise_param { operation: SUM coeff: [1, 1.0] } }
layer { name: "norm" type: "LRN" bottom: "sum" top: "norm"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "norm" top: "pool2"   # 6 -> 4, last window clipped
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2" dropout_param { dropout_ratio: 0.3 } }
layer { name: "gpool" type: "Pooling" bottom: "norm" top: "gpool"
        pooling_param { pool: 0 global_pooling: true } }             # enum by number: MAX
layer { name: "flat" type: "Flatten" bottom: "gpool" top: "flat" }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 10 } }
layer { name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "cat2" type: "Concat" bottom: "ip1" bottom: "flat" top: "cat2" concat_param { axis: 1 } }
layer { name: "ip2" type: "InnerProduct" bottom: "cat2" top: "ip2" inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" top: "loss" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
'''


def every_layer_weights(seed=0):
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape)
    return {
        "conv1": [r(6, 2, 3, 3), r(6)],
        "bn1": [r(6) * 0.5, rng.uniform(0.5, 2.0, 6), np.array([0.5])],      # factor 0.5
        "scale1": [rng.uniform(0.5, 1.5, 6), r(6)],
        "conv2a": [r(4, 6, 1, 3)],
        "conv2b": [r(4, 6, 3, 3), r(4)],
        "bn2": [r(4), rng.uniform(0.5, 2.0, 4), np.array([0.0])],           # factor 0 -> 0
        "conv2c": [r(8, 6, 1, 1), r(8)],
        "ip1": [r(10, 128) * 0.1, r(10)],
        "ip2": [r(5, 18) * 0.3, r(5)],
    }


def every_layer_caffemodel(weights, overrides=None, doubles=True):
    """The caffemodel bytes: blobs in three encodings, plus layers the prototxt lacks.
    (OpenCV reads no ``double_data``: ``doubles=False`` writes floats for it.)"""
    styles = {"conv2b": ["legacy", "shape"], "ip2": ["legacy", "legacy"],
              "ip1": ["double", "double"] if doubles else ["shape", "shape"]}
    types = {"conv1": "Convolution", "bn1": "BatchNorm", "scale1": "Scale",
             "conv2a": "Convolution", "conv2b": "Convolution", "bn2": "BatchNorm",
             "conv2c": "Convolution", "ip1": "InnerProduct", "ip2": "InnerProduct"}
    weights = {**weights, **(overrides or {})}
    out = text(1, "every_layer") + v2_layer("data", "Input")
    out += v2_layer("mnist", "Data", [np.zeros((2, 2))])          # not in the prototxt: ignored
    for name, blobs in weights.items():
        out += v2_layer(name, types[name], blobs, styles.get(name))
    return out


def every_layer_reference(x, w):
    y = ref_conv(x, *w["conv1"], pad=(1, 1), group=2)
    y = ref_batchnorm(y, *w["bn1"], 1e-3, *w["scale1"])
    y = ref_pool(np.maximum(y, 0), "MAX", (2, 2), (2, 2), (1, 1))
    a = ref_conv(y, w["conv2a"][0], pad=(0, 1))
    b = ref_batchnorm(ref_conv(y, *w["conv2b"], pad=(2, 2), dilation=(2, 2)), *w["bn2"], 1e-5)
    s = np.concatenate([a, b], axis=1) + ref_conv(y, *w["conv2c"])
    n = ref_lrn(s, 3, 0.5, 0.75, 2.0)
    p = ref_pool(n, "AVE", (3, 3), (2, 2), (1, 1))
    g = n.max(axis=(2, 3))
    h = np.maximum(ref_ip(p, *w["ip1"]), 0)
    return ref_softmax(ref_ip(np.concatenate([h, g], axis=1), *w["ip2"]))


@pytest.fixture
def every_layer(tmp_path):
    weights = every_layer_weights()
    prototxt, caffemodel = tmp_path / "every.prototxt", tmp_path / "every.caffemodel"
    prototxt.write_text(EVERY_LAYER)
    caffemodel.write_bytes(every_layer_caffemodel(weights))
    return prototxt, caffemodel, weights


def test_every_layer_matches_numpy_reference(every_layer, rng):
    prototxt, caffemodel, weights = every_layer
    model = from_caffe(prototxt, caffemodel)
    x = rng.standard_normal((3, 4, 11, 11)).astype(np.float32)
    expected = every_layer_reference(x.astype(np.float64), weights)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-6)
    assert model.name == "every_layer"
    assert model.get_layer("pool1").output.shape == (None, 6, 6, 6)     # Caffe's ceil, one dropped
    assert model.get_layer("pool2").output.shape == (None, 8, 4, 4)
    names = [layer.name for layer in model.layers]
    assert "scale1" not in names and "split" not in names and "loss" not in names
    assert model.info["preprocessing"]["mean"] == [0.0] * 4


@needs_cv2
def test_every_layer_agrees_with_opencv_dnn(every_layer, rng):
    """OpenCV departs from Caffe in two places, so this net avoids them: its LRN ignores
    ``k`` (Caffe adds k; OpenCV always 1) and it does not map a BatchNorm scale factor of 0 to
    zero statistics. It also ignores include rules (the loss layer) and ``double_data``."""
    prototxt, caffemodel, weights = every_layer
    weights["bn2"][2] = np.array([2.0])
    caffemodel.write_bytes(every_layer_caffemodel(weights, doubles=False))
    prototxt.write_text("\n".join(line for line in EVERY_LAYER.splitlines()
                                   if '"loss"' not in line).replace("k: 2", "k: 1"))
    x = rng.standard_normal((2, 4, 11, 11)).astype(np.float32)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    np.testing.assert_allclose(from_caffe(prototxt, caffemodel).predict(x), net.forward(),
                               rtol=1e-4, atol=1e-6)


def test_every_layer_weights_are_copied_exactly(every_layer):
    prototxt, caffemodel, w = every_layer
    model = from_caffe(prototxt, caffemodel)
    np.testing.assert_array_equal(model.get_layer("conv1").weights["kernel"],
                                  w["conv1"][0].astype(np.float32))
    np.testing.assert_array_equal(model.get_layer("ip1").weights["kernel"],
                                  w["ip1"][0].astype(np.float32))
    bn1 = model.get_layer("bn1").weights
    np.testing.assert_allclose(bn1["moving_mean"], w["bn1"][0] / 0.5, rtol=1e-6)
    np.testing.assert_allclose(bn1["gamma"], w["scale1"][0], rtol=1e-6)
    bn2 = model.get_layer("bn2").weights
    assert not bn2["moving_mean"].any() and not bn2["moving_variance"].any()
    assert (bn2["gamma"] == 1).all() and not bn2["beta"].any()

# ---------------------------------------------------------------------------------------------
# The legacy V1 format: ``layers`` with enum types, input/input_dim, legacy blob shapes


V1_NET = '''name: "v1net"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 5 kernel_size: 3 stride: 2 pad: 1 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
         pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 7 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
'''


def test_v1_layers_format(tmp_path, rng):
    w = {"conv": [rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)],
         "fc": [rng.standard_normal((7, 20)), rng.standard_normal(7)]}
    model_bytes = (text(1, "v1net") + v1_layer("conv", 4, w["conv"])
                   + v1_layer("relu", 18) + v1_layer("pool", 17)
                   + v1_layer("fc", 14, w["fc"], style="double") + v1_layer("prob", 20))
    (tmp_path / "v1.prototxt").write_text(V1_NET)
    (tmp_path / "v1.caffemodel").write_bytes(model_bytes)
    model = from_caffe(tmp_path / "v1.prototxt", tmp_path / "v1.caffemodel")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = np.maximum(ref_conv(x.astype(np.float64), *w["conv"], stride=(2, 2), pad=(1, 1)), 0)
    y = ref_softmax(ref_ip(ref_pool(y, "AVE", (2, 2), (2, 2), (0, 0)), *w["fc"]))
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-4, atol=1e-6)
    assert read_caffemodel(tmp_path / "v1.caffemodel")["conv"].blobs[0].shape == (5, 3, 3, 3)
    assert read_caffemodel(tmp_path / "v1.caffemodel")["conv"].blobs[1].shape == (1, 1, 1, 5)

# ---------------------------------------------------------------------------------------------
# The text-format parser


def test_text_parser_values():
    msg = pb.parse_text('a: 1 b: -2.5e-1 c: 0x10 d: 1.5f e: "x\\ty\\"" \'z\' f: MAX g: -inf '
                        'h: [1, 2, 3] i { j: true } i < j: false >; k: {}')
    assert msg.get("a") == 1 and msg.get("b") == -0.25 and msg.get("c") == 16
    assert msg.get("d") == 1.5 and msg.get("e") == 'x\ty"z'
    assert msg.get("f") == "MAX" and isinstance(msg.get("f"), pb.Identifier)
    assert msg.get_all("h") == [1, 2, 3]
    assert [m.get("j") for m in msg.get_all("i")] == ["true", "false"]
    assert msg.get("k").items == []


@pytest.mark.parametrize("source, where", [
    ('layer {\n  name: "x"\n  kernel_size 5\n}', "line 3"),          # missing ':'
    ('layer {\n  name: "x"\n', "line 3"),                            # unclosed block
    ('layer {\n  name: "x\n}', "line 2"),                            # unterminated string
    ('a: 1\nb: @', "line 2, column 4"),                              # stray character
    ('a: 1\n}', "line 2"),                                           # stray closing brace
])
def test_text_parser_syntax_errors_name_the_line(tmp_path, source, where):
    path = tmp_path / "broken.prototxt"
    path.write_text(source)
    with pytest.raises(ValueError, match=rf"broken\.prototxt: not a valid prototxt: {where}"):
        read_prototxt(path)

# ---------------------------------------------------------------------------------------------
# Refused: damaged files, unsupported layers and parameters


def test_truncated_caffemodel_names_file_and_layer(every_layer, tmp_path):
    prototxt, caffemodel, _ = every_layer
    data = caffemodel.read_bytes()
    cut = data.index(b"ip1") + 40                      # inside ip1's blobs
    damaged = tmp_path / "cut.caffemodel"
    damaged.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"cut\.caffemodel: not a readable caffemodel, truncated "
                                         r"or damaged \(in layer 'ip1'\): .*declares \d+ bytes"):
        from_caffe(prototxt, damaged)


@needs_lenet
def test_truncated_lenet_caffemodel(tmp_path):
    data = (LENET / "lenet_iter_10000.caffemodel").read_bytes()
    (tmp_path / "half.caffemodel").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"half\.caffemodel: .*truncated.*layer 'ip1'"):
        read_caffemodel(tmp_path / "half.caffemodel")


def test_huge_declared_length_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.caffemodel"
    path.write_bytes(key(100, 2) + varint(1 << 40) + text(1, "conv1") + b"\0" * 16)
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"huge\.caffemodel: .*'conv1'.*declares 1099511627776 "
                                         r"bytes.*but only 23 remain"):
        read_caffemodel(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_blob_shape_larger_than_its_data_is_refused(tmp_path):
    fake = length_delimited(7, length_delimited(1, varint(10**6) + varint(10**6))) + \
        packed(5, [1.0, 2.0], "f")
    path = tmp_path / "shape.caffemodel"
    path.write_bytes(length_delimited(100, text(1, "conv1") + length_delimited(7, fake)))
    with pytest.raises(ValueError, match=r"shape\.caffemodel: .*'conv1'.*shape \(1000000, "
                                         r"1000000\) but holds 2 values"):
        read_caffemodel(path)


def test_blob_shape_disagreeing_with_the_layer(every_layer, rng):
    prototxt, caffemodel, weights = every_layer
    caffemodel.write_bytes(every_layer_caffemodel(weights, {"conv1": [rng.random((6, 4, 3, 3)),
                                                                      rng.random(6)]}))
    with pytest.raises(ValueError, match=r"every\.caffemodel: layer 'conv1' \(type Convolution\): "
                                         r"blob 0 has shape \(6, 4, 3, 3\) but the layer needs "
                                         r"\(6, 2, 3, 3\)"):
        from_caffe(prototxt, caffemodel)


def test_blob_count_and_missing_weights(every_layer, rng):
    prototxt, caffemodel, weights = every_layer
    caffemodel.write_bytes(every_layer_caffemodel(weights, {"conv2a": [rng.random((4, 6, 1, 3)),
                                                                       rng.random(4)]}))
    with pytest.raises(ValueError, match=r"layer 'conv2a' .*has 2 blob\(s\); the layer needs 1"):
        from_caffe(prototxt, caffemodel)
    caffemodel.write_bytes(every_layer_caffemodel({k: v for k, v in weights.items()
                                                   if k != "ip2"}))
    with pytest.raises(ValueError, match=r"every\.caffemodel: layer 'ip2' .*no weights"):
        from_caffe(prototxt, caffemodel)


def edited(tmp_path, old, new):
    assert old in EVERY_LAYER
    path = tmp_path / "edited.prototxt"
    path.write_text(EVERY_LAYER.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, message", [
    ('name: "conv2c" type: "Convolution"', 'name: "conv2c" type: "Deconvolution"',
     r"layer 'conv2c' \(type Deconvolution, line \d+\): unsupported layer type"),
    ('name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }',
     'name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 } }',
     r"layer 'relu2' \(type ReLU, line \d+\): parameter 'relu_param.negative_slope' = 0.1"),
    ("operation: SUM", "operation: PROD",
     r"layer 'sum' \(type Eltwise, line \d+\): parameter 'eltwise_param.operation' = PROD"),
    ("coeff: [1, 1.0]", "coeff: [1, -1]",
     r"layer 'sum' \(type Eltwise.*parameter 'eltwise_param.coeff'"),
    ("pool: AVE", "pool: STOCHASTIC", r"layer 'pool2' \(type Pooling.*pooling_param.pool"),
    ("local_size: 3", "local_size: 3 norm_region: WITHIN_CHANNEL",
     r"layer 'norm' \(type LRN.*lrn_param.norm_region"),
    ("num_output: 8 kernel_size: 1", "num_output: 8 kernel_size: 1 bogus: 2",
     r"layer 'conv2c' \(type Convolution.*unsupported parameter 'convolution_param.bogus' "
     r"\(line \d+\)"),
    ("kernel_size: 2 stride: 2 pad: 1", "kernel_size: 2.5 stride: 2 pad: 1",
     r"layer 'pool1' .*parameter 'pooling_param.kernel_size' \(line \d+\): expected a "
     r"non-negative integer, found 2.5"),
    ("pool: MAX kernel_size: 2", "pool: MIN kernel_size: 2",
     r"layer 'pool1' .*'pooling_param.pool' .*expected one of MAX, AVE, STOCHASTIC"),
    ('layer { name: "scale1"', 'layer { name: "scale1" blobs_lr: 1',
     r"layer 'scale1' \(type Scale.*unsupported parameter 'blobs_lr'"),
    ("use_global_stats: true", "use_global_stats: false",
     r"layer 'bn1' .*batch_norm_param.use_global_stats"),
    ('bottom: "concat" bottom: "conv2c"', 'bottom: "concat" bottom: "nowhere"',
     r"layer 'sum' .*bottom 'nowhere' is not produced"),
    ('name: "bn2" type: "BatchNorm" bottom: "conv2b" top: "bn2" }',
     'name: "bn2" type: "BatchNorm" bottom: "conv2b" top: "bn2" }\n'
     'layer { name: "s2" type: "Scale" bottom: "conv2a" top: "s2" }',
     r"layer 's2' \(type Scale.*only right after a BatchNorm"),
])
def test_unsupported_layers_and_parameters(every_layer, tmp_path, old, new, message):
    _, caffemodel, _ = every_layer
    with pytest.raises(ValueError, match=r"edited\.prototxt: " + message):
        from_caffe(edited(tmp_path, old, new), caffemodel)


def test_pooling_window_outside_the_input_is_refused(tmp_path):
    # No padding, kernel 1 < stride 2 on 4 pixels: Caffe makes 3 windows, the last one empty.
    (tmp_path / "p.prototxt").write_text(
        'input: "x" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n'
        'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
        'pooling_param { kernel_size: 1 stride: 2 } }')
    (tmp_path / "p.caffemodel").write_bytes(v2_layer("p", "Pooling"))
    with pytest.raises(ValueError, match=r"p\.prototxt: layer 'p' .*Caffe pools to \(3, 3\)"):
        from_caffe(tmp_path / "p.prototxt", tmp_path / "p.caffemodel")


def test_preprocessing_argument_is_checked(every_layer):
    prototxt, caffemodel, _ = every_layer
    model = from_caffe(prototxt, caffemodel, preprocessing={"mean": [104, 117, 123, 0],
                                                            "channel_order": "BGR"})
    assert model.info["preprocessing"]["mean"] == [104.0, 117.0, 123.0, 0.0]
    with pytest.raises(ValueError, match="unknown preprocessing key"):
        from_caffe(prototxt, caffemodel, preprocessing={"mean_value": [1]})
    with pytest.raises(ValueError, match="'std' needs 4 values"):
        from_caffe(prototxt, caffemodel, preprocessing={"std": [1, 2]})
