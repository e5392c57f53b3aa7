"""The compiled core's configuration: instruction set, kernels, threads, build.

The kernel table is chosen once, when fastconv is imported, from CPUID and XGETBV;
``FASTCONV_ISA=scalar|avx2|avx512`` caps it (a cap never enables an instruction set the CPU
lacks). ``isa_cap`` switches the table for a block of code, for tests and benchmarks.
"""
import contextlib
import os
import pprint
import warnings

from . import _core
from ._version import __version__

ISA_LEVELS = {"scalar": 0, "avx2": 1, "avx512": 2}
_ISA_ALIASES = {"avx512f": "avx512", "generic": "scalar", "none": "scalar"}


def _isa_level(name, source):
    key = str(name).strip().lower()
    key = _ISA_ALIASES.get(key, key)
    if key not in ISA_LEVELS:
        raise ValueError(
            f"{source}: expected one of {sorted(ISA_LEVELS)}, received {name!r}"
        )
    return ISA_LEVELS[key]


def _apply_env_cap():
    requested = os.environ.get("FASTCONV_ISA", "").strip()
    if not requested:
        return
    try:
        _core.set_isa_cap(_isa_level(requested, "FASTCONV_ISA"))
    except ValueError as err:
        warnings.warn(f"{err}; using the detected instruction set", RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def isa_cap(name):
    """Runs the enclosed block with the kernel table capped at ``name`` (scalar, avx2, avx512).

    The kernel table is process-wide, like ``FASTCONV_ISA``: use this only while no other thread
    runs fastconv (a call in flight may read the table more than once). It is meant for tests and
    benchmarks that compare instruction sets in one process.

    >>> import fastconv
    >>> with fastconv.runtime.isa_cap("scalar") as isa:
    ...     print(isa)
    scalar
    """
    level = _isa_level(name, "isa_cap")
    previous = ISA_LEVELS[_core.isa_active()]
    _core.set_isa_cap(level)
    try:
        yield _core.isa_active()
    finally:
        _core.set_isa_cap(previous)


_winograd = os.environ.get("FASTCONV_WINOGRAD", "1").strip() not in ("0", "false", "off")


def set_winograd(enabled):
    """Lets model plans use Winograd (F(2x2, 3x3) and F(4x4, 3x3)) for eligible
    convolutions of 3x3 or larger kernels (the default; ``FASTCONV_WINOGRAD=0`` turns it off at
    start). Plans made afterwards follow the setting.

    >>> import fastconv
    >>> previous = fastconv.runtime.winograd_enabled()
    >>> fastconv.runtime.set_winograd(False)
    >>> fastconv.runtime.winograd_enabled()
    False
    >>> fastconv.runtime.set_winograd(previous)
    """
    global _winograd
    _winograd = bool(enabled)


def winograd_enabled():
    """Whether model plans may use Winograd for eligible convolutions (see ``set_winograd``).

    >>> import fastconv
    >>> fastconv.runtime.winograd_enabled() == fastconv.runtime.config()["winograd"]
    True
    """
    return _winograd


_depth_first = os.environ.get("FASTCONV_DEPTH_FIRST", "1").strip() not in ("0", "false", "off")


def set_depth_first(enabled):
    """Lets model plans run chains of 1x1 and 3x3 depthwise convolutions (MobileNetV2's
    inverted residual blocks) depth-first, band by band of rows, their expanded tensors kept in
    cache (the default; ``FASTCONV_DEPTH_FIRST=0`` turns it off at start). Plans made
    afterwards follow the setting; results are the same either way.

    >>> import fastconv
    >>> previous = fastconv.runtime.depth_first_enabled()
    >>> fastconv.runtime.set_depth_first(False)
    >>> fastconv.runtime.depth_first_enabled()
    False
    >>> fastconv.runtime.set_depth_first(previous)
    """
    global _depth_first
    _depth_first = bool(enabled)


def depth_first_enabled():
    """Whether model plans may run convolutions depth-first (see ``set_depth_first``).

    >>> import fastconv
    >>> fastconv.runtime.depth_first_enabled() == fastconv.runtime.config()["depth_first"]
    True
    """
    return _depth_first


def set_flush_denormals(enabled):
    """Lets the kernels treat denormal numbers (below 1.2e-38 in magnitude) as zero, as inputs
    and as results: on by default (``FASTCONV_FLUSH_DENORMALS=0`` turns it off at start), since
    some CPUs compute denormals hundreds of times slower. The mode is set only inside fastconv's
    own parallel regions, for their duration; the caller's thread never sees it.

    >>> import fastconv
    >>> previous = fastconv.runtime.flush_denormals_enabled()
    >>> fastconv.runtime.set_flush_denormals(False)
    >>> fastconv.runtime.flush_denormals_enabled()
    False
    >>> fastconv.runtime.set_flush_denormals(previous)
    """
    _core.set_flush_denormals(bool(enabled))


def flush_denormals_enabled():
    """Whether the kernels flush denormals to zero (see ``set_flush_denormals``).

    >>> import fastconv
    >>> fastconv.runtime.flush_denormals_enabled() == fastconv.runtime.config()["flush_denormals"]
    True
    """
    return _core.flush_denormals()


_core.set_flush_denormals(
    os.environ.get("FASTCONV_FLUSH_DENORMALS", "1").strip() not in ("0", "false", "off"))


def set_num_threads(n):
    """Sets the number of OpenMP threads every kernel call uses (n >= 1).

    A process-wide setting, as in PyTorch: safe to call from any thread at any time; calls
    already running finish with the count they started with. Results are bit-identical for any
    count. In a process forked after fastconv ran multi-threaded, kernels stay single-threaded
    (GNU OpenMP's threads do not survive fork; see docs/reliability.md) and this warns.

    >>> import fastconv
    >>> previous = fastconv.get_num_threads()
    >>> fastconv.set_num_threads(2)
    >>> fastconv.get_num_threads()
    2
    >>> fastconv.set_num_threads(previous)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected an integer >= 1, received {n!r}")
    if n > 1 and _core.forked_single_threaded():
        warnings.warn("set_num_threads: this process was forked after fastconv ran OpenMP "
                      "threads, which do not survive fork; kernels stay single-threaded (start "
                      "workers with the 'spawn' or 'forkserver' method for threads)",
                      RuntimeWarning, stacklevel=2)
    _core.set_num_threads(n)


def get_num_threads():
    """The thread count kernel calls use: set_num_threads, else OMP_NUM_THREADS, else all cores
    (1 in a process forked after fastconv ran multi-threaded).

    >>> import fastconv
    >>> fastconv.get_num_threads() >= 1
    True
    """
    return _core.get_num_threads()


def config():
    """The build and dispatch configuration as a dict.

    >>> import fastconv
    >>> info = fastconv.runtime.config()
    >>> info["version"] == fastconv.__version__, info["isa"] in ("scalar", "avx2", "avx512")
    (True, True)
    """
    build = _core.build_info()
    return {
        "version": __version__,
        "compiler": build["compiler"],
        "compile_args": build["compile_args"],
        "openmp": _core.openmp_enabled(),
        "isa_detected": _core.isa_detected(),
        "isa": _core.isa_active(),
        "isa_cap": os.environ.get("FASTCONV_ISA") or None,
        "kernels": _core.kernel_names(),
        "num_threads": get_num_threads(),
        "winograd": _winograd,
        "depth_first": _depth_first,
        "flush_denormals": flush_denormals_enabled(),
    }


def show_config(mode="stdout"):
    """Shows how fastconv was built and which kernels run on this CPU.

    ``mode="stdout"`` prints it; ``mode="dicts"`` returns it as a dict.

    >>> fastconv.show_config(mode="dicts")["isa"]  # doctest: +SKIP
    'avx512'
    """
    info = config()
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"show_config: expected mode 'stdout' or 'dicts', received {mode!r}")
    width = max(map(len, info))
    for key, value in info.items():
        text = pprint.pformat(value) if isinstance(value, dict) else value
        print(f"{key:<{width}} : {text}")
    return None


_apply_env_cap()
