"""The model plan (fastconv/plan.py): fused, prepacked steps must compute what the layers
compute one by one (Model._run_layers, itself tested against the functional ops), for every
fusion it makes and every case where it must not fuse or must not overwrite."""
import json

import numpy as np
import pytest

import fastconv
from fastconv import layers as L
from fastconv import models
from fastconv.runtime import isa_cap


def randomize_batchnorm(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.weights["gamma"].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c),
                               rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 1.5, c)])


def assert_plan_matches_layers(model, x):
    planned = model.predict(x)
    reference = model._run_layers([np.ascontiguousarray(x, np.float32)])[0]
    assert planned.shape == reference.shape
    assert np.abs(planned - reference).max() <= 1e-5 * np.abs(reference).max()
    return planned


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "alexnet"])
def test_zoo_plans_match_layer_by_layer(name):
    model = getattr(models, name)(input_shape=(3, 96, 96)) if name != "alexnet" else models.alexnet()
    randomize_batchnorm(model)
    size = 224 if name == "alexnet" else 96
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    assert_plan_matches_layers(model, x)


def test_plan_summary_names_the_kernels_of_the_table_in_force():
    model = models.mobilenet_v2(input_shape=(3, 64, 64))
    for isa, gemm in (("avx2", "6x16__avx2"), ("scalar", "4x8__scalar")):
        with isa_cap(isa):
            lines = model.plan_summary(print_fn=None).splitlines()
        assert f"[f32_gemm_minmax_ukernel_{gemm}]" in lines[0]  # the stem, implicit GEMM
        assert lines[1].endswith(f"[f32_dwconv3x3s1_ukernel__{isa}]")
        assert lines[4].endswith(f"[f32_dwconv3x3s2_ukernel__{isa}]")
        assert f"f32_gemv_ukernel__{isa} at batch 1" in lines[-1]
        # The small planes of the last stages: the channel-blocked depthwise kernel
        # (src/ops/dwconv.c).
        (last_depthwise,) = [line for line in lines if "features.16.conv.1.0" in line]
        assert last_depthwise.endswith(f"[f32_dwconv3x3_cblock_ukernel__{isa}]")
    with isa_cap("avx2"):
        lenet = models.lenet5().plan_summary(print_fn=None).splitlines()
        resnet = models.resnet18().plan_summary(print_fn=None).splitlines()
    assert lenet[1].endswith("maxpool2d pool1  [f32_maxpool2x2_ukernel__avx2]")  # 2x2 stride 2
    assert resnet[1].endswith("maxpool2d maxpool  [f32_maxpool3x3s2_ukernel__avx2]")  # 3x3 stride 2


def test_resnet_plan_folds_batchnorm_and_fuses_the_residual_add():
    model = models.resnet18()
    text = model.plan_summary(print_fn=None)
    assert "conv2d[winograd4] layer1.0.conv2 + layer1.0.bn2 + layer1.0.add (+ residual maxpool)" in text
    assert "layer2.0.downsample.0 + layer2.0.downsample.1" in text
    assert len(model._plan.steps) == 23 and len(model.layers) == 61
    kinds = {line.split()[1] for line in text.splitlines()}
    assert "batchnormalization" not in kinds and "relu" not in kinds


def small_residual(residual_is_output=False, reuse_residual=False):
    x = fastconv.Input((4, 9, 9))
    a = L.Conv2D(6, 3, padding=1, name="a")(x)
    mid = L.Conv2D(5, 3, padding=1, name="mid")(a)
    b = L.BatchNormalization(name="bn")(L.Conv2D(6, 1, name="b")(mid))
    y = L.Add(activation="relu", name="add")([b, a])
    outputs = [y]
    if residual_is_output:
        outputs.append(a)
    if reuse_residual:
        outputs.append(L.Conv2D(2, 1, name="after")(a))
    return fastconv.Model(x, outputs if len(outputs) > 1 else y, seed=0)


@pytest.mark.parametrize("variant", [{}, {"residual_is_output": True}, {"reuse_residual": True}])
def test_residual_fusion_never_overwrites_a_live_array(variant):
    model = small_residual(**variant)
    randomize_batchnorm(model)
    x = np.random.default_rng(2).standard_normal((3, 4, 9, 9)).astype(np.float32)
    planned = model.predict(x)
    reference = model._run_layers([x.copy()])
    for got, expected in zip(planned if isinstance(planned, list) else [planned], reference):
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    fused = [s for s in model._plan.steps if s.residual is not None]
    assert len(fused) == 1
    assert fused[0].in_place == (variant == {})


def test_a_convolution_whose_input_is_its_residual_does_not_store_in_place():
    # y = conv(a) + a: storing into a would overwrite input channels that later K blocks
    # (K = 300 > 256) and the other thread still read.
    x = fastconv.Input((300, 5, 5))
    a = L.Conv2D(300, 1, name="a")(x)
    model = fastconv.Model(x, L.Add(name="add")([L.Conv2D(300, 1, name="b")(a), a]), seed=0)
    data = np.random.default_rng(4).standard_normal((2, 300, 5, 5)).astype(np.float32)
    assert_plan_matches_layers(model, data)
    fused = [s for s in model._plan.steps if s.residual is not None]
    assert len(fused) == 1 and not fused[0].in_place


def test_prepared_conv_with_out_overlapping_its_input():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((300, 300, 1, 1)).astype(np.float32)
    conv = fastconv.functional.PreparedConv2d(w, None, (300, 5, 5))
    x = rng.standard_normal((2, 300, 5, 5)).astype(np.float32)
    expected = conv(x, residual=x)
    conv(x, residual=x, out=x)  # out is x, and the residual too
    np.testing.assert_array_equal(x, expected)


def test_residual_from_the_model_input_leaves_the_input_untouched():
    x = fastconv.Input((3, 8, 8))
    model = fastconv.Model(x, L.Add(activation="relu")([L.Conv2D(3, 3, padding=1)(x), x]), seed=0)
    data = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    kept = data.copy()
    assert_plan_matches_layers(model, data)
    assert np.array_equal(data, kept)


def test_both_add_operands_from_convolutions():
    x = fastconv.Input((4, 10, 10))
    left = L.BatchNormalization()(L.Conv2D(8, 3, padding=1)(x))
    right = L.BatchNormalization()(L.Conv2D(8, 1)(x))
    model = fastconv.Model(x, L.ReLU()(L.Add()([left, right])), seed=0)
    randomize_batchnorm(model)
    assert_plan_matches_layers(model, np.random.default_rng(4).standard_normal((1, 4, 10, 10)))
    assert len(model._plan.steps) == 2


def projection_block(stride=2, shortcut_first=False, shortcut_relu=False, shortcut_read=False,
                     shortcut_is_output=False, biases=True):
    """A bottleneck's end: a 1x1 conv + BN adding a projection shortcut (1x1 conv + BN at
    `stride` over the block input), as ResNet-50 has at the start of each stage."""
    x = fastconv.Input((6, 10, 10))
    stem = L.Conv2D(8, 3, padding=1, activation="relu", name="stem")(x)

    def shortcut():
        s = L.BatchNormalization(name="bnd")(L.Conv2D(40, 1, strides=stride, use_bias=biases,
                                                      name="down")(stem))
        return L.ReLU(name="relu_d")(s) if shortcut_relu else s

    short = shortcut() if shortcut_first else None
    mid = L.Conv2D(5, 3, strides=stride, padding=1, activation="relu", name="mid")(stem)
    main = L.BatchNormalization(name="bn3")(L.Conv2D(40, 1, use_bias=biases, name="conv3")(mid))
    short = short if shortcut_first else shortcut()
    y = L.Add(activation="relu", name="add")([main, short])
    outputs = [y]
    if shortcut_read:
        outputs.append(L.GlobalAveragePooling2D(name="gap")(short))
    if shortcut_is_output:
        outputs.append(short)
    return fastconv.Model(x, outputs if len(outputs) > 1 else y, seed=0)


@pytest.mark.parametrize("variant,fused", [
    ({}, True), ({"stride": 1}, True), ({"stride": 3}, True), ({"biases": False}, True),
    ({"shortcut_first": True}, True), ({"shortcut_relu": True}, False),
    ({"shortcut_read": True}, False), ({"shortcut_is_output": True}, False)])
@pytest.mark.parametrize("batch", [1, 3])
def test_projection_shortcut_fused_into_the_convolution_adding_it(variant, fused, batch):
    model = projection_block(**variant)
    randomize_batchnorm(model)
    x = np.random.default_rng(5).standard_normal((batch, 6, 10, 10)).astype(np.float32)
    with isa_cap("avx2"):  # where the fused GEMM applies to every layer (conv_sum_applies)
        planned = model.predict(x)
        summary = model.plan_summary(print_fn=None)
    reference = model._run_layers([x.copy()])
    for got, expected in zip(planned if isinstance(planned, list) else [planned], reference):
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    sums = [line for line in summary.splitlines() if "conv2d[gemm+shortcut]" in line]
    assert len(sums) == fused
    if fused:
        assert "conv3 + bn3 + add" in sums[0] and "down + bnd" in sums[0]
        assert len(model._plan.steps) == 3  # stem, mid, the sum


def test_a_residual_made_by_a_python_step_is_no_projection_shortcut():
    # The residual's producer runs only in Python (a standalone BatchNormalization): planning
    # must leave the residual add as it is.
    x = fastconv.Input((4, 6, 6))
    side = L.BatchNormalization(name="side")(x)
    model = fastconv.Model(x, L.Add(name="add")([L.Conv2D(4, 1, name="c")(x), side]), seed=0)
    randomize_batchnorm(model)
    with isa_cap("avx2"):
        assert_plan_matches_layers(model, np.random.default_rng(6).standard_normal((2, 4, 6, 6)))
    assert "conv2d[gemm] c + add (+ residual side)" in model.plan_summary(print_fn=None)


def test_resnet50_fuses_each_stage_s_projection_shortcut():
    model = models.resnet50()
    with isa_cap("avx2"):
        lines = model.plan_summary(print_fn=None).splitlines()
    sums = [line.split()[2] for line in lines if "conv2d[gemm+shortcut]" in line]
    assert sums == [f"layer{i}.0.conv3" for i in range(1, 5)]
    assert not any(line.split()[2].endswith("downsample.0") for line in lines)  # no step alone


def test_replaced_weights_and_a_new_kernel_table_rebuild_the_plan():
    model = models.lenet5()
    x = np.random.default_rng(5).standard_normal((4, 1, 32, 32)).astype(np.float32)
    model.predict(x)
    before = model.predict(x)  # the direct path's program (Plan.run_direct), bound
    conv = model.get_layer("conv1")
    conv.set_weights([conv.weights["kernel"] * 2, conv.weights["bias"] + 1])
    after = model.predict(x)
    assert not np.array_equal(before, after)
    assert_plan_matches_layers(model, x)
    with isa_cap("scalar"):
        scalar = model.predict(x)
    assert np.abs(scalar - after).max() <= 1e-5 * np.abs(after).max()


def test_channels_last_models_run_layer_by_layer():
    x = fastconv.Input((8, 8, 3), data_format="channels_last")
    model = fastconv.Model(x, L.Conv2D(4, 3, activation="relu")(x), seed=0)
    assert "not planned" in model.plan_summary(print_fn=None)
    data = np.random.default_rng(6).standard_normal((2, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(model.predict(data), model._run_layers([data])[0])


def test_arena_buffers_are_reused_and_outputs_stay_the_callers():
    model = models.resnet18(input_shape=(3, 64, 64))
    plan_steps = len(model.plan_summary(print_fn=None).splitlines())
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    first = model.predict(x)
    kept = first.copy()
    second = model.predict(x[::-1].copy())
    assert np.array_equal(first, kept)  # the second run did not write into the first's output
    assert not np.array_equal(first, second)
    plan = model._plan
    assert len(plan._slot_sizes) < plan_steps // 4  # liveness: a few buffers serve all steps
    assert model.predict(x).tobytes() == kept.tobytes()


def test_an_output_viewing_an_arena_buffer_is_copied():
    x = fastconv.Input((2, 8, 8))
    y = L.Flatten()(L.MaxPool2D(2)(L.Conv2D(3, 3, padding=1)(x)))
    model = fastconv.Model(x, y, seed=0)
    data = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    first = model.predict(data)
    kept = first.copy()
    model.predict(-data)
    assert np.array_equal(first, kept)


def test_arenas_are_per_thread_and_bounded():
    import threading

    model = models.lenet5()
    for batch in (1, 2, 3, 4):
        model.predict(np.zeros((batch, 1, 32, 32), np.float32))
    plan = model._plan
    assert list(plan._local.arenas) == [3, 4]  # the last two batch sizes
    seen = []
    thread = threading.Thread(target=lambda: (model.predict(np.zeros((5, 1, 32, 32), np.float32)),
                                              seen.append(list(plan._local.arenas))))
    thread.start()
    thread.join()
    assert seen == [[5]] and list(plan._local.arenas) == [3, 4]


def test_set_algorithm_forces_and_checks_a_layer(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(tmp_path / "none.json"))
    model = models.resnet18(input_shape=(3, 64, 64))
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    reference = model.predict(x)
    model.set_algorithm("layer1.0.conv1", "im2col")
    assert "conv2d[im2col] layer1.0.conv1" in model.plan_summary(print_fn=None)
    assert np.abs(model.predict(x) - reference).max() <= 1e-4 * np.abs(reference).max()
    model.set_algorithm("layer1.0.conv1", "auto")
    assert "conv2d[im2col] layer1.0.conv1" not in model.plan_summary(print_fn=None)
    for winograd in ("winograd", "winograd4"):
        with pytest.raises(ValueError, match=winograd):
            model.set_algorithm("layer2.0.downsample.0", winograd)  # a 1x1 layer
    with pytest.raises(ValueError, match="Conv2D"):
        model.set_algorithm("maxpool", "im2col")


def test_tune_writes_a_cache_that_plans_follow(monkeypatch, tmp_path):
    cache = tmp_path / "tuning.json"
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(cache))
    model = models.lenet5()
    rows = model.tune(rounds=1, print_fn=None)
    assert [r["layer"] for r in rows] == ["conv1", "conv2"] and cache.is_file()
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 2
    for entry in entries.values():  # force a choice the heuristic would not make
        entry["algorithm"] = "im2col"
    cache.write_text(json.dumps({"entries": entries}))
    assert model.plan_summary(print_fn=None).count("conv2d[im2col]") == 2
    cache.write_text("not json")  # a damaged cache is ignored
    assert "conv2d[im2col] conv2" not in model.plan_summary(print_fn=None)
    cache.unlink()
    assert "conv2d[im2col]" not in model.plan_summary(print_fn=None)


def mixed_model():
    """Native steps (conv, pool, concat, flatten, dropout, global pooling, dense) around steps
    only Python runs (LRN, softmax), with an alias (flatten) and a concat part as outputs."""
    x = fastconv.Input((3, 12, 12))
    a = L.Conv2D(8, 3, padding=1, activation="relu", name="a")(x)
    p = L.MaxPool2D(2, name="pool")(a)
    n = L.LocalResponseNormalization(3, name="lrn")(p)
    b = L.Conv2D(4, 1, name="b")(n)
    c = L.Conv2D(4, 3, padding=1, name="c")(p)
    cat = L.Concatenate(axis=1, name="cat")([b, c, b])
    g = L.GlobalAveragePooling2D(name="gap")(cat)
    flat = L.Flatten(name="flat")(L.Dropout(0.5, name="drop")(c))
    d = L.Dense(5, name="d")(L.Concatenate(axis=1, name="join")([g, flat]))
    s = L.Activation("softmax", name="soft")(d)
    return fastconv.Model(x, [L.Dense(3, name="after")(s), flat, c], seed=0)


def test_native_segments_and_python_steps_give_the_layers_results():
    model = mixed_model()
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    planned = model.predict(x)
    reference = model._run_layers([x])
    plan = model._plan
    segments = [u for u in plan.units if not isinstance(u, int)]
    assert len(segments) >= 2 and any(isinstance(u, int) for u in plan.units)
    for got, want in zip(planned, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    again = model.predict(x)  # arenas reused: the first results must not change
    for first, second in zip(planned, again):
        np.testing.assert_array_equal(first, second)
        assert not np.shares_memory(first, second)


def test_a_segment_equals_its_steps_run_one_by_one():
    model = models.googlenet(input_shape=(3, 64, 64))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    plan = model._current_plan()
    assert [type(u).__name__ for u in plan.units] == ["Segment"]
    values = {plan._position[model.inputs[0]]: x}
    for step in plan.steps:
        values[step.output] = step.run(values, None)
    np.testing.assert_array_equal(model.predict(x), values[plan._position[model.outputs[0]]])


def test_program_refuses_registers_that_do_not_fit_its_ops():
    from fastconv import _core
    dense = _core.DensePlan(np.ones((4, 6), np.float32), None, 0)
    with pytest.raises(ValueError, match="floats per sample"):
        _core.Program([("dense", dense, 0, 1)], [5, 4])
    with pytest.raises(ValueError, match="register 2"):
        _core.Program([("alias", 0, 2)], [5, 5])
    with pytest.raises(ValueError, match="register -1"):
        _core.Program([("alias", -1, 0)], [5, 5])
    ones = np.ones((2, 4, 1, 1), np.float32)
    conv_sum = _core.ConvSumPlan(ones[:, :3], ones[:, :1], None, (3, 2, 2), (1, 4, 4), 2, 0)
    with pytest.raises(ValueError, match="register -1"):  # its second input is no option
        _core.Program([("conv_sum", conv_sum, 0, -1, 1)], [12, 8])
    with pytest.raises(ValueError, match="floats per sample"):
        _core.Program([("conv_sum", conv_sum, 0, 2, 1)], [12, 8, 15])
    program = _core.Program([("conv_sum", conv_sum, 0, 2, 1)], [12, 8, 16])
    out = np.empty((2, 8), np.float32)
    program.run(2, [np.ones((2, 12), np.float32), out, np.ones((2, 16), np.float32)])
    np.testing.assert_array_equal(out, np.full((2, 8), 4.0, np.float32))  # 3 + 1 per output
    with pytest.raises(ValueError, match="overruns|floats per sample"):
        _core.Program([("copy", 0, 1, 3)], [4, 6])
    program = _core.Program([("dense", dense, 0, 1)], [6, 4])
    y = np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="2 registers expected"):
        program.run(2, [np.ones((2, 6), np.float32)])
    with pytest.raises(ValueError, match="register 0 must be a C-contiguous float32 array of 12"):
        program.run(2, [np.ones((2, 5), np.float32), y])
    with pytest.raises(ValueError, match="register 0"):
        program.run(2, [np.ones((2, 6), np.float64), y])
    with pytest.raises(ValueError, match="writes a register with no array"):
        program.run(2, [np.ones((2, 6), np.float32), None])
    program.run(2, [np.ones((2, 6), np.float32), y])
    np.testing.assert_array_equal(y, np.full((2, 4), 6.0, np.float32))


def concat_model():
    """Five parts joined along the channels: a 1x1 and a 3x3 convolution and a max pooling
    (written in place), a convolution also read by another layer and one that is a model
    output (both copied)."""
    x = fastconv.Input((6, 9, 9))
    stem = L.Conv2D(6, 3, padding=1, activation="relu", name="stem")(x)
    a = L.Conv2D(5, 1, activation="relu", name="a")(stem)
    b = L.Conv2D(3, 3, padding=1, name="b")(stem)
    p = L.MaxPool2D(3, strides=1, padding=1, name="p")(stem)
    shared = L.Conv2D(4, 1, name="shared")(stem)
    out = L.Conv2D(2, 1, name="out")(stem)
    cat = L.Concatenate(axis=1, name="cat")([a, b, p, shared, out])
    head = L.Conv2D(7, 1, name="head")(cat)
    side = L.GlobalAveragePooling2D(name="side")(shared)
    return fastconv.Model(x, [head, side, out], seed=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_concatenation_parts_written_in_place_give_the_layers_results(batch):
    model = concat_model()
    x = np.random.default_rng(4).standard_normal((batch, 6, 9, 9)).astype(np.float32)
    planned = model.predict(x)
    plan = model._plan
    (concat,) = [s for s in plan.steps if s.describe.startswith("concatenate")]
    names = {plan._model._nodes[i].layer.name for i in concat.assembled}
    assert names == {"a", "b", "p"}
    assert "(3 of 5 parts written in place)" in model.plan_summary(print_fn=None)
    reference = model._run_layers([x])
    for got, want in zip(planned, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    again = model.predict(x)  # the arena reused: the first results stay the caller's
    for first, second in zip(planned, again):
        np.testing.assert_array_equal(first, second)


def test_program_views_write_into_their_whole_one_sample_at_a_time():
    """A pooling writing into the second half of each sample of a larger register, at an odd
    batch, next to a copied part; views that overrun, nest or are given arrays are refused."""
    from fastconv import _core
    pool = ("pool", True, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), True, (2, 4, 4), (2, 2))
    program = _core.Program([pool + (0, 1), ("copy", 2, 3, 0)], [32, 8, 8, 16],
                            [(1, 3, 8)])
    rng = np.random.default_rng(5)
    x, first = rng.standard_normal((3, 32)).astype(np.float32), rng.standard_normal((3, 8))
    first = first.astype(np.float32)
    whole = np.full((3, 16), np.nan, np.float32)
    program.run(3, [x, None, first, whole])
    pooled = x.reshape(3, 2, 2, 2, 2, 2).max(axis=(3, 5)).reshape(3, 8)
    np.testing.assert_array_equal(whole, np.concatenate([first, pooled], axis=1))
    with pytest.raises(ValueError, match="register 1 is a view; its array must be None"):
        program.run(3, [x, np.empty((3, 8), np.float32), first, whole])
    with pytest.raises(ValueError, match="overruns register 3"):
        _core.Program([("copy", 2, 3, 0)], [32, 8, 8, 16], [(1, 3, 9)])
    with pytest.raises(ValueError, match="into one that is no view"):
        _core.Program([("copy", 2, 3, 0)], [32, 8, 8, 16], [(1, 3, 8), (3, 0, 0)])


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunks_of_samples_compute_what_the_whole_batch_does(monkeypatch, chunk):
    """The convolutional part run a few samples at a time (registers offset per chunk, the dense
    tail on the whole batch), across in-place residuals, aliases, concatenations and an uneven
    last chunk."""
    from fastconv.plan import Segment
    rng = np.random.default_rng(2)
    for model, size in ((models.mobilenet_v2(input_shape=(3, 64, 64)), 64),
                        (models.googlenet(input_shape=(3, 64, 64)), 64), (mixed_model(), 12)):
        x = rng.standard_normal((5, 3, size, size)).astype(np.float32)
        randomize_batchnorm(model)
        whole = model.predict(x)
        monkeypatch.setattr(Segment, "chunk", lambda self, batch, threads: chunk)
        model._plan = None
        chunked = model.predict(x)
        for got, want in zip(*(v if isinstance(v, list) else [v] for v in (chunked, whole))):
            np.testing.assert_array_equal(got, want)
        monkeypatch.undo()


@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_threads_running_apart_compute_what_they_compute_op_by_op(monkeypatch, chunk):
    """Each of two threads running its share of the samples through the whole convolutional
    part (registers sharing an arena buffer placed by the buffer's size, the dense tail on the
    whole batch) gives the results of the threads sharing each op and of one thread, at uneven
    shares, across in-place residuals, aliases, concatenations and depth-first chains, on
    every predict (no race between the threads' registers)."""
    from fastconv.plan import Segment
    rng = np.random.default_rng(3)
    previous = fastconv.get_num_threads()
    fastconv.set_num_threads(2)
    try:
        for model, size in ((models.mobilenet_v2(input_shape=(3, 64, 64)), 64),
                            (models.googlenet(input_shape=(3, 64, 64)), 64),
                            (models.resnet50(input_shape=(3, 64, 64)), 64), (mixed_model(), 12)):
            x = rng.standard_normal((5, 3, size, size)).astype(np.float32)
            randomize_batchnorm(model)
            monkeypatch.setattr(Segment, "chunk", lambda self, batch, threads: chunk)
            monkeypatch.setattr(Segment, "runs_apart", lambda self, batch, threads: False)
            model._plan = None
            op_by_op = model.predict(x)
            monkeypatch.setattr(Segment, "runs_apart", lambda self, batch, threads: batch > 1)
            model._plan = None  # a plan binds its programs' chunks and strides once per batch
            fastconv.set_num_threads(1)
            one_thread = model.predict(x)
            fastconv.set_num_threads(2)
            for _ in range(3):
                apart = model.predict(x)
                for got, want, alone in zip(*(v if isinstance(v, list) else [v]
                                              for v in (apart, op_by_op, one_thread))):
                    np.testing.assert_array_equal(got, want)
                    np.testing.assert_array_equal(got, alone)
            monkeypatch.undo()
    finally:
        fastconv.set_num_threads(previous)


def test_program_refuses_strides_that_do_not_fit_its_registers():
    from fastconv import _core
    dense = _core.DensePlan(np.ones((4, 6), np.float32), None, 0)
    program = _core.Program([("dense", dense, 0, 1)], [6, 4])
    x, y = np.ones((2, 6), np.float32), np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="2 strides expected; received 1"):
        program.run(2, [x, y], 0, [0])
    with pytest.raises(ValueError, match="register 0 holds 6 floats per sample; received a "
                                         "stride of 5"):
        program.run(2, [x, y], 0, [5, 0])


def test_only_memory_bound_segments_are_cut_into_chunks():
    """MobileNetV2 (5 MACs per byte of activations) and ResNet-50 (36) run in chunks of a
    multiple of the threads whose largest op fits the cache budget; ResNet-18 (70) never;
    LeNet-5 only at batches far past what fits."""
    def segment(model):
        (unit,) = model._current_plan().units
        return unit

    mobilenet = segment(models.mobilenet_v2())
    assert [mobilenet.chunk(8, t) for t in (1, 2)] == [2, 2]
    assert mobilenet.chunk(2, 2) == 0 and mobilenet.chunk(1, 1) == 0
    assert [segment(models.resnet50()).chunk(8, t) for t in (1, 2)] == [2, 2]
    assert segment(models.resnet18()).chunk(8, 1) == 0
    lenet = segment(models.lenet5())
    assert lenet.chunk(8, 1) == 0
    assert lenet.chunk(100000, 2) % 2 == 0 and 0 < lenet.chunk(100000, 2) < 100000


def test_a_plain_input_takes_the_direct_path_and_gives_the_general_path_s_results():
    """One C-contiguous float32 array into a plan that is one native segment: predict runs a
    BoundProgram per thread, batch size and thread count (Plan.run_direct) and must give what
    the general path (Plan.run) gives, in a fresh array each call, keeping no reference to the
    caller's input."""
    import sys

    model = models.lenet5()
    previous = fastconv.get_num_threads()
    rng = np.random.default_rng(11)
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            for batch in (1, 3):
                x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
                refs = sys.getrefcount(x)
                first = model.predict(x)  # makes the plan through the general path
                second = model.predict(x)
                assert (batch, threads) in model._plan._local.bound
                assert sys.getrefcount(x) == refs
                general = model._plan.run([x])[0]
                np.testing.assert_array_equal(first, general)
                unfused = model._run_layers([x])[0]  # the layers one by one, no plan
                assert np.abs(second - unfused).max() <= 1e-5 * np.abs(unfused).max()
                np.testing.assert_array_equal(second, general)
                assert second is not first and not np.shares_memory(second, first)
                kept = second.copy()
                model.predict(-x)
                np.testing.assert_array_equal(second, kept)
    finally:
        fastconv.set_num_threads(previous)


def test_inputs_the_direct_path_does_not_take_go_the_general_way():
    model = models.lenet5()
    x = np.random.default_rng(12).standard_normal((2, 1, 32, 32)).astype(np.float32)
    want = model.predict(x)
    plan = model._plan
    assert plan.run_direct(x) is not None
    for other in (x.astype(np.float64), np.asfortranarray(x), x.tolist()):
        assert plan.run_direct(other) is None
        np.testing.assert_allclose(model.predict(other), want, rtol=1e-6)
    assert plan.run_direct(x[:, :, :, :31].copy()) is None
    with pytest.raises(ValueError, match=r"expects arrays shaped \(batch, 1, 32, 32\)"):
        model.predict(x[:, :, :, :31].copy())
    assert plan.run_direct(x[:0]) is None and model.predict(x[:0]).shape == (0, 10)
    np.testing.assert_array_equal(model.predict(x, batch_size=1), want)
    # A model given a list of outputs returns a list: not the direct path's single array.
    inp = fastconv.Input((1, 32, 32))
    listed = fastconv.Model(inp, [L.Conv2D(2, 3)(inp)], seed=0)
    assert listed._current_plan()._direct is None and isinstance(listed.predict(x), list)


def test_direct_programs_are_dropped_with_their_arena():
    model = models.lenet5()
    model.predict(np.zeros((2, 1, 32, 32), np.float32))
    plan = model._plan
    threads = fastconv.get_num_threads()
    for batch in (1, 2, 3, 4):
        model.predict(np.zeros((batch, 1, 32, 32), np.float32))
    assert sorted(plan._local.bound) == [(3, threads), (4, threads)]


def test_bound_program_arguments_are_checked():
    from fastconv import _core
    dense = _core.DensePlan(np.ones((4, 6), np.float32), None, 0)
    program = _core.Program([("dense", dense, 0, 1)], [6, 4])
    with pytest.raises(ValueError, match="registers 0 to 1 expected; received input 0, output 2"):
        _core.BoundProgram(program, [None, None], 1, 0, None, 0, (6,), 2, (4,))
    with pytest.raises(ValueError, match="arrays must be None"):
        _core.BoundProgram(program, [np.zeros(6, np.float32), None], 1, 0, None, 0, (6,), 1, (4,))
    bound = _core.BoundProgram(program, [None, None], 2, 0, None, 0, (6,), 1, (4,))
    np.testing.assert_array_equal(bound.run(np.ones((2, 6), np.float32)), np.full((2, 4), 6.0))
    assert bound.run(np.ones((1, 6), np.float32)) is None  # another batch size
    assert bound.run(np.ones((2, 6))) is None and bound.run("x") is None


def test_threads_predicting_at_once_each_get_their_own_results():
    """Each Python thread binds its own programs over its own arena: concurrent predicts of
    different inputs through the direct path do not mix their registers."""
    import threading

    model = models.lenet5()
    rng = np.random.default_rng(14)
    inputs = [rng.standard_normal((2, 1, 32, 32)).astype(np.float32) for _ in range(3)]
    wants = [model._run_layers([x])[0] for x in inputs]
    errors = []

    def work(x, want):
        try:
            for _ in range(50):
                got = model.predict(x)
                assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        except AssertionError as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(inputs, wants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_weights_assigned_anywhere_are_checked_and_only_this_model_s_replan_it():
    """Plan.is_current walks its layers only when some layer's weights were assigned since
    (Layer.weights_version): another model's new weights keep this plan; this model's, even
    assigned directly, replace it."""
    model, other = models.lenet5(), models.lenet5()
    x = np.random.default_rng(15).standard_normal((2, 1, 32, 32)).astype(np.float32)
    before = model.predict(x)
    plan = model._plan
    conv = other.get_layer("conv1")
    conv.set_weights([conv.weights["kernel"] * 2, conv.weights["bias"]])
    np.testing.assert_array_equal(model.predict(x), before)
    assert model._plan is plan
    mine = model.get_layer("conv1")
    mine.weights = {"kernel": mine.weights["kernel"] * 2, "bias": mine.weights["bias"]}
    after = model.predict(x)
    assert model._plan is not plan and not np.array_equal(after, before)
    assert_plan_matches_layers(model, x)
