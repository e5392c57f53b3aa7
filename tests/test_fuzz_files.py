"""Hostile files: every parser fuzzed with mutated real files (docs/reliability.md).

Each target mutates one small real file (a saved fastconv LeNet-5 .safetensors, the Caffe LeNet
caffemodel and prototxt from ../shared/data, an ONNX LeNet written with onnx.helper, the
DeepXplore LeNet-1 Keras .h5 with and without its architecture and as a .keras archive, the
advertorch LeNet legacy .pt and a zip .pt of fastconv's LeNet-5) with bit flips, byte and
integer overwrites, truncation, deletion and insertion, half of them near the bytes that hold
the file's structure. Every mutated file either loads into a model with the original's weight
shapes (a mutated prototxt is another architecture: weights of the original's shapes) or raises
ValueError. Anything else fails the test: another exception type, a
MemoryError, more than 64 MiB allocated (tracemalloc, NumPy included) or a jump of the process's
peak memory, and a hang (faulthandler ends the run with a traceback after HANG_SECONDS).

The explicit tests below build the classic hostile files by hand: oversized headers, declared
shapes beyond the machine's memory, pickle payloads that would run code, and the structures the
fuzzing found (they stay as regression tests).
"""
import faulthandler
import json
import os
import re
import resource
import shutil
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastconv
from fastconv import layers as L
from fastconv.convert import _protobuf as pb
from fastconv.convert import from_caffe, from_keras, from_onnx, from_torch, read_prototxt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# torch warns about the pickle protocol of a damaged file before refusing it.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
FUZZ_SCALE = float(os.environ.get("FASTCONV_FUZZ_SCALE", "1"))
HANG_SECONDS = 60
ALLOCATION_LIMIT = 64 << 20


def fuzz(examples):
    """The settings of every fuzz test: the same mutations on every run."""
    return settings(max_examples=max(1, round(examples * FUZZ_SCALE)), derandomize=True,
                    database=None, deadline=None, suppress_health_check=list(HealthCheck))


def needs(*paths):
    missing = [p for p in paths if not (DATA / p).is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"../shared/data lacks {missing}")


def weight_shapes(model):
    """The model's weight shapes in graph order (names may differ: a damaged config can drop
    a layer's name, and the layer then gets its default one)."""
    return [w.shape for layer in model.layers for w in layer.weights.values()]


# The small models the files hold ----------------------------------------------------------------

def lenet5():
    """fastconv's LeNet-5 with weights from a fixed seed (the file bytes must not vary)."""
    model = fastconv.models.lenet5()
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(-1, 1, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def keras_lenet1():
    """DeepXplore's Model1 (data/README.md) in fastconv, channels_last like the file."""
    x = inputs = fastconv.Input((28, 28, 1), data_format="channels_last")
    for block, filters in ((1, 4), (2, 12)):
        x = L.Conv2D(filters, 5, padding="same", activation="relu", name=f"block{block}_conv1")(x)
        x = L.MaxPool2D(2, name=f"block{block}_pool1")(x)
    x = L.Dense(10, name="before_softmax")(L.Flatten(name="flatten")(x))
    return fastconv.Model(inputs, L.Activation("softmax", name="predictions")(x))


KERAS_LENET1_CONFIG = {"class_name": "Sequential", "config": {"name": "lenet1", "layers": [
    {"class_name": "Conv2D", "config": {"name": "block1_conv1", "filters": 4, "kernel_size": [5, 5],
                                        "padding": "same", "activation": "relu",
                                        "batch_input_shape": [None, 28, 28, 1]}},
    {"class_name": "MaxPooling2D", "config": {"name": "block1_pool1", "pool_size": [2, 2]}},
    {"class_name": "Conv2D", "config": {"name": "block2_conv1", "filters": 12, "kernel_size": [5, 5],
                                        "padding": "same", "activation": "relu"}},
    {"class_name": "MaxPooling2D", "config": {"name": "block2_pool1", "pool_size": [2, 2]}},
    {"class_name": "Flatten", "config": {"name": "flatten"}},
    {"class_name": "Dense", "config": {"name": "before_softmax", "units": 10}},
    {"class_name": "Activation", "config": {"name": "predictions", "activation": "softmax"}}]}}


def advertorch_lenet5():
    """advertorch's LeNet5 (data/README.md) with its module names."""
    return fastconv.Sequential([
        fastconv.Input((1, 28, 28)), L.Conv2D(32, 3, padding=1, activation="relu", name="conv1"),
        L.MaxPool2D(2), L.Conv2D(64, 3, padding=1, activation="relu", name="conv2"), L.MaxPool2D(2),
        L.Flatten(), L.Dense(200, activation="relu", name="linear1"), L.Dense(10, name="linear2")])


# Seed files (written once per session) ------------------------------------------------------------

def canonical_safetensors(path):
    """Rewrites the header of a safetensors file with sorted keys: the writer orders the metadata
    differently in every process, and the mutated bytes must be the same on every run."""
    data = Path(path).read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(json.loads(data[8:8 + length]), separators=(",", ":"), sort_keys=True)
    Path(path).write_bytes(data[:8] + header.encode().ljust(length) + data[8 + length:])


def onnx_lenet(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"w1": (6, 1, 5, 5), "b1": (6,), "w2": (16, 6, 5, 5), "b2": (16,), "w3": (120, 400),
              "b3": (120,), "w4": (10, 120), "b4": (10,)}
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, s).astype(np.float32), n)
             for n, s in shapes.items()]
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[5, 5], pads=[2] * 4),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[5, 5]),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
             node("Gemm", ["f", "w3", "b3"], ["g1"], name="fc1", transB=1),
             node("Relu", ["g1"], ["r3"], name="relu3"),
             node("Gemm", ["r3", "w4", "b4"], ["g2"], name="fc2", transB=1),
             node("Softmax", ["g2"], ["y"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "lenet", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 1, 28, 28])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                producer_name="fastconv-tests"), path)


def keras_files(folder):
    """Model1.h5 with a model_config added, and the same net as a Keras 3 .keras archive."""
    h5py = pytest.importorskip("h5py")
    full = folder / "lenet1_model.h5"
    shutil.copy(DATA / "keras_lenet" / "Model1.h5", full)
    with h5py.File(full, "a") as f:
        f.attrs["model_config"] = json.dumps(KERAS_LENET1_CONFIG)
    weights = folder / "inner.weights.h5"
    with h5py.File(DATA / "keras_lenet" / "Model1.h5", "r") as src, h5py.File(weights, "w") as f:
        for key, name in (("conv2d", "block1_conv1"), ("conv2d_1", "block2_conv1"),
                          ("dense", "before_softmax")):
            group = f.create_group(f"layers/{key}/vars")
            group.attrs["name"] = name
            for i, weight in enumerate(src[name].attrs["weight_names"]):
                group.create_dataset(str(i), data=src[name][weight][()])
    config = dict(KERAS_LENET1_CONFIG, config=dict(KERAS_LENET1_CONFIG["config"], layers=[
        {"class_name": "InputLayer", "config": {"name": "input", "batch_shape": [None, 28, 28, 1]}}]
        + KERAS_LENET1_CONFIG["config"]["layers"]))
    archive = folder / "lenet1.keras"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in (("config.json", json.dumps(config)), ("model.weights.h5", weights.read_bytes())):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return full, archive


class Target:
    """A seed file, how to load it (path -> model), its weight shapes, the offsets of its
    structural bytes, and whether it is text (whose numbers are mutated too)."""

    def __init__(self, path, load, shapes, hotspots, text=False):
        self.path, self.load, self.shapes, self.hotspots, self.text = path, load, shapes, hotspots, text

    def __repr__(self):                      # hypothesis prints it with every failing case
        return f"Target({self.path.name})"


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    """{target name: Target}; targets whose reader or data file is missing are left out."""
    folder = tmp_path_factory.mktemp("seeds")
    targets = {}

    def add(name, path, load, hotspots, text=False):
        targets[name] = Target(Path(path), load, weight_shapes(load(Path(path))), hotspots, text)

    model = lenet5()
    model.save(folder / "lenet5.safetensors")
    model.save_weights(folder / "lenet5_weights.safetensors")
    for path in (folder / "lenet5.safetensors", folder / "lenet5_weights.safetensors"):
        canonical_safetensors(path)
    add("safetensors (fastconv.load)", folder / "lenet5.safetensors", fastconv.load,
        safetensors_hotspots(folder / "lenet5.safetensors"))
    add("safetensors (load_weights)", folder / "lenet5_weights.safetensors",
        lambda p: _loaded_weights(fastconv.models.lenet5(), p),
        safetensors_hotspots(folder / "lenet5_weights.safetensors"))
    caffe = DATA / "caffe_lenet"
    if (caffe / "lenet_iter_10000.caffemodel").is_file():
        add("caffemodel", caffe / "lenet_iter_10000.caffemodel",
            lambda p: from_caffe(caffe / "lenet.prototxt", p),
            protobuf_hotspots((caffe / "lenet_iter_10000.caffemodel").read_bytes()))
        add("prototxt", caffe / "lenet.prototxt",
            lambda p: from_caffe(p, caffe / "lenet_iter_10000.caffemodel"), [], text=True)
    onnx_lenet(folder / "lenet.onnx")
    add("onnx", folder / "lenet.onnx", from_onnx, protobuf_hotspots((folder / "lenet.onnx").read_bytes()))
    if (DATA / "keras_lenet" / "Model1.h5").is_file():
        full, archive = keras_files(folder)
        add("keras .h5 (weights)", DATA / "keras_lenet" / "Model1.h5",
            lambda p: from_keras(p, model=keras_lenet1()), hdf5_hotspots(DATA / "keras_lenet" / "Model1.h5"))
        add("keras .h5 (model_config)", full, from_keras, hdf5_hotspots(full))
        add("keras .keras", archive, from_keras, zip_hotspots(archive))
    torch = pytest.importorskip("torch")
    legacy = DATA / "torch_lenet" / "mnist_lenet5_clntrained.pt"
    if legacy.is_file():
        add("torch legacy .pt", legacy, lambda p: from_torch(p, model=advertorch_lenet5()),
            list(range(0, 2048, 8)))                 # the pickle and the first storage header
    state = {f"{layer.name}.{'weight' if name == 'kernel' else name}": torch.from_numpy(array)
             for layer in model.layers for name, array in layer.weights.items()}
    torch.save(state, folder / "lenet5.pt")
    add("torch zip .pt", folder / "lenet5.pt", lambda p: from_torch(p, model=fastconv.models.lenet5()),
        zip_hotspots(folder / "lenet5.pt"))
    return targets


def _loaded_weights(model, path):
    model.load_weights(path)
    return model


# Where the structure is ---------------------------------------------------------------------------

def safetensors_hotspots(path):
    """The length prefix and the JSON header."""
    data = Path(path).read_bytes()
    return list(range(0, 8 + struct.unpack("<Q", data[:8])[0]))


def protobuf_hotspots(data, depth=3):
    """Offsets of the field keys and lengths of the messages nested up to ``depth`` deep (the
    length-delimited payloads themselves, mostly weights, are left to the uniform mutations)."""
    offsets, spans = [], [(0, len(data))]
    for _ in range(depth):
        nested = []
        for start, end in spans:
            try:
                for field in pb.fields(data, start, end):
                    offsets.append(field.offset)
                    if field.wire_type == pb.LENGTH and field.value[1] - field.value[0] < 1 << 16:
                        nested.append(field.value)
            except pb.ProtobufError:             # a payload that is not a message
                pass
        spans = nested
    return sorted(set(offsets))


def hdf5_hotspots(path):
    """Around HDF5's signatures (superblock, object headers, B-trees, heaps) and attribute names."""
    data = Path(path).read_bytes()
    offsets = []
    for marker in (b"\x89HDF", b"OHDR", b"TREE", b"HEAP", b"GCOL", b"SNOD", b"layer_names",
                   b"weight_names", b"model_config"):
        offsets += [m.start() + i for m in re.finditer(re.escape(marker), data) for i in range(0, 64, 4)]
    return sorted(o for o in set(offsets) if o < len(data))


def zip_hotspots(path):
    """Zip headers and the central directory."""
    data = Path(path).read_bytes()
    return sorted({m.start() + i for marker in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")
                   for m in re.finditer(re.escape(marker), data) for i in range(0, 48)
                   if m.start() + i < len(data)})


# Mutations --------------------------------------------------------------------------------------

INTEGERS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, (1 << 63) - 1, (1 << 64) - 1)
NUMBERS = ("0", "-1", "2147483648", "1000000000000", "99999999999999999999", "1.5", "nan")


@st.composite
def edits(draw, target, size):
    """1 to 4 edits of a file of ``size`` bytes; half of the positions near structure."""
    result = []
    for _ in range(draw(st.integers(1, 4))):
        if target.hotspots and draw(st.booleans()):
            position = draw(st.sampled_from(target.hotspots))
        else:
            position = draw(st.integers(0, max(size - 1, 0)))
        kinds = ["flip", "byte", "integer", "truncate", "delete", "insert"] + \
            (["number"] * 3 if target.text else [])
        kind = draw(st.sampled_from(kinds))
        value = {"flip": st.integers(0, 7), "byte": st.integers(0, 255),
                 "integer": st.tuples(st.sampled_from(INTEGERS), st.sampled_from([1, 2, 4, 8])),
                 "truncate": st.none(), "delete": st.integers(1, 64),
                 "insert": st.binary(min_size=1, max_size=16),
                 "number": st.sampled_from(NUMBERS)}[kind]
        result.append((kind, position, draw(value)))
    return result


def mutate(data, edit_list):
    data = bytearray(data)
    for kind, position, value in edit_list:
        position = min(position, max(len(data) - 1, 0))
        if not data:
            break
        if kind == "flip":
            data[position] ^= 1 << value
        elif kind == "byte":
            data[position] = value
        elif kind == "integer":
            number, width = value
            data[position:position + width] = (number % (1 << 8 * width)).to_bytes(width, "little")
        elif kind == "truncate":
            del data[position:]
        elif kind == "delete":
            del data[position:position + value]
        elif kind == "insert":
            data[position:position] = value
        else:                                        # the next number in a text file
            match = re.compile(rb"-?\d+").search(bytes(data), position)
            if match:
                data[match.start():match.end()] = value.encode()
    return bytes(data)


def load_checked(target, path):
    """target.load(path) watched: a hang ends the run with a traceback; the allocations are
    measured (NumPy and Python's with tracemalloc, native ones by the peak resident size)."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    tracemalloc.start()
    try:
        return target.load(path)
    finally:
        allocated = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
        assert allocated < ALLOCATION_LIMIT, f"{allocated} bytes allocated while loading"
        assert grown_kib < ALLOCATION_LIMIT >> 10, f"peak memory grew by {grown_kib} KiB"


TARGET_EXAMPLES = {
    "safetensors (fastconv.load)": 400, "safetensors (load_weights)": 300, "caffemodel": 500,
    "prototxt": 400, "onnx": 500, "keras .h5 (weights)": 400, "keras .h5 (model_config)": 400,
    "keras .keras": 100, "torch legacy .pt": 400, "torch zip .pt": 300,
}


def fuzz_target(name, examples):
    @fuzz(examples)
    @given(data=st.data())
    def test(seeds, tmp_path_factory, fuzz_tally, data):
        if name not in seeds:
            pytest.skip(f"{name}: its reader or ../shared/data is missing")
        target = seeds[name]
        original = target.path.read_bytes()
        mutated = mutate(original, data.draw(edits(target, len(original))))
        path = tmp_path_factory.getbasetemp() / f"mutated{''.join(target.path.suffixes[-1:])}"
        path.write_bytes(mutated)
        tally = fuzz_tally[f"files {name}"]
        try:
            model = load_checked(target, path)
        except ValueError as err:
            tally["rejected"] += 1
            assert str(err), "an empty message"
            return
        tally["loaded"] += 1
        if target.text:   # a mutated prototxt is another architecture, filled from the caffemodel
            assert all(shape in target.shapes for shape in weight_shapes(model))
        else:
            assert weight_shapes(model) == target.shapes, "loaded into a model of other shapes"

    test.__name__ = "test_mutated_" + re.sub(r"\W+", "_", name).strip("_")
    return test


for _name, _examples in TARGET_EXAMPLES.items():
    _test = fuzz_target(_name, _examples)
    globals()[_test.__name__] = _test


# Hand-made hostile files --------------------------------------------------------------------------

def refused_without_allocating(load, match, limit=ALLOCATION_LIMIT):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            load()
        allocated = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert allocated < limit, f"{allocated} bytes allocated before refusing"


@pytest.mark.parametrize("length", [0, 7, 1 << 31, 1 << 40, (1 << 63) - 1, (1 << 64) - 1])
def test_safetensors_oversized_header_length(tmp_path, length):
    path = tmp_path / "header.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b'{"__metadata__":{}}' + bytes(64))
    refused_without_allocating(lambda: fastconv.load(path), "not a readable safetensors file")


def test_safetensors_declared_shape_beyond_memory(tmp_path):
    header = json.dumps({"conv1/kernel": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                          "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "shape.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    refused_without_allocating(lambda: lenet5().load_weights(path), "not a readable safetensors")


def with_architecture(path, edit):
    """Rewrites the architecture metadata of a fastconv file: ``edit(text) -> text``."""
    data = Path(path).read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    header["__metadata__"]["architecture"] = edit(header["__metadata__"]["architecture"])
    raw = json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def test_safetensors_architecture_beyond_memory(tmp_path):
    """An architecture asking for 2**40 weights: refused before they are created."""
    path = tmp_path / "arch.safetensors"
    fastconv.Sequential([fastconv.Input((4,)), L.Dense(2, name="fc")]).save(path)
    with_architecture(path, lambda text: text.replace('"units": 2', f'"units": {1 << 40}'))
    refused_without_allocating(lambda: fastconv.load(path), r"architecture is damaged.*would need")


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '"unterminated', "[1, 2]"],
                         ids=["deep", "invalid", "a list"])
def test_safetensors_architecture_that_is_not_an_object(tmp_path, text):
    path = tmp_path / "json.safetensors"
    lenet5().save(path)
    with_architecture(path, lambda _: text)
    with pytest.raises(ValueError, match="architecture metadata"):
        fastconv.load(path)


def test_hdf5_dataset_declared_beyond_memory(tmp_path):
    """A chunked dataset of 2**40 floats takes a few bytes on disk until it is read."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = np.array([b"block1_conv1/kernel:0"])
        group.create_dataset("block1_conv1/kernel:0", shape=(1 << 20, 1 << 20), dtype="f4",
                             chunks=(1, 1024))
    refused_without_allocating(lambda: from_keras(path, model=keras_lenet1()),
                               r"kernel:0.*declared shape would need")


def _with_zero_size_heap_object(path):
    """The global-heap damage the fuzzing found: a free-space object of size 0."""
    data = bytearray(path.read_bytes())
    start = data.index(b"GCOL")
    position = start + 16
    while int.from_bytes(data[position:position + 2], "little") != 0:
        position += 16 + -(-int.from_bytes(data[position + 8:position + 16], "little") // 8) * 8
    data[position + 8:position + 16] = bytes(8)
    path.write_bytes(bytes(data))


@needs("keras_lenet/Model1.h5")
def test_hdf5_global_heap_that_hdf5_would_read_forever(tmp_path):
    full, _ = keras_files(tmp_path)
    _with_zero_size_heap_object(full)
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        with pytest.raises(ValueError, match="global heap .* size 0"):
            from_keras(full)
    finally:
        faulthandler.cancel_dump_traceback_later()


@needs("keras_lenet/Model1.h5")
def test_keras_config_beyond_memory(tmp_path):
    h5py = pytest.importorskip("h5py")
    full, _ = keras_files(tmp_path)
    config = json.loads(json.dumps(KERAS_LENET1_CONFIG))
    config["config"]["layers"][5]["config"]["units"] = 1 << 40
    with h5py.File(full, "a") as f:
        f.attrs["model_config"] = json.dumps(config)
    refused_without_allocating(lambda: from_keras(full), r"before_softmax.*would need")


@needs("keras_lenet/Model1.h5")
def test_keras_archive_member_declared_beyond_memory(tmp_path, monkeypatch):
    """A zip entry declaring 4 GiB on a machine of 1 GiB: refused before decompressing."""
    _, archive = keras_files(tmp_path)
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")                      # config.json's central entry
    data[central + 24:central + 28] = (0xFFFF_FFFF).to_bytes(4, "little")   # uncompressed size
    archive.write_bytes(bytes(data))
    monkeypatch.setattr(fastconv.functional, "PHYSICAL_MEMORY", 1 << 30)
    refused_without_allocating(lambda: from_keras(archive),
                               r"config\.json: the decompressed member would need 4\.0 GiB")


def test_onnx_initializer_declared_beyond_memory(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnx_lenet(tmp_path / "lenet.onnx")
    model = onnx.load(tmp_path / "lenet.onnx")
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend([1 << 20, 1 << 20, 5, 5])
    onnx.save(model, tmp_path / "huge.onnx")
    refused_without_allocating(lambda: from_onnx(tmp_path / "huge.onnx"), "initializer 'w1'")


def test_onnx_missing_required_attribute(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnx_lenet(tmp_path / "lenet.onnx")
    model = onnx.load(tmp_path / "lenet.onnx")
    relu = model.graph.node[1]
    relu.op_type = "LRN"                                     # LRN needs `size`
    onnx.save(model, tmp_path / "lrn.onnx")
    with pytest.raises(ValueError, match=r"node 'relu1' \(LRN\): the required attribute 'size' is missing"):
        from_onnx(tmp_path / "lrn.onnx")


@pytest.mark.parametrize("location", ["/etc/hostname", "../../../../etc/hostname"])
def test_onnx_external_data_outside_the_model_folder(tmp_path, location):
    onnx = pytest.importorskip("onnx")
    onnx_lenet(tmp_path / "lenet.onnx")
    model = onnx.load(tmp_path / "lenet.onnx")
    tensor = model.graph.initializer[1]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", "24")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, tmp_path / "external.onnx")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        from_onnx(tmp_path / "external.onnx")


@needs("caffe_lenet/lenet.prototxt", "caffe_lenet/lenet_iter_10000.caffemodel")
def test_prototxt_input_beyond_memory(tmp_path):
    text = (DATA / "caffe_lenet" / "lenet.prototxt").read_text()
    path = tmp_path / "huge.prototxt"
    path.write_text(re.sub(r"dim: 28", "dim: 2000000000", text, count=2))
    refused_without_allocating(
        lambda: from_caffe(path, DATA / "caffe_lenet" / "lenet_iter_10000.caffemodel"),
        r"huge\.prototxt: .*would need")


@pytest.mark.parametrize("text", ["layer {" * 10000 + "}" * 10000, 'name: "\xff"'])
def test_prototxt_nesting_and_encoding(tmp_path, text):
    path = tmp_path / "bad.prototxt"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad\.prototxt: not a (valid )?prototxt"):
        read_prototxt(path)


def test_torch_legacy_storage_declared_beyond_memory(tmp_path):
    """The legacy format declares each storage's size in its pickle; torch reserves it (never
    touching it) and then refuses the file: ValueError, and the peak memory does not move."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pt"
    torch.save({"conv1.weight": torch.zeros(70000)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    numel = b"J" + struct.pack("<i", 70000)   # BININT 70000: the storage's, then the tensor's size
    assert numel in data
    for declared in (b"J" + struct.pack("<i", 2**31 - 1), b"\x8a\x06" + (1 << 40).to_bytes(6, "little")):
        path.write_bytes(data.replace(numel, declared, 1))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(ValueError, match="weights_only=True"):
            from_torch(path, model=advertorch_lenet5())
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < ALLOCATION_LIMIT >> 10


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_pickle_payload_never_runs(tmp_path, zip_format):
    """Both torch formats (tests/test_convert_torch.py covers the zip one with a state_dict)."""
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(3), "extra": [_Payload(marker)]}, tmp_path / "evil.pt",
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError, match="weights_only=True"):
        from_torch(tmp_path / "evil.pt", model=advertorch_lenet5())
    assert not marker.exists()
