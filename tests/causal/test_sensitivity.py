"""Shared outcome model, therapist fixed effects and the CLI entry of the sensitivity step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sensitivity_simulation import simulate_cohort, study_config

from trial_analysis.causal.common import TIDY_COLUMNS, fit_ancova, form_method, model_forms
from trial_analysis.causal.sensitivity import run_sensitivity
from trial_analysis.causal.therapist_effects import both_arm_sample, fit_therapist_fixed_effects
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import read_json, write_json

COVARIATES = ["age", "sex", "symptom_duration_weeks"]


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate_cohort(n_patients=1200, seed=11)[0]


def _statsmodels_design(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    data = frame.dropna(subset=["function_followup", "function_baseline"])
    X = pd.DataFrame({"const": 1.0, "arm": data["arm_intervention"].astype(float),
                      "baseline": data["function_baseline"], "age": data["age"],
                      "sexM": (data["sex"] == "M").astype(float),
                      "duration": data["symptom_duration_weeks"]})
    return data, X.to_numpy()


def test_weighted_ancova_matches_statsmodels_cluster_robust(cohort: pd.DataFrame) -> None:
    weights = np.random.default_rng(1).uniform(0.2, 2.0, len(cohort))
    fit = fit_ancova(cohort, "function", COVARIATES, weights=weights)
    data, X = _statsmodels_design(cohort)
    w = pd.Series(weights, index=cohort.index).loc[data.index]
    groups = pd.factorize(data["therapist_id"])[0]
    reference = sm.WLS(data["function_followup"].to_numpy(), X, weights=w.to_numpy()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    estimate, std_error = fit.coefficient("arm_intervention")
    assert estimate == pytest.approx(reference.params[1], rel=1e-10)
    assert std_error == pytest.approx(reference.bse[1], rel=1e-8)
    assert fit.n_clusters == len(np.unique(groups))
    assert fit.df == fit.n_clusters - 1


def test_therapist_fixed_effects_equal_dummy_regression(cohort: pd.DataFrame) -> None:
    sample, _ = both_arm_sample(cohort.dropna(subset=["function_followup",
                                                      "function_baseline"]))
    fit = fit_ancova(sample, "function", COVARIATES, therapist_fixed_effects=True)
    data, X = _statsmodels_design(sample)
    dummies = pd.get_dummies(data["therapist_id"], drop_first=True, dtype=float).to_numpy()
    full = np.column_stack([X, dummies])
    groups = pd.factorize(data["therapist_id"])[0]
    reference = sm.OLS(data["function_followup"].to_numpy(), full).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    estimate, std_error = fit.coefficient("arm_intervention")
    assert estimate == pytest.approx(reference.params[1], rel=1e-9)
    # Same sandwich; only the CR1 factor differs: statsmodels counts the absorbed dummies in k.
    n, k_full, k_slopes = len(data), full.shape[1], 5
    factor = np.sqrt((n - k_full) / (n - k_slopes))
    assert std_error == pytest.approx(reference.bse[1] * factor, rel=1e-8)


def test_therapist_fixed_effects_remove_therapist_level_confounding() -> None:
    # Adopting therapists achieve 5 points more improvement whatever the arm, and only they
    # deliver ETMI; among adopters, the better therapists give ETMI to more patients. The
    # usual ANCOVA credits ETMI with both, even restricted to therapists with patients in
    # both arms; comparing within therapists does not.
    frame, truth = simulate_cohort(n_patients=3000, seed=0, confounding=0.0,
                                   therapist_confounding=5.0, therapist_selection=1.5,
                                   therapist_sd=4.0)
    config = study_config(outcomes=["function"])
    result = fit_therapist_fixed_effects(frame, config)
    rows = result.to_frame().set_index("method")
    naive, fixed = rows.loc["ancova_all_therapists"], rows.loc["therapist_fixed_effects"]
    assert naive["ci_low"] > 4.0
    assert rows.loc["ancova_same_sample", "ci_low"] > 4.0
    assert abs(fixed["estimate"] - 4.0) < 2.5 * fixed["std_error"]
    assert fixed["ci_low"] < 4.0 < fixed["ci_high"]
    counts = result.tables["samples"].iloc[0]
    analysed = frame.dropna(subset=["function_followup", "function_baseline"])
    per_arm = analysed.groupby("therapist_id")["arm_intervention"].agg(["sum", "count"])
    both = per_arm[(per_arm["sum"] > 0) & (per_arm["sum"] < per_arm["count"])]
    assert counts["therapists_both_arms"] == len(both) == fixed["n_clusters"]
    assert counts["patients_both_arms"] == both["count"].sum() == fixed["n_patients"]


def test_minimum_patients_per_arm_narrows_the_sample(cohort: pd.DataFrame) -> None:
    loose = fit_therapist_fixed_effects(cohort, study_config(outcomes=["function"]))
    strict = fit_therapist_fixed_effects(
        cohort, study_config(outcomes=["function"],
                             therapist_fixed_effects={"min_patients_per_arm": 6}))
    n_loose = loose.tables["samples"]["therapists_both_arms"].item()
    n_strict = strict.tables["samples"]["therapists_both_arms"].item()
    analysed = cohort.dropna(subset=["function_followup", "function_baseline"])
    treated = analysed.groupby("therapist_id")["arm_intervention"].agg(["sum", "count"])
    expected = ((treated["sum"] >= 6) & (treated["count"] - treated["sum"] >= 6)).sum()
    assert n_strict == expected < n_loose


def test_run_sensitivity_writes_identical_files_on_rerun(cohort: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    table = tmp_path / "analysis.parquet"
    cohort.to_parquet(table, index=False)
    config = study_config(outcomes=["function"])
    outputs = []
    for run in ("a", "b"):
        out_json, out_csv = tmp_path / run / "s.json", tmp_path / run / "s.csv"
        run_sensitivity(config, table, "therapist_fixed_effects", out_json, out_csv)
        outputs.append((out_json.read_bytes(), out_csv.read_bytes()))
    assert outputs[0] == outputs[1]
    written = pd.read_csv(tmp_path / "a" / "s.csv")
    assert list(written.columns) == TIDY_COLUMNS
    document = read_json(tmp_path / "a" / "s.json")
    assert document["analysis"] == "therapist_fixed_effects"
    assert document["tables"]["samples"][0]["outcome"] == "function"


def test_run_sensitivity_dispatches_every_analysis(cohort: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    table = tmp_path / "analysis.parquet"
    cohort.to_parquet(table, index=False)
    estimates = tmp_path / "estimates"
    write_json({"estimates": [{"term": "arm:time", "estimate": 4.0, "std_error": 1.0,
                               "ci_low": 2.0, "ci_high": 6.0, "p_value": 0.001,
                               "n_patients": 500}]},
               estimates / "function.complete_case.json")
    config = study_config(outcomes=["function"], multiple_imputation={"m": 2,
                                                                      "iterations": 2},
                          tipping_point={"delta_steps": 4})
    for name in ("propensity", "doubly_robust", "evalue", "multiple_imputation",
                 "tipping_point"):
        result = run_sensitivity(config, table, name, tmp_path / f"{name}.json",
                                 tmp_path / f"{name}.csv", estimates_dir=estimates)
        assert (tmp_path / f"{name}.csv").is_file()
        assert not result.to_frame().empty
        assert result.summary().startswith("Sensitivity analysis")
    comparison = read_json(tmp_path / "multiple_imputation.json")["tables"]
    assert "missing_data_comparison" in comparison


def test_bad_input_is_reported_without_output(cohort: pd.DataFrame, tmp_path: Path) -> None:
    bad = cohort.copy()
    bad.loc[bad.index[3], "arm_intervention"] = 2
    table = tmp_path / "analysis.parquet"
    bad.to_parquet(table, index=False)
    out_json, out_csv = tmp_path / "s.json", tmp_path / "s.csv"
    with pytest.raises(DataError, match="arm_intervention must be 1") as error:
        run_sensitivity(study_config(), table, "therapist_fixed_effects", out_json, out_csv)
    assert error.value.rows == [4]
    assert not out_json.exists() and not out_csv.exists()
    with pytest.raises(DataError, match="does not exist"):
        run_sensitivity(study_config(), tmp_path / "none.parquet", "propensity", out_json,
                        out_csv)
    with pytest.raises(ConfigError, match="not one of"):
        run_sensitivity(study_config(), table, "bootstrap", out_json, out_csv)
    cohort.to_parquet(table, index=False)
    with pytest.raises(ConfigError, match="estimates-dir"):
        run_sensitivity(study_config(), table, "evalue", out_json, out_csv)


def test_missing_column_is_a_data_error(cohort: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="required column missing") as error:
        fit_therapist_fixed_effects(cohort.drop(columns=["pain_followup"]), study_config())
    assert error.value.column == "pain_followup"


def test_unknown_sensitivity_outcome_is_a_config_error(cohort: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="not outcomes"):
        fit_therapist_fixed_effects(cohort, study_config(outcomes=["mobility"]))


def test_change_form_is_the_weighted_regression_of_the_change_score(
        cohort: pd.DataFrame) -> None:
    weights = np.random.default_rng(2).uniform(0.2, 2.0, len(cohort))
    fit = fit_ancova(cohort, "function", COVARIATES, weights=weights, form="change")
    data, X = _statsmodels_design(cohort)
    X = np.delete(X, 2, axis=1)  # no baseline column: its coefficient is fixed at 1
    w = pd.Series(weights, index=cohort.index).loc[data.index]
    groups = pd.factorize(data["therapist_id"])[0]
    change = (data["function_followup"] - data["function_baseline"]).to_numpy()
    reference = sm.WLS(change, X, weights=w.to_numpy()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    estimate, std_error = fit.coefficient("arm_intervention")
    assert "function_baseline" not in fit.names
    assert estimate == pytest.approx(reference.params[1], rel=1e-10)
    assert std_error == pytest.approx(reference.bse[1], rel=1e-8)


def test_model_forms_name_the_rows_and_default_to_both(cohort: pd.DataFrame) -> None:
    assert model_forms({}) == ["ancova", "change"]
    assert model_forms({"sensitivity": {"model_forms": ["change"]}}) == ["change"]
    with pytest.raises(ConfigError):
        model_forms({"sensitivity": {"model_forms": ["gain"]}})
    assert form_method("overlap_weighted_ancova", "change") == "overlap_weighted_change"
    assert form_method("ancova_same_sample", "change") == "change_same_sample"
    assert form_method("therapist_fixed_effects", "change") == "therapist_fixed_effects_change"
    assert form_method("therapist_fixed_effects", "ancova") == "therapist_fixed_effects"
    both = fit_therapist_fixed_effects(cohort, study_config(outcomes=["function"])).to_frame()
    only = fit_therapist_fixed_effects(
        cohort, study_config(outcomes=["function"], model_forms=["ancova"])).to_frame()
    function = both[both["outcome"] == "function"].set_index("method")
    assert set(function.index) == {"ancova_all_therapists", "ancova_same_sample",
                                   "therapist_fixed_effects", "change_all_therapists",
                                   "change_same_sample", "therapist_fixed_effects_change"}
    assert not only["method"].str.contains("change").any()
    # the fixed-effects change form is the within-therapist regression of the change score
    sample, _ = both_arm_sample(cohort.dropna(subset=["function_followup",
                                                      "function_baseline"]))
    direct = fit_ancova(sample.assign(function_followup=sample["function_followup"]
                                      - sample["function_baseline"],
                                      function_baseline=0.0),
                        "function", COVARIATES, therapist_fixed_effects=True)
    assert function.loc["therapist_fixed_effects_change", "estimate"] == pytest.approx(
        direct.coefficient()[0], rel=1e-10)
