"""What a slow phase of a shared machine slows: the cores, or the exchange between them?

    python benchmarks/phase_probe.py cores resnet18 --seconds 120
    python benchmarks/phase_probe.py steps resnet50 --slow-ms 38 --seconds 100
    python benchmarks/phase_probe.py steps resnet50 --by-link --seconds 180

`cores` repeats, every two seconds: the network at batch 1 on two cooperating threads, then two
one-thread copies pinned one per core running at the same time (independent work), then each
core alone, printing the three medians. Cores that slow down show in all three; an exchange
between the cores that slows (shared data, barriers) shows only in the first.

`steps` times every step of the plan (as `fastconv profile` does) on two threads (`--threads`),
again and again, classing each pass by the time of a whole predict run just before it (below or
above `--slow-ms`), or with `--by-link` by the round trip of a cache line between the two CPUs
measured just before it (benchmarks/link.py: above 200 ns is slow), and prints the steps whose
median grew most from the fast passes to the slow ones. Linux only (CPU affinity).
"""
import argparse
import os
import sys
import threading
import time

import numpy as np

import fastconv
import link
from fastconv import profiling


def median_ms(model, x, seconds, cpu=None, pause=0.0):
    """Median latency of ``model.predict(x)`` run for ``seconds`` (on core ``cpu`` if given)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - start)
        time.sleep(pause)
    return float(np.median(times)) * 1e3


def probe_cores(network, seconds):
    together, *alone = [getattr(fastconv.models, network)() for _ in range(3)]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    cores = sorted(os.sched_getaffinity(0))[:2]
    end = time.time() + seconds
    while time.time() < end:
        os.sched_setaffinity(0, set(cores))
        fastconv.set_num_threads(2)
        two = median_ms(together, x, 0.7, pause=0.003)
        fastconv.set_num_threads(1)
        pair = {}
        workers = [threading.Thread(target=lambda m=m, c=c: pair.update({c: median_ms(m, x, 0.7, c)}))
                   for m, c in zip(alone, cores)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        solo = [median_ms(alone[0], x, 0.35, c) for c in cores]
        os.sched_setaffinity(0, set(cores))
        print(f"{time.strftime('%H:%M:%S')} two threads {two:6.2f} ms | side by side "
              f"{pair[cores[0]]:6.2f} {pair[cores[1]]:6.2f} | alone {solo[0]:6.2f} {solo[1]:6.2f}",
              flush=True)


def is_slow_pass(model, x, slow_ms):
    """Whether the machine is in a slow phase now: by the cache line's round trip between the
    CPUs when slow_ms is None, else by the time of one predict."""
    if slow_ms is None:
        try:
            return link.in_slow_phase()
        except RuntimeError as err:
            sys.exit(f"--by-link: {err}")
    start = time.perf_counter()
    model.predict(x)
    return (time.perf_counter() - start) * 1e3 >= slow_ms


def probe_steps(network, slow_ms, seconds, top, threads):
    fastconv.set_num_threads(threads)
    model = getattr(fastconv.models, network)()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model.predict(x)
    plan, arrays = profiling.current_plan(model), model._input_arrays(x)
    passes = {"fast": [], "slow": []}
    end = time.time() + seconds
    while time.time() < end:
        kind = "slow" if is_slow_pass(model, x, slow_ms) else "fast"
        passes[kind].append(profiling._run_timed(plan, model, arrays))
        time.sleep(0.003)
    print(f"passes: {len(passes['fast'])} fast, {len(passes['slow'])} slow")
    if not (passes["fast"] and passes["slow"]):
        return
    fast, slow = (np.median(passes[k], axis=0) * 1e3 for k in ("fast", "slow"))
    print(f"sum of the steps: fast {fast.sum():.2f} ms, slow {slow.sum():.2f} ms")
    for i in np.argsort(slow - fast)[::-1][:top]:
        print(f"{fast[i]:7.3f} -> {slow[i]:7.3f} ms  x{slow[i] / fast[i]:.2f}  "
              f"{plan.steps[i].describe[:80]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["cores", "steps"])
    parser.add_argument("network", help="zoo name of a 224x224 network, e.g. resnet18")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--slow-ms", type=float, default=None,
                        help="steps: a predict slower than this is a slow pass")
    parser.add_argument("--by-link", action="store_true",
                        help="steps: class passes by the CPUs' cache-line round trip instead")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="steps: threads of the model")
    args = parser.parse_args(argv)
    if args.mode == "cores":
        probe_cores(args.network, args.seconds)
    elif (args.slow_ms is None) == (not args.by_link):
        parser.error("steps needs one of --slow-ms and --by-link")
    else:
        probe_steps(args.network, args.slow_ms, args.seconds, args.top, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
