import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from reference import ACTIVATIONS, activate, assert_close, conv2d as ref_conv2d, rand, scale_of
from threads import results_on_threads

ALGOS = ["direct", "im2col", "implicit", "auto"]


def check_conv(x, w, bias=None, algorithm="auto", data_format="channels_first", **kw):
    y = F.conv2d(x, w, bias=bias, algorithm=algorithm, data_format=data_format, **kw)
    ref = ref_conv2d(x, w, bias, data_format=data_format, **kw)
    if data_format == "channels_first":
        k = w.shape[1] * w.shape[2] * w.shape[3]
    else:
        k = w.shape[0] * w.shape[1] * w.shape[2]
    scale = scale_of(x, w) + (scale_of(bias) if bias is not None else 0.0)
    assert_close(y, ref, k + 1, scale, err_msg=f"algorithm={algorithm} {data_format} {kw}")
    return y


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, "same"), (1, "same_lower"), (3, 1)])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 11])
def test_kernel_sizes(rng, k, stride, padding, algorithm):
    x = rand(rng, (2, 3, 13, 17))
    w = rand(rng, (5, 3, k, k))
    check_conv(x, w, rand(rng, (5,)), algorithm, stride=stride, padding=padding)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("dilation", [1, 2, (1, 3), (2, 1)])
@pytest.mark.parametrize("stride", [1, 2, 3, (1, 2), (2, 1)])
def test_stride_dilation(rng, stride, dilation, algorithm):
    x = rand(rng, (1, 4, 15, 16))
    w = rand(rng, (6, 4, 3, 2))
    check_conv(x, w, None, algorithm, stride=stride, dilation=dilation, padding=1)


PADDINGS = [0, 1, 2, (1, 2), (0, 3), ((0, 1), (2, 0)), ((2, 1), (0, 3)), "valid", "same",
            "same_upper", "same_lower"]


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4)])
@pytest.mark.parametrize("stride", [1, 2, (2, 3)])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_padding_forms(rng, padding, stride, kernel, algorithm):
    x = rand(rng, (2, 3, 10, 11))
    w = rand(rng, (4, 3) + kernel)
    check_conv(x, w, rand(rng, (4,)), algorithm, stride=stride, padding=padding, dilation=(1, 2))


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, "same"), (5, 1, 2), (1, 1, 0), (2, 2, 0)])
@pytest.mark.parametrize("C,O,groups", [(8, 8, 2), (8, 12, 4), (4, 6, 2), (8, 4, 4), (6, 6, 6), (6, 12, 6),
                                        (16, 16, 16), (5, 10, 5), (32, 64, 32), (3, 3, 3), (1, 6, 1)])
def test_groups_and_depthwise(rng, C, O, groups, k, stride, padding, algorithm):
    x = rand(rng, (2, C, 9, 11))
    w = rand(rng, (O, C // groups, k, k))
    check_conv(x, w, rand(rng, (O,)), algorithm, stride=stride, padding=padding, groups=groups)


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16), (3, 11)])
@pytest.mark.parametrize("C,O,groups", [(1, 1, 1), (2, 6, 1), (2, 6, 2), (4, 14, 1), (4, 14, 2), (16, 32, 1),
                                        (16, 32, 2), (258, 34, 1), (258, 34, 2), (300, 10, 2), (1030, 4, 1)])
def test_gemm_algorithm_1x1(rng, C, O, groups, hw):
    x = rand(rng, (2, C) + hw)
    w = rand(rng, (O, C // groups, 1, 1))
    for algorithm in ("gemm", "auto", "im2col", "implicit", "direct"):
        check_conv(x, w, rand(rng, (O,)), algorithm, groups=groups)


CL_CASES = [dict(), dict(stride=2, padding="same"), dict(padding=((1, 0), (2, 1)), dilation=(2, 1)),
            dict(groups=2), dict(groups=6, padding=1), dict(stride=(1, 2), padding="same_lower")]


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("kw", CL_CASES, ids=str)
def test_channels_last_equivalence(rng, kw, algorithm):
    x = rand(rng, (2, 6, 9, 10))
    w = rand(rng, (12, 6 // kw.get("groups", 1), 3, 2))
    b = rand(rng, (12,))
    y_cf = check_conv(x, w, b, algorithm, **kw)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))       # NCHW -> NHWC
    w_cl = np.ascontiguousarray(w.transpose(2, 3, 1, 0))       # OIHW -> HWIO
    y_cl = check_conv(x_cl, w_cl, b, algorithm, data_format="channels_last", **kw)
    assert y_cl.shape == y_cf.transpose(0, 2, 3, 1).shape
    assert_close(y_cl, y_cf.transpose(0, 2, 3, 1), 2 * (w.size // 12) + 2, scale_of(x, w) + 1)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_and_activation(rng, activation, with_bias, algorithm):
    x = rand(rng, (2, 8, 9, 9), -2, 2)
    w = rand(rng, (10, 8, 3, 3), -2, 2)           # pre-activations well beyond +-6
    b = rand(rng, (10,), -3, 3) if with_bias else None
    check_conv(x, w, b, algorithm, padding=1, activation=activation)
    # depthwise path too
    wd = rand(rng, (8, 1, 3, 3), -3, 3)
    check_conv(x, wd, b[:8] if with_bias else None, algorithm, padding=1, groups=8, activation=activation)


@pytest.mark.parametrize("algorithm", ALGOS + ["gemm"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_empty_batch(rng, algorithm, data_format):
    k = 1 if algorithm == "gemm" else 3
    if data_format == "channels_first":
        x, w, expected = np.zeros((0, 4, 7, 8), np.float32), rand(rng, (5, 4, k, k)), (0, 5, 7 - k + 1, 8 - k + 1)
    else:
        x, w, expected = np.zeros((0, 7, 8, 4), np.float32), rand(rng, (k, k, 4, 5)), (0, 7 - k + 1, 8 - k + 1, 5)
    y = F.conv2d(x, w, bias=rand(rng, (5,)), algorithm=algorithm, data_format=data_format)
    assert y.shape == expected and y.dtype == np.float32


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("n", [1, 3])
def test_batch_sizes(rng, n, algorithm):
    x = rand(rng, (n, 5, 8, 7))
    check_conv(x, rand(rng, (7, 5, 3, 3)), rand(rng, (7,)), algorithm, padding="same")


# (input hw, kernel, stride, padding) -> output sizes around 1 and primes
OUT_CASES = [((3, 3), 3, 1, 0),        # 1x1
             ((5, 5), 3, 3, 0),        # 1x1 via stride
             ((1, 1), 1, 1, 0),        # 1x1 input
             ((1, 9), (1, 3), 1, 0),   # 1x7
             ((4, 2), 3, 1, (0, 1)),   # 2x2
             ((13, 17), 3, 1, 1),      # 13x17
             ((29, 31), 3, 1, "same"),  # 29x31
             ((57, 61), 3, 2, 1)]      # 29x31 via stride


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("hw,k,stride,padding", OUT_CASES, ids=str)
def test_output_sizes(rng, hw, k, stride, padding, algorithm):
    x = rand(rng, (2, 3) + hw)
    kh, kw = (k, k) if isinstance(k, int) else k
    check_conv(x, rand(rng, (4, 3, kh, kw)), rand(rng, (4,)), algorithm, stride=stride, padding=padding)


# output spatial sizes straddling 16/32/64 multiples of N = OH*OW
SPATIAL = [(4, 4), (3, 5), (17, 1), (4, 8), (3, 11), (8, 8), (5, 13), (7, 9), (1, 31), (2, 16)]


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("O", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33])
def test_gemm_tile_edges(rng, O, algorithm):
    for oh, ow in SPATIAL:
        x = rand(rng, (1, 3, oh + 2, ow + 2))
        w = rand(rng, (O, 3, 3, 3))
        y = check_conv(x, w, rand(rng, (O,)), algorithm)
        assert y.shape == (1, O, oh, ow)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("C,k,O,stride,groups", [(128, 3, 40, 1, 1), (120, 3, 17, 2, 1), (64, 5, 9, 1, 1),
                                                 (256, 3, 8, 1, 2), (1030, 1, 13, 1, 1)])
def test_large_reduction(rng, C, k, O, stride, groups, algorithm):
    x = rand(rng, (2, C, 12, 11))
    w = rand(rng, (O, C // groups, k, k))
    check_conv(x, w, rand(rng, (O,)), algorithm, stride=stride, padding=k // 2, groups=groups)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding="same", stride=2), dict(dilation=2, padding=2),
                                dict(groups=3, padding=1), dict(groups=3, stride=(1, 2))], ids=str)
def test_nan_inf_propagation(rng, kw, algorithm):
    x = rand(rng, (2, 3, 9, 10))
    x[0, 1, 4, 5] = np.nan
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 8, 9] = np.inf
    x[1, 0, 8, 0] = -np.inf
    x[1, 1, 2, 2] = np.inf
    w = rand(rng, (6, 3 // kw.get("groups", 1), 3, 3))
    w[np.abs(w) < 0.05] = 0.5                        # no zero weights
    ref = ref_conv2d(x, w, **kw)
    assert np.isnan(ref).any() and np.isinf(ref).any() and np.isfinite(ref).any()
    y = F.conv2d(x, w, algorithm=algorithm, **kw)
    # assert_close checks the NaN mask and the inf mask/sign exactly
    assert_close(y, ref, w[0].size, scale_of(x, w))


@pytest.mark.parametrize("algorithm", ["gemm", "auto", "im2col", "implicit"])
def test_nan_propagation_1x1(rng, algorithm):
    x = rand(rng, (1, 5, 6, 7))
    x[0, 3, 2, 4] = np.nan
    x[0, 0, 5, 6] = np.inf
    w = rand(rng, (4, 5, 1, 1)) + 2.0
    ref = ref_conv2d(x, w)
    y = F.conv2d(x, w, algorithm=algorithm)
    assert_close(y, ref, 5, scale_of(x, w))


# 1x1 GEMM edges: output channels around MR = 4/6/8 and the in-place limits (4 row panels, 128
# channels on AVX-512), pixel counts around NR = 8/16/32, the 16-column edge piece and the
# narrow edge of 1-8 columns past 32 (33, 36, 40, 65), K around the K block (256); plus the
# residual, which makes the kernels load C (masked on edge tiles). With AVX-512, 64 channels and
# more on 1x1, 1x7 and 7x7 images run transposed (pixels as GEMM rows).
@pytest.mark.parametrize("O", [1, 5, 7, 8, 9, 16, 23, 24, 25, 31, 32, 33, 40, 64, 72, 128, 129])
@pytest.mark.parametrize("C", [3, 255, 257])
def test_gemm_1x1_edges_and_residual(rng, O, C):
    for h, w in [(1, 1), (1, 7), (3, 3), (1, 16), (1, 17), (5, 5), (3, 11), (7, 7), (5, 13),
                 (4, 16), (6, 6), (2, 20)]:
        x = rand(rng, (1, C, h, w))
        weight = rand(rng, (O, C, 1, 1))
        bias = rand(rng, (O,))
        residual = rand(rng, (1, O, h, w))
        conv = F.PreparedConv2d(weight, bias, (C, h, w), activation="relu", algorithm="gemm")
        y = conv(x, residual=residual)
        ref = np.maximum(ref_conv2d(x, weight, bias) + residual, 0.0)
        assert_close(y, ref, C + 2, scale_of(x, weight) + 2.0, err_msg=f"O={O} C={C} hw={(h, w)}")


# Every activation on the 1x1 paths (in place, packed, transposed on AVX-512 for 64 channels on
# 7x7), with and without a residual (added before the activation).
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("O", [16, 64])
def test_gemm_1x1_activations(rng, activation, O):
    x = rand(rng, (2, 40, 7, 7), -2, 2)
    weight = rand(rng, (O, 40, 1, 1), -2, 2)
    bias = rand(rng, (O,), -3, 3)
    residual = rand(rng, (2, O, 7, 7), -3, 3)
    conv = F.PreparedConv2d(weight, bias, (40, 7, 7), activation=activation, algorithm="gemm")
    scale = scale_of(x, weight) + 6.0
    assert_close(conv(x), activate(ref_conv2d(x, weight, bias), activation), 42, scale)
    expected = activate(ref_conv2d(x, weight, bias) + residual, activation)
    assert_close(conv(x, residual=residual), expected, 42, scale)
    in_place = residual.copy()                  # the residual is the output (as model plans do)
    assert conv(x, residual=in_place, out=in_place) is in_place
    assert_close(in_place, expected, 42, scale)


# On AVX-512 a stride-1 1x1 layer of more than 256 input and 32 output channels per group, on an
# image that does not pad better as GEMM rows (not 7x7), reads its input in place, transposed
# (src/ops/gemm.c fc_gemm_pixels): 8 pixels of a channel are a tile's rows, the last partial
# panel of 1-7 pixels is packed, K runs in blocks of 512 (520: a block of 8 after one of 512;
# 1100: three blocks), the tiles are stored transposed into the output planes. Other ISAs take
# the packed path: the same expectations. Output channels around the 16- and 32-channel tile
# edges, groups, every activation, a residual apart and in place, two threads bit-identical to
# one; images of 42 to 196 pixels, every remainder mod 8.
@pytest.mark.parametrize("C,O,groups,activation",
                         [(257, 33, 1, a) for a in ACTIVATIONS] +
                         [(520, 48, 1, "relu6"), (1100, 100, 1, "relu"), (600, 80, 2, None)])
def test_gemm_1x1_input_read_in_place(rng, C, O, groups, activation):
    for hw in [(8, 8), (9, 9), (6, 7), (10, 11), (14, 14), (3, 45), (5, 15), (11, 7)]:
        x = rand(rng, (2, C) + hw)
        weight, bias = rand(rng, (O, C // groups, 1, 1)), rand(rng, (O,))
        residual = rand(rng, (2, O) + hw)
        conv = F.PreparedConv2d(weight, bias, (C,) + hw, groups=groups, activation=activation,
                                algorithm="gemm")
        plain = ref_conv2d(x, weight, bias, groups=groups)
        check_row_stores(conv, x, residual, plain, activation, C // groups + 2,
                         scale_of(x, weight) + 2.0)


def test_gemm_1x1_input_read_in_place_keeps_nan_and_inf(rng):
    # The transposed epilogue clamps as the tile kernel does: NaN passes ReLU6, inf is clamped.
    x = rand(rng, (1, 300, 9, 9))
    x[0, 3, 2, 4] = np.nan
    x[0, 7, 8, 8] = np.inf  # the last, packed, pixel panel
    weight = rand(rng, (40, 300, 1, 1)) + 2.0
    conv = F.PreparedConv2d(weight, None, (300, 9, 9), activation="relu6", algorithm="gemm")
    ref = activate(ref_conv2d(x, weight), "relu6")
    assert np.isnan(ref).any() and (ref == 6.0).any()
    assert_close(conv(x), ref, 300, scale_of(x, weight))


def test_gemm_1x1_input_in_place_with_the_output_over_it(rng):
    # The native call with the output over its input (and the residual): the AVX-512 path that
    # reads the input in place must read a copy, or later tiles would read stored outputs as
    # input. (Model plans never ask for this, test_plan.py; the packed paths of the other ISAs
    # do not handle it for K > 256 either.)
    from fastconv.runtime import isa_cap
    C, hw = 300, (12, 12)
    weight, bias = rand(rng, (C, C, 1, 1)), rand(rng, (C,))
    x = rand(rng, (2, C) + hw)
    with isa_cap("avx512") as isa:
        if isa != "avx512":
            pytest.skip("the path is AVX-512 only")
        conv = F.PreparedConv2d(weight, bias, (C,) + hw, activation="relu", algorithm="gemm")
        expected = conv(x, residual=x)
        conv._conv.run(x, x, x)
    np.testing.assert_array_equal(x, expected)


# On AVX-512 a 1x1 layer on a small image (7x7 and others that pad better as GEMM rows) packs its
# pixels in equal panels of at most 8 (src/ops/gemm.c fc_pixels_pack_rows: 49 pixels are 7
# panels of 7, 33 are 4 of 7 and one of 5, 36 four of 8 and one of 4) and runs K in blocks of
# 512 (600: 512 + 88, 1100: three blocks, the later ones adding to the stored sums), at stride 1
# and 2 (evenly spaced rows gathered with a step); edge tiles of 16 output channels (80, 112), a
# residual apart and in place, the clamps; two threads and every image of a batch alone
# bit-identical. Other ISAs take the packed GEMM: the same expectations.
@pytest.mark.parametrize("C,O,activation", [(600, 64, "relu6"), (1100, 80, "relu"),
                                            (600, 112, None), (520, 96, "relu6")])
def test_gemm_1x1_small_images_deep_k(rng, C, O, activation):
    for hw, stride in [((7, 7), 1), ((14, 14), 2), ((1, 7), 1), ((3, 11), 1), ((6, 6), 1),
                       ((2, 20), 1), ((1, 1), 1), ((13, 13), 2)]:
        x = rand(rng, (3, C) + hw)
        weight, bias = rand(rng, (O, C, 1, 1)), rand(rng, (O,))
        conv = F.PreparedConv2d(weight, bias, (C,) + hw, stride=stride, activation=activation,
                                algorithm="gemm")
        plain = ref_conv2d(x, weight, bias, stride=stride)
        residual = rand(rng, plain.shape)
        check_row_stores(conv, x, residual, plain, activation, C + 2, scale_of(x, weight) + 2.0)
        alone = np.concatenate([conv(x[i:i + 1], residual=residual[i:i + 1]) for i in range(3)])
        np.testing.assert_array_equal(conv(x, residual=residual), alone)


# Strided 1x1 layers on the GEMM algorithm (ResNet's downsample shortcuts): the columns path
# reads a subsampled copy of each image (packed, or in place up to 32 channels, 128 on
# AVX-512); with AVX-512 a 7x7 or smaller output gathers its pixels as the rows of the
# transposed GEMM. Strides 2, 3 and (1, 2) / (2, 1), even and odd input sizes (an odd one leaves
# its last row and column out at stride 2), channel counts around MR and NR, groups, a residual,
# batches that span the transposed GEMM's images (10 7x7 images per GEMM).
@pytest.mark.parametrize("O", [5, 16, 33, 64, 72, 136])
@pytest.mark.parametrize("stride,hw", [(2, (14, 14)), (2, (13, 13)), (3, (20, 22)), ((1, 2), (7, 14)),
                                       ((2, 1), (14, 7)), (2, (56, 55)), (2, (3, 3))])
def test_gemm_1x1_strided(rng, O, stride, hw):
    C = 40
    for batch, groups in [(1, 1), (3, 1), (2, 2)]:
        x = rand(rng, (batch, C) + hw)
        weight = rand(rng, (O * groups, C // groups, 1, 1))
        bias = rand(rng, (O * groups,))
        conv = F.PreparedConv2d(weight, bias, (C,) + hw, stride=stride, groups=groups,
                                activation="relu", algorithm="gemm")
        plain = ref_conv2d(x, weight, bias, stride=stride, groups=groups)
        residual = rand(rng, plain.shape)
        msg = f"O={O} stride={stride} hw={hw} batch={batch} groups={groups}"
        assert_close(conv(x), activate(plain, "relu"), C + 1, scale_of(x, weight) + 1.0, err_msg=msg)
        assert_close(conv(x, residual=residual), activate(plain + residual, "relu"), C + 2,
                     scale_of(x, weight) + 2.0, err_msg=msg)


def test_auto_takes_gemm_for_strided_1x1_without_padding():
    w = np.ones((8, 4, 1, 1), np.float32)
    assert F.PreparedConv2d(w, None, (4, 14, 14), stride=2).algorithm == "gemm"
    assert F.PreparedConv2d(w, None, (4, 14, 14), stride=2, padding=1).algorithm == "implicit"


def test_auto_takes_im2col_only_below_k_16_at_stride_1():
    """VGG's conv1_1 (K = 27) is faster implicit; a one-channel 3x3 layer (K = 9) keeps im2col."""
    rgb, gray = np.ones((64, 3, 3, 3), np.float32), np.ones((32, 1, 3, 3), np.float32)
    assert F.PreparedConv2d(rgb, None, (3, 224, 224), padding=1).algorithm == "implicit"
    assert F.PreparedConv2d(gray, None, (1, 28, 28), padding=1).algorithm == "im2col"
    assert F.PreparedConv2d(gray, None, (1, 28, 28), stride=2, padding=1).algorithm == "implicit"


def check_batches_equal_images_alone(conv, x, residual, batches):
    """Each image of x alone, then the first `batch` images at once for each of `batches`, on one
    and two threads with the residual written in place: bit for bit the same. Returns the images'
    results alone."""
    import fastconv
    alone = np.concatenate([conv(x[i:i + 1], residual=residual[i:i + 1]) for i in range(len(x))])
    previous = fastconv.get_num_threads()
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            for batch in batches:
                out = residual[:batch].copy()
                conv(x[:batch], residual=out, out=out)
                np.testing.assert_array_equal(out, alone[:batch],
                                              err_msg=f"{threads} threads, batch {batch}")
    finally:
        fastconv.set_num_threads(previous)
    return alone


# The transposed 1x1 path folds up to 10 7x7 images into one GEMM (on AVX-512 it runs image by
# image through the pixels kernel instead, storing into the output planes): batches 1 to 23
# (three GEMMs), on one and two threads (whole images per thread, or the GEMMs split), all
# bit-identical to each image alone and close to the reference, with a residual written in place.
@pytest.mark.parametrize("stride", [1, 2])
def test_gemm_1x1_images_folded(rng, stride):
    C, O, hw = 48, 72, 7 * stride
    weight, bias = rand(rng, (O, C, 1, 1)), rand(rng, (O,))
    conv = F.PreparedConv2d(weight, bias, (C, hw, hw), stride=stride, activation="relu",
                            algorithm="gemm")
    x = rand(rng, (23, C, hw, hw))
    residual = rand(rng, (23, O, 7, 7))
    alone = check_batches_equal_images_alone(conv, x, residual, (2, 9, 10, 11, 23))
    expected = activate(ref_conv2d(x, weight, bias, stride=stride) + residual, "relu")
    assert_close(alone, expected, C + 2, scale_of(x, weight) + 2.0)


# With AVX-512 the implicit GEMM of these layers runs transposed (their run of output columns
# pads worse to NR = 32 columns than their pixels to MR = 8 rows, 128 or 160 channels per group)
# and folds up to 512 rows of images (10 images of 7 x 7 pixels) into one GEMM; other ISAs take
# the columns path. Kernel, stride, padding, input size: 7x7 outputs at stride 2 and 3, a 2x2
# and a 3x1 kernel, a 4x4 and a 1x1 output. Batches 1 to 19 on one and two threads must give
# each image's result alone bit for bit, close to the reference, with a residual (also written
# in place) and groups.
@pytest.mark.parametrize("kernel,stride,padding,size", [
    ((3, 3), 2, 1, 14), ((3, 3), 2, 1, 13), ((3, 3), 3, 1, 21), ((2, 2), 2, 0, 14),
    ((3, 1), 2, (1, 0), 13), ((3, 3), 2, 1, 8), ((3, 3), 2, 1, 2)])
@pytest.mark.parametrize("O,groups", [(128, 1), (160, 1), (256, 2)])
def test_implicit_transposed(rng, kernel, stride, padding, size, O, groups):
    C = 20
    weight, bias = rand(rng, (O, C // groups) + kernel), rand(rng, (O,))
    conv = F.PreparedConv2d(weight, bias, (C, size, size), stride=stride, padding=padding,
                            groups=groups, activation="relu", algorithm="implicit")
    x = rand(rng, (19, C, size, size))
    residual = rand(rng, (19,) + conv.output_shape)
    alone = check_batches_equal_images_alone(conv, x, residual, (2, 9, 10, 19))
    plain = ref_conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    k = C // groups * kernel[0] * kernel[1]
    assert_close(conv(x), activate(plain, "relu"), k + 1, scale_of(x, weight) + 1.0)
    assert_close(alone, activate(plain + residual, "relu"), k + 2, scale_of(x, weight) + 2.0)


# With AVX-512 the transposed implicit GEMM packs its A (the pixels' 3x3 taps over all input
# channels) a chunk of K at a time, each chunk's GEMM adding to the previous ones: K = 288 * 9 =
# 2592 spans 2 to 6 chunks here (7x7 and 14x14 outputs of a stride-2 layer, several images per
# GEMM). Every image must equal its result alone bit for bit on one and two threads, and the
# reference, with a residual too; other ISAs run the columns path against the same checks.
@pytest.mark.parametrize("size", [14, 28])
def test_implicit_transposed_in_chunks_of_k(rng, size):
    C, O = 288, 128
    weight, bias = rand(rng, (O, C, 3, 3)), rand(rng, (O,))
    conv = F.PreparedConv2d(weight, bias, (C, size, size), stride=2, padding=1,
                            activation="relu", algorithm="implicit")
    x = rand(rng, (3, C, size, size))
    residual = rand(rng, (3,) + conv.output_shape)
    alone = check_batches_equal_images_alone(conv, x, residual, (3,))
    plain = ref_conv2d(x, weight, bias, stride=2, padding=1)
    assert_close(conv(x), activate(plain, "relu"), 9 * C + 1, scale_of(x, weight) + 1.0)
    assert_close(alone, activate(plain + residual, "relu"), 9 * C + 2, scale_of(x, weight) + 2.0)


@pytest.mark.parametrize("algorithm,kernel,channels,size", [
    ("implicit", 3, 16, 9), ("im2col", 3, 16, 9), ("gemm", 1, 40, 7), ("gemm", 1, 16, 12),
    ("winograd", 3, 64, 10), ("winograd4", 3, 64, 12), ("direct", 3, 4, 9)])
@pytest.mark.parametrize("batch", [2, 5, 8])
def test_a_batch_split_across_threads_gives_every_image_its_one_thread_result(
        rng, algorithm, kernel, channels, size, batch):
    """On two threads a batch of 2 or 8 runs whole images per thread (src/ops/conv2d.c
    run_images), a batch of 5 splits each image's work: both must equal one thread, bit for bit,
    and the reference; with a residual too."""
    import fastconv
    groups = channels if algorithm == "direct" else 1
    x = rand(rng, (batch, channels, size, size))
    w, bias = rand(rng, (channels, channels // groups, kernel, kernel)), rand(rng, (channels,))
    residual = rand(rng, (batch, channels, size, size))
    conv = F.PreparedConv2d(w, bias, x.shape[1:], padding=kernel // 2, groups=groups,
                            activation="relu", algorithm=algorithm)
    results, previous = [], fastconv.get_num_threads()
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            results.append(conv(x, residual=residual))
    finally:
        fastconv.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])
    expected = activate(ref_conv2d(x, w, bias, padding=kernel // 2, groups=groups) + residual, "relu")
    assert_close(results[1], expected, channels // groups * kernel * kernel + 2,
                 scale_of(x, w) + scale_of(bias) + scale_of(residual), c=60.0)


def check_row_stores(conv, x, residual, plain, activation, k, scale):
    """conv(x) without and with a residual (apart and in place) against the float64 `plain`
    convolution, and bit-identical on one and two threads."""
    results = results_on_threads(lambda: (conv(x), conv(x, residual=residual)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert_close(results[0][0], activate(plain, activation), k, scale)
    assert_close(results[0][1], activate(plain + residual, activation), k, scale)
    in_place = residual.copy()
    assert conv(x, residual=in_place, out=in_place) is in_place
    assert_close(in_place, activate(plain + residual, activation), k, scale)


# The implicit GEMM stores wide outputs (64 columns and more) straight into the output rows, its
# tiles cut at every row end (src/ops/conv2d.c implicit_rows): output widths 64, 80 (an edge
# tile of 16 columns) and 112 (stride 2), channels around the tile rows, groups, every
# activation, a residual apart and in place; two threads bit-identical to one.
@pytest.mark.parametrize("activation", ["relu6", "tanh", None])
@pytest.mark.parametrize("hw,stride,O,groups", [((3, 64), 1, 5, 1), ((4, 80), 1, 33, 1),
                                                ((8, 224), 2, 16, 1), ((4, 80), 1, 10, 2)])
def test_implicit_wide_rows(rng, hw, stride, O, groups, activation):
    C = 6
    x = rand(rng, (2, C) + hw)
    w, bias = rand(rng, (O, C // groups, 3, 3)), rand(rng, (O,))
    conv = F.PreparedConv2d(w, bias, x.shape[1:], stride, 1, groups=groups,
                            activation=activation, algorithm="implicit")
    residual = rand(rng, (2,) + conv.output_shape)
    plain = ref_conv2d(x, w, bias, stride=stride, padding=1, groups=groups)
    k, scale = C // groups * 9 + 2, scale_of(x, w) + scale_of(bias) + scale_of(residual)
    check_row_stores(conv, x, residual, plain, activation, k, scale)


# Narrow outputs take the same row stores when the rows need no more tiles than the flat run and
# K is small (implicit_rows): LeNet-5's conv1 geometry, 5x5 without padding on 32 columns (28
# outputs per row, on every ISA as many tiles as the run), one and two input channels, output
# channels below and past a tile's rows; a residual apart and in place; two threads bit-identical.
@pytest.mark.parametrize("C,O,activation", [(1, 6, "relu"), (2, 11, "tanh")])
def test_implicit_narrow_rows(rng, C, O, activation):
    x = rand(rng, (3, C, 30, 32))
    w, bias = rand(rng, (O, C, 5, 5)), rand(rng, (O,))
    conv = F.PreparedConv2d(w, bias, x.shape[1:], 1, 0, activation=activation,
                            algorithm="implicit")
    residual = rand(rng, (3,) + conv.output_shape)
    plain = ref_conv2d(x, w, bias)
    k, scale = C * 25 + 2, scale_of(x, w) + scale_of(bias) + scale_of(residual)
    check_row_stores(conv, x, residual, plain, activation, k, scale)


# Stems (at most 4 input channels, groups of one) run their implicit GEMM in bands of output
# rows, each laid out on its own (src/ops/conv2d.c conv_implicit_bands): wide outputs in bands of
# whole rows stored in place (40 rows of 128: 5 bands), narrow ones in bands of run panels cut
# anywhere in a row (AlexNet's 11x11 stride-4 stem on 131 x 131: 34 panels of the 34-column
# run, bands of 16), dilation, top padding under a band at stride 4; and a bottom padding
# taller than the kernel, which keeps the whole-image path. A residual apart and in place, two
# threads bit-identical to one, every image equal to its result alone.
@pytest.mark.parametrize("C,O,hw,k,stride,padding,dilation,activation", [
    (3, 32, (40, 128), 3, 1, 1, 1, "relu6"), (3, 64, (131, 131), 11, 4, 2, 1, "relu"),
    (1, 6, (70, 70), 5, 1, 0, 1, "tanh"), (4, 40, (33, 150), 3, 2, 2, 2, None),
    (2, 16, (12, 70), 3, 1, ((0, 5), (1, 1)), 1, "relu")])
def test_implicit_stem_bands(rng, C, O, hw, k, stride, padding, dilation, activation):
    x = rand(rng, (3, C) + hw)
    w, bias = rand(rng, (O, C, k, k)), rand(rng, (O,))
    conv = F.PreparedConv2d(w, bias, x.shape[1:], stride, padding, dilation,
                            activation=activation, algorithm="implicit")
    residual = rand(rng, (3,) + conv.output_shape)
    plain = ref_conv2d(x, w, bias, stride=stride, padding=padding, dilation=dilation)
    scale = scale_of(x, w) + scale_of(bias) + scale_of(residual)
    check_row_stores(conv, x, residual, plain, activation, C * k * k + 2, scale)
    alone = np.concatenate([conv(x[i:i + 1], residual=residual[i:i + 1]) for i in range(3)])
    np.testing.assert_array_equal(conv(x, residual=residual), alone)
    previous = fastconv.get_num_threads()
    try:  # the threads steal each other's last bands: whoever computes a band, the same result
        fastconv.set_num_threads(1)
        one = conv(x[:1], residual=residual[:1])
        for threads in (2, 3, 4, 2, 3, 4):
            fastconv.set_num_threads(threads)
            np.testing.assert_array_equal(conv(x[:1], residual=residual[:1]), one)
    finally:
        fastconv.set_num_threads(previous)


# Two 1x1 layers summed into one output (ResNet's bottleneck conv3 with its projection shortcut,
# src/ops/conv2d.c fc_conv2d_sum_packed): one GEMM over both inputs' channels, the second input
# subsampled at its stride. Against two float64 convolutions: K blocks split across the inputs
# (64 + 300 channels: the first block holds both), strides 1 to 3, edge tiles, every
# activation; images split across threads or run alone bit-identical to one thread.
@pytest.mark.parametrize("ca,cb,O,hw,stride", [
    (64, 64, 40, (14, 14), 1), (64, 300, 17, (7, 9), 2), (5, 3, 7, (5, 6), 3), (1, 1, 1, (1, 1), 2),
    (200, 120, 33, (6, 6), 2)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv_sum_of_two_pointwise_layers(rng, ca, cb, O, hw, stride, activation):
    from fastconv import _core
    h, w = hw
    xa = rand(rng, (3, ca, h, w))
    xb = rand(rng, (3, cb, (h - 1) * stride + 1 + stride // 2, (w - 1) * stride + 1))
    wa, wb, bias = rand(rng, (O, ca, 1, 1)), rand(rng, (O, cb, 1, 1)), rand(rng, (O,))
    plan = _core.ConvSumPlan(wa, wb, bias, xa.shape[1:], xb.shape[1:], stride,
                             F._ACTIVATIONS[activation])

    def run(xa=xa, xb=xb):
        y = np.empty((xa.shape[0], O, h, w), np.float32)
        plan.run(xa, xb, y)
        return y

    ref = activate(ref_conv2d(xa, wa, bias) + ref_conv2d(xb, wb, stride=stride), activation)
    assert_close(run(), ref, ca + cb + 1, scale_of(xa, wa) + scale_of(xb, wb) + scale_of(bias))
    one, two = results_on_threads(run)
    np.testing.assert_array_equal(one, two)
    alone = np.concatenate([run(xa[i:i + 1], xb[i:i + 1]) for i in range(3)])
    np.testing.assert_array_equal(one, alone)


def test_conv_sum_refuses_what_does_not_make_one_output(rng):
    from fastconv import _core
    wa, wb = rand(rng, (4, 3, 1, 1)), rand(rng, (4, 5, 1, 1))
    with pytest.raises(ValueError, match="two 1x1 kernels"):
        _core.ConvSumPlan(rand(rng, (4, 3, 3, 3)), wb, None, (3, 6, 6), (5, 6, 6), 1, 0)
    with pytest.raises(ValueError, match=r"do not make one \(4, 6, 6\) output"):
        _core.ConvSumPlan(wa, wb, None, (3, 6, 6), (5, 6, 6), 2, 0)  # 6x6 at stride 2: 3x3
    with pytest.raises(ValueError, match="do not make one"):
        _core.ConvSumPlan(wa, wb, None, (3, 6, 6), (4, 6, 6), 1, 0)  # w_b reads 5 channels
    with pytest.raises(ValueError, match="bias must have shape"):
        _core.ConvSumPlan(wa, wb, np.zeros(3, np.float32), (3, 6, 6), (5, 12, 11), 2, 0)
    plan = _core.ConvSumPlan(wa, wb, None, (3, 6, 6), (5, 12, 11), 2, 0)
    xa, xb = rand(rng, (2, 3, 6, 6)), rand(rng, (2, 5, 12, 11))
    with pytest.raises(ValueError, match=r"x_b must have shape \(2, 5, 12, 11\)"):
        plan.run(xa, xb[:1], np.empty((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        plan.run(xa, xb.astype(np.float64), np.empty((2, 4, 6, 6), np.float32))
    shared = np.empty((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        _core.ConvSumPlan(rand(rng, (3, 3, 1, 1)), rand(rng, (3, 5, 1, 1)), None, (3, 6, 6),
                          (5, 12, 11), 2, 0).run(shared, xb, shared)
