"""fastconv.dask: a fastconv model run over a Dask array or a list of image files, on a cluster.

The model is sent to every worker once (``client.scatter(..., broadcast=True)``); each task runs
``model.predict`` on one chunk of the batch axis, with fastconv's thread count set to the
worker's share of its machine's cores, so that workers sharing a machine do not oversubscribe
it (see docs/dask.md).

Needs the ``dask`` extra: ``pip install "fastconv[dask]"``.
"""
import numbers
import os
import uuid
from collections import Counter

import numpy as np

try:
    import dask
    import dask.array as da
    import dask.bag as db
    import distributed
    from distributed.comm import get_address_host
except ImportError as err:
    raise ImportError("fastconv.dask needs Dask and dask.distributed: "
                      'pip install "fastconv[dask]"') from err

from . import runtime
from .model import Model
from .preprocess import preprocess

__all__ = ["predict"]

DEFAULT_PATH_CHUNK = 128  # images per task when reading files


def predict(model, data, batch_size=None, client=None, data_format=None, chunk_size=None):
    """The model's outputs for ``data``, as a lazy Dask array in the order of the inputs.

    ``data``: a Dask array of images (N, C, H, W), or (N, H, W, C) with
    ``data_format="channels_last"``, whose batch chunks become the tasks (``chunk_size``
    rechunks them); or a list (or Dask bag) of image file paths, read and preprocessed with
    ``fastconv.preprocess`` on the workers, ``chunk_size`` (default 128) images per task.
    ``batch_size``: images per ``predict`` call inside a task (None: the whole chunk).
    ``client``: a ``distributed.Client`` (None: the current one if any, else Dask's local
    scheduler, where the thread count is left as it is).

    >>> import dask.array as da, fastconv, fastconv.dask
    >>> from distributed import Client, LocalCluster
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> images = da.random.random((1000, 1, 32, 32), chunks=(250, 1, 32, 32))
    >>> scores = fastconv.dask.predict(fastconv.models.lenet5(), images, batch_size=50)
    >>> scores.shape, scores.chunks[0]
    ((1000, 10), (250, 250, 250, 250))
    >>> scores.argmax(axis=1).compute().shape
    (1000,)
    """
    _check_arguments(model, batch_size, data_format, chunk_size)
    client = _client(client)
    if isinstance(data, da.Array):
        images = _chunked_images(model, data, data_format, chunk_size)
        task = _predict_block
    elif isinstance(data, (list, tuple, db.Bag)):
        images = _chunked_paths(data, chunk_size)
        task = _predict_paths
    else:
        raise TypeError(f"fastconv.dask.predict: `data` must be a dask array of images or a "
                        f"list (or dask bag) of image paths; received {type(data).__name__} "
                        f"(wrap NumPy arrays with dask.array.from_array)")
    out_shape = _output_sample_shape(model, data_format)
    return images.map_blocks(
        task, _shared(model, client), batch_size, data_format, _threads_per_host(client),
        chunks=(images.chunks[0],) + tuple((n,) for n in out_shape),
        **_axes_change(images.ndim, 1 + len(out_shape)),
        dtype=np.float32, meta=np.empty((0,) * (1 + len(out_shape)), np.float32),
        name=f"fastconv-predict-{uuid.uuid4().hex}")  # a given name: the model is not hashed


# Inputs ----------------------------------------------------------------------------------------

def _check_arguments(model, batch_size, data_format, chunk_size):
    if not isinstance(model, Model):
        raise TypeError(f"fastconv.dask.predict: `model` must be a fastconv Model; received "
                        f"{type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"fastconv.dask.predict: {model.label} must have one input and one "
                         f"output; received {len(model.inputs)} inputs and {len(model.outputs)} "
                         f"outputs")
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or value < 1):
            raise ValueError(f"fastconv.dask.predict: `{name}` must be None or an integer >= 1; "
                             f"received {value!r}")
    if data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f"fastconv.dask.predict: `data_format` must be None, 'channels_first' "
                         f"or 'channels_last'; received {data_format!r}")


def _chunked_images(model, images, data_format, chunk_size):
    """The array checked against the model's input and chunked along the batch axis only."""
    expected = _swapped(model.inputs[0].sample_shape, model, data_format)
    if images.shape[1:] != expected:
        raise ValueError(f"fastconv.dask.predict: {model.label} expects images shaped "
                         f"(N, {', '.join(map(str, expected))}); received shape {images.shape}")
    if images.dtype.kind not in "fiu":
        raise TypeError(f"fastconv.dask.predict: images must hold real numbers; received dtype "
                        f"{images.dtype}")
    batch_chunks = images.chunks[0] if chunk_size is None else int(chunk_size)
    return images.rechunk((batch_chunks,) + tuple(-1 for _ in expected))


def _chunked_paths(paths, chunk_size):
    """The paths as a 1-D object array, ``chunk_size`` per chunk. A bag is gathered first:
    paths are small, and the images are still read on the workers."""
    paths = list(paths.compute() if isinstance(paths, db.Bag) else paths)
    if not paths:
        raise ValueError("fastconv.dask.predict: expected image file paths; received an empty "
                         "list")
    bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise TypeError(f"fastconv.dask.predict: image paths must be str or PathLike; received "
                        f"{type(bad[0]).__name__}")
    array = np.empty(len(paths), dtype=object)
    array[:] = [os.fspath(p) for p in paths]
    size = DEFAULT_PATH_CHUNK if chunk_size is None else int(chunk_size)
    return da.from_array(array, chunks=size, name=f"fastconv-paths-{uuid.uuid4().hex}")


def _swapped(sample_shape, model, data_format):
    """A per-sample image shape (C, H, W) or (H, W, C) in ``data_format`` (None: the model's)."""
    shape = tuple(sample_shape)
    if len(shape) != 3 or data_format in (None, model.data_format):
        return shape
    return shape[1:] + shape[:1] if data_format == "channels_last" else shape[2:] + shape[:2]


def _output_sample_shape(model, data_format):
    return _swapped(model.outputs[0].sample_shape, model, data_format)


def _axes_change(in_ndim, out_ndim):
    """map_blocks' arguments for a block whose rank changes from ``in_ndim`` to ``out_ndim``."""
    if out_ndim < in_ndim:
        return {"drop_axis": list(range(out_ndim, in_ndim))}
    if out_ndim > in_ndim:
        return {"new_axis": list(range(in_ndim, out_ndim))}
    return {}


# The cluster -----------------------------------------------------------------------------------

def _client(client):
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"fastconv.dask.predict: `client` must be a distributed.Client or "
                            f"None; received {type(client).__name__}")
        return client
    try:
        return distributed.default_client()
    except ValueError:  # no client: Dask's local scheduler
        return None


def _shared(model, client):
    """A reference to the model that tasks share: on a cluster, a future of one copy per worker
    (each worker unpickles it once, not once per task); locally, one graph key."""
    if client is None:
        return dask.delayed(model, name=f"fastconv-model-{uuid.uuid4().hex}", traverse=False)
    return client.scatter(model, broadcast=True, hash=False)


def _threads_per_host(client):
    """{host: Dask worker threads on that host, over all its workers}."""
    if client is None:
        return {}
    totals = Counter()
    for address, threads in client.nthreads().items():
        totals[get_address_host(address)] += threads
    return dict(totals)


def _use_core_share(threads_per_host):
    """On a Dask worker, sets fastconv's thread count to this worker thread's share of the
    machine's cores: every Dask thread on the host may run a task at once."""
    try:
        worker = distributed.get_worker()
    except ValueError:  # not on a distributed worker
        return
    tasks_at_once = threads_per_host.get(get_address_host(worker.address), worker.state.nthreads)
    share = max(1, _usable_cores() // tasks_at_once)
    if runtime.get_num_threads() != share:
        runtime.set_num_threads(share)


def _usable_cores():
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Tasks -----------------------------------------------------------------------------------------

def _predict_block(images, model, batch_size, data_format, threads_per_host):
    _use_core_share(threads_per_host)
    return model.predict(images, batch_size=batch_size, data_format=data_format)


def _predict_paths(paths, model, batch_size, data_format, threads_per_host):
    _use_core_share(threads_per_host)
    images = np.concatenate([preprocess(path, model, data_format) for path in paths])
    return model.predict(images, batch_size=batch_size, data_format=data_format)
