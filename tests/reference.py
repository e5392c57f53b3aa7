"""NumPy float64 reference implementations of the operators in docs/functional.md.

Written for clarity, not speed: explicit padding with np.pad, loops over kernel offsets (or over
output positions), all arithmetic in float64. Only the *contract* in docs/functional.md is used;
nothing here imports fastconv.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
ACTIVATIONS = (None, "linear", "relu", "relu6", "tanh", "sigmoid")


# --------------------------------------------------------------------------- helpers

def f64(a):
    return np.asarray(a, dtype=np.float64)


def pair(v):
    """int or pair -> (h, w) tuple of ints."""
    if isinstance(v, (tuple, list)):
        assert len(v) == 2
        return int(v[0]), int(v[1])
    return int(v), int(v)


def same_total_padding(size, k, s, d):
    """Total SAME padding of one axis: max((ceil(H/s) - 1)*s + d*(k-1) + 1 - H, 0)."""
    return max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)


def resolve_padding(padding, in_hw, kernel_hw, stride, dilation):
    """Any padding form of the doc -> ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        out = []
        for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
            total = same_total_padding(size, k, s, d)
            small, big = total // 2, total - total // 2
            if padding in ("same", "same_upper"):
                out.append((small, big))      # odd pixel at the end
            elif padding == "same_lower":
                out.append((big, small))      # odd pixel at the beginning
            else:
                raise ValueError(padding)
        return tuple(out)
    if isinstance(padding, (tuple, list)):
        assert len(padding) == 2
        if isinstance(padding[0], (tuple, list)):
            (t, b), (l, r) = padding
            return (int(t), int(b)), (int(l), int(r))
        ph, pw = padding
        return (int(ph), int(ph)), (int(pw), int(pw))
    p = int(padding)
    return (p, p), (p, p)


def conv_out_size(size, k, s, d, p_begin, p_end):
    """floor((H + p_begin + p_end - d*(k-1) - 1) / s) + 1 (may be < 1)."""
    return (size + p_begin + p_end - d * (k - 1) - 1) // s + 1


def pool_out_size(size, k, s, d, p_begin, p_end, ceil_mode):
    num = size + p_begin + p_end - d * (k - 1) - 1
    if not ceil_mode:
        return num // s + 1
    out = -(-num // s) + 1
    if out >= 1 and (out - 1) * s >= size + p_begin:   # last window starts in the end padding
        out -= 1
    return out


def activate(y, activation):
    y = f64(y)
    if activation is None or activation == "linear":
        return y
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "relu6":
        return np.minimum(np.maximum(y, 0.0), 6.0)
    if activation == "tanh":
        return np.tanh(y)
    if activation == "sigmoid":
        return sigmoid(y)
    raise ValueError(activation)


def _to_cf(x):
    return np.moveaxis(x, -1, 1)


def _to_cl(x):
    return np.moveaxis(x, 1, -1)


# --------------------------------------------------------------------------- matrix products

def gemm(a, b, bias=None, activation=None):
    a, b = f64(a), f64(b)
    assert a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0]
    # explicit sum of products (no BLAS): y[m, n] = sum_k a[m, k] * b[k, n]
    y = np.zeros((a.shape[0], b.shape[1]))
    for k in range(a.shape[1]):
        y += a[:, k:k + 1] * b[k:k + 1, :]
    if bias is not None:
        y = y + f64(bias)
    return activate(y, activation)


def dense(x, weight, bias=None, activation=None):
    x, weight = f64(x), f64(weight)
    one_d = x.ndim == 1
    y = gemm(np.atleast_2d(x), weight.T, bias, activation)
    return y[0] if one_d else y


# --------------------------------------------------------------------------- convolution

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           data_format="channels_first"):
    x, w = f64(x), f64(weight)
    if data_format == "channels_last":
        x = _to_cf(x)
        w = np.transpose(w, (3, 2, 0, 1))            # HWIO -> OIHW
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    assert c == cg * groups and o % groups == 0
    og = o // groups
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = resolve_padding(padding, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    oh = conv_out_size(h, kh, sh, dh, pt, pb)
    ow = conv_out_size(wd, kw, sw, dw, pl, pr)
    assert oh >= 1 and ow >= 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))          # zeros
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                # input pixels hit by kernel tap (i, j) for every output position
                patch = xg[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                           j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if bias is not None:
        y += f64(bias)[None, :, None, None]
    y = activate(y, activation)
    return _to_cl(y) if data_format == "channels_last" else y


def conv2d_loops(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Second, scalar-loop formulation (channels_first), used only to self-test conv2d."""
    x, w = f64(x), f64(weight)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = resolve_padding(padding, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    oh = conv_out_size(h, kh, sh, dh, pt, pb)
    ow = conv_out_size(wd, kw, sw, dw, pl, pr)
    y = np.zeros((n, o, oh, ow))
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for r in range(oh):
                for q in range(ow):
                    acc = 0.0 if bias is None else float(bias[oc])
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                hh = r * sh - pt + i * dh
                                ww = q * sw - pl + j * dw
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += x[b, g * cg + ci, hh, ww] * w[oc, ci, i, j]
                    y[b, oc, r, q] = acc
    return y


# --------------------------------------------------------------------------- pooling

def _pool_geometry(shape_hw, kernel_size, stride, padding, dilation, ceil_mode):
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    dh, dw = pair(dilation)
    (pt, pb), (pl, pr) = resolve_padding(padding, shape_hw, (kh, kw), (sh, sw), (dh, dw))
    oh = pool_out_size(shape_hw[0], kh, sh, dh, pt, pb, ceil_mode)
    ow = pool_out_size(shape_hw[1], kw, sw, dw, pl, pr, ceil_mode)
    assert oh >= 1 and ow >= 1
    return (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow)


def _window_positions(o, k, s, d, p_begin):
    """Input coordinates (unpadded frame) covered by output o along one axis."""
    return [o * s - p_begin + i * d for i in range(k)]


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               data_format="channels_first"):
    x = f64(x)
    if data_format == "channels_last":
        x = _to_cf(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow) = _pool_geometry(
        (h, w), kernel_size, stride, padding, dilation, ceil_mode)
    # pad with -inf: explicit padding plus whatever extra the ceil_mode windows reach
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    eb = max(need_h - (pt + h + pb), 0)
    er = max(need_w - (pl + w + pr), 0)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eb), (pl, pr + er)), constant_values=-np.inf)
    y = np.full((n, c, oh, ow), -np.inf)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            y = np.maximum(y, tap)         # np.maximum propagates NaN
    return _to_cl(y) if data_format == "channels_last" else y


def avg_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               count_include_pad=True, data_format="channels_first"):
    x = f64(x)
    if data_format == "channels_last":
        x = _to_cf(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow) = _pool_geometry(
        (h, w), kernel_size, stride, padding, dilation, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        rows = _window_positions(r, kh, sh, dh, pt)
        for q in range(ow):
            cols = _window_positions(q, kw, sw, dw, pl)
            real_r = [v for v in rows if 0 <= v < h]
            real_c = [v for v in cols if 0 <= v < w]
            if count_include_pad:
                cnt = (sum(-pt <= v < h + pb for v in rows) * sum(-pl <= v < w + pr for v in cols))
            else:
                cnt = len(real_r) * len(real_c)
            if not real_r or not real_c:
                continue                                   # no real input: 0
            s = x[:, :, real_r][:, :, :, real_c].sum(axis=(2, 3))
            y[:, :, r, q] = s / cnt
    return _to_cl(y) if data_format == "channels_last" else y


def max_pool2d_loops(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Second formulation (explicit window enumeration, channels_first) for self-tests."""
    x = f64(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), (oh, ow) = _pool_geometry(
        (h, w), kernel_size, stride, padding, dilation, ceil_mode)
    y = np.full((n, c, oh, ow), -np.inf)
    for r in range(oh):
        for q in range(ow):
            for hh in _window_positions(r, kh, sh, dh, pt):
                for ww in _window_positions(q, kw, sw, dw, pl):
                    if 0 <= hh < h and 0 <= ww < w:
                        y[:, :, r, q] = np.maximum(y[:, :, r, q], x[:, :, hh, ww])
    return y


def global_avg_pool2d(x, data_format="channels_first", keepdims=True):
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    return f64(x).mean(axis=axes, keepdims=keepdims)


def global_max_pool2d(x, data_format="channels_first", keepdims=True):
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    return f64(x).max(axis=axes, keepdims=keepdims)


# --------------------------------------------------------------------------- elementwise / norm

def relu(x):
    return activate(x, "relu")


def relu6(x):
    return activate(x, "relu6")


def tanh(x):
    return np.tanh(f64(x))


def sigmoid(x):
    x = f64(x)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(x, axis=-1):
    x = f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def lrn(x, size, alpha=1e-4, beta=0.75, k=1.0, data_format="channels_first"):
    x = f64(x)
    if data_format == "channels_last":
        x = np.moveaxis(x, -1, 1)
    c = x.shape[1]
    lo_off, hi_off = (size - 1) // 2, -(-(size - 1) // 2)        # floor, ceil
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - lo_off), min(c - 1, ch + hi_off)
        sq = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / (k + alpha / size * sq) ** beta
    return np.moveaxis(y, 1, -1) if data_format == "channels_last" else y


def batch_norm(x, mean, var, gamma=None, beta=None, eps=1e-5, data_format="channels_first"):
    x = f64(x)
    axis = 1 if data_format == "channels_first" else x.ndim - 1
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    r = lambda v: f64(v).reshape(shape)
    y = (x - r(mean)) / np.sqrt(r(var) + eps)
    if gamma is not None:
        y = y * r(gamma)
    if beta is not None:
        y = y + r(beta)
    return y


def add(a, b, activation=None):
    return activate(f64(a) + f64(b), activation)


def concat(tensors, axis=None, data_format="channels_first"):
    if axis is None:
        axis = 1 if data_format == "channels_first" else -1
    return np.concatenate([f64(t) for t in tensors], axis=axis)


def flatten(x, axis=1):
    x = f64(x)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)),
                     int(np.prod(x.shape[axis:], dtype=np.int64)))


# --------------------------------------------------------------------------- tolerance

def scale_of(*factors):
    """Product of max|a| over the given arrays (1 for an empty array); e.g. max|x| * max|w|."""
    s = 1.0
    for a in factors:
        a = f64(a)
        m = float(np.max(np.abs(a[np.isfinite(a)]))) if a.size and np.isfinite(a).any() else 1.0
        s *= m
    return s


def assert_close(actual, expected, reduction_length=1, scale=1.0, rtol=1e-5, c=2.0,
                 check_dtype=True, err_msg=""):
    """|y - ref| <= rtol*|ref| + c*K*eps32*scale, elementwise; exact shape; float32 result.

    NaN must appear exactly where the reference is NaN, infinities exactly where (and with the
    sign) the reference has them.
    """
    assert isinstance(actual, np.ndarray), f"result is {type(actual)!r}, not an ndarray {err_msg}"
    expected = f64(expected)
    assert actual.shape == expected.shape, \
        f"shape {actual.shape} != expected {expected.shape} {err_msg}"
    if check_dtype:
        assert actual.dtype == np.float32, f"dtype {actual.dtype} != float32 {err_msg}"
    got = actual.astype(np.float64)
    nan_e, nan_g = np.isnan(expected), np.isnan(got)
    assert np.array_equal(nan_e, nan_g), (
        f"NaN mask differs at {np.argwhere(nan_e != nan_g)[:5].tolist()} {err_msg}")
    inf_e = np.isinf(expected)
    assert np.array_equal(inf_e, np.isinf(got)) and np.array_equal(expected[inf_e], got[inf_e]), \
        f"inf mask/sign differs {err_msg}"
    fin = np.isfinite(expected)
    tol = rtol * np.abs(expected[fin]) + c * max(int(reduction_length), 1) * EPS32 * scale
    err = np.abs(got[fin] - expected[fin])
    if err.size and not np.all(err <= tol):
        worst = int(np.argmax(err - tol))
        idx = np.argwhere(fin)[worst].tolist()
        raise AssertionError(
            f"max violation at {idx}: got {got[fin][worst]!r}, expected {expected[fin][worst]!r}, "
            f"|err|={err[worst]:.3g} > tol={tol[worst]:.3g} "
            f"({int(np.sum(err > tol))}/{err.size} elements out of tolerance) {err_msg}")


def rand(rng, shape, lo=-1.0, hi=1.0):
    """float32 uniform test data."""
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


# --------------------------------------------------------------------------- self-test

def _self_test():
    rng = np.random.default_rng(0)
    # conv: kernel-offset formulation vs scalar loops, many forms
    cases = [
        dict(stride=1, padding=0), dict(stride=2, padding=1), dict(stride=(1, 2), padding=(2, 1)),
        dict(stride=(2, 1), dilation=(1, 2), padding=((0, 2), (1, 0))),
        dict(padding="same", stride=2), dict(padding="same_lower", stride=(2, 3), dilation=2),
        dict(padding="valid", dilation=(2, 1)), dict(padding="same_upper", groups=2),
        dict(groups=4, padding=1), dict(groups=4, stride=3, padding="same"),
    ]
    for kw in cases:
        for (kh, kwid) in [(1, 1), (2, 3), (3, 3)]:
            groups = kw.get("groups", 1)
            x = rng.standard_normal((2, 4, 7, 8))
            w = rng.standard_normal((8, 4 // groups, kh, kwid))
            b = rng.standard_normal(8)
            y1 = conv2d(x, w, b, **kw)
            y2 = conv2d_loops(x, w, b, **kw)
            np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
            # channels_last is the transposed computation
            y3 = conv2d(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), b, data_format="channels_last", **kw)
            np.testing.assert_allclose(y3, y1.transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    # SAME sizes: out = ceil(H/s)
    for h in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 4):
                for d in (1, 2):
                    for mode in ("same", "same_lower"):
                        (pt, pb), _ = resolve_padding(mode, (h, h), (k, k), (s, s), (d, d))
                        assert conv_out_size(h, k, s, d, pt, pb) == -(-h // s)
                        assert abs(pt - pb) <= 1 and (pb >= pt if mode == "same" else pt >= pb)
    assert resolve_padding("same", (5, 5), (2, 2), (1, 1), (1, 1)) == ((0, 1), (0, 1))
    assert resolve_padding("same_lower", (5, 5), (2, 2), (1, 1), (1, 1)) == ((1, 0), (1, 0))
    # ceil_mode examples from the doc / brief
    assert pool_out_size(2, 1, 2, 1, 0, 0, True) == 1
    assert pool_out_size(4, 3, 2, 1, 0, 0, True) == 2
    assert pool_out_size(5, 2, 2, 1, 0, 0, True) == 3 and pool_out_size(5, 2, 2, 1, 0, 0, False) == 2
    assert pool_out_size(5, 3, 2, 1, 1, 1, True) == 3      # last start 4 < 5 + 1: kept
    assert pool_out_size(6, 3, 2, 1, 1, 1, True) == 4      # num=5 -> ceil(2.5)+1 = 4, start 6 < 7
    assert pool_out_size(5, 2, 2, 1, 1, 1, True) == 3      # num=5 -> 3+1; start 6 >= 5+1: dropped
    x = rng.standard_normal((1, 2, 2, 2))
    assert max_pool2d(x, 1, 2, ceil_mode=True).shape == (1, 2, 1, 1)
    x = rng.standard_normal((2, 3, 4, 4))
    assert max_pool2d(x, 3, 2, ceil_mode=True).shape == (2, 3, 2, 2)
    # pools: slicing max vs enumerated windows
    for k, s, p, d, cm in [(2, None, 0, 1, False), (3, 2, 1, 1, True), (2, 2, ((0, 1), (1, 0)), 1, True),
                           ((2, 3), (1, 2), "same", (2, 1), False), (3, 2, "same_lower", 1, True),
                           (2, 1, 2, 1, False), (1, 2, 0, 1, True)]:
        x = rng.standard_normal((2, 3, 7, 6))
        np.testing.assert_array_equal(max_pool2d(x, k, s, p, d, cm), max_pool2d_loops(x, k, s, p, d, cm))
    # avg pool (no ceil_mode) == depthwise conv with a ones kernel, divided by the right count
    for k, s, p, d in [(2, 2, 0, 1), (3, 2, 1, 1), ((3, 2), (1, 2), ((1, 2), (0, 1)), (1, 2)),
                       (3, 1, "same", 2), (2, 3, "same_lower", 1)]:
        x = rng.standard_normal((2, 3, 7, 6))
        kh, kw = pair(k)
        ones = np.ones((3, 1, kh, kw))
        sums = conv2d(x, ones, stride=s, padding=p, dilation=d, groups=3)
        real = conv2d(np.ones_like(x), ones, stride=s, padding=p, dilation=d, groups=3)
        np.testing.assert_allclose(avg_pool2d(x, k, s, p, d, count_include_pad=False), sums / real)
        np.testing.assert_allclose(avg_pool2d(x, k, s, p, d, count_include_pad=True), sums / (kh * kw))
    # avg pool: hand-computed values
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = avg_pool2d(x, 2, 2, ceil_mode=True)          # last row/col windows have 1 real position
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 2, 2] == 24.0 and y[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 4 and y[0, 0, 0, 2] == (4 + 9) / 2
    y = avg_pool2d(x, 3, 2, padding=1, count_include_pad=True)
    assert y[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 9
    y = avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
    assert y[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 4
    # padding 1, k=2, s=2, ceil: 4th window would start at padded index 6 >= H + p_begin: dropped
    y = avg_pool2d(x, 2, 2, padding=1, ceil_mode=True, count_include_pad=True)
    assert y.shape == (1, 1, 3, 3)
    # window with no real input: explicit padding larger than the kernel
    y = avg_pool2d(x, 2, 2, padding=2)
    assert y[0, 0, 0, 0] == 0.0 and max_pool2d(x, 2, 2, padding=2)[0, 0, 0, 0] == -np.inf
    # lrn: window offsets
    xx = rng.standard_normal((1, 6, 2, 2))
    y = lrn(xx, 2, alpha=1.0, beta=1.0, k=1.0)
    np.testing.assert_allclose(y[:, 2], xx[:, 2] / (1 + 0.5 * (xx[:, 2] ** 2 + xx[:, 3] ** 2)))
    y = lrn(xx, 3, alpha=1.0, beta=1.0, k=1.0)
    np.testing.assert_allclose(y[:, 0], xx[:, 0] / (1 + (xx[:, 0] ** 2 + xx[:, 1] ** 2) / 3))
    # gemm
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    np.testing.assert_allclose(gemm(a, b), a @ b, rtol=1e-12)
    np.testing.assert_allclose(sigmoid(np.array([-800.0, 0.0, 800.0])), [0.0, 0.5, 1.0])
    print("reference self-test passed")


if __name__ == "__main__":
    _self_test()
