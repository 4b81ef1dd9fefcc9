"""Benchmark the simulation study: replicates of the default design per second on 2 workers.

Two modes:

``pool``
    Replicates of one scenario in ``--workers`` processes (``ProcessPoolExecutor``), chunks of
    ``--chunk-size``; measures the replicate path alone (simulate, analysis table, model fit).
``snakemake``
    The real target: ``snakemake --cores W simulation_study`` in a temporary folder holding the
    repository's config and a study file with that one scenario cut to ``--replicates``
    replicates (chunks of ``--chunk-size``); includes every job's Python start-up and the
    summary job. Prints the summary rows too.

Both print wall time, replicates per second and the projected wall time of 1000 replicates
(``1000 / rate``; exact when ``--replicates 1000``).

Usage::

    python benchmarks/bench_simulation_study.py --replicates 100 [--mode pool] [--workers 2]
    python benchmarks/bench_simulation_study.py --replicates 1000 --mode snakemake

The brief's budget: 1000 replicates of the default design in under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "config.yaml"
STUDY = REPO / "config" / "simulation_study.yaml"
MODULE = REPO / "workflow" / "simulation_study.smk"
INCLUDE = 'include: "workflow/simulation_study.smk"'


def _study_file(folder: Path, scenario: str, replicates: int, chunk_size: int) -> Path:
    """The repository's study file cut to one scenario with ``replicates`` replicates."""
    raw = yaml.safe_load(STUDY.read_text())
    raw["chunk_size"] = chunk_size
    raw["scenarios"] = [dict(s) | {"n_replicates": replicates}
                        for s in raw["scenarios"] if s["name"] == scenario]
    raw.pop("grid", None)
    if not raw["scenarios"]:
        sys.exit(f"no scenario {scenario!r} in {STUDY}")
    path = folder / "config" / "simulation_study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _chunk(study_path: str, scenario: str, start: int, stop: int) -> tuple[pd.DataFrame, float]:
    from trial_analysis.config import load_config
    from trial_analysis.simulation.simulation_study import load_study, run_chunk

    config = load_config(CONFIG)
    study = load_study(study_path, config)
    started = time.perf_counter()
    frame = run_chunk(config, study, scenario, range(start, stop))
    return frame, time.perf_counter() - started


def bench_pool(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        study_path = str(_study_file(Path(tmp), args.scenario, args.replicates, args.chunk_size))
        ranges = [(a, min(a + args.chunk_size, args.replicates))
                  for a in range(0, args.replicates, args.chunk_size)]
        started = time.perf_counter()
        # Spawned workers start with the pinned BLAS thread counts of main().
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            done = list(pool.map(_chunk, *zip(*[(study_path, args.scenario, a, b)
                                                 for a, b in ranges], strict=True)))
        wall = time.perf_counter() - started
    results = pd.concat([frame for frame, _ in done], ignore_index=True)
    busy = sum(seconds for _, seconds in done)
    return {"mode": "pool", "wall_seconds": wall,
            "seconds_per_replicate_per_worker": busy / args.replicates,
            "failed_fits": int((results["status"] != "ok").sum())}


def bench_snakemake(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = yaml.safe_load(CONFIG.read_text())
        (folder / "config").mkdir()
        (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        _study_file(folder, args.scenario, args.replicates, args.chunk_size)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        snakefile = REPO / "Snakefile"
        if INCLUDE not in snakefile.read_text():
            # Until the main Snakefile includes the module, a wrapper includes both.
            wrapper = folder / "Snakefile"
            wrapper.write_text(f'include: "{snakefile}"\ninclude: "{MODULE}"\n')
            snakefile = wrapper
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
                   "--directory", str(folder), "--cores", str(args.workers), "--nolock",
                   "--quiet", "all", "--", "simulation_study"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"snakemake failed:\n{result.stderr[-4000:]}")
        summary = pd.read_csv(folder / "reports" / "simulation_study" / "summary.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.T.to_string(header=False))
    return {"mode": "snakemake", "wall_seconds": wall,
            "failed_fits": int(summary["n_failed"].sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--mode", choices=["pool", "snakemake"], default="pool")
    args = parser.parse_args()
    # One BLAS thread per worker, as the Snakemake jobs run, so that workers do not compete.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    report = bench_pool(args) if args.mode == "pool" else bench_snakemake(args)
    rate = args.replicates / report["wall_seconds"]
    report |= {"replicates": args.replicates, "workers": args.workers,
               "replicates_per_second": rate, "projected_seconds_for_1000": 1000 / rate,
               "load_average_1min_after": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
