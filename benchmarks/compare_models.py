"""fastconv against PyTorch (eager NCHW and channels_last) and ONNX Runtime, whole networks.

Every backend runs the same weights (torchvision's random initialisation, converted with
fastconv.convert.from_torch; exported with torch.onnx.export for ONNX Runtime). Outputs are
validated against each other before anything is timed. Each cell (network, batch, threads) is
timed in interleaved rounds: every round runs each backend once, in a rotating order, with a
short idle gap between runs so that one runtime's spinning worker threads do not steal the
cores of the next (ONNX Runtime's spinning is turned off for the same reason). Reported: median
and p90 latency, and fastconv / best peer (< 1 is faster).

    python benchmarks/compare_models.py                      # all networks, batch 1 and 8, 1 and 2 threads
    python benchmarks/compare_models.py resnet50 --batch 1 --threads 2 --rounds 20 --json out.json

Peers that are not installed are skipped (torch and torchvision are needed for the weights).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

import fastconv
from fastconv.convert import from_torch

NETWORKS = ["lenet5", "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152",
            "mobilenet_v2"]


def torch_lenet5(torch):
    """The torch twin of fastconv.models.lenet5() (same parameter names)."""
    nn = torch.nn

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.relu(self.fc1(torch.flatten(x, 1)))
            return self.fc3(torch.relu(self.fc2(x)))

    return LeNet5()


def build(name, torch, torchvision):
    """(torch module in eval mode, fastconv model with the same weights, input shape)."""
    torch.manual_seed(0)
    if name == "lenet5":
        net, shape = torch_lenet5(torch), (1, 32, 32)
    else:
        options = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        net, shape = getattr(torchvision.models, name)(weights=None, **options), (3, 224, 224)
    net.eval()
    return net, from_torch(net.state_dict(), arch=name), shape


class Backends:
    """The runners of one network at one batch size: name -> callable(threads)."""

    def __init__(self, name, torch, torchvision, batch, onnx_dir):
        self.torch = torch
        net, self.model, shape = build(name, torch, torchvision)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((batch,) + shape).astype(np.float32)
        self.runners = {"fastconv": self._fastconv}
        self.net = net
        self.tx = torch.from_numpy(self.x)
        self.net_cl = None
        if len(shape) == 3:
            self.net_cl = _copy_channels_last(torch, net)
            self.tx_cl = self.tx.contiguous(memory_format=torch.channels_last)
        self.runners["torch"] = self._torch
        if self.net_cl is not None:
            self.runners["torch_cl"] = self._torch_cl
        self.onnx_path = _export_onnx(torch, net, self.tx, os.path.join(onnx_dir, f"{name}.onnx"))
        self.sessions = {}
        if self.onnx_path:
            self.runners["onnxruntime"] = self._onnxruntime

    def _fastconv(self, threads):
        fastconv.set_num_threads(threads)
        return self.model.predict(self.x)

    def _torch(self, threads):
        self.torch.set_num_threads(threads)
        with self.torch.inference_mode():
            return self.net(self.tx).numpy()

    def _torch_cl(self, threads):
        self.torch.set_num_threads(threads)
        with self.torch.inference_mode():
            return self.net_cl(self.tx_cl).numpy()

    def _onnxruntime(self, threads):
        if threads not in self.sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # ONNX Runtime's idle workers spin for a long while after each run, taking the cores
            # from whichever backend runs next (measured: fastconv ResNet-50 52 -> 91 ms). Without
            # spinning its own latency barely moves (42 -> 43 ms), so the comparison stays fair.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[threads] = ort.InferenceSession(self.onnx_path, options,
                                                          providers=["CPUExecutionProvider"])
        session = self.sessions[threads]
        return session.run(None, {session.get_inputs()[0].name: self.x})[0]


def _copy_channels_last(torch, net):
    import copy

    return copy.deepcopy(net).to(memory_format=torch.channels_last)


def _export_onnx(torch, net, x, path):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    with torch.inference_mode():
        torch.onnx.export(net, x, path, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"])
    return path


def validate(backends, threads):
    """All backends agree with fastconv within 1e-4 of the output scale (else exit)."""
    reference = backends.runners["fastconv"](threads)
    for peer, run in backends.runners.items():
        out = np.asarray(run(threads))
        scale = np.abs(out).max()
        error = np.abs(out - reference).max()
        if out.shape != reference.shape or error > 1e-4 * scale:
            sys.exit(f"validation failed: {peer} differs from fastconv by {error:.3g} (scale {scale:.3g})")


def time_cell(backends, threads, rounds, warmup, gap):
    names = list(backends.runners)
    for _ in range(warmup):
        for name in names:
            backends.runners[name](threads)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            time.sleep(gap)
            start = time.perf_counter()
            backends.runners[name](threads)
            times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3)}
            for name, t in times.items()}


def environment(torch):
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": _cpu_name(), "fastconv": fastconv.show_config(mode="dicts"),
            "torch": torch.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", default=NETWORKS)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each timed run")
    parser.add_argument("--json", help="write all results and the environment to this file")
    args = parser.parse_args(argv)
    import torch
    import torchvision

    batches = [int(b) for b in args.batch.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    results = []
    header = f"{'network':<14}{'batch':>6}{'thr':>4}{'fastconv':>10}{'torch':>10}{'torch_cl':>10}{'ort':>10}{'fc/best':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as onnx_dir:
        for name in args.networks:
            for batch in batches:
                backends = Backends(name, torch, torchvision, batch, onnx_dir)
                for threads in thread_counts:
                    validate(backends, threads)
                    cell = time_cell(backends, threads, args.rounds, args.warmup, args.gap_ms / 1e3)
                    peers = [v["median_ms"] for k, v in cell.items() if k != "fastconv"]
                    ratio = cell["fastconv"]["median_ms"] / min(peers) if peers else float("nan")
                    results.append({"network": name, "batch": batch, "threads": threads,
                                    "results": cell, "fastconv_over_best_peer": ratio})
                    med = {k: f"{v['median_ms']:.2f}" for k, v in cell.items()}
                    print(f"{name:<14}{batch:>6}{threads:>4}{med['fastconv']:>10}{med.get('torch', '-'):>10}"
                          f"{med.get('torch_cl', '-'):>10}{med.get('onnxruntime', '-'):>10}{ratio:>9.2f}",
                          flush=True)
    ratios = [r["fastconv_over_best_peer"] for r in results if np.isfinite(r["fastconv_over_best_peer"])]
    if ratios:
        print(f"geometric mean fastconv / best peer: {float(np.exp(np.mean(np.log(ratios)))):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(torch), "cells": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
