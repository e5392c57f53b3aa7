"""Depth-first chains (src/ops/chain.c): 1x1 and 3x3 depthwise convolutions run band by band of
output rows must compute exactly what the layers compute one at a time, whatever the bands, the
thread count and the batch; a model plan must use them only where they apply."""
import numpy as np
import pytest

import fastconv
from fastconv import _core, models
from fastconv import functional as F
from fastconv import layers as L
from fastconv.runtime import isa_cap

import reference as ref


def inverted_residual(rng, cin, expanded, cout, hw, stride, expand=True):
    """The PreparedConv2d layers of a MobileNetV2 block (1x1 expansion if `expand`, 3x3
    depthwise, 1x1 projection) on (cin, *hw) inputs, with random weights and biases, and each
    layer's (weight, bias, keyword arguments) for the reference."""
    specs = []
    if expand:
        specs.append(((expanded, cin, 1, 1), {"activation": "relu6"}))
    else:
        expanded = cin
    specs.append(((expanded, 1, 3, 3), {"stride": stride, "padding": 1, "groups": expanded,
                                        "activation": "relu"}))
    specs.append(((cout, expanded, 1, 1), {}))
    layers, arguments, shape = [], [], (cin,) + hw
    for w_shape, kwargs in specs:
        fan_in = w_shape[1] * w_shape[2] * w_shape[3]
        w = (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        layers.append(F.PreparedConv2d(w, b, shape, **kwargs))
        arguments.append((w, b, kwargs))
        shape = layers[-1].output_shape
    return layers, arguments


def run_layers(layers, x, residual=None):
    for layer in layers[:-1]:
        x = layer(x)
    return layers[-1](x, residual=residual)


# (input channels, expanded, output channels, height x width, stride, expansion): MobileNetV2's
# shapes, odd sizes, and many channels on wide rows, whose bands are a row or two (the depthwise
# kernel's 4-row calls then spill rows past the band).
BLOCKS = [
    (24, 144, 24, (56, 56), 1, True),
    (16, 96, 24, (57, 45), 2, True),
    (32, 32, 16, (30, 31), 1, False),
    (8, 768, 8, (23, 96), 1, True),
    (8, 640, 12, (27, 100), 2, True),
]


@pytest.mark.parametrize("cin, expanded, cout, hw, stride, expand", BLOCKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_a_chain_computes_exactly_what_its_layers_do(cin, expanded, cout, hw, stride, expand,
                                                       batch):
    rng = np.random.default_rng(cin + expanded + batch)
    layers, _ = inverted_residual(rng, cin, expanded, cout, hw, stride, expand)
    chain = _core.ConvChainPlan([layer._conv for layer in layers])
    x = rng.standard_normal((batch, cin) + hw).astype(np.float32)
    residual = rng.standard_normal((batch,) + layers[-1].output_shape).astype(np.float32)
    previous = fastconv.get_num_threads()
    try:
        # Two or three threads split the rows of one image at batch 1 and steal the tails of
        # each other's shares (fc_steal_queue), so the runs on several threads are repeated.
        for threads in (1, 2, 3, 2, 3, 2):
            fastconv.set_num_threads(threads)
            for r in (None, residual):
                want = run_layers(layers, x, r)
                got = np.full_like(want, np.nan)
                chain.run(x, got, r)
                np.testing.assert_array_equal(got, want)
    finally:
        fastconv.set_num_threads(previous)


@pytest.mark.parametrize("hw, stride", [((64, 64), 2), ((70, 128), 2), ((37, 64), 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_chain_from_a_stem_computes_exactly_what_its_layers_do(hw, stride, batch):
    """A stem (3 input channels, implicit GEMM in rows) as the first stage, then a depthwise
    and a 1x1 layer: MobileNetV2's features.0 and features.1. The outputs are 64 wide (a
    multiple of the vectors, 64 or more): the implicit GEMM's rows mode, the stems chains take."""
    rng = np.random.default_rng(batch + stride)
    w = (rng.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32)
    stem = F.PreparedConv2d(w, rng.standard_normal(32).astype(np.float32), (3,) + hw,
                            stride=stride, padding=1, activation="relu6", algorithm="implicit")
    block, _ = inverted_residual(rng, 32, 32, 16, stem.output_shape[1:], 1, expand=False)
    layers = [stem] + block
    chain = _core.ConvChainPlan([layer._conv for layer in layers])
    assert chain.kernels[0] == "gemm" and chain.kernels[1] == "dwconv3x3s1"
    x = rng.standard_normal((batch, 3) + hw).astype(np.float32)
    previous = fastconv.get_num_threads()
    try:
        for threads in (1, 2, 3, 2, 3, 2):
            fastconv.set_num_threads(threads)
            want = run_layers(layers, x)
            got = np.full_like(want, np.nan)
            chain.run(x, got)
            np.testing.assert_array_equal(got, want)
    finally:
        fastconv.set_num_threads(previous)
    with pytest.raises(ValueError, match="stage 1 is neither .* nor \\(first\\) a stem"):
        _core.ConvChainPlan([block[0]._conv, stem._conv])


def test_a_chain_agrees_with_the_float64_reference():
    rng = np.random.default_rng(7)
    layers, arguments = inverted_residual(rng, 8, 48, 8, (19, 21), 2)
    x = rng.standard_normal((2, 8, 19, 21)).astype(np.float32)
    y = np.empty((2,) + layers[-1].output_shape, np.float32)
    _core.ConvChainPlan([layer._conv for layer in layers]).run(x, y)
    want = x
    for w, b, kwargs in arguments:
        want = ref.conv2d(want, w, b, **kwargs)
    ref.assert_close(y, want, reduction_length=48 + 9 + 8)


def test_chain_arguments_are_checked():
    rng = np.random.default_rng(0)
    layers, _ = inverted_residual(rng, 8, 16, 8, (10, 10), 1)
    plans = [layer._conv for layer in layers]
    with pytest.raises(ValueError, match="2 to 4 stages expected; received 1"):
        _core.ConvChainPlan(plans[:1])
    full = F.PreparedConv2d(np.ones((16, 16, 3, 3), np.float32), None, (16, 10, 10), padding=1)
    with pytest.raises(ValueError, match="stage 1 is neither"):
        _core.ConvChainPlan([plans[0], full._conv])
    with pytest.raises(ValueError, match=r"stage 1 reads \(16, 10, 10\); stage 0 writes \(8,"):
        _core.ConvChainPlan([plans[2], plans[1]])
    chain = _core.ConvChainPlan(plans[:2])  # ends with the depthwise layer: no residual
    x, y = np.ones((1, 8, 10, 10), np.float32), np.empty((1, 16, 10, 10), np.float32)
    with pytest.raises(ValueError, match="residual needs a 1x1 last stage"):
        chain.run(x, y, y.copy())
    with pytest.raises(ValueError, match="y must not overlap x"):
        wide = np.ones((1, 16, 10, 10), np.float32)
        chain.run(wide.reshape(-1)[:800].reshape(1, 8, 10, 10), wide)
    with pytest.raises(ValueError, match=r"x must have shape \(1, 8, 10, 10\)"):
        chain.run(np.ones((1, 8, 10, 9), np.float32), y)
    with pytest.raises(ValueError, match="Program: a chain adds a residual only after"):
        _core.Program([("chain", chain, 0, 1, 2)], [800, 1600, 1600])


def mobile_model(size=64):
    """A stem and two inverted residual blocks whose depthwise tensors are large enough for
    depth-first chains (64 x 64 x 96 floats: 1.5 MB), the first with its residual add."""
    x = fastconv.Input((3, size, size))
    y = L.Conv2D(16, 3, padding=1, activation="relu")(x)
    for stride, residual in ((1, True), (2, False)):
        h = L.Conv2D(96, 1, use_bias=False)(y)
        h = L.BatchNormalization()(h)
        h = L.Activation("relu6")(h)
        h = L.Conv2D(96, 3, strides=stride, padding=1, groups=96, activation="relu6")(h)
        h = L.Conv2D(16, 1)(h)
        y = L.Add()([y, h]) if residual else h
    y = L.GlobalAveragePooling2D()(y)
    return fastconv.Model(x, L.Dense(10)(y), seed=3)


def depth_first_steps(model):
    return [line for line in model.plan_summary(print_fn=None).splitlines()
            if "depth-first" in line]


def test_plans_chain_the_large_blocks_and_compute_the_same():
    model = mobile_model()
    x = np.random.default_rng(4).standard_normal((3, 3, 64, 64)).astype(np.float32)
    chained = model.predict(x)
    steps = depth_first_steps(model)
    assert len(steps) == 2 and "(+ residual" in steps[0] and "(+ residual" not in steps[1]
    assert "[f32_gemm_minmax_ukernel" in steps[0] and "f32_dwconv3x3s2_ukernel" in steps[1]
    previous = fastconv.runtime.depth_first_enabled()
    try:
        fastconv.runtime.set_depth_first(False)
        assert not depth_first_steps(model)  # the plan follows the setting
        np.testing.assert_array_equal(model.predict(x), chained)
    finally:
        fastconv.runtime.set_depth_first(previous)
    reference = model._run_layers([x])[0]
    assert np.abs(chained - reference).max() <= 1e-5 * np.abs(reference).max()


def test_small_blocks_forced_algorithms_and_shared_tensors_are_not_chained():
    assert not depth_first_steps(mobile_model(size=32))  # 32 x 32 x 96: 384 KB
    model = mobile_model()
    depthwise = [layer.name for layer in model.layers if getattr(layer, "groups", 1) == 96]
    model.set_algorithm(depthwise[0], "im2col")
    assert len(depth_first_steps(model)) == 1
    # An expanded tensor that is also a model output is kept whole: the chain starts after it.
    x = fastconv.Input((3, 64, 64))
    h = L.Conv2D(96, 1, activation="relu6")(x)
    d = L.Conv2D(96, 3, padding=1, groups=96)(h)
    two = fastconv.Model(x, [L.Conv2D(8, 1)(d), h], seed=1)
    (step,) = depth_first_steps(two)
    assert "[depth-first: direct, gemm] conv2d_1 + conv2d_2 " in step
    data = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for got, want in zip(two.predict(data), two._run_layers([data])):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_mobilenet_v2_chains_its_high_resolution_blocks():
    firsts = [line.split("] ")[1].split(" ")[0]
              for line in depth_first_steps(models.mobilenet_v2())]
    # The stem with features.1, then features.2 and 3, and features.4 (56 -> 28) too where its
    # 1x1 layers are not transposed (AVX-512, scalar).
    assert firsts[:3] == ["features.0.0", "features.2.conv.0.0", "features.3.conv.0.0"]
    assert firsts[3:] in ([], ["features.4.conv.0.0"])


def test_a_new_kernel_table_repacks_a_chain():
    model = mobile_model()
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    before = model.predict(x)
    with isa_cap("scalar"):
        scalar = model.predict(x)
        assert len(depth_first_steps(model)) == 2
    assert np.abs(scalar - before).max() <= 1e-5 * np.abs(before).max()
