"""Raw tables from SAS, Stata and SPSS files, Excel date cells, DuckDB and PostgreSQL queries.

Each source must give the cleaning step the same tables as the fixture extract's CSV files
(the reference), so the rest of the pipeline cannot tell where the data came from.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from unittest import mock

import duckdb
import numpy as np
import openpyxl
import pandas as pd
import pyreadstat
import pytest
from raw_fixtures import fixture_config, raw_extract, write_extract

from trial_analysis.errors import ConfigError, DataError
from trial_analysis.ingest.check_data import check_data
from trial_analysis.ingest.clean import clean_tables
from trial_analysis.ingest.readers import read_table

TABLES = ("therapists", "patients", "sessions", "outcomes")
DATES = {"etmi_training_date", "referral_date", "birth_date", "session_date", "assessment_date"}
NUMBERS = {"age", "symptom_duration_weeks", "depression", "anxiety", "bmi", "ses_score", "score"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The fixture extract cleaned from CSV."""
    folder = write_extract(raw_extract(), tmp_path_factory.mktemp("csv"))
    return clean_tables(fixture_config(), folder)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """A text table as a statistics package stores it: dates, numbers, text ('' = missing)."""
    frame = frame.replace("", None)
    typed = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column in DATES:
            parsed = pd.to_datetime(frame[column])
            typed[column] = [d.date() if pd.notna(d) else None for d in parsed]
        elif column in NUMBERS:
            typed[column] = pd.to_numeric(frame[column])
        else:
            typed[column] = frame[column].fillna("")
    return typed


def _config_for(file_format: str, **entries: dict) -> dict:
    config = fixture_config(file_format="csv")
    config["input"]["format"] = file_format
    for name in TABLES:
        config["input"]["tables"][name] = {"file": f"{name}.{file_format}", "columns": {},
                                           **entries.get(name, {})}
    return config


def _assert_same_tables(result, reference) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(result.tables[name], reference.tables[name])
    pd.testing.assert_frame_equal(result.ledger, reference.ledger)


def _write_stat(folder: Path, file_format: str) -> Path:
    """The fixture extract as .sav/.dta/.xpt; sex stored as labelled codes 1/2 (F/M) and
    depression as 0/1 labelled No/Yes, bmi with -99 as SPSS user-defined missing."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in raw_extract().items():
        typed = _typed(frame)
        labels, missing = {}, {}
        if name == "patients" and file_format != "xpt":  # transport files have no value labels
            typed["sex"] = typed["sex"].map({"F": 1.0, "M": 2.0})
            labels = {"sex": {1: "F", 2: "M"}, "depression": {0: "No", 1: "Yes"}}
            if file_format == "sav":
                typed["bmi"] = typed["bmi"].fillna(-99.0)
                missing = {"bmi": [-99.0]}
        column_labels = {c: f"{c.replace('_', ' ').capitalize()} (label)" for c in typed.columns}
        path = folder / f"{name}.{file_format}"
        if file_format == "sav":
            pyreadstat.write_sav(typed, path, variable_value_labels=labels,
                                 missing_ranges=missing, column_labels=column_labels)
        elif file_format == "dta":
            pyreadstat.write_dta(typed, path, variable_value_labels=labels,
                                 column_labels=column_labels)
        else:
            pyreadstat.write_xport(typed, path, column_labels=column_labels, table_name=name[:8])
    return folder


@pytest.mark.parametrize("file_format", ["sav", "dta", "xpt"])
def test_statistics_package_files_clean_like_csv(tmp_path, reference, file_format) -> None:
    folder = _write_stat(tmp_path / file_format, file_format)
    codes = {"patients": {"codes": ["depression"]}} if file_format != "xpt" else {}
    result = clean_tables(_config_for(file_format, **codes), folder)
    _assert_same_tables(result, reference)


def test_value_labels_are_categories_codes_kept_on_request(tmp_path) -> None:
    folder = _write_stat(tmp_path / "sav", "sav")
    labelled = read_table(folder / "patients.sav", "sav")
    assert isinstance(labelled["sex"].dtype, pd.CategoricalDtype)
    assert list(labelled["sex"].cat.categories) == ["F", "M"]
    assert set(labelled["depression"].dropna()) == {"No", "Yes"}
    coded = read_table(folder / "patients.sav", "sav", keep_codes=["DEPRESSION"])
    assert set(coded["depression"].dropna()) == {0, 1}
    # The code -> label sets and the variable labels travel with the frame.
    assert labelled.attrs["value_labels"]["depression"] == {0.0: "No", 1.0: "Yes"}
    assert labelled.attrs["variable_labels"]["ses_score"] == "Ses score (label)"


def test_variable_labels_reach_the_cleaned_patients_under_canonical_names(tmp_path) -> None:
    folder = _write_stat(tmp_path / "sav", "sav")
    # The file names ses_score SES: the label is kept under the canonical name.
    typed = _typed(raw_extract()["patients"]).rename(columns={"ses_score": "SES"})
    labels = {c: f"{c.replace('_', ' ').capitalize()} (label)" for c in typed.columns}
    labels["SES"] = "Socioeconomic status (file label)"
    pyreadstat.write_sav(typed, folder / "patients.sav", column_labels=labels)
    config = _config_for("sav")
    config["input"]["tables"]["patients"]["columns"] = {"ses_score": "SES"}
    result = clean_tables(config, folder)
    attrs = result.tables["patients"].attrs["variable_labels"]
    assert attrs["ses_score"] == "Socioeconomic status (file label)"
    assert attrs["episode_id"] == "Episode id (label)"
    # A CSV extract has no labels: its cleaned table carries none (outputs as before).
    csv = clean_tables(fixture_config(), write_extract(raw_extract(), tmp_path / "csv"))
    assert "variable_labels" not in csv.tables["patients"].attrs


def test_user_defined_missing_values_are_missing(tmp_path) -> None:
    folder = _write_stat(tmp_path / "sav", "sav")
    frame = read_table(folder / "patients.sav", "sav")
    expected = raw_extract()["patients"]["bmi"] == ""
    assert (frame["bmi"].isna().to_numpy() == expected.to_numpy()).all()
    assert expected.any()


def test_whole_number_identifiers_read_without_decimals(tmp_path) -> None:
    frame = pd.DataFrame({"id": [101.0, 102.0], "x": [1.5, 2.0]})
    pyreadstat.write_dta(frame, tmp_path / "t.dta")
    read = read_table(tmp_path / "t.dta", "dta")
    assert read["id"].astype(str).tolist() == ["101", "102"]
    assert read["x"].dtype == np.float64


def test_sas7bdat_reader_path(tmp_path) -> None:
    """pyreadstat cannot write sas7bdat: its reader is replaced by one returning what it would
    (a typed frame and its metadata), behind a file with SAS's first bytes."""
    from trial_analysis.ingest import readers

    path = tmp_path / "adsl.sas7bdat"
    path.write_bytes(readers._SAS7BDAT_MAGIC + bytes(100))
    frame = pd.DataFrame({"USUBJID": ["S-1", "S-2", ""], "SEXN": [1.0, 2.0, np.nan],
                          "TRTSDT": [dt.date(2022, 3, 30), None, dt.date(2022, 4, 1)]})
    meta = mock.Mock(variable_value_labels={"SEXN": {1.0: "F", 2.0: "M"}},
                     column_names_to_labels={"USUBJID": "Unique Subject Identifier",
                                             "SEXN": None, "TRTSDT": "Start date"})
    with mock.patch("pyreadstat.read_sas7bdat", return_value=(frame, meta)) as reader:
        read = read_table(path, "sas7bdat")
    reader.assert_called_once()
    assert read["USUBJID"].isna().tolist() == [False, False, True]
    assert read["SEXN"].astype(object).tolist()[:2] == ["F", "M"]
    assert str(read["TRTSDT"].dtype).startswith("datetime64")
    assert read.attrs["variable_labels"] == {"USUBJID": "Unique Subject Identifier",
                                            "TRTSDT": "Start date"}


def test_wrong_statistics_format_is_named(tmp_path) -> None:
    folder = _write_stat(tmp_path / "dta", "dta")
    with pytest.raises(DataError, match="Stata data file.*not an SPSS"):
        read_table(folder / "patients.dta", "sav")
    (tmp_path / "bad.sav").write_text("episode_id\nE1\n")
    with pytest.raises(DataError, match="not readable as an SPSS data file"):
        read_table(tmp_path / "bad.sav", "sav")


# ---- Excel date cells ----------------------------------------------------------------------

def _write_xlsx(folder: Path, date_format: str | None = None) -> Path:
    """The fixture extract as workbooks with real date cells (and real numbers); with
    ``date_format``, one birth date is a text cell in that format among the date cells."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in raw_extract().items():
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(list(frame.columns))
        for i, row in enumerate(_typed(frame).itertuples(index=False)):
            cells = []
            for column, value in zip(frame.columns, row, strict=True):
                if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                    cells.append(None)
                elif column in DATES:
                    cells.append(dt.datetime.combine(value, dt.time()))
                else:
                    cells.append(value)
            if date_format and name == "patients" and i == 2:
                cells[3] = dt.datetime.strptime(frame["birth_date"][i], "%Y-%m-%d").strftime(
                    date_format)
            sheet.append(cells)
        book.save(folder / f"{name}.xlsx")
    return folder


def test_excel_date_cells_are_dates(tmp_path, reference) -> None:
    folder = _write_xlsx(tmp_path / "xlsx")
    read = read_table(folder / "patients.xlsx", "xlsx")
    assert str(read["birth_date"].dtype).startswith("datetime64")
    result = clean_tables(_config_for("xlsx"), folder)
    _assert_same_tables(result, reference)


def test_excel_date_cells_among_text_dates(tmp_path, reference) -> None:
    """A column of date cells with one text date: the cells take the first configured format."""
    folder = _write_xlsx(tmp_path / "xlsx", date_format="%d/%m/%Y")
    config = _config_for("xlsx")
    config["input"]["date_formats"] = ["%d/%m/%Y"]
    result = clean_tables(config, folder)
    for name in TABLES:
        pd.testing.assert_frame_equal(result.tables[name], reference.tables[name])


# ---- DuckDB ----------------------------------------------------------------------------------

def _duckdb_file(folder: Path, path: Path, typed: bool) -> Path:
    con = duckdb.connect(str(path))
    for name in TABLES:
        csv = str(folder / f"{name}.csv")
        reader = f"read_csv('{csv}', all_varchar = true)" if not typed else f"read_csv('{csv}')"
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {reader}")
    con.close()
    return path


def _query_config(database: dict) -> dict:
    config = fixture_config()
    config["input"]["database"] = database
    keys = {"therapists": "therapist_id", "patients": "episode_id", "sessions": "session_id",
            "outcomes": "outcome_id"}
    for name, key in keys.items():
        config["input"]["tables"][name] = {
            "query": f"SELECT * FROM {name} ORDER BY {key}", "columns": {}}
    return config


@pytest.mark.parametrize("typed", [False, True], ids=["text", "typed"])
def test_duckdb_file_cleans_like_csv(tmp_path, reference, typed) -> None:
    folder = write_extract(raw_extract(), tmp_path / "csv")
    path = _duckdb_file(folder, tmp_path / "extract.duckdb", typed)
    config = _query_config({"engine": "duckdb", "path": str(path)})
    result = clean_tables(config, tmp_path / "unused")
    for name in TABLES:
        pd.testing.assert_frame_equal(result.tables[name], reference.tables[name])
    sources = result.ledger.attrs["sources"]
    assert [s["table"] for s in sources] == list(TABLES)
    assert sources[1]["rows"] == len(raw_extract()["patients"])
    assert sources[1]["query"] == "SELECT * FROM patients ORDER BY episode_id"


def test_duckdb_in_memory_reads_files_in_the_raw_folder(tmp_path, reference) -> None:
    folder = write_extract(raw_extract(), tmp_path / "raw", file_format="parquet")
    config = _query_config({"engine": "duckdb"})
    for name in TABLES:
        config["input"]["tables"][name]["query"] = f"SELECT * FROM read_parquet('{name}.parquet')"
    result = clean_tables(config, folder)
    for name in TABLES:
        pd.testing.assert_frame_equal(result.tables[name], reference.tables[name])


def test_duckdb_is_read_only_and_errors_are_plain(tmp_path) -> None:
    folder = write_extract(raw_extract(), tmp_path / "csv")
    path = _duckdb_file(folder, tmp_path / "extract.duckdb", typed=False)
    config = _query_config({"engine": "duckdb", "path": str(path)})
    config["input"]["tables"]["patients"]["query"] = "DELETE FROM patients"
    with pytest.raises(ConfigError, match="single SELECT statement"):
        clean_tables(config, folder)
    config["input"]["tables"]["patients"]["query"] = "SELECT * FROM patient"
    with pytest.raises(DataError, match="duckdb query for patients.*the query failed"):
        clean_tables(config, folder)
    config["input"]["tables"]["patients"]["query"] = "SELECT * FROM patients WHERE false"
    with pytest.raises(DataError, match="no rows"):
        clean_tables(config, folder)
    config["input"]["database"]["path"] = str(tmp_path / "absent.duckdb")
    with pytest.raises(DataError, match="DuckDB database file not found"):
        clean_tables(config, folder)
    assert duckdb.connect(str(path)).execute("SELECT count(*) FROM patients").fetchone()[0] == 12


def test_check_data_lists_query_problems_like_file_problems(tmp_path) -> None:
    folder = write_extract(raw_extract(), tmp_path / "csv")
    path = _duckdb_file(folder, tmp_path / "extract.duckdb", typed=False)
    config = _query_config({"engine": "duckdb", "path": str(path)})
    config["input"]["tables"]["patients"]["query"] = (
        "SELECT * EXCLUDE (sex), upper(sex) || 'x' AS sex FROM patients ORDER BY episode_id")
    config["input"]["tables"]["sessions"]["query"] = "SELECT * FROM session"
    result = check_data(config, folder)
    assert not result.passed
    by_file = {p.file for p in result.problems if p.severity == "error"}
    assert by_file == {"duckdb query for patients", "duckdb query for sessions"}
    raw = raw_extract()
    assert [f["rows"] for f in result.files] == [4, 12, None, len(raw["outcomes"])]
    assert "duckdb query for patients (patients, 12 rows)" in result.summary()


# ---- PostgreSQL ------------------------------------------------------------------------------

def test_postgres_missing_environment_variable_is_a_config_error(monkeypatch) -> None:
    monkeypatch.delenv("TRIAL_TEST_UNSET_DSN", raising=False)
    config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_TEST_UNSET_DSN"})
    with pytest.raises(ConfigError, match="TRIAL_TEST_UNSET_DSN .* is not set"):
        clean_tables(config, "unused")


def test_postgres_unreachable_server_is_a_data_error(monkeypatch) -> None:
    # Port 1 on the loopback refuses at once; the password must not reach the message.
    monkeypatch.setenv("TRIAL_TEST_DSN", "host=127.0.0.1 port=1 dbname=x user=u password=s3cret")
    config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_TEST_DSN"})
    with pytest.raises(DataError, match="cannot connect to the PostgreSQL server") as error:
        clean_tables(config, "unused")
    assert "s3cret" not in str(error.value)


def test_query_without_database_is_a_config_error() -> None:
    from trial_analysis.config import validate_config

    config = fixture_config()
    config["input"]["tables"]["patients"] = {"query": "SELECT 1"}
    with pytest.raises(ConfigError, match="a query needs input/database"):
        validate_config(config)
    config["input"]["tables"]["patients"] = {"query": "SELECT 1", "file": "p.csv"}
    with pytest.raises(ConfigError, match="either file .* or query"):
        validate_config(config)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TRIAL_PG_DSN"),
                    reason="no PostgreSQL server configured (TRIAL_PG_DSN; ci/postgres/setup.sh)")
def test_postgres_cleans_like_csv(tmp_path, reference) -> None:
    """The fixture tables loaded (by a separate, writable connection) as text and typed."""
    import psycopg

    dsn = os.environ["TRIAL_PG_DSN"]
    with psycopg.connect(dsn, autocommit=True) as connection:
        for schema, typed in (("fixture_text", False), ("fixture_typed", True)):
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.execute(f"CREATE SCHEMA {schema}")
            for name, frame in raw_extract().items():
                kinds = {c: ("date" if c in DATES else "double precision" if c in NUMBERS
                             else "text") if typed else "text" for c in frame.columns}
                columns = ", ".join(f'"{c}" {k}' for c, k in kinds.items())
                connection.execute(f"CREATE TABLE {schema}.{name} ({columns})")
                with connection.cursor().copy(f"COPY {schema}.{name} FROM STDIN") as copy:
                    for row in frame.itertuples(index=False):
                        copy.write_row([None if v == "" else v for v in row])
    for schema in ("fixture_text", "fixture_typed"):
        config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_PG_DSN"})
        for entry in config["input"]["tables"].values():
            entry["query"] = entry["query"].replace("FROM ", f"FROM {schema}.")
        result = clean_tables(config, tmp_path)
        for name in TABLES:
            pd.testing.assert_frame_equal(result.tables[name], reference.tables[name])
    config["input"]["tables"]["patients"]["query"] = "DELETE FROM fixture_text.patients"
    with pytest.raises(DataError, match="read-only transaction"):
        clean_tables(config, tmp_path)
    config["input"]["tables"]["patients"]["query"] = "SELECT * FROM fixture_text.patient"
    with pytest.raises(DataError, match="the query failed: .*does not exist"):
        clean_tables(config, tmp_path)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TRIAL_PG_DSN"),
                    reason="no PostgreSQL server configured (TRIAL_PG_DSN; ci/postgres/setup.sh)")
def test_postgres_column_types_survive_the_copy_path() -> None:
    """COPY's text typed back by the result columns: what the driver's own values would be."""
    from trial_analysis.ingest.sources import read_query

    config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_PG_DSN"})
    config["input"]["tables"]["patients"]["query"] = (
        "SELECT * FROM (VALUES (1, true, 2.5::numeric, DATE '2022-03-30', "
        "TIMESTAMPTZ '2022-03-30 10:00:00+02', 'NA', ''), "
        "(NULL, false, NULL, NULL, NULL, NULL, 'x, \"y\"')) "
        "AS t(i, b, n, d, z, s, e) ORDER BY i NULLS LAST")
    frame = read_query(config, "patients", ".")
    assert frame["i"].dtype == "Int64" and frame["i"].isna().tolist() == [False, True]
    assert frame["b"].tolist() == [True, False]
    assert frame["n"].iloc[0] == pytest.approx(2.5) and np.isnan(frame["n"].iloc[1])
    assert frame["d"].dtype == "datetime64[us]"
    assert frame["d"].iloc[0] == pd.Timestamp("2022-03-30")
    assert frame["z"].iloc[0] == pd.Timestamp("2022-03-30 08:00:00")  # UTC
    assert frame["s"].iloc[0] == "NA"  # text 'NA' is a value, not missing
    assert frame["e"].iloc[1] == 'x, "y"'
    # A value the copy path cannot convert goes to the driver, whose word stands (as before).
    config["input"]["tables"]["patients"]["query"] = "SELECT DATE 'infinity' AS d, 1 AS k"
    with pytest.raises(DataError, match="the query failed: date too large"):
        read_query(config, "patients", ".")


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TRIAL_PG_DSN"),
                    reason="no PostgreSQL server configured (TRIAL_PG_DSN; ci/postgres/setup.sh)")
def test_postgres_copy_loop_gives_psycopgs_bytes_and_exact_integers() -> None:
    """The libpq COPY loop against psycopg's own iteration; Arrow's integers against the driver."""
    import psycopg

    from trial_analysis.ingest.sources import _copy_out, read_query

    dsn = os.environ["TRIAL_PG_DSN"]
    # Quotes, commas and line breaks inside values, and enough rows to span many reads.
    query = ("SELECT g, -g * 3037000499::bigint AS big, md5(g::text) || E',\"\\n' AS s "
             "FROM generate_series(1, 30000) AS g")
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)") as copy:
            expected = b"".join(bytes(block) for block in copy)
        with cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"):
            assert bytes(_copy_out(connection)) == expected
        values = ("SELECT * FROM (VALUES ((-32768)::int2, (-2147483648)::int4, "
                  "(-9223372036854775808)::int8, 1), (NULL, 0, 9223372036854775807, 2), "
                  "(32767, NULL, NULL, 3)) AS t(a, b, c, k) ORDER BY k")
        cursor.execute(values)
        driver = cursor.fetchall()
    config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_PG_DSN"})
    config["input"]["tables"]["patients"]["query"] = values
    frame = read_query(config, "patients", ".")
    assert list(frame.dtypes) == ["Int64"] * 4
    assert [tuple(None if pd.isna(v) else int(v) for v in row)
            for row in frame.itertuples(index=False)] == driver


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("TRIAL_PG_DSN"),
                    reason="no PostgreSQL server configured (TRIAL_PG_DSN; ci/postgres/setup.sh)")
def test_postgres_tables_fetched_together_fail_in_reading_order(tmp_path) -> None:
    """The queries run side by side, but the first table's error is the one reported.

    Therapists fail late, in the middle of the COPY (pg_sleep is not evaluated by the
    column probe); patients fail at once. Reading one table after another would have named
    the therapists' error, and still does.
    """
    config = _query_config({"engine": "postgresql", "dsn_env": "TRIAL_PG_DSN"})
    config["input"]["tables"]["therapists"]["query"] = (
        "SELECT 1 / (length(pg_sleep(0.3)::text) * 0) AS y FROM generate_series(1, 3)")
    config["input"]["tables"]["patients"]["query"] = "SELECT * FROM no_such_table"
    with pytest.raises(DataError, match="the query failed: division by zero") as error:
        clean_tables(config, tmp_path)
    assert "query for therapists" in str(error.value)
