"""Models for other study structures: several follow-ups, continuous time, the baseline as a
covariate (ANCOVA), clustering by a patient-level column, no random effects.

Agreement with R for these structures is in tests/models/test_golden_models.py; the tests here check
the layout, the term names, the estimand contrasts, the checks in plain words and the
presentation (effects table, trajectories over time) on the committed ``multitime`` dataset.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import model_test_config

from trial_analysis.config import _study_structure_problems, load_config
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.models.lmm_inference import FixedDfInference
from trial_analysis.models.outcome_models import (
    EFFECT_MODEL,
    EFFECT_TERM,
    fit_outcome_model,
    fit_subgroup_model,
    long_data,
    model_spec,
    run_fit,
)
from trial_analysis.reporting.figures import trajectories_figure
from trial_analysis.reporting.report import describe_random_effects
from trial_analysis.reporting.tables import effect_row, effects_by_followup, read_estimate_file

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "data"
MONTHS = {"m0": 0.0, "m1": 1.0, "m3": 3.0, "m6": 6.0, "m12": 12.0}
FOUR = ["m1", "m3", "m6", "m12"]


@pytest.fixture(scope="module")
def base_config() -> dict:
    return model_test_config()


@pytest.fixture(scope="module")
def trial() -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "multitime.csv")


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "cohort.csv")


def study(base: dict, followups=tuple(FOUR), primary=None, **analysis) -> dict:
    """The default config turned into the multitime trial's structure."""
    cfg = copy.deepcopy(base)
    cfg["timepoints"] = {"baseline": "m0", "followups": list(followups),
                         "values": {k: v for k, v in MONTHS.items()
                                    if k == "m0" or k in followups}}
    if primary:
        cfg["timepoints"]["primary"] = primary
    cfg["analysis"].update({"random_effects": ["patient"], "random_time_effects": [],
                            "subgroups": ["depression"], **analysis})
    return cfg


@pytest.fixture(scope="module")
def categorical(trial, base_config):
    return fit_outcome_model(trial, study(base_config), "function", "all_available")


def _coef(result, term: str) -> float:
    return float(result.fixed_effects.set_index("term").loc[term, "estimate"])


def _effects(result) -> pd.Series:
    return result.effects.set_index("term")["estimate"]


# ---------------------------------------------------------------------------------------------
# Long data


def test_long_data_has_every_time_point(trial, base_config):
    spec = model_spec(study(base_config), "function", "all_available")
    long, notes = long_data(trial, spec)
    assert list(long["time_label"].drop_duplicates().sort_values(key=lambda s: s.map(MONTHS))
                ) == ["m0", *FOUR]
    assert long.groupby("time_label")["time"].first().to_dict() == {
        "m0": 0, "m1": 1, "m3": 2, "m6": 3, "m12": 4}
    assert long.groupby("time_label")["time_value"].first().to_dict() == MONTHS
    observed = int(trial[["function_baseline", *[f"function__{f}" for f in FOUR]]]
                   .notna().sum().sum())
    assert len(long) == observed
    assert notes == []


def test_ancova_rows_are_follow_ups_with_baseline_covariate(trial, base_config):
    data = trial.copy()
    data.loc[data.index[:3], "function_baseline"] = np.nan
    cfg = study(base_config, baseline="covariate", random_effects=["site", "patient"])
    spec = model_spec(cfg, "function", "all_available")
    long, notes = long_data(data, spec)
    assert set(long["time_label"]) == set(FOUR)
    assert long["baseline"].notna().all()
    assert not long["patient_id"].isin(data["patient_id"].head(3)).any()
    # 3 patients, below report.min_cell_count: the note does not show the count
    assert any("<5 patient(s) with a follow-up but no baseline" in n for n in notes)
    merged = long.merge(data[["patient_id", "function_baseline"]], on="patient_id")
    np.testing.assert_array_equal(merged["baseline"], merged["function_baseline"])


# ---------------------------------------------------------------------------------------------
# Terms and the estimand


def test_two_time_points_keep_their_terms_and_the_effect_row_repeats_arm_time(cohort,
                                                                             base_config):
    result = fit_outcome_model(cohort, base_config, "function", "complete_case")
    frame = result.to_frame()
    lmm = frame[frame["model"] == "lmm"].set_index("term")
    assert {"time", "arm:time", "time:age", "time:sexM"} <= set(lmm.index)
    effect = frame[frame["model"] == EFFECT_MODEL]
    assert list(effect["term"]) == [EFFECT_TERM]
    for column in ("estimate", "std_error", "ci_low", "ci_high", "p_value", "df"):
        assert effect[column].iloc[0] == lmm.loc[EFFECT_TERM, column], column
    assert result.effect["estimate"] == pytest.approx(lmm.loc[EFFECT_TERM, "estimate"])
    assert effect_row(result.to_json_dict())["model"] == EFFECT_MODEL


def test_categorical_time_terms_and_effects(categorical):
    terms = set(categorical.fixed_effects["term"])
    assert {"timem1", "timem3", "timem6", "timem12", "arm:timem12", "timem12:sexM",
            "timem3:age"} <= terms
    assert "time" not in terms and "arm:time" not in terms
    effects = _effects(categorical)
    assert list(effects.index) == ["arm:time", "arm:time [m1]", "arm:time [m3]",
                                   "arm:time [m6]", "arm:time [m12]", "arm:time [overall]"]
    for label in FOUR:
        assert effects[f"arm:time [{label}]"] == pytest.approx(
            _coef(categorical, f"arm:time{label}"), rel=1e-12)
    assert effects["arm:time"] == effects["arm:time [m12]"]
    assert effects["arm:time [overall]"] == pytest.approx(
        np.mean([effects[f"arm:time [{f}]"] for f in FOUR]), rel=1e-12)
    # The average over follow-ups is more precise than any one of them.
    se = categorical.effects.set_index("term")["std_error"]
    assert se["arm:time [overall]"] < se[[f"arm:time [{f}]" for f in FOUR]].min()


def test_marginal_means_cover_every_time_point(categorical, base_config):
    means = categorical.marginal_means
    assert len(means) == 2 * 5
    wide = means.pivot(index="time", columns="arm", values="estimate")
    intervention, control = (base_config["allocation"]["intervention"],
                             base_config["allocation"]["control"])
    difference = wide[intervention] - wide[control]
    # Covariates sit at the same grid values in both arms, so the difference in change of the
    # adjusted means is the effect itself.
    assert difference["m12"] - difference["m0"] == pytest.approx(
        categorical.effect["estimate"], rel=1e-9)


def test_primary_follow_up_other_than_the_last(trial, base_config):
    result = fit_outcome_model(trial, study(base_config, primary="m6"), "function",
                               "all_available")
    effects = _effects(result)
    assert effects["arm:time"] == pytest.approx(effects["arm:time [m6]"])
    assert result.primary_followup == "m6"


def test_continuous_time_effect_is_slope_times_elapsed_time(trial, base_config):
    result = fit_outcome_model(trial, study(base_config, time="continuous"), "function",
                               "all_available")
    assert {"time", "arm:time", "time:age"} <= set(result.fixed_effects["term"])
    slope = _coef(result, "arm:time")
    effects = _effects(result)
    for label in FOUR:
        assert effects[f"arm:time [{label}]"] == pytest.approx(slope * MONTHS[label])
    assert result.effect["estimate"] == pytest.approx(slope * 12)
    # one parameter: every follow-up's effect has the same p-value (to rounding; issue 19)
    p_values = result.effects["p_value"].to_numpy()
    assert p_values == pytest.approx(np.full(len(p_values), p_values[0]), rel=1e-9)
    assert set(result.marginal_means["time"]) == set(MONTHS)


def test_ancova_effects(trial, base_config):
    cfg = study(base_config, followups=("m1", "m3", "m6"), baseline="covariate")
    result = fit_outcome_model(trial, cfg, "function", "all_available")
    terms = set(result.fixed_effects["term"])
    assert {"baseline", "timem3", "timem6", "arm:timem6"} <= terms and "timem1" not in terms
    effects = _effects(result)
    arm = _coef(result, "arm")
    assert effects["arm:time [m1]"] == pytest.approx(arm, rel=1e-12)
    assert effects["arm:time"] == pytest.approx(arm + _coef(result, "arm:timem6"), rel=1e-12)
    assert set(result.marginal_means["time"]) == {"m1", "m3", "m6"}
    assert "+ baseline +" in result.formula


def test_ancova_one_follow_up_without_random_effects_is_least_squares(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", random_effects=[], random_time_effects=[])
    result = fit_outcome_model(cohort, cfg, "function", "complete_case")
    assert result.model_name == "lm" and result.fit_path == "ols" and result.inference == "t"
    assert set(result.fixed_effects["term"]) == {"(Intercept)", "arm", "baseline", "age",
                                                 "sexM", "symptom_duration_weeks"}
    assert result.effect["estimate"] == pytest.approx(_coef(result, "arm"))
    assert result.variance_components.keys() == {"residual"}
    assert result.n_clusters == {} and result.to_frame()["n_clusters"].eq(
        result.n_patients).all()
    # Least squares by hand.
    data = cohort[cohort["complete_function"] == 1]
    X = np.column_stack([np.ones(len(data)), data["arm_intervention"],
                         data["function_baseline"], data["age"], data["sex"] == "M",
                         data["symptom_duration_weeks"]]).astype(float)
    beta, rss, *_ = np.linalg.lstsq(X, data["function_followup"].to_numpy(float), rcond=None)
    assert _coef(result, "arm") == pytest.approx(beta[1], rel=1e-10)
    assert result.effect["df"] == pytest.approx(len(data) - 6)
    assert result.variance_components["residual"] == pytest.approx(rss[0] / (len(data) - 6))
    assert "Linear model" in result.summary()


def test_fixed_df_f_test_is_the_squared_t_for_one_row():
    inference = FixedDfInference(beta=np.array([1.0, 2.0]), cov_beta=np.diag([0.25, 1.0]),
                                 df=20)
    t = inference.contrast(np.array([1.0, 0.0]))
    f = inference.f_test(np.array([[1.0, 0.0]]))
    assert f["F"] == pytest.approx(t["statistic"] ** 2)
    assert f["p_value"] == pytest.approx(t["p_value"])
    both = inference.f_test(np.eye(2))
    assert both["F"] == pytest.approx((1 / 0.25 + 4 / 1.0) / 2)
    assert both["den_df"] == 20


def test_random_time_effects_dropped_with_one_row_per_patient(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", random_effects=["therapist"],
                           random_time_effects=["therapist"])
    result = fit_outcome_model(cohort, cfg, "function", "complete_case")
    assert result.random_effects["components"] == ["therapist"]
    assert any("random_time_effects ['therapist'] dropped" in w for w in result.warnings)
    assert result.formula.endswith("+ (1 | therapist)")


# ---------------------------------------------------------------------------------------------
# Subgroups


def test_subgroup_effect_at_the_primary_follow_up(trial, base_config):
    cfg = study(base_config, followups=("m1", "m3", "m6"), baseline="covariate")
    result = fit_subgroup_model(trial, cfg, "function", "depression",
                                population="all_available")
    coef = result.interaction.fixed_effects.set_index("term")["estimate"]
    effects = result.subgroup_effects.set_index("level")["estimate"]
    assert effects["0"] == pytest.approx(coef["arm"] + coef["arm:timem6"], rel=1e-12)
    assert effects["1"] == pytest.approx(
        coef["arm"] + coef["arm:timem6"] + coef["arm:depression1"]
        + coef["arm:timem6:depression1"], rel=1e-12)
    assert result.heterogeneity["num_df"] == 1
    assert set(result.stratified) == {"0", "1"}
    rows = result.to_frame()
    assert set(rows["model"]) == {"subgroup_interaction", "subgroup_contrast",
                                  "subgroup_difference", "subgroup_heterogeneity", "stratified"}
    difference = rows[rows["model"] == "subgroup_difference"].iloc[0]
    assert difference["estimate"] == pytest.approx(effects["1"] - effects["0"], rel=1e-9)
    # One difference: its squared t is the heterogeneity F.
    t = difference["estimate"] / difference["std_error"]
    assert t**2 == pytest.approx(result.heterogeneity["F"], rel=1e-8)


def test_subgroup_without_random_effects(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", random_effects=[], random_time_effects=[],
                           subgroups=["depression"])
    result = fit_subgroup_model(cohort, cfg, "function", "depression",
                                population="complete_case")
    fixed = result.interaction.fixed_effects.set_index("term")
    # Heterogeneity: the single arm:depression1 term; F = t^2 on n - p df.
    assert result.heterogeneity["F"] == pytest.approx(
        (fixed.loc["arm:depression1", "estimate"]
         / fixed.loc["arm:depression1", "std_error"]) ** 2)
    assert result.heterogeneity["den_df"] == fixed.loc["arm", "df"]


# ---------------------------------------------------------------------------------------------
# Checks in plain words


@pytest.mark.parametrize(("analysis", "message"), [
    ({"random_effects": []}, "needs one row per patient"),
    ({"random_effects": ["patient", "site"]}, "innermost level and must come last"),
    ({"random_effects": ["site", "site", "patient"]}, "list each level once"),
    ({"random_effects": ["therapist", "clinic", "patient"]}, "list clinic before therapist"),
    ({"random_time_effects": ["site"]}, "must also be in analysis/random_effects"),
    ({"random_effects": ["site", "patient"], "random_time_effects": ["patient"]},
     "is the residual itself"),
])
def test_structure_problems_are_config_errors(trial, base_config, analysis, message):
    with pytest.raises(ConfigError, match=message):
        fit_outcome_model(trial, study(base_config, **analysis), "function", "all_available")


def test_patient_intercept_with_one_row_per_patient_is_a_config_error(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", random_effects=["patient"],
                           random_time_effects=[])
    with pytest.raises(ConfigError, match="cannot be told from the residual"):
        fit_outcome_model(cohort, cfg, "function", "complete_case")


def test_continuous_ancova_needs_two_follow_ups(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", time="continuous", random_effects=[],
                           random_time_effects=[])
    with pytest.raises(ConfigError, match="continuous time needs at least two follow-ups"):
        fit_outcome_model(cohort, cfg, "function", "complete_case")


def test_cluster_column_missing_is_a_data_error(trial, base_config):
    cfg = study(base_config, random_effects=["region", "patient"])
    with pytest.raises(DataError, match="required column.*region"):
        fit_outcome_model(trial, cfg, "function", "all_available")


def test_crossed_clusters_are_a_data_error(trial, base_config):
    data = trial.copy()
    # Therapists shared between sites: not nested.
    data["therapist_id"] = [f"T{i % 7}" for i in range(len(data))]
    cfg = study(base_config, random_effects=["site", "therapist", "patient"])
    with pytest.raises(DataError, match="must be nested.*therapist.*more than one site"):
        fit_outcome_model(data, cfg, "function", "all_available")
    # Ids unique within their site are fine.
    data["therapist_id"] = data["site"] + "-" + data["therapist_id"]
    result = fit_outcome_model(data, cfg, "function", "all_available")
    assert result.n_clusters["site"] == data["site"].nunique()


# ---------------------------------------------------------------------------------------------
# Files and presentation


def test_estimate_file_and_effects_table(tmp_path, trial, base_config):
    cfg = study(base_config)
    cfg["analysis"]["populations"] = ["all_available"]
    cfg["outcomes"] = [o for o in cfg["outcomes"] if o["name"] == "function"]
    path = tmp_path / "analysis.parquet"
    trial.to_parquet(path, index=False)
    run_fit(cfg, path, "function", "all_available", tmp_path / "function.all_available.json",
            tmp_path / "function.all_available.csv")
    document = json.loads((tmp_path / "function.all_available.json").read_text())
    effect_rows = [r for r in document["estimates"] if r["model"] == EFFECT_MODEL]
    assert [r["term"] for r in effect_rows] == sorted(
        ["arm:time", *[f"arm:time [{f}]" for f in FOUR], "arm:time [overall]"])
    doc = read_estimate_file(tmp_path / "function.all_available.json")
    assert effect_row(doc)["term"] == "arm:time" and effect_row(doc)["model"] == "effect"
    table = effects_by_followup({"primary": {("function", "all_available"): doc}}, cfg)
    assert list(table["followup"]) == [*FOUR, "overall"]
    assert list(table["primary"]) == [False, False, False, True, False]
    assert list(table["time_value"].iloc[:4]) == [MONTHS[f] for f in FOUR]
    primary = table[table["primary"]].iloc[0]
    assert primary["estimate"] == pytest.approx(effect_row(doc)["estimate"])

    figure = trajectories_figure({"primary": {("function", "all_available"): doc}}, cfg,
                                 "all_available")
    try:
        ax = figure.axes[0]
        assert list(ax.get_xticks()) == list(MONTHS.values())
        assert [t.get_text() for t in ax.get_xticklabels()] == list(MONTHS)
    finally:
        plt.close(figure)


def test_effects_table_with_one_follow_up(cohort, base_config, tmp_path):
    result = fit_outcome_model(cohort, base_config, "function", "complete_case")
    (tmp_path / "f.json").write_text(json.dumps(result.to_json_dict(), default=str))
    doc = read_estimate_file(tmp_path / "f.json")
    table = effects_by_followup({"primary": {("function", "complete_case"): doc}},
                                base_config)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["followup"] == base_config["timepoints"]["followup"] and row["primary"]
    assert row["estimate"] == pytest.approx(result.effect["estimate"])


def _trial_config_file(tmp_path: Path, **analysis) -> Path:
    """A validated-config YAML for the multitime trial (no therapists, arm as a column)."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["timepoints"] = {"baseline": "m0", "followups": FOUR, "values": MONTHS}
    raw["input"]["tables"]["patients"]["variables"] = {"site": "category"}
    raw["input"]["tables"]["therapists"] = raw["input"]["tables"]["sessions"] = None
    raw["allocation"].update(rule="column", column="arm")
    del raw["sensitivity"]  # its therapist analyses need the tables this study lacks
    raw["analysis"].update(covariates=["age", "sex"], subgroups=[], **analysis)
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fit_from_a_validated_trial_config(tmp_path, trial):
    config = load_config(_trial_config_file(
        tmp_path, random_effects=["site", "patient"], random_time_effects=["site"],
        time="continuous"))
    result = fit_outcome_model(trial, config, "function", "all_available")
    assert result.random_effects["components"] == ["site", "site:time", "patient"]
    assert result.n_clusters["site"] == trial["site"].nunique()
    assert len(result.effects) == 6


@pytest.mark.parametrize(("analysis", "timepoints"), [
    ({"random_effects": [], "random_time_effects": []}, None),
    ({"random_effects": ["patient", "site"], "random_time_effects": []}, None),
    ({"random_effects": ["patient"], "random_time_effects": ["site"]}, None),
    ({"random_effects": ["site", "patient"], "random_time_effects": ["patient"]}, None),
    ({"random_effects": ["site", "patient"], "random_time_effects": [],
      "baseline": "covariate"}, {"baseline": "m0", "followup": "m12"}),
])
def test_model_checks_word_problems_as_the_config_check_does(trial, base_config, analysis,
                                                             timepoints):
    """model_spec repeats config._study_structure_problems' random-effects rules verbatim."""
    cfg = study(base_config, **analysis)
    if timepoints:
        cfg["timepoints"] = timepoints
    cfg["input"]["tables"]["patients"]["variables"] = {"site": "category"}
    expected = _study_structure_problems(cfg)
    with pytest.raises(ConfigError) as caught:
        model_spec(cfg, "function", "all_available")
    assert caught.value.problems
    for problem in caught.value.problems:
        # Same rule, same words (model_spec may add the levels it got).
        assert any(problem.startswith(p) for p in expected), (problem, expected)


def test_report_names_a_model_without_random_effects(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["analysis"].update(baseline="covariate", random_effects=[], random_time_effects=[])
    result = fit_outcome_model(cohort, cfg, "function", "complete_case")
    assert describe_random_effects(result.random_effects) == "none (least squares)"


def test_subgroup_difference_is_taken_at_the_primary_follow_up(trial, base_config):
    """With several follow-ups the difference between levels is that of the within-level
    effects at the primary follow-up, not a three-way coefficient (which compares times)."""
    from trial_analysis.reporting.tables import interaction_row

    cfg = study(base_config, random_effects=["site", "patient"], random_time_effects=[],
                subgroups=["depression"])
    result = fit_subgroup_model(trial, cfg, "function", "depression", stratified=False)
    effects = result.subgroup_effects.set_index("level")["estimate"]
    frame = result.to_frame()
    row = interaction_row({"estimates": frame.to_dict("records")}, "depression")
    assert row["model"] == "subgroup_difference"
    assert row["estimate"] == pytest.approx(effects["1"] - effects["0"], rel=1e-9)


def test_unit_counts_follow_the_nested_path_not_the_bare_ids(trial, base_config):
    """Patient ids reused within each site are different patients; a therapist id reused in
    two sites is two therapists (lme4's site/therapist): counts on integer codes agree with
    counting the id paths as text."""
    from trial_analysis.models.outcome_models import (
        long_data,
        model_spec,
        random_design,
        unit_codes,
    )

    data = trial.copy()
    data["therapist_id"] = data["site"] + "-T" + (np.arange(len(data)) % 3).astype(str)
    cfg = study(base_config, random_effects=["site", "therapist", "patient"],
                random_time_effects=["site"])
    spec = model_spec(cfg, "function", "all_available")
    long, _ = long_data(data, spec)
    codes = unit_codes(long, spec)
    rand = random_design(long, spec)
    for name, keys in rand.unit_keys.items():
        assert rand.n_units[name] == len(set(keys)), name
        # same partition of the rows: codes and text keys group rows identically
        assert len(set(zip(codes[name], keys, strict=True))) == len(set(keys)), name
    assert rand.n_units["site"] == data["site"].nunique()


# ---------------------------------------------------------------------------------------------
# analysis.effect: constant (one arm effect over every follow-up; against R in the golden tests)


def test_constant_effect_is_one_row_with_time_kept(trial, base_config):
    result = fit_outcome_model(trial, study(base_config, effect="constant"), "function",
                               "all_available")
    terms = set(result.fixed_effects["term"])
    assert {"arm", "timem1", "timem12", "arm:post"} <= terms
    assert not any(t.startswith("arm:time") for t in terms)
    assert list(result.effects["term"]) == [EFFECT_TERM]
    assert result.effect["estimate"] == pytest.approx(_coef(result, "arm:post"), rel=1e-12)
    assert "arm:post" in result.formula and "arm * time" not in result.formula
    # Marginal means: the arm difference is the arm main effect at baseline, and the main
    # effect plus the constant effect at every follow-up.
    means = result.marginal_means.set_index(["time", "arm"])["estimate"]
    control, intervention = base_config["allocation"]["control"], \
        base_config["allocation"]["intervention"]
    for label in FOUR:
        assert means[(label, intervention)] - means[(label, control)] == pytest.approx(
            _coef(result, "arm") + _coef(result, "arm:post"), rel=1e-9)
    assert means[("m0", intervention)] - means[("m0", control)] == pytest.approx(
        _coef(result, "arm"), rel=1e-9)


def test_constant_effect_with_two_time_points_is_the_by_time_model(cohort, base_config):
    cfg = copy.deepcopy(base_config)
    by_time = fit_outcome_model(cohort, cfg, "function", "complete_case")
    cfg["analysis"]["effect"] = "constant"
    constant = fit_outcome_model(cohort, cfg, "function", "complete_case")
    pd.testing.assert_frame_equal(constant.fixed_effects, by_time.fixed_effects)
    assert constant.formula == by_time.formula


def test_constant_effect_in_a_subgroup_model(trial, base_config):
    cfg = study(base_config, followups=("m1", "m3", "m6"), baseline="covariate",
                effect="constant")
    result = fit_subgroup_model(trial, cfg, "function", "depression",
                                population="all_available", stratified=False)
    coef = result.interaction.fixed_effects.set_index("term")["estimate"]
    assert not any(t.startswith("arm:time") for t in coef.index)
    effects = result.subgroup_effects.set_index("level")["estimate"]
    assert effects["0"] == pytest.approx(coef["arm"], rel=1e-12)
    assert effects["1"] == pytest.approx(coef["arm"] + coef["arm:depression1"], rel=1e-12)
    assert result.heterogeneity["num_df"] == 1


def test_constant_effect_table_has_one_row_for_all_follow_ups(tmp_path, trial, base_config):
    cfg = study(base_config, effect="constant")
    cfg["analysis"]["populations"] = ["all_available"]
    cfg["outcomes"] = [o for o in cfg["outcomes"] if o["name"] == "function"]
    path = tmp_path / "analysis.parquet"
    trial.to_parquet(path, index=False)
    run_fit(cfg, path, "function", "all_available", tmp_path / "f.json", tmp_path / "f.csv")
    doc = read_estimate_file(tmp_path / "f.json")
    table = effects_by_followup({"primary": {("function", "all_available"): doc}}, cfg)
    assert list(table["followup"]) == ["all follow-ups"]
    assert table["estimate"].iloc[0] == pytest.approx(effect_row(doc)["estimate"])
