"""End-to-end time and peak memory of the whole pipeline (simulate -> report).

Not a test: a measurement to quote. Runs the repository's Snakefile in a fresh temporary
folder for each requested cohort size and prints wall time, CPU time and the peak resident
memory of the largest single process, then each rule's time and peak resident memory from
Snakemake's benchmark files. The simulated extract is made first, in a run of its own, so the
analysis (clean -> report) is timed on its own: that is the figure a study with a real extract
would see. With ``--runs N`` the analysis is run N times over the same extract (each a full
clean -> report: ``--forcerun clean``) and the median, minimum and maximum are printed: the
figure to quote on a noisy machine.

    python benchmarks/bench_pipeline.py                    # the default (published-size) cohort
    python benchmarks/bench_pipeline.py --runs 5           # median of 5 clean -> report runs
    python benchmarks/bench_pipeline.py --n-patients 800 40000 --cores 2
    python benchmarks/bench_pipeline.py --n-patients 1000000 --keep /tmp/wd1m
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from timing import run_timed

REPO = Path(__file__).resolve().parents[1]


def _snakemake(workdir: Path, cores: int, *extra: str) -> tuple[float, float, float]:
    """Run the Snakefile in ``workdir``; wall seconds, CPU seconds, peak RSS (MiB)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return run_timed(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", str(cores), "--nolock", "--quiet", *extra],
        env, f"pipeline failed in {workdir}")


def read_benchmarks(workdir: Path) -> dict[str, dict[str, float]]:
    """Per rule (per analysis for ``sensitivity``): total seconds over its jobs, largest
    max_rss (MiB) of any job, job count."""
    rules: dict[str, dict[str, float]] = {}
    for tsv in sorted((workdir / "logs" / "benchmarks").glob("*.tsv")):
        with tsv.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        rule = tsv.stem.split(".")[0]
        # sensitivity analyses differ in kind, so each is listed on its own
        key = tsv.stem if rule == "sensitivity" else rule
        entry = rules.setdefault(key, {"s": 0.0, "max_rss_mib": 0.0, "jobs": 0})
        entry["s"] += float(row["s"])
        rss = float(row["max_rss"]) if row.get("max_rss", "NA") not in ("NA", "") else 0.0
        entry["max_rss_mib"] = max(entry["max_rss_mib"], rss)
        entry["jobs"] += 1
    return rules


def run_once(n_patients: int | None, cores: int, keep: Path | None,
             runs: int = 1) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline_")) if keep is None else keep
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if n_patients:
        config["simulation"]["n_patients"] = n_patients
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    # a kept folder may hold an earlier run's benchmark files (rules since renamed or merged)
    shutil.rmtree(workdir / "logs" / "benchmarks", ignore_errors=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    simulate_wall, simulate_cpu, simulate_rss = _snakemake(workdir, cores, "--until", "simulate")
    timed = [_snakemake(workdir, cores, "--forcerun", "clean") for _ in range(runs)]
    walls, cpus = sorted(t[0] for t in timed), sorted(t[1] for t in timed)
    return {
        "n_patients": n_patients or config["simulation"]["targets"]["eligible_patients"],
        "simulate_s": simulate_wall,
        "wall_s": statistics.median(walls),
        "wall_range": (walls[0], walls[-1]),
        "cpu_s": statistics.median(cpus),
        "runs": runs,
        "peak_rss_mib": max(max(t[2] for t in timed), simulate_rss),
        "rules": read_benchmarks(workdir),
        "workdir": str(workdir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patients", type=int, nargs="*", default=[0],
                        help="cohort sizes (0 = the default published size)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1,
                        help="clean -> report runs per cohort size; the median is printed")
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this folder and keep it (one cohort size only)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.keep is not None and len(args.n_patients) > 1:
        parser.error("--keep takes one cohort size")
    for n in args.n_patients:
        r = run_once(n or None, args.cores, args.keep, args.runs)
        spread = (f" (median of {r['runs']}, {r['wall_range'][0]:.1f}-{r['wall_range'][1]:.1f} s)"
                  if r["runs"] > 1 else "")
        print(f"patients {r['n_patients']}: simulate {r['simulate_s']:.1f} s; "
              f"clean -> report {r['wall_s']:.1f} s wall{spread}, {r['cpu_s']:.1f} s CPU; "
              f"peak RSS of any one process {r['peak_rss_mib']:.0f} MiB  ({r['workdir']})")
        # Per rule (the last run) only wall seconds: Snakemake's sampled cpu_time falls far
        # short on long jobs (a 42 s job read 15 s), so CPU is given for the whole run only.
        print(f"  {'rule':<36} {'jobs':>4} {'wall s':>9} {'max RSS MiB':>12}")
        for rule, entry in sorted(r["rules"].items(), key=lambda item: -item[1]["s"]):
            print(f"  {rule:<36} {entry['jobs']:>4.0f} {entry['s']:>9.1f} "
                  f"{entry['max_rss_mib']:>12.0f}")


if __name__ == "__main__":
    main()
