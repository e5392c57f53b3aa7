"""fastconv.preprocess: each option against NumPy computations, against PIL and torchvision where
installed, and end to end with the real MobileNetV2 weights on the sample photos."""
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.preprocess import (decode_predictions, imagenet_classes, imagenet_preprocessing,
                                 keras_imagenet_preprocessing, preprocess)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTOS = DATA / "photos"


def synthetic(height=6, width=8):
    """An RGB image whose every pixel and channel differ: value = 10 * row + col + 60 * channel."""
    rows, cols, channels = np.mgrid[:height, :width, :3]
    return (10 * rows + cols + 60 * channels).astype(np.uint8)


def spec(**fields):
    return {"size": [6, 8], "scale": 1.0, "mean": [0.0], "std": [1.0], **fields}


def chw(array):
    return array.transpose(2, 0, 1)[None].astype(np.float32)


def test_scale_mean_std_per_channel():
    image = synthetic()
    got = preprocess(image, spec(scale=0.5, mean=[1, 2, 3], std=[2, 4, 8]))
    expected = (image * 0.5 - np.array([1, 2, 3])) / np.array([2, 4, 8])
    assert got.dtype == np.float32 and got.shape == (1, 3, 6, 8)
    np.testing.assert_allclose(got, chw(expected), rtol=1e-6)


def test_defaults_divide_by_255_and_keep_rgb():
    image = synthetic()
    np.testing.assert_allclose(preprocess(image, {"size": [6, 8]}), chw(image / 255.0), rtol=1e-6)


def test_bgr_reverses_channels_before_the_mean():
    image = synthetic()
    got = preprocess(image, spec(channel_order="BGR", mean=[100, 0, 0]))
    np.testing.assert_array_equal(got, chw(image[:, :, ::-1] - np.array([100, 0, 0])))


def test_grayscale_uses_pil_weights_and_gives_one_channel():
    image = synthetic()
    got = preprocess(image, spec(color="grayscale"))
    gray = np.rint(image @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_array_equal(got, gray[None, None].astype(np.float32))
    assert preprocess(image[:, :, 0], spec()).shape == (1, 3, 6, 8)  # HxW arrays are gray pixels


def test_channels_last_output():
    image = synthetic()
    got = preprocess(image, spec(), data_format="channels_last")
    np.testing.assert_array_equal(got, image[None].astype(np.float32))


def test_nearest_resize_by_integer_factors():
    image = synthetic(6, 8)
    np.testing.assert_array_equal(preprocess(image, spec(size=[3, 4], interpolation="nearest")),
                                  chw(image[1::2, 1::2]))  # the centre of each 2x2 block
    np.testing.assert_array_equal(preprocess(image, spec(size=[12, 24], interpolation="nearest")),
                                  chw(image.repeat(2, axis=0).repeat(3, axis=1)))


def test_bilinear_halving_uses_the_widened_triangle_filter():
    # Shrinking by 2 widens the triangle to 4 input pixels with weights (1, 3, 3, 1) / 8
    # (edges renormalised), as PIL and torchvision antialias.
    image = synthetic(6, 8)
    weights = lambda n: np.array([[max(0.0, 1 - abs(j + 0.5 - (2 * i + 1)) / 2)
                                   for j in range(2 * n)] for i in range(n)])
    rows, cols = weights(3), weights(4)
    rows, cols = rows / rows.sum(1, keepdims=True), cols / cols.sum(1, keepdims=True)
    expected = np.rint(np.einsum("ih,hwc,jw->ijc", rows, image.astype(float), cols))
    np.testing.assert_array_equal(preprocess(image, spec(size=[3, 4])), chw(expected))


def test_bilinear_keeps_constant_and_linear_images():
    flat = np.full((5, 7, 3), 77, np.uint8)
    assert np.all(preprocess(flat, spec(size=[13, 3])) == 77)
    ramp = np.tile(np.arange(0, 240, 30, dtype=np.uint8)[None, :, None], (4, 1, 3))  # 8 columns
    up = preprocess(ramp, spec(size=[4, 16]))[0, 0, 0]
    np.testing.assert_allclose(up[1:-1], np.rint(np.arange(1, 15) * 15 - 7.5), atol=0.5)


def test_resize_shorter_side_then_centre_crop():
    image = synthetic(6, 8)  # resize 6 keeps the size: only the crop acts
    got = preprocess(image, spec(size=[4, 4], resize=6))
    np.testing.assert_array_equal(got, chw(image[1:5, 2:6]))
    tall = synthetic(8, 6)
    assert preprocess(tall, spec(size=[3, 3], resize=3)).shape == (1, 3, 3, 3)  # 8x6 -> 4x3 -> 3x3


def test_pil_image_path_and_array_agree(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    image = synthetic(30, 40)
    Image.fromarray(image).save(tmp_path / "x.png")
    settings = {**imagenet_preprocessing(), "size": [16, 16], "resize": 20}
    from_array = preprocess(image, settings)
    assert np.array_equal(preprocess(Image.fromarray(image), settings), from_array)
    assert np.array_equal(preprocess(tmp_path / "x.png", settings), from_array)


def test_bilinear_matches_pil_within_one_level():
    Image = pytest.importorskip("PIL.Image")
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in ([20, 24], [60, 90], [37, 20]):
        reference = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
        got = preprocess(image, spec(size=size))
        assert np.abs(got - chw(reference)).max() <= 1.0, size


def test_size_and_color_default_to_the_model_input():
    model = fastconv.Sequential([fastconv.Input((1, 5, 4)), fastconv.layers.Flatten()])
    got = preprocess(synthetic(5, 4), model)
    assert got.shape == (1, 1, 5, 4)  # grayscale, model size, channels_first
    model.info["preprocessing"] = {"scale": 1.0}
    assert preprocess(synthetic(10, 8), model).max() > 1.0


@pytest.mark.parametrize("fields, message", [
    ({"sizes": [2, 2]}, "unknown preprocessing fields"),
    ({"size": [2]}, "`size` must be"),
    ({"size": [2, 2], "mean": [1, 2]}, "`mean` must have 1 or 3 values"),
    ({"size": [2, 2], "interpolation": "cubic"}, "`interpolation` must be one of"),
    ({"size": [2, 2], "std": [0]}, "`std` must not contain 0"),
    ({"size": [8, 8], "resize": 4}, "smaller than the crop"),
])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        preprocess(synthetic(), fields)


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((4, 4, 3), np.float32), spec())
    with pytest.raises(FileNotFoundError, match="nope.png"):
        pytest.importorskip("PIL")
        preprocess(tmp_path / "nope.png", spec())


def test_presets():
    torch_style = imagenet_preprocessing()
    assert torch_style == {"size": [224, 224], "resize": 256, "interpolation": "bilinear",
                           "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "channel_order": "RGB", "color": "rgb"}
    caffe = keras_imagenet_preprocessing("caffe")
    assert caffe["channel_order"] == "BGR" and caffe["resize"] is None and caffe["scale"] == 1.0


# -- class names --------------------------------------------------------------------------------

def test_package_copy_of_the_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet_tissue"
    tsv = DATA / "imagenet_classes.tsv"
    if tsv.is_file():
        assert list(names) == [line.split("\t")[1] for line in tsv.read_text().splitlines()]


def test_decode_predictions_orders_rows_best_first():
    scores = np.zeros((2, 1000), np.float32)
    scores[0, [281, 282, 285]] = [3.0, 2.0, 1.0]
    scores[1, 967] = 9.0
    decoded = decode_predictions(scores, top=3)
    assert decoded[0] == [(281, "tabby", 3.0), (282, "tiger_cat", 2.0), (285, "Egyptian_cat", 1.0)]
    assert decoded[1][0] == (967, "espresso", 9.0)
    assert decode_predictions(np.array([0.2, 0.8]), top=1, labels=["no", "yes"]) == \
        [[(1, "yes", pytest.approx(0.8))]]
    with pytest.raises(ValueError, match=r"\(batch, 1000\)"):
        decode_predictions(np.zeros((1, 10)))


# -- the real network ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet():
    pytest.importorskip("PIL")
    weights = DATA / "mobilenet_v2" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        pytest.skip("../shared/data is not here")
    pytest.importorskip("torch")
    model = fastconv.models.mobilenet_v2(weights=weights)
    model.info["preprocessing"] = imagenet_preprocessing()
    return model


def top_names(model, photo, top=5):
    return [name for _, name, _ in
            decode_predictions(model.predict(preprocess(PHOTOS / photo, model)), top=top)[0]]


def test_mobilenet_v2_names_the_photos(mobilenet):
    assert top_names(mobilenet, "coffee.png")[0] == "espresso"
    assert {"tabby", "tiger_cat", "Egyptian_cat"} & set(top_names(mobilenet, "chelsea.png", 3))
    # With torchvision's exact preprocessing (383x256 resize) MobileNetV2 ranks rocket.jpg
    # drilling_platform 12.41, space_shuttle 11.73; see docs/convert-keras.md.
    assert "space_shuttle" in top_names(mobilenet, "rocket.jpg", 2)


def test_imagenet_batches_equal_torchvision_transforms():
    transforms = pytest.importorskip("torchvision.transforms")
    Image = pytest.importorskip("PIL.Image")
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data is not here")
    settings = imagenet_preprocessing()
    pipeline = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                   transforms.ToTensor(),
                                   transforms.Normalize(settings["mean"], settings["std"])])
    std = np.array(settings["std"])[:, None, None]
    for photo in ("coffee.png", "chelsea.png", "rocket.jpg"):
        expected = pipeline(Image.open(PHOTOS / photo).convert("RGB")).numpy()
        got = preprocess(PHOTOS / photo, settings)[0]
        levels = np.abs(got - expected) * std * 255  # difference in 8-bit pixel levels
        assert levels.max() <= 1.0 + 1e-3, photo  # PIL rounds between its two passes


def test_docstring_examples():
    import doctest
    import fastconv.preprocess as module
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_missing_pillow_is_a_clear_import_error(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install pillow"):
        preprocess(tmp_path / "photo.png", spec())
    assert preprocess(synthetic(), spec()).shape == (1, 3, 6, 8)  # arrays need no Pillow
