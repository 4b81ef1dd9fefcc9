"""Doubly robust effects (stacked-equation sandwich) and bracketing: against R, known truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sensitivity_simulation import simulate_baseline_selection, simulate_cohort, study_config

from trial_analysis.causal.common import ancova_design, ancova_frame
from trial_analysis.causal.doubly_robust import (
    bracketing_rows,
    doubly_robust_effect,
    run_doubly_robust,
)
from trial_analysis.causal.propensity import fit_propensity
from trial_analysis.causal.sensitivity import run_sensitivity
from trial_analysis.errors import ConfigError
from trial_analysis.io import read_json

GOLDEN = Path(__file__).parents[1] / "golden"
COVARIATES = ["age", "sex", "symptom_duration_weeks"]
# The golden case's propensity model is glm's: no ridge penalty.
GOLDEN_CONFIG = {
    "outcomes": [{"name": "function"}, {"name": "pain"}],
    "analysis": {"covariates": COVARIATES},
    "sensitivity": {"outcomes": ["function"], "propensity": {"ridge": 0.0}},
}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((GOLDEN / "reference" / "doubly_robust.json").read_text())


@pytest.fixture(scope="module")
def golden_fit():
    data = pd.read_csv(GOLDEN / "data" / "cohort.csv")
    analysed, _ = ancova_frame(data, "function", COVARIATES, "cohort.csv")
    propensity = fit_propensity(analysed, GOLDEN_CONFIG, therapist_frame=data)
    return analysed, propensity, ancova_design(analysed, "function", COVARIATES)


@pytest.mark.parametrize("estimand", ["ato", "ate"])
def test_doubly_robust_matches_r_stacked_sandwich(golden: dict, golden_fit,
                                                  estimand: str) -> None:
    # R: glm + lm by hand, bread by finite differences of the stacked estimating equations
    _, propensity, design = golden_fit
    fit = doubly_robust_effect(design, propensity, estimand, "function")
    reference = golden[estimand]
    assert fit.estimate == pytest.approx(reference["estimate"], rel=1e-7)
    assert fit.std_error == pytest.approx(reference["std_error"], rel=1e-6)
    assert fit.n_parameters == reference["n_parameters"]
    assert fit.n_patients == reference["n_patients"]
    assert fit.n_clusters == reference["n_clusters"]
    assert abs(fit.influence.sum()) < 1e-8 * fit.std_error * fit.n_patients


def test_bracketing_rows_match_r_lm_with_vcovcl(golden: dict, golden_fit) -> None:
    analysed, _, _ = golden_fit
    rows, summary = bracketing_rows(analysed, "function", COVARIATES, 0.95)
    by_method = {r["method"]: r for r in rows if r["method"] != "bracket"}
    for method, key in (("change_score", "change_score"), ("ancova", "ancova")):
        assert by_method[method]["estimate"] == pytest.approx(golden[key]["estimate"], rel=1e-9)
        assert by_method[method]["std_error"] == pytest.approx(golden[key]["std_error"],
                                                               rel=1e-8)
    assert summary["baseline_coefficient"] == pytest.approx(
        golden["ancova"]["baseline_coefficient"], rel=1e-9)
    bounds = {r["term"]: r["estimate"] for r in rows if r["method"] == "bracket"}
    assert bounds["bracket_lower"] == pytest.approx(
        min(golden["change_score"]["estimate"], golden["ancova"]["estimate"]))
    assert bounds["bracket_upper"] == pytest.approx(
        max(golden["change_score"]["estimate"], golden["ancova"]["estimate"]))
    # Frisch-Waugh: the gap is (1 - b) times the adjusted baseline difference, whose
    # regression we fit here independently
    baseline = analysed[["function_baseline"]].to_numpy()[:, 0]
    design = ancova_design(analysed.assign(function_followup=baseline), "function",
                           COVARIATES, form="change")
    difference = np.linalg.lstsq(design.X, baseline, rcond=None)[0][1]
    assert summary["adjusted_baseline_difference"] == pytest.approx(difference, rel=1e-8)


def test_ridge_penalty_moves_the_estimate_negligibly(golden: dict) -> None:
    data = pd.read_csv(GOLDEN / "data" / "cohort.csv")
    analysed, _ = ancova_frame(data, "function", COVARIATES, "cohort.csv")
    config = {**GOLDEN_CONFIG, "sensitivity": {"outcomes": ["function"]}}
    propensity = fit_propensity(analysed, config, therapist_frame=data)
    fit = doubly_robust_effect(ancova_design(analysed, "function", COVARIATES), propensity,
                               "ato")
    assert fit.estimate == pytest.approx(golden["ato"]["estimate"], rel=1e-3)
    assert fit.std_error == pytest.approx(golden["ato"]["std_error"], rel=1e-3)


def test_without_clinic_effects_the_dense_path_agrees_with_dummies() -> None:
    # The sparse clinic columns (Schur complement) and dense dummies give the same sandwich.
    frame, _ = simulate_cohort(n_patients=800, seed=3)
    analysed = frame.loc[ancova_frame(frame, "function", COVARIATES, "x")[0].index]
    design = ancova_design(analysed, "function", COVARIATES)
    sparse_config = study_config(propensity={"ridge": 0.0})
    dense = analysed.assign(**{f"clinic_is_{c}": (analysed["clinic_id"] == c).astype(float)
                               for c in sorted(analysed["clinic_id"].unique())[1:]})
    dense_config = study_config(propensity={
        "ridge": 0.0, "clinic_fixed_effects": False,
        "covariates": ["age", "sex", "symptom_duration_weeks", "depression", "anxiety", "bmi",
                       "ses_score", *[c for c in dense.columns if c.startswith("clinic_is_")]]})
    for estimand in ("ato", "ate"):
        with_sparse = doubly_robust_effect(design, fit_propensity(analysed, sparse_config),
                                           estimand)
        with_dense = doubly_robust_effect(design, fit_propensity(dense, dense_config), estimand)
        assert with_sparse.estimate == pytest.approx(with_dense.estimate, rel=1e-8)
        assert with_sparse.std_error == pytest.approx(with_dense.std_error, rel=1e-7)


def test_doubly_robust_recovers_truth_when_only_the_propensity_model_is_right() -> None:
    # Depression confounds and is in the propensity model but not in the outcome model, so
    # the unweighted ANCOVA is biased and the doubly robust estimates are not.
    # One dataset (little therapist variation, so the bias shows beyond the noise); bias and
    # coverage over replicates are in test_selection_mechanisms_break_the_right_estimators.
    frame, truth = simulate_cohort(n_patients=6000, seed=5, confounding=2.5, therapist_sd=0.2)
    result = run_doubly_robust(frame, study_config(outcomes=["function"]))
    rows = result.to_frame().set_index(["method", "term"])
    effect = truth["effects"]["function"]
    ancova = rows.loc[("ancova", "arm_intervention")]
    assert ancova["ci_low"] > effect
    for method in ("augmented_overlap", "aipw"):
        row = rows.loc[(method, "arm_intervention")]
        assert abs(row["estimate"] - effect) < 2.5 * row["std_error"]
        assert row["n_clusters"] == 60
        assert "estimand" in row["notes"]


def test_unknown_estimand_is_a_config_error(golden_fit) -> None:
    _, propensity, design = golden_fit
    with pytest.raises(ConfigError):
        doubly_robust_effect(design, propensity, "att")


def test_sensitivity_step_writes_doubly_robust_rows(tmp_path: Path) -> None:
    frame, _ = simulate_cohort(n_patients=600, seed=2)
    table = tmp_path / "analysis.parquet"
    frame.to_parquet(table)
    config = study_config(outcomes=["function"])
    run_sensitivity(config, table, "doubly_robust", tmp_path / "dr.json", tmp_path / "dr.csv")
    document = read_json(tmp_path / "dr.json")
    methods = {r["method"] for r in document["estimates"]}
    assert methods == {"augmented_overlap", "aipw", "change_score", "ancova", "bracket"}
    assert document["tables"]["bracketing"][0]["outcome"] == "function"
    written = pd.read_csv(tmp_path / "dr.csv")
    assert len(written) == len(document["estimates"])
    run_sensitivity(config, table, "doubly_robust", tmp_path / "again.json",
                    tmp_path / "again.csv")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "dr.json").read_bytes()
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "dr.csv").read_bytes()


SELECTION_EFFECT = 4.0
SELECTION_METHODS = ("augmented_overlap", "aipw", "ancova", "change_score")


def selection_study(mechanism: str, replicates: int, first_seed: int = 1000) -> pd.DataFrame:
    """Bias, empirical and model SE and 95% coverage, each with its Monte Carlo SE, of the
    doubly robust, ANCOVA and change-score estimates under one selection mechanism of
    :func:`simulate_baseline_selection` (true effect 4 in both arms' populations)."""
    config = study_config(outcomes=["function"])
    rows = []
    for seed in range(first_seed, first_seed + replicates):
        frame = simulate_baseline_selection(mechanism=mechanism, seed=seed,
                                            effect=SELECTION_EFFECT)
        result = run_doubly_robust(frame, config).to_frame()
        rows.append(result[result["method"].isin(SELECTION_METHODS)])
    fits = pd.concat(rows, ignore_index=True)
    summary = []
    for method, group in fits.groupby("method", sort=False):
        error = group["estimate"] - SELECTION_EFFECT
        covered = ((group["ci_low"] <= SELECTION_EFFECT)
                   & (group["ci_high"] >= SELECTION_EFFECT)).to_numpy(dtype=float)
        n = len(group)
        summary.append({
            "mechanism": mechanism, "method": method, "replicates": n,
            "bias": error.mean(), "bias_mcse": error.std(ddof=1) / np.sqrt(n),
            "empirical_se": error.std(ddof=1), "model_se": group["std_error"].mean(),
            "coverage": covered.mean(),
            "coverage_mcse": np.sqrt(covered.mean() * (1 - covered.mean()) / n),
        })
    return pd.DataFrame(summary).set_index("method")


@pytest.mark.slow
def test_selection_mechanisms_break_the_right_estimators() -> None:
    # Selection on the observed baseline: ANCOVA and the doubly robust estimators hold, the
    # change score is biased. Selection on the stable level: the reverse.
    observed = selection_study("observed_baseline", 200)
    for method in ("augmented_overlap", "aipw", "ancova"):
        row = observed.loc[method]
        assert abs(row["bias"]) < 0.1 * SELECTION_EFFECT
        assert abs(row["bias"]) < 3 * row["bias_mcse"]
        assert abs(row["coverage"] - 0.95) < 3 * max(row["coverage_mcse"], 0.0154)
    assert observed.loc["change_score", "bias"] < -1.5
    assert observed.loc["change_score", "coverage"] < 0.7
    stable = selection_study("stable_level", 200)
    assert abs(stable.loc["change_score", "bias"]) < 3 * stable.loc["change_score", "bias_mcse"]
    for method in ("augmented_overlap", "aipw", "ancova"):
        assert stable.loc[method, "bias"] > 1.0
