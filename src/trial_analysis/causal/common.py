"""What the sensitivity analyses share: settings, checks, the ANCOVA outcome model, results.

The sensitivity analyses of the observational comparison live in their own modules:

* :mod:`trial_analysis.causal.propensity` -- propensity score, overlap weights (default) or
  stabilised trimmed IPTW, balance table, love plot, weighted ANCOVA;
* :mod:`trial_analysis.causal.doubly_robust` -- augmented overlap weighting and augmented IPW
  with a stacked-equation cluster sandwich, and the bracketing of the change-score and
  lagged-outcome (ANCOVA) estimates;
* :mod:`trial_analysis.causal.evalues` -- E-values (VanderWeele & Ding) of the primary estimates;
* :mod:`trial_analysis.causal.imputation` -- multiple imputation by chained equations with
  predictive mean matching, Rubin's rules, and the delta-adjusted (MNAR) tipping-point analysis;
* :mod:`trial_analysis.causal.therapist_effects` -- the therapist fixed-effects analysis;
* :mod:`trial_analysis.causal.sensitivity` -- :func:`run_sensitivity`, the CLI entry that
  dispatches to them.

This module sits below all of them (it imports none), so the stage has no import circle. It
holds the shared outcome model (weighted ANCOVA with therapist-clustered standard errors), the
common result object, the settings and column checks, and :func:`primary_effects`, the primary
estimates that several analyses line up against.

The outcome model of every analysis here is an ANCOVA: the follow-up score regressed on the arm,
the outcome's own baseline score and ``analysis.covariates``, by (weighted) least squares. The
arm coefficient is the baseline-adjusted difference in mean follow-up, which equals the
baseline-adjusted difference in mean *change*. In a randomised study it targets the same effect
as the mixed model's arm x time term; in an observational one the two rest on different
assumptions about selection (ANCOVA: selection on the observed baseline score; the change
model: selection on measured covariates and stable characteristics), so they can differ
systematically (Lord's paradox) and neither corrects the other. Standard errors are
therapist-clustered sandwich (CR1: ``G/(G-1) * (n-1)/(n-k)``, as
``sandwich::vcovCL(type = "HC1")``); confidence
intervals and p-values use a t reference with ``G - 1`` degrees of freedom (as Stata's
``vce(cluster)``), which matters when few therapists are left, as in the fixed-effects analysis.
Weights are treated as known (the propensity model's own uncertainty is not propagated), the
usual and slightly conservative choice for IPTW and close to exact for overlap weights.

Every analysis returns a :class:`SensitivityResult` whose :meth:`~SensitivityResult.to_frame`
gives the tidy rows (``TIDY_COLUMNS``) and :meth:`~SensitivityResult.summary` a text summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.columns import ARM, THERAPIST, outcome_columns
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import ColumnWording, read_json, require_columns, tidy_frame
from trial_analysis.models.distributions import norm_ppf, norm_sf, t_ppf, t_sf
from trial_analysis.models.robust import cr1_factor

TIDY_COLUMNS = [
    "outcome",
    "analysis",
    "method",
    "term",
    "estimate",
    "std_error",
    "ci_low",
    "ci_high",
    "p_value",
    "n_patients",
    "n_clusters",
    "notes",
]

ANALYSES = [
    "propensity",
    "doubly_robust",
    "evalue",
    "multiple_imputation",
    "tipping_point",
    "therapist_fixed_effects",
]

# The arm's coefficient in the outcome model (named after its column, as R names it).
ARM_TERM = ARM

# Outcome model forms: lagged-outcome adjustment (valid if selection is on the observed
# baseline score) and change score (valid if selection is on stable characteristics, i.e.
# parallel trends); see :func:`fit_ancova`.
MODEL_FORMS = ("ancova", "change")


def check_model_form(form: str) -> None:
    """Raise a ConfigError for a model form other than :data:`MODEL_FORMS`."""
    if form not in MODEL_FORMS:
        raise ConfigError("config", [f"sensitivity.model_forms: '{form}' is not one of "
                                     f"{list(MODEL_FORMS)}"])


def model_forms(config: Mapping[str, Any]) -> list[str]:
    """``sensitivity.model_forms`` (default: both, ANCOVA first), each checked."""
    forms = list((config.get("sensitivity", {}) or {}).get("model_forms") or MODEL_FORMS)
    for form in forms:
        check_model_form(form)
    return list(dict.fromkeys(forms))


def form_method(method: str, form: str) -> str:
    """A method name for a model form: in the change-score form the word ``ancova`` becomes
    ``change`` (``overlap_weighted_change``, ``change_same_sample``), and a name without it
    gets the suffix ``_change`` (``therapist_fixed_effects_change``)."""
    if form == "ancova":
        return method
    parts = method.split("_")
    if "ancova" in parts:
        return "_".join("change" if part == "ancova" else part for part in parts)
    return f"{method}_change"


FORM_NOTES = {"ancova": "model form: ANCOVA (follow-up adjusted for the baseline score)",
              "change": "model form: change score (follow-up minus baseline)"}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

# Mirrors the defaults in the schema so that library calls with a partial config (tests, a
# notebook) behave exactly as a validated pipeline config does.
DEFAULTS: dict[str, Any] = {
    "outcomes": None,
    "propensity": {
        "covariates": ["age", "sex", "symptom_duration_weeks", "depression", "anxiety",
                       "bmi", "ses_score"],
        "include_outcome_baselines": True,
        "therapist_terms": [],
        "clinic_fixed_effects": True,
        "weighting": "overlap",
        "iptw_trim_percentiles": [1.0, 99.0],
        "sample": "analysed",
        "balance_threshold": 0.1,
        "ridge": 0.001,
    },
    "doubly_robust": {
        "estimands": ["ato", "ate"],
    },
    "evalue": {
        "sd": "change",
        "populations": ["complete_case", "all_available"],
    },
    "multiple_imputation": {
        "m": "auto",
        "pilot_m": 20,
        "max_m": 100,
        "therapist_means": True,
        "iterations": 10,
        "donors": 5,
        "by_arm": True,
        "auxiliary": ["n_sessions", "bmi", "ses_score", "depression", "anxiety"],
    },
    "tipping_point": {
        "outcomes": None,
        "delta_max_mcid": 3.0,
        "delta_steps": 13,
    },
    "therapist_fixed_effects": {
        "min_patients_per_arm": 1,
    },
}


def settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``sensitivity.<name>`` settings with defaults filled in."""
    given = dict(config.get("sensitivity", {}) or {})
    section = dict(DEFAULTS[name])
    section.update(given.get(name, {}) or {})
    return section


def outcome_specs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``outcomes[]`` from the config keyed by name."""
    return {spec["name"]: dict(spec) for spec in config.get("outcomes", [])}


def sensitivity_outcomes(config: Mapping[str, Any]) -> list[str]:
    """Outcomes analysed (``sensitivity.outcomes``; default: every configured outcome)."""
    specs = outcome_specs(config)
    chosen = (config.get("sensitivity", {}) or {}).get("outcomes") or list(specs)
    unknown = [name for name in chosen if name not in specs]
    if unknown:
        raise ConfigError("config", [f"sensitivity.outcomes: {unknown} are not outcomes "
                                     f"{list(specs)}"])
    return list(chosen)


def analysis_covariates(config: Mapping[str, Any]) -> list[str]:
    """Covariates of the outcome model (``analysis.covariates``)."""
    return list(config.get("analysis", {}).get("covariates", []))


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


# How the sensitivity analyses word a missing column of the analysis table.
MISSING_COLUMN = ColumnWording("required column missing ({why})", "Columns missing: {missing}")


# --------------------------------------------------------------------------------------------
# Design matrices and the clustered (weighted) ANCOVA
# --------------------------------------------------------------------------------------------


def encode_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Numeric model columns with R's treatment coding for text columns.

    Numeric columns enter as they are; text columns get a dummy per level except the first in
    sorted order (named ``{column}{level}`` as R names them, e.g. ``sexM``).
    """
    blocks: dict[str, pd.Series] = {}
    for column in columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            blocks[column] = values.astype(float)
            continue
        present = values.dropna().astype(str)
        for level in sorted(present.unique())[1:]:
            dummy = (values.astype("string") == level).astype(float)
            dummy[values.isna()] = np.nan
            blocks[f"{column}{level}"] = dummy
    return pd.DataFrame(blocks, index=frame.index)


def cluster_codes(labels: pd.Series) -> np.ndarray:
    """Integer cluster codes; a patient without a therapist is a cluster of its own."""
    codes, _ = pd.factorize(labels, sort=True)
    missing = codes < 0
    if missing.any():
        codes = codes.copy()
        codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return codes


@dataclass
class AncovaFit:
    """A (weighted) least-squares fit with therapist-clustered CR1 standard errors.

    Attributes
    ----------
    names : list of str
        Coefficient names (``(Intercept)`` absent when therapist fixed effects are absorbed).
    params, vcov : ndarray
        Coefficients and their CR1 covariance.
    df : float
        Degrees of freedom of the t reference (clusters - 1).
    n_patients, n_clusters : int
        Patients used and therapists (clusters) among them.
    """

    names: list[str]
    params: np.ndarray
    vcov: np.ndarray
    df: float
    n_patients: int
    n_clusters: int
    notes: list[str] = field(default_factory=list)

    def coefficient(self, term: str = ARM_TERM) -> tuple[float, float]:
        """Estimate and standard error of one term."""
        index = self.names.index(term)
        return float(self.params[index]), float(math.sqrt(max(self.vcov[index, index], 0.0)))

    def row(self, term: str = ARM_TERM, level: float = 0.95) -> dict[str, float]:
        """Estimate, SE, t-based CI and p-value of ``term``."""
        estimate, std_error = self.coefficient(term)
        return t_interval(estimate, std_error, self.df, level)


def t_interval(estimate: float, std_error: float, df: float, level: float) -> dict[str, float]:
    """Estimate with a t-reference CI and two-sided p (normal when ``df`` is infinite)."""
    if not (std_error > 0) or not np.isfinite(std_error):
        return {"estimate": estimate, "std_error": std_error, "ci_low": math.nan,
                "ci_high": math.nan, "p_value": math.nan}
    finite = np.isfinite(df)
    quantile = t_ppf(0.5 + level / 2, df) if finite else norm_ppf(0.5 + level / 2)
    tail = t_sf(abs(estimate / std_error), df) if finite else norm_sf(abs(estimate / std_error))
    return {
        "estimate": estimate,
        "std_error": std_error,
        "ci_low": estimate - quantile * std_error,
        "ci_high": estimate + quantile * std_error,
        "p_value": 2 * tail,
    }


def ancova_frame(
    frame: pd.DataFrame, outcome: str, covariates: Sequence[str], source: str
) -> tuple[pd.DataFrame, list[str]]:
    """Rows with the follow-up, baseline and every covariate present, and a note of drops."""
    baseline, followup = outcome_columns(outcome)
    require_columns(frame, [ARM, THERAPIST, baseline, followup, *covariates], source,
                    f"the {outcome} outcome model", MISSING_COLUMN)
    needed = [followup, baseline, *covariates]
    present = frame[needed].notna().to_numpy()
    keep = present.all(axis=1)
    notes = []
    lacking_covariate = int((present[:, :2].all(axis=1) & ~keep).sum())
    if lacking_covariate:
        notes.append(f"{lacking_covariate} patients with both scores but a missing covariate "
                     "were left out")
    return frame[list(dict.fromkeys([ARM, THERAPIST, *needed]))].loc[keep], notes


@dataclass
class AncovaDesign:
    """The arrays of an ANCOVA fit: response, model matrix, weights, clusters.

    ``rows`` are the positions (in the input frame) of the patients used, so a caller can
    line other per-patient vectors up with ``y``.
    """

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    clusters: np.ndarray
    names: list[str]
    rows: np.ndarray
    notes: list[str]


def ancova_design(
    frame: pd.DataFrame,
    outcome: str,
    covariates: Sequence[str],
    weights: np.ndarray | pd.Series | None = None,
    therapist_fixed_effects: bool = False,
    source: str = "analysis table",
    form: str = "ancova",
) -> AncovaDesign:
    """Arrays of the ANCOVA ``follow-up ~ arm + baseline + covariates`` (see :func:`fit_ancova`).

    ``form="change"`` gives the change-score model on the same patients instead:
    ``follow-up - baseline ~ arm + covariates`` (the baseline's coefficient fixed at 1).
    """
    check_model_form(form)
    baseline, followup = outcome_columns(outcome)
    require_columns(frame, [ARM, THERAPIST, baseline, followup, *covariates], source,
                    f"the {outcome} outcome model", MISSING_COLUMN)
    present = frame[[followup, baseline, *covariates]].notna().to_numpy()
    keep = present.all(axis=1)
    notes = []
    lacking_covariate = int((present[:, :2].all(axis=1) & ~keep).sum())
    if lacking_covariate:
        notes.append(f"{lacking_covariate} patients with both scores but a missing covariate "
                     "were left out")
    w_all = np.ones(len(frame)) if weights is None else np.asarray(weights, dtype=float)
    keep &= w_all > 0
    rows = np.flatnonzero(keep)
    # only the model's columns are copied (a registry's table has many more, some text)
    data = frame[list(dict.fromkeys([ARM, THERAPIST, baseline, followup, *covariates]))].iloc[rows]
    w = w_all[rows]
    level = [ARM, baseline] if form == "ancova" else [ARM]
    design = pd.concat([data[level].astype(float), encode_columns(data, covariates)], axis=1)
    # Constant columns (a covariate with one value in this sample) carry no information and
    # would make the design singular.
    constant = [c for c in design.columns[1:] if design[c].nunique() <= 1]
    if constant:
        notes.append(f"constant in this sample, left out: {constant}")
        design = design.drop(columns=constant)
    y = data[followup].to_numpy(dtype=float)
    if form == "change":
        y = y - data[baseline].to_numpy(dtype=float)
    X = design.to_numpy(dtype=float)
    names = list(design.columns)
    clusters = cluster_codes(data[THERAPIST])
    if therapist_fixed_effects:
        X, y = _within(X, w, clusters), _within(y[:, None], w, clusters)[:, 0]
    else:
        X = np.column_stack([np.ones(len(y)), X])
        names = ["(Intercept)", *names]
    n, k = X.shape
    if n <= k or np.linalg.matrix_rank((X.T * w) @ X) < k:
        raise DataError(source, f"the {outcome} outcome model cannot be estimated: too few "
                        f"patients ({n}) or collinear terms {names}", column=ARM)
    return AncovaDesign(X=X, y=y, w=w, clusters=clusters, names=names, rows=rows, notes=notes)


def cluster_sums(design: AncovaDesign, residuals: np.ndarray) -> np.ndarray:
    """Per-cluster sums of the score contributions ``w_i x_i r_i`` (clusters x k)."""
    n_clusters = int(design.clusters.max()) + 1
    scores = design.X * (design.w * residuals)[:, None]
    # bincount adds in row order as np.add.at does (the same sums, bit for bit), many times
    # faster on a registry's rows
    return np.column_stack([np.bincount(design.clusters, weights=scores[:, k],
                                        minlength=n_clusters)
                            for k in range(scores.shape[1])]).reshape(n_clusters, -1)


def fit_ancova(
    frame: pd.DataFrame,
    outcome: str,
    covariates: Sequence[str],
    weights: np.ndarray | pd.Series | None = None,
    therapist_fixed_effects: bool = False,
    source: str = "analysis table",
    form: str = "ancova",
) -> AncovaFit:
    """ANCOVA of the follow-up score on arm, baseline and covariates (WLS, CR1 by therapist).

    Parameters
    ----------
    frame : DataFrame
        Patients; rows lacking the follow-up, baseline or a covariate are left out.
    outcome : str
        Outcome name; uses ``{outcome}_baseline`` and ``{outcome}_followup``.
    covariates : sequence of str
        Adjustment covariates (text columns are dummy coded).
    weights : array, optional
        Patient weights in the row order of ``frame`` (e.g. overlap weights); zero weight
        leaves a patient out.
    therapist_fixed_effects : bool
        Absorb a fixed intercept per therapist (within transformation). Because therapists are
        also the clusters, the absorbed intercepts are not counted in ``k`` of the CR1 factor
        (the convention of Stata's ``xtreg, fe`` and R's ``fixest`` for nested fixed effects).
    form : {"ancova", "change"}
        Model form (:data:`MODEL_FORMS`): ``ancova`` adjusts for the baseline score (lagged
        outcome); ``change`` models the change score, the baseline's coefficient fixed at 1.

    Returns
    -------
    AncovaFit
    """
    design = ancova_design(frame, outcome, covariates, weights, therapist_fixed_effects, source,
                           form)
    X, y, w = design.X, design.y, design.w
    n, k = X.shape
    bread = np.linalg.inv((X.T * w) @ X)
    params = bread @ ((X.T * w) @ y)
    summed = cluster_sums(design, y - X @ params)
    n_clusters = summed.shape[0]
    vcov = cr1_factor(n, k, n_clusters) * bread @ (summed.T @ summed) @ bread
    return AncovaFit(names=design.names, params=params, vcov=vcov, df=float(n_clusters - 1),
                     n_patients=n, n_clusters=n_clusters, notes=design.notes)


def _within(X: np.ndarray, w: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Subtract each group's weighted mean from every column (absorbs group intercepts)."""
    n_groups = int(groups.max()) + 1
    totals = np.zeros((n_groups, X.shape[1]))
    np.add.at(totals, groups, X * w[:, None])
    weight_sums = np.bincount(groups, weights=w, minlength=n_groups)
    return X - totals[groups] / weight_sums[groups][:, None]


# --------------------------------------------------------------------------------------------
# Result object
# --------------------------------------------------------------------------------------------


def sensitivity_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Sensitivity rows in :data:`TIDY_COLUMNS` order; notes text, patient and cluster counts
    nullable integers (a count can be absent)."""
    return tidy_frame(rows, TIDY_COLUMNS, texts=["notes"], counts=["n_patients", "n_clusters"])


def tidy_row(outcome: str, analysis: str, method: str, term: str, values: Mapping[str, float],
             n_patients: int | None, n_clusters: int | None, notes: Sequence[str] | str = ""
             ) -> dict[str, Any]:
    """One tidy row; ``values`` holds estimate, std_error, ci_low, ci_high, p_value."""
    text = notes if isinstance(notes, str) else "; ".join(notes)
    return {"outcome": outcome, "analysis": analysis, "method": method, "term": term,
            "estimate": values.get("estimate", math.nan),
            "std_error": values.get("std_error", math.nan),
            "ci_low": values.get("ci_low", math.nan), "ci_high": values.get("ci_high", math.nan),
            "p_value": values.get("p_value", math.nan), "n_patients": n_patients,
            "n_clusters": n_clusters, "notes": text}


@dataclass
class SensitivityResult:
    """The result of one sensitivity analysis.

    Attributes
    ----------
    analysis : str
        One of :data:`ANALYSES`.
    estimates : DataFrame
        Tidy rows (:data:`TIDY_COLUMNS`).
    tables : dict of DataFrame
        Supporting tables (balance, weight distribution, tipping-point grid, ...).
    details : dict
        Settings and scalar facts (effective sample sizes, tipping points, ...), JSON-ready.
    """

    analysis: str
    estimates: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The tidy estimate rows."""
        return self.estimates.copy()

    def summary(self) -> str:
        """A plain-text summary for people."""
        lines = [f"Sensitivity analysis: {self.analysis.replace('_', ' ')}", ""]
        for row in self.estimates.itertuples():
            ci = ("" if pd.isna(row.ci_low)
                  else f" ({row.ci_low:.3g} to {row.ci_high:.3g})")
            p = "" if pd.isna(row.p_value) else f", p={row.p_value:.3g}"
            n = "" if pd.isna(row.n_patients) else f", n={row.n_patients}"
            lines.append(f"  {row.outcome} | {row.method} | {row.term}: "
                         f"{row.estimate:.4g}{ci}{p}{n}")
            if row.notes:
                lines.append(f"      note: {row.notes}")
        for key, value in self.details.get("headline", {}).items():
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written by :func:`run_sensitivity`."""
        return {
            "analysis": self.analysis,
            "details": self.details,
            "estimates": self.estimates.to_dict(orient="records"),
            "tables": {name: table.to_dict(orient="records")
                       for name, table in sorted(self.tables.items())},
            "figures": [p.name for p in self.figures],
        }


# --------------------------------------------------------------------------------------------
# The primary estimates, for lining up against
# --------------------------------------------------------------------------------------------


def _effect_row(document: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The primary effect row of a primary estimate file: model ``effect``, term
    ``arm:time`` (the contract); else any ``arm:time`` row (files from before the effect rows)."""
    rows = document.get("estimates", [])
    for row in rows:
        if str(row.get("term")) == "arm:time" and str(row.get("model")) == "effect":
            return dict(row)
    for row in rows:
        if str(row.get("term")) == "arm:time":
            return dict(row)
    for row in rows:
        term = str(row.get("term", "")).lower()
        if "arm" in term and "time" in term and term.count(":") == 1:
            return dict(row)
    raise DataError(str(path), "no arm x time row (term 'arm:time') found", column="term",
                    rows=[str(r.get("term")) for r in rows])


def primary_effects(
    estimates_dir: str | Path, outcomes: Sequence[str], populations: Sequence[str]
) -> pd.DataFrame:
    """The arm x time rows of ``{outcome}.{population}.json`` files that exist."""
    rows = []
    for outcome in outcomes:
        for population in populations:
            path = Path(estimates_dir) / f"{outcome}.{population}.json"
            if path.is_file():
                row = _effect_row(read_json(path), path)
                rows.append({**row, "outcome": outcome, "population": population})
    columns = ["outcome", "population", "term", "estimate", "std_error", "ci_low", "ci_high",
               "p_value", "n_patients"]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=columns) if not frame.empty else pd.DataFrame(columns=columns)
