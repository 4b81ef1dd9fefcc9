"""Plausibility rules: what a parsed value must be to be used (config section ``plausibility``).

Every numeric variable has a valid range and may have missing-value codes (sentinels such as
-999); the built-in columns' rules are :data:`trial_analysis.config.BUILTIN_PLAUSIBILITY`,
and a study declares its own in ``plausibility.variables``. Dates are checked against the
study window and against their episode (a session or assessment within a margin of the
referral), a follow-up assessment must not be dated before the baseline one, and the birth
date must give an age within the age range.

This module only finds violations: each check returns :class:`Violation` records (rows, the
rule, the ledger reason per row, the configured action) computed with array operations, and
:mod:`trial_analysis.ingest.clean` turns each into a ledger fate (``value_set_missing`` or
``dropped``) or a :class:`~trial_analysis.errors.DataError`, so ``clean`` and ``check-data``
apply the same rules the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.config import plausibility_variables

# The therapists table's age has its own rule name (the patients' age is the patient's).
_TABLE_RULE_NAMES: dict[tuple[str, str], str] = {("therapists", "age"): "therapist_age"}


@dataclass(frozen=True)
class Violation:
    """Rows of one table that break one plausibility rule.

    Attributes
    ----------
    rule : str
        The rule's configuration key (``plausibility.variables.bmi.range``), named in every
        ledger reason and error.
    kind : str
        What happened, in a few words (the ledger count's key and check-data's label).
    column : str
        Canonical column of the offending value.
    mask : ndarray of bool
        The rows breaking the rule.
    reasons : callable
        Ledger reason of each row, given the rows' positions; quotes the value and the limit.
    action : str
        ``set_missing``, ``drop`` or ``stop``.
    clear : tuple of str
        Columns set missing by ``set_missing`` (the value, and for an assessment its score).
    """

    rule: str
    kind: str
    column: str
    mask: np.ndarray
    reasons: Callable[[np.ndarray], Sequence[str] | pd.Series]
    action: str
    clear: tuple[str, ...]

    def config_key(self) -> str:
        """Where the rule's action is set (``plausibility.variables.bmi``)."""
        return self.rule.rsplit(".", 1)[0] if self.rule.startswith(
            "plausibility.variables.") else self.rule


def rule_name(table: str, column: str) -> str:
    """Name of the plausibility rule of ``column`` of ``table`` (``therapist_age``, ``bmi``)."""
    return _TABLE_RULE_NAMES.get((table, column), column)


def variable_rule(config: Mapping[str, Any], table: str, column: str) -> dict[str, Any] | None:
    """The rule (``range``, ``sentinels``, ``action``) of a numeric column, or None.

    Patients columns and the therapists' ``age`` have rules; the session count
    (``n_sessions``) too. Outcome scores are ranged by ``outcomes[].min/max`` instead.
    """
    if table not in ("patients", "therapists"):
        return None
    if table == "therapists" and column != "age":
        return None
    return plausibility_variables(config).get(rule_name(table, column))


def _numbers(values: pd.Series) -> pd.Series:
    """Numbers as people write them: 130 rather than 130.0."""
    as_float = values.astype(float).to_numpy()
    whole = np.isfinite(as_float) & (as_float == np.round(as_float))
    text = pd.Series(as_float.astype(str), index=values.index, dtype=object)
    text[whole] = as_float[whole].astype(np.int64).astype(str)
    return text


def range_text(low: float, high: float) -> str:
    """``0-120``, ``at least 0`` or ``at most 120``."""
    if np.isinf(low) and np.isinf(high):
        return "any value"
    if np.isinf(high):
        return f"at least {low:g}"
    if np.isinf(low):
        return f"at most {high:g}"
    return f"{low:g}-{high:g}"


def _dates(values: pd.Series) -> pd.Series:
    return values.dt.strftime("%Y-%m-%d").astype(object)


def sentinel_violation(values: pd.Series, column: str, rule: Mapping[str, Any],
                       name: str) -> Violation | None:
    """Values equal to one of the rule's missing-value codes: always set missing."""
    codes = list(rule["sentinels"])
    if not codes:
        return None
    mask = values.isin(codes).to_numpy(dtype=bool)
    if not mask.any():
        return None
    key = f"plausibility.variables.{name}.sentinels"
    return Violation(
        key, f"{column} missing-value code", column, mask,
        lambda pos: f"{column} " + _numbers(values.iloc[pos]) + f" is a missing-value code ({key})",
        "set_missing", (column,),
    )


def range_violation(values: pd.Series, column: str, rule: Mapping[str, Any],
                    name: str) -> Violation | None:
    """Values outside the rule's range (never clipped)."""
    low, high = rule["range"]
    mask = (values.notna() & ((values < low) | (values > high))).to_numpy(dtype=bool)
    if not mask.any():
        return None
    key = f"plausibility.variables.{name}.range"
    limits = range_text(low, high)
    return Violation(
        key, f"{column} outside plausible range", column, mask,
        lambda pos: f"{column} " + _numbers(values.iloc[pos])
        + f" outside the plausible range {limits} ({key})",
        rule["action"], (column,),
    )


def completed_years(birth: pd.Series, at: pd.Series) -> pd.Series:
    """Completed calendar years between ``birth`` and ``at`` (the birthday itself counts)."""
    years = at.dt.year - birth.dt.year
    before_birthday = (at.dt.month * 100 + at.dt.day) < (birth.dt.month * 100 + birth.dt.day)
    return (years - before_birthday.astype(int)).astype("int64")


def birth_date_violation(birth: pd.Series, referral: pd.Series,
                         config: Mapping[str, Any]) -> Violation | None:
    """Birth dates that give an age at referral outside the age range."""
    rule = plausibility_variables(config)["age"]
    low, high = rule["range"]
    both = (birth.notna() & referral.notna()).to_numpy(dtype=bool)
    if not both.any():
        return None
    age = pd.Series(np.nan, index=birth.index)
    age[both] = completed_years(birth[both], referral[both]).astype(float)
    mask = (both & ((age < low) | (age > high))).to_numpy(dtype=bool)
    if not mask.any():
        return None
    key = "plausibility.variables.age.range"
    limits = range_text(low, high)
    return Violation(
        key, "birth_date gives an implausible age", "birth_date", mask,
        lambda pos: "birth_date " + _dates(birth.iloc[pos]) + " gives age "
        + _numbers(age.iloc[pos]) + " at referral " + _dates(referral.iloc[pos])
        + f", outside the plausible range {limits} ({key})",
        rule["action"], ("birth_date",),
    )


def study_window(config: Mapping[str, Any]) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """First and last plausible date of a session or assessment (margin included)."""
    rule = ((config.get("plausibility") or {}).get("dates") or {}).get("study_window") or {}
    elig = config.get("eligibility") or {}
    margin = pd.Timedelta(days=int(rule.get("margin_days", 730)))
    start = rule.get("start") or elig.get("window_start")
    end = rule.get("end") or elig.get("window_end")
    return (None if start is None else pd.Timestamp(start) - margin,
            None if end is None else pd.Timestamp(end) + margin)


def _date_rule(config: Mapping[str, Any], name: str, default_action: str) -> dict[str, Any]:
    rule = dict(((config.get("plausibility") or {}).get("dates") or {}).get(name) or {})
    rule.setdefault("action", default_action)
    return rule


def window_violation(dates: pd.Series, column: str, config: Mapping[str, Any],
                     clear: tuple[str, ...]) -> Violation | None:
    """Dates outside the study window widened by its margin."""
    first, last = study_window(config)
    if first is None and last is None:
        return None
    outside = np.zeros(len(dates), dtype=bool)
    if first is not None:
        outside |= (dates < first).to_numpy(dtype=bool)
    if last is not None:
        outside |= (dates > last).to_numpy(dtype=bool)
    if not outside.any():
        return None
    key = "plausibility.dates.study_window"
    shown = (f"{'...' if first is None else first.date()} to "
             f"{'...' if last is None else last.date()}")
    return Violation(
        key, f"{column} outside the study window", column, outside,
        lambda pos: f"{column} " + _dates(dates.iloc[pos])
        + f" outside the study window with its margin ({shown}) ({key})",
        _date_rule(config, "study_window", "drop")["action"], clear,
    )


def episode_violation(dates: pd.Series, referral: pd.Series, column: str,
                      config: Mapping[str, Any], clear: tuple[str, ...]) -> Violation | None:
    """Dates more than the allowed days before or after their episode's referral date.

    ``referral`` is aligned with ``dates`` (missing where the episode is unknown).
    """
    rule = _date_rule(config, "episode", "drop")
    before, after = int(rule.get("days_before", 30)), int(rule.get("days_after", 730))
    offset = (dates - referral).dt.days
    early = (offset < -before).to_numpy(dtype=bool)
    late = (offset > after).to_numpy(dtype=bool)
    if not (early | late).any():
        return None
    key = "plausibility.dates.episode"

    def reasons(pos: np.ndarray) -> pd.Series:
        days = offset.iloc[pos].astype("int64")
        negative = days.to_numpy() < 0
        side = np.where(negative, " days before the referral ", " days after the referral ")
        limit = np.where(negative, f" (at most {before} allowed)", f" (at most {after} allowed)")
        return (f"{column} " + _dates(dates.iloc[pos]) + " is "
                + days.abs().astype(str).to_numpy() + side
                + _dates(referral.iloc[pos]).to_numpy() + limit + f" ({key})")

    return Violation(key, f"{column} outside its episode", column, early | late, reasons,
                     rule["action"], clear)


def followup_violation(followup: pd.Series, baseline: pd.Series, label: str,
                       baseline_label: str, column: str, config: Mapping[str, Any],
                       clear: tuple[str, ...]) -> Violation | None:
    """Follow-up assessments dated before the baseline assessment they follow.

    ``followup`` and ``baseline`` are aligned dates (per row, the follow-up's date and the
    baseline date of the same episode and instrument; missing where there is none).
    """
    earlier = (followup < baseline).to_numpy(dtype=bool)
    if not earlier.any():
        return None
    key = "plausibility.dates.followup_order"
    return Violation(
        key, "follow-up dated before baseline", column, earlier,
        lambda pos: f"{label} {column} " + _dates(followup.iloc[pos]) + f" before the "
        f"{baseline_label} assessment " + _dates(baseline.iloc[pos]) + f" ({key})",
        _date_rule(config, "followup_order", "set_missing")["action"], clear,
    )


__all__: Sequence[str] = (
    "Violation", "birth_date_violation", "completed_years", "episode_violation",
    "followup_violation", "range_text", "range_violation", "rule_name", "sentinel_violation",
    "study_window", "variable_rule", "window_violation",
)
