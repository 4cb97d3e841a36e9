#!/usr/bin/env python3
"""Before/after timing of one benchmark binary built from two trees, run alternately on one machine.

    tools/bench_ab.py --old OLD_BUILD --new NEW_BUILD BENCH FILTER [--rounds N] [--min-time S]

OLD_BUILD and NEW_BUILD are `cmake --preset bench` build directories (e.g. of a `git worktree` at
the old commit and of this checkout); BENCH is a target name such as consr_bench_logprobs, FILTER a
Google Benchmark regex. Each round runs the old binary, then the new one, so that a change in the
machine's load falls on both sides. Prints, per benchmark, each side's real times (sorted) and the
ratio of the minima. Run it on a quiet machine (no builds); standard library only.
"""
import argparse
import collections
import json
import os
import subprocess
import sys

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def run(binary, flt, min_time):
    out = subprocess.run([binary, "--benchmark_filter=" + flt, "--benchmark_min_time=%g" % min_time,
                          "--benchmark_format=json"], capture_output=True, text=True, check=True).stdout
    if not out.strip():  # Google Benchmark writes nothing to stdout when the filter matches nothing
        return []
    return [(b["name"], b["real_time"] * TO_MS[b["time_unit"]]) for b in json.loads(out)["benchmarks"]]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, help="build directory of the old tree")
    p.add_argument("--new", required=True, help="build directory of the new tree")
    p.add_argument("bench", help="benchmark target, e.g. consr_bench_logprobs")
    p.add_argument("filter", help="Google Benchmark filter regex")
    p.add_argument("--rounds", type=int, default=3, help="old/new pairs of runs (default 3)")
    p.add_argument("--min-time", type=float, default=0.3, help="--benchmark_min_time per run (default 0.3)")
    a = p.parse_args()
    if a.rounds < 1:
        sys.exit("bench_ab.py: argument --rounds: must be >= 1")
    binaries = {}
    for side in ("old", "new"):
        path = os.path.join(getattr(a, side), "bench", a.bench)
        if not os.access(path, os.X_OK):
            sys.exit("bench_ab.py: argument --%s: no executable %s (build the target first)" % (side, path))
        binaries[side] = path
    times = collections.defaultdict(lambda: {"old": [], "new": []})
    for _ in range(a.rounds):
        for side in ("old", "new"):
            for name, ms in run(binaries[side], a.filter, a.min_time):
                times[name][side].append(ms)
    if not times:
        sys.exit("bench_ab.py: argument filter: no benchmark of %s matches %r" % (a.bench, a.filter))
    for name, t in times.items():
        old, new = sorted(t["old"]), sorted(t["new"])
        print("%-72s old %s  new %s  ms  (min new/old %.3f)" % (
            name, " ".join("%.3f" % x for x in old), " ".join("%.3f" % x for x in new), min(new) / min(old)))


if __name__ == "__main__":
    main()
