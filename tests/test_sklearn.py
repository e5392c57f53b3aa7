"""Transfer learning: models cut at a layer (Model.truncate, Model.features), the optional
extras, and fastconv.sklearn.FeatureExtractor in scikit-learn pipelines, with the pretrained
Caffe LeNet (MNIST) as the feature extractor for scikit-learn's 8x8 digits.

Measured here (5-fold cross-validation, LogisticRegression, all 1,797 digits; see
docs/transfer-learning.md): LeNet features (layer relu1) 98.39 %, raw 8x8 pixels 91.49 %, the
LeNet's own predictions 85.09 %.
"""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import Input, Model, Sequential
from fastconv.convert.caffe import from_caffe
from fastconv.layers import Conv2D, Dense, Flatten, MaxPool2D
from fastconv.preprocess import preprocess

try:
    from sklearn.base import clone
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline

    from fastconv.sklearn import FeatureExtractor
except ImportError:
    FeatureExtractor = None

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LENET = DATA / "caffe_lenet"
LENET_SCALE = 0.00390625  # the Caffe MNIST example's transform_param scale (1/256)

needs_sklearn = pytest.mark.skipif(FeatureExtractor is None,
                                   reason="scikit-learn is not installed (the sklearn extra)")
needs_lenet = pytest.mark.skipif(not (LENET / "lenet_iter_10000.caffemodel").exists(),
                                 reason="../shared/data/caffe_lenet is absent")


def small_net(seed=0):
    return Sequential([Input((1, 12, 12)), Conv2D(4, 3, activation="relu", name="conv"),
                       MaxPool2D(2, name="pool"), Flatten(name="flat"), Dense(3, name="head")],
                      name="small", seed=seed)


def images(rng, n=6, shape=(1, 12, 12)):
    return rng.random((n,) + shape, dtype=np.float32)


# Cutting a model --------------------------------------------------------------------------------

def test_truncate_matches_the_functional_cut_and_shares_weights(rng):
    model = fastconv.models.resnet18(input_shape=(3, 32, 32))
    x = images(rng, 2, (3, 32, 32))
    cut = model.truncate("avgpool")
    same = Model(model.input, model.get_layer("avgpool").output)
    assert cut.output.shape == (None, 512)
    np.testing.assert_array_equal(cut.predict(x), same.predict(x))
    np.testing.assert_array_equal(model.features(x, layer="avgpool"), cut.predict(x))
    head = model.get_layer("fc").weights
    reference = cut.predict(x) @ head["kernel"].T + head["bias"]
    np.testing.assert_allclose(model.predict(x), reference, rtol=1e-4, atol=1e-4)


def test_truncate_after_the_layers_were_reused_elsewhere(rng):
    """A layer's ``output`` is its latest call; truncate still cuts the model's own graph."""
    model = small_net()
    x = images(rng)
    expected = model.truncate("pool").predict(x)
    other = Input((1, 12, 12))
    model.get_layer("pool")(model.get_layer("conv")(other))  # calls the layers in a new graph
    np.testing.assert_array_equal(model.truncate("pool").predict(x), expected)


def test_cut_models_survive_pickling_and_keep_info_without_labels(rng):
    model = small_net()
    model.info = {"source": "test", "preprocessing": {"scale": 0.5}, "labels": ["a", "b", "c"]}
    copy = pickle.loads(pickle.dumps(model))
    x = images(rng)
    cut = Model(copy.input, copy.get_layer("flat").output)
    np.testing.assert_array_equal(cut.predict(x), model.truncate("flat").predict(x))
    truncated = model.truncate("flat")
    assert truncated.info == {"source": "test", "preprocessing": {"scale": 0.5}}
    truncated.info["preprocessing"]["scale"] = 2.0
    assert model.info["preprocessing"]["scale"] == 0.5


def test_features_follow_weight_changes_and_data_format(rng):
    model = small_net()
    x = images(rng)
    before = model.features(x, layer="conv", batch_size=4)
    model.get_layer("conv").set_weights([w * 2 for w in model.get_layer("conv").get_weights()])
    after = model.features(x, layer="conv", batch_size=4)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-6)
    nhwc = model.features(x.transpose(0, 2, 3, 1), layer="conv", data_format="channels_last")
    np.testing.assert_array_equal(nhwc, after.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(model.features(x), model.predict(x))


def test_bad_cuts_name_what_was_expected():
    model = small_net()
    with pytest.raises(ValueError, match="no layer named 'nope'.*'pool'"):
        model.truncate("nope")
    with pytest.raises(TypeError, match="layer name .str.; received int"):
        model.truncate(3)
    with pytest.raises(TypeError, match="received list"):
        model.features(np.zeros((1, 1, 12, 12)), layer=["pool"])


# The optional extras --------------------------------------------------------------------------

def python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_core_import_needs_no_extra():
    result = python("import sys, fastconv, fastconv.models, fastconv.convert\n"
                    "print(sorted({'sklearn', 'dask', 'distributed'} & set(sys.modules)))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module, hidden, extra", [("fastconv.sklearn", "sklearn", "sklearn"),
                                                   ("fastconv.dask", "dask", "dask"),
                                                   ("fastconv.dask", "distributed", "dask")])
def test_missing_extra_names_it(module, hidden, extra):
    result = python(f"import sys\nsys.modules[{hidden!r}] = None\nimport {module}")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and f"fastconv[{extra}]" in result.stderr, result.stderr


# FeatureExtractor -----------------------------------------------------------------------------

@needs_sklearn
def test_transform_flattens_the_layer_output_and_accepts_flat_rows(rng):
    model = small_net()
    x = images(rng)
    extractor = FeatureExtractor(model, layer="pool", batch_size=4)
    features = extractor.fit_transform(x)
    assert features.shape == (6, 100) and features.dtype == np.float32
    np.testing.assert_array_equal(features, model.features(x, "pool").reshape(6, -1))
    np.testing.assert_array_equal(extractor.transform(x.reshape(6, -1)), features)
    assert extractor.n_features_in_ == 144
    names = extractor.get_feature_names_out()
    assert len(names) == 100 and names[0] == "pool_0" and names[-1] == "pool_99"
    nhwc = FeatureExtractor(model, "pool", data_format="channels_last").transform(
        x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nhwc, model.features(x, "pool").transpose(0, 2, 3, 1)
                                  .reshape(6, -1))
    whole = FeatureExtractor(model).fit_transform(x)
    np.testing.assert_array_equal(whole, model.predict(x))


@needs_sklearn
def test_parameters_clone_and_pickle(rng):
    model = small_net()
    extractor = FeatureExtractor(model, layer="pool")
    assert extractor.get_params() == {"model": model, "layer": "pool", "batch_size": None,
                                      "data_format": None}
    assert extractor.set_params(layer="conv", batch_size=2) is extractor
    assert (extractor.layer, extractor.batch_size) == ("conv", 2)
    x = images(rng)
    twin = clone(extractor)
    assert twin.get_params()["layer"] == "conv" and twin.model is not model
    np.testing.assert_array_equal(twin.fit_transform(x), extractor.fit_transform(x))
    restored = pickle.loads(pickle.dumps(extractor.fit(x)))
    assert restored.n_features_in_ == 144
    np.testing.assert_array_equal(restored.transform(x), extractor.transform(x))


@needs_sklearn
@pytest.mark.parametrize("params, error, message", [
    ({"model": "lenet"}, TypeError, "`model` must be a fastconv Model; received str"),
    ({"layer": "nope"}, ValueError, "no layer named 'nope'"),
    ({"layer": 2}, TypeError, "`layer` must be a layer name .str. or None; received int"),
    ({"batch_size": 0}, ValueError, "`batch_size` must be None or an integer >= 1; received 0"),
    ({"data_format": "NHWC"}, ValueError, "`data_format` must be one of"),
])
def test_bad_parameters_are_reported_by_fit(params, error, message, rng):
    extractor = FeatureExtractor(small_net()).set_params(**params)
    with pytest.raises(error, match=message):
        extractor.fit(images(rng))


@needs_sklearn
def test_bad_input_is_reported():
    extractor = FeatureExtractor(small_net(), layer="pool")
    with pytest.raises(ValueError, match=r"shaped \(n, 1, 12, 12\) or \(n, 144\); received shape "
                                         r"\(2, 1, 10, 10\)"):
        extractor.transform(np.zeros((2, 1, 10, 10)))
    with pytest.raises(TypeError, match="real numbers; received dtype <U1"):
        extractor.fit(np.full((2, 144), "a"))


# Transfer: the Caffe LeNet (MNIST) as features for scikit-learn's digits ----------------------

def mnist_framed(digits):
    """scikit-learn's 8x8 digits (values 0..16) drawn like MNIST: pixels 0..255, resized to a
    20x20 box, centred in 28x28, times the LeNet's input scale."""
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    spec = {"size": [20, 20], "scale": LENET_SCALE, "color": "grayscale"}
    boxes = np.concatenate([preprocess(image, spec) for image in pixels])
    return np.pad(boxes, ((0, 0), (0, 0), (4, 4), (4, 4)))


@pytest.fixture(scope="module")
def lenet():
    return from_caffe(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                      preprocessing={"scale": LENET_SCALE})


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data, mnist_framed(data)


@needs_sklearn
@needs_lenet
@pytest.mark.slow
def test_lenet_features_beat_raw_pixels_and_the_lenet_itself(lenet, digits):
    data, x = digits
    source = (lenet.predict(x).argmax(axis=1) == data.target).mean()
    raw = cross_val_score(LogisticRegression(max_iter=1000), data.data, data.target, cv=5).mean()
    transfer = make_pipeline(FeatureExtractor(lenet, layer="relu1", batch_size=512),
                             LogisticRegression(max_iter=1000))
    score = cross_val_score(transfer, x, data.target, cv=5).mean()
    # Measured: source 0.8509, raw 0.9149, transfer 0.9839.
    assert 0.83 < source < 0.87
    assert 0.89 < raw < 0.94
    assert score > 0.97
    assert score > raw + 0.04 and score > source + 0.10


@needs_sklearn
@needs_lenet
def test_grid_search_over_the_layer_in_two_processes(lenet, digits):
    data, x = digits
    pipeline = make_pipeline(FeatureExtractor(lenet, layer="pool2"),
                             LogisticRegression(max_iter=1000))
    search = GridSearchCV(pipeline, {"featureextractor__layer": ["pool2", "relu1"]}, cv=3,
                          n_jobs=2)  # the extractor and its LeNet are pickled to the workers
    search.fit(x[:300], data.target[:300])
    # Measured: 0.973 (pool2), 0.980 (relu1); 0.930 on the other 1,497 digits (other writers).
    assert set(search.cv_results_["param_featureextractor__layer"]) == {"pool2", "relu1"}
    assert np.all(search.cv_results_["mean_test_score"] > 0.95)
    assert search.best_estimator_.named_steps["featureextractor"].model is not lenet
    assert search.score(x[300:], data.target[300:]) > 0.9
