"""Several runs of compare_models.py pooled: per cell, the median of every timed round of every
run, per backend, and fastconv / best peer on those medians, next to each run's own ratio.

    python benchmarks/pool_runs.py RUN1.json RUN2.json RUN3.json [--markdown]

On a shared machine a neighbour's load comes and goes over seconds to minutes, which is about
how long one cell takes: a run's cell can catch a slow phase that slows some backends more than
others. Runs made at different times, pooled, give each backend the same spread of phases.
"""
import argparse
import json
import math

import numpy as np


def load(paths):
    runs = [json.load(open(path)) for path in paths]
    keys = [(c["network"], c["batch"], c["threads"]) for c in runs[0]["cells"]]
    cells = [{(c["network"], c["batch"], c["threads"]): c for c in run["cells"]} for run in runs]
    for path, run in zip(paths, cells):
        if set(run) != set(keys):
            raise SystemExit(f"{path}: its cells differ from the first run's")
    return keys, cells


def pooled(cells, key):
    """{backend: median ms over every run's rounds} of one cell, and fastconv / best peer."""
    backends = cells[0][key]["results"]
    medians = {b: float(np.median([t for run in cells
                                   for t in run[key]["results"][b]["times_ms"]]))
               for b in backends}
    best_peer = min(v for b, v in medians.items() if b != "fastconv")
    return medians, medians["fastconv"] / best_peer


def geometric_mean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="JSON files of compare_models.py --json")
    parser.add_argument("--markdown", action="store_true", help="a markdown table")
    args = parser.parse_args(argv)
    keys, cells = load(args.runs)
    ratios = []
    for key in keys:
        medians, ratio = pooled(cells, key)
        ratios.append(ratio)
        per_run = [run[key]["fastconv_over_best_peer"] for run in cells]
        times = [medians[b] for b in ("fastconv", "torch", "torch_cl", "onnxruntime") if b in medians]
        if args.markdown:
            fields = [*map(str, key), *(f"{t:.2f}" for t in times), *(f"{r:.2f}" for r in per_run),
                      f"**{ratio:.2f}**" if ratio <= 1 else f"{ratio:.2f}"]
            print("| " + " | ".join(fields) + " |")
        else:
            print(f"{key[0]:14s} {key[1]:3d} {key[2]:3d} " + " ".join(f"{t:9.2f}" for t in times)
                  + "  runs " + " ".join(f"{r:.2f}" for r in per_run) + f"  pooled {ratio:.2f}")
    one = [r for r, k in zip(ratios, keys) if k[2] == 1]
    two = [r for r, k in zip(ratios, keys) if k[2] == 2]
    print(f"pooled: geometric mean {geometric_mean(ratios):.3f} (one thread "
          f"{geometric_mean(one):.3f}, two {geometric_mean(two):.3f}); cells at or below the best "
          f"peer {sum(r <= 1 for r in ratios)} of {len(ratios)}, largest {max(ratios):.3f}")


if __name__ == "__main__":
    main()
