"""Determinism: every network of the zoo gives bit-identical outputs for 1, 2, 3 and 4 threads,
at batch 1 and 2, and again in a fresh process (other addresses, other alignments of the
arrays); a sample's result does not depend on the batch it is in. Weights and inputs come from
fixed seeds.

``python tests/test_determinism.py NETWORK THREADS`` prints that process's output digests."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import models
from fastconv.layers import BatchNormalization

ROOT = Path(fastconv.__file__).resolve().parents[1]
THREAD_COUNTS = (1, 2, 3, 4)
BATCHES = (1, 2)
# Every network of the zoo; one VGG (the others differ only in depth).
NETWORKS = {
    "lenet5": ("lenet5", {}),
    "lenet5-1998": ("lenet5", {"variant": "1998"}),
    "alexnet": ("alexnet", {}),
    "vgg16": ("vgg16", {}),
    "googlenet": ("googlenet", {}),
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "resnet152": ("resnet152", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
}
SLOW = {"alexnet", "vgg16", "resnet50", "resnet152"}


def seeded_model(network, seed=0):
    """The network with every weight drawn from ``seed``: kernels He-normal over their fan-in
    (everything after the first axis), vectors small and uniform, BatchNorm variances positive
    and scales below 1 (so 50 residual blocks do not overflow float32)."""
    factory, options = NETWORKS[network]
    model = getattr(models, factory)(**options)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = {}
        for name, w in layer.weights.items():
            if isinstance(layer, BatchNormalization):
                low, high = {"gamma": (0.25, 0.75), "moving_variance": (0.5, 1.5)}.get(name, (-0.2, 0.2))
                weights[name] = rng.uniform(low, high, w.shape)
            elif w.ndim >= 2:
                weights[name] = rng.normal(0.0, np.sqrt(2.0 / np.prod(w.shape[1:])), w.shape)
            else:
                weights[name] = rng.uniform(-0.1, 0.1, w.shape)
        if weights:
            layer.set_weights({k: v.astype(np.float32) for k, v in weights.items()})
    return model


def seeded_input(model, batch, seed=1):
    shape = (batch,) + model.inputs[0].sample_shape
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def outputs_by_threads(model, batch):
    """{threads: output} for every thread count, the previous count restored afterwards."""
    previous = fastconv.get_num_threads()
    x = seeded_input(model, batch)
    try:
        results = {}
        for threads in THREAD_COUNTS:
            fastconv.set_num_threads(threads)
            results[threads] = model.predict(x)
        return results
    finally:
        fastconv.set_num_threads(previous)


def digests_in_subprocess(network, threads):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    done = subprocess.run([sys.executable, __file__, network, str(threads)], capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    return {int(b): d for b, d in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize("network", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NETWORKS])
def test_zoo_outputs_are_bit_identical_across_threads_and_processes(network):
    model = seeded_model(network)
    here, first = {}, {}
    for batch in BATCHES:
        results = outputs_by_threads(model, batch)
        one = results[1]
        assert np.isfinite(one).all() and one.std() > 0, "a degenerate output proves nothing"
        for threads, y in results.items():
            assert y.tobytes() == one.tobytes(), (
                f"{network}, batch {batch}: {threads} threads differ from 1 thread by up to "
                f"{np.abs(y - one).max()}")
        here[batch] = digest(one)
        first[batch] = one[0]
    assert first[2].tobytes() == first[1].tobytes(), "a sample's result depends on its batch"
    assert digests_in_subprocess(network, threads=3) == here, "another process computed other bits"


if __name__ == "__main__":
    fastconv.set_num_threads(int(sys.argv[2]))
    model = seeded_model(sys.argv[1])
    print(json.dumps({b: digest(model.predict(seeded_input(model, b))) for b in BATCHES}))
