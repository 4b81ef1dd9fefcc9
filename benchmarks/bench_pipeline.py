"""End-to-end time and peak memory of the whole pipeline (simulate -> report).

Not a test: a measurement to quote. Runs the repository's Snakefile in a fresh temporary
folder for each requested cohort size and prints wall time, CPU time and the peak resident
memory of the largest single process, plus each rule's time from Snakemake's benchmark files.

    python benchmarks/bench_pipeline.py                    # the default (published-size) cohort
    python benchmarks/bench_pipeline.py --n-patients 800 40000 --cores 2
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_once(n_patients: int | None, cores: int, keep: Path | None) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline_")) if keep is None else keep
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if n_patients:
        config["simulation"]["n_patients"] = n_patients
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", str(cores), "--nolock", "--quiet"],
        capture_output=True, text=True, env=env, check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"pipeline failed in {workdir}:\n{result.stderr[-4000:]}")
    rules: dict[str, float] = {}
    for tsv in sorted((workdir / "logs" / "benchmarks").glob("*.tsv")):
        with tsv.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        rule = tsv.stem.split(".")[0]
        rules[rule] = rules.get(rule, 0.0) + float(row["s"])
    return {
        "n_patients": n_patients or config["simulation"]["targets"]["eligible_patients"],
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        # ru_maxrss of children is the largest single descendant, in KiB on Linux
        "peak_rss_mib": after.ru_maxrss / 1024,
        "rules": rules,
        "workdir": str(workdir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patients", type=int, nargs="*", default=[0],
                        help="cohort sizes (0 = the default published size)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    print(f"{'patients':>10} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}  per-rule seconds")
    for n in args.n_patients:
        r = run_once(n or None, args.cores, None)
        per_rule = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["rules"].items()))
        print(f"{r['n_patients']:>10} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{r['peak_rss_mib']:>9.0f}  {per_rule}")


if __name__ == "__main__":
    main()
