"""Multiple imputation, Rubin's rules and the tipping point, on data with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sensitivity_simulation import simulate_cohort, study_config

from trial_analysis.causal.common import fit_ancova
from trial_analysis.causal.imputation import (
    donor_candidates,
    impute_chained,
    line_up,
    match_donors,
    pool_rubin,
    pooled_at,
    pooled_effect,
    read_imputations,
    run_impute,
    run_multiple_imputation,
    run_tipping_point,
    shiftable_fits,
    write_imputations,
)
from trial_analysis.causal.sensitivity import run_sensitivity
from trial_analysis.errors import DataError

COVARIATES = ["age", "sex", "symptom_duration_weeks"]
FAST = {"m": 5, "iterations": 5}


def test_rubin_rules_hand_computed() -> None:
    # q = 1, 2, 3; u = 0.5 each; complete-data df 50:
    # T = 0.5 + (4/3) * 1 = 1.8333; lambda = 0.72727; nu_old = 2 / lambda^2 = 3.78125;
    # nu_obs = 51/53 * 50 * (1 - lambda) = 13.12178; df = 2.93538.
    pooled = pool_rubin([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], df_complete=50)
    assert pooled["estimate"] == pytest.approx(2.0)
    assert pooled["std_error"] ** 2 == pytest.approx(1.8333333, abs=1e-6)
    assert pooled["lambda"] == pytest.approx(0.7272727, abs=1e-6)
    assert pooled["df"] == pytest.approx(2.9353751, abs=1e-6)


def test_rubin_rules_without_between_variance_use_observed_df() -> None:
    pooled = pool_rubin([2.0, 2.0], [0.25, 0.25], df_complete=30)
    assert pooled["std_error"] == pytest.approx(0.5)
    assert pooled["df"] == pytest.approx(31 / 33 * 30)


@settings(max_examples=60, deadline=None)
@given(
    observed=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40),
    targets=st.lists(st.floats(-120, 120, allow_nan=False), min_size=1, max_size=10),
    donors=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_donor_is_always_among_the_nearest(observed: list[float], targets: list[float],
                                           donors: int, seed: int) -> None:
    fitted_obs, fitted_mis = np.array(observed), np.array(targets)
    chosen = match_donors(fitted_obs, fitted_mis, donors, np.random.default_rng(seed))
    d = min(donors, len(observed))
    for target, index in zip(fitted_mis, chosen, strict=True):
        distances = np.sort(np.abs(fitted_obs - target))
        assert abs(fitted_obs[index] - target) <= distances[d - 1] + 1e-12


@settings(max_examples=80, deadline=None)
@given(
    observed=st.lists(st.integers(-8, 8), min_size=1, max_size=30),
    targets=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=10),
    donors=st.integers(1, 6),
)
# a run of equal values below the target hides a nearer one: the two nearest to 1 are 1 and a 0
@example(observed=[0, 0, 0, 1], targets=[1.0], donors=2)
def test_donor_candidates_are_the_nearest_by_a_stable_sort(observed: list[int],
                                                           targets: list[float],
                                                           donors: int) -> None:
    # Integer fitted values make ties common. The candidates must be d nearest, and, unless
    # two candidates are equally near, exactly those the previous implementation chose (a
    # stable sort of the distances within the window of 2d sorted values around the insertion
    # point). Among equally near values the run nearest the insertion point is taken now;
    # the previous sort took the earliest, which need not be a contiguous run.
    fitted_obs, fitted_mis = np.array(observed, dtype=float), np.array(targets)
    order, first, d = donor_candidates(fitted_obs, fitted_mis, donors)
    assert np.array_equal(order, np.argsort(fitted_obs, kind="stable"))
    ranked = fitted_obs[order]
    width = min(2 * d, len(ranked))
    for target, start in zip(fitted_mis, first, strict=True):
        chosen = np.abs(ranked[start:start + d] - target)
        assert np.array_equal(np.sort(chosen), np.sort(np.abs(ranked - target))[:d])
        window = int(np.clip(np.searchsorted(ranked, target) - d, 0, len(ranked) - width))
        distance = np.abs(ranked[window:window + width] - target)
        previous = window + np.argsort(distance, kind="stable")[:d]
        if len(np.unique(distance)) == len(distance):
            assert set(range(start, start + d)) == set(previous.tolist())


@pytest.fixture(scope="module")
def mar_cohort() -> pd.DataFrame:
    frame, truth = simulate_cohort(n_patients=4000, seed=0, confounding=0.0,
                                   missingness="MAR", missing_strength=1.5)
    assert truth["effects"]["function"] == 4.0
    return frame


def test_multiple_imputation_recovers_truth_where_complete_case_is_biased(
    mar_cohort: pd.DataFrame,
) -> None:
    # Intervention patients with few sessions (who recovered better than predicted) more
    # often have a follow-up: completers overstate the effect. Sessions are observed, so
    # imputation that uses them within arm recovers the truth.
    config = study_config(outcomes=["function"], multiple_imputation=FAST)
    rows = run_multiple_imputation(mar_cohort, config).to_frame().set_index("method")
    complete = rows.loc["complete_case_ancova"]
    imputed = rows.loc["multiple_imputation_ancova"]
    assert complete["ci_low"] > 4.0
    assert abs(imputed["estimate"] - 4.0) < 2.5 * imputed["std_error"]
    assert abs(imputed["estimate"] - 4.0) < abs(complete["estimate"] - 4.0) / 2
    assert imputed["n_patients"] == len(mar_cohort)


def test_imputation_without_the_variable_driving_missingness_stays_biased(
    mar_cohort: pd.DataFrame,
) -> None:
    # The negative control: leave n_sessions out of the imputation model and MAR no longer
    # holds given what the imputation uses, so MI inherits the complete-case bias.
    config = study_config(outcomes=["function"],
                          multiple_imputation={**FAST, "auxiliary": ["bmi", "depression"]})
    rows = run_multiple_imputation(mar_cohort, config).to_frame().set_index("method")
    assert rows.loc["multiple_imputation_ancova", "ci_low"] > 4.0


def test_imputation_is_deterministic_and_imputes_observed_values(
    mar_cohort: pd.DataFrame,
) -> None:
    frame = mar_cohort.iloc[:600]
    config = study_config(multiple_imputation={"m": 2, "iterations": 3})
    first = impute_chained(frame, config)
    second = impute_chained(frame, config)
    for a, b in zip(first.datasets, second.datasets, strict=True):
        pd.testing.assert_frame_equal(a, b)
    other_seed = impute_chained(frame, {**config, "seed": 1})
    assert not first.datasets[0].equals(other_seed.datasets[0])
    completed = first.datasets[1]
    for column in first.columns:
        assert completed[column].notna().all()
        for arm in (0, 1):
            in_arm = (frame["arm_intervention"] == arm).to_numpy()
            imputed = completed.loc[first.missing[column].to_numpy() & in_arm, column]
            observed = set(frame.loc[in_arm, column].dropna())
            assert set(imputed) <= observed  # PMM copies values seen in the same arm
    untouched = [c for c in frame.columns if c not in first.columns]
    pd.testing.assert_frame_equal(completed[untouched], frame[untouched])


def test_fast_delta_path_equals_refitting_shifted_data(mar_cohort: pd.DataFrame) -> None:
    frame = mar_cohort.iloc[:1500]
    imputations = impute_chained(frame, study_config(multiple_imputation={"m": 3,
                                                                          "iterations": 3}))
    fits = shiftable_fits(imputations, "function", True, COVARIATES)
    delta = 2.5
    shifted = []
    target = imputations.missing["function_followup"] & (frame["arm_intervention"] == 1)
    for dataset in imputations.datasets:
        copy = dataset.copy()
        copy.loc[target, "function_followup"] -= delta
        shifted.append(copy)
    direct = pooled_effect(shifted, "function", COVARIATES, 0.95)
    fast = pooled_at(fits, delta, 0.95)
    for key in ("estimate", "std_error", "df", "ci_low", "ci_high"):
        assert fast[key] == pytest.approx(direct[key], rel=1e-9)
    assert pooled_at(fits, 0.0, 0.95)["estimate"] == pytest.approx(
        pooled_effect(imputations.datasets, "function", COVARIATES, 0.95)["estimate"])


def _tipping(effect: float, seed: int = 2) -> tuple[float, pd.DataFrame]:
    frame, _ = simulate_cohort(n_patients=2000, seed=seed, confounding=0.0,
                               effects={"function": effect}, missingness="MNAR")
    config = study_config(multiple_imputation=FAST,
                          tipping_point={"delta_max_mcid": 6, "delta_steps": 13})
    result = run_tipping_point(frame, config)
    tipping = result.details["tipping_points"]["function"]
    assert tipping["status"] == "reached"
    grid = result.tables["grid"]
    return tipping["tipping_delta"], grid[grid["model_form"] == "ancova"]


def test_tipping_point_grows_with_the_true_effect() -> None:
    small, grid = _tipping(3.0)
    large, _ = _tipping(7.0)
    assert 0 < small < large
    # The grid brackets the exact tipping point: 0 excluded below it, included at the next
    # grid value (further on, the interval may exclude 0 again, on the other side).
    below = grid[grid["delta"] < small]
    above = grid[grid["delta"] >= small]
    assert not below["ci_includes_zero"].any() and above["ci_includes_zero"].iloc[0]
    # Higher is better: shifting ETMI imputations down lowers the estimate monotonically.
    assert grid["estimate"].is_monotonic_decreasing


def test_tipping_point_for_lower_is_better_outcome_shifts_upwards() -> None:
    frame, _ = simulate_cohort(n_patients=1500, seed=3, confounding=0.0,
                               effects={"fear_avoidance": -10.0}, missingness="MNAR")
    config = study_config(multiple_imputation=FAST,
                          tipping_point={"outcomes": ["fear_avoidance", "pain"]})
    result = run_tipping_point(frame, config)
    grid = result.tables["grid"]
    for form in ("ancova", "change"):
        fear = grid[(grid["outcome"] == "fear_avoidance") & (grid["model_form"] == form)]
        assert fear["estimate"].iloc[0] < 0
        assert fear["estimate"].is_monotonic_increasing
    points = result.details["tipping_points"]
    assert points["fear_avoidance"]["tipping_delta"] > 0
    # No true pain effect: the interval already includes 0 without a shift.
    assert points["pain"]["tipping_delta"] == 0.0
    # The change-score form shifts the same imputed follow-ups and tips too.
    assert points["fear_avoidance (change)"]["tipping_delta"] > 0
    assert points["fear_avoidance (change)"]["model_form"] == "change"
    rows = result.to_frame()
    assert list(rows.columns[:4]) == ["outcome", "analysis", "method", "term"]
    assert set(rows["term"]) == {"arm_intervention", "tipping_delta"}


def test_line_up_puts_two_result_frames_side_by_side() -> None:
    first = pd.DataFrame({"outcome": ["function", "pain"], "term": ["arm:time"] * 2,
                          "estimate": [4.0, 0.1], "ci_low": [2.0, -0.2],
                          "ci_high": [6.0, 0.4]})
    second = pd.DataFrame({"outcome": ["function"], "term": ["arm:time"],
                           "estimate": [3.5], "ci_low": [1.0], "ci_high": [6.0]})
    table = line_up(first, second).set_index("outcome")
    assert table.loc["function", "estimate_complete_case"] == 4.0
    assert table.loc["function", "estimate_all_available"] == 3.5
    assert table.loc["function", "difference"] == pytest.approx(-0.5)
    assert np.isnan(table.loc["pain", "estimate_all_available"])


def test_complete_case_row_equals_plain_ancova(mar_cohort: pd.DataFrame) -> None:
    config = study_config(outcomes=["pain"], multiple_imputation={"m": 2, "iterations": 2})
    rows = run_multiple_imputation(mar_cohort.iloc[:800], config).to_frame()
    complete = rows[rows["method"] == "complete_case_ancova"].iloc[0]
    direct = fit_ancova(mar_cohort.iloc[:800], "pain", COVARIATES).row()
    assert complete["estimate"] == pytest.approx(direct["estimate"])
    assert complete["ci_high"] == pytest.approx(direct["ci_high"])


@pytest.mark.slow
def test_multiple_imputation_is_unbiased_over_replicates() -> None:
    config = study_config(outcomes=["function"], multiple_imputation=FAST)
    complete, imputed, covered = [], [], []
    for seed in range(200, 212):
        frame, _ = simulate_cohort(n_patients=3000, seed=seed, confounding=0.0,
                                   missingness="MAR", missing_strength=1.5)
        rows = run_multiple_imputation(frame, config).to_frame().set_index("method")
        complete.append(rows.loc["complete_case_ancova", "estimate"])
        mi = rows.loc["multiple_imputation_ancova"]
        imputed.append(mi["estimate"])
        covered.append(mi["ci_low"] < 4.0 < mi["ci_high"])
    assert np.mean(complete) - 4.0 > 1.0
    assert abs(np.mean(imputed) - 4.0) < 0.4
    assert np.mean(covered) >= 0.75


# --------------------------------------------------------------------------------------------
# Seeded chains and the shared imputation file
# --------------------------------------------------------------------------------------------


def _small(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:700].reset_index(drop=True).assign(
        episode_id=[f"E{i:05d}" for i in range(700)])


def _assert_same_imputations(first, second) -> None:
    assert first.columns == second.columns and first.excluded == second.excluded
    assert np.array_equal(first.positions, second.positions)
    pd.testing.assert_frame_equal(first.missing, second.missing)
    assert len(first.datasets) == len(second.datasets)
    for a, b in zip(first.datasets, second.datasets, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_each_chain_has_its_own_stream(mar_cohort: pd.DataFrame) -> None:
    # Imputation i is drawn from SeedSequence(seed, spawn_key=(i, arm)): it is the same
    # whether 2 or 3 imputations are made, and the two imputations differ.
    frame = mar_cohort.iloc[:600]
    two = impute_chained(frame, study_config(multiple_imputation={"m": 2, "iterations": 2}))
    three = impute_chained(frame, study_config(multiple_imputation={"m": 3, "iterations": 2}))
    assert np.array_equal(two.datasets.cells, three.datasets.cells[:2])
    assert not np.array_equal(two.datasets.cells[0], two.datasets.cells[1])


def test_file_does_not_depend_on_the_number_of_processes(
    mar_cohort: pd.DataFrame, tmp_path
) -> None:
    frame = _small(mar_cohort)
    config = study_config(multiple_imputation={"m": 3, "iterations": 2})
    paths = []
    for jobs in (1, 2):
        imputations = impute_chained(frame, config, jobs=jobs)
        paths.append(write_imputations(imputations, frame, config, tmp_path / f"{jobs}.parquet"))
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_file_round_trip_gives_the_same_imputations(mar_cohort: pd.DataFrame,
                                                     tmp_path) -> None:
    frame = _small(mar_cohort)
    # a text covariate missing for some patients: they are left out, and counted
    frame.loc[[3, 50], "sex"] = None
    config = study_config(multiple_imputation={"m": 3, "iterations": 2})
    in_memory = impute_chained(frame, config)
    assert in_memory.excluded == 2
    path = write_imputations(in_memory, frame, config, tmp_path / "imputations.parquet")
    _assert_same_imputations(read_imputations(path, frame, config), in_memory)


def test_file_of_another_table_or_config_is_refused(mar_cohort: pd.DataFrame,
                                                     tmp_path) -> None:
    frame = _small(mar_cohort)
    config = study_config(multiple_imputation={"m": 2, "iterations": 2})
    path = write_imputations(impute_chained(frame, config), frame, config,
                             tmp_path / "imputations.parquet")
    with pytest.raises(DataError, match="seed"):
        read_imputations(path, frame, {**config, "seed": 1})
    with pytest.raises(DataError, match="row_key_sha256"):
        read_imputations(path, frame.iloc[::-1].reset_index(drop=True), config)
    other = frame.copy()
    other.loc[0, "function_followup"] = np.nan if pd.notna(other.loc[0, "function_followup"]) \
        else 50.0
    with pytest.raises(DataError, match="missing cells"):
        read_imputations(path, other, config)


def test_sensitivity_rows_from_the_file_equal_the_in_memory_ones(
    mar_cohort: pd.DataFrame, tmp_path
) -> None:
    frame = _small(mar_cohort)
    config = study_config(outcomes=["function", "pain"],
                          multiple_imputation={"m": 3, "iterations": 2},
                          tipping_point={"delta_steps": 5})
    analysis = tmp_path / "analysis.parquet"
    frame.to_parquet(analysis, index=False)
    shared = tmp_path / "imputations.parquet"
    run_impute(config, analysis, shared, jobs=2)
    direct = {"multiple_imputation": run_multiple_imputation(frame, config),
              "tipping_point": run_tipping_point(frame, config)}
    for name, expected in direct.items():
        via_file = run_sensitivity(config, analysis, name, tmp_path / f"{name}.json",
                                   tmp_path / f"{name}.csv", imputations=shared)
        pd.testing.assert_frame_equal(via_file.to_frame(), expected.to_frame())
        for table, value in expected.tables.items():
            pd.testing.assert_frame_equal(via_file.tables[table], value)


# --------------------------------------------------------------------------------------------
# m from the fraction of missing information; therapist clustering in the imputation model
# --------------------------------------------------------------------------------------------


def test_choose_m_follows_the_hundred_times_fmi_rule() -> None:
    from trial_analysis.causal.imputation import choose_m

    chosen = choose_m({"function": 0.56, "pain": 0.73}, pilot_m=20, max_m=100)
    assert chosen["m"] == 73 and not chosen["capped"]
    assert choose_m({"function": 0.05}, pilot_m=20, max_m=100)["m"] == 20  # never below pilot
    capped = choose_m({"function": 0.9}, pilot_m=20, max_m=50)
    assert capped["m"] == 50 and capped["capped"] and capped["wanted"] == 90


def test_auto_m_extends_the_pilot_chains_and_survives_the_file(
    mar_cohort: pd.DataFrame, tmp_path
) -> None:
    frame = _small(mar_cohort)
    base = {"iterations": 2, "pilot_m": 2, "max_m": 5}
    auto = impute_chained(frame, study_config(multiple_imputation={**base, "m": "auto"}))
    choice = auto.m_choice
    assert choice is not None and choice["pilot_m"] == 2
    expected = min(5, max(2, int(np.ceil(100 * max(choice["pilot_fmi"].values()) - 1e-9))))
    assert len(auto.datasets) == choice["m"] == expected
    fixed_config = study_config(multiple_imputation={**base, "m": choice["m"]})
    fixed = impute_chained(frame, fixed_config)
    # the pilot's chains and the added ones are exactly those of a fixed-m run
    assert np.array_equal(auto.datasets.cells, fixed.datasets.cells)
    assert fixed.m_choice is None
    config = study_config(multiple_imputation={**base, "m": "auto"})
    path = write_imputations(auto, frame, config, tmp_path / "imputations.parquet")
    back = read_imputations(path, frame, config)
    _assert_same_imputations(back, auto)
    assert back.m_choice == choice
    # a file made with a fixed m is not taken for an auto config, and vice versa
    with pytest.raises(DataError, match="m_setting"):
        read_imputations(path, frame, fixed_config)


def test_auto_m_notes_say_how_m_was_chosen(mar_cohort: pd.DataFrame) -> None:
    frame = _small(mar_cohort)
    config = study_config(multiple_imputation={"m": "auto", "pilot_m": 2, "max_m": 3,
                                               "iterations": 2})
    result = run_multiple_imputation(frame, config)
    rows = result.to_frame().set_index("method").loc[["multiple_imputation_ancova"]]
    assert len(rows) == 3
    for notes in rows["notes"]:
        assert "m=3" in notes
        assert "m chosen as at least 100 x the largest fraction of missing information" in notes
    assert result.details["m_choice"]["m"] == 3


def test_therapist_means_leave_the_patient_out() -> None:
    from trial_analysis.causal.imputation import therapist_means

    frame = pd.DataFrame({"therapist_id": ["a", "a", "a", "b", "b", "c"],
                          "y": [1.0, 3.0, np.nan, 10.0, np.nan, np.nan]})
    means = therapist_means(frame, ["y"])["therapist_mean_y"].tolist()
    # a: others of row 0 -> 3; row 1 -> 1; row 2 (missing) -> mean(1, 3) = 2
    # b: row 3 has no other observed -> overall mean 14/3; row 4 -> 10; c: none -> 14/3
    assert means == pytest.approx([3.0, 1.0, 2.0, 14 / 3, 10.0, 14 / 3])


def test_therapist_means_keep_the_between_therapist_variance() -> None:
    # Strong therapist effects, follow-ups missing at random: imputations made without the
    # cluster shrink the therapist means of the imputed values towards the arm mean.
    frame, _ = simulate_cohort(n_patients=1500, seed=5, confounding=0.0, therapist_sd=6.0,
                               missingness="MAR")
    spread = {}
    for flag in (True, False):
        config = study_config(multiple_imputation={"m": 3, "iterations": 3,
                                                   "therapist_means": flag})
        imputations = impute_chained(frame, config)
        missing = imputations.missing["function_followup"].to_numpy()
        completed = imputations.datasets[0]
        imputed = completed.loc[missing]
        spread[flag] = imputed.groupby("therapist_id")["function_followup"].mean().std()
    assert spread[True] > 1.3 * spread[False]
