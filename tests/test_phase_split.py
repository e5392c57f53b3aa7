"""The row split into column phases (the vector table's vdeinterleave, used by the phase planes
of strided windows and Winograd) against an index-by-index NumPy reference, on the active ISA
(run under FASTCONV_ISA=avx512, avx2 and scalar)."""
import numpy as np
import pytest

import fastconv.functional as F
from fastconv import _core
import reference as R
from reference import assert_close, rand, scale_of

SENTINEL = 12345.0


def split_reference(x, n, left, stride, pad):
    y = np.full((stride, n), pad, np.float32)
    for p in range(stride):
        for i in range(n):
            column = i * stride + p - left
            if 0 <= column < len(x):
                y[p, i] = x[column]
    return y


def run_split(x, n, left, stride, pad):
    """The kernel's output, and whether it wrote past y or changed x."""
    buffer = np.full(stride * n + 64, SENTINEL, np.float32)
    y = buffer[:stride * n].reshape(stride, n)
    before = x.copy()
    _core.vdeinterleave(x, left, pad, y)
    assert np.all(buffer[stride * n:] == SENTINEL), "wrote past the last phase row"
    np.testing.assert_array_equal(x, before)
    return y


@pytest.mark.parametrize("stride", [2, 4, 3])
@pytest.mark.parametrize("left", [0, 1, 3, 5])
def test_split_matches_reference_for_every_length(stride, left):
    rng = np.random.default_rng(stride * 10 + left)
    # Lengths 1..48 cover every n mod 16, 8 and 4, whole vectors and tails; the row ends inside
    # the last group, at it, or before it (right padding).
    for n in range(1, 49):
        for right in (-2, 0, 3):
            width = max(1, n * stride - left - right)
            x = rng.standard_normal(width).astype(np.float32)
            y = run_split(x, n, left, stride, -np.inf)
            np.testing.assert_array_equal(y, split_reference(x, n, left, stride, -np.inf),
                                          err_msg=f"n={n} width={width}")


@pytest.mark.parametrize("stride", [2, 4])
def test_split_of_a_row_inside_the_left_padding(stride):
    # Every phase column lies left of the row: all padding, nothing read.
    x = np.arange(3, dtype=np.float32)
    y = run_split(x, 5, 40, stride, 7.0)
    np.testing.assert_array_equal(y, np.full((stride, 5), 7.0, np.float32))


def test_split_reads_no_column_past_the_row():
    # NaN right after the row would show in the output if a lane past `width` were used.
    rng = np.random.default_rng(1)
    for stride in (2, 4):
        for width in range(1, 40):
            row = np.full(width + 64, np.nan, np.float32)
            row[:width] = rng.standard_normal(width)
            n = (width + 1 + stride - 1) // stride + 3
            y = run_split(row[:width], n, 1, stride, 0.0)
            assert not np.isnan(y).any(), f"stride {stride} width {width}"


def test_split_rejects_bad_arrays():
    with pytest.raises(ValueError, match="expected x 1-D"):
        _core.vdeinterleave(np.zeros((2, 2), np.float32), 0, 0.0, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="expected y"):
        _core.vdeinterleave(np.zeros(4, np.float32), 0, 0.0, np.zeros((5, 2), np.float32))


@pytest.mark.parametrize("stride,kernel,padding,size", [
    (2, 3, 1, 17), (2, 7, 3, 33), (4, 6, 1, 29), (4, 5, 2, 38), (2, 2, 0, 9),
])
def test_pooling_through_split_planes(stride, kernel, padding, size):
    # Max pooling pads with -inf, average pooling with 0: both pads go through the split.
    x = rand(np.random.default_rng(size), (2, 3, size, size + 3))
    for pool, ref in ((F.max_pool2d, R.max_pool2d), (F.avg_pool2d, R.avg_pool2d)):
        y = pool(x, kernel, stride=stride, padding=padding)
        expected = ref(x, kernel, stride=stride, padding=padding)
        assert_close(y, expected, kernel * kernel, scale_of(x), err_msg=f"{pool.__name__}")
