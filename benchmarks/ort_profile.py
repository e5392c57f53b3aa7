"""ONNX Runtime's time per node for a zoo network: the peer's side of `fastconv profile`.

    python benchmarks/ort_profile.py resnet50 [--batch 1] [--threads 1] [--top 60]

Exports the torchvision network as the comparison script does (opset 17, the same weights as
fastconv's zoo model), runs it with ONNX Runtime's profiler on (all graph optimisations, no
idle spinning), and prints the median time of every node over the timed runs, slowest first.
ONNX Runtime fuses and renames nodes (a convolution with its activation, NCHWc layouts), so
match them to fastconv's steps by the layer names inside the node names. Needs torch,
torchvision and onnxruntime.

With `--versus`, fastconv's own step times (`fastconv profile`) and ONNX Runtime's node times
are taken in interleaved rounds (phases of a shared machine fall on both alike) and summed per
block of the network (`layer3.1`, `features.4`, `inception4a`: the module path down to its first
numbered part), printing per block both medians and the median per-round ratio, the blocks where
fastconv loses most first. ONNX Runtime's profiled node times sum to more than its real run
time (per-node overhead), which flatters fastconv slightly in every block.

    python benchmarks/ort_profile.py resnet50 --versus --rounds 8
"""
import argparse
import collections
import json
import re
import sys
import tempfile

import numpy as np

from fastconv import cli_bench


def session(onnx_path, threads, prefix):
    """An ONNX Runtime session as compare_models.py runs it (all graph optimisations, no idle
    spinning), with its profiler on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def node_times(onnx_path, x, threads, warmup, runs, prefix):
    """{node name: (op type, median ms)} over `runs` profiled runs after `warmup` ones."""
    sess = session(onnx_path, threads, prefix)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup + runs):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    times, ops = collections.defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][:-len("_kernel_time")]
            times[name].append(event["dur"] / 1e3)
            ops[name] = event["args"].get("op_name", "?")
    return {name: (ops[name], float(np.median(t[-runs:]))) for name, t in times.items()}


def block_of(module_path):
    """`layer3.1.conv2` -> `layer3.1`, `features.4.conv.0.0` -> `features.4`, `conv1` -> `conv1`."""
    parts = module_path.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def ort_block(node_name):
    """The block of an ONNX Runtime node: its path names each module level, a numbered child
    with its parent's name (`/layer3/layer3.1/relu_1/Relu_output_0_nchwc` is in `layer3.1`,
    `/inception4a/branch2/branch2.1/conv/Conv` in `inception4a`)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1 and re.fullmatch(re.escape(parts[0]) + r"\.\d+", parts[1]):
        return parts[1]
    return parts[0] if parts else node_name


def fastconv_block(step):
    """The block of a fastconv step (`conv2d[gemm] layer3.1.conv1 + layer3.1.bn1 + ...`)."""
    names = step.split("] ", 1)[-1] if "]" in step else step.split(" ", 1)[-1]
    return block_of(names.split(" ")[0])


def ort_rounds(events, warmup, rounds, runs):
    """Per round, {block: summed median node ms} from the profiler's events of `warmup` runs
    then `rounds` x `runs` runs (each run records the same nodes)."""
    events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(events) // (warmup + rounds * runs)
    per_round = []
    for r in range(rounds):
        first = (warmup + r * runs) * per_run
        node_ms = collections.defaultdict(list)
        for e in events[first:first + runs * per_run]:
            node_ms[e["name"][:-len("_kernel_time")]].append(e["dur"] / 1e3)
        blocks = collections.defaultdict(float)
        for name, t in node_ms.items():
            blocks[ort_block(name)] += float(np.median(t))
        per_round.append(blocks)
    return per_round


def versus(backends, threads, rounds, runs, tmp):
    """{block: (fastconv ms, ONNX Runtime ms, median per-round ratio)}, interleaved rounds."""
    from fastconv import profiling, set_num_threads

    set_num_threads(threads)
    sess = session(backends.onnx_path, threads, f"{tmp}/versus")
    feed = {sess.get_inputs()[0].name: backends.x}
    warmup = 3
    for _ in range(warmup):
        sess.run(None, feed)
    ours = []
    for _ in range(rounds):
        blocks = collections.defaultdict(float)
        for row in profiling.profile_plan(backends.model, backends.x, repeats=runs):
            blocks[fastconv_block(row["step"])] += row["median_ms"]
        ours.append(blocks)
        for _ in range(runs):
            sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        theirs = ort_rounds(json.load(f), warmup, rounds, runs)
    table = {}
    for b in sorted(set().union(*ours, *theirs)):
        a = np.array([o.get(b, 0.0) for o in ours])
        t = np.array([o.get(b, 0.0) for o in theirs])
        ratio = float(np.median(a / t)) if (t > 0).all() else float("nan")
        table[b] = (float(np.median(a)), float(np.median(t)), ratio)
    return table


def onnx_backends(network, batch, tmp, script):
    """fastconv and ONNX Runtime for a zoo network (cli_bench.Backends: the torchvision weights,
    exported to `tmp`), or the script exits saying what is missing."""
    modules = cli_bench.peer_modules()
    if any(modules[m] is None for m in ("torch", "torchvision", "onnxruntime")):
        sys.exit(f"{script} needs torch, torchvision and onnxruntime")
    backends = cli_bench.Backends(network, batch, ["onnxruntime"], modules, tmp)
    if not hasattr(backends, "onnx_path"):
        sys.exit("; ".join(backends.notes) or "the network could not be exported")
    return backends


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--versus", action="store_true",
                        help="fastconv against ONNX Runtime per block, interleaved rounds")
    parser.add_argument("--rounds", type=int, default=6, help="with --versus")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        backends = onnx_backends(args.network, args.batch, tmp, "ort_profile.py")
        if args.versus:
            table = versus(backends, args.threads, args.rounds, args.runs, tmp)
            print_versus(table, args)
            return 0
        nodes = node_times(backends.onnx_path, backends.x, args.threads, 3, args.runs,
                           f"{tmp}/profile")
    rows = sorted(nodes.items(), key=lambda item: -item[1][1])
    print(f"ONNX Runtime, {args.network}, batch {args.batch}, {args.threads} thread(s): "
          f"{len(rows)} nodes, sum {sum(ms for _, ms in nodes.values()):.3f} ms "
          f"(median of {args.runs} runs per node)")
    for name, (op, ms) in rows[:args.top]:
        print(f"{ms:9.3f}  {op:<20} {name}")
    return 0


def print_versus(table, args):
    """The per-block table of `versus`, the blocks where fastconv loses most first."""
    ours = sum(v[0] for v in table.values())
    theirs = sum(v[1] for v in table.values())
    print(f"{args.network}, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.runs} runs: sum of steps fastconv {ours:.3f} ms, ONNX Runtime nodes "
          f"{theirs:.3f} ms")
    print(f"{'block':<16} {'fastconv':>9} {'ORT':>9} {'ratio':>6} {'excess':>7}")
    for block, (a, t, ratio) in sorted(table.items(), key=lambda kv: kv[1][1] - kv[1][0]):
        print(f"{block:<16} {a:9.3f} {t:9.3f} {ratio:6.2f} {a - t:7.3f}")


if __name__ == "__main__":
    sys.exit(main())
