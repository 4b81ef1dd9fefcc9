"""Where each raw table comes from: a file under ``paths.raw`` or a query against a database.

A table entry of ``input.tables`` names either a ``file`` (read by
:func:`trial_analysis.ingest.readers.read_table` in ``input.format`` or the entry's own
``format``) or a ``query`` run against ``input.database``:

* **DuckDB** (``engine: duckdb``): ``path`` is a database file, opened read-only; without a
  path the queries run in an in-memory database and read files, e.g.
  ``SELECT * FROM read_parquet('patients.parquet')``; relative file names in a query are looked
  up in ``paths.raw`` (DuckDB's ``file_search_path``). Only ``SELECT`` statements are run.
* **PostgreSQL** (``engine: postgresql``), through psycopg 3: the connection settings come
  from the environment, never from the config: the libpq connection string in the environment
  variable named by ``dsn_env``, or, without ``dsn_env``, libpq's own ``PG*`` variables and
  service file (``PGSERVICE``, ``PGSERVICEFILE``, ``~/.pgpass``). Every query runs in a
  read-only transaction (``default_transaction_read_only`` and ``READ ONLY``).

An entry with a ``file`` and an ``adam`` block (outcomes only) is a CDISC ADaM BDS dataset:
:func:`trial_analysis.ingest.adam.select_bds` selects its analysed records (parameters,
analysis flag, visits) as the pipeline's long outcomes table.

Rows are numbered in the order the query returns them (``record_id`` 1, 2, ...), so a query
should end in ``ORDER BY`` its key for the ledger to be the same on every run. What is
recorded about a query (:func:`describe_sources`, kept in the cleaning ledger's Parquet
metadata and logged) is its engine, the database file or the *name* of the environment
variable, the query and its row count, never a connection string or password; of an ADaM
selection, the dataset, the selection in words and both row counts.

Problems are :class:`~trial_analysis.errors.ConfigError` (a missing environment variable, a
query without ``input.database``, a statement that is not a ``SELECT``) or
:class:`~trial_analysis.errors.DataError` (a server that cannot be reached, a failing query, no
rows), each one line without a traceback.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from trial_analysis.errors import ConfigError, DataError
from trial_analysis.ingest import adam
from trial_analysis.ingest.readers import dates_as_datetime64, read_table

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("duckdb", "postgresql")
CONNECT_TIMEOUT_S = 10
# libpq never prints a password, but a message may quote the connection string it was given.
_SECRET = re.compile(r"(password\s*=\s*)(\S+)|(://[^:/@\s]+:)([^@\s]+)(@)", re.IGNORECASE)


def _redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) + "***") if m.group(1) else
                       (m.group(3) + "***" + m.group(5)), str(text)).strip()


def table_entry(config: Mapping[str, Any], table: str) -> Mapping[str, Any]:
    """The ``input.tables`` entry of ``table`` (a file or a query)."""
    return config["input"]["tables"][table]


def is_query(config: Mapping[str, Any], table: str) -> bool:
    """Whether ``table`` is read by a database query rather than from a file."""
    entry = table_entry(config, table)
    return entry is not None and "query" in entry


def source_name(config: Mapping[str, Any], raw_dir: str | Path, table: str) -> str:
    """How messages name the table's source: the file's path, or ``<engine> query <table>``."""
    entry = table_entry(config, table)
    if "query" in entry:
        database = config["input"].get("database") or {}
        return f"{database.get('engine', 'database')} query for {table}"
    return str(Path(raw_dir) / entry["file"])


def read_source(raw_dir: str | Path, config: Mapping[str, Any],
                table: str) -> tuple[str, pd.DataFrame]:
    """Read one raw table from its file or query; return (source name, frame).

    Checks against ``input.tables.<table>``: the file (see
    :func:`~trial_analysis.ingest.readers.read_table`) or the query's database connection,
    statement kind and result (at least one row).
    """
    entry = table_entry(config, table)
    input_cfg = config["input"]
    name = source_name(config, raw_dir, table)
    if "query" in entry:
        return name, _logged(config, table, read_query(config, table, raw_dir))
    frame = read_table(
        name,
        entry.get("format") or input_cfg.get("format", "csv"),
        encoding=input_cfg.get("encoding", "utf-8"),
        delimiter=input_cfg.get("delimiter"),
        date_formats=input_cfg.get("date_formats") or ["%Y-%m-%d"],
        keep_codes=entry.get("codes") or (),
    )
    if "adam" in entry:
        # A CDISC ADaM BDS dataset: its analysed records as the long outcomes table.
        labels = frame.attrs.get("variable_labels", {})
        frame, selection = adam.select_bds(frame, adam.check_spec(config, table),
                                           config["timepoints"]["baseline"], name)
        frame.attrs["selection"] = selection
        frame.attrs["variable_labels"] = labels
    return name, frame


def _logged(config: Mapping[str, Any], table: str, frame: pd.DataFrame) -> pd.DataFrame:
    log.info("read %s: %s -> %d rows", table, describe_query(config, table), len(frame))
    return frame


class SourceReader:
    """Reads a study's raw tables in the caller's order, its PostgreSQL queries all at once.

    Each PostgreSQL query table is fetched from the start on its own connection in a worker
    thread (read-only, as :func:`read_query`; one connection per table as before), so the
    server runs the queries side by side and the transfers overlap the cleaning of the
    tables already read: the threads mostly wait on sockets or parse in Arrow, outside the
    GIL. :meth:`read` returns what :func:`read_source` returns and raises its errors, when
    the table is read, so the output, the log and the first error are those of reading the
    tables one after another. Files and DuckDB queries (one embedded database, already
    parallel) are read on demand. Use as a context manager: leaving it drops the fetches not
    yet read (a run stopped by an error does not wait for them).
    """

    def __init__(self, raw_dir: str | Path, config: Mapping[str, Any],
                 tables: Iterable[str]):
        self._raw_dir, self._config = raw_dir, config
        self._pending: dict[str, Future[pd.DataFrame]] = {}
        database = config["input"].get("database") or {}
        queries = [t for t in tables if database.get("engine") == "postgresql"
                   and table_entry(config, t) is not None and is_query(config, t)]
        self._pool = None
        if queries:
            import psycopg  # noqa: F401  imported once here, not by the threads at once

            self._pool = ThreadPoolExecutor(max_workers=len(queries),
                                            thread_name_prefix="postgres-read")
            for table in queries:
                self._pending[table] = self._pool.submit(read_query, config, table, raw_dir)

    def read(self, table: str) -> tuple[str, pd.DataFrame]:
        """(source name, frame) of ``table``, as :func:`read_source` gives them."""
        future = self._pending.pop(table, None)
        if future is None:
            return read_source(self._raw_dir, self._config, table)
        name = source_name(self._config, self._raw_dir, table)
        return name, _logged(self._config, table, future.result())

    def close(self) -> None:
        """Drop the fetches not read; their threads end with their query."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _database(config: Mapping[str, Any], table: str) -> Mapping[str, Any]:
    database = config["input"].get("database")
    if not database:
        raise ConfigError("input.database", [
            f"input/tables/{table}: a query needs input.database (engine: duckdb or "
            "postgresql) to run against"])
    return database


def describe_query(config: Mapping[str, Any], table: str) -> str:
    """The query as the log and the ledger record it: engine, database, query; no secrets."""
    database = _database(config, table)
    query = " ".join(str(table_entry(config, table)["query"]).split())
    if database["engine"] == "duckdb":
        where = database.get("path") or "in-memory"
    else:
        where = f"${database['dsn_env']}" if database.get("dsn_env") else "PG* environment"
    return f"{database['engine']} ({where}): {query}"


def describe_sources(config: Mapping[str, Any], rows: Mapping[str, int],
                     selections: Mapping[str, Mapping[str, Any]] | None = None,
                     ) -> list[dict[str, Any]]:
    """One record per table read by a query or selected from an ADaM dataset.

    A query's record: table, engine, database, query, rows. An ADaM BDS dataset's: table,
    engine ``adam``, database (the file), query (the selection in words), rows and
    ``rows_in_source`` (``selections`` gives each such table's record from
    :func:`~trial_analysis.ingest.adam.select_bds`). ``rows`` gives each table's raw row count
    (the ledger's records). Empty when every table is a plain file, so a study of files writes
    the same ledger as before.
    """
    records = []
    for table, entry in config["input"]["tables"].items():
        if entry is not None and "adam" in entry and table in (selections or {}):
            selection = selections[table]
            records.append({
                "table": table, "engine": "adam", "database": entry["file"],
                "query": selection["selection"], "rows": int(rows.get(table, 0)),
                "rows_in_source": int(selection["rows_in_source"]),
            })
            continue
        if entry is None or "query" not in entry:
            continue
        database = config["input"]["database"]
        records.append({
            "table": table,
            "engine": database["engine"],
            "database": database.get("path") or (
                f"${database['dsn_env']}" if database.get("dsn_env") else
                ("in-memory" if database["engine"] == "duckdb" else "PG* environment")),
            "query": str(entry["query"]).strip(),
            "rows": int(rows.get(table, 0)),
        })
    return records


def read_query(config: Mapping[str, Any], table: str, raw_dir: str | Path) -> pd.DataFrame:
    """Run the table's query read-only; dates as ``datetime64``; at least one row."""
    database = _database(config, table)
    query = str(table_entry(config, table)["query"]).strip().rstrip(";")
    name = source_name(config, raw_dir, table)
    if database["engine"] == "duckdb":
        frame = _duckdb_query(database, query, name, Path(raw_dir))
    else:
        frame = _postgres_query(database, query, name)
    frame = dates_as_datetime64(frame)
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(name, "the query returned no rows",
                        hint=f"Check input.tables.{table}.query")
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise DataError(name, "column names must be unique", column=repeated[0],
                        hint="Give the repeated columns their own names (AS ...) in the query")
    return frame.reset_index(drop=True)


def _arrow_to_frame(table: Any) -> pd.DataFrame:
    """A query result (Arrow) as pandas: text as ``str``, dates as ``datetime64[us]``.

    Through Arrow rather than DuckDB's ``.df()``: at a million rows its text columns convert
    four to six times faster. Decimals become floats (as ``.df()`` gives them); time zones are
    dropped after conversion to UTC, as for every other reader.
    """
    import pyarrow as pa

    fields = []
    for field in table.schema:
        kind = field.type
        if pa.types.is_decimal(kind):
            kind = pa.float64()
        elif pa.types.is_timestamp(kind) and kind.tz is not None:
            kind = pa.timestamp("us")  # an instant, as UTC wall time
        fields.append(pa.field(field.name, kind))
    frame = table.cast(pa.schema(fields)).to_pandas(date_as_object=False)
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype("datetime64[us]")
    return frame


def _duckdb_query(database: Mapping[str, Any], query: str, name: str,
                  raw_dir: Path) -> pd.DataFrame:
    import duckdb  # only studies that query DuckDB need it

    path = database.get("path")
    if path and not Path(path).is_file():
        raise DataError(str(path), "DuckDB database file not found (input.database.path)")
    try:
        con = duckdb.connect(str(path), read_only=True) if path else duckdb.connect()
    except duckdb.Error as exc:
        raise DataError(str(path), f"not a readable DuckDB database ({_redact(exc)})") from None
    try:
        statements = con.extract_statements(query)
        kinds = {s.type for s in statements}
        if len(statements) != 1 or kinds != {duckdb.StatementType.SELECT}:
            raise ConfigError(name, [
                "the query must be a single SELECT statement (found "
                + ", ".join(sorted(k.name for k in kinds)) + ")"])
        con.execute("SET file_search_path = ?", [str(raw_dir)])
        con.execute("SET lock_configuration = true")  # the query cannot change settings
        return _arrow_to_frame(con.sql(query).to_arrow_table())
    except duckdb.Error as exc:
        raise DataError(name, f"the query failed: {_redact(exc)}",
                        hint="Check the table and column names in the query") from None
    finally:
        con.close()


# PostgreSQL type OIDs (pg_type) of the columns COPY's text is converted back to.
_PG_BOOL = frozenset({16})
_PG_INTEGER = frozenset({20, 21, 23})
_PG_FLOAT = frozenset({700, 701, 1700})
_PG_DATE = frozenset({1082, 1114})
_PG_DATETIME_TZ = frozenset({1184})


def _copy_out(connection: Any) -> bytearray:
    """Every row of the ``COPY ... TO STDOUT`` just started on ``connection``, as one buffer.

    psycopg's ``Copy.read`` runs a generator and a wait in Python for each row, and the
    server sends one message per row: at a million patients (5.7 million sessions) that
    loop took a third longer than ``psql`` for the same COPY. Here libpq's
    ``PQgetCopyData`` (psycopg's ``pq`` wrapper, non-blocking) hands over the rows already
    received one call each, and the socket is waited on only when its buffer is empty; the
    bytes are the same (checked against psycopg's iteration in
    tests/ingest/test_sources.py). Ends by reading the command's final result, which raises
    the server's error (a failure mid-query) as psycopg would.
    """
    import selectors

    from psycopg import errors, pq

    pgconn = connection.pgconn
    data = bytearray()
    get_copy_data = pgconn.get_copy_data
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)
        while True:
            nbytes, row = get_copy_data(1)  # 1: return 0 rather than wait
            if nbytes > 0:
                data += row
            elif nbytes == 0:
                selector.select()
                pgconn.consume_input()  # raises OperationalError on a lost connection
            else:
                break  # -1: the copy has ended; -2: libpq failed (its message below)
    encoding = connection.info.encoding
    failure = None
    while (result := pgconn.get_result()) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK and failure is None:
            failure = errors.error_from_result(result, encoding=encoding)
    if failure is None and nbytes == -2:
        failure = errors.OperationalError(pgconn.error_message.decode(encoding, "replace"))
    if failure is not None:
        raise failure
    return data


def _integers(series: pd.Series) -> pd.Series:
    """PostgreSQL's integer text as ``Int64``, cast by Arrow.

    ``pd.to_numeric`` took 1.8 s for 5.7 million row numbers, Arrow's cast 0.04 s. The
    server writes integers only as optional minus and digits, which both parse exactly (the
    same values, checked in tests/ingest/test_sources.py); text that is not an integer
    raises ``ArrowInvalid``, a ``ValueError``, as ``pd.to_numeric`` raised one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pc.cast(pa.array(series.array), pa.int64())
    return pd.Series(values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get),
                     index=series.index, name=series.name)


def _postgres_copy(connection: Any, query: str) -> pd.DataFrame | None:
    """The query's rows through ``COPY (query) TO STDOUT`` (CSV), typed by the result columns.

    Fetching millions of rows as Python tuples is several times slower than reading them as
    CSV text with pandas' parser; the columns' types (from the query run with ``LIMIT 0``)
    turn the text back into what the driver gives: integers (nullable), floats, booleans,
    dates and timestamps (``datetime64``, time zones in UTC), the rest text. None when the
    statement is not a SELECT or the text does not convert: then the plain fetch runs, and
    names the problem.
    """
    import io

    import psycopg

    with connection.cursor() as cursor:
        try:
            # The text COPY writes: ISO dates, UTC times, UTF-8, whatever the server's defaults.
            for setting in ("DateStyle = ISO", "TimeZone = 'UTC'", "client_encoding = 'UTF8'"):
                cursor.execute(f"SET LOCAL {setting}")
            cursor.execute(f"SELECT * FROM ({query}) AS source LIMIT 0")
        except psycopg.errors.SyntaxError:
            connection.rollback()  # not a SELECT (or not valid SQL): the plain path says so
            return None
        columns = [(d.name, d.type_code) for d in cursor.description or []]
        names = [c for c, _ in columns]
        if not columns or len(set(names)) != len(names):
            connection.rollback()
            return None
        with cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"):
            text = _copy_out(connection)
    connection.rollback()  # end the read-only transaction
    if not text:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in names})
    # Text as the server wrote it: only an empty field (SQL NULL) is missing.
    frame = pd.read_csv(io.BytesIO(text), header=None, names=names, dtype=str,
                        keep_default_na=False, na_values=[""], encoding="utf-8",
                        engine="pyarrow")
    del text  # the parsed frame replaces it: do not hold both for the conversions
    try:
        for name, oid in columns:
            series = frame[name]
            if oid in _PG_INTEGER:
                frame[name] = _integers(series)
            elif oid in _PG_FLOAT:
                frame[name] = pd.to_numeric(series).astype(float)
            elif oid in _PG_BOOL:
                frame[name] = series.map({"t": True, "f": False}).astype(object)
            elif oid in _PG_DATE:
                frame[name] = pd.to_datetime(series, format="ISO8601").astype("datetime64[us]")
            elif oid in _PG_DATETIME_TZ:
                frame[name] = pd.to_datetime(series, format="ISO8601", utc=True).dt.tz_localize(
                    None).astype("datetime64[us]")
    except (ValueError, TypeError, OverflowError):
        return None  # e.g. 'infinity' or a BC date: the driver's values instead
    return frame


def _postgres_query(database: Mapping[str, Any], query: str, name: str) -> pd.DataFrame:
    import psycopg  # only studies that query PostgreSQL need it

    variable = database.get("dsn_env")
    if variable and variable not in os.environ:
        raise ConfigError("input.database.dsn_env", [
            f"the environment variable {variable} (input.database.dsn_env) is not set: export "
            "it with the libpq connection string (e.g. 'host=... dbname=... user=...'; keep "
            "the password in ~/.pgpass or PGPASSWORD, not in the config)"])
    conninfo = os.environ[variable] if variable else ""
    try:
        connection = psycopg.connect(
            conninfo, connect_timeout=CONNECT_TIMEOUT_S,
            options="-c default_transaction_read_only=on")
    except psycopg.Error as exc:
        raise DataError(name, "cannot connect to the PostgreSQL server: " + _redact(exc),
                        hint=("Check the connection string in $" + variable) if variable else
                        "Check PGHOST, PGPORT, PGDATABASE, PGUSER or PGSERVICE") from None
    try:
        connection.read_only = True  # every transaction BEGIN READ ONLY
        frame = _postgres_copy(connection, query)
        if frame is not None:
            return frame
        with connection.cursor() as cursor:
            cursor.execute(query)
            if cursor.description is None:
                raise ConfigError(name, ["the query must return rows (a SELECT statement)"])
            columns = [d.name for d in cursor.description]
            rows = cursor.fetchall()
    except psycopg.Error as exc:
        raise DataError(name, "the query failed: " + _redact(str(exc).splitlines()[0]),
                        hint="Check the table and column names in the query") from None
    finally:
        connection.close()
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()})
    return frame
