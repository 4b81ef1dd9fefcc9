"""Benchmark ``trial-analysis simulate``: wall time and peak memory by cohort size.

Each size runs in a fresh child process (generation plus writing the CSV or Parquet files), so
the peak resident memory read from ``resource.getrusage(RUSAGE_CHILDREN)`` belongs to that run
alone (children are measured one at a time: the maximum is monotone, so each run is started
from a fresh ``benchmark`` parent via ``subprocess``).

Usage::

    python benchmarks/bench_simulate.py [--sizes 4193 1000000] [--format csv] [--layout long]

The brief's budget: a 1,000,000-patient extract in under 60 s and 4 GiB peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"

CHILD = """
import resource, sys, time
from trial_analysis.config import load_config
from trial_analysis.simulation.simulate import run_simulate
config = load_config(sys.argv[1])
start = time.perf_counter()
extract = run_simulate(config, seed=None, out=sys.argv[2], layout=sys.argv[3],
                       file_format=sys.argv[4], n_patients=int(sys.argv[5]))
seconds = time.perf_counter() - start
rows = {name: len(frame) for name, frame in extract.tables().items()}
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(repr({"seconds_in_process": seconds, "rows": rows, "peak_mib": peak_mib}))
"""

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
peak_mib = usage.ru_maxrss / 1024
print(repr({"returncode": done.returncode, "wall_seconds": wall, "peak_mib": peak_mib,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "stdout": done.stdout.strip(), "stderr": done.stderr.strip()[-2000:]}))
"""


def measure(n_patients: int, file_format: str, layout: str) -> dict:
    """Run one simulation in a child process; return wall time, peak memory and row counts."""
    with tempfile.TemporaryDirectory() as out:
        child = [sys.executable, "-c", CHILD, str(CONFIG), out, layout, file_format,
                 str(n_patients)]
        # A measuring parent per run, so RUSAGE_CHILDREN holds exactly this one child.
        done = subprocess.run([sys.executable, "-c", MEASURE, *child], capture_output=True,
                              text=True, check=True)
        result = eval(done.stdout.strip())  # noqa: S307 - our own repr of a dict of numbers
        size_mib = sum(p.stat().st_size for p in Path(out).iterdir()) / 2**20
    if result["returncode"] != 0:
        raise RuntimeError(result["stderr"])
    inner = eval(result["stdout"].splitlines()[-1])  # noqa: S307
    return {
        "n_patients": n_patients,
        "format": file_format,
        "layout": layout,
        "wall_seconds_including_startup": round(result["wall_seconds"], 2),
        "cpu_seconds_including_startup": round(result["cpu_seconds"], 2),
        "seconds_generate_and_write": round(inner["seconds_in_process"], 2),
        "peak_rss_mib": round(result["peak_mib"], 1),
        "output_mib": round(size_mib, 1),
        "rows": inner["rows"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4193, 1_000_000])
    parser.add_argument("--format", dest="file_format", default="csv",
                        choices=["csv", "parquet"])
    parser.add_argument("--layout", default="long", choices=["long", "wide"])
    args = parser.parse_args(argv)
    for n in args.sizes:
        started = time.strftime("%H:%M:%S")
        # The machine may be shared: the load average says how much of the wall time was
        # waiting for a core (compare wall and CPU seconds).
        load = round(os.getloadavg()[0], 2)
        result = measure(n, args.file_format, args.layout)
        print(json.dumps({"started": started, "load_average_1min": load, "cores": os.cpu_count(),
                          **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
