"""The Keras converter against real Keras files and Keras's own forward pass.

- The three DeepXplore MNIST LeNets (Keras 2.0.8 ``save_weights`` files in ../shared/data)
  reproduce their published accuracies to the last image and Keras's own predicted classes.
- keras.applications VGG16 and ResNet50 (random weights, non-trivial BatchNorm statistics) saved
  by Keras 3 as legacy ``.h5`` (architecture from the file) and as ``.weights.h5`` equal Keras's
  logits.
- A small model with every supported layer class round-trips through ``.weights.h5``,
  ``.keras`` and ``.h5``.
- Damaged files, foreign files and mismatched shapes are refused with messages naming the file,
  the layer and the problem.

Keras runs on the torch backend (KERAS_BACKEND=torch); the tests that need it are skipped when
Keras is not installed, the file-based ones when h5py or ../shared/data is absent.
"""
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.convert.keras import from_keras, model_from_keras_config, read_keras_file
from fastconv.layers import Activation, Conv2D, Dense, Flatten, MaxPool2D

h5py = pytest.importorskip("h5py")
# Keras 3 on torch with NumPy 2 warns on every array it converts; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
os.environ.setdefault("KERAS_BACKEND", "torch")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "keras_lenet").is_dir(),
                                reason="../shared/data is not here")

# file stem -> (conv filters, hidden Dense layers, correct answers of 10,000 on the MNIST test set)
DEEPXPLORE = {"Model1": ((4, 12), [], 9788),
              "Model2": ((6, 16), [("fc1", 84)], 9852),
              "Model3": ((6, 16), [("fc1", 120), ("fc2", 84)], 9881)}


def read_idx(path):
    """An IDX array (MNIST's format): magic (0, 0, dtype 0x08 = uint8, rank), sizes, data."""
    raw = gzip.decompress(Path(path).read_bytes())
    assert raw[:3] == b"\x00\x00\x08", f"{path}: not a uint8 IDX file"
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


@pytest.fixture(scope="module")
def mnist():
    images = read_idx(DATA / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")
    return (images.astype(np.float32) / 255.0)[..., None], labels  # NHWC, pixels / 255


def deepxplore_lenet(which, data_format="channels_first", keras_names=True):
    """The DeepXplore LeNet ``which`` (data/README.md), built in fastconv; with
    ``keras_names=False`` the layers keep fastconv's default names (matched by order)."""
    (f1, f2), hidden, _ = DEEPXPLORE[which]
    name = (lambda n: n) if keras_names else (lambda n: None)
    shape = (28, 28, 1) if data_format == "channels_last" else (1, 28, 28)
    x = inputs = fastconv.Input(shape, data_format=data_format)
    for block, filters in ((1, f1), (2, f2)):
        x = Conv2D(filters, 5, padding="same", activation="relu",
                   name=name(f"block{block}_conv1"))(x)
        x = MaxPool2D(2, name=name(f"block{block}_pool1"))(x)
    x = Flatten(name=name("flatten"))(x)
    for layer_name, units in hidden:
        x = Dense(units, activation="relu", name=name(layer_name))(x)
    x = Activation("softmax", name=name("predictions"))(Dense(10, name=name("before_softmax"))(x))
    return fastconv.Model(inputs, x, name=which)


def keras_deepxplore_lenet(keras, which):
    (f1, f2), hidden, _ = DEEPXPLORE[which]
    layers = keras.layers
    x = inputs = keras.Input((28, 28, 1))
    for block, filters in ((1, f1), (2, f2)):
        x = layers.Conv2D(filters, 5, padding="same", activation="relu",
                          name=f"block{block}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool1")(x)
    x = layers.Flatten(name="flatten")(x)
    for layer_name, units in hidden:
        x = layers.Dense(units, activation="relu", name=layer_name)(x)
    x = layers.Activation("softmax", name="predictions")(layers.Dense(10, name="before_softmax")(x))
    return keras.Model(inputs, x)


# (file, fastconv data format, keras layer names?): channels_first exercises the Flatten column
# permutation, channels_last the direct copy, default names the match by order.
LENET_CASES = [("Model1", "channels_first", True), ("Model2", "channels_last", True),
               ("Model3", "channels_first", False)]


@needs_data
@pytest.mark.parametrize("which, data_format, keras_names", LENET_CASES)
def test_deepxplore_lenets_reproduce_their_accuracy(mnist, which, data_format, keras_names):
    images, labels = mnist
    model = from_keras(DATA / "keras_lenet" / f"{which}.h5",
                       model=deepxplore_lenet(which, data_format, keras_names))
    predicted = model.predict(images, batch_size=2000, data_format="channels_last").argmax(1)
    assert int((predicted == labels).sum()) == DEEPXPLORE[which][2]
    assert model.info["source"] == f"keras:{which}.h5"
    assert model.info["keras_version"] == "2.0.8"


@needs_data
@pytest.mark.parametrize("which", list(DEEPXPLORE))
def test_deepxplore_lenets_predict_what_keras_predicts(mnist, which):
    keras = pytest.importorskip("keras")
    images, _ = mnist
    reference = keras_deepxplore_lenet(keras, which)
    reference.load_weights(DATA / "keras_lenet" / f"{which}.h5")
    expected = np.asarray(reference.predict(images, batch_size=2000, verbose=0))
    model = from_keras(DATA / "keras_lenet" / f"{which}.h5", model=deepxplore_lenet(which))
    scores = model.predict(images, batch_size=2000, data_format="channels_last")
    assert np.array_equal(scores.argmax(1), expected.argmax(1))
    assert np.abs(scores - expected).max() <= 1e-5


@needs_data
def test_mapping_report_names_both_sides(capsys):
    model = deepxplore_lenet("Model1", keras_names=False)
    from_keras(DATA / "keras_lenet" / "Model1.h5", model=model, print_fn=print)
    report = capsys.readouterr().out.splitlines()
    assert report[0] == ("Conv2D 'conv2d' <- Keras layer 'block1_conv1' [(5, 5, 1, 4), (4,)] "
                         "(by order)")
    assert len(report) == 3 and "Dense 'dense' <- Keras layer 'before_softmax'" in report[2]


# -- keras.applications, architecture from the file ---------------------------------------------

def randomise(keras_model, seed=0):
    """Random weights everywhere, including BatchNorm statistics (variance > 0), so that a
    wrong epsilon, weight order or layout shows."""
    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        weights = []
        for variable in layer.weights:
            shape, name = tuple(variable.shape), variable.name
            if name in ("gamma", "moving_variance"):
                weights.append(rng.uniform(0.5, 1.5, shape))
            elif name == "kernel":  # keep Keras's Glorot scale
                weights.append(np.asarray(variable.numpy()))
            else:
                weights.append(rng.normal(0, 0.1, shape))
        layer.set_weights([w.astype(np.float32) for w in weights])


@pytest.fixture(scope="module", params=["VGG16", "ResNet50"])
def keras_application(request, tmp_path_factory):
    """(name, Keras logits for x, x, legacy .h5 path, .weights.h5 path)."""
    keras = pytest.importorskip("keras")
    name = request.param
    net = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    randomise(net)
    folder = tmp_path_factory.mktemp(name)
    net.save(folder / f"{name}.h5")
    net.save_weights(folder / f"{name}.weights.h5")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    expected = np.asarray(net.predict(x, verbose=0))
    yield name, expected, x, folder / f"{name}.h5", folder / f"{name}.weights.h5"
    shutil.rmtree(folder)  # 100-550 MB each


@pytest.mark.slow
def test_keras_applications_convert_from_their_own_config(keras_application):
    name, expected, x, h5_path, _ = keras_application
    model = from_keras(h5_path)
    assert model.data_format == "channels_first"
    got = model.predict(x, data_format="channels_last")
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.slow
def test_keras_applications_weights_h5_and_channels_last(keras_application):
    name, expected, x, h5_path, weights_path = keras_application
    model = from_keras(h5_path, data_format="channels_last")
    fresh = model_from_keras_config(read_keras_file(h5_path).config)
    loaded = from_keras(weights_path, model=fresh)
    for got in (model.predict(x), loaded.predict(x, data_format="channels_last")):
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


# -- a small model with every supported class ---------------------------------------------------

def small_keras_model(keras):
    layers = keras.layers
    x = inputs = keras.Input((12, 10, 3), name="image")
    x = layers.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu6")(x)
    a = layers.Conv2D(8, 1, activation="relu", name="branch_a")(x)
    b = layers.Conv2D(8, 3, padding="same", use_bias=False, name="branch_b")(x)
    b = layers.BatchNormalization(scale=False, epsilon=1e-2, name="branch_b_bn")(b)
    b = layers.ReLU(name="branch_b_relu")(b)
    y = layers.Add(name="add")([a, b])
    y = layers.Concatenate(name="concat")([y, x])
    y = layers.AveragePooling2D(3, strides=2, padding="same", name="avg")(y)
    y = layers.BatchNormalization(center=False, name="avg_bn")(y)
    g = layers.GlobalAveragePooling2D(name="gap")(y)
    f = layers.Dropout(0.5, name="drop")(layers.Flatten(name="flat")(
        layers.MaxPooling2D(2, name="pool")(y)))
    f = layers.Dense(6, activation="tanh", name="fc")(f)
    z = layers.Concatenate(name="join")([f, g])
    z = layers.Activation("sigmoid", name="sig")(layers.Dense(5, name="logits")(z))
    return keras.Model(inputs, layers.Softmax(name="probs")(z), name="small")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    keras = pytest.importorskip("keras")
    net = small_keras_model(keras)
    randomise(net, seed=3)
    folder = tmp_path_factory.mktemp("small")
    net.save(folder / "small.h5")
    net.save(folder / "small.keras")
    net.save_weights(folder / "small.weights.h5")
    x = np.random.default_rng(4).uniform(-1, 1, (3, 12, 10, 3)).astype(np.float32)
    return net, folder, x, np.asarray(net.predict(x, verbose=0))


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_small_model_from_legacy_h5_and_keras_archive(small, data_format):
    _, folder, x, expected = small
    for name in ("small.h5", "small.keras"):
        model = from_keras(folder / name, data_format=data_format)
        got = model.predict(x, data_format="channels_last")
        assert np.abs(got - expected).max() <= 1e-5, name
        assert model.get_layer("branch_b_bn").epsilon == pytest.approx(1e-2)


def test_keras3_weights_file_round_trip(tmp_path):
    keras = pytest.importorskip("keras")
    layers = keras.layers
    net = keras.Sequential([keras.Input((9, 9, 2)), layers.Conv2D(4, 3, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.MaxPooling2D(2),
                            layers.Flatten(name="flat"), layers.Dense(3, name="out")])
    randomise(net, seed=5)
    net.save_weights(tmp_path / "tiny.weights.h5")
    x = np.random.default_rng(6).uniform(-1, 1, (2, 9, 9, 2)).astype(np.float32)
    expected = np.asarray(net.predict(x, verbose=0))
    inputs = fastconv.Input((2, 9, 9))
    y = Flatten()(MaxPool2D(2)(fastconv.layers.BatchNormalization(1e-3, name="bn")(
        Conv2D(4, 3, name="conv")(inputs))))
    model = from_keras(tmp_path / "tiny.weights.h5",
                       model=fastconv.Model(inputs, Dense(3, name="out")(y)))
    assert np.abs(model.predict(x, data_format="channels_last") - expected).max() <= 1e-5
    # Keras 3 versions before layer names were stored: matched by order within each class.
    with h5py.File(tmp_path / "tiny.weights.h5", "r+") as f:
        for key in f["layers"]:
            f["layers"][key]["vars"].attrs.pop("name", None)
    model = from_keras(tmp_path / "tiny.weights.h5", model=model_from_keras_config(
        {"class_name": "Sequential", "config": {"layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 9, 9, 2]}}] + [
            {"class_name": type(layer).__name__, "config": layer.get_config()}
            for layer in net.layers]}}))
    assert np.abs(model.predict(x, data_format="channels_last") - expected).max() <= 1e-5


def test_keras3_weights_file_cannot_tell_which_batchnorm_array_is_absent(small):
    _, folder, _, _ = small
    architecture = read_keras_file(folder / "small.h5").config
    with pytest.raises(ValueError, match=r"(?s)small\.weights\.h5.*'avg_bn'.*has 3 arrays and "
                                         r"the file has no config"):
        from_keras(folder / "small.weights.h5", model=model_from_keras_config(architecture))


def test_info_records_source_and_preprocessing(small):
    _, folder, _, _ = small
    model = from_keras(folder / "small.keras", preprocessing="caffe")
    assert model.info["source"] == "keras:small.keras"
    assert model.info["preprocessing"]["size"] == [12, 10]
    assert model.info["preprocessing"]["channel_order"] == "BGR"


# -- refused files and configs ------------------------------------------------------------------

@needs_data
def test_truncated_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "Model3.h5"
    path.write_bytes((DATA / "keras_lenet" / "Model3.h5").read_bytes()[:200_000])
    with pytest.raises(ValueError, match=r"Model3\.h5.*not a readable HDF5 file.*truncated"):
        from_keras(path, model=deepxplore_lenet("Model3"))


def test_non_hdf5_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not HDF5 at all")
    with pytest.raises(ValueError, match=r"weights\.h5.*not a readable HDF5 file"):
        read_keras_file(path)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_keras_file(tmp_path / "missing.h5")


@needs_data
def test_shape_mismatch_names_file_layers_weight_and_shapes():
    x = fastconv.Input((1, 28, 28))  # block2 with 15 filters instead of 16
    y = Conv2D(6, 5, padding="same", activation="relu", name="block1_conv1")(x)
    y = Conv2D(15, 5, padding="same", activation="relu", name="block2_conv1")(MaxPool2D(2)(y))
    y = Dense(84, name="fc1")(Flatten()(MaxPool2D(2)(y)))
    model = fastconv.Model(x, Dense(10, name="before_softmax")(y))
    before = model.get_layer("block1_conv1").get_weights()
    with pytest.raises(ValueError) as err:
        from_keras(DATA / "keras_lenet" / "Model2.h5", model=model)
    message = str(err.value)
    assert "Model2.h5" in message
    assert ("Keras layer 'block2_conv1' [(5, 5, 6, 16), (16,)] -> Conv2D 'block2_conv1': weight "
            "'kernel' has shape (16, 6, 5, 5) (after conversion), the model expects "
            "(15, 6, 5, 5)") in message
    assert "Dense 'fc1': weight 'kernel' has shape (84, 784)" in message  # all problems listed
    assert all(np.array_equal(a, b) for a, b in
               zip(before, model.get_layer("block1_conv1").get_weights()))  # nothing changed


@needs_data
def test_weights_only_file_needs_an_architecture():
    with pytest.raises(ValueError, match=r"Model1\.h5.*weights only.*model="):
        from_keras(DATA / "keras_lenet" / "Model1.h5")
    with pytest.raises(ValueError, match=r"Model1\.h5.*cannot be matched by order.*has 5"):
        from_keras(DATA / "keras_lenet" / "Model1.h5", model=deepxplore_lenet("Model3"))


def _config(*layers):
    head = {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 8, 8, 3]}}
    return {"class_name": "Sequential", "config": {"name": "m", "layers": [head, *layers]}}


@pytest.mark.parametrize("entry, problem", [
    ({"class_name": "Lambda", "config": {"name": "code", "function": "..."}},
     r"layer 'code' is a Keras Lambda, which holds Python code"),
    ({"class_name": "LeakyReLU", "config": {"name": "leaky"}},
     r"layer 'leaky' is a Keras LeakyReLU, which fastconv cannot convert"),
    ({"class_name": "Conv2D", "config": {"name": "swishy", "filters": 2, "kernel_size": [3, 3],
                                         "activation": "swish"}},
     r"layer 'swishy' \(Conv2D\): activation 'swish' is not supported"),
    ({"class_name": "Dense", "config": {"name": "flatless", "units": 2}},
     r"layer 'flatless' \(Dense\) does not fit its input.*Flatten"),
])
def test_unsupported_configs_name_the_layer_and_class(entry, problem):
    with pytest.raises(ValueError, match=r"^'net\.h5': " + problem):
        model_from_keras_config(_config(entry), source="'net.h5'")


def test_docstring_examples():
    import doctest
    import fastconv.convert.keras as module
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_missing_h5py_is_a_clear_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install h5py"):
        read_keras_file(tmp_path / "any.h5")


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_verify_compares_with_keras_itself(small, data_format):
    _, folder, _, _ = small
    model = from_keras(folder / "small.keras", data_format=data_format, verify=True)
    check = model.info["verification"]
    assert check["reference"].startswith("keras ")
    assert check["max_abs_difference"] <= 1e-5
