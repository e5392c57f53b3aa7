"""Builds of fastconv timed the way compare_models.py times a cell: single calls after an idle gap.

    python benchmarks/ab_idle.py lenet5 /path/to/old/checkout /path/to/new/checkout
    python benchmarks/ab_idle.py mobilenet_v2 OLD NEW --batch 8 --threads 2 --rounds 20

`ab_builds.py` times runs back to back, where a network's code, weights and Python objects stay
in the caches. The comparison script instead runs each backend once per round, 5 ms after the
previous one: on a shared machine much of what a call touches then comes from memory again, which
for a small network is most of its time (LeNet-5: 0.04 ms back to back, 0.3-0.4 ms so). Here every
build is one more backend of the same cell (`cli_bench.time_cell`: the peers installed, rotating
order, the gap before each run), on the first build's weights, outputs compared first. Each
checkout must be built in place; printed: every backend's median and each build's median over
the first build's.
"""
import argparse
import importlib
import os
import sys
import tempfile

import numpy as np

from ab_builds import load_build


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. lenet5")
    parser.add_argument("checkouts", nargs="+", help="checkouts built in place")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each run")
    args = parser.parse_args(argv)
    builds = [load_build(path, f"fastconv_build{i}") for i, path in enumerate(args.checkouts)]
    labels = [os.path.basename(os.path.abspath(path)) or path for path in args.checkouts]
    bench = importlib.import_module("fastconv_build0.cli_bench")  # the first build's harness
    modules = bench.peer_modules()
    with tempfile.TemporaryDirectory() as tmp:
        backends = bench.Backends(args.network, args.batch, bench.parse_peers(None, modules),
                                  modules, tmp)
        backends.runners[labels[0]] = backends.runners.pop("fastconv")
        for build, label in zip(builds[1:], labels[1:]):
            backends.runners[label] = _runner(build, args.network, backends)
        reference = backends.runners[labels[0]](args.threads)
        for label in labels[1:]:
            error = float(np.abs(backends.runners[label](args.threads) - reference).max())
            print(f"{label}: max |output - {labels[0]}'s| = {error:.3g}")
        cell = bench.time_cell(backends, args.threads, args.rounds, args.warmup,
                               args.gap_ms / 1e3)
    first = cell[labels[0]]["median_ms"]
    print(f"{args.network}, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds, "
          f"{args.gap_ms:g} ms idle before each run: median ms")
    for name, result in cell.items():
        note = f"  x{result['median_ms'] / first:.3f} of {labels[0]}" if name in labels else ""
        print(f"  {name:<24}{result['median_ms']:10.3f}{note}")
    return 0


def _runner(build, network, backends):
    """A runner of `build`'s model of the network, with the first build's weights."""
    model = getattr(build.models, network)()
    model.set_weights(backends.model.get_weights())
    model.prepare()

    def run(threads):
        build.set_num_threads(threads)
        return model.predict(backends.x)
    return run


if __name__ == "__main__":
    sys.exit(main())
