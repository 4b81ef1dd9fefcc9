"""Time and memory of the shared multiple imputation and of the two analyses reading it.

Not a test: a measurement to quote. Runs, as the pipeline does, ``trial-analysis impute``
(with ``--jobs`` processes, one BLAS thread each), then the ``multiple_imputation`` and
``tipping_point`` sensitivity analyses reading its file, on an existing pipeline workdir
(``analysis.parquet`` and, for the comparison table, the primary estimate files), and prints
wall time, CPU time (the command and its worker processes) and peak resident memory of each.

    python benchmarks/bench_pipeline.py --n-patients 100000 --keep /tmp/wd100k
    python benchmarks/bench_imputation.py /tmp/wd100k --jobs 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from timing import run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a pipeline workdir (after `allocate`)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[2],
                        help="process counts for the impute step")
    args = parser.parse_args()
    workdir = args.workdir
    config = workdir / "data" / "interim" / "config.as_run.yaml"
    analysis = workdir / "data" / "processed" / "analysis.parquet"
    estimates = workdir / "reports" / "estimates"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    python = [sys.executable, "-m", "trial_analysis", "-q"]
    with tempfile.TemporaryDirectory(prefix="bench_imputation_") as scratch:
        out = Path(scratch)
        files = []
        for jobs in args.jobs:
            path = out / f"imputations.{jobs}.parquet"
            wall, cpu, rss = run_timed(
                [*python, "impute", "--config", str(config), "--analysis", str(analysis),
                 "--out", str(path), "--jobs", str(jobs)], env, "impute failed")
            files.append(path)
            print(f"impute --jobs {jobs}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"peak so far {rss:.0f} MiB, file {path.stat().st_size / 2**20:.1f} MiB")
        same = len({p.read_bytes() for p in files}) == 1
        print(f"files identical for every --jobs: {same}")
        for name in ("multiple_imputation", "tipping_point"):
            extra = ["--estimates-dir", str(estimates)] if estimates.is_dir() else []
            wall, cpu, rss = run_timed(
                [*python, "sensitivity", "--config", str(config), "--analysis", str(analysis),
                 "--analysis-name", name, "--out-json", str(out / f"{name}.json"),
                 "--out-csv", str(out / f"{name}.csv"), "--figures-dir", str(out / name),
                 "--imputations", str(files[0]), *extra], env, f"sensitivity {name} failed")
            print(f"sensitivity {name} (reading the file): {wall:.1f} s wall, {cpu:.1f} s CPU, "
                  f"peak so far {rss:.0f} MiB")


if __name__ == "__main__":
    main()
