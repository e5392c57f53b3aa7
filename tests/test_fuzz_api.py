"""Fuzzing the functional API, the layers and Model.predict (docs/reliability.md).

Every generated call either returns what tests/reference.py computes in float64 (same shape,
float32, NaN and inf exactly where the reference has them) or raises ValueError/TypeError whose
message starts with the operator (or layer) and names the broken argument. Nothing else: no
other exception, no crash, no silently wrong answer.

A case is a valid call whose arrays come in unusual forms (float64, float16, integer and
big-endian dtypes; Fortran, transposed, strided, reversed, broadcast, read-only and unaligned
views; empty dimensions; NaN and inf in the data), or the same call with one argument broken
(its expected message is known). Requests larger than the machine's memory must be refused
before anything is allocated.

The settings are fixed (derandomize=True, no example database, explicit max_examples) so that
CI runs the same cases every time; FASTCONV_FUZZ_SCALE multiplies the numbers of examples.
"""
import math
import os
import re
import tracemalloc
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import fastconv
import fastconv.functional as F
import reference as R
from fastconv import layers as L
from reference import assert_close, scale_of

FUZZ_SCALE = float(os.environ.get("FASTCONV_FUZZ_SCALE", "1"))


def fuzz(examples):
    """The settings of every fuzz test: the same cases on every run."""
    return settings(max_examples=max(1, round(examples * FUZZ_SCALE)), derandomize=True,
                    database=None, deadline=None, suppress_health_check=list(HealthCheck))


# Arrays in unusual forms ------------------------------------------------------------------------

REAL_DTYPES = ("float32", "float64", "float16", ">f4", "int32", "int8", "uint8")
LAYOUTS = ("contiguous", "fortran", "transposed", "strided", "reversed", "broadcast", "readonly",
           "unaligned")
SPECIAL = (np.nan, np.inf, -np.inf)


def _relayout(arr, layout):
    """``arr``'s values (changed only by "broadcast") in another memory layout."""
    if layout == "fortran":
        return np.asfortranarray(arr)
    if layout == "transposed" and arr.ndim >= 2:
        order = tuple(reversed(range(arr.ndim)))
        return np.ascontiguousarray(arr.transpose(order)).transpose(np.argsort(order))
    if layout == "strided":
        buffer = np.zeros(tuple(2 * n + 1 for n in arr.shape), arr.dtype)
        view = buffer[tuple(slice(1, None, 2) for _ in arr.shape) + (Ellipsis,)]
        view[...] = arr
        return view
    if layout == "reversed":
        flipped = tuple(slice(None, None, -1) for _ in arr.shape) + (Ellipsis,)
        return np.ascontiguousarray(arr[flipped])[flipped]
    if layout == "broadcast" and arr.ndim >= 1 and arr.shape[-1] > 0:
        return np.broadcast_to(arr[..., :1], arr.shape)           # zero strides, read-only
    if layout == "readonly":
        arr = arr.copy()
        arr.setflags(write=False)
        return arr
    if layout == "unaligned" and arr.dtype.itemsize > 1:
        raw = np.zeros(arr.nbytes + 1, np.uint8)[1:]                # one byte off alignment
        view = raw.view(arr.dtype).reshape(arr.shape)
        view[...] = arr
        return view
    return np.ascontiguousarray(arr)


@st.composite
def arrays(draw, shape, special=False, dtypes=REAL_DTYPES):
    """A real array of ``shape``: small dyadic values (exact in float16 and float32), small
    integers for integer dtypes, a few NaN/inf if ``special``, in one of LAYOUTS."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ints = np.asarray(rng.integers(-8, 9, size=shape))
    if dtype.kind == "u":
        ints = np.abs(ints)
    values = ints / 8.0 if dtype.kind == "f" else ints
    if special and dtype.kind == "f" and values.size and draw(st.booleans()):
        flat = values.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
    return _relayout(values.astype(dtype), draw(st.sampled_from(LAYOUTS)))


# Arguments that are never valid -----------------------------------------------------------------

NOT_REAL_ARRAYS = (np.ones((2, 2), complex), np.ones((2, 2), bool), np.array([["a", "b"]]),
                   np.array([None, 1.0], object), None, [[1.0], [1.0, 2.0]],
                   np.array(["2020-01-01"], "datetime64[D]"))
BAD_POSITIVE_INTS = (0, -1, 1.5, "2", None, True, np.float64(2.0), (1, 2, 3), [], 2**31, 2**70)
BAD_STRIDES = tuple(v for v in BAD_POSITIVE_INTS if v is not None)   # None: the window size
BAD_PADDINGS = (-1, (0, -2), ((0, 0), (-1, 1)), "bogus", ((1,), (1, 1)), (1, 1, 1), 1.5, None,
                2**31, [[1, 2], [3]])
BAD_FLAGS = ("yes", 1, 0, None, "False", [True])
BAD_NAMES = ("gelu", 3, ["relu"], b"relu", "")
BAD_REALS = (np.nan, np.inf, "a", None, 1j, [1.0])


# The call and its checks ------------------------------------------------------------------------

@dataclass
class Call:
    op: str                                  # how messages start
    run: Callable[[], object]
    reference: Optional[Callable[[], np.ndarray]] = None
    fault: Optional[str] = None              # regex naming the broken argument; None if valid
    reduction: int = 1                       # tolerance: reduction length ...
    scale: float = 1.0                       # ... and magnitude (see reference.assert_close)
    factor: float = 2.0
    args: Optional[dict] = None              # the keyword arguments of the call, when kept


def check(call, tally):
    """Runs the call: the reference's result if valid, else a clear ValueError/TypeError."""
    try:
        result = call.run()
    except (ValueError, TypeError) as err:
        tally["rejected"] += 1
        message = str(err)
        assert call.fault is not None, f"a valid call was refused: {message}"
        assert message.startswith(call.op), f"message does not name {call.op}: {message!r}"
        assert re.search(call.fault, message), f"message lacks /{call.fault}/: {message!r}"
        return
    tally["returned"] += 1
    assert call.fault is None, f"accepted a call with a fault /{call.fault}/"
    with np.errstate(all="ignore"):                  # NaN and inf in the float64 reference
        expected = call.reference()
    assert_close(result, expected, call.reduction, call.scale, c=call.factor)


def reference_or_empty(fn, shape_like):
    """The reference, except for empty inputs, which NumPy's reductions refuse."""
    def run():
        return np.zeros(shape_like()) if math.prod(shape_like()) == 0 else fn()
    return run


def maybe_fault(draw, faults):
    """None (a valid call, two times in three) or one (regex, {argument: bad value}) of faults."""
    if not faults or draw(st.integers(0, 2)):
        return None, {}
    regex, argument, values = draw(st.sampled_from(faults))
    return regex, {argument: draw(st.sampled_from(values))}


def window_faults(names):
    return [(f"`{n}`", n, BAD_POSITIVE_INTS) for n in names]


COMMON_FAULTS = [("`data_format`", "data_format", ("NCHW", None, ["channels_last"], 1))]


# Convolution ------------------------------------------------------------------------------------

@st.composite
def geometries(draw):
    kind = draw(st.sampled_from(["int", "pair", "explicit", "string"]))
    p = st.integers(0, 3)
    padding = {"int": lambda: draw(p), "pair": lambda: (draw(p), draw(p)),
               "explicit": lambda: ((draw(p), draw(p)), (draw(p), draw(p))),
               "string": lambda: draw(st.sampled_from(["valid", "same", "same_upper", "same_lower"]))
               }[kind]()
    pair = lambda s: st.one_of(s, st.tuples(s, s))
    return dict(stride=draw(pair(st.integers(1, 3))), dilation=draw(pair(st.integers(1, 2))),
                padding=padding)


def window_fits(hw, kernel, geometry, stride=None):
    stride = R.pair(geometry["stride"] if stride is None else stride)
    dilation = R.pair(geometry.get("dilation", 1))
    pads = R.resolve_padding(geometry["padding"], hw, kernel, stride, dilation)
    return all(d * (k - 1) + 1 <= n + sum(p) for n, k, d, p in zip(hw, kernel, dilation, pads))


def nchw_or_nhwc(shape, channels_last):
    n, c, h, w = shape
    return (n, h, w, c) if channels_last else shape


# Error factors of the Winograd algorithms over a direct sum (tests/test_winograd.py derives them).
WINOGRAD_ERROR_FACTOR = {"winograd": 8.0, "winograd4": 54.0}


@st.composite
def conv_calls(draw):
    algorithm = draw(st.sampled_from(["auto", "auto", "direct", "im2col", "implicit", "gemm",
                                      "winograd", "winograd4"]))
    is_winograd = algorithm in WINOGRAD_ERROR_FACTOR
    # gemm and Winograd take only some geometries: mostly draw those, sometimes any.
    fitted = (algorithm == "gemm" or is_winograd) and draw(st.integers(0, 3)) > 0
    groups = 1 if fitted and is_winograd else draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(0 if groups == 1 else 1, 4))
    c, o = cg * groups, og * groups
    n, h, w = draw(st.sampled_from([0, 1, 1, 2])), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    geometry = draw(geometries())
    if fitted and algorithm == "gemm":
        kernel, geometry = (1, 1), dict(geometry, stride=1, padding=draw(st.sampled_from([0, "valid"])))
    elif fitted:
        kernel, geometry = (3, 3), dict(geometry, stride=1, dilation=1)
    channels_last = draw(st.booleans())
    x = draw(arrays(nchw_or_nhwc((n, c, h, w), channels_last), special=not is_winograd))
    wshape = (o, cg) + kernel
    weight = draw(arrays((kernel + (cg, o)) if channels_last else wshape))
    bias = draw(st.one_of(st.none(), arrays((o,))))
    kwargs = dict(geometry, groups=groups, activation=draw(st.sampled_from(R.ACTIVATIONS)),
                  data_format="channels_last" if channels_last else "channels_first")
    pointwise = kernel == (1, 1) and R.pair(geometry["stride"]) == (1, 1) and \
        R.resolve_padding(geometry["padding"], (h, w), kernel, (1, 1), (1, 1)) == ((0, 0), (0, 0))
    winograd = kernel == (3, 3) and R.pair(geometry["stride"]) == (1, 1) and \
        R.pair(geometry["dilation"]) == (1, 1) and groups == 1
    if not window_fits((h, w), kernel, geometry):
        fault, bad = "kernel", {}
    elif (algorithm == "gemm" and not pointwise) or (is_winograd and not winograd):
        fault, bad = "algorithm", {}
    else:
        fault, bad = maybe_fault(draw, window_faults(["stride", "dilation", "groups"]) + COMMON_FAULTS + [
            ("`padding`", "padding", BAD_PADDINGS), ("`x`", "x", NOT_REAL_ARRAYS),
            ("`weight`", "weight", NOT_REAL_ARRAYS + (np.ones((o, cg, 3)),)),
            ("`bias`", "bias", (np.ones(o + 1), np.ones((o, 1)), np.array(["a"] * max(o, 1)))),
            ("`activation`", "activation", BAD_NAMES), ("`algorithm`", "algorithm", BAD_NAMES),
            ("`x`", "x", (np.ones((n, c, h)), np.ones((1, n, c, h, w)))),
            ("channels", "x", (np.ones(nchw_or_nhwc((1, c + groups, h, w), channels_last)),))])
    args = dict(dict(x=x, weight=weight, bias=bias, algorithm=algorithm, **kwargs), **bad)
    return Call("conv2d", lambda: F.conv2d(**args),
                lambda: R.conv2d(x, weight, bias, **kwargs), fault=fault,
                reduction=cg * kernel[0] * kernel[1] + 1, scale=scale_of(x, weight) + scale_of(bias),
                factor=WINOGRAD_ERROR_FACTOR.get(algorithm, 2.0), args=args)


@fuzz(1000)
@given(call=conv_calls())
def test_conv2d(call, fuzz_tally):
    check(call, fuzz_tally["api conv2d"])


@st.composite
def prepared_calls(draw):
    """PreparedConv2d (NCHW): built once, called with an optional residual and output buffer."""
    c, o, n = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.sampled_from([0, 1, 2]))
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    kernel = draw(st.sampled_from([(1, 1), (3, 3), (2, 3)]))
    geometry = draw(geometries())
    weight, bias = draw(arrays((o, c) + kernel)), draw(st.one_of(st.none(), arrays((o,))))
    activation = draw(st.sampled_from(R.ACTIVATIONS))
    winograd = draw(st.booleans())
    x = draw(arrays((n, c, h, w), special=not winograd))
    if not window_fits((h, w), kernel, geometry):
        return Call("PreparedConv2d", lambda: F.PreparedConv2d(weight, bias, (c, h, w), **geometry),
                    fault="kernel")
    plain = R.conv2d(np.zeros((1, c, h, w)), np.zeros((o, c) + kernel), **geometry)
    out_shape = (n,) + plain.shape[1:]
    residual = draw(st.one_of(st.none(), arrays(out_shape)))
    out = draw(st.sampled_from(["none", "new", "residual"]))
    fault, bad = maybe_fault(draw, [
        ("`input_shape`", "input_shape", (5, (c, h), (c, h, w, 1), (c, 0, w), None)),
        ("`x`", "x", (np.ones((n, c + 1, h, w)), np.ones((c, h, w)), np.ones((n, c, h, w), complex))),
        ("`residual`", "residual", (np.ones(out_shape + (1,)), np.ones((n + 1,) + out_shape[1:]))),
        ("`out`", "out", (np.zeros(out_shape), np.zeros(out_shape[:-1], np.float32), [0.0], "out",
                          np.broadcast_to(np.float32(0), out_shape)))])

    def run():
        conv = F.PreparedConv2d(weight, bias, bad.get("input_shape", (c, h, w)), **geometry,
                                activation=activation, winograd=winograd)
        given_residual = bad.get("residual", residual)
        if "out" in bad:
            buffer = bad["out"]
        elif out == "new":
            buffer = np.full(out_shape, np.nan, np.float32)
        elif out == "residual" and residual is not None and "residual" not in bad:
            buffer = np.array(residual, np.float32, order="C")
            given_residual = buffer
        else:
            buffer = None
        return conv(bad.get("x", x), residual=given_residual, out=buffer)

    def expected():
        y = R.conv2d(x, weight, bias, **geometry)
        return R.activate(y if residual is None else y + R.f64(residual), activation)

    return Call("PreparedConv2d", run, expected, fault, reduction=c * kernel[0] * kernel[1] + 2,
                scale=scale_of(x, weight) + scale_of(bias) + scale_of(residual), factor=8.0)


@fuzz(300)
@given(call=prepared_calls())
def test_prepared_conv2d(call, fuzz_tally):
    check(call, fuzz_tally["api PreparedConv2d"])


@fuzz(40)
@given(seed=st.integers(0, 2**32 - 1), special=st.sampled_from(SPECIAL), count=st.integers(1, 4),
       in_weights=st.booleans())
def test_winograd_non_finite(seed, special, count, in_weights, fuzz_tally):
    """Winograd F(2x2, 3x3) (what model plans take for larger 3x3 layers): NaN inputs give the
    reference's NaN pattern; with an infinite input or weight the outputs are non-finite exactly
    where the reference's are, but inf - inf in the transforms may turn its +-inf into NaN."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (1, 16, 8, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    target = w if in_weights else x[0]
    for _ in range(count):
        target[tuple(rng.integers(n) for n in target.shape)] = special
    y = F.PreparedConv2d(w, None, (16, 8, 8), padding=1, algorithm="winograd")(x)
    with np.errstate(all="ignore"):
        expected = R.conv2d(x, w, padding=1)
    if np.isnan(special):
        assert_close(y, expected, 9 * 16, scale_of(x, w), c=8.0)
    else:
        assert np.array_equal(np.isfinite(y), np.isfinite(expected))
    fuzz_tally["api Winograd non-finite"]["returned"] += 1


@fuzz(400)
@given(call=conv_calls(), seed=st.integers(0, 2**32 - 1), special=st.sampled_from(SPECIAL))
def test_non_finite_weights(call, seed, special, fuzz_tally):
    """NaN and +-inf in the weights: the reference's result with every algorithm but Winograd
    (F(2x2) above, F(4x4) in tests/test_winograd.py: its transforms mix a tile's outputs), zero
    padding included (its zeros are multiplied: 0 * inf = NaN)."""
    args = call.args
    if (call.fault is not None or args["algorithm"] in WINOGRAD_ERROR_FACTOR
            or not np.size(args["weight"])):
        fuzz_tally["api non-finite weights"]["skipped (not a valid call)"] += 1
        return
    weight = np.array(args["weight"], np.float32)
    rng = np.random.default_rng(seed)
    weight[tuple(rng.integers(n) for n in weight.shape)] = special
    kwargs = {k: v for k, v in args.items() if k not in ("x", "weight", "bias", "algorithm")}
    with np.errstate(all="ignore"):
        expected = R.conv2d(args["x"], weight, args["bias"], **kwargs)
    assert_close(F.conv2d(**dict(args, weight=weight)), expected, call.reduction, call.scale)
    fuzz_tally["api non-finite weights"]["returned"] += 1


# Pooling ----------------------------------------------------------------------------------------

@st.composite
def pool_calls(draw):
    is_max = draw(st.booleans())
    op = "max_pool2d" if is_max else "avg_pool2d"
    n, c = draw(st.sampled_from([0, 1, 2])), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kernel = draw(st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    geometry = draw(geometries())
    stride = draw(st.one_of(st.none(), st.just(geometry["stride"])))
    channels_last = draw(st.booleans())
    x = draw(arrays(nchw_or_nhwc((n, c, h, w), channels_last), special=True))
    kwargs = dict(stride=stride, padding=geometry["padding"], dilation=geometry["dilation"],
                  ceil_mode=draw(st.booleans()),
                  data_format="channels_last" if channels_last else "channels_first")
    if not is_max:
        kwargs["count_include_pad"] = draw(st.booleans())
    flags = ["ceil_mode"] + ([] if is_max else ["count_include_pad"])
    if not window_fits((h, w), R.pair(kernel), geometry, stride=kernel if stride is None else stride):
        fault, bad = "kernel", {}
    else:
        fault, bad = maybe_fault(draw, window_faults(["kernel_size", "dilation"]) + [
            ("`stride`", "stride", BAD_STRIDES), ("`padding`", "padding", BAD_PADDINGS), ("`x`", "x", NOT_REAL_ARRAYS + (np.ones((2, 3)),))]
            + [(f"`{flag}`", flag, BAD_FLAGS) for flag in flags] + COMMON_FAULTS)
    args = dict(dict(x=x, kernel_size=kernel, **kwargs), **bad)
    fn, ref = (F.max_pool2d, R.max_pool2d) if is_max else (F.avg_pool2d, R.avg_pool2d)
    return Call(op, lambda: fn(**args), lambda: ref(x, kernel, **kwargs), fault,
                reduction=math.prod(R.pair(kernel)), scale=scale_of(x))


@fuzz(700)
@given(call=pool_calls())
def test_pool2d(call, fuzz_tally):
    check(call, fuzz_tally["api max_pool2d/avg_pool2d"])


@st.composite
def global_pool_calls(draw):
    is_max = draw(st.booleans())
    op = "global_max_pool2d" if is_max else "global_avg_pool2d"
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(0, 6)), draw(st.integers(1, 6))
    channels_last = draw(st.booleans())
    x = draw(arrays(nchw_or_nhwc((n, c, h, w), channels_last), special=True))
    kwargs = dict(data_format="channels_last" if channels_last else "channels_first",
                  keepdims=draw(st.booleans()))
    if h == 0:
        fault, bad = "spatial", {}
    else:
        fault, bad = maybe_fault(draw, COMMON_FAULTS + [
            ("`keepdims`", "keepdims", BAD_FLAGS), ("`x`", "x", NOT_REAL_ARRAYS + (np.ones(3),))])
    fn, ref = (F.global_max_pool2d, R.global_max_pool2d) if is_max else \
        (F.global_avg_pool2d, R.global_avg_pool2d)
    args = dict(dict(x=x, **kwargs), **bad)
    return Call(op, lambda: fn(**args), lambda: ref(x, **kwargs), fault, reduction=h * w,
                scale=scale_of(x))


@fuzz(200)
@given(call=global_pool_calls())
def test_global_pool2d(call, fuzz_tally):
    check(call, fuzz_tally["api global pools"])


# Matrix products --------------------------------------------------------------------------------

@st.composite
def gemm_calls(draw):
    m, k, n = (draw(st.integers(0, 12)) for _ in range(3))
    a = draw(arrays((m, k), special=True))
    b = draw(arrays((k, n)))
    bias_shape = draw(st.sampled_from([None, (n,), (1, n), (m, 1), (m, n), ()]))
    bias = None if bias_shape is None else draw(arrays(bias_shape))
    activation = draw(st.sampled_from(R.ACTIVATIONS))
    fault, bad = maybe_fault(draw, [
        ("`a`", "a", NOT_REAL_ARRAYS[:4] + (np.ones(k), np.ones((1, m, k)))),
        ("`b`", "b", NOT_REAL_ARRAYS[:4] + (np.ones((k, n, 1)),)),
        ("inner", "b", (np.ones((k + 1, n)),)), ("`activation`", "activation", BAD_NAMES),
        ("`bias`", "bias", (np.ones(n + 2), np.ones((m + 2, n + 2, 1)), np.array(["a"])))])
    args = dict(dict(a=a, b=b, bias=bias, activation=activation), **bad)
    return Call("gemm", lambda: F.gemm(**args), lambda: R.gemm(a, b, bias, activation), fault,
                reduction=k + 1, scale=scale_of(a, b) + scale_of(bias))


@fuzz(300)
@given(call=gemm_calls())
def test_gemm(call, fuzz_tally):
    check(call, fuzz_tally["api gemm"])


@st.composite
def dense_calls(draw):
    batch, features, units = draw(st.integers(0, 5)), draw(st.integers(0, 12)), draw(st.integers(0, 8))
    flat = draw(st.booleans())
    x = draw(arrays((features,) if flat else (batch, features), special=True))
    weight = draw(arrays((units, features)))
    bias = draw(st.one_of(st.none(), arrays((units,))))
    activation = draw(st.sampled_from(R.ACTIVATIONS))
    fault, bad = maybe_fault(draw, [
        ("`x`", "x", NOT_REAL_ARRAYS[:4] + (np.ones((1, 2, features)), np.float32(1))),
        ("`weight`", "weight", NOT_REAL_ARRAYS[:4] + (np.ones(features),)),
        ("features", "x", (np.ones((2, features + 1)),)),
        ("`bias`", "bias", (np.ones(units + 1), np.ones((1, units)))),
        ("`activation`", "activation", BAD_NAMES)])
    args = dict(dict(x=x, weight=weight, bias=bias, activation=activation), **bad)
    return Call("dense", lambda: F.dense(**args), lambda: R.dense(x, weight, bias, activation),
                fault, reduction=features + 1, scale=scale_of(x, weight) + scale_of(bias))


@fuzz(250)
@given(call=dense_calls())
def test_dense(call, fuzz_tally):
    check(call, fuzz_tally["api dense"])


# Elementwise, softmax, normalisation ------------------------------------------------------------

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@st.composite
def unary_calls(draw):
    name = draw(st.sampled_from(["relu", "relu6", "tanh", "sigmoid"]))
    x = draw(arrays(draw(shapes), special=True))
    fault, bad = maybe_fault(draw, [("`x`", "x", NOT_REAL_ARRAYS)])
    arg = bad.get("x", x)
    return Call(name, lambda: getattr(F, name)(arg), lambda: getattr(R, name)(x), fault,
                scale=scale_of(x))


@fuzz(300)
@given(call=unary_calls())
def test_activations(call, fuzz_tally):
    check(call, fuzz_tally["api relu/relu6/tanh/sigmoid"])


@st.composite
def softmax_calls(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple))
    x = draw(arrays(shape, special=True))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    fault, bad = maybe_fault(draw, [
        ("`axis`", "axis", (len(shape), -len(shape) - 1, 1.0, True, "1", None)),
        ("`x`", "x", NOT_REAL_ARRAYS + (np.float32(1),))])
    args = dict(dict(x=x, axis=axis), **bad)
    return Call("softmax", lambda: F.softmax(**args),
                reference_or_empty(lambda: R.softmax(x, axis), lambda: x.shape), fault,
                reduction=shape[axis], scale=1.0)


@fuzz(250)
@given(call=softmax_calls())
def test_softmax(call, fuzz_tally):
    check(call, fuzz_tally["api softmax"])


@st.composite
def channel_op_calls(draw):
    """lrn and batch_norm: (N, C), (N, C, L) or (N, C, H, W), either data format."""
    is_lrn = draw(st.booleans())
    op = "lrn" if is_lrn else "batch_norm"
    rank, c = draw(st.integers(2, 4)), draw(st.integers(1, 6))
    shape = (draw(st.integers(0, 2)), c) + tuple(draw(st.integers(1, 4)) for _ in range(rank - 2))
    channels_last = draw(st.booleans())
    if channels_last:
        shape = (shape[0],) + shape[2:] + (c,)
    x = draw(arrays(shape, special=True))
    data_format = "channels_last" if channels_last else "channels_first"
    common = COMMON_FAULTS + [("`x`", "x", NOT_REAL_ARRAYS + (np.ones(3), np.ones((1, 2, 3, 4, 5))))]
    if is_lrn:
        kwargs = dict(size=draw(st.integers(1, 7)), alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
                      beta=draw(st.sampled_from([0.5, 0.75, 1.0])), k=draw(st.sampled_from([0.5, 1.0, 2.0])),
                      data_format=data_format)
        fault, bad = maybe_fault(draw, common + [("`size`", "size", BAD_POSITIVE_INTS)] +
                                 [(f"`{name}`", name, BAD_REALS) for name in ("alpha", "beta", "k")])
        return Call(op, lambda: F.lrn(**dict(dict(x=x, **kwargs), **bad)),
                    lambda: R.lrn(x, **kwargs), fault, reduction=kwargs["size"] + 2, scale=1.0,
                    factor=4.0)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    params = dict(mean=rng.uniform(-1, 1, c), var=rng.uniform(0.0, 2.0, c),
                  gamma=draw(st.sampled_from([None, rng.uniform(-2, 2, c)])),
                  beta=draw(st.sampled_from([None, rng.uniform(-1, 1, c)])),
                  eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])), data_format=data_format)
    fault, bad = maybe_fault(draw, common + [
        ("`mean`", "mean", (np.ones(c + 1), 0.0, np.ones((c, 1)))), ("`gamma`", "gamma", (np.ones(c + 1),)),
        ("`var`", "var", (np.zeros(c) - 1.0, np.full(c, np.nan))), ("`eps`", "eps", BAD_REALS + (-1.0,))])
    return Call(op, lambda: F.batch_norm(**dict(dict(x=x, **params), **bad)),
                lambda: R.batch_norm(x, **params), fault, reduction=4,
                scale=scale_of(x) / math.sqrt(params["eps"]) * 4 + 2)


@fuzz(300)
@given(call=channel_op_calls())
def test_lrn_and_batch_norm(call, fuzz_tally):
    check(call, fuzz_tally["api lrn/batch_norm"])


def clashing_shape(shape):
    """A shape that does not broadcast with ``shape``, or None (all-ones shapes take any)."""
    for axis, n in enumerate(shape):
        if n >= 2:
            return shape[:axis] + (n + 1,) + shape[axis + 1:]
    return None


@st.composite
def add_calls(draw):
    (sa, sb), _ = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4))
    a, b = draw(arrays(sa, special=True)), draw(arrays(sb, special=True))
    activation = draw(st.sampled_from(R.ACTIVATIONS))
    clash = clashing_shape(sa)
    fault, bad = maybe_fault(draw, [
        ("`a`", "a", NOT_REAL_ARRAYS[:4]), ("`b`", "b", NOT_REAL_ARRAYS[:4]),
        ("`activation`", "activation", BAD_NAMES)] +
        ([("broadcast", "b", (np.ones(clash),))] if clash else []))
    args = dict(dict(a=a, b=b, activation=activation), **bad)
    return Call("add", lambda: F.add(**args), lambda: R.add(a, b, activation), fault,
                scale=scale_of(a) + scale_of(b))


@fuzz(250)
@given(call=add_calls())
def test_add(call, fuzz_tally):
    check(call, fuzz_tally["api add"])


@st.composite
def concat_calls(draw):
    rank = draw(st.integers(1, 4))
    base = [draw(st.integers(0, 3)) for _ in range(rank)]
    channels_last = draw(st.booleans())
    axis = draw(st.one_of(st.none(), st.integers(-rank, rank - 1)))
    resolved = ((-1 if channels_last else min(1, rank - 1)) if axis is None else axis) % rank
    tensors = []
    for _ in range(draw(st.integers(1, 4))):
        shape = list(base)
        shape[resolved] = draw(st.integers(0, 3))
        tensors.append(draw(arrays(tuple(shape), special=True)))
    kwargs = dict(axis=axis, data_format="channels_last" if channels_last else "channels_first")
    if axis is None and rank == 1 and not channels_last:
        return Call("concat", lambda: F.concat(tensors, **kwargs), fault="`axis`")
    fault, bad = maybe_fault(draw, COMMON_FAULTS + [
        ("`axis`", "axis", (rank, -rank - 1, 1.5, "0")),
        ("`tensors`", "tensors", ([], (), None, np.ones(3), {"a": 1})),
        ("rank|shapes", "tensors", (tensors + [np.ones(tuple(base) + (2,))],
                                    tensors + [np.ones([n + 1 for n in base])])),
        (r"tensors\[", "tensors", (tensors + [np.ones(base, complex)], [None] + tensors))])
    if fault == "rank|shapes" and rank == 1:
        fault, bad = None, {}                        # one axis: any lengths concatenate
    args = dict(dict(tensors=tensors, **kwargs), **bad)
    return Call("concat", lambda: F.concat(**args),
                lambda: R.concat(tensors, axis=resolved), fault, scale=1.0)


@fuzz(200)
@given(call=concat_calls())
def test_concat(call, fuzz_tally):
    check(call, fuzz_tally["api concat"])


@st.composite
def flatten_calls(draw):
    x = draw(arrays(draw(shapes), special=True))
    axis = draw(st.integers(-x.ndim, x.ndim))
    fault, bad = maybe_fault(draw, [("`axis`", "axis", (x.ndim + 1, -x.ndim - 1, 1.0, None, True)),
                                    ("`x`", "x", NOT_REAL_ARRAYS)])
    args = dict(dict(x=x, axis=axis), **bad)
    return Call("flatten", lambda: F.flatten(**args), lambda: R.flatten(x, axis), fault)


@fuzz(150)
@given(call=flatten_calls())
def test_flatten(call, fuzz_tally):
    check(call, fuzz_tally["api flatten"])


# Requests larger than the machine -------------------------------------------------------------

HUGE = 2**20                                         # a side of 2**20: 2**40 elements per plane


def zeros_view(shape, dtype=np.float32):
    """An array of any logical size backed by one element (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


HUGE_CALLS = {
    "conv2d padding": lambda: F.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), padding=HUGE),
    "conv2d input": lambda: F.conv2d(zeros_view((1, 1, HUGE, HUGE)), np.ones((1, 1, 1, 1))),
    "conv2d channels_last": lambda: F.conv2d(zeros_view((1, HUGE, HUGE, 1)), np.ones((1, 1, 1, 1)),
                                             data_format="channels_last"),
    "conv2d weight": lambda: F.conv2d(np.ones((1, 1, 2, 2)), zeros_view((HUGE * HUGE, 1, 1, 1))),
    "conv2d float64 input": lambda: F.conv2d(zeros_view((1, 1, HUGE, HUGE), np.float64),
                                             np.ones((1, 1, 1, 1))),
    "max_pool2d padding": lambda: F.max_pool2d(np.ones((1, 1, 4, 4)), 2, stride=1, padding=HUGE),
    "avg_pool2d input": lambda: F.avg_pool2d(zeros_view((HUGE, 1, HUGE, 2)), 1),
    "global_max_pool2d": lambda: F.global_max_pool2d(zeros_view((1, 1, HUGE, HUGE))[:, :, ::2]),
    "gemm output": lambda: F.gemm(zeros_view((HUGE, 1)), zeros_view((1, HUGE))),
    "gemm packed panel": lambda: F.gemm(zeros_view((1, HUGE * HUGE)), zeros_view((HUGE * HUGE, 1))),
    "dense": lambda: F.dense(zeros_view((HUGE, HUGE)), np.ones((1, HUGE))),
    "relu": lambda: F.relu(zeros_view((HUGE, HUGE))),
    "softmax": lambda: F.softmax(zeros_view((HUGE, HUGE)), axis=0),
    "lrn": lambda: F.lrn(zeros_view((HUGE, 2, HUGE)), 3),
    "batch_norm": lambda: F.batch_norm(zeros_view((HUGE, 1, HUGE)), [0.0], [1.0]),
    "add": lambda: F.add(np.ones((HUGE, 1), np.float32), np.ones((1, HUGE), np.float32)),
    "concat": lambda: F.concat([zeros_view((HUGE, HUGE)), zeros_view((HUGE, HUGE))]),
    "flatten": lambda: F.flatten(zeros_view((HUGE, 2, HUGE)).transpose(1, 0, 2)),
    "PreparedConv2d": lambda: F.PreparedConv2d(np.ones((1, 1, 1, 1)), None, (1, HUGE, HUGE))(
        zeros_view((1, 1, HUGE, HUGE))),
    "Conv2D weights": lambda: L.Conv2D(HUGE * HUGE, 1)(np.ones((1, 1, 2, 2))),
    "Dense weights": lambda: L.Dense(HUGE)(zeros_view((1, HUGE))),
    "BatchNormalization weights": lambda: fastconv.Sequential(
        [fastconv.Input((HUGE * HUGE, 1, 1)), L.BatchNormalization()]),
    "ZeroPadding2D": lambda: L.ZeroPadding2D(HUGE)(np.ones((1, 1, 1, 1))),
    "AdaptiveAvgPool2D": lambda: L.AdaptiveAvgPool2D(HUGE - 1)(np.ones((1, 1, 2, 2))),
    "predict": lambda: fastconv.Sequential([fastconv.Input((4,)), L.Dense(2)]).predict(
        zeros_view((HUGE * HUGE, 4))),
    "predict channels_last": lambda: fastconv.Sequential(
        [fastconv.Input((1, 2, 2)), L.Flatten()]).predict(zeros_view((HUGE * HUGE, 2, 2, 1)),
                                                           data_format="channels_last"),
}


@pytest.mark.parametrize("case", sorted(HUGE_CALLS))
def test_requests_beyond_memory_are_refused_before_allocating(case, fuzz_tally):
    """2**40 elements or more: ValueError naming the memory, with less than 64 MiB allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"would need [\d,.]+ GiB .*more than this machine's"):
            HUGE_CALLS[case]()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{case}: {peak} bytes allocated before refusing"
    fuzz_tally["api beyond memory"]["rejected"] += 1


@fuzz(100)
@given(dims=st.lists(st.integers(1, 2**14), min_size=4, max_size=4),
       op=st.sampled_from(["relu", "max_pool2d", "conv2d", "softmax", "global_avg_pool2d"]))
def test_any_huge_view_is_refused_or_computed(dims, op, fuzz_tally):
    """Broadcast views of any size: computed when small, refused (ValueError) when beyond the
    machine's memory; never MemoryError."""
    x = zeros_view(tuple(dims))[:, :, ::-1]           # non-contiguous: every op must copy it
    small = math.prod(dims) * 4 < 64 << 20
    call = {"relu": lambda: F.relu(x), "max_pool2d": lambda: F.max_pool2d(x, 1),
            "conv2d": lambda: F.conv2d(x, np.ones((1, dims[1], 1, 1), np.float32)),
            "softmax": lambda: F.softmax(x, axis=1),
            "global_avg_pool2d": lambda: F.global_avg_pool2d(x)}[op]
    if small:
        expected = 1.0 / dims[1] if op == "softmax" else 0.0
        assert np.all(call() == np.float32(expected))
        fuzz_tally["api huge views"]["returned"] += 1
        return
    too_big = math.prod(dims) * 4 > F.PHYSICAL_MEMORY
    if too_big:
        with pytest.raises(ValueError, match="more than this machine's"):
            call()
        fuzz_tally["api huge views"]["rejected"] += 1
    else:                                             # fits, but too slow to compute in a test
        fuzz_tally["api huge views"]["skipped"] += 1


# Layers -------------------------------------------------------------------------------------------

def layer_reference(layer, x):
    """The layer's output computed by tests/reference.py from its weights (channels_first)."""
    w = layer.weights
    if isinstance(layer, L.Conv2D):
        y = R.conv2d(x, w["kernel"], w.get("bias"), layer.strides, layer.padding, layer.dilation,
                     layer.groups)
        return R.softmax(y, axis=1) if layer.activation == "softmax" else R.activate(y, layer.activation)
    if isinstance(layer, L.Dense):
        y = R.dense(x, w["kernel"], w.get("bias"))
        return R.softmax(y, axis=-1) if layer.activation == "softmax" else R.activate(y, layer.activation)
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        pool = R.max_pool2d if isinstance(layer, L.MaxPool2D) else R.avg_pool2d
        extra = {} if isinstance(layer, L.MaxPool2D) else {"count_include_pad": layer.count_include_pad}
        return pool(x, layer.pool_size, layer.strides, layer.padding, ceil_mode=layer.ceil_mode, **extra)
    if isinstance(layer, L.BatchNormalization):
        return R.batch_norm(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"],
                            layer.epsilon)
    if isinstance(layer, L.LocalResponseNormalization):
        return R.lrn(x, layer.size, layer.alpha, layer.beta, layer.k)
    if isinstance(layer, L.Softmax):
        return R.softmax(x, axis=1 if layer.axis == -1 else layer.axis)
    if isinstance(layer, L.Activation):
        return R.softmax(x, axis=1) if layer.activation == "softmax" else R.activate(x, layer.activation)
    if isinstance(layer, L.Flatten):
        return R.flatten(x, 1)
    if isinstance(layer, L.Dropout):
        return R.f64(x)
    if isinstance(layer, L.ZeroPadding2D):
        (t, b), (l, r) = R.resolve_padding(layer.padding, (1, 1), (1, 1), (1, 1), (1, 1))
        return np.pad(R.f64(x), ((0, 0), (0, 0), (t, b), (l, r)))
    if isinstance(layer, L.GlobalAveragePooling2D):
        return R.global_avg_pool2d(x, keepdims=layer.keepdims)
    if isinstance(layer, L.Rescaling):
        per_channel = lambda v: np.reshape(v, (1, -1) + (1,) * (x.ndim - 2))
        return R.f64(x) * per_channel(layer.scale) + per_channel(layer.offset)
    raise AssertionError(type(layer))


# name -> (constructor, {argument: (valid values, invalid values)}, per-sample input rank)
LAYER_SPECS = {
    "Conv2D": (L.Conv2D, {"filters": ((1, 3), BAD_POSITIVE_INTS[:-2]),
                          "kernel_size": ((1, 2, (3, 1)), BAD_POSITIVE_INTS),
                          "strides": ((1, 2), BAD_POSITIVE_INTS), "padding": ((0, 1, "same", "valid"), BAD_PADDINGS),
                          "dilation": ((1, (1, 2)), BAD_POSITIVE_INTS),
                          "activation": ((None, "relu", "tanh", "softmax"), BAD_NAMES),
                          "use_bias": ((True, False), BAD_FLAGS)}, 3),
    "Dense": (L.Dense, {"units": ((1, 4), BAD_POSITIVE_INTS[:-2]),
                        "activation": ((None, "relu6", "sigmoid", "softmax"), BAD_NAMES),
                        "use_bias": ((True, False), BAD_FLAGS)}, 1),
    "MaxPool2D": (L.MaxPool2D, {"pool_size": ((1, 2, (2, 3)), BAD_POSITIVE_INTS),
                                "strides": ((None, 1, 2), BAD_STRIDES),
                                "padding": ((0, 1, "same"), BAD_PADDINGS),
                                "ceil_mode": ((False, True), BAD_FLAGS)}, 3),
    "AvgPool2D": (L.AvgPool2D, {"pool_size": ((1, 2), BAD_POSITIVE_INTS),
                                "padding": ((0, 1, "valid"), BAD_PADDINGS),
                                "count_include_pad": ((True, False), BAD_FLAGS),
                                "ceil_mode": ((False, True), BAD_FLAGS)}, 3),
    "BatchNormalization": (L.BatchNormalization, {"epsilon": ((1e-5, 1e-3), BAD_REALS + (-1.0,))}, 3),
    "LocalResponseNormalization": (L.LocalResponseNormalization, {
        "size": ((1, 3, 5), BAD_POSITIVE_INTS[:-2]), "alpha": ((1e-4, 0.5), BAD_REALS),
        "beta": ((0.75,), BAD_REALS), "k": ((1.0, 2.0), BAD_REALS)}, 3),
    "Softmax": (L.Softmax, {"axis": ((-1, 1, 2), (0, -2, 1.0, "1", None))}, 3),
    "Activation": (L.Activation, {"activation": (("relu", "tanh", "sigmoid", "softmax", "linear"), BAD_NAMES)}, 2),
    "Flatten": (L.Flatten, {}, 3),
    "Dropout": (L.Dropout, {"rate": ((0.0, 0.5), (1.0, -0.1, np.nan, "0.5", None))}, 2),
    "ZeroPadding2D": (L.ZeroPadding2D, {"padding": ((0, 1, (1, 2), ((0, 1), (2, 0))),
                                                    BAD_PADDINGS + ("same",))}, 3),
    "GlobalAveragePooling2D": (L.GlobalAveragePooling2D, {"keepdims": ((False, True), BAD_FLAGS)}, 3),
    "Rescaling": (L.Rescaling, {"scale": ((0.5, [1.0, 2.0, 3.0]), ("a", [[1.0]], [], np.nan, None)),
                                "offset": ((0.0, -1.0), ("a", np.inf, None))}, 3),
}


@st.composite
def layer_cases(draw):
    """(layer name, constructor kwargs, broken argument or None, input array, seed)."""
    name = draw(st.sampled_from(sorted(LAYER_SPECS)))
    _, arguments, rank = LAYER_SPECS[name]
    kwargs = {arg: draw(st.sampled_from(valid)) for arg, (valid, _) in arguments.items()}
    broken = None
    if arguments and not draw(st.integers(0, 3)):
        broken = draw(st.sampled_from(sorted(arguments)))
        kwargs[broken] = draw(st.sampled_from(arguments[broken][1]))
    sample = (3,) + tuple(draw(st.integers(1, 6)) for _ in range(rank - 1))
    if not draw(st.integers(0, 5)):                  # a wrong rank or a non-numeric array
        x = draw(st.sampled_from([np.ones(sample[:1]), np.ones((1,) + sample + (2,)),
                                  np.array([["a"]]), np.ones((2,) + sample, complex)]))
    else:
        x = draw(arrays((draw(st.integers(0, 3)),) + sample, special=True))
    return name, kwargs, broken, x, draw(st.integers(0, 1000))


@fuzz(500)
@given(case=layer_cases())
def test_layers(case, fuzz_tally):
    """Constructors refuse each bad argument naming it; eager calls give the reference's result
    or a ValueError/TypeError naming the layer."""
    name, kwargs, broken, x, seed = case
    tally = fuzz_tally[f"layers {name}"]
    constructor = LAYER_SPECS[name][0]
    try:
        layer = constructor(**kwargs)
    except (ValueError, TypeError) as err:
        tally["refused at construction"] += 1
        assert broken is not None, f"{name}({kwargs}) refused: {err}"
        assert str(err).startswith(name) and f"`{broken}`" in str(err), str(err)
        return
    assert broken is None, f"{name} accepted {broken}={kwargs[broken]!r}"
    try:
        if x.ndim >= 2 and x.dtype.kind in "fiu":
            layer.build(x.shape[1:], np.random.default_rng(seed))
            if isinstance(layer, L.BatchNormalization):
                rng = np.random.default_rng(seed)
                c = x.shape[1]
                layer.set_weights([rng.uniform(-2, 2, c), rng.uniform(-1, 1, c),
                                   rng.uniform(-1, 1, c), rng.uniform(0.1, 2, c)])
        result = layer(x)
    except (ValueError, TypeError) as err:
        tally["refused the input"] += 1
        assert str(err).startswith((name, "conv2d", "max_pool2d", "avg_pool2d")), str(err)
        return
    tally["returned"] += 1
    reduction = max(int(np.prod(layer.weights["kernel"].shape[1:])), 1) + 1 if "kernel" in layer.weights else 9
    weights_scale = max((scale_of(w) for w in layer.weights.values()), default=1.0)
    with np.errstate(all="ignore"):
        expected = layer_reference(layer, x)
    assert_close(result, expected, reduction, scale_of(x) * weights_scale + 4, c=4.0)


# Model.predict --------------------------------------------------------------------------------------

def small_model():
    """A graph whose plan fuses a BatchNorm, a residual Add with its ReLU, and a Dense ReLU."""
    x = fastconv.Input((2, 7, 7))
    a = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding=1, name="c1")(x))
    y = L.Add(activation="relu", name="add")([a, L.Conv2D(4, 1, name="c2")(x)])
    y = L.Concatenate(name="cat")([L.MaxPool2D(2, ceil_mode=True, name="max")(y),
                                   L.AvgPool2D(2, ceil_mode=True, name="avg")(y)])
    y = L.Dense(5, activation="relu", name="fc")(L.Flatten(name="flat")(y))
    model = fastconv.Model(x, L.Softmax(name="probs")(L.Dense(3, name="out")(y)), seed=7)
    rng = np.random.default_rng(8)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.uniform(-1, 1, 4),
                                       rng.uniform(-1, 1, 4), rng.uniform(0.5, 2, 4)])
    return model


def small_model_reference(model, x):
    w = {layer.name: layer.weights for layer in model.layers}
    bn = w["bn"]
    a = R.batch_norm(R.conv2d(x, w["c1"]["kernel"], w["c1"]["bias"], padding=1),
                     bn["moving_mean"], bn["moving_variance"], bn["gamma"], bn["beta"], 1e-5)
    y = R.add(a, R.conv2d(x, w["c2"]["kernel"], w["c2"]["bias"]), "relu")
    y = np.concatenate([R.max_pool2d(y, 2, ceil_mode=True), R.avg_pool2d(y, 2, ceil_mode=True)], 1)
    y = R.dense(R.flatten(y), w["fc"]["kernel"], w["fc"]["bias"], "relu")
    return R.softmax(R.dense(y, w["out"]["kernel"], w["out"]["bias"]), axis=-1)


@pytest.fixture(scope="module")
def model():
    return small_model()


@st.composite
def predict_cases(draw):
    channels_last = draw(st.booleans())
    batch = draw(st.integers(0, 5))
    x = draw(arrays((batch, 7, 7, 2) if channels_last else (batch, 2, 7, 7), special=True))
    kwargs = {"batch_size": draw(st.sampled_from([None, 1, 2, 4, np.int64(3)]))}
    if channels_last:
        kwargs["data_format"] = "channels_last"
    elif draw(st.booleans()):
        kwargs["data_format"] = draw(st.sampled_from([None, "channels_first"]))
    # Nested lists of an empty batch cannot tell the sample shape: arrays only there.
    form = draw(st.sampled_from(["array", "array", "list of one"] + (["nested lists"] if batch else [])))
    fault, bad = maybe_fault(draw, [
        ("`batch_size`", "batch_size", (0, -1, 1.5, "2", True)),
        ("`data_format`", "data_format", ("NCHW", 1)),
        ("expects arrays shaped", "x", (np.ones((2, 7, 7)), np.ones((1, 2, 7, 7, 1)),
                                        np.ones((1, 3, 7, 7)), [np.ones((1, 2, 7, 7))] * 2)),
        ("real numbers", "x", (np.ones((1, 2, 7, 7), complex), "image", None, {"input": 1}))])
    given_x = bad["x"] if "x" in bad else {"array": lambda: x, "list of one": lambda: [np.asarray(x)],
                                           "nested lists": lambda: np.asarray(x).tolist()}[form]()
    return x, given_x, dict(kwargs, **{k: v for k, v in bad.items() if k != "x"}), fault


@fuzz(300)
@given(case=predict_cases())
def test_predict(model, case, fuzz_tally):
    x, given_x, kwargs, fault = case
    tally = fuzz_tally["api Model.predict"]
    try:
        result = model.predict(given_x, **kwargs)
    except (ValueError, TypeError) as err:
        tally["rejected"] += 1
        assert fault is not None, f"a valid call was refused: {err}"
        assert str(err).startswith(model.label) and re.search(fault, str(err)), str(err)
        return
    tally["returned"] += 1
    assert fault is None, f"accepted a call with a fault /{fault}/"
    nchw = np.moveaxis(R.f64(x), -1, 1) if kwargs.get("data_format") == "channels_last" else x
    with np.errstate(all="ignore"):
        expected = small_model_reference(model, nchw) if len(x) else np.zeros((0, 3))
    assert_close(result, expected, 36 + 1, 16.0, c=4.0)
