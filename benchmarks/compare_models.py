"""fastconv against PyTorch (eager NCHW and channels_last) and ONNX Runtime, whole networks.

The grid behind docs/benchmarks.md: every network at batch 1 and 8, on 1 and 2 threads. The
machinery (same weights everywhere, outputs validated first, interleaved rounds with an idle gap,
ONNX Runtime without spinning) is fastconv/cli_bench.py, shared with `fastconv bench`, which
adds GFLOP/s, percent of peak, --plot and a progress bar. Reported here: median latency per
backend and fastconv / best peer (< 1 is faster), and the round trip of a cache line between the
first two CPUs after every round (benchmarks/link.py; the fewest and most ns of the cell: above
200 ns it ran at least partly in a slow phase of the shared machine, which costs fastconv's
two-thread cells most).

    python benchmarks/compare_models.py                      # all networks, batch 1 and 8, 1 and 2 threads
    python benchmarks/compare_models.py resnet50 --batch 1 --threads 2 --rounds 20 --json out.json
    python benchmarks/compare_models.py --threads 1 --cpu-time     # on a busy machine

Peers that are not installed are skipped (torch and torchvision are needed for the weights).
"""
import argparse
import json
import sys
import tempfile
import time

import numpy as np

import link
from fastconv import cli_bench

NETWORKS = ["lenet5", "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152",
            "mobilenet_v2"]


def _link_range(readings):
    known = [v for v in readings if v is not None]
    return f"{min(known)}-{max(known)}" if known else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", default=NETWORKS)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each timed run")
    parser.add_argument("--json", help="write all results and the environment to this file")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time CPU seconds of the calling thread (only with --threads 1): "
                             "robust to other load on a shared machine")
    args = parser.parse_args(argv)
    modules = cli_bench.peer_modules()
    peers = cli_bench.parse_peers(None, modules)
    if modules["torch"] is None or modules["torchvision"] is None:
        sys.exit("compare_models.py needs torch and torchvision (use `fastconv bench` to run "
                 "fastconv alone)")
    batches = [int(b) for b in args.batch.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.cpu_time and thread_counts != [1]:
        sys.exit("--cpu-time needs --threads 1 (other threads' CPU time is not counted)")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    results = []
    print(f"{'network':<14}{'batch':>6}{'thr':>4}{'fastconv':>10}{'torch':>10}{'torch_cl':>10}"
          f"{'ort':>10}{'fc/best':>9}{'link ns':>12}")
    with tempfile.TemporaryDirectory() as onnx_dir:
        for name in args.networks:
            for batch in batches:
                backends = cli_bench.Backends(name, batch, peers, modules, onnx_dir)
                for threads in thread_counts:
                    try:
                        cli_bench.validate(backends, threads)
                    except cli_bench.BenchError as err:
                        sys.exit(str(err))
                    rtt = []
                    cell = cli_bench.time_cell(backends, threads, args.rounds, args.warmup,
                                               args.gap_ms / 1e3, clock=clock,
                                               on_round=lambda: rtt.append(link.round_trip_ns()))
                    peer_ms = [v["median_ms"] for k, v in cell.items() if k != "fastconv"]
                    ratio = cell["fastconv"]["median_ms"] / min(peer_ms) if peer_ms else float("nan")
                    results.append({"network": name, "batch": batch, "threads": threads,
                                    "results": cell, "fastconv_over_best_peer": ratio,
                                    "cross_core_round_trip_ns": rtt})
                    med = {k: f"{v['median_ms']:.2f}" for k, v in cell.items()}
                    print(f"{name:<14}{batch:>6}{threads:>4}{med['fastconv']:>10}"
                          f"{med.get('torch', '-'):>10}{med.get('torch_cl', '-'):>10}"
                          f"{med.get('onnxruntime', '-'):>10}{ratio:>9.2f}"
                          f"{_link_range(rtt):>12}", flush=True)
    ratios = [r["fastconv_over_best_peer"] for r in results if np.isfinite(r["fastconv_over_best_peer"])]
    if ratios:
        print(f"geometric mean fastconv / best peer: {float(np.exp(np.mean(np.log(ratios)))):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": cli_bench.environment(modules), "cells": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
