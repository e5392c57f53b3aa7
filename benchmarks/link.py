"""The round trip of a cache line between the first two CPUs (benchmarks/link_probe.c), the
sign of a slow phase on a shared machine (docs/benchmarks.md, session 19).

    python benchmarks/link.py            # one reading, ns
    python benchmarks/link.py --every 10 --seconds 600   # a reading every 10 s, timestamped

`round_trip_ns()` compiles the probe once (the C compiler Python was built with, else `cc`) into
the temporary directory and returns None where it cannot (no compiler, not Linux, one CPU).
"""
import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "link_probe.c")
SLOW_NS = 200  # above this the two CPUs are apart: 50-65 ns otherwise, 300-380 when apart


def _probe_binary():
    binary = os.path.join(tempfile.gettempdir(), f"fastconv_link_probe_{os.getuid()}")
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(SOURCE):
        return binary
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[:1]
    build = subprocess.run(compiler + ["-O2", "-pthread", SOURCE, "-o", binary],
                           capture_output=True, text=True)
    return binary if build.returncode == 0 else None


def round_trip_ns():
    """One reading (int ns), or None where the probe cannot run."""
    if not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2:
        return None
    binary = _probe_binary()
    if binary is None:
        return None
    first, second = sorted(os.sched_getaffinity(0))[:2]
    run = subprocess.run([binary, str(first), str(second)], capture_output=True, text=True)
    return int(run.stdout) if run.returncode == 0 else None


def in_slow_phase():
    """Whether the two CPUs are apart now (one reading above SLOW_NS). Raises RuntimeError where
    the probe cannot run, so that no turn is silently counted quiet."""
    ns = round_trip_ns()
    if ns is None:
        raise RuntimeError("the link probe cannot run here (benchmarks/link.py: Linux, two CPUs "
                           "and a C compiler)")
    return ns > SLOW_NS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=None, help="seconds between readings")
    parser.add_argument("--seconds", type=float, default=60.0, help="with --every: how long")
    args = parser.parse_args(argv)
    if args.every is None:
        print(round_trip_ns())
        return 0
    end = time.time() + args.seconds
    while time.time() < end:
        ns = round_trip_ns()
        slow = ns is not None and ns > SLOW_NS
        print(f"{time.strftime('%H:%M:%S')} {ns} ns{'  slow' if slow else ''}", flush=True)
        time.sleep(args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
