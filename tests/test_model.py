"""Models: Sequential and functional graphs against the same computation written with
fastconv.functional; summary; config and pickle round trips; data formats; batching; input
checks; the liveness schedule; a torch network with copied weights."""
import io
import json
import pickle
import re
import weakref

import numpy as np
import pytest

import fastconv.functional as F
import reference as R
from fastconv import Input, Model, Sequential
from fastconv.layers import (Add, AvgPool2D, BatchNormalization, Concatenate, Conv2D, Dense,
                             Dropout, Flatten, GlobalAveragePooling2D, Layer,
                             LocalResponseNormalization, MaxPool2D, ReLU, Softmax, ZeroPadding2D)


def randomise(model, rng):
    """Random weights everywhere (positive variances), so no layer is an identity."""
    for layer in model.layers:
        layer.set_weights({name: rng.uniform(0.5 if name == "moving_variance" else -1, 1.5,
                                             w.shape) for name, w in layer.weights.items()})
    return model


def lenet5(data_format="channels_first", seed=0):
    shape = (1, 32, 32) if data_format == "channels_first" else (32, 32, 1)
    return Sequential([
        Input(shape, data_format=data_format),
        Conv2D(6, 5, activation="relu"), MaxPool2D(2),
        Conv2D(16, 5, activation="relu"), MaxPool2D(2),
        Flatten(),
        Dense(120, activation="relu"), Dense(84, activation="relu"), Dense(10),
    ], name="lenet5", seed=seed)


def inception_residual(seed=0):
    """Three inception branches joined by Concatenate, then a residual Add."""
    x = Input((8, 12, 12), name="image")
    b1 = Conv2D(4, 1, activation="relu")(x)
    b2 = Conv2D(3, 1, activation="relu")(x)
    b2 = Conv2D(6, 3, padding="same", activation="relu")(b2)
    b3 = MaxPool2D(3, strides=1, padding=1)(x)
    b3 = Conv2D(2, 1, activation="relu")(b3)
    y = Concatenate()([b1, b2, b3])
    r = Conv2D(12, 3, padding=1, use_bias=False)(y)
    r = BatchNormalization()(r)
    z = Add(activation="relu")([r, y])
    return Model(x, Dense(5)(GlobalAveragePooling2D()(z)), name="inception_residual", seed=seed)


# Sequential LeNet-5 ---------------------------------------------------------------------------

def test_lenet5_parameters_names_and_summary():
    model = lenet5()
    assert model.count_params() == 61_706
    assert [layer.name for layer in model.layers] == [
        "conv2d", "max_pool2d", "conv2d_1", "max_pool2d_1", "flatten", "dense", "dense_1", "dense_2"]
    lines = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    rows = [("conv2d (Conv2D)", "(None, 6, 28, 28)", "156", "117,600"),
            ("max_pool2d (MaxPool2D)", "(None, 6, 14, 14)", "0", "0"),
            ("conv2d_1 (Conv2D)", "(None, 16, 10, 10)", "2,416", "240,000"),
            ("max_pool2d_1 (MaxPool2D)", "(None, 16, 5, 5)", "0", "0"),
            ("flatten (Flatten)", "(None, 400)", "0", "0"),
            ("dense (Dense)", "(None, 120)", "48,120", "48,000"),
            ("dense_1 (Dense)", "(None, 84)", "10,164", "10,080"),
            ("dense_2 (Dense)", "(None, 10)", "850", "840")]
    body = text.splitlines()
    for row in rows:
        assert any(re.fullmatch(r"\s+".join(re.escape(cell) for cell in row), line) for line in body), row
    assert "Total params: 61,706" in body
    assert "Total MACs: 416,520 per sample" in body
    assert "Connected to" not in text and "InputLayer" not in text
    assert body[0] == 'Model: "lenet5" (channels_first)'


def test_summary_prints_unless_print_fn_is_none(capsys):
    text = lenet5().summary()
    assert capsys.readouterr().out == text + "\n"
    assert lenet5().summary(print_fn=None) == text
    assert capsys.readouterr().out == ""


def test_lenet5_equals_the_functional_computation(rng):
    model = randomise(lenet5(), rng)
    x = R.rand(rng, (4, 1, 32, 32))
    w = {layer.name: layer.weights for layer in model.layers}
    y = F.max_pool2d(F.conv2d(x, w["conv2d"]["kernel"], w["conv2d"]["bias"], activation="relu"), 2)
    y = F.max_pool2d(F.conv2d(y, w["conv2d_1"]["kernel"], w["conv2d_1"]["bias"], activation="relu"), 2)
    y = F.flatten(y)
    y = F.dense(y, w["dense"]["kernel"], w["dense"]["bias"], activation="relu")
    y = F.dense(y, w["dense_1"]["kernel"], w["dense_1"]["bias"], activation="relu")
    y = F.dense(y, w["dense_2"]["kernel"], w["dense_2"]["bias"])
    np.testing.assert_array_equal(model.predict(x), y)
    np.testing.assert_array_equal(model(x), y)


def test_first_layer_input_shape_builds_the_same_model():
    declared = Sequential([Conv2D(2, 3, input_shape=(1, 5, 5)), Flatten(), Dense(3)], seed=1)
    explicit = Sequential([Input((1, 5, 5)), Conv2D(2, 3), Flatten(), Dense(3)], seed=1)
    assert declared.count_params() == explicit.count_params() == 2 * 9 + 2 + 18 * 3 + 3
    for a, b in zip(declared.get_weights(), explicit.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same graph order


def test_names_are_unique_per_model_not_per_session():
    assert lenet5().layers[0].name == lenet5().layers[0].name == "conv2d"
    x = Input((3, 4, 4))
    y = Conv2D(3, 1, name="conv2d_1")(x)
    y = Conv2D(3, 1)(Conv2D(3, 1)(y))
    model = Model(x, y)
    assert [layer.name for layer in model.layers] == ["input", "conv2d_1", "conv2d", "conv2d_2"]


# Functional graph -----------------------------------------------------------------------------

def test_inception_and_residual_graph_equals_the_functional_computation(rng):
    model = randomise(inception_residual(), rng)
    assert [layer.name for layer in model.layers] == [
        "image", "conv2d", "conv2d_1", "conv2d_2", "max_pool2d", "conv2d_3", "concatenate",
        "conv2d_4", "batch_normalization", "add", "global_average_pooling2d", "dense"]
    x = R.rand(rng, (3, 8, 12, 12))
    w = {layer.name: layer.weights for layer in model.layers}

    def conv(name, inp, **kw):
        return F.conv2d(inp, w[name]["kernel"], w[name].get("bias"), **kw)

    b1 = conv("conv2d", x, activation="relu")
    b2 = conv("conv2d_2", conv("conv2d_1", x, activation="relu"), padding="same", activation="relu")
    b3 = conv("conv2d_3", F.max_pool2d(x, 3, 1, 1), activation="relu")
    y = F.concat([b1, b2, b3])
    bn = w["batch_normalization"]
    r = F.batch_norm(conv("conv2d_4", y, padding=1), bn["moving_mean"], bn["moving_variance"],
                     bn["gamma"], bn["beta"])
    z = F.add(r, y, activation="relu")
    expected = F.dense(F.global_avg_pool2d(z, keepdims=False), w["dense"]["kernel"], w["dense"]["bias"])
    # Layer by layer the model makes exactly these calls; its plan folds the BatchNormalization
    # into the convolution and adds the residual in the store, which rounds differently.
    np.testing.assert_array_equal(model._run_layers([x])[0], expected)
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert model.count_params(include_non_trainable=True) == sum(a.size for a in model.get_weights())


def test_graph_summary_shows_connections():
    text = inception_residual().summary(print_fn=None)
    lines = text.splitlines()
    assert "Connected to" in lines[2]
    concat = next(i for i, line in enumerate(lines) if line.startswith("concatenate (Concatenate)"))
    assert lines[concat].endswith("conv2d")
    assert lines[concat + 1].strip() == "conv2d_2" and lines[concat + 2].strip() == "conv2d_3"
    add = next(line for line in lines if line.startswith("add (Add)"))
    assert re.search(r"\(None, 12, 12, 12\)\s+0\s+0\s+batch_normalization$", add)
    assert "image (InputLayer)" in text


def test_multiple_inputs_and_outputs():
    a, b = Input((2, 3, 3), name="a"), Input((2, 3, 3), name="b")
    total = Add()([a, b])
    model = Model([a, b], [total, ReLU()(total)])
    xa, xb = -np.ones((2, 2, 3, 3)), np.zeros((2, 2, 3, 3))
    out = model.predict([xa, xb], batch_size=1)
    assert isinstance(out, list) and len(out) == 2
    np.testing.assert_array_equal(out[0], -np.ones((2, 2, 3, 3), np.float32))
    np.testing.assert_array_equal(out[1], np.zeros((2, 2, 3, 3), np.float32))
    single = Model([a, b], [total])
    assert isinstance(single([xa, xb]), list)
    with pytest.raises(ValueError, match=r"expects a list of 2 arrays, one per input \['a', 'b'\]; received ndarray"):
        model.predict(xa)
    with pytest.raises(ValueError, match="same batch size"):
        model.predict([xa, xb[:1]])


def test_graph_construction_errors():
    x, other = Input((3, 4, 4)), Input((3, 4, 4))
    with pytest.raises(ValueError, match="depend on an input that is not in `inputs`"):
        Model(x, Add()([x, other]))
    with pytest.raises(ValueError, match="every input must be used once and reach the outputs"):
        Model([x, other], ReLU()(x))
    conv = Conv2D(3, 1)
    with pytest.raises(ValueError, match=r"Model 'model': Conv2D is called more than once .* shared layers are not supported"):
        Model(x, conv(conv(x)))
    with pytest.raises(ValueError, match=r"duplicated: \['twin'\]"):
        Model(x, ReLU(name="twin")(ReLU(name="twin")(x)))
    with pytest.raises(TypeError, match=r"`outputs` must be symbolic tensors .* received ndarray"):
        Model(x, np.zeros(3))
    with pytest.raises(ValueError, match="`inputs` must come from fastconv.Input"):
        hidden = ReLU()(x)
        Model(hidden, ReLU()(hidden))
    with pytest.raises(TypeError, match="nesting models"):
        inception_residual()(Input((8, 12, 12)))


def test_sequential_construction_errors():
    with pytest.raises(ValueError, match=r"or with a layer given `input_shape=`"):
        Sequential([Conv2D(2, 3), Flatten()])
    with pytest.raises(ValueError, match="at least one layer after the input"):
        Sequential([Input((3,))])
    with pytest.raises(ValueError, match="must start with"):
        Sequential([])
    with pytest.raises(TypeError, match=r"element 2 must be a single-input layer; received <Add"):
        Sequential([Input((3,)), ReLU(), Add()])
    with pytest.raises(ValueError, match=r"declares input_shape \(4,\) but the Input has shape \(3,\)"):
        Sequential([Input((3,)), Dense(2, input_shape=(4,))])
    with pytest.raises(ValueError, match="disagrees with the Input's 'channels_first'"):
        Sequential([Input((3,)), Dense(2)], data_format="channels_last")
    with pytest.raises(ValueError, match="the output of ReLU"):
        Sequential([ReLU()(Input((3,))), Dense(2)])


def test_get_layer():
    model = inception_residual()
    assert isinstance(model.get_layer("batch_normalization"), BatchNormalization)
    assert model.get_layer("image").shape == (8, 12, 12)
    with pytest.raises(ValueError, match=r"no layer named 'bn'; layers: \['image', 'conv2d'"):
        model.get_layer("bn")


# Predict: input checks and batching -----------------------------------------------------------

def test_predict_checks_its_input():
    model = lenet5()
    with pytest.raises(ValueError, match=re.escape(
            "Sequential 'lenet5': input 'input' expects arrays shaped (batch, 1, 32, 32) "
            "(channels_first); received shape (2, 32, 32, 1)")):
        model.predict(np.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"received shape \(1, 32, 32\)"):
        model.predict(np.zeros((1, 32, 32)))
    with pytest.raises(TypeError, match="must hold real numbers; received dtype complex128"):
        model.predict(np.zeros((1, 1, 32, 32), complex))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"`batch_size` must be None or an integer >= 1"):
            model.predict(np.zeros((1, 1, 32, 32)), batch_size=bad)


def test_predict_accepts_other_dtypes_and_lists(rng):
    model = randomise(lenet5(), rng)
    x = rng.integers(-3, 3, (2, 1, 32, 32))
    expected = model.predict(x.astype(np.float32))
    np.testing.assert_array_equal(model.predict(x), expected)
    np.testing.assert_array_equal(model.predict(x.tolist()), expected)
    np.testing.assert_array_equal(model.predict([x]), expected)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_predict_in_chunks_equals_one_call(batch_size, rng):
    model = randomise(inception_residual(), rng)
    x = R.rand(rng, (7, 8, 12, 12))
    np.testing.assert_array_equal(model.predict(x, batch_size=batch_size), model.predict(x))


def test_empty_batch():
    assert lenet5().predict(np.zeros((0, 1, 32, 32)), batch_size=4).shape == (0, 10)


# Liveness -------------------------------------------------------------------------------------

def _simulate(model, chain):
    live = set(model._input_ids)
    for step in model._steps:
        assert set(step.inputs) <= live
        live.add(step.output)
        live -= set(step.release)
        if chain:
            assert live == {step.output}
    assert live == set(model._output_ids)
    released = [i for step in model._steps for i in step.release]
    assert len(released) == len(set(released))


def test_schedule_releases_every_intermediate_after_its_last_reader():
    _simulate(lenet5(), chain=True)
    _simulate(inception_residual(), chain=False)
    graph = inception_residual()
    # The input feeds three branches: only the last of them releases it.
    readers = [s for s in graph._steps if graph._input_ids[0] in s.inputs]
    assert [graph._input_ids[0] in s.release for s in readers] == [False, False, True]


class Probe(Layer):
    """Records whether the outputs of earlier Probe calls are still alive when it runs."""

    outputs, alive = [], []

    def call(self, x):
        Probe.alive.append([ref() is not None for ref in Probe.outputs])
        y = F.relu(x)
        Probe.outputs.append(weakref.ref(y))
        return y


def test_run_frees_intermediate_arrays():
    Probe.outputs.clear()
    Probe.alive.clear()
    model = Sequential([Input((2, 3, 3))] + [Probe() for _ in range(4)])
    model.predict(np.ones((1, 2, 3, 3)))
    assert Probe.alive == [[], [True], [False, True], [False, False, True]]


# Config and pickle ----------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lenet5, inception_residual])
def test_config_round_trip_through_json(build, rng):
    model = randomise(build(), rng)
    config = model.get_config()
    rebuilt = type(model).from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(model)
    assert rebuilt.get_config() == config
    rebuilt.set_weights(model.get_weights())
    x = R.rand(rng, (2,) + model.inputs[0].sample_shape)
    np.testing.assert_array_equal(rebuilt.predict(x), model.predict(x))


def test_config_names_inbound_layers():
    config = inception_residual().get_config()
    by_name = {entry["config"]["name"]: entry for entry in config["layers"]}
    assert by_name["concatenate"]["inbound"] == ["conv2d", "conv2d_2", "conv2d_3"]
    assert by_name["add"]["inbound"] == ["batch_normalization", "concatenate"]
    assert by_name["image"] == {"class_name": "InputLayer", "inbound": [],
                                "config": {"name": "image", "shape": (8, 12, 12),
                                           "data_format": "channels_first"}}
    assert config["inputs"] == ["image"] and config["outputs"] == "dense"
    broken = json.loads(json.dumps(config))
    broken["layers"][1]["inbound"] = ["nowhere"]
    with pytest.raises(ValueError, match=r"layer 'conv2d' reads \['nowhere'\], which are not defined before it"):
        Model.from_config(broken)


class _ConfigAndArraysOnly(pickle.Unpickler):
    """Refuses every global except the model classes and NumPy's array reconstruction."""

    def find_class(self, module, name):
        model_class = module == "fastconv.model" and name in ("Model", "Sequential")
        array_part = module.startswith("numpy") and name in ("_reconstruct", "_frombuffer", "ndarray", "dtype")
        if not (model_class or array_part):
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("build", [lenet5, inception_residual])
@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_pickle_stores_config_and_arrays_and_predicts_identically(build, protocol, rng):
    model = randomise(build(), rng)
    data = pickle.dumps(model, protocol=protocol)
    clone = _ConfigAndArraysOnly(io.BytesIO(data)).load()
    assert type(clone) is type(model) and clone.name == model.name
    assert clone.get_config() == model.get_config()
    x = R.rand(rng, (3,) + model.inputs[0].sample_shape)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    assert all(a is not b for a, b in zip(clone.layers, model.layers))


# Data formats ---------------------------------------------------------------------------------

def _two_head_net(data_format):
    cf = data_format == "channels_first"
    x = Input((3, 10, 9) if cf else (10, 9, 3), data_format=data_format)
    a = Conv2D(6, 3, padding="same", activation="relu")(x)
    b = Conv2D(6, 3, strides=1, padding=1, groups=3)(x)
    y = BatchNormalization()(Concatenate()([a, b]))
    y = LocalResponseNormalization(3, alpha=1e-2, k=2.0)(y)
    y = MaxPool2D(2, ceil_mode=True)(y)
    y = ZeroPadding2D(((0, 1), (1, 0)))(y)
    y = AvgPool2D(3, strides=2, padding=1, count_include_pad=False)(Dropout(0.5)(y))
    logits = Dense(7, activation="softmax")(Flatten()(y))
    return Model(x, [logits, Softmax()(GlobalAveragePooling2D(keepdims=True)(y))], seed=3)


def test_channels_last_equals_channels_first_with_transposed_weights(rng):
    first = randomise(_two_head_net("channels_first"), rng)
    last = _two_head_net("channels_last")
    assert last.data_format == "channels_last"
    for cf_layer, cl_layer in zip(first.layers, last.layers):
        weights = dict(cf_layer.weights)
        if isinstance(cf_layer, Conv2D):
            weights["kernel"] = weights["kernel"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if isinstance(cf_layer, Dense):  # its input was flattened in C, H, W order
            units, (c, h, w) = weights["kernel"].shape[0], (12, 3, 3)
            weights["kernel"] = weights["kernel"].reshape(units, c, h, w).transpose(0, 2, 3, 1).reshape(units, -1)
        cl_layer.set_weights(weights)
    x = R.rand(rng, (2, 3, 10, 9))
    (p1, g1), (p2, g2) = first.predict(x), last.predict(x.transpose(0, 2, 3, 1))
    assert g1.shape == (2, 12, 1, 1) and g2.shape == (2, 1, 1, 12)
    np.testing.assert_allclose(p2, p1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g2.transpose(0, 3, 1, 2), g1, rtol=1e-5, atol=1e-6)
    assert "(None, 5, 5, 12)" in last.summary(print_fn=None)


def test_channels_last_lenet_kernel_layout():
    model = lenet5("channels_last")
    assert model.get_layer("conv2d_1").weights["kernel"].shape == (5, 5, 6, 16)
    assert model.get_layer("dense").weights["kernel"].shape == (120, 400)
    assert model.count_params() == 61_706
    assert model.predict(np.zeros((1, 32, 32, 1))).shape == (1, 10)


# PyTorch --------------------------------------------------------------------------------------

def test_torch_network_with_copied_weights():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    conv, bn, linear = net[0], net[1], net[5]
    with torch.no_grad():
        for tensor, low, high in ((bn.weight, 0.5, 1.5), (bn.bias, -0.5, 0.5),
                                  (bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 2.0)):
            tensor.uniform_(low, high)
    net.eval()
    model = Sequential([Input((3, 8, 8)), Conv2D(8, 3, padding=1), BatchNormalization(), ReLU(),
                        MaxPool2D(2), Flatten(), Dense(10)])
    model.set_weights([t.detach().numpy() for t in (
        conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
        linear.weight, linear.bias)])
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = net.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("module", ["fastconv.model", "fastconv.layers", "fastconv.layers.base",
                                    "fastconv.layers.core", "fastconv.layers.conv",
                                    "fastconv.layers.pooling", "fastconv.layers.normalization",
                                    "fastconv.layers.merge"])
def test_docstring_examples(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
