"""End-to-end time and peak memory of the whole pipeline (simulate -> report).

Not a test: a measurement to quote. Runs the repository's Snakefile in a fresh temporary
folder for each requested cohort size and prints wall time, CPU time and the peak resident
memory of the largest single process, then each rule's time and peak resident memory from
Snakemake's benchmark files. The simulated extract is made first, in a run of its own, so the
analysis (clean -> report) is timed on its own: that is the figure a study with a real extract
would see.

    python benchmarks/bench_pipeline.py                    # the default (published-size) cohort
    python benchmarks/bench_pipeline.py --n-patients 800 40000 --cores 2
    python benchmarks/bench_pipeline.py --n-patients 1000000 --keep /tmp/wd1m
"""

from __future__ import annotations

import argparse
import csv
import os
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


def run_once(n_patients: int | None, cores: int, keep: Path | None) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline_")) if keep is None else keep
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if n_patients:
        config["simulation"]["n_patients"] = n_patients
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    simulate_wall, simulate_cpu, simulate_rss = _snakemake(workdir, cores, "--until", "simulate")
    wall, cpu, peak = _snakemake(workdir, cores)
    return {
        "n_patients": n_patients or config["simulation"]["targets"]["eligible_patients"],
        "simulate_s": simulate_wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": max(peak, simulate_rss),
        "rules": read_benchmarks(workdir),
        "workdir": str(workdir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patients", type=int, nargs="*", default=[0],
                        help="cohort sizes (0 = the default published size)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this folder and keep it (one cohort size only)")
    args = parser.parse_args()
    if args.keep is not None and len(args.n_patients) > 1:
        parser.error("--keep takes one cohort size")
    for n in args.n_patients:
        r = run_once(n or None, args.cores, args.keep)
        print(f"patients {r['n_patients']}: simulate {r['simulate_s']:.1f} s; "
              f"clean -> report {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU; "
              f"peak RSS of any one process {r['peak_rss_mib']:.0f} MiB  ({r['workdir']})")
        # Per rule only wall seconds: Snakemake's sampled cpu_time falls far short on long
        # jobs (a 42 s job read 15 s), so CPU is given for the whole run only.
        print(f"  {'rule':<36} {'jobs':>4} {'wall s':>9} {'max RSS MiB':>12}")
        for rule, entry in sorted(r["rules"].items(), key=lambda item: -item[1]["s"]):
            print(f"  {rule:<36} {entry['jobs']:>4.0f} {entry['s']:>9.1f} "
                  f"{entry['max_rss_mib']:>12.0f}")


if __name__ == "__main__":
    main()
