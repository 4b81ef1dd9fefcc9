"""Reading raw tables (CSV, TSV, Parquet, Excel, SAS, Stata, SPSS, SQL) with plain-words errors.

Every way a file can be unreadable becomes one :class:`~trial_analysis.errors.DataError` naming
the file and what is wrong with it: missing, empty (0 bytes), header only, not valid text in the
configured encoding (with the data row of the first bad byte), a different format than
configured (an Excel workbook or Parquet file where CSV is expected is recognised by its first
bytes), a different delimiter, ragged rows, repeated column names.

Text formats are read with every column as text (``str`` dtype, empty cells missing), so that
the cleaning step, not the reader, decides what a value means and can report the raw value.
No other spelling is read as missing: ``NA``, ``NULL`` or ``None`` may be an identifier.
:func:`mark_missing` then applies, per column, what the config and the column's kind say is
missing. Parquet keeps its own types; a byte-order mark in a UTF-8 file is ignored. Two columns
whose names are the same once case and spaces are ignored (``Patient_ID``, ``PATIENT_ID``) are
an error naming both.

Statistical packages' files (``sas7bdat``, ``xpt``, ``dta``, ``sav``/``zsav``) are read with
pyreadstat: a column with value labels becomes a category of its labels unless the table's
``codes`` list names it (then the stored codes are kept); user-defined missing values (SPSS
missing values and ranges, SAS and Stata special missing ``.A``-``.Z``) are read as missing;
whole-number columns become integers, so an identifier stored as 101.0 reads as ``101``. The
file's variable labels and value labels travel in ``frame.attrs`` (``variable_labels``,
``value_labels``).

Dates: a column every value of which is a date or timestamp (an Excel date cell, a SAS, Stata or
SPSS date, a DATE column of a database) is returned as ``datetime64``, which the cleaning step
takes as dates whatever ``input.date_formats`` says. In an Excel column mixing date cells and
text, the date cells are written in the first configured date format so that they parse.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trial_analysis.errors import DataError

# The spellings pandas reads as missing by default. Text formats are read without them, so
# that an identifier spelled "NA" stays an identifier; other columns of a text file still take
# them as missing (see mark_missing), as they always did.
DEFAULT_MISSING_SPELLINGS: frozenset[str] = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
# Formats read as text, where missing is a spelling rather than a stored null.
TEXT_FORMATS: tuple[str, ...] = ("csv", "tsv", "xlsx")

# Files of statistical packages, read through pyreadstat.
STAT_FORMATS: tuple[str, ...] = ("sas7bdat", "xpt", "dta", "sav", "zsav")
FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "xlsx", *STAT_FORMATS)

_SAS7BDAT_MAGIC = bytes(12) + bytes.fromhex("c2ea8160b31411cfbd92080009c7318c181f1011")
# First bytes of formats a user may save by mistake under another name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "an Excel workbook (or another zip archive)"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel workbook (.xls)"),
    (b"$FL2", "an SPSS data file (.sav)"),
    (b"$FL3", "a compressed SPSS data file (.zsav)"),
    (b"<stata_dta>", "a Stata data file (.dta)"),
    (b"HEADER RECORD*******LIBRARY", "a SAS transport file (.xpt)"),
    (b"HEADER RECORD*******LIBV8", "a SAS transport file (.xpt)"),
    (_SAS7BDAT_MAGIC, "a SAS data set (.sas7bdat)"),
)
_EXPECTED = {
    "csv": "comma-separated text (CSV)",
    "tsv": "tab-separated text (TSV)",
    "parquet": "a Parquet file",
    "xlsx": "an Excel workbook",
    "sas7bdat": "a SAS data set (.sas7bdat)",
    "xpt": "a SAS transport file (.xpt)",
    "dta": "a Stata data file (.dta)",
    "sav": "an SPSS data file (.sav)",
    "zsav": "a compressed SPSS data file (.zsav)",
}


def _sniff(path: Path) -> str | None:
    with path.open("rb") as handle:
        head = handle.read(32)
    for magic, description in _MAGIC:
        if head.startswith(magic):
            return description
    return None


def _python_encoding(encoding: str) -> str:
    # utf-8-sig reads files with and without a byte-order mark (spreadsheets often add one).
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _first_undecodable(path: Path, encoding: str) -> tuple[int, int, bytes]:
    """Return (data row, byte offset, bad bytes) of the first byte that does not decode."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n")  # 0 = header, so this is the 1-based data row
        return line, exc.start, data[exc.start : exc.end]
    return 0, 0, b""


def _check_header(path: Path, encoding: str, delimiter: str, file_format: str) -> list[str]:
    """Read and check the header line; return the column names."""
    with path.open("r", encoding=encoding, newline="") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataError(str(path), "the first line (the header) is empty")
    header = next(csv.reader([first], delimiter=delimiter))
    if len(header) == 1:
        others = {";": "semicolons", "\t": "tabs", ",": "commas", "|": "vertical bars"}
        for sep, name in others.items():
            if sep != delimiter and first.count(sep) >= 1:
                raise DataError(
                    str(path),
                    f"the header has no '{delimiter}' delimiters but {first.count(sep)} {name}: "
                    f"the file is not {_EXPECTED[file_format]}",
                    hint=f"Save it with '{delimiter}' between columns, or set input.delimiter to "
                    f"'{sep}' in the config",
                )
    names = [h.strip() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(
            str(path),
            "column names must be unique",
            column=repeated[0],
            hint=f"Repeated in the header: {', '.join(repeated)}",
        )
    return names


def _utf16_order(head: bytes) -> str | None:
    """``utf-16`` (a byte-order mark), ``utf-16-le``/``-be`` (no mark, text whose every other
    byte is zero, as ASCII in UTF-16 is), or None when the bytes do not look like UTF-16."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    pairs = head[: len(head) // 2 * 2]
    if len(pairs) < 4:
        return None
    even, odd = pairs[0::2], pairs[1::2]
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def _text_encoding(path: Path, encoding: str) -> str:
    """The codec to read ``path`` with: a configured UTF-16 takes its byte order from the
    file (a mark, or none); another encoding for a file that is UTF-16 is refused with a hint."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    found = _utf16_order(head)
    configured = codecs.lookup(encoding).name if _known(encoding) else encoding
    if configured.startswith("utf-16"):
        if found is None:
            raise DataError(str(path), f"not {encoding} text (input.encoding): the file does "
                            "not look like UTF-16", hint="Set input.encoding to the file's "
                            "encoding (e.g. utf-8)")
        return found if configured == "utf-16" else configured
    if found is not None:
        order = {"utf-16": "with a byte-order mark", "utf-16-le": "little-endian, no "
                 "byte-order mark", "utf-16-be": "big-endian, no byte-order mark"}[found]
        raise DataError(str(path), f"the file is UTF-16 text ({order}), not {encoding}",
                        hint=f"Set input.encoding to {found}, or save the file as UTF-8")
    return _python_encoding(encoding)


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return True


def _read_text(path: Path, encoding: str, delimiter: str, file_format: str) -> pd.DataFrame:
    if not _known(encoding):
        raise DataError(str(path), f"unknown text encoding '{encoding}' (input.encoding)")
    py_encoding = _text_encoding(path, encoding)
    # pandas reads UTF-16 in chunks and fails on the byte-order mark: decode it here.
    source: Any = path
    if py_encoding.startswith("utf-16"):
        try:
            source = io.StringIO(path.read_bytes().decode(py_encoding))
        except UnicodeDecodeError as exc:
            raise DataError(str(path), f"not valid {py_encoding} text: {exc.reason} at byte "
                            f"{exc.start}", hint="Save the file as UTF-8") from None
    try:
        names = _check_header(path, py_encoding, delimiter, file_format)
        frame = pd.read_csv(
            source,
            sep=delimiter,
            dtype=str,
            # only an empty cell is missing here; mark_missing decides the rest per column
            keep_default_na=False,
            na_values=[""],
            encoding=None if isinstance(source, io.StringIO) else py_encoding,
            skipinitialspace=False,
            skip_blank_lines=True,
        )
    except UnicodeDecodeError:
        row, offset, bad = _first_undecodable(path, py_encoding)
        where = "the header" if row == 0 else None
        raise DataError(
            str(path),
            f"not valid {encoding} text: byte {bad!r} at offset {offset}"
            + (f" in {where}" if where else ""),
            rows=[row] if row else None,
            hint="Save the file as UTF-8, or set input.encoding to the file's encoding "
            "(e.g. latin-1)",
        ) from None
    except LookupError:
        raise DataError(str(path), f"unknown text encoding '{encoding}' (input.encoding)") from None
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, seen = (int(g) for g in match.groups())
            raise DataError(
                str(path),
                f"row has {seen} fields but the header has {expected}",
                rows=[line - 1],
                hint="Check for an unquoted delimiter inside a value",
            ) from None
        raise DataError(str(path), f"not readable as {_EXPECTED[file_format]}: {exc}") from None
    except pd.errors.EmptyDataError:
        raise DataError(str(path), "the file holds no columns (empty)") from None
    frame.columns = names
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise DataError(str(path), f"not a readable Parquet file ({exc})") from None
    # Dates as datetime64, not Python date objects, so they take the same path as text dates.
    return table.to_pandas(date_as_object=False)


_DATE_KINDS = frozenset({"date", "datetime", "datetime64"})


def _is_date(value: object) -> bool:
    return isinstance(value, dt.date | pd.Timestamp | np.datetime64)


def dates_as_datetime64(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding only dates or timestamps (and missing) become ``datetime64[us]``.

    Checked against :func:`pandas.api.types.infer_dtype` (``date``, ``datetime``): columns of
    Python ``date``/``datetime`` objects, as Excel, pyreadstat and database drivers give them.
    Time zones are dropped after conversion to UTC, as the Parquet path does.
    """
    for column in frame.columns:
        series = frame[column]
        if series.dtype != object or series.notna().sum() == 0:
            continue
        if pd.api.types.infer_dtype(series, skipna=True) in _DATE_KINDS:
            converted = pd.to_datetime(series, utc=any(
                getattr(v, "tzinfo", None) is not None for v in series.dropna().iloc[:1]))
            if converted.dt.tz is not None:
                converted = converted.dt.tz_localize(None)
            frame[column] = converted.astype("datetime64[us]")
    return frame


def _cell_text(value: object, date_format: str) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if _is_date(value):
        stamp = pd.Timestamp(value)
        # A date cell with a time of day keeps it; a plain date takes the configured format.
        if stamp != stamp.normalize():
            return stamp.strftime("%Y-%m-%d %H:%M:%S")
        return stamp.strftime(date_format)
    return str(value)


def _read_excel(path: Path, date_formats: Sequence[str] = ("%Y-%m-%d",)) -> pd.DataFrame:
    try:
        frame = pd.read_excel(path, sheet_name=0, dtype=object, engine="openpyxl",
                              keep_default_na=False, na_values=[""])
    except Exception as exc:  # openpyxl raises many unrelated types for a bad workbook
        raise DataError(
            str(path), f"not a readable Excel workbook ({type(exc).__name__})"
        ) from None
    frame = dates_as_datetime64(frame)
    first_format = (list(date_formats) or ["%Y-%m-%d"])[0]
    for column in frame.columns:
        series = frame[column]
        if series.dtype != object:
            continue  # a date column (datetime64), or an all-empty one
        # Text, as read_excel(dtype=str) gives it, except that date cells among text are
        # written in the first configured date format rather than as '2022-03-30 00:00:00'.
        text = [_cell_text(v, first_format) for v in series]
        frame[column] = pd.Series(text, index=series.index, dtype="str")
    return frame


def _whole_numbers_as_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns holding whole numbers only become nullable integers (SAS stores doubles)."""
    for column in frame.columns:
        series = frame[column]
        if series.dtype.kind != "f":
            continue
        values = series.to_numpy()
        finite = values[~np.isnan(values)]
        if len(finite) and np.all(finite == np.round(finite)) and np.all(np.abs(finite) < 2**53):
            frame[column] = series.astype("Int64")
    return frame


def _code_text(code: object) -> str:
    if isinstance(code, float) and code.is_integer():
        return str(int(code))
    return str(code)


def _apply_value_labels(frame: pd.DataFrame, value_labels: Mapping[str, Mapping[Any, str]],
                        keep_codes: Sequence[str]) -> pd.DataFrame:
    """Labelled columns as categories of their labels, except those in ``keep_codes``.

    A stored value without a label keeps its code as text (``9`` -> ``'9'``); the categories
    are the labels in code order, then any unlabelled codes.
    """
    keep = {str(c).casefold() for c in keep_codes}
    for column, mapping in value_labels.items():
        if column not in frame.columns or str(column).casefold() in keep or not mapping:
            continue
        series = frame[column]
        codes, uniques = pd.factorize(series)
        labels = [mapping.get(u, _code_text(u)) for u in uniques]
        ordered = [mapping[k] for k in sorted(mapping, key=lambda k: (isinstance(k, str), k))]
        categories = list(dict.fromkeys([*ordered, *labels]))
        values = np.array([*labels, None], dtype=object)[codes]  # code -1 (missing): None
        frame[column] = pd.Categorical(values, categories=categories)
    return frame


def _read_stat(path: Path, file_format: str, keep_codes: Sequence[str] = ()) -> pd.DataFrame:
    import pyreadstat  # only studies with such files need it at import time

    reader = {
        "sas7bdat": pyreadstat.read_sas7bdat,
        "xpt": pyreadstat.read_xport,
        "dta": pyreadstat.read_dta,
        "sav": pyreadstat.read_sav,
        "zsav": pyreadstat.read_sav,
    }[file_format]
    try:
        # user_missing=False (pyreadstat's default): user-defined missing values are missing.
        frame, meta = reader(str(path), dates_as_pandas_datetime=True)
    except Exception as exc:  # pyreadstat.ReadstatError / PyreadstatError, and OSError
        raise DataError(
            str(path), f"not readable as {_EXPECTED[file_format]} ({exc})",
            hint="Check input.format against the file's type",
        ) from None
    value_labels = {str(k): dict(v) for k, v in (meta.variable_value_labels or {}).items()}
    frame = dates_as_datetime64(frame)
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            # These packages have no null text: a blank value is the missing value.
            frame[column] = frame[column].where(frame[column].astype("str").str.strip() != "")
    frame = _whole_numbers_as_integers(frame)
    frame = _apply_value_labels(frame, value_labels, keep_codes)
    frame.attrs["variable_labels"] = {
        str(k): str(v) for k, v in (meta.column_names_to_labels or {}).items() if v
    }
    frame.attrs["value_labels"] = value_labels
    return frame


def read_table(
    path: str | Path,
    file_format: str = "csv",
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    date_formats: Sequence[str] = ("%Y-%m-%d",),
    keep_codes: Sequence[str] = (),
) -> pd.DataFrame:
    """Read one raw table; raise :class:`DataError` if the file cannot serve as that table.

    Parameters
    ----------
    path : str or Path
        The file.
    file_format : {"csv", "tsv", "parquet", "xlsx", "sas7bdat", "xpt", "dta", "sav", "zsav"}
        The configured format (``input.format``, or the table's own ``format``).
    encoding : str
        Text encoding of CSV/TSV files (``input.encoding``); a UTF-8 byte-order mark is ignored.
    delimiter : str, optional
        Column delimiter of text files; default ``,`` for CSV and a tab for TSV.
    date_formats : sequence of str
        ``input.date_formats``: an Excel date cell in a column of text is written in the first.
    keep_codes : sequence of str
        Columns of a SAS/Stata/SPSS file read as their stored codes, not their value labels.

    Returns
    -------
    pandas.DataFrame
        All columns as text for CSV/TSV/Excel (empty cells missing), except that columns of
        dates only (Excel date cells) are ``datetime64``; Parquet types as stored; SAS, Stata
        and SPSS files typed (labelled columns as categories, whole numbers as integers, the
        labels in ``frame.attrs``). Column names are stripped of surrounding whitespace. At
        least one data row.

    Raises
    ------
    DataError
        File missing, empty, header only, undecodable, of another format, or malformed.
    """
    path = Path(path)
    if file_format not in FORMATS:
        raise DataError(str(path), f"unknown input format '{file_format}' (one of {FORMATS})")
    if not path.exists():
        siblings = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
        hint = f"The folder holds: {', '.join(siblings[:10])}" if siblings else (
            "The folder does not exist or is empty"
        )
        raise DataError(str(path), "file not found", hint=hint)
    if not path.is_file():
        raise DataError(str(path), "not a file")
    if path.stat().st_size == 0:
        raise DataError(str(path), "the file is empty (0 bytes)")
    found = _sniff(path)
    expected = _EXPECTED[file_format]
    if file_format in ("csv", "tsv") and found is not None:
        raise DataError(
            str(path),
            f"the file is {found}, not {expected}",
            hint=f"Export it as {expected}, or set input.format to match the file",
        )
    actual = f"the file is {found or 'text or another format'}, not {expected}"
    if file_format == "parquet" and found != "a Parquet file":
        raise DataError(str(path), actual)
    if file_format == "xlsx" and (found is None or "Excel" not in found):
        raise DataError(str(path), actual)
    # pyreadstat reads .sav and .zsav alike; other first bytes name the file's real type.
    spss = found is not None and "SPSS" in found and file_format in ("sav", "zsav")
    if file_format in STAT_FORMATS and found is not None and found != expected and not spss:
        raise DataError(str(path), actual,
                        hint="Set input.format (or the table's format) to match the file")

    if file_format == "parquet":
        frame = _read_parquet(path)
    elif file_format == "xlsx":
        frame = _read_excel(path, date_formats)
    elif file_format in STAT_FORMATS:
        frame = _read_stat(path, file_format, keep_codes)
    else:
        sep = delimiter or ("\t" if file_format == "tsv" else ",")
        frame = _read_text(path, encoding, sep, file_format)
    frame.columns = [str(c).strip() for c in frame.columns]
    _refuse_ambiguous_names(str(path), list(frame.columns))
    if len(frame) == 0:
        raise DataError(str(path), "the file has a header but no data rows")
    return frame.reset_index(drop=True)



def _folded(name: str) -> str:
    return re.sub(r"\s+", "", name).casefold()


def _refuse_ambiguous_names(file: str, names: Sequence[str]) -> None:
    """Two column names equal once case and spaces are ignored: which one is meant is a guess
    (the cleaning step finds columns ignoring case), so it is an error naming both."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(_folded(name), name)
        if first != name:
            raise DataError(
                file,
                f"columns '{first}' and '{name}' have the same name once case and spaces are "
                "ignored, so which one is meant is ambiguous",
                column=name,
                hint="Rename or remove one of them",
            )


def mark_missing(frame: pd.DataFrame, id_columns: Sequence[str], file_format: str | None,
                 missing_values: Sequence[str] = ()) -> pd.DataFrame:
    """``frame`` with the values that mean "missing" set missing, column by column.

    ``missing_values`` (``input.missing_values``) are missing in every column, identifiers
    included; they are compared with surrounding whitespace ignored. In a text format
    (:data:`TEXT_FORMATS`) the columns other than ``id_columns`` also take pandas' default
    spellings (:data:`DEFAULT_MISSING_SPELLINGS`: ``NA``, ``NULL``, ``None``, ``nan`` ...) as
    missing; an identifier column never does, so ``NA`` there is an identifier.
    """
    configured = {str(v).strip() for v in missing_values}
    text_format = file_format in TEXT_FORMATS
    out = frame
    for column in frame.columns:
        series = frame[column]
        if not (series.dtype == object or pd.api.types.is_string_dtype(series.dtype)):
            continue
        spellings = set(configured)
        if text_format and column not in id_columns:
            spellings |= DEFAULT_MISSING_SPELLINGS
        if not spellings:
            continue
        text = series.astype("str")
        missing = text.isin(spellings) & series.notna()
        if configured:
            missing |= text.str.strip().isin(configured) & series.notna()
        if missing.any():
            if out is frame:
                out = frame.copy()
            out[column] = series.where(~missing)
    return out
