"""Tests of trial_analysis.models.outcome_models on simulated data with a known truth.

The data-generating function lives in tests/golden/make_golden_data.py (it also writes the
golden datasets): random intercepts for therapist, therapist x time and patient, a known
arm x time effect, follow-up missing at random.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import model_test_config

from trial_analysis.errors import ConfigError, DataError
from trial_analysis.models.lmm_inference import MixedDesign, SatterthwaiteInference
from trial_analysis.models.outcome_models import (
    TIDY_COLUMNS,
    fit_outcome_model,
    fit_subgroup_model,
    run_fit,
    run_fit_models,
    run_fit_subgroup,
)

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "make_golden_data", REPO / "tests" / "golden" / "make_golden_data.py")
make_golden_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden_data)
simulate_cohort = make_golden_data.simulate_cohort

TRUE_EFFECT = 4.0


@pytest.fixture(scope="module")
def config() -> dict:
    return model_test_config()


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate_cohort(36, (4, 10), effect=TRUE_EFFECT, seed=101)


@pytest.fixture(scope="module")
def primary(cohort, config):
    return fit_outcome_model(cohort, config, "function", "complete_case")


def test_recovers_known_effect(primary, cohort):
    effect = primary.effect
    assert effect["ci_low"] < TRUE_EFFECT < effect["ci_high"]
    assert primary.converged
    assert primary.inference == "satterthwaite"
    assert 0 < effect["df"] < primary.n_observations
    # Population: complete cases for this outcome only, two rows each.
    n_complete = int(cohort["complete_function"].sum())
    assert primary.n_patients == n_complete
    assert primary.n_observations == 2 * n_complete
    assert primary.n_clusters["therapist"] == cohort.loc[
        cohort["complete_function"] == 1, "therapist_id"].nunique()
    assert set(primary.variance_components) == {"therapist", "therapist:time", "patient",
                                                "residual"}
    assert sum(primary.icc.values()) == pytest.approx(1.0)


def test_tidy_frame_and_marginal_means(primary):
    frame = primary.to_frame()
    assert list(frame.columns) == TIDY_COLUMNS
    assert frame.equals(frame.sort_values(["model", "term"]).reset_index(drop=True))
    # covariates adjust level and change: each also enters as covariate x time
    assert {"(Intercept)", "arm", "time", "arm:time", "age", "sexM", "symptom_duration_weeks",
            "time:age", "time:sexM", "time:symptom_duration_weeks"} == set(frame["term"])
    mm = primary.marginal_means.set_index(["arm", "time"])["estimate"]
    # The difference in change between arms of the adjusted means is the arm x time effect.
    did = (mm[("ETMI", "discharge")] - mm[("ETMI", "intake")]
           - mm[("usual care", "discharge")] + mm[("usual care", "intake")])
    assert did == pytest.approx(primary.effect["estimate"], rel=1e-10)
    assert (primary.marginal_means["ci_low"] < primary.marginal_means["estimate"]).all()
    text = primary.summary()
    assert "Difference in mean change" in text and "therapist:time" in text


def test_all_available_uses_every_baseline(cohort, config):
    result = fit_outcome_model(cohort, config, "function", "all_available")
    assert result.n_patients == int(cohort["function_baseline"].notna().sum())
    assert result.n_observations == int(cohort["function_baseline"].notna().sum()
                                        + cohort["function_followup"].notna().sum())
    assert result.effect["ci_low"] < TRUE_EFFECT < result.effect["ci_high"]


def test_complete_case_is_per_outcome(cohort, config):
    data = cohort.copy()
    data.loc[data.index[:40], "pain_followup"] = np.nan
    data["complete_pain"] = (data["pain_baseline"].notna()
                             & data["pain_followup"].notna()).astype(int)
    result = fit_outcome_model(data, config, "pain", "complete_case")
    assert result.n_patients == int(data["complete_pain"].sum())
    assert result.n_patients != int(data["complete_function"].sum())


@pytest.mark.parametrize("levels,time_levels,components", [
    (["patient"], [], ["patient"]),
    (["clinic", "therapist", "patient"], ["therapist"],
     ["clinic", "therapist", "therapist:time", "patient"]),
])
def test_other_random_structures(cohort, config, levels, time_levels, components):
    cfg = copy.deepcopy(config)
    cfg["analysis"]["random_effects"] = levels
    cfg["analysis"]["random_time_effects"] = time_levels
    result = fit_outcome_model(cohort, cfg, "function", "complete_case")
    assert result.random_effects["components"] == components
    assert list(result.variance_components) == [*components, "residual"]
    assert "(1 | " + ":".join(levels) + ")" in result.formula


def test_satterthwaite_exact_for_balanced_cluster_design():
    # Balanced one-way random intercepts with a cluster-level covariate: the Satterthwaite df
    # of its coefficient is exactly (clusters - 2).
    rng = np.random.default_rng(3)
    m, k = 12, 5
    cluster = np.repeat(np.arange(m), k)
    x = rng.normal(size=m)[cluster]
    y = 1 + 0.5 * x + rng.normal(0, 1, m)[cluster] + rng.normal(0, 1, m * k)
    X = np.column_stack([np.ones(m * k), x])
    Z = sp.csc_matrix((np.ones(m * k), (np.arange(m * k), cluster)))
    design = MixedDesign(y=y, X=X, Z=Z, component=np.zeros(m, dtype=int),
                         component_names=["cluster"])
    from scipy.optimize import minimize_scalar
    theta = minimize_scalar(lambda t: design.profiled_reml(np.array([t])),
                            bounds=(0, 10), method="bounded",
                            options={"xatol": 1e-10}).x
    inference = SatterthwaiteInference.from_fit(design, np.array([theta]),
                                                design.sigma_at(np.array([theta])))
    assert inference.contrast(np.array([0.0, 1.0]))["df"] == pytest.approx(m - 2, rel=1e-5)


def test_stratified_fits_when_the_subgroup_is_also_a_covariate(cohort, config):
    """Depression is a covariate of the primary model and a subgroup: within a stratum it is
    constant, so the stratified fits must drop it rather than fail."""
    config = copy.deepcopy(config)
    config["analysis"]["covariates"] = ["age", "sex", "depression", "anxiety"]
    result = fit_subgroup_model(cohort, config, "function", "depression")
    assert set(result.stratified) == {"0", "1"}
    assert not [w for w in result.interaction.warnings if "not possible" in w]
    terms = set(result.stratified["1"].fixed_effects["term"])
    assert "anxiety" in terms and "depression" not in terms


def test_subgroup_model(cohort, config):
    result = fit_subgroup_model(cohort, config, "function", "depression")
    effects = result.subgroup_effects.set_index("level")
    assert list(effects.index) == ["0", "1"]
    # The level-0 contrast is the arm:time coefficient; level 1 adds the three-way term.
    fe = result.interaction.fixed_effects.set_index("term")["estimate"]
    assert effects.loc["0", "estimate"] == pytest.approx(fe["arm:time"])
    assert effects.loc["1", "estimate"] == pytest.approx(fe["arm:time"]
                                                         + fe["arm:time:depression1"])
    assert 0 <= result.heterogeneity["p_value"] <= 1
    assert set(result.stratified) == {"0", "1"}
    frame = result.to_frame()
    assert list(frame.columns) == TIDY_COLUMNS
    assert {"subgroup_interaction", "subgroup_contrast", "subgroup_difference",
            "subgroup_heterogeneity", "stratified"} == set(frame["model"])
    # Two time points: the difference between levels is the three-way coefficient itself.
    difference = frame[frame["model"] == "subgroup_difference"].iloc[0]
    assert difference["term"] == "arm:time [depression: 1 - 0]"
    assert difference["estimate"] == pytest.approx(fe["arm:time:depression1"], rel=1e-10)
    three_way = result.interaction.fixed_effects.set_index("term").loc["arm:time:depression1"]
    assert difference["std_error"] == pytest.approx(three_way["std_error"], rel=1e-10)
    assert "Heterogeneity" in result.summary()


@pytest.mark.parametrize("outcome,population,error", [
    ("walking", "complete_case", ConfigError),
    ("function", "everyone", ConfigError),
])
def test_unknown_outcome_or_population(cohort, config, outcome, population, error):
    with pytest.raises(error, match="not one of"):
        fit_outcome_model(cohort, config, outcome, population)


def test_unknown_subgroup(cohort, config):
    with pytest.raises(ConfigError, match="subgroup 'smoking'"):
        fit_subgroup_model(cohort, config, "function", "smoking")


def test_missing_column_is_data_error(cohort, config):
    with pytest.raises(DataError, match="function_followup"):
        fit_outcome_model(cohort.drop(columns="function_followup"), config, "function",
                          "complete_case")


def test_empty_arm_is_data_error(cohort, config):
    data = cohort.copy()
    data.loc[data["arm_intervention"] == 1, "complete_function"] = 0
    with pytest.raises(DataError, match="no intervention patients"):
        fit_outcome_model(data, config, "function", "complete_case")


def test_too_few_patients_is_data_error(cohort, config):
    with pytest.raises(DataError, match="only 6 patient"):
        fit_outcome_model(cohort[cohort["complete_function"] == 1].head(6), config,
                          "function", "complete_case")


def test_bad_random_structure_is_config_error(cohort, config):
    cfg = copy.deepcopy(config)
    cfg["analysis"]["random_effects"] = ["patient", "therapist"]
    with pytest.raises(ConfigError, match="outermost first"):
        fit_outcome_model(cohort, cfg, "function", "complete_case")


def test_missing_covariate_rows_are_reported_not_imputed(cohort, config):
    data = cohort.copy()
    data.loc[data.index[:5], "age"] = np.nan
    n_before = int((data["complete_function"] == 1).sum())
    dropped = int(((data["complete_function"] == 1) & data["age"].isna()).sum())
    result = fit_outcome_model(data, config, "function", "complete_case")
    assert result.n_patients == n_before - dropped
    assert any("missing age" in w for w in result.warnings)


def test_cli_entries_deterministic(tmp_path, cohort, config):
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    outputs = []
    for run in range(2):
        out_json, out_csv = tmp_path / f"{run}.json", tmp_path / f"{run}.csv"
        run_fit(config=config, analysis=path, outcome="function", population="complete_case",
                out_json=out_json, out_csv=out_csv)
        outputs.append((out_json.read_bytes(), out_csv.read_bytes()))
    assert outputs[0] == outputs[1]
    content = json.loads(outputs[0][0])
    assert content["model"]["fit_path"] == "fast_nested"  # chosen automatically
    assert {"formula", "random_effects", "method", "converged", "warnings",
            "variance_components", "icc"} <= set(content["model"])
    assert list(pd.read_csv(tmp_path / "0.csv").columns) == TIDY_COLUMNS
    assert len(content["marginal_means"]) == 4
    run_fit_subgroup(config=config, analysis=path, outcome="function", subgroup="anxiety",
                     out_json=tmp_path / "s.json", out_csv=tmp_path / "s.csv")
    sub = json.loads((tmp_path / "s.json").read_text())
    assert sub["subgroup"] == "anxiety" and sub["heterogeneity"]["num_df"] == 1


def test_a_subgroup_with_a_level_below_min_cell_count_is_not_reported(tmp_path, cohort,
                                                                      config):
    """Issue 19: a subgroup level of 3 patients was fitted and its N, estimates and warnings
    reached reports/. It is now not reported, and the file says why without the count."""
    path = tmp_path / "analysis.parquet"
    table = cohort.copy()
    complete = table.index[table["complete_case"] == 1]
    table["rare"] = 0
    table.loc[complete[:3], "rare"] = 1
    table.to_parquet(path, index=False)
    cfg = {**config, "analysis": {**config["analysis"], "subgroups": ["rare"]}}
    result = run_fit_subgroup(config=cfg, analysis=path, outcome="function", subgroup="rare",
                              out_json=tmp_path / "s.json", out_csv=tmp_path / "s.csv")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["estimates"] == [] and doc["subgroup_effects"] == []
    assert "fewer than 5 patients" in doc["not_reported"]
    assert "3" not in (tmp_path / "s.json").read_text().replace(str(path), "")
    assert pd.read_csv(tmp_path / "s.csv").empty
    assert result.reason == doc["not_reported"]
    # at min_cell_count 3 the same level is reported
    cfg["report"] = {**cfg["report"], "min_cell_count": 3}
    run_fit_subgroup(config=cfg, analysis=path, outcome="function", subgroup="rare",
                     out_json=tmp_path / "t.json", out_csv=tmp_path / "t.csv")
    assert "not_reported" not in json.loads((tmp_path / "t.json").read_text())


def test_fit_models_writes_every_model_of_an_outcome_as_the_single_fits_do(tmp_path, cohort,
                                                                         config):
    """The pipeline's fit job writes the files of each population and each subgroup, byte for
    byte as ``fit`` and ``fit-subgroup`` write them one at a time."""
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    config = {**config, "analysis": {**config["analysis"],
                                     "populations": ["complete_case", "all_available"],
                                     "subgroups": ["depression", "anxiety"]}}
    together = tmp_path / "together"
    results = run_fit_models(config=config, analysis=path, outcomes=["function"], out_dir=together)
    expected = ["function.complete_case", "function.all_available",
                "function.subgroup_depression", "function.subgroup_anxiety"]
    assert list(results) == expected
    assert sorted(p.name for p in together.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in expected for ext in ("json", "csv"))
    alone = tmp_path / "alone"
    alone.mkdir()
    for population in ("complete_case", "all_available"):
        stem = f"function.{population}"
        run_fit(config=config, analysis=path, outcome="function", population=population,
                out_json=alone / f"{stem}.json", out_csv=alone / f"{stem}.csv")
    for subgroup in ("depression", "anxiety"):
        stem = f"function.subgroup_{subgroup}"
        run_fit_subgroup(config=config, analysis=path, outcome="function", subgroup=subgroup,
                         out_json=alone / f"{stem}.json", out_csv=alone / f"{stem}.csv")
    for stem in expected:
        for ext in ("json", "csv"):
            assert (together / f"{stem}.{ext}").read_bytes() == (
                alone / f"{stem}.{ext}").read_bytes(), f"{stem}.{ext}"


def test_fit_models_writes_nothing_when_a_model_fails(tmp_path, cohort, config):
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    config = {**config, "analysis": {**config["analysis"], "subgroups": ["smoking"]}}
    # the primary models fit; the subgroup model then fails on its missing column
    with pytest.raises(DataError, match="smoking"):
        run_fit_models(config=config, analysis=path, outcomes=["function"],
                       out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_fit_models_gives_the_same_files_in_one_process_or_several(tmp_path, cohort, config):
    """The pipeline fits all outcomes in one job, spread over --jobs processes."""
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    outcomes = [o["name"] for o in config["outcomes"] if f"{o['name']}_baseline" in cohort]
    assert len(outcomes) >= 2
    config = {**config, "outcomes": [o for o in config["outcomes"] if o["name"] in outcomes]}
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    results = run_fit_models(config=config, analysis=path, out_dir=serial)
    run_fit_models(config=config, analysis=path, out_dir=parallel, jobs=3)
    assert {stem.split(".")[0] for stem in results} == set(outcomes)
    files = sorted(p.name for p in serial.iterdir())
    assert files == sorted(p.name for p in parallel.iterdir())
    assert len(files) == 2 * len(results)
    for name in files:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


def test_a_model_error_in_a_worker_process_reaches_the_user_as_itself(tmp_path, cohort, config):
    """A DataError raised in a worker (here a subgroup column that is missing) must arrive as
    the DataError the command line prints, not as a broken process pool."""
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    outcomes = [o for o in config["outcomes"] if f"{o['name']}_baseline" in cohort]
    config = {**config, "outcomes": outcomes,
              "analysis": {**config["analysis"], "subgroups": ["smoking"]}}
    with pytest.raises(DataError, match="smoking"):
        run_fit_models(config=config, analysis=path, out_dir=tmp_path / "out", jobs=2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_fit_models_refuses_an_unknown_outcome(tmp_path, cohort, config):
    path = tmp_path / "analysis.parquet"
    cohort.to_parquet(path, index=False)
    with pytest.raises(ConfigError, match="outcome 'mobility' is not one of"):
        run_fit_models(config=config, analysis=path, outcomes=["mobility"], out_dir=tmp_path)


def test_cli_missing_file(tmp_path, config):
    with pytest.raises(DataError, match="the analysis table does not exist"):
        run_fit(config=config, analysis=tmp_path / "nope.parquet", outcome="function",
                population="complete_case", out_json=tmp_path / "a.json",
                out_csv=tmp_path / "a.csv")


@pytest.mark.slow
def test_coverage_and_bias_over_replicates(config):
    """200 replicate cohorts: 95% CI coverage within 92-98 %, |bias| < 0.1 SE."""
    estimates, ses, covered = [], [], []
    for seed in range(200):
        data = simulate_cohort(30, (4, 12), effect=TRUE_EFFECT, seed=10_000 + seed)
        effect = fit_outcome_model(data, config, "function", "all_available").effect
        estimates.append(effect["estimate"])
        ses.append(effect["std_error"])
        covered.append(effect["ci_low"] <= TRUE_EFFECT <= effect["ci_high"])
    coverage = float(np.mean(covered))
    bias = float(np.mean(estimates) - TRUE_EFFECT)
    print(f"coverage {coverage:.3f}, bias {bias:.4f}, mean SE {np.mean(ses):.4f}, "
          f"empirical SD {np.std(estimates, ddof=1):.4f}")
    assert 0.92 <= coverage <= 0.98
    assert abs(bias) < 0.1 * float(np.mean(ses))
