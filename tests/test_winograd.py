"""Winograd F(2x2, 3x3): its error against a float64 reference stays within a stated bound, on
every ISA, with bias, activations and a fused residual; model plans use it for eligible layers
and follow fastconv.runtime.set_winograd."""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import layers as L
from fastconv.runtime import ISA_LEVELS, isa_cap, set_winograd, winograd_enabled
import reference as ref

# Stated bound: |error| <= 8 * K * eps32 * max|x| * max|w| (K = 9 C), four times the bound the
# direct and im2col convolutions are tested with; the transforms add a few roundings per value.
BOUND_FACTOR = 8.0


@pytest.mark.parametrize("isa", list(ISA_LEVELS))
@pytest.mark.parametrize("n,c,h,w,o,padding", [
    (1, 16, 13, 11, 24, 1), (2, 32, 8, 8, 33, 1), (1, 3, 7, 8, 17, 0), (1, 20, 5, 6, 8, ((0, 2), (1, 0))),
    (1, 128, 14, 14, 128, 1), (1, 8, 35, 35, 16, 1)])
def test_error_within_the_stated_bound(isa, n, c, h, w, o, padding, rng):
    x, wt, b = ref.rand(rng, (n, c, h, w)), ref.rand(rng, (o, c, 3, 3)), ref.rand(rng, (o,))
    with isa_cap(isa):
        y = F.conv2d(x, wt, b, padding=padding, algorithm="winograd")
    expected = ref.conv2d(x, wt, b, padding=padding)
    ref.assert_close(y, expected, 9 * c, ref.scale_of(x, wt), c=BOUND_FACTOR)


@pytest.mark.parametrize("activation", ["relu", "relu6", "tanh", "sigmoid"])
def test_fused_activation_and_residual(activation, rng):
    x, wt, b = ref.rand(rng, (2, 16, 9, 10)), ref.rand(rng, (24, 16, 3, 3)), ref.rand(rng, (24,))
    residual = ref.rand(rng, (2, 24, 9, 10))
    conv = F.PreparedConv2d(wt, b, (16, 9, 10), padding=1, activation=activation,
                            algorithm="winograd")
    expected = ref.activate(ref.conv2d(x, wt, b, padding=1) + residual, activation)
    ref.assert_close(conv(x, residual=residual), expected, 9 * 16, 4.0, c=BOUND_FACTOR)
    in_place = residual.copy()
    conv(x, residual=in_place, out=in_place)
    ref.assert_close(in_place, expected, 9 * 16, 4.0, c=BOUND_FACTOR)


def test_only_eligible_convolutions_take_winograd():
    w = np.zeros((8, 4, 3, 3), np.float32)
    for bad in (dict(stride=2), dict(dilation=2), dict(groups=2)):
        weight = np.zeros((8, 2, 3, 3), np.float32) if bad.get("groups") else w
        with pytest.raises(ValueError, match="winograd"):
            F.conv2d(np.zeros((1, 4, 8, 8), np.float32), weight, algorithm="winograd", **bad)
    assert F.PreparedConv2d(np.zeros((128, 128, 3, 3)), None, (128, 8, 8), padding=1,
                            winograd=True).algorithm == "winograd"
    assert F.PreparedConv2d(np.zeros((32, 32, 3, 3)), None, (32, 8, 8), padding=1,
                            winograd=True).algorithm == "implicit"  # too few channels
    assert F.PreparedConv2d(np.zeros((128, 128, 3, 3)), None, (128, 7, 7), padding=1,
                            winograd=True).algorithm == "implicit"  # too small an output
    assert F.PreparedConv2d(np.zeros((128, 128, 3, 3)), None, (128, 8, 8),
                            padding=1).algorithm == "implicit"  # only when asked for


def test_plans_follow_the_setting():
    x = fastconv.Input((128, 10, 10))
    y = L.Add(activation="relu")([L.BatchNormalization()(L.Conv2D(128, 3, padding=1)(x)), x])
    model = fastconv.Model(x, y, seed=0)
    data = np.random.default_rng(0).standard_normal((2, 128, 10, 10)).astype(np.float32)
    previous = winograd_enabled()
    try:
        set_winograd(True)
        fast = model.predict(data)
        assert "conv2d[winograd]" in model.plan_summary(print_fn=None)
        set_winograd(False)
        plain = model.predict(data)
        assert "conv2d[implicit]" in model.plan_summary(print_fn=None)
    finally:
        set_winograd(previous)
    reference = model._run_layers([data])[0]
    assert np.abs(plain - reference).max() <= 1e-5 * np.abs(reference).max()
    assert np.abs(fast - reference).max() <= 1e-4 * np.abs(reference).max()
