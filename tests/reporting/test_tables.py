"""Tests for the report tables (trial_analysis.reporting.tables)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from report_fixtures import REPO, shared_inputs

from trial_analysis.config import load_config
from trial_analysis.errors import DataError
from trial_analysis.reporting.tables import (
    TABLE_NAMES,
    effect_direction,
    effect_row,
    fmt_ci,
    ratio_direction,
    reproduction_table,
    run_tables,
    subgroup_rows,
    table_one,
)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_inputs(tmp_path_factory.getbasetemp())


@pytest.fixture()
def config():
    return copy.deepcopy(load_config(REPO / "config" / "config.yaml"))


def small_frame(config) -> pd.DataFrame:
    """Ten patients per arm with values that are easy to check by hand."""
    intervention, control = config["allocation"]["intervention"], config["allocation"]["control"]
    frame = pd.DataFrame({
        "arm": [intervention] * 10 + [control] * 10,
        "age": [30, 40, 50, 60, 70, 30, 40, 50, 60, 70] + [40] * 5 + [70] * 5,
        "sex": ["F"] * 5 + ["M"] * 5 + ["F"] * 5 + ["M"] * 5,
        "depression": [1, 1] + [0] * 8 + [1] * 6 + [0] * 4,
        "anxiety": [1] * 5 + [0] * 5 + [1] * 5 + [0] * 5,
        "bmi": [25.0] * 10 + [30.0] * 10,
        "symptom_duration_weeks": [10.0] * 20,
        "ses_score": [5.0] * 20,
    })
    for outcome in config["outcomes"]:
        frame[f"{outcome['name']}_baseline"] = 50.0
    return frame


def cell(table, variable, column, level=""):
    rows = table[(table["variable"] == variable) & (table["level"] == level)]
    assert len(rows) == 1, (variable, level)
    return rows.iloc[0][column]


def test_table_one_values_by_hand(config):
    table = table_one(small_frame(config), config)
    # Intervention ages 30..70 twice: mean 50, SD sqrt(2000/9) = 14.9; control 40 x5, 70 x5:
    # mean 55, SD sqrt(2250/9) = 15.8; SMD |50 - 55| / sqrt((222.2 + 250) / 2) = 0.325.
    assert cell(table, "Age, years", "intervention") == "50.0 (14.9)"
    assert cell(table, "Age, years", "control") == "55.0 (15.8)"
    assert cell(table, "Age, years", "overall") == "52.5 (15.2)"
    assert abs(float(cell(table, "Age, years", "smd"))) == pytest.approx(0.325, abs=1e-3)
    assert cell(table, "Patients", "intervention") == "10"
    assert cell(table, "Patients", "overall") == "20"
    assert cell(table, "Sex", "intervention", "female") == "5 (50.0)"
    assert cell(table, "Sex", "control", "male") == "5 (50.0)"
    assert cell(table, "Anxiety", "overall", "yes") == "10 (50.0)"
    assert cell(table, "Anxiety", "missing", "yes") == "0"


def test_table_one_with_a_negligible_smd_does_not_crash(config):
    """Issue 19: tableone prints an SMD below 0.0005 as "<0.001"; Table 1 took the SMD from
    that text and `tables` died. The SMD now comes from tableone's numbers."""
    frame = small_frame(config)
    frame["age"] = [30, 40, 50, 60, 70] * 4           # the same ages in both arms: SMD 0
    frame["bmi"] = [25.0, 30.0] * 5 + [25.0, 30.0001] * 5   # |SMD| about 4e-5
    table = table_one(frame, config)
    assert cell(table, "Age, years", "smd") == "<0.001"
    assert cell(table, "Body-mass index, kg/m²", "smd") == "<0.001"
    assert cell(table, "Anxiety", "smd", "yes") == "<0.001"  # 5 of 10 in each arm
    # a constant column has no SMD at all
    assert cell(table, "Symptom duration, weeks", "smd") == ""


def test_table_one_labels_declared_variables_by_the_files_variable_labels(config):
    frame = small_frame(config).assign(durdis=[float(i % 7) for i in range(20)],
                                       smoker=[0, 1] * 10,
                                       region=["N", "S"] * 10)
    config["input"]["tables"]["patients"]["variables"] = {
        "durdis": "number", "smoker": "flag", "region": "category"}
    # What clean keeps from a SAS/Stata/SPSS patients file; bmi is built in (own label), and
    # a file label equal to another row's label is not taken twice.
    frame.attrs["variable_labels"] = {"durdis": "Duration of episode (months)",
                                      "smoker": "Current smoker", "bmi": "BMI (kg/m2)",
                                      "region": "Current smoker"}
    table = table_one(frame, config)
    variables = list(dict.fromkeys(table["variable"]))
    assert "Duration of episode (months)" in variables and "durdis" not in variables
    assert cell(table, "Current smoker", "overall", "yes") == "10 (50.0)"
    assert "Region" in variables  # its file label is already taken
    assert "Body-mass index, kg/m²" in variables and "BMI (kg/m2)" not in variables
    # Without file labels a declared variable is shown by its readable label (its name).
    frame.attrs = {}
    assert "Durdis" in set(table_one(frame, config)["variable"])


def test_table_one_suppresses_small_cells_and_their_complements(config):
    table = table_one(small_frame(config), config)
    # Two depressed patients in the intervention arm: shown as <5, never as a number.
    assert cell(table, "Depression", "intervention", "yes") == "<5"
    for column in ("overall", "intervention", "control"):
        for level in ("yes", "no"):
            value = cell(table, "Depression", column, level)
            assert value in {"<5", "suppressed"}, (column, level, value)
    assert cell(table, "Depression", "smd", "yes") == "suppressed"
    # Other variables are untouched.
    assert cell(table, "Anxiety", "intervention", "yes") == "5 (50.0)"
    text = table.to_csv()
    assert " 2 (" not in text and ",2 (" not in text


def test_table_one_suppresses_sparse_continuous(config):
    frame = small_frame(config)
    frame.loc[3:9, "bmi"] = np.nan  # only 3 observed values in the intervention arm
    table = table_one(frame, config)
    for column in ("overall", "intervention", "control", "smd"):
        assert cell(table, "Body-mass index, kg/m²", column) == "suppressed"
    assert cell(table, "Body-mass index, kg/m²", "missing") == "7"


def test_table_one_median_iqr(config):
    config["report"]["continuous_summary"] = "median_iqr"
    table = table_one(small_frame(config), config)
    assert cell(table, "Age, years", "statistic") == "median [Q1, Q3]"
    assert cell(table, "Age, years", "control")== "55.0 [40.0,70.0]"


def test_threshold_is_configurable(config):
    config["report"]["min_cell_count"] = 2
    table = table_one(small_frame(config), config)
    assert cell(table, "Depression", "intervention", "yes") == "2 (20.0)"


@pytest.mark.parametrize(
    ("low", "high", "higher_is_better", "expected"),
    [
        (1.0, 3.0, True, "favours_intervention"),
        (-3.0, -1.0, False, "favours_intervention"),
        (-3.0, -1.0, True, "favours_control"),
        (1.0, 3.0, False, "favours_control"),
        (-1.0, 3.0, True, "no_difference"),
    ],
)
def test_effect_direction(low, high, higher_is_better, expected):
    assert effect_direction(low, high, higher_is_better) == expected


def test_ratio_direction():
    assert ratio_direction(0.6, 0.9) == "fewer_in_intervention"
    assert ratio_direction(1.1, 1.4) == "more_in_intervention"
    assert ratio_direction(0.8, 1.2) == "no_difference"


def test_effect_row_is_tolerant_of_term_names():
    rows = [{"term": "Intercept", "estimate": 1, "ci_low": 0, "ci_high": 2},
            {"term": "arm[T.ETMI]:time[T.discharge]", "estimate": 4, "ci_low": 2, "ci_high": 6}]
    assert effect_row({"estimates": rows})["estimate"] == 4
    with pytest.raises(DataError, match="arm x time"):
        effect_row({"estimates": rows[:1], "_file": "x.json"})


def test_subgroup_rows_reads_levels_and_heterogeneity():
    doc = {"estimates": [
        {"term": "arm:time | depression=0", "estimate": 1, "ci_low": 0, "ci_high": 2},
        {"term": "arm:time", "level": "depression", "estimate": 3, "ci_low": 1, "ci_high": 5},
        {"term": "heterogeneity", "estimate": 2, "ci_low": 0, "ci_high": 4, "p_value": 0.04},
    ]}
    levels, p = subgroup_rows(doc, "depression")
    assert [r["level"] for r in levels] == ["0", "depression"]
    assert p == 0.04


def test_subgroup_rows_prefers_interaction_contrasts_over_stratified_fits():
    """The layout models.py writes: interaction-model terms, contrasts, F test, strata."""
    def row(model, term, estimate, p=0.5):
        return {"model": model, "term": term, "estimate": estimate, "ci_low": estimate - 1,
                "ci_high": estimate + 1, "p_value": p}

    doc = {"estimates": [
        row("stratified", "arm:time [anxiety=0]", 9.0),
        row("stratified", "arm:time [anxiety=1]", 9.5),
        row("subgroup_contrast", "arm:time [anxiety=0]", 4.0),
        row("subgroup_contrast", "arm:time [anxiety=1]", 5.0),
        {**row("subgroup_heterogeneity", "heterogeneity F [anxiety]", 1.7, 0.19),
         "ci_low": None, "ci_high": None},
        row("subgroup_interaction", "arm:time", 4.0),
        row("subgroup_interaction", "arm:time:anxiety", 1.0, 0.19),
    ]}
    levels, p = subgroup_rows(doc, "anxiety")
    assert [(r["level"], r["estimate"]) for r in levels] == [("0", 4.0), ("1", 5.0)]
    assert p == 0.19
    from trial_analysis.reporting.tables import interaction_row

    assert interaction_row(doc, "anxiety")["estimate"] == 1.0


def test_run_tables_writes_every_table(run):
    for name in TABLE_NAMES:
        assert (run.tables / f"{name}.csv").stat().st_size > 0
    primary = pd.read_csv(run.tables / "primary_estimates.csv")
    doc = json.loads((run.estimates / "function.complete_case.json").read_text())
    row = next(r for r in doc["estimates"] if r["term"] == "arm:time")
    got = primary[(primary.outcome == "function") & (primary.population == "complete_case")]
    assert got["estimate"].iloc[0] == pytest.approx(row["estimate"])
    assert got["true_value"].iloc[0] == 4.0
    subgroups = pd.read_csv(run.tables / "subgroup_estimates.csv", dtype={"level": str})
    assert set(subgroups["level"]) == {"0", "1", "heterogeneity"}
    assert subgroups["p_heterogeneity"].notna().all()
    variance = pd.read_csv(run.tables / "variance_components.csv")
    assert {"variance", "icc"} <= set(variance["quantity"])


def test_reproduction_counts_and_marks(run):
    table = pd.read_csv(run.tables / "reproduction.csv", dtype=str, keep_default_na=False)
    analysis = pd.read_parquet(run.analysis)
    counts = table[table["kind"] == "count"].set_index("item")
    assert counts.loc["eligible_patients", "reproduced"] == str(len(analysis))
    assert counts.loc["complete_cases_etmi", "reproduced"] == str(
        int(((analysis.complete_case == 1) & (analysis.arm_intervention == 1)).sum()))
    # The fixture cohort is small, so the published 4193 is (correctly) not matched.
    assert counts.loc["eligible_patients", "match"] == "no"
    assert counts.loc["eligible_patients", "true_value"] == str(len(analysis))  # truth counts
    directions = table[table["kind"] == "direction"].set_index("item")
    doc = json.loads((run.estimates / "fear_avoidance.complete_case.json").read_text())
    row = next(r for r in doc["estimates"] if r["term"] == "arm:time")
    expected = effect_direction(row["ci_low"], row["ci_high"], False)
    assert directions.loc["fear_avoidance", "reproduced"] == expected
    assert directions.loc["fear_avoidance", "match"] == (
        "yes" if expected == "favours_intervention" else "no")
    estimate = table[table["kind"] == "estimate"].iloc[0]
    doc = json.loads((run.estimates / "function.complete_case.json").read_text())
    row = next(r for r in doc["estimates"] if r["term"] == "arm:time")
    assert fmt_ci(row["ci_low"], row["ci_high"]) in estimate["reproduced"]
    assert estimate["match"] == ("yes" if row["ci_low"] <= 4.0 <= row["ci_high"] else "no")


def test_published_estimate_match_rule(run):
    config = copy.deepcopy(run.config)
    doc = json.loads((run.estimates / "function.complete_case.json").read_text())
    row = next(r for r in doc["estimates"] if r["term"] == "arm:time")
    from trial_analysis.reporting.tables import load_estimates

    estimates = load_estimates(run.estimates, config)
    analysis = pd.read_parquet(run.analysis)
    for published, expected in ((row["estimate"], "yes"), (row["ci_high"] + 1.0, "no")):
        config["published"]["estimates"] = [
            {"outcome": "function", "population": "complete_case", "estimate": published}]
        table = reproduction_table(analysis, estimates, config, run.tables, None)
        assert table[table["kind"] == "estimate"]["match"].iloc[0] == expected
        # Without truth.json (real data) no true values are shown.
        assert (table["true_value"] == "").all()


def test_broken_estimate_file_raises_and_writes_nothing(run, tmp_path):
    estimates = tmp_path / "estimates"
    estimates.mkdir()
    for path in run.estimates.glob("*.json"):
        doc = json.loads(path.read_text())
        if path.name == "pain.all_available.json":
            for r in doc["estimates"]:
                del r["ci_low"]
        (estimates / path.name).write_text(json.dumps(doc))
    out = tmp_path / "tables"
    out.mkdir()
    for name in ("flow.csv", "implementation.csv"):
        (out / name).write_bytes((run.tables / name).read_bytes())
    with pytest.raises(DataError, match="ci_low") as info:
        run_tables(config=run.config, analysis=run.analysis, estimates=estimates, out=out)
    assert "pain.all_available.json" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["flow.csv", "implementation.csv"]


def test_missing_analysis_column_is_a_data_error(run, tmp_path):
    analysis = pd.read_parquet(run.analysis).drop(columns=["function_followup"])
    path = tmp_path / "analysis.parquet"
    analysis.to_parquet(path)
    with pytest.raises(DataError, match="function_followup"):
        run_tables(config=run.config, analysis=path, estimates=run.estimates, out=tmp_path)


def test_tables_are_deterministic(run, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    for name in ("flow.csv", "implementation.csv"):
        (out / name).write_bytes((run.tables / name).read_bytes())
    run_tables(config=run.config, analysis=run.analysis, estimates=run.estimates, out=out)
    for name in TABLE_NAMES:
        assert (out / f"{name}.csv").read_bytes() == (run.tables / f"{name}.csv").read_bytes()


def test_reproduction_says_what_was_and_was_not_compared(run):
    """Counts built into the simulated cohort match by construction; effect sizes that are not
    public get a row saying they were not compared, and why."""
    from trial_analysis.reporting.tables import EVIDENCE, load_estimates, load_truth

    config = copy.deepcopy(run.config)
    config["published"]["estimates"] = []
    estimates = load_estimates(run.estimates, config)
    analysis = pd.read_parquet(run.analysis)
    table = reproduction_table(analysis, estimates, config, run.tables, load_truth(run.raw))
    counts = table[table["kind"] == "count"].set_index("item")
    assert counts.loc["eligible_patients", "evidence"] == EVIDENCE["target"]
    directions = table[table["kind"] == "direction"].set_index("item")
    assert directions.loc["function", "evidence"] == EVIDENCE["planted"]
    missing = table[table["kind"] == "not_compared"]
    assert list(missing["item"]) == ["effect sizes"]
    assert "not public" in missing["evidence"].iloc[0]
    # Real data (no truth.json): a recount and a direction, neither built in.
    table = reproduction_table(analysis, estimates, config, run.tables, None)
    assert set(table.loc[table["kind"] == "count", "evidence"]) <= {
        EVIDENCE["recount"], EVIDENCE["not_computed"]}
    assert set(table.loc[table["kind"] == "direction", "evidence"]) == {EVIDENCE["direction"]}


def test_fmt_sig_gives_three_significant_digits():
    from trial_analysis.reporting.tables import fmt_sig

    assert [fmt_sig(v) for v in (160.17, 0.19, 7.6, 1234.5, 0.006981, -2.345, 0)] == [
        "160", "0.190", "7.60", "1230", "0.00698", "-2.35", "0"]
    assert fmt_sig(float("nan")) == "–" and fmt_sig(None) == "–"


def test_a_subgroup_not_reported_gives_one_row_saying_so(config):
    from trial_analysis.reporting.tables import subgroup_estimates

    doc = {"outcome": "function", "population": "complete_case", "subgroup": "rare",
           "not_reported": "not reported: a level of subgroup 'rare' has fewer than 5 patients",
           "estimates": [], "model": {}, "marginal_means": []}
    table = subgroup_estimates({"subgroups": {("function", "rare"): doc}}, config, None)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["level"] == "not reported" and "fewer than 5" in row["warnings"]
    assert pd.isna(row["estimate"]) and pd.isna(row["n_patients"])


def test_holm_adjusts_over_every_outcome_by_subgroup_test_once():
    """Three tests (two outcomes x subgroups, levels repeated): Holm by hand is
    0.01*3 = 0.03, max(0.03*2, 0.03) = 0.06, max(0.04*1, 0.06) = 0.06; a missing p stays
    missing and is not counted as a test."""
    from trial_analysis.reporting.tables import heterogeneity_tests, holm_heterogeneity

    table = pd.DataFrame({
        "outcome": ["function"] * 4 + ["pain"] * 3,
        "subgroup": ["depression", "depression", "anxiety", "anxiety", "depression",
                     "depression", "rare"],
        "p_heterogeneity": [0.01, 0.01, 0.04, 0.04, 0.03, 0.03, np.nan],
    })
    assert len(heterogeneity_tests(table)) == 3
    adjusted = holm_heterogeneity(table)
    np.testing.assert_allclose(adjusted.iloc[:6], [0.03, 0.03, 0.06, 0.06, 0.06, 0.06],
                               rtol=1e-12)
    assert np.isnan(adjusted.iloc[6])


def test_subgroup_table_has_a_holm_column_no_smaller_than_the_raw_p(run):
    table = pd.read_csv(run.tables / "subgroup_estimates.csv")
    finite = table.dropna(subset=["p_heterogeneity"])
    assert len(finite) > 0
    assert (finite["p_heterogeneity_holm"] >= finite["p_heterogeneity"] - 1e-12).all()
    assert (finite["p_heterogeneity_holm"] <= 1.0).all()
