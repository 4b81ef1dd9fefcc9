"""Column specifications and pandera schemas of the raw and cleaned tables, built from config.

One :class:`TableSpec` per raw table says, for each canonical column, what kind of value it
holds (identifier, code, date, number, ...), whether a row without it is unusable, and which
values are allowed. :mod:`trial_analysis.ingest.clean` drives its repairs from these specifications;
the pandera schemas built from the same specifications check

* the *structural* rules that stop a run whatever the mode (allowed codes, 0/1 flags, whole
  non-negative counts), on the normalised raw values, and
* the contract of the *cleaned* tables (dtypes, unique keys, missing-value rules, instrument
  ranges), on the output, so a cleaning bug can never reach the next step silently.

Every check carries its rule in plain words (pandera's ``error=``), which is what the
:class:`~trial_analysis.errors.DataError` messages quote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from trial_analysis.config import (
    all_timepoint_labels,
    has_table,
    outcome_names,
)
from trial_analysis.ingest.plausibility import variable_rule

TABLES: tuple[str, ...] = ("therapists", "patients", "sessions", "outcomes")

# Kinds of column. The cleaning step parses and repairs each kind in one way.
ID = "id"  # identifier: stripped, upper-cased
CODE = "code"  # one code from a fixed set, matched ignoring case and stray whitespace
CODES = "codes"  # several codes joined by codes.separator
DATE = "date"
NUMBER = "number"
INTEGER = "integer"
FLAG = "flag"  # 0/1
COUNT = "count"  # whole number >= 0
TEXT = "text"  # kept as given, stripped


@dataclass(frozen=True)
class ColumnSpec:
    """What one canonical column holds.

    Attributes
    ----------
    name : str
        Canonical column name.
    kind : str
        One of ``id, code, codes, date, number, integer, flag, count, text``.
    required : bool
        A row with this value missing (or unparsable, for dates) cannot be used and is dropped.
    allowed : tuple of str, optional
        Allowed values of a ``code`` column, or of each code in a ``codes`` column, in their
        canonical spelling.
    value_range : tuple of float, optional
        Valid range (inclusive). Outcome scores outside are set missing (never clipped);
        other columns take it from their plausibility rule, whose action decides.
    optional_column : bool
        The column may be absent from the file.
    """

    name: str
    kind: str
    required: bool = False
    allowed: tuple[str, ...] | None = None
    value_range: tuple[float, float] | None = None
    optional_column: bool = False


@dataclass(frozen=True)
class TableSpec:
    """The columns of one raw table and the references it makes to other tables."""

    name: str
    columns: tuple[ColumnSpec, ...]
    key: str
    references: Mapping[str, str] = field(default_factory=dict)  # column -> referenced table

    def column(self, name: str) -> ColumnSpec:
        """The specification of column ``name``."""
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """Canonical column names in contract order."""
        return [c.name for c in self.columns]


def score_ranges(config: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Valid ``(min, max)`` score range of each configured instrument."""
    return {o["name"]: (float(o["min"]), float(o["max"])) for o in config["outcomes"]}


def timepoint_labels(config: Mapping[str, Any]) -> list[str]:
    """Time point labels in order: baseline, then every follow-up."""
    return all_timepoint_labels(config)


def wide_score_column(instrument: str, timepoint: str) -> str:
    """Name of the score column of ``instrument`` at ``timepoint`` in the wide layout."""
    return f"{instrument}_{timepoint}"


def wide_date_column(timepoint: str) -> str:
    """Name of the assessment date column of ``timepoint`` in the wide layout."""
    return f"{timepoint}_date"


_VARIABLE_KINDS = {"number": NUMBER, "integer": INTEGER, "flag": FLAG, "category": TEXT}
# Built-in patient columns with a fixed kind and rule (the default study's extract).
_BUILTIN_PATIENT_COLUMNS: dict[str, ColumnSpec] = {
    "sex": ColumnSpec("sex", CODE, allowed=("F", "M")),
    "diagnosis_codes": ColumnSpec("diagnosis_codes", CODES),
    "symptom_duration_weeks": ColumnSpec("symptom_duration_weeks", NUMBER),
    "depression": ColumnSpec("depression", FLAG),
    "anxiety": ColumnSpec("anxiety", FLAG),
    "bmi": ColumnSpec("bmi", NUMBER),
    "ses_score": ColumnSpec("ses_score", NUMBER),
}


def used_patient_variables(config: Mapping[str, Any]) -> set[str]:
    """Patient columns the configured analysis reads: they must be in the file.

    Covariates, subgroups, cluster levels that are patient columns, the covariates of the
    sessions model and, when those analyses run, of the propensity and imputation models.
    """
    analysis = config.get("analysis", {})
    used = {*analysis.get("covariates", []), *analysis.get("subgroups", []),
            *analysis.get("random_effects", []),
            *analysis.get("sessions", {}).get("covariates", [])}
    sensitivity = config.get("sensitivity") or {}
    analyses = set(sensitivity.get("analyses", []))
    if "propensity" in analyses:
        used |= set(sensitivity.get("propensity", {}).get("covariates", []))
    if analyses & {"multiple_imputation", "tipping_point"}:
        used |= set(sensitivity.get("multiple_imputation", {}).get("auxiliary", []))
    used |= set(_filter_columns(config))
    return used - {"patient", "therapist", "clinic", "n_sessions"}


def _filter_columns(config: Mapping[str, Any]) -> list[str]:
    """Patient columns the row filters (``eligibility.filters``) read."""
    filters = (config.get("eligibility") or {}).get("filters") or []
    return list(dict.fromkeys(str(f["column"]) for f in filters))


def _patient_columns(config: Mapping[str, Any]) -> list[ColumnSpec]:
    """The patients table's columns: what the eligibility rules and the analysis need.

    ``referral_date`` and ``birth_date`` are required (rows without them are dropped) when an
    eligibility rule needs them; ``patient_id`` may be absent when ``first_episode_only`` is
    off (one episode per patient: it is then the episode id); ``age`` may be given directly
    instead of a birth date. Built-in covariates must be present when the analysis uses them
    and are optional otherwise;
    variables declared in ``input.tables.patients.variables`` must be present.
    """
    elig = config.get("eligibility", {})
    window = elig.get("window_start") is not None or elig.get("window_end") is not None
    declared = config["input"]["tables"]["patients"].get("variables") or {}
    used = used_patient_variables(config)
    age_given = "age" in declared
    # Age at referral is derived from the two dates unless the file gives it.
    derive_age = not age_given and (elig.get("min_age", 18) is not None or "age" in used)
    needs_referral = window or bool(elig.get("first_episode_only", True)) or derive_age
    columns = [
        ColumnSpec("episode_id", ID, required=True),
        # Without the first-episode rule an episode is a patient: the id may then be absent.
        ColumnSpec("patient_id", ID, required=True,
                   optional_column=not elig.get("first_episode_only", True)),
        ColumnSpec("referral_date", DATE, required=needs_referral,
                   optional_column=not needs_referral),
        ColumnSpec("birth_date", DATE, required=derive_age, optional_column=not derive_age),
    ]
    for name, spec in _BUILTIN_PATIENT_COLUMNS.items():
        if name in declared:
            continue
        needed = name in used or (name == "diagnosis_codes"
                                  and elig.get("require_clbp_code", True))
        columns.append(dataclasses.replace(spec, optional_column=not needed))
    for name, kind in declared.items():
        columns.append(ColumnSpec(name, _VARIABLE_KINDS[kind]))
    columns.append(ColumnSpec("n_sessions", COUNT, optional_column=True))
    return columns


def table_specs(config: Mapping[str, Any]) -> dict[str, TableSpec]:
    """Column specifications of the raw tables the study has (outcomes in the long layout).

    ``therapists`` and ``sessions`` are left out when ``input.tables`` sets them to null. The
    patients table may carry an optional ``n_sessions`` column (a whole, non-negative count
    of attended sessions, when the extract reports one) and the arm column named by
    ``allocation.column`` (kept as text) when ``allocation.rule`` is ``column``; the column
    of each row filter (``eligibility.filters``) must be there, kept as text unless declared.
    """
    codes = config.get("codes", {})
    treatments = tuple(str(c).strip().upper() for c in codes.get("treatments", []))
    sexes = ("F", "M")
    specs: list[TableSpec] = []
    if has_table(config, "therapists"):
        specs.append(TableSpec(
            "therapists",
            (
                ColumnSpec("therapist_id", ID, required=True),
                ColumnSpec("clinic_id", ID),
                ColumnSpec("age", INTEGER),
                ColumnSpec("sex", CODE, allowed=sexes),
                ColumnSpec("etmi_training_date", DATE),
            ),
            key="therapist_id",
        ))
    patient_columns = _patient_columns(config)
    arm_column = config.get("allocation", {}).get("column")
    if arm_column and arm_column not in {c.name for c in patient_columns}:
        patient_columns.append(ColumnSpec(arm_column, TEXT, optional_column=True))
    # A row filter's column is read even when it is not declared, and must be in the file.
    for name in _filter_columns(config):
        if name not in {c.name for c in patient_columns}:
            patient_columns.append(ColumnSpec(name, TEXT))
        elif name == arm_column:
            patient_columns = [dataclasses.replace(c, optional_column=False)
                               if c.name == name else c for c in patient_columns]
    specs.append(TableSpec("patients", tuple(patient_columns), key="episode_id"))
    if has_table(config, "sessions"):
        specs.append(TableSpec(
            "sessions",
            (
                ColumnSpec("session_id", ID, required=True),
                ColumnSpec("episode_id", ID, required=True),
                ColumnSpec("therapist_id", ID, required=True),
                ColumnSpec("session_date", DATE, required=True),
                ColumnSpec("treatment_codes", CODES, allowed=treatments),
            ),
            key="session_id",
            references={"episode_id": "patients", "therapist_id": "therapists"},
        ))
    specs.append(TableSpec(
        "outcomes",
        (
            ColumnSpec("outcome_id", ID, required=True, optional_column=True),
            ColumnSpec("episode_id", ID, required=True),
            ColumnSpec("assessment_date", DATE, optional_column=True),
            ColumnSpec("instrument", CODE, required=True, allowed=tuple(outcome_names(config))),
            ColumnSpec("timepoint", CODE, required=True, allowed=tuple(timepoint_labels(config))),
            ColumnSpec("score", NUMBER),
        ),
        key="outcome_id",
        references={"episode_id": "patients"},
    ))
    return {t.name: _with_plausible_ranges(t, config) for t in specs}


def _with_plausible_ranges(spec: TableSpec, config: Mapping[str, Any]) -> TableSpec:
    """Numeric columns get the range of their plausibility rule (``plausibility.variables``).

    The cleaned table's contract then checks that no value outside it survives cleaning.
    """
    columns = []
    for col in spec.columns:
        rule = variable_rule(config, spec.name, col.name) if col.kind in (
            NUMBER, INTEGER, COUNT) else None
        if rule is not None:
            col = dataclasses.replace(col, value_range=tuple(rule["range"]))
        columns.append(col)
    return dataclasses.replace(spec, columns=tuple(columns))


def wide_outcome_columns(config: Mapping[str, Any]) -> list[ColumnSpec]:
    """Canonical columns of the wide outcomes layout: episode, a date and scores per time point."""
    columns = [ColumnSpec("episode_id", ID, required=True)]
    for timepoint in timepoint_labels(config):
        # Assessment dates are informative but not needed by any rule: optional.
        columns.append(ColumnSpec(wide_date_column(timepoint), DATE, optional_column=True))
    ranges = score_ranges(config)
    for instrument in outcome_names(config):
        for timepoint in timepoint_labels(config):
            columns.append(
                ColumnSpec(
                    wide_score_column(instrument, timepoint), NUMBER, value_range=ranges[instrument]
                )
            )
    return columns


def lookup(series: pd.Series, mapping: Mapping[Any, Any], default: Any = np.nan) -> np.ndarray:
    """``series.map(mapping)`` as an array, deciding each distinct value once.

    ``Series.map`` calls back into Python for every row of Arrow-backed text; a registry's
    few instruments or code combinations over millions of rows need one decision each.
    Values not in ``mapping``, and missing values, get ``default``.
    """
    codes, uniques = pd.factorize(series)
    table = np.array([mapping.get(value, default) for value in uniques] + [default])
    return table[codes]  # code -1 (missing) takes the last entry


def _codes_within(allowed: tuple[str, ...], separator: str) -> pa.Check:
    """Check that every code of a multi-code cell is in ``allowed``.

    Decided once per distinct cell value: a registry extract repeats a few hundred code
    combinations over millions of rows.
    """
    allowed_set = set(allowed)

    def check(series: pd.Series) -> pd.Series:
        codes, values = pd.factorize(series)
        ok = np.array([all(part in allowed_set for part in str(v).split(separator))
                       for v in values] + [True], dtype=bool)
        return pd.Series(ok[codes], index=series.index)  # missing (code -1) passes

    return pa.Check(check, error=f"codes must be among {', '.join(allowed)}")


def structural_schema(spec: TableSpec, config: Mapping[str, Any]) -> pa.DataFrameSchema:
    """Schema of the rules that stop a run in any mode, applied to normalised raw values.

    Unknown codes, flags other than 0/1 and impossible counts mean the extract was coded
    differently from what the configuration describes; dropping the rows would hide that.
    """
    separator = config.get("codes", {}).get("separator", ";")
    columns: dict[str, pa.Column] = {}
    for col in spec.columns:
        checks: list[pa.Check] = []
        if col.kind == CODE and col.allowed is not None:
            checks.append(
                pa.Check.isin(
                    list(col.allowed), error=f"values must be one of {', '.join(col.allowed)}"
                )
            )
        elif col.kind == CODES and col.allowed is not None:
            checks.append(_codes_within(col.allowed, separator))
        elif col.kind == FLAG:
            checks.append(pa.Check.isin([0, 1], error="values must be 0 or 1"))
        elif col.kind == COUNT:
            checks.append(
                pa.Check(
                    lambda s: (s >= 0) & (s == np.floor(s)),
                    error="session counts must be whole numbers of 0 or more",
                )
            )
        if checks:
            columns[col.name] = pa.Column(nullable=True, checks=checks, required=False)
    return pa.DataFrameSchema(columns, strict=False)


_OUTPUT_DTYPES = {
    ID: "str",
    CODE: "str",
    CODES: "str",
    TEXT: "str",
    DATE: "datetime64[us]",
    NUMBER: "float64",
    INTEGER: "Int64",
    FLAG: "Int64",
    COUNT: "Int64",
}


def output_dtype(kind: str) -> str:
    """The dtype a column of ``kind`` has in the cleaned tables."""
    return _OUTPUT_DTYPES[kind]


def cleaned_schema(
    spec: TableSpec, config: Mapping[str, Any], unique_record_id: bool = True
) -> pa.DataFrameSchema:
    """Contract of a cleaned table: dtypes, unique key, required values, score ranges.

    ``unique_record_id`` is false for outcomes read in the wide layout, where one raw row
    (one ``record_id``) gives a long row per score.
    """
    columns: dict[str, pa.Column] = {}
    for col in spec.columns:
        checks: list[pa.Check] = []
        if col.value_range is not None:
            low, high = col.value_range
            checks.append(
                pa.Check.in_range(low, high, error=f"values must lie in {low:g}-{high:g}")
            )
        columns[col.name] = pa.Column(
            output_dtype(col.kind),
            checks=checks,
            nullable=not col.required,
            unique=col.name == spec.key,
            required=not col.optional_column,
        )
    frame_checks: list[pa.Check] = []
    if spec.name == "outcomes":
        ranges = score_ranges(config)
        frame_checks.append(
            pa.Check(
                lambda frame: _scores_in_range(frame, ranges),
                error="scores must lie in their instrument's range",
            )
        )
    columns["record_id"] = pa.Column("int64", pa.Check.ge(1), unique=unique_record_id)
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=True, ordered=False)


def _scores_in_range(
    frame: pd.DataFrame, ranges: Mapping[str, tuple[float, float]]
) -> pd.Series:
    low = lookup(frame["instrument"], {k: v[0] for k, v in ranges.items()}).astype(float)
    high = lookup(frame["instrument"], {k: v[1] for k, v in ranges.items()}).astype(float)
    score = frame["score"]
    return score.isna() | ((score >= low) & (score <= high))
