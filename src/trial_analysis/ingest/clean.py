"""Step ``clean``: read, validate and repair the raw tables; give every raw record a fate.

The rules are those of ``docs/data-contracts.md`` ("Cleaning"):

* Structural problems stop the run with a :class:`~trial_analysis.errors.DataError` in any
  mode: an unreadable, empty or header-only file, a missing column, a column whose values
  mostly fail to parse, unknown codes, one key on rows with different content, one assessment
  (episode, instrument, time point) with different scores, no usable outcome score at all.
* Repairs keep the row (fate ``repaired``): stray whitespace or case in ids and codes, dates in
  a non-first configured format. Exact duplicate rows: later copies are ``dropped``.
* Row-level problems drop the row with a reason (or stop the run when ``input.strict``): a
  missing key or required value, an unparsable date, a reference to an episode or therapist
  that is not in (or was dropped from) its table. More than ``input.max_invalid_fraction`` of a
  table dropped this way stops the run.
* Out-of-range scores (outside their instrument's range) and numbers that do not parse are
  set missing (fate ``value_set_missing``), never clipped.
* Implausible values (config ``plausibility``, rules found by
  :mod:`trial_analysis.ingest.plausibility`): a missing-value code (sentinel) is set missing;
  a number outside its variable's plausible range, a birth date giving an age outside the
  age range, a session or assessment date outside the study window or its episode, and a
  follow-up dated before its baseline are set missing, dropped (counted as invalid rows) or
  stop the run, as the rule's ``action`` says; every ledger reason names the rule.

Choices the contract leaves open, documented here: ids are compared ignoring case and
surrounding whitespace and are written upper-case; a long-layout outcome row whose score is
empty is kept (missing stays missing); in the wide layout only non-empty score cells become
long rows, and ``outcome_id`` is ``{episode_id}_{instrument}_{timepoint}``; a repeated
assessment with the same score but another ``outcome_id`` is dropped as a repeat of the
first; an ``n_sessions`` column in patients is optional, and a negative or fractional count is
a structural error (it means the column is not a count).

Each table goes through the same stages, in this order (one section of this module each):
reading and column mapping, parsing by kind (missing-value codes included), the structural
schema, row checks (exact duplicates, invalid rows, keys, references, repeated assessments),
range and plausibility checks (dates across tables after the references), and the limit on
invalid rows; :class:`_TableCleaner` holds the state they share.

Everything is vectorised: columns are parsed once per distinct value where values repeat
(dates, code lists), and reasons are built with array operations, so a registry extract of
millions of rows is cleaned without per-row Python loops.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc

from trial_analysis.config import outcome_names
from trial_analysis.errors import DataError, closest_match
from trial_analysis.ingest.plausibility import (
    Violation,
    birth_date_violation,
    episode_violation,
    followup_violation,
    range_violation,
    rule_name,
    sentinel_violation,
    variable_rule,
    window_violation,
)
from trial_analysis.ingest.readers import mark_missing
from trial_analysis.ingest.schemas import (
    CODE,
    CODES,
    COUNT,
    DATE,
    FLAG,
    ID,
    INTEGER,
    NUMBER,
    TABLES,
    TEXT,
    ColumnSpec,
    TableSpec,
    cleaned_schema,
    lookup,
    output_dtype,
    score_ranges,
    structural_schema,
    table_specs,
    timepoint_labels,
    wide_date_column,
    wide_outcome_columns,
    wide_score_column,
)
from trial_analysis.ingest.sources import SourceReader, describe_sources
from trial_analysis.io import write_parquet

log = logging.getLogger(__name__)

FATES: tuple[str, ...] = ("kept", "repaired", "value_set_missing", "dropped")
LEDGER_COLUMNS: tuple[str, ...] = ("table", "record_id", "fate", "reason", "step")
# A column is "mostly unparsable" (a structural error, not a few bad rows) above this share.
MOSTLY = 0.5

Reasons = str | Callable[[np.ndarray], Sequence[str] | pd.Series | np.ndarray]


def _fmt_number(values: pd.Series) -> pd.Series:
    """Numbers as people write them: 130 rather than 130.0."""
    as_float = values.astype(float)
    whole = np.isfinite(as_float) & (as_float == np.round(as_float))
    text = as_float.astype(str)
    text[whole] = as_float[whole].astype(np.int64).astype(str)
    return text


@dataclass(frozen=True)
class FateEvent:
    """One cleaning decision applied to a set of rows, as :mod:`.check_data` lists it.

    Attributes
    ----------
    fate : str
        ``dropped``, ``value_set_missing`` or ``repaired``.
    kind : str
        What happened, in a few words (``unparsable date``, ``score out of range``).
    column : str or None
        Canonical column concerned; None for whole-row decisions (exact duplicates).
    count : int
        Rows affected.
    rows : list of int
        The first five rows affected (1-based raw rows).
    examples : list of str
        Up to three distinct ledger reasons, which quote the offending value.
    row_level : bool
        A drop that ``input.strict`` forbids and ``input.max_invalid_fraction`` counts.
    """

    fate: str
    kind: str
    column: str | None
    count: int
    rows: list[int]
    examples: list[str]
    row_level: bool = False


class _Fates:
    """The ledger of one raw table under construction: fate, reason and counts per record."""

    def __init__(self, table: str, file: str, n_rows: int):
        self.table = table
        self.file = file
        self.n = n_rows
        self.record_id = np.arange(1, n_rows + 1, dtype=np.int64)
        self.dropped = np.zeros(n_rows, dtype=bool)
        self.row_level = np.zeros(n_rows, dtype=bool)  # drops counted against max_invalid_fraction
        self.drop_reason = np.full(n_rows, "", dtype=object)
        self.missing_reason = np.full(n_rows, "", dtype=object)
        self.repair_reason = np.full(n_rows, "", dtype=object)
        self.counts: Counter[tuple[str, str]] = Counter()
        # Opt-in (check-data): a record of every decision, with example rows and reasons.
        self.events: list[FateEvent] | None = None

    def _record(self, fate: str, kind: str, column: str | None, positions: np.ndarray,
                texts: np.ndarray, row_level: bool = False) -> None:
        if self.events is not None:
            examples = list(dict.fromkeys(str(t) for t in texts[:1000]))[:3]
            rows = [int(r) for r in self.record_id[positions[:5]]]
            self.events.append(
                FateEvent(fate, kind, column, len(positions), rows, examples, row_level)
            )

    @staticmethod
    def _texts(reasons: Reasons, positions: np.ndarray) -> np.ndarray:
        if isinstance(reasons, str):
            return np.full(len(positions), reasons, dtype=object)
        return np.asarray(list(reasons(positions)), dtype=object)

    def drop(self, mask: np.ndarray, reasons: Reasons, kind: str, row_level: bool,
             column: str | None = None) -> None:
        """Drop the rows in ``mask`` not dropped yet; the first reason given to a row stands."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool) & ~self.dropped)
        if len(positions) == 0:
            return
        self.dropped[positions] = True
        self.row_level[positions] = row_level
        texts = self._texts(reasons, positions)
        self.drop_reason[positions] = texts
        self.counts[("dropped", kind)] += len(positions)
        self._record("dropped", kind, column, positions, texts, row_level)

    @staticmethod
    def _append(target: np.ndarray, positions: np.ndarray, texts: np.ndarray) -> None:
        current = target[positions]
        target[positions] = np.where(current == "", texts, current + "; " + texts)

    def repair(self, mask: np.ndarray, reason: Reasons, kind: str,
               column: str | None = None) -> None:
        """Record a repair of the rows in ``mask`` (the row is kept)."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(positions):
            texts = self._texts(reason, positions)
            self._append(self.repair_reason, positions, texts)
            self.counts[("repaired", kind)] += len(positions)
            self._record("repaired", kind, column, positions, texts)

    def set_missing(self, mask: np.ndarray, reasons: Reasons, kind: str,
                    column: str | None = None) -> None:
        """Record that a value of the rows in ``mask`` was set missing."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(positions):
            texts = self._texts(reasons, positions)
            self._append(self.missing_reason, positions, texts)
            self.counts[("value_set_missing", kind)] += len(positions)
            self._record("value_set_missing", kind, column, positions, texts)

    def _fate_masks(self) -> tuple[np.ndarray, np.ndarray]:
        return self.missing_reason != "", self.repair_reason != ""

    def frame(self) -> pd.DataFrame:
        """The ledger rows: dropped, else value_set_missing, else repaired, else kept."""
        has_missing, has_repair = self._fate_masks()
        fate = np.select(
            [self.dropped, has_missing, has_repair],
            ["dropped", "value_set_missing", "repaired"],
            default="kept",
        )
        # Both reasons joined only where a row has both: joining every row's (mostly empty)
        # texts is a Python string operation per raw record.
        with_repair = self.missing_reason.copy()
        both = np.flatnonzero(has_repair & has_missing)
        with_repair[both] = self.missing_reason[both] + "; " + self.repair_reason[both]
        reason = np.select(
            [self.dropped, has_missing, has_repair],
            [self.drop_reason, with_repair, self.repair_reason],
            default="",
        )
        return pd.DataFrame(
            {
                "table": pd.Series([self.table] * self.n, dtype="str"),
                "record_id": self.record_id,
                "fate": pd.Series(fate, dtype="str"),
                "reason": pd.Series(reason, dtype="str"),
                "step": pd.Series(["clean"] * self.n, dtype="str"),
            }
        )

    def log_counts(self) -> None:
        # The fates of frame(), counted from the masks: building the ledger again for a log
        # line would cost as much as the ledger itself.
        has_missing, has_repair = self._fate_masks()
        missing = has_missing & ~self.dropped
        repaired = has_repair & ~has_missing & ~self.dropped
        fates = {"dropped": int(self.dropped.sum()), "value_set_missing": int(missing.sum()),
                 "repaired": int(repaired.sum())}
        fates["kept"] = self.n - sum(fates.values())
        log.info(
            "clean %s: %d raw rows: %s",
            self.table,
            self.n,
            ", ".join(f"{fates.get(f, 0)} {f}" for f in FATES),
        )
        for (fate, kind), count in sorted(self.counts.items()):
            level = logging.WARNING if fate == "dropped" else logging.INFO
            log.log(level, "clean %s: %s %d x %s", self.table, fate, count, kind)


def _fmt_value(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _isin(values: pd.Series, keys: pd.Index) -> np.ndarray:
    """``values.isin(keys)`` for text, through Arrow; missing values are never in ``keys``.

    pandas' own ``isin`` on Arrow-backed text turns every key into a Python object first,
    which dominates cleaning a registry extract with a million episode ids.
    """
    found = pc.is_in(
        pyarrow.array(values.array, from_pandas=True).cast(pyarrow.large_string()),
        value_set=pyarrow.array(keys.array, from_pandas=True).cast(pyarrow.large_string()),
        skip_nulls=True,
    )
    return found.to_numpy(zero_copy_only=False).astype(bool)


def _row_groups(codes: Sequence[np.ndarray]) -> np.ndarray:
    """Group number of each row over several factorized columns, numbered by first appearance.

    Rows with equal codes in every column share a group; a missing value (code -1) equals
    another missing value, as in ``DataFrame.duplicated``.
    """
    groups = np.zeros(len(codes[0]), dtype=np.int64)
    for column in codes:
        # Renumbered after each column, so the combined number stays below rows x levels.
        width = int(column.max()) + 2 if len(column) else 1  # codes run from -1 (missing)
        groups, _ = pd.factorize(groups * width + (column + 1))
    return groups


def _as_text(series: pd.Series) -> pd.Series:
    """Text values with missing kept missing, whatever the stored type."""
    text = series.astype("str")
    return text.where(series.notna())


class _TableCleaner:
    """The state of cleaning one raw table, which the cleaning stages below read and update.

    It holds the table's columns as found in the file (``file_names``: canonical name to the
    file's name), the parsed ``values``, the raw text of values that failed to parse, the row
    drops parsing queued, and the ledger under construction (``fates``). Constructing it maps
    the raw columns (:func:`_map_columns`); the stages then run in the order the drivers
    (:func:`_clean_simple`, :func:`_clean_long_outcomes`, :func:`_clean_wide_outcomes`) call
    them: :func:`_parse_columns`, :func:`_check_structure`, :func:`_drop_exact_duplicates`,
    :func:`_apply_pending_row_drops`, :func:`_check_key_conflicts`, references and repeated
    assessments, :func:`_set_out_of_range` and :func:`_check_plausible_values`, then (sessions,
    outcomes) :func:`_check_dates`; the callers end with :func:`_check_invalid_share`.

    A structural problem raises a :class:`DataError` at once, unless ``collect`` is a list:
    then every problem is appended to it and cleaning goes on as far as it can (what
    ``trial-analysis check-data`` does to report all problems in one pass), and every fate
    is also kept as a :class:`FateEvent` in ``fates.events``.
    """

    def __init__(
        self,
        table: str,
        file: str,
        raw: pd.DataFrame,
        columns: Sequence[ColumnSpec],
        key: str,
        mapping: Mapping[str, str],
        config: Mapping[str, Any],
        *,
        collect: list[DataError] | None = None,
    ):
        self.collect = collect
        self.table = table
        self.file = file
        self.key = key
        self.config = config
        self.input_cfg = config["input"]
        self.separator = config.get("codes", {}).get("separator", ";")
        # What the reader knows about the source (variable labels, an ADaM selection).
        self.source_attrs = dict(raw.attrs)
        self.raw, self.file_names = _map_columns(table, file, raw, columns, mapping, self.fail)
        # Only the columns found go on; a missing one was reported (or is optional).
        self.columns = [c for c in columns if c.name in self.file_names]
        # What is missing: "NA", "NULL" or "None" is an id unless input.missing_values says so.
        self.raw = mark_missing(self.raw, [c.name for c in self.columns if c.kind == ID],
                                _file_format(config, table), self.input_cfg.get("missing_values")
                                or ())
        self.n = len(self.raw)
        self.fates = _Fates(table, file, self.n)
        if collect is not None:
            self.fates.events = []
        self.values = pd.DataFrame(index=self.raw.index)
        # Per column: raw text where a value failed to parse, so exact-duplicate detection
        # compares what was written, not two NaNs.
        self.unparsed: dict[str, pd.Series] = {}
        self.pending_row_drops: list[tuple[np.ndarray, Reasons, str, str]] = []
        # Factorized columns (pd.factorize codes over all rows), shared by the duplicate, key
        # and repeated-assessment checks: hashing a million ids is the costly part of each.
        self._codes: dict[str, np.ndarray] = {}

    def fail(self, error: DataError) -> None:
        """Raise ``error``, or record it and go on when collecting every problem."""
        if self.collect is None:
            raise error
        self.collect.append(error)

    def error(self, rule: str, column: str | None = None, rows: Sequence[int] | None = None,
              hint: str | None = None) -> DataError:
        """A :class:`DataError` naming the column as the file names it."""
        named = self.file_names.get(column, column) if column else None
        return DataError(self.file, rule, column=named, rows=rows, hint=hint)

    def codes(self, column: str) -> np.ndarray:
        """``pd.factorize`` codes of ``values[column]`` (-1 missing), computed once per column."""
        if column not in self._codes:
            self._codes[column] = pd.factorize(self.values[column])[0]
        return self._codes[column]

    def release_codes(self) -> None:
        """Forget the factorized columns once the row checks are done (memory)."""
        self._codes.clear()

    def set_values(self, column: str, values: pd.Series) -> None:
        """Replace a column's values (and forget its codes)."""
        self.values[column] = values
        self._codes.pop(column, None)

    def has(self, *columns: str) -> bool:
        """Whether every column was found (only a collecting cleaner goes on without one)."""
        return all(c in self.values.columns for c in columns)

    def kept_values(self) -> pd.DataFrame:
        """Rows not dropped, with output dtypes and ``record_id``."""
        frame = self.values.loc[~self.fates.dropped].copy()
        for spec in self.columns:
            frame[spec.name] = frame[spec.name].astype(output_dtype(spec.kind))
        frame["record_id"] = self.fates.record_id[~self.fates.dropped]
        return frame.reset_index(drop=True)


@dataclass
class CleanResult:
    """Cleaned tables and the cleaning ledger.

    Attributes
    ----------
    tables : dict of str to DataFrame
        ``therapists, patients, sessions, outcomes``: canonical columns, output dtypes,
        ``record_id``; outcomes always long.
    ledger : DataFrame
        One row per raw record: ``table, record_id, fate, reason, step``.
    """

    tables: dict[str, pd.DataFrame]
    ledger: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """Counts per table and fate (``table, fate, n``), every fate listed, zeros included."""
        counts = self.ledger.groupby(["table", "fate"], observed=True).size()
        index = pd.MultiIndex.from_product([list(TABLES), list(FATES)], names=["table", "fate"])
        return counts.reindex(index, fill_value=0).rename("n").reset_index()

    def summary(self) -> str:
        """The fates of the raw records per table, as a small text table."""
        wide = self.to_frame().pivot(index="table", columns="fate", values="n")
        wide = wide.reindex(index=list(TABLES), columns=list(FATES))
        wide["raw rows"] = wide.sum(axis=1)
        kept = {t: len(f) for t, f in self.tables.items()}
        wide["rows out"] = [kept.get(t, 0) for t in wide.index]
        return "Cleaning: fate of every raw record\n" + wide.to_string()


# ---- stage 1: reading the file and mapping its columns ---------------------------------------




def _file_format(config: Mapping[str, Any], table: str) -> str | None:
    """The format ``table`` is read in; None for a database query."""
    entry = config["input"]["tables"].get(table) or {}
    if "query" in entry:
        return None
    return entry.get("format") or config["input"].get("format", "csv")


def _map_columns(
    table: str,
    file: str,
    raw: pd.DataFrame,
    columns: Sequence[ColumnSpec],
    mapping: Mapping[str, str],
    fail: Callable[[DataError], None],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Find each contract column in the file's header and rename it to its canonical name.

    Decides which columns exist: a column is looked up under its name in
    ``input.tables.<table>.columns`` or else its canonical name, exactly or ignoring case and
    surrounding whitespace. A required column not found, or a configured name the file lacks,
    is a structural error (passed to ``fail``, with the closest header as a suggestion); an
    optional column not found is left out; columns outside the contract are ignored (logged).
    Records no ledger fates.

    Returns
    -------
    tuple of DataFrame and dict
        The found columns under their canonical names, and per canonical name the file's name.
    """
    present = list(raw.columns)
    by_folded = {str(c).strip().casefold(): c for c in present}
    renamed: dict[str, str] = {}
    file_names: dict[str, str] = {}
    for spec in columns:
        configured = mapping.get(spec.name)
        wanted = configured or spec.name
        found = wanted if wanted in present else by_folded.get(wanted.casefold())
        if found is None:
            if spec.optional_column and configured is None:
                continue
            close = closest_match(wanted, present)
            suggestion = f"Did you mean '{close}'? " if close else ""
            if configured is not None:
                rule = (
                    f"column '{wanted}' (configured for '{spec.name}' in "
                    f"input.tables.{table}.columns) is not in the file"
                )
            else:
                rule = f"required column '{spec.name}' is missing"
                suggestion += (
                    f"If the file names it differently, map it in "
                    f"input.tables.{table}.columns (e.g. {spec.name}: <name in file>). "
                )
            fail(DataError(
                file,
                rule,
                column=wanted,
                hint=f"{suggestion}The file has columns: {', '.join(map(str, present))}",
            ))
            continue
        renamed[found] = spec.name
        file_names[spec.name] = str(found)
    unused = [str(c) for c in present if c not in renamed]
    if unused:
        log.info("clean %s: ignoring columns not in the contract: %s", table, unused)
    return raw[list(renamed)].rename(columns=renamed), file_names


def _cleaner(reader: SourceReader, config: Mapping[str, Any], spec: TableSpec) -> _TableCleaner:
    """Read table ``spec.name`` and map its columns (a long outcomes file may lack outcome_id)."""
    # A file under paths.raw or a database query (input.tables.<table>.file or .query).
    file, frame = reader.read(spec.name)
    mapping = config["input"]["tables"][spec.name].get("columns") or {}
    if spec.name == "outcomes" and "outcome_id" not in mapping and not any(
            str(c).casefold() == "outcome_id" for c in frame.columns):
        # No row identifier in a long outcomes file: the data row number serves as one.
        frame = frame.assign(outcome_id=[f"ROW{i}" for i in range(1, len(frame) + 1)])
    return _TableCleaner(spec.name, file, frame, spec.columns, spec.key, mapping, config)


# ---- stage 2: parsing each column by its kind ------------------------------------------------


def _parse_columns(cleaner: _TableCleaner) -> None:
    """Parse every column by its kind into ``cleaner.values``, recording repairs.

    Decides what each written value means. Fates: ``repaired`` for stray whitespace (ids,
    codes, code lists and text) or case (ids, codes, code lists) and for dates in a non-first
    configured format; ``value_set_missing`` for numbers that do not parse and for fractional
    integers. Rows with an unparsable date or a missing required value are queued for
    :func:`_apply_pending_row_drops` (fate ``dropped``, counted as invalid), which runs after
    the exact-duplicate check so that a duplicate is recorded as one. Structural errors: a
    column whose values mostly fail to parse, and a flag or count that is not a number.
    """
    for spec in cleaner.columns:
        series = cleaner.raw[spec.name]
        cleaner.values[spec.name] = _PARSERS[spec.kind](cleaner, spec, series)
        _set_sentinels_missing(cleaner, spec)
        if spec.required:
            # Unparsable dates were queued first, so they keep that more precise reason.
            missing = cleaner.values[spec.name].isna().to_numpy()
            reason = f"missing {spec.name}"
            cleaner.pending_row_drops.append((missing, reason, reason, spec.name))


def _set_sentinels_missing(cleaner: _TableCleaner, spec: ColumnSpec) -> None:
    """A declared missing-value code (e.g. -999) of a numeric column is a missing value.

    Fate ``value_set_missing``, the reason naming the code; before the structural checks, so
    a code in a count is not mistaken for a negative count. The code stays comparable as
    written for the exact-duplicate check.
    """
    rule = variable_rule(cleaner.config, cleaner.table, spec.name) if spec.kind in (
        NUMBER, INTEGER, COUNT) else None
    if rule is None:
        return
    violation = sentinel_violation(cleaner.values[spec.name], spec.name, rule,
                                   rule_name(cleaner.table, spec.name))
    if violation is not None:
        if spec.name not in cleaner.unparsed:
            cleaner.unparsed[spec.name] = _stripped(cleaner.raw[spec.name])[1]
        _apply_violation(cleaner, violation)


def _stripped(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The values as text, and the same stripped of surrounding whitespace (empty: missing)."""
    text = _as_text(series)
    stripped = text.str.strip()
    stripped = stripped.where(stripped != "")
    return text, stripped


def _examples(text: pd.Series, mask: pd.Series | np.ndarray) -> tuple[list[int], str]:
    positions = np.flatnonzero(np.asarray(mask, dtype=bool))
    rows = [int(p) + 1 for p in positions[:5]]
    # At most three example values: messages may reach people who must not see records.
    distinct = text.iloc[positions[:1000]].astype(str).unique()[:3]
    return rows, ", ".join(repr(v) for v in distinct)


def _parse_id(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    text, stripped = _stripped(series)
    norm = stripped.str.upper()
    changed = (norm != text) & norm.notna()
    cleaner.fates.repair(changed.to_numpy(), f"stray whitespace or case in {spec.name}",
                         f"whitespace or case in {spec.name}", column=spec.name)
    return norm


def _parse_text(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    text, stripped = _stripped(series)
    changed = (stripped != text) & stripped.notna()
    cleaner.fates.repair(changed.to_numpy(), f"stray whitespace in {spec.name}", "text",
                         column=spec.name)
    return stripped


def _parse_code(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    text, stripped = _stripped(series)
    canonical = {str(a).upper(): a for a in spec.allowed or ()}
    upper = stripped.str.upper()
    norm = pd.Series(lookup(upper, canonical, default=None).astype(object),
                     index=upper.index, dtype="str")
    # Unknown codes keep their written value so the structural check can report it.
    norm = norm.where(norm.notna(), stripped).astype("str")
    changed = (norm != text) & stripped.notna()
    cleaner.fates.repair(changed.to_numpy(), f"stray whitespace or case in {spec.name}",
                         f"whitespace or case in {spec.name}", column=spec.name)
    return norm


def _parse_codes(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    text = _as_text(series)
    # A registry repeats a few hundred code combinations: normalise each distinct cell once.
    codes, uniques = pd.factorize(text)
    normalised = []
    for value in uniques:
        parts = [p.strip().upper() for p in str(value).split(cleaner.separator)]
        joined = cleaner.separator.join(p for p in parts if p)
        normalised.append(joined if joined else None)
    by_code = pd.array(normalised + [None], dtype="str")
    norm = pd.Series(by_code[codes], index=series.index, dtype="str")  # code -1 -> last: None
    changed = (norm != text) & text.notna()
    cleaner.fates.repair(changed.to_numpy(), f"stray whitespace or case in {spec.name}",
                         f"whitespace or case in {spec.name}", column=spec.name)
    return norm


def _parse_date(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.dt.tz_localize(None) if series.dt.tz is not None else series.astype(
            "datetime64[us]"
        )
    text, stripped = _stripped(series)
    formats = list(cleaner.input_cfg.get("date_formats") or ["%Y-%m-%d"])
    codes, uniques = pd.factorize(stripped)
    parsed_uniques = pd.Series(pd.NaT, index=range(len(uniques)), dtype="datetime64[us]")
    format_used = np.full(len(uniques), -1)
    remaining = np.ones(len(uniques), dtype=bool)
    unique_text = pd.Series(uniques, dtype="str")
    for number, fmt in enumerate(formats):
        if not remaining.any():
            break
        attempt = pd.to_datetime(unique_text[remaining], format=fmt, errors="coerce")
        ok = attempt.notna().to_numpy()
        hits = np.flatnonzero(remaining)[ok]
        parsed_uniques.iloc[hits] = attempt[ok].astype("datetime64[us]").to_numpy()
        format_used[hits] = number
        remaining[hits] = False
    parsed = pd.Series(
        np.append(parsed_uniques.to_numpy(), np.datetime64("NaT", "us"))[codes],
        index=series.index,
    )
    used = np.append(format_used, -1)[codes]
    bad = (stripped.notna() & parsed.isna()).to_numpy()
    _stop_if_mostly_bad(
        cleaner, spec, stripped, bad, f"dates in no configured format ({', '.join(formats)})",
        "Add the file's date format to input.date_formats, or check the column mapping",
    )
    for number in range(1, len(formats)):
        cleaner.fates.repair(
            used == number,
            f"{spec.name} in non-first date format {formats[number]}",
            "date in another configured format",
            column=spec.name,
        )
    if bad.any():
        cleaner.unparsed[spec.name] = stripped
        cleaner.pending_row_drops.append(
            (
                bad,
                lambda pos, s=stripped, n=spec.name: f"{n} '" + s.iloc[pos].astype(str)
                + "' is not a date in a configured format",
                "unparsable date",
                spec.name,
            )
        )
    return parsed


def _stop_if_mostly_bad(cleaner: _TableCleaner, spec: ColumnSpec, text: pd.Series,
                        bad: np.ndarray, rule: str, hint: str) -> None:
    """A structural error when more than ``MOSTLY`` of the written values failed to parse."""
    present = int(text.notna().sum())
    if present and bad.sum() > MOSTLY * present:
        rows, shown = _examples(text, bad)
        cleaner.fail(cleaner.error(
            f"{int(bad.sum())} of {present} values are {rule}; e.g. {shown}",
            column=spec.name,
            rows=rows,
            hint=hint,
        ))


def _parse_number(cleaner: _TableCleaner, spec: ColumnSpec, series: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        number = series.astype("float64")
        stripped = _as_text(series)
        bad = np.isinf(number.to_numpy())
    else:
        _, stripped = _stripped(series)
        # Parsed once per distinct text: scores and ages repeat a few hundred values.
        codes, uniques = pd.factorize(stripped)
        parsed = pd.to_numeric(pd.Series(uniques), errors="coerce").astype("float64")
        number = pd.Series(np.append(parsed.to_numpy(), np.nan)[codes],
                           index=stripped.index)  # code -1 (missing): NaN
        bad = (stripped.notna() & (number.isna() | np.isinf(number))).to_numpy()
    number = number.where(~bad)
    what = "whole numbers" if spec.kind in (INTEGER, FLAG, COUNT) else "numbers"
    _stop_if_mostly_bad(
        cleaner, spec, stripped, bad, f"not {what}",
        "Check the column mapping (input.tables) and the decimal mark (a point, not a comma)",
    )
    if bad.any():
        cleaner.unparsed[spec.name] = stripped
        if spec.kind in (FLAG, COUNT):
            rows, shown = _examples(stripped, bad)
            rule = "values must be 0 or 1" if spec.kind == FLAG else (
                "session counts must be whole numbers of 0 or more")
            cleaner.fail(cleaner.error(f"{rule}; found {shown}", column=spec.name, rows=rows))
            return number
        cleaner.fates.set_missing(
            bad,
            lambda pos, s=stripped, n=spec.name: f"{n} '" + s.iloc[pos].astype(str)
            + "' is not a number",
            f"{spec.name} not a number",
            column=spec.name,
        )
    if spec.kind == INTEGER:
        fractional = (number.notna() & (number != np.floor(number))).to_numpy()
        cleaner.fates.set_missing(
            fractional,
            lambda pos, v=number, n=spec.name: f"{n} " + _fmt_number(v.iloc[pos])
            + " is not a whole number",
            f"{spec.name} not a whole number",
            column=spec.name,
        )
        number = number.where(~fractional)
    return number


_PARSERS: dict[str, Callable[[_TableCleaner, ColumnSpec, pd.Series], pd.Series]] = {
    ID: _parse_id,
    CODE: _parse_code,
    CODES: _parse_codes,
    TEXT: _parse_text,
    DATE: _parse_date,
    NUMBER: _parse_number,
    INTEGER: _parse_number,
    FLAG: _parse_number,
    COUNT: _parse_number,
}


# ---- stage 3: validating the parsed values against the structural schema --------------------


def _check_structure(cleaner: _TableCleaner) -> None:
    """Check the parsed values against the table's structural schema (pandera), all at once.

    Decides whether the values are of the study at all: unknown codes, instrument names or
    time point labels (with the closest allowed value as a suggestion), flags other than 0/1,
    impossible counts. One structural error per failing column, in column order; no ledger
    fates (such a table is refused, not cleaned).
    """
    spec = TableSpec(cleaner.table, tuple(cleaner.columns), cleaner.key)
    schema = structural_schema(spec, cleaner.config)
    try:
        schema.validate(cleaner.values, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for error in _translate(cleaner, errors.failure_cases):
            cleaner.fail(error)


def _translate(cleaner: _TableCleaner, failures: pd.DataFrame) -> list[DataError]:
    """One readable error per failing column of a pandera report, in column order."""
    failures = failures[failures["column"].notna()]
    order = {c.name: i for i, c in enumerate(cleaner.columns)}
    errors = []
    for column in sorted(failures["column"].unique(), key=lambda c: order.get(c, len(order))):
        cases = failures[failures["column"] == column]
        rows = sorted(int(i) + 1 for i in cases["index"].dropna().unique())
        values = list(dict.fromkeys(_fmt_value(v) for v in cases["failure_case"]))
        shown = ", ".join(repr(v) for v in values[:3])
        spec = next((c for c in cleaner.columns if c.name == column), None)
        hint = None
        if spec is not None and spec.kind in (CODE, CODES):
            hint = _code_suggestions(spec, values, cleaner.separator) + (
                "If the code is valid, add it to the config (codes, outcomes or timepoints)")
        errors.append(cleaner.error(
            f"{cases['check'].iloc[0]}; found {shown}", column=str(column), rows=rows,
            hint=hint,
        ))
    return errors


def _code_suggestions(spec: ColumnSpec, values: Sequence[str], separator: str) -> str:
    """``"'Dischrage' may be 'discharge'. "`` for unknown codes close to an allowed one."""
    allowed = spec.allowed or ()
    unknown: list[str] = []
    for value in values:
        parts = value.split(separator) if spec.kind == CODES else [value]
        unknown += [p for p in parts if p and p not in allowed and p not in unknown]
    pairs = [(u, closest_match(u, allowed)) for u in unknown]
    shown = [f"'{u}' may be '{m}'" for u, m in pairs if m is not None][:3]
    return "; ".join(shown) + ". " if shown else ""


# ---- stage 4: rows: exact duplicates, invalid rows, keys, references, repeated assessments --


def _drop_exact_duplicates(cleaner: _TableCleaner) -> None:
    """Drop later copies of a row identical to an earlier one (fate ``dropped``).

    Rows are compared on every parsed column, an unparsable value as written. The reason names
    the first copy (``exact duplicate of row 3``); such drops are not counted as invalid rows.
    """
    if cleaner.n == 0 or len(cleaner.values.columns) == 0:
        return
    codes = []
    for name in cleaner.values.columns:
        if name in cleaner.unparsed:
            # An unparsable value is compared as written, not as a missing value.
            column = cleaner.values[name]
            compare = column.astype(object).where(column.notna(), cleaner.unparsed[name])
            codes.append(pd.factorize(compare)[0])
        else:
            codes.append(cleaner.codes(name))
    groups = _row_groups(codes)
    _, first_position = np.unique(groups, return_index=True)
    duplicated = first_position[groups] != np.arange(cleaner.n)
    if not duplicated.any():
        return
    first_row = cleaner.fates.record_id[first_position[groups]]
    cleaner.fates.drop(
        duplicated,
        lambda pos: "exact duplicate of row " + pd.Series(first_row[pos]).astype(str),
        "exact duplicate",
        row_level=False,
    )


def _apply_pending_row_drops(cleaner: _TableCleaner) -> None:
    """Drop the rows parsing queued: an unparsable date, a missing required value.

    Fate ``dropped``, counted as invalid rows (``input.strict``, ``input.max_invalid_fraction``);
    a row already dropped as an exact duplicate keeps that reason.
    """
    for mask, reasons, kind, column in cleaner.pending_row_drops:
        cleaner.fates.drop(mask, reasons, kind, row_level=True, column=column)
    cleaner.pending_row_drops = []


def _check_key_conflicts(cleaner: _TableCleaner, key_columns: Sequence[str], what: str) -> None:
    """Rows left with the same key must be identical: anything else is a structural error.

    Runs after the exact duplicates are dropped, so the rows left with one key differ in
    content. Records no ledger fates.
    """
    if not cleaner.has(*key_columns):
        return
    values = cleaner.values
    alive = ~cleaner.fates.dropped & values[list(key_columns)].notna().all(axis=1).to_numpy()
    keys = _row_groups([cleaner.codes(c)[alive] for c in key_columns])
    clash = pd.Series(np.bincount(keys)[keys] > 1) if len(keys) else pd.Series([], dtype=bool)
    if clash.any():
        keyed = values.loc[alive, list(key_columns)]
        clash.index = keyed.index
        positions = np.flatnonzero(alive)[clash.to_numpy()]
        first_key = keyed[clash].iloc[0]
        same = (keyed[clash] == first_key).all(axis=1).to_numpy()
        example_rows = [int(p) + 1 for p in positions[same]]
        shown = ", ".join(f"{c}={first_key[c]!r}" for c in key_columns)
        cleaner.fail(cleaner.error(
            f"the same {what} on rows with different content ({shown} on rows "
            f"{', '.join(map(str, example_rows[:5]))})",
            column=key_columns[0],
            rows=[int(p) + 1 for p in positions],
            hint="Keep one version of each record and rerun",
        ))


def _drop_unknown_references(cleaner: _TableCleaner, column: str, target: str, kept: pd.Index,
                             known: pd.Index) -> None:
    """Drop rows whose ``column`` is not a kept key of table ``target`` (fate ``dropped``).

    The reason says whether the key was dropped from ``target`` (it is in ``known``) or is not
    in it at all; both count as invalid rows.
    """
    if not cleaner.has(column):
        return
    values = cleaner.values[column]
    alive = ~cleaner.fates.dropped & values.notna().to_numpy()
    unknown = alive & ~_isin(values, kept)
    if not unknown.any():
        return
    was_dropped = _isin(values, known)
    cleaner.fates.drop(
        unknown & was_dropped,
        lambda pos: f"{column} '" + values.iloc[pos].astype(str)
        + f"' refers to a row dropped from the {target} table",
        f"{column} of a dropped {target} row",
        row_level=True,
        column=column,
    )
    cleaner.fates.drop(
        unknown & ~was_dropped,
        lambda pos: f"{column} '" + values.iloc[pos].astype(str)
        + f"' not in the {target} table",
        f"{column} not in the {target} table",
        row_level=True,
        column=column,
    )


def _reference(cleaner: _TableCleaner, column: str, target: _TableCleaner, target_key: str) -> None:
    """Drop rows of ``cleaner`` whose ``column`` is not a kept ``target_key`` of ``target``."""
    if not target.has(target_key):
        return
    kept = pd.Index(target.values.loc[~target.fates.dropped, target_key].dropna().unique())
    known = pd.Index(target.values[target_key].dropna().unique())
    _drop_unknown_references(cleaner, column, target.table, kept, known)


def _drop_repeated_assessments(cleaner: _TableCleaner) -> None:
    """The same assessment (episode, instrument, time point) twice in the long outcomes table.

    Different scores are a structural error (which score is the study's is not for cleaning
    to decide); the same score under another ``outcome_id``: later copies get fate
    ``dropped``, naming the first, not counted as invalid rows.
    """
    key = ["episode_id", "instrument", "timepoint"]
    if not cleaner.has(*key, "score"):
        return
    values = cleaner.values
    alive = ~cleaner.fates.dropped & values[key].notna().all(axis=1).to_numpy()
    assessments = _row_groups([cleaner.codes(k)[alive] for k in key])
    repeated_alive = np.bincount(assessments)[assessments] > 1 if len(assessments) else (
        np.zeros(0, dtype=bool))
    if not repeated_alive.any():
        return
    positions = np.flatnonzero(alive)[repeated_alive]
    subset = values.iloc[positions]
    scores = subset["score"].fillna(np.inf)  # two missing scores agree
    distinct = scores.groupby([subset[k] for k in key], sort=False).transform("nunique")
    if (distinct > 1).any():
        conflict = positions[(distinct > 1).to_numpy()]
        first = values.iloc[conflict[0]]
        shown = ", ".join(f"{k}={first[k]!r}" for k in key)
        cleaner.fail(cleaner.error(
            f"the same (episode_id, instrument, timepoint) with different scores ({shown})",
            column="score",
            rows=[int(p) + 1 for p in conflict],
            hint="Keep one score per episode, instrument and time point",
        ))
        return
    labels = pd.Series(subset.index.to_numpy(), index=subset.index)
    first_row = labels.groupby([subset[k] for k in key], sort=False).transform("first")
    later = subset.index.to_numpy() != first_row.to_numpy()
    first_record = np.zeros(cleaner.n, dtype=np.int64)
    first_record[positions] = first_row.to_numpy().astype(np.int64) + 1
    mask = np.zeros(cleaner.n, dtype=bool)
    mask[positions[later]] = True
    cleaner.fates.drop(
        mask,
        lambda pos: "same episode, instrument, time point and score as row "
        + pd.Series(first_record[pos]).astype(str),
        "repeated assessment",
        row_level=False,
        column="score",
    )



# ---- stage 5: range checks -------------------------------------------------------------------


def _set_out_of_range(cleaner: _TableCleaner, column: str, low: pd.Series | float,
                      high: pd.Series | float, label: str) -> None:
    """Values outside ``[low, high]`` become missing (fate ``value_set_missing``); never clipped.

    The bounds are an instrument's configured score range (``outcomes[].min/max``); the
    reason quotes value and range. (Other numeric columns are ranged by their plausibility
    rule: :func:`_check_plausible_values`.)
    """
    if not cleaner.has(column):
        return
    values = cleaner.values[column]
    outside = (values.notna() & ((values < low) | (values > high))).to_numpy()
    if not outside.any():
        return
    low_s = pd.Series(low, index=values.index) if np.isscalar(low) else low
    high_s = pd.Series(high, index=values.index) if np.isscalar(high) else high
    cleaner.fates.set_missing(
        outside,
        lambda pos: f"{label} " + _fmt_number(values.iloc[pos]) + " outside "
        + _fmt_number(low_s.iloc[pos]) + "-" + _fmt_number(high_s.iloc[pos]),
        f"{label} out of range",
        column=column,
    )
    cleaner.set_values(column, values.where(~outside))


# ---- stage 5b: plausibility (config ``plausibility``) ---------------------------------------


def _apply_violation(cleaner: _TableCleaner, violation: Violation) -> None:
    """Turn a plausibility violation into ledger fates, or stop, as its rule's action says.

    Only rows not dropped yet count. ``set_missing`` sets the rule's columns missing (fate
    ``value_set_missing``), unless one of them is required in its table (a session date, the
    birth date the age comes from): the row is then dropped, as any row without a required
    value is. ``drop`` drops the rows (fate ``dropped``, counted as invalid rows). ``stop``
    is a :class:`DataError` naming file, column, rows and rule.
    """
    mask = violation.mask & ~cleaner.fates.dropped
    if not mask.any():
        return
    positions = np.flatnonzero(mask)
    if violation.action == "stop":
        # The rule is named once, not in every example.
        examples = list(dict.fromkeys(str(t).removesuffix(f" ({violation.rule})")
                                      for t in violation.reasons(positions[:50])))[:3]
        cleaner.fail(cleaner.error(
            f"{len(positions)} value(s) break the plausibility rule {violation.rule}: "
            + "; ".join(examples),
            column=violation.column,
            rows=[int(r) for r in cleaner.fates.record_id[positions]],
            hint=f"Correct the values, or set {violation.config_key()}.action to set_missing "
            "or drop to have them recorded in the ledger instead",
        ))
        return
    needed = [c for c in violation.clear
              if any(spec.name == c and spec.required for spec in cleaner.columns)]
    if violation.action == "drop" or needed:
        reasons = violation.reasons
        if violation.action != "drop":
            def reasons(pos: np.ndarray, given=violation.reasons, what=needed[0]) -> pd.Series:
                return pd.Series(list(given(pos)), dtype=object) + (
                    f"; the row cannot be used without {what}")
        cleaner.fates.drop(mask, reasons, violation.kind, row_level=True,
                           column=violation.column)
        return
    cleaner.fates.set_missing(mask, violation.reasons, violation.kind, column=violation.column)
    for column in violation.clear:
        if cleaner.has(column):
            cleaner.set_values(column, cleaner.values[column].where(~mask))


def _check_plausible_values(cleaner: _TableCleaner) -> None:
    """Numbers outside their variable's plausible range; birth dates giving an impossible age.

    Ranges come from ``plausibility.variables`` (built-in ones for the default study's
    columns); the rule's action decides the fate (:func:`_apply_violation`).
    """
    for spec in cleaner.columns:
        if spec.kind not in (NUMBER, INTEGER, COUNT) or not cleaner.has(spec.name):
            continue
        rule = variable_rule(cleaner.config, cleaner.table, spec.name)
        if rule is not None and (violation := range_violation(
                cleaner.values[spec.name], spec.name, rule,
                rule_name(cleaner.table, spec.name))) is not None:
            _apply_violation(cleaner, violation)
    if cleaner.table == "patients" and cleaner.has("birth_date", "referral_date"):
        violation = birth_date_violation(cleaner.values["birth_date"],
                                         cleaner.values["referral_date"], cleaner.config)
        if violation is not None:
            _apply_violation(cleaner, violation)


def _referral_dates(cleaner: _TableCleaner, patients: _TableCleaner | None) -> pd.Series | None:
    """Per row of ``cleaner``, the referral date of its episode (missing when unknown)."""
    if patients is None or not patients.has("episode_id", "referral_date") or not cleaner.has(
            "episode_id"):
        return None
    alive = ~patients.fates.dropped
    dates = patients.values.loc[alive, "referral_date"]
    by_episode = pd.Series(dates.to_numpy(), index=pd.Index(patients.values.loc[alive,
                                                                                 "episode_id"]))
    by_episode = by_episode[~by_episode.index.duplicated()]
    position = by_episode.index.get_indexer(cleaner.values["episode_id"])
    table = np.append(by_episode.to_numpy(), np.array(["NaT"], dtype=by_episode.dtype))
    return pd.Series(table[position], index=cleaner.values.index)  # -1 (unknown): NaT


def _dated_columns(cleaner: _TableCleaner) -> dict[str, tuple[str, ...]]:
    """The date columns checked, each with the columns a ``set_missing`` clears with it."""
    if cleaner.table == "sessions":
        return {"session_date": ("session_date",)}
    if cleaner.has("instrument"):  # long outcomes: an assessment's date and its score
        return {"assessment_date": ("assessment_date", "score")}
    instruments = outcome_names(cleaner.config)
    return {wide_date_column(t): (wide_date_column(t),
                                  *(wide_score_column(i, t) for i in instruments))
            for t in timepoint_labels(cleaner.config)}


def _check_dates(cleaner: _TableCleaner, patients: _TableCleaner | None) -> None:
    """Session and assessment dates: within the study window and their episode; follow-ups
    not before the baseline.

    Run after the references are checked (rows of unknown episodes are gone). The rules are
    ``plausibility.dates.study_window``, ``.episode`` and ``.followup_order``.
    """
    config = cleaner.config
    referral = _referral_dates(cleaner, patients)
    for column, clear in _dated_columns(cleaner).items():
        if not cleaner.has(column):
            continue
        violation = window_violation(cleaner.values[column], column, config, clear)
        if violation is not None:
            _apply_violation(cleaner, violation)
        if referral is not None and (violation := episode_violation(
                cleaner.values[column], referral, column, config, clear)) is not None:
            _apply_violation(cleaner, violation)
    if cleaner.table == "outcomes":
        _check_followup_order(cleaner)


def _check_followup_order(cleaner: _TableCleaner) -> None:
    """A follow-up assessment dated before the baseline of its episode (and instrument)."""
    config = cleaner.config
    baseline_label, *followups = timepoint_labels(config)
    values = cleaner.values
    if not cleaner.has("instrument"):  # wide: one date column per time point
        base = wide_date_column(baseline_label)
        for label in followups:
            column = wide_date_column(label)
            if cleaner.has(base, column) and (violation := followup_violation(
                    values[column], values[base], label, baseline_label, column, config,
                    _dated_columns(cleaner)[column])) is not None:
                _apply_violation(cleaner, violation)
        return
    if not cleaner.has("episode_id", "timepoint", "assessment_date"):
        return
    groups = _row_groups([pd.factorize(values["episode_id"])[0],
                          pd.factorize(values["instrument"])[0]])
    is_base = (values["timepoint"] == baseline_label).to_numpy(dtype=bool) & ~cleaner.fates.dropped
    baseline = values["assessment_date"].where(is_base).groupby(groups).transform("min")
    for label in followups:
        dates = cleaner.values["assessment_date"]
        followup = dates.where((values["timepoint"] == label).to_numpy(dtype=bool))
        violation = followup_violation(followup, baseline, label, baseline_label,
                                       "assessment_date", config, ("assessment_date", "score"))
        if violation is not None:
            _apply_violation(cleaner, violation)


# ---- stage 6: the limit on invalid rows ------------------------------------------------------


def _check_invalid_share(cleaner: _TableCleaner) -> None:
    """Stop in strict mode on any row-level drop, else when too many rows would go.

    Run last for each table, after its references are checked. Counts the drops marked as
    invalid rows (missing or unparsable values, unknown references; not duplicates) against
    ``input.strict`` and ``input.max_invalid_fraction``; a breach is a structural error.
    Records no ledger fates.
    """
    bad = cleaner.fates.row_level
    count = int(bad.sum())
    if not count:
        return
    rows = [int(r) for r in cleaner.fates.record_id[bad][:5]]
    reasons = Counter(cleaner.fates.drop_reason[bad])
    first_reason = cleaner.fates.drop_reason[bad][0]
    if cleaner.input_cfg.get("strict", False):
        cleaner.fail(cleaner.error(
            f"{first_reason} ({count} such row(s))",
            rows=rows,
            hint="input.strict is true, so rows are not dropped; fix the rows or set "
            "input.strict: false to drop them with a ledger entry",
        ))
        return
    limit = float(cleaner.input_cfg.get("max_invalid_fraction", 0.05))
    if count > limit * cleaner.n:
        common = "; ".join(f"{r} ({k}x)" for r, k in reasons.most_common(3))
        cleaner.fail(cleaner.error(
            f"{count} of {cleaner.n} rows ({100 * count / cleaner.n:.1f}%) would be dropped as "
            f"invalid, more than input.max_invalid_fraction ({100 * limit:g}%): the file is "
            f"probably malformed",
            rows=rows,
            hint=f"Most common reasons: {common}",
        ))


# ---- the stages in order, per kind of table ----------------------------------------------------


def _clean_simple(cleaner: _TableCleaner, spec: TableSpec) -> None:
    """Therapists, patients, sessions: the stages up to the range checks of ``spec``'s columns."""
    _parse_columns(cleaner)
    _check_structure(cleaner)
    _drop_exact_duplicates(cleaner)
    _apply_pending_row_drops(cleaner)
    _check_key_conflicts(cleaner, [spec.key], spec.key)
    cleaner.release_codes()
    _check_plausible_values(cleaner)


def _clean_long_outcomes(
    cleaner: _TableCleaner, config: Mapping[str, Any], patients: _TableCleaner | None
) -> None:
    """Long outcomes: the stages, with unknown episodes and repeated assessments dropped."""
    _parse_columns(cleaner)
    _check_structure(cleaner)
    _drop_exact_duplicates(cleaner)
    _apply_pending_row_drops(cleaner)
    _check_key_conflicts(cleaner, ["outcome_id"], "outcome_id")
    # Rows of unknown episodes go first: their repeated scores are not the study's data.
    # (No patients cleaner only when check-data could not read the patients table.)
    if patients is not None:
        _reference(cleaner, "episode_id", patients, "episode_id")
    _drop_repeated_assessments(cleaner)
    cleaner.release_codes()
    if not cleaner.has("instrument", "score"):
        return
    ranges = score_ranges(config)
    instrument = cleaner.values["instrument"]
    low = pd.Series(lookup(instrument, {k: v[0] for k, v in ranges.items()}).astype(float),
                    index=instrument.index)
    high = pd.Series(lookup(instrument, {k: v[1] for k, v in ranges.items()}).astype(float),
                     index=instrument.index)
    _set_out_of_range(cleaner, "score", low, high, label="score")


def _clean_wide_outcomes(cleaner: _TableCleaner, config: Mapping[str, Any]) -> None:
    """Wide outcomes (one row per episode): the stages, each score column range-checked."""
    _parse_columns(cleaner)
    _check_structure(cleaner)
    _drop_exact_duplicates(cleaner)
    _apply_pending_row_drops(cleaner)
    _check_key_conflicts(cleaner, ["episode_id"], "episode_id")
    cleaner.release_codes()
    ranges = score_ranges(config)
    for instrument in outcome_names(config):
        for timepoint in timepoint_labels(config):
            column = wide_score_column(instrument, timepoint)
            _set_out_of_range(cleaner, column, *ranges[instrument], label=column)


def _wide_to_long(cleaner: _TableCleaner, config: Mapping[str, Any]) -> pd.DataFrame:
    """One long row per non-empty score cell of a kept wide row (out-of-range cells included)."""
    kept = ~cleaner.fates.dropped
    parts = []
    for instrument in outcome_names(config):
        for timepoint in timepoint_labels(config):
            column = wide_score_column(instrument, timepoint)
            written = cleaner.raw[column].notna().to_numpy() & kept
            if not written.any():
                continue
            episode = cleaner.values.loc[written, "episode_id"]
            parts.append(
                pd.DataFrame(
                    {
                        "outcome_id": episode + f"_{instrument}_{timepoint}",
                        "episode_id": episode,
                        "assessment_date": (
                            cleaner.values.loc[written, wide_date_column(timepoint)]
                            if wide_date_column(timepoint) in cleaner.values.columns
                            else pd.NaT),
                        "instrument": instrument,
                        "timepoint": timepoint,
                        "score": cleaner.values.loc[written, column],
                        "record_id": cleaner.fates.record_id[written],
                    }
                )
            )
    if not parts:
        return _empty_long_outcomes()
    long = pd.concat(parts, ignore_index=True)
    # Stable sort keeps the instrument and time point order within each raw row.
    long = long.sort_values("record_id", kind="mergesort").reset_index(drop=True)
    return _long_dtypes(long)


def _long_dtypes(long: pd.DataFrame) -> pd.DataFrame:
    return long.astype(
        {
            "outcome_id": "str",
            "episode_id": "str",
            "assessment_date": "datetime64[us]",
            "instrument": "str",
            "timepoint": "str",
            "score": "float64",
            "record_id": "int64",
        }
    )


def _empty_long_outcomes() -> pd.DataFrame:
    columns = ["outcome_id", "episode_id", "assessment_date", "instrument", "timepoint", "score"]
    return _long_dtypes(pd.DataFrame({c: [] for c in [*columns, "record_id"]}))


def _validate_output(name: str, frame: pd.DataFrame, spec: TableSpec, config: Mapping[str, Any],
                     file: str, unique_record_id: bool = True) -> None:
    """The cleaned table must meet its contract; a failure here is a bug in this module."""
    present = tuple(c for c in spec.columns if c.name in frame.columns)
    schema = cleaned_schema(TableSpec(spec.name, present, spec.key), config, unique_record_id)
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        first = cases.iloc[0]
        raise DataError(
            file,
            f"cleaned {name} table breaks the contract: {first['check']} "
            f"(found {first['failure_case']!r})",
            column=None if pd.isna(first["column"]) else str(first["column"]),
            hint="This is a bug in trial_analysis.ingest.clean; please report it with the input",
        ) from None


def clean_tables(config: Mapping[str, Any], raw_dir: str | Path) -> CleanResult:
    """Read, validate and repair the four raw tables of a study.

    Parameters
    ----------
    config : mapping
        Validated study configuration (``input``, ``codes``, ``outcomes``, ``timepoints``).
    raw_dir : str or Path
        Folder holding the raw tables named in ``input.tables``.

    Returns
    -------
    CleanResult
        Cleaned tables (outcomes long) and the ledger, one row per raw record.

    Raises
    ------
    DataError
        For every structural problem, for row-level problems when ``input.strict`` is true,
        and when more than ``input.max_invalid_fraction`` of a table would be dropped.
    """
    specs = table_specs(config)
    # PostgreSQL queries are fetched side by side from the start; the tables are still read
    # (and their errors raised) in this order: therapists, patients, sessions, outcomes.
    with SourceReader(Path(raw_dir), config, specs) as reader:
        return _clean_all(config, specs, reader)


def _clean_all(config: Mapping[str, Any], specs: Mapping[str, TableSpec],
               reader: SourceReader) -> CleanResult:
    """The body of :func:`clean_tables`: read and clean each table, then the ledger."""
    cleaners: dict[str, _TableCleaner] = {}

    for name in ("therapists", "patients"):
        if name not in specs:
            continue
        cleaner = _cleaner(reader, config, specs[name])
        _clean_simple(cleaner, specs[name])
        _check_invalid_share(cleaner)
        cleaners[name] = cleaner
    patients = cleaners["patients"]
    if "patient_id" not in patients.values.columns:
        # No patient identifier in the file: one episode per patient (a trial's participant).
        patients.values["patient_id"] = patients.values["episode_id"]
        patients.columns.insert(1, specs["patients"].column("patient_id"))

    if "sessions" in specs:
        sessions = _cleaner(reader, config, specs["sessions"])
        _clean_simple(sessions, specs["sessions"])
        _reference(sessions, "episode_id", patients, "episode_id")
        if "therapists" in cleaners:
            _reference(sessions, "therapist_id", cleaners["therapists"], "therapist_id")
        _check_dates(sessions, patients)
        _check_invalid_share(sessions)
        cleaners["sessions"] = sessions

    wide = config["input"].get("outcomes_layout", "long") == "wide"
    outcome_spec = specs["outcomes"]
    if wide:
        file, frame = reader.read("outcomes")
        mapping = config["input"]["tables"]["outcomes"].get("columns") or {}
        outcomes = _TableCleaner(
            "outcomes", file, frame, wide_outcome_columns(config), "episode_id", mapping, config
        )
        _clean_wide_outcomes(outcomes, config)
    else:
        outcomes = _cleaner(reader, config, outcome_spec)
        _clean_long_outcomes(outcomes, config, patients)
    if wide:
        _reference(outcomes, "episode_id", patients, "episode_id")
    _check_dates(outcomes, patients)
    _check_invalid_share(outcomes)
    cleaners["outcomes"] = outcomes

    tables = {name: cleaners[name].kept_values()
              for name in ("therapists", "patients", "sessions") if name in cleaners}
    tables["outcomes"] = _wide_to_long(outcomes, config) if wide else outcomes.kept_values()
    if tables["outcomes"]["score"].notna().sum() == 0:
        raise DataError(
            outcomes.file,
            "no usable outcome scores: every score is missing, out of range or in a dropped row",
            column=outcomes.file_names.get("score", "score"),
        )
    for name, frame in tables.items():
        _validate_output(name, frame, specs[name], config, cleaners[name].file,
                         unique_record_id=not (wide and name == "outcomes"))
    if labels := _variable_labels(patients):
        tables["patients"].attrs["variable_labels"] = labels
    # A table the study does not have is written empty (its columns, no rows), so every
    # later step reads the same four files; the ledger has no records for it.
    for name in TABLES:
        if name not in tables:
            tables[name] = empty_table(name)

    ledger = pd.concat([cleaners[t].fates.frame() for t in TABLES if t in cleaners],
                       ignore_index=True)
    # Queries (never connection settings) and their row counts travel with the ledger.
    selections = {t: c.source_attrs["selection"] for t, c in cleaners.items()
                  if "selection" in c.source_attrs}
    if sources := describe_sources(config, {t: c.n for t, c in cleaners.items()}, selections):
        ledger.attrs["sources"] = sources
    for name in TABLES:
        if name in cleaners:
            cleaners[name].fates.log_counts()
    return CleanResult(tables=tables, ledger=ledger)


def _variable_labels(cleaner: _TableCleaner) -> dict[str, str]:
    """The file's variable labels (SAS, Stata, SPSS) under the canonical column names.

    Kept in the cleaned table's Parquet metadata for Table 1; empty for a file without
    labels, so such a study's outputs are the same as before.
    """
    labels = cleaner.source_attrs.get("variable_labels") or {}
    return {canonical: str(labels[file]) for canonical, file in cleaner.file_names.items()
            if str(labels.get(file, "")).strip()}


def empty_table(name: str) -> pd.DataFrame:
    """A cleaned table with no rows: the contract's columns and dtypes (therapists, sessions).

    Written for a table the study does not have (``input.tables.<name>: null``).
    """
    kinds = {
        "therapists": {"therapist_id": ID, "clinic_id": ID, "age": INTEGER, "sex": CODE,
                       "etmi_training_date": DATE},
        "sessions": {"session_id": ID, "episode_id": ID, "therapist_id": ID,
                     "session_date": DATE, "treatment_codes": CODES},
    }[name]
    frame = pd.DataFrame({c: pd.Series([], dtype=output_dtype(k)) for c, k in kinds.items()})
    frame["record_id"] = pd.Series([], dtype="int64")
    return frame


def run_clean(config: Mapping[str, Any], raw: Path, out: Path, ledger: Path) -> CleanResult:
    """CLI step ``clean``: clean the raw extract and write the tables and the ledger.

    Nothing is written unless every table cleans; each file is written atomically.

    Parameters
    ----------
    config : mapping
        Validated study configuration.
    raw : Path
        Folder of the raw extract.
    out : Path
        Folder for ``{therapists,patients,sessions,outcomes}.parquet``.
    ledger : Path
        Ledger file to write (Parquet).
    """
    result = clean_tables(config, raw)
    for name, frame in result.tables.items():
        write_parquet(frame, Path(out) / f"{name}.parquet")
    write_parquet(result.ledger, ledger)
    log.info("%s", result.summary())
    return result
