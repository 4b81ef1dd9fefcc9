"""Report tables: Table 1, estimates, subgroups, sessions, responders, variance components and
the reproduction check (step ``tables``).

Every table is a tidy CSV with fixed column names, so the figures and the HTML report (and a
reviewer's own code) read the same numbers. The functions that read estimate files are tolerant
of how the model steps name their terms: they key on the documented fields of
``docs/data-contracts.md`` (section "Estimates"), and raise :class:`DataError` naming the file
when a file breaks the contract.

Small-cell suppression (Table 1), the rule in full:

* A categorical count ``c`` with ``0 < c < report.min_cell_count`` is shown as ``"<k"``
  (without a percentage, which would reveal it).
* Complementary suppression: when any cell of a categorical variable is suppressed, every other
  count of that variable (all levels, all arms and the overall column) and its SMD are shown as
  ``"suppressed"``; otherwise a hidden cell could be recovered from the arm totals, the overall
  column or the remaining levels.
* A continuous variable with fewer than ``k`` observed values in any column is suppressed in
  every column (an overall mean and one arm's mean would otherwise reveal the other's).
* Missing-value counts ``0 < c < k`` are shown as ``"<k"``. Zero counts are shown: they reveal
  nothing about an individual.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.config import (
    arm_labels,
    arm_levels,
    followup_labels,
    multi_arm,
    patient_variables,
    primary_followup,
    time_values,
)
from trial_analysis.errors import DataError
from trial_analysis.io import ESTIMATE_COLUMNS, read_analysis_table, write_csv
from trial_analysis.labels import label as readable_label
from trial_analysis.labels import sentence_label

TIDY_COLUMNS = ESTIMATE_COLUMNS
ESTIMATE_REQUIRED = ["term", "estimate", "ci_low", "ci_high"]
TABLE_NAMES = [
    "table1", "primary_estimates", "subgroup_estimates", "sessions", "responders",
    "variance_components", "reproduction", "effects_by_followup",
]
EFFECTS_BY_FOLLOWUP_COLUMNS = [
    "outcome", "population", "followup", "time_value", "primary", "estimate", "std_error",
    "ci_low", "ci_high", "p_value", "df", "n_patients", "n_observations", "outcome_label",
]
# With three or more arms the primary and per-follow-up tables have a row per contrast and
# these columns too (the multiplicity adjustment within each outcome, population, follow-up).
CONTRAST_EXTRA_COLUMNS = ["contrast", "p_adjusted", "ci_low_adjusted", "ci_high_adjusted",
                          "multiplicity", "n_comparisons"]
TABLE1_COLUMNS = [
    "population", "variable", "level", "statistic", "missing", "overall", "intervention",
    "control", "smd",
]
REPRODUCTION_COLUMNS = [
    "kind", "item", "published", "reproduced", "match", "true_value", "criterion", "source",
    "evidence",
]
# What a match in the reproduction table shows, by kind of row and data.
EVIDENCE = {
    "target": "by construction: the simulated cohort was generated to have this count, so a "
              "match checks the pipeline's counting, not the study",
    "recount": "independent recount from the raw extract",
    "planted": "direction only, and planted: the simulation's true effect sets it",
    "direction": "direction only: which side of no difference the confidence interval lies on",
    "estimate": "published estimate inside the reproduced confidence interval",
    "not_public": "not compared: the published study's effect sizes and confidence intervals "
                  "are not public (none entered in published.estimates), so only the "
                  "directions above could be checked",
    "not_computed": "not compared: this pipeline does not compute it",
}
SUPPRESSED = "suppressed"


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------
def outcome_label(config: Mapping[str, Any], name: str) -> str:
    """Label of outcome ``name`` (its name when no label is configured)."""
    for outcome in config["outcomes"]:
        if outcome["name"] == name:
            return outcome.get("label", name)
    return name


def slug(text: str) -> str:
    """Lower-case identifier form of a label (``"usual care"`` -> ``"usual_care"``)."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


# --------------------------------------------------------------------------------------------
# Formatting shared by tables, figures and the report
# --------------------------------------------------------------------------------------------
def fmt_number(value: Any, digits: int = 2) -> str:
    """Format a number with fixed decimals; missing values become an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    text = f"{number:.{digits}f}"
    # "-0.00" reads as a sign the data do not have.
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text


def fmt_sig(value: Any, digits: int = 3) -> str:
    """Format a number to ``digits`` significant digits, keeping trailing zeros (0.190).

    Missing values become an en dash; large values are rounded, not put in exponent form.
    """
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    if number == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    decimals = max(digits - 1 - magnitude, 0)
    return fmt_number(round(number, digits - 1 - magnitude), decimals)


def fmt_ci(low: Any, high: Any, digits: int = 2) -> str:
    """Format a confidence interval as ``"low to high"`` (no ambiguous hyphen with negatives)."""
    return f"{fmt_number(low, digits)} to {fmt_number(high, digits)}"


def fmt_p(value: Any) -> str:
    """Format a p-value journal style: three decimals, ``<0.001`` below that."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    p = float(value)
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------
def read_analysis(path: str | Path, config: Mapping[str, Any]) -> pd.DataFrame:
    """Read the analysis table and check the columns the report needs."""
    path = Path(path)
    frame = read_analysis_table(path)
    needed = ["arm", "arm_intervention", "n_sessions", "complete_case"]
    needed += [f"{o['name']}_{t}" for o in config["outcomes"] for t in ("baseline", "followup")]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            str(path), "required column missing from the analysis table", column=missing[0],
            hint=f"all missing: {missing}; see docs/data-contracts.md, analysis.parquet",
        )
    return frame


def read_estimate_file(path: str | Path) -> dict[str, Any]:
    """Read one estimate JSON file and check its rows against the contract."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "estimate file is missing", hint="run the model steps first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"not valid JSON: {exc}") from None
    rows = doc.get("estimates") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise DataError(str(path), "an estimate file must hold an 'estimates' list of rows")
    for number, row in enumerate(rows, start=1):
        absent = [c for c in ESTIMATE_REQUIRED if c not in row]
        if absent:
            raise DataError(
                str(path), "estimate row lacks a required field", column=absent[0], rows=[number]
            )
    doc.setdefault("model", {})
    doc.setdefault("marginal_means", [])
    doc["_file"] = str(path)
    return doc


def _is_effect_term(term: str) -> bool:
    lowered = term.lower()
    return "arm" in lowered and "time" in lowered and ":" in lowered


def effect_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The arm x time (difference in mean change) row of a primary estimate file.

    The row with model ``effect`` and term ``arm:time`` (the contract: the effect at the
    primary follow-up); then any term ``arm:time``; otherwise the first term that names both
    arm and time in an interaction (e.g. ``arm[T.ETMI]:time[T.discharge]``).
    """
    rows = doc["estimates"]
    for row in rows:
        if str(row["term"]) == "arm:time" and str(row.get("model")) == "effect":
            return dict(row)
    for row in rows:
        if str(row["term"]) == "arm:time":
            return dict(row)
    for row in rows:
        if _is_effect_term(str(row["term"])) and str(row["term"]).count(":") == 1:
            return dict(row)
    raise DataError(
        doc.get("_file", "estimate file"), "no arm x time row (term 'arm:time') found",
        column="term", rows=[str(r["term"]) for r in rows],
    )


def _level_of(row: Mapping[str, Any], subgroup: str) -> str:
    for key in ("level", "subgroup_level"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    term = str(row["term"])
    match = re.search(r"=\s*([^\s|)\]]+)", term)
    if match:
        return match.group(1)
    if "|" in term:
        return term.split("|", 1)[1].strip()
    population = str(row.get("population", ""))
    return population.replace(f"subgroup_{subgroup}", "").strip("_=: ") or term


def _is_heterogeneity_term(term: str) -> bool:
    term = term.lower()
    return "heterogeneity" in term or "interaction" in term


def _is_level_term(row: Mapping[str, Any]) -> bool:
    """An arm x time effect within one subgroup level (``arm:time [depression=1]``)."""
    term = str(row["term"])
    marked = any(mark in term for mark in ("=", "|", "[")) or row.get("level") not in (None, "")
    difference = str(row.get("model", "")) == "subgroup_difference"
    return marked and _is_effect_term(term) and not _is_heterogeneity_term(term) and not difference


def heterogeneity_row(doc: Mapping[str, Any], subgroup: str | None = None) -> dict[str, Any] | None:
    """The heterogeneity test row of a subgroup file, if any.

    A row whose term or model names heterogeneity (the contract); otherwise the single
    arm x time x subgroup interaction coefficient.
    """
    rows = doc["estimates"]
    for row in rows:
        if _is_heterogeneity_term(str(row["term"])) or "heterogeneity" in str(
                row.get("model", "")).lower():
            return dict(row)
    three_way = [r for r in rows if str(r["term"]).count(":") >= 2 and not _is_level_term(r)
                 and (subgroup is None or subgroup in str(r["term"]))]
    return dict(three_way[0]) if len(three_way) == 1 else None


def interaction_row(doc: Mapping[str, Any], subgroup: str) -> dict[str, Any] | None:
    """The difference in effect between two levels.

    The model's ``subgroup_difference`` row (the difference of the within-level effects at
    the primary follow-up) when there is exactly one; else the single arm x time x subgroup
    coefficient, which is that difference in the two-time-point design.
    """
    differences = [r for r in doc["estimates"]
                   if str(r.get("model", "")) == "subgroup_difference"]
    if differences:
        return dict(differences[0]) if len(differences) == 1 else None
    rows = [r for r in doc["estimates"] if str(r["term"]).count(":") >= 2
            and subgroup in str(r["term"]) and not _is_level_term(r)
            and not _is_heterogeneity_term(str(r["term"]))]
    return dict(rows[0]) if len(rows) == 1 else None


def subgroup_rows(doc: Mapping[str, Any], subgroup: str) -> tuple[list[dict[str, Any]], float]:
    """Split a subgroup file into per-level effect rows and the heterogeneity p-value.

    Level rows: terms like ``arm:time [depression=1]`` (or a ``level`` field). When several
    models give level rows (e.g. contrasts of the interaction model and stratified fits), the
    interaction model's contrasts (model ``subgroup_contrast``) are used.
    """
    candidates = [dict(r) for r in doc["estimates"] if _is_level_term(r)]
    if not candidates:
        raise DataError(
            doc.get("_file", "subgroup estimate file"),
            "no per-level arm x time rows found (term 'arm:time [<subgroup>=<level>]')",
            column="term",
        )
    models = list(dict.fromkeys(str(r.get("model", "")) for r in candidates))
    preferred = next((m for m in models if "contrast" in m.lower()), None) or next(
        (m for m in models if "strat" not in m.lower()), models[0])
    levels = [{**r, "level": _level_of(r, subgroup)} for r in candidates
              if str(r.get("model", "")) == preferred]
    het = heterogeneity_row(doc, subgroup)
    p_heterogeneity = float("nan")
    if het is not None and het.get("p_value") is not None:
        p_heterogeneity = float(het["p_value"])
    return levels, p_heterogeneity


def sessions_ratio_row(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The primary ratio-of-means row of ``sessions.json`` (negative binomial preferred)."""
    rows = [r for r in doc["estimates"] if "ratio" in str(r["term"]).lower()]
    if not rows:
        rows = [r for r in doc["estimates"] if "arm" in str(r["term"]).lower()]
    if not rows:
        return None
    preferred = [r for r in rows if "neg" in str(r.get("model", "")).lower()]
    return dict((preferred or rows)[0])


def load_estimates(folder: str | Path, config: Mapping[str, Any], *,
                   secondary: bool = True) -> dict[str, Any]:
    """Read every estimate file the config implies.

    Parameters
    ----------
    folder : path
        The estimates folder.
    config : mapping
        Validated study configuration.
    secondary : bool, default True
        Also read ``sessions.json`` and ``responders.json``. The figures step reads only the
        models' files (its declared inputs), so it need not wait for those two steps.

    Returns
    -------
    dict
        ``primary``: {(outcome, population): doc}; ``subgroups``: {(outcome, subgroup): doc};
        with ``secondary``, ``sessions`` and ``responders``: doc or None when the file is
        absent.
    """
    folder = Path(folder)
    outcomes = [o["name"] for o in config["outcomes"]]
    populations = config["analysis"]["populations"]
    subgroups = config["analysis"].get("subgroups", [])
    primary = {
        (o, p): read_estimate_file(folder / f"{o}.{p}.json") for o in outcomes for p in populations
    }
    by_subgroup = {}
    for o in outcomes:
        for s in subgroups:
            path = folder / f"{o}.subgroup_{s}.json"
            if path.is_file():
                by_subgroup[(o, s)] = read_estimate_file(path)
    extra = {}
    for name in ("sessions", "responders") if secondary else ():
        path = folder / f"{name}.json"
        extra[name] = read_estimate_file(path) if path.is_file() else None
    return {"primary": primary, "subgroups": by_subgroup, **extra}


def raw_folder(config: Mapping[str, Any]) -> Path:
    """The raw extract folder named in config (relative to the working directory)."""
    return Path(config["paths"]["raw"])


def load_truth(raw: str | Path | None) -> dict[str, Any] | None:
    """Read ``truth.json`` from the raw folder if present (simulated data only)."""
    if raw is None:
        return None
    path = Path(raw) / "truth.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"not valid JSON: {exc}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):
        # "structural": the effect planted by simulate (truth.json); the others are tolerated.
        for key in ("structural", "effect", "value", "estimate", "difference_in_mean_change"):
            if key in value:
                return _number(value[key])
        return None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def true_effect(
    truth: Mapping[str, Any] | None, outcome: str, subgroup: str | None = None,
    level: str | None = None,
) -> float | None:
    """True difference in mean change for ``outcome`` (optionally within a subgroup level).

    Reads ``truth["effects"][outcome]["structural"]`` and
    ``truth["effects"][outcome]["subgroups"][subgroup][level]["structural"]`` (as ``simulate``
    writes them; plain numbers are accepted too); a missing entry gives None, never a guess.
    """
    if not truth:
        return None
    effects = truth.get("effects", {})
    effects = effects if isinstance(effects, Mapping) else {}
    if subgroup is None:
        return _number(effects.get(outcome))
    nested = effects.get(outcome, {})
    by_level = nested.get("subgroups", {}).get(subgroup) if isinstance(nested, Mapping) else None
    if isinstance(by_level, Mapping) and str(level) == "heterogeneity":
        # The heterogeneity row estimates the difference between the levels' effects.
        values = [_number(by_level[k]) for k in sorted(by_level, key=str)]
        if len(values) == 2 and None not in values:
            return values[1] - values[0]
        return None
    if isinstance(by_level, Mapping):
        for key, value in by_level.items():
            if str(key) == str(level):
                return _number(value)
        return None
    by_level = truth.get("subgroup_effects", {}).get(subgroup, {})
    if not isinstance(by_level, Mapping):
        return None
    for key, value in by_level.items():
        if str(key) == str(level) and isinstance(value, Mapping):
            return _number(value.get(outcome))
    return None


def true_sessions_ratio(truth: Mapping[str, Any] | None) -> float | None:
    """True sessions ratio of means (intervention / control) from truth.json, if recorded."""
    if not truth:
        return None
    for key in ("sessions_ratio_of_means", "sessions_ratio"):
        if key in truth:
            return _number(truth[key])
    sessions = truth.get("sessions")
    if isinstance(sessions, Mapping):
        # The ratio realised in this extract is what the estimate targets; the designed ratio
        # differs from it by sampling variation of the simulated counts.
        realised = (_number(sessions.get("realised_mean_etmi")),
                    _number(sessions.get("realised_mean_usual_care")))
        if None not in realised and realised[1]:
            return realised[0] / realised[1]
        return _number(sessions.get("ratio_of_means"))
    return None


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------
def _labelled(values: pd.Series, mapping: Mapping[Any, str]) -> pd.Series:
    """Each value's label (``mapping``, else its text), missing kept missing, as objects.

    Labelled once per distinct value: a registry's million patients have a handful of levels.
    """
    codes, uniques = pd.factorize(values)
    labels = np.array([mapping.get(v, str(v)) for v in uniques] + [np.nan], dtype=object)
    return pd.Series(labels[codes], index=values.index, dtype=object)  # code -1: missing


def table1_variables(config: Mapping[str, Any]) -> list[str]:
    """The patient characteristics of Table 1: those the config names, in its order.

    Named as analysis covariates or subgroups, declared in ``input.tables.patients.variables``,
    or covariates of a sessions or propensity model that runs; a column that is merely in the
    file (a BMI nobody asked for) is not described. Never the arm (nor its allocation column)
    or a cluster id (a random-effect level).
    """
    analysis = config.get("analysis", {})
    sensitivity = config.get("sensitivity") or {}
    named = [*(analysis.get("covariates") or []), *(analysis.get("subgroups") or []),
             *(config["input"]["tables"]["patients"].get("variables") or {})]
    # The schema fills these lists with defaults: they name variables only where they are used.
    if config["input"]["tables"].get("sessions") is not None:
        named += (analysis.get("sessions") or {}).get("covariates") or []
    if {"propensity", "doubly_robust"} & set(sensitivity.get("analyses") or []):
        named += (sensitivity.get("propensity") or {}).get("covariates") or []
    excluded = {"arm", "arm_intervention", str((config.get("allocation") or {}).get("column")),
                *map(str, analysis.get("random_effects") or [])}
    known = patient_variables(config)
    return [name for name in dict.fromkeys(map(str, named))
            if name in known and name not in excluded]


def _table1_frame(
    analysis: pd.DataFrame, config: Mapping[str, Any]
) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """Readable-label copy of the Table 1 columns: (frame, continuous, categorical, order)."""
    yes_no = {0: "no", 1: "yes"}
    builtin_spec: list[tuple[str, str, str, dict[Any, str] | None]] = [
        ("age", "Age, years", "continuous", None),
        ("sex", "Sex", "categorical", {"F": "female", "M": "male"}),
        ("bmi", "Body-mass index, kg/m²", "continuous", None),
        ("symptom_duration_weeks", "Symptom duration, weeks", "continuous", None),
        ("depression", "Depression", "categorical", yes_no),
        ("anxiety", "Anxiety", "categorical", yes_no),
        ("ses_score", "Socioeconomic score (1-10)", "continuous", None),
    ]
    builtin = {column: entry for column, *entry in builtin_spec}
    kinds = patient_variables(config)
    spec: list[tuple[str, str, str, dict[Any, str] | None]] = []
    file_labels = analysis.attrs.get("variable_labels") or {}
    taken = {entry[0] for entry in builtin.values()}
    for name in table1_variables(config):
        if name in builtin:
            spec.append((name, *builtin[name]))
            continue
        kind = kinds[name]
        # a label in the config first, else the file's own variable label (SAS/Stata/SPSS)
        configured = name in ((config.get("report") or {}).get("labels") or {})
        readable = (sentence_label(config, name) if configured or not file_labels.get(name)
                    else str(file_labels[name]))
        if readable in taken:  # two rows never share a label: the file's is already used
            readable = sentence_label(config, name)
        taken.add(readable)
        if kind == "flag":
            spec.append((name, readable, "categorical", yes_no))
        elif kind == "category":
            spec.append((name, readable, "categorical", {}))
        else:
            spec.append((name, readable, "continuous", None))
    for outcome in config["outcomes"]:
        units = outcome.get("units", "score")
        label = f"{outcome.get('label', outcome['name'])} at baseline, {units}"
        spec.append((f"{outcome['name']}_baseline", label, "continuous", None))
    frame = pd.DataFrame({"arm": analysis["arm"].astype(str)})
    continuous, categorical, order = [], [], []
    for column, label, kind, mapping in spec:
        # A built-in characteristic the study did not record is left out, not shown as
        # 100 % missing.
        if column not in analysis.columns or analysis[column].isna().all():
            continue
        values = analysis[column]
        if kind == "categorical":
            numeric = pd.to_numeric(values, errors="coerce") if mapping is yes_no else None
            if numeric is not None and numeric.notna().sum() == values.notna().sum():
                values = numeric
            frame[label] = _labelled(values, mapping)
            categorical.append(label)
        else:
            frame[label] = pd.to_numeric(values, errors="coerce").astype(float)
            continuous.append(label)
        order.append(label)
    return frame, continuous, categorical, order


def table1_groups(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Table 1's arm columns as (column name, arm label): ``intervention`` and ``control``
    with two arms; with more, one column per arm named by its label, in allocation.arms
    order (the reference as listed)."""
    if not multi_arm(config):
        intervention, control = arm_labels(config)
        return [("intervention", intervention), ("control", control)]
    arms = [str(a) for a in config["allocation"]["arms"]]
    return [(arm, arm) for arm in arms]


def table1_columns(config: Mapping[str, Any]) -> list[str]:
    """Columns of ``table1.csv``: with three or more arms one per arm and no SMD (a two-group
    measure)."""
    if not multi_arm(config):
        return list(TABLE1_COLUMNS)
    return [*TABLE1_COLUMNS[:6], *(name for name, _ in table1_groups(config))]


def _smd_number(smd_table: pd.DataFrame | None, variable: str, column: str | None) -> float:
    """A variable's SMD from tableone's numeric SMD table; NaN where it is undefined."""
    if smd_table is None or column is None or column not in smd_table.columns:
        return float("nan")
    try:
        value = pd.to_numeric(pd.Series([smd_table.loc[variable, column]]), errors="coerce")
    except KeyError:
        return float("nan")
    number = float(value.iloc[0])
    return number if np.isfinite(number) else float("nan")


def _format_smd(value: float) -> str:
    """Three decimals; empty where undefined (a constant column), ``<0.001`` below that."""
    if not np.isfinite(value):
        return ""
    if abs(value) < 0.0005:
        return "<0.001"
    return f"{value:.3f}"


def table_one(
    analysis: pd.DataFrame, config: Mapping[str, Any], population: str = "all eligible"
) -> pd.DataFrame:
    """Baseline characteristics by arm with standardized mean differences.

    Parameters
    ----------
    analysis : DataFrame
        Patients to describe (one row each) with an ``arm`` column.
    config : mapping
        Study config: arm labels, outcomes, ``report.continuous_summary`` and
        ``report.min_cell_count``.
    population : str
        Name written in the ``population`` column.

    Returns
    -------
    DataFrame
        Columns ``population, variable, level, statistic, missing, overall, intervention,
        control, smd`` (formatted strings; with three or more arms a column per arm instead
        of the last three, :func:`table1_columns`); small cells suppressed as described in
        the module docstring.
    """
    from tableone import TableOne

    groups = table1_groups(config)
    two = not multi_arm(config)
    k = int(config.get("report", {}).get("min_cell_count", 5))
    median = config.get("report", {}).get("continuous_summary", "mean_sd") == "median_iqr"
    frame, continuous, categorical, order = _table1_frame(analysis, config)
    # tableone needs each arm present to compute SMDs; an empty arm is a data problem upstream.
    present = set(frame["arm"])
    if not {label for _, label in groups} <= present:
        wanted = ", ".join(f"'{label}'" for _, label in groups)
        raise DataError(
            "analysis table", f"{'both' if two else 'all'} arms ({wanted}) must have patients",
            column="arm", hint=f"arms found: {sorted(present)}",
        )
    with warnings.catch_warnings():
        # tableone warns about normality and low counts; the report handles both explicitly.
        warnings.simplefilter("ignore")
        # tableone turns each categorical column into a list of strings and iterates over it
        # again per arm; as Arrow-backed text (pandas 3's default) every element costs a
        # Python object, about 60 times slower than an object array, so a million patients
        # took most of a minute. Object columns hold the same strings and give the same table.
        # (pandas 4 removes this option: setting it will then fail, and this line must go.)
        with pd.option_context("future.infer_string", False):
            t1 = TableOne(
                frame, columns=continuous + categorical, categorical=categorical,
                continuous=continuous, groupby="arm", nonnormal=continuous if median else None,
                smd=two, missing=True, overall=True, label_suffix=False, include_null=False,
                decimals=1, order={c: ["female", "male"] if c == "Sex" else ["yes", "no"]
                                   for c in categorical
                                   if c == "Sex" or set(frame[c].dropna()) <= {"yes", "no"}},
            )
    table = t1.tableone
    table.columns = [c[1] if isinstance(c, tuple) else c for c in table.columns]
    smd_column = next((c for c in table.columns if str(c).startswith("SMD")), None)

    def small(count: float) -> bool:
        return 0 < count < k

    rows: list[dict[str, Any]] = []
    rows.append({
        "variable": "Patients", "level": "", "statistic": "n", "missing": "",
        "overall": str(len(frame)),
        **{name: str(int((frame["arm"] == arm).sum())) for name, arm in groups}, "smd": "",
    })
    columns = {"overall": frame, **{name: frame[frame["arm"] == arm] for name, arm in groups}}
    headings = (("overall", "Overall"), *groups)
    for variable in order:
        observed_missing = int(frame[variable].isna().sum())
        missing = f"<{k}" if small(observed_missing) else str(observed_missing)
        block = table.loc[variable]
        # The SMD as a number from tableone's numeric table, never its display text (which
        # says "<0.001" for a small difference and cannot be read back as a number).
        smd_value = _smd_number(t1.smd_table, variable, smd_column) if two else np.nan
        if variable in continuous:
            # tableone's SMD is unsigned or ordered by group label; report it signed as
            # intervention minus control, as the balance table and love plot do.
            gap = (columns[groups[0][0]][variable].mean()
                   - columns[groups[-1][0]][variable].mean())
            smd = _format_smd(np.copysign(abs(smd_value), gap) if np.isfinite(gap)
                              else smd_value) if two else ""
            stat = "median [Q1, Q3]" if median else "mean (SD)"
            observed = [int(sub[variable].notna().sum()) for sub in columns.values()]
            hide = any(small(n) for n in observed)
            cells = {
                name: (SUPPRESSED if hide else str(block[label].iloc[0]).strip())
                for name, label in headings
            }
            rows.append({"variable": variable, "level": "", "statistic": stat,
                         "missing": missing, **cells, "smd": SUPPRESSED if hide else smd})
            continue
        smd = _format_smd(abs(smd_value)) if two else ""
        counts = {
            name: sub[variable].value_counts() for name, sub in columns.items()
        }
        levels = [str(level) for level in block.index]
        hide = any(small(int(counts[name].get(level, 0))) for name in counts for level in levels)
        for position, level in enumerate(levels):
            cells = {}
            for name, label in headings:
                count = int(counts[name].get(level, 0))
                if small(count):
                    cells[name] = f"<{k}"
                elif hide:
                    cells[name] = SUPPRESSED
                else:
                    cells[name] = str(block.loc[level, label]).strip()
            rows.append({
                "variable": variable, "level": level, "statistic": "n (%)",
                "missing": missing if position == 0 else "", **cells,
                "smd": (SUPPRESSED if hide else smd) if position == 0 else "",
            })
    result = pd.DataFrame(rows)
    result.insert(0, "population", population)
    return result[table1_columns(config)]


def table_one_by_population(analysis: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    """Table 1 for all eligible patients and for complete cases, stacked."""
    complete = analysis[pd.to_numeric(analysis["complete_case"], errors="coerce") == 1]
    parts = [table_one(analysis, config, "all eligible")]
    if len(complete) and complete["arm"].nunique() == len(arm_levels(config)):
        parts.append(table_one(complete, config, "complete cases"))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Estimates tables
# --------------------------------------------------------------------------------------------
def _tidy(row: Mapping[str, Any], **override: Any) -> dict[str, Any]:
    out = {column: row.get(column) for column in TIDY_COLUMNS}
    if isinstance(out["warnings"], list):
        out["warnings"] = "; ".join(str(w) for w in out["warnings"])
    out.update(override)
    return out


def primary_estimates(
    estimates: Mapping[str, Any], config: Mapping[str, Any], truth: Mapping[str, Any] | None
) -> pd.DataFrame:
    """One row per outcome and population: the arm x time effect with CI and the true value."""
    if multi_arm(config):
        return _primary_contrasts(estimates, config)
    rows = []
    for (outcome, population), doc in estimates["primary"].items():
        row = effect_row(doc)
        tidy = _tidy(row, outcome=outcome, population=population)
        if tidy["model"] in (None, "effect"):
            # Name the fitted model (lmm, lm), not the estimand's row label.
            fitted = [str(r.get("model")) for r in doc["estimates"]
                      if r.get("model") not in (None, "effect")]
            tidy["model"] = fitted[0] if fitted else doc["model"].get("formula")
        rows.append({
            **tidy, "outcome_label": outcome_label(config, outcome),
            "true_value": true_effect(truth, outcome),
        })
    columns = [*TIDY_COLUMNS, "outcome_label", "true_value"]
    return pd.DataFrame(rows, columns=columns)


def contrast_records(doc: Mapping[str, Any], file_name: str | None = None
                     ) -> list[dict[str, Any]]:
    """The ``contrasts`` block of a k-arm estimate file (a DataError if it has none)."""
    records = doc.get("contrasts")
    if not records:
        raise DataError(file_name or doc.get("_file", "estimate file"),
                        "no 'contrasts' block: with three or more arms the outcome models "
                        "write one", column="contrasts", hint="re-run the model steps")
    return [dict(r) for r in records]


def _fitted_model(doc: Mapping[str, Any]) -> str:
    fitted = [str(r.get("model")) for r in doc["estimates"]
              if r.get("model") not in (None, "effect")]
    return fitted[0] if fitted else str(doc["model"].get("formula"))


def _primary_contrasts(estimates: Mapping[str, Any], config: Mapping[str, Any]
                       ) -> pd.DataFrame:
    """Several arms: a row per outcome, population and contrast at the primary follow-up."""
    rows = []
    primary = primary_followup(config)
    for (outcome, population), doc in estimates["primary"].items():
        by_term = {str(r["term"]): r for r in doc["estimates"]
                   if str(r.get("model")) == "effect"}
        for record in contrast_records(doc):
            if record["followup"] != primary:
                continue
            row = by_term.get(f"arm:time [{record['contrast']}]", {})
            tidy = _tidy({**row, **{k: record[k] for k in ("estimate", "std_error", "ci_low",
                                                          "ci_high", "p_value")}},
                         outcome=outcome, population=population, model=_fitted_model(doc))
            rows.append({**tidy, "outcome_label": outcome_label(config, outcome),
                         "true_value": np.nan,
                         **{k: record.get(k) for k in CONTRAST_EXTRA_COLUMNS}})
    columns = [*TIDY_COLUMNS, "outcome_label", "true_value", *CONTRAST_EXTRA_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def subgroup_estimates(
    estimates: Mapping[str, Any], config: Mapping[str, Any], truth: Mapping[str, Any] | None
) -> pd.DataFrame:
    """Effect within each subgroup level, with the heterogeneity p-value of its subgroup."""
    rows = []
    for (outcome, subgroup), doc in estimates["subgroups"].items():
        if doc.get("not_reported"):
            # A level below report.min_cell_count: one row saying so, no estimate, no N.
            rows.append({
                **_tidy({"outcome": outcome, "population": doc.get("population"),
                         "model": "subgroup_interaction", "term": f"arm:time [{subgroup}]",
                         "warnings": doc["not_reported"]}),
                "subgroup": subgroup, "level": "not reported", "p_heterogeneity": np.nan,
                "outcome_label": outcome_label(config, outcome), "true_value": None,
            })
            continue
        levels, p_het = subgroup_rows(doc, subgroup)
        for row in levels:
            rows.append({
                **_tidy(row, outcome=outcome), "subgroup": subgroup, "level": row["level"],
                "p_heterogeneity": p_het, "outcome_label": outcome_label(config, outcome),
                "true_value": true_effect(truth, outcome, subgroup, row["level"]),
            })
        interaction = interaction_row(doc, subgroup) or heterogeneity_row(doc, subgroup)
        if interaction is not None:
            # The difference in effect between levels: the estimate the p-value tests.
            rows.append({
                **_tidy(interaction, outcome=outcome), "subgroup": subgroup,
                "level": "heterogeneity", "p_heterogeneity": p_het,
                "outcome_label": outcome_label(config, outcome),
                "true_value": true_effect(truth, outcome, subgroup, "heterogeneity"),
            })
    columns = [*TIDY_COLUMNS, "subgroup", "level", "p_heterogeneity", "p_heterogeneity_holm",
               "outcome_label", "true_value"]
    table = pd.DataFrame(rows, columns=[c for c in columns if c != "p_heterogeneity_holm"])
    table.insert(columns.index("p_heterogeneity_holm"), "p_heterogeneity_holm",
                 holm_heterogeneity(table))
    return table


def heterogeneity_tests(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (outcome, subgroup) heterogeneity test with a p-value: the family of tests.

    Subgroup analyses are exploratory; their number (outcomes x subgroups that were tested)
    is what a reader needs to judge a small p-value, so it is counted from the table itself.
    """
    tests = table[["outcome", "subgroup", "p_heterogeneity"]].drop_duplicates(
        ["outcome", "subgroup"])
    return tests[np.isfinite(pd.to_numeric(tests["p_heterogeneity"], errors="coerce"))]


def holm_heterogeneity(table: pd.DataFrame) -> pd.Series:
    """Holm-adjusted heterogeneity p-values over all outcomes x subgroups tested.

    Holm controls the family-wise error rate without assuming independence: the tests share
    patients (every subgroup test of one outcome uses the same model data).
    """
    from statsmodels.stats.multitest import multipletests

    tests = heterogeneity_tests(table)
    adjusted: dict[tuple[str, str], float] = {}
    if len(tests):
        p_adj = multipletests(tests["p_heterogeneity"].astype(float).to_numpy(),
                              method="holm")[1]
        keys = zip(tests["outcome"], tests["subgroup"], strict=True)
        adjusted = dict(zip(keys, p_adj, strict=True))
    return pd.Series([adjusted.get((o, s), np.nan)
                      for o, s in zip(table["outcome"], table["subgroup"], strict=True)],
                     index=table.index, dtype=float)


# The follow-up label of the effect under analysis.effect: constant.
CONSTANT_LABEL = "all follow-ups"


def effects_by_followup(estimates: Mapping[str, Any], config: Mapping[str, Any]) -> pd.DataFrame:
    """The effect at every follow-up and their average, per outcome and population.

    Rows of model ``effect``: ``arm:time [<label>]`` for each follow-up and
    ``arm:time [overall]`` (equal-weight average over follow-ups) when the study has several
    follow-ups; otherwise the single ``arm:time`` row, under the follow-up's label.
    ``primary`` marks the follow-up of the primary estimand; ``time_value`` is
    ``timepoints.values`` of the follow-up (empty for ``overall``).
    """
    followups = followup_labels(config)
    primary_label = primary_followup(config)
    values = time_values(config)
    if multi_arm(config):
        return _contrasts_by_followup(estimates, config)
    rows = []
    for (outcome, population), doc in estimates["primary"].items():
        effect_rows = {str(r["term"]): r for r in doc["estimates"]
                       if str(r.get("model")) == "effect"}
        if len(followups) == 1:
            wanted = [(followups[0], "arm:time")]
        elif config.get("analysis", {}).get("effect") == "constant":
            # one effect assumed the same at every follow-up: a single row
            wanted = [(CONSTANT_LABEL, "arm:time")]
        else:
            wanted = [(label, f"arm:time [{label}]") for label in [*followups, "overall"]]
        for label, term in wanted:
            row = effect_rows.get(term)
            if row is None:
                if len(followups) == 1:
                    row = effect_row(doc)
                else:
                    raise DataError(doc.get("_file", "estimate file"),
                                    f"no effect row '{term}' (model 'effect') found",
                                    column="term", hint="re-run the model steps")
            rows.append({
                **{k: row.get(k) for k in ("estimate", "std_error", "ci_low", "ci_high",
                                           "p_value", "df", "n_patients", "n_observations")},
                "outcome": outcome, "population": population, "followup": label,
                "time_value": values.get(label, np.nan), "primary": label == primary_label,
                "outcome_label": outcome_label(config, outcome),
            })
    return pd.DataFrame(rows, columns=EFFECTS_BY_FOLLOWUP_COLUMNS)


def _contrasts_by_followup(estimates: Mapping[str, Any], config: Mapping[str, Any]
                           ) -> pd.DataFrame:
    """Several arms: every contrast at every follow-up (and overall), adjusted per family."""
    primary_label = primary_followup(config)
    values = time_values(config)
    constant = (config.get("analysis", {}).get("effect") == "constant"
                and len(followup_labels(config)) > 1)
    rows = []
    for (outcome, population), doc in estimates["primary"].items():
        counts = next((r for r in doc["estimates"] if str(r.get("model")) == "effect"), {})
        for record in contrast_records(doc):
            label = CONSTANT_LABEL if constant else record["followup"]
            rows.append({
                **{k: record.get(k) for k in ("estimate", "std_error", "ci_low", "ci_high",
                                              "p_value", "df")},
                "n_patients": counts.get("n_patients"),
                "n_observations": counts.get("n_observations"),
                "outcome": outcome, "population": population, "followup": label,
                "time_value": values.get(label, np.nan),
                "primary": record["followup"] == primary_label,
                "outcome_label": outcome_label(config, outcome),
                **{k: record.get(k) for k in CONTRAST_EXTRA_COLUMNS},
            })
    return pd.DataFrame(rows, columns=[*EFFECTS_BY_FOLLOWUP_COLUMNS, *CONTRAST_EXTRA_COLUMNS])


def tidy_rows(doc: Mapping[str, Any] | None) -> pd.DataFrame:
    """All estimate rows of a file (sessions, responders) with the contract's tidy columns."""
    if doc is None:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    return pd.DataFrame([_tidy(r) for r in doc["estimates"]], columns=TIDY_COLUMNS)


def variance_components(estimates: Mapping[str, Any]) -> pd.DataFrame:
    """Variance components and ICCs of every primary model, one row per quantity."""
    rows = []
    for (outcome, population), doc in estimates["primary"].items():
        model = doc.get("model", {})
        for quantity in ("variance_components", "icc"):
            values = model.get(quantity) or {}
            if not isinstance(values, Mapping):
                continue
            for component, value in values.items():
                rows.append({
                    "outcome": outcome, "population": population, "component": str(component),
                    "quantity": "variance" if quantity == "variance_components" else "icc",
                    "value": _number(value),
                })
    return pd.DataFrame(rows, columns=["outcome", "population", "component", "quantity", "value"])


# --------------------------------------------------------------------------------------------
# Reproduction check
# --------------------------------------------------------------------------------------------
def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(str(path), "required column missing", column=missing[0],
                        hint="see docs/data-contracts.md")
    return frame


def reproduced_counts(
    analysis: pd.DataFrame, implementation: pd.DataFrame | None, config: Mapping[str, Any]
) -> dict[str, tuple[int, str]]:
    """Counts the pipeline reproduced, keyed like ``published.counts``, with their source."""
    intervention, control = arm_labels(config)
    counts: dict[str, tuple[int, str]] = {}
    if implementation is not None:
        measures = implementation.set_index("measure")

        def get(measure: str, field: str) -> int | None:
            if measure in measures.index:
                # a suppressed small count ("<5") is not a count to compare
                value = pd.to_numeric(pd.Series([measures.loc[measure, field]]),
                                      errors="coerce").iloc[0]
                return None if pd.isna(value) else int(value)
            return None

        for key, measure, field in (
            ("therapists_invited", "reach", "denominator"),
            ("therapists_trained", "reach", "numerator"),
            ("therapists_adopted", "therapist_adoption", "numerator"),
            ("eligible_patients", "patient_adoption", "denominator"),
            (f"{slug(intervention)}_patients", "patient_adoption", "numerator"),
        ):
            value = get(measure, field)
            if value is not None:
                counts[key] = (value, "implementation.csv: "
                                      f"{readable_label(config, measure)}, {field}")
    counts.setdefault("eligible_patients", (len(analysis), "analysis table rows"))
    is_int = pd.to_numeric(analysis["arm_intervention"], errors="coerce") == 1
    counts.setdefault(f"{slug(intervention)}_patients", (int(is_int.sum()), "analysis table"))
    if "clinic_id" in analysis.columns:
        counts["clinics"] = (int(analysis["clinic_id"].nunique()),
                             "analysis table: distinct clinics")
    complete = pd.to_numeric(analysis["complete_case"], errors="coerce") == 1
    counts["complete_cases"] = (int(complete.sum()), "analysis table: complete cases")
    counts[f"complete_cases_{slug(intervention)}"] = (
        int((complete & is_int).sum()), "analysis table: complete cases by arm")
    counts[f"complete_cases_{slug(control)}"] = (
        int((complete & ~is_int).sum()), "analysis table: complete cases by arm")
    return counts


def simulation_targets(
    config: Mapping[str, Any], truth: Mapping[str, Any] | None
) -> dict[str, float]:
    """Counts the simulated cohort was built to give, keyed like ``published.counts``.

    Empty for real data (no ``truth.json``): true values exist only for simulated cohorts.
    """
    if not truth:
        return {}
    # The realised counts of this extract (truth["counts"]) beat the config's targets, which a
    # scaled cohort (simulate --n-patients) does not meet by design.
    if isinstance(truth.get("counts"), Mapping):
        targets = dict(truth["counts"])
    else:
        targets = dict(config.get("simulation", {}).get("targets", {}) or {})
    if "therapists" in targets:
        targets.setdefault("therapists_invited", targets["therapists"])
    intervention, control = arm_labels(config)
    if "complete_cases" in targets and f"complete_cases_{slug(intervention)}" in targets:
        targets.setdefault(
            f"complete_cases_{slug(control)}",
            targets["complete_cases"] - targets[f"complete_cases_{slug(intervention)}"],
        )
    return {k: float(v) for k, v in targets.items() if _number(v) is not None}


def effect_direction(low: float, high: float, higher_is_better: bool) -> str:
    """Direction of an arm x time effect: which arm its CI favours, or no difference."""
    if low > 0 or high < 0:
        benefit = (low > 0) == bool(higher_is_better)
        return "favours_intervention" if benefit else "favours_control"
    return "no_difference"


def ratio_direction(low: float, high: float) -> str:
    """Direction of a ratio of means (intervention / control) from its CI."""
    if high < 1:
        return "fewer_in_intervention"
    if low > 1:
        return "more_in_intervention"
    return "no_difference"


def _interval(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """A row's confidence interval as numbers; None when either end is missing (e.g. a
    clustered interval with a single cluster), which is then "not estimable", not a crash."""
    low, high = _number(row.get("ci_low")), _number(row.get("ci_high"))
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return None
    return low, high


def reproduction_table(
    analysis: pd.DataFrame, estimates: Mapping[str, Any], config: Mapping[str, Any],
    tables_folder: Path, truth: Mapping[str, Any] | None,
) -> pd.DataFrame:
    """Published vs reproduced counts, directions and estimates, with a match mark.

    Directions use the ``complete_case`` population when configured (what was published),
    otherwise the first population. An estimate matches when the published value lies inside
    the reproduced CI.
    """
    published = config.get("published") or {}
    implementation = _read_csv(
        tables_folder / "implementation.csv", ["measure", "numerator", "denominator"]
    )
    counts = reproduced_counts(analysis, implementation, config)
    rows: list[dict[str, Any]] = []
    targets = simulation_targets(config, truth)
    for key, value in (published.get("counts") or {}).items():
        reproduced, source = counts.get(key, (None, "not computed by this pipeline"))
        target = targets.get(key)
        rows.append({
            "kind": "count", "item": key, "published": str(value),
            "reproduced": "" if reproduced is None else str(reproduced),
            "match": "" if reproduced is None else ("yes" if reproduced == value else "no"),
            "true_value": "" if target is None else fmt_number(target, 0),
            "criterion": "equal", "source": source,
            "evidence": EVIDENCE["not_computed"] if reproduced is None else
            EVIDENCE["target"] if target is not None else EVIDENCE["recount"],
        })
    populations = config["analysis"]["populations"]
    population = "complete_case" if "complete_case" in populations else populations[0]
    better = {o["name"]: o.get("higher_is_better", True) for o in config["outcomes"]}
    for item, claim in (published.get("directions") or {}).items():
        reproduced, truth_dir, source = None, "", ""
        if item == "sessions":
            row = sessions_ratio_row(estimates["sessions"]) if estimates.get("sessions") else None
            if row is not None and _interval(row) is not None:
                reproduced = ratio_direction(*_interval(row))
                source = f"sessions.json: {readable_label(config, row['term'])} " \
                         f"{fmt_number(row['estimate'])} " \
                         f"({fmt_ci(row['ci_low'], row['ci_high'])})"
            true_ratio = true_sessions_ratio(truth)
            if true_ratio is not None:
                truth_dir = f"ratio {fmt_number(true_ratio)}"
        elif (item, population) in estimates["primary"]:
            row = effect_row(estimates["primary"][(item, population)])
            interval = _interval(row)  # none when the model gave no interval
            reproduced = None if interval is None else effect_direction(
                *interval, better.get(item, True))
            source = f"{item}.{population}.json: difference {fmt_number(row['estimate'])} " \
                     f"({fmt_ci(row['ci_low'], row['ci_high'])})"
            effect = true_effect(truth, item)
            if effect is not None:
                truth_dir = f"effect {fmt_number(effect)}"
        rows.append({
            "kind": "direction", "item": item, "published": claim,
            "reproduced": reproduced or "", "true_value": truth_dir,
            "match": "" if reproduced is None else ("yes" if reproduced == claim else "no"),
            "criterion": "CI vs 1 (ratio)" if item == "sessions" else "CI vs 0",
            "source": source or "not computed by this pipeline",
            "evidence": EVIDENCE["not_computed"] if reproduced is None else
            EVIDENCE["planted"] if truth_dir else EVIDENCE["direction"],
        })
    for entry in published.get("estimates") or []:
        key = (entry["outcome"], entry["population"])
        reproduced, match, source = "", "", "not computed by this pipeline"
        if key in estimates["primary"]:
            row = effect_row(estimates["primary"][key])
            reproduced = f"{fmt_number(row['estimate'])} ({fmt_ci(row['ci_low'], row['ci_high'])})"
            interval = _interval(row)
            match = "" if interval is None else (
                "yes" if interval[0] <= float(entry["estimate"]) <= interval[1] else "no")
            source = f"{key[0]}.{key[1]}.json"
        shown = fmt_number(entry["estimate"])
        if "ci_low" in entry and "ci_high" in entry:
            shown += f" ({fmt_ci(entry['ci_low'], entry['ci_high'])})"
        effect = true_effect(truth, entry["outcome"])
        rows.append({
            "kind": "estimate", "item": f"{entry['outcome']} ({entry['population']})",
            "published": shown, "reproduced": reproduced, "match": match,
            "true_value": "" if effect is None else fmt_number(effect),
            "criterion": "inside reproduced CI", "source": source,
            "evidence": EVIDENCE["estimate"] if reproduced else EVIDENCE["not_computed"],
        })
    if not published.get("estimates"):
        rows.append({
            "kind": "not_compared", "item": "effect sizes", "published": "not public",
            "reproduced": "", "match": "", "true_value": "", "criterion": "",
            "source": "published.estimates", "evidence": EVIDENCE["not_public"],
        })
    return pd.DataFrame(rows, columns=REPRODUCTION_COLUMNS)


# --------------------------------------------------------------------------------------------
# Step entry point
# --------------------------------------------------------------------------------------------
def build_tables(
    config: Mapping[str, Any], analysis: pd.DataFrame, estimates: Mapping[str, Any],
    tables_folder: Path, truth: Mapping[str, Any] | None,
) -> dict[str, pd.DataFrame]:
    """Compute every report table in memory (nothing is written)."""
    return {
        "table1": table_one_by_population(analysis, config),
        "primary_estimates": primary_estimates(estimates, config, truth),
        "subgroup_estimates": subgroup_estimates(estimates, config, truth),
        "sessions": _with_truth(tidy_rows(estimates.get("sessions")), truth),
        "responders": tidy_rows(estimates.get("responders")),
        "variance_components": variance_components(estimates),
        "reproduction": reproduction_table(analysis, estimates, config, tables_folder, truth),
        "effects_by_followup": effects_by_followup(estimates, config),
    }


def _with_truth(frame: pd.DataFrame, truth: Mapping[str, Any] | None) -> pd.DataFrame:
    frame = frame.copy()
    ratio = true_sessions_ratio(truth)
    is_ratio = frame["term"].astype(str).str.lower().str.contains("ratio")
    frame["true_value"] = np.where(is_ratio & (ratio is not None), ratio, np.nan)
    return frame


def run_tables(
    config: dict[str, Any], analysis: str | Path, estimates: str | Path, out: str | Path
) -> dict[str, Path]:
    """Write the report tables as CSV files into ``out`` (step ``tables``).

    Parameters
    ----------
    config : dict
        Validated study configuration.
    analysis : path
        The analysis table (Parquet) written by ``allocate``.
    estimates : path
        Folder of estimate files (``{outcome}.{population}.json`` and friends).
    out : path
        Tables folder; it already holds ``flow.csv`` and ``implementation.csv`` from
        ``allocate``, which the reproduction check reads.

    Returns
    -------
    dict
        Table name -> path written.
    """
    out = Path(out)
    frame = read_analysis(analysis, config)
    loaded = load_estimates(estimates, config)
    truth = load_truth(raw_folder(config))
    # Everything is computed before anything is written: a failure leaves no partial set.
    tables = build_tables(config, frame, loaded, out, truth)
    return {name: write_csv(tables[name], out / f"{name}.csv") for name in TABLE_NAMES}
