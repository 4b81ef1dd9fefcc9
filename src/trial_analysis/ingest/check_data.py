"""Command ``check-data``: every problem of a raw extract at once, in plain words, before a run.

The ``clean`` step stops at the first structural problem, which is right for a pipeline but
slow for a person fixing a new extract one error per run. This check reads every configured
raw table and runs the cleaning step's own table cleaners (:mod:`trial_analysis.ingest.clean`) in
their collecting mode, so it applies exactly the rules ``clean`` applies, from the same
column specifications (:func:`trial_analysis.ingest.schemas.table_specs`,
:func:`~trial_analysis.ingest.schemas.wide_outcome_columns`) and cannot disagree with it. It lists:

* **errors**, which would stop the pipeline: a file missing or unreadable; a canonical column
  missing after the column mapping, or a mapping entry naming a column the file lacks (with
  the closest header as a suggestion); a column whose values mostly fail to parse; codes,
  sexes, instrument names or time point labels outside the configured sets (with the closest
  allowed value); one key on rows with different content; more rows to drop than
  ``input.max_invalid_fraction`` allows; arm labels other than the two configured ones
  (``allocation.rule: column``); covariates or subgroups named in ``analysis``/``sensitivity``
  that are neither built-in analysis-table columns nor patients columns. With
  ``input.strict: true`` every row the cleaning step would drop is an error too, as it is for
  ``clean``.
* **warnings**, which the pipeline handles by itself and records in the ledger: rows it would
  drop (unparsable dates, missing required values, references to unknown episodes or
  therapists, exact duplicates) and values it would set missing (numbers that do not parse,
  scores outside their instrument's range), and every violation of a plausibility rule
  (``plausibility``: missing-value codes, values outside their plausible range, dates outside
  the study window or their episode, follow-ups dated before baseline); a rule whose action is
  ``stop`` lists its violations as an error.
* **notes**: repairs (stray whitespace or case) and columns the pipeline ignores.

Each problem names the file, the column (as the file names it), the first rows (1-based data
rows, as a spreadsheet counts them after the header) and at most three example values; no
other record content is printed. Tables whose entry in ``input.tables`` is null are skipped.
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trial_analysis import io
from trial_analysis.columns import analysis_columns
from trial_analysis.config import arm_levels
from trial_analysis.errors import DataError, bounded, closest_match, excerpt
from trial_analysis.ingest.clean import (
    FateEvent,
    _check_dates,
    _check_invalid_share,
    _clean_long_outcomes,
    _clean_simple,
    _clean_wide_outcomes,
    _reference,
    _TableCleaner,
)
from trial_analysis.ingest.schemas import (
    NUMBER,
    TABLES,
    ColumnSpec,
    table_specs,
    wide_outcome_columns,
)
from trial_analysis.ingest.sources import read_source, source_name

SEVERITIES: tuple[str, ...] = ("error", "warning", "note")
MAX_ROWS = 5  # row numbers shown per problem
CONFIG_SOURCE = "configuration vs data"


@dataclass(frozen=True)
class Problem:
    """One problem found in the raw extract.

    Attributes
    ----------
    file : str
        The file concerned (or ``configuration vs data`` for config lists that name no column).
    severity : str
        ``error`` (stops the pipeline), ``warning`` (handled and recorded in the ledger) or
        ``note`` (repaired or ignored).
    message : str
        The problem in plain words, quoting at most three example values.
    table : str, optional
        Canonical table name (``patients``, ...).
    column : str, optional
        The column as the file names it.
    rows : list of int
        The first rows concerned (1-based data rows), at most five.
    n_rows : int, optional
        How many rows are concerned, where counted.
    suggestion : str, optional
        What to do about it (a close match for a mistyped name, where there is one).
    """

    file: str
    severity: str
    message: str
    table: str | None = None
    column: str | None = None
    rows: list[int] = field(default_factory=list)
    n_rows: int | None = None
    suggestion: str | None = None

    def __post_init__(self) -> None:
        # A quoted value is shown as an excerpt: a cell may be megabytes long.
        object.__setattr__(self, "message", bounded(self.message))
        if self.suggestion is not None:
            object.__setattr__(self, "suggestion", bounded(self.suggestion))
        if self.column is not None:
            object.__setattr__(self, "column", excerpt(self.column))

    def describe(self) -> str:
        """The problem as one entry of the printed report."""
        where = []
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:MAX_ROWS])
            more = (self.n_rows or len(self.rows)) - min(len(self.rows), MAX_ROWS)
            where.append(f"row{'s' if len(self.rows) > 1 or more else ''} {shown}"
                         + (f" (and {more} more)" if more > 0 else ""))
        head = f"{self.severity}: " + (", ".join(where) + ": " if where else "") + self.message
        text = textwrap.fill(head, width=100, initial_indent="  ", subsequent_indent="      ")
        if self.suggestion:
            text += "\n" + textwrap.fill(self.suggestion, width=100, initial_indent="      -> ",
                                         subsequent_indent="         ")
        return text


@dataclass
class DataCheck:
    """The result of :func:`check_data`.

    Attributes
    ----------
    raw : str
        The folder checked.
    files : list of dict
        Per configured table: ``table``, ``file``, ``rows`` (None when unreadable).
    problems : list of Problem
        Every problem, grouped by file in table order, errors first within a file.
    """

    raw: str
    files: list[dict[str, Any]]
    problems: list[Problem]

    def count(self, severity: str) -> int:
        """Number of problems of ``severity``."""
        return sum(p.severity == severity for p in self.problems)

    @property
    def passed(self) -> bool:
        """True when nothing would stop the pipeline."""
        return self.count("error") == 0

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: ``file, table, column, severity, n_rows, rows, message,
        suggestion``."""
        columns = ["file", "table", "column", "severity", "n_rows", "rows", "message",
                   "suggestion"]
        return pd.DataFrame([asdict(p) for p in self.problems], columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report written by ``--out``."""
        return {
            "raw": self.raw,
            "passed": self.passed,
            "n_errors": self.count("error"),
            "n_warnings": self.count("warning"),
            "n_notes": self.count("note"),
            "files": self.files,
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        """The report for people: problems grouped per file, then the verdict."""
        lines = [f"Data check of {self.raw}"]
        groups = [(f["file"], f["table"], f["rows"], f.get("rows_in_source"))
                  for f in self.files]
        if any(p.file == CONFIG_SOURCE for p in self.problems):
            groups.append((CONFIG_SOURCE, None, None, None))
        for file, table, n_rows, of in groups:
            found = [p for p in self.problems if p.file == file]
            size = f"{table}, {n_rows} rows" if n_rows is not None else table
            if of is not None:
                size = f"{table}, {n_rows} of {of} BDS records selected"
            heading = f"{file}" + (f" ({size})" if size else "") + ": "
            counts = [f"{n} {s}{'s' if n > 1 else ''}"
                      for s in SEVERITIES if (n := sum(p.severity == s for p in found))]
            lines += ["", heading + (", ".join(counts) if counts else "no problems")]
            lines += [p.describe() for p in found]
        errors, warnings = self.count("error"), self.count("warning")
        lines.append("")
        if errors:
            lines.append(f"Result: {errors} problem(s) would stop the pipeline; "
                         f"{warnings} warning(s).")
        else:
            lines.append(f"Result: nothing would stop the pipeline; {warnings} warning(s) "
                         "(rows or values the cleaning step handles and records in the ledger).")
        return "\n".join(lines)


def _from_error(error: DataError, table: str | None, severity: str = "error") -> Problem:
    rows = [r for r in error.rows if isinstance(r, int | float)]
    return Problem(
        file=error.file, severity=severity, message=error.rule, table=table,
        column=error.column, rows=[int(r) for r in rows[:MAX_ROWS]],
        n_rows=len(error.rows) if error.rows else None, suggestion=error.hint,
    )


def _event_advice(event: FateEvent, config: Mapping[str, Any]) -> str | None:
    kind = event.kind
    if kind == "unparsable date":
        formats = ", ".join(config["input"].get("date_formats") or ["%Y-%m-%d"])
        return (f"Correct the dates, or add the file's date format to input.date_formats "
                f"(now: {formats})")
    if kind.endswith("not a number") or kind.endswith("not a whole number"):
        return "Numbers need a point as decimal mark and no units or text"
    if kind.endswith("out of range"):
        return "Check the values, or the valid range in the config (outcomes[].min/max)"
    if kind.endswith("missing-value code"):
        return ("Declared missing-value codes (plausibility.variables.<name>.sentinels) are "
                "read as missing")
    if kind.endswith("outside plausible range") or kind.endswith("implausible age"):
        return ("Check the values, or declare the plausible range and the action in "
                "plausibility.variables (set_missing, drop or stop)")
    if kind.endswith("study window") or kind.endswith("its episode") or kind.startswith(
            "follow-up dated"):
        return ("Check the dates and the date format, or the limits and the action in "
                "plausibility.dates")
    if " not in the " in kind:
        return "Check that the ids are written the same way in both files"
    if kind.startswith("missing "):
        return "These rows cannot be used without that value"
    return None


def _from_event(event: FateEvent, cleaner: _TableCleaner, config: Mapping[str, Any],
                strict: bool) -> Problem:
    n = event.count
    noun = "row" if n == 1 else "rows"
    if event.fate == "dropped":
        verb = f"{n} {noun} would be dropped"
        severity = "error" if strict and event.row_level else "warning"
    elif event.fate == "value_set_missing":
        verb = f"{n} value{'s' if n > 1 else ''} would be set missing"
        severity = "warning"
    else:
        verb = f"{n} {noun} would be repaired"
        severity = "note"
    # A repair's reason is the same for every row; a drop's quotes the value or row.
    examples = [] if event.fate == "repaired" else event.examples
    message = f"{verb} ({event.kind})" + (f"; e.g. {'; '.join(examples)}" if examples else "")
    advice = _event_advice(event, config)
    if severity == "error":
        advice = ("input.strict is true, so these rows stop the run: fix them, or set "
                  "input.strict: false to drop them with a ledger entry")
    column = cleaner.file_names.get(event.column, event.column) if event.column else None
    return Problem(file=cleaner.file, severity=severity, message=message, table=cleaner.table,
                   column=column, rows=event.rows, n_rows=n, suggestion=advice)


def _unchecked(file: str, table: str, column: str, target: str) -> Problem:
    return Problem(file=file, severity="note", table=table, column=column,
                   message=f"references to the {target} table not checked: that table could "
                   "not be read")


def _mapping_problems(file: str, table: str, mapping: Mapping[str, str],
                      columns: Sequence[ColumnSpec]) -> list[Problem]:
    """Mapping keys must be canonical names; the cleaning step would silently ignore others."""
    canonical = [c.name for c in columns]
    problems = []
    for key in mapping:
        if key in canonical:
            continue
        match = closest_match(key, canonical)
        problems.append(Problem(
            file=file, severity="warning", table=table,
            message=f"input.tables.{table}.columns maps '{key}', which is not a column of the "
            f"{table} table, so the mapping is ignored",
            suggestion=(f"Did you mean '{match}'? " if match else "")
            + f"The keys are the pipeline's names: {', '.join(canonical)}",
        ))
    return problems


def _table_problems(cleaner: _TableCleaner, collected: list[DataError], header: Sequence[str],
                    config: Mapping[str, Any], strict: bool) -> list[Problem]:
    errors = [_from_error(e, cleaner.table) for e in collected]
    events = [_from_event(e, cleaner, config, strict) for e in cleaner.fates.events or []]
    used = set(cleaner.file_names.values())
    ignored = [str(c) for c in header if str(c) not in used]
    notes = []
    if ignored:
        notes.append(Problem(
            file=cleaner.file, severity="note", table=cleaner.table,
            message=f"columns the pipeline does not use: {', '.join(ignored)}",
        ))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted([*errors, *events, *notes], key=lambda p: order[p.severity])


def _outcome_scores_present(cleaner: _TableCleaner, columns: Iterable[str]) -> bool:
    kept = ~cleaner.fates.dropped
    present = [c for c in columns if cleaner.has(c)]
    return any(cleaner.values.loc[kept, c].notna().any() for c in present)


def _arm_problems(config: Mapping[str, Any], patients: _TableCleaner,
                  header: Sequence[str]) -> list[Problem]:
    """With ``allocation.rule: column``, every patient's arm must be one of the two labels."""
    alloc = config["allocation"]
    column = alloc.get("column")
    if alloc.get("rule") != "column" or not column:
        return []
    # (intervention, control) with two arms; every arm of allocation.arms with more
    levels = arm_levels(config)
    labels = (levels[1], levels[0]) if len(levels) == 2 else tuple(levels)
    if not patients.has(column):
        match = closest_match(column, header)
        return [Problem(
            file=patients.file, severity="error", table="patients", column=column,
            message="allocation.column names a column the patients file lacks",
            suggestion=f"Did you mean '{match}'?" if match else
            f"The file has columns: {', '.join(map(str, header))}",
        )]
    values = patients.values[column]
    in_file = patients.file_names[column]
    problems = []
    unknown = (values.notna() & ~values.isin(labels)).to_numpy()
    if unknown.any():
        distinct = list(dict.fromkeys(values[unknown].astype(str)))
        pairs = [(v, closest_match(v, labels)) for v in distinct[:3]]
        hints = [f"'{v}' may be '{m}'" for v, m in pairs if m is not None]
        problems.append(Problem(
            file=patients.file, severity="error", table="patients", column=in_file,
            message=(f"arm values must be '{labels[0]}' or '{labels[1]}' (allocation.intervention"
                     " and allocation.control)" if len(labels) == 2 else
                     "arm values must be one of allocation.arms "
                     + ", ".join(f"'{a}'" for a in labels))
            + f"; found {', '.join(repr(v) for v in distinct[:3])}",
            rows=[int(r) for r in patients.fates.record_id[unknown][:MAX_ROWS]],
            n_rows=int(unknown.sum()),
            suggestion="; ".join(hints) + ". " * bool(hints)
            + "Recode the column, or change the arm labels in allocation",
        ))
    missing = (values.isna() & ~patients.fates.dropped).to_numpy()
    if missing.any():
        problems.append(Problem(
            file=patients.file, severity="warning", table="patients", column=in_file,
            message=f"{int(missing.sum())} row(s) have no arm; the allocation step stops if any "
            "of these patients is eligible",
            rows=[int(r) for r in patients.fates.record_id[missing][:MAX_ROWS]],
            n_rows=int(missing.sum()),
        ))
    return problems


def _named_columns(config: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """Config lists that name analysis-table columns, with the key each comes from."""
    analysis = config.get("analysis", {})
    named = [
        ("analysis.covariates", list(analysis.get("covariates") or [])),
        ("analysis.subgroups", list(analysis.get("subgroups") or [])),
        ("analysis.sessions.covariates",
         list((analysis.get("sessions") or {}).get("covariates") or [])),
    ]
    sensitivity = config.get("sensitivity") or {}
    analyses = sensitivity.get("analyses") or []
    if "propensity" in analyses:
        named.append(("sensitivity.propensity.covariates",
                      list((sensitivity.get("propensity") or {}).get("covariates") or [])))
    if {"multiple_imputation", "tipping_point"} & set(analyses):
        named.append(("sensitivity.multiple_imputation.auxiliary",
                      list((sensitivity.get("multiple_imputation") or {}).get("auxiliary")
                           or [])))
    return named


def _covariate_problems(config: Mapping[str, Any], patients: _TableCleaner | None,
                        header: Sequence[str]) -> list[Problem]:
    """Covariates and subgroups must be built-in analysis columns or patients columns."""
    if patients is None:
        return []  # the patients file's own problem is reported; nothing to compare with
    built_in = list(analysis_columns(config))
    present = [*patients.file_names, *map(str, header)]
    known = set(built_in) | set(present)
    problems = []
    for key, names in _named_columns(config):
        for name in names:
            if name in known:
                continue
            match = closest_match(name, [*built_in, *patients.file_names])
            problems.append(Problem(
                file=CONFIG_SOURCE, severity="error", column=name,
                message=f"{key} names '{name}', which is neither a built-in column of the "
                f"analysis table nor a column of the patients file ({patients.file})",
                suggestion=f"Did you mean '{match}'?" if match else
                f"Built-in columns: {', '.join(built_in)}",
            ))
    return problems


def check_data(config: Mapping[str, Any], raw_dir: str | Path) -> DataCheck:
    """Check a raw extract against a study configuration and list every problem.

    Parameters
    ----------
    config : mapping
        Validated study configuration.
    raw_dir : str or Path
        Folder holding the raw tables named in ``input.tables``.

    Returns
    -------
    DataCheck
        Every problem found, per file; :attr:`DataCheck.passed` is False when any would stop
        the pipeline.
    """
    raw_dir = Path(raw_dir)
    strict = bool(config["input"].get("strict", False))
    # The cleaners run non-strict so that each dropped row is listed; strict mode turns
    # those rows into errors here (clean stops on the first of them).
    lenient = copy.deepcopy(dict(config))
    lenient["input"] = dict(lenient["input"], strict=False)
    specs = table_specs(config)
    wide = config["input"].get("outcomes_layout", "long") == "wide"
    cleaners: dict[str, _TableCleaner] = {}
    headers: dict[str, list[str]] = {}
    files: list[dict[str, Any]] = []
    problems: list[Problem] = []

    for name in TABLES:
        entry = (config["input"].get("tables") or {}).get(name)
        if entry is None or name not in specs:
            continue  # a study without this table
        spec = specs[name]
        columns, key = spec.columns, spec.key
        if name == "outcomes" and wide:
            columns, key = tuple(wide_outcome_columns(config)), "episode_id"
        path = source_name(config, raw_dir, name)
        try:
            file, frame = read_source(raw_dir, lenient, name)
        except DataError as error:
            files.append({"table": name, "file": path, "rows": None})
            problems.append(_from_error(error, name))
            continue
        files.append({"table": name, "file": file, "rows": len(frame)})
        if "selection" in frame.attrs:  # an ADaM BDS dataset: the records selected of all
            files[-1]["rows_in_source"] = frame.attrs["selection"]["rows_in_source"]
        headers[name] = [str(c) for c in frame.columns]
        mapping = entry.get("columns") or {}
        collected: list[DataError] = []
        cleaner = _TableCleaner(name, file, frame, columns, key, mapping, lenient,
                                collect=collected)
        patients = cleaners.get("patients")
        if name == "outcomes" and wide:
            _clean_wide_outcomes(cleaner, lenient)
            if patients is not None:
                _reference(cleaner, "episode_id", patients, "episode_id")
        elif name == "outcomes":
            _clean_long_outcomes(cleaner, lenient, patients)
        else:
            _clean_simple(cleaner, spec)
            if name == "sessions":
                for column, target in spec.references.items():
                    if target in cleaners:
                        _reference(cleaner, column, cleaners[target], cleaners[target].key)
                    elif (config["input"].get("tables") or {}).get(target) is not None:
                        problems.append(_unchecked(file, name, column, target))
        if name == "outcomes" and patients is None:
            problems.append(_unchecked(file, name, "episode_id", "patients"))
        if name in ("sessions", "outcomes"):
            _check_dates(cleaner, patients)
        _check_invalid_share(cleaner)
        cleaners[name] = cleaner
        problems += _mapping_problems(file, name, mapping, columns)
        problems += _table_problems(cleaner, collected, headers[name], config, strict)
        if name == "outcomes":
            scores = [c.name for c in columns if c.kind == NUMBER] if wide else ["score"]
            if any(cleaner.has(c) for c in scores) and not _outcome_scores_present(
                cleaner, scores
            ):
                problems.append(Problem(
                    file=file, severity="error", table=name,
                    message="no usable outcome scores: every score is missing, unparsable or "
                    "in a dropped row",
                ))

    if "patients" in cleaners:
        problems += _arm_problems(config, cleaners["patients"], headers["patients"])
    problems += _covariate_problems(config, cleaners.get("patients"), headers.get("patients", []))
    # Group per file in table order, errors first within a file (stable otherwise).
    order = {f["file"]: i for i, f in enumerate(files)}
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    problems.sort(key=lambda p: (order.get(p.file, len(order)), rank[p.severity]))
    return DataCheck(raw=str(raw_dir), files=files, problems=problems)


def run_check_data(config: Mapping[str, Any], raw: Path | None = None,
                   out: Path | None = None) -> DataCheck:
    """CLI command ``check-data``: print the report, optionally write it as JSON.

    Parameters
    ----------
    config : mapping
        Validated study configuration.
    raw : Path, optional
        Folder of the raw extract; default ``paths.raw`` of the config.
    out : Path, optional
        JSON report to write (``passed``, counts, files and every problem).

    Raises
    ------
    DataError
        After printing the report, when any problem would stop the pipeline (exit status 2).
    """
    raw_dir = Path(raw) if raw is not None else Path(config["paths"]["raw"])
    result = check_data(config, raw_dir)
    print(result.summary())
    if out is not None:
        io.write_json(result.to_dict(), out)
    if not result.passed:
        raise DataError(
            str(raw_dir),
            f"{result.count('error')} problem(s) would stop the pipeline (listed above)",
        )
    return result


__all__: Sequence[str] = ("DataCheck", "Problem", "check_data", "run_check_data")
