"""Every output element is stored: the compiled operators are called through the binding with
output buffers pre-filled with NaN, on shapes around the GEMM tiles and blocks of every ISA
(MR x NR = 4x8 scalar, 6x16 AVX2, 8x32 AVX-512; K blocks of 256, N blocks of 1024). A missed
store leaves a NaN; a store past the end shows in the canary row after the output."""
import numpy as np
import pytest

from fastconv import _core
from fastconv.runtime import ISA_LEVELS, isa_cap
import reference as ref

ISAS = list(ISA_LEVELS)
GEMM_SHAPES = [  # (M, N, K): tails of every tile (1 to MR - 1 rows: the AVX kernels compute
    # 1, 2, 4 or MR of them), K below / at / above the block, N past 1024
    (1, 1, 1), (3, 7, 5), (4, 8, 256), (5, 9, 257), (6, 16, 255), (7, 17, 300), (8, 32, 512),
    (9, 33, 513), (13, 47, 31), (16, 1030, 70), (25, 65, 600),
    (2, 40, 9), (10, 18, 33), (49, 70, 20),  # edge tiles of 2 rows; a 7x7 image as rows
]


def nan_buffer(shape):
    """A NaN-filled C-contiguous buffer with a row of canaries after it; returns (view, buffer)."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    buf = np.full((rows + 1, cols), np.nan, np.float32)
    buf[rows] = 12345.0
    return buf[:rows].reshape(shape), buf


def check_canaries(buf):
    assert np.all(buf[-1] == 12345.0), "a kernel wrote past the end of its output"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,N,K", GEMM_SHAPES)
def test_gemm_stores_every_element(isa, M, N, K, rng):
    a, b = ref.rand(rng, (M, K)), ref.rand(rng, (K, N))
    bias = ref.rand(rng, (N,))
    c, buf = nan_buffer((M, N))
    with isa_cap(isa):
        _core.gemm(a, b, None, bias, False, 1, c)  # activation 1: relu
    check_canaries(buf)
    ref.assert_close(c, ref.gemm(a, b, bias, "relu"), K, ref.scale_of(a, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("algorithm", [0, 1, 4])  # direct, im2col, implicit
@pytest.mark.parametrize("oc,hw,k,stride,groups", [
    (1, 5, 3, 1, 1), (7, 9, 3, 2, 1), (9, 13, 5, 1, 1), (33, 6, 3, 1, 1), (12, 11, 3, 1, 3),
    (17, 35, 3, 1, 1),  # 35*35 = 1225 output pixels: past the 1024-column block
])
def test_conv2d_stores_every_element(isa, algorithm, oc, hw, k, stride, groups, rng):
    c = 3 * groups
    x, w = ref.rand(rng, (2, c, hw, hw)), ref.rand(rng, (oc * groups, 3, k, k))
    out = ref.conv_out_size(hw, k, stride, 1, 1, 1)
    y, buf = nan_buffer((2, oc * groups, out, out))
    with isa_cap(isa):
        _core.conv2d_nchw(x, w, None, y, (stride, stride), (1, 1), (1, 1), groups, 0, algorithm)
    check_canaries(buf)
    expected = ref.conv2d(x, w, stride=stride, padding=1, groups=groups)
    ref.assert_close(y, expected, 3 * k * k, ref.scale_of(x, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("is_max", [True, False])
def test_pool_stores_every_element(isa, is_max, rng):
    x = ref.rand(rng, (6, 17, 19))
    y, buf = nan_buffer((6, 9, 10))
    with isa_cap(isa):
        _core.pool2d(x, y, is_max, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), True)
    check_canaries(buf)
    op = ref.max_pool2d if is_max else ref.avg_pool2d
    ref.assert_close(y, op(x[None], 3, 2, 1)[0], 9)


def test_binding_rejects_non_contiguous_output(rng):
    a = ref.rand(rng, (4, 4))
    out = np.empty((4, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.gemm(a, a, None, None, False, 0, out)
