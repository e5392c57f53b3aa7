"""Single convolution layers, fastconv against ONNX Runtime's own Conv node, interleaved.

    python benchmarks/ort_layers.py 1024,14,256,1,1 128,56,128,3,2 [--rounds 15]

Each spec is C,H,O,K,S: C input channels of H x H, O output channels, a K x K kernel at stride
S, padding K // 2, bias and ReLU (as `ab_builds.py conv:C,H,O,K,S`). fastconv runs the layer as
a model plan would (`PreparedConv2d`, "auto" algorithm, into a preallocated output); ONNX Runtime
runs a one-node model (all graph optimisations, no idle spinning) with its profiler on, and only
its Conv node's time counts (not the layout reorders around it, which a whole network mostly
does without). In each round ONNX Runtime runs 3 times, then fastconv 3 times; the fastest of
each three counts. One thread, CPU time for fastconv: it prints both medians, GFLOP/s, and the
median per-round ratio fastconv / ONNX Runtime with its quartiles. Needs onnx and onnxruntime.
"""
import argparse
import json
import sys
import tempfile
import time

import numpy as np

import fastconv
from fastconv import functional as F
from ort_profile import session as ort_session


def onnx_conv(shape, w, b, stride, pad, path):
    """A Conv + Relu model of an input of `shape`, weights w (O, C, K, K) and bias b, at path."""
    from onnx import TensorProto, helper, numpy_helper, save

    k = w.shape[2]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], strides=[stride] * 2,
                              pads=[pad] * 4, kernel_shape=[k, k]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def conv_node_ms(session):
    """The Conv node's time of every profiled run, in order, in ms."""
    with open(session.end_profiling()) as f:
        return [e["dur"] / 1e3 for e in json.load(f)
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["args"].get("op_name") == "Conv"]


def compare(spec, rounds, tmp):
    c, h, o, k, s = (int(v) for v in spec.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    conv = F.PreparedConv2d(w, b, (c, h, h), stride=s, padding=k // 2, activation="relu")
    onnx_conv(x.shape, w, b, s, k // 2, f"{tmp}/layer.onnx")
    session = ort_session(f"{tmp}/layer.onnx", 1, f"{tmp}/profile")
    expected = session.run(None, {"x": x})[0]  # a profiled run too: skipped below
    out = np.empty_like(expected)
    conv(x, out=out)
    error = float(np.abs(out - expected).max())
    ours = []
    for _ in range(rounds):
        for _ in range(3):
            session.run(None, {"x": x})
        runs = []
        for _ in range(3):
            start = time.thread_time()
            conv(x, out=out)
            runs.append(time.thread_time() - start)
        ours.append(min(runs) * 1e3)
    node = conv_node_ms(session)[1:]
    theirs = [min(node[3 * r:3 * r + 3]) for r in range(rounds)]
    ratio = np.array(ours) / np.array(theirs)
    flops = 2e-6 * c * k * k * o * out.shape[2] * out.shape[3]
    q1, q2, q3 = np.quantile(ratio, [0.25, 0.5, 0.75])
    print(f"{spec:<18} fastconv {np.median(ours):7.3f} ms ({flops / np.median(ours):5.1f} GFLOP/s)"
          f"  ONNX Runtime {np.median(theirs):7.3f} ms ({flops / np.median(theirs):5.1f})"
          f"  ratio {q2:.3f} ({q1:.3f}-{q3:.3f})  max diff {error:.1e}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="C,H,O,K,S")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    fastconv.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs:
            compare(spec, args.rounds, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
