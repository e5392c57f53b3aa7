"""ONNX backend node conformance tests (shipped inside the onnx package) run through fastconv.

One case per node-test folder whose single node is one of onnx_adapter.OPS. Each case passes or is
skipped with the unsupported feature named; a summary line with the real counts is printed at the
end of the session.
"""

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("onnx")

try:  # tests/ may or may not be a package
    from . import onnx_adapter as oa
except ImportError:
    import onnx_adapter as oa

CASES = oa.find_cases()
RESULTS = {"passed": 0, "failed": 0, "skipped": Counter()}


class _Summary:
    """Registered as a plugin at run time (conftest.py is not ours) to print the counts."""

    def pytest_terminal_summary(self, terminalreporter):
        skipped = RESULTS["skipped"]
        terminalreporter.write_line(
            f"ONNX conformance: {RESULTS['passed']} passed, {sum(skipped.values())} skipped, "
            f"{RESULTS['failed']} failed")
        for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            terminalreporter.write_line(f"  skipped {n:3d}: {reason}")


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("fastconv-onnx-summary"):
        manager.register(_Summary(), "fastconv-onnx-summary")
    yield


def test_selection_covers_every_operator():
    assert set(CASES.values()) == oa.OPS
    assert len(CASES) >= 90  # onnx 1.22 ships 103 such cases


def _check_case(name):
    case = oa.load_case(name)
    for values, expected in case.data_sets:
        inputs = oa.node_inputs(case.node, values)
        wanted = [expected[o] for o in case.node.output if o]
        try:
            oa.check_supported(case.node, inputs, wanted)
        except oa.Unsupported as e:
            category = str(e).split(":")[0]
            RESULTS["skipped"][category] += 1
            pytest.skip(str(e))
        got, reduction = oa.run_node(case.node, case.opset, inputs)
        assert len(got) == len(wanted)
        atol = 1e-5 * max(1.0, np.sqrt(reduction))
        for g, w in zip(got, wanted):
            assert isinstance(g, np.ndarray) and g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol, strict=True,
                                       err_msg=f"{name} ({case.node.op_type})")


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_node(name):
    try:
        _check_case(name)
    except pytest.skip.Exception:
        raise
    except BaseException:
        RESULTS["failed"] += 1
        raise
    RESULTS["passed"] += 1
