"""Propensity weighting: known-truth recovery, exact balance, weights, love plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sensitivity_simulation import simulate_cohort, study_config

from trial_analysis.causal.propensity import (
    LOVE_PLOT_MAX_ROWS,
    balance_table,
    clinic_indicators,
    effective_sample_size,
    fit_propensity,
    logistic_ridge,
    love_plot,
    overlap_bins,
    propensity_weights,
    run_propensity_analysis,
)
from trial_analysis.errors import ConfigError, DataError

TRUTH = 4.0


@pytest.fixture(scope="module")
def confounded() -> pd.DataFrame:
    frame, truth = simulate_cohort(n_patients=2000, seed=0, confounding=1.5)
    assert truth["effects"]["function"] == TRUTH
    return frame


def _rows(result) -> pd.DataFrame:
    return result.to_frame().set_index(["outcome", "method"])


def test_weighting_removes_simulated_confounding_bias(confounded: pd.DataFrame) -> None:
    # Younger, less often depressed patients get ETMI and improve more: the crude comparison
    # is biased upwards; the outcome model's covariates omit depression, so regression alone
    # leaves bias too. The overlap-weighted estimate must land on the truth.
    config = study_config(outcomes=["function"])
    rows = _rows(run_propensity_analysis(confounded, config))
    crude = rows.loc[("function", "unadjusted_ancova")]
    weighted = rows.loc[("function", "overlap_weighted_ancova")]
    assert crude["ci_low"] > TRUTH + 0.5
    assert abs(weighted["estimate"] - TRUTH) < 2.5 * weighted["std_error"]
    assert abs(weighted["estimate"] - TRUTH) < abs(crude["estimate"] - TRUTH) / 2
    # Whether one dataset's interval covers is chance (this seed's, without the therapist's
    # ETMI share in the model, just misses: 4.14 to 5.85); bias over replicates is checked in
    # test_weighted_estimate_is_unbiased_over_replicates.


def test_weighting_alone_without_outcome_covariates_recovers_truth(
    confounded: pd.DataFrame,
) -> None:
    config = study_config(outcomes=["function"])
    config["analysis"]["covariates"] = []
    rows = _rows(run_propensity_analysis(confounded, config))
    weighted = rows.loc[("function", "overlap_weighted_ancova")]
    assert abs(weighted["estimate"] - TRUTH) < 2.5 * weighted["std_error"]


def test_stabilised_trimmed_iptw_recovers_truth(confounded: pd.DataFrame) -> None:
    config = study_config(outcomes=["function"],
                          propensity={"weighting": "iptw", "iptw_trim_percentiles": [2, 98]})
    result = run_propensity_analysis(confounded, config)
    weighted = _rows(result).loc[("function", "iptw_weighted_ancova")]
    assert abs(weighted["estimate"] - TRUTH) < 2.5 * weighted["std_error"]
    weights = result.tables["weights"].set_index("arm")
    n_analysed = int(weights["n_patients"].sum())
    trimmed = int(weights["n_weight_zero"].sum())
    # 2% below the 2nd and 2% above the 98th percentile (ties aside).
    assert trimmed == pytest.approx(0.04 * n_analysed, abs=3)
    # Stabilised control weights average about 1. (The intervention arm's do not here: the
    # patients of non-adopting therapists have propensity ~0, positivity fails, and the
    # treated weights cannot stand in for them -- which is why overlap weights are default.)
    kept = weights["n_patients"] - weights["n_weight_zero"]
    assert weights.loc["control", "weight_sum"] / kept["control"] == pytest.approx(1, rel=0.1)


def test_overlap_weights_balance_every_model_covariate_exactly(
    confounded: pd.DataFrame,
) -> None:
    result = run_propensity_analysis(confounded, study_config(
        outcomes=["function"], propensity={"therapist_terms": ["etmi_share"]}))
    balance = result.tables["balance"]
    assert {"age", "depression", "function_baseline", "bmi_missing",
            "therapist_etmi_share"} <= set(balance["covariate"])
    assert balance.loc[balance["covariate"] == "age", "imbalanced_unweighted"].item()
    # Li, Morgan & Zaslavsky (2018): exact mean balance up to the weak ridge penalty.
    assert balance["smd_weighted"].abs().max() < 1e-3
    assert not balance["imbalanced_weighted"].any()


def test_balance_smd_hand_computed() -> None:
    covariates = pd.DataFrame({"x": [1.0, 2.0, 3.0, 5.0, np.nan, 7.0]})
    treated = pd.Series([1, 1, 1, 0, 0, 0])
    weights = pd.Series([1.0, 1.0, 2.0, 1.0, 1.0, 1.0])
    table = balance_table(covariates, treated, weights).set_index("covariate")
    # unweighted: means 2 and 6, variances (ddof 0) 2/3 and 1 -> SMD -4 / sqrt(5/6)
    assert table.loc["x", "smd_unweighted"] == pytest.approx(-4 / np.sqrt(5 / 6))
    # weighted treated mean (1 + 2 + 6) / 4 = 2.25, same pooled SD
    assert table.loc["x", "smd_weighted"] == pytest.approx(-3.75 / np.sqrt(5 / 6))
    assert "x_missing" in table.index


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.array([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)


def test_weight_formulas() -> None:
    score = pd.Series([0.2, 0.5, 0.8, 0.4])
    treated = pd.Series([1, 0, 1, 0])
    overlap = propensity_weights(score, treated, "overlap")
    assert overlap.tolist() == pytest.approx([0.8, 0.5, 0.2, 0.4])
    iptw = propensity_weights(score, treated, "iptw", (0, 100))
    assert iptw.tolist() == pytest.approx([0.5 / 0.2, 0.5 / 0.5, 0.5 / 0.8, 0.5 / 0.6])
    with pytest.raises(ConfigError, match="overlap or iptw"):
        propensity_weights(score, treated, "matching")


def test_logistic_fit_matches_statsmodels_without_penalty() -> None:
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(500), rng.normal(size=(500, 3))])
    t = (rng.random(500) < 1 / (1 + np.exp(-(X @ [0.2, 1.0, -0.5, 0.3])))).astype(float)
    beta, converged, _ = logistic_ridge(X, t, ridge=0.0)
    reference = sm.Logit(t, X).fit(disp=0).params
    assert converged
    assert beta == pytest.approx(reference, abs=1e-6)


def test_separation_keeps_the_fit_finite() -> None:
    frame, _ = simulate_cohort(n_patients=800, seed=5)
    # No one in clinic C00 gets ETMI: its dummy separates perfectly.
    frame.loc[frame["clinic_id"] == "C00", "arm_intervention"] = 0
    model = fit_propensity(frame, study_config())
    assert model.converged
    assert np.isfinite(model.score).all()
    assert model.score[frame["clinic_id"] == "C00"].max() < 0.01


def _dense_clinic_fit(frame: pd.DataFrame, config: dict) -> np.ndarray:
    """The propensity model with clinic dummies as dense standardised columns (reference)."""
    without = {**config, "sensitivity": {**config["sensitivity"],
                                         "propensity": {"clinic_fixed_effects": False}}}
    design = fit_propensity(frame, without).design
    clinics = pd.get_dummies(frame["clinic_id"], dtype=float).iloc[:, 1:]
    clinics.columns = [f"clinic_{c}" for c in clinics.columns]
    design = pd.concat([design, clinics], axis=1)
    standardised = (design - design.mean()) / design.std(ddof=0)
    X = np.column_stack([np.ones(len(design)), standardised.to_numpy()])
    beta, converged, _ = logistic_ridge(X, frame["arm_intervention"].to_numpy(float), 0.001)
    assert converged
    return beta


def test_sparse_clinic_effects_match_dense_dummies() -> None:
    # Many small clinics: the sparse Schur-complement Newton step must give the very
    # estimates of the dense standardised design.
    frame, _ = simulate_cohort(n_patients=1500, seed=11, n_clinics=40)
    config = study_config(propensity={"ridge": 0.001})
    model = fit_propensity(frame, config)
    assert model.clinics is not None
    assert len(model.clinics.names) == frame["clinic_id"].nunique() - 1 > 20
    assert "clinic_C01" not in model.design.columns
    reference = _dense_clinic_fit(frame, config)
    assert model.coefficients["estimate_per_sd"].to_numpy() == pytest.approx(reference,
                                                                             rel=1e-8, abs=1e-10)


def test_clinic_balance_rows_match_dense_dummies(confounded: pd.DataFrame) -> None:
    treated = confounded["arm_intervention"]
    weights = pd.Series(np.linspace(0.1, 1.0, len(confounded)), index=confounded.index)
    clinics = clinic_indicators(confounded)
    sparse = balance_table(pd.DataFrame(index=confounded.index), treated, weights,
                           clinics=clinics)
    dummies = pd.get_dummies(confounded["clinic_id"], dtype=float).iloc[:, 1:]
    dummies.columns = [f"clinic_{c}" for c in dummies.columns]
    dense = balance_table(dummies, treated, weights)
    assert sparse["covariate"].tolist() == dense["covariate"].tolist()
    numeric = ["mean_intervention", "mean_control", "smd_unweighted", "smd_weighted"]
    assert sparse[numeric].to_numpy() == pytest.approx(dense[numeric].to_numpy(), abs=1e-12)


def test_love_plot_shows_the_largest_imbalances_of_many(tmp_path: Path) -> None:
    n = LOVE_PLOT_MAX_ROWS + 40
    balance = pd.DataFrame({"covariate": [f"clinic_{i:03d}" for i in range(n)],
                            "smd_unweighted": np.linspace(0, 0.5, n),
                            "smd_weighted": np.zeros(n)})
    svg = love_plot(balance, tmp_path)[1].read_text()
    assert f"{LOVE_PLOT_MAX_ROWS} of {n} covariates" in svg
    assert f"Clinic {n - 1:03d}" in svg and "Clinic 000" not in svg


def test_love_plot_names_covariates_by_their_labels() -> None:
    """The drawn tick labels are readable labels, from config first, never column names."""
    from trial_analysis.causal.propensity import love_plot_figure

    covariates = ["clinic_C02", "sexM", "therapist_etmi_share", "function_baseline",
                  "ses_score_missing", "age"]
    balance = pd.DataFrame({"covariate": covariates,
                            "smd_unweighted": np.linspace(0.05, 0.3, len(covariates)),
                            "smd_weighted": np.zeros(len(covariates))})
    config = study_config(outcomes=["function"])
    config.setdefault("report", {})["labels"] = {"age": "Age at referral"}
    figure = love_plot_figure(balance, config=config)
    drawn = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert drawn == ["Clinic C02", "Sex: male",
                     "Therapist's share of other patients given the intervention",
                     "Function at baseline", "Socioeconomic score missing",
                     "Age at referral"]


def test_love_plot_is_byte_identical_between_runs(confounded: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    result = run_propensity_analysis(confounded, study_config(outcomes=["function"]))
    balance = result.tables["balance"].head(6)
    first = love_plot(balance, tmp_path / "a")
    second = love_plot(balance, tmp_path / "b")
    assert [p.suffix for p in first] == [".png", ".svg"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    svg = first[1].read_text()
    assert "<dc:date>" not in svg


def test_propensity_sample_all_fits_one_model(confounded: pd.DataFrame) -> None:
    config = study_config(outcomes=["function", "pain"], propensity={"sample": "all"})
    result = run_propensity_analysis(confounded, config)
    assert set(result.to_frame()["outcome"]) == {"function", "pain"}
    with pytest.raises(ConfigError):
        run_propensity_analysis(confounded, study_config(propensity={"sample": "some"}))


@pytest.mark.slow
def test_weighted_estimate_is_unbiased_over_replicates() -> None:
    config = study_config(outcomes=["function"])
    crude, weighted = [], []
    for seed in range(100, 120):
        frame, _ = simulate_cohort(n_patients=1500, seed=seed, confounding=1.5)
        rows = _rows(run_propensity_analysis(frame, config))
        crude.append(rows.loc[("function", "unadjusted_ancova"), "estimate"])
        weighted.append(rows.loc[("function", "overlap_weighted_ancova"), "estimate"])
    assert np.mean(crude) - TRUTH > 1.0
    assert abs(np.mean(weighted) - TRUTH) < 0.35


def test_bmi_and_ses_are_used_only_if_present(confounded: pd.DataFrame) -> None:
    frame = confounded.drop(columns=["bmi", "ses_score"])
    result = run_propensity_analysis(frame, study_config(outcomes=["function"]))
    assert "bmi" not in set(result.tables["balance"]["covariate"])
    weighted = result.to_frame().set_index("method").loc["overlap_weighted_ancova"]
    assert "left out of the propensity model: ['bmi', 'ses_score']" in weighted["notes"]
    with pytest.raises(DataError, match="required column missing"):
        run_propensity_analysis(confounded.drop(columns=["depression"]),
                                study_config(outcomes=["function"]))


def test_the_near_instrument_is_left_out_by_default_and_warned_about_when_named(
    confounded: pd.DataFrame,
) -> None:
    default = run_propensity_analysis(confounded, study_config(outcomes=["function"]))
    assert not default.tables["balance"]["covariate"].str.startswith("therapist_").any()
    assert "near-instrument" not in _rows(default).loc[
        ("function", "overlap_weighted_ancova"), "notes"]
    named = run_propensity_analysis(confounded, study_config(
        outcomes=["function"], propensity={"therapist_terms": ["etmi_share"]}))
    assert "near-instrument" in _rows(named).loc[
        ("function", "overlap_weighted_ancova"), "notes"]


def test_overlap_bins_are_shares_per_arm() -> None:
    score = pd.Series([0.01, 0.02, 0.5, 0.51, 0.99, 0.3])
    treated = pd.Series([0, 0, 0, 1, 1, 1])
    table = overlap_bins(score, treated, bins=10)
    assert table["share_control"].sum() == pytest.approx(1.0)
    assert table["share_intervention"].sum() == pytest.approx(1.0)
    # controls at 0.01, 0.02 (first bin) and 0.5 (sixth); intervention at 0.3, 0.51, 0.99
    assert table["share_control"].iloc[0] == pytest.approx(2 / 3)
    assert table["share_intervention"].iloc[9] == pytest.approx(1 / 3)
    assert table["share_intervention"].iloc[0] == pytest.approx(0.0, abs=1e-12)


def test_the_overlap_plot_is_written_beside_the_love_plot(confounded: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    result = run_propensity_analysis(confounded, study_config(outcomes=["function"]),
                                     figures_dir=tmp_path)
    names = sorted(p.name for p in result.figures)
    assert "propensity_overlap_function.png" in names
    assert "propensity_overlap_function.svg" in names


def test_each_weighting_row_states_its_form_and_estimand(confounded: pd.DataFrame) -> None:
    from trial_analysis.causal.common import fit_ancova

    result = run_propensity_analysis(confounded, study_config(outcomes=["function"]))
    rows = _rows(result)
    function = rows.loc["function"]
    assert {"unadjusted_change", "covariate_adjusted_change",
            "overlap_weighted_change"} <= set(function.index)
    assert "estimand ATO" in function.loc["overlap_weighted_change", "notes"]
    assert "model form: change score" in function.loc["overlap_weighted_change", "notes"]
    assert "model form: ANCOVA" in function.loc["overlap_weighted_ancova", "notes"]
    iptw = _rows(run_propensity_analysis(
        confounded, study_config(outcomes=["function"], propensity={"weighting": "iptw"})))
    assert "ATE in the trimmed population" in iptw.loc[("function", "iptw_weighted_ancova"),
                                                       "notes"]
    # the change form uses the same weights as the ANCOVA form
    analysed = confounded.dropna(subset=["function_baseline", "function_followup"])
    model = fit_propensity(analysed, study_config(outcomes=["function"]),
                           therapist_frame=confounded)
    weights = propensity_weights(model.score, analysed["arm_intervention"])
    direct = fit_ancova(analysed, "function", ["age", "sex", "symptom_duration_weeks"],
                        weights=weights, form="change")
    assert function.loc["overlap_weighted_change", "estimate"] == pytest.approx(
        direct.coefficient()[0], rel=1e-10)


def test_overlap_weights_make_the_model_form_irrelevant(confounded: pd.DataFrame) -> None:
    # Exact balance of the baseline score (in the propensity model) leaves the weighted
    # ANCOVA and change-score arm effects equal: their gap is (1 - b) times the weighted,
    # adjusted baseline difference, which is 0. Unweighted, the two differ.
    config = study_config(outcomes=["function"], propensity={"ridge": 0.0})
    rows = _rows(run_propensity_analysis(confounded, config)).loc["function"]
    assert rows.loc["overlap_weighted_change", "estimate"] == pytest.approx(
        rows.loc["overlap_weighted_ancova", "estimate"], rel=1e-7)
    assert abs(rows.loc["covariate_adjusted_change", "estimate"]
               - rows.loc["covariate_adjusted_ancova", "estimate"]) > 0.2


def test_outcome_covariates_outside_the_propensity_model_are_in_the_balance_table(
        confounded: pd.DataFrame) -> None:
    config = study_config(outcomes=["function"],
                          propensity={"covariates": ["sex", "depression"]})
    balance = run_propensity_analysis(confounded, config).tables["balance"]
    function = balance[balance["outcome"] == "function"].set_index("covariate")
    # age is in analysis.covariates only: listed, and (not being balanced by construction)
    # still imbalanced after weighting, as simulated
    assert {"age", "symptom_duration_weeks", "sexM", "depression"} <= set(function.index)
    assert abs(function.loc["age", "smd_weighted"]) > 0.1
    assert abs(function.loc["depression", "smd_weighted"]) < 1e-3
