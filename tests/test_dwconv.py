"""The depthwise 3x3 path of the direct algorithm (src/ops/dwconv.c, src/kernels/f32-dwconv):
one input channel per group, stride 1 or 2, rows read in place with masked loads at the edges.
Checked against the float64 reference on every ISA: row widths around the vector widths (4, 8,
16 lanes) so that edge blocks, interior blocks and partial stores all occur, every padding up
to 2 (and uneven), bias, activations, a fused residual, batch > 1, channel multipliers, and
bit-identical results on one and two threads."""
import numpy as np
import pytest

import fastconv.functional as F
from fastconv.runtime import ISA_LEVELS, isa_cap
from reference import activate, assert_close, conv2d as ref_conv2d, rand, scale_of
from threads import results_on_threads

# (H, W): tiny planes, odd and even sizes from 1 to 17, and rows spanning several vectors.
SIZES = [(1, 1), (2, 3), (4, 4), (5, 7), (8, 9), (12, 13), (16, 15), (17, 17), (9, 33), (6, 50),
         (5, 70)]
PADDINGS = [0, 1, 2, ((0, 2), (1, 0)), ((2, 1), (0, 1))]


def fits(hw, padding, stride):
    pads = padding if isinstance(padding, tuple) else ((padding, padding), (padding, padding))
    return all(hw[a] + sum(pads[a]) >= 3 for a in (0, 1))


def check_depthwise(rng, x, multiplier=1, bias=True, **kw):
    c = x.shape[1]
    w = rand(rng, (c * multiplier, 1, 3, 3))
    b = rand(rng, (c * multiplier,)) if bias else None
    y = F.conv2d(x, w, b, groups=c, algorithm="direct", **kw)
    expected = ref_conv2d(x, w, b, groups=c, **kw)
    scale = scale_of(x, w) + (scale_of(b) if bias else 0.0)
    assert_close(y, expected, 10, scale, err_msg=str(kw))
    return y


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("hw", SIZES, ids=str)
def test_matches_the_reference(rng, isa, stride, padding, hw):
    if not fits(hw, padding, stride):
        pytest.skip("the 3x3 window does not fit")
    x = rand(rng, (2, 3) + hw)
    with isa_cap(isa):
        check_depthwise(rng, x, stride=stride, padding=padding, activation="relu6")


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("multiplier", [2, 3])
def test_channel_multiplier(rng, isa, stride, multiplier):
    with isa_cap(isa):
        check_depthwise(rng, rand(rng, (1, 5, 11, 19)), multiplier, stride=stride, padding=1)


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
def test_bias_and_activation(rng, isa, activation, bias):
    x = rand(rng, (1, 4, 10, 21), -4.0, 4.0)  # wide enough for ReLU6 to clip at 6
    with isa_cap(isa):
        check_depthwise(rng, x, bias=bias, padding=1, activation=activation)


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("activation", [None, "relu6", "sigmoid"])
def test_fused_residual(rng, isa, stride, activation):
    c, hw = 6, (13, 18)
    x, w, b = rand(rng, (2, c) + hw), rand(rng, (c, 1, 3, 3)), rand(rng, (c,))
    with isa_cap(isa):
        conv = F.PreparedConv2d(w, b, (c,) + hw, stride=stride, padding=1, groups=c,
                                activation=activation, algorithm="direct")
        residual = rand(rng, (2,) + conv.output_shape)
        expected = activate(ref_conv2d(x, w, b, stride=stride, padding=1, groups=c) + residual,
                            activation)
        assert_close(conv(x, residual=residual), expected, 11, 3.0)
        in_place = residual.copy()  # the residual is the output: the general direct path
        conv(x, residual=in_place, out=in_place)
        assert_close(in_place, expected, 11, 3.0)


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
def test_nan_and_inf_at_the_edges(rng, isa, stride):
    x = rand(rng, (1, 2, 9, 19))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 8, 18] = np.inf
    x[0, 1, 4, 18] = -np.inf
    x[0, 1, 0, 17] = np.nan
    w = rand(rng, (2, 1, 3, 3))
    w[np.abs(w) < 0.05] = 0.5  # no zero weights
    expected = ref_conv2d(x, w, stride=stride, padding=1, groups=2)
    with isa_cap(isa):
        y = F.conv2d(x, w, stride=stride, padding=1, groups=2, algorithm="direct")
    assert_close(y, expected, 9, scale_of(x, w))


@pytest.mark.parametrize("stride", [1, 2])
def test_threads_give_identical_bits(rng, stride):
    # 2 * 9 * 48 * 44 * 45 flops (stride 1): above the size that runs on one thread.
    x, w, b = rand(rng, (1, 48, 44, 45)), rand(rng, (48, 1, 3, 3)), rand(rng, (48,))
    one, two = results_on_threads(lambda: F.conv2d(x, w, b, stride=stride, padding=1, groups=48,
                                                   activation="relu6", algorithm="direct"))
    assert np.array_equal(one, two)


# Inputs of at least 2 MiB and outputs of at least 1 MiB: the row kernels prefetch the next
# band's rows and, after a plane's last band, the next plane's first rows. Prefetches change no
# result, so this checks the pointers they are given stay harmless, on one and two threads.
@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
def test_large_tensors_that_prefetch(rng, isa, stride):
    x = rand(rng, (1, 42, 113, 112))  # 113 rows end in a partial band at either stride
    assert x.nbytes >= 2 << 20
    with isa_cap(isa):
        check_depthwise(rng, x, stride=stride, padding=1, activation="relu6")
        w, b = rand(rng, (42, 1, 3, 3)), rand(rng, (42,))
        one, two = results_on_threads(lambda: F.conv2d(x, w, b, stride=stride, padding=1,
                                                       groups=42, algorithm="direct"))
    assert np.array_equal(one, two)


# Small planes whose output rows are as wide as the input rows (stride 1, left + right padding
# 2, width <= 14, at most 256 outputs) run as flat runs, vectors spanning several rows with the
# taps that leave the plane or wrap into a neighbouring row masked off (f32-dwconv.c, flat).
# (19, 14) has 266 outputs: the row kernel again.
FLAT_SIZES = [(1, 1), (3, 5), (7, 7), (9, 14), (14, 14), (18, 14), (19, 14), (6, 13)]
FLAT_PADDINGS = [1, ((0, 2), (1, 1)), ((2, 0), (0, 2)), ((1, 1), (2, 0)), ((2, 2), (1, 1))]


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("padding", FLAT_PADDINGS, ids=str)
@pytest.mark.parametrize("hw", FLAT_SIZES, ids=str)
def test_flat_small_planes(rng, isa, padding, hw):
    if not fits(hw, padding, 1):
        pytest.skip("the 3x3 window does not fit")
    x = rand(rng, (2, 3) + hw, -4.0, 4.0)
    with isa_cap(isa):
        check_depthwise(rng, x, padding=padding, activation="relu6")
        check_depthwise(rng, x, bias=False, padding=padding, activation="sigmoid")


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
def test_flat_nan_and_inf_do_not_wrap_into_the_next_row(rng, isa):
    x = rand(rng, (1, 2, 7, 7))
    x[0, 0, 2, 6] = np.nan  # a row's last column: the next row's first outputs must not see it
    x[0, 1, 3, 0] = np.inf  # a row's first column: the previous row's last outputs
    w = rand(rng, (2, 1, 3, 3))
    w[np.abs(w) < 0.05] = 0.5
    expected = ref_conv2d(x, w, padding=1, groups=2)
    with isa_cap(isa):
        y = F.conv2d(x, w, padding=1, groups=2, algorithm="direct")
    assert_close(y, expected, 9, scale_of(x, w))


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
def test_flat_residual_and_threads(rng, isa):
    # 3 images x 100 channels of 18x14 (taller than the channel-blocked kernel takes): above the
    # one-thread size, and the two threads' shares split an image.
    c, hw = 100, (18, 14)
    x, w, b = rand(rng, (3, c) + hw), rand(rng, (c, 1, 3, 3)), rand(rng, (c,))
    conv = F.PreparedConv2d(w, b, (c,) + hw, padding=1, groups=c, activation="relu6",
                            algorithm="direct")
    residual = rand(rng, (3,) + conv.output_shape)
    plain = ref_conv2d(x, w, b, padding=1, groups=c)
    with isa_cap(isa):
        results = results_on_threads(lambda: (conv(x), conv(x, residual=residual)))
    for one, two in zip(*results):
        assert np.array_equal(one, two)
    assert_close(results[0][0], activate(plain, "relu6"), 10, 3.0)
    assert_close(results[0][1], activate(plain + residual, "relu6"), 11, 4.0)


# Planes with outputs up to 14 x 14 and at least 16 channels run channel-blocked: groups of
# VLEN channels (16, 8, 4 lanes) transposed into a zero-padded buffer of pixels and back. 37
# channels leave a partial group on every ISA; inputs up to 28 wide take two or more vectors
# per row; (16, 16) at stride 2 without padding leaves a row and a column no tap reads.
CBLOCK_SIZES = [(1, 1), (3, 5), (7, 7), (5, 13), (14, 14), (13, 9), (16, 16), (27, 28)]


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("hw", CBLOCK_SIZES, ids=str)
def test_channel_blocked_small_planes(rng, isa, stride, padding, hw):
    if not fits(hw, padding, stride):
        pytest.skip("the 3x3 window does not fit")
    x = rand(rng, (2, 37) + hw, -4.0, 4.0)
    with isa_cap(isa):
        check_depthwise(rng, x, stride=stride, padding=padding, activation="relu6")
        check_depthwise(rng, x, bias=False, stride=stride, padding=padding, activation="tanh")


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("stride", [1, 2])
def test_channel_blocked_nan_inf_residual_and_threads(rng, isa, stride):
    # 3 images x 300 channels of 14x14: above the one-thread size, and the two threads' shares
    # split an image and a group of channels.
    c, hw = 300, (14, 14)
    x, w, b = rand(rng, (3, c) + hw), rand(rng, (c, 1, 3, 3)), rand(rng, (c,))
    x[0, 5, 0, 13] = np.nan
    x[1, 17, 13, 0] = np.inf
    w[np.abs(w) < 0.05] = 0.5
    conv = F.PreparedConv2d(w, b, (c,) + hw, stride=stride, padding=1, groups=c,
                            activation="relu6", algorithm="direct")
    residual = rand(rng, (3,) + conv.output_shape)
    plain = ref_conv2d(x, w, b, stride=stride, padding=1, groups=c)
    with isa_cap(isa):
        results = results_on_threads(lambda: (conv(x), conv(x, residual=residual)))
    for one, two in zip(*results):
        assert np.array_equal(one, two, equal_nan=True)
    assert_close(results[0][0], activate(plain, "relu6"), 10, 3.0)
    assert_close(results[0][1], activate(plain + residual, "relu6"), 11, 4.0)
