"""Layers: each against its functional operator (bit-identical) and a NumPy float64 reference;
argument checks; get_config/from_config; weights; shape inference vs the operators."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
import fastconv.functional as F
import reference as R
from fastconv import layers as L
from reference import assert_close, scale_of


def _random_weights(layer, rng):
    """Random values for every weight; variances positive."""
    values = {}
    for name, w in layer.weights.items():
        low = 0.5 if name == "moving_variance" else -1.0
        values[name] = rng.uniform(low, 1.5, size=w.shape).astype(np.float32)
    layer.set_weights(values)
    return layer.weights


# Each case: (layer, sample shape(s), functional(x, w), float64 reference(x, w), reduction length
# [, input amplitude]). x is an array, or a list for merging layers; w is the layer's weight dict.
# The amplitudes reach ReLU6's clamp and the non-linear range of LRN.
CASES = {
    "conv_same_stride_relu": (
        lambda: L.Conv2D(5, 3, strides=2, padding="same", activation="relu"), (3, 9, 10),
        lambda x, w: F.conv2d(x, w["kernel"], w["bias"], stride=2, padding="same", activation="relu"),
        lambda x, w: R.conv2d(x, w["kernel"], w["bias"], stride=2, padding="same", activation="relu"),
        27),
    "conv_grouped_dilated_explicit_pad": (
        lambda: L.Conv2D(6, (3, 1), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2,
                         use_bias=False), (4, 7, 8),
        lambda x, w: F.conv2d(x, w["kernel"], padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2),
        lambda x, w: R.conv2d(x, w["kernel"], padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2),
        6),
    "conv_pointwise_softmax": (
        lambda: L.Conv2D(4, 1, activation="softmax"), (3, 5, 5),
        lambda x, w: F.softmax(F.conv2d(x, w["kernel"], w["bias"]), axis=1),
        lambda x, w: R.softmax(R.conv2d(x, w["kernel"], w["bias"]), axis=1),
        3),
    "dense_tanh": (
        lambda: L.Dense(7, activation="tanh"), (12,),
        lambda x, w: F.dense(x, w["kernel"], w["bias"], activation="tanh"),
        lambda x, w: R.dense(x, w["kernel"], w["bias"], activation="tanh"),
        12),
    "dense_softmax_no_bias": (
        lambda: L.Dense(3, activation="softmax", use_bias=False), (6,),
        lambda x, w: F.softmax(F.dense(x, w["kernel"]), axis=-1),
        lambda x, w: R.softmax(R.dense(x, w["kernel"]), axis=-1),
        6),
    "max_pool_ceil": (
        lambda: L.MaxPool2D(3, strides=2, ceil_mode=True), (3, 8, 8),
        lambda x, w: F.max_pool2d(x, 3, 2, ceil_mode=True),
        lambda x, w: R.max_pool2d(x, 3, 2, ceil_mode=True),
        1),
    "max_pool_padded": (
        lambda: L.MaxPooling2D(2, padding=1), (2, 5, 6),
        lambda x, w: F.max_pool2d(x, 2, padding=1),
        lambda x, w: R.max_pool2d(x, 2, padding=1),
        1),
    "avg_pool_exclude_pad_ceil": (
        lambda: L.AvgPool2D(3, strides=2, padding=1, ceil_mode=True, count_include_pad=False),
        (3, 8, 7),
        lambda x, w: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        lambda x, w: R.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        9),
    "avg_pool_same": (
        lambda: L.AveragePooling2D((2, 3), strides=(1, 2), padding="same"), (2, 6, 7),
        lambda x, w: F.avg_pool2d(x, (2, 3), (1, 2), "same"),
        lambda x, w: R.avg_pool2d(x, (2, 3), (1, 2), "same"),
        6),
    "global_avg_pool": (
        lambda: L.GlobalAveragePooling2D(), (4, 5, 6),
        lambda x, w: F.global_avg_pool2d(x, keepdims=False),
        lambda x, w: R.global_avg_pool2d(x, keepdims=False),
        30),
    "global_avg_pool_keepdims": (
        lambda: L.GlobalAveragePooling2D(keepdims=True), (4, 3, 3),
        lambda x, w: F.global_avg_pool2d(x),
        lambda x, w: R.global_avg_pool2d(x),
        9),
    "flatten": (
        L.Flatten, (3, 4, 5),
        lambda x, w: F.flatten(x),
        lambda x, w: R.f64(x).reshape(len(x), -1),
        1),
    "dropout": (
        lambda: L.Dropout(0.4), (3, 4),
        lambda x, w: x,
        lambda x, w: R.f64(x),
        1),
    "relu": (L.ReLU, (3, 4, 4), lambda x, w: F.relu(x), lambda x, w: R.relu(x), 1),
    "relu6": (L.ReLU6, (3, 4), lambda x, w: F.relu6(x), lambda x, w: R.relu6(x), 1, 8.0),
    "activation_sigmoid": (
        lambda: L.Activation("sigmoid"), (5,),
        lambda x, w: F.sigmoid(x), lambda x, w: R.sigmoid(x), 1),
    "activation_tanh": (
        lambda: L.Activation("TANH"), (2, 3, 3),
        lambda x, w: F.tanh(x), lambda x, w: R.tanh(x), 1),
    "activation_linear": (
        lambda: L.Activation("linear"), (2, 3),
        lambda x, w: x, lambda x, w: R.f64(x), 1),
    "activation_softmax_channels": (
        lambda: L.Activation("softmax"), (4, 2, 3),
        lambda x, w: F.softmax(x, axis=1), lambda x, w: R.softmax(x, axis=1), 4),
    "softmax_default_axis_is_channels": (
        L.Softmax, (5, 3, 3),
        lambda x, w: F.softmax(x, axis=1), lambda x, w: R.softmax(x, axis=1), 5),
    "softmax_literal_axis": (
        lambda: L.Softmax(axis=3), (5, 3, 4),
        lambda x, w: F.softmax(x, axis=3), lambda x, w: R.softmax(x, axis=3), 4),
    "batch_norm_4d": (
        lambda: L.BatchNormalization(epsilon=1e-3), (4, 5, 6),
        lambda x, w: F.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"],
                                  eps=1e-3),
        lambda x, w: R.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"],
                                  eps=1e-3),
        4),
    "batch_norm_flat": (
        L.BatchNormalization, (6,),
        lambda x, w: F.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"]),
        lambda x, w: R.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"]),
        4),
    "lrn": (
        lambda: L.LocalResponseNormalization(3, alpha=1e-2, beta=0.75, k=2.0), (7, 4, 4),
        lambda x, w: F.lrn(x, 3, 1e-2, 0.75, 2.0),
        lambda x, w: R.lrn(x, 3, 1e-2, 0.75, 2.0),
        8, 4.0),
    "zero_padding": (
        lambda: L.ZeroPadding2D(((1, 2), (0, 3))), (2, 3, 4),
        lambda x, w: np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 3))),
        lambda x, w: np.pad(R.f64(x), ((0, 0), (0, 0), (1, 2), (0, 3))),
        1),
    "concatenate_channels": (
        L.Concatenate, [(2, 4, 4), (3, 4, 4), (1, 4, 4)],
        lambda xs, w: F.concat(xs),
        lambda xs, w: np.concatenate([R.f64(x) for x in xs], axis=1),
        1),
    "concatenate_width": (
        lambda: L.Concatenate(axis=3), [(2, 4, 1), (2, 4, 3)],
        lambda xs, w: F.concat(xs, axis=3),
        lambda xs, w: np.concatenate([R.f64(x) for x in xs], axis=3),
        1),
    "add_three_relu": (
        lambda: L.Add(activation="relu"), [(3, 4, 4)] * 3,
        lambda xs, w: F.add(F.add(xs[0], xs[1]), xs[2], activation="relu"),
        lambda xs, w: R.relu(R.f64(xs[0]) + R.f64(xs[1]) + R.f64(xs[2])),
        3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_functional_and_float64(case, rng):
    make, shapes, functional, reference, reduction, *amplitude = CASES[case]
    layer = make()
    merges = isinstance(shapes, list)
    xs = [R.rand(rng, (3,) + s) * np.float32(amplitude[0] if amplitude else 1.0)
          for s in (shapes if merges else [shapes])]
    layer.build(shapes, rng)
    weights = _random_weights(layer, rng)
    x = xs if merges else xs[0]
    got = layer(x)
    expected_shape = (3,) + layer.compute_output_shape(shapes)
    assert got.shape == expected_shape
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, functional(x, weights))
    assert_close(got, reference(x, weights), reduction_length=reduction,
                 scale=scale_of(*xs, *weights.values()))


def test_eager_call_builds_from_the_first_input(rng):
    layer = L.Conv2D(4, 3)
    assert not layer.built and layer.weights == {}
    y = layer(R.rand(rng, (2, 3, 6, 6)))
    assert layer.built and y.shape == (2, 4, 4, 4)
    assert layer.weights["kernel"].shape == (4, 3, 3, 3)
    assert np.all(layer.weights["bias"] == 0)
    with pytest.raises(ValueError, match=r"Conv2D: was built for 3 input channels; received 5"):
        layer(R.rand(rng, (2, 5, 6, 6)))


def test_initialisers_are_seedable_and_glorot_bounded():
    a, b = L.Dense(50), L.Dense(50)
    a.build((30,), np.random.default_rng(7))
    b.build((30,), np.random.default_rng(7))
    np.testing.assert_array_equal(a.weights["kernel"], b.weights["kernel"])
    limit = np.sqrt(6 / (30 + 50))
    assert np.abs(a.weights["kernel"]).max() <= limit
    assert np.abs(a.weights["kernel"]).max() > 0.9 * limit
    bn = L.BatchNormalization()
    bn.build((3, 4, 4))
    assert [w.tolist() for w in bn.get_weights()] == [[1.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3]


# Weights ------------------------------------------------------------------------------------

def test_set_weights_checks_names_counts_and_shapes(rng):
    layer = L.Conv2D(2, 3, input_shape=(4, 5, 5))
    with pytest.raises(ValueError, match="not built"):
        layer.set_weights([])
    with pytest.raises(ValueError, match="not built"):
        layer.count_params()
    layer.build((4, 5, 5), rng)
    assert list(layer.weights) == ["kernel", "bias"]
    assert layer.count_params() == 2 * 4 * 9 + 2
    with pytest.raises(ValueError, match=r"expects 2 arrays \['kernel', 'bias'\]; received 1"):
        layer.set_weights([np.zeros((2, 4, 3, 3))])
    with pytest.raises(ValueError, match=r"weight 'kernel' must have shape \(2, 4, 3, 3\); received shape \(3, 3, 4, 2\)"):
        layer.set_weights([np.zeros((3, 3, 4, 2)), np.zeros(2)])
    with pytest.raises(ValueError, match="expects the names"):
        layer.set_weights({"kernel": np.zeros((2, 4, 3, 3)), "b": np.zeros(2)})
    with pytest.raises(TypeError, match="real numbers"):
        layer.set_weights([np.zeros((2, 4, 3, 3), bool), np.zeros(2)])
    kernel = rng.standard_normal((2, 4, 3, 3))
    layer.set_weights({"bias": [1, 2], "kernel": kernel})
    assert layer.weights["kernel"].dtype == np.float32
    np.testing.assert_array_equal(layer.weights["kernel"], kernel.astype(np.float32))
    got = layer.get_weights()
    got[1][:] = 9  # copies: the layer keeps its values
    assert layer.weights["bias"].tolist() == [1.0, 2.0]


def test_count_macs_per_sample():
    conv = L.Conv2D(8, 3, groups=2, padding=1)
    conv.build((4, 10, 10))
    assert conv.count_macs((4, 10, 10), (8, 10, 10)) == 8 * 100 * 2 * 9
    dense = L.Dense(5)
    dense.build((7,))
    assert dense.count_macs((7,), (5,)) == 35
    assert L.MaxPool2D(2).count_macs((1, 4, 4), (1, 2, 2)) == 0


# Argument checks ----------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: L.Conv2D(0, 3), ValueError, r"Conv2D: `filters` must be an integer >= 1; received 0"),
    (lambda: L.Conv2D(4.0, 3), TypeError, r"`filters` must be an integer >= 1; received 4.0 of type float"),
    (lambda: L.Conv2D(4, (3, 3, 3)), ValueError, r"`kernel_size` must be an int or a pair"),
    (lambda: L.Conv2D(4, 3, strides=0), ValueError, r"`strides` must be an integer >= 1; received 0"),
    (lambda: L.Conv2D(4, 3, padding="full"), ValueError, r"`padding` must be .*received 'full'"),
    (lambda: L.Conv2D(4, 3, padding=-1), ValueError, r"`padding` must be an integer >= 0; received -1"),
    (lambda: L.Conv2D(4, 3, padding=((1, 2), (3,))), ValueError, r"`padding` must be"),
    (lambda: L.Conv2D(4, 3, dilation=(1, 0)), ValueError, r"`dilation` must be an integer >= 1"),
    (lambda: L.Conv2D(6, 3, groups=4), ValueError, r"`groups` must divide `filters`; received filters=6, groups=4"),
    (lambda: L.Conv2D(4, 3, activation="gelu"), ValueError, r"`activation` must be one of .*received 'gelu'"),
    (lambda: L.Conv2D(4, 3, use_bias=1), TypeError, r"`use_bias` must be True or False; received 1"),
    (lambda: L.Conv2D(4, 3, name="c1", strides=-2), ValueError, r"Conv2D 'c1': `strides`"),
    (lambda: L.Conv2D(4, 3, name=""), TypeError, r"`name` must be a non-empty string"),
    (lambda: L.Conv2D(4, 3, input_shape=(3, 0, 8)), ValueError, r"`input_shape` must be an integer >= 1; received 0"),
    (lambda: L.Conv2D(4, 3, input_shape=32), TypeError, r"`input_shape` must be a non-empty tuple"),
    (lambda: L.Dense(-1), ValueError, r"Dense: `units` must be an integer >= 1; received -1"),
    (lambda: L.Dense(3, activation=np.tanh), ValueError, r"Dense: `activation` must be one of"),
    (lambda: L.MaxPool2D(0), ValueError, r"MaxPool2D: `pool_size` must be an integer >= 1"),
    (lambda: L.MaxPool2D(2, strides=(1, 2, 3)), ValueError, r"MaxPool2D: `strides` must be an int or a pair"),
    (lambda: L.AvgPool2D(2, ceil_mode="yes"), TypeError, r"AvgPool2D: `ceil_mode` must be True or False"),
    (lambda: L.AvgPool2D(2, count_include_pad=None), TypeError, r"`count_include_pad` must be True or False"),
    (lambda: L.GlobalAveragePooling2D(keepdims=0), TypeError, r"`keepdims` must be True or False"),
    (lambda: L.Dropout(1.0), ValueError, r"Dropout: `rate` must be in \[0, 1\); received 1.0"),
    (lambda: L.Dropout(-0.1), ValueError, r"Dropout: `rate` must be >= 0.0"),
    (lambda: L.Dropout("0.5"), TypeError, r"Dropout: `rate` must be a real number"),
    (lambda: L.Activation("swish"), ValueError, r"Activation: `activation` must be one of"),
    (lambda: L.BatchNormalization(epsilon=-1e-5), ValueError, r"`epsilon` must be >= 0.0"),
    (lambda: L.LocalResponseNormalization(0), ValueError, r"`size` must be an integer >= 1; received 0"),
    (lambda: L.LocalResponseNormalization(5, alpha="a"), TypeError, r"`alpha` must be a real number"),
    (lambda: L.Softmax(axis=0), ValueError, r"Softmax: `axis` must be -1 \(the channel axis\) or >= 1 \(axis 0 is the batch\); received 0"),
    (lambda: L.Softmax(axis=-2), ValueError, r"Softmax: `axis` must be -1 .*; received -2"),
    (lambda: L.Concatenate(axis=1.5), TypeError, r"Concatenate: `axis` must be an integer"),
    (lambda: L.ZeroPadding2D("same"), ValueError, r"ZeroPadding2D: `padding` must be an int >= 0, a pair"),
    (lambda: L.Add(activation="softplus"), ValueError, r"Add: `activation` must be one of"),
    (lambda: fastconv.Input((3, -1, 4)), ValueError, r"InputLayer: `shape` must be an integer >= 1; received -1"),
    (lambda: fastconv.Input((3, 4, 4), data_format="NCHW"), ValueError, r"`data_format` must be 'channels_first' or 'channels_last'; received 'NCHW'"),
]


@pytest.mark.parametrize("make, error, message", BAD_ARGUMENTS,
                         ids=[f"{i}" for i in range(len(BAD_ARGUMENTS))])
def test_bad_arguments_name_layer_argument_and_value(make, error, message):
    with pytest.raises(error, match=message):
        make()


BAD_INPUTS = [
    (lambda: L.Dense(4), (16, 5, 5), r"Dense: expects flat inputs \(features,\) per sample; received \(None, 16, 5, 5\) \(add a Flatten layer before it\)"),
    (lambda: L.Conv2D(4, 3), (3, 8), r"Conv2D: expects inputs shaped \(C, H, W\) per sample \(channels_first\); received \(None, 3, 8\)"),
    (lambda: L.Conv2D(4, 3, groups=2), (3, 8, 8), r"`groups`=2 must divide the input channels; received 3 channels"),
    (lambda: L.Conv2D(4, 5), (3, 4, 8), r"Conv2D: the kernel height 5 .* larger than the padded input height 4"),
    (lambda: L.MaxPool2D(3, name="pool"), (3, 2, 9), r"MaxPool2D 'pool': the kernel height 3"),
    (lambda: L.GlobalAveragePooling2D(), (8,), r"GlobalAveragePooling2D: expects inputs shaped \(C, H, W\)"),
    (lambda: L.BatchNormalization(), (2, 3, 4, 5), r"BatchNormalization: expects inputs shaped \(C,\), \(C, L\) or \(C, H, W\)"),
    (lambda: L.Softmax(axis=3), (10,), r"Softmax: `axis` must be -1 \(the channel axis\) or in 1..1 for inputs of rank 2; received 3"),
]


@pytest.mark.parametrize("make, shape, message", BAD_INPUTS, ids=[f"{i}" for i in range(len(BAD_INPUTS))])
def test_symbolic_call_rejects_inputs_that_do_not_fit(make, shape, message):
    layer = make()
    with pytest.raises(ValueError, match=message):
        layer(fastconv.Input(shape))


def test_merge_layers_check_their_input_lists():
    a, b = fastconv.Input((2, 4, 4)), fastconv.Input((3, 4, 5))
    with pytest.raises(ValueError, match=r"Concatenate: input shapes must match except on axis 1; received \[\(None, 2, 4, 4\), \(None, 3, 4, 5\)\]"):
        L.Concatenate()([a, b])
    with pytest.raises(ValueError, match=r"Concatenate: inputs must have the same rank"):
        L.Concatenate()([a, fastconv.Input((2, 4))])
    with pytest.raises(ValueError, match=r"Add: inputs must all have the same shape"):
        L.Add()([a, b])
    with pytest.raises(TypeError, match=r"Add: expects a list of at least 2 tensors; received list of length 1"):
        L.Add()([a])
    with pytest.raises(TypeError, match=r"Concatenate: expects a list of at least 2 tensors; received SymbolicTensor"):
        L.Concatenate()(a)
    with pytest.raises(TypeError, match=r"ReLU: expects one tensor; received a list of 2"):
        L.ReLU()([a, a])
    with pytest.raises(TypeError, match="cannot mix symbolic tensors and arrays"):
        L.Add()([a, np.zeros((1, 2, 4, 4))])
    channels_last = fastconv.Input((4, 4, 2), data_format="channels_last")
    with pytest.raises(ValueError, match=r"Add: inputs have different data formats"):
        L.Add()([a, channels_last])


def test_input_layer_is_not_called_and_eager_calls_need_a_batch():
    x = fastconv.Input((3, 4, 4), name="image")
    with pytest.raises(TypeError, match="an input layer is not called"):
        x.layer(x)
    with pytest.raises(ValueError, match=r"ReLU: expects a batch"):
        L.ReLU()(np.zeros(3))


def test_layer_built_for_one_format_refuses_the_other():
    conv = L.Conv2D(2, 1)
    conv(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"Conv2D: was built for channels_first inputs; received channels_last"):
        conv(fastconv.Input((4, 4, 3), data_format="channels_last"))


# Configuration ------------------------------------------------------------------------------

CONFIGURED = [
    fastconv.layers.InputLayer((4, 8, 8), name="image", data_format="channels_last"),
    L.Conv2D(8, (3, 5), strides=(2, 1), padding=((0, 1), (2, 2)), dilation=2, groups=2,
             activation="relu6", use_bias=False, name="conv", input_shape=(4, 8, 8)),
    L.Conv2D(8, 3, padding="SAME_LOWER"),
    L.Dense(10, activation="softmax", use_bias=False, name="logits"),
    L.MaxPool2D(3, strides=2, padding=1, ceil_mode=True),
    L.AvgPool2D((2, 3), padding="same", count_include_pad=False),
    L.GlobalAveragePooling2D(keepdims=True),
    L.Flatten(name="flat"),
    L.Dropout(0.25),
    L.Activation("sigmoid"),
    L.ReLU(input_shape=(7,)),
    L.ReLU6(),
    L.Softmax(axis=2),
    L.BatchNormalization(epsilon=1e-3),
    L.LocalResponseNormalization(5, alpha=2e-4, beta=0.5, k=2.0),
    L.ZeroPadding2D((1, 2)),
    L.Concatenate(axis=2),
    L.Add(activation="relu"),
    L.AdaptiveAvgPool2D((6, 7)),
    L.Rescaling([2.0, 1.0, 0.5], -1.0),
    L.PartialConv2D([[0, 1], [1, 2], [0, 1, 2]], 5, activation="lecun_tanh"),
    L.Subsampling2D(2, activation="lecun_tanh"),
    L.EuclideanRBF(10),
]


@pytest.mark.parametrize("layer", CONFIGURED, ids=lambda layer: type(layer).__name__)
def test_config_round_trips_through_json(layer):
    config = layer.get_config()
    entry = json.loads(json.dumps(L.serialize(layer)))
    clone = L.deserialize(entry)
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    assert type(layer).from_config(config).get_config() == config


def test_every_layer_class_has_a_config_case():
    covered = {type(layer).__name__ for layer in CONFIGURED}
    public = {name for name in L.__all__ if isinstance(getattr(L, name), type)
              and issubclass(getattr(L, name), L.Layer) and getattr(L, name) is not L.Layer}
    assert public <= covered | {"MaxPooling2D", "AveragePooling2D"}


def test_config_keeps_the_arguments_given():
    config = L.Conv2D(8, 3, padding="SAME_LOWER", name="c").get_config()
    assert config == {"name": "c", "filters": 8, "kernel_size": (3, 3), "strides": (1, 1),
                      "padding": "same_lower", "dilation": (1, 1), "groups": 1,
                      "activation": None, "use_bias": True}
    with pytest.raises(ValueError, match=r"unknown layer class 'Conv3D'"):
        L.deserialize({"class_name": "Conv3D", "config": {}})


# Shape inference agrees with the operators ----------------------------------------------------

_paddings = st.one_of(
    st.sampled_from(["valid", "same", "same_lower"]), st.integers(0, 2),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
              st.tuples(st.integers(0, 2), st.integers(0, 2))))


@settings(max_examples=150, deadline=None)
@given(size=st.tuples(st.integers(1, 9), st.integers(1, 9)), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=_paddings,
       dilation=st.integers(1, 2), ceil_mode=st.booleans(), kind=st.sampled_from(["conv", "max", "avg"]),
       channels_last=st.booleans())
def test_compute_output_shape_matches_the_operator(size, kernel, strides, padding, dilation, ceil_mode,
                                                   kind, channels_last):
    if kind == "conv":
        layer = L.Conv2D(2, kernel, strides=strides, padding=padding, dilation=dilation)
    elif kind == "max":
        layer = L.MaxPool2D(kernel, strides=strides, padding=padding, ceil_mode=ceil_mode)
    else:
        layer = L.AvgPool2D(kernel, strides=strides, padding=padding, ceil_mode=ceil_mode)
    layer.data_format = "channels_last" if channels_last else "channels_first"
    sample = size + (3,) if channels_last else (3,) + size
    try:
        predicted = layer.compute_output_shape(sample)
    except ValueError:
        predicted = None
    try:
        actual = layer(np.ones((1,) + sample, np.float32)).shape[1:]
    except ValueError:
        actual = None
    assert predicted == actual
