"""Two or more builds of fastconv side by side in one process: which one is faster?

    python benchmarks/ab_builds.py resnet50 /path/to/old/checkout /path/to/new/checkout
    python benchmarks/ab_builds.py mobilenet_v2 OLD NEW --batch 8 --rounds 4

Each checkout must be built in place (`python setup.py build_ext --inplace`). Every build's
package is loaded under its own module name, the zoo network is made once per build with the
same weights, outputs are compared (the max difference against the first build is printed),
then the builds run alternately, in turns, on one thread, timed by the CPU time of the calling
thread (with `--threads 2`: on two, timed by the wall clock; wants an idle machine). On a shared
machine the load then falls on every build alike, which separate runs a minute apart do not
give (their medians moved by 10 % and more). On a machine whose speed moves in phases (of tens
of seconds, every build alike), the ratio of each build to the first within a turn is the steady
figure: its median over the turns is printed with the quartiles.

With `--by-link` every turn is tagged by the round trip of a cache line between the two CPUs
measured just before it (benchmarks/link.py), and the medians are printed per phase too: quiet
turns, and turns of a slow phase (above 200 ns), where two cooperating threads slow down.

A single convolution layer instead of a network: `conv:C,H,O,K,S` (C input channels of H x H,
O output channels, a K x K kernel at stride S, "same"-style padding K // 2, ReLU), e.g.
`python benchmarks/ab_builds.py conv:192,28,32,1,1 OLD NEW --rounds 30`.
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

import link


def load_build(checkout, alias):
    """The fastconv package of `checkout`, imported as module `alias`."""
    package = os.path.join(os.path.abspath(checkout), "fastconv")
    spec = importlib.util.spec_from_file_location(alias, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def make_model(fastconv, network):
    """A zoo network by name, or one convolution layer from a `conv:C,H,O,K,S` spec."""
    if not network.startswith("conv:"):
        return getattr(fastconv.models, network)()
    c, h, o, k, s = (int(v) for v in network[len("conv:"):].split(","))
    return fastconv.Sequential([fastconv.Input((c, h, h)), fastconv.layers.Conv2D(
        o, k, strides=s, padding=k // 2, activation="relu")])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. resnet50, or conv:C,H,O,K,S")
    parser.add_argument("checkouts", nargs="+", help="checkouts built in place")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6, help="turns of every build")
    parser.add_argument("--repeats", type=int, default=3, help="runs per turn (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cold", action="store_true",
                        help="write 64 MB before every timed run, so that weights and "
                             "activations start outside the caches (as in compare_models.py, "
                             "where the other backends run in between)")
    parser.add_argument("--by-link", action="store_true",
                        help="tag each turn by the CPUs' cache-line round trip and report the "
                             "quiet and slow turns apart")
    args = parser.parse_args(argv)
    if args.by_link:
        try:
            link.in_slow_phase()
        except RuntimeError as err:
            parser.error(f"--by-link: {err}")
    models = []
    for i, checkout in enumerate(args.checkouts):
        fastconv = load_build(checkout, f"fastconv_build{i}")
        fastconv.set_num_threads(args.threads)
        model = make_model(fastconv, args.network)
        if models:
            model.set_weights(models[0].get_weights())
        models.append(model)
    shape = (args.batch,) + tuple(models[0].inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = models[0].predict(x)
    for checkout, model in zip(args.checkouts, models):
        difference = float(np.abs(model.predict(x) - reference).max())
        print(f"{checkout}: max |output - first build's| = {difference:.3g}")
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    flush = np.zeros(16 << 20, np.float32) if args.cold else None
    times = [[] for _ in models]
    slow_turns = []
    for r in range(args.rounds):
        if args.by_link:
            slow_turns.append(link.in_slow_phase())
        order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
        for i in order:
            models[i].predict(x)  # caches and branch predictors warm for this build
            runs = []
            for _ in range(args.repeats):
                if flush is not None:
                    flush += 1.0
                start = clock()
                models[i].predict(x)
                runs.append(clock() - start)
            times[i].append(min(runs) * 1e3)
    for checkout, t in zip(args.checkouts, times):
        ratio = np.array(t) / np.array(times[0])
        q1, q2, q3 = np.quantile(ratio, [0.25, 0.5, 0.75])
        print(f"{checkout}: {args.network} batch {args.batch}, {args.threads} thread(s), median "
              f"{np.median(t):.3g} ms, per turn x{q2:.3f} of the first build (quartiles "
              f"{q1:.3f}-{q3:.3f}) (turns: {' '.join(f'{v:.3g}' for v in t)})")
    if args.by_link:
        print_phases(args.checkouts, np.array(times), np.array(slow_turns))
    return 0


def print_phases(checkouts, times, slow):
    """Median ms and per-turn ratio to the first build, quiet and slow turns apart."""
    for name, turns in (("quiet", ~slow), ("slow", slow)):
        if not turns.any():
            print(f"{name} turns: none")
            continue
        part = times[:, turns]
        ratios = np.median(part / part[0], axis=1)
        print(f"{name} turns ({int(turns.sum())}): " + ", ".join(
            f"{checkout} {np.median(t):.3g} ms x{ratio:.3f}"
            for checkout, t, ratio in zip(checkouts, part, ratios)))


if __name__ == "__main__":
    sys.exit(main())
