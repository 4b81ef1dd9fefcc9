"""The same extract read from CSV files, a DuckDB file and PostgreSQL: time side by side.

Not a test: a measurement to quote. Simulates the default study's extract at the requested
cohort sizes (CSV, as the pipeline writes it), loads the CSV text into a DuckDB database file
and, when a server is given, into PostgreSQL (schema ``bench_<n>``; each table as text with a
``row_no`` that keeps the file's order, as tests/test_sources_e2e.py does), then times, for
each source, either the ``clean`` step alone (``--step clean``, the step that reads the
sources; the later steps read the same cleaned Parquet files whatever the source) or the whole
analysis clean -> report through the Snakefile (``--step report``). Loading the databases is
not timed: it stands for the warehouse that already holds the data. The runs take the sources
in turn (csv, duckdb, postgresql, csv, ...). Prints the median wall time of ``--runs`` runs
per source and its ratio to the CSV time, and checks that every source gave the same cleaned
tables (``--step clean``: the Parquet bytes) as CSV.

    python benchmarks/bench_sources.py --n-patients 100000 1000000           # clean only
    python benchmarks/bench_sources.py --n-patients 100000 --step report
    source /tmp/trial-pg/env   # after ci/postgres/setup.sh (as root); teardown.sh afterwards
    python benchmarks/bench_sources.py --n-patients 1000000 --pg-dsn-env TRIAL_PG_DSN

The PostgreSQL server's connection string is read from the environment variable named by
``--pg-dsn-env`` (never printed); without it PostgreSQL is left out.

Measured 2026-12-08 on the 2-core machine (PostgreSQL 15 from ci/postgres/setup.sh on the same
cores), ``--runs 3``, load average 0.1-2, cleaned tables byte-identical to CSV:

    clean, 100,000 patients    CSV 3.3 s   DuckDB 2.9 s (x0.88)   PostgreSQL 3.2 s (x0.97)
    clean, 1,000,000 patients  CSV 46.2 s  DuckDB 36.1 s (x0.78)  PostgreSQL 41.1 s (x0.89)
    report, 100,000 (1 run)    CSV 98.6 s  DuckDB 83.1 s (x0.84)  PostgreSQL 84.2 s (x0.85)

Before the PostgreSQL reader fetched the tables side by side and read COPY through libpq
directly, PostgreSQL took x1.06 (1M) and x1.17 (100k) of CSV, at a higher load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from timing import run_timed

REPO = Path(__file__).resolve().parents[1]
TABLES = ("therapists", "patients", "sessions", "outcomes")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _simulate(raw: Path, n_patients: int) -> float:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["simulation"]["n_patients"] = n_patients
    path = raw.parent / "simulate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    wall, _, _ = run_timed([sys.executable, "-m", "trial_analysis", "simulate", "--config",
                            str(path), "--out", str(raw)], _env(), "simulate failed")
    return wall


def _load_duckdb(raw: Path, path: Path) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    for table in TABLES:
        con.execute(f"CREATE TABLE {table} AS SELECT *, row_number() OVER () AS row_no FROM "
                    f"read_csv('{raw / table}.csv', all_varchar = true, header = true)")
    con.close()


def _load_postgres(raw: Path, dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        con.execute(f"CREATE SCHEMA {schema}")
        for table in TABLES:
            path = raw / f"{table}.csv"
            header = path.open(encoding="utf-8-sig").readline().strip().split(",")
            columns = ", ".join(f'"{c}" text' for c in header)
            con.execute(f"CREATE TABLE {schema}.{table} ({columns}, "
                        "row_no bigint GENERATED ALWAYS AS IDENTITY)")
            names = ", ".join(f'"{c}"' for c in header)
            with con.cursor() as cursor, cursor.copy(
                    f"COPY {schema}.{table} ({names}) FROM STDIN WITH (FORMAT csv, HEADER true)"
            ) as copy, path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    copy.write(block)
            con.execute(f"ANALYZE {schema}.{table}")


def _study(workdir: Path, raw: Path, database: dict | None, schema: str = "") -> Path:
    """A config without a simulation section: files in ``raw``, or a query per table."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["simulation"]
    config["paths"]["raw"] = str(raw)
    if database is not None:
        config["input"]["database"] = database
        prefix = f"{schema}." if schema else ""
        for table in TABLES:
            entry = config["input"]["tables"][table]
            del entry["file"]
            entry["query"] = f"SELECT * FROM {prefix}{table} ORDER BY row_no"
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _time_clean(workdir: Path, config: Path, raw: Path, runs: int) -> list[float]:
    command = [sys.executable, "-m", "trial_analysis", "clean", "--config", str(config),
               "--raw", str(raw), "--out", str(workdir / "clean"),
               "--ledger", str(workdir / "clean_ledger.parquet")]
    return [run_timed(command, _env(), f"clean failed in {workdir}")[0] for _ in range(runs)]


def _time_report(workdir: Path, cores: int, runs: int) -> list[float]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", str(cores), "--nolock", "--quiet",
               "--forcerun", "clean"]
    return [run_timed(command, _env(), f"pipeline failed in {workdir}")[0] for _ in range(runs)]


def _same_clean_tables(reference: Path, other: Path) -> bool:
    return all((reference / "clean" / f"{t}.parquet").read_bytes()
               == (other / "clean" / f"{t}.parquet").read_bytes() for t in TABLES)


def run_size(n_patients: int, step: str, runs: int, cores: int, dsn: str | None,
             root: Path) -> None:
    """Simulate, load and time every source for one cohort size; print one block."""
    base = root / f"n{n_patients}"
    raw = base / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    simulate_s = _simulate(raw, n_patients)
    rows = {t: sum(1 for _ in (raw / f"{t}.csv").open("rb")) - 1 for t in TABLES}
    db_dir = base / "db"
    db_dir.mkdir(exist_ok=True)
    _load_duckdb(raw, db_dir / "extract.duckdb")
    sources: dict[str, dict | None] = {
        "csv": None,
        "duckdb": {"engine": "duckdb", "path": str(db_dir / "extract.duckdb")},
    }
    schema = f"bench_{n_patients}"
    if dsn:
        _load_postgres(raw, dsn, schema)
        sources["postgresql"] = {"engine": "postgresql", "dsn_env": "BENCH_PG_DSN"}
        os.environ["BENCH_PG_DSN"] = dsn
    studies: dict[str, tuple[Path, Path, Path]] = {}
    for name, database in sources.items():
        workdir = base / name
        shutil.rmtree(workdir, ignore_errors=True)
        # A database source has no raw files (an empty folder: nothing to checksum).
        source_raw = raw if database is None else workdir / "raw"
        source_raw.mkdir(parents=True, exist_ok=True)
        config = _study(workdir, source_raw, database,
                        schema if name == "postgresql" else "")
        studies[name] = (workdir, config, source_raw)
    # Round robin (csv, duckdb, postgresql, csv, ...): a spell of load from other processes
    # falls on every source rather than on all the runs of one.
    times: dict[str, list[float]] = {name: [] for name in studies}
    for _ in range(runs):
        for name, (workdir, config, source_raw) in studies.items():
            if step == "clean":
                times[name] += _time_clean(workdir, config, source_raw, 1)
            else:
                times[name] += _time_report(workdir, cores, 1)
    print(f"patients {n_patients} (simulated in {simulate_s:.0f} s; rows: "
          + ", ".join(f"{t} {n}" for t, n in rows.items()) + f"); step {step}, "
          f"median of {runs}:")
    csv_s = statistics.median(times["csv"])
    for name, values in times.items():
        median = statistics.median(values)
        same = ""
        if step == "clean" and name != "csv":
            same = ("  same cleaned tables as CSV" if _same_clean_tables(base / "csv", base / name)
                    else "  CLEANED TABLES DIFFER FROM CSV")
        print(f"  {name:<11} {median:8.1f} s  ({min(values):.1f}-{max(values):.1f})  "
              f"x{median / csv_s:.2f} of CSV{same}")
    if dsn:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patients", type=int, nargs="+", default=[100_000])
    parser.add_argument("--step", choices=["clean", "report"], default="clean",
                        help="time the clean step alone, or clean -> report (Snakefile)")
    parser.add_argument("--runs", type=int, default=1, help="runs per source (median)")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake cores (--step report)")
    parser.add_argument("--pg-dsn-env", default=None,
                        help="environment variable holding a PostgreSQL connection string")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder, keep it")
    args = parser.parse_args()
    dsn = None
    if args.pg_dsn_env:
        dsn = os.environ.get(args.pg_dsn_env)
        if not dsn:
            parser.error(f"environment variable {args.pg_dsn_env} is not set")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_sources_"))
    try:
        for n in args.n_patients:
            run_size(n, args.step, args.runs, args.cores, dsn, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
