"""Time the data steps (clean -> tables) one by one, and check two source trees agree byte for byte.

Not a test: a measurement to quote. Runs each step's command line (as the Snakefile does, one
BLAS thread) in an output folder laid out like a pipeline workdir, and prints wall time, CPU
time and peak resident memory per step. With ``--reference`` it then compares every file those
steps wrote with the same file under the reference folder (a run of another checkout, e.g.
main, on the same workdir): identical bytes, or for Parquet at least equal frames.

    # a workdir with a raw extract and its config.as_run.yaml, e.g. from bench_pipeline.py:
    python benchmarks/bench_pipeline.py --n-patients 100000 --keep /tmp/wd100k
    # main's outputs, then this checkout's, compared:
    python benchmarks/bench_serial_steps.py /tmp/wd100k /tmp/out_main --src /path/to/main/src
    python benchmarks/bench_serial_steps.py /tmp/wd100k /tmp/out_new --reference /tmp/out_main

``tables`` needs the fits' estimate files: they are copied from the workdir's
``reports/estimates`` (so the step runs without refitting the models).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from pandas.testing import assert_frame_equal

REPO = Path(__file__).resolve().parents[1]
STEPS = ("clean", "eligibility", "allocate", "sessions", "responders", "tables")
ARGS = {
    "clean": "--raw data/raw --out data/interim/clean --ledger data/interim/clean_ledger.parquet",
    "eligibility": "--clean data/interim/clean --clean-ledger data/interim/clean_ledger.parquet"
    " --cohort data/interim/cohort.parquet --ledger data/interim/ledger.parquet"
    " --flow data/interim/flow_eligibility.csv",
    "allocate": "--cohort data/interim/cohort.parquet --clean data/interim/clean"
    " --flow-in data/interim/flow_eligibility.csv --analysis data/processed/analysis.parquet"
    " --flow reports/tables/flow.csv --implementation reports/tables/implementation.csv"
    " --fidelity reports/tables/therapist_fidelity.csv",
    "sessions": "--analysis data/processed/analysis.parquet"
    " --out-json reports/estimates/sessions.json --out-csv reports/estimates/sessions.csv",
    "responders": "--analysis data/processed/analysis.parquet"
    " --out-json reports/estimates/responders.json --out-csv reports/estimates/responders.csv",
    "tables": "--analysis data/processed/analysis.parquet --estimates reports/estimates"
    " --out reports/tables",
}
# Snakemake gives each job its rule's threads (1) as the BLAS thread count; so do we, because
# multi-threaded BLAS sums in another order and the last digits of estimates would differ.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                                     "NUMEXPR_NUM_THREADS")}


def run_step(step: str, workdir: Path, out: Path, src: Path) -> tuple[float, float, float]:
    """Run one step in ``out``; wall seconds, CPU seconds, peak RSS (MiB)."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(src)}
    config = workdir / "data" / "interim" / "config.as_run.yaml"
    command = [sys.executable, "-m", "trial_analysis", step, "--config", str(config),
               *ARGS[step].split()]
    timed = ["/usr/bin/time", "-f", "%e %U %S %M", *command]
    result = subprocess.run(timed, cwd=out, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{step} failed:\n{result.stderr[-3000:]}")
    wall, user, system, rss_kib = result.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), float(rss_kib) / 1024


def prepare(workdir: Path, out: Path) -> None:
    """The workdir's layout under ``out``: raw data linked, the fits' estimates copied."""
    for folder in ("data/interim/clean", "data/processed", "reports/tables", "reports/estimates"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    raw = out / "data" / "raw"
    if not raw.exists():
        raw.symlink_to(workdir / "data" / "raw")
    for estimate in (workdir / "reports" / "estimates").glob("*"):
        if not estimate.name.startswith(("sessions.", "responders.")):
            shutil.copy2(estimate, out / "reports" / "estimates" / estimate.name)


def outputs(out: Path) -> list[Path]:
    """Files the data steps write, relative to ``out``."""
    found = [p for p in (out / "data" / "interim").rglob("*")
             if p.is_file() and p.name != "config.as_run.yaml"]
    found += [p for p in (out / "data" / "processed").rglob("*") if p.is_file()]
    found += [p for p in (out / "reports" / "tables").rglob("*") if p.is_file()]
    found += [p for p in (out / "reports" / "estimates").glob("*")
              if p.name.startswith(("sessions.", "responders."))]
    return sorted(p.relative_to(out) for p in found)


def compare(out: Path, reference: Path) -> int:
    """Print how each output compares with the reference's; return the number that differ."""
    differ = 0
    for relative in outputs(reference):
        mine, theirs = out / relative, reference / relative
        if not mine.exists():
            verdict = "MISSING"
        elif filecmp.cmp(mine, theirs, shallow=False):
            verdict = "identical bytes"
        elif relative.suffix == ".parquet":
            try:
                assert_frame_equal(pd.read_parquet(mine), pd.read_parquet(theirs),
                                   check_exact=True)
                verdict = "equal frames (bytes differ)"
            except AssertionError:
                verdict = "DIFFERENT"
        else:
            verdict = "DIFFERENT"
        differ += verdict in ("MISSING", "DIFFERENT")
        print(f"  {verdict:<28} {relative}")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a pipeline workdir with data/raw")
    parser.add_argument("out", type=Path, help="folder for this run's outputs")
    parser.add_argument("--src", type=Path, default=REPO / "src",
                        help="source tree to run (default: this checkout's src)")
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=STEPS)
    parser.add_argument("--reference", type=Path, default=None,
                        help="outputs of another run to compare with, file by file")
    args = parser.parse_args()
    workdir, out = args.workdir.resolve(), args.out.resolve()
    prepare(workdir, out)
    print(f"{'step':<12} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9}")
    start = time.perf_counter()
    for step in args.steps:
        wall, cpu, rss = run_step(step, workdir, out, args.src.resolve())
        print(f"{step:<12} {wall:>8.1f} {cpu:>8.1f} {rss:>9.0f}")
    print(f"{'total':<12} {time.perf_counter() - start:>8.1f}")
    if args.reference is not None:
        differ = compare(out, args.reference.resolve())
        print("all outputs agree" if not differ else f"{differ} output(s) differ")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
