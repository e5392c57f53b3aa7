"""Images per second of fastconv.dask.predict on a LocalCluster of 1, 2, ... worker processes
(one Dask thread each), against a plain in-process ``model.predict`` on all cores.

Each timed run is one ``fastconv.dask.predict`` call computed to the end, as a job would run it:
the model broadcast to the workers, each worker planning it (packing the weights), the chunks
predicted and the outputs gathered. The input images are random, generated and held on the
workers before the clock starts (as data loaded by the workers would be). The first run of each
setup warms up and is not counted; the setups then run in turn, ``--repeats`` rounds (so that
a change in the machine's load hits all of them); the median and the best run of each are
reported (on a shared machine the best run is the closest to what an idle one gives).

    python benchmarks/bench_dask.py [--model resnet18] [--size 224] [--images 256]
        [--chunk 32] [--batch-size 8] [--workers 1 2] [--repeats 3] [--dask-malloc-trim]
        [--json FILE]
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import fastconv
import fastconv.dask


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_model(name, size):
    return getattr(fastconv.models, name)(input_shape=(3, size, size))


def in_process(model, args):
    """(label, run): a plain predict on all cores."""
    fastconv.set_num_threads(usable_cores())
    x = np.random.default_rng(0).random((args.images, 3, args.size, args.size), dtype=np.float32)
    return f"in-process predict, {usable_cores()} threads", lambda: model.predict(
        x, batch_size=args.batch_size)


@contextlib.contextmanager
def on_cluster(model, workers, args):
    """(label, run) for a LocalCluster of ``workers`` processes of 1 thread, its random input
    images generated and held on the workers."""
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        shape = (args.images, 3, args.size, args.size)
        images = da.random.random(shape, chunks=(args.chunk,) + shape[1:]).astype(np.float32)
        images = client.persist(images)
        with client.as_current():  # wait() looks for the current client
            wait(images)

        def run():
            scores = fastconv.dask.predict(model, images, batch_size=args.batch_size, client=client)
            client.compute(scores).result()

        run()  # warm-up; it also sets the workers' thread counts, reported in the label
        threads = sorted(client.run(fastconv.get_num_threads).values())
        yield f"dask, {workers} worker(s) x 1 thread, fastconv threads {threads}", run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a fastconv.models constructor")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32, help="images per Dask task")
    parser.add_argument("--batch-size", type=int, default=8, help="images per predict call")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask-malloc-trim", action="store_true",
                        help="keep the MALLOC_TRIM_THRESHOLD_ that Dask's nanny sets in its "
                             "workers (by default it is unset, as docs/dask.md recommends)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not args.dask_malloc_trim:
        # Before any nanny starts: a nanny also sets the variable in this process's environment.
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

    model = build_model(args.model, args.size)
    with contextlib.ExitStack() as stack:
        setups = [in_process(model, args)] + [
            stack.enter_context(on_cluster(model, n, args)) for n in args.workers]
        setups[0][1]()  # the in-process warm-up (the clusters warmed up when they started)
        seconds = {label: [] for label, _ in setups}
        for _ in range(args.repeats):  # interleaved, so a change in load hits every setup
            for label, run in setups:
                start = time.perf_counter()
                run()
                seconds[label].append(time.perf_counter() - start)
    results = [{"setup": label, "seconds": times,
                "images_per_s": args.images / statistics.median(times),
                "best_images_per_s": args.images / min(times)}
               for label, times in seconds.items()]
    print(f"{args.model} {args.size}x{args.size}, {args.images} images, chunks of {args.chunk}, "
          f"batch {args.batch_size}, {usable_cores()} cores, median of {args.repeats} interleaved "
          f"runs, load average at the end {os.getloadavg()[0]:.2f}, Dask's malloc trim "
          f"{'kept' if args.dask_malloc_trim else 'unset'}")
    for result in results:
        print(f"  {result['setup']:<55} {result['images_per_s']:8.1f} images/s "
              f"(best run {result['best_images_per_s']:.1f})")
    if args.json:
        record = {"args": vars(args), "results": results, "cores": usable_cores(),
                  "fastconv": fastconv.__version__, "isa": fastconv.show_config("dicts")["isa"],
                  "python": platform.python_version()}
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
