import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import fastconv
import fastconv.functional as F
import reference as R
from reference import assert_close, scale_of

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

small = st.integers(1, 4)
pair_or_int = lambda s: st.one_of(s, st.tuples(s, s))


@st.composite
def paddings(draw):
    kind = draw(st.sampled_from(["int", "pair", "explicit", "string"]))
    p = st.integers(0, 3)
    if kind == "int":
        return draw(p)
    if kind == "pair":
        return (draw(p), draw(p))
    if kind == "explicit":
        return ((draw(p), draw(p)), (draw(p), draw(p)))
    return draw(st.sampled_from(["valid", "same", "same_upper", "same_lower"]))


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 4))
    return dict(
        n=draw(st.integers(1, 2)), c=c, o=o, groups=groups,
        h=draw(st.integers(1, 12)), w=draw(st.integers(1, 12)),
        kh=draw(small), kw=draw(small),
        stride=draw(pair_or_int(st.integers(1, 3))), dilation=draw(pair_or_int(st.integers(1, 2))),
        padding=draw(paddings()),
    )


def expected_conv_hw(case):
    """The doc's formula, written out here independently of the package."""
    hw = []
    for size, k, s, d, axis in zip((case["h"], case["w"]), (case["kh"], case["kw"]),
                                   R.pair(case["stride"]), R.pair(case["dilation"]), (0, 1)):
        pad = case["padding"]
        if pad == "valid":
            pb = pe = 0
        elif isinstance(pad, str):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            pb = total // 2 if pad in ("same", "same_upper") else total - total // 2
            pe = total - pb
        elif isinstance(pad, int):
            pb = pe = pad
        elif isinstance(pad[0], tuple):
            pb, pe = pad[axis]
        else:
            pb = pe = pad[axis]
        hw.append((size + pb + pe - d * (k - 1) - 1) // s + 1)
    return tuple(hw)


def make_conv(case, rng):
    x = rng.uniform(-1, 1, (case["n"], case["c"], case["h"], case["w"])).astype(np.float32)
    wt = rng.uniform(-1, 1, (case["o"], case["c"] // case["groups"], case["kh"], case["kw"])).astype(np.float32)
    b = rng.uniform(-1, 1, case["o"]).astype(np.float32)
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    return x, wt, b, kw


@settings(max_examples=150, **SETTINGS)
@given(case=conv_cases())
def test_conv2d_output_size_arithmetic(case):
    rng = np.random.default_rng(0)
    x, wt, b, kw = make_conv(case, rng)
    oh, ow = expected_conv_hw(case)
    if oh < 1 or ow < 1:
        with pytest.raises(ValueError):
            F.conv2d(x, wt, b, **kw)
        return
    y = F.conv2d(x, wt, b, **kw)
    assert y.shape == (case["n"], case["o"], oh, ow)
    if case["padding"] in ("same", "same_upper", "same_lower"):
        sh, sw = R.pair(case["stride"])
        assert (oh, ow) == (-(-case["h"] // sh), -(-case["w"] // sw))


@settings(max_examples=120, **SETTINGS)
@given(case=conv_cases(), algorithm=st.sampled_from(["auto", "direct", "im2col", "implicit", "gemm"]),
       activation=st.sampled_from(R.ACTIVATIONS), channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_matches_reference(case, algorithm, activation, channels_last, seed):
    oh, ow = expected_conv_hw(case)
    assume(oh >= 1 and ow >= 1)
    if algorithm == "gemm":                 # only defined for 1x1 without padding
        case = dict(case, kh=1, kw=1, padding=0, dilation=1)
    x, wt, b, kw = make_conv(case, np.random.default_rng(seed))
    ref = R.conv2d(x, wt, b, activation=activation, **kw)
    if channels_last:
        x, wt, ref = x.transpose(0, 2, 3, 1), wt.transpose(2, 3, 1, 0), ref.transpose(0, 2, 3, 1)
    y = F.conv2d(x, wt, b, activation=activation, algorithm=algorithm,
                 data_format="channels_last" if channels_last else "channels_first", **kw)
    assert_close(y, ref, wt.size // case["o"] + 1, scale_of(x, wt) + 1.0)


@st.composite
def pool_cases(draw):
    return dict(
        n=draw(st.integers(0, 2)), c=draw(st.integers(1, 5)), h=draw(st.integers(1, 10)), w=draw(st.integers(1, 10)),
        kernel=draw(pair_or_int(st.integers(1, 4))), stride=draw(st.one_of(st.none(), pair_or_int(st.integers(1, 3)))),
        dilation=draw(pair_or_int(st.integers(1, 2))), padding=draw(paddings()), ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()), op=draw(st.sampled_from(["max", "avg"])),
        channels_last=draw(st.booleans()),
    )


def expected_pool_hw(case):
    k = R.pair(case["kernel"])
    s = R.pair(case["kernel"] if case["stride"] is None else case["stride"])
    d = R.pair(case["dilation"])
    pads = R.resolve_padding(case["padding"], (case["h"], case["w"]), k, s, d)
    out, too_big = [], False
    for size, kk, ss, dd, (pb, pe) in zip((case["h"], case["w"]), k, s, d, pads):
        num = size + pb + pe - dd * (kk - 1) - 1
        too_big |= num < 0                       # effective kernel larger than the padded input
        n = (-(-num // ss) if case["ceil_mode"] else num // ss) + 1
        if case["ceil_mode"] and (n - 1) * ss >= size + pb:
            n -= 1
        out.append(n)
    return tuple(out), too_big


def run_pool(case, x, fn_module):
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              ceil_mode=case["ceil_mode"], data_format="channels_last" if case["channels_last"] else "channels_first")
    if case["op"] == "max":
        return fn_module.max_pool2d(x, case["kernel"], **kw)
    return fn_module.avg_pool2d(x, case["kernel"], count_include_pad=case["count_include_pad"], **kw)


@settings(max_examples=150, **SETTINGS)
@given(case=pool_cases(), seed=st.integers(0, 2**32 - 1))
def test_pool_size_and_values(case, seed):
    (oh, ow), too_big = expected_pool_hw(case)
    shape = (case["n"], case["c"], case["h"], case["w"])
    if case["channels_last"]:
        shape = (shape[0], shape[2], shape[3], shape[1])
    x = np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)
    if oh < 1 or ow < 1 or (too_big and not case["ceil_mode"]):
        with pytest.raises(ValueError):
            run_pool(case, x, F)
        return
    assume(not too_big)            # kernel beyond the padded input but ceil gives 1: not specified
    y = run_pool(case, x, F)
    c = case["c"]
    expected_shape = (case["n"], oh, ow, c) if case["channels_last"] else (case["n"], c, oh, ow)
    assert y.shape == expected_shape
    kh, kw = R.pair(case["kernel"])
    assert_close(y, run_pool(case, x, R), kh * kw, scale_of(x))


# --------------------------------------------------------------------------- thread-count invariance

@pytest.fixture
def restore_threads():
    n = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(n)


def _bitwise_same_for_threads(fn):
    outs = []
    for t in (1, 2, 3):
        fastconv.set_num_threads(t)
        assert fastconv.get_num_threads() == t
        outs.append(fn())
    for t, o in zip((2, 3), outs[1:]):
        assert o.shape == outs[0].shape
        assert o.tobytes() == outs[0].tobytes(), f"{t} threads differ from 1 thread"
    return outs[0]


@settings(max_examples=25, **SETTINGS)
@given(n=st.integers(1, 3), c=st.integers(1, 40), o=st.integers(1, 40), hw=st.integers(5, 24),
       k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2), groups=st.sampled_from([1, "depthwise"]),
       algorithm=st.sampled_from(["auto", "direct", "im2col", "implicit"]), seed=st.integers(0, 1000))
def test_conv2d_threads_bit_identical(restore_threads, n, c, o, hw, k, stride, groups, algorithm, seed):
    rng = np.random.default_rng(seed)
    g = c if groups == "depthwise" else 1
    if g > 1:
        o = c * (1 + o % 2)
    x = rng.uniform(-1, 1, (n, c, hw, hw)).astype(np.float32)
    w = rng.uniform(-1, 1, (o, c // g, k, k)).astype(np.float32)
    y = _bitwise_same_for_threads(lambda: F.conv2d(x, w, stride=stride, padding=k // 2, groups=g,
                                                   algorithm=algorithm, activation="relu"))
    assert_close(y, R.conv2d(x, w, stride=stride, padding=k // 2, groups=g, activation="relu"),
                 w[0].size, scale_of(x, w))


@settings(max_examples=25, **SETTINGS)
@given(m=st.integers(1, 130), n=st.integers(1, 300), k=st.sampled_from([1, 17, 256, 300, 700]),
       seed=st.integers(0, 1000))
def test_gemm_threads_bit_identical(restore_threads, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    y = _bitwise_same_for_threads(lambda: F.gemm(a, b, bias=b[0], activation="tanh"))
    assert_close(y, R.gemm(a, b, b[0], "tanh"), k + 1, scale_of(a, b) + 1)


def test_large_ops_threads_bit_identical(restore_threads):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (2, 48, 33, 35)).astype(np.float32)
    w = rng.uniform(-1, 1, (70, 48, 3, 3)).astype(np.float32)
    _bitwise_same_for_threads(lambda: F.conv2d(x, w, padding=1))
    wd = np.ascontiguousarray(w[:48, :1])
    _bitwise_same_for_threads(lambda: F.conv2d(x, wd, padding=1, groups=48))
    _bitwise_same_for_threads(lambda: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True))
    _bitwise_same_for_threads(lambda: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False))
    _bitwise_same_for_threads(lambda: F.global_avg_pool2d(x))
    _bitwise_same_for_threads(lambda: F.lrn(x, 5))
    _bitwise_same_for_threads(lambda: F.softmax(x, axis=1))
    a = rng.uniform(-1, 1, (300, 1100)).astype(np.float32)
    _bitwise_same_for_threads(lambda: F.gemm(a, a.T[:, :1030]))
