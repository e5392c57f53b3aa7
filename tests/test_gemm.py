import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from reference import ACTIVATIONS, assert_close, dense as ref_dense, gemm as ref_gemm, rand, scale_of

# micro-tiles 8x32 / 6x16 / 4x8, K blocked by 256, N by 1024
MS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 23, 24, 25, 31, 32, 33, 37, 40]
NS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 37, 40]
KS = [1, 2, 7, 16, 31, 64, 255, 256, 257, 300, 513, 1000]


def check_gemm(a, b, bias=None, activation=None, **kw):
    y = F.gemm(a, b, bias=bias, activation=activation)
    ref = ref_gemm(a, b, bias, activation)
    assert y.shape == (a.shape[0], b.shape[1])
    assert np.isfinite(y).all()
    scale = scale_of(a, b) + (scale_of(bias) if bias is not None else 0.0)
    assert_close(y, ref, a.shape[1] + 1, scale, **kw)
    return y


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
def test_gemm_tile_edges(rng, M, K):
    b_full = rand(rng, (K, max(NS)))
    a = rand(rng, (M, K))
    ref_full = ref_gemm(a, b_full)                      # columns of the product don't interact
    for n in NS:
        b = np.ascontiguousarray(b_full[:, :n])
        y = F.gemm(a, b)
        assert np.isfinite(y).all()
        assert_close(y, ref_full[:, :n], K, scale_of(a, b), err_msg=f"M={M} N={n} K={K}")


@pytest.mark.parametrize("activation", [None, "relu6", "sigmoid"])
@pytest.mark.parametrize("M", [1, 8, 9, 17, 24, 40])
def test_gemm_narrow_edge_columns_are_bit_identical_to_full_tiles(rng, M, activation):
    # The last 1-8 columns past a multiple of 32 (AVX-512), 1-4 past a multiple of 16 (AVX2),
    # run through the transposed narrow kernel, two A panels at a time; inside a wider B the
    # same columns are in full tiles. Each element sums the same products in the same order
    # either way.
    K = 600  # three K blocks: the narrow kernel accumulates into C
    a = rand(rng, (M, K), -3, 3)
    b_full = rand(rng, (K, 72), -3, 3)
    bias = rand(rng, (72,), -2, 2)
    wide = F.gemm(a, b_full, bias=bias, activation=activation)
    for n in (33, 34, 35, 36, 37, 40, 50, 65, 68):
        y = F.gemm(a, np.ascontiguousarray(b_full[:, :n]), bias=bias[:n], activation=activation)
        np.testing.assert_array_equal(y, wide[:, :n], err_msg=f"M={M} N={n}")
    check_gemm(a, np.ascontiguousarray(b_full[:, :68]), bias[:68], activation)


@pytest.mark.parametrize("M,N,K", [(3, 1023, 257), (5, 1024, 64), (7, 1025, 300), (2, 1100, 31),
                                   (9, 2080, 513), (1000, 3, 40), (1001, 1, 257), (3, 2000, 7),
                                   (64, 96, 1000), (97, 129, 513)])
def test_gemm_tall_wide_and_n_blocks(rng, M, N, K):
    check_gemm(rand(rng, (M, K)), rand(rng, (K, N)))


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("M,N,K", [(64, 3136, 64), (256, 196, 300), (2048, 49, 512),
                                   (30, 1111, 17), (600, 23, 70)])
def test_gemm_threads_sharing_tail_panels_compute_each_tile_once(rng, threads, M, N, K):
    """The threads take their shares' tail column panels from queues that the others steal
    from (a split of A's rows, N of at most a few panels, shares none): whoever computes a tile,
    every call equals the one-thread result bit for bit (a tile computed twice with a stale
    accumulation, or left out, would not)."""
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    previous = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        expected = F.gemm(a, b, bias, "relu")
        fastconv.set_num_threads(threads)
        for _ in range(20):
            np.testing.assert_array_equal(F.gemm(a, b, bias, "relu"), expected)
    finally:
        fastconv.set_num_threads(previous)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (13, 37, 300), (8, 32, 256), (6, 16, 257), (31, 33, 7)])
def test_gemm_activations(rng, activation, M, N, K):
    # scale so pre-activations reach well beyond +-6 (relu6 clamp) and saturate tanh/sigmoid
    a = rand(rng, (M, K), -3, 3)
    b = rand(rng, (K, N), -3, 3)
    bias = rand(rng, (N,), -2, 2)
    check_gemm(a, b, bias, activation)


def _bias_forms(rng, M, N):
    return {
        "none": None,
        "N": rand(rng, (N,)),
        "1N": rand(rng, (1, N)),
        "M1": rand(rng, (M, 1)),
        "MN": rand(rng, (M, N)),
        "python_scalar": 0.75,
        "0d_array": np.array(-1.25, dtype=np.float32),
    }


@pytest.mark.parametrize("form", ["none", "N", "1N", "M1", "MN", "python_scalar", "0d_array"])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 3), (7, 17, 257), (13, 40, 31)])
def test_gemm_bias_forms(rng, form, activation, M, N, K):
    bias = _bias_forms(rng, M, N)[form]
    check_gemm(rand(rng, (M, K)), rand(rng, (K, N)), bias, activation)


@pytest.mark.parametrize("view", ["a_cols_step2", "b_rows_reversed", "a_transposed", "b_transposed",
                                  "both_fortran", "negative_both", "a_rows_step3"])
@pytest.mark.parametrize("M,N,K", [(7, 33, 257), (13, 17, 31)])
def test_gemm_strided_views(rng, view, M, N, K):
    a = rand(rng, (M, K))
    b = rand(rng, (K, N))
    if view == "a_cols_step2":
        a = rand(rng, (M, 2 * K))[:, ::2]
    elif view == "b_rows_reversed":
        b = b[::-1]
    elif view == "a_transposed":
        a = rand(rng, (K, M)).T
    elif view == "b_transposed":
        b = rand(rng, (N, K)).T
    elif view == "both_fortran":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    elif view == "negative_both":
        a, b = a[::-1, ::-1], b[:, ::-1]
    elif view == "a_rows_step3":
        a = rand(rng, (3 * M, K))[::3]
    assert not (a.flags.c_contiguous and b.flags.c_contiguous)
    check_gemm(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.int8, np.uint8])
def test_gemm_converts_dtypes(rng, dtype):
    a = rng.integers(-4, 5, size=(9, 20)).astype(dtype) if np.dtype(dtype).kind in "iu" \
        else rand(rng, (9, 20)).astype(dtype)
    if np.dtype(dtype).kind == "u":
        a = rng.integers(0, 9, size=(9, 20)).astype(dtype)
    b = rand(rng, (20, 11)).astype(np.float64)
    y = check_gemm(a, b)
    assert y.dtype == np.float32


def test_gemm_empty_m(rng):
    y = F.gemm(np.zeros((0, 16), np.float32), rand(rng, (16, 9)))
    assert y.shape == (0, 9) and y.dtype == np.float32
    y = F.gemm(np.zeros((0, 16), np.float32), rand(rng, (16, 9)), bias=rand(rng, (9,)), activation="relu")
    assert y.shape == (0, 9)


def test_gemm_returns_fresh_array(rng):
    a, b = rand(rng, (4, 5)), rand(rng, (5, 6))
    a0, b0 = a.copy(), b.copy()
    y1 = F.gemm(a, b)
    y2 = F.gemm(a, b)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(y1, a)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


# --------------------------------------------------------------------------- dense

def check_dense(x, w, bias=None, activation=None):
    y = F.dense(x, w, bias=bias, activation=activation)
    ref = ref_dense(x, w, bias, activation)
    assert np.isfinite(y).all()
    assert_close(y, ref, w.shape[1] + 1, scale_of(x, w) + (scale_of(bias) if bias is not None else 0))
    return y


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,n_in,n_out", [(1, 1, 1), (5, 257, 33), (17, 64, 10), (32, 1000, 7),
                                              (3, 300, 1025)])
def test_dense(rng, activation, batch, n_in, n_out):
    x = rand(rng, (batch, n_in), -2, 2)
    w = rand(rng, (n_out, n_in), -2, 2)
    check_dense(x, w, rand(rng, (n_out,)), activation)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 3), (256, 17), (513, 40)])
def test_dense_1d(rng, with_bias, n_in, n_out):
    x = rand(rng, (n_in,))
    w = rand(rng, (n_out, n_in))
    b = rand(rng, (n_out,)) if with_bias else None
    y = check_dense(x, w, b)
    assert y.shape == (n_out,)


def test_dense_views_and_dtypes(rng):
    x = rand(rng, (6, 80))[::-1, ::2]                   # (6, 40) negative/strided view
    w = rand(rng, (40, 9)).T                            # (9, 40) transposed view
    check_dense(x, w, rand(rng, (9,)).astype(np.float64), "tanh")
    xi = rng.integers(-3, 4, size=(4, 12))
    y = check_dense(xi, rand(rng, (5, 12)).astype(np.float64))
    assert y.dtype == np.float32


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 5), (256, 33), (257, 129), (600, 300),
                                        (513, 1000)])
def test_dense_one_sample_is_its_row_of_a_batch(rng, activation, n_in, n_out):
    """A model's dense layer at batch 1 takes the one-row kernel (f32-gemv.c), larger batches
    the GEMM: a sample's result must not depend on which, bit for bit, NaN and inf included."""
    from fastconv import _core
    w, bias = rand(rng, (n_out, n_in), -2, 2), rand(rng, (n_out,))
    x = rand(rng, (9, n_in), -2, 2)
    x[3, n_in // 2], x[5, 0] = np.nan, np.inf
    dense = _core.DensePlan(w, bias, F._ACTIVATIONS[activation])
    batch = np.empty((9, n_out), np.float32)
    dense.run(x, batch)
    for i in range(9):
        row = np.empty((1, n_out), np.float32)
        dense.run(np.ascontiguousarray(x[i:i + 1]), row)
        np.testing.assert_array_equal(row[0], batch[i])
    finite = np.isfinite(x).all(axis=1)
    assert_close(batch[finite], ref_dense(x[finite], w, bias, activation), n_in + 1,
                 scale_of(x[finite], w) + scale_of(bias))


def test_dense_empty_batch(rng):
    y = F.dense(np.zeros((0, 12), np.float32), rand(rng, (5, 12)), bias=rand(rng, (5,)))
    assert y.shape == (0, 5) and y.dtype == np.float32


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("M,N,K", [(3, 5, 4), (13, 37, 300), (9, 33, 257)])
def test_gemm_nan_inf_propagation(rng, activation, M, N, K):
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    a[1, K // 2] = np.nan                      # row 1 all NaN
    b[0, N - 1] = np.inf                       # last column +-inf (or NaN where it meets -inf/NaN)
    a[M - 1, 0] = -np.inf
    ref = ref_gemm(a, b, None, activation)
    assert np.isnan(ref).any() and np.isfinite(ref).any()
    y = F.gemm(a, b, activation=activation)
    assert_close(y, ref, K, scale_of(a, b))    # checks the NaN and inf masks exactly


def test_denormals_are_flushed_only_inside_the_kernels():
    from fastconv import runtime

    a = np.full((4, 4), 1e-20, np.float32)  # products 1e-40: denormal
    previous = runtime.flush_denormals_enabled()
    try:
        runtime.set_flush_denormals(True)
        assert not F.gemm(a, a).any()
        tiny = np.float32(1e-38) * np.float32(0.5)  # the caller's thread still keeps denormals
        assert tiny != 0
        runtime.set_flush_denormals(False)
        np.testing.assert_allclose(F.gemm(a, a), np.full((4, 4), 4e-40, np.float32), rtol=1e-2)
    finally:
        runtime.set_flush_denormals(previous)
