"""Propensity score for ETMI, overlap or IPTW weights, balance and the weighted arm effect.

Propensity model
    Logistic regression of ``arm_intervention`` on ``sensitivity.propensity.covariates``
    (default: age, sex, symptom duration, depression, anxiety, BMI, SES score), the baseline
    score of every outcome (``include_outcome_baselines``), therapist-level terms and clinic
    fixed effects. A numeric covariate with missing values is filled with its sample mean and
    gets a ``{name}_missing`` indicator (the missing-indicator method: valid for balancing
    when missingness itself is a measured patient characteristic); a text covariate gets a
    dummy per level with missing as its own level. Therapist terms (``therapist_terms``):

    * ``etmi_share`` -- the share of the therapist's *other* patients in the analysis table who
      received ETMI (leave-one-out, so a patient's own arm never predicts itself). It captures
      therapist adoption, the strongest determinant of who gets ETMI. The analysis table does
      not carry the therapist's training status, so adoption as practised is the available
      proxy. A therapist with one patient has no leave-one-out share (missing indicator).
    * ``caseload`` -- log of the therapist's number of patients in the analysis table.

    Neither is used by default. ``etmi_share`` is a near-instrument: it predicts who gets the
    intervention strongly (unweighted SMD 1.2 on the default cohort) and the outcome hardly
    at all, so conditioning on it inflates the variance of the weighted estimate (control
    effective sample size 641 of 1,365 with it) and amplifies any bias left by unmeasured
    confounding (Pearl 2010; Myers et al., Am J Epidemiol 2011). Therapist-level adoption
    is handled by the therapist-clustered standard errors instead. Naming it still works, and
    the weighted estimate then carries a warning saying so.

    ``clinic_fixed_effects`` adds a dummy per clinic. The model is fitted by Newton-Raphson on
    standardised columns with a weak ridge penalty (``ridge``, on the standardised scale) that
    keeps the fit finite under (quasi-)separation, e.g. a clinic where no one got ETMI; its pull
    on an ordinary fit is negligible (information per coefficient is of order n).

    Clinic dummies are never stored as a dense matrix: a large extract has thousands of
    clinics, and n x clinics floats would not fit in memory. They are carried as one integer
    code per patient (:class:`ClinicIndicators`) and enter Newton's method through the block
    structure of the Hessian (a diagonal clinic block, eliminated by its Schur complement).
    Newton's method is invariant under affine reparametrisation, so fitting the dummies
    scaled but uncentred and moving their centring into the intercept gives the same iterates
    as the standardised dense design.

Weights (``weighting``)
    * ``overlap`` (default; Li, Morgan & Zaslavsky 2018): treated ``1 - e``, control ``e``.
      Target: the patients for whom either treatment is plausible (ATO). They are bounded, need
      no trimming, and with a logistic propensity model balance every model covariate exactly,
      which suits ETMI, delivered only by adopting therapists: patients of non-adopters, who
      could not get ETMI (positivity fails), get weights near zero instead of exploding ones.
    * ``iptw``: stabilised inverse probability of treatment weights, treated ``p / e``, control
      ``(1 - p) / (1 - e)`` with ``p`` the share treated, after trimming: patients whose
      propensity lies outside the ``iptw_trim_percentiles`` (default 1st and 99th) of the
      propensity distribution in the sample are excluded (weight 0). Target: ATE in the
      trimmed population.

Sample (``sample``)
    ``analysed`` (default): for each outcome the propensity model is fitted among the patients
    of that outcome's analysis (both scores present), so balance holds in the very sample the
    outcome model uses. ``all``: one model for every eligible patient, its weights applied to
    each outcome's analysed patients (balance then holds in the cohort, not necessarily among
    completers).

Balance
    Standardised mean difference for every covariate (and missing indicator, clinic dummy and
    therapist term) of the propensity model, and every outcome-model covariate
    (``analysis.covariates``) even if the propensity model leaves it out, before and after
    weighting, with the *unweighted* pooled SD
    ``sqrt((s1^2 + s0^2) / 2)`` as denominator in both, so the change reflects the means alone.
    ``|SMD| > balance_threshold`` (0.1) is flagged. Weight distribution and Kish's effective
    sample size ``(sum w)^2 / sum w^2`` per arm report how much information weighting leaves.

Outcome model
    Weighted ANCOVA (:func:`trial_analysis.causal.common.fit_ancova`): follow-up on arm,
    baseline and ``analysis.covariates`` (the regression adjustment makes the estimate doubly
    robust in the usual sense), CR1 standard errors clustered by therapist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from trial_analysis.causal.common import (
    ARM_TERM,
    FORM_NOTES,
    MISSING_COLUMN,
    SensitivityResult,
    analysis_covariates,
    ancova_frame,
    encode_columns,
    fit_ancova,
    form_method,
    model_forms,
    sensitivity_frame,
    sensitivity_outcomes,
    settings,
    tidy_row,
)
from trial_analysis.columns import ARM, CLINIC, THERAPIST, check_arm, outcome_columns
from trial_analysis.config import confidence_level
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import require_columns
from trial_analysis.labels import label as readable_label
from trial_analysis.labels import sentence_label
from trial_analysis.privacy import count_text, min_cell_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OPTIONAL_COVARIATES = ("bmi", "ses_score")
# What each weighting estimates, stated on its rows.
WEIGHTING_ESTIMANDS = {
    "overlap": "estimand ATO: the average effect in the overlap population (patients "
               "weighted by e(1-e), those for whom either arm was plausible)",
    "iptw": "estimand ATE in the trimmed population (patients with a propensity inside the "
            "trimming percentiles)",
}
UNWEIGHTED_ESTIMAND = ("estimand: the covariate-conditional effect of the regression, equal "
                       "to the ATE only if the effect is constant")
# Propensities this close to 0 or 1 mark patients for whom one arm was practically impossible.
EXTREME_PROPENSITY = 0.01
# A Love plot taller than this many rows is unreadable (and beyond what Agg can render).
LOVE_PLOT_MAX_ROWS = 60
_MAX_ITER = 200
_TOLERANCE = 1e-10


# --------------------------------------------------------------------------------------------
# Propensity model
# --------------------------------------------------------------------------------------------


def therapist_terms(frame: pd.DataFrame, terms: Sequence[str]) -> pd.DataFrame:
    """Therapist-level columns for the propensity model (see the module docstring)."""
    out = pd.DataFrame(index=frame.index)
    if not terms:
        return out
    require_columns(frame, [THERAPIST], "analysis table", "therapist-level propensity terms",
                    MISSING_COLUMN)
    grouped = frame.groupby(THERAPIST, observed=True)[ARM]
    total = grouped.transform("sum").astype(float)
    count = grouped.transform("count").astype(float)
    for term in terms:
        if term == "etmi_share":
            others = count - 1
            share = (total - frame[ARM].astype(float)) / others.where(others > 0)
            out["therapist_etmi_share"] = share
        elif term == "caseload":
            out["therapist_log_caseload"] = np.log(count)
        else:
            raise ConfigError("config", [f"sensitivity.propensity.therapist_terms: unknown term "
                                         f"'{term}' (etmi_share, caseload)"])
    return out


@dataclass
class ClinicIndicators:
    """Clinic dummies of the propensity model, one integer code per patient.

    Attributes
    ----------
    codes : Series of int
        Per patient (index of the frame): the position in ``names`` of the patient's clinic
        dummy, or -1 for the reference clinic (every dummy 0).
    names : list of str
        Dummy column names ``clinic_{level}``, levels in sorted order, the first left out.
    """

    codes: pd.Series
    names: list[str]

    def subset(self, index: pd.Index) -> ClinicIndicators:
        """The same dummies for the patients of ``index``."""
        return ClinicIndicators(self.codes.loc[index], list(self.names))


def clinic_indicators(
    frame: pd.DataFrame, source: str = "analysis table"
) -> ClinicIndicators:
    """Clinic fixed-effect dummies of ``frame``: missing clinic is a level of its own."""
    require_columns(frame, [CLINIC], source, "clinic fixed effects", MISSING_COLUMN)
    clinics = frame[CLINIC].astype("string").fillna("(missing)")
    codes, levels = pd.factorize(clinics, sort=True)
    names = [f"clinic_{level}" for level in levels[1:]]
    return ClinicIndicators(pd.Series(codes - 1, index=frame.index), names)


def propensity_covariates(
    frame: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis table"
) -> pd.DataFrame:
    """The propensity model's covariates, encoded, *before* missing-value handling.

    Returns numeric columns (NaN where missing) indexed like ``frame``: patient covariates,
    outcome baselines, therapist terms. Clinic dummies (``clinic_fixed_effects``) come from
    :func:`clinic_indicators`.
    """
    options = settings(config, "propensity")
    # BMI and SES enter "if present": a study's extract may simply not record them.
    columns = [c for c in options["covariates"]
               if c in frame.columns or c not in OPTIONAL_COVARIATES]
    if options["include_outcome_baselines"]:
        columns += [outcome_columns(o["name"])[0] for o in config.get("outcomes", [])]
    require_columns(frame, columns, source, "propensity model covariates", MISSING_COLUMN)
    encoded = encode_columns(frame, columns)
    for column in columns:
        # A text covariate's missing values form their own level so no patient is dropped.
        if not pd.api.types.is_numeric_dtype(frame[column]) and frame[column].isna().any():
            encoded[f"{column}_missing"] = frame[column].isna().astype(float)
    return pd.concat([encoded, therapist_terms(frame, options["therapist_terms"])], axis=1)


def with_missing_indicators(covariates: pd.DataFrame) -> pd.DataFrame:
    """Mean-fill each numeric column with missing values and add a ``_missing`` indicator."""
    filled = {}
    for column in covariates.columns:
        values = covariates[column]
        if values.isna().any():
            filled[column] = values.fillna(values.mean() if values.notna().any() else 0.0)
            filled[f"{column}_missing"] = values.isna().astype(float)
        else:
            filled[column] = values
    return pd.DataFrame(filled, index=covariates.index)


@dataclass
class PropensityModel:
    """A fitted propensity model.

    Attributes
    ----------
    score : Series
        Propensity of ETMI per patient (index of the input frame).
    coefficients : DataFrame
        ``term, estimate`` on the standardised-column scale (per SD of each column).
    design : DataFrame
        The model columns after missing-value handling (constant columns removed), except the
        clinic dummies.
    covariates : DataFrame
        The same columns with missing values kept (used for balance).
    clinics : ClinicIndicators or None
        The clinic dummies of the model (constant ones removed); None without clinic fixed
        effects.
    arrays : PropensityArrays or None
        The fitted design and coefficients, for estimators that propagate the propensity
        model's uncertainty (:mod:`trial_analysis.causal.doubly_robust`).
    """

    score: pd.Series
    coefficients: pd.DataFrame
    design: pd.DataFrame
    covariates: pd.DataFrame
    converged: bool
    iterations: int
    warnings: list[str] = field(default_factory=list)
    clinics: ClinicIndicators | None = None
    arrays: PropensityArrays | None = None


@dataclass
class PropensityArrays:
    """The arrays a propensity model was fitted on (see :func:`logistic_ridge`).

    ``X`` is the dense standardised design with the intercept first, ``indicators`` the sparse
    clinic columns ``(codes, scale)`` or None, ``beta`` the coefficients (dense first) and
    ``penalty`` the ridge per coefficient (0 for the intercept).
    """

    X: np.ndarray
    indicators: tuple[np.ndarray, np.ndarray] | None
    beta: np.ndarray
    penalty: np.ndarray


def _linear_predictor(
    X: np.ndarray, beta: np.ndarray, indicators: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """``X @ beta`` plus the indicator columns' contribution (see :func:`logistic_ridge`)."""
    k = X.shape[1]
    eta = X @ beta[:k]
    if indicators is not None:
        codes, scale = indicators
        has = codes >= 0
        eta[has] += (beta[k:] / scale)[codes[has]]
    return eta


def logistic_ridge(
    X: np.ndarray, t: np.ndarray, ridge: float,
    indicators: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, bool, int]:
    """Penalised logistic regression by Newton-Raphson; the intercept (column 0) is unpenalised.

    Minimises ``-loglik + ridge / 2 * ||beta[1:]||^2``.

    Parameters
    ----------
    X : ndarray
        Dense design, intercept first.
    t : ndarray
        0/1 response.
    ridge : float
        Penalty on every coefficient but the intercept.
    indicators : (codes, scale), optional
        Further columns given sparsely: column ``j`` is ``(codes == j) / scale[j]`` (``codes``
        -1: every such column 0). Their coefficients follow those of ``X`` in ``beta``. The
        Hessian's indicator block is then diagonal and is eliminated by its Schur complement,
        so thousands of indicators cost no n x thousands matrix.
    """
    n, k_dense = X.shape
    if indicators is None:
        n_indicators = 0
    else:
        codes, scale = indicators
        n_indicators = len(scale)
        has = codes >= 0
        rows, columns = np.flatnonzero(has), codes[has]
        # Indicator-by-patient incidence, for the cross block X' V D in one sparse product.
        incidence = sp.csr_matrix((np.ones(len(rows)), (columns, rows)),
                                  shape=(n_indicators, n))
    k = k_dense + n_indicators
    penalty = np.full(k, ridge)
    penalty[0] = 0.0
    beta = np.zeros(k)
    share = np.clip(t.mean(), 1e-6, 1 - 1e-6)
    beta[0] = math.log(share / (1 - share))
    objective = math.inf
    for iteration in range(1, _MAX_ITER + 1):
        eta = _linear_predictor(X, beta, indicators)
        p = 1 / (1 + np.exp(-eta))
        if n_indicators == 0:
            gradient = X.T @ (t - p) - penalty * beta
            hessian = (X.T * (p * (1 - p))) @ X + np.diag(penalty)
            step = np.linalg.solve(hessian, gradient)
        else:
            step = _block_newton_step(X, t - p, p * (1 - p), beta, penalty, rows, columns,
                                      scale, incidence)
        # Step halving keeps Newton monotone when separation makes the curvature tiny.
        for _ in range(30):
            candidate = beta + step
            eta_c = _linear_predictor(X, candidate, indicators)
            new_objective = float(np.sum(np.logaddexp(0, eta_c)) - t @ eta_c
                                  + 0.5 * np.sum(penalty * candidate**2))
            if new_objective <= objective + 1e-12:
                break
            step = step / 2
        beta = candidate
        converged = abs(objective - new_objective) < _TOLERANCE * (1 + abs(new_objective))
        objective = new_objective
        if converged:
            return beta, True, iteration
    return beta, False, _MAX_ITER


def _block_newton_step(
    X: np.ndarray, residual: np.ndarray, curvature: np.ndarray, beta: np.ndarray,
    penalty: np.ndarray, rows: np.ndarray, columns: np.ndarray, scale: np.ndarray,
    incidence: sp.csr_matrix,
) -> np.ndarray:
    """Newton step for dense columns plus indicator columns (see :func:`logistic_ridge`).

    The Hessian is ``[[A, B], [B', C]]`` with ``C`` diagonal (each patient has at most one
    indicator); eliminating ``C`` leaves a system the size of the dense design.
    """
    k_dense = X.shape[1]
    n_indicators = len(scale)
    gradient_dense = X.T @ residual - penalty[:k_dense] * beta[:k_dense]
    gradient_indicators = (np.bincount(columns, weights=residual[rows], minlength=n_indicators)
                           / scale - penalty[k_dense:] * beta[k_dense:])
    A = (X.T * curvature) @ X + np.diag(penalty[:k_dense])
    B = np.asarray(incidence @ (X * curvature[:, None])) / scale[:, None]  # indicators x dense
    C = (np.bincount(columns, weights=curvature[rows], minlength=n_indicators) / scale**2
         + penalty[k_dense:])
    schur = A - B.T @ (B / C[:, None])
    step_dense = np.linalg.solve(schur, gradient_dense - B.T @ (gradient_indicators / C))
    step_indicators = (gradient_indicators - B @ step_dense) / C
    return np.concatenate([step_dense, step_indicators])


def _nonconstant_clinics(clinics: ClinicIndicators) -> tuple[ClinicIndicators, list[str]]:
    """Drop clinic dummies that are constant in this sample (no patient, or every patient)."""
    codes = clinics.codes.to_numpy()
    counts = np.bincount(codes[codes >= 0], minlength=len(clinics.names))
    keep = (counts > 0) & (counts < len(codes))
    position = np.cumsum(keep) - 1
    kept_codes = np.full(len(codes), -1)
    member = codes >= 0
    member[member] = keep[codes[member]]
    kept_codes[member] = position[codes[member]]
    names = [name for name, kept in zip(clinics.names, keep, strict=True) if kept]
    dropped = [name for name, kept in zip(clinics.names, keep, strict=True) if not kept]
    return ClinicIndicators(pd.Series(kept_codes, index=clinics.codes.index), names), dropped


def fit_propensity(
    frame: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis table",
    therapist_frame: pd.DataFrame | None = None,
) -> PropensityModel:
    """Fit the propensity model among the patients of ``frame``.

    Parameters
    ----------
    frame : DataFrame
        Patients to fit on (one row each).
    config : mapping
        Study configuration (``sensitivity.propensity``).
    therapist_frame : DataFrame, optional
        The table the therapist-level terms are computed from (default ``frame``); the whole
        analysis table describes a therapist's practice better than a subset of it.
    """
    check_arm(frame, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "propensity")
    base = frame if therapist_frame is None else therapist_frame
    covariates = propensity_covariates(base, config, source).loc[frame.index]
    design = with_missing_indicators(covariates)
    constant = [c for c in design.columns if design[c].nunique() <= 1]
    design = design.drop(columns=constant)
    covariates = covariates.drop(columns=[c for c in constant if c in covariates.columns])
    sd = design.std(ddof=0).replace(0, 1.0)
    standardised = (design - design.mean()) / sd
    X = np.column_stack([np.ones(len(design)), standardised.to_numpy(dtype=float)])
    t = frame[ARM].to_numpy(dtype=float)
    clinics, indicators = None, None
    if options["clinic_fixed_effects"]:
        clinics, constant_clinics = _nonconstant_clinics(
            clinic_indicators(base, source).subset(frame.index))
        constant += constant_clinics
        codes = clinics.codes.to_numpy()
        share = np.bincount(codes[codes >= 0], minlength=len(clinics.names)) / len(codes)
        clinic_sd = np.sqrt(share * (1 - share))
        # Dummies enter scaled but uncentred; their centring moves into the intercept below.
        indicators = (codes, clinic_sd)
    beta, converged, iterations = logistic_ridge(X, t, float(options["ridge"]), indicators)
    score = pd.Series(1 / (1 + np.exp(-_linear_predictor(X, beta, indicators))),
                      index=frame.index, name="propensity")
    per_sd = beta.copy()
    if indicators is not None:
        # back to standardised (centred) dummies: the intercept absorbs -mean/sd * beta
        per_sd[0] += float(np.sum(share / clinic_sd * beta[X.shape[1]:]))
    warnings = [] if converged else [f"propensity model did not converge in {_MAX_ITER} "
                                     "Newton steps"]
    if constant:
        warnings.append(f"constant in this sample, left out of the propensity model: "
                        f"{constant}")
    absent = [c for c in options["covariates"]
              if c in OPTIONAL_COVARIATES and c not in base.columns]
    if absent:
        warnings.append(f"not in the analysis table, left out of the propensity model: "
                        f"{absent}")
    terms = ["(Intercept)", *design.columns, *(clinics.names if clinics else [])]
    coefficients = pd.DataFrame({"term": terms, "estimate_per_sd": per_sd})
    penalty = np.full(len(beta), float(options["ridge"]))
    penalty[0] = 0.0
    return PropensityModel(score=score, coefficients=coefficients, design=design,
                           covariates=covariates, converged=converged, iterations=iterations,
                           warnings=warnings, clinics=clinics,
                           arrays=PropensityArrays(X, indicators, beta, penalty))


# --------------------------------------------------------------------------------------------
# Weights, balance, weight distribution
# --------------------------------------------------------------------------------------------


def propensity_weights(
    score: pd.Series, treated: pd.Series, method: str = "overlap",
    trim_percentiles: Sequence[float] = (1.0, 99.0),
) -> pd.Series:
    """Overlap weights, or stabilised IPTW with percentile trimming (trimmed: weight 0)."""
    e = score.to_numpy(dtype=float)
    t = treated.to_numpy(dtype=float)
    if method == "overlap":
        weights = np.where(t == 1, 1 - e, e)
    elif method == "iptw":
        low, high = np.percentile(e, [float(trim_percentiles[0]), float(trim_percentiles[1])])
        keep = (e >= low) & (e <= high)
        share = t[keep].mean()
        weights = np.where(t == 1, share / e, (1 - share) / (1 - e)) * keep
    else:
        raise ConfigError("config", [f"sensitivity.propensity.weighting: '{method}' is not "
                                     "overlap or iptw"])
    return pd.Series(weights, index=score.index, name="weight")


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    present = ~np.isnan(x)
    x, w = x[present], w[present]
    if w.sum() <= 0:
        return math.nan, math.nan
    mean = float(np.sum(w * x) / w.sum())
    return mean, float(np.sum(w * (x - mean) ** 2) / w.sum())


def standardised_difference(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> float:
    """Weighted SMD (treated minus control) over the *unweighted* pooled SD; NaN ignored."""
    ones = np.ones_like(w)
    _, var1 = _weighted_moments(x[t == 1], ones[t == 1])
    _, var0 = _weighted_moments(x[t == 0], ones[t == 0])
    mean1, _ = _weighted_moments(x[t == 1], w[t == 1])
    mean0, _ = _weighted_moments(x[t == 0], w[t == 0])
    pooled = math.sqrt((var1 + var0) / 2) if not math.isnan(var1 + var0) else math.nan
    if not pooled > 0:
        return 0.0 if mean1 == mean0 else math.nan
    return (mean1 - mean0) / pooled


def _indicator_balance(
    clinics: ClinicIndicators, t: np.ndarray, w: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Balance rows of the clinic dummies, from their codes (the same formulas as for dense
    columns: a dummy's mean is its share, its variance share * (1 - share))."""
    codes = clinics.codes.to_numpy()
    n_clinics = len(clinics.names)

    def shares(arm: int, weights: np.ndarray) -> np.ndarray:
        in_arm = t == arm
        total = weights[in_arm].sum()
        if total <= 0:
            return np.full(n_clinics, math.nan)
        member = in_arm & (codes >= 0)
        return np.bincount(codes[member], weights=weights[member], minlength=n_clinics) / total

    ones = np.ones_like(w)
    mean1, mean0 = shares(1, ones), shares(0, ones)
    weighted1, weighted0 = shares(1, w), shares(0, w)
    pooled = np.sqrt((mean1 * (1 - mean1) + mean0 * (1 - mean0)) / 2)
    rows = []
    for j, name in enumerate(clinics.names):
        smd = []
        for treated_mean, control_mean in ((mean1[j], mean0[j]), (weighted1[j], weighted0[j])):
            if not pooled[j] > 0:
                smd.append(0.0 if treated_mean == control_mean else math.nan)
            else:
                smd.append(float((treated_mean - control_mean) / pooled[j]))
        rows.append({
            "covariate": name, "mean_intervention": float(mean1[j]),
            "mean_control": float(mean0[j]), "smd_unweighted": smd[0], "smd_weighted": smd[1],
            "imbalanced_unweighted": bool(abs(smd[0]) > threshold),
            "imbalanced_weighted": bool(abs(smd[1]) > threshold),
        })
    return rows


def balance_table(
    covariates: pd.DataFrame, treated: pd.Series, weights: pd.Series, threshold: float = 0.1,
    clinics: ClinicIndicators | None = None,
) -> pd.DataFrame:
    """SMD before and after weighting for every covariate, with the threshold flagged.

    Numeric columns with missing values are compared on patients with the value present, and
    their ``_missing`` indicator is listed as a covariate of its own. ``clinics`` (the model's
    clinic dummies, row order of ``covariates``) are listed after the covariates, before the
    missing indicators.
    """
    t = treated.to_numpy(dtype=float)
    w = weights.to_numpy(dtype=float)

    def row(column: str, x: np.ndarray) -> dict[str, Any]:
        before = standardised_difference(x, t, np.ones_like(w))
        after = standardised_difference(x, t, w)
        return {
            "covariate": column,
            "mean_intervention": _weighted_moments(x[t == 1], np.ones(int((t == 1).sum())))[0],
            "mean_control": _weighted_moments(x[t == 0], np.ones(int((t == 0).sum())))[0],
            "smd_unweighted": before,
            "smd_weighted": after,
            "imbalanced_unweighted": bool(abs(before) > threshold),
            "imbalanced_weighted": bool(abs(after) > threshold),
        }

    rows = [row(column, covariates[column].to_numpy(dtype=float))
            for column in covariates.columns]
    if clinics is not None:
        rows += _indicator_balance(clinics, t, w, threshold)
    for column in covariates.columns:
        if covariates[column].isna().any() and f"{column}_missing" not in covariates.columns:
            rows.append(row(f"{column}_missing",
                            covariates[column].isna().to_numpy(dtype=float)))
    return pd.DataFrame(rows)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``."""
    weights = np.asarray(weights, dtype=float)
    denominator = float(np.sum(weights**2))
    return float(np.sum(weights) ** 2 / denominator) if denominator > 0 else 0.0


def weight_distribution(
    weights: pd.Series, treated: pd.Series, score: pd.Series
) -> pd.DataFrame:
    """Per arm: patients, effective sample size, propensity and weight quantiles.

    ``n_propensity_extreme`` counts patients with a propensity below 0.01 or above 0.99: for
    them one arm was practically impossible (positivity fails), e.g. patients of therapists
    who never delivered the intervention.
    """
    rows = []
    for arm, label in ((1, "intervention"), (0, "control")):
        mask = (treated == arm).to_numpy()
        w = weights.to_numpy(dtype=float)[mask]
        e = score.to_numpy(dtype=float)[mask]
        quantiles = np.percentile(w, [0, 1, 25, 50, 75, 99, 100]) if len(w) else [math.nan] * 7
        rows.append({
            "arm": label, "n_patients": int(mask.sum()), "n_weight_zero": int((w == 0).sum()),
            "effective_sample_size": effective_sample_size(w),
            "weight_sum": float(w.sum()), "weight_min": quantiles[0], "weight_p01": quantiles[1],
            "weight_p25": quantiles[2], "weight_median": quantiles[3],
            "weight_p75": quantiles[4], "weight_p99": quantiles[5], "weight_max": quantiles[6],
            "n_propensity_extreme": int(((e < EXTREME_PROPENSITY)
                                         | (e > 1 - EXTREME_PROPENSITY)).sum()),
            "propensity_min": float(e.min()) if len(e) else math.nan,
            "propensity_median": float(np.median(e)) if len(e) else math.nan,
            "propensity_max": float(e.max()) if len(e) else math.nan,
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Love plot
# --------------------------------------------------------------------------------------------


def love_plot(
    balance: pd.DataFrame, out_dir: str | Path, name: str = "love_plot",
    threshold: float = 0.1, title: str = "Covariate balance",
    config: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Dot plot of |SMD| before and after weighting; writes ``name.png`` and ``name.svg``.

    Covariates are named by their readable labels (:func:`trial_analysis.labels.label`,
    ``report.labels`` of ``config``), never by their column names.

    With more than :data:`LOVE_PLOT_MAX_ROWS` covariates (thousands of clinic dummies in a
    large extract) only those with the largest |SMD| before or after weighting are drawn, and
    the title says so; the balance table lists them all. Deterministic: fixed SVG hash salt,
    no dates or software metadata in either file.
    """
    # Drawing libraries load only here, so the analyses without a figure start faster.
    import matplotlib

    from trial_analysis.plotting import STYLE, save_figure

    with matplotlib.rc_context(STYLE):
        figure = love_plot_figure(balance, threshold, title, config)
        return save_figure(figure, Path(out_dir), name)


def love_plot_figure(
    balance: pd.DataFrame, threshold: float = 0.1, title: str = "Covariate balance",
    config: Mapping[str, Any] | None = None,
) -> Figure:
    """The love plot as a figure (see :func:`love_plot`), drawn in the current style."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trial_analysis.plotting import OKABE_ITO

    if len(balance) > LOVE_PLOT_MAX_ROWS:
        largest = balance[["smd_unweighted", "smd_weighted"]].abs().max(axis=1)
        shown = (balance.assign(largest=largest)
                 .sort_values(["largest", "covariate"], ascending=[False, True], kind="stable")
                 .head(LOVE_PLOT_MAX_ROWS).drop(columns="largest"))
        title = (f"{title}\n({LOVE_PLOT_MAX_ROWS} of {len(balance)} covariates, largest |SMD|; "
                 "all in the balance table)")
        balance = shown
    ordered = balance.assign(order=balance["smd_unweighted"].abs()).sort_values(
        ["order", "covariate"], kind="stable")
    y = np.arange(len(ordered))
    figure = Figure(figsize=(6.0, max(2.5, 0.22 * len(ordered) + 1.2)))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.scatter(ordered["smd_unweighted"].abs(), y, marker="o", facecolors="none",
               edgecolors=OKABE_ITO["orange"], label="unweighted", zorder=3)
    ax.scatter(ordered["smd_weighted"].abs(), y, marker="D", color=OKABE_ITO["blue"],
               s=18, label="weighted", zorder=3)
    ax.axvline(threshold, color=OKABE_ITO["vermillion"], linestyle="--", linewidth=0.9,
               label=f"threshold {threshold:g}")
    ax.set_yticks(y, [sentence_label(config, c) for c in ordered["covariate"]])
    ax.set_xlabel("Absolute standardised mean difference")
    ax.set_title(title)
    ax.legend(loc="lower right", frameon=False)
    figure.tight_layout()
    return figure


OVERLAP_BINS = 40


def overlap_bins(score: pd.Series, treated: pd.Series, bins: int = OVERLAP_BINS
                 ) -> pd.DataFrame:
    """Share of each arm's patients per propensity bin of width ``1 / bins`` on [0, 1].

    What the overlap plot draws: where one arm has patients and the other none, positivity
    fails there and the weights must carry the comparison alone.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = {"bin_low": edges[:-1], "bin_high": edges[1:]}
    for arm, label in ((1, "intervention"), (0, "control")):
        values = score.to_numpy(dtype=float)[(treated == arm).to_numpy()]
        counts, _ = np.histogram(values, bins=edges)
        rows[f"share_{label}"] = counts / max(len(values), 1)
    return pd.DataFrame(rows)


def overlap_plot(score: pd.Series, treated: pd.Series, out_dir: str | Path,
                 name: str = "propensity_overlap", title: str = "Propensity score by arm"
                 ) -> list[Path]:
    """Mirrored histograms of the propensity score, intervention above and control below.

    Shares per arm (not counts), so the figure shows no small cell and the two arms are
    comparable whatever their sizes. Deterministic, as the love plot.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from trial_analysis.plotting import OKABE_ITO, STYLE, save_figure

    table = overlap_bins(score, treated)
    width = float(table["bin_high"].iloc[0] - table["bin_low"].iloc[0])
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(6.0, 3.2))
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        ax.bar(table["bin_low"], table["share_intervention"], width=width, align="edge",
               color=OKABE_ITO["blue"], label="intervention")
        ax.bar(table["bin_low"], -table["share_control"], width=width, align="edge",
               color=OKABE_ITO["orange"], label="control")
        ax.axhline(0, color=OKABE_ITO["black"], linewidth=0.6)
        ax.set_xlim(0, 1)
        ax.set_xlabel("Propensity score (probability of the intervention)")
        ax.set_ylabel("Share of the arm's patients\n(control below the line)")
        ticks = ax.get_yticks()
        ax.set_yticks(ticks, [f"{abs(t):.2f}" for t in ticks])
        ax.set_title(title)
        ax.legend(loc="upper right", frameon=False)
        figure.tight_layout()
        return save_figure(figure, out_dir, name)


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


def run_propensity_analysis(
    analysis: pd.DataFrame, config: Mapping[str, Any], figures_dir: str | Path | None = None,
    source: str = "analysis table",
) -> SensitivityResult:
    """Propensity-weighted arm effect per outcome, with balance and weight diagnostics.

    Rows per outcome: ``unadjusted_ancova`` (follow-up on arm and baseline only),
    ``covariate_adjusted_ancova`` (plus ``analysis.covariates``, unweighted) and
    ``{weighting}_weighted_ancova`` (the propensity-weighted, covariate-adjusted ANCOVA), all
    with therapist-clustered CR1 standard errors; with the change-score form in
    ``sensitivity.model_forms`` also ``unadjusted_change``, ``covariate_adjusted_change`` and
    ``{weighting}_weighted_change`` (the same weights, change score as the outcome). Each
    row's notes state its model form and estimand. Term ``arm_intervention``: the adjusted
    difference in mean follow-up (= in mean change), intervention minus control.
    """
    check_arm(analysis, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "propensity")
    if options["sample"] not in ("analysed", "all"):
        raise ConfigError("config", [f"sensitivity.propensity.sample: '{options['sample']}' "
                                     "is not analysed or all"])
    method = options["weighting"]
    threshold = float(options["balance_threshold"])
    covariates = analysis_covariates(config)
    level = confidence_level(config)
    name = f"{method}_weighted_ancova"
    rows: list[dict[str, Any]] = []
    balances, distributions, models, figures = [], [], [], []
    cohort_model = (fit_propensity(analysis, config, source) if options["sample"] == "all"
                    else None)
    for outcome in sensitivity_outcomes(config):
        analysed, notes = ancova_frame(analysis, outcome, covariates, source)
        if analysed[ARM].nunique() < 2:
            raise DataError(source, f"no patient of one arm has both {outcome} scores",
                            column=outcome_columns(outcome)[1])
        if cohort_model is None:
            model = fit_propensity(analysed, config, source, therapist_frame=analysis)
            score = model.score
            balance_covariates = model.covariates
            balance_clinics = model.clinics
        else:
            model = cohort_model
            score = model.score.loc[analysed.index]
            balance_covariates = model.covariates.loc[analysed.index]
            balance_clinics = (None if model.clinics is None
                               else model.clinics.subset(analysed.index))
        weights = propensity_weights(score, analysed[ARM], method,
                                     options["iptw_trim_percentiles"])
        ess = {arm: effective_sample_size(weights[analysed[ARM] == code])
               for arm, code in (("intervention", 1), ("control", 0))}
        weight_note = (f"{WEIGHTING_ESTIMANDS[method]}; effective sample size "
                       f"{ess['intervention']:.0f} intervention, {ess['control']:.0f} control")
        if "etmi_share" in options["therapist_terms"]:
            weight_note += ("; warning: the therapist's ETMI share in the propensity model is "
                            "a near-instrument (inflates the variance, can amplify bias from "
                            "unmeasured confounding)")
        for form in model_forms(config):
            unadjusted = fit_ancova(analysed, outcome, [], source=source, form=form)
            adjusted = fit_ancova(analysed, outcome, covariates, source=source, form=form)
            weighted = fit_ancova(analysed, outcome, covariates, weights=weights,
                                  source=source, form=form)
            for method_name, fit, extra in (
                ("unadjusted_ancova", unadjusted, [UNWEIGHTED_ESTIMAND]),
                ("covariate_adjusted_ancova", adjusted, [UNWEIGHTED_ESTIMAND]),
                (name, weighted, [weight_note, *model.warnings]),
            ):
                rows.append(tidy_row(outcome, "propensity", form_method(method_name, form),
                                     ARM_TERM, fit.row(level=level), fit.n_patients,
                                     fit.n_clusters,
                                     [FORM_NOTES[form], *extra, *notes, *fit.notes]))
        # Every covariate of the outcome model is in the balance table (and love plot), also
        # one left out of the propensity model, which the weights then do not balance exactly.
        outcome_covariates = encode_columns(analysed, covariates)
        absent = [c for c in outcome_covariates.columns if c not in balance_covariates.columns]
        if absent:
            balance_covariates = pd.concat([balance_covariates, outcome_covariates[absent]],
                                           axis=1)
        balance = balance_table(balance_covariates, analysed[ARM], weights, threshold,
                                clinics=balance_clinics)
        balances.append(balance.assign(outcome=outcome))
        distributions.append(weight_distribution(weights, analysed[ARM], score)
                             .assign(outcome=outcome))
        models.append(model.coefficients.assign(outcome=outcome))
        if figures_dir is not None:
            figures += love_plot(balance, figures_dir, name=f"love_plot_{outcome}",
                                 threshold=threshold, config=config,
                                 title=f"Covariate balance, {readable_label(config, outcome)} "
                                       f"({method} weights)")
            figures += overlap_plot(score, analysed[ARM], figures_dir,
                                    name=f"propensity_overlap_{outcome}",
                                    title=f"Propensity score by arm, "
                                          f"{readable_label(config, outcome)}")
    balance_all = pd.concat(balances, ignore_index=True)
    weights_all = pd.concat(distributions, ignore_index=True)
    details = {
        "settings": options,
        "outcome_model": "weighted ANCOVA: follow-up ~ arm + baseline + "
                         f"{' + '.join(covariates) or '(no covariates)'}; "
                         "CR1 SE clustered by therapist; t(G-1) intervals",
        "estimand": WEIGHTING_ESTIMANDS[method],
        "model_forms": model_forms(config),
        "confidence_level": level,
        "headline": {
            f"{row['outcome']} covariates with |SMD| > {threshold:g} after weighting":
                int(row["imbalanced_weighted"])
            for row in balance_all.groupby("outcome", sort=False)["imbalanced_weighted"]
            .sum().reset_index().to_dict(orient="records")
        },
    }
    for row in weights_all.to_dict(orient="records"):
        details["headline"][f"{row['outcome']} {row['arm']}: effective sample size"] = (
            f"{row['effective_sample_size']:.0f} of {row['n_patients']}; "
            f"{count_text(row['n_propensity_extreme'], min_cell_count(config))} with "
            f"propensity < {EXTREME_PROPENSITY:g} or "
            f"> {1 - EXTREME_PROPENSITY:g}")
    return SensitivityResult(
        "propensity", sensitivity_frame(rows),
        tables={"balance": balance_all,
                "weights": weights_all,
                "propensity_model": pd.concat(models, ignore_index=True)},
        details=details, figures=figures,
    )
