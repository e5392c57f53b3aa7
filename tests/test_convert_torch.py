"""The torch converter beyond torchvision names: safetensors files, mapping by order with a
report, per-image agreement with PyTorch on real weights, verification, hostile files."""
import gzip
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import layers as L
from fastconv.convert import from_torch, read_torch_state_dict

torch = pytest.importorskip("torch")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LENET_FILE = DATA / "torch_lenet" / "mnist_lenet5_clntrained.pt"


def unnamed_lenet():
    """advertorch's LeNet5 with fastconv's default layer names (conv2d, dense, ...)."""
    return fastconv.Sequential([
        fastconv.Input((1, 28, 28)),
        L.Conv2D(32, 3, padding=1, activation="relu"), L.MaxPool2D(2),
        L.Conv2D(64, 3, padding=1, activation="relu"), L.MaxPool2D(2),
        L.Flatten(), L.Dense(200, activation="relu"), L.Dense(10)])


class TorchLeNet(torch.nn.Module):
    """advertorch's LeNet5, written here so PyTorch itself can run the real weights."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.linear1 = torch.nn.Linear(7 * 7 * 64, 200)
        self.linear2 = torch.nn.Linear(200, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.linear2(torch.relu(self.linear1(torch.flatten(x, 1))))


def mnist_images():
    with gzip.open(DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28) / np.float32(255)


@pytest.mark.skipif(not LENET_FILE.is_file(), reason="../shared/data is not here")
def test_real_legacy_file_by_order_agrees_with_pytorch_on_every_image():
    lines = []
    model = from_torch(LENET_FILE, model=unnamed_lenet(), print_fn=lines.append)
    assert lines[0] == "conv1.weight (32, 1, 3, 3) -> conv2d/kernel (32, 1, 3, 3)"
    assert len(lines) == 8
    net = TorchLeNet()
    net.load_state_dict(torch.load(LENET_FILE, map_location="cpu", weights_only=True))
    images = mnist_images()
    with torch.inference_mode():
        expected = net.eval()(torch.from_numpy(images)).numpy().argmax(axis=1)
    assert np.array_equal(model.predict(images, batch_size=2000).argmax(axis=1), expected)


def test_safetensors_state_dict_equals_the_tensors(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    state = torchvision.models.resnet18().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "r18.safetensors")
    assert read_torch_state_dict(tmp_path / "r18.safetensors").keys() == state.keys()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    from_file = from_torch(tmp_path / "r18.safetensors", arch="resnet18")
    assert np.array_equal(from_file.predict(x), from_torch(state, arch="resnet18").predict(x))


def test_order_mismatch_is_reported_with_shapes():
    state = {"a.weight": np.zeros((32, 1, 3, 3)), "a.bias": np.zeros(31)}
    with pytest.raises(ValueError, match=r"(?s)missing: .*by order: 2 tensors for 8 weights"):
        from_torch(state, model=unnamed_lenet())
    with pytest.raises(ValueError, match=r"does not fit .* by order:\n  2 tensors for 8 weights"):
        from_torch(state, model=unnamed_lenet(), match="order")
    with pytest.raises(ValueError, match="`match` must be"):
        from_torch(state, model=unnamed_lenet(), match="shape")


def test_verify_reports_the_largest_difference():
    torchvision = pytest.importorskip("torchvision")
    model = from_torch(torchvision.models.mobilenet_v2().state_dict(), arch="mobilenet_v2",
                       verify=True)
    check = model.info["verification"]
    assert check["max_abs_difference"] <= 1e-4 * check["output_scale"]


class _Payload:
    """Unpickling this would create a file: the converter must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        from_torch(tmp_path / "evil.pt", model=unnamed_lenet())
    assert not marker.exists()


def test_file_without_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        from_torch(tmp_path / "list.pt", model=unnamed_lenet())
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        from_torch(tmp_path / "junk.pt", model=unnamed_lenet())
