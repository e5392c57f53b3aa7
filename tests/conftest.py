import os

import numpy as np
import pytest

SEED = int(os.environ.get("FASTCONV_TEST_SEED", "20240611"))


# A developer's tuning cache (Model.tune) must not change which algorithms the tests see.
os.environ["FASTCONV_TUNE_CACHE"] = os.path.join(os.path.dirname(__file__), ".no-tuning-cache.json")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavier tests (deselect with -m 'not slow')")


def pytest_report_header(config):
    lines = [f"FASTCONV_TEST_SEED={SEED}"]
    try:
        import fastconv
        cfg = fastconv.show_config(mode="dicts")
        for key in ("isa", "isa_cap", "isa_detected", "openmp", "num_threads"):
            lines.append(f"fastconv {key}: {cfg.get(key)!r}")
        lines.append(f"fastconv kernels: {cfg.get('kernels')!r}")
    except Exception as exc:  # report, don't break collection
        lines.append(f"fastconv show_config unavailable: {exc!r}")
    return lines


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


# Fuzz tests (test_fuzz_*.py) count their cases by target and outcome in this session-wide
# tally; the counts are printed at the end of the run (docs/reliability.md quotes them).
_FUZZ_TALLY = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def fuzz_tally(pytestconfig):
    """{target: Counter of outcomes}, e.g. tally["conv2d"]["rejected"] += 1."""
    from collections import Counter, defaultdict

    return pytestconfig.stash.setdefault(_FUZZ_TALLY, defaultdict(Counter))


def pytest_terminal_summary(terminalreporter, config):
    tally = config.stash.get(_FUZZ_TALLY, None)
    if not tally:
        return
    terminalreporter.write_sep("-", "fuzz cases (target: outcomes)")
    for target, counts in sorted(tally.items()):
        outcomes = ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"{target}: {sum(counts.values())} ({outcomes})")
