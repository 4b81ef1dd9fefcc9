"""Doubly robust arm effects (augmented IPW and augmented overlap weighting) and bracketing.

Estimators
    For each outcome, among the patients with both scores and every covariate (the sample of
    the other ANCOVA analyses), with ``Y`` the follow-up score, ``T`` the arm, ``e(X)`` the
    propensity of :func:`trial_analysis.causal.propensity.fit_propensity` (refitted in this
    sample) and ``m_a(X)`` the outcome model of arm ``a``:

    * ``aipw`` (ATE, the whole analysed population; Robins, Rotnitzky & Zhao 1994)::

        tau = mean[m_1 - m_0 + T (Y - m_1) / e - (1 - T) (Y - m_0) / (1 - e)]

    * ``augmented_overlap`` (ATO, the overlap population weighted by ``e (1 - e)``;
      Mao, Li & Greene 2019)::

        tau = sum h (m_1 - m_0) / sum h
              + sum T (1 - e) (Y - m_1) / sum T (1 - e)
              - sum (1 - T) e (Y - m_0) / sum (1 - T) e,      h = e (1 - e)

    The outcome model is the ANCOVA of the follow-up on the outcome's baseline score and
    ``analysis.covariates``, fitted by least squares *separately in each arm* (so the effect
    may vary with the covariates). Because the baseline score is in the outcome model, the
    estimate is the same whether the follow-up or the change score is modelled: there is one
    doubly robust estimate per outcome, not one per model form.

Assumptions
    No unmeasured confounding given the propensity model's covariates, which include every
    outcome's baseline score (ignorability given baseline: the assumption of ANCOVA, not of
    the change-score model); positivity (every patient could have received either arm; the
    note counts propensities below 0.01 or above 0.99, where it fails in practice; the overlap
    estimand down-weights those patients, the ATE does not); and at least one of the two
    models -- the logistic propensity model or the arm-specific linear outcome model --
    correctly specified. Follow-up is assumed missing completely at random given the
    covariates, as in every complete-case analysis.

Variance
    Stacked estimating equations: the propensity model's (penalised) score equations, the
    normal equations of the two outcome regressions and the estimand's equation(s), solved
    jointly; their sandwich ``A^-1 B A^-T``, with ``B`` summed over therapist clusters,
    propagates the estimation of both models and the clustering by therapist. The variance of
    the effect is computed from its influence function (the effect row of the stacked
    sandwich, by the block-triangular structure of ``A``), so a propensity model with
    thousands of clinic dummies needs no dense matrix of that size. Small-sample factor
    ``G/(G-1) * (n-1)/(n-p)`` with ``G`` therapists, ``n`` patients and ``p`` the number of
    stacked parameters (the CR1 factor of :mod:`trial_analysis.models.robust` with every
    parameter counted); intervals and p-values use t with ``G - 1`` degrees of freedom, as
    the other sensitivity analyses. The propensity covariates' mean fill for missing values
    and their standardisation are treated as fixed. With ``ridge > 0`` the propensity
    equations are the penalised ones (the target is the penalised fit, a negligible shift).

Bracketing (Ding & Li 2019)
    On the same patients, the change-score model (valid under parallel trends: selection on
    stable characteristics) and the lagged-outcome ANCOVA (valid under ignorability given the
    baseline score) are fitted with the same covariates. By Frisch-Waugh their difference is
    exactly ``ancova - change = (1 - b) * d``, with ``b`` the ANCOVA's baseline coefficient
    and ``d`` the covariate-adjusted baseline difference between arms (intervention minus
    control). If the control arm's follow-up regresses towards the mean given baseline
    (``0 < b < 1``, Ding & Li's stationarity condition) and one of the two assumptions holds,
    the true effect lies between the two estimates: the change-score estimate is the upper
    end and ANCOVA the lower one when the intervention arm started lower (``d < 0``), the
    other way round when it started higher. Rows ``bracket_lower`` and ``bracket_upper`` give
    the interval; the note states which end is which, ``b`` and ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.causal.common import (
    ARM_TERM,
    MISSING_COLUMN,
    AncovaDesign,
    SensitivityResult,
    analysis_covariates,
    ancova_design,
    ancova_frame,
    fit_ancova,
    sensitivity_frame,
    sensitivity_outcomes,
    settings,
    t_interval,
    tidy_row,
)
from trial_analysis.causal.propensity import (
    EXTREME_PROPENSITY,
    PropensityArrays,
    PropensityModel,
    fit_propensity,
)
from trial_analysis.columns import ARM, check_arm, outcome_columns
from trial_analysis.config import confidence_level
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.models.robust import cr1_factor

ESTIMANDS = ("ato", "ate")
METHODS = {"ato": "augmented_overlap", "ate": "aipw"}
ESTIMAND_NOTES = {
    "ato": "estimand ATO: the average effect in the overlap population (patients weighted by "
           "e(1-e), those for whom either arm was plausible)",
    "ate": "estimand ATE: the average effect over all analysed patients",
}


@dataclass
class DoublyRobustFit:
    """A doubly robust effect with its stacked-equation sandwich SE.

    Attributes
    ----------
    estimand : str
        ``ato`` or ``ate``.
    estimate, std_error : float
        The effect and its cluster-robust SE (small-sample factor applied).
    df : float
        Degrees of freedom of the t reference (clusters - 1).
    n_patients, n_clusters, n_parameters : int
        Patients, therapists, and parameters in the stacked equations.
    influence : ndarray
        Per patient, the effect's influence contribution (sums to 0; the variance is the
        factor times the sum over clusters of their squared cluster totals).
    """

    estimand: str
    estimate: float
    std_error: float
    df: float
    n_patients: int
    n_clusters: int
    n_parameters: int
    influence: np.ndarray
    notes: list[str] = field(default_factory=list)

    def row(self, level: float = 0.95) -> dict[str, float]:
        """Estimate, SE, t-based CI and p-value."""
        return t_interval(self.estimate, self.std_error, self.df, level)


def _propensity_rows(arrays: PropensityArrays) -> tuple[np.ndarray, np.ndarray]:
    """Linear predictor and propensity of every patient from the fitted arrays."""
    X, beta = arrays.X, arrays.beta
    eta = X @ beta[: X.shape[1]]
    if arrays.indicators is not None:
        codes, scale = arrays.indicators
        has = codes >= 0
        eta[has] += (beta[X.shape[1]:] / scale)[codes[has]]
    return eta, 1 / (1 + np.exp(-eta))


def _information_solve(arrays: PropensityArrays, curvature: np.ndarray,
                       rhs: np.ndarray) -> np.ndarray:
    """Solve ``(X~' diag(curvature) X~ + diag(penalty)) g = rhs`` for the full propensity design
    ``X~`` (dense columns, then the sparse clinic columns), eliminating the diagonal clinic
    block by its Schur complement as the Newton step does."""
    X, penalty = arrays.X, arrays.penalty
    k = X.shape[1]
    A = (X.T * curvature) @ X + np.diag(penalty[:k])
    if arrays.indicators is None:
        return np.linalg.solve(A, rhs)
    codes, scale = arrays.indicators
    n_ind = len(scale)
    has = codes >= 0
    B = np.column_stack([np.bincount(codes[has], weights=(X[has, j] * curvature[has]),
                                     minlength=n_ind) for j in range(k)]) / scale[:, None]
    C = (np.bincount(codes[has], weights=curvature[has], minlength=n_ind) / scale**2
         + penalty[k:])
    schur = A - B.T @ (B / C[:, None])
    g_dense = np.linalg.solve(schur, rhs[:k] - B.T @ (rhs[k:] / C))
    g_ind = (rhs[k:] - B @ g_dense) / C
    return np.concatenate([g_dense, g_ind])


def _design_times(arrays: PropensityArrays, values: np.ndarray) -> np.ndarray:
    """``X~' values`` for the full propensity design (dense columns, then clinic columns)."""
    dense = arrays.X.T @ values
    if arrays.indicators is None:
        return dense
    codes, scale = arrays.indicators
    has = codes >= 0
    sparse = np.bincount(codes[has], weights=values[has], minlength=len(scale)) / scale
    return np.concatenate([dense, sparse])


def _design_dot(arrays: PropensityArrays, g: np.ndarray) -> np.ndarray:
    """``X~ g`` per patient for the full propensity design."""
    k = arrays.X.shape[1]
    out = arrays.X @ g[:k]
    if arrays.indicators is not None:
        codes, scale = arrays.indicators
        has = codes >= 0
        out[has] += (g[k:] / scale)[codes[has]]
    return out


def _arm_fit(Z: np.ndarray, y: np.ndarray, in_arm: np.ndarray, outcome: str,
             source: str) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``y`` on ``Z`` within one arm: coefficients and ``(Z_a' Z_a)^-1``."""
    Za = Z[in_arm]
    if len(Za) <= Z.shape[1] or np.linalg.matrix_rank(Za) < Z.shape[1]:
        raise DataError(source, f"the arm-specific {outcome} outcome model of the doubly "
                        f"robust estimator cannot be estimated: {len(Za)} patients in one arm "
                        f"for {Z.shape[1]} terms, or collinear terms", column=ARM)
    inverse = np.linalg.inv(Za.T @ Za)
    return inverse @ (Za.T @ y[in_arm]), inverse


def _estimand_pieces(estimand: str, t: np.ndarray, y: np.ndarray, e: np.ndarray,
                     m1: np.ndarray, m0: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """The effect and, per patient, its normalised estimating function ``q`` and the weights
    that give its derivatives: ``dq/dgamma_a = Z * c_a`` and ``dq/de``."""
    n = len(y)
    if estimand == "ate":
        phi = m1 - m0 + t * (y - m1) / e - (1 - t) * (y - m0) / (1 - e)
        tau = float(phi.mean())
        return tau, {"q": (phi - tau) / n, "c1": (1 - t / e) / n,
                     "c0": -(1 - (1 - t) / (1 - e)) / n,
                     "de": (-t * (y - m1) / e**2 - (1 - t) * (y - m0) / (1 - e) ** 2) / n}
    h, w1, w0 = e * (1 - e), t * (1 - e), (1 - t) * e
    sh, s1, s0 = h.sum(), w1.sum(), w0.sum()
    a = float(np.sum(h * (m1 - m0)) / sh)
    b1 = float(np.sum(w1 * (y - m1)) / s1)
    b0 = float(np.sum(w0 * (y - m0)) / s0)
    q = h * (m1 - m0 - a) / sh + w1 * (y - m1 - b1) / s1 - w0 * (y - m0 - b0) / s0
    de = ((1 - 2 * e) * (m1 - m0 - a) / sh - t * (y - m1 - b1) / s1
          - (1 - t) * (y - m0 - b0) / s0)
    return a + b1 - b0, {"q": q, "c1": h / sh - w1 / s1, "c0": -h / sh + w0 / s0, "de": de}


def doubly_robust_effect(
    design: AncovaDesign, propensity: PropensityModel, estimand: str = "ato",
    outcome: str = "outcome", source: str = "analysis table",
) -> DoublyRobustFit:
    """The augmented (overlap or inverse-probability) weighting effect and its stacked SE.

    Parameters
    ----------
    design : AncovaDesign
        The ANCOVA design (:func:`trial_analysis.causal.common.ancova_design`, model form
        ``ancova``) of the patients the propensity model was fitted on, in the same order.
    propensity : PropensityModel
        Fitted by :func:`~trial_analysis.causal.propensity.fit_propensity` on those patients.
    estimand : {"ato", "ate"}
        ``ato``: augmented overlap weighting; ``ate``: augmented IPW.
    """
    if estimand not in ESTIMANDS:
        raise ConfigError("config", [f"sensitivity.doubly_robust.estimands: '{estimand}' is "
                                     f"not one of {list(ESTIMANDS)}"])
    arrays = propensity.arrays
    if arrays is None or len(arrays.X) != len(design.y):
        raise DataError(source, "the propensity model was not fitted on the outcome model's "
                        "patients", column=ARM)
    arm_column = design.names.index(ARM_TERM)
    Z = np.delete(design.X, arm_column, axis=1)
    t = design.X[:, arm_column]
    y = design.y
    _, e = _propensity_rows(arrays)
    gamma1, inverse1 = _arm_fit(Z, y, t == 1, outcome, source)
    gamma0, inverse0 = _arm_fit(Z, y, t == 0, outcome, source)
    m1, m0 = Z @ gamma1, Z @ gamma0
    tau, pieces = _estimand_pieces(estimand, t, y, e, m1, m0)
    # Influence of the effect: its own equation plus, through the block-triangular bread,
    # the first-order effect of estimating the outcome regressions and the propensity model.
    influence = pieces["q"].copy()
    for c, inverse, gamma, arm in ((pieces["c1"], inverse1, gamma1, 1),
                                   (pieces["c0"], inverse0, gamma0, 0)):
        direction = inverse @ (Z.T @ c)
        influence += (Z @ direction) * (t == arm) * (y - Z @ gamma)
    curvature = e * (1 - e)
    gradient = _design_times(arrays, pieces["de"] * curvature)
    g = _information_solve(arrays, curvature, gradient)
    n = len(y)
    # penalised score per patient: the penalty spread evenly, so the contributions sum to 0
    score_term = _design_dot(arrays, g) * (t - e) - float(g @ (arrays.penalty * arrays.beta)) / n
    influence += score_term
    clusters = design.clusters
    n_clusters = int(clusters.max()) + 1
    totals = np.bincount(clusters, weights=influence, minlength=n_clusters)
    n_parameters = len(arrays.beta) + 2 * Z.shape[1] + (1 if estimand == "ate" else 3)
    variance = cr1_factor(n, n_parameters, n_clusters) * float(totals @ totals)
    extreme = int(((e < EXTREME_PROPENSITY) | (e > 1 - EXTREME_PROPENSITY)).sum())
    notes = [ESTIMAND_NOTES[estimand],
             f"{extreme} patients with propensity < {EXTREME_PROPENSITY:g} or "
             f"> {1 - EXTREME_PROPENSITY:g}"]
    return DoublyRobustFit(estimand=estimand, estimate=tau,
                           std_error=math.sqrt(variance) if variance >= 0 else math.nan,
                           df=float(n_clusters - 1), n_patients=n, n_clusters=n_clusters,
                           n_parameters=n_parameters, influence=influence, notes=notes)


def bracketing_rows(
    analysed: pd.DataFrame, outcome: str, covariates: Sequence[str], level: float,
    source: str = "analysis table",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Change-score and ANCOVA estimates on the same patients and the interval between them.

    Returns the tidy rows (``change_score``, ``ancova``, ``bracket_lower``, ``bracket_upper``)
    and a JSON-ready summary (the two estimates, ``b``, ``d``, which end is which).
    """
    change = fit_ancova(analysed, outcome, covariates, source=source, form="change")
    ancova = fit_ancova(analysed, outcome, covariates, source=source, form="ancova")
    baseline = outcome_columns(outcome)[0]
    slope = ancova.coefficient(baseline)[0]
    change_estimate = change.coefficient()[0]
    ancova_estimate = ancova.coefficient()[0]
    # Frisch-Waugh: ancova - change = (1 - b) d, d the adjusted baseline difference
    difference = ((ancova_estimate - change_estimate) / (1 - slope) if slope != 1
                  else math.nan)
    lower, upper = sorted([change_estimate, ancova_estimate])
    stationary = 0 < slope < 1
    if difference < 0:
        ends = "the intervention arm started lower (adjusted baseline difference " \
               f"{difference:.3g}): change score the upper end, ANCOVA the lower"
    else:
        ends = "the intervention arm started higher (adjusted baseline difference " \
               f"{difference:.3g}): ANCOVA the upper end, change score the lower"
    condition = (f"baseline coefficient b = {slope:.3g}"
                 + ("" if stationary else " is outside (0, 1): Ding & Li's stationarity "
                    "condition fails and the bracket is not guaranteed"))
    note = (f"{ends}; {condition}; the true effect lies in the interval if parallel trends "
            "or ignorability given baseline holds")
    rows = [
        tidy_row(outcome, "bracketing", "change_score", ARM_TERM, change.row(level=level),
                 change.n_patients, change.n_clusters,
                 ["valid under parallel trends (selection on stable characteristics)",
                  *change.notes]),
        tidy_row(outcome, "bracketing", "ancova", ARM_TERM, ancova.row(level=level),
                 ancova.n_patients, ancova.n_clusters,
                 ["valid under ignorability given the baseline score", *ancova.notes]),
        tidy_row(outcome, "bracketing", "bracket", "bracket_lower", {"estimate": lower},
                 ancova.n_patients, ancova.n_clusters, note),
        tidy_row(outcome, "bracketing", "bracket", "bracket_upper", {"estimate": upper},
                 ancova.n_patients, ancova.n_clusters, note),
    ]
    summary = {"outcome": outcome, "n_patients": ancova.n_patients,
               "change_score": change_estimate, "ancova": ancova_estimate,
               "lower": lower, "upper": upper, "baseline_coefficient": slope,
               "adjusted_baseline_difference": difference, "stationarity_holds": stationary}
    return rows, summary


def run_doubly_robust(
    analysis: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis table",
) -> SensitivityResult:
    """Doubly robust effects (``sensitivity.doubly_robust.estimands``) and the bracketing of
    the change-score and ANCOVA estimates, per outcome, all on the same patients.

    The propensity model (``sensitivity.propensity``) is refitted among each outcome's
    analysed patients, as with ``sensitivity.propensity.sample: analysed``; its
    ``weighting`` and IPTW trimming do not apply here (the augmented IPW is untrimmed; its
    notes count the propensities near 0 or 1).
    """
    check_arm(analysis, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "doubly_robust")
    estimands = list(options["estimands"])
    covariates = analysis_covariates(config)
    level = confidence_level(config)
    rows: list[dict[str, Any]] = []
    brackets = []
    for outcome in sensitivity_outcomes(config):
        analysed, notes = ancova_frame(analysis, outcome, covariates, source)
        if analysed[ARM].nunique() < 2:
            raise DataError(source, f"no patient of one arm has both {outcome} scores",
                            column=outcome_columns(outcome)[1])
        propensity = fit_propensity(analysed, config, source, therapist_frame=analysis)
        design = ancova_design(analysed, outcome, covariates, source=source)
        if len(design.rows) != len(analysed):
            raise DataError(source, f"the {outcome} outcome model dropped patients that the "
                            "propensity model kept", column=ARM)
        warnings = list(propensity.warnings)
        if "etmi_share" in settings(config, "propensity")["therapist_terms"]:
            warnings.append("warning: the therapist's ETMI share in the propensity model is a "
                            "near-instrument (inflates the variance, can amplify bias from "
                            "unmeasured confounding)")
        for estimand in estimands:
            fit = doubly_robust_effect(design, propensity, estimand, outcome, source)
            rows.append(tidy_row(outcome, "doubly_robust", METHODS[estimand], ARM_TERM,
                                 fit.row(level), fit.n_patients, fit.n_clusters,
                                 [*fit.notes, *notes, *design.notes, *warnings]))
        bracket, summary = bracketing_rows(analysed, outcome, covariates, level, source)
        rows += bracket
        brackets.append(summary)
    details = {
        "settings": options,
        "outcome_model": "arm-specific least squares: follow-up ~ baseline + "
                         f"{' + '.join(covariates) or '(no covariates)'}",
        "propensity_model": "logistic, sensitivity.propensity settings, refitted among each "
                            "outcome's analysed patients",
        "variance": "stacked estimating equations (propensity score equations, outcome "
                    "normal equations, estimand); sandwich clustered by therapist with "
                    "G/(G-1)*(n-1)/(n-p), p the stacked parameters; t(G-1) intervals",
        "assumptions": "no unmeasured confounding given the covariates including the "
                       "baseline scores; positivity; the propensity or the outcome model "
                       "correct",
        "confidence_level": level,
        "headline": {
            f"{b['outcome']} bracket (change score, ANCOVA)":
                f"{b['lower']:.3g} to {b['upper']:.3g}" for b in brackets},
    }
    return SensitivityResult("doubly_robust", sensitivity_frame(rows),
                             tables={"bracketing": pd.DataFrame(brackets)}, details=details)
