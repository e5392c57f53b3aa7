"""The model zoo: published parameter counts, the shapes and depths of the papers, equality with
torchvision's own forward pass, and the torchvision converter on real pretrained files."""
import gzip
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import layers as L
from fastconv import models
from fastconv.convert import from_torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

PUBLISHED_PARAMS = [
    ("lenet5", {}, 61_706),
    ("lenet5", {"variant": "1998"}, 60_000),
    ("alexnet", {}, 61_100_840),
    ("alexnet", {"variant": "caffe"}, 60_965_224),
    ("vgg11", {}, 132_863_336),
    ("vgg13", {}, 133_047_848),
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("vgg16", {"batch_norm": True}, 138_365_992),
    ("googlenet", {}, 6_624_904),
    ("googlenet", {"variant": "caffe"}, 6_998_552),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160),
    ("resnet152", {}, 60_192_808),
    ("mobilenet_v2", {}, 3_504_872),
]


@pytest.mark.parametrize("name,options,expected", PUBLISHED_PARAMS,
                         ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o, _ in PUBLISHED_PARAMS])
def test_parameter_count_is_the_published_one(name, options, expected):
    assert getattr(models, name)(**options).count_params() == expected


def test_lenet5_1998_counts_per_layer_are_the_papers():
    model = models.lenet5(variant="1998")
    counts = {layer.name: layer.count_params() for layer in model.layers}
    assert {k: counts[k] for k in ("C1", "S2", "C3", "S4", "C5", "F6")} == {
        "C1": 156, "S2": 12, "C3": 1_516, "S4": 32, "C5": 48_120, "F6": 10_164}
    assert model.get_layer("output").weights["centers"].shape == (10, 84)
    table = models.lenet.C3_TABLE
    assert [len(maps) for maps in table] == [3] * 6 + [4] * 9 + [6]


def weighted_depth(model):
    """Layers with weights on the longest input-to-output path (how the papers count depth)."""
    depth = {}
    for node in model._nodes:
        here = 1 if isinstance(node.layer, (L.Conv2D, L.Dense)) else 0
        depth[node] = here + max((depth[p] for p in node.inbound), default=0)
    return max(depth[t] for t in model.outputs)


@pytest.mark.parametrize("name,options,depth", [
    ("vgg16", {}, 16), ("vgg19", {}, 19), ("alexnet", {}, 8), ("googlenet", {}, 22),
    ("resnet18", {}, 18), ("resnet50", {}, 50), ("resnet152", {}, 152)])
def test_depth_is_the_papers(name, options, depth):
    assert weighted_depth(getattr(models, name)(**options)) == depth


def shapes(model):
    return {node.layer.name: node.sample_shape for node in model._nodes}


def test_alexnet_caffe_shapes_are_the_lectures():
    model = models.alexnet(variant="caffe")
    s = shapes(model)
    assert s["data"] == (3, 227, 227)
    assert s["conv1"] == (96, 55, 55) and s["pool1"] == (96, 27, 27)
    assert s["pool2"] == (256, 13, 13) and s["pool5"] == (256, 6, 6)
    text = model.summary(print_fn=None)
    assert "(None, 96, 55, 55)" in text and "(None, 96, 27, 27)" in text


def test_googlenet_has_nine_inception_modules_and_paper_shapes():
    for variant, concat in (("torchvision", L.Concatenate), ("caffe", L.Concatenate)):
        model = models.googlenet(variant=variant)
        assert sum(isinstance(layer, concat) for layer in model.layers) == 9
    s = shapes(models.googlenet(variant="caffe"))
    assert s["inception_3a/output"] == (256, 28, 28)
    assert s["inception_4e/output"] == (832, 14, 14)
    assert s["inception_5b/output"] == (1024, 7, 7)


def test_summary_totals_and_connections():
    text = models.resnet18().summary(print_fn=None)
    assert "Total params: 11,689,512" in text
    assert "Connected to" in text and "layer1.0.add" in text


# -- equality with torchvision ------------------------------------------------------------------

TORCHVISION_FORMS = ["alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn",
                     "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "mobilenet_v2"]
SLOW = {"vgg13", "vgg16", "vgg19", "vgg16_bn", "resnet101", "resnet152"}


def randomized_torchvision(torch, torchvision, name):
    """torchvision's model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    # GoogLeNet keeps its auxiliary heads, as the pretrained state_dicts do: the converter drops them.
    options = {"aux_logits": True, "init_weights": True} if name == "googlenet" else {}
    net = getattr(torchvision.models, name)(weights=None, **options).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in TORCHVISION_FORMS])
def test_torchvision_form_equals_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    net = randomized_torchvision(torch, torchvision, name)
    arch, options = (name[:-3], {"batch_norm": True}) if name.endswith("_bn") else (name, {})
    model = from_torch(net.state_dict(), arch=arch, **options)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    for batch in (1, 3):
        got = model.predict(x[:batch])
        scale = np.abs(expected[:batch]).max()
        assert got.shape == expected[:batch].shape
        assert np.abs(got - expected[:batch]).max() <= 1e-4 * scale


def test_from_torch_lists_every_mismatch():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["fc.bias"], state["layer1.0.bn1.running_var"]
    state["extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError) as info:
        from_torch(state, arch="resnet18")
    message = str(info.value)
    for part in ("missing: fc.bias, layer1.0.bn1.running_var", "unexpected: extra.weight",
                 "conv1.weight: expected (64, 3, 7, 7), state_dict has (64, 3, 3, 3)"):
        assert part in message
    with pytest.raises(ValueError, match="`arch` must be one of"):
        from_torch(state, arch="resnet19")


# -- real pretrained files ----------------------------------------------------------------------

def mnist_test_set():
    with gzip.open(DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def advertorch_lenet5():
    """The architecture of advertorch's MNIST LeNet5, named as its state_dict."""
    return fastconv.Sequential([
        fastconv.Input((1, 28, 28)),
        L.Conv2D(32, 3, padding=1, activation="relu", name="conv1"), L.MaxPool2D(2),
        L.Conv2D(64, 3, padding=1, activation="relu", name="conv2"), L.MaxPool2D(2),
        L.Flatten(), L.Dense(200, activation="relu", name="linear1"), L.Dense(10, name="linear2"),
    ])


@pytest.mark.skipif(not (DATA / "torch_lenet").is_dir(), reason="../shared/data is not here")
def test_legacy_torch_file_reproduces_its_mnist_accuracy():
    pytest.importorskip("torch")
    model = from_torch(DATA / "torch_lenet" / "mnist_lenet5_clntrained.pt", model=advertorch_lenet5())
    images, labels = mnist_test_set()
    predicted = model.predict(images / np.float32(255.0), batch_size=1000).argmax(axis=1)
    assert np.mean(predicted == labels) == pytest.approx(0.9889, abs=5e-5)


def imagenet_input(path):
    """torchvision's ImageNet preprocessing: shorter side to 256 (bilinear), centre crop 224,
    /255, normalised with the ImageNet mean and std."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    pixels = (pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return pixels.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.skipif(not (DATA / "mobilenet_v2").is_dir(), reason="../shared/data is not here")
def test_mobilenet_v2_real_weights_recognise_the_photos():
    torch = pytest.importorskip("torch")
    pytest.importorskip("PIL")
    model = models.mobilenet_v2(weights=DATA / "mobilenet_v2" / "mobilenet_v2-b0353104.pth")
    classes = [line.split("\t")[1] for line in
               (DATA / "imagenet_classes.tsv").read_text().splitlines()]
    photos = {"chelsea.png": {"tabby", "tiger_cat", "Egyptian_cat"}, "coffee.png": {"espresso"},
              "rocket.jpg": {"space_shuttle"}}
    for photo, expected in photos.items():
        logits = model.predict(imagenet_input(DATA / "photos" / photo))[0]
        top = [classes[i] for i in np.argsort(-logits)[:3]]
        if photo == "chelsea.png":
            assert expected & set(top), top
        else:
            assert top[0] in expected, top
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(DATA / "mobilenet_v2" / "mobilenet_v2-b0353104.pth",
                                   weights_only=True))
    x = imagenet_input(DATA / "photos" / "coffee.png")
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(model.predict(x) - expected).max() <= 1e-4 * np.abs(expected).max()


# -- native files -------------------------------------------------------------------------------

def test_save_and_load_round_trip_bit_identical(tmp_path):
    model = models.resnet18()
    model.info = {"source": "test", "labels": ["a", "b"]}
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    model.save(tmp_path / "r18.safetensors")
    loaded = fastconv.load(tmp_path / "r18.safetensors")
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.info == model.info and loaded.get_config() == model.get_config()
    fresh = models.resnet18()
    model.save_weights(tmp_path / "w.safetensors")
    fresh.load_weights(tmp_path / "w.safetensors")
    assert np.array_equal(fresh.predict(x), model.predict(x))


def test_sequential_save_load_and_pickle(tmp_path):
    import pickle

    model = models.lenet5()
    x = np.random.default_rng(3).standard_normal((4, 1, 32, 32)).astype(np.float32)
    model.save(tmp_path / "lenet.safetensors")
    assert type(fastconv.load(tmp_path / "lenet.safetensors")) is fastconv.Sequential
    assert np.array_equal(pickle.loads(pickle.dumps(model)).predict(x), model.predict(x))


def test_bad_weight_files_are_rejected_with_clear_messages(tmp_path):
    model = models.lenet5()
    model.save_weights(tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        models.lenet5().load_weights(tmp_path / "truncated.safetensors")
    other = models.lenet5(num_classes=7)
    with pytest.raises(ValueError, match=r"fc3/kernel: expected \(7, 84\), file has \(10, 84\)"):
        other.load_weights(tmp_path / "good.safetensors")
    with pytest.raises(ValueError, match="(?s)missing: C1/bias.*unexpected: conv1/bias"):
        models.lenet5(variant="1998").load_weights(tmp_path / "good.safetensors")
    with pytest.raises(ValueError, match="holds no fastconv architecture"):
        fastconv.load(tmp_path / "good.safetensors")
    with pytest.raises(FileNotFoundError):
        fastconv.load(tmp_path / "absent.safetensors")


def test_predict_accepts_channels_last_images():
    model = models.resnet18(num_classes=5, input_shape=(3, 64, 64))
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    nhwc = x.transpose(0, 2, 3, 1)
    assert np.array_equal(model.predict(nhwc, data_format="channels_last"), model.predict(x))
    features = fastconv.Model(model.input, model.get_layer("layer4.1.add").output)
    assert np.array_equal(features.predict(nhwc, data_format="channels_last"),
                          features.predict(x).transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="data_format"):
        model.predict(x, data_format="NHWC")
