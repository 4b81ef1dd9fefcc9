"""The default simulated extract read from a database gives byte-identical analysis files.

The CSV run (the reference) simulates the default extract and runs the Snakefile up to the
analysis table and the primary estimates. The same CSV files are then loaded as text into a
DuckDB file (and, when a server is configured, into PostgreSQL by ci/postgres/setup.sh), and a
config without a simulation section reads every table by a query. ``analysis.parquet`` and
every estimate file must be byte-identical, and the ledger equal.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, _fail_with_logs, run_snakemake, write_study

TABLES = {"therapists": "therapist_id", "patients": "episode_id", "sessions": "session_id",
          "outcomes": "outcome_id"}
TARGETS = ("data/processed/analysis.parquet", "reports/estimates/function.complete_case.json")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("csv_run")
    write_study(workdir)
    result = run_snakemake(workdir, *TARGETS)
    if result.returncode != 0:
        _fail_with_logs(workdir, result)
    return workdir


def _query_study(workdir: Path, database: dict, schema: str = "") -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["simulation"]  # the extract is given, not simulated
    config["input"]["database"] = database
    prefix = f"{schema}." if schema else ""
    for table in TABLES:
        entry = config["input"]["tables"][table]
        del entry["file"]
        # record_id is the CSV's row number: the query keeps the file's order (row_no, a
        # column the cleaning step ignores).
        entry["query"] = f"SELECT * FROM {prefix}{table} ORDER BY row_no"
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _assert_identical(reference: Path, workdir: Path) -> None:
    a, b = reference / TARGETS[0], workdir / TARGETS[0]
    assert a.read_bytes() == b.read_bytes(), "analysis.parquet differs"
    estimates = sorted((reference / "reports" / "estimates").glob("*.*"))
    assert estimates
    for path in estimates:
        other = workdir / "reports" / "estimates" / path.name
        assert path.read_bytes() == other.read_bytes(), f"{path.name} differs"
    ledger = "data/interim/clean_ledger.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(reference / ledger),
                                  pd.read_parquet(workdir / ledger))


def test_duckdb_run_is_byte_identical_to_csv(csv_run: Path, tmp_path: Path) -> None:
    import duckdb

    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    path = raw / "extract.duckdb"
    con = duckdb.connect(str(path))
    for table in TABLES:
        shutil.copy(csv_run / "data" / "raw" / f"{table}.csv", raw)
        # Text, as the CSV holds it; row_number() over the file's order numbers the rows.
        con.execute(f"CREATE TABLE {table} AS SELECT *, row_number() OVER () AS row_no FROM "
                    f"read_csv('{raw / table}.csv', all_varchar = true, header = true)")
    con.close()
    _query_study(tmp_path, {"engine": "duckdb", "path": "data/raw/extract.duckdb"})
    result = run_snakemake(tmp_path, *TARGETS)
    if result.returncode != 0:
        _fail_with_logs(tmp_path, result)
    _assert_identical(csv_run, tmp_path)
    sources = pd.read_parquet(tmp_path / "data/interim/clean_ledger.parquet").attrs["sources"]
    assert {s["table"]: s["rows"] for s in sources} == {
        t: len(pd.read_csv(csv_run / "data" / "raw" / f"{t}.csv", dtype=str)) for t in TABLES}


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TRIAL_PG_DSN"),
                    reason="no PostgreSQL server configured (TRIAL_PG_DSN; ci/postgres/setup.sh)")
def test_postgres_run_is_byte_identical_to_csv(csv_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ci/postgres/setup.sh loaded the default extract as text into schema ``extract``.

    The run goes on to the report, whose provenance lists each query and its rows; the
    connection string (here with a password, which the trusting throwaway server ignores) and
    the password reach no file under reports/ or logs/.
    """
    password = "NeverInAReport-7c1f"
    dsn = f"{os.environ['TRIAL_PG_DSN']} password={password}"
    monkeypatch.setenv("TRIAL_PG_DSN", dsn)
    monkeypatch.setenv("PGPASSWORD", password)
    _query_study(tmp_path, {"engine": "postgresql", "dsn_env": "TRIAL_PG_DSN"}, "extract")
    result = run_snakemake(tmp_path, *TARGETS, "reports/report.html")
    if result.returncode != 0:
        _fail_with_logs(tmp_path, result)
    _assert_identical(csv_run, tmp_path)
    html = (tmp_path / "reports" / "report.html").read_text(encoding="utf-8")
    provenance = html.split('id="provenance"')[1]
    for table in TABLES:
        rows = len(pd.read_csv(csv_run / "data" / "raw" / f"{table}.csv", dtype=str))
        assert f"SELECT * FROM extract.{table} ORDER BY row_no" in provenance
        assert f">{rows}<" in provenance
    assert "$TRIAL_PG_DSN" in provenance
    # Table P1: every table read from the server, with no file or digest of its own
    assert provenance.count("server query, no file") == len(TABLES)
    written = [p for folder in ("reports", "logs", "data/interim")
               for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert len(written) > 20
    for path in written:
        data = path.read_bytes()
        assert password.encode() not in data, path
        assert dsn.encode() not in data and os.environ["TRIAL_PG_DSN"].encode() not in data, path
