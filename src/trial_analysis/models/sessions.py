"""Number of treatment sessions by arm: negative binomial ratio of means.

The primary model is a negative binomial regression (NB2: ``Var(Y) = mu + mu^2 / theta``, log
link) of ``n_sessions`` on the arm and ``analysis.sessions.covariates``. ``theta`` is estimated
by maximum likelihood as ``MASS::glm.nb`` does: IRLS for the coefficients at fixed ``theta``
alternating with solving the theta score equation at fixed means, until both settle.
statsmodels parametrises the same family by ``alpha = 1 / theta``; both are reported.

Patients treated by the same physiotherapist are not independent (therapists differ in how many
sessions they give), so the primary inference uses therapist-clustered sandwich standard errors
with the CR1 small-sample factor ``G / (G - 1) * (n - 1) / (n - k)``: identical to R's
``sandwich::vcovCL(fit, cluster = ~therapist_id, type = "HC1")``. ``theta`` is treated as known
in the sandwich, as ``vcovCL`` does for ``glm.nb`` fits. Confidence intervals and p-values are
Wald (normal reference), as ``lmtest::coeftest`` gives for GLMs. Model-based standard errors
(``summary(glm.nb)``: expected information at the ML ``theta``) and a Poisson model with the
same clustered standard errors (valid for the ratio of means whatever the dispersion) are
reported as sensitivity rows.

:func:`fit_sessions_model` returns a :class:`SessionsResult`; :func:`run_sessions` is the CLI
entry that writes ``sessions.json`` and ``sessions.csv``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from statsmodels.genmod import families
from statsmodels.genmod.generalized_linear_model import GLM

from trial_analysis.columns import ARM, THERAPIST, check_arm
from trial_analysis.config import arm_labels_by_code, confidence_level, level_column
from trial_analysis.errors import DataError
from trial_analysis.io import (
    ESTIMATE_COLUMNS,
    ColumnWording,
    positions,
    read_analysis_table,
    require_columns,
    tidy_frame,
    write_csv,
    write_json,
)
from trial_analysis.models.distributions import norm_ppf, norm_sf
from trial_analysis.models.robust import cr1_factor
from trial_analysis.privacy import count_text, min_cell_count

TIDY_COLUMNS = ESTIMATE_COLUMNS

COUNT = "n_sessions"
CLUSTER = THERAPIST
INTERCEPT = "(Intercept)"

# Convergence settings: tighter than glm.control's 1e-8 so that our estimates sit well inside
# the golden tolerances whatever path R took to its own optimum.
_EPSILON = 1e-10
# IRLS also stops when the deviance changes by less than this fraction of itself. An absolute
# tolerance alone cannot be met on a registry extract: at 10^6 patients the deviance is ~10^6
# and its rounding noise alone exceeds 1e-10, so IRLS ran all iterations and reported no
# convergence. (R's glm uses a relative criterion, |dev - dev_old| / (|dev| + 0.1) < 1e-8.)
_RELATIVE_EPSILON = 1e-14
_MAX_ITER = 100
# If the likelihood still rises in theta at this value, the counts show no over-dispersion and
# the NB maximum lies at infinity (the Poisson model). The extra variance mu^2/theta is then
# below 0.1% of the mean for means up to 10, so stopping here changes nothing that matters,
# while Newton steps towards infinity would crawl.
_THETA_POISSON_LIMIT = 1e4


# --------------------------------------------------------------------------------------------
# Shared pieces (also used by trial_analysis.models.responders)
# --------------------------------------------------------------------------------------------


# How the sessions and responder analyses word a missing column of the analysis table.
MISSING_COLUMN = ColumnWording("the analysis table has no '{column}' column, needed {why}",
                               "Re-run the `allocate` step, or check the names in the config")
# Their wording of a wrong arm indicator.
BAD_ARM = "arm_intervention must be 1 (intervention) or 0 (control) on every row"


def design_matrix(
    frame: pd.DataFrame, covariates: Sequence[str], source: str
) -> tuple[np.ndarray, list[str]]:
    """Model matrix ``1 + arm_intervention + covariates`` with R's default coding.

    Numeric covariates enter as they are; text or categorical ones get treatment (dummy)
    coding with the first level in sorted order as the reference, named ``{column}{level}``
    as R names them (``sexM``), so coefficient tables line up with R output.
    """
    blocks = [np.ones(len(frame)), frame[ARM].to_numpy(dtype=float)]
    names = [INTERCEPT, ARM]
    for column in covariates:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            blocks.append(values.to_numpy(dtype=float))
            names.append(column)
            continue
        levels = sorted(values.astype(str).unique())
        for level in levels[1:]:
            blocks.append((values.astype(str) == level).to_numpy(dtype=float))
            names.append(f"{column}{level}")
    X = np.column_stack(blocks)
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        raise DataError(
            source,
            f"the model terms {names[1:]} are collinear or constant among the patients "
            "analysed, so the model cannot be estimated",
            column=", ".join(covariates) or ARM,
            hint="Remove a constant or redundant covariate from the config",
        )
    return X, names


def cluster_robust_vcov(
    bread: np.ndarray, scores: np.ndarray, clusters: np.ndarray
) -> tuple[np.ndarray, int]:
    """CR1 cluster-robust covariance, as ``sandwich::vcovCL(type = "HC1")``.

    Parameters
    ----------
    bread : ndarray (k, k)
        Inverse of the (expected) information, ``(X' W X)^-1`` for a GLM.
    scores : ndarray (n, k)
        Per-observation score contributions at the estimate.
    clusters : ndarray (n,)
        Cluster labels; missing labels must already be replaced by unique ones.

    Returns
    -------
    (vcov, n_clusters)
        ``G/(G-1) * (n-1)/(n-k) * B (sum_g s_g s_g') B``.
    """
    n, k = scores.shape
    codes, _ = pd.factorize(pd.Series(clusters), sort=True)
    n_clusters = int(codes.max()) + 1
    summed = np.zeros((n_clusters, k))
    np.add.at(summed, codes, scores)
    meat = summed.T @ summed
    return cr1_factor(n, k, n_clusters) * bread @ meat @ bread, n_clusters


def cluster_level(config: Mapping[str, Any]) -> tuple[str, str]:
    """The level clustered SEs use and its analysis-table column.

    The outermost cluster of ``analysis.random_effects`` (therapist in the default study, a
    site column in another); ``("patient", "patient_id")`` when the study has no clusters,
    which makes the clustered SE the heteroskedasticity-robust (HC1) one.
    """
    levels = [lv for lv in config.get("analysis", {}).get("random_effects",
                                                            ["therapist", "patient"])
              if lv != "patient"]
    level = levels[0] if levels else "patient"
    return level, level_column(level)


def cluster_labels(frame: pd.DataFrame, column: str = CLUSTER) -> tuple[np.ndarray, int]:
    """Cluster labels; a patient without one is a cluster of its own (independent)."""
    labels = frame[column].astype("string")
    missing = labels.isna()
    filled = labels.copy()
    filled[missing] = [f"__no_therapist_{i}" for i in range(int(missing.sum()))]
    return filled.astype(str).to_numpy(), int(missing.sum())


def wald_row(
    estimate: float, std_error: float, level: float, exponentiate: bool
) -> dict[str, float]:
    """Estimate, CI and two-sided p from a normal reference; optionally on the ratio scale."""
    z = norm_ppf(0.5 + level / 2)
    low, high = estimate - z * std_error, estimate + z * std_error
    p_value = 2 * norm_sf(abs(estimate / std_error)) if std_error > 0 else math.nan
    if exponentiate:
        estimate, low, high = math.exp(estimate), math.exp(low), math.exp(high)
    return {
        "estimate": estimate,
        "std_error": std_error,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
    }


def fit_glm(
    X: np.ndarray, y: np.ndarray, family: families.Family, start: np.ndarray | None = None
) -> tuple[Any, list[str]]:
    """Fit a GLM by IRLS with statsmodels; return the result and the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = GLM(y, X, family=family).fit(
            start_params=start, method="IRLS", tol=_EPSILON, rtol=_RELATIVE_EPSILON,
            maxiter=_MAX_ITER,
        )
    messages = sorted({str(w.message) for w in caught})
    if not result.converged:
        messages.append(f"IRLS did not converge in {_MAX_ITER} iterations")
    return result, messages


# --------------------------------------------------------------------------------------------
# Negative binomial by maximum likelihood (MASS::glm.nb)
# --------------------------------------------------------------------------------------------


def nb_loglik(y: np.ndarray, mu: np.ndarray, theta: float) -> float:
    """NB2 log-likelihood, as ``MASS::glm.nb``'s internal ``loglik``."""
    return float(
        np.sum(
            special.gammaln(theta + y)
            - special.gammaln(theta)
            - special.gammaln(y + 1)
            + theta * np.log(theta)
            + y * np.log(mu + (y == 0))
            - (theta + y) * np.log(theta + mu)
        )
    )


def _theta_score(y: np.ndarray, mu: np.ndarray, th: float) -> float:
    """Derivative of the NB2 log-likelihood in theta."""
    return float(
        np.sum(
            special.digamma(th + y)
            - special.digamma(th)
            + math.log(th)
            + 1
            - np.log(th + mu)
            - (y + th) / (mu + th)
        )
    )


def _theta_information(y: np.ndarray, mu: np.ndarray, th: float) -> float:
    """Observed information for theta at fixed means (as ``MASS::theta.ml``)."""
    return float(
        np.sum(
            -special.polygamma(1, th + y)
            + special.polygamma(1, th)
            - 1 / th
            + 2 / (mu + th)
            - (y + th) / (mu + th) ** 2
        )
    )


def theta_standard_error(y: np.ndarray, mu: np.ndarray, theta: float) -> float:
    """Standard error of theta, ``sqrt(1 / information)``, as ``glm.nb`` reports ``SE.theta``."""
    if not 0 < theta < math.inf:
        return math.nan
    information = _theta_information(y, mu, theta)
    return math.sqrt(1 / information) if information > 0 else math.nan


def theta_ml(y: np.ndarray, mu: np.ndarray) -> tuple[float, list[str]]:
    """ML estimate of theta at fixed means: the root of the theta score.

    ``MASS::theta.ml`` takes Newton steps from a moment estimate; when the likelihood is flat
    (little over-dispersion) those crawl and hit the iteration limit. We solve the same score
    equation with Brent's method on ``log(theta)`` inside a bracket, which reaches the same
    maximum and cannot crawl or overshoot. Returns ``(theta, warnings)``.
    """
    messages: list[str] = []
    if _theta_score(y, mu, _THETA_POISSON_LIMIT) > 0:
        return _THETA_POISSON_LIMIT, messages
    spread = float(np.sum((y / mu - 1) ** 2))
    low = min(1.0, len(y) / spread) if spread > 0 else 1.0
    while _theta_score(y, mu, low) <= 0:
        if low < 1e-8:
            messages.append("theta estimate truncated near zero")
            return low, messages
        low /= 10
    log_theta = optimize.brentq(
        lambda t: _theta_score(y, mu, math.exp(t)),
        math.log(low),
        math.log(_THETA_POISSON_LIMIT),
        xtol=1e-12,
        rtol=1e-14,
        maxiter=_MAX_ITER * 5,
    )
    return math.exp(log_theta), messages


@dataclass
class GlmFit:
    """A fitted count or binary GLM with model-based and therapist-clustered covariances."""

    family: str
    names: list[str]
    coef: np.ndarray
    vcov_model: np.ndarray
    vcov_cluster: np.ndarray
    n_observations: int
    n_clusters: int
    converged: bool
    loglik: float
    warnings: list[str]
    theta: float | None = None
    theta_std_error: float | None = None
    iterations: int = 0

    def coefficient_table(self) -> pd.DataFrame:
        """All coefficients on the link scale with both standard errors."""
        return pd.DataFrame(
            {
                "model": self.family,
                "term": self.names,
                "estimate": self.coef,
                "std_error_model": np.sqrt(np.diag(self.vcov_model)),
                "std_error_cluster": np.sqrt(np.diag(self.vcov_cluster)),
            }
        )

    def arm_index(self) -> int:
        return self.names.index(ARM)


def fit_negative_binomial(
    X: np.ndarray, y: np.ndarray, clusters: np.ndarray, names: list[str]
) -> GlmFit:
    """NB2 regression with ML theta, alternating as ``MASS::glm.nb`` does."""
    messages: list[str] = []
    poisson, poisson_messages = fit_glm(X, y, families.Poisson())
    messages += [f"starting Poisson fit: {m}" for m in poisson_messages]
    mu = poisson.fittedvalues
    theta, theta_messages = theta_ml(y, mu)
    beta = poisson.params
    loglik = nb_loglik(y, mu, theta)
    scale_ll = math.sqrt(2 * max(1, len(y) - X.shape[1]))
    converged, iteration, irls_messages = False, 0, []
    while iteration < _MAX_ITER:
        iteration += 1
        result, irls_messages = fit_glm(
            X, y, families.NegativeBinomial(alpha=1 / theta), start=beta
        )
        beta, mu = result.params, result.fittedvalues
        previous_theta, previous_loglik = theta, loglik
        theta, theta_messages = theta_ml(y, mu)
        loglik = nb_loglik(y, mu, theta)
        change = abs(previous_loglik - loglik) / scale_ll + abs(previous_theta - theta)
        if theta >= _THETA_POISSON_LIMIT:
            messages.append(
                f"theta reached {_THETA_POISSON_LIMIT:g}: the counts show no over-dispersion, "
                "so the negative binomial model has collapsed onto the Poisson model "
                "(use the Poisson row)"
            )
            break
        if change < _EPSILON:
            converged = True
            break
    if not converged and theta < _THETA_POISSON_LIMIT:
        messages.append(f"alternation limit reached ({_MAX_ITER}) before theta settled")
    messages += irls_messages + theta_messages
    # Refit at the final theta so coefficients, means and theta are mutually consistent.
    result, final_messages = fit_glm(
        X, y, families.NegativeBinomial(alpha=1 / theta), start=beta
    )
    messages += [m for m in final_messages if m not in messages]
    beta, mu = result.params, result.fittedvalues
    weights = mu / (1 + mu / theta)  # IRLS weights of the log link: mu^2 / Var(mu)
    bread = np.linalg.inv(X.T @ (X * weights[:, None]))
    scores = X * ((y - mu) / (1 + mu / theta))[:, None]
    vcov_cluster, n_clusters = cluster_robust_vcov(bread, scores, clusters)
    return GlmFit(
        family="negative_binomial",
        names=names,
        coef=np.asarray(beta),
        vcov_model=bread,
        vcov_cluster=vcov_cluster,
        n_observations=len(y),
        n_clusters=n_clusters,
        converged=converged and bool(result.converged),
        loglik=nb_loglik(y, mu, theta),
        warnings=messages,
        theta=theta,
        theta_std_error=theta_standard_error(y, mu, theta),
        iterations=iteration,
    )


def fit_poisson(X: np.ndarray, y: np.ndarray, clusters: np.ndarray, names: list[str]) -> GlmFit:
    """Poisson regression; with clustered SEs its ratio of means is robust to over-dispersion."""
    result, messages = fit_glm(X, y, families.Poisson())
    mu = result.fittedvalues
    bread = np.linalg.inv(X.T @ (X * mu[:, None]))
    scores = X * (y - mu)[:, None]
    vcov_cluster, n_clusters = cluster_robust_vcov(bread, scores, clusters)
    return GlmFit(
        family="poisson",
        names=names,
        coef=np.asarray(result.params),
        vcov_model=bread,
        vcov_cluster=vcov_cluster,
        n_observations=len(y),
        n_clusters=n_clusters,
        converged=bool(result.converged),
        loglik=float(result.llf),
        warnings=messages,
    )


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


@dataclass
class SessionsResult:
    """Ratio of mean sessions (intervention / control) and the per-arm descriptives.

    Attributes
    ----------
    estimates : DataFrame
        Tidy rows (``TIDY_COLUMNS``); ``estimate``, ``ci_low`` and ``ci_high`` are on the ratio
        scale, ``std_error`` is the standard error of the log ratio.
    descriptives : DataFrame
        Raw mean (SD), median (IQR), range and counts per arm.
    model : dict
        Specification, dispersion, convergence, warnings and every coefficient (log scale).
    fits : dict
        The fitted models (``nb_adjusted``, ``nb_unadjusted``, ``poisson_adjusted``).
    """

    estimates: pd.DataFrame
    descriptives: pd.DataFrame
    model: dict[str, Any]
    fits: dict[str, GlmFit] = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The tidy estimate rows."""
        return self.estimates.copy()

    def summary(self) -> str:
        """A short plain-text summary for people."""
        level = int(round(self.model["confidence_level"] * 100))
        lines = ["Treatment sessions by arm", ""]
        for row in self.descriptives.itertuples():
            lines.append(
                f"  {row.arm}: n={row.n}, mean {row.mean:.2f} (SD {row.sd:.2f}), "
                f"median {row.median:g} (IQR {row.q1:g}-{row.q3:g})"
            )
        lines += ["", f"Ratio of means, intervention / control ({level}% CI):"]
        for row in self.estimates.itertuples():
            lines.append(
                f"  {row.model}: {row.estimate:.3f} ({row.ci_low:.3f} to {row.ci_high:.3f}), "
                f"p={row.p_value:.3g}"
            )
        dispersion = self.model["dispersion"]
        lines += [
            "",
            f"NB2 theta = {dispersion['theta']:.4g} (SE {dispersion['theta_std_error']:.3g}); "
            f"statsmodels alpha = {dispersion['alpha']:.4g}",
            f"Patients {self.model['n_patients']}, therapists {self.model['n_clusters']}; "
            f"converged: {self.model['converged']}",
        ]
        if self.model["warnings"]:
            lines += ["Warnings:"] + [f"  - {w}" for w in self.model["warnings"]]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The ``sessions.json`` document."""
        return {
            "analysis": "sessions",
            "model": self.model,
            "estimates": self.estimates.to_dict(orient="records"),
            "descriptives": self.descriptives.to_dict(orient="records"),
        }


def _validate_counts(frame: pd.DataFrame, source: str) -> pd.Series:
    """Session counts as floats (missing kept missing); stop on impossible values."""
    require_columns(frame, [COUNT], source, "for the sessions analysis", MISSING_COLUMN)
    require_columns(frame, [ARM, CLUSTER], source, "for the sessions analysis", MISSING_COLUMN)
    check_arm(frame, source, problem=BAD_ARM)
    # Nullable integers (Int64) become floats with NaN, so missing stays missing downstream.
    counts = pd.to_numeric(frame[COUNT], errors="coerce").astype(float)
    not_numeric = counts.isna() & frame[COUNT].notna()
    if not_numeric.any():
        raise DataError(source, "session counts must be numbers", column=COUNT,
                        rows=positions(not_numeric))
    if counts.isna().all():
        raise DataError(source, "every session count is missing; there is nothing to model",
                        column=COUNT)
    negative = counts < 0
    if negative.any():
        raise DataError(source, "session counts cannot be negative", column=COUNT,
                        rows=positions(negative))
    fractional = counts.notna() & (counts != np.round(counts))
    if fractional.any():
        raise DataError(source, "session counts must be whole numbers", column=COUNT,
                        rows=positions(fractional))
    arms = frame.loc[counts.notna(), ARM].astype(int)
    for value, name in ((1, "intervention"), (0, "control")):
        if not (arms == value).any():
            raise DataError(
                source,
                f"no {name} patient (arm_intervention = {value}) has a session count, so the "
                "arms cannot be compared",
                column=ARM,
            )
    return counts


def _descriptives(frame: pd.DataFrame, counts: pd.Series, labels: dict[int, str]) -> pd.DataFrame:
    rows = []
    for value in (1, 0):
        in_arm = frame[ARM].astype(int) == value
        present = counts[in_arm].dropna()
        rows.append(
            {
                "arm": labels[value],
                "arm_intervention": value,
                "n": int(present.size),
                "n_missing": int(in_arm.sum() - present.size),
                "mean": float(present.mean()),
                "sd": float(present.std(ddof=1)) if present.size > 1 else math.nan,
                "median": float(present.median()),
                "q1": float(present.quantile(0.25)),
                "q3": float(present.quantile(0.75)),
                "min": float(present.min()),
                "max": float(present.max()),
                "n_zero": int((present == 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def fit_sessions_model(
    analysis: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis.parquet"
) -> SessionsResult:
    """Negative binomial ratio of mean sessions, intervention / control.

    Parameters
    ----------
    analysis : DataFrame
        The analysis table (one row per patient), per the data contract.
    config : mapping
        Validated study configuration; uses ``analysis.sessions.covariates``,
        ``analysis.confidence_level`` and the ``allocation`` arm labels.
    source : str
        Name of the file the table came from, for error messages.

    Returns
    -------
    SessionsResult
        Tidy rows: adjusted NB with therapist-clustered SE (primary), the same with model-based
        SE, unadjusted NB (clustered), adjusted Poisson (clustered). Raw descriptives per arm.

    Raises
    ------
    DataError
        No ``n_sessions`` column, every count missing, an arm without counts, negative or
        fractional counts, a missing covariate column, collinear terms.
    """
    level = confidence_level(config)
    covariates = list(config.get("analysis", {}).get("sessions", {}).get("covariates", []))
    frame = analysis.reset_index(drop=True)
    counts = _validate_counts(frame, source)
    require_columns(frame, covariates, source, "as a sessions covariate (analysis.sessions)",
                    MISSING_COLUMN)
    labels = arm_labels_by_code(config)
    descriptives = _descriptives(frame, counts, labels)

    notes: list[str] = []
    has_count = counts.notna()
    if (~has_count).any():
        without = count_text(int((~has_count).sum()), min_cell_count(config))
        notes.append(f"{without} patient(s) without a session count left out")
    usable = has_count & frame[covariates].notna().all(axis=1)
    if (has_count & ~usable).any():
        notes.append(
            f"{count_text(int((has_count & ~usable).sum()), min_cell_count(config))} "
            "patient(s) with a missing covariate left out "
            "of the adjusted models"
        )
    fits: dict[str, GlmFit] = {}
    rows = []
    for key, family, adjust in (
        ("nb_adjusted", "negative_binomial", True),
        ("nb_unadjusted", "negative_binomial", False),
        ("poisson_adjusted", "poisson", True),
    ):
        keep = usable if adjust else has_count
        subset = frame[keep]
        if subset[ARM].nunique() < 2:
            raise DataError(source, "after leaving out patients with missing covariates only "
                            "one arm remains", column=", ".join(covariates))
        X, names = design_matrix(subset, covariates if adjust else [], source)
        y = counts[keep].to_numpy(dtype=float)
        clusters, no_therapist = cluster_labels(subset)
        fitter = fit_negative_binomial if family == "negative_binomial" else fit_poisson
        fit = fitter(X, y, clusters, names)
        if no_therapist:
            fit.warnings.append(
                f"{no_therapist} patient(s) without a therapist treated as their own cluster"
            )
        fits[key] = fit
        index = fit.arm_index()
        se_types = ("therapist_clustered_se", "model_based_se") if key == "nb_adjusted" else (
            "therapist_clustered_se",)
        for se_type in se_types:
            vcov = fit.vcov_cluster if se_type == "therapist_clustered_se" else fit.vcov_model
            rows.append(
                {
                    "outcome": COUNT,
                    "population": "all_available",
                    "model": f"{family}_{'adjusted' if adjust else 'unadjusted'}:{se_type}",
                    "term": "ratio_of_means",
                    **wald_row(fit.coef[index], math.sqrt(vcov[index, index]), level, True),
                    "df": math.nan,
                    "n_patients": fit.n_observations,
                    "n_observations": fit.n_observations,
                    "n_clusters": fit.n_clusters,
                    "converged": fit.converged,
                    "warnings": "; ".join(notes + fit.warnings) if adjust else "; ".join(
                        fit.warnings),
                }
            )
    primary = fits["nb_adjusted"]
    assert primary.theta is not None  # set by fit_negative_binomial
    formula = " + ".join([ARM, *covariates])
    model = {
        "formula": f"{COUNT} ~ {formula}",
        "family": "negative binomial (NB2), log link",
        "method": "maximum likelihood; theta by ML alternating with IRLS, as MASS::glm.nb",
        "dispersion": {
            "theta": primary.theta,
            "theta_std_error": primary.theta_std_error,
            "alpha": 1 / primary.theta if primary.theta > 0 else math.inf,
            "parametrisation": "Var(Y) = mu + mu^2 / theta; theta as MASS::glm.nb, "
            "alpha = 1 / theta as statsmodels NegativeBinomial",
        },
        "cluster": CLUSTER,
        "standard_errors": (
            "therapist-clustered sandwich, CR1: G/(G-1) * (n-1)/(n-k), theta treated as known "
            "(= sandwich::vcovCL(type = 'HC1')); model-based = expected information "
            "(= summary(glm.nb))"
        ),
        "inference": "Wald, normal reference (df not applicable)",
        "scale": "estimate, ci_low, ci_high: ratio of means (intervention / control); "
        "std_error: of the log ratio",
        "sensitivity": "unadjusted negative binomial; Poisson with therapist-clustered SE",
        "confidence_level": level,
        "converged": all(fit.converged for fit in fits.values()),
        "iterations": primary.iterations,
        "loglik": primary.loglik,
        "n_patients": primary.n_observations,
        "n_clusters": primary.n_clusters,
        "warnings": notes + [f"{k}: {w}" for k, fit in fits.items() for w in fit.warnings],
        "coefficients": pd.concat(
            [fit.coefficient_table().assign(fit=key) for key, fit in fits.items()]
        ).to_dict(orient="records"),
    }
    return SessionsResult(
        estimates=tidy_frame(rows, TIDY_COLUMNS, flags=["converged"]),
        descriptives=descriptives, model=model, fits=fits
    )


def write_result(document: Mapping[str, Any], estimates: pd.DataFrame, out_json: Path,
                 out_csv: Path) -> None:
    """Write the JSON document and the tidy CSV (both atomically)."""
    write_json(document, out_json)
    write_csv(estimates, out_csv)


def run_sessions(
    config: Mapping[str, Any], analysis: str | Path, out_json: str | Path, out_csv: str | Path
) -> SessionsResult:
    """CLI entry: read the analysis table, fit, write ``sessions.json`` and ``sessions.csv``."""
    path = Path(analysis)
    result = fit_sessions_model(read_analysis_table(path), config, source=str(path))
    write_result(result.to_json(), result.to_frame(), Path(out_json), Path(out_csv))
    return result
