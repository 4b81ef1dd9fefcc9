"""Responder analysis: who improved by at least the minimal clinically important difference.

For each outcome in ``analysis.responders.outcomes``, among patients with both the baseline and
the follow-up score (complete cases for that outcome), a responder is a patient whose score
moved by at least the outcome's ``mcid`` in the better direction (``higher_is_better``).

Per outcome the result holds

* the proportion of responders by arm, with Wilson score intervals;
* the risk difference (intervention - control) with the Newcombe hybrid score interval
  (Newcombe 1998, method 10: built from the two Wilson intervals). It keeps its coverage near
  the nominal level with small counts and proportions near 0 or 1, where the Wald interval
  does not, and never leaves [-1, 1]. Its p-value is the Pearson chi-square test (no continuity
  correction; the score test of equal proportions). ``std_error`` is the unpooled Wald SE,
  given for information only;
* the risk difference from a linear probability model with therapist-clustered SE (CR1), a
  sensitivity row for the clustering the Newcombe interval ignores;
* the odds ratio from logistic regression: unadjusted (model-based and therapist-clustered SE)
  and adjusted for ``analysis.sessions.covariates`` with therapist-clustered SE (CR1, as
  ``sandwich::vcovCL(type = "HC1")``). Wald intervals, normal reference.

If an arm has no responders, or only responders, the odds ratio is not estimable (infinite);
it is then reported as missing with a warning, never as a huge number.

Counts are reported as they are; suppressing small cells is the report's job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.genmod import families

from trial_analysis.columns import ARM, check_arm, outcome_columns
from trial_analysis.config import arm_labels_by_code, confidence_level, outcome_spec
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import positions, read_analysis_table, require_columns, tidy_frame
from trial_analysis.models.distributions import norm_ppf, norm_sf
from trial_analysis.models.sessions import (
    BAD_ARM,
    CLUSTER,
    MISSING_COLUMN,
    TIDY_COLUMNS,
    cluster_labels,
    cluster_level,
    cluster_robust_vcov,
    design_matrix,
    fit_glm,
    wald_row,
    write_result,
)

# Scores are often stored as floats; a change of 4.999999999 is a change of 5.
_TOLERANCE = 1e-9


def wilson_interval(successes: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval for a proportion (no continuity correction)."""
    if n == 0:
        return math.nan, math.nan
    z = norm_ppf(0.5 + level / 2)
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    # The bounds are exactly 0 (no successes) or 1 (all successes); rounding would leave a
    # 1e-17 gap that puts the observed proportion outside its own interval.
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return low, high


def newcombe_difference(
    r1: int, n1: int, r0: int, n0: int, level: float
) -> dict[str, float]:
    """Risk difference p1 - p0 with the Newcombe hybrid score interval and chi-square p.

    Parameters
    ----------
    r1, n1 : int
        Responders and patients in the intervention arm.
    r0, n0 : int
        Responders and patients in the control arm.
    level : float
        Confidence level.
    """
    p1, p0 = r1 / n1, r0 / n0
    low1, high1 = wilson_interval(r1, n1, level)
    low0, high0 = wilson_interval(r0, n0, level)
    difference = p1 - p0
    pooled = (r1 + r0) / (n1 + n0)
    if 0 < pooled < 1:
        z = difference / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
        p_value = 2 * norm_sf(abs(z))
    else:
        p_value = math.nan
    return {
        "estimate": difference,
        "std_error": math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0),
        "ci_low": difference - math.sqrt((p1 - low1) ** 2 + (high0 - p0) ** 2),
        "ci_high": difference + math.sqrt((high1 - p1) ** 2 + (p0 - low0) ** 2),
        "p_value": p_value,
    }


@dataclass
class BinaryFit:
    """Coefficients with model-based and therapist-clustered covariances."""

    model: str
    names: list[str]
    coef: np.ndarray
    vcov_model: np.ndarray
    vcov_cluster: np.ndarray
    n_observations: int
    n_clusters: int
    converged: bool
    warnings: list[str]

    def coefficient_table(self) -> pd.DataFrame:
        """All coefficients (log odds or probability scale) with both standard errors."""
        return pd.DataFrame(
            {
                "fit": self.model,
                "term": self.names,
                "estimate": self.coef,
                "std_error_model": np.sqrt(np.diag(self.vcov_model)),
                "std_error_cluster": np.sqrt(np.diag(self.vcov_cluster)),
            }
        )


def fit_logistic(X: np.ndarray, y: np.ndarray, clusters: np.ndarray, names: list[str],
                 model: str) -> BinaryFit:
    """Logistic regression by IRLS; expected-information and CR1 clustered covariances."""
    result, messages = fit_glm(X, y, families.Binomial())
    mu = np.asarray(result.fittedvalues)
    if np.any((mu < 1e-8) | (mu > 1 - 1e-8)):
        messages.append("fitted probabilities numerically 0 or 1 (possible separation)")
    bread = np.linalg.inv(X.T @ (X * (mu * (1 - mu))[:, None]))
    vcov_cluster, n_clusters = cluster_robust_vcov(bread, X * (y - mu)[:, None], clusters)
    return BinaryFit(model, names, np.asarray(result.params), bread, vcov_cluster, len(y),
                     n_clusters, bool(result.converged), messages)


def fit_linear_probability(X: np.ndarray, y: np.ndarray, clusters: np.ndarray,
                           names: list[str], model: str) -> BinaryFit:
    """Ordinary least squares of the responder indicator (coefficients are risk differences)."""
    bread = np.linalg.inv(X.T @ X)
    coef = bread @ X.T @ y
    residuals = y - X @ coef
    sigma2 = float(residuals @ residuals) / (len(y) - X.shape[1])
    vcov_cluster, n_clusters = cluster_robust_vcov(bread, X * residuals[:, None], clusters)
    return BinaryFit(model, names, coef, sigma2 * bread, vcov_cluster, len(y), n_clusters,
                     True, [])


@dataclass
class RespondersResult:
    """Responder proportions, risk differences and odds ratios for each outcome.

    Attributes
    ----------
    estimates : DataFrame
        Tidy rows. ``risk_difference`` rows are on the probability scale; ``odds_ratio`` rows
        have ``estimate``/``ci_low``/``ci_high`` on the ratio scale and ``std_error`` of the
        log odds ratio.
    descriptives : DataFrame
        Per outcome and arm: complete cases, responders, proportion with Wilson interval.
    model : dict
        Definitions, methods, warnings and every coefficient of every fit.
    """

    estimates: pd.DataFrame
    descriptives: pd.DataFrame
    model: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """The tidy estimate rows."""
        return self.estimates.copy()

    def summary(self) -> str:
        """A short plain-text summary for people."""
        level = int(round(self.model["confidence_level"] * 100))
        lines = [f"Responders (improved by at least the MCID), {level}% CIs"]
        for outcome, rows in self.descriptives.groupby("outcome", sort=False):
            first = rows.iloc[0]
            lines += ["", f"{outcome} (MCID {first['mcid']:g}, "
                      f"{'higher' if first['higher_is_better'] else 'lower'} is better)"]
            for row in rows.itertuples():
                lines.append(
                    f"  {row.arm}: {row.n_responders}/{row.n_complete} = "
                    f"{100 * row.proportion:.1f}% ({100 * row.ci_low:.1f} to "
                    f"{100 * row.ci_high:.1f})"
                )
            for row in self.estimates[self.estimates["outcome"] == outcome].itertuples():
                lines.append(
                    f"  {row.term} [{row.model}]: {row.estimate:.3f} "
                    f"({row.ci_low:.3f} to {row.ci_high:.3f}), p={row.p_value:.3g}"
                    + (f"  ! {row.warnings}" if row.warnings else "")
                )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The ``responders.json`` document."""
        return {
            "analysis": "responders",
            "model": self.model,
            "estimates": self.estimates.to_dict(orient="records"),
            "descriptives": self.descriptives.to_dict(orient="records"),
        }


def responder_indicator(
    frame: pd.DataFrame, outcome: str, mcid: float, higher_is_better: bool
) -> pd.Series:
    """1 if the score improved by at least ``mcid``, 0 if not, missing if a score is missing."""
    baseline, followup = outcome_columns(outcome)
    change = frame[followup] - frame[baseline]
    improvement = change if higher_is_better else -change
    responder = (improvement >= mcid - _TOLERANCE * max(1.0, abs(mcid))).astype(float)
    return responder.where(change.notna())


def _complete_cases(frame: pd.DataFrame, outcome: str, source: str) -> pd.Series:
    """Both scores present (baseline and primary follow-up).

    ``complete_{outcome}``, when present, must imply both: it marks all of the outcome's
    scores present, so with several follow-ups a patient who missed an intermediate visit
    is not flagged complete yet has both scores a responder needs.
    """
    baseline, followup = outcome_columns(outcome)
    require_columns(frame, [baseline, followup], source, f"for the {outcome} responder analysis",
                    MISSING_COLUMN)
    for column in (baseline, followup):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise DataError(source, "scores must be numbers", column=column)
    complete = frame[baseline].notna() & frame[followup].notna()
    flag = f"complete_{outcome}"
    if flag in frame.columns:
        disagree = frame[flag].fillna(0).astype(int).astype(bool) & ~complete
        if disagree.any():
            raise DataError(
                source,
                f"{flag} is 1 where {baseline} or {followup} is missing",
                column=flag,
                rows=positions(disagree),
            )
    return complete


def _outcome_analysis(
    frame: pd.DataFrame,
    spec: Mapping[str, Any],
    covariates: list[str],
    labels: dict[int, str],
    level: float,
    source: str,
    cluster: tuple[str, str] = ("therapist", CLUSTER),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[BinaryFit]]:
    outcome = spec["name"]
    complete = _complete_cases(frame, outcome, source)
    data = frame[complete].copy()
    data["responder"] = responder_indicator(data, outcome, float(spec["mcid"]),
                                            bool(spec["higher_is_better"]))
    arm = data[ARM].astype(int)
    counts = {}
    descriptives = []
    for value in (1, 0):
        in_arm = arm == value
        n, r = int(in_arm.sum()), int(data.loc[in_arm, "responder"].sum())
        if n == 0:
            raise DataError(
                source,
                f"no {labels[value]} patient has both {outcome} scores, so responders cannot "
                "be compared between arms",
                column=f"{outcome}_followup",
            )
        counts[value] = (r, n)
        low, high = wilson_interval(r, n, level)
        descriptives.append({
            "outcome": outcome, "arm": labels[value], "arm_intervention": value,
            "n_complete": n, "n_not_complete": int((frame[ARM].astype(int) == value).sum() - n),
            "n_responders": r, "proportion": r / n, "ci_low": low, "ci_high": high,
            "mcid": float(spec["mcid"]), "higher_is_better": bool(spec["higher_is_better"]),
        })
    (r1, n1), (r0, n0) = counts[1], counts[0]
    y = data["responder"].to_numpy(dtype=float)
    cluster_name, cluster_column = cluster
    clustered = f"{cluster_name}_clustered_se"
    clusters, unclustered = cluster_labels(data, cluster_column)
    n_clusters = len(np.unique(clusters))
    notes = [f"{unclustered} patient(s) without a {cluster_name} treated as their own "
             "cluster"] if unclustered and cluster_name != "patient" else []

    def row(model: str, term: str, values: Mapping[str, float], n: int, converged: bool,
            messages: list[str]) -> dict[str, Any]:
        return {"outcome": outcome, "population": f"complete_{outcome}", "model": model,
                "term": term, **values, "df": math.nan, "n_patients": n, "n_observations": n,
                "n_clusters": n_clusters, "converged": converged,
                "warnings": "; ".join(notes + messages)}

    rows = [row("newcombe_hybrid_score", "risk_difference",
                newcombe_difference(r1, n1, r0, n0, level), n1 + n0, True, [])]

    X, names = design_matrix(data, [], source)
    lpm = fit_linear_probability(X, y, clusters, names, "lpm_unadjusted")
    index = names.index(ARM)
    rows.append(row(f"linear_probability_unadjusted:{clustered}", "risk_difference",
                    wald_row(lpm.coef[index], math.sqrt(lpm.vcov_cluster[index, index]), level,
                             False), lpm.n_observations, True, []))

    fits = [lpm]
    empty_cell = min(r1, n1 - r1, r0, n0 - r0) == 0
    usable = data[covariates].notna().all(axis=1)
    for key, adjust, se_types in (
        ("logistic_unadjusted", False, ("model_based_se", clustered)),
        ("logistic_adjusted", True, (clustered,)),
    ):
        subset = data[usable] if adjust else data
        messages = []
        if adjust and (~usable).any():
            messages.append(f"{int((~usable).sum())} patient(s) with a missing covariate left out")
        if empty_cell:
            messages.append("an arm has no responders or only responders: the odds ratio is "
                            "not estimable (infinite)")
            for se_type in se_types:
                rows.append(row(f"{key}:{se_type}", "odds_ratio",
                                dict.fromkeys(("estimate", "std_error", "ci_low", "ci_high",
                                               "p_value"), math.nan),
                                len(subset), False, messages))
            continue
        X, names = design_matrix(subset, covariates if adjust else [], source)
        sub_clusters, _ = cluster_labels(subset, cluster_column)
        fit = fit_logistic(X, subset["responder"].to_numpy(dtype=float), sub_clusters, names,
                           key)
        fits.append(fit)
        index = names.index(ARM)
        for se_type in se_types:
            vcov = fit.vcov_cluster if se_type == clustered else fit.vcov_model
            rows.append(row(f"{key}:{se_type}", "odds_ratio",
                            wald_row(fit.coef[index], math.sqrt(vcov[index, index]), level,
                                     True),
                            fit.n_observations, fit.converged, messages + fit.warnings))
    return rows, descriptives, fits


def fit_responders(
    analysis: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis.parquet"
) -> RespondersResult:
    """Responder proportions, risk difference and odds ratio for each configured outcome.

    Parameters
    ----------
    analysis : DataFrame
        The analysis table (one row per patient), per the data contract.
    config : mapping
        Validated study configuration; uses ``analysis.responders.outcomes``, the outcomes'
        ``mcid`` and ``higher_is_better``, ``analysis.sessions.covariates`` (adjusted odds
        ratio), ``analysis.confidence_level`` and the ``allocation`` arm labels.
    source : str
        Name of the file the table came from, for error messages.

    Returns
    -------
    RespondersResult

    Raises
    ------
    ConfigError
        A responder outcome without ``mcid``.
    DataError
        Missing score, arm, therapist or covariate columns; an arm without complete cases; a
        ``complete_{outcome}`` flag that contradicts the scores.
    """
    level = confidence_level(config)
    analysis_config = config.get("analysis", {})
    outcomes = list(analysis_config.get("responders", {}).get("outcomes", []))
    covariates = list(analysis_config.get("sessions", {}).get("covariates", []))
    frame = analysis.reset_index(drop=True)
    cluster = cluster_level(config)
    require_columns(frame, [ARM, cluster[1]], source, "for the responder analysis",
                    MISSING_COLUMN)
    require_columns(frame, covariates, source, "as a covariate (analysis.sessions.covariates)",
                    MISSING_COLUMN)
    check_arm(frame, source, problem=BAD_ARM)
    labels = arm_labels_by_code(config)

    rows: list[dict[str, Any]] = []
    descriptives: list[dict[str, Any]] = []
    coefficients = []
    definitions = {}
    for outcome in outcomes:
        spec = outcome_spec(config, outcome)
        if "mcid" not in spec:
            raise ConfigError("config", [
                f"outcomes/{outcome}: mcid is required because the outcome is listed in "
                "analysis/responders/outcomes"
            ])
        spec.setdefault("higher_is_better", True)
        outcome_rows, outcome_descriptives, fits = _outcome_analysis(
            frame, spec, covariates, labels, level, source, cluster
        )
        rows += outcome_rows
        descriptives += outcome_descriptives
        coefficients += [fit.coefficient_table().assign(outcome=outcome) for fit in fits]
        direction = "followup - baseline" if spec["higher_is_better"] else "baseline - followup"
        definitions[outcome] = f"responder: {direction} >= {spec['mcid']:g}"

    estimates = tidy_frame(rows, TIDY_COLUMNS, flags=["converged"])
    model = {
        "population": "complete cases for each outcome (both scores present)",
        "definitions": definitions,
        "risk_difference": (
            "intervention - control; Newcombe hybrid score CI (method 10, from Wilson "
            "intervals); p from Pearson chi-square without continuity correction; std_error "
            "is the unpooled Wald SE. Sensitivity: linear probability model with "
            f"{cluster[0]}-clustered SE"
        ),
        "odds_ratio": (
            "logistic regression, intervention vs control; unadjusted (model-based and "
            f"{cluster[0]}-clustered SE) and adjusted for the sessions covariates "
            f"{covariates} ({cluster[0]}-clustered SE). Wald CI on the log scale, "
            "exponentiated"
        ),
        "standard_errors": (
            f"{cluster[0]}-clustered sandwich (column {cluster[1]}; patient: each patient its "
            "own cluster), CR1: G/(G-1) * (n-1)/(n-k) (= sandwich::vcovCL(type = 'HC1'))"
        ),
        "scale": "odds_ratio rows: estimate and CI on the ratio scale, std_error of the log "
        "odds ratio; risk_difference rows: probability scale",
        "covariates": covariates,
        "confidence_level": level,
        "converged": bool(estimates["converged"].all()) if len(estimates) else True,
        "warnings": sorted({f"{r['outcome']}: {w}" for r in rows
                            for w in r["warnings"].split("; ") if w}),
        "coefficients": (pd.concat(coefficients).to_dict(orient="records")
                         if coefficients else []),
    }
    return RespondersResult(estimates, pd.DataFrame(descriptives), model)


def run_responders(
    config: Mapping[str, Any], analysis: str | Path, out_json: str | Path, out_csv: str | Path
) -> RespondersResult:
    """CLI entry: read the analysis table, write ``responders.json`` and ``responders.csv``."""
    path = Path(analysis)
    result = fit_responders(read_analysis_table(path), config, source=str(path))
    write_result(result.to_json(), result.to_frame(), Path(out_json), Path(out_csv))
    return result
