"""The estimators side by side in two populations: the reproduction of the paper and the
target trial's.

Populations
    ``reproduction``: the ``eligibility`` rules only, the published analysis (the default
    cohort: 4193 eligible, 1624 complete cases). ``target_trial``: also the target trial's
    own eligibility, a first-session therapist trained in the intervention by time zero
    (``target_trial.eligibility``; :mod:`trial_analysis.cohort.eligibility`, rule 7). The run's
    main analysis uses ``target_trial.population``; the other population's analysis table is
    derived here by the *same* eligibility and allocation code, with only
    ``target_trial.population`` changed (:func:`derive_population_analysis`), so it is, row for
    row, the table a run with that population would analyse. (Filtering the main table on a
    trained-at-time-zero flag would give the target trial's table from the reproduction's, but
    not the reverse: a target-trial run never sees the episodes it did not enrol.)

Estimators (per outcome, :func:`population_estimates`), each by the code path of the main
analysis, never a second implementation:
    * ``mixed_model``: the primary change-score linear mixed model in complete cases
      (:func:`trial_analysis.models.outcome_models.fit_outcome_model`), valid if selection is
      on stable characteristics (parallel trends);
    * ``change_score``, ``ancova``: least-squares change score and lagged-outcome ANCOVA on the
      patients with both scores and every covariate, and ``bracketing``, the interval between
      them (Ding & Li 2019), from :func:`trial_analysis.causal.doubly_robust.bracketing_rows`;
    * ``augmented_overlap`` (ATO) and ``aipw`` (ATE): the doubly robust estimators of
      :func:`trial_analysis.causal.doubly_robust.run_doubly_robust`, on those same patients.

Each row carries N per arm of the patients it used; counts below ``report.min_cell_count``
are written as ``<k`` in the files people read. Checked: the reproduction rows equal the main
analysis's estimate files and the target-trial rows equal those of a ``population:
target_trial`` run, within 1e-8 relative (``tests/causal/test_populations.py``); the
estimators themselves are checked against R in their own golden tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis import io
from trial_analysis.causal.common import analysis_covariates, ancova_frame, sensitivity_outcomes
from trial_analysis.columns import ARM, THERAPIST
from trial_analysis.config import analysed_population, compare_populations
from trial_analysis.errors import ConfigError
from trial_analysis.io import read_analysis_table
from trial_analysis.privacy import count_text, min_cell_count, suppress_text_counts

POPULATIONS = ("reproduction", "target_trial")
POPULATION_LABELS = {
    "reproduction": "Reproduction of the paper (published population)",
    "target_trial": "Target trial population (therapist trained before time zero)",
}
# estimator key -> (readable label, the assumption under which it is valid)
ESTIMATORS: dict[str, tuple[str, str]] = {
    "mixed_model": ("Change-score mixed model (primary, complete cases)",
                    "parallel trends: selection on stable characteristics"),
    "change_score": ("Change score, least squares",
                     "parallel trends: selection on stable characteristics"),
    "ancova": ("ANCOVA (lagged outcome)", "ignorability given the baseline score"),
    "augmented_overlap": ("Augmented overlap weighting (doubly robust, ATO)",
                          "no unmeasured confounding given covariates and baseline; "
                          "propensity or outcome model correct"),
    "aipw": ("Augmented inverse probability weighting (doubly robust, ATE)",
             "no unmeasured confounding given covariates and baseline; positivity; "
             "propensity or outcome model correct"),
    "bracketing": ("Bracketing interval, change score to ANCOVA (Ding & Li)",
                   "the effect lies in it if either of the two holds and 0 < b < 1"),
}
COLUMNS = ["population", "population_label", "outcome", "estimator", "estimator_label",
           "assumption", "estimate", "std_error", "ci_low", "ci_high", "p_value",
           "n_patients", "n_intervention", "n_control", "n_clusters", "notes"]


def other_population(config: Mapping[str, Any]) -> str:
    """The population the main analysis does not use."""
    main = analysed_population(config)
    return POPULATIONS[1] if main == POPULATIONS[0] else POPULATIONS[0]


def population_config(config: Mapping[str, Any], population: str) -> dict[str, Any]:
    """A copy of ``config`` whose ``target_trial.population`` is ``population``."""
    if population not in POPULATIONS:
        raise ConfigError("command line", [f"population '{population}' is not one of "
                                           f"{list(POPULATIONS)}"])
    changed = copy.deepcopy(dict(config))
    changed["target_trial"] = {**(changed.get("target_trial") or {}), "population": population}
    return changed


def derive_population_analysis(
    config: Mapping[str, Any], population: str, tables: Mapping[str, pd.DataFrame],
    clean_ledger: pd.DataFrame, sources: Mapping[str, str] | None = None,
    cohort_path: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eligible cohort and analysis table of ``population`` from the cleaned tables.

    The eligibility and allocation steps' own functions with ``target_trial.population`` set
    to ``population``. With ``cohort_path`` the cohort goes through its Parquet file, as
    between the two steps of a run, so that the column types are those a run of that
    population gives.
    """
    from trial_analysis.cohort.allocate import allocate_arms
    from trial_analysis.cohort.eligibility import apply_eligibility, read_parquet_input

    changed = population_config(config, population)
    eligible = apply_eligibility(changed, tables, clean_ledger, sources=sources)
    cohort = eligible.cohort
    if cohort_path is not None:
        io.write_parquet(cohort, cohort_path)
        cohort = read_parquet_input(cohort_path, f"{population} cohort")
    analysis = allocate_arms(changed, cohort, tables, sources=sources).analysis
    if "variable_labels" in tables["patients"].attrs:  # the file's labels, as in a run
        analysis.attrs["variable_labels"] = tables["patients"].attrs["variable_labels"]
    return cohort, analysis


def run_population_analysis(
    config: Mapping[str, Any], clean: str | Path, clean_ledger: str | Path, population: str,
    cohort: str | Path, analysis: str | Path,
) -> pd.DataFrame:
    """CLI ``population-analysis``: the cohort and analysis table of one population.

    Reads the cleaned tables and the cleaning ledger (as ``eligibility`` does) and writes what
    ``eligibility`` and ``allocate`` would write for that population's cohort and analysis
    table. Nothing is written unless every check passes (the cohort first, then the table).
    """
    from trial_analysis.cohort.eligibility import TABLES, read_clean_tables, read_parquet_input

    tables, sources = read_clean_tables(clean, TABLES)
    sources["ledger"] = str(clean_ledger)
    sources["cohort"] = str(cohort)
    ledger = read_parquet_input(clean_ledger, "cleaning ledger, written by `clean`")
    _, frame = derive_population_analysis(config, population, tables, ledger, sources,
                                          cohort_path=cohort)
    io.write_parquet(frame, analysis)
    return frame


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def _arm_counts(arms: pd.Series) -> tuple[int, int]:
    values = pd.to_numeric(arms, errors="coerce")
    return int((values == 1).sum()), int((values == 0).sum())


def _row(population: str, outcome: str, estimator: str, values: Mapping[str, Any],
         counts: tuple[int, int], n_clusters: Any, notes: str = "") -> dict[str, Any]:
    label, assumption = ESTIMATORS[estimator]

    def number(key: str) -> float:
        value = values.get(key, math.nan)
        return math.nan if value is None else float(value)

    return {"population": population, "population_label": POPULATION_LABELS[population],
            "outcome": outcome, "estimator": estimator, "estimator_label": label,
            "assumption": assumption, "estimate": number("estimate"),
            "std_error": number("std_error"), "ci_low": number("ci_low"),
            "ci_high": number("ci_high"), "p_value": number("p_value"),
            "n_patients": sum(counts), "n_intervention": counts[0], "n_control": counts[1],
            "n_clusters": n_clusters, "notes": notes}


def _mixed_model_row(analysis: pd.DataFrame, config: dict[str, Any], population: str,
                     outcome: str, source: str) -> dict[str, Any]:
    """The primary mixed model of ``outcome`` in complete cases, as ``fit-models`` fits it."""
    from trial_analysis.models.outcome_models import fit_outcome_model, long_data, model_spec

    fit = fit_outcome_model(analysis, config, outcome, "complete_case", source=source)
    long, _ = long_data(analysis, model_spec(config, outcome, "complete_case"), source)
    counts = _arm_counts(long.drop_duplicates("patient_id")["arm"])
    return _row(population, outcome, "mixed_model", fit.effect.to_dict(), counts,
                fit.n_clusters_outer, "; ".join(fit.warnings))


def population_estimates(
    analysis: pd.DataFrame, config: Mapping[str, Any], population: str,
    source: str = "analysis table",
) -> list[dict[str, Any]]:
    """Every estimator of every outcome (``sensitivity.outcomes``) on one population's table.

    ``analysis`` must be that population's analysis table; the config is used with
    ``target_trial.population`` set to ``population``, as a run of it would be.
    """
    from trial_analysis.causal.doubly_robust import run_doubly_robust

    changed = population_config(config, population)
    covariates = analysis_covariates(changed)
    robust = run_doubly_robust(analysis, changed, source=source).estimates
    rows = []
    for outcome in sensitivity_outcomes(changed):
        rows.append(_mixed_model_row(analysis, changed, population, outcome, source))
        analysed, _ = ancova_frame(analysis, outcome, covariates, source)
        counts = _arm_counts(analysed[ARM])
        clusters = int(analysed[THERAPIST].nunique())
        mine = robust[robust["outcome"] == outcome].set_index("term", drop=False)
        for estimator in ("change_score", "ancova", "augmented_overlap", "aipw"):
            found = robust[(robust["outcome"] == outcome) & (robust["method"] == estimator)]
            if found.empty:  # an estimand left out of sensitivity.doubly_robust.estimands
                continue
            record = found.iloc[0].to_dict()
            rows.append(_row(population, outcome, estimator, record, counts, clusters,
                             str(record.get("notes") or "")))
        interval = {"ci_low": mine.loc["bracket_lower", "estimate"],
                    "ci_high": mine.loc["bracket_upper", "estimate"]}
        rows.append(_row(population, outcome, "bracketing", interval, counts, clusters,
                         str(mine.loc["bracket_lower", "notes"])))
    return rows


def population_summary(analysis: pd.DataFrame, population: str) -> dict[str, Any]:
    """Eligible patients and complete cases per arm of one population (raw counts)."""
    eligible = _arm_counts(analysis[ARM])
    complete = _arm_counts(analysis.loc[analysis["complete_case"] == 1, ARM])
    return {"population": population, "label": POPULATION_LABELS[population],
            "n_eligible": sum(eligible), "n_eligible_intervention": eligible[0],
            "n_eligible_control": eligible[1], "n_complete_cases": sum(complete),
            "n_complete_intervention": complete[0], "n_complete_control": complete[1]}


def estimators_by_population(
    tables: Mapping[str, pd.DataFrame], config: Mapping[str, Any],
    sources: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The estimators side by side: tidy rows (:data:`COLUMNS`) and each population's counts.

    ``tables`` maps each of :data:`POPULATIONS` to its analysis table. Rows come population by
    population (reproduction first), then by outcome, in :data:`ESTIMATORS` order.
    """
    missing = [p for p in POPULATIONS if p not in tables]
    if missing:
        raise ConfigError("command line", [f"no analysis table for population '{p}'"
                                           for p in missing])
    sources = dict(sources or {})
    rows: list[dict[str, Any]] = []
    summaries = []
    for population in POPULATIONS:
        source = sources.get(population, f"{population} analysis table")
        rows += population_estimates(tables[population], config, population, source)
        summaries.append(population_summary(tables[population], population))
    return pd.DataFrame(rows, columns=COLUMNS), summaries


def _suppressed(frame: pd.DataFrame, columns: Sequence[str], k: int) -> pd.DataFrame:
    out = frame.copy()
    for column in columns:
        out[column] = [count_text(v, k) for v in out[column]]
    # the estimators' notes count patients too ("3 patients with propensity < 0.01")
    out["notes"] = [suppress_text_counts(str(v), k) if isinstance(v, str) else v
                    for v in out["notes"]]
    return out


def run_estimators_by_population(
    config: Mapping[str, Any], analysis: str | Path, other_analysis: str | Path,
    out_csv: str | Path, out_json: str | Path,
) -> pd.DataFrame:
    """CLI ``estimators-by-population``: the estimators in both populations.

    ``analysis`` is the main analysis table (population ``target_trial.population``),
    ``other_analysis`` the other population's (``population-analysis``). Writes the tidy rows
    as CSV and, with each population's counts and the main population, as JSON; counts of
    patients below ``report.min_cell_count`` are written as ``<k``.
    """
    if not compare_populations(config):
        raise ConfigError("config", ["target_trial/compare_populations: the comparison of "
                                     "populations is off or does not apply to this study "
                                     "(randomised design, no trained-therapist rule, or no "
                                     "therapists or sessions table)"])
    main, other = analysed_population(config), other_population(config)
    paths = {main: str(analysis), other: str(other_analysis)}
    tables = {name: read_analysis_table(path) for name, path in paths.items()}
    frame, summaries = estimators_by_population(tables, config, paths)
    k = min_cell_count(config)
    counts = ["n_patients", "n_intervention", "n_control", "n_clusters"]
    shown = _suppressed(frame, counts, k)
    io.write_csv(shown, out_csv)
    summary_counts = [key for key in summaries[0] if key.startswith("n_")]
    document = {
        "analysis": "estimators_by_population",
        "main_population": main,
        "populations": [{key: (count_text(v, k) if key in summary_counts else v)
                         for key, v in s.items()} for s in summaries],
        "estimates": [{key: (None if isinstance(v, float) and not np.isfinite(v) else v)
                       for key, v in row.items()} for row in shown.to_dict("records")],
    }
    io.write_json(document, out_json)
    return frame
