"""Interrupts: Ctrl-C during a long batched predict raises KeyboardInterrupt before the next
layer starts, and the model stays usable and correct.

Kernels run with the GIL released; Python runs its SIGINT handler when the kernel in flight
returns, so the interrupt surfaces between two steps of the plan. A prediction keeps its arrays
in a dict of its own and a new plan is published only once complete, so nothing is left
half-updated."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _core, models
from fastconv import plan as plan_module

ROOT = Path(fastconv.__file__).resolve().parents[1]
HOLD_SECONDS = 60.0

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python only turns SIGINT into KeyboardInterrupt when it was not ignored at start-up, and a
    shell ignores it in the commands it starts in the background (a CI runner may): install the
    default handler for these tests."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def resnet_and_batch():
    model = models.resnet18(input_shape=(3, 64, 64))
    x = np.random.default_rng(5).standard_normal((8, 3, 64, 64)).astype(np.float32)
    return model, x


def count_steps(plan):
    """Wraps each step of ``plan`` to append to the returned list when it starts."""
    started = []

    def counted(run):
        def run_counted(*args):
            started.append(1)
            return run(*args)
        return run_counted

    for step in plan.steps:
        step.run = counted(step.run)
    return started


def test_ctrl_c_inside_a_kernel_stops_before_the_next_step(monkeypatch):
    """The third chunk's first kernel call is held at its entry; SIGINT reaches the main thread
    while it is there. The kernel then completes, and no further step or chunk may start."""
    model, x = resnet_and_batch()
    expected = model.predict(x, batch_size=2)
    started = count_steps(model._current_plan())
    chunks, at_signal = [], []
    run_chunk = model._run
    predicted = threading.Event()

    def counted_chunk(arrays):
        chunks.append(len(arrays[0]))
        if len(chunks) == 3:
            _core.hold_calls(HOLD_SECONDS)
        return run_chunk(arrays)

    def press_ctrl_c():
        while len(chunks) < 3 or _core.calls_in_flight() == 0:
            if predicted.wait(0.001):
                return  # predict ended without reaching the held call: the asserts report it
        at_signal.append(len(started))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        _core.hold_calls(0)

    monkeypatch.setattr(model, "_run", counted_chunk)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.predict(x, batch_size=2)
    finally:
        predicted.set()
        _core.hold_calls(0)
        presser.join()
    assert at_signal, "predict never reached the held call"
    assert len(chunks) == 3, "a chunk started after Ctrl-C"
    assert len(started) == at_signal[0], "a step started after Ctrl-C"
    assert _core.calls_in_flight() == 0
    monkeypatch.undo()
    assert np.array_equal(model.predict(x, batch_size=2), expected)


def test_ctrl_c_while_a_plan_is_made_leaves_no_half_made_plan(monkeypatch):
    model, x = resnet_and_batch()
    expected = model.predict(x)
    old_plan = model._plan
    model.set_weights(model.get_weights())  # new arrays, same values: the plan must be remade
    made = []

    def interrupted_conv_step(self, chain):
        made.append(chain)
        if len(made) == 5:
            raise KeyboardInterrupt
        return original(self, chain)

    original = plan_module.Plan._conv_step
    monkeypatch.setattr(plan_module.Plan, "_conv_step", interrupted_conv_step)
    with pytest.raises(KeyboardInterrupt):
        model.predict(x)
    assert model._plan is old_plan, "the interrupted plan must not be published"
    monkeypatch.undo()
    assert np.array_equal(model.predict(x), expected)
    assert model._plan is not old_plan and model._plan.is_current()


CHILD = """
import signal
import time
import numpy as np
import fastconv
from fastconv import models

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
model = models.vgg16()
x = np.random.default_rng(0).standard_normal((CHUNKS, 3, 224, 224)).astype(np.float32)
expected = model.predict(x[:1])
chunks = []
run_chunk = model._run

def counted_chunk(arrays):
    chunks.append(1)
    if len(chunks) == 2:
        print("started", flush=True)
    return run_chunk(arrays)

model._run = counted_chunk
try:
    model.predict(x, batch_size=1)
    print("finished without an interrupt", flush=True)
except KeyboardInterrupt:
    print(f"interrupted in chunk {len(chunks)} of CHUNKS at {time.monotonic()}", flush=True)
    del model._run
    print("model ok" if np.array_equal(model.predict(x[:1]), expected) else "model wrong", flush=True)
    raise
"""


@pytest.mark.slow
def test_sigint_to_a_process_predicting_a_long_batch(tmp_path):
    """A real Ctrl-C: SIGINT from outside while VGG-16 works through 100 one-image chunks. The
    child must exit through KeyboardInterrupt long before the batch could finish, after
    checking its model still predicts correctly."""
    chunks = 100
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD).replace("CHUNKS", str(chunks)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "started", line + child.stderr.read()
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=600)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGINT, (child.returncode, out, err)
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert "model ok" in out
    words = out.split("interrupted in chunk ")[1].split()
    interrupted_in, caught = int(words[0]), float(words[4])  # CLOCK_MONOTONIC is system-wide
    print(f"SIGINT to KeyboardInterrupt: {caught - sent:.3f} s, in chunk {interrupted_in} of "
          f"{chunks}")
    assert interrupted_in < chunks
