"""Threads: one model (and the functional operators) used by many Python threads at once gives
exactly the serial results, and the threads really compute at the same time.

Overlap is proven without timing: ``_core.hold_calls`` makes every operator call wait at its
entry (GIL released), and the test waits until all its threads are inside an operator call at
once (``_core.calls_in_flight``). A call that kept the GIL would block the test thread, which
could never see them all, and the hold would expire: the test then fails, it does not hang."""
import threading
import time

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import _core, models
from fastconv import model as model_module
from fastconv.runtime import isa_cap

THREADS = 8
HOLD_SECONDS = 60.0  # an upper bound only: the hold is lifted as soon as every thread is inside


def run_in_threads(jobs):
    """Runs each job on its own thread while operator calls are held at their entry, releases
    them once all jobs are inside a call at the same time; returns the results and how many
    calls were seen in flight at once."""
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    _core.hold_calls(HOLD_SECONDS)
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + HOLD_SECONDS
        seen = 0
        while seen < len(jobs) and time.monotonic() < deadline and not errors:
            seen = max(seen, _core.calls_in_flight())
            time.sleep(0.001)
    finally:
        _core.hold_calls(0)
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert _core.calls_in_flight() == 0
    return results, seen


@pytest.fixture
def count_plans(monkeypatch):
    """How many plans Model makes during the test."""
    made = []

    class CountedPlan(model_module.Plan):
        def __init__(self, model):
            made.append(model)
            super().__init__(model)

    monkeypatch.setattr(model_module, "Plan", CountedPlan)
    return made


@pytest.fixture
def restore_threads():
    n = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(n)


def resnet18_and_inputs(batch=1):
    model = models.resnet18(input_shape=(3, 64, 64))
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((batch, 3, 64, 64)).astype(np.float32) for _ in range(THREADS)]
    return model, inputs


def test_one_model_in_8_threads_at_once_gives_the_serial_results(count_plans):
    model, inputs = resnet18_and_inputs()
    results, seen = run_in_threads([lambda x=x: model.predict(x) for x in inputs])
    assert seen == THREADS, f"only {seen} of {THREADS} threads were inside a kernel at once"
    assert len(count_plans) == 1, "the threads must share one plan, made once"
    for x, y in zip(inputs, results):
        assert np.array_equal(y, model.predict(x))


def test_threads_finding_a_stale_plan_replace_it_once(count_plans):
    model, inputs = resnet18_and_inputs()
    model.predict(inputs[0])
    model.set_weights([w * 0.5 for w in model.get_weights()])
    results, seen = run_in_threads([lambda x=x: model.predict(x) for x in inputs])
    assert seen == THREADS
    assert len(count_plans) == 2
    for x, y in zip(inputs, results):
        assert np.array_equal(y, model.predict(x))


def test_threads_meeting_a_kernel_table_change_repack_once(count_plans):
    """The ISA cap changes between predictions (as fastconv.runtime.isa_cap requires): every
    thread's first convolution reports stale packed weights; one new plan serves them all."""
    model, inputs = resnet18_and_inputs()
    model.predict(inputs[0])
    with isa_cap("scalar"):
        results, seen = run_in_threads([lambda x=x: model.predict(x) for x in inputs])
        assert seen == THREADS
        assert len(count_plans) == 2
        for x, y in zip(inputs, results):
            assert np.array_equal(y, model.predict(x))


def test_batches_in_chunks_from_threads(count_plans):
    model, inputs = resnet18_and_inputs(batch=3)
    results, seen = run_in_threads([lambda x=x: model.predict(x, batch_size=2) for x in inputs])
    assert seen == THREADS
    for x, y in zip(inputs, results):
        assert np.array_equal(y, model.predict(x))


def test_each_threads_results_survive_its_later_calls():
    """Each thread reuses its own buffers from call to call; the arrays a call returned must
    not change when the same thread predicts again on other inputs."""
    model, inputs = resnet18_and_inputs(batch=2)
    sequences = [inputs[i:] + inputs[:i] for i in range(THREADS)]
    results, seen = run_in_threads([lambda xs=xs: [model.predict(x) for x in xs]
                                    for xs in sequences])
    assert seen == THREADS
    for xs, ys in zip(sequences, results):
        for x, y in zip(xs, ys):
            assert np.array_equal(y, model.predict(x))


def test_changing_the_thread_count_while_threads_predict(restore_threads):
    """set_num_threads is process-wide and may be called at any time: results stay bit-identical
    (no operator splits a reduction across threads)."""
    model, inputs = resnet18_and_inputs()
    expected = [model.predict(x) for x in inputs]
    stop = threading.Event()

    def toggle():
        n = 0
        while not stop.is_set():
            fastconv.set_num_threads(1 + n % 4)
            n += 1
            time.sleep(0.0005)

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        results, seen = run_in_threads([lambda x=x: [model.predict(x) for _ in range(3)]
                                        for x in inputs])
    finally:
        stop.set()
        toggler.join()
    assert seen == THREADS
    for want, got in zip(expected, results):
        assert all(np.array_equal(want, y) for y in got)


def functional_job(seed):
    """A chain of functional operators on its own inputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    d = rng.standard_normal((10, 24 * 10 * 10)).astype(np.float32)

    def job():
        y = F.conv2d(x, w, padding=1, activation="relu")
        y = F.max_pool2d(y, 2)
        y = F.lrn(F.batch_norm(y, np.zeros(24), np.ones(24)), 5)
        logits = F.dense(F.flatten(y), d)
        return [y, F.softmax(logits), F.gemm(logits, logits.T), F.add(logits, logits, "relu"),
                F.global_avg_pool2d(y), F.avg_pool2d(y, 3, 1, 1), F.tanh(logits)]

    return job


def test_functional_operators_from_8_threads_give_the_serial_results():
    jobs = [functional_job(seed) for seed in range(THREADS)]
    results, seen = run_in_threads(jobs)
    assert seen == THREADS
    for job, got in zip(jobs, results):
        for want, y in zip(job(), got):
            assert np.array_equal(want, y)


def test_prepared_convolution_shared_by_threads():
    rng = np.random.default_rng(3)
    conv = F.PreparedConv2d(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), None,
                            (16, 24, 24), padding=1, activation="relu")
    inputs = [rng.standard_normal((2, 16, 24, 24)).astype(np.float32) for _ in range(THREADS)]
    results, seen = run_in_threads([lambda x=x: conv(x) for x in inputs])
    assert seen == THREADS
    for x, y in zip(inputs, results):
        assert np.array_equal(y, conv(x))

