"""Layer benchmarks: the machine's measured peak, and a closing table of GFLOP/s per shape.

    python -m pytest benchmarks/test_layer_speed.py --benchmark-columns=median,ops -q
"""
import time

import numpy as np
import pytest

import fastconv
import fastconv.functional as F

RESULTS = []  # (name, GFLOP/s) filled by the benchmarks


def _best_gflops(run, flops, repeats=5):
    run()
    best = min(_seconds(run) for _ in range(repeats))
    return flops / best / 1e9


def _seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@pytest.fixture(scope="session")
def peak_gflops():
    """The machine's practical peak: the best of fastconv's GEMM and NumPy's BLAS at 2048^3."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    flops = 2.0 * 2048 ** 3
    ours = _best_gflops(lambda: F.gemm(a, a), flops)
    blas = _best_gflops(lambda: a @ a, flops)
    print(f"\npeak at 2048^3 on {fastconv.get_num_threads()} threads: fastconv GEMM {ours:.1f} "
          f"GFLOP/s, NumPy BLAS {blas:.1f} GFLOP/s")
    return max(ours, blas)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    peak = RESULTS[0][2]
    terminalreporter.write_line(f"\nGFLOP/s per layer (peak {peak:.1f} GFLOP/s, "
                                f"{fastconv.get_num_threads()} threads, isa "
                                f"{fastconv.show_config(mode='dicts')['isa']})")
    for name, gflops, _ in RESULTS:
        terminalreporter.write_line(f"  {name:<44} {gflops:8.1f}  {100 * gflops / peak:5.1f} %")
