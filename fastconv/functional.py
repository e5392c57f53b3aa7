"""Stateless operators on NumPy arrays: the contract is docs/functional.md.

Every function validates its arguments here, with messages that name the argument, what was
expected and what was received, then makes one call into the compiled core (GIL released).
Inputs are converted to float32 (float64 and integer arrays are accepted; complex, bool, object
and string arrays are not); results are new float32 arrays.

>>> import numpy as np, fastconv.functional as F
>>> x = np.ones((1, 3, 8, 8), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
>>> F.conv2d(x, w, padding="same").shape
(1, 4, 8, 8)
"""
import math
import numbers
import os

import numpy as np

from . import _core

__all__ = [
    "gemm", "dense", "conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
    "global_max_pool2d", "relu", "relu6", "tanh", "sigmoid", "softmax", "lrn", "batch_norm",
    "add", "concat", "flatten", "conv_output_size", "pool_output_size", "PreparedConv2d",
    "PreparedPool2d",
]

# Codes shared with src/include/fastconv.h (enum fc_activation, enum fc_conv_algorithm).
_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1, "relu6": 2, "tanh": 3, "sigmoid": 4}
_ALGORITHMS = {"direct": 0, "im2col": 1, "gemm": 2, "winograd": 3, "implicit": 4, "winograd4": 5}
_WINOGRAD = ("winograd", "winograd4")
_DATA_FORMATS = ("channels_first", "channels_last")
_PADDING_MODES = ("valid", "same", "same_upper", "same_lower")
# Window sizes, strides, dilations, paddings, groups and LRN sizes: the C index arithmetic
# multiplies two of them in 64 bits, which stays exact below this bound.
MAX_ARGUMENT = 2**31 - 1
# Packed GEMM panels round the rows of A up to the kernel's tile height (4, 6 or 8 today).
_PANEL_ROWS = 16


def _physical_memory():
    """Bytes of RAM of this machine, or None where the OS does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


PHYSICAL_MEMORY = _physical_memory()


# Validation helpers ---------------------------------------------------------------------------

def _gib(nbytes):
    return f"{nbytes / 2**30:,.1f} GiB"


def check_memory(op, what, *shapes, itemsize=4):
    """Refuses, before anything is allocated, new arrays of ``shapes`` (float32 unless
    ``itemsize`` says otherwise) that together exceed the machine's physical memory: the OS may
    grant such a request lazily and kill the process when the pages are touched."""
    nbytes = itemsize * sum(math.prod(shape) for shape in shapes)
    if PHYSICAL_MEMORY is not None and nbytes > PHYSICAL_MEMORY:
        listed = " + ".join(str(shape) for shape in shapes if math.prod(shape))
        raise ValueError(f"{op}: {what} would need {_gib(nbytes)} ({listed}), more than this "
                         f"machine's {_gib(PHYSICAL_MEMORY)} of memory")


def _copied(arr):
    """The shape of the C-contiguous copy ``np.ascontiguousarray`` would make, (0,) if none."""
    return (0,) if arr.flags.c_contiguous else arr.shape


def _as_array(x, op, name):
    """x as a float32 array; aligned float32 views are kept as they are (strides included)."""
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{op}: `{name}` must be an array of numbers; received {type(x).__name__}: {err}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{op}: `{name}` must hold real numbers (float or integer); received dtype {arr.dtype}"
        )
    # The kernels read float pointers: a view into an odd byte offset is copied too.
    if arr.dtype != np.float32 or not arr.flags.aligned or any(s % 4 for s in arr.strides):
        check_memory(op, f"`{name}` as float32", arr.shape)
        with np.errstate(over="ignore"):  # values beyond float32's range become +-inf
            arr = arr.astype(np.float32)
    return arr


def _as_contiguous(x, op, name):
    arr = _as_array(x, op, name)
    check_memory(op, f"a contiguous copy of `{name}`", _copied(arr))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def _check_rank(arr, ranks, op, name, layout):
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if arr.ndim not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{op}: `{name}` must be {expected}-D {layout}; received shape {arr.shape} ({arr.ndim}-D)"
        )


def _int(value, op, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{op}: `{name}` must be an integer >= {minimum}; received {value!r}")
    if value > MAX_ARGUMENT:
        raise ValueError(f"{op}: `{name}` must be at most {MAX_ARGUMENT}; received {value!r}")
    return int(value)


def _bool(value, op, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: `{name}` must be True or False; received {value!r}")
    return bool(value)


def _real(value, op, name, minimum=-math.inf):
    """A finite real number >= minimum, as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: `{name}` must be a real number; received {value!r} of type "
                        f"{type(value).__name__}")
    if not math.isfinite(value) or value < minimum:
        bound = "" if minimum == -math.inf else f" >= {minimum}"
        raise ValueError(f"{op}: `{name}` must be a finite number{bound}; received {value!r}")
    return float(value)


def _pair(value, op, name, minimum=1):
    """An int or a pair of ints (height, width), each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: `{name}` must be an int or a pair (height, width); received {value!r}")
        return tuple(_int(v, op, name, minimum) for v in value)
    v = _int(value, op, name, minimum)
    return (v, v)


def _activation(activation, op):
    key = activation.lower() if isinstance(activation, str) else activation
    if key is not None and not isinstance(key, str) or key not in _ACTIVATIONS:
        raise ValueError(
            f"{op}: `activation` must be one of None, 'linear', 'relu', 'relu6', 'tanh', "
            f"'sigmoid'; received {activation!r}"
        )
    return _ACTIVATIONS[key]


def _channels_last(data_format, op):
    if not isinstance(data_format, str) or data_format not in _DATA_FORMATS:
        raise ValueError(
            f"{op}: `data_format` must be 'channels_first' or 'channels_last'; received {data_format!r}"
        )
    return data_format == "channels_last"


def _layout(channels_last, rank=4):
    if rank != 4:
        return "(N, ..., C)" if channels_last else "(N, C, ...)"
    return "(N, H, W, C)" if channels_last else "(N, C, H, W)"


# Output-size arithmetic -----------------------------------------------------------------------

def _same_padding(size, kernel, stride, dilation, lower):
    """SAME_UPPER / SAME_LOWER: output ceil(size / stride), the odd pixel at the end / beginning."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _resolve_padding(padding, op, in_hw, kernel, stride, dilation):
    """((top, bottom), (left, right)) from any accepted padding form."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in _PADDING_MODES:
            raise ValueError(
                f"{op}: `padding` must be an int, a pair, ((top, bottom), (left, right)) or one of "
                f"{_PADDING_MODES}; received {padding!r}"
            )
        if mode == "valid":
            return ((0, 0), (0, 0))
        return tuple(
            _same_padding(in_hw[i], kernel[i], stride[i], dilation[i], mode == "same_lower")
            for i in range(2)
        )
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, (tuple, list)) for p in padding
    ):
        if any(len(p) != 2 for p in padding):
            raise ValueError(f"{op}: explicit `padding` must be ((top, bottom), (left, right)); received {padding!r}")
        return tuple(tuple(_int(v, op, "padding", 0) for v in p) for p in padding)
    ph, pw = _pair(padding, op, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def conv_output_size(size, kernel, stride=1, padding=(0, 0), dilation=1):
    """floor((size + p_begin + p_end - dilation*(kernel-1) - 1) / stride) + 1 (may be < 1).

    >>> conv_output_size(224, 7, stride=2, padding=(3, 3))
    112
    """
    return (size + padding[0] + padding[1] - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, padding=(0, 0), dilation=1, ceil_mode=False):
    """Pooled size; with ceil_mode a last window starting in the end padding is dropped.

    >>> pool_output_size(56, 3, 2), pool_output_size(56, 3, 2, ceil_mode=True)
    (27, 28)
    """
    span = size + padding[0] + padding[1] - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding[0]:
        out -= 1
    return out


def _check_window_fits(op, in_hw, kernel, dilation, pads):
    for axis, name in enumerate(("height", "width")):
        extent = dilation[axis] * (kernel[axis] - 1) + 1
        padded = in_hw[axis] + pads[axis][0] + pads[axis][1]
        if extent > padded:
            raise ValueError(
                f"{op}: the kernel {name} {kernel[axis]} (dilated extent {extent}) is larger than the "
                f"padded input {name} {padded} (input {in_hw[axis]} + padding {pads[axis]})"
            )


def _check_output(op, out_hw, in_hw):
    if min(out_hw) < 1:
        raise ValueError(f"{op}: the output size {tuple(out_hw)} is below 1 for input size {tuple(in_hw)}")


# Matrix products ------------------------------------------------------------------------------

def _gemm(op, a, b, bias, activation):
    """act(a @ b + bias) for 2-D float32 views a (M, K), b (K, N)."""
    act = _activation(activation, op)
    (M, K), N = a.shape, b.shape[1]
    check_memory(op, "the output and the packed copy of the left operand", (M, N),
                 (-(-M // _PANEL_ROWS) * _PANEL_ROWS, K))
    bias_col, c, accumulate = None, None, False
    if bias is not None:
        bias = _as_array(bias, op, "bias")
        if bias.shape == (N,):
            bias_col = np.ascontiguousarray(bias)
        else:
            try:
                c = np.array(np.broadcast_to(bias, (M, N)), dtype=np.float32, order="C")
            except ValueError:
                raise ValueError(
                    f"{op}: `bias` must broadcast to the output shape {(M, N)}; received shape {bias.shape}"
                ) from None
            accumulate = True
    if c is None:
        c = np.empty((M, N), np.float32)
    if M == 0 or N == 0:
        return c
    if K == 0:
        if not accumulate:
            c[...] = 0.0 if bias_col is None else bias_col
        _core.activation(c, c, act)
        return c
    _core.gemm(a, b, None, bias_col, accumulate, act, c)
    return c


def gemm(a, b, bias=None, activation=None):
    """act(a @ b + bias): a (M, K), b (K, N) -> (M, N), float32.

    Any strided or transposed views of a and b are read in place. A bias of shape (N,) is added
    in the GEMM kernel's store; any bias that broadcasts to (M, N) is accepted.

    >>> gemm(np.eye(2), [[1., 2.], [3., 4.]], bias=[1., 1.], activation="relu")
    array([[2., 3.],
           [4., 5.]], dtype=float32)
    """
    a, b = _as_array(a, "gemm", "a"), _as_array(b, "gemm", "b")
    _check_rank(a, 2, "gemm", "a", "(M, K)")
    _check_rank(b, 2, "gemm", "b", "(K, N)")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"gemm: the inner dimensions must match: `a` is {a.shape} and `b` is {b.shape} "
            f"(expected b.shape[0] == {a.shape[1]}, received {b.shape[0]})"
        )
    return _gemm("gemm", a, b, bias, activation)


def dense(x, weight, bias=None, activation=None):
    """A fully connected layer: act(x @ weight.T + bias), weight shaped (out, in).

    x is (batch, in) -> (batch, out), or (in,) -> (out,).

    >>> dense([[1., 2.]], [[1., 0.], [1., 1.], [-1., 0.]], bias=[0., 0., 1.], activation="relu")
    array([[1., 3., 0.]], dtype=float32)
    """
    x, w = _as_array(x, "dense", "x"), _as_array(weight, "dense", "weight")
    _check_rank(x, (1, 2), "dense", "x", "(batch, in_features) or (in_features,)")
    _check_rank(w, 2, "dense", "weight", "(out_features, in_features)")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"dense: `x` has {x.shape[-1]} features but `weight` {w.shape} expects in_features "
            f"{w.shape[1]}"
        )
    if bias is not None:
        bias = _as_array(bias, "dense", "bias")
        if bias.shape != (w.shape[0],):
            raise ValueError(f"dense: `bias` must have shape ({w.shape[0]},); received shape {bias.shape}")
    y = _gemm("dense", x if x.ndim == 2 else x[None], w.T, bias, activation)
    return y[0] if x.ndim == 1 else y


# Convolution ----------------------------------------------------------------------------------

def _winograd_tile(out_hw):
    """"winograd4" where F(4x4, 3x3) measured faster than F(2x2, 3x3), else "winograd".
    Per image, each runs one GEMM per product (36 and 16) whose columns are the tiles (4x4 and
    2x2 outputs). The vector kernels run a last column tile of at most NR / 2 columns on one
    vector, so the tiles are padded to NR / 2 there: on small images F(4x4) has few tiles and
    pads much of them. One thread, AVX-512 (NR 32), AVX2 (NR 16) and scalar: F(4x4) was faster
    where its padded GEMM columns are at most 0.7 times F(2x2)'s (docs/kernels.md)."""
    nr = _core.gemm_tile_columns()
    step = nr // 2 if nr >= 16 else nr  # scalar (NR 8): whole tiles matched its measurements

    def gemm_columns(m, products):
        tiles = -(-out_hw[0] // m) * -(-out_hw[1] // m)
        return products * -(-tiles // step) * step

    return "winograd4" if gemm_columns(4, 36) <= 0.7 * gemm_columns(2, 16) else "winograd"


def _winograd_groups(kernel, stride):
    """Winograd's 3x3 sub-kernels of a layer (src/ops/winograd.c): per axis, each stride phase's
    taps in groups of 3."""
    def per_axis(k, s):
        phase_taps = -(-k // s)
        return s * -(-phase_taps // 3)

    return per_axis(kernel[0], stride[0]) * per_axis(kernel[1], stride[1])


def _winograd_pays(kernel, stride, in_channels, out_per_group, out_hw):
    """Where Winograd measured faster than the implicit GEMM (docs/kernels.md). At stride 1: at
    least 64 input channels (counted once per 3x3 sub-kernel of a larger kernel) and 64 output
    channels, and outputs of at least 7 x 7 (ResNet's last stage; smaller ones unmeasured). At
    a stride, where F(4x4)'s groups do at most a third of the direct multiplications (AlexNet's
    11x11 stride-4 stem: 16 groups of 36 / 16, 36 against 121 per output and input channel; 7x7
    and 3x3 at stride 2, 36 against 49 and 9 against 9, measured 2x slower), 64 output channels
    and outputs of at least 14 x 14."""
    groups = _winograd_groups(kernel, stride)
    if out_per_group < 64 or min(out_hw) < 7:
        return False
    if stride == (1, 1):
        return in_channels * groups >= 64
    return groups * 36 / 16 <= kernel[0] * kernel[1] / 3 and min(out_hw) >= 14


def _conv_algorithm(algorithm, kernel, stride, pads, out_per_group, dilation=(1, 1), groups=1,
                    in_channels=0, winograd=False, out_hw=(0, 0)):
    """The algorithm code: an explicit choice (checked), or the "auto" heuristic. Winograd is
    only chosen automatically when ``winograd`` is set (model plans; see runtime.set_winograd),
    where ``_winograd_pays``; F(4x4) or F(2x2) as ``_winograd_tile`` says.
    The implicit GEMM's fixed costs (laying out the input) only pay off from K = C/groups * KH *
    KW >= 16; below that (a one-channel 3x3 layer, K = 9) im2col is as fast or faster at stride 1
    (1 -> 32 and 1 -> 64 channels on 28 x 28: 0.157 against 0.175 ms at batch 16, 0.065 against
    0.086 at batch 4), at stride 2 not (MobileNetV2's stem measured 0.29 ms implicit, 0.47 ms
    im2col). From K = 18 implicit is faster, its wide outputs stored in place (one thread, CPU
    time, AVX-512 / AVX2: VGG's conv1_1, 3 -> 64 channels on 224 x 224, 2.47 -> 1.97 / 3.45 ->
    2.46 ms; 3 -> 64 on 64 x 64 0.198 -> 0.151; 2 -> 16 on 100 x 100 0.150 -> 0.090).
    The direct algorithm is taken for groups of one output channel (depthwise), and of up to 3
    reading one input channel; from 2 output channels reading several, or 4 reading one, the
    implicit GEMM measured faster (LeNet-5's conv1, 1 -> 6 channels 5x5: 35 against 45 us at
    batch 8 on one thread; docs/kernels.md)."""
    # Any stride: a strided 1x1 layer's GEMM gathers every stride-th pixel (src/ops/conv2d.c).
    is_pointwise = kernel == (1, 1) and pads == ((0, 0), (0, 0))
    # Other kernels and strides run as groups of 3x3 sub-kernels (src/ops/winograd.c).
    fits_winograd = min(kernel) >= 3 and dilation == (1, 1) and groups == 1
    if algorithm == "auto":
        if is_pointwise:
            return _ALGORITHMS["gemm"]
        if winograd and fits_winograd and _winograd_pays(kernel, stride, in_channels,
                                                         out_per_group, out_hw):
            return _ALGORITHMS[_winograd_tile(out_hw)]
        if out_per_group == 1 or (out_per_group < 4 and in_channels == groups):
            return _ALGORITHMS["direct"]
        if out_per_group < 8:  # thin: im2col's GEMM tiles would be mostly empty too
            return _ALGORITHMS["implicit"]
        small_k = in_channels // groups * kernel[0] * kernel[1] < 16
        return _ALGORITHMS["im2col" if small_k and stride == (1, 1) else "implicit"]
    if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
        raise ValueError(
            "conv2d: `algorithm` must be 'auto', 'direct', 'im2col', 'implicit', 'gemm', "
            f"'winograd' or 'winograd4'; received {algorithm!r}"
        )
    if algorithm == "gemm" and not is_pointwise:
        raise ValueError(
            "conv2d: algorithm='gemm' needs a 1x1 kernel and no padding; received "
            f"kernel {kernel}, padding {pads}"
        )
    if algorithm in _WINOGRAD and not fits_winograd:
        raise ValueError(
            f"conv2d: algorithm={algorithm!r} needs a kernel of at least 3x3, dilation 1 and "
            f"groups=1; received kernel {kernel}, dilation {dilation}, groups {groups}"
        )
    return _ALGORITHMS[algorithm]


class _ConvGeometry:
    """A convolution's checked arguments (NCHW / OIHW) and derived sizes."""

    def __init__(self, op, in_chw, weight_shape, bias, stride, padding, dilation, groups,
                 activation, algorithm, shown_weight_shape, winograd=False):
        (c, h, wd), (o, i, kh, kw) = in_chw, weight_shape
        self.groups = _int(groups, op, "groups", 1)
        self.stride, self.dilation = _pair(stride, op, "stride"), _pair(dilation, op, "dilation")
        self.activation = _activation(activation, op)
        if kh < 1 or kw < 1 or i < 1:
            raise ValueError(f"{op}: `weight` must have a kernel and input channels >= 1; received "
                             f"shape {shown_weight_shape}")
        if c % self.groups or o % self.groups:
            raise ValueError(f"{op}: `groups` must divide the input channels ({c}) and the output "
                             f"channels ({o}); received groups={self.groups}")
        if c // self.groups != i:
            raise ValueError(f"{op}: `x` has {c} channels, so with groups={self.groups} the weight "
                             f"needs {c // self.groups} input channels per group; received weight "
                             f"with {i} (shape {shown_weight_shape})")
        self.pads = _resolve_padding(padding, op, (h, wd), (kh, kw), self.stride, self.dilation)
        _check_window_fits(op, (h, wd), (kh, kw), self.dilation, self.pads)
        self.out_hw = tuple(conv_output_size((h, wd)[a], (kh, kw)[a], self.stride[a], self.pads[a],
                                             self.dilation[a]) for a in (0, 1))
        _check_output(op, self.out_hw, (h, wd))
        self.algorithm = _conv_algorithm(algorithm, (kh, kw), self.stride, self.pads, o // self.groups,
                                         self.dilation, self.groups, c, winograd, self.out_hw)
        # The kernels' packed copy of the weights: each group's rows padded to a GEMM tile.
        self.packed_shape = (self.groups * -(-(o // self.groups) // _PANEL_ROWS) * _PANEL_ROWS,
                             i * kh * kw)
        self.bias = None
        if bias is not None:
            self.bias = np.ascontiguousarray(_as_array(bias, op, "bias"))
            if self.bias.shape != (o,):
                raise ValueError(f"{op}: `bias` must have shape ({o},) (one per output channel); "
                                 f"received shape {self.bias.shape}")
        self.out_channels = o

    @property
    def pad_begin(self):
        return (self.pads[0][0], self.pads[1][0])


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           data_format="channels_first", algorithm="auto"):
    """2-D convolution (cross-correlation, as in every deep learning framework).

    x (N, C, H, W) and weight (O, C/groups, KH, KW), or with ``data_format="channels_last"``
    x (N, H, W, C) and weight (KH, KW, C/groups, O). ``padding``: int, pair, explicit
    ((top, bottom), (left, right)), "valid", "same"/"same_upper" or "same_lower". ``algorithm``:
    "auto", "direct", "implicit" (implicit GEMM, what "auto" takes for most layers), "im2col",
    "gemm" (1x1 only), "winograd" (F(2x2, 3x3): dilation 1, groups 1, kernels of at least
    3x3; other kernels and strides as groups of 3x3 sub-kernels at stride 1) or "winograd4"
    (F(4x4, 3x3), same conditions); Winograd is never chosen by "auto" here, see
    ``PreparedConv2d``.

    >>> x = np.zeros((1, 3, 32, 32), np.float32); w = np.zeros((6, 3, 5, 5), np.float32)
    >>> conv2d(x, w, stride=2, padding=2).shape
    (1, 6, 16, 16)
    """
    op = "conv2d"
    channels_last = _channels_last(data_format, op)
    x, w = _as_array(x, op, "x"), _as_array(weight, op, "weight")
    _check_rank(x, 4, op, "x", _layout(channels_last))
    _check_rank(w, 4, op, "weight", "(KH, KW, C/groups, O)" if channels_last else "(O, C/groups, KH, KW)")
    if channels_last:
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    g = _ConvGeometry(op, x.shape[1:], w.shape, bias, stride, padding, dilation, groups,
                      activation, algorithm, np.shape(weight))
    out_shape = (x.shape[0], g.out_channels) + g.out_hw
    check_memory(op, "the output and the working copies", out_shape,
                 out_shape if channels_last else (0,), _copied(x), _copied(w), g.packed_shape)
    y = np.empty(out_shape, np.float32)
    if y.size:
        _core.conv2d_nchw(np.ascontiguousarray(x), np.ascontiguousarray(w), g.bias, y, g.stride,
                          g.dilation, g.pad_begin, g.groups, g.activation, g.algorithm)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if channels_last else y


class PreparedConv2d:
    """``conv2d`` with fixed weights, packed once for the kernels, for inputs of one shape
    (any batch): what a model plan runs. NCHW / OIHW only.

    ``prepared(x, residual=None)`` returns act(conv(x) + bias [+ residual]); ``residual`` has the
    output's shape (a ResNet shortcut added in the convolution's store) and may be written in
    place with ``out=residual``. With ``winograd=True``, "auto" takes Winograd where it measured
    faster than the implicit GEMM: stride-1 convolutions of 3x3 or larger kernels (a 5x5 one
    runs as four 3x3 sub-kernels over shifted inputs) with at least 64 input channels per 3x3
    sub-kernel summed, 64 output channels and outputs of at least 7 x 7, and strided ones whose
    stride phases split into 3x3 sub-kernels with a third of the multiplications (AlexNet's
    11x11 stride-4 stem): F(4x4, 3x3) (4x fewer multiplications per 3x3 sub-kernel) on images
    large enough to fill its GEMMs, else F(2x2, 3x3) (2.25x fewer); both have a larger rounding
    error, bounded in tests/test_winograd.py.

    >>> conv = PreparedConv2d(np.ones((8, 3, 3, 3), np.float32), None, (3, 32, 32), padding=1)
    >>> conv(np.zeros((2, 3, 32, 32), np.float32)).shape
    (2, 8, 32, 32)
    """

    def __init__(self, weight, bias, input_shape, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, algorithm="auto", winograd=False):
        op = "PreparedConv2d"
        w = _as_contiguous(weight, op, "weight")
        _check_rank(w, 4, op, "weight", "(O, C/groups, KH, KW)")
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
            raise ValueError(f"{op}: `input_shape` must be (C, H, W); received {input_shape!r}")
        self.input_shape = tuple(_int(v, op, "input_shape", 1) for v in input_shape)
        g = _ConvGeometry(op, self.input_shape, w.shape, bias, stride, padding, dilation, groups,
                          activation, algorithm, w.shape, winograd)
        check_memory(op, "the packed weights", g.packed_shape)
        self.output_shape = (g.out_channels,) + g.out_hw
        self.algorithm = {v: k for k, v in _ALGORITHMS.items()}[g.algorithm]
        self._conv = _core.Conv2dPlan(w, g.bias, self.input_shape, g.out_hw, g.stride, g.dilation,
                                      g.pad_begin, g.groups, g.activation, g.algorithm)

    def __call__(self, x, residual=None, out=None):
        op = "PreparedConv2d"
        x = _as_contiguous(x, op, "x")
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise ValueError(f"PreparedConv2d: `x` must be (N,) + {self.input_shape}; received "
                             f"shape {x.shape}")
        shape = (x.shape[0],) + self.output_shape
        if residual is not None:
            residual = _as_contiguous(residual, op, "residual")
            if residual.shape != shape:
                raise ValueError(f"PreparedConv2d: `residual` must have the output's shape {shape}; "
                                 f"received {residual.shape}")
        if out is None:
            check_memory(op, "the output", shape)
            out = np.empty(shape, np.float32)
        elif (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"PreparedConv2d: `out` must be a writeable C-contiguous float32 "
                             f"array of shape {shape}; received {_describe_buffer(out)}")
        if out.size:
            if np.may_share_memory(out, x) or (residual is not None and residual is not out
                                               and np.may_share_memory(out, residual)):
                # The kernels read x (and a residual other than out) while storing: an
                # overlapping out gets the result through a fresh buffer.
                out[...] = self(x, residual)
            else:
                self._conv.run(x, out, residual)
        return out


def _describe_buffer(out):
    if not isinstance(out, np.ndarray):
        return type(out).__name__
    layout = ("read-only " if not out.flags.writeable else "") + \
        ("" if out.flags.c_contiguous else "non-contiguous ")
    return f"a {layout}{out.dtype} array of shape {out.shape}"


# Pooling --------------------------------------------------------------------------------------

class _PoolGeometry:
    """A pooling's checked window arguments and output size for input planes of size (h, w)."""

    def __init__(self, op, hw, kernel_size, stride, padding, dilation, ceil_mode):
        ceil_mode = _bool(ceil_mode, op, "ceil_mode")
        self.kernel = _pair(kernel_size, op, "kernel_size")
        self.stride = self.kernel if stride is None else _pair(stride, op, "stride")
        self.dilation = _pair(dilation, op, "dilation")
        pads = _resolve_padding(padding, op, hw, self.kernel, self.stride, self.dilation)
        _check_window_fits(op, hw, self.kernel, self.dilation, pads)
        self.out_hw = tuple(pool_output_size(hw[a], self.kernel[a], self.stride[a], pads[a],
                                             self.dilation[a], ceil_mode) for a in (0, 1))
        _check_output(op, self.out_hw, hw)
        self.pads = pads[0] + pads[1]  # (top, bottom, left, right), as the core takes them

    def run(self, x, is_max, count_include_pad, y=None):
        """Pools a C-contiguous float32 NCHW array (into ``y`` if given)."""
        n, c, h, w = x.shape
        if y is None:
            y = np.empty((n, c) + self.out_hw, np.float32)
        if y.size:
            _core.pool2d(x.reshape(n * c, h, w), y.reshape((n * c,) + self.out_hw), is_max,
                         self.kernel, self.stride, self.dilation, self.pads, count_include_pad)
        return y


def _pool(op, x, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad,
          data_format):
    channels_last = _channels_last(data_format, op)
    x = _as_array(x, op, "x")
    _check_rank(x, 4, op, "x", _layout(channels_last))
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    count_include_pad = _bool(count_include_pad, op, "count_include_pad")
    g = _PoolGeometry(op, x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    out_shape = x.shape[:2] + g.out_hw
    check_memory(op, "the output and the working copies", out_shape,
                 out_shape if channels_last else (0,), _copied(x))
    y = g.run(np.ascontiguousarray(x), op == "max_pool2d", count_include_pad)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if channels_last else y


class PreparedPool2d:
    """Max or average pooling with its window arguments checked once, for inputs of one
    (C, H, W) shape (any batch): what a model plan runs. NCHW only.

    >>> pool = PreparedPool2d("max", (8, 32, 32), 3, stride=2, padding=1)
    >>> pool(np.zeros((2, 8, 32, 32), np.float32)).shape
    (2, 8, 16, 16)
    """

    def __init__(self, kind, input_shape, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, count_include_pad=True):
        op = "PreparedPool2d"
        if kind not in ("max", "avg"):
            raise ValueError(f"{op}: `kind` must be 'max' or 'avg'; received {kind!r}")
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
            raise ValueError(f"{op}: `input_shape` must be (C, H, W); received {input_shape!r}")
        self.input_shape = tuple(_int(v, op, "input_shape", 1) for v in input_shape)
        self._geometry = _PoolGeometry(op, self.input_shape[1:], kernel_size, stride, padding,
                                       dilation, ceil_mode)
        self.output_shape = self.input_shape[:1] + self._geometry.out_hw
        self._is_max = kind == "max"
        self._count_include_pad = _bool(count_include_pad, op, "count_include_pad")

    def __call__(self, x):
        x = _as_contiguous(x, "PreparedPool2d", "x")
        if x.ndim != 4 or x.shape[1:] != self.input_shape:
            raise ValueError(f"PreparedPool2d: `x` must be (N,) + {self.input_shape}; received "
                             f"shape {x.shape}")
        check_memory("PreparedPool2d", "the output", (x.shape[0],) + self.output_shape)
        return self._geometry.run(x, self._is_max, self._count_include_pad)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               data_format="channels_first"):
    """Max pooling; padded positions never win. ``ceil_mode=True`` is Caffe's rounding up.

    >>> max_pool2d(np.arange(16.).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    return _pool("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode, True, data_format)


def avg_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               count_include_pad=True, data_format="channels_first"):
    """Average pooling; the divisor follows ``count_include_pad`` (see docs/functional.md).

    >>> avg_pool2d(np.arange(16.).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    >>> avg_pool2d(np.ones((1, 1, 2, 2)), 2, padding=1, count_include_pad=False)[0, 0]
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    return _pool("avg_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode,
                 count_include_pad, data_format)


def _global_pool(op, x, is_max, data_format, keepdims):
    channels_last = _channels_last(data_format, op)
    keepdims = _bool(keepdims, op, "keepdims")
    x = _as_array(x, op, "x")
    _check_rank(x, 4, op, "x", _layout(channels_last))
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    n, c, h, w = x.shape
    if h * w == 0 and n * c:
        raise ValueError(f"{op}: `x` must have a spatial size >= 1; received shape {x.shape}")
    check_memory(op, "the output and the working copy", (n, c), _copied(x))
    y = np.empty((n, c), np.float32)
    if y.size:
        _core.global_pool(np.ascontiguousarray(x).reshape(n * c, h * w), y.reshape(-1), is_max)
    if not keepdims:
        return y
    return y.reshape((n, 1, 1, c) if channels_last else (n, c, 1, 1))


def global_avg_pool2d(x, data_format="channels_first", keepdims=True):
    """Mean over H and W: (N, C, 1, 1), or (N, C) with ``keepdims=False``.

    >>> global_avg_pool2d(np.arange(16.).reshape(1, 1, 4, 4), keepdims=False)
    array([[7.5]], dtype=float32)
    """
    return _global_pool("global_avg_pool2d", x, False, data_format, keepdims)


def global_max_pool2d(x, data_format="channels_first", keepdims=True):
    """Maximum over H and W: (N, C, 1, 1), or (N, C) with ``keepdims=False``.

    >>> global_max_pool2d(np.arange(16.).reshape(1, 1, 4, 4)).shape
    (1, 1, 1, 1)
    >>> global_max_pool2d(np.arange(16.).reshape(1, 1, 4, 4), keepdims=False)
    array([[15.]], dtype=float32)
    """
    return _global_pool("global_max_pool2d", x, True, data_format, keepdims)


# Elementwise ----------------------------------------------------------------------------------

def _unary(op, x, act):
    x = _as_contiguous(x, op, "x")
    check_memory(op, "the output", x.shape)
    y = np.empty_like(x)
    if x.size:
        _core.activation(x, y, act)
    return y


def relu(x):
    """max(x, 0); NaN stays NaN.

    >>> relu([-1., 0., 2.])
    array([0., 0., 2.], dtype=float32)
    """
    return _unary("relu", x, _ACTIVATIONS["relu"])


def relu6(x):
    """min(max(x, 0), 6); NaN stays NaN.

    >>> relu6([-1., 3., 8.])
    array([0., 3., 6.], dtype=float32)
    """
    return _unary("relu6", x, _ACTIVATIONS["relu6"])


def tanh(x):
    """Hyperbolic tangent.

    >>> tanh([0., 1.]).round(4)
    array([0.    , 0.7616], dtype=float32)
    """
    return _unary("tanh", x, _ACTIVATIONS["tanh"])


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow.

    >>> sigmoid([-1., 0., 1.]).round(4)
    array([0.2689, 0.5   , 0.7311], dtype=float32)
    """
    return _unary("sigmoid", x, _ACTIVATIONS["sigmoid"])


def _axis(axis, ndim, op, name="axis"):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -ndim <= axis < ndim:
        raise ValueError(f"{op}: `{name}` must be an integer in [{-ndim}, {ndim - 1}]; received {axis!r}")
    return int(axis) % ndim


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along ``axis``.

    >>> softmax([[1., 1.], [0., np.log(3)]]).round(4)
    array([[0.5 , 0.5 ],
           [0.25, 0.75]], dtype=float32)
    """
    x = _as_array(x, "softmax", "x")
    if x.ndim == 0:
        raise ValueError("softmax: `x` must have at least one dimension; received a scalar")
    axis = _axis(axis, x.ndim, "softmax")
    check_memory("softmax", "the output and the working copy", x.shape, x.shape)
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    y = np.empty_like(moved)
    if y.size:
        _core.softmax(moved, y)
    return np.moveaxis(y, -1, axis)


def _channel_axis_first(x, channels_last, op):
    """x with channels on axis 1, C-contiguous."""
    _check_rank(x, (2, 3, 4), op, "x", _layout(channels_last, rank=3))
    x = np.moveaxis(x, -1, 1) if channels_last else x
    check_memory(op, "the output and the working copy", x.shape, _copied(x))
    return np.ascontiguousarray(x)


def lrn(x, size, alpha=1e-4, beta=0.75, k=1.0, data_format="channels_first"):
    """Local response normalisation across channels (Caffe/PyTorch/ONNX form):
    y = x / (k + alpha/size * sum of x^2 over ``size`` neighbouring channels)^beta.

    >>> lrn(np.ones((1, 3, 1, 1)), size=3, alpha=3.0, beta=1.0)[0, :, 0, 0].round(4)
    array([0.3333, 0.25  , 0.3333], dtype=float32)
    """
    op = "lrn"
    channels_last = _channels_last(data_format, op)
    size = _int(size, op, "size", 1)
    alpha, beta, k = (_real(v, op, name) for v, name in ((alpha, "alpha"), (beta, "beta"), (k, "k")))
    x = _channel_axis_first(_as_array(x, op, "x"), channels_last, op)
    y = np.empty_like(x)
    if y.size:
        n, c = x.shape[:2]
        _core.lrn(x, y, n, c, x.size // (n * c), size, alpha, beta, k)
    return np.moveaxis(y, 1, -1) if channels_last else y


def batch_norm(x, mean, var, gamma=None, beta=None, eps=1e-5, data_format="channels_first"):
    """Inference batch normalisation: gamma * (x - mean) / sqrt(var + eps) + beta, per channel.

    >>> batch_norm(np.full((1, 2, 1, 1), 3.0), mean=[1., 1.], var=[4., 1.], eps=0.0)[:, :, 0, 0]
    array([[1., 2.]], dtype=float32)
    """
    op = "batch_norm"
    channels_last = _channels_last(data_format, op)
    eps = _real(eps, op, "eps", minimum=0.0)
    x = _channel_axis_first(_as_array(x, op, "x"), channels_last, op)
    c = x.shape[1]
    params = {}
    for name, value, default in (("mean", mean, 0.0), ("var", var, 1.0), ("gamma", gamma, 1.0),
                                 ("beta", beta, 0.0)):
        v = np.full(c, default) if value is None else np.asarray(_as_array(value, op, name), np.float64)
        if v.shape != (c,):
            raise ValueError(f"{op}: `{name}` must have shape ({c},) (one per channel); received shape {v.shape}")
        params[name] = v
    positive = params["var"] + eps > 0
    if not positive.all():
        channel = int(np.argmin(positive))
        raise ValueError(f"{op}: `var` + `eps` must be > 0 for every channel (it is divided by "
                         f"its square root); received {params['var'][channel]} + {eps} for "
                         f"channel {channel}")
    scale = params["gamma"] / np.sqrt(params["var"] + eps)
    shift = params["beta"] - params["mean"] * scale
    y = np.empty_like(x)
    if y.size:
        _core.channel_affine(x, scale.astype(np.float32), shift.astype(np.float32), y,
                             x.shape[0], x.size // (x.shape[0] * c))
    return np.moveaxis(y, 1, -1) if channels_last else y


def add(a, b, activation=None):
    """act(a + b) with NumPy broadcasting (a residual connection with its ReLU fused).

    >>> add([[1., -2.]], [[1., 1.]], activation="relu")
    array([[2., 0.]], dtype=float32)
    """
    op = "add"
    act = _activation(activation, op)
    a, b = _as_array(a, op, "a"), _as_array(b, op, "b")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"add: `a` {a.shape} and `b` {b.shape} do not broadcast to a common shape") from None
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    check_memory(op, "the output and the broadcast copies", shape, _copied(a), _copied(b))
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    y = np.empty(shape, np.float32)
    if y.size:
        _core.add(a, b, y, act)
    return y


def concat(tensors, axis=None, data_format="channels_first"):
    """Joins tensors along ``axis`` (default: the channel axis of ``data_format``).

    >>> concat([np.zeros((1, 2, 4, 4)), np.ones((1, 3, 4, 4))]).shape
    (1, 5, 4, 4)
    """
    op = "concat"
    channels_last = _channels_last(data_format, op)
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError(f"concat: `tensors` must be a non-empty list of arrays; received {type(tensors).__name__}")
    arrays = [_as_array(t, op, f"tensors[{i}]") for i, t in enumerate(tensors)]
    ndim = arrays[0].ndim
    if ndim == 0 or any(a.ndim != ndim for a in arrays):
        raise ValueError(f"concat: all tensors must have the same rank >= 1; received shapes {[a.shape for a in arrays]}")
    axis = _axis((-1 if channels_last else 1) if axis is None else axis, ndim, op)
    for a in arrays[1:]:
        if a.shape[:axis] + a.shape[axis + 1:] != arrays[0].shape[:axis] + arrays[0].shape[axis + 1:]:
            raise ValueError(
                f"concat: shapes must match except on axis {axis}; received {[t.shape for t in arrays]}"
            )
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    check_memory(op, "the output", tuple(shape))
    return np.concatenate(arrays, axis=axis)


def flatten(x, axis=1):
    """Reshapes to 2-D (prod(shape[:axis]), prod(shape[axis:])), as ONNX Flatten.

    >>> flatten(np.zeros((2, 3, 4, 5))).shape, flatten(np.zeros((2, 3, 4, 5)), axis=2).shape
    ((2, 60), (6, 20))
    """
    x = _as_array(x, "flatten", "x")
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool) or not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"flatten: `axis` must be an integer in [{-x.ndim}, {x.ndim}]; received {axis!r}")
    axis = int(axis) + x.ndim if axis < 0 else int(axis)
    outer = math.prod(x.shape[:axis])
    check_memory("flatten", "a contiguous copy of `x`", _copied(x))
    return np.ascontiguousarray(x).reshape(outer, math.prod(x.shape[axis:]))
