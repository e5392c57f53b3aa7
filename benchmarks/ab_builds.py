"""Two or more builds of fastconv side by side in one process: which one is faster?

    python benchmarks/ab_builds.py resnet50 /path/to/old/checkout /path/to/new/checkout
    python benchmarks/ab_builds.py mobilenet_v2 OLD NEW --batch 8 --rounds 4

Each checkout must be built in place (`python setup.py build_ext --inplace`). Every build's
package is loaded under its own module name, the zoo network is made once per build with the
same weights, outputs are compared (the max difference against the first build is printed),
then the builds run alternately, in turns, on one thread, timed by the CPU time of the calling
thread (with `--threads 2`: on two, timed by the wall clock; wants an idle machine). On a shared
machine the load then falls on every build alike, which separate runs a minute apart do not
give (their medians moved by 10 % and more).
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np


def load_build(checkout, alias):
    """The fastconv package of `checkout`, imported as module `alias`."""
    package = os.path.join(os.path.abspath(checkout), "fastconv")
    spec = importlib.util.spec_from_file_location(alias, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="zoo name, e.g. resnet50")
    parser.add_argument("checkouts", nargs="+", help="checkouts built in place")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6, help="turns of every build")
    parser.add_argument("--repeats", type=int, default=3, help="runs per turn (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    models = []
    for i, checkout in enumerate(args.checkouts):
        fastconv = load_build(checkout, f"fastconv_build{i}")
        fastconv.set_num_threads(args.threads)
        model = getattr(fastconv.models, args.network)()
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
    times = [[] for _ in models]
    for r in range(args.rounds):
        order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
        for i in order:
            models[i].predict(x)  # caches and branch predictors warm for this build
            runs = []
            for _ in range(args.repeats):
                start = clock()
                models[i].predict(x)
                runs.append(clock() - start)
            times[i].append(min(runs) * 1e3)
    for checkout, t in zip(args.checkouts, times):
        print(f"{checkout}: {args.network} batch {args.batch}, {args.threads} thread(s), median "
              f"{np.median(t):.2f} ms "
              f"(turns: {' '.join(f'{v:.3g}' for v in t)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
