"""ONNX Runtime's time per node for a zoo network: the peer's side of `fastconv profile`.

    python benchmarks/ort_profile.py resnet50 [--batch 1] [--threads 1] [--top 60]

Exports the torchvision network as the comparison script does (opset 17, the same weights as
fastconv's zoo model), runs it with ONNX Runtime's profiler on (all graph optimisations, no
idle spinning), and prints the median time of every node over the timed runs, slowest first.
ONNX Runtime fuses and renames nodes (a convolution with its activation, NCHWc layouts), so
match them to fastconv's steps by the layer names inside the node names. Needs torch,
torchvision and onnxruntime.
"""
import argparse
import collections
import json
import sys
import tempfile

import numpy as np

from fastconv import cli_bench


def node_times(onnx_path, x, threads, warmup, runs, prefix):
    """{node name: (op type, median ms)} over `runs` profiled runs after `warmup` ones."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup + runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times, ops = collections.defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][:-len("_kernel_time")]
            times[name].append(event["dur"] / 1e3)
            ops[name] = event["args"].get("op_name", "?")
    return {name: (ops[name], float(np.median(t[-runs:]))) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args(argv)
    modules = cli_bench.peer_modules()
    if any(modules[m] is None for m in ("torch", "torchvision", "onnxruntime")):
        sys.exit("ort_profile.py needs torch, torchvision and onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        backends = cli_bench.Backends(args.network, args.batch, ["onnxruntime"], modules, tmp)
        if not hasattr(backends, "onnx_path"):
            sys.exit("; ".join(backends.notes) or "the network could not be exported")
        nodes = node_times(backends.onnx_path, backends.x, args.threads, 3, args.runs,
                           f"{tmp}/profile")
    rows = sorted(nodes.items(), key=lambda item: -item[1][1])
    print(f"ONNX Runtime, {args.network}, batch {args.batch}, {args.threads} thread(s): "
          f"{len(rows)} nodes, sum {sum(ms for _, ms in nodes.values()):.3f} ms "
          f"(median of {args.runs} runs per node)")
    for name, (op, ms) in rows[:args.top]:
        print(f"{ms:9.3f}  {op:<20} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
