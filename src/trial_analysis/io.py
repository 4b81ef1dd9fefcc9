"""Reading and writing pipeline files.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a failed
step never leaves a half-written output that Snakemake, or a person, could later trust.
JSON is written with sorted keys and fixed float formatting so identical inputs give
byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from trial_analysis.errors import DataError

# The tidy columns of every estimate row (ARCHITECTURE.md, "an estimate file").
ESTIMATE_COLUMNS = [
    "outcome", "population", "model", "term", "estimate", "std_error", "ci_low", "ci_high",
    "p_value", "df", "n_patients", "n_observations", "n_clusters", "converged", "warnings",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates files readable by the owner only; outputs get the usual umask modes
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` to Parquet atomically, without the index."""
    return _write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


# OWASP's CSV-injection advice: a spreadsheet reads a cell that begins with one of these as
# a formula (`=HYPERLINK(...)`, `@SUM(...)`, `+cmd|...`); a leading apostrophe makes it text.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# A cell that is a plain number ("-1.5", "+3e-4") is left alone: a spreadsheet reads it as the
# number, no formula, and escaping it would change a value the reader sees.
_PLAIN_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


def _neutralised_texts(values: pd.Series) -> pd.Series | None:
    """``values`` with every formula-like text cell prefixed by ``'``; None if none is."""
    texts = values.astype(object)
    is_text = texts.map(lambda v: isinstance(v, str)).astype(bool)
    if not is_text.any():
        return None
    strings = texts[is_text].astype(str)
    risky = strings.str.startswith(FORMULA_TRIGGERS) & ~strings.str.fullmatch(_PLAIN_NUMBER)
    if not risky.any():
        return None
    texts = texts.copy()
    texts.loc[risky[risky].index] = "'" + strings[risky]
    return texts


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` safe to open in a spreadsheet (OWASP CSV injection).

    Text cells and column names that begin with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return get a leading apostrophe, so a spreadsheet shows them as text instead of
    running them as formulas. Numbers are never changed: numeric columns are not touched, and
    a text cell that is a plain number (``"-0.432"``) stays as it is.
    """
    out = frame
    for position in range(frame.shape[1]):
        series = frame.iloc[:, position]
        if not (pd.api.types.is_object_dtype(series.dtype)
                or pd.api.types.is_string_dtype(series.dtype)
                or isinstance(series.dtype, pd.CategoricalDtype)):
            continue
        texts = _neutralised_texts(series)
        if texts is not None:
            if out is frame:
                out = frame.copy()
            out.isetitem(position, texts)
    names = pd.Series(list(frame.columns), dtype=object)
    renamed = _neutralised_texts(names)
    if renamed is not None:
        out = out.copy() if out is frame else out
        out.columns = list(renamed)
    return out


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str], *,
              neutralise: bool = True) -> Path:
    """Write ``frame`` to CSV atomically, without the index, floats at full precision.

    Formula-like text cells are neutralised (:func:`neutralise_formulas`) unless
    ``neutralise`` is False, which only a raw extract that the pipeline itself reads back
    (the simulated ``data/raw``) uses: there the exact values are the input.
    """
    safe = neutralise_formulas(frame) if neutralise else frame
    # Python's csv module quotes a cell holding the line terminator but not a lone carriage
    # return, which readers then take for a line end; with CRLF line ends it is quoted.
    ending = "\r\n" if _holds_carriage_return(safe) else "\n"
    return _write_with(
        path, lambda tmp: safe.to_csv(tmp, index=False, lineterminator=ending, float_format="%.10g")
    )


def _holds_carriage_return(frame: pd.DataFrame) -> bool:
    if any("\r" in str(name) for name in frame.columns):
        return True
    for position in range(frame.shape[1]):
        series = frame.iloc[:, position]
        if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(
                series.dtype) or pd.api.types.is_datetime64_any_dtype(series.dtype):
            continue
        texts = series.astype(object)
        if texts.map(lambda v: isinstance(v, str) and "\r" in v).any():
            return True
    return False


def to_jsonable(value: Any) -> Any:
    """Convert numpy/pandas scalars and containers to plain JSON values; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if value is pd.NaT or value is None:
        return None
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as deterministic JSON (sorted keys, NaN as null) atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_analysis_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the analysis table written by ``allocate``; a named error if absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "the analysis table does not exist",
                        hint="Run the `allocate` step first")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(str(path), f"not a readable Parquet file ({exc})") from None


def positions(mask: pd.Series | np.ndarray) -> list[int]:
    """1-based row positions where ``mask`` is true (how the contract numbers Parquet rows)."""
    return [int(i) + 1 for i in np.flatnonzero(np.asarray(mask, dtype=bool))]


class ColumnWording(NamedTuple):
    """How a step words a missing input column: ``str.format`` templates of the problem and
    the hint, with ``{column}`` (the first missing), ``{missing}`` (the list), ``{names}``
    (the missing comma-separated), ``{present}`` (the file's columns) and ``{why}``.

    The steps word it differently (and tests and users see the words), so each keeps its own.
    """

    problem: str
    hint: str | None = None


# The cleaned tables, ledgers and flow files: which columns the file does have.
FILE_COLUMNS = ColumnWording("required column missing (the file has: {present})")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str, why: str = "",
                    wording: ColumnWording = FILE_COLUMNS) -> None:
    """Raise a :class:`DataError` naming the first of ``columns`` that ``frame`` lacks.

    ``why`` (what the columns are needed for) and ``wording`` fill the message.
    """
    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return
    fields = {"column": missing[0], "missing": missing, "names": ", ".join(map(str, missing)),
              "present": ", ".join(map(str, frame.columns)), "why": why}
    hint = None if wording.hint is None else wording.hint.format(**fields)
    raise DataError(source, wording.problem.format(**fields), column=missing[0], hint=hint)


def tidy_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
               flags: Sequence[str] = (), counts: Sequence[str] = (),
               texts: Sequence[str] = ()) -> pd.DataFrame:
    """Estimate rows in the fixed column order ``columns``.

    ``flags`` become bool, ``counts`` nullable integers (``Int64``: a count can be absent) and
    ``texts`` strings with missing as "", so every file of a kind has the same dtypes whatever
    its rows hold.
    """
    frame = pd.DataFrame(list(rows), columns=list(columns))
    for column in flags:
        frame[column] = frame[column].astype(bool)
    for column in texts:
        frame[column] = frame[column].fillna("").astype(str)
    for column in counts:
        frame[column] = frame[column].astype("Int64")
    return frame
