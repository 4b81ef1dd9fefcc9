"""Tests for trial_analysis.models.responders: MCID responders, Newcombe RD, odds ratios."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from trial_analysis.errors import ConfigError, DataError
from trial_analysis.models.responders import (
    fit_responders,
    newcombe_difference,
    responder_indicator,
    run_responders,
    wilson_interval,
)
from trial_analysis.models.sessions import TIDY_COLUMNS

COVARIATES = ["age", "sex", "symptom_duration_weeks"]
OUTCOMES = [
    {"name": "function", "min": 0, "max": 100, "higher_is_better": True, "mcid": 5},
    {"name": "pain", "min": 0, "max": 10, "higher_is_better": False, "mcid": 2},
]
CONFIG = {
    "outcomes": OUTCOMES,
    "allocation": {"intervention": "ETMI", "control": "usual care"},
    "analysis": {"confidence_level": 0.95, "sessions": {"covariates": COVARIATES},
                 "responders": {"outcomes": ["function", "pain"]}},
}
FUNCTION_CHANGE_CONTROL, FUNCTION_EFFECT, CHANGE_SD = 6.0, 4.0, 8.0


def true_risk_difference() -> float:
    """P(change >= 5) intervention minus control for normal changes (function)."""
    def above(mean: float) -> float:
        return float(stats.norm.sf(5, loc=mean, scale=CHANGE_SD))
    return above(FUNCTION_CHANGE_CONTROL + FUNCTION_EFFECT) - above(FUNCTION_CHANGE_CONTROL)


def make_analysis(seed: int = 1, n: int = 1000, p_missing: float = 0.3) -> pd.DataFrame:
    """Analysis rows with continuous function/pain changes of known distribution."""
    rng = np.random.default_rng(seed)
    therapist = rng.integers(0, 30, n)
    arm = (rng.random(n) < 0.4).astype(int)
    frame = pd.DataFrame({
        "patient_id": [f"P{i:05d}" for i in range(n)],
        "arm": np.where(arm == 1, "ETMI", "usual care"),
        "arm_intervention": arm,
        "therapist_id": [f"T{t:03d}" for t in therapist],
        "age": rng.normal(56, 16, n).round(1),
        "sex": np.where(rng.random(n) < 0.58, "F", "M"),
        "symptom_duration_weeks": rng.gamma(2.0, 12.0, n).round(1),
        "n_sessions": rng.poisson(5, n),
    })
    frame["function_baseline"] = rng.normal(50, 10, n)
    frame["function_followup"] = (frame["function_baseline"] + FUNCTION_CHANGE_CONTROL
                                  + FUNCTION_EFFECT * arm + rng.normal(0, CHANGE_SD, n))
    frame["pain_baseline"] = rng.normal(6, 2, n)
    frame["pain_followup"] = frame["pain_baseline"] - 2 + rng.normal(0, 2, n)
    for outcome in ("function", "pain"):
        lost = rng.random(n) < p_missing
        frame.loc[lost, f"{outcome}_followup"] = np.nan
        frame[f"complete_{outcome}"] = (~lost).astype(int)
    return frame


@pytest.fixture(scope="module")
def result():
    # One fixed draw whose intervals cover the truth, as about 95% of draws should;
    # test_newcombe_coverage_over_replicates checks the rate.
    return fit_responders(make_analysis(seed=6), CONFIG)


def _row(result, outcome: str, model: str) -> pd.Series:
    rows = result.estimates
    return rows[(rows["outcome"] == outcome) & (rows["model"] == model)].iloc[0]


def test_true_risk_difference_is_inside_the_intervals(result):
    truth = true_risk_difference()
    for model in ("newcombe_hybrid_score", "linear_probability_unadjusted:therapist_clustered_se"):
        row = _row(result, "function", model)
        assert row["term"] == "risk_difference"
        assert row["ci_low"] < truth < row["ci_high"]


def test_rows_columns_and_complete_case_counts(result):
    frame = result.to_frame()
    assert list(frame.columns) == TIDY_COLUMNS
    assert list(frame["outcome"].unique()) == ["function", "pain"]
    assert set(frame["population"]) == {"complete_function", "complete_pain"}
    data = make_analysis(seed=6)
    function_rows = frame[frame["outcome"] == "function"]
    assert (function_rows.iloc[:4]["n_patients"] == data["complete_function"].sum()).all()
    odds = function_rows[function_rows["term"] == "odds_ratio"]
    assert len(odds) == 3 and (odds["estimate"] > 1).all()
    assert (odds["ci_low"] < odds["estimate"]).all() and (odds["estimate"] < odds["ci_high"]).all()


def test_newcombe_coverage_over_replicates():
    truth, hits, replicates = true_risk_difference(), 0, 100
    for seed in range(100, 100 + replicates):
        data = make_analysis(seed=seed)
        complete = data[data["complete_function"] == 1]
        responders = responder_indicator(complete, "function", 5, True)
        counts = responders.groupby(complete["arm_intervention"]).agg(["sum", "size"])
        got = newcombe_difference(int(counts.loc[1, "sum"]), int(counts.loc[1, "size"]),
                                  int(counts.loc[0, "sum"]), int(counts.loc[0, "size"]), 0.95)
        hits += got["ci_low"] < truth < got["ci_high"]
    assert 0.88 <= hits / replicates <= 1.0


def test_descriptives_count_responders_by_hand(result):
    data = make_analysis(seed=6)
    complete = data[data["complete_function"] == 1]
    responders = (complete["function_followup"] - complete["function_baseline"]) >= 5
    by_hand = responders.groupby(complete["arm_intervention"]).agg(["sum", "size"])
    table = result.descriptives.set_index(["outcome", "arm_intervention"])
    for arm in (0, 1):
        assert table.loc[("function", arm), "n_responders"] == by_hand.loc[arm, "sum"]
        assert table.loc[("function", arm), "n_complete"] == by_hand.loc[arm, "size"]


def test_unadjusted_odds_ratio_equals_the_cross_product(result):
    table = result.descriptives.set_index(["outcome", "arm_intervention"])
    r1, n1 = table.loc[("pain", 1), ["n_responders", "n_complete"]]
    r0, n0 = table.loc[("pain", 0), ["n_responders", "n_complete"]]
    cross = (r1 / (n1 - r1)) / (r0 / (n0 - r0))
    row = _row(result, "pain", "logistic_unadjusted:model_based_se")
    assert row["estimate"] == pytest.approx(cross, rel=1e-6)
    woolf = math.sqrt(1 / r1 + 1 / (n1 - r1) + 1 / r0 + 1 / (n0 - r0))
    assert row["std_error"] == pytest.approx(woolf, rel=1e-6)


def test_direction_and_mcid_boundary():
    frame = pd.DataFrame({"pain_baseline": [6.0, 6.0, 6.0, 6.0, np.nan],
                          "pain_followup": [4.0, 4.1, 8.0, 6.0 - 2.0000000000001, 2.0]})
    got = responder_indicator(frame, "pain", 2, higher_is_better=False)
    assert got.iloc[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert math.isnan(got.iloc[4])
    frame = pd.DataFrame({"function_baseline": [50.0, 50.0], "function_followup": [55.0, 45.0]})
    assert responder_indicator(frame, "function", 5, True).tolist() == [1.0, 0.0]


def test_newcombe_matches_the_published_examples():
    # Newcombe (1998) Stat Med 17:873, Table II, method 10.
    got = newcombe_difference(56, 70, 48, 80, 0.95)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    got = newcombe_difference(9, 10, 3, 10, 0.95)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.1705, 0.8090), abs=5e-5)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.data())
def test_newcombe_interval_contains_estimate_and_stays_in_bounds(n1, n0, data):
    r1 = data.draw(st.integers(0, n1))
    r0 = data.draw(st.integers(0, n0))
    got = newcombe_difference(r1, n1, r0, n0, 0.95)
    assert -1 - 1e-12 <= got["ci_low"] <= got["estimate"] <= got["ci_high"] <= 1 + 1e-12
    low, high = wilson_interval(r1, n1, 0.95)
    assert 0 <= low <= r1 / n1 <= high <= 1


def test_all_responders_in_an_arm_gives_missing_odds_ratio_not_a_huge_one():
    data = make_analysis(seed=3, n=200)
    intervention = data["arm_intervention"] == 1
    data.loc[intervention, "function_followup"] = data.loc[intervention, "function_baseline"] + 20
    data.loc[intervention, "complete_function"] = 1
    result = fit_responders(data, CONFIG)
    odds = result.estimates[(result.estimates["outcome"] == "function")
                            & (result.estimates["term"] == "odds_ratio")]
    assert odds["estimate"].isna().all()
    assert odds["warnings"].str.contains("not estimable").all()
    newcombe = _row(result, "function", "newcombe_hybrid_score")
    assert newcombe["ci_high"] <= 1 and not math.isnan(newcombe["ci_low"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns="pain_followup"), "no 'pain_followup' column"),
        (lambda d: d.assign(function_followup=np.nan, complete_function=0),
         "no ETMI patient has both function scores"),
        (lambda d: d.assign(complete_function=1), "complete_function is 1 where"),
        (lambda d: d.drop(columns="therapist_id"), "no 'therapist_id' column"),
        (lambda d: d.assign(function_baseline="x"), "scores must be numbers"),
    ],
)
def test_bad_input_raises_data_error(change, message):
    with pytest.raises(DataError, match=message):
        fit_responders(change(make_analysis(seed=4, n=120)), CONFIG)


def test_run_responders_is_deterministic(tmp_path):
    path = tmp_path / "analysis.parquet"
    make_analysis(seed=5, n=300).to_parquet(path, index=False)
    outputs = []
    for attempt in (1, 2):
        out_json, out_csv = tmp_path / f"r{attempt}.json", tmp_path / f"r{attempt}.csv"
        run_responders(CONFIG, path, out_json, out_csv)
        outputs.append((out_json.read_bytes(), out_csv.read_bytes()))
    assert outputs[0] == outputs[1]
    document = json.loads(outputs[0][0])
    assert document["analysis"] == "responders"
    assert len(document["descriptives"]) == 4
    assert "warnings" in document["model"]
    summary = fit_responders(make_analysis(seed=5, n=300), CONFIG).summary()
    assert "function (MCID 5, higher is better)" in summary


def test_responder_outcome_without_mcid_is_a_config_error():
    config = {**CONFIG, "outcomes": [{**OUTCOMES[0]}, {"name": "pain", "min": 0, "max": 10}]}
    with pytest.raises(ConfigError, match="pain: mcid is required"):
        fit_responders(make_analysis(seed=7, n=100), config)


def test_clustered_se_follow_the_studys_outermost_cluster():
    frame = make_analysis(seed=6)
    frame["site"] = [f"S{int(t[1:]) % 7}" for t in frame["therapist_id"]]
    by_site = {**CONFIG, "analysis": {**CONFIG["analysis"], "random_effects": ["site", "patient"]}}
    estimates = fit_responders(frame, by_site).estimates
    assert set(estimates["n_clusters"]) == {7}
    assert "logistic_adjusted:site_clustered_se" in set(estimates["model"])
    assert not estimates["model"].str.contains("therapist").any()
    # No clusters at all: each patient its own cluster (the HC1 robust SE), named as such.
    unclustered = {**CONFIG, "analysis": {**CONFIG["analysis"], "random_effects": ["patient"]}}
    rows = fit_responders(frame, unclustered).estimates
    lpm = rows[rows["model"] == "linear_probability_unadjusted:patient_clustered_se"]
    assert len(lpm) == 2 and (lpm["n_clusters"] == lpm["n_patients"]).all()
    assert not rows["warnings"].str.contains("treated as their own cluster").any()


def test_a_missed_intermediate_visit_keeps_a_patient_with_both_scores_a_responder_case():
    """complete_{outcome} marks every visit present; a responder needs baseline and primary."""
    data = make_analysis(seed=6, n=200)
    expected = fit_responders(data, CONFIG).estimates
    missed = data.index[data["complete_function"] == 1][:7]
    data.loc[missed, "complete_function"] = 0  # e.g. the week-4 score is missing
    got = fit_responders(data, CONFIG).estimates
    pd.testing.assert_frame_equal(got, expected)
