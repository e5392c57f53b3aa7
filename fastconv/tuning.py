"""Measured choice of convolution algorithms: ``Model.tune()`` and its cache file.

The plan picks each convolution's algorithm by the heuristic in ``functional._conv_algorithm``
unless (in this order) the model forces one for the layer (``Model.set_algorithm``) or the tuning
cache holds a measured choice for the layer's geometry on this machine. ``Model.tune()`` times
every algorithm that can run each distinct convolution of a model, keeps the fastest and writes
it to the cache: a JSON file at ``$FASTCONV_TUNE_CACHE``, else
``$XDG_CACHE_HOME/fastconv/tuning.json`` (``~/.cache/...``). Deleting the file brings the
heuristic back. Entries are keyed by CPU model, instruction set, thread count and the layer's
geometry, so a cache shared between machines never applies one machine's timings to another.
"""
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np

from . import _core
from . import functional as F

_state = {"path": None, "mtime": None, "entries": {}, "generation": 0, "checked": -1e9}


def cache_path():
    """Where the tuning cache lives (the file may not exist)."""
    explicit = os.environ.get("FASTCONV_TUNE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv", "tuning.json")


@functools.lru_cache(maxsize=1)
def cpu_name():
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conv_key(input_shape, kernel_shape, strides, padding, dilation, groups):
    """The cache key of a convolution geometry on this machine, kernel table and thread count."""
    return "|".join([cpu_name(), _core.isa_active(), f"threads={_core.get_num_threads()}",
                     f"in={tuple(input_shape)}", f"kernel={tuple(kernel_shape)}",
                     f"strides={tuple(strides)}", f"padding={padding!r}",
                     f"dilation={tuple(dilation)}", f"groups={groups}"])


def _entries():
    """The cache's entries, read again whenever the file changed (or appeared, or went)."""
    path = cache_path()
    try:
        info = os.stat(path)
        mtime = (info.st_mtime_ns, info.st_size, info.st_ino)  # timestamps can be coarse
    except OSError:
        mtime = None
    _state["checked"] = time.monotonic()
    if (path, mtime) != (_state["path"], _state["mtime"]):
        entries = {}
        if mtime is not None:
            try:
                with open(path) as f:
                    entries = json.load(f).get("entries", {})
            except (OSError, ValueError, AttributeError):
                entries = {}  # an unreadable cache is ignored, never fatal
        _state.update(path=path, mtime=mtime, entries=entries if isinstance(entries, dict) else {})
        _state["generation"] += 1
    return _state["entries"]


def generation(max_age=0.0):
    """Changes whenever the cache's content may have changed (plans made before are rebuilt).
    The file is looked at again only if it was last looked at more than ``max_age`` seconds
    ago: predict passes a second, so that a running model follows an edited cache without a
    file-system call per predict."""
    if time.monotonic() - _state["checked"] >= max_age:
        _entries()
    return _state["generation"]


def lookup(key):
    """The measured algorithm for a cache key, or None."""
    entry = _entries().get(key)
    return entry.get("algorithm") if isinstance(entry, dict) else None


def _write(new_entries):
    path = cache_path()
    entries = dict(_entries())
    entries.update(new_entries)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"format": "fastconv-tuning-1", "entries": entries}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of it
    _entries()


def candidates(kernel_shape, strides, padding, dilation, groups, input_shape):
    """The algorithms that can run a convolution (those PreparedConv2d accepts for it); the
    direct one only for thin groups (fewer than 8 output channels), the only place it can win."""
    names = []
    thin = kernel_shape[0] // groups < 8
    for algorithm in ("implicit", "im2col", "winograd", "winograd4", "gemm") + (("direct",) if thin else ()):
        try:
            F._ConvGeometry("tune", input_shape, kernel_shape, None, strides, padding, dilation,
                            groups, None, algorithm, kernel_shape)
        except ValueError:
            continue
        names.append(algorithm)
    return names


def _median_ms(conv, x, rounds):
    conv(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        conv(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def tune_convolutions(convs, batch_size=1, rounds=5):
    """Times every candidate algorithm of each distinct convolution in ``convs`` (dicts with the
    layer's name, input_shape, kernel, strides, padding, dilation and groups), writes the
    fastest to the cache and returns one row per layer: name, algorithm, {algorithm: ms}."""
    rng = np.random.default_rng(0)
    measured, rows = {}, []
    for c in convs:
        kernel_shape = c["kernel"].shape
        key = conv_key(c["input_shape"], kernel_shape, c["strides"], c["padding"], c["dilation"],
                       c["groups"])
        if key not in measured:
            x = rng.standard_normal((batch_size,) + tuple(c["input_shape"])).astype(np.float32)
            times = {}
            for algorithm in candidates(kernel_shape, c["strides"], c["padding"], c["dilation"],
                                        c["groups"], c["input_shape"]):
                conv = F.PreparedConv2d(c["kernel"], None, c["input_shape"], c["strides"],
                                        c["padding"], c["dilation"], c["groups"], "relu",
                                        algorithm=algorithm)
                times[algorithm] = _median_ms(conv, x, rounds)
            measured[key] = {"algorithm": min(times, key=times.get), "times_ms": times,
                             "batch_size": batch_size}
        rows.append({"layer": c["name"], "algorithm": measured[key]["algorithm"],
                     "times_ms": measured[key]["times_ms"]})
    _write(measured)
    return rows
