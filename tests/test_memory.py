"""Memory: repeated predictions leave resident memory flat, and nothing cached grows with the
variety of inputs.

Resident memory (RSS, from /proc/self/statm) is measured in a subprocess of its own, so other
tests' arrays do not disturb it: after a warm-up (plans made, allocator pools filled) the RSS must
grow by less than 2 % over the run. The figures are printed by ``python tests/test_memory.py``."""
import functools
import gc
import importlib
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import models

ROOT = Path(fastconv.__file__).resolve().parents[1]
MAX_GROWTH = 0.02
TIMEOUT = 900

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")


# The measurements (run in a subprocess: `python tests/test_memory.py SCENARIO`) --------------

def resident_bytes():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(step, warmup, calls):
    for _ in range(warmup):
        step()
    before = resident_bytes()
    for _ in range(calls):
        step()
    after = resident_bytes()
    return {"warmup": warmup, "calls": calls, "rss_before": before, "rss_after": after,
            "growth": (after - before) / before}


def lenet5_scenario():
    model = models.lenet5()
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    return measure(lambda: model.predict(x), warmup=1_000, calls=10_000)


def resnet50_scenario():
    model = models.resnet50()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return measure(lambda: model.predict(x), warmup=10, calls=200)


def alternating_sizes_scenario():
    """Batch sizes of a model, image sizes of the functional ops and of a prepared convolution's
    batch change at every call, in a cycle."""
    rng = np.random.default_rng(0)
    model = models.resnet18(input_shape=(3, 32, 32))
    batches = [rng.standard_normal((b, 3, 32, 32)).astype(np.float32) for b in (1, 5, 2, 8, 3)]
    images = [rng.standard_normal((1, 8, s, s)).astype(np.float32) for s in (16, 40, 23, 64, 31)]
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    prepared = fastconv.functional.PreparedConv2d(weight, None, (8, 16, 16), padding=1)
    calls = iter(range(10**9))

    def step():
        i = next(calls) % 5
        model.predict(batches[i], batch_size=4)
        y = fastconv.functional.conv2d(images[i], weight, padding=1, activation="relu")
        fastconv.functional.max_pool2d(y, 2, ceil_mode=True)
        fastconv.functional.gemm(y.reshape(16, -1), y.reshape(16, -1).T)
        prepared(np.repeat(images[0], i + 1, axis=0))

    return measure(step, warmup=25, calls=250)


SCENARIOS = {"lenet5": lenet5_scenario, "resnet50": resnet50_scenario,
             "alternating": alternating_sizes_scenario}


def run_scenario(name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    done = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_flat(name):
    result = run_scenario(name)
    mib = (result["rss_after"] - result["rss_before"]) / 2**20
    assert result["growth"] < MAX_GROWTH, (
        f"{name}: RSS grew {100 * result['growth']:.2f} % ({mib:.2f} MiB) over "
        f"{result['calls']} calls after {result['warmup']} warm-up calls")


# The tests ----------------------------------------------------------------------------------

def test_lenet5_10000_predictions_leave_memory_flat():
    check_flat("lenet5")


@pytest.mark.slow
def test_resnet50_200_predictions_leave_memory_flat():
    check_flat("resnet50")


@pytest.mark.slow
def test_alternating_input_sizes_leave_memory_flat():
    check_flat("alternating")


def test_a_replaced_plan_is_freed():
    """A model keeps one plan: the one made after new weights replaces the old, which is freed
    with its packed weights."""
    model = models.lenet5()
    x = np.zeros((1, 1, 32, 32), np.float32)
    model.predict(x)
    old = weakref.ref(model._plan)
    model.set_weights([w + 1 for w in model.get_weights()])
    model.predict(x)
    gc.collect()
    assert old() is None and model._plan is not None


def fastconv_function_caches():
    """Every functools cache in fastconv's loaded modules, by qualified name."""
    for name in ("fastconv.cli", "fastconv.convert", "fastconv.preprocess"):
        importlib.import_module(name)  # load them all

    caches = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("fastconv") or module is None:
            continue
        for name, value in vars(module).items():
            if hasattr(value, "cache_info") and isinstance(value, functools._lru_cache_wrapper):
                caches[f"{module_name}.{name}"] = value
    return caches


def test_every_function_cache_is_bounded():
    caches = fastconv_function_caches()
    assert caches, "expected the preprocessing caches at least"
    unbounded = [name for name, fn in caches.items() if fn.cache_parameters()["maxsize"] is None]
    assert not unbounded, f"unbounded caches: {unbounded}"


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
