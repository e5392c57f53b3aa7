"""Where a model's time goes: each step of its plan timed on its own, and the work it does.

``profile_plan(model, x)`` runs the model's plan (fastconv/plan.py) step by step, as
``predict`` does (same steps, same order, same arena buffers, intermediate arrays released
after their last reader), with a clock around every step; unlike ``predict`` it runs each step
over the whole batch (a large batch of MobileNetV2 goes through ``predict`` in chunks). It is
what ``fastconv profile`` prints, and what a ``Model.profile(x)`` method would return.

MACs are counted as ``Model.summary`` counts them (per sample: convolutions and dense layers
only); a fused step is credited with the MACs of every layer it runs.
"""
import time

import numpy as np

from .summary import _rows


def layer_macs(model):
    """{layer name: multiply-accumulates per sample}, the counts of ``model.summary()``."""
    return {name.rsplit(" (", 1)[0]: macs for name, _, _, macs, _ in _rows(model)}


def model_macs(model):
    """Multiply-accumulates per sample of the whole model (the summary's "Total MACs")."""
    return sum(layer_macs(model).values())


def step_kind(describe):
    """The operator of a plan step from its description: ``conv2d[winograd]``, ``dense``,
    ``maxpool2d``, ``conv2d[depth-first: gemm, direct, gemm]``, ..."""
    head = describe.split(" ", 1)[0]
    if "[" in head and "]" not in head:  # a bracket with spaces in it
        head = describe.split("]", 1)[0] + "]"
    return head


def _step_layers(describe):
    """The layers a step runs (``conv2d[im2col] conv1 + bn1 (+ residual x)`` -> conv1, bn1)."""
    names = describe[len(step_kind(describe)):].split(" (", 1)[0]
    return [name.strip() for name in names.split(" + ") if name.strip()]


def current_plan(model):
    """The model's up-to-date plan (made now if needed); ValueError for unplanned models."""
    if model.data_format != "channels_first":
        raise ValueError(f"{model.label}: only channels_first models have a plan to profile "
                         f"(this one is {model.data_format})")
    return model._current_plan()  # made now, or remade if stale


def _run_timed(plan, model, arrays):
    """One pass of the plan over checked input arrays; the seconds of each step. Steps write
    into the plan's activation arena, as in ``predict``: fresh arrays of tens of megabytes
    (batch 8) would be mapped anew by every call, and their page faults timed."""
    values = dict(zip((plan._position[t] for t in model.inputs), arrays))
    outs = plan.arena(arrays[0].shape[0])
    seconds = []
    for step, out in zip(plan.steps, outs):
        start = time.perf_counter()
        values[step.output] = step.run(values, out)
        seconds.append(time.perf_counter() - start)
        for i in step.release:
            del values[i]
    return seconds


def profile_plan(model, x, repeats=5):
    """Times every step of ``model``'s plan on input ``x`` (an array, batch axis first).

    Runs ``predict(x)`` once to warm up, then ``repeats`` timed passes. Returns one dict per
    step, in plan order: ``index``, ``step`` (its description), ``kind``, ``median_ms``,
    ``times_ms`` (every pass), ``macs`` (for the whole batch, 0 for steps that do not multiply)
    and ``gflops`` (None where there are no MACs).
    """
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"profile_plan: `repeats` must be an int >= 1; received {repeats!r}")
    model.predict(x)  # warm-up, and the shape checks of predict
    arrays = model._input_arrays(x)
    plan = current_plan(model)
    passes = np.array([_run_timed(plan, model, arrays) for _ in range(repeats)]) * 1e3
    macs_per_layer = layer_macs(model)
    batch = arrays[0].shape[0]
    rows = []
    for i, step in enumerate(plan.steps):
        median_ms = float(np.median(passes[:, i]))
        macs = sum(macs_per_layer.get(name, 0) for name in _step_layers(step.describe)) * batch
        gflops = 2.0 * macs / (median_ms * 1e-3) / 1e9 if macs and median_ms > 0 else None
        rows.append({"index": i, "step": step.describe, "kind": step_kind(step.describe),
                     "median_ms": median_ms, "times_ms": passes[:, i].tolist(), "macs": macs,
                     "gflops": gflops})
    return rows


def time_by_kind(rows):
    """{step kind: total median milliseconds}, largest first."""
    totals = {}
    for row in rows:
        totals[row["kind"]] = totals.get(row["kind"], 0.0) + row["median_ms"]
    return dict(sorted(totals.items(), key=lambda item: -item[1]))
