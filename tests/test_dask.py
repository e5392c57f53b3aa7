"""fastconv.dask.predict on a LocalCluster (2 worker processes, 1 thread each): the Caffe LeNet
on the 10,000 MNIST test images and a random-weight ResNet-18 on random images give exactly the
outputs of a local ``predict`` (fastconv computes each image alone, in a fixed order, for any
batch grouping and thread count, so no tolerance is needed); the model reaches each worker once,
not once per task; each worker's thread count is its share of the cores; image files are read
on the workers."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")

import fastconv  # noqa: E402
import fastconv.dask  # noqa: E402
from fastconv import Input, Sequential  # noqa: E402
from fastconv.convert.caffe import from_caffe  # noqa: E402
from fastconv.layers import Conv2D, Dense, Flatten, MaxPool2D  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LENET = DATA / "caffe_lenet"
MNIST = DATA / "mnist"
LENET_SCALE = 0.00390625  # the Caffe MNIST example's transform_param scale (1/256)

needs_mnist = pytest.mark.skipif(not (LENET / "lenet_iter_10000.caffemodel").exists()
                                 or not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="../shared/data (Caffe LeNet, MNIST) is absent")


def small_net():
    return Sequential([Input((1, 12, 12)), Conv2D(4, 3, activation="relu", name="conv"),
                       MaxPool2D(2, name="pool"), Flatten(), Dense(3, name="head")], seed=0)


def read_idx(path, offset):
    with gzip.open(path, "rb") as file:
        return np.frombuffer(file.read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def mnist():
    """(pixels uint8 (N, 28, 28), labels)."""
    pixels = read_idx(MNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return pixels, read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", 8)


@pytest.fixture(scope="module")
def lenet():
    return from_caffe(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel",
                      preprocessing={"scale": LENET_SCALE})


def on_workers(client, x, rows):
    """``x`` as a dask array of ``rows``-image chunks already held by the workers (scattered,
    as data loaded by the workers would be) rather than embedded in the task graph."""
    starts = range(0, len(x), rows)
    parts = client.scatter([x[i:i + rows] for i in starts])
    return da.concatenate([da.from_delayed(part, (len(x[i:i + rows]),) + x.shape[1:], x.dtype)
                           for part, i in zip(parts, starts)])


@pytest.fixture(scope="module")
def client():
    # Dask's nannies set OMP_NUM_THREADS=1 (and the like) in this process's environment for the
    # workers they spawn; tests that run later start subprocesses that must not inherit it.
    environment = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
            with distributed.Client(cluster) as connected:
                yield connected
    finally:
        os.environ.clear()
        os.environ.update(environment)


# Without a cluster ----------------------------------------------------------------------------

def test_local_scheduler_gives_predict_outputs_in_any_layout(rng):
    model = small_net()
    x = rng.random((50, 1, 12, 12), dtype=np.float32)
    images = da.from_array(x, chunks=(16, 1, 12, 12))
    scores = fastconv.dask.predict(model, images, batch_size=5)
    assert scores.shape == (50, 3) and scores.chunks == ((16, 16, 16, 2), (3,))
    np.testing.assert_array_equal(scores.compute(), model.predict(x))
    cut = model.truncate("conv")
    maps = fastconv.dask.predict(cut, images.transpose(0, 2, 3, 1), data_format="channels_last",
                                 chunk_size=20)
    assert maps.shape == (50, 10, 10, 4) and maps.chunks[0] == (20, 20, 10)
    np.testing.assert_array_equal(maps.compute(), cut.predict(x).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"model": "lenet"}, TypeError, "`model` must be a fastconv Model; received str"),
    ({"data": np.zeros((2, 1, 12, 12))}, TypeError, "received ndarray .wrap NumPy arrays"),
    ({"data": da.zeros((2, 1, 10, 10))}, ValueError,
     r"expects images shaped \(N, 1, 12, 12\); received shape \(2, 1, 10, 10\)"),
    ({"data": da.zeros((2, 12, 12, 1))}, ValueError, r"\(N, 1, 12, 12\); received shape"),
    ({"data": da.zeros((2, 1, 12, 12)), "data_format": "NHWC"}, ValueError,
     "`data_format` must be None, 'channels_first' or 'channels_last'"),
    ({"data": da.zeros((2, 1, 12, 12), dtype=bool)}, TypeError,
     "real numbers; received dtype bool"),
    ({"chunk_size": 0}, ValueError, "`chunk_size` must be None or an integer >= 1; received 0"),
    ({"batch_size": 2.5}, ValueError, "`batch_size` must be None or an integer >= 1; received 2.5"),
    ({"data": ["a.png"], "data_format": "NCHW"}, ValueError, "`data_format` must be None"),
    ({"data": []}, ValueError, "expected image file paths; received an empty list"),
    ({"data": ["a.png", 3]}, TypeError, "paths must be str or PathLike; received int"),
    ({"client": "tcp://scheduler:8786"}, TypeError, "`client` must be a distributed.Client"),
])
def test_bad_arguments_are_reported_before_anything_runs(kwargs, error, message):
    arguments = {"model": small_net(), "data": da.zeros((4, 1, 12, 12))} | kwargs
    with pytest.raises(error, match=message):
        fastconv.dask.predict(**arguments)


# On a LocalCluster ----------------------------------------------------------------------------

@needs_mnist
@pytest.mark.slow
def test_lenet_on_mnist_matches_local_predict(client, lenet, mnist):
    pixels, labels = mnist
    x = pixels[:, None].astype(np.float32) * np.float32(LENET_SCALE)
    scores = fastconv.dask.predict(lenet, on_workers(client, x, 1500), batch_size=500,
                                   client=client)
    result = client.compute(scores).result()
    np.testing.assert_array_equal(result, lenet.predict(x, batch_size=1000))
    assert round(100 * (result.argmax(axis=1) == labels).mean(), 2) == 99.14


@pytest.mark.slow
def test_resnet_on_random_images_matches_local_predict(client, rng):
    resnet = fastconv.models.resnet18(input_shape=(3, 32, 32))
    x = rng.random((200, 3, 32, 32), dtype=np.float32)
    expected = resnet.predict(x, batch_size=32)
    nhwc = on_workers(client, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), 50)
    scores = fastconv.dask.predict(resnet, nhwc, client=client, data_format="channels_last")
    assert scores.chunks[0] == (50, 50, 50, 50)
    np.testing.assert_array_equal(client.compute(scores).result(), expected)


def test_model_is_unpickled_once_per_worker(client, rng):
    def count_unpickling():
        from fastconv.model import Model
        original = Model.__setstate__

        def counting(self, state):
            counting.calls += 1
            original(self, state)

        counting.calls, counting.original = 0, original
        Model.__setstate__ = counting

    def stop_counting():
        from fastconv.model import Model
        calls = Model.__setstate__.calls
        Model.__setstate__ = Model.__setstate__.original
        return calls

    client.run(count_unpickling)
    x = da.from_array(rng.random((64, 1, 12, 12), dtype=np.float32), chunks=(4, 1, 12, 12))
    client.compute(fastconv.dask.predict(small_net(), x, client=client)).result()  # 16 tasks
    # Once from the broadcast; at most once more if Dask's active memory manager dropped that
    # copy (it keeps one when no task waits for the key yet) and the worker fetched it back.
    assert all(calls in (1, 2) for calls in client.run(stop_counting).values())


def test_each_worker_uses_its_share_of_the_cores(client, rng):
    client.run(fastconv.set_num_threads, 7)  # any other value; the tasks must replace it
    x = da.from_array(rng.random((8, 1, 12, 12), dtype=np.float32), chunks=(2, 1, 12, 12))
    client.compute(fastconv.dask.predict(small_net(), x, client=client)).result()
    cores = client.run(lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count())
    # 2 workers of 1 thread on this machine: each gets half of the cores.
    expected = {address: max(1, n // 2) for address, n in cores.items()}
    assert client.run(fastconv.get_num_threads) == expected


@needs_mnist
def test_image_files_are_read_on_the_workers(client, lenet, mnist, tmp_path):
    image = pytest.importorskip("PIL.Image")
    pixels = mnist[0][:150]
    paths = [tmp_path / f"{i:03d}.png" for i in range(len(pixels))]
    for path, digit in zip(paths, pixels):
        image.fromarray(digit).save(path)
    expected = lenet.predict(pixels[:, None].astype(np.float32) * np.float32(LENET_SCALE))
    from_list = fastconv.dask.predict(lenet, paths, chunk_size=64, client=client)
    assert from_list.shape == (150, 10) and from_list.chunks[0] == (64, 64, 22)
    np.testing.assert_array_equal(client.compute(from_list).result(), expected)
    bag = db.from_sequence([str(p) for p in paths], npartitions=3)
    from_bag = fastconv.dask.predict(lenet, bag, client=client)
    np.testing.assert_array_equal(client.compute(from_bag).result(), expected)
