"""Processes: a model keeps working in children forked after the parent ran multi-threaded
inference (GNU libgomp's threads do not survive fork: fastconv makes such children run
single-threaded), and pickled models work in a 'spawn' multiprocessing pool.

Every scenario runs in a subprocess with a timeout, so a hang fails the test instead of blocking
the run."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastconv
from fastconv import _core

ROOT = Path(fastconv.__file__).resolve().parents[1]
TIMEOUT = 300  # seconds; the scenarios take a few seconds, a hang takes forever

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork semantics of Linux")
needs_openmp = pytest.mark.skipif(not _core.openmp_enabled(),
                                  reason="built without OpenMP: no threads to lose in a fork")

COMMON = """
import multiprocessing, os, sys, warnings
import numpy as np
import fastconv
from fastconv import _core, models

def make_model():
    return models.resnet18(input_shape=(3, 96, 96))

def inputs(n):
    return np.random.default_rng(1).standard_normal((n, 3, 96, 96)).astype(np.float32)
"""


def run_script(tmp_path, body, env=None):
    script = tmp_path / "scenario.py"
    script.write_text(COMMON + textwrap.dedent(body))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]), **(env or {})}
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=environment, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the scenario hung (killed after {TIMEOUT} s); output so far:\n{exc.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_openmp
def test_child_forked_after_two_thread_inference_predicts_correctly(tmp_path):
    out = run_script(tmp_path, """
        fastconv.set_num_threads(2)
        model, x = make_model(), inputs(2)
        expected = model.predict(x)  # starts libgomp's thread pool
        assert not _core.forked_single_threaded()
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(model.predict(x), expected)
            ok &= fastconv.get_num_threads() == 1 and _core.forked_single_threaded()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fastconv.set_num_threads(2)
            ok &= fastconv.get_num_threads() == 1 and len(caught) == 1
            ok &= np.array_equal(model.predict(x), expected)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert np.array_equal(model.predict(x), expected), "the parent changed"
        assert fastconv.get_num_threads() == 2
        print("fork ok")
    """)
    assert "fork ok" in out


def _fork_pool_body():
    return """
        def predict_rows(rows):
            return MODEL.predict(X[rows[0]:rows[1]])

        fastconv.set_num_threads(2)
        MODEL, X = make_model(), inputs(4)
        expected = MODEL.predict(X)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            parts = pool.map(predict_rows, [(0, 2), (2, 4)])
        assert np.array_equal(np.concatenate(parts), expected)
        print("fork pool ok")
    """


def test_fork_pool_after_inference(tmp_path):
    """The common way into the hang: multiprocessing's default start method on Linux, with the
    model (a global) used by the parent first."""
    assert "fork pool ok" in run_script(tmp_path, _fork_pool_body())


@needs_openmp
def test_child_forked_before_any_threads_keeps_them(tmp_path):
    out = run_script(tmp_path, """
        fastconv.set_num_threads(2)
        model, x = make_model(), inputs(1)
        pid = os.fork()
        if pid == 0:
            ok = not _core.forked_single_threaded() and fastconv.get_num_threads() == 2
            ok &= np.array_equal(model.predict(x), model.predict(x))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("early fork ok")
    """)
    assert "early fork ok" in out


def test_pickled_model_in_a_spawn_pool(tmp_path):
    out = run_script(tmp_path, """
        import pickle

        def predict(args):
            model_bytes, rows = args
            model = pickle.loads(model_bytes)
            return model.predict(rows), fastconv.get_num_threads()

        if __name__ == "__main__":
            model, x = make_model(), inputs(4)
            expected = model.predict(x)  # the parent's threads are running: spawn does not care
            blob = pickle.dumps(model)
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                parts = pool.map(predict, [(blob, x[i:i + 1]) for i in range(4)])
            assert np.array_equal(np.concatenate([p for p, _ in parts]), expected)
            print("spawn ok", sorted({n for _, n in parts}))
    """, env={"OMP_NUM_THREADS": "2"})
    assert f"spawn ok [{2 if _core.openmp_enabled() else 1}]" in out
