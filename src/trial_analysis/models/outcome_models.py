"""Linear mixed models for each outcome: the arm x time effect, marginal means and subgroups.

Model (lme4 notation, the default configuration)::

    score ~ arm * time + age + sex + symptom_duration_weeks
            + (1 | therapist) + (1 | therapist:time) + (1 | therapist:patient)

on long data (one row per patient and time point; ``time`` 0 = baseline, 1 = follow-up). The
estimand is the ``arm:time`` coefficient: the difference between arms in mean change from
baseline to follow-up, intervention minus control.

Other study structures (configuration only)
-------------------------------------------
- **Several follow-ups** (``timepoints.followups``). ``analysis.time: categorical``: time is a
  factor, baseline the reference, so there is one mean per arm and time point (terms
  ``time<label>``, ``arm:time<label>``, ``time<label>:<covariate>``, as lme4 names them);
  ``continuous``: time is numeric (``timepoints.values``), the change linear in time, and
  ``arm:time`` the difference in slope per time unit. With one follow-up and categorical time
  the single 0/1 column keeps the name ``time`` (the default model above, unchanged).
- **Baseline as covariate** (``analysis.baseline: covariate``, ANCOVA): the rows are the
  follow-ups only and the baseline score is a covariate named ``baseline``:
  ``score ~ arm [* time] + baseline + covariates [* time]``. Patients without a baseline
  score are left out (noted in ``warnings``). A level x time random intercept needs several
  follow-ups; with one it is dropped (noted).
- **Random effects** (``analysis.random_effects``, outermost first): ``clinic`` (column
  ``clinic_id``), ``therapist`` (``therapist_id``), ``patient`` (``patient_id``, always last),
  or any patient-level column such as ``site``. Levels must nest (each therapist within one
  site, say); crossed or re-used ids are a DataError. ``[]``: no random effects, allowed only
  with one row per patient (one follow-up, baseline as covariate): ordinary least squares
  with t tests on n - p df (``model`` ``lm``, ``fit_path`` ``ols``).
- **MMRM** (``analysis.covariance``: ``unstructured``, ``compound_symmetry``, ``ar1``,
  ``toeplitz``; ``random_effects: []``): the same fixed effects, no random effects, and a
  covariance matrix over the model time points within each patient
  (:mod:`trial_analysis.models.mmrm`; ``model`` ``mmrm``, ``fit_path`` ``mmrm``, written in
  R mmrm's syntax as ``+ us(time | patient)``). The effect rows and marginal means are built
  exactly as for the mixed models.
- **Kenward-Roger df** (``analysis.ddf: kenward_roger``, REML only): for the random-intercept
  models as pbkrtest and lmerTest compute them (the covariance parameters are the variances,
  in which ``V`` is linear), for the MMRM as :mod:`trial_analysis.models.mmrm` says; SEs are
  then the adjusted ones.

The estimand rows
-----------------
Every outcome estimate file has rows with ``model: effect`` (built by :func:`effect_contrasts`
and tested with the fit's Satterthwaite t, as lmerTest's ``contest``):

- ``arm:time``: the difference between arms in mean change from baseline to the primary
  follow-up (``timepoints.primary``, default the last) -- the primary estimand. Categorical
  time: the ``arm:time<primary>`` coefficient (``arm:time`` with two time points); ANCOVA:
  ``arm`` + ``arm:time<primary>`` (``arm`` alone at the first follow-up or with one
  follow-up); continuous time: the slope difference x (t_primary - t_baseline) (ANCOVA:
  ``arm`` + slope difference x t_primary).
- with several follow-ups also ``arm:time [<label>]`` for each follow-up and
  ``arm:time [overall]``, the equal-weight average over the follow-ups.

With one follow-up the ``effect`` row repeats the ``lmm`` row ``arm:time``.

A constant effect (``analysis.effect: constant``) fits one arm effect over every follow-up,
time still a factor or a continuous term: under ANCOVA ``score ~ arm + time + baseline + ...``
(the effect is ``arm``); with the baseline as a time point ``score ~ arm + time + arm:post +
...``, ``post`` = 1 at every follow-up (the effect is ``arm:post``; ``arm`` is the baseline
difference). The ``effect`` rows are then the single ``arm:time`` row, the effect at every
follow-up. With two time points (or one follow-up under ANCOVA) both settings fit the same
model.
:attr:`OutcomeModelResult.effect` is the primary row. Marginal means are per arm and model time
point (ANCOVA: the follow-ups, baseline score at its mean). Subgroup models interact arm x time
with the subgroup; the effect within each level is the primary contrast plus its subgroup
interaction terms, and the heterogeneity F test is the joint test that every level's primary
effect equals the reference level's (one row per other level: the subgroup interaction terms
of that contrast; with two time points, the ``arm:time:<subgroup><level>`` coefficients).

How the numbers are obtained, and why
-------------------------------------
- **Fit.** statsmodels ``MixedLM`` (REML by default). Groups are the outermost random level;
  inner random intercepts (patient, therapist x time, ...) are variance components. MixedLM's
  optimiser can stop a little short of the optimum (1e-5 relative in the variance parameters on
  the golden datasets, more near a boundary), so its solution is then refined on the exact lme4
  profiled REML criterion (:mod:`trial_analysis.models.lmm_inference`), bounded at zero. The
  refinement is recorded (``optimum_refinement``: how much it lowered the criterion).
- **Fixed effects and SEs** are the GLS estimates at the final variance parameters,
  ``cov(beta) = sigma^2 (X' V0^-1 X)^-1`` -- what lme4's ``vcov`` gives. MixedLM's own
  ``bse_fe`` come from the joint Hessian and differ from lme4 by ~0.5 % under REML, so they are
  not used.
- **Inference.** t tests with Satterthwaite (default) or Kenward-Roger (``analysis.ddf``)
  denominator df, computed as lmerTest does (see :mod:`trial_analysis.models.lmm_inference`).
  Verified against lmerTest on committed datasets (``tests/models/test_golden_models.py``,
  ``tests/models/test_golden_kr.py``). Should that computation fail, inference falls back
  to the normal (z) distribution and every row says so in ``warnings``; ``df`` is then empty.
- **Marginal means** follow emmeans' default reference grid (``analysis.reference_grid:
  emmeans``): numeric covariates at their mean over the model's rows (observations, as
  emmeans does), except those with at most two distinct values (0/1 flags such as depression
  and anxiety), which emmeans keeps as levels (its default ``cov.keep = "2"``) and averages
  with equal weights, as it does factor covariates; df by Satterthwaite. For a linear model
  the equal-weight average over a flag's two values is the prediction at their midpoint, so a
  0/1 flag enters the grid at 0.5, not at its prevalence. ``reference_grid: covariate_means``
  sets every numeric covariate, flags included, at its mean (emmeans with ``cov.keep =
  character(0)``). The arm x time effect does not depend on the grid; the means do.
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
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize

from trial_analysis.columns import ARM, ARM_CODE, check_arm
from trial_analysis.config import (
    arm_labels_by_code,
    arm_levels,
    followup_labels,
    level_column,
    outcome_names,
    primary_followup,
    random_effects_problems,
    score_columns,
    time_values,
)
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import (
    ESTIMATE_COLUMNS,
    ColumnWording,
    read_analysis_table,
    require_columns,
    write_csv,
    write_json,
)
from trial_analysis.models.distributions import chi2_sf, norm_ppf, norm_sf
from trial_analysis.models.fast_lmm import fit_nested_lmm
from trial_analysis.models.lmm_inference import (
    FixedDfInference,
    KenwardRogerInference,
    MixedDesign,
    SatterthwaiteInference,
    kenward_roger_lmm,
)
from trial_analysis.models.mmrm import MMRMFit, fit_mmrm
from trial_analysis.models.multiplicity import adjust_family
from trial_analysis.parallel import map_shared
from trial_analysis.privacy import DEFAULT_MIN_CELL_COUNT, count_text, min_cell_count

if TYPE_CHECKING:
    from statsmodels.regression.mixed_linear_model import MixedLM

POPULATIONS = ("complete_case", "all_available")
# Random-effect levels with their own analysis-table column; any other level is the name of a
# patient-level column (a site, say). "patient" is always the innermost level.
NESTING = ("clinic", "therapist", "patient")
TIDY_COLUMNS = ESTIMATE_COLUMNS
MARGINAL_COLUMNS = ["arm", "time", "estimate", "std_error", "ci_low", "ci_high"]
EFFECT_TERM = "arm:time"
# analysis.effect: constant with the baseline as a time point: 1 at every follow-up, 0 at the
# baseline; the arm effect is arm x this indicator (lme4 name arm:post).
POST_COLUMN = "post"
POST_TERM = f"arm:{POST_COLUMN}"
# Rows of the estimand (difference between arms in mean change to each follow-up) carry this
# ``model`` value in every estimate file; the row with term EFFECT_TERM is the primary one.
EFFECT_MODEL = "effect"
OVERALL_LABEL = "overall"
# The baseline score's name as a covariate (analysis.baseline: covariate, ANCOVA).
BASELINE_COVARIATE = "baseline"
# Fewer patients than this in a population (or a subgroup level) is no basis for a mixed model.
MIN_PATIENTS = 10
# lme4's isSingular tolerance on the relative standard deviations.
SINGULAR_TOL = 1e-4
# statsmodels optimisers, tried in turn until one converges; fixed for determinism.
FIT_METHODS = ["lbfgs", "bfgs", "powell"]
FIT_MAXITER = 2000
FIT_PATH = "statsmodels"
FAST_PATH = "fast_nested"
OLS_PATH = "ols"
MMRM_PATH = "mmrm"
_ANALYSIS_FILE = "analysis table"


# ---------------------------------------------------------------------------------------------
# Settings and validation


@dataclass(frozen=True)
class ModelSpec:
    """What to fit: outcome, population, time structure, covariates and random effects.

    ``baseline_label`` and ``followups`` are the time point labels in time order,
    ``time_values`` the numeric time of each (baseline first), ``score_columns`` the
    analysis-table column of each follow-up score.
    """

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
    reference_grid: str = "emmeans"
    baseline_label: str = "baseline"
    followups: tuple[str, ...] = ("followup",)
    primary: str = "followup"
    time: str = "categorical"
    baseline: str = "timepoint"
    effect: str = "by_time"
    time_values: tuple[float, ...] = (0.0, 1.0)
    score_columns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # report.min_cell_count: counts of patients in the model's notes below it show as "<k"
    min_cell_count: int = DEFAULT_MIN_CELL_COUNT
    covariance: str | None = None
    heterogeneous_variances: bool = True
    ddf: str = "satterthwaite"
    # Three or more arms (allocation.arms): every arm label, the reference first (empty for a
    # two-arm study, whose single 0/1 column keeps the name ``arm``); which contrasts and
    # which multiplicity adjustment (analysis.contrasts, analysis.multiplicity).
    arms: tuple[str, ...] = ()
    contrasts: str = "reference"
    multiplicity: str = "single_step"

    @property
    def arm_terms(self) -> list[str]:
        """The arm's fixed-effect columns: ``arm`` (two arms) or ``arm<label>`` for each arm
        but the reference (R's treatment coding of a factor ``arm``)."""
        return [f"arm{label}" for label in self.arms[1:]] if self.arms else ["arm"]

    @property
    def mmrm(self) -> bool:
        """A marginal model over the visits (``analysis.covariance`` set), no random effects."""
        return self.covariance is not None

    @property
    def ancova(self) -> bool:
        """The baseline score is a covariate (rows are follow-ups only)."""
        return self.baseline == "covariate"

    @property
    def model_times(self) -> list[str]:
        """Labels of the time points that are rows of the model, in time order."""
        return list(self.followups) if self.ancova else [self.baseline_label, *self.followups]

    @property
    def time_value_of(self) -> dict[str, float]:
        """Numeric time of each label (baseline included)."""
        return dict(zip([self.baseline_label, *self.followups], self.time_values, strict=True))

    @property
    def time_terms(self) -> list[str]:
        """Fixed-effect columns coding time (lme4 names; empty with a single time point).

        Categorical time is a factor with the first model time point as reference (terms
        ``time<label>``), except in the two-time-point design with the baseline as a time
        point, where the single 0/1 column keeps its historical name ``time``. Continuous
        time is one numeric column ``time``.
        """
        times = self.model_times
        if len(times) < 2:
            return []
        if self.time == "continuous" or (not self.ancova and len(times) == 2):
            return ["time"]
        return [f"time{label}" for label in times[1:]]

    @property
    def constant_effect(self) -> bool:
        """One arm effect over every follow-up (``analysis.effect: constant``).

        Only a different model where the effect could vary: with two time points and the
        baseline as a time point, or a single follow-up under ANCOVA, both settings fit the
        same model.
        """
        return self.effect == "constant" and (
            len(self.model_times) > 2 or self.time == "continuous"
            or (self.ancova and len(self.model_times) > 1))

    @property
    def effect_terms(self) -> list[str]:
        """The fixed-effect columns, beyond ``arm``, that carry the arm effect.

        By time: ``arm:<time term>`` for each time term. Constant: none under ANCOVA (the
        ``arm`` main effect is the effect at every follow-up); with the baseline as a time
        point, ``arm:post``, the arm difference at every follow-up beyond the baseline one.
        """
        if not self.constant_effect:
            return [f"arm:{term}" for term in self.time_terms]
        return [] if self.ancova else [POST_TERM]

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
        """The model in lme4 syntax (nested units written as interactions).

        ``time`` is a factor under categorical time with several follow-ups (or with the
        baseline as covariate), numeric otherwise; ``baseline`` is the baseline score.
        """
        if self.constant_effect:
            fixed = "score ~ arm + time" + ("" if self.ancova else f" + arm:{POST_COLUMN}")
            if self.subgroup:
                fixed += (f" + arm * {self.subgroup} + time:{self.subgroup}"
                          + ("" if self.ancova else f" + arm:{POST_COLUMN}:{self.subgroup}"))
        else:
            fixed = "score ~ arm" + (" * time" if self.time_terms else "")
            fixed += f" * {self.subgroup}" if self.subgroup else ""
        if self.ancova:
            fixed += f" + {BASELINE_COVARIATE}"
        if self.covariates:
            joined = " + ".join(self.covariates)
            by_time = self.covariates_by_time and self.time_terms
            fixed += f" + ({joined}) * time" if by_time else f" + {joined}"
        if self.mmrm:
            # R mmrm's syntax for the within-patient covariance.
            het = self.heterogeneous_variances
            code = {"unstructured": "us", "compound_symmetry": "csh" if het else "cs",
                    "ar1": "ar1h" if het else "ar1", "toeplitz": "toeph" if het else "toep"
                    }[str(self.covariance)]
            return fixed + f" + {code}(time | patient)"
        terms = []
        for i, level in enumerate(self.random_effects):
            path = ":".join(self.random_effects[: i + 1])
            terms.append(f"(1 | {path})")
            if level in self.random_time_effects:
                terms.append(f"(1 | {path}:time)")
        return fixed + "".join(f" + {t}" for t in terms)


def _analysis_settings(config: dict[str, Any]) -> dict[str, Any]:
    settings = dict(config.get("analysis", {}))
    settings.setdefault("covariates", [])
    settings.setdefault("random_effects", ["therapist", "patient"])
    settings.setdefault("random_time_effects", ["therapist"])
    settings.setdefault("reml", True)
    settings.setdefault("confidence_level", 0.95)
    settings.setdefault("subgroups", [])
    settings.setdefault("populations", ["complete_case", "all_available"])
    settings.setdefault("subgroup_population", "complete_case")
    settings.setdefault("fit_path", "auto")
    settings.setdefault("covariates_by_time", True)
    settings.setdefault("reference_grid", "emmeans")
    settings.setdefault("time", "categorical")
    settings.setdefault("baseline", "timepoint")
    settings.setdefault("effect", "by_time")
    settings.setdefault("covariance", None)
    settings.setdefault("heterogeneous_variances", True)
    settings.setdefault("ddf", "satterthwaite")
    settings.setdefault("contrasts", "reference")
    settings.setdefault("multiplicity", "single_step")
    return settings


def model_spec(config: dict[str, Any], outcome: str, population: str,
               subgroup: str | None = None) -> ModelSpec:
    """Build and check the model specification from the configuration.

    Raises
    ------
    ConfigError
        Unknown outcome, population or subgroup, or a random-effects structure the model
        cannot have (see :func:`trial_analysis.config.random_effects_problems`).
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
    followups = tuple(followup_labels(config))
    ancova = settings["baseline"] == "covariate"
    levels = list(settings["random_effects"])
    time_levels = list(settings["random_time_effects"])
    covariance = settings["covariance"]
    problems += random_effects_problems(levels, time_levels,
                                         one_row_per_patient=ancova and len(followups) == 1,
                                         marginal=covariance is not None)
    if settings["ddf"] == "kenward_roger" and not settings["reml"]:
        problems.append("analysis/ddf: Kenward-Roger df need a REML fit (analysis/reml: true)")
    if ancova and BASELINE_COVARIATE in settings["covariates"]:
        problems.append(f"analysis/covariates: '{BASELINE_COVARIATE}' is the name of the "
                        "baseline score under analysis/baseline: covariate; rename the column")
    if settings["time"] == "continuous" and ancova and len(followups) < 2:
        problems.append("analysis/time: continuous time needs at least two follow-ups when the "
                        "baseline is a covariate")
    arms = tuple(arm_levels(config)) if len(arm_levels(config)) > 2 else ()
    if arms and subgroup is not None:
        problems.append("analysis/subgroups: the subgroup models are written for two arms and "
                        f"are not fitted with the {len(arms)} arms of allocation/arms")
    if problems:
        raise ConfigError("config analysis", problems)
    notes = []
    if ancova and len(followups) == 1 and time_levels:
        # One row per patient: a level x time intercept would be the level's intercept again.
        notes.append(f"model: random_time_effects {time_levels} dropped (a single follow-up "
                     "with the baseline as covariate has one time point)")
        time_levels = []
    covariates = [c for c in settings["covariates"] if c != subgroup]
    # Every structure admitted above (nested random intercepts, optional level x time
    # intercepts) is one the fast exact path handles; statsmodels stays selectable as the
    # general path and cross-check. Without random effects the fit is least squares.
    if covariance is not None:
        fit_path = MMRM_PATH
    elif not levels:
        fit_path = OLS_PATH
    else:
        fit_path = "statsmodels" if settings["fit_path"] == "statsmodels" else FAST_PATH
    values = time_values(config)
    return ModelSpec(outcome=outcome, population=population, covariates=tuple(covariates),
                     random_effects=tuple(levels), random_time_effects=tuple(time_levels),
                     reml=bool(settings["reml"]),
                     confidence_level=float(settings["confidence_level"]), subgroup=subgroup,
                     fit_path=fit_path, covariates_by_time=bool(settings["covariates_by_time"]),
                     reference_grid=str(settings["reference_grid"]),
                     baseline_label=str(config["timepoints"]["baseline"]), followups=followups,
                     primary=primary_followup(config), time=str(settings["time"]),
                     baseline=str(settings["baseline"]), effect=str(settings["effect"]),
                     time_values=tuple(values[label] for label in
                                       [str(config["timepoints"]["baseline"]), *followups]),
                     score_columns=tuple(score_columns(config, outcome)[f] for f in followups)
                     if outcome in outcomes else (), notes=tuple(notes),
                     min_cell_count=min_cell_count(config),

                     covariance=covariance,
                     heterogeneous_variances=bool(settings["heterogeneous_variances"]),
                     ddf=str(settings["ddf"]), arms=arms,
                     contrasts=str(settings["contrasts"]),
                     multiplicity={"dunnett": "single_step", "tukey": "single_step"}.get(
                         str(settings["multiplicity"]), str(settings["multiplicity"])))


# How the outcome models word missing columns of the analysis table: all of them at once.
_MISSING_COLUMNS = ColumnWording("required column(s) missing: {names}",
                                 "the analysis table is written by `allocate`; see "
                                 "docs/data-contracts.md for its columns")


# ---------------------------------------------------------------------------------------------
# Data: population and long layout


def long_data(analysis: pd.DataFrame, spec: ModelSpec,
              source: str = _ANALYSIS_FILE) -> tuple[pd.DataFrame, list[str]]:
    """Select the population and reshape to one row per patient and model time point.

    Rows are the baseline and every follow-up (``analysis.baseline: timepoint``) or the
    follow-ups only, with the baseline score in column ``baseline`` (``covariate``; patients
    without a baseline score are left out). Columns: ``patient_id``, ``arm``, covariates,
    cluster ids, ``time`` (0 = baseline, 1, 2, ... = follow-ups in order), ``time_label``,
    ``time_value`` (``timepoints.values``), ``score`` and, under ANCOVA, ``baseline``.

    Returns the long frame (sorted by cluster, patient and time, so fits are reproducible) and
    notes on patients left out for missing covariates, cluster ids or baseline.
    """
    outcome = spec.outcome
    base, complete = f"{outcome}_baseline", f"complete_{outcome}"
    follow_columns = list(spec.score_columns) or [f"{outcome}_followup"]
    id_columns = [level_column(lv) for lv in spec.random_effects]
    arm_column = ARM_CODE if spec.arms else ARM
    needed = ["patient_id", ARM, *([ARM_CODE] if spec.arms else []), base, *follow_columns,
              *spec.covariates, *id_columns]
    if spec.population == "complete_case":
        needed.append(complete)
    if spec.subgroup:
        needed.append(spec.subgroup)
    require_columns(analysis, list(dict.fromkeys(needed)), source, wording=_MISSING_COLUMNS)
    check_arm(analysis, source)
    notes = list(spec.notes)
    if spec.population == "complete_case":
        selected = analysis[analysis[complete] == 1]
    else:
        selected = analysis[analysis[base].notna()]
    if spec.ancova:
        no_baseline = int((analysis[base].isna()
                           & analysis[follow_columns].notna().any(axis=1)).sum())
        if no_baseline:
            notes.append(f"data: {count_text(no_baseline, spec.min_cell_count)} patient(s) "
                         "with a follow-up but no baseline "
                         f"score left out (the baseline is a covariate)")
    keep_columns = [c for c in dict.fromkeys(
        [*spec.covariates, *id_columns] + ([spec.subgroup] if spec.subgroup else []))
        if c != "patient_id"]
    incomplete = selected[keep_columns].isna().any(axis=1)
    if incomplete.any():
        missing_in = [c for c in keep_columns if selected[c].isna().any()]
        left_out = count_text(int(incomplete.sum()), spec.min_cell_count)
        notes.append(f"data: {left_out} patient(s) left out for missing "
                     f"{', '.join(missing_in)} (complete-covariate analysis)")
        selected = selected[~incomplete]

    labels = [spec.baseline_label, *spec.followups]
    columns = dict(zip(labels, [base, *follow_columns], strict=True))
    values = spec.time_value_of
    frames = []
    for label in spec.model_times:
        part = selected[["patient_id", arm_column, *keep_columns]].copy()
        part["time"] = labels.index(label)
        part["time_label"] = label
        part["time_value"] = values[label]
        part["score"] = pd.to_numeric(selected[columns[label]], errors="coerce")
        if spec.ancova:
            part[BASELINE_COVARIATE] = pd.to_numeric(selected[base], errors="coerce")
        frames.append(part)
    long = pd.concat(frames, ignore_index=True)
    long = long[long["score"].notna()].rename(columns={arm_column: "arm"})
    long["arm"] = long["arm"].astype(int)
    sort_keys = [*dict.fromkeys([*id_columns, "patient_id"]), "time"]
    long = long.sort_values(sort_keys, kind="mergesort").reset_index(drop=True)
    return long, notes


def _check_nesting(long: pd.DataFrame, spec: ModelSpec, source: str) -> None:
    """Each unit of an inner level must lie within one unit of the level outside it.

    The fits key inner units by their path (site/therapist), so a therapist seen at two
    sites would silently become two therapists; crossed or re-used ids are an error instead.
    """
    levels = list(spec.random_effects)
    for outer, inner in zip(levels, levels[1:], strict=False):
        outer_col, inner_col = level_column(outer), level_column(inner)
        # Distinct (inner, outer) pairs on integer codes: a groupby-nunique on the ids costs
        # seconds per model on a registry extract.
        outer_codes, outer_units = pd.factorize(long[outer_col], sort=True)
        inner_codes, inner_units = pd.factorize(long[inner_col], sort=True)
        pairs = np.unique(inner_codes.astype(np.int64) * len(outer_units) + outer_codes)
        spread = np.bincount(pairs // len(outer_units), minlength=len(inner_units))
        crossed = np.flatnonzero(spread > 1)
        if len(crossed):
            unit = inner_units[crossed[0]]
            where = sorted(long.loc[long[inner_col] == unit, outer_col].astype(str).unique())
            raise DataError(source, f"random effects must be nested: {len(crossed)} {inner}(s) "
                            f"lie in more than one {outer} (e.g. {inner} '{unit}' in {outer}s "
                            f"{', '.join(where[:5])})", column=inner_col,
                            hint=f"give each {inner} an id unique to its {outer}, or remove "
                                 f"'{outer}' or '{inner}' from analysis.random_effects")


def _check_population(long: pd.DataFrame, spec: ModelSpec, source: str,
                      what: str = "population") -> None:
    patients = long.drop_duplicates("patient_id")
    label = f"{spec.outcome}, {spec.population}"
    if len(patients) < MIN_PATIENTS:
        raise DataError(source, f"only {len(patients)} patient(s) in the {what} ({label}); at "
                        f"least {MIN_PATIENTS} are needed to fit a mixed model",
                        column=f"{spec.outcome}_baseline")
    counts = patients["arm"].value_counts()
    arms = (((1, "intervention"), (0, "control")) if not spec.arms
            else tuple((code, f"'{name}'") for code, name in enumerate(spec.arms)))
    for arm_value, arm_name in arms:
        if counts.get(arm_value, 0) == 0:
            raise DataError(source, f"no {arm_name} patients in the {what} ({label}); the arm "
                            "x time effect cannot be estimated",
                            column=ARM_CODE if spec.arms else "arm_intervention")
    for level in spec.random_effects:
        if level == "patient":
            continue
        n_units = long[level_column(level)].nunique()
        if n_units < 3:
            raise DataError(source, f"only {n_units} {level}(s) in the {what} ({label}); a "
                            f"{level} variance cannot be estimated",
                            column=level_column(level),
                            hint=f"remove '{level}' from analysis.random_effects")
    _check_nesting(long, spec, source)


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


def time_coding(spec: ModelSpec, label: str) -> dict[str, float]:
    """Values of the time columns (:attr:`ModelSpec.time_terms`) at time point ``label``."""
    terms = spec.time_terms
    if terms == ["time"]:
        if spec.time == "continuous":
            return {"time": spec.time_value_of[label]}
        return {"time": float(spec.model_times.index(label))}
    return {term: float(term == f"time{label}") for term in terms}


def effect_coding(spec: ModelSpec, label: str) -> dict[str, float]:
    """Values, for an intervention patient, of :attr:`ModelSpec.effect_terms` at ``label``."""
    if spec.constant_effect:
        return {POST_TERM: float(label != spec.baseline_label)} if not spec.ancova else {}
    return {f"arm:{term}": value for term, value in time_coding(spec, label).items()}


def arm_term(term: str, arm: str) -> str:
    """``term`` (``arm``, ``arm:time<label>``, ...) for the arm column ``arm`` (``armLow``)."""
    return arm + term[len("arm"):] if term == "arm" or term.startswith("arm:") else term


def fixed_design(long: pd.DataFrame, spec: ModelSpec) -> FixedDesign:
    """Build X: intercept, arm, time, [subgroup], [baseline], covariates, then interactions.

    Column names are lme4's: ``time`` or ``time<label>`` per :attr:`ModelSpec.time_terms`,
    ``arm:time<label>``, ``time<label>:<covariate>``, ``arm:time<label>:<subgroup><level>``.
    """
    time_terms = spec.time_terms
    coding = {label: time_coding(spec, label) for label in spec.model_times}
    cols: dict[str, np.ndarray] = {"(Intercept)": np.ones(len(long))}
    if spec.arms:
        # R's treatment coding of the factor arm: one 0/1 column per arm but the reference.
        for code, name in enumerate(spec.arm_terms, start=1):
            cols[name] = (long["arm"].to_numpy() == code).astype(float)
    else:
        cols["arm"] = long["arm"].to_numpy(float)
    for term in time_terms:
        cols[term] = long["time_label"].map({lb: c[term] for lb, c in coding.items()}
                                            ).to_numpy(float)
    sub_levels: list[str] = []
    sub_dummies: list[str] = []
    if spec.subgroup:
        labels = _level_labels(long[spec.subgroup])
        sub_levels = sorted(labels.unique())
        for level in sub_levels[1:]:
            name = f"{spec.subgroup}{level}"
            cols[name] = (labels == level).to_numpy(float)
            sub_dummies.append(name)
    if spec.ancova:
        cols[BASELINE_COVARIATE] = long[BASELINE_COVARIATE].to_numpy(float)
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
    effect_values = {label: effect_coding(spec, label) for label in spec.model_times}
    for term in spec.effect_terms:
        coding = long["time_label"].map({lb: c[term] for lb, c in effect_values.items()}
                                        ).to_numpy(float)
        for name in spec.arm_terms:
            cols[arm_term(term, name)] = cols[name] * coding
    if spec.covariates_by_time:
        # Covariates adjust the change as well as the level: a prognostic factor of change
        # that differs between arms (age here) would otherwise bias the arm x time contrast,
        # which within patients is untouched by level-only covariates. R names these terms
        # "time:<covariate>" for `arm * time + (covariates) * time` (time appears first).
        for term in time_terms:
            for name in [*numeric, *(d for dummies in factors.values() for d in dummies)]:
                cols[f"{term}:{name}"] = cols[name] * cols[term]
    for name in sub_dummies:
        cols[f"arm:{name}"] = cols["arm"] * cols[name]
        for term in time_terms:
            cols[f"{term}:{name}"] = cols[term] * cols[name]
    for name in sub_dummies:
        for term in spec.effect_terms:
            cols[f"{term}:{name}"] = cols[term] * cols[name]
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
    """Units of each variance component and the outermost grouping.

    ``n_units`` comes from integer codes; the text keys (``unit_keys``, ``groups``) that the
    sparse and statsmodels paths need are built only when first asked for: joining ids into
    path strings costs seconds per model on a registry extract, and the fast path never
    needs them.
    """

    components: list[str]
    n_units: dict[str, int]
    long: pd.DataFrame = field(repr=False)
    spec: ModelSpec = field(repr=False)

    @functools.cached_property
    def unit_keys(self) -> dict[str, np.ndarray]:
        """Component -> unit key per row: the nested path of ids as text (``"t1/p7"``)."""
        keys: dict[str, np.ndarray] = {}
        long, spec = self.long, self.spec
        path = pd.Series([""] * len(long), index=long.index, dtype=object)
        time_text = long["time"].astype(str)
        for i, level in enumerate(spec.random_effects):
            ids = long[level_column(level)].astype(str)
            path = ids if i == 0 else path + "/" + ids
            keys[level] = path.to_numpy()
            if level in spec.random_time_effects:
                keys[f"{level}:time"] = (path + "@" + time_text).to_numpy()
        return keys

    @property
    def groups(self) -> np.ndarray:
        """Outermost unit key per row."""
        return (self.unit_keys[self.spec.random_effects[0]] if self.spec.random_effects
                else np.zeros(0))


def unit_codes(long: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Integer unit code per row of each variance component, inner units numbered within
    their path (lme4's ``therapist:patient``: ids need not be unique across clusters).

    Codes follow the order in which units first appear, as ``pd.factorize`` numbers the
    ids themselves, so a fit given codes instead of ids sees its units in the same order.
    """
    codes: dict[str, np.ndarray] = {}
    time_codes = pd.factorize(long["time"])[0].astype(np.int64)
    n_times = int(time_codes.max()) + 1 if len(time_codes) else 1
    path: np.ndarray | None = None
    for level in spec.random_effects:
        ids, id_units = pd.factorize(long[level_column(level)])
        ids = ids.astype(np.int64)
        path = ids if path is None else pd.factorize(path * len(id_units) + ids)[0].astype(
            np.int64)
        codes[level] = path
        if level in spec.random_time_effects:
            codes[f"{level}:time"] = pd.factorize(path * n_times + time_codes)[0]
    return codes


def random_design(long: pd.DataFrame, spec: ModelSpec) -> RandomDesign:
    """Units per component; inner units are keyed by their full path so ids need not be
    unique across clusters (lme4's ``therapist:patient``)."""
    n_units = {name: int(c.max()) + 1 if len(c) else 0
               for name, c in unit_codes(long, spec).items()}
    return RandomDesign(components=spec.random_components, n_units=n_units, long=long,
                        spec=spec)


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
    inference: SatterthwaiteInference | FixedDfInference | None
    converged: bool
    warnings: list[str]
    criterion: float
    refinement: float
    singular: list[str]
    method: str
    mmrm: MMRMFit | None = None


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
    if spec.mmrm:
        return _fit_mmrm(long, spec, fixed)
    if not spec.random_effects:
        return _fit_ols(long, spec, fixed)
    if spec.fit_path == FAST_PATH:
        return _fit_fast(long, spec, fixed, rand)
    return _fit_statsmodels(long, spec, fixed, rand)


def _fit_ols(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign) -> _Fit:
    """Least squares (no random effects: one row per patient), t tests on n - p df.

    The residual variance is RSS / (n - p) whatever ``reml`` says (as R's ``lm``); the
    criterion is -2 x R's ``logLik(fit, REML = reml)``.
    """
    X = fixed.X.to_numpy(float)
    y = long["score"].to_numpy(float)
    n, p = X.shape
    df = n - p
    if df < 1:
        raise DataError(_ANALYSIS_FILE, f"{n} rows cannot estimate {p} fixed effects and a "
                        "residual variance", column=f"{spec.outcome}_followup")
    # QR rather than normal equations: cond(X) squares in X'X.
    Q, R = np.linalg.qr(X)
    beta = np.linalg.solve(R, Q.T @ y)
    rss = float(np.sum((y - X @ beta) ** 2))
    sigma2 = rss / df
    R_inv = np.linalg.solve(R, np.eye(p))
    cov_beta = sigma2 * (R_inv @ R_inv.T)
    logdet_xtx = float(2 * np.sum(np.log(np.abs(np.diag(R)))))
    if spec.reml:
        criterion = logdet_xtx + df * (1 + np.log(2 * np.pi * rss / df))
    else:
        criterion = n * (1 + np.log(2 * np.pi * rss / n))
    method = f"ordinary least squares (no random effects); t tests on n - p = {df} df"
    return _Fit(theta=np.zeros(0), sigma=float(np.sqrt(sigma2)), beta=beta, cov_beta=cov_beta,
                inference=FixedDfInference(beta=beta, cov_beta=cov_beta, df=float(df)),
                converged=True, warnings=[], criterion=float(criterion), refinement=0.0,
                singular=[], method=method)


_DDF_NAMES = {"satterthwaite": "Satterthwaite", "kenward_roger": "Kenward-Roger"}
_DDF_TEXT = {"satterthwaite": "Satterthwaite df (lmerTest method)",
             "kenward_roger": "Kenward-Roger df (pbkrtest method, as lmerTest ddf = "
                              "\"Kenward-Roger\")"}


def _df_inference(design, theta: np.ndarray, sigma: float, beta: np.ndarray, spec: ModelSpec,
                  messages: list[str], long: pd.DataFrame, X: np.ndarray, cov_beta: np.ndarray
                  ) -> SatterthwaiteInference | KenwardRogerInference | None:
    """Satterthwaite (lmerTest's computation) or Kenward-Roger (pbkrtest's) df, by
    ``analysis.ddf``; on failure the normal distribution, said in ``messages``."""
    name = "Kenward-Roger" if spec.ddf == "kenward_roger" else "Satterthwaite"
    try:
        if spec.ddf == "kenward_roger":
            codes = unit_codes(long, spec)
            components = spec.random_components
            inference: SatterthwaiteInference | KenwardRogerInference = kenward_roger_lmm(
                X, [codes[c] for c in components],
                (np.asarray(theta, float) * sigma) ** 2, sigma**2, beta, cov_beta)
        else:
            inference = SatterthwaiteInference.from_fit(design, theta, sigma, beta=beta,
                                                        reml=spec.reml)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        messages.append(f"{name} df could not be computed ({exc}); inference uses the "
                        "normal (z) distribution")
        return None
    messages += inference.notes
    return inference


def _fit_mmrm(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign) -> _Fit:
    """MMRM: marginal model over the model time points (models.mmrm), no random effects."""
    times = spec.model_times
    visit = long["time_label"].map({label: i for i, label in enumerate(times)}).to_numpy()
    fit = fit_mmrm(long["score"].to_numpy(float), fixed.X.to_numpy(float),
                   long["patient_id"].to_numpy(), visit, len(times),
                   covariance=str(spec.covariance), heterogeneous=spec.heterogeneous_variances,
                   reml=spec.reml, ddf=spec.ddf, column_names=list(fixed.X.columns),
                   source=_ANALYSIS_FILE)
    ddf = "Kenward-Roger" if spec.ddf == "kenward_roger" else "Satterthwaite"
    method = (("REML" if spec.reml else "ML") + f"; MMRM, {fit.structure.sas_name} covariance "
              f"over {len(times)} time points, no random effects (trial_analysis.models.mmrm); "
              f"{ddf} df")
    messages = list(fit.warnings)
    # cov_beta is the model-based one (the fallback's); the Kenward-Roger SEs come from the
    # inference object's adjusted covariance.
    return _Fit(theta=fit.theta, sigma=float(np.sqrt(np.mean(np.diag(fit.sigma)))),
                beta=fit.beta, cov_beta=fit.cov_beta, inference=fit.inference,
                converged=fit.converged, warnings=messages, criterion=fit.deviance,
                refinement=0.0, singular=[], method=method, mmrm=fit)


def _fit_fast(long: pd.DataFrame, spec: ModelSpec, fixed: FixedDesign,
              rand: RandomDesign) -> _Fit:
    """Exact nested-intercept REML/ML exploiting the block structure (models.fast_lmm)."""
    # Integer codes number the ids in order of appearance, as the fit would: same units in
    # the same order as the ids themselves give, without turning a million ids into text.
    # (A missing id stays missing, NaN, for the fit's own check.)
    levels = {}
    for lv in spec.random_effects:
        codes = pd.factorize(long[level_column(lv)])[0]
        levels[lv] = np.where(codes >= 0, codes, np.nan)
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
    inference = _df_inference(res.design, res.theta, res.sigma, beta, spec, messages, long,
                              fixed.X.to_numpy(float), res.cov_fixed.to_numpy(float))
    method = (("REML" if spec.reml else "ML") + "; exact nested random-intercept fit "
              "(trial_analysis.models.fast_lmm: closed-form per-patient inverses, Woodbury "
              "updates per cluster); " + _DDF_TEXT[spec.ddf])
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
    inference = _df_inference(design, theta, sigma, beta, spec, messages, long,
                              fixed.X.to_numpy(float), cov_beta)
    method = (("REML" if spec.reml else "ML") + f"; statsmodels MixedLM ({', '.join(FIT_METHODS)}"
              "), optimum refined on the exact lme4 profiled criterion; " + _DDF_TEXT[spec.ddf])
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
    effects: pd.DataFrame | None = None
    primary_followup: str | None = None
    covariance: dict[str, Any] | None = None
    # Several arms: the contrasts of every family with adjusted p values and intervals
    # (CONTRAST_COLUMNS); None with two arms.
    contrasts: pd.DataFrame | None = None

    @property
    def effect(self) -> pd.Series:
        """The primary estimand: difference between arms in mean change from baseline to the
        primary follow-up (the ``effect`` row with term ``arm:time``; with several arms the
        first contrast's, ``arm:time [<arm> vs <reference>]``)."""
        if self.effects is None:
            return self.fixed_effects.set_index("term").loc[EFFECT_TERM]
        if self.contrasts is not None:
            first = self.contrasts.iloc[0]["contrast"]
            return self.effects.set_index("term").loc[f"{EFFECT_TERM} [{first}]"]
        return self.effects.set_index("term").loc[EFFECT_TERM]

    @property
    def n_clusters_outer(self) -> int:
        """Independent clusters: units of the outermost random level (patients without
        random effects)."""
        levels = self.random_effects["levels"]
        return self.n_clusters[levels[0]] if levels else self.n_patients

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
        """Tidy rows (one per fixed effect, the ``effect`` rows, any extra rows), sorted by
        model and term."""
        frames = [self._tidy(self.fixed_effects, self.model_name)]
        if self.effects is not None:
            frames.append(self._tidy(self.effects, EFFECT_MODEL))
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
                "confidence_level": self.confidence_level,
                **({"covariance": self.covariance} if self.covariance is not None else {})}

    def to_json_dict(self) -> dict[str, Any]:
        """The estimate file content (docs/data-contracts.md, "Estimates")."""
        return {"outcome": self.outcome, "population": self.population,
                "model": self.model_block(),
                "estimates": self.to_frame().to_dict(orient="records"),
                "marginal_means": self.marginal_means[MARGINAL_COLUMNS].to_dict(
                    orient="records"),
                **({"contrasts": self.contrasts.to_dict(orient="records")}
                   if self.contrasts is not None else {})}

    def summary(self) -> str:
        """Readable text: the effect, fixed effects, variance components, warnings."""
        pct = f"{self.confidence_level:.0%}"
        e = self.effect
        df_text = {"z": "z", "t": f"t, {e['df']:.0f} df"}.get(
            self.inference, f"t, {_DDF_NAMES.get(self.inference, 'Satterthwaite')} df "
                            f"{e['df']:.1f}")
        kind = ("MMRM" if self.covariance is not None else "Linear mixed model"
                if self.random_effects["levels"] else "Linear model")
        lines = [
            f"{kind}: "
            f"{self.outcome}, {self.population} ({self.method})",
            f"  {self.formula}",
            f"  {self.n_patients} patients, {self.n_observations} observations, clusters: "
            + ", ".join(f"{k} {v}" for k, v in self.n_clusters.items()),
            f"  converged: {self.converged}; singular: {self.singular}",
            "",
            "Difference in mean change (intervention - control)"
            + (f" to {self.primary_followup}" if self.primary_followup else "")
            + f": {e['estimate']:.3f} "
            f"(SE {e['std_error']:.3f}, {pct} CI {e['ci_low']:.3f} to {e['ci_high']:.3f}, "
            f"p = {e['p_value']:.4g}; {df_text})",
        ]
        if self.effects is not None and len(self.effects) > 1:
            lines += [f"  {row.term}: {row.estimate:.3f} ({row.ci_low:.3f} to "
                      f"{row.ci_high:.3f}), p = {row.p_value:.4g}"
                      for row in self.effects.iloc[1:].itertuples()]
        lines += [
            "",
            "Fixed effects:",
            self.fixed_effects.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Variances per time point (MMRM):" if self.covariance is not None
            else "Variance components (ICC):",
        ]
        for name, var in self.variance_components.items():
            share = f"  ({self.icc[name]:.3f})" if name in self.icc else ""
            lines.append(f"  {name:<18} {var:10.4f}{share}")
        if not self.marginal_means.empty:
            lines += ["", "Adjusted marginal means:",
                      self.marginal_means.to_string(index=False,
                                                    float_format=lambda v: f"{v:.3f}")]
        if self.warnings:
            lines += ["", "Warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _variance_summary(fit: _Fit, rand: RandomDesign) -> tuple[dict[str, float], dict[str, float]]:
    if fit.mmrm is not None:
        # An MMRM has no components to share the variance: its variance at each time point
        # (the correlations are in the model block's ``covariance``); no ICC.
        times = rand.spec.model_times
        return ({f"variance [{label}]": float(fit.mmrm.sigma[i, i])
                 for i, label in enumerate(times)}, {})
    variances = {name: float((t * fit.sigma) ** 2)
                 for name, t in zip(rand.components, fit.theta, strict=True)}
    variances["residual"] = fit.sigma**2
    total = sum(variances.values())
    return variances, {name: v / total for name, v in variances.items()}


def _covariance_block(fit: _Fit, spec: ModelSpec) -> dict[str, Any] | None:
    """The MMRM's estimated covariance over the model time points (None for other models):
    structure, the matrix, its correlations and the natural parameters."""
    if fit.mmrm is None:
        return None
    S = fit.mmrm.sigma
    sd = np.sqrt(np.diag(S))
    times = spec.model_times
    return {"structure": fit.mmrm.structure.name,
            "sas_name": fit.mmrm.structure.sas_name,
            "heterogeneous_variances": spec.heterogeneous_variances,
            "time_points": list(times),
            "matrix": [[float(v) for v in row] for row in S],
            "correlation": [[float(v) for v in row] for row in S / np.outer(sd, sd)],
            "parameters": dict(zip(fit.mmrm.structure.theta_names(times),
                                   (float(t) for t in fit.mmrm.theta), strict=True))}


def _fixed_rows(fit: _Fit, names: list[str], level: float) -> pd.DataFrame:
    rows = []
    for j, name in enumerate(names):
        L = np.zeros(len(names))
        L[j] = 1.0
        rows.append({"term": name, **_contrast(fit, L, level)})
    return pd.DataFrame(rows)


def effect_contrasts(spec: ModelSpec, names: list[str],
                     subgroup_dummy: str | None = None, arm: str = "arm"
                     ) -> dict[str, pd.Series]:
    """The estimand as linear combinations of the fixed effects, one per follow-up.

    Difference between arms in mean change from baseline to each follow-up (under ANCOVA:
    in the baseline-adjusted follow-up mean, the same quantity):

    - baseline as time point, categorical time: the ``arm:time<label>`` coefficient
      (``arm:time`` in the two-time-point design);
    - baseline as time point, continuous time: ``arm:time`` x (t_label - t_baseline);
    - ANCOVA, categorical: ``arm`` + ``arm:time<label>`` (``arm`` at the reference follow-up
      and with a single follow-up);
    - ANCOVA, continuous: ``arm`` + ``arm:time`` x t_label.

    With ``subgroup_dummy`` (``depression1``, say) each coefficient's subgroup interaction is
    added, giving the effect within that level of the subgroup. ``arm``: the arm column
    (``armLow`` with several arms: that arm against the reference). Returns ``{label: L}`` in
    follow-up order, ``L`` indexed by ``names``.
    """
    out = {}
    at_baseline = {} if spec.ancova else effect_coding(spec, spec.baseline_label)
    for label in spec.followups:
        weights: dict[str, float] = {}
        if spec.ancova:
            weights["arm"] = 1.0
        for term, value in effect_coding(spec, label).items():
            value = value - at_baseline.get(term, 0.0)
            if value:
                weights[term] = value
        L = pd.Series(0.0, index=names)
        for term, weight in weights.items():
            term = arm_term(term, arm)
            L[term] += weight
            if subgroup_dummy is not None:
                L[f"{term}:{subgroup_dummy}"] += weight
        out[label] = L
    return out


def _effect_rows(fit: _Fit, spec: ModelSpec, names: list[str], level: float) -> pd.DataFrame:
    """``model: effect`` rows: the primary effect (term ``arm:time``) and, with several
    follow-ups, the effect at each (``arm:time [<label>]``) and their equal-weight average
    (``arm:time [overall]``)."""
    contrasts = effect_contrasts(spec, names)
    rows = [{"term": EFFECT_TERM, **_contrast(fit, contrasts[spec.primary].to_numpy(), level)}]
    # A constant effect is the same at every follow-up: one row.
    if len(spec.followups) > 1 and not spec.constant_effect:
        for label, L in contrasts.items():
            rows.append({"term": f"{EFFECT_TERM} [{label}]", **_contrast(fit, L.to_numpy(),
                                                                         level)})
        overall = sum(contrasts.values()) / len(contrasts)
        rows.append({"term": f"{EFFECT_TERM} [{OVERALL_LABEL}]",
                     **_contrast(fit, overall.to_numpy(), level)})
    return pd.DataFrame(rows)


CONTRAST_COLUMNS = ["contrast", "arm", "versus", "followup", "primary", "estimate", "std_error",
                    "df", "ci_low", "ci_high", "p_value", "p_adjusted", "ci_low_adjusted",
                    "ci_high_adjusted", "multiplicity", "n_comparisons"]


def arm_pairs(spec: ModelSpec) -> list[tuple[int, int]]:
    """The contrasts ``(a, b)``, "arm a vs arm b" by arm code (0 the reference):
    each arm against the reference, or every pair, later arm minus earlier (multcomp's
    Dunnett and Tukey order)."""
    k = len(spec.arms)
    if spec.contrasts == "all_pairs":
        return [(j, i) for i in range(k) for j in range(i + 1, k)]
    return [(j, 0) for j in range(1, k)]


def contrast_name(spec: ModelSpec, pair: tuple[int, int]) -> str:
    """Readable name of a contrast: ``Low vs Placebo``."""
    return f"{spec.arms[pair[0]]} vs {spec.arms[pair[1]]}"


def _arm_contrasts(spec: ModelSpec, names: list[str]) -> dict[str, dict[int, pd.Series]]:
    """``{follow-up or "overall": {arm code: L}}``: each arm's effect against the reference
    (zero for the reference itself), as :func:`effect_contrasts` gives it for two arms."""
    per_arm = {code: effect_contrasts(spec, names, arm=term)
               for code, term in enumerate(spec.arm_terms, start=1)}
    zero = pd.Series(0.0, index=names)
    # A constant effect is the same at every follow-up: one family, at the primary one.
    labels = [spec.primary] if spec.constant_effect else list(spec.followups)
    scopes: dict[str, dict[int, pd.Series]] = {
        label: {0: zero, **{code: Ls[label] for code, Ls in per_arm.items()}}
        for label in labels}
    if len(labels) > 1:
        scopes[OVERALL_LABEL] = {code: sum(scopes[label][code] for label in labels)
                                 / len(labels) for code in range(len(spec.arms))}
    return scopes


def _contrast_rows(fit: _Fit, spec: ModelSpec, names: list[str], level: float
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Several arms: the ``model: effect`` rows and the contrasts with their adjustment.

    One family per follow-up (and ``overall``): the contrasts of :func:`arm_pairs`, adjusted
    together (:func:`trial_analysis.models.multiplicity.adjust_family`). Effect terms:
    ``arm:time [Low vs Placebo]`` at the primary follow-up, ``arm:time [Low vs Placebo]
    [<label>]`` at each follow-up and overall (several follow-ups, effect by time).
    """
    cov = getattr(fit.inference, "cov_adjusted", None)
    cov = fit.cov_beta if cov is None else cov
    pairs = arm_pairs(spec)
    effect_rows, families = [], []
    scopes = _arm_contrasts(spec, names)
    several = len(scopes) > 1
    for scope, by_arm in scopes.items():
        Ls = np.array([(by_arm[a] - by_arm[b]).to_numpy() for a, b in pairs])
        rows = pd.DataFrame([{"contrast": contrast_name(spec, pair), "arm": spec.arms[pair[0]],
                              "versus": spec.arms[pair[1]], "followup": scope,
                              "primary": scope == spec.primary, **_contrast(fit, L, level)}
                             for pair, L in zip(pairs, Ls, strict=True)])
        rows = adjust_family(rows, Ls @ cov @ Ls.T, spec.multiplicity, level)
        rows["multiplicity"] = spec.multiplicity if len(pairs) > 1 else "none"
        rows["n_comparisons"] = len(pairs)
        families.append(rows)
        for row in rows.itertuples():
            tidy = {k: getattr(row, k) for k in
                    ("estimate", "std_error", "ci_low", "ci_high", "p_value", "df")}
            if scope == spec.primary:
                effect_rows.append({"term": f"{EFFECT_TERM} [{row.contrast}]", **tidy})
            if several:
                effect_rows.append({"term": f"{EFFECT_TERM} [{row.contrast}] [{scope}]",
                                    **tidy})
    contrasts = pd.concat(families, ignore_index=True)[CONTRAST_COLUMNS]
    return pd.DataFrame(effect_rows), contrasts


def reference_grid_values(X: pd.DataFrame, numeric: Sequence[str], rule: str
                          ) -> dict[str, float]:
    """The value each numeric covariate takes in the marginal means' reference grid.

    ``emmeans`` (its default ``cov.keep = "2"``): a covariate with at most two distinct values
    over the model rows is a two-level grid factor averaged with equal weights, i.e. the
    midpoint of its values for a linear predictor; any other at its mean over the model rows.
    ``covariate_means``: every one at its mean over the model rows.
    """
    values = {}
    for cov in numeric:
        column = X[cov]
        distinct = np.unique(column.to_numpy())
        if rule == "emmeans" and len(distinct) <= 2:
            values[cov] = float(distinct.mean())
        else:
            values[cov] = column.mean()
    return values


def _marginal_means(fit: _Fit, fixed: FixedDesign, long: pd.DataFrame, config: dict[str, Any],
                    level: float, spec: ModelSpec) -> pd.DataFrame:
    """Adjusted means per arm and model time point on emmeans' reference grid.

    Numeric covariates (and, under ANCOVA, the baseline score) as
    :func:`reference_grid_values` sets them, factor covariates averaged over their levels
    with equal weights.
    """
    names = list(fixed.X.columns)
    arm_labels = arm_labels_by_code(config)
    numeric = [*fixed.numeric_covariates, *([BASELINE_COVARIATE] if spec.ancova else [])]
    grid = reference_grid_values(fixed.X, numeric, spec.reference_grid)
    rows = []
    for arm in range(len(spec.arms)) if spec.arms else (0, 1):
        # The arm's column (none for the reference / control) and its indicator value.
        column = spec.arm_terms[arm - 1] if arm > 0 else spec.arm_terms[0]
        flag = 1.0 if arm > 0 else 0.0
        for label in spec.model_times:
            L = pd.Series(0.0, index=names)
            L["(Intercept)"] = 1.0
            L[column] = flag
            for term, value in time_coding(spec, label).items():
                L[term] = value
            for term, value in effect_coding(spec, label).items():
                L[arm_term(term, column)] = flag * value
            for cov, value in grid.items():
                L[cov] = value
            # Factors: equal weight to every level (the reference level contributes zeros).
            for dummies in fixed.factor_dummies.values():
                for d in dummies:
                    L[d] = 1.0 / (len(dummies) + 1)
            # Covariate x time terms take the covariate's grid value times the time coding.
            for term in spec.time_terms:
                for name in [*fixed.numeric_covariates,
                             *(d for dummies in fixed.factor_dummies.values() for d in dummies)]:
                    if f"{term}:{name}" in L.index:
                        L[f"{term}:{name}"] = L[name] * L[term]
            res = _contrast(fit, L.to_numpy(), level)
            rows.append({"arm": arm_labels[arm], "time": label,
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
    names = list(fixed.X.columns)
    fixed_rows = _fixed_rows(fit, names, level)
    # Within a subgroup model the estimand is per level (fit_subgroup_model); the coefficients
    # at the reference level are no summary of their own.
    contrasts = None
    if spec.subgroup is None:
        marginal = _marginal_means(fit, fixed, long, config, level, spec)
        if spec.arms:
            effects, contrasts = _contrast_rows(fit, spec, names, level)
        else:
            effects = _effect_rows(fit, spec, names, level)
    else:
        marginal, effects = pd.DataFrame(columns=MARGINAL_COLUMNS), None
    n_clusters = {lv: rand.n_units[lv] for lv in spec.random_effects}
    if spec.mmrm and model_name == "lmm":
        model_name = "mmrm"
    elif not spec.random_effects and model_name == "lmm":
        model_name = "lm"
    if isinstance(fit.inference, FixedDfInference):
        inference = "t"
    elif fit.inference is None:
        inference = "z"
    else:
        inference = spec.ddf
    result = OutcomeModelResult(
        outcome=spec.outcome, population=spec.population, model_name=model_name,
        formula=spec.lme4_formula(),
        random_effects={"levels": list(spec.random_effects),
                        "time_levels": list(spec.random_time_effects),
                        "components": list(rand.components),
                        **({"covariance": f"{fit.mmrm.structure.name} "
                                          f"({fit.mmrm.structure.sas_name})"}
                           if fit.mmrm is not None else {})},
        method=fit.method, fit_path=spec.fit_path, converged=fit.converged,
        warnings=notes + fit.warnings, fixed_effects=fixed_rows, marginal_means=marginal,
        variance_components=variances, icc=icc,
        n_patients=int(long["patient_id"].nunique()), n_observations=len(long),
        n_clusters=n_clusters, confidence_level=level, reml_criterion=fit.criterion,
        optimum_refinement=fit.refinement, singular=bool(fit.singular),
        inference=inference, effects=effects, primary_followup=spec.primary,
        covariance=_covariance_block(fit, spec), contrasts=contrasts)
    return result, fit, fixed


def fit_outcome_model(analysis: pd.DataFrame, config: dict[str, Any], outcome: str,
                      population: str, *, source: str = _ANALYSIS_FILE) -> OutcomeModelResult:
    """Fit ``score ~ arm * time + covariates`` with the configured random effects.

    The time structure (``timepoints``, ``analysis.time``, ``analysis.baseline``) and the
    random effects come from the configuration; see the module docstring for the model of each
    and for the ``effect`` rows (the estimand at each follow-up).

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
        ``complete_case``: patients with the baseline and every follow-up score of this
        outcome (``complete_{outcome} == 1``); ``all_available``: every patient with a
        baseline score, follow-ups where present (valid under missing at random, through the
        likelihood).
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
        Missing columns, too few patients, an empty arm, too few clusters, or clusters that
        are not nested.
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
    level_differences: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows: interaction-model fixed effects, within-level effects, differences
        between levels, heterogeneity, stratified effects. ``population`` carries the
        population the models were fitted in."""
        base = self.interaction
        rows = [base._tidy(base.fixed_effects, "subgroup_interaction")]
        within = self.subgroup_effects.copy()
        within["term"] = [f"arm:time [{self.subgroup}={lv}]" for lv in within["level"]]
        rows.append(base._tidy(within.drop(columns="level"), "subgroup_contrast"))
        if not self.level_differences.empty:
            rows.append(base._tidy(self.level_differences, "subgroup_difference"))
        het = pd.DataFrame([{
            "term": f"heterogeneity F [{self.subgroup}]", "estimate": self.heterogeneity["F"],
            "std_error": np.nan, "ci_low": np.nan, "ci_high": np.nan,
            "p_value": self.heterogeneity["p_value"], "df": self.heterogeneity["den_df"]}])
        rows.append(base._tidy(het, "subgroup_heterogeneity"))
        for level, res in self.stratified.items():
            eff = res.effect.to_frame().T.reset_index(names="term")
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
    effect within each level is the primary effect (difference in mean change to the primary
    follow-up) in that level. The heterogeneity test is the Satterthwaite F test that every
    level's effect equals the reference level's: jointly, the arm x time x subgroup terms of
    that contrast (with two time points all ``arm:time:<subgroup><level>`` terms; under ANCOVA
    also ``arm:<subgroup><level>``). Each level is also fitted on its own (without the
    subgroup terms) as a cross-check; a level too small for its own fit is reported in
    ``warnings`` instead; ``stratified=False`` skips these fits.
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
    # The primary effect within each level: its contrast at the reference level plus the
    # matching subgroup interaction terms for the other levels.
    within = {level: effect_contrasts(spec, names, None if i == 0 else f"{subgroup}{level}"
                                      )[spec.primary].to_numpy()
              for i, level in enumerate(fixed.subgroup_levels)}
    rows = []
    for level, L in within.items():
        res = _contrast(fit, L, level_ci)
        rows.append({"level": level, **res,
                     "n_patients": int(long.loc[labels == level, "patient_id"].nunique()),
                     "n_observations": int((labels == level).sum())})
    effects = pd.DataFrame(rows)
    # Each level's effect minus the reference level's, at the primary follow-up: the
    # difference between levels the report shows (in the two-time-point design it is the
    # arm:time:<subgroup><level> coefficient itself).
    reference_level = fixed.subgroup_levels[0]
    differences = []
    for level in fixed.subgroup_levels[1:]:
        res = _contrast(fit, within[level] - within[reference_level], level_ci)
        differences.append({"term": f"arm:time [{subgroup}: {level} - {reference_level}]",
                            **res, "n_patients": int(long["patient_id"].nunique()),
                            "n_observations": len(long)})
    # Heterogeneity: every level's effect equals the reference level's. Each row is the
    # subgroup interaction part of that level's contrast (in the two-time-point design the
    # arm:time:<subgroup><level> coefficients, as before).
    reference = within[fixed.subgroup_levels[0]]
    L3 = np.vstack([within[level] - reference for level in fixed.subgroup_levels[1:]])
    if fit.inference is not None:
        heterogeneity = fit.inference.f_test(L3)
    else:
        b = L3 @ fit.beta
        chi2 = float(b @ np.linalg.solve(L3 @ fit.cov_beta @ L3.T, b))
        heterogeneity = {"F": chi2 / len(L3), "num_df": float(len(L3)),
                         "den_df": np.inf, "p_value": float(chi2_sf(chi2, len(L3)))}

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
                               heterogeneity=heterogeneity, stratified=strata,
                               level_differences=pd.DataFrame(differences))


@dataclass
class NotReportedSubgroup:
    """A subgroup analysis that is not reported: a level has fewer than
    ``report.min_cell_count`` patients in the population (or there is a single level).

    Its estimate file holds no rows and says why (``not_reported``); it never carries the
    small count, nor any estimate from which it could be worked out.
    """

    outcome: str
    population: str
    subgroup: str
    reason: str

    def to_frame(self) -> pd.DataFrame:
        """No estimate rows."""
        return pd.DataFrame(columns=TIDY_COLUMNS)

    def to_json_dict(self) -> dict[str, Any]:
        """The subgroup estimate file content: no estimates, the reason."""
        return {"outcome": self.outcome, "population": self.population,
                "subgroup": self.subgroup, "not_reported": self.reason, "model": {},
                "heterogeneity": None, "subgroup_effects": [], "stratified_models": {},
                "estimates": [], "marginal_means": []}


def subgroup_not_reported(analysis: pd.DataFrame, config: dict[str, Any], outcome: str,
                          subgroup: str, *, source: str = _ANALYSIS_FILE
                          ) -> NotReportedSubgroup | None:
    """The reason the subgroup analysis must not be reported, or None when it may be.

    A level with fewer than ``report.min_cell_count`` patients in the subgroup population
    would be identifiable from its estimate, its N, the model's warnings or the difference
    from the whole population's N; a single level leaves nothing to compare.
    """
    k = min_cell_count(config)
    population = _analysis_settings(config)["subgroup_population"]
    spec = model_spec(config, outcome, population, subgroup=subgroup)
    long, _ = long_data(analysis, spec, source)
    labels = _level_labels(long[subgroup])
    per_level = long.groupby(labels.to_numpy())["patient_id"].nunique()
    if len(per_level) < 2:
        reason = (f"not reported: subgroup '{subgroup}' has a single level in the population "
                  f"({population})")
    elif (per_level < k).any():
        reason = (f"not reported: a level of subgroup '{subgroup}' has fewer than {k} patients "
                  f"in the population ({population}; report.min_cell_count)")
    else:
        return None
    return NotReportedSubgroup(outcome=outcome, population=population, subgroup=subgroup,
                               reason=reason)


def reported_subgroup_model(analysis: pd.DataFrame, config: dict[str, Any], outcome: str,
                            subgroup: str, *, source: str = _ANALYSIS_FILE
                            ) -> SubgroupModelResult | NotReportedSubgroup:
    """The subgroup model as the pipeline reports it: fitted, or not reported (see
    :func:`subgroup_not_reported`)."""
    return subgroup_not_reported(analysis, config, outcome, subgroup, source=source) or \
        fit_subgroup_model(analysis, config, outcome, subgroup, source=source)


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


def estimate_files(out_dir: str | Path, outcome: str, config: dict[str, Any]
                   ) -> dict[str, tuple[Path, Path]]:
    """The JSON and CSV estimate files of every model of ``outcome``, keyed by model:
    ``{outcome}.{population}`` per population and ``{outcome}.subgroup_{subgroup}`` per
    subgroup (the names the Snakefile and
    :func:`trial_analysis.reporting.tables.load_estimates` use)."""
    settings = _analysis_settings(config)
    stems = [f"{outcome}.{population}" for population in settings["populations"]]
    stems += [f"{outcome}.subgroup_{subgroup}" for subgroup in settings.get("subgroups") or []]
    out_dir = Path(out_dir)
    return {stem: (out_dir / f"{stem}.json", out_dir / f"{stem}.csv") for stem in stems}


def fit_outcome_models(table: pd.DataFrame, config: dict[str, Any], outcome: str,
                       source: str = "analysis table"
                       ) -> dict[str, OutcomeModelResult | SubgroupModelResult
                                 | NotReportedSubgroup]:
    """Every model of ``outcome``: the primary model in each of ``analysis.populations`` and
    the subgroup model for each of ``analysis.subgroups``, keyed as :func:`estimate_files`."""
    settings = _analysis_settings(config)
    results: dict[str, OutcomeModelResult | SubgroupModelResult] = {}
    for population in settings["populations"]:
        results[f"{outcome}.{population}"] = fit_outcome_model(
            table, config, outcome, population, source=source)
    for subgroup in settings.get("subgroups") or []:
        results[f"{outcome}.subgroup_{subgroup}"] = reported_subgroup_model(
            table, config, outcome, subgroup, source=source)
    return results


def _fit_outcome_task(shared: tuple[pd.DataFrame, dict[str, Any], str], outcome: str
                      ) -> dict[str, OutcomeModelResult | SubgroupModelResult]:
    table, config, source = shared
    return fit_outcome_models(table, config, outcome, source)


def run_fit_models(config: dict[str, Any], analysis: str | Path, out_dir: str | Path,
                   outcomes: Sequence[str] | None = None, jobs: int = 1
                   ) -> dict[str, OutcomeModelResult | SubgroupModelResult]:
    """CLI ``fit-models``: every model of every outcome, the analysis table read once.

    Parameters
    ----------
    config : dict
        Validated study configuration.
    analysis : path
        The analysis table.
    out_dir : path
        Folder of the estimate files (:func:`estimate_files` of each outcome).
    outcomes : sequence of str, optional
        The outcomes whose models to fit; all of ``outcomes`` in config by default.
    jobs : int, default 1
        Processes to fit the outcomes in (at most one per outcome). The files are the same
        for any number: each outcome's models are fitted on their own, deterministically.

    Returns
    -------
    dict
        The fitted models keyed ``{outcome}.{population}`` and ``{outcome}.subgroup_{name}``.

    The models are those of ``fit`` and ``fit-subgroup``, byte for byte: one job for all
    of them saves the start-up of a process per model or per outcome (about 1.5 s each) and
    the reading of the table. Files are written only once every model has been fitted, so a
    failing model leaves no partial set.
    """
    known = outcome_names(config)
    outcomes = list(known if outcomes is None else outcomes)
    unknown = [o for o in outcomes if o not in known]
    if unknown:
        raise ConfigError("command line", [f"outcome '{o}' is not one of {known}"
                                           for o in unknown])
    shared = (read_analysis_table(analysis), config, str(analysis))
    fitted = map_shared(_fit_outcome_task, shared, outcomes, jobs,
                        progress="model fits (one task per outcome, all its models)")
    results = {stem: result for models in fitted for stem, result in models.items()}
    for outcome in outcomes:
        for stem, (out_json, out_csv) in estimate_files(out_dir, outcome, config).items():
            write_json(results[stem].to_json_dict(), out_json)
            write_csv(results[stem].to_frame(), out_csv)
    return results


def run_fit_subgroup(config: dict[str, Any], analysis: str | Path, outcome: str, subgroup: str,
                     out_json: str | Path, out_csv: str | Path
                     ) -> SubgroupModelResult | NotReportedSubgroup:
    """CLI ``fit-subgroup``: fit the subgroup model and write its JSON and CSV files."""
    result = reported_subgroup_model(read_analysis_table(analysis), config, outcome, subgroup,
                                     source=str(analysis))
    write_json(result.to_json_dict(), out_json)
    write_csv(result.to_frame(), out_csv)
    return result
