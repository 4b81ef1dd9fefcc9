"""E-values: the formula against hand-computed values, and the estimate-file path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sensitivity_simulation import simulate_cohort, study_config

from trial_analysis.causal.evalues import (
    evalue_for_difference,
    evalue_from_rr,
    rr_from_smd,
    run_evalues,
    standardising_sd,
)
from trial_analysis.errors import DataError
from trial_analysis.io import write_json


def test_evalue_of_risk_ratio_two_is_3_41() -> None:
    # VanderWeele & Ding (2017): RR = 2 needs a confounder of RR 3.41 with both.
    assert evalue_from_rr(2.0) == pytest.approx(2 + math.sqrt(2), abs=1e-12)
    assert evalue_from_rr(2.0) == pytest.approx(3.414, abs=1e-3)


def test_protective_risk_ratio_is_inverted_first() -> None:
    assert evalue_from_rr(0.5) == pytest.approx(evalue_from_rr(2.0))
    assert evalue_from_rr(1.0) == 1.0
    # Hand-computed: RR 3.9 -> 3.9 + sqrt(3.9 * 2.9) = 7.263
    assert evalue_from_rr(1 / 3.9) == pytest.approx(7.2630, abs=1e-4)


def test_continuous_effect_hand_computed() -> None:
    # effect 4 (CI 2 to 6), SD 10: d = 0.4, RR = exp(0.364) = 1.43907,
    # E = 1.43907 + sqrt(1.43907 * 0.43907) = 2.23397; CI limit 2: d = 0.2, RR = 1.19961,
    # E = 1.68896.
    values = evalue_for_difference(4.0, 2.0, 6.0, sd=10.0)
    assert values["smd"] == pytest.approx(0.4)
    assert values["rr"] == pytest.approx(1.4390742, abs=1e-6)
    assert values["evalue_estimate"] == pytest.approx(2.2339707, abs=1e-6)
    assert values["rr_ci_limit"] == pytest.approx(1.1996142, abs=1e-6)
    assert values["evalue_ci"] == pytest.approx(1.6889607, abs=1e-6)


def test_direction_does_not_matter_and_ci_uses_limit_nearest_null() -> None:
    harmful = evalue_for_difference(-4.0, -6.0, -2.0, sd=10.0)
    helpful = evalue_for_difference(4.0, 2.0, 6.0, sd=10.0)
    assert harmful["evalue_estimate"] == pytest.approx(helpful["evalue_estimate"])
    assert harmful["evalue_ci"] == pytest.approx(helpful["evalue_ci"])
    assert rr_from_smd(-0.4) == pytest.approx(1 / rr_from_smd(0.4))


def test_ci_including_null_gives_evalue_one() -> None:
    values = evalue_for_difference(1.0, -0.5, 2.5, sd=10.0)
    assert values["evalue_ci"] == 1.0
    assert values["evalue_estimate"] > 1.0


def _write_estimate(directory: Path, outcome: str, population: str, estimate: float,
                    ci_low: float, ci_high: float) -> None:
    write_json({"outcome": outcome, "population": population, "model": {},
                "estimates": [
                    {"term": "(Intercept)", "estimate": 50.0, "ci_low": 49, "ci_high": 51},
                    {"term": "arm:time", "estimate": estimate, "std_error": 1.0,
                     "ci_low": ci_low, "ci_high": ci_high, "p_value": 0.01,
                     "n_patients": 1000}],
                "marginal_means": []}, directory / f"{outcome}.{population}.json")


def test_run_evalues_reads_primary_files_and_standardises_by_control_change(
    tmp_path: Path,
) -> None:
    frame, _ = simulate_cohort(n_patients=600, seed=7)
    config = study_config(outcomes=["function"])
    _write_estimate(tmp_path, "function", "complete_case", 4.0, 2.0, 6.0)
    _write_estimate(tmp_path, "function", "all_available", 3.0, -0.5, 6.5)
    result = run_evalues(frame, config, tmp_path)
    rows = result.to_frame().set_index(["analysis", "term"])
    control = frame[frame["arm_intervention"] == 0]
    sd = (control["function_followup"] - control["function_baseline"]).std()
    assert standardising_sd(frame, "function")[0] == pytest.approx(sd)
    expected = evalue_for_difference(4.0, 2.0, 6.0, sd)
    assert rows.loc[("evalue_complete_case", "evalue_estimate"), "estimate"] == pytest.approx(
        expected["evalue_estimate"])
    assert rows.loc[("evalue_complete_case", "evalue_ci"), "estimate"] == pytest.approx(
        expected["evalue_ci"])
    assert rows.loc[("evalue_all_available", "evalue_ci"), "estimate"] == 1.0
    assert "function complete_case E-value (CI)" in result.summary()


def test_run_evalues_without_estimate_files_is_a_data_error(tmp_path: Path) -> None:
    frame, _ = simulate_cohort(n_patients=300, seed=7)
    with pytest.raises(DataError, match="no primary estimate file"):
        run_evalues(frame, study_config(), tmp_path)


def test_estimate_file_without_effect_row_is_a_data_error(tmp_path: Path) -> None:
    frame, _ = simulate_cohort(n_patients=300, seed=7)
    write_json({"estimates": [{"term": "(Intercept)", "estimate": 1.0}]},
               tmp_path / "function.complete_case.json")
    with pytest.raises(DataError, match="arm x time"):
        run_evalues(frame, study_config(outcomes=["function"]), tmp_path)
