"""Reading raw tables (CSV, TSV, Parquet, Excel) with plain-words errors.

Every way a file can be unreadable becomes one :class:`~trial_analysis.errors.DataError` naming
the file and what is wrong with it: missing, empty (0 bytes), header only, not valid text in the
configured encoding (with the data row of the first bad byte), a different format than
configured (an Excel workbook or Parquet file where CSV is expected is recognised by its first
bytes), a different delimiter, ragged rows, repeated column names.

Text formats are read with every column as text (``str`` dtype, empty cells missing), so that
the cleaning step, not the reader, decides what a value means and can report the raw value.
Parquet keeps its own types; a byte-order mark in a UTF-8 file is ignored.
"""

from __future__ import annotations

import codecs
import csv
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trial_analysis.errors import DataError

FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "xlsx")

# First bytes of formats a user may save by mistake under a .csv name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "an Excel workbook (or another zip archive)"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel workbook (.xls)"),
)
_EXPECTED = {
    "csv": "comma-separated text (CSV)",
    "tsv": "tab-separated text (TSV)",
    "parquet": "a Parquet file",
    "xlsx": "an Excel workbook",
}


def _sniff(path: Path) -> str | None:
    with path.open("rb") as handle:
        head = handle.read(8)
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


def _read_text(path: Path, encoding: str, delimiter: str, file_format: str) -> pd.DataFrame:
    py_encoding = _python_encoding(encoding)
    try:
        names = _check_header(path, py_encoding, delimiter, file_format)
        frame = pd.read_csv(
            path,
            sep=delimiter,
            dtype=str,
            encoding=py_encoding,
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


def _read_excel(path: Path) -> pd.DataFrame:
    try:
        return pd.read_excel(path, sheet_name=0, dtype=str, engine="openpyxl")
    except Exception as exc:  # openpyxl raises many unrelated types for a bad workbook
        raise DataError(
            str(path), f"not a readable Excel workbook ({type(exc).__name__})"
        ) from None


def read_table(
    path: str | Path,
    file_format: str = "csv",
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> pd.DataFrame:
    """Read one raw table; raise :class:`DataError` if the file cannot serve as that table.

    Parameters
    ----------
    path : str or Path
        The file.
    file_format : {"csv", "tsv", "parquet", "xlsx"}
        The configured format (``input.format``).
    encoding : str
        Text encoding of CSV/TSV files (``input.encoding``); a UTF-8 byte-order mark is ignored.
    delimiter : str, optional
        Column delimiter of text files; default ``,`` for CSV and a tab for TSV.

    Returns
    -------
    pandas.DataFrame
        All columns as text for CSV/TSV/Excel (empty cells missing); Parquet types as stored.
        Column names are stripped of surrounding whitespace. At least one data row.

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

    if file_format == "parquet":
        frame = _read_parquet(path)
    elif file_format == "xlsx":
        frame = _read_excel(path)
    else:
        sep = delimiter or ("\t" if file_format == "tsv" else ",")
        frame = _read_text(path, encoding, sep, file_format)
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(str(path), "the file has a header but no data rows")
    return frame.reset_index(drop=True)

