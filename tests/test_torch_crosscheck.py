"""Cross-check fastconv against torch.nn.functional on the layer shapes of classic networks.

Shapes come from oneDNN's benchdnn inputs (AlexNet, GoogLeNet v1, ResNet-50, VGG-16/19), stored
as JSON in /work/shared/research. oneDNN conventions: dilation is stored minus one, ph/pw are the
top/left padding and ph_r/pw_r the bottom/right padding (negative when trailing rows are unused).
Batch 1 is used instead of mb. The reference is torch evaluated in float64 on the same float32
data, so the tolerance only has to absorb fastconv's float32 rounding.
"""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from fastconv import functional as F  # noqa: E402

RESEARCH = Path(__file__).resolve().parents[2] / "shared" / "research"
HEAVY_MACS = 1e9       # shapes above this are marked slow
SUBSET_MACS = 2e9      # im2col and direct are also forced on shapes up to this size (all, today)
GEOMETRY = ("g", "ic", "ih", "iw", "oc", "oh", "ow", "kh", "kw", "sh", "sw",
            "ph", "pw", "ph_r", "pw_r", "dh", "dw")


def _unique_shapes(filename):
    """Entries of a shapes file with identical geometry merged (first name kept), or None."""
    path = RESEARCH / filename
    if not path.is_file():
        return None
    unique = {}
    for entry in json.loads(path.read_text()):
        key = tuple(entry.get(k) for k in GEOMETRY) + (entry.get("alg_hint", "")[:3],)
        unique.setdefault(key, entry)
    return list(unique.values())


def _missing(filename):
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"{RESEARCH / filename} not found"))]


def _macs(s):
    return s["ic"] // s["g"] * s["kh"] * s["kw"] * s["oh"] * s["ow"] * s["oc"]


def _conv_params():
    shapes = _unique_shapes("benchdnn_conv_shapes.json")
    if shapes is None:
        return _missing("benchdnn_conv_shapes.json")
    params = []
    for s in shapes:
        for algorithm in ("auto", "im2col", "implicit", "direct"):
            if algorithm != "auto" and _macs(s) > SUBSET_MACS:
                continue
            marks = [pytest.mark.slow] if _macs(s) > HEAVY_MACS else []
            params.append(pytest.param(s, algorithm, marks=marks, id=f"{s['name']}-{algorithm}"))
    return params


def _rng(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


@pytest.mark.parametrize("s, algorithm", _conv_params())
def test_conv2d_matches_torch(s, algorithm):
    g, ic, oc, kh, kw = s["g"], s["ic"], s["oc"], s["kh"], s["kw"]
    k = ic // g * kh * kw
    rng = _rng(s["name"])
    x = rng.standard_normal((1, ic, s["ih"], s["iw"]), dtype=np.float32)
    w = (rng.standard_normal((oc, ic // g, kh, kw)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    # A negative end pad only marks unused trailing rows: with no end padding the windows are the
    # same, which the output-shape check below confirms.
    top, left = s["ph"], s["pw"]
    bottom, right = max(s["ph_r"], 0), max(s["pw_r"], 0)
    stride, dilation = (s["sh"], s["sw"]), (s["dh"] + 1, s["dw"] + 1)

    y = F.conv2d(x, w, b, stride=stride, padding=((top, bottom), (left, right)),
                 dilation=dilation, groups=g, algorithm=algorithm)

    xt, wt, bt = (torch.from_numpy(a).double() for a in (x, w, b))
    if (top, left) == (bottom, right):
        ref = TF.conv2d(xt, wt, bt, stride=stride, padding=(top, left), dilation=dilation, groups=g)
    else:
        xt = TF.pad(xt, (left, right, top, bottom))
        ref = TF.conv2d(xt, wt, bt, stride=stride, dilation=dilation, groups=g)
    ref = ref.numpy()

    assert ref.shape == (1, oc, s["oh"], s["ow"])  # the geometry reading itself is right
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=2e-6 * np.sqrt(k), err_msg=s["name"])


def _pool_params():
    shapes = _unique_shapes("benchdnn_pool_shapes.json")
    if shapes is None:
        return _missing("benchdnn_pool_shapes.json")
    return [pytest.param(s, id=s["name"]) for s in shapes]


def _ceil_mode(size, pad, k, stride, out):
    span = size + 2 * pad - k
    if span // stride + 1 == out:
        return False
    assert -(-span // stride) + 1 == out, "neither floor nor ceil reproduces the output size"
    return True


@pytest.mark.parametrize("s", _pool_params())
def test_pool2d_matches_torch(s):
    c, kernel, stride, pad = s["ic"], (s["kh"], s["kw"]), (s["sh"], s["sw"]), (s["ph"], s["pw"])
    assert (s["dh"], s["dw"]) == (0, 0)
    ceil_h = _ceil_mode(s["ih"], s["ph"], s["kh"], s["sh"], s["oh"])
    ceil_w = _ceil_mode(s["iw"], s["pw"], s["kw"], s["sw"], s["ow"])
    assert ceil_h == ceil_w
    x = _rng(s["name"]).standard_normal((1, c, s["ih"], s["iw"]), dtype=np.float32)
    common = dict(kernel_size=kernel, stride=stride, padding=pad, ceil_mode=ceil_h)

    if s["alg_hint"].startswith("max"):
        y = F.max_pool2d(x, **common)
        ref = TF.max_pool2d(torch.from_numpy(x), **common).numpy()
        assert y.shape == ref.shape == (1, c, s["oh"], s["ow"])
        np.testing.assert_array_equal(y, ref)  # a maximum is exact
    else:
        assert s["alg_hint"].startswith("av")
        for include_pad in (True, False):
            y = F.avg_pool2d(x, count_include_pad=include_pad, **common)
            ref = TF.avg_pool2d(torch.from_numpy(x).double(), count_include_pad=include_pad,
                                **common).numpy()
            assert y.shape == ref.shape == (1, c, s["oh"], s["ow"])
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
