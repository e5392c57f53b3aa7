"""Winograd F(2x2, 3x3) ("winograd") and F(4x4, 3x3) ("winograd4"): their error against a float64
reference stays within a stated bound, on every ISA, with bias, activations, a fused residual,
any output size and padding, and for other kernels and strides (run as groups of 3x3
sub-kernels); model plans use them for eligible layers and follow
fastconv.runtime.set_winograd."""
import numpy as np
import pytest
import torch

import fastconv
import fastconv.functional as F
from fastconv import layers as L
from fastconv.runtime import ISA_LEVELS, isa_cap, set_winograd, winograd_enabled
import reference as ref

# Stated bound: |error| <= c * K * eps32 * max|x| * max|w| (K = 9 C). Rounding each value of the
# transforms and of the GEMM sums by eps scales, in the worst case, with
# alpha = max_i (sum_k |A^T[i,k]| * |G|row_k sum * |B^T|row_k sum)^2 / 9 instead of 1 for the
# direct sum: 64/9 for F(2x2) and 484/9 for F(4x4) with the points 0, +-2, +-1/2 (2304/9 with
# Lavin's 0, +-1, +-2); c is alpha rounded up (docs/kernels.md).
BOUND_FACTOR = {"winograd": 8.0, "winograd4": 54.0}
ALGORITHMS = list(BOUND_FACTOR)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("n,c,h,w,o,padding", [
    (1, 16, 13, 11, 24, 1), (2, 32, 8, 8, 33, 1), (1, 3, 7, 8, 17, 0), (1, 20, 5, 6, 8, ((0, 2), (1, 0))),
    (1, 128, 14, 14, 128, 1), (1, 8, 35, 35, 16, 1),
    # On AVX-512 the GEMMs read V in place through the pixels kernel from 256 channels (128 on
    # small images): 16 tiles per image, and a last partial panel of tiles and of channels.
    (1, 256, 14, 14, 256, 1), (1, 256, 7, 7, 160, 1), (1, 256, 13, 11, 136, 1)])
def test_error_within_the_stated_bound(algorithm, isa, n, c, h, w, o, padding, rng):
    x, wt, b = ref.rand(rng, (n, c, h, w)), ref.rand(rng, (o, c, 3, 3)), ref.rand(rng, (o,))
    with isa_cap(isa):
        y = F.conv2d(x, wt, b, padding=padding, algorithm=algorithm)
    expected = ref.conv2d(x, wt, b, padding=padding)
    ref.assert_close(y, expected, 9 * c, ref.scale_of(x, wt), c=BOUND_FACTOR[algorithm])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("n,c,h,w,o,kernel,stride,padding", [
    (1, 8, 13, 11, 12, (5, 5), 1, 2), (2, 5, 9, 10, 7, (7, 7), 1, 3),
    (1, 6, 12, 9, 9, (5, 3), 1, (2, 1)), (1, 4, 10, 10, 6, (4, 4), 1, 0),
    (1, 3, 11, 12, 5, (3, 6), 1, ((1, 0), (2, 3))),
    # AlexNet's second layer: 4 x 64 GEMM channels, read in place on AVX-512.
    (1, 64, 27, 27, 192, (5, 5), 1, 2),
    # Strides: AlexNet's stem (16 groups of 3 channels), 7x7 and 3x3 at stride 2, mixed.
    (2, 3, 71, 67, 16, (11, 11), 4, 2), (1, 5, 21, 20, 7, (7, 7), 2, 3),
    (1, 4, 17, 18, 6, (3, 3), 2, 1), (1, 6, 22, 19, 9, (5, 3), (2, 1), (2, 1)),
    (1, 3, 19, 19, 5, (5, 5), 3, 0)])
def test_other_kernels_and_strides_as_groups(algorithm, isa, n, c, h, w, o, kernel, stride,
                                              padding, rng):
    """Each stride phase's taps go in 3x3 sub-kernels (zero taps past the kernel's edge), each
    reading the input from its first tap on; the GEMMs sum them as extra input channels, so the
    bound's K counts the groups' taps."""
    x, wt, b = ref.rand(rng, (n, c, h, w)), ref.rand(rng, (o, c) + kernel), ref.rand(rng, (o,))
    with isa_cap(isa):
        y = F.conv2d(x, wt, b, stride=stride, padding=padding, algorithm=algorithm)
    stride = (stride, stride) if isinstance(stride, int) else stride
    groups = F._winograd_groups(kernel, stride)
    ref.assert_close(y, ref.conv2d(x, wt, b, stride=stride, padding=padding), 9 * c * groups,
                     ref.scale_of(x, wt), c=BOUND_FACTOR[algorithm])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("padding", [0, 1])
def test_every_small_output_size(algorithm, isa, padding, rng):
    """Outputs 1..9 in each direction: partial tiles at the bottom and right edges."""
    wt = ref.rand(rng, (9, 5, 3, 3))
    for out_h in range(1, 10):
        for out_w in (1, 2, 3, 4, 5, 6, 7, 8, 9)[out_h % 3::3]:
            x = ref.rand(rng, (1, 5, out_h + 2 - 2 * padding, out_w + 2 - 2 * padding))
            with isa_cap(isa):
                y = F.conv2d(x, wt, padding=padding, algorithm=algorithm)
            ref.assert_close(y, ref.conv2d(x, wt, padding=padding), 9 * 5, ref.scale_of(x, wt),
                             c=BOUND_FACTOR[algorithm], err_msg=f"output {out_h}x{out_w}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("activation", ["relu", "relu6", "tanh", "sigmoid"])
def test_fused_activation_and_residual(algorithm, activation, rng):
    x, wt, b = ref.rand(rng, (2, 16, 9, 10)), ref.rand(rng, (24, 16, 3, 3)), ref.rand(rng, (24,))
    residual = ref.rand(rng, (2, 24, 9, 10))
    conv = F.PreparedConv2d(wt, b, (16, 9, 10), padding=1, activation=activation,
                            algorithm=algorithm)
    expected = ref.activate(ref.conv2d(x, wt, b, padding=1) + residual, activation)
    ref.assert_close(conv(x, residual=residual), expected, 9 * 16, 4.0, c=BOUND_FACTOR[algorithm])
    in_place = residual.copy()
    conv(x, residual=in_place, out=in_place)
    ref.assert_close(in_place, expected, 9 * 16, 4.0, c=BOUND_FACTOR[algorithm])


@pytest.mark.parametrize("c,o,size", [(64, 64, 172), (64, 512, 64)])
def test_several_chunks_of_tiles_against_torch(c, o, size, rng):
    """F(4x4)'s tiles in several chunks, some splitting a row of tiles: 64 -> 64 channels at
    172 x 172 (U of 0.6 MiB: 1849 tiles in chunks of NR), 64 -> 512 at 64 x 64 (U of 4.5 MiB:
    256 tiles in chunks of 224)."""
    x, wt, b = ref.rand(rng, (2, c, size, size)), ref.rand(rng, (o, c, 3, 3)), ref.rand(rng, (o,))
    y = F.conv2d(x, wt, b, padding=1, algorithm="winograd4")
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(),
                                          torch.from_numpy(b).double(), padding=1).numpy()
    ref.assert_close(y, expected, 9 * c, ref.scale_of(x, wt), c=BOUND_FACTOR["winograd4"])


@pytest.mark.parametrize("algorithm,c,size,o", [
    ("winograd", 1024, 7, 32), ("winograd4", 512, 14, 32),
    ("winograd", 256, 7, 160), ("winograd4", 256, 14, 128)])
def test_images_side_by_side_in_a_chunk(algorithm, c, size, o, rng):
    """Small images go several to a chunk of tiles (16 tiles each here: 16 images per F(2x2)
    chunk of 256 columns, 14 per F(4x4) chunk of 224 with 32 output channels): batches spanning
    two chunks, on one and two threads, give each image its result alone bit for bit, with a
    residual written in place; close to the reference. With 128 output channels and more, the
    GEMMs run transposed on AVX-512 (V read in place)."""
    wt, b = ref.rand(rng, (o, c, 3, 3)), ref.rand(rng, (o,))
    conv = F.PreparedConv2d(wt, b, (c, size, size), padding=1, activation="relu",
                            algorithm=algorithm)
    x, residual = ref.rand(rng, (17, c, size, size)), ref.rand(rng, (17, o, size, size))
    alone = np.concatenate([conv(x[i:i + 1], residual=residual[i:i + 1]) for i in range(17)])
    previous = fastconv.get_num_threads()
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            for batch in (3, 17):
                out = residual[:batch].copy()
                conv(x[:batch], residual=out, out=out)
                np.testing.assert_array_equal(out, alone[:batch], err_msg=f"{threads} {batch}")
    finally:
        fastconv.set_num_threads(previous)
    some = [0, 15, 16]
    expected = ref.activate(ref.conv2d(x[some], wt, b, padding=1) + residual[some], "relu")
    ref.assert_close(alone[some], expected, 9 * c, ref.scale_of(x, wt) + 2.0,
                     c=BOUND_FACTOR[algorithm])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kernel", [3, 5])
def test_thread_count_does_not_change_the_result(algorithm, kernel, rng):
    """46 x 45 outputs: 144 F(4x4) tiles or 529 F(2x2), several chunks of NR tiles."""
    x, wt = ref.rand(rng, (2, 64, 46, 45)), ref.rand(rng, (96, 64, kernel, kernel))
    conv = F.PreparedConv2d(wt, ref.rand(rng, (96,)), (64, 46, 45), padding=kernel // 2,
                            activation="relu", algorithm=algorithm)
    previous = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        one = conv(x)
        fastconv.set_num_threads(2)
        two = conv(x)
    finally:
        fastconv.set_num_threads(previous)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("in_weights", [False, True])
def test_winograd4_non_finite(special, in_weights, rng):
    """F(4x4)'s transforms mix the 6 x 6 inputs of a tile: a non-finite input or weight makes
    non-finite every output the reference has non-finite, and possibly the other outputs of
    those 4 x 4 tiles, never any other output."""
    for _ in range(10):
        x, w = ref.rand(rng, (1, 16, 10, 11)), ref.rand(rng, (16, 16, 3, 3))
        target = w if in_weights else x[0]
        for _ in range(rng.integers(1, 4)):
            target[tuple(rng.integers(n) for n in target.shape)] = special
        y = F.conv2d(x, w, padding=1, algorithm="winograd4")
        with np.errstate(all="ignore"):
            expected = ref.conv2d(x, w, padding=1)
        bad, bad_expected = ~np.isfinite(y), ~np.isfinite(expected)
        assert np.all(bad[bad_expected])

        def tiles(mask):
            padded = np.zeros(mask.shape[:2] + (12, 12), bool)
            padded[:, :, :10, :11] = mask
            return padded.reshape(mask.shape[:2] + (3, 4, 3, 4)).any(axis=(3, 5))

        assert np.array_equal(tiles(bad), tiles(bad_expected))
        finite = ~bad
        ref.assert_close(y[finite], expected[finite], 9 * 16, 1.0, c=BOUND_FACTOR["winograd4"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("special", [np.nan, np.inf])
def test_larger_kernel_non_finite(algorithm, special, rng):
    """A 5x5 kernel padded to 6x6: a non-finite input is non-finite wherever the reference is,
    and beyond that only within the output tiles that reach it through the padded 6x6 window;
    the other outputs stay close to the reference."""
    m = 4 if algorithm == "winograd4" else 2
    for _ in range(5):
        x, w = ref.rand(rng, (1, 6, 13, 12)), ref.rand(rng, (5, 6, 5, 5))
        r, c = rng.integers(13), rng.integers(12)
        x[0, rng.integers(6), r, c] = special
        y = F.conv2d(x, w, padding=2, algorithm=algorithm)
        with np.errstate(all="ignore"):
            expected = ref.conv2d(x, w, padding=2)
        bad, bad_expected = ~np.isfinite(y), ~np.isfinite(expected)
        assert np.all(bad[bad_expected])
        # Padded input row r + 2 is read by the tiles whose 6x6-kernel windows cover it.
        reach = np.zeros(y.shape[2:], bool)
        for ty in range(-(-13 // m)):
            for tx in range(-(-12 // m)):
                if m * ty <= r + 2 < m * ty + m + 5 and m * tx <= c + 2 < m * tx + m + 5:
                    reach[m * ty:m * ty + m, m * tx:m * tx + m] = True
        assert not np.any(bad[:, :, ~reach])
        ref.assert_close(y[:, :, ~reach], expected[:, :, ~reach], 9 * 6 * 4, 1.0,
                         c=BOUND_FACTOR[algorithm])


def test_only_eligible_convolutions_take_winograd():
    w = np.zeros((8, 4, 3, 3), np.float32)
    for algorithm in ALGORITHMS:
        for bad in (dict(dilation=2), dict(groups=2), dict(kernel=(3, 2))):
            weight = np.zeros((8, 2, 3, 3), np.float32) if bad.get("groups") else w
            weight = np.zeros((8, 4) + bad.pop("kernel"), np.float32) if "kernel" in bad else weight
            with pytest.raises(ValueError, match=algorithm):
                F.conv2d(np.zeros((1, 4, 8, 8), np.float32), weight, algorithm=algorithm, **bad)

    def chosen(channels, size, kernel=3, out=None, **kwargs):
        weight = np.zeros((out or channels, channels, kernel, kernel))
        return F.PreparedConv2d(weight, None, (channels, size, size), padding=kernel // 2,
                                **kwargs).algorithm

    for isa in ISA_LEVELS:
        with isa_cap(isa):
            assert chosen(128, 8, winograd=True) == "winograd"  # F(4x4) would have 4 tiles
            assert chosen(128, 7, winograd=True) == "winograd"
            assert chosen(128, 56, winograd=True) == "winograd4"
    assert chosen(32, 56, winograd=True) == "implicit"  # too few channels
    assert chosen(128, 6, winograd=True) == "implicit"  # too small an output
    for isa in ("avx512", "avx2"):  # F(4x4)'s 16 tiles fill one vector of columns
        with isa_cap(isa):
            assert chosen(256, 14, winograd=True) == "winograd4"
    assert chosen(128, 56) == "implicit"  # only when asked for
    # 5x5: four 3x3 sub-kernels, so 64 GEMM channels from 16 input channels.
    assert chosen(64, 27, kernel=5, out=192, winograd=True) == "winograd4"  # AlexNet's conv2
    assert chosen(32, 28, kernel=5, out=96, winograd=True) == "winograd4"
    assert chosen(16, 28, kernel=5, out=32, winograd=True) == "implicit"  # too few out channels

    def stem(kernel, stride, size):
        weight = np.zeros((64, 3, kernel, kernel))
        return F.PreparedConv2d(weight, None, (3, size, size), stride=stride, padding=kernel // 2,
                                winograd=True).algorithm

    assert stem(11, 4, 224) == "winograd4"  # AlexNet: 36 multiplications against 121
    assert stem(7, 2, 224) == "implicit"  # ResNet: 36 against 49
    assert stem(3, 2, 224) == "implicit"


def test_plans_follow_the_setting():
    """28 x 28 outputs fill F(4x4)'s GEMMs on every ISA: plans take it, or F(2x2) when forced,
    and neither when Winograd is off."""
    x = fastconv.Input((128, 28, 28))
    conv = L.Conv2D(128, 3, padding=1, name="conv")
    y = L.Add(activation="relu")([L.BatchNormalization()(conv(x)), x])
    model = fastconv.Model(x, y, seed=0)
    data = np.random.default_rng(0).standard_normal((2, 128, 28, 28)).astype(np.float32)
    reference = model._run_layers([data])[0]
    previous = winograd_enabled()
    try:
        set_winograd(True)
        for algorithm in ("winograd4", "winograd"):
            fast = model.predict(data)
            assert f"conv2d[{algorithm}] conv" in model.plan_summary(print_fn=None)
            assert np.abs(fast - reference).max() <= 1e-4 * np.abs(reference).max()
            model.set_algorithm("conv", "winograd")
        model.set_algorithm("conv", "auto")
        set_winograd(False)
        plain = model.predict(data)
        assert "conv2d[implicit] conv" in model.plan_summary(print_fn=None)
    finally:
        set_winograd(previous)
    assert np.abs(plain - reference).max() <= 1e-5 * np.abs(reference).max()
