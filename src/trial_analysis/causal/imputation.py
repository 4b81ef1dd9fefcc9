"""Missing follow-up: multiple imputation, Rubin's rules and the delta-adjusted tipping point.

Most patients lack a discharge score, so the primary estimates lean on "missing at random"
(complete cases: MCAR given covariates; all-available likelihood: MAR given the model's own
variables). This module adds:

Multiple imputation by chained equations (``sensitivity.multiple_imputation``)
    Written out here rather than taken from ``statsmodels.imputation.mice`` so that every step
    is visible and seeded. Imputed: baseline and follow-up of every configured outcome and the
    ``auxiliary`` variables (default ``n_sessions``, BMI, SES, depression, anxiety) that have
    missing values. Predictors of each: every other imputed variable (current values), the
    fully observed auxiliaries and the numeric-coded ``analysis.covariates``. With ``by_arm``
    (default) the imputation runs separately in each arm, so every relation may differ between
    arms (the arm's own effect and any arm x covariate interaction are preserved, as advised
    for trials); otherwise the arm is a predictor. Each variable is imputed by predictive mean
    matching exactly as ``mice``'s ``pmm`` does: a Bayesian linear regression on the observed
    rows gives the fitted values (``beta_hat``) of observed rows and a posterior draw
    (``sigma* ~ SSR / chi2_(n-k)``, ``beta* ~ N(beta_hat, sigma*^2 (X'X)^-1)``) gives those of
    missing rows; each missing value is copied from one of the ``donors`` (5) observed rows with
    the nearest fitted value, chosen at random. Imputations therefore are always values that were
    actually observed, inside the instrument's range (the ``d`` nearest form a run of the
    observed rows sorted by fitted value; among exactly equally near candidates the run nearest
    the missing row's fitted value is taken). ``m`` independent chains of ``iterations``
    (10) sweeps each, started from random draws of observed values.

Therapist clustering (``therapist_means``, default on)
    Every imputation model also has, for each imputed variable, the leave-one-out mean of its
    observed values among the patient's therapist's other patients (:func:`therapist_means`;
    the cluster-means approach of Enders, Mistler & Keller 2016), so that a therapist whose
    patients do well predicts their missing patients doing well, as the clustered analysis
    model assumes. Ignoring the cluster in the imputation model shrinks imputations towards
    the arm mean and understates the between-therapist variance.

How many imputations (``m``, default ``auto``)
    With ``m: auto`` a pilot of ``pilot_m`` (20) imputations is pooled per outcome and ``m`` is
    raised to at least 100 times the largest fraction of missing information (White, Royston &
    Wood 2011), capped at ``max_m`` (:func:`choose_m`); the pilot's chains are the first chains
    of the final set, so the result equals imputing ``m`` at once. The choice is recorded in
    the imputation file and in each pooled estimate's notes. A whole number fixes ``m``.

Random streams and parallel chains
    Every chain, imputation ``i`` of arm ``g`` (``g = 0`` the only group without ``by_arm``),
    draws from its own generator, ``SeedSequence(seed, spawn_key=(i, g))`` (the same stream as
    ``SeedSequence(seed).spawn(m)[i].spawn(n_groups)[g]``), as ``mice``'s ``futuremice`` seeds
    its parallel chains. The chains are therefore independent of each other and of how many
    processes run them (``impute_chained(..., jobs=N)``, ``trial-analysis impute --jobs N``):
    same data, config and seed give byte-identical imputations for every ``N``. Earlier
    versions drove all chains from one generator in sequence; their MI and tipping-point
    numbers differ from these by Monte Carlo noise only (checked on the default cohort over
    eight seeds). For speed on registry extracts each regression's sums come from a Gram
    matrix of all rows kept current (observed rows' sums = all rows' minus missing rows'
    when fewer are missing); this equals the direct sums up to rounding, but chained PMM
    turns any rounding difference into other, equally valid, donor draws, so the imputations
    are not bit-identical to a direct computation.

Imputing once (rule ``impute``)
    The pipeline imputes once, writing ``{interim}/imputations.parquet``
    (:func:`write_imputations`: one row per imputed cell, its row position in the analysis
    table, its column and one value column per imputation), which the ``multiple_imputation``
    and ``tipping_point`` analyses read (:func:`read_imputations`, which checks the file
    against the analysis table and config) instead of imputing again. Called without a file
    (:func:`run_multiple_imputation`, :func:`run_tipping_point`), they impute themselves,
    with the same result.

Analysis model and pooling
    ANCOVA on each imputed dataset (follow-up on arm, baseline and ``analysis.covariates``,
    therapist-clustered CR1 SE; :func:`trial_analysis.causal.sensitivity.fit_ancova`), pooled with
    Rubin's rules: ``Q = mean(q)``, ``W = mean(u)``, ``B = var(q)``, ``T = W + (1 + 1/m) B``,
    with the Barnard-Rubin (1999) degrees of freedom using complete-data df ``G - 1``
    (therapists minus one). The complete-case ANCOVA is reported beside it.

Tipping point (``sensitivity.tipping_point``; MNAR, delta adjustment)
    After imputation, every *imputed* follow-up score in the intervention arm is shifted by
    ``delta`` in the unfavourable direction (down when ``higher_is_better``, up otherwise): the
    intervention patients without a discharge score are assumed to have fared ``delta`` points
    worse than similar observed patients. The grid runs from 0 to ``delta_max_mcid`` MCIDs in
    ``delta_steps`` steps; the tipping point is the smallest delta at which the confidence
    interval of the arm effect includes 0, located exactly by root finding between grid points.
    Control-arm imputations are left as they are (MAR), the conventional one-sided analysis.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd

from trial_analysis.causal.common import (
    ARM_TERM,
    FORM_NOTES,
    MISSING_COLUMN,
    SensitivityResult,
    analysis_covariates,
    ancova_design,
    cluster_sums,
    encode_columns,
    fit_ancova,
    form_method,
    model_forms,
    outcome_specs,
    primary_effects,
    sensitivity_frame,
    sensitivity_outcomes,
    settings,
    t_interval,
    tidy_row,
)
from trial_analysis.columns import ARM, THERAPIST, check_arm, outcome_columns
from trial_analysis.config import confidence_level
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import atomic_path, read_analysis_table, require_columns
from trial_analysis.models.robust import cr1_factor
from trial_analysis.parallel import map_shared

# mice adds this ridge to X'X (relative to its diagonal) so that near-collinear predictors
# never make the posterior draw fail.
_RIDGE = 1e-5


# --------------------------------------------------------------------------------------------
# Chained equations with predictive mean matching
# --------------------------------------------------------------------------------------------


def _stable_argsort(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")``, computed faster when there are no ties.

    Without ties every sort gives the same order, so the (several times faster) default sort is
    used and checked; with ties the stable sort decides, so the order never depends on the
    machine's sort kernel.
    """
    order = np.argsort(values)
    ranked = values[order]
    if len(ranked) > 1 and bool((ranked[1:] == ranked[:-1]).any()):
        return np.argsort(values, kind="stable")
    return order


def donor_candidates(
    fitted_obs: np.ndarray, fitted_mis: np.ndarray, donors: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The ``d = min(donors, n_obs)`` observed rows nearest each missing row's fitted value.

    Returns ``order`` (observed rows sorted by fitted value, stable), ``first`` and ``d``: the
    candidates of missing row ``i`` are ``order[first[i]:first[i] + d]``, the ``d`` nearest
    (ties: the one earlier in ``order`` first, as a stable sort of the distances would choose).

    The nearest ``d`` values of a sorted list are contiguous around the insertion point, so
    only a window of ``2d`` sorted candidates per row is compared; inside it, the run of ``d``
    slides right while the value past its right end is strictly nearer than its left end, or
    equal to it and below the target: a run of equal values below the target may hide nearer
    values beyond it (observed 0, 0, 0, 1 and target 1: the two nearest are 1 and a 0).
    """
    n_obs, n_mis = len(fitted_obs), len(fitted_mis)
    d = min(donors, n_obs)
    order = _stable_argsort(fitted_obs)
    ranked = fitted_obs[order]
    width = min(2 * d, n_obs)
    # Missing rows are handled in order of their fitted values: the binary searches and the
    # reads of sorted neighbours then walk memory in order (several times faster at scale).
    query_order = np.argsort(fitted_mis)
    targets = fitted_mis[query_order]
    start = np.searchsorted(ranked, targets) - d
    np.clip(start, 0, n_obs - width, out=start)
    offset = np.zeros(n_mis, dtype=np.intp)
    for _ in range(width - d):
        left = start + offset
        low, high = ranked[left], ranked[left + d]
        offset += (np.abs(high - targets) < np.abs(low - targets)) | (
            (high == low) & (low < targets))
    first = np.empty(n_mis, dtype=np.intp)
    first[query_order] = start + offset
    return order, first, d


def match_donors(
    fitted_obs: np.ndarray, fitted_mis: np.ndarray, donors: int, rng: np.random.Generator
) -> np.ndarray:
    """For each missing row, the index of an observed row drawn among the ``donors`` nearest.

    Each of the ``d`` nearest (:func:`donor_candidates`) is equally likely, as in ``mice``;
    the random integer picks the candidate by its rank in fitted value.
    """
    order, first, d = donor_candidates(fitted_obs, fitted_mis, donors)
    return order[first + rng.integers(0, d, len(fitted_mis))]


def _impute_group(
    values: np.ndarray, predictors: np.ndarray, iterations: int, donors: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One chain of chained-equation PMM for one group (arm) of patients.

    ``values`` holds the variables to impute (NaN where missing), ``predictors`` the fully
    observed ones; returns ``values`` completed.
    """
    missing = np.isnan(values)
    n_fixed = 1 + predictors.shape[1]
    # One matrix [1, predictors, variables] kept current; the model of variable j uses every
    # column but its own, in that order.
    # Column-major: fitted values, a variable's column and its Gram refresh then read
    # contiguous memory.
    design = np.empty((len(values), n_fixed + values.shape[1]), order="F")
    design[:, 0] = 1.0
    design[:, 1:n_fixed] = predictors
    design[:, n_fixed:] = values
    columns = [j for j in range(values.shape[1]) if missing[:, j].any()]
    for j in columns:
        observed = values[~missing[:, j], j]
        design[missing[:, j], n_fixed + j] = rng.choice(observed, int(missing[:, j].sum()))
    observed_rows = {j: np.flatnonzero(~missing[:, j]) for j in columns}
    missing_rows = {j: np.flatnonzero(missing[:, j]) for j in columns}
    n_columns = design.shape[1]
    # The Gram matrix of all rows is kept current (a changed column refreshes its row and
    # column), so the observed rows' Gram is gathered directly when they are the fewer and
    # otherwise as all rows minus the missing ones: no step gathers more than half the rows.
    # Fitted values come from passes over the whole design (cheaper than gathering rows).
    gram_all = design.T @ design
    gathered = max((min(len(observed_rows[j]), len(missing_rows[j])) for j in columns),
                   default=0)
    # One buffer (a column per row of it) for the gathered rows: fresh arrays this large would
    # be mapped and page-faulted anew at every step.
    buffer = np.empty((n_columns, gathered))

    def gather(rows: np.ndarray) -> np.ndarray:
        out = buffer[:, :len(rows)]
        for column in range(n_columns):
            np.take(design[:, column], rows, out=out[column])
        return out.T

    for _ in range(iterations):
        for j in columns:
            obs, mis = observed_rows[j], missing_rows[j]
            own = n_fixed + j
            model = np.delete(np.arange(n_columns), own)
            if len(obs) <= len(mis):
                rows = gather(obs)
                gram = rows.T @ rows
            else:
                rows = gather(mis)
                gram = gram_all - rows.T @ rows
            xtx = gram[np.ix_(model, model)]
            xtx = xtx + np.diag(np.maximum(np.diag(xtx), 1.0) * _RIDGE)
            inverse = np.linalg.inv(xtx)
            beta_hat = np.zeros(n_columns)
            beta_hat[model] = inverse @ gram[model, own]
            y_obs = design[obs, own]
            fitted_obs = (design @ beta_hat)[obs]
            residual = y_obs - fitted_obs
            df = max(len(obs) - len(model), 1)
            sigma = math.sqrt(float(residual @ residual) / rng.chisquare(df))
            chol = np.linalg.cholesky((inverse + inverse.T) / 2)
            beta_star = np.zeros(n_columns)
            beta_star[model] = beta_hat[model] + sigma * chol @ rng.standard_normal(len(model))
            fitted_mis = (design @ beta_star)[mis]
            donor = match_donors(fitted_obs, fitted_mis, donors, rng)
            design[mis, own] = y_obs[donor]
            refreshed = design.T @ design[:, own]
            gram_all[own, :] = refreshed
            gram_all[:, own] = refreshed
    return design[:, n_fixed:].copy()


@dataclass(frozen=True)
class _ChainInputs:
    """What every chain needs: per group its values to impute and fixed predictors."""

    values: tuple[np.ndarray, ...]
    predictors: tuple[np.ndarray, ...]
    iterations: int
    donors: int
    seed: int


def _chain(inputs: _ChainInputs, imputation: int, group: int) -> np.ndarray:
    """Imputation ``imputation`` of group ``group``: the imputed cells, row by row.

    Its random stream is ``SeedSequence(seed, spawn_key=(imputation, group))``, the same as
    ``SeedSequence(seed).spawn(m)[imputation].spawn(n_groups)[group]``: independent of every
    other chain and of the order or process in which chains run.
    """
    rng = np.random.default_rng(np.random.SeedSequence(inputs.seed,
                                                       spawn_key=(imputation, group)))
    values = inputs.values[group]
    completed = _impute_group(values, inputs.predictors[group], inputs.iterations,
                              inputs.donors, rng)
    return completed[np.isnan(values)]


def _chain_task(inputs: _ChainInputs, task: tuple[int, int]) -> np.ndarray:
    return _chain(inputs, *task)


class CompletedDatasets(Sequence[pd.DataFrame]):
    """The ``m`` completed tables, each built when it is asked for.

    Only the imputed cells of each replicate are stored (``cells``: ``m`` x the number of
    missing cells, in row-major order of ``mask``): ``m`` full copies of a registry's analysis
    table would not fit in memory, and each analysis needs one table at a time.
    """

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str], mask: np.ndarray,
                 cells: np.ndarray):
        self._frame = frame
        self._columns = list(columns)
        self.mask = mask
        self.cells = cells
        self._observed = frame[self._columns].to_numpy(dtype=float)

    def __len__(self) -> int:
        return len(self.cells)

    @overload
    def __getitem__(self, index: int) -> pd.DataFrame: ...

    @overload
    def __getitem__(self, index: slice) -> list[pd.DataFrame]: ...

    def __getitem__(self, index: int | slice) -> pd.DataFrame | list[pd.DataFrame]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        filled = self._observed.copy()
        filled[self.mask] = self.cells[index]
        completed = self._frame.copy()
        completed[self._columns] = pd.DataFrame(filled, index=self._frame.index,
                                                columns=self._columns)
        return completed


@dataclass
class Imputations:
    """``m`` completed copies of the analysis table and the mask of imputed cells.

    Attributes
    ----------
    datasets : sequence of DataFrame
        Completed tables (all columns of the input; imputed columns filled), built one at a
        time on access (:class:`CompletedDatasets`).
    missing : DataFrame
        True where a value of an imputed column was missing (and so imputed).
    columns : list of str
        The imputed columns.
    excluded : int
        Patients left out (lacking a text covariate).
    positions : ndarray, optional
        Row positions, in the analysis table, of the rows of ``datasets`` and ``missing``.
    m_choice : dict, optional
        With ``m: auto``, how ``m`` was chosen (:func:`choose_m`); None for a fixed ``m``.
    """

    datasets: Sequence[pd.DataFrame]
    missing: pd.DataFrame
    columns: list[str]
    excluded: int = 0
    positions: np.ndarray | None = None
    m_choice: dict[str, Any] | None = None


@dataclass
class _Prepared:
    """The analysis table made ready for imputation (see :func:`_prepare`)."""

    frame: pd.DataFrame
    columns: list[str]
    values: np.ndarray
    groups: list[np.ndarray]
    predictors: list[np.ndarray]
    positions: np.ndarray
    excluded: int
    options: dict[str, Any]


def therapist_means(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per patient, the mean of each column's observed values among the therapist's *other*
    patients.

    The cluster-means way of carrying a two-level structure into a single-level imputation
    model (Enders, Mistler & Keller 2016): a patient's follow-up is predicted partly by how
    the same therapist's other patients fared. Only observed values enter, so the predictor is
    fixed over the chained sweeps. The patient's own value is left out (leave-one-out), so an
    observed row's predictor never contains its own response, which would overstate the
    cluster's weight in small clusters. Where the therapist has no other observed value the
    column's observed mean is used (the cluster carries no information). Columns are named
    ``therapist_mean_<column>``.
    """
    by_therapist = frame.groupby(THERAPIST, sort=True, observed=True)
    out = {}
    for column in columns:
        values = frame[column].astype(float)
        seen = values.notna().astype(float)
        total = by_therapist[column].transform("sum") - values.fillna(0.0)
        count = seen.groupby(frame[THERAPIST], sort=True, observed=True).transform("sum") - seen
        means = (total / count).where(count > 0)
        out[f"therapist_mean_{column}"] = means.fillna(values.mean())
    return pd.DataFrame(out, index=frame.index).astype(float)


def _prepare(analysis: pd.DataFrame, config: Mapping[str, Any], source: str,
             m: int | None) -> _Prepared:
    """Rows, variables to impute and per-group predictors, with the input checks."""
    check_arm(analysis, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "multiple_imputation")
    options["m_setting"] = options["m"]
    if m is not None:
        options["m"] = int(m)
    elif options["m"] == "auto":
        options["m"] = int(options["pilot_m"])
    if not isinstance(options["m"], int) or isinstance(options["m"], bool):
        raise ConfigError("config", ["sensitivity.multiple_imputation.m must be a whole number "
                                     f"or 'auto', not {options['m']!r}"])
    if options["m"] < 2:
        raise ConfigError("config", ["sensitivity.multiple_imputation.m must be at least 2"])
    if int(options["max_m"]) < int(options["pilot_m"]):
        raise ConfigError("config", ["sensitivity.multiple_imputation.max_m must be at least "
                                     "pilot_m"])
    covariates = analysis_covariates(config)
    scores = [c for o in config.get("outcomes", []) for c in outcome_columns(o["name"])]
    auxiliary = [c for c in options["auxiliary"] if c not in scores]
    require_columns(analysis, [*scores, *auxiliary, *covariates], source,
                    "multiple imputation", MISSING_COLUMN)
    text = [c for c in auxiliary if not pd.api.types.is_numeric_dtype(analysis[c])]
    if text:
        raise ConfigError("config", [f"sensitivity.multiple_imputation.auxiliary: {text} are "
                                     "not numeric columns; predictive mean matching needs "
                                     "numbers"])
    encoded = encode_columns(analysis, covariates)
    # A text covariate cannot be imputed by PMM on a linear predictor: patients lacking one are
    # left out (and counted) rather than given an invented category.
    keep = encoded.notna().all(axis=1)
    frame = analysis.loc[keep]
    encoded = encoded.loc[keep]
    numeric_covariates = [c for c in covariates
                          if pd.api.types.is_numeric_dtype(analysis[c])]
    impute = [*scores, *[c for c in [*auxiliary, *numeric_covariates]
                         if frame[c].isna().any() and c not in scores]]
    impute = list(dict.fromkeys(impute))
    complete_aux = [c for c in auxiliary if c not in impute]
    fixed = pd.concat([encoded.drop(columns=[c for c in impute if c in encoded.columns]),
                       frame[complete_aux].astype(float)], axis=1)
    fixed = fixed.loc[:, ~fixed.columns.duplicated()]
    arm = frame[ARM].to_numpy()
    groups = ([np.flatnonzero(arm == 1), np.flatnonzero(arm == 0)] if options["by_arm"]
              else [np.arange(len(frame))])
    if not options["by_arm"]:
        fixed = fixed.assign(**{ARM: frame[ARM].astype(float)})
    values = frame[impute].to_numpy(dtype=float)
    for rows in groups:
        empty = [c for c, seen in zip(impute, (~np.isnan(values[rows])).any(axis=0),
                                      strict=True) if not seen]
        if empty:
            raise DataError(source, "a variable to impute has no observed value in an arm, so "
                            "nothing can be imputed from", column=empty[0])
    predictors = []
    for rows in groups:
        in_group = fixed.iloc[rows]
        if options["therapist_means"] and THERAPIST in frame.columns:
            in_group = pd.concat([in_group, therapist_means(frame.iloc[rows], impute)], axis=1)
        varying = in_group.columns[in_group.nunique() > 1]
        predictors.append(np.ascontiguousarray(in_group[varying].to_numpy(float)))
    return _Prepared(frame=frame, columns=impute, values=values, groups=groups,
                     predictors=predictors, positions=np.flatnonzero(keep.to_numpy()),
                     excluded=int((~keep).sum()), options=options)


def _imputations(prepared: _Prepared, cells: np.ndarray,
                 m_choice: dict[str, Any] | None = None) -> Imputations:
    mask = np.isnan(prepared.values)
    missing = pd.DataFrame(mask, index=prepared.frame.index, columns=prepared.columns)
    return Imputations(
        datasets=CompletedDatasets(prepared.frame, prepared.columns, mask, cells),
        missing=missing, columns=prepared.columns, excluded=prepared.excluded,
        positions=prepared.positions, m_choice=m_choice)


def _run_chains(prepared: _Prepared, inputs: _ChainInputs, imputations: range,
                jobs: int) -> np.ndarray:
    """The imputed cells of ``imputations`` (one row each, row-major over the missing mask)."""
    tasks = [(i, g) for i in imputations for g in range(len(prepared.groups))]
    results = map_shared(_chain_task, inputs, tasks, jobs, progress="imputation chains")
    # Cell k of the table (row-major over the missing mask) is cell k_g of its group's chain.
    mask = np.isnan(prepared.values)
    cell_number = np.full(mask.shape, -1, dtype=np.int64)
    cell_number[mask] = np.arange(int(mask.sum()))
    targets = [cell_number[rows][mask[rows]] for rows in prepared.groups]
    cells = np.empty((len(imputations), int(mask.sum())))
    for (i, g), result in zip(tasks, results, strict=True):
        cells[i - imputations.start, targets[g]] = result
    return cells


def m_choice_note(choice: Mapping[str, Any]) -> str:
    """One sentence on how ``m`` was chosen, for the estimate's notes."""
    largest = max(choice["pilot_fmi"].values()) if choice["pilot_fmi"] else 0.0
    text = (f"m chosen as at least 100 x the largest fraction of missing information of a "
            f"{choice['pilot_m']}-imputation pilot ({largest:.2f})")
    if choice["capped"]:
        text += f", capped at max_m={choice['max_m']} (the rule asked for {choice['wanted']})"
    return text


def choose_m(fmi: Mapping[str, float], pilot_m: int, max_m: int) -> dict[str, Any]:
    """``m`` from the pilot's fractions of missing information: ``m >= 100 * FMI``.

    The rule of thumb of White, Royston & Wood (2011, section 7): with ``m`` at least 100
    times the largest FMI, the Monte Carlo error of the pooled estimate, SE and p-value is
    small beside their sampling error. ``m`` is never below the pilot's and never above
    ``max_m``; ``capped`` says when the cap, not the rule, decided.
    """
    largest = max(fmi.values()) if fmi else 0.0
    wanted = math.ceil(100 * largest - 1e-9)
    return {"rule": "m >= 100 x largest FMI of the pilot", "pilot_m": int(pilot_m),
            "pilot_fmi": {k: round(float(v), 4) for k, v in fmi.items()},
            "wanted": int(wanted), "max_m": int(max_m), "capped": wanted > max_m,
            "m": int(min(max_m, max(pilot_m, wanted)))}


def impute_chained(
    analysis: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis table",
    m: int | None = None, jobs: int = 1,
) -> Imputations:
    """Multiple imputation by chained equations with PMM (see the module docstring).

    ``jobs`` processes run the chains (one per imputation and group, each with its own seeded
    stream); the result does not depend on ``jobs``.
    """
    prepared = _prepare(analysis, config, source, m)
    options = prepared.options
    inputs = _ChainInputs(
        values=tuple(np.ascontiguousarray(prepared.values[rows]) for rows in prepared.groups),
        predictors=tuple(prepared.predictors), iterations=int(options["iterations"]),
        donors=int(options["donors"]), seed=int(config.get("seed", 0)))
    cells = _run_chains(prepared, inputs, range(options["m"]), jobs)
    if m is not None or options["m_setting"] != "auto":
        return _imputations(prepared, cells)
    # m: auto. The pilot's chains are the first chains of the final set (each chain has its
    # own stream), so adding chains never changes the pilot's.
    pilot = _imputations(prepared, cells)
    level = confidence_level(config)
    covariates = analysis_covariates(config)
    fmi = {o: pooled_effect(pilot.datasets, o, covariates, level, source)["fmi"]
           for o in sensitivity_outcomes(config)}
    choice = choose_m(fmi, int(options["pilot_m"]), int(options["max_m"]))
    if choice["m"] > options["m"]:
        more = _run_chains(prepared, inputs, range(options["m"], choice["m"]), jobs)
        cells = np.vstack([cells, more])
    return _imputations(prepared, cells, choice)


# --------------------------------------------------------------------------------------------
# The shared imputation file (rule `impute`)
# --------------------------------------------------------------------------------------------

IMPUTATIONS_FORMAT = "trial-analysis imputations"
IMPUTATIONS_VERSION = 1
# The analysis table's stable row key: the file stores row positions and this key's checksum.
ROW_KEY = "episode_id"


def _provenance(analysis: pd.DataFrame, config: Mapping[str, Any],
                prepared: _Prepared) -> dict[str, Any]:
    """What a file's imputations depend on; reading checks it against the table and config."""
    options = prepared.options
    key = ""
    if ROW_KEY in analysis.columns:
        keys = analysis[ROW_KEY]
        if not (pd.api.types.is_string_dtype(keys) and keys.notna().all()):
            keys = keys.astype(str)
        key = hashlib.sha256("\n".join(keys.tolist()).encode()).hexdigest()
    return {
        "format": IMPUTATIONS_FORMAT, "version": IMPUTATIONS_VERSION,
        "seed": int(config.get("seed", 0)), "m": int(options["m"]),
        "m_setting": options["m_setting"], "pilot_m": int(options["pilot_m"]),
        "max_m": int(options["max_m"]), "therapist_means": bool(options["therapist_means"]),
        "iterations": int(options["iterations"]), "donors": int(options["donors"]),
        "by_arm": bool(options["by_arm"]), "auxiliary": list(options["auxiliary"]),
        "covariates": analysis_covariates(config), "columns": list(prepared.columns),
        "n_rows": len(analysis), "excluded": prepared.excluded,
        "row_key": ROW_KEY if key else None, "row_key_sha256": key or None,
    }


def _cell_keys(prepared: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Row position (in the analysis table) and column number of every imputed cell."""
    rows, columns = np.nonzero(np.isnan(prepared.values))
    return prepared.positions[rows], columns


def write_imputations(
    imputations: Imputations, analysis: pd.DataFrame, config: Mapping[str, Any],
    path: str | Path, source: str = "analysis table",
) -> Path:
    """Write ``imputations`` of ``analysis`` to Parquet (atomically): one row per imputed cell.

    Columns: ``row`` (position in the analysis table, 0-based), ``column`` (the imputed
    variable) and ``imputation_1`` ... ``imputation_m`` (its value in each imputation); rows in
    row-major order of the missing mask. The schema metadata ``trial_analysis`` (JSON) records
    the settings, seed, imputed columns, row count, excluded count and a SHA-256 of the table's
    ``episode_id`` column, which :func:`read_imputations` checks.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    prepared = _prepare(analysis, config, source, len(imputations.datasets))
    if not isinstance(imputations.datasets, CompletedDatasets):
        raise TypeError("write_imputations needs the imputations made by impute_chained")
    cells = imputations.datasets.cells
    rows, columns = _cell_keys(prepared)
    if prepared.columns != imputations.columns or cells.shape[1] != len(rows):
        raise DataError(source, "the imputations were not made from this table and config")
    names = np.asarray(prepared.columns, dtype=object)[columns]
    table = pa.table({
        "row": pa.array(rows, type=pa.int64()),
        "column": pa.array(names, type=pa.string()).dictionary_encode(),
        **{f"imputation_{i + 1}": pa.array(cells[i]) for i in range(len(cells))},
    })
    metadata = json.dumps({**_provenance(analysis, config, prepared),
                           "m_choice": imputations.m_choice}, sort_keys=True)
    table = table.replace_schema_metadata({"trial_analysis": metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_imputations(
    path: str | Path, analysis: pd.DataFrame, config: Mapping[str, Any],
    source: str = "analysis table",
) -> Imputations:
    """Read a file of :func:`write_imputations` back into the same :class:`Imputations`.

    The file must belong to ``analysis`` and ``config``: the settings, seed, imputed columns,
    row count, row-key checksum and every imputed cell's row and column are checked; a
    mismatch raises :class:`DataError` (rerun the ``impute`` step).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "the imputation file does not exist",
                        hint="Run the `impute` step first")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(str(path), f"not a readable Parquet file ({exc})") from None
    stored = json.loads((table.schema.metadata or {}).get(b"trial_analysis", b"{}"))
    prepared = _prepare(analysis, config, source, None)
    expected = _provenance(analysis, config, prepared)
    if expected["m_setting"] == "auto" and isinstance(stored.get("m_choice"), dict):
        # the file's m was chosen from its pilot: any m the rule can give is expected
        expected["m"] = int(stored["m_choice"].get("m", -1))
    differ = sorted(k for k in expected if stored.get(k) != expected[k])
    if differ:
        raise DataError(str(path), f"the imputations were made from another analysis table or "
                        f"configuration (differing: {', '.join(differ)})",
                        hint="Rerun the `impute` step")
    rows, columns = _cell_keys(prepared)
    value_columns = [f"imputation_{i + 1}" for i in range(expected["m"])]
    missing_columns = [c for c in ["row", "column", *value_columns]
                       if c not in table.column_names]
    if missing_columns:
        raise DataError(str(path), "column missing from the imputation file",
                        column=missing_columns[0])
    stored_rows = table.column("row").to_numpy()
    # column names are compared as numbers: the dictionary's names mapped to their position
    names = table.column("column").combine_chunks()
    if not isinstance(names, pa.DictionaryArray):
        names = names.dictionary_encode()
    position = {name: i for i, name in enumerate(prepared.columns)}
    known = np.array([position.get(name, -1) for name in names.dictionary.to_pylist()] or [-1])
    stored_columns = (known[names.indices.to_numpy(zero_copy_only=False)]
                      if names.null_count == 0 else np.full(len(names), -1))
    if (len(stored_rows) != len(rows) or not np.array_equal(stored_rows, rows)
            or not np.array_equal(stored_columns, columns)):
        raise DataError(str(path), "the imputed cells (row, column) are not the missing cells "
                        "of the analysis table", column="row", hint="Rerun the `impute` step")
    cells = np.empty((expected["m"], len(rows)))
    for i, name in enumerate(value_columns):
        cells[i] = table.column(name).to_numpy()
    if np.isnan(cells).any():
        raise DataError(str(path), "an imputed value is missing", column="imputation_*")
    return _imputations(prepared, cells, stored.get("m_choice"))


def run_impute(
    config: Mapping[str, Any], analysis: str | Path, out: str | Path, jobs: int = 1,
) -> Imputations:
    """CLI entry: impute the analysis table once and write ``imputations.parquet``.

    Parameters
    ----------
    config : mapping
        The validated study configuration (``sensitivity.multiple_imputation``, ``seed``).
    analysis : path
        The analysis table (``analysis.parquet``).
    out : path
        The imputation file to write (:func:`write_imputations`).
    jobs : int
        Processes running the chains; the file is the same whatever ``jobs`` is.
    """
    source = str(analysis)
    frame = read_analysis_table(analysis)
    imputations = impute_chained(frame, config, source, jobs=jobs)
    write_imputations(imputations, frame, config, out, source)
    return imputations

# --------------------------------------------------------------------------------------------
# Rubin's rules
# --------------------------------------------------------------------------------------------


def pool_rubin(
    estimates: Sequence[float], variances: Sequence[float], df_complete: float
) -> dict[str, float]:
    """Pool ``m`` estimates with Rubin's rules and Barnard-Rubin degrees of freedom.

    ``Q = mean(q)``, ``W = mean(u)``, ``B = var(q)`` (ddof 1), ``T = W + (1 + 1/m) B``;
    ``lambda = (1 + 1/m) B / T``; ``nu_old = (m - 1) / lambda^2``;
    ``nu_obs = (nu_com + 1) / (nu_com + 3) * nu_com * (1 - lambda)``;
    ``df = nu_old * nu_obs / (nu_old + nu_obs)`` (``nu_obs`` when ``B = 0``).
    Identical to ``mice::pool``.
    """
    q = np.asarray(estimates, dtype=float)
    u = np.asarray(variances, dtype=float)
    m = len(q)
    estimate, within, between = float(q.mean()), float(u.mean()), float(q.var(ddof=1))
    total = within + (1 + 1 / m) * between
    lam = (1 + 1 / m) * between / total if total > 0 else 0.0
    nu_obs = (df_complete + 1) / (df_complete + 3) * df_complete * (1 - lam)
    if lam > 0:
        nu_old = (m - 1) / lam**2
        df = nu_old * nu_obs / (nu_old + nu_obs)
    else:
        df = nu_obs
    riv = (1 + 1 / m) * between / within if within > 0 else math.inf
    return {"estimate": estimate, "std_error": math.sqrt(total), "df": df,
            "within": within, "between": between, "total": total, "lambda": lam,
            "riv": riv, "fmi": (riv + 2 / (df + 3)) / (riv + 1), "m": m}


def pooled_effect(
    datasets: Sequence[pd.DataFrame], outcome: str, covariates: Sequence[str], level: float,
    source: str = "analysis table", form: str = "ancova",
) -> dict[str, Any]:
    """ANCOVA (or, ``form="change"``, change-score) arm effect on every completed dataset,
    pooled (estimate, CI, df, fmi, counts)."""
    fits = [fit_ancova(d, outcome, covariates, source=source, form=form) for d in datasets]
    pairs = [f.coefficient(ARM_TERM) for f in fits]
    pooled = pool_rubin([p[0] for p in pairs], [p[1] ** 2 for p in pairs],
                        df_complete=fits[0].df)
    pooled.update(t_interval(pooled["estimate"], pooled["std_error"], pooled["df"], level))
    pooled.update(n_patients=fits[0].n_patients, n_clusters=fits[0].n_clusters)
    return pooled


# --------------------------------------------------------------------------------------------
# Lining up the primary complete-case and all-available estimates
# --------------------------------------------------------------------------------------------


def line_up(
    first: pd.DataFrame, second: pd.DataFrame,
    labels: tuple[str, str] = ("complete_case", "all_available"),
    keys: Sequence[str] = ("outcome", "term"),
) -> pd.DataFrame:
    """Two tidy result frames side by side, one row per ``keys``, with their difference.

    Columns: ``keys``, then ``estimate``, ``std_error``, ``ci_low``, ``ci_high``, ``p_value``
    and ``n_patients`` suffixed with each label, and ``difference`` (second minus first).
    Rows present in only one frame are kept with the other side missing.
    """
    value_columns = ["estimate", "std_error", "ci_low", "ci_high", "p_value", "n_patients"]
    parts = []
    for frame, label in zip((first, second), labels, strict=True):
        present = [c for c in value_columns if c in frame.columns]
        part = frame[[*keys, *present]].rename(columns={c: f"{c}_{label}" for c in present})
        parts.append(part)
    merged = parts[0].merge(parts[1], on=list(keys), how="outer", sort=True)
    merged["difference"] = (merged[f"estimate_{labels[1]}"]
                            - merged[f"estimate_{labels[0]}"])
    return merged


# --------------------------------------------------------------------------------------------
# Analyses
# --------------------------------------------------------------------------------------------


def run_multiple_imputation(
    analysis: pd.DataFrame, config: Mapping[str, Any], estimates_dir: str | Path | None = None,
    source: str = "analysis table", imputations: Imputations | None = None,
) -> SensitivityResult:
    """Complete-case ANCOVA and MI-pooled ANCOVA per outcome; primary CC vs AA lined up.

    ``imputations`` (e.g. read by :func:`read_imputations`) are used when given, else made.
    """
    options = settings(config, "multiple_imputation")
    covariates = analysis_covariates(config)
    level = confidence_level(config)
    outcomes = sensitivity_outcomes(config)
    if imputations is None:
        imputations = impute_chained(analysis, config, source)
    rows, fmi = [], {}
    for outcome, form in itertools.product(outcomes, model_forms(config)):
        complete = fit_ancova(analysis, outcome, covariates, source=source, form=form)
        rows.append(tidy_row(outcome, "multiple_imputation",
                             form_method("complete_case_ancova", form), ARM_TERM,
                             complete.row(level=level), complete.n_patients,
                             complete.n_clusters, [FORM_NOTES[form], *complete.notes]))
        pooled = pooled_effect(imputations.datasets, outcome, covariates, level, source, form)
        fmi.setdefault(outcome, pooled["fmi"])
        notes = [FORM_NOTES[form], f"m={pooled['m']}", f"Barnard-Rubin df {pooled['df']:.1f}",
                 f"fraction of missing information {pooled['fmi']:.2f}"]
        if imputations.m_choice:
            notes.append(m_choice_note(imputations.m_choice))
        if imputations.excluded:
            notes.append(f"{imputations.excluded} patients lacking a text covariate left out")
        rows.append(tidy_row(outcome, "multiple_imputation",
                             form_method("multiple_imputation_ancova", form),
                             ARM_TERM, pooled, pooled["n_patients"], pooled["n_clusters"],
                             notes))
    tables: dict[str, pd.DataFrame] = {
        "imputed_share": pd.DataFrame({"variable": imputations.columns,
                                       "share_imputed": imputations.missing.mean().to_numpy()}),
    }
    if estimates_dir is not None:
        primary = primary_effects(estimates_dir, outcomes, config.get("analysis", {}).get(
            "populations", ["complete_case", "all_available"]))
        if not primary.empty:
            by_population = {p: primary[primary["population"] == p].assign(term=ARM_TERM)
                             for p in ("complete_case", "all_available")}
            pooled_rows = sensitivity_frame(rows)
            pooled_rows = pooled_rows[pooled_rows["method"] == "multiple_imputation_ancova"]
            aligned = line_up(by_population["complete_case"], by_population["all_available"])
            keep = ["outcome", "term", "estimate", "std_error", "ci_low", "ci_high", "p_value",
                    "n_patients"]
            tables["missing_data_comparison"] = aligned.merge(
                pooled_rows[keep].rename(columns={c: f"{c}_multiple_imputation"
                                                  for c in keep[2:]}),
                on=["outcome", "term"], how="outer", sort=True)
    details = {
        "settings": options, "seed": int(config.get("seed", 0)), "covariates": covariates,
        "analysis_model": "ANCOVA on each imputed dataset: follow-up ~ arm + baseline + "
                          "covariates; CR1 SE by therapist; Rubin's rules, Barnard-Rubin df",
        "imputation_model": "chained equations, predictive mean matching "
                            f"({options['donors']} donors), "
                            f"{'separately per arm' if options['by_arm'] else 'arm as predictor'}"
                            + ("; therapist clustering through leave-one-out therapist means "
                               "of every imputed variable" if options["therapist_means"]
                               else "; therapist clustering ignored"),
        "missingness_predictors": missingness_predictors_text(options["auxiliary"]),
        "imputed_columns": imputations.columns,
        "m_choice": imputations.m_choice,
        "confidence_level": level,
        "headline": {f"{o} fraction of missing information": round(v, 3)
                     for o, v in fmi.items()},
    }
    return SensitivityResult("multiple_imputation", sensitivity_frame(rows), tables=tables,
                             details=details)


def missingness_predictors_text(auxiliary: Sequence[str]) -> str:
    """What the MAR assumption of each missing-data analysis conditions on, in words."""
    count = len(auxiliary)
    named = " (among them the number of sessions)" if "n_sessions" in auxiliary else ""
    return ("The imputation model conditions on every imputed variable, on the "
            f"{count} auxiliary variable{'s' if count != 1 else ''} of the configuration"
            f"{named} and on the analysis covariates. The complete-case and all-available "
            "likelihood analyses condition only on the analysis model's own variables (arm, "
            "baseline score, covariates): missingness that depends on an auxiliary variable, "
            "such as discharge after fewer sessions, is missing at random for the imputation "
            "but not for them.")


def delta_grid(spec: Mapping[str, Any], options: Mapping[str, Any],
               control_sd: float) -> tuple[np.ndarray, float, str]:
    """The delta grid in score points, the unit (MCID or control SD) and its name."""
    unit, name = (float(spec["mcid"]), "MCID") if spec.get("mcid") else (control_sd,
                                                                         "control-arm SD")
    steps = int(options["delta_steps"])
    if steps < 2:
        raise ConfigError("config", ["sensitivity.tipping_point.delta_steps must be >= 2"])
    return np.linspace(0.0, float(options["delta_max_mcid"]) * unit, steps), unit, name


@dataclass
class _ShiftableFit:
    """One imputed dataset's ANCOVA, written as a function of the shift ``delta``.

    The model matrix does not depend on ``delta``, only the response does (``y + delta s``),
    so the coefficients and the per-cluster score sums are linear in ``delta``:
    ``beta(delta) = beta_0 + delta beta_s`` and ``S(delta) = S_0 + delta S_s``. The pooled effect
    at any ``delta`` then costs no refit.
    """

    arm: int
    bread_arm: np.ndarray
    beta0: float
    beta_s: float
    sums0: np.ndarray
    sums_s: np.ndarray
    factor: float
    df: float
    n_patients: int
    n_clusters: int

    def at(self, delta: float) -> tuple[float, float]:
        """Arm estimate and its CR1 variance at ``delta``."""
        projected = (self.sums0 + delta * self.sums_s) @ self.bread_arm
        return self.beta0 + delta * self.beta_s, self.factor * float(projected @ projected)


def shiftable_fits(
    imputations: Imputations, outcome: str, higher_is_better: bool,
    covariates: Sequence[str], source: str = "analysis table", form: str = "ancova",
) -> list[_ShiftableFit]:
    """Prepare every imputed dataset's ANCOVA for delta adjustment of ``outcome``.

    The shift applies to follow-up scores that were imputed, in the intervention arm, in the
    unfavourable direction (down when ``higher_is_better``).
    """
    followup = outcome_columns(outcome)[1]
    direction = -1.0 if higher_is_better else 1.0
    fits = []
    for dataset in imputations.datasets:
        target = (imputations.missing[followup].to_numpy()
                  & (dataset[ARM].to_numpy() == 1)).astype(float) * direction
        design = ancova_design(dataset, outcome, covariates, source=source, form=form)
        X, y, w = design.X, design.y, design.w
        shift = target[design.rows]
        bread = np.linalg.inv((X.T * w) @ X)
        beta0 = bread @ ((X.T * w) @ y)
        beta_s = bread @ ((X.T * w) @ shift)
        arm = design.names.index(ARM_TERM)
        n, k = X.shape
        sums0 = cluster_sums(design, y - X @ beta0)
        fits.append(_ShiftableFit(
            arm=arm, bread_arm=bread[:, arm], beta0=float(beta0[arm]),
            beta_s=float(beta_s[arm]), sums0=sums0,
            sums_s=cluster_sums(design, shift - X @ beta_s),
            factor=cr1_factor(n, k, sums0.shape[0]), df=float(sums0.shape[0] - 1),
            n_patients=n, n_clusters=sums0.shape[0]))
    return fits


def pooled_at(fits: Sequence[_ShiftableFit], delta: float, level: float) -> dict[str, Any]:
    """Rubin-pooled arm effect at shift ``delta``."""
    pairs = [fit.at(delta) for fit in fits]
    pooled = pool_rubin([p[0] for p in pairs], [p[1] for p in pairs], df_complete=fits[0].df)
    pooled.update(t_interval(pooled["estimate"], pooled["std_error"], pooled["df"], level))
    pooled.update(n_patients=fits[0].n_patients, n_clusters=fits[0].n_clusters)
    return pooled


def shifted_effect(
    imputations: Imputations, outcome: str, delta: float, higher_is_better: bool,
    covariates: Sequence[str], level: float, source: str = "analysis table",
) -> dict[str, Any]:
    """Pooled effect after moving imputed intervention follow-ups ``delta`` unfavourably."""
    fits = shiftable_fits(imputations, outcome, higher_is_better, covariates, source)
    return pooled_at(fits, delta, level)


def _includes_null(pooled: Mapping[str, float]) -> bool:
    return bool(pooled["ci_low"] <= 0 <= pooled["ci_high"])


def tipping_point(
    imputations: Imputations, outcome: str, spec: Mapping[str, Any], grid: np.ndarray,
    covariates: Sequence[str], level: float, source: str = "analysis table",
    form: str = "ancova",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pooled effect over the delta grid and the delta at which the CI first includes 0.

    Returns the grid table and ``{"tipping_delta", "status"}``; ``tipping_delta`` is located
    between the last grid value whose CI excludes 0 and the first that includes it by root
    finding on the CI limit nearest 0 (the limit is continuous in delta).
    """
    higher = bool(spec.get("higher_is_better", True))
    fits = shiftable_fits(imputations, outcome, higher, covariates, source, form)
    rows = []
    for delta in grid:
        pooled = pooled_at(fits, float(delta), level)
        rows.append({"outcome": outcome, "model_form": form, "delta": float(delta), **{
            k: pooled[k] for k in ("estimate", "std_error", "ci_low", "ci_high", "p_value",
                                   "df", "n_patients", "n_clusters")},
            "ci_includes_zero": _includes_null(pooled)})
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    favourable = first["estimate"] > 0 if higher else first["estimate"] < 0
    if first["ci_includes_zero"]:
        return table, {"tipping_delta": 0.0,
                       "status": "confidence interval includes 0 without any shift"}
    if not favourable:
        return table, {"tipping_delta": None,
                       "status": "effect favours control; an unfavourable shift of the "
                                 "intervention arm moves it away from 0, so it cannot tip"}
    crossing = table.index[table["ci_includes_zero"]]
    if len(crossing) == 0:
        return table, {"tipping_delta": None,
                       "status": f"not reached within the grid (up to {grid[-1]:g} points)"}
    upper = int(crossing[0])
    bound = "ci_low" if higher else "ci_high"

    def limit(delta: float) -> float:
        return pooled_at(fits, delta, level)[bound]

    from scipy import optimize  # only the tipping point's root search needs it

    exact = optimize.brentq(limit, float(grid[upper - 1]), float(grid[upper]), xtol=1e-6)
    return table, {"tipping_delta": float(exact), "status": "reached"}


def tipping_plot(table: pd.DataFrame, tipping: float | None, out_dir: str | Path, name: str,
                 unit_label: str, intervention: str = "intervention") -> list[Path]:
    """Estimate and CI against delta (PNG + SVG, deterministic)."""
    # Drawing libraries load only here, so the analyses without a figure start faster.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trial_analysis.plotting import OKABE_ITO, STYLE, save_figure

    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(5.5, 3.4))
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        ax.fill_between(table["delta"], table["ci_low"], table["ci_high"],
                        color=OKABE_ITO["sky"], alpha=0.35, linewidth=0,
                        label="confidence interval")
        ax.plot(table["delta"], table["estimate"], color=OKABE_ITO["blue"], marker="o",
                markersize=3, label="pooled effect")
        ax.axhline(0, color=OKABE_ITO["black"], linewidth=0.8)
        if tipping is not None:
            ax.axvline(tipping, color=OKABE_ITO["vermillion"], linestyle="--", linewidth=0.9,
                       label=f"tipping point {tipping:.2f}")
        ax.set_xlabel(f"delta (points): imputed {intervention} follow-up scores made worse "
                      f"({unit_label})")
        ax.set_ylabel("arm effect (intervention - control)")
        ax.legend(frameon=False, fontsize=8)
        figure.tight_layout()
        return save_figure(figure, Path(out_dir), name)


def run_tipping_point(
    analysis: pd.DataFrame, config: Mapping[str, Any], figures_dir: str | Path | None = None,
    source: str = "analysis table", imputations: Imputations | None = None,
) -> SensitivityResult:
    """Delta-adjusted MNAR analysis for ``sensitivity.tipping_point.outcomes``.

    Rows per outcome: ``delta_adjusted_mi`` at delta 0 (term ``arm_intervention``, equal to the
    MI estimate) and the tipping point (term ``tipping_delta``: estimate in points, notes in
    MCID units). The grid is in the ``grid`` table.
    """
    options = settings(config, "tipping_point")
    specs = outcome_specs(config)
    outcomes = options["outcomes"] or [config.get("primary_outcome") or next(iter(specs))]
    unknown = [o for o in outcomes if o not in specs]
    if unknown:
        raise ConfigError("config", [f"sensitivity.tipping_point.outcomes: {unknown} are not "
                                     f"outcomes {list(specs)}"])
    covariates = analysis_covariates(config)
    level = confidence_level(config)
    if imputations is None:
        imputations = impute_chained(analysis, config, source)
    rows, grids, headline, figures, points = [], [], {}, [], {}
    forms = model_forms(config)
    for outcome, form in itertools.product(outcomes, forms):
        spec = specs[outcome]
        followup = outcome_columns(outcome)[1]
        control = analysis.loc[analysis[ARM] == 0, followup].dropna()
        grid, unit, unit_name = delta_grid(spec, options, float(control.std()))
        table, found = tipping_point(imputations, outcome, spec, grid, covariates, level,
                                     source, form)
        table["delta_units"] = table["delta"] / unit
        grids.append(table)
        start = table.iloc[0]
        method = form_method("delta_adjusted_mi", form)
        rows.append(tidy_row(outcome, "tipping_point", method, ARM_TERM,
                             start.to_dict(), int(start["n_patients"]),
                             int(start["n_clusters"]), [FORM_NOTES[form], "delta 0 (MAR)"]))
        tipping = found["tipping_delta"]
        in_units = None if tipping is None else tipping / unit
        note = found["status"] if tipping is None else (
            f"{found['status']}: {in_units:.2f} {unit_name} ({unit:g} points); imputed "
            "intervention follow-ups shifted "
            f"{'down' if spec.get('higher_is_better', True) else 'up'}")
        rows.append(tidy_row(outcome, "tipping_point", method, "tipping_delta",
                             {"estimate": math.nan if tipping is None else tipping}, None,
                             None, [FORM_NOTES[form], note]))
        key = outcome if form == forms[0] else f"{outcome} ({form})"
        headline[f"{key} tipping point (points)"] = (None if tipping is None
                                                     else round(tipping, 3))
        points[key] = {**found, "tipping_delta_units": in_units, "unit": unit,
                       "unit_name": unit_name, "model_form": form, "outcome": outcome,
                       "method": method}
        # one figure per outcome, in the first form (the grid table holds every form)
        if figures_dir is not None and form == forms[0]:
            figures += tipping_plot(
                table, tipping, figures_dir, f"tipping_point_{outcome}",
                f"1 {unit_name} = {unit:g} points",
                config.get("allocation", {}).get("intervention", "intervention"))
    details = {"settings": options, "seed": int(config.get("seed", 0)),
               "imputation": settings(config, "multiple_imputation"),
               "tipping_points": points, "confidence_level": level, "headline": headline}
    return SensitivityResult("tipping_point", sensitivity_frame(rows),
                             tables={"grid": pd.concat(grids, ignore_index=True)},
                             details=details, figures=figures)

