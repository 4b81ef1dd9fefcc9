"""Agreement of the outcome models (models.outcome_models) with R: lme4, lmerTest, emmeans.

The reference files in tests/golden/reference/ are written by tests/golden/make_golden_models.R
from the datasets in tests/golden/data/ (see tests/golden/README.md to regenerate). The cases
below must match the R script's ``cases`` list.

Tolerances (relative unless noted): fixed effects, SEs, marginal means and subgroup contrasts
1e-4; variance components 1e-3 (absolute 1e-3 x total variance for components that are ~0 in
singular fits); Satterthwaite df 1e-3; p-values 1e-3 relative or 1e-8 absolute.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.config import load_config
from trial_analysis.models.outcome_models import fit_outcome_model, fit_subgroup_model

pytestmark = pytest.mark.golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"

RANDOM = {
    "default": (["therapist", "patient"], ["therapist"]),
    "patient": (["patient"], []),
    "clinic": (["clinic", "therapist", "patient"], ["therapist"]),
}
# name: (dataset, outcome, population, random structure, subgroup)
CASES = {
    "cohort_function_cc": ("cohort", "function", "complete_case", "default", None),
    "cohort_function_aa": ("cohort", "function", "all_available", "default", None),
    "cohort_pain_cc_patient": ("cohort", "pain", "complete_case", "patient", None),
    "cohort_function_cc_clinic": ("cohort", "function", "complete_case", "clinic", None),
    "unbalanced_function_aa": ("unbalanced", "function", "all_available", "default", None),
    "singletons_function_cc": ("singletons", "function", "complete_case", "default", None),
    "singular_function_cc": ("singular", "function", "complete_case", "default", None),
    "cohort_function_cc_flags": ("cohort", "function", "complete_case", "default", None),
    "cohort_function_depression": ("cohort", "function", "complete_case", "default",
                                   "depression"),
    "small_subgroup_function_depression": ("small_subgroup", "function", "complete_case",
                                           "default", "depression"),
}
MODEL_CASES = [name for name, case in CASES.items() if case[4] is None]
COVARIATES = ["age", "sex", "symptom_duration_weeks"]
# Cases whose covariates differ from COVARIATES (as the R script's case$covariates).
CASE_COVARIATES = {
    "cohort_function_cc_flags": [*COVARIATES, "depression", "anxiety"],
}
SUBGROUP_CASES = [name for name, case in CASES.items() if case[4] is not None]

RTOL_FIXED = 1e-4
RTOL_VARIANCE = 1e-3
RTOL_DF = 1e-3


@pytest.fixture(scope="module")
def base_config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


FIT_PATHS = ["fast", "statsmodels"]  # both must reach lme4's optimum


def _setup(name: str, base_config: dict, fit_path: str) -> tuple[pd.DataFrame, dict, dict]:
    data, _, _, random, _ = CASES[name]
    config = copy.deepcopy(base_config)
    config["analysis"]["fit_path"] = fit_path
    config["analysis"]["covariates"] = list(CASE_COVARIATES.get(name, COVARIATES))
    config["analysis"]["random_effects"], config["analysis"]["random_time_effects"] = (
        list(part) for part in RANDOM[random])
    config["analysis"]["reml"] = True
    frame = pd.read_csv(GOLDEN / "data" / f"{data}.csv")
    reference = json.loads((GOLDEN / "reference" / f"{name}.json").read_text())
    return frame, config, reference


def _close(mine, theirs, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(mine, float), np.asarray(theirs, float), rtol=rtol,
                               atol=atol, err_msg=what)


def _check_p(mine, theirs, what):
    np.testing.assert_allclose(np.asarray(mine, float), np.asarray(theirs, float), rtol=1e-3,
                               atol=1e-8, err_msg=what)


def _check_fixed_and_variance(result, reference):
    ref = pd.DataFrame(reference["fixed_effects"]).set_index("term")
    mine = result.fixed_effects.set_index("term")
    assert sorted(mine.index) == sorted(ref.index)
    mine = mine.loc[ref.index]
    _close(mine["estimate"], ref["estimate"], RTOL_FIXED, what="fixed effects")
    _close(mine["std_error"], ref["std_error"], RTOL_FIXED, what="standard errors")
    _close(mine["df"], ref["df"], RTOL_DF, what="Satterthwaite df")
    _check_p(mine["p_value"], ref["p_value"], "p-values")
    ref_vc = reference["variance_components"]
    assert set(result.variance_components) == set(ref_vc)
    total = sum(ref_vc.values())
    for name, value in ref_vc.items():
        small = value < 1e-6 * total
        _close(result.variance_components[name], value, 0 if small else RTOL_VARIANCE,
               atol=1e-3 * total if small else 0.0, what=f"variance {name}")
    assert result.n_observations == reference["n_observations"]
    assert result.n_patients == reference["n_patients"]
    assert result.singular == reference["singular"]


@pytest.mark.parametrize("fit_path", FIT_PATHS)
@pytest.mark.parametrize("name", MODEL_CASES)
def test_outcome_model_matches_lme4(name, fit_path, base_config):
    frame, config, reference = _setup(name, base_config, fit_path)
    _, outcome, population, _, _ = CASES[name]
    result = fit_outcome_model(frame, config, outcome, population)
    assert result.fit_path == {"fast": "fast_nested", "statsmodels": "statsmodels"}[fit_path]
    assert result.converged
    _check_fixed_and_variance(result, reference)
    _check_marginal_means(result.marginal_means, reference["marginal_means"], config)


def _check_marginal_means(mine: pd.DataFrame, reference: list, config: dict) -> None:
    # emmeans: rows ordered arm-fastest within time in R; match on (arm, time).
    ref_mm = pd.DataFrame(reference)
    labels = {0: config["allocation"]["control"], 1: config["allocation"]["intervention"]}
    times = {0: config["timepoints"]["baseline"], 1: config["timepoints"]["followup"]}
    ref_mm["arm"] = ref_mm["arm"].map(labels)
    ref_mm["time"] = ref_mm["time"].map(times)
    merged = mine.merge(ref_mm, on=["arm", "time"], suffixes=("", "_r"))
    assert len(merged) == 4
    for column in ("estimate", "std_error", "ci_low", "ci_high"):
        _close(merged[column], merged[f"{column}_r"], RTOL_FIXED, what=f"emmeans {column}")


@pytest.mark.parametrize("grid", ["emmeans", "covariate_means"])
def test_binary_covariates_in_the_reference_grid_match_emmeans(grid, base_config):
    """0/1 covariates: emmeans' default grid (levels, equal weights) and cov.keep = none."""
    name = "cohort_function_cc_flags"
    frame, config, reference = _setup(name, base_config, "fast")
    config["analysis"]["reference_grid"] = grid
    result = fit_outcome_model(frame, config, "function", "complete_case")
    key = "marginal_means" if grid == "emmeans" else "marginal_means_covariate_means"
    _check_marginal_means(result.marginal_means, reference[key], config)
    # The two grids differ (the flags' prevalence is not one half), so the test can tell them
    # apart; the arm x time effect does not depend on the grid.
    other = pd.DataFrame(reference["marginal_means_covariate_means" if grid == "emmeans"
                                   else "marginal_means"])
    assert not np.allclose(np.sort(result.marginal_means["estimate"].to_numpy()),
                           np.sort(other["estimate"].to_numpy()), rtol=1e-4)


@pytest.mark.parametrize("fit_path", FIT_PATHS)
@pytest.mark.parametrize("name", SUBGROUP_CASES)
def test_subgroup_model_matches_lmertest(name, fit_path, base_config):
    frame, config, reference = _setup(name, base_config, fit_path)
    _, outcome, population, _, subgroup = CASES[name]
    result = fit_subgroup_model(frame, config, outcome, subgroup, population=population,
                                stratified=False)
    _check_fixed_and_variance(result.interaction, reference)
    ref = pd.DataFrame(reference["subgroup_effects"]).astype({"level": str}).set_index("level")
    mine = result.subgroup_effects.set_index("level").loc[ref.index]
    _close(mine["estimate"], ref["estimate"], RTOL_FIXED, what="subgroup contrasts")
    _close(mine["std_error"], ref["std_error"], RTOL_FIXED, what="subgroup contrast SEs")
    _close(mine["df"], ref["df"], RTOL_DF, what="subgroup contrast df")
    _check_p(mine["p_value"], ref["p_value"], "subgroup contrast p")
    het, ref_het = result.heterogeneity, reference["heterogeneity"]
    _close(het["F"], ref_het["F"], RTOL_FIXED, what="heterogeneity F")
    assert het["num_df"] == ref_het["num_df"]
    _close(het["den_df"], ref_het["den_df"], RTOL_DF, what="heterogeneity df")
    _check_p(het["p_value"], ref_het["p_value"], "heterogeneity p")


# ---------------------------------------------------------------------------------------------
# Bring-your-own-study structures: several follow-ups, continuous time, the baseline as a
# covariate (ANCOVA), clustering by a patient-level column (site), no random effects (lm).
MONTHS = {"m0": 0.0, "m1": 1.0, "m3": 3.0, "m6": 6.0, "m12": 12.0}
FOUR = ["m1", "m3", "m6", "m12"]
# name: (dataset, population, timepoints, analysis settings, subgroup)
MULTI_CASES = {
    "multitime_categorical_patient": (
        "multitime", "all_available", {"baseline": "m0", "followups": FOUR, "values": MONTHS},
        {"time": "categorical", "baseline": "timepoint", "random_effects": ["patient"]}, None),
    "multitime_continuous_patient": (
        "multitime", "all_available", {"baseline": "m0", "followups": FOUR, "values": MONTHS},
        {"time": "continuous", "baseline": "timepoint", "random_effects": ["patient"]}, None),
    "multitime_ancova_site": (
        "multitime", "all_available",
        {"baseline": "m0", "followups": ["m1", "m3", "m6"],
         "values": {k: MONTHS[k] for k in ("m0", "m1", "m3", "m6")}},
        {"time": "categorical", "baseline": "covariate", "random_effects": ["site", "patient"]},
        None),
    "cohort_function_cc_lm": (
        "cohort", "complete_case", {"baseline": "intake", "followup": "discharge"},
        {"time": "categorical", "baseline": "covariate", "random_effects": []}, None),
    "multitime_constant_patient": (
        "multitime", "all_available", {"baseline": "m0", "followups": FOUR, "values": MONTHS},
        {"time": "categorical", "baseline": "timepoint", "effect": "constant",
         "random_effects": ["patient"]}, None),
    "multitime_constant_ancova_site": (
        "multitime", "all_available",
        {"baseline": "m0", "followups": ["m1", "m3", "m6"],
         "values": {k: MONTHS[k] for k in ("m0", "m1", "m3", "m6")}},
        {"time": "categorical", "baseline": "covariate", "effect": "constant",
         "random_effects": ["site", "patient"]}, None),
    "multitime_site_time_depression": (
        "multitime", "all_available", {"baseline": "m0", "followups": FOUR, "values": MONTHS},
        {"time": "categorical", "baseline": "timepoint", "random_effects": ["site", "patient"],
         "random_time_effects": ["site"]}, "depression"),
}
MULTI_MODEL_CASES = [name for name, case in MULTI_CASES.items() if case[4] is None]
RTOL_CRITERION = 1e-8


def _setup_multi(name: str, base_config: dict, fit_path: str):
    data, population, timepoints, analysis, subgroup = MULTI_CASES[name]
    config = copy.deepcopy(base_config)
    config["timepoints"] = copy.deepcopy(timepoints)
    config["analysis"]["random_time_effects"] = []
    config["analysis"].update(copy.deepcopy(analysis))
    config["analysis"].update(fit_path=fit_path, reml=True,
                              covariates=["age", "sex", "symptom_duration_weeks"],
                              subgroups=[subgroup] if subgroup else [])
    frame = pd.read_csv(GOLDEN / "data" / f"{data}.csv")
    reference = json.loads((GOLDEN / "reference" / f"{name}.json").read_text())
    return frame, config, population, reference


def _check_rows(mine: pd.DataFrame, ref: pd.DataFrame, key: str, what: str) -> None:
    ref = ref.astype({key: str}).set_index(key)
    mine = mine.astype({key: str}).set_index(key)
    assert sorted(mine.index) == sorted(ref.index), what
    mine = mine.loc[ref.index]
    _close(mine["estimate"], ref["estimate"], RTOL_FIXED, what=f"{what} estimates")
    _close(mine["std_error"], ref["std_error"], RTOL_FIXED, what=f"{what} SEs")
    _close(mine["df"], ref["df"], RTOL_DF, what=f"{what} df")
    _check_p(mine["p_value"], ref["p_value"], f"{what} p")


@pytest.mark.parametrize("fit_path", FIT_PATHS)
@pytest.mark.parametrize("name", MULTI_MODEL_CASES)
def test_study_structures_match_r(name, fit_path, base_config):
    frame, config, population, reference = _setup_multi(name, base_config, fit_path)
    result = fit_outcome_model(frame, config, "function", population)
    assert result.converged
    _check_fixed_and_variance(result, reference)
    _close(result.reml_criterion, reference["reml_criterion"], RTOL_CRITERION,
           what="REML criterion")
    # The estimand rows: primary, per follow-up and overall (R: lmerTest::contest / lm).
    _check_rows(result.effects, pd.DataFrame(reference["effects"]), "term", "effects")
    assert result.effect["estimate"] == pytest.approx(reference["effects"][0]["estimate"],
                                                      rel=RTOL_FIXED)
    ref_mm = pd.DataFrame(reference["marginal_means"])
    labels = {0: config["allocation"]["control"], 1: config["allocation"]["intervention"]}
    ref_mm["arm"] = ref_mm["arm"].map(labels)
    merged = result.marginal_means.merge(ref_mm, on=["arm", "time"], suffixes=("", "_r"))
    assert len(merged) == len(ref_mm) == len(result.marginal_means)
    for column in ("estimate", "std_error", "ci_low", "ci_high"):
        _close(merged[column], merged[f"{column}_r"], RTOL_FIXED, what=f"emmeans {column}")
    if not config["analysis"]["random_effects"]:
        assert result.fit_path == "ols" and result.model_name == "lm"


# statsmodels' MixedLM on 5 time points x site x time takes ~20 s: slow-marked, the fast path
# runs by default and the statsmodels path is covered by the other structure cases.
@pytest.mark.parametrize("fit_path", ["fast", pytest.param("statsmodels",
                                                           marks=pytest.mark.slow)])
def test_subgroup_with_several_follow_ups_matches_r(fit_path, base_config):
    name = "multitime_site_time_depression"
    frame, config, population, reference = _setup_multi(name, base_config, fit_path)
    result = fit_subgroup_model(frame, config, "function", "depression", population=population,
                                stratified=False)
    _check_fixed_and_variance(result.interaction, reference)
    _check_rows(result.subgroup_effects, pd.DataFrame(reference["subgroup_effects"]), "level",
                "subgroup contrasts")
    het, ref_het = result.heterogeneity, reference["heterogeneity"]
    _close(het["F"], ref_het["F"], RTOL_FIXED, what="heterogeneity F")
    assert het["num_df"] == ref_het["num_df"]
    _close(het["den_df"], ref_het["den_df"], RTOL_DF, what="heterogeneity df")
    _check_p(het["p_value"], ref_het["p_value"], "heterogeneity p")
