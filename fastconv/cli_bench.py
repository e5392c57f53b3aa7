"""The machinery of ``fastconv bench`` and ``benchmarks/compare_models.py``: whole networks,
fastconv against PyTorch (eager NCHW and channels_last) and ONNX Runtime.

Every backend runs the same weights: torchvision's random initialisation, converted with
``fastconv.convert.from_torch``, and exported with ``torch.onnx.export`` for ONNX Runtime.
Outputs are checked against each other before anything is timed. A cell (network, batch,
threads) is timed in interleaved rounds: each round runs every backend once, in a rotating
order, with a short idle gap before each run, so that one runtime's worker threads do not take
the cores of the next (ONNX Runtime's idle spinning is turned off for the same reason).

Without torch (or with no peer asked for) the networks come from fastconv's own zoo, with its
random weights, and fastconv runs alone. Speed does not depend on the weights.
"""
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import functional as F
from . import models
from .profiling import model_macs, profile_plan, time_by_kind
from .runtime import get_num_threads, set_num_threads, show_config
from .tuning import cpu_name

CLASSIC_NETWORKS = ["lenet5", "alexnet", "vgg16", "googlenet", "resnet18", "resnet50",
                    "mobilenet_v2"]
PEERS = {"torch": "PyTorch eager NCHW", "torch_cl": "PyTorch eager channels_last",
         "onnxruntime": "ONNX Runtime"}
_PEER_ALIASES = {"pytorch": "torch", "channels_last": "torch_cl", "ort": "onnxruntime"}
TOLERANCE = 1e-4  # largest difference from fastconv, relative to the output's scale


class BenchError(Exception):
    """A benchmark that cannot run as asked (a missing peer, outputs that disagree)."""


# Peers -----------------------------------------------------------------------------------------

def _import(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def peer_modules():
    """{"torch", "torchvision", "onnxruntime": the module, or None when it cannot be imported}."""
    return {name: _import(name) for name in ("torch", "torchvision", "onnxruntime")}


def available_peers(modules):
    """{peer: None if it can run, else why not}, for every peer in PEERS."""
    torch_missing = [m for m in ("torch", "torchvision") if modules[m] is None]
    torch_reason = f"{' and '.join(torch_missing)} not installed" if torch_missing else None
    ort_reason = torch_reason and f"{torch_reason} (needed to export the ONNX file)"
    if modules["onnxruntime"] is None:
        ort_reason = "onnxruntime not installed"
    return {"torch": torch_reason, "torch_cl": torch_reason, "onnxruntime": ort_reason}


def parse_peers(text, modules):
    """The peers to compare with: ``None`` means every installed peer; else a comma-separated
    list of PEERS names (or ``none``). Raises BenchError for unknown or missing peers."""
    status = available_peers(modules)
    if text is None:
        return [p for p, reason in status.items() if reason is None]
    names = [_PEER_ALIASES.get(n.strip().lower(), n.strip().lower()) for n in text.split(",")]
    names = [n for n in names if n]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise BenchError(f"unknown peer {unknown[0]!r} in --compare; choose from "
                         f"{', '.join(PEERS)} or none")
    missing = [f"{n} ({status[n]})" for n in names if status[n] is not None]
    if missing:
        raise BenchError(f"cannot compare with {', '.join(missing)}")
    return list(dict.fromkeys(names))


# Networks --------------------------------------------------------------------------------------

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


def torch_network(name, torch, torchvision):
    """The torch module (eval mode, seed 0) of a zoo network name."""
    torch.manual_seed(0)
    if name == "lenet5":
        net = torch_lenet5(torch)
    else:
        options = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        net = getattr(torchvision.models, name)(weights=None, **options)
    return net.eval()


def zoo_model(name):
    """fastconv's own zoo network with its random weights."""
    if name not in models.__all__:
        raise BenchError(f"unknown model {name!r}; choose from {', '.join(models.__all__)}")
    return getattr(models, name)()


class Backends:
    """The runners of one network at one batch size: ``runners`` maps a backend name
    ("fastconv" and the chosen peers) to a callable(threads) returning the output array.

    ``model`` is a zoo name, or a fastconv Model (which then runs alone)."""

    def __init__(self, model, batch, peers, modules, onnx_dir):
        self.torch = modules["torch"]
        if isinstance(model, str) and model not in models.__all__:
            raise BenchError(f"unknown model {model!r}; choose from {', '.join(models.__all__)}")
        peers = list(peers) if isinstance(model, str) else []
        net = None
        if isinstance(model, str) and peers:
            from .convert import from_torch

            net = torch_network(model, self.torch, modules["torchvision"])
            model = from_torch(net.state_dict(), arch=model)
        elif isinstance(model, str):
            model = zoo_model(model)
        self.model = model
        shape = model.inputs[0].sample_shape
        self.x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
        self.runners = {"fastconv": self._fastconv}
        self.notes = []
        if net is not None:
            self._add_torch_peers(net, peers)
            if "onnxruntime" in peers:
                self._add_onnxruntime(net, os.path.join(onnx_dir, f"{model.name}_{batch}.onnx"))

    def _add_torch_peers(self, net, peers):
        self.net, self.tx = net, self.torch.from_numpy(self.x)
        if "torch" in peers:
            self.runners["torch"] = self._torch
        if "torch_cl" in peers and self.x.ndim == 4:
            self.net_cl = copy.deepcopy(net).to(memory_format=self.torch.channels_last)
            self.tx_cl = self.tx.contiguous(memory_format=self.torch.channels_last)
            self.runners["torch_cl"] = self._torch_cl

    def _add_onnxruntime(self, net, path):
        try:
            with self.torch.inference_mode():
                self.torch.onnx.export(net, self.tx, path, opset_version=17, dynamo=False,
                                       input_names=["input"], output_names=["output"])
        except Exception as err:  # the peer is skipped, and the table says why
            self.notes.append(f"onnxruntime skipped: torch.onnx.export failed: {err}")
            return
        self.onnx_path, self.sessions = path, {}
        self.runners["onnxruntime"] = self._onnxruntime

    def _fastconv(self, threads):
        set_num_threads(threads)
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
            self.sessions[threads] = onnxruntime_session(self.onnx_path, threads)
        session = self.sessions[threads]
        return session.run(None, {session.get_inputs()[0].name: self.x})[0]


def onnxruntime_session(path, threads):
    """An ONNX Runtime CPU session with all graph optimisations, ``threads`` intra-op threads
    and no idle spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's idle workers spin for a long while after each run, taking the cores from
    # whichever backend runs next (measured: fastconv ResNet-50 52 -> 91 ms). Without spinning
    # its own latency barely moves (42 -> 43 ms), so the comparison stays fair.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


# Timing ----------------------------------------------------------------------------------------

def validate(backends, threads):
    """Raises BenchError unless every backend agrees with fastconv within TOLERANCE of the
    output scale."""
    reference = np.asarray(backends.runners["fastconv"](threads))
    for peer, run in backends.runners.items():
        out = np.asarray(run(threads))
        if out.shape != reference.shape:
            raise BenchError(f"validation failed: {peer} gives shape {out.shape}, fastconv "
                             f"{reference.shape}")
        scale, error = float(np.abs(out).max()), float(np.abs(out - reference).max())
        if error > TOLERANCE * scale:
            raise BenchError(f"validation failed: {peer} differs from fastconv by {error:.3g} "
                             f"(output scale {scale:.3g})")


def time_cell(backends, threads, rounds, warmup=2, gap=0.005, on_round=None,
              clock=time.perf_counter):
    """Interleaved timing of every backend: ``warmup`` untimed rounds, then ``rounds`` timed
    ones in rotating order with ``gap`` seconds idle before each run. ``on_round()`` is called
    after each timed round. ``clock`` may be ``time.thread_time`` on one thread: the CPU time
    of the calling thread, which other processes on a busy machine barely change. Returns
    {backend: {"median_ms", "p90_ms", "times_ms"}}."""
    names = list(backends.runners)
    for _ in range(warmup):
        for name in names:
            backends.runners[name](threads)
    times = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(gap)
            start = clock()
            backends.runners[name](threads)
            times[name].append((clock() - start) * 1e3)
        if on_round is not None:
            on_round()
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                   "times_ms": t} for name, t in times.items()}


def cpu_clocks():
    """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process), or
    None where /proc/stat is not available (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def other_processes_share(before, after):
    """The share of the machine's CPU time (0..1) that other processes used between two
    ``cpu_clocks()`` readings; None when unknown."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others / ((after[0] - before[0]) * (os.cpu_count() or 1)))


def measure_peak(threads, n=2048, repeats=5):
    """The machine's practical peak in GFLOP/s on ``threads`` threads: the best of ``repeats``
    runs of fastconv's own GEMM at n x n x n (after one untimed run)."""
    previous = get_num_threads()
    set_num_threads(threads)
    try:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        F.gemm(a, a)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            F.gemm(a, a)
            best = min(best, time.perf_counter() - start)
    finally:
        set_num_threads(previous)
    return 2.0 * n ** 3 / best / 1e9


# The environment -------------------------------------------------------------------------------

def environment(modules):
    """The machine, the versions, the ISA and thread count, as a JSON-compatible dict."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "fastconv": show_config(mode="dicts")}
    for name, module in modules.items():
        if module is not None:
            info[name] = getattr(module, "__version__", "unknown")
    return info


# The bench command -----------------------------------------------------------------------------

PEAK_METHOD = "fastconv's GEMM at 2048x2048x2048, best of 5 runs"
_SHORT = {"torch": "torch", "torch_cl": "torch_cl", "onnxruntime": "ort"}


@dataclass
class BenchOptions:
    rounds: int = 25
    warmup: int = 2
    gap: float = 0.005  # seconds idle before each timed run
    profile: bool = False  # time the plan's steps too (for --plot and --json)
    progress: bool = True  # a tqdm bar when stdout is a terminal


class Progress:
    """A tqdm bar (on stderr) while the benchmark runs, only when stdout is a terminal and tqdm
    is installed; silent otherwise. ``write`` prints a line to stdout without breaking the bar."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled and sys.stdout.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="round", leave=False, dynamic_ncols=True)

    def stage(self, text):
        if self.bar is not None:
            self.bar.set_description_str(text)

    def advance(self):
        if self.bar is not None:
            self.bar.update()

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _columns(label_width, peers):
    """(header, width) of every table column."""
    columns = [("model", label_width), ("batch", 5), ("thr", 4), ("GFLOP/img", 10),
               ("median ms", 10), ("p90 ms", 9), ("img/s", 9), ("GFLOP/s", 8), ("% peak", 7)]
    return columns + [(f"fc/{_SHORT[p]}", max(8, len(_SHORT[p]) + 4)) for p in peers]


def _format_row(cells, columns):
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                     for i, (c, (_, w)) in enumerate(zip(cells, columns))).rstrip()


def table_row(cell, columns, peers):
    """The table line of one benchmarked cell."""
    fc = cell["results"]["fastconv"]
    ratios = [f"{cell['ratios'][p]:.2f}" if p in cell["ratios"] else "-" for p in peers]
    return _format_row([cell["model"], cell["batch"], cell["threads"],
                        f"{cell['gflop_per_image']:.3f}", f"{fc['median_ms']:.2f}",
                        f"{fc['p90_ms']:.2f}", f"{cell['images_per_s']:.1f}",
                        f"{cell['gflops']:.1f}", f"{cell['percent_of_peak']:.0f}"] + ratios,
                       columns)


def bench_cell(backends, label, batch, threads, peak, options, progress):
    """Validates and times one (network, batch, threads) cell; its result dict."""
    progress.stage(f"{label} batch {batch}, {threads} thr: checking outputs")
    validate(backends, threads)
    progress.stage(f"{label} batch {batch}, {threads} thr: timing")
    before = cpu_clocks()
    results = time_cell(backends, threads, options.rounds, options.warmup, options.gap,
                        progress.advance)
    others = other_processes_share(before, cpu_clocks())
    median_s = results["fastconv"]["median_ms"] / 1e3
    gflop_per_image = 2.0 * model_macs(backends.model) / 1e9
    gflops = gflop_per_image * batch / median_s
    cell = {"model": label, "batch": batch, "threads": threads,
            "gflop_per_image": gflop_per_image, "images_per_s": batch / median_s,
            "gflops": gflops, "percent_of_peak": 100.0 * gflops / peak, "results": results,
            "ratios": {peer: results["fastconv"]["median_ms"] / r["median_ms"]
                       for peer, r in results.items() if peer != "fastconv"},
            "other_processes_cpu_share": others, "notes": backends.notes}
    if options.profile:
        progress.stage(f"{label} batch {batch}, {threads} thr: per-step profile")
        set_num_threads(threads)
        cell["profile"] = profile_plan(backends.model, backends.x, repeats=3)
    return cell


def run_bench(networks, batches, thread_counts, peers, modules, options):
    """Benchmarks every (network, batch, threads) cell, printing the table row by row.

    ``networks``: (label, zoo name or fastconv Model) pairs. Returns the report: environment,
    peaks, peers and cells (everything ``--json`` writes)."""
    progress = Progress(len(networks) * len(batches) * len(thread_counts) * options.rounds,
                        options.progress)
    try:
        progress.stage("measuring the GEMM peak")
        peaks = {threads: measure_peak(threads) for threads in thread_counts}
        columns = _columns(max(12, *(len(label) for label, _ in networks)), peers)
        progress.write(_format_row([name for name, _ in columns], columns))
        cells = []
        with tempfile.TemporaryDirectory() as onnx_dir:
            for label, model in networks:
                for batch in batches:
                    progress.stage(f"{label} batch {batch}: building")
                    backends = Backends(model, batch, peers, modules, onnx_dir)
                    for threads in thread_counts:
                        cell = bench_cell(backends, label, batch, threads, peaks[threads],
                                          options, progress)
                        cells.append(cell)
                        progress.write(table_row(cell, columns, peers))
                    del backends
    finally:
        progress.close()
    return {"environment": environment(modules), "peers": peers,
            "peak_gflops": {str(t): p for t, p in peaks.items()}, "peak_method": PEAK_METHOD,
            "rounds": options.rounds, "warmup": options.warmup, "gap_ms": options.gap * 1e3,
            "cells": cells}


def geometric_mean_over_best_peer(cells):
    """Geometric mean, over the cells with peers, of fastconv's latency over the best peer's."""
    ratios = [max(c["ratios"].values()) for c in cells if c["ratios"]]  # the fastest peer
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None


def report_footer(report):
    """The lines printed under the table: definitions, the peak and the summary ratio."""
    peaks = ", ".join(f"{p:.1f} GFLOP/s on {t} thread{'s' if t != '1' else ''}"
                      for t, p in report["peak_gflops"].items())
    lines = ["GFLOP/img: 2 x the multiply-accumulates of model.summary(); GFLOP/s and img/s at "
             "the median latency.",
             f"% peak: of the measured peak, {peaks} ({PEAK_METHOD})."]
    if any(c["percent_of_peak"] > 100 for c in report["cells"]):
        lines.append("Above 100 %: Winograd layers do fewer multiplications than the direct "
                     "convolution counted here.")
    if report["peers"]:
        lines.append("fc/<peer>: fastconv's median latency over the peer's (below 1: fastconv "
                     "is faster).")
    mean = geometric_mean_over_best_peer(report["cells"])
    if mean is not None:
        lines.append(f"Geometric mean of fastconv / best peer: {mean:.3f}")
    lines += [f"{c['model']}: {note}" for c in report["cells"] for note in c["notes"]]
    disturbed = [c["model"] for c in report["cells"] if _disturbed(c)]
    if disturbed:
        lines.append(f"Warning: other processes used the CPU, or timings were unsteady (p90 over "
                     f"1.5 x median), while timing {', '.join(disturbed)}: rerun on an idle "
                     f"machine.")
    return lines


def _disturbed(cell):
    fastconv = cell["results"]["fastconv"]
    busy = cell.get("other_processes_cpu_share")
    return fastconv["p90_ms"] > 1.5 * fastconv["median_ms"] or (busy is not None and busy > 0.1)


def write_json(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


# The plot ----------------------------------------------------------------------------------------

_KIND_GROUPS = {"conv2d[gemm]": "conv 1x1 (GEMM)", "conv2d[implicit]": "conv implicit GEMM",
                "conv2d[im2col]": "conv im2col",
                "conv2d[winograd]": "conv Winograd", "conv2d[winograd4]": "conv Winograd",
                "conv2d[direct]": "conv direct",
                "dense": "dense", "maxpool2d": "pooling", "avgpool2d": "pooling",
                "globalaveragepooling2d": "pooling", "globalmaxpooling2d": "pooling",
                "adaptiveavgpool2d": "pooling"}
# Not the backends' colours of the left panel.
_GROUP_COLORS = {"conv implicit GEMM": "#4c72b0", "conv im2col": "#55a868",
                 "conv Winograd": "#8172b2", "conv 1x1 (GEMM)": "#64b5cd",
                 "conv direct": "#8c8c8c", "dense": "#ccb974", "pooling": "#da8bc3",
                 "other": "#dddddd"}
_GROUP_ORDER = list(_GROUP_COLORS)
_BACKEND_LABELS = {"fastconv": "fastconv", **PEERS}


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or pip install "
                         "'fastconv[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_support():
    """Raises BenchError now, before any timing, when --plot cannot work."""
    _require_matplotlib()


def _cell_label(cell, cells):
    """A cell's name on the plot: the model, plus batch and threads when they vary."""
    vary_batch = len({c["batch"] for c in cells}) > 1
    vary_threads = len({c["threads"] for c in cells}) > 1
    return cell["model"] + (f" b{cell['batch']}" if vary_batch else "") + \
        (f" t{cell['threads']}" if vary_threads else "")


def _kind_shares(cell):
    """{group: milliseconds} of fastconv's plan steps in one cell."""
    shares = {}
    for kind, ms in time_by_kind(cell.get("profile", [])).items():
        group = _KIND_GROUPS.get(kind, "other")
        shares[group] = shares.get(group, 0.0) + ms
    return shares


def _plot_latency(ax, cells, labels):
    backends = list(dict.fromkeys(b for c in cells for b in c["results"]))
    height = 0.8 / len(backends)
    for j, backend in enumerate(backends):
        ys = [i + (j - (len(backends) - 1) / 2) * height for i in range(len(cells))]
        ms = [c["results"].get(backend, {}).get("median_ms", float("nan")) for c in cells]
        ax.barh(ys, ms, height=height, label=_BACKEND_LABELS.get(backend, backend))
    ax.set_xscale("log")
    ax.set_yticks(range(len(cells)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("median latency, ms (log scale; lower is better)")
    ax.set_title("Latency per model")
    ax.grid(axis="x", which="both", alpha=0.3)


def _plot_breakdown(ax, cells, labels):
    shares = [_kind_shares(c) for c in cells]
    groups = [g for g in _GROUP_ORDER if any(g in s for s in shares)]
    left = [0.0] * len(cells)
    for group in groups:
        percent = [100.0 * s.get(group, 0.0) / (sum(s.values()) or 1.0) for s in shares]
        ax.barh(range(len(cells)), percent, left=left, label=group, color=_GROUP_COLORS[group])
        left = [a + b for a, b in zip(left, percent)]
    for i, s in enumerate(shares):
        ax.text(101, i, f"{sum(s.values()):.2f} ms", va="center", fontsize="small")
    ax.set_yticks(range(len(cells)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 118)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("share of fastconv's time per step kind, % (sum of steps at right)")
    ax.set_title("Where fastconv's time goes")


def plot_report(report, path):
    """Writes a PNG: the median latency of every backend per cell, and fastconv's time split by
    plan-step kind (needs the cells' profiles)."""
    plt = _require_matplotlib()
    cells = report["cells"]
    labels = [_cell_label(c, cells) for c in cells]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 2.6 + 0.6 * len(cells)),
                                      layout="constrained")
    _plot_latency(left, cells, labels)
    _plot_breakdown(right, cells, labels)
    for ax, corner in ((left, "left"), (right, "right")):
        handles, names = ax.get_legend_handles_labels()
        fig.legend(handles, names, loc=f"outside lower {corner}", ncol=4, fontsize="small")
    env = report["environment"]
    batches = ",".join(sorted({str(c["batch"]) for c in cells}))
    threads = ",".join(sorted({str(c["threads"]) for c in cells}))
    fig.suptitle(f"fastconv {env['fastconv']['version']} ({env['fastconv']['isa']}) on "
                 f"{env['cpu']}: batch {batches}, {threads} threads, median of "
                 f"{report['rounds']} rounds")
    fig.savefig(path, dpi=110)
    plt.close(fig)
