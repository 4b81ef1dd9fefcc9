"""Tests for trial_analysis.models.sessions: NB ratio of means, clustered SEs, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from trial_analysis import cli
from trial_analysis.errors import DataError
from trial_analysis.models.sessions import (
    TIDY_COLUMNS,
    cluster_robust_vcov,
    fit_sessions_model,
    run_sessions,
    theta_ml,
)

COVARIATES = ["age", "sex", "symptom_duration_weeks"]
CONFIG = {
    "allocation": {"intervention": "ETMI", "control": "usual care"},
    "analysis": {"confidence_level": 0.95, "sessions": {"covariates": COVARIATES}},
}
TRUE_CONTROL_MEAN = 5.1
TRUE_RATIO = 3.5 / 5.1
TRUE_THETA = 3.0


def make_analysis(
    seed: int = 1,
    n: int = 1200,
    n_therapists: int = 40,
    ratio: float = TRUE_RATIO,
    theta: float | None = TRUE_THETA,
    therapist_sd: float = 0.15,
) -> pd.DataFrame:
    """Analysis-table rows with NB2 session counts and a known ratio of means.

    The therapist effect multiplies each therapist's means, so the true marginal ratio of means
    (intervention / control) is ``ratio`` whatever the covariates (log link: collapsible).
    ``theta=None`` draws Poisson counts.
    """
    rng = np.random.default_rng(seed)
    therapist = rng.integers(0, n_therapists, n)
    therapist_effect = rng.normal(0, therapist_sd, n_therapists)[therapist]
    arm = (rng.random(n) < 0.3).astype(int)
    age = rng.normal(56, 16, n).round(1)
    sex = np.where(rng.random(n) < 0.58, "F", "M")
    duration = rng.gamma(2.0, 12.0, n).round(1)
    mu = TRUE_CONTROL_MEAN * ratio**arm * np.exp(
        therapist_effect + 0.003 * (age - 56) + 0.05 * (sex == "M") - therapist_sd**2 / 2
    )
    if theta is None:
        counts = rng.poisson(mu)
    else:
        counts = rng.negative_binomial(theta, theta / (theta + mu))
    return pd.DataFrame({
        "patient_id": [f"P{i:05d}" for i in range(n)],
        "arm": np.where(arm == 1, "ETMI", "usual care"),
        "arm_intervention": arm,
        "therapist_id": [f"T{t:03d}" for t in therapist],
        "clinic_id": [f"C{t % 5:02d}" for t in therapist],
        "age": age,
        "sex": sex,
        "symptom_duration_weeks": duration,
        "n_sessions": pd.array(counts, dtype="Int64"),
    })


@pytest.fixture(scope="module")
def result():
    # One fixed draw: its intervals cover the truth, as about 95% of draws should; the slow
    # test below checks the coverage rate over replicates.
    return fit_sessions_model(make_analysis(seed=2), CONFIG)


def _row(result, model: str) -> pd.Series:
    return result.estimates.set_index("model").loc[model]


def test_true_ratio_of_means_is_inside_every_interval(result):
    for model in result.estimates["model"]:
        row = _row(result, model)
        assert row["ci_low"] < TRUE_RATIO < row["ci_high"], model
        assert row["ci_low"] < row["estimate"] < row["ci_high"]


def test_theta_is_recovered_and_alpha_is_its_inverse(result):
    dispersion = result.model["dispersion"]
    # therapist variation adds over-dispersion, so theta is a little under the truth
    assert 2.0 < dispersion["theta"] < 3.6
    assert dispersion["alpha"] == pytest.approx(1 / dispersion["theta"])
    assert result.model["converged"] is True
    assert result.model["warnings"] == []


def test_tidy_rows_have_the_contract_columns_and_ratio_scale(result):
    frame = result.to_frame()
    assert list(frame.columns) == TIDY_COLUMNS
    assert set(frame["term"]) == {"ratio_of_means"}
    assert list(frame["model"]) == [
        "negative_binomial_adjusted:therapist_clustered_se",
        "negative_binomial_adjusted:model_based_se",
        "negative_binomial_unadjusted:therapist_clustered_se",
        "poisson_adjusted:therapist_clustered_se",
    ]
    primary = frame.iloc[0]
    assert primary["ci_low"] == pytest.approx(
        math.exp(math.log(primary["estimate"]) - 1.959963984540054 * primary["std_error"]))
    assert (frame["n_clusters"] == 40).all()
    assert (frame["n_patients"] == 1200).all()


def test_descriptives_are_the_raw_per_arm_summaries():
    data = make_analysis(seed=3, n=300)
    result = fit_sessions_model(data, CONFIG)
    table = result.descriptives.set_index("arm")
    control = data.loc[data["arm_intervention"] == 0, "n_sessions"].astype(float)
    assert table.loc["usual care", "mean"] == pytest.approx(control.mean())
    assert table.loc["usual care", "sd"] == pytest.approx(control.std())
    assert table.loc["usual care", "median"] == control.median()
    assert table.loc["ETMI", "n"] + table.loc["usual care", "n"] == 300


def test_missing_counts_are_left_out_and_reported_not_zeroed():
    data = make_analysis(seed=4, n=400)
    data.loc[[0, 5, 9], "n_sessions"] = pd.NA
    result = fit_sessions_model(data, CONFIG)
    assert result.fits["nb_adjusted"].n_observations == 397
    # 3 patients, below report.min_cell_count: the note does not show the count
    assert any("<5 patient(s) without a session count" in w for w in result.model["warnings"])
    assert result.descriptives["n_missing"].sum() == 3


def test_clustered_se_exceeds_model_se_when_therapists_differ():
    result = fit_sessions_model(make_analysis(seed=5, therapist_sd=0.4), CONFIG)
    assert (_row(result, "negative_binomial_adjusted:therapist_clustered_se")["std_error"]
            > _row(result, "negative_binomial_adjusted:model_based_se")["std_error"])


def test_poisson_counts_push_theta_up_and_nb_agrees_with_poisson():
    result = fit_sessions_model(make_analysis(seed=6, theta=None, therapist_sd=0.0), CONFIG)
    nb = _row(result, "negative_binomial_adjusted:therapist_clustered_se")["estimate"]
    poisson = _row(result, "poisson_adjusted:therapist_clustered_se")["estimate"]
    assert nb == pytest.approx(poisson, rel=1e-3)
    assert result.model["dispersion"]["theta"] > 20
    if result.model["dispersion"]["theta"] >= 1e4:  # the NB maximum is at the Poisson boundary
        assert any("collapsed onto the Poisson" in w for w in result.model["warnings"])
        assert not result.estimates.iloc[0]["converged"]


def test_cr1_factor_and_singleton_clusters():
    bread = np.eye(2)
    scores = np.array([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.5], [0.5, -1.0]])
    vcov, groups = cluster_robust_vcov(bread, scores, np.array(["a", "a", "b", "c"]))
    summed = np.array([[2.0, 1.0], [-2.0, 0.5], [0.5, -1.0]])
    expected = 3 / 2 * 3 / 2 * summed.T @ summed
    assert groups == 3
    np.testing.assert_allclose(vcov, expected)


def test_cr1_factor_is_not_a_number_without_residual_degrees_of_freedom():
    from trial_analysis.models.robust import cr1_factor

    assert cr1_factor(10, 3, 4) == pytest.approx(4 / 3 * 9 / 7)
    # a saturated fit (n <= k) would give a negative or infinite factor: a negative variance
    for n, k in ((3, 3), (2, 3)):
        assert np.isnan(cr1_factor(n, k, 2))
    assert np.isnan(cr1_factor(10, 3, 1))


def test_theta_ml_recovers_known_dispersion():
    rng = np.random.default_rng(7)
    mu = np.full(20000, 4.0)
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    theta, messages = theta_ml(y, mu)
    assert theta == pytest.approx(2.0, rel=0.08)
    assert messages == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns="n_sessions"), "no 'n_sessions' column"),
        (lambda d: d.assign(n_sessions=pd.NA), "every session count is missing"),
        (lambda d: d[d["arm_intervention"] == 0], "no intervention patient"),
        (lambda d: d.assign(n_sessions=d["n_sessions"].where(d.index != 2, -1)),
         "cannot be negative"),
        (lambda d: d.assign(n_sessions=d["n_sessions"].astype(float).where(d.index != 1, 2.5)),
         "whole numbers"),
        (lambda d: d.drop(columns="age"), "no 'age' column"),
        (lambda d: d.assign(arm_intervention=d["arm_intervention"].where(d.index != 0, 2)),
         "arm_intervention must be 1"),
        (lambda d: d.assign(symptom_duration_weeks=4.0), "collinear or constant"),
    ],
)
def test_bad_input_raises_data_error_in_plain_words(change, message):
    data = change(make_analysis(seed=8, n=120))
    with pytest.raises(DataError, match=message) as error:
        fit_sessions_model(data, CONFIG, source="analysis.parquet")
    assert str(error.value).startswith("analysis.parquet")


def test_negative_count_error_names_the_row():
    data = make_analysis(seed=8, n=50)
    data.loc[4, "n_sessions"] = -3
    with pytest.raises(DataError) as error:
        fit_sessions_model(data, CONFIG)
    assert error.value.rows == [5]
    assert error.value.column == "n_sessions"


def test_run_sessions_writes_identical_files_twice(tmp_path):
    data_path = tmp_path / "analysis.parquet"
    make_analysis(seed=9, n=300).to_parquet(data_path, index=False)
    outputs = []
    for attempt in (1, 2):
        out_json, out_csv = tmp_path / f"s{attempt}.json", tmp_path / f"s{attempt}.csv"
        run_sessions(CONFIG, data_path, out_json, out_csv)
        outputs.append((out_json.read_bytes(), out_csv.read_bytes()))
    assert outputs[0] == outputs[1]
    document = json.loads(outputs[0][0])
    assert document["analysis"] == "sessions"
    assert {"estimates", "descriptives", "model"} <= set(document)
    assert "warnings" in document["model"]
    assert list(pd.read_csv(tmp_path / "s1.csv").columns) == TIDY_COLUMNS


def test_cli_runs_with_the_default_config(tmp_path):
    data_path = tmp_path / "analysis.parquet"
    make_analysis(seed=10, n=200).to_parquet(data_path, index=False)
    status = cli.main(["-q", "sessions", "--config", "config/config.yaml", "--analysis",
                       str(data_path), "--out-json", str(tmp_path / "sessions.json"),
                       "--out-csv", str(tmp_path / "sessions.csv")])
    assert status == 0
    assert (tmp_path / "sessions.csv").is_file()


def test_cli_reports_bad_input_without_output(tmp_path, capsys):
    data_path = tmp_path / "analysis.parquet"
    make_analysis(seed=10, n=50).drop(columns="n_sessions").to_parquet(data_path, index=False)
    status = cli.main(["sessions", "--config", "config/config.yaml", "--analysis",
                       str(data_path), "--out-json", str(tmp_path / "sessions.json"),
                       "--out-csv", str(tmp_path / "sessions.csv")])
    assert status == 2
    assert "n_sessions" in capsys.readouterr().err
    assert not (tmp_path / "sessions.json").exists()


@pytest.mark.slow
def test_clustered_interval_covers_the_true_ratio_about_95_percent():
    hits = 0
    replicates = 200
    for seed in range(replicates):
        row = fit_sessions_model(make_analysis(seed=1000 + seed, n=600, therapist_sd=0.3),
                                 CONFIG).estimates.iloc[0]
        hits += row["ci_low"] < TRUE_RATIO < row["ci_high"]
    assert 0.90 <= hits / replicates <= 0.99


def test_irls_convergence_is_relative_as_well_as_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 10^6 patients the deviance is ~10^6 and its rounding noise (~2e-10) exceeds the
    absolute tolerance: IRLS must also stop on a relative change, or it runs every iteration
    and reports no convergence (found on a 1M-patient extract)."""
    from statsmodels.genmod import families

    from trial_analysis.models import sessions

    seen: dict = {}
    real_fit = sessions.GLM.fit

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(sessions.GLM, "fit", spy)
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(500), rng.normal(size=500)])
    y = rng.poisson(np.exp(1 + 0.2 * X[:, 1])).astype(float)
    result, messages = sessions.fit_glm(X, y, families.Poisson())
    assert result.converged and not messages
    deviance_noise = 4 * np.finfo(float).eps * 1e6
    assert seen["rtol"] * 1e6 > deviance_noise
    # and small enough to leave the estimates of a small study as they were
    assert seen["rtol"] * 1e4 <= seen["tol"]
