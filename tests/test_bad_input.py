"""Invalid arguments raise ValueError/TypeError whose message names the argument, what was expected
and what was received; unusual but valid inputs (views, other dtypes, read-only) are accepted."""
import re

import numpy as np
import pytest

import fastconv.functional as F
import reference as R
from reference import assert_close, rand, scale_of


def x4(shape=(2, 4, 8, 8)):
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


W = x4((5, 4, 3, 3))


def raises(exc_types, fn, *args, names, received, expected, **kwargs):
    """fn(*args, **kwargs) raises one of exc_types; its message matches each of the three regexes."""
    with pytest.raises(exc_types) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for what, pattern in (("argument name", names), ("received value", received), ("expected value", expected)):
        assert re.search(pattern, msg), f"message lacks the {what} /{pattern}/: {msg!r}"
    return msg


VE, TE, VTE = ValueError, TypeError, (ValueError, TypeError)
RANK4 = r"4|N, C, H, W|NCHW"


# --------------------------------------------------------------------------- rank and dtype

def test_conv2d_x_wrong_rank():
    raises(VE, F.conv2d, x4((5, 8, 8)), W, names=r"\bx\b", received=r"\b3\b|\(5, 8, 8\)", expected=RANK4)


def test_conv2d_weight_wrong_rank():
    raises(VE, F.conv2d, x4((1, 6, 8, 8)), x4((5, 6, 3)), names=r"weight", received=r"\b3\b|\(5, 6, 3\)",
           expected=r"4|O, I, KH, KW|OIHW")


@pytest.mark.parametrize("fn,shape", [(F.max_pool2d, (5, 8, 8)), (F.avg_pool2d, (2, 5, 8, 8, 1)),
                                      (F.global_avg_pool2d, (8, 8))])
def test_pool_wrong_rank(fn, shape):
    args = (x4(shape),) if fn is F.global_avg_pool2d else (x4(shape), 2)
    raises(VE, fn, *args, names=r"\bx\b", received=rf"\b{len(shape)}\b|{re.escape(str(shape))}", expected=RANK4)


def test_gemm_wrong_rank():
    raises(VE, F.gemm, x4((3,)), x4((3, 5)), names=r"\ba\b", received=r"\b1\b|\(3,\)", expected=r"2|matri")
    raises(VE, F.gemm, x4((3, 4)), x4((4, 4, 1)), names=r"\bb\b", received=r"\b3\b|\(4, 4, 1\)",
           expected=r"2|matri")


@pytest.mark.parametrize("dtype,received", [(np.complex64, "complex"), (np.complex128, "complex"),
                                            (np.bool_, "bool"), (object, "object"), (str, r"str|<U|unicode")])
def test_unsupported_dtypes(dtype, received):
    x = np.ones((1, 4, 8, 8)).astype(dtype)
    raises(TE, F.conv2d, x, W, names=r"\bx\b", received=received, expected=r"float")
    raises(TE, F.conv2d, x4(), W.astype(dtype), names=r"weight", received=received, expected=r"float")
    raises(TE, F.relu, x, names=r"\bx\b", received=received, expected=r"float")
    raises(TE, F.gemm, np.ones((2, 3)).astype(dtype), x4((3, 2)), names=r"\ba\b", received=received,
           expected=r"float")
    raises(TE, F.max_pool2d, x, 2, names=r"\bx\b", received=received, expected=r"float")


# --------------------------------------------------------------------------- conv2d arguments

def test_conv2d_channel_mismatch():
    raises(VE, F.conv2d, x4((2, 5, 8, 8)), x4((6, 3, 3, 3)), names=r"\bx\b|weight|channel",
           received=r"\b5\b", expected=r"\b3\b")


def test_conv2d_channel_mismatch_channels_last():
    raises(VE, F.conv2d, x4((2, 8, 8, 5)), x4((3, 3, 3, 6)), data_format="channels_last",
           names=r"\bx\b|weight|channel", received=r"\b5\b", expected=r"\b3\b")


def test_groups_not_dividing_in_channels():
    raises(VE, F.conv2d, x4((1, 6, 8, 8)), x4((8, 2, 3, 3)), groups=4, names=r"groups",
           received=r"\b4\b", expected=r"\b6\b")


def test_groups_not_dividing_out_channels():
    raises(VE, F.conv2d, x4((1, 4, 8, 8)), x4((3, 2, 3, 3)), groups=2, names=r"groups",
           received=r"\b3\b", expected=r"\b2\b")


@pytest.mark.parametrize("bad", [0, -1, (1, 0), (-2, 1)], ids=str)
@pytest.mark.parametrize("arg", ["stride", "dilation"])
def test_stride_dilation_below_one(arg, bad):
    val = bad if isinstance(bad, int) else min(bad)
    raises(VE, F.conv2d, x4(), W, **{arg: bad}, names=arg, received=rf"{val}", expected=r"\b1\b|positive")


@pytest.mark.parametrize("arg", ["stride", "dilation"])
def test_pool_stride_dilation_below_one(arg):
    raises(VE, F.max_pool2d, x4(), 2, **{arg: 0}, names=arg, received=r"\b0\b", expected=r"\b1\b|positive")
    raises(VE, F.avg_pool2d, x4(), 2, **{arg: -3}, names=arg, received=r"-3", expected=r"\b1\b|positive")


def test_kernel_larger_than_padded_input():
    raises(VE, F.conv2d, x4((1, 4, 4, 9)), x4((2, 4, 6, 3)), names=r"weight|kernel|\bx\b|input",
           received=r"\b6\b|\b4\b", expected=r"\b4\b|\b6\b")


def test_dilated_kernel_larger_than_padded_input():
    # effective kernel 1 + 3*2 = 7 > 5 + 1: output size would be 0
    msg = raises(VE, F.conv2d, x4((1, 4, 5, 9)), x4((2, 4, 3, 3)), dilation=3, padding=(0, 0),
                 names=r"weight|kernel|dilation|\bx\b|input|output", received=r"\b7\b|\b0\b|\b5\b",
                 expected=r"\b5\b|\b1\b|\b7\b")
    assert msg


def test_padding_makes_output_size_valid():
    # same shapes as above become valid with enough padding: the error above is about size
    y = F.conv2d(x4((1, 4, 5, 9)), x4((2, 4, 3, 3)), dilation=3, padding=1)
    assert y.shape == (1, 2, 1, 5)


@pytest.mark.parametrize("padding", [-1, (0, -2), ((0, 0), (-1, 1))], ids=str)
def test_negative_padding(padding):
    raises(VE, F.conv2d, x4(), W, padding=padding, names=r"padding", received=r"-[12]", expected=r"\b0\b|negative")


def test_unknown_padding_string():
    raises(VE, F.conv2d, x4(), W, padding="bogus", names=r"padding", received=r"bogus", expected=r"same|valid")
    raises(VE, F.max_pool2d, x4(), 2, padding="SAME!", names=r"padding", received=r"SAME!", expected=r"same|valid")


def test_unknown_algorithm():
    raises(VE, F.conv2d, x4(), W, algorithm="fft", names=r"algorithm", received=r"fft", expected=r"implicit")


def test_gemm_algorithm_requires_1x1_p0():
    raises(VE, F.conv2d, x4(), W, algorithm="gemm", names=r"algorithm|gemm", received=r"\b3\b|3x3|\(3, 3\)",
           expected=r"1x1|\b1\b")
    w1 = x4((5, 4, 1, 1))
    with pytest.raises(ValueError):
        F.conv2d(x4(), w1, algorithm="gemm", padding=1)


@pytest.mark.parametrize("call", ["conv2d", "gemm", "dense", "add"])
def test_unknown_activation(call):
    fn = {"conv2d": lambda: F.conv2d(x4(), W, activation="gelu"),
          "gemm": lambda: F.gemm(x4((2, 3)), x4((3, 4)), activation="gelu"),
          "dense": lambda: F.dense(x4((2, 3)), x4((4, 3)), activation="gelu"),
          "add": lambda: F.add(x4((2, 3)), x4((2, 3)), activation="gelu")}[call]
    raises(VE, fn, names=r"activation", received=r"gelu", expected=r"relu")


@pytest.mark.parametrize("call", ["conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "lrn",
                                  "batch_norm", "concat"])
def test_unknown_data_format(call):
    c = np.ones(4, np.float32)
    fn = {"conv2d": lambda: F.conv2d(x4(), W, data_format="NCHW"),
          "max_pool2d": lambda: F.max_pool2d(x4(), 2, data_format="NCHW"),
          "avg_pool2d": lambda: F.avg_pool2d(x4(), 2, data_format="NCHW"),
          "global_avg_pool2d": lambda: F.global_avg_pool2d(x4(), data_format="NCHW"),
          "lrn": lambda: F.lrn(x4(), 3, data_format="NCHW"),
          "batch_norm": lambda: F.batch_norm(x4(), c, c, data_format="NCHW"),
          "concat": lambda: F.concat([x4(), x4()], data_format="NCHW")}[call]
    raises(VE, fn, names=r"data_format", received=r"NCHW", expected=r"channels_first|channels_last")


# --------------------------------------------------------------------------- other operators

def test_gemm_inner_dimension_mismatch():
    raises(VE, F.gemm, x4((3, 4)), x4((5, 6)), names=r"\ba\b|\bb\b|inner|\bK\b", received=r"\b5\b|\b4\b",
           expected=r"\b4\b|\b5\b")
    msg = raises(VE, F.dense, x4((3, 7)), x4((2, 9)), names=r"\bx\b|weight", received=r"\b7\b|\b9\b",
                 expected=r"\b9\b|\b7\b")
    assert "7" in msg and "9" in msg


def test_gemm_mismatch_message_has_both_sizes():
    with pytest.raises(ValueError) as info:
        F.gemm(x4((3, 4)), x4((5, 6)))
    assert "4" in str(info.value) and "5" in str(info.value)


def test_bias_wrong_length():
    raises(VE, F.conv2d, x4(), W, bias=np.ones(6, np.float32), names=r"bias", received=r"\b6\b", expected=r"\b5\b")
    raises(VE, F.gemm, x4((3, 4)), x4((4, 7)), bias=np.ones(8, np.float32), names=r"bias", received=r"\b8\b",
           expected=r"\b7\b")
    raises(VE, F.dense, x4((3, 4)), x4((7, 4)), bias=np.ones(6, np.float32), names=r"bias", received=r"\b6\b",
           expected=r"\b7\b")
    raises(VE, F.gemm, x4((3, 4)), x4((4, 7)), bias=np.ones((2, 7), np.float32), names=r"bias",
           received=r"\(2, 7\)|\b2\b", expected=r"\b3\b|\(3, 7\)")


@pytest.mark.parametrize("size", [0, -1])
def test_lrn_size_below_one(size):
    raises(VE, F.lrn, x4(), size, names=r"size", received=rf"{size}", expected=r"\b1\b|positive")


@pytest.mark.parametrize("shape,axis", [((3, 4), 2), ((3, 4), -3), ((5,), 1)])
def test_softmax_axis_out_of_range(shape, axis):
    raises(VE, F.softmax, x4(shape), axis=axis, names=r"axis", received=rf"{axis}",
           expected=rf"\b{len(shape)}\b|-{len(shape)}")


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
@pytest.mark.parametrize("kernel", [0, (2, 0), -1], ids=str)
def test_pool_kernel_below_one(fn, kernel):
    val = min(kernel) if isinstance(kernel, tuple) else kernel
    raises(VE, fn, x4(), kernel, names=r"kernel_size", received=rf"{val}", expected=r"\b1\b|positive")


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
def test_pool_kernel_larger_than_padded_input(fn):
    raises(VE, fn, x4((1, 2, 3, 8)), 5, stride=1, names=r"kernel_size|\bx\b|input|output",
           received=r"\b5\b|\b3\b|-1|\b0\b", expected=r"\b3\b|\b5\b|\b1\b")


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
def test_pool_negative_padding(fn):
    raises(VE, fn, x4(), 2, padding=-1, names=r"padding", received=r"-1", expected=r"\b0\b|negative")


def test_batch_norm_bad_rank_and_length():
    c = np.ones(4, np.float32)
    raises(VE, F.batch_norm, x4((8,)), c, c, names=r"\bx\b", received=r"\b1\b|\(8,\)", expected=r"\b2\b")
    raises(VE, F.batch_norm, x4((2, 4, 3, 3, 3)), c, c, names=r"\bx\b", received=r"\b5\b", expected=r"\b4\b")
    raises(VE, F.batch_norm, x4(), np.ones(3, np.float32), c, names=r"mean", received=r"\b3\b", expected=r"\b4\b")


def test_add_not_broadcastable():
    with pytest.raises(ValueError):
        F.add(x4((3, 4)), x4((2, 4)))


def test_concat_mismatched_shapes():
    with pytest.raises(ValueError):
        F.concat([x4((1, 2, 3, 3)), x4((1, 2, 4, 3))])
    with pytest.raises(VTE):
        F.concat([])


def test_flatten_axis_out_of_range():
    with pytest.raises(ValueError):
        F.flatten(x4((2, 3)), axis=3)


# --------------------------------------------------------------------------- accepted inputs

def test_views_accepted(rng):
    base = rand(rng, (3, 8, 12, 14))
    x = base[::-1, ::2, 1::2, ::-1]                       # (3, 4, 6, 7)
    assert not x.flags.c_contiguous
    w = rand(rng, (3, 3, 4, 10)).transpose(3, 2, 0, 1)     # OIHW view of an HWIO-ordered buffer
    for algorithm in ("direct", "im2col", "implicit", "auto"):
        y = F.conv2d(x, w, padding=1, algorithm=algorithm)
        assert_close(y, R.conv2d(x, w, padding=1), 37, scale_of(x, w))
    a = rand(rng, (20, 9))[::-2].T                        # (9, 10), negative strides
    b = rand(rng, (10, 30))[:, ::3]
    assert_close(F.gemm(a, b), R.gemm(a, b), 11, scale_of(a, b))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.int16, np.uint8])
def test_dtypes_converted(rng, dtype):
    x = rng.integers(0, 5, size=(2, 3, 6, 6)).astype(dtype)
    w = rng.integers(-2, 3, size=(4, 3, 3, 3)).astype(dtype)
    b = np.arange(4).astype(dtype)
    y = F.conv2d(x, w, bias=b)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, R.conv2d(x, w, b))   # small integers: exact
    assert F.max_pool2d(x, 2).dtype == np.float32
    assert F.relu(x).dtype == np.float32
    assert F.gemm(x[0, 0], x[0, 1]).dtype == np.float32


def test_python_lists_not_required_but_read_only_accepted(rng):
    x = rand(rng, (1, 3, 7, 7))
    w = rand(rng, (2, 3, 3, 3))
    b = rand(rng, (2,))
    for a in (x, w, b):
        a.setflags(write=False)
    assert_close(F.conv2d(x, w, bias=b), R.conv2d(x, w, b), 28, scale_of(x, w) + 1)
    assert_close(F.max_pool2d(x, 2), R.max_pool2d(x, 2), 4, 1.0)
    assert_close(F.relu(x), R.relu(x), 1, 1.0)
    a = rand(rng, (4, 5))
    a.setflags(write=False)
    assert_close(F.gemm(a, a.T), R.gemm(a, a.T), 5, scale_of(a, a))
    # a read-only view into a non-contiguous buffer
    v = np.lib.stride_tricks.as_strided(rand(rng, (60,)), shape=(1, 3, 4, 4), strides=(0, 16 * 4, 12, 4),
                                        writeable=False)
    assert_close(F.avg_pool2d(v, 2), R.avg_pool2d(v, 2), 4, 1.0)


def test_inputs_not_modified(rng):
    x = rand(rng, (2, 3, 6, 6))
    w = rand(rng, (4, 3, 3, 3))
    x0, w0 = x.copy(), w.copy()
    F.conv2d(x, w, padding=1, activation="relu")
    F.max_pool2d(x, 2)
    F.softmax(x, axis=1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
