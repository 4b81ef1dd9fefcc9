"""Linear mixed models for each outcome: the arm x time effect, marginal means and subgroups.

Model (lme4 notation, the default configuration)::

    score ~ arm * time + age + sex + symptom_duration_weeks
            + (1 | therapist) + (1 | therapist:time) + (1 | therapist:patient)

on long data (one row per patient and time point; ``time`` 0 = baseline, 1 = follow-up). The
estimand is the ``arm:time`` coefficient: the difference between arms in mean change from
baseline to follow-up, intervention minus control.

How the numbers are obtained, and why
-------------------------------------
- **Fit.** statsmodels ``MixedLM`` (REML by default). Groups are the outermost random level;
  inner random intercepts (patient, therapist x time, ...) are variance components. MixedLM's
  optimiser can stop a little short of the optimum (1e-5 relative in the variance parameters on
  the golden datasets, more near a boundary), so its solution is then refined on the exact lme4
  profiled REML criterion (:mod:`trial_analysis.lmm_inference`), bounded at zero. The refinement
  is recorded (``optimum_refinement``: how much it lowered the criterion).
- **Fixed effects and SEs** are the GLS estimates at the final variance parameters,
  ``cov(beta) = sigma^2 (X' V0^-1 X)^-1`` -- what lme4's ``vcov`` gives. MixedLM's own
  ``bse_fe`` come from the joint Hessian and differ from lme4 by ~0.5 % under REML, so they are
  not used.
- **Inference.** t tests with Satterthwaite denominator df computed as lmerTest does (see
  :mod:`trial_analysis.lmm_inference`). Verified against lmerTest on committed datasets
  (``tests/test_golden_models.py``). Should that computation fail, inference falls back to the
  normal (z) distribution and every row says so in ``warnings``; ``df`` is then empty.
- **Marginal means** follow emmeans' default reference grid: numeric covariates at their mean
  over the model's rows (observations, as emmeans does), factor covariates averaged over their
  levels with equal weights; df by Satterthwaite.
- **Warnings** raised during fitting are all kept. Warnings from an optimiser that failed before
  a later method in the list converged are labelled ``intermediate (final fit converged)``; a
  variance component estimated at zero (lme4's rule: relative SD below 1e-4) is flagged as a
  singular fit.
- ``MixedLM.predict`` returns fixed-effects-only predictions (random effects ignored); nothing
  here uses it, and callers wanting cluster-specific predictions must not use it either.

ICCs are each variance component divided by the total variance of one observation (the sum of
all components, residual included).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize

from trial_analysis.distributions import chi2_sf, norm_ppf, norm_sf
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.fast_lmm import fit_nested_lmm
from trial_analysis.io import ESTIMATE_COLUMNS, read_analysis_table, write_csv, write_json
from trial_analysis.lmm_inference import MixedDesign, SatterthwaiteInference

if TYPE_CHECKING:
    from statsmodels.regression.mixed_linear_model import MixedLM

POPULATIONS = ("complete_case", "all_available")
# Random-effect levels, outermost first, and the analysis-table column that identifies each.
LEVEL_COLUMNS = {"clinic": "clinic_id", "therapist": "therapist_id", "patient": "patient_id"}
NESTING = ("clinic", "therapist", "patient")
TIDY_COLUMNS = ESTIMATE_COLUMNS
MARGINAL_COLUMNS = ["arm", "time", "estimate", "std_error", "ci_low", "ci_high"]
EFFECT_TERM = "arm:time"
# Fewer patients than this in a population (or a subgroup level) is no basis for a mixed model.
MIN_PATIENTS = 10
# lme4's isSingular tolerance on the relative standard deviations.
SINGULAR_TOL = 1e-4
# statsmodels optimisers, tried in turn until one converges; fixed for determinism.
FIT_METHODS = ["lbfgs", "bfgs", "powell"]
FIT_MAXITER = 2000
FIT_PATH = "statsmodels"
FAST_PATH = "fast_nested"
_ANALYSIS_FILE = "analysis table"


# ---------------------------------------------------------------------------------------------
# Settings and validation


@dataclass(frozen=True)
class ModelSpec:
    """What to fit: outcome, population, covariates and random-effects structure."""

    outcome: str
    population: str
    covariates: tuple[str, ...]
    random_effects: tuple[str, ...]
    random_time_effects: tuple[str, ...]
    reml: bool
    confidence_level: float
    subgroup: str | None = None
    fit_path: str = "fast_nested"
    covariates_by_time: bool = True

    @property
    def random_components(self) -> list[str]:
        """Variance component names, outermost level first, each followed by its x time term."""
        names = []
        for level in self.random_effects:
            names.append(level)
            if level in self.random_time_effects:
                names.append(f"{level}:time")
        return names

    def lme4_formula(self) -> str:
        """The model in lme4 syntax (nested units written as interactions)."""
        fixed = "score ~ arm * time" + (f" * {self.subgroup}" if self.subgroup else "")
        if self.covariates:
            joined = " + ".join(self.covariates)
            fixed += f" + ({joined}) * time" if self.covariates_by_time else f" + {joined}"
        terms = []
        for i, level in enumerate(self.random_effects):
            path = ":".join(self.random_effects[: i + 1])
            terms.append(f"(1 | {path})")
            if level in self.random_time_effects:
                terms.append(f"(1 | {path}:time)")
        return fixed + " + " + " + ".join(terms)


def _analysis_settings(config: dict[str, Any]) -> dict[str, Any]:
    settings = dict(config.get("analysis", {}))
    settings.setdefault("covariates", [])
    settings.setdefault("random_effects", ["therapist", "patient"])
    settings.setdefault("random_time_effects", ["therapist"])
    settings.setdefault("reml", True)
    settings.setdefault("confidence_level", 0.95)
    settings.setdefault("subgroups", [])
    settings.setdefault("subgroup_population", "complete_case")
    settings.setdefault("fit_path", "auto")
    settings.setdefault("covariates_by_time", True)
    return settings


def model_spec(config: dict[str, Any], outcome: str, population: str,
               subgroup: str | None = None) -> ModelSpec:
    """Build and check the model specification from the configuration.

    Raises
    ------
    ConfigError
        Unknown outcome, population or subgroup, or a random-effects structure that is not a
        nesting of clinic > therapist > patient.
    """
    settings = _analysis_settings(config)
    problems = []
    outcomes = [o["name"] for o in config.get("outcomes", [])]
    if outcome not in outcomes:
        problems.append(f"outcome '{outcome}' is not one of the configured outcomes {outcomes}")
    if population not in POPULATIONS:
        problems.append(f"population '{population}' is not one of {list(POPULATIONS)}")
    if subgroup is not None and subgroup not in settings["subgroups"]:
        problems.append(f"subgroup '{subgroup}' is not one of analysis.subgroups "
                        f"{settings['subgroups']}")
    levels = list(settings["random_effects"])
    if not levels:
        problems.append("analysis.random_effects: at least one random-effect level is needed")
    unknown = [lv for lv in levels if lv not in NESTING]
    if unknown:
        problems.append(f"analysis.random_effects: unknown level(s) {unknown}; use {NESTING}")
    elif levels != sorted(levels, key=NESTING.index) or len(set(levels)) != len(levels):
        problems.append(f"analysis.random_effects: list the levels once each, outermost first "
                        f"(clinic, therapist, patient), got {levels}")
    stray = [lv for lv in settings["random_time_effects"] if lv not in levels]
    if stray:
        problems.append(f"analysis.random_time_effects: {stray} must also be in "
                        f"analysis.random_effects {levels}")
    if "patient" in settings["random_time_effects"]:
        problems.append("analysis.random_time_effects: a patient x time intercept is the "
                        "residual itself; remove 'patient'")
    if problems:
        raise ConfigError("config analysis", problems)
    covariates = [c for c in settings["covariates"] if c != subgroup]
    # Every structure admitted above (nested random intercepts, optional level x time
    # intercepts) is one the fast exact path handles; statsmodels stays selectable as the
    # general path and cross-check.
    fit_path = "statsmodels" if settings["fit_path"] == "statsmodels" else FAST_PATH
    return ModelSpec(outcome=outcome, population=population, covariates=tuple(covariates),
                     random_effects=tuple(levels),
                     random_time_effects=tuple(settings["random_time_effects"]),
                     reml=bool(settings["reml"]),
                     confidence_level=float(settings["confidence_level"]), subgroup=subgroup,
                     fit_path=fit_path, covariates_by_time=bool(settings["covariates_by_time"]))


def _require_columns(analysis: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in analysis.columns]
    if missing:
        raise DataError(source, f"required column(s) missing: {', '.join(missing)}",
                        column=missing[0],
                        hint="the analysis table is written by `allocate`; see "
                             "docs/data-contracts.md for its columns")


# ---------------------------------------------------------------------------------------------
# Data: population and long layout


def long_data(analysis: pd.DataFrame, spec: ModelSpec,
              source: str = _ANALYSIS_FILE) -> tuple[pd.DataFrame, list[str]]:
    """Select the population and reshape to one row per patient and time point.

    Returns the long frame (sorted by cluster, patient and time, so fits are reproducible) and
    notes on patients left out for missing covariates or cluster ids.
    """
    outcome = spec.outcome
    base, follow, complete = f"{outcome}_baseline", f"{outcome}_followup", f"complete_{outcome}"
    id_columns = [LEVEL_COLUMNS[lv] for lv in spec.random_effects]
    needed = ["patient_id", "arm_intervention", base, follow, *spec.covariates, *id_columns]
    if spec.population == "complete_case":
        needed.append(complete)
    if spec.subgroup:
        needed.append(spec.subgroup)
    _require_columns(analysis, list(dict.fromkeys(needed)), source)

    arm = pd.to_numeric(analysis["arm_intervention"], errors="coerce")
    bad_arm = ~arm.isin([0, 1])
    if bad_arm.any():
        raise DataError(source, "arm_intervention must be 1 (intervention) or 0 (control)",
                        column="arm_intervention",
                        rows=(np.flatnonzero(bad_arm.to_numpy()) + 1).tolist())
    if spec.population == "complete_case":
        selected = analysis[analysis[complete] == 1]
    else:
        selected = analysis[analysis[base].notna()]
    notes = []
    keep_columns = [c for c in dict.fromkeys(
        [*spec.covariates, *id_columns] + ([spec.subgroup] if spec.subgroup else []))
        if c != "patient_id"]
    incomplete = selected[keep_columns].isna().any(axis=1)
    if incomplete.any():
        missing_in = [c for c in keep_columns if selected[c].isna().any()]
        notes.append(f"data: {int(incomplete.sum())} patient(s) left out for missing "
                     f"{', '.join(missing_in)} (complete-covariate analysis)")
        selected = selected[~incomplete]

    frames = []
    for time, column in ((0, base), (1, follow)):
        part = selected[["patient_id", "arm_intervention", *keep_columns]].copy()
        part["time"] = time
        part["score"] = pd.to_numeric(selected[column], errors="coerce")
        frames.append(part)
    long = pd.concat(frames, ignore_index=True)
    long = long[long["score"].notna()].rename(columns={"arm_intervention": "arm"})
    long["arm"] = long["arm"].astype(int)
    sort_keys = [*dict.fromkeys([*id_columns, "patient_id"]), "time"]
    long = long.sort_values(sort_keys, kind="mergesort").reset_index(drop=True)
    return long, notes


def _check_population(long: pd.DataFrame, spec: ModelSpec, source: str,
                      what: str = "population") -> None:
    patients = long.drop_duplicates("patient_id")
    label = f"{spec.outcome}, {spec.population}"
    if len(patients) < MIN_PATIENTS:
        raise DataError(source, f"only {len(patients)} patient(s) in the {what} ({label}); at "
                        f"least {MIN_PATIENTS} are needed to fit a mixed model",
                        column=f"{spec.outcome}_baseline")
    counts = patients["arm"].value_counts()
    for arm_value, arm_name in ((1, "intervention"), (0, "control")):
        if counts.get(arm_value, 0) == 0:
            raise DataError(source, f"no {arm_name} patients in the {what} ({label}); the arm "
                            "x time effect cannot be estimated", column="arm_intervention")
    for level in spec.random_effects:
        if level == "patient":
            continue
        n_units = long[LEVEL_COLUMNS[level]].nunique()
        if n_units < 3:
            raise DataError(source, f"only {n_units} {level}(s) in the {what} ({label}); a "
                            f"{level} variance cannot be estimated",
                            column=LEVEL_COLUMNS[level],
                            hint=f"remove '{level}' from analysis.random_effects")


# ---------------------------------------------------------------------------------------------
# Design matrices


@dataclass
class FixedDesign:
    """Fixed-effects design with lme4-style column names and what emmeans needs."""

    X: pd.DataFrame
    numeric_covariates: list[str]
    factor_dummies: dict[str, list[str]]  # factor -> its dummy columns (reference dropped)
    subgroup_levels: list[str] = field(default_factory=list)
    subgroup_dummies: list[str] = field(default_factory=list)


def _is_factor(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _level_labels(series: pd.Series) -> pd.Series:
    """Factor labels as text; integral numbers print without a decimal (1, not 1.0)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        if np.all(np.equal(np.mod(values, 1), 0)):
            return values.astype(np.int64).astype(str)
    return series.astype(str)


def fixed_design(long: pd.DataFrame, spec: ModelSpec) -> FixedDesign:
    """Build X: intercept, arm, time, [subgroup], covariates, then the interactions."""
    cols: dict[str, np.ndarray] = {
        "(Intercept)": np.ones(len(long)),
        "arm": long["arm"].to_numpy(float),
        "time": long["time"].to_numpy(float),
    }
    sub_levels: list[str] = []
    sub_dummies: list[str] = []
    if spec.subgroup:
        labels = _level_labels(long[spec.subgroup])
        sub_levels = sorted(labels.unique())
        for level in sub_levels[1:]:
            name = f"{spec.subgroup}{level}"
            cols[name] = (labels == level).to_numpy(float)
            sub_dummies.append(name)
    numeric, factors = [], {}
    for cov in spec.covariates:
        if _is_factor(long[cov]):
            labels = _level_labels(long[cov])
            levels = sorted(labels.unique())
            factors[cov] = []
            for level in levels[1:]:
                cols[f"{cov}{level}"] = (labels == level).to_numpy(float)
                factors[cov].append(f"{cov}{level}")
        else:
            cols[cov] = pd.to_numeric(long[cov]).to_numpy(float)
            numeric.append(cov)
    cols[EFFECT_TERM] = cols["arm"] * cols["time"]
    if spec.covariates_by_time:
        # Covariates adjust the change as well as the level: a prognostic factor of change
        # that differs between arms (age here) would otherwise bias the arm x time contrast,
        # which within patients is untouched by level-only covariates. R names these terms
        # "time:<covariate>" for `arm * time + (covariates) * time` (time appears first).
        for name in [*numeric, *(d for dummies in factors.values() for d in dummies)]:
            cols[f"time:{name}"] = cols[name] * cols["time"]
    for name in sub_dummies:
        cols[f"arm:{name}"] = cols["arm"] * cols[name]
        cols[f"time:{name}"] = cols["time"] * cols[name]
    for name in sub_dummies:
        cols[f"arm:time:{name}"] = cols[EFFECT_TERM] * cols[name]
    X = pd.DataFrame(cols, index=long.index)
    rank = np.linalg.matrix_rank(X.to_numpy())
    if rank < X.shape[1]:
        constant = [c for c in X.columns[1:] if X[c].nunique() <= 1]
        raise DataError(_ANALYSIS_FILE, "the fixed effects cannot all be estimated in this "
                        f"population (design has rank {rank} < {X.shape[1]} columns"
                        + (f"; constant: {', '.join(constant)}" if constant else "") + ")",
                        column=constant[0] if constant else None,
                        hint="drop a covariate with a single value or a subgroup with an "
                             "empty arm")
    return FixedDesign(X=X, numeric_covariates=numeric, factor_dummies=factors,
                       subgroup_levels=sub_levels, subgroup_dummies=sub_dummies)


@dataclass
class RandomDesign:
    """Unit codes of each variance component and the outermost grouping."""

    components: list[str]
    unit_keys: dict[str, np.ndarray]  # component -> unit key per row (nested path)
    groups: np.ndarray                # outermost unit key per row
    n_units: dict[str, int]


def random_design(long: pd.DataFrame, spec: ModelSpec) -> RandomDesign:
    """Unit keys per component; inner units are keyed by their full path so ids need not be
    unique across clusters (lme4's ``therapist:patient``)."""
    keys: dict[str, np.ndarray] = {}
    path = pd.Series([""] * len(long), index=long.index, dtype=object)
    time_text = long["time"].astype(str)
    for i, level in enumerate(spec.random_effects):
        ids = long[LEVEL_COLUMNS[level]].astype(str)
        path = ids if i == 0 else path + "/" + ids
        keys[level] = path.to_numpy()
        if level in spec.random_time_effects:
            keys[f"{level}:time"] = (path + "@" + time_text).to_numpy()
    n_units = {name: int(pd.Series(k).nunique()) for name, k in keys.items()}
    return RandomDesign(components=spec.random_components, unit_keys=keys,
                        groups=keys[spec.random_effects[0]], n_units=n_units)


def _sparse_design(long: pd.DataFrame, fixed: FixedDesign, rand: RandomDesign) -> MixedDesign:
    n = len(long)
    blocks, component = [], []
    for k, name in enumerate(rand.components):
        codes, uniques = pd.factorize(rand.unit_keys[name], sort=True)
        blocks.append(sp.csc_matrix((np.ones(n), (np.arange(n), codes)),
                                    shape=(n, len(uniques))))
        component += [k] * len(uniques)
    return MixedDesign(y=long["score"].to_numpy(float), X=fixed.X.to_numpy(float),
                       Z=sp.hstack(blocks).tocsc(), component=np.asarray(component),
                       component_names=list(rand.components))


def _statsmodels_model(long: pd.DataFrame, fixed: FixedDesign, rand: RandomDesign) -> MixedLM:
    """MixedLM with the outermost level as groups and inner components as VCSpec."""
    # Imported here: only the statsmodels cross-check path needs it, and it costs every
    # other fit process a second of start-up.
    from statsmodels.regression.mixed_linear_model import MixedLM, VCSpec

    groups = rand.groups
    # MixedLM orders groups by sorted label; VCSpec matrices must follow that order.
    labels = sorted(set(groups))
    rows_of = pd.Series(np.arange(len(groups))).groupby(groups).indices
    inner = rand.components[1:]
    names, colnames, mats = [], [], []
    for name in inner:
        keys = rand.unit_keys[name]
        comp_cols, comp_mats = [], []
        for label in labels:
            idx = rows_of[label]
            codes, uniques = pd.factorize(keys[idx], sort=True)
            mat = np.zeros((len(idx), len(uniques)))
            mat[np.arange(len(idx)), codes] = 1.0
            comp_mats.append(mat)
            comp_cols.append([str(u) for u in uniques])
        names.append(name)
        colnames.append(comp_cols)
        mats.append(comp_mats)
    exog_vc = VCSpec(names, colnames, mats) if names else None
    return MixedLM(long["score"].to_numpy(float), fixed.X, groups,
                   exog_re=np.ones((len(long), 1)), exog_vc=exog_vc)


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass
class _Fit:
    theta: np.ndarray
    sigma: float
    beta: np.ndarray
    cov_beta: np.ndarray
    inference: SatterthwaiteInference | None
    converged: bool
    warnings: list[str]
    criterion: float
    refinement: float
    singular: list[str]
    method: str


def _describe_warning(w: warnings.WarningMessage, final_converged: bool) -> str:
    text = " ".join(str(w.message).split())
    kind = w.category.__name__
    intermediate = ("Retrying MixedLM" in text or "optimization failed" in text.lower()
                    or "did not converge" in text.lower() or "Maximum Likelihood" in text)
    if "Hessian matrix at the estimated parameter values" in text:
        return (f"statsmodels {kind} (concerns statsmodels' own standard errors, which are not "
                f"used): {text}")
    if final_converged and intermediate:
        return f"statsmodels {kind} (intermediate; final fit converged): {text}"
    return f"statsmodels {kind}: {text}"


def _profiled(design: MixedDesign, reml: bool):
    if reml:
        return design.profiled_reml

    def profiled_ml(theta: np.ndarray) -> float:
        pc = design.pieces(theta)
        return float(pc["logdet_L"] + design.n * (1 + np.log(2 * np.pi * pc["r2"] / design.n)))

    return profiled_ml


def _minimize_bounded(criterion, start: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, float]:
    """L-BFGS-B over the ``free`` coordinates (others held at their start), theta >= 0."""
    x = start.copy()
    if not free.any():
        return x, criterion(x)

    def partial(z: np.ndarray) -> float:
        full = x.copy()
        full[free] = z
        return criterion(full)

    # Central-difference gradients: forward differences stall short of the optimum when a
    # component is near its zero bound.
    res = minimize(partial, x[free], method="L-BFGS-B", jac="3-point",
                   bounds=[(0.0, None)] * int(free.sum()),
                   options={"ftol": 1e-14, "gtol": 1e-8, "maxiter": 500})
    x[free] = res.x
    return x, float(criterion(x))


def _refine_optimum(criterion, theta0: np.ndarray, start_value: float) -> np.ndarray:
    """Refine MixedLM's optimum on the exact lme4 criterion, bounded at zero as in lme4.

    Near-zero components are also tried exactly at zero (the others re-optimised), because a
    gradient method approaches a boundary optimum only slowly; the lowest criterion wins.
    """
    best, best_value = theta0, start_value
    theta, value = _minimize_bounded(criterion, theta0, np.ones(len(theta0), dtype=bool))
    if value < best_value:
        best, best_value = theta, value
    small = best < 1e-2 * max(float(np.max(best)), 1.0)
    if small.any():
        trial = best.copy()
        trial[small] = 0.0
        theta, value = _minimize_bounded(criterion, trial, ~small)
        if value <= best_value:
            best, best_value = theta, value
    return best


def _fit(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign, rand: RandomDesign) -> _Fit:
    """Fit by the path the spec names; both give lme4's REML/ML optimum (golden-tested)."""
    if spec.fit_path == FAST_PATH:
        return _fit_fast(long, spec, fixed, rand)
    return _fit_statsmodels(long, spec, fixed, rand)


def _satterthwaite(design, theta: np.ndarray, sigma: float, beta: np.ndarray, reml: bool,
                   messages: list[str]) -> SatterthwaiteInference | None:
    try:
        inference = SatterthwaiteInference.from_fit(design, theta, sigma, beta=beta, reml=reml)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        messages.append(f"Satterthwaite df could not be computed ({exc}); inference uses the "
                        "normal (z) distribution")
        return None
    messages += inference.notes
    return inference


def _fit_fast(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign,
              rand: RandomDesign) -> _Fit:
    """Exact nested-intercept REML/ML exploiting the block structure (trial_analysis.fast_lmm)."""
    levels = {lv: long[LEVEL_COLUMNS[lv]].astype(str).to_numpy() for lv in spec.random_effects}
    res = fit_nested_lmm(long["score"].to_numpy(float), fixed.X.to_numpy(float), levels,
                         time=long["time"].to_numpy(), time_effects=list(spec.random_time_effects),
                         reml=spec.reml, column_names=list(fixed.X.columns))
    if list(res.design.component_names) != list(rand.components):
        raise RuntimeError(f"fast path components {res.design.component_names} do not match "
                           f"{rand.components}")
    messages = [f"fast path: {w}" for w in res.warnings if not w.startswith("singular fit")]
    singular = [name for name, t in zip(rand.components, res.theta, strict=True)
                if t < SINGULAR_TOL]
    for name in singular:
        messages.append(f"singular fit: the {name} variance is estimated at the boundary "
                        "(zero)")
    beta = res.fixed_effects.to_numpy(float)
    inference = _satterthwaite(res.design, res.theta, res.sigma, beta, spec.reml, messages)
    method = (("REML" if spec.reml else "ML") + "; exact nested random-intercept fit "
              "(trial_analysis.fast_lmm: closed-form per-patient inverses, Woodbury updates per "
              "cluster); Satterthwaite df (lmerTest method)")
    return _Fit(theta=np.asarray(res.theta, float), sigma=float(res.sigma), beta=beta,
                cov_beta=res.cov_fixed.to_numpy(float), inference=inference,
                converged=bool(res.converged), warnings=messages,
                criterion=float(res.deviance_value), refinement=0.0, singular=singular,
                method=method)


def _fit_statsmodels(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign,
                     rand: RandomDesign) -> _Fit:
    model = _statsmodels_model(long, fixed, rand)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(reml=spec.reml, method=FIT_METHODS, maxiter=FIT_MAXITER)
    converged = bool(result.converged)
    messages = [_describe_warning(w, converged) for w in caught]
    if not converged:
        messages.append("statsmodels MixedLM did not report convergence with any of "
                        f"{FIT_METHODS}")
    scale = float(result.scale)
    variances = [float(result.cov_re.iloc[0, 0])] + [float(v) for v in result.vcomp]
    theta0 = np.sqrt(np.clip(np.asarray(variances) / scale, 0, None))

    design = _sparse_design(long, fixed, rand)
    criterion = _profiled(design, spec.reml)
    start_value = criterion(theta0)
    theta = _refine_optimum(criterion, theta0, start_value)
    final_value = criterion(theta)

    pieces = design.pieces(theta)
    dof = design.n - design.p if spec.reml else design.n
    sigma = float(np.sqrt(pieces["r2"] / dof))
    beta = np.asarray(pieces["beta"])
    cov_beta = sigma**2 * np.asarray(pieces["XtViX_inv"])
    singular = [name for name, t in zip(rand.components, theta, strict=True) if t < SINGULAR_TOL]
    for name in singular:
        messages.append(f"singular fit: the {name} variance is estimated at the boundary "
                        "(zero)")
    inference = _satterthwaite(design, theta, sigma, beta, spec.reml, messages)
    method = (("REML" if spec.reml else "ML") + f"; statsmodels MixedLM ({', '.join(FIT_METHODS)}"
              "), optimum refined on the exact lme4 profiled criterion; Satterthwaite df "
              "(lmerTest method)")
    return _Fit(theta=theta, sigma=sigma, beta=beta, cov_beta=cov_beta, inference=inference,
                converged=converged, warnings=messages, criterion=final_value,
                refinement=float(start_value - final_value), singular=singular, method=method)


def _contrast(fit: _Fit, L: np.ndarray, level: float) -> dict[str, float]:
    """Estimate, SE, CI, p and df for ``L beta`` (Satterthwaite t, or z if unavailable)."""
    if fit.inference is not None:
        res = fit.inference.contrast(L)
        low, high = fit.inference.ci(res, level)
        return {"estimate": res["estimate"], "std_error": res["std_error"], "ci_low": low,
                "ci_high": high, "p_value": res["p_value"], "df": res["df"]}
    estimate = float(L @ fit.beta)
    se = float(np.sqrt(L @ fit.cov_beta @ L))
    q = norm_ppf(0.5 + level / 2)
    return {"estimate": estimate, "std_error": se, "ci_low": estimate - q * se,
            "ci_high": estimate + q * se,
            "p_value": float(2 * norm_sf(abs(estimate / se))), "df": np.nan}


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class OutcomeModelResult:
    """A fitted outcome model.

    Attributes
    ----------
    fixed_effects : DataFrame
        One row per fixed-effect term: ``term, estimate, std_error, ci_low, ci_high, p_value,
        df``.
    marginal_means : DataFrame
        Adjusted means per arm and time point (emmeans reference grid):
        ``arm, time, estimate, std_error, ci_low, ci_high``.
    variance_components : dict
        Variance of each random component and ``residual``.
    icc : dict
        Each component's share of the total variance of one observation.
    formula, random_effects
        The model specification (lme4 syntax; levels and time levels).
    """

    outcome: str
    population: str
    model_name: str
    formula: str
    random_effects: dict[str, Any]
    method: str
    fit_path: str
    converged: bool
    warnings: list[str]
    fixed_effects: pd.DataFrame
    marginal_means: pd.DataFrame
    variance_components: dict[str, float]
    icc: dict[str, float]
    n_patients: int
    n_observations: int
    n_clusters: dict[str, int]
    confidence_level: float
    reml_criterion: float
    optimum_refinement: float
    singular: bool
    inference: str
    extra_rows: pd.DataFrame | None = None

    @property
    def effect(self) -> pd.Series:
        """The arm x time row: difference between arms in mean change."""
        return self.fixed_effects.set_index("term").loc[EFFECT_TERM]

    @property
    def n_clusters_outer(self) -> int:
        """Independent clusters: units of the outermost random level."""
        return self.n_clusters[self.random_effects["levels"][0]]

    def _tidy(self, rows: pd.DataFrame, model: str) -> pd.DataFrame:
        out = rows.copy()
        out.insert(0, "model", model)
        out.insert(0, "population", self.population)
        out.insert(0, "outcome", self.outcome)
        if "n_patients" not in out:
            out["n_patients"] = self.n_patients
        if "n_observations" not in out:
            out["n_observations"] = self.n_observations
        out["n_clusters"] = self.n_clusters_outer
        out["converged"] = self.converged
        out["warnings"] = "; ".join(self.warnings)
        return out[TIDY_COLUMNS]

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows (one per fixed effect, plus any extra rows), sorted by model and term."""
        frames = [self._tidy(self.fixed_effects, self.model_name)]
        if self.extra_rows is not None:
            frames.append(self.extra_rows[TIDY_COLUMNS])
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["model", "term"], kind="mergesort").reset_index(drop=True)

    def model_block(self) -> dict[str, Any]:
        """The ``model`` block of the estimate JSON."""
        return {"formula": self.formula, "random_effects": self.random_effects,
                "method": self.method, "fit_path": self.fit_path, "converged": self.converged,
                "warnings": list(self.warnings), "variance_components": self.variance_components,
                "icc": self.icc, "n_clusters": self.n_clusters, "singular": self.singular,
                "inference": self.inference, "reml_criterion": self.reml_criterion,
                "optimum_refinement": self.optimum_refinement,
                "confidence_level": self.confidence_level}

    def to_json_dict(self) -> dict[str, Any]:
        """The estimate file content (docs/data-contracts.md, "Estimates")."""
        return {"outcome": self.outcome, "population": self.population,
                "model": self.model_block(),
                "estimates": self.to_frame().to_dict(orient="records"),
                "marginal_means": self.marginal_means[MARGINAL_COLUMNS].to_dict(
                    orient="records")}

    def summary(self) -> str:
        """Readable text: the effect, fixed effects, variance components, warnings."""
        pct = f"{self.confidence_level:.0%}"
        e = self.effect
        df_text = "z" if self.inference == "z" else f"t, Satterthwaite df {e['df']:.1f}"
        lines = [
            f"Linear mixed model: {self.outcome}, {self.population} ({self.method})",
            f"  {self.formula}",
            f"  {self.n_patients} patients, {self.n_observations} observations, clusters: "
            + ", ".join(f"{k} {v}" for k, v in self.n_clusters.items()),
            f"  converged: {self.converged}; singular: {self.singular}",
            "",
            f"Difference in mean change (intervention - control): {e['estimate']:.3f} "
            f"(SE {e['std_error']:.3f}, {pct} CI {e['ci_low']:.3f} to {e['ci_high']:.3f}, "
            f"p = {e['p_value']:.4g}; {df_text})",
            "",
            "Fixed effects:",
            self.fixed_effects.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Variance components (ICC):",
        ]
        for name, var in self.variance_components.items():
            lines.append(f"  {name:<18} {var:10.4f}  ({self.icc[name]:.3f})")
        if not self.marginal_means.empty:
            lines += ["", "Adjusted marginal means:",
                      self.marginal_means.to_string(index=False,
                                                    float_format=lambda v: f"{v:.3f}")]
        if self.warnings:
            lines += ["", "Warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _variance_summary(fit: _Fit, rand: RandomDesign) -> tuple[dict[str, float], dict[str, float]]:
    variances = {name: float((t * fit.sigma) ** 2)
                 for name, t in zip(rand.components, fit.theta, strict=True)}
    variances["residual"] = fit.sigma**2
    total = sum(variances.values())
    return variances, {name: v / total for name, v in variances.items()}


def _fixed_rows(fit: _Fit, names: list[str], level: float) -> pd.DataFrame:
    rows = []
    for j, name in enumerate(names):
        L = np.zeros(len(names))
        L[j] = 1.0
        rows.append({"term": name, **_contrast(fit, L, level)})
    return pd.DataFrame(rows)


def _marginal_means(fit: _Fit, fixed: FixedDesign, long: pd.DataFrame, config: dict[str, Any],
                    level: float) -> pd.DataFrame:
    names = list(fixed.X.columns)
    alloc = config.get("allocation", {})
    timepoints = config.get("timepoints", {})
    arm_labels = {0: alloc.get("control", "control"), 1: alloc.get("intervention", "intervention")}
    time_labels = {0: timepoints.get("baseline", "baseline"),
                   1: timepoints.get("followup", "followup")}
    rows = []
    for arm in (0, 1):
        for time in (0, 1):
            L = pd.Series(0.0, index=names)
            L["(Intercept)"] = 1.0
            L["arm"], L["time"], L[EFFECT_TERM] = arm, time, arm * time
            # emmeans' reference grid: numeric covariates at their mean over the model rows.
            for cov in fixed.numeric_covariates:
                L[cov] = fixed.X[cov].mean()
            # Factors: equal weight to every level (the reference level contributes zeros).
            for dummies in fixed.factor_dummies.values():
                for d in dummies:
                    L[d] = 1.0 / (len(dummies) + 1)
            # Covariate x time terms take the covariate's grid value times the time point.
            for name in [*fixed.numeric_covariates,
                         *(d for dummies in fixed.factor_dummies.values() for d in dummies)]:
                if f"time:{name}" in L.index:
                    L[f"time:{name}"] = L[name] * time
            res = _contrast(fit, L.to_numpy(), level)
            rows.append({"arm": arm_labels[arm], "time": time_labels[time],
                         **{k: res[k] for k in MARGINAL_COLUMNS[2:]}})
    return pd.DataFrame(rows, columns=MARGINAL_COLUMNS)


def _fit_prepared(long: pd.DataFrame, spec: ModelSpec, config: dict[str, Any],
                  notes: list[str], model_name: str
                  ) -> tuple[OutcomeModelResult, _Fit, FixedDesign]:
    fixed = fixed_design(long, spec)
    rand = random_design(long, spec)
    fit = _fit(long, spec, fixed, rand)
    variances, icc = _variance_summary(fit, rand)
    level = spec.confidence_level
    fixed_rows = _fixed_rows(fit, list(fixed.X.columns), level)
    marginal = (_marginal_means(fit, fixed, long, config, level) if spec.subgroup is None
                else pd.DataFrame(columns=MARGINAL_COLUMNS))
    n_clusters = {lv: rand.n_units[lv] for lv in spec.random_effects}
    result = OutcomeModelResult(
        outcome=spec.outcome, population=spec.population, model_name=model_name,
        formula=spec.lme4_formula(),
        random_effects={"levels": list(spec.random_effects),
                        "time_levels": list(spec.random_time_effects),
                        "components": list(rand.components)},
        method=fit.method, fit_path=spec.fit_path, converged=fit.converged,
        warnings=notes + fit.warnings, fixed_effects=fixed_rows, marginal_means=marginal,
        variance_components=variances, icc=icc,
        n_patients=int(long["patient_id"].nunique()), n_observations=len(long),
        n_clusters=n_clusters, confidence_level=level, reml_criterion=fit.criterion,
        optimum_refinement=fit.refinement, singular=bool(fit.singular),
        inference="satterthwaite" if fit.inference is not None else "z")
    return result, fit, fixed


def fit_outcome_model(analysis: pd.DataFrame, config: dict[str, Any], outcome: str,
                      population: str, *, source: str = _ANALYSIS_FILE) -> OutcomeModelResult:
    """Fit ``score ~ arm * time + covariates`` with the configured random effects.

    Parameters
    ----------
    analysis : DataFrame
        The analysis table (one row per patient; docs/data-contracts.md).
    config : dict
        Validated study configuration; reads ``analysis.*``, ``outcomes``, ``allocation`` and
        ``timepoints``.
    outcome : str
        An outcome name from the configuration.
    population : {"complete_case", "all_available"}
        ``complete_case``: patients with both scores of this outcome
        (``complete_{outcome} == 1``); ``all_available``: every patient with a baseline score,
        follow-up where present (valid under missing at random, through the likelihood).
    source : str
        Name of the input, for error messages.

    Returns
    -------
    OutcomeModelResult

    Raises
    ------
    ConfigError
        Unknown outcome or population, or an invalid random-effects structure.
    DataError
        Missing columns, too few patients, an empty arm, or too few clusters.
    """
    spec = model_spec(config, outcome, population)
    long, notes = long_data(analysis, spec, source)
    _check_population(long, spec, source)
    result, _, _ = _fit_prepared(long, spec, config, notes, "lmm")
    return result


# ---------------------------------------------------------------------------------------------
# Subgroups


@dataclass
class SubgroupModelResult:
    """The arm x time x subgroup model, effects within each level and stratified fits.

    Attributes
    ----------
    interaction : OutcomeModelResult
        The model with the three-way interaction (all its fixed effects).
    subgroup_effects : DataFrame
        The arm x time effect within each level (linear contrasts of the interaction model):
        ``level, estimate, std_error, ci_low, ci_high, p_value, df, n_patients``.
    heterogeneity : dict
        F test of the three-way term(s): ``F, num_df, den_df, p_value`` (Satterthwaite).
    stratified : dict
        Level -> :class:`OutcomeModelResult` fitted within that level only (cross-check).
    """

    outcome: str
    population: str
    subgroup: str
    interaction: OutcomeModelResult
    subgroup_effects: pd.DataFrame
    heterogeneity: dict[str, float]
    stratified: dict[str, OutcomeModelResult]

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows: interaction-model fixed effects, within-level effects, heterogeneity,
        stratified effects. ``population`` carries the population the models were fitted in."""
        base = self.interaction
        rows = [base._tidy(base.fixed_effects, "subgroup_interaction")]
        within = self.subgroup_effects.copy()
        within["term"] = [f"arm:time [{self.subgroup}={lv}]" for lv in within["level"]]
        rows.append(base._tidy(within.drop(columns="level"), "subgroup_contrast"))
        het = pd.DataFrame([{
            "term": f"heterogeneity F [{self.subgroup}]", "estimate": self.heterogeneity["F"],
            "std_error": np.nan, "ci_low": np.nan, "ci_high": np.nan,
            "p_value": self.heterogeneity["p_value"], "df": self.heterogeneity["den_df"]}])
        rows.append(base._tidy(het, "subgroup_heterogeneity"))
        for level, res in self.stratified.items():
            eff = res.fixed_effects[res.fixed_effects["term"] == EFFECT_TERM].copy()
            eff["term"] = f"arm:time [{self.subgroup}={level}]"
            rows.append(res._tidy(eff, "stratified"))
        frame = pd.concat(rows, ignore_index=True)
        return frame.sort_values(["model", "term"], kind="mergesort").reset_index(drop=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The subgroup estimate file content."""
        return {"outcome": self.outcome, "population": self.population,
                "subgroup": self.subgroup, "model": self.interaction.model_block(),
                "heterogeneity": self.heterogeneity,
                "subgroup_effects": self.subgroup_effects.to_dict(orient="records"),
                "stratified_models": {lv: r.model_block() for lv, r in self.stratified.items()},
                "estimates": self.to_frame().to_dict(orient="records"),
                "marginal_means": []}

    def summary(self) -> str:
        """Readable text: effect per level, heterogeneity test, stratified cross-check."""
        pct = f"{self.interaction.confidence_level:.0%}"
        lines = [f"Subgroups by {self.subgroup}: {self.outcome}, {self.population}",
                 f"  {self.interaction.formula}", "",
                 f"Arm x time effect within each level ({pct} CI):"]
        for row in self.subgroup_effects.itertuples():
            lines.append(f"  {self.subgroup}={row.level}: {row.estimate:.3f} "
                         f"({row.ci_low:.3f} to {row.ci_high:.3f}), p = {row.p_value:.4g}, "
                         f"n = {row.n_patients}")
        h = self.heterogeneity
        lines += ["", f"Heterogeneity: F({h['num_df']:.0f}, {h['den_df']:.1f}) = {h['F']:.3f}, "
                      f"p = {h['p_value']:.4g}", "", "Stratified fits (cross-check):"]
        for level, res in self.stratified.items():
            e = res.effect
            lines.append(f"  {self.subgroup}={level}: {e['estimate']:.3f} "
                         f"({e['ci_low']:.3f} to {e['ci_high']:.3f})")
        warn = self.interaction.warnings
        if warn:
            lines += ["", "Warnings:"] + [f"  - {w}" for w in warn]
        return "\n".join(lines)


def fit_subgroup_model(analysis: pd.DataFrame, config: dict[str, Any], outcome: str,
                       subgroup: str, *, population: str | None = None, stratified: bool = True,
                       source: str = _ANALYSIS_FILE) -> SubgroupModelResult:
    """Fit ``score ~ arm * time * subgroup + covariates`` and the effect within each level.

    The population is ``analysis.subgroup_population`` (default ``complete_case``) unless
    given. The subgroup is treated as a factor (levels sorted; the first is the reference). The
    heterogeneity test is the Satterthwaite F test of all arm x time x subgroup terms. Each
    level is also fitted on its own (without the subgroup terms) as a cross-check; a level too
    small for its own fit is reported in ``warnings`` instead; ``stratified=False`` skips
    these fits.
    """
    settings = _analysis_settings(config)
    population = population or settings["subgroup_population"]
    spec = model_spec(config, outcome, population, subgroup=subgroup)
    long, notes = long_data(analysis, spec, source)
    _check_population(long, spec, source)
    labels = _level_labels(long[subgroup])
    if labels.nunique() < 2:
        raise DataError(source, f"subgroup '{subgroup}' has a single value in the population "
                        f"({outcome}, {population}); there is nothing to compare",
                        column=subgroup)
    result, fit, fixed = _fit_prepared(long, spec, config, notes, "subgroup_interaction")
    names = list(fixed.X.columns)
    level_ci = spec.confidence_level
    rows = []
    for level in fixed.subgroup_levels:
        L = pd.Series(0.0, index=names)
        L[EFFECT_TERM] = 1.0
        if f"arm:time:{subgroup}{level}" in L.index:
            L[f"arm:time:{subgroup}{level}"] = 1.0
        res = _contrast(fit, L.to_numpy(), level_ci)
        rows.append({"level": level, **res,
                     "n_patients": int(long.loc[labels == level, "patient_id"].nunique()),
                     "n_observations": int((labels == level).sum())})
    effects = pd.DataFrame(rows)
    three_way = [names.index(f"arm:time:{d}") for d in fixed.subgroup_dummies]
    L3 = np.zeros((len(three_way), len(names)))
    L3[np.arange(len(three_way)), three_way] = 1.0
    if fit.inference is not None:
        heterogeneity = fit.inference.f_test(L3)
    else:
        b = L3 @ fit.beta
        chi2 = float(b @ np.linalg.solve(L3 @ fit.cov_beta @ L3.T, b))
        heterogeneity = {"F": chi2 / len(three_way), "num_df": float(len(three_way)),
                         "den_df": np.inf, "p_value": float(chi2_sf(chi2, len(three_way)))}

    strata: dict[str, OutcomeModelResult] = {}
    # Within a stratum the subgroup variable is constant: it cannot also be a covariate there.
    base_spec = dataclasses.replace(
        model_spec(config, outcome, population),
        covariates=tuple(c for c in spec.covariates if c != subgroup))
    for level in fixed.subgroup_levels if stratified else []:
        part = long[labels == level]
        try:
            _check_population(part, base_spec, source, what=f"subgroup {subgroup}={level}")
            strata[level], _, _ = _fit_prepared(part, base_spec, config, [], "stratified")
        except DataError as exc:
            result.warnings.append(f"stratified fit for {subgroup}={level} not possible: {exc}")
    return SubgroupModelResult(outcome=outcome, population=population, subgroup=subgroup,
                               interaction=result, subgroup_effects=effects,
                               heterogeneity=heterogeneity, stratified=strata)


# ---------------------------------------------------------------------------------------------
# Command-line entries


def run_fit(config: dict[str, Any], analysis: str | Path, outcome: str, population: str,
            out_json: str | Path, out_csv: str | Path) -> OutcomeModelResult:
    """CLI ``fit``: fit one outcome model and write its JSON and CSV estimate files."""
    result = fit_outcome_model(read_analysis_table(analysis), config, outcome, population,
                               source=str(analysis))
    write_json(result.to_json_dict(), out_json)
    write_csv(result.to_frame(), out_csv)
    return result


def run_fit_subgroup(config: dict[str, Any], analysis: str | Path, outcome: str, subgroup: str,
                     out_json: str | Path, out_csv: str | Path) -> SubgroupModelResult:
    """CLI ``fit-subgroup``: fit the subgroup model and write its JSON and CSV files."""
    result = fit_subgroup_model(read_analysis_table(analysis), config, outcome, subgroup,
                                source=str(analysis))
    write_json(result.to_json_dict(), out_json)
    write_csv(result.to_frame(), out_csv)
    return result
