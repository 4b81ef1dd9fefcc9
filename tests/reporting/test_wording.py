"""Tests for the design's wording (trial_analysis.reporting.wording) and its use in the report.

The two worked examples are the test beds: ``multisite_long`` (ANCOVA, clustered by site),
``randomised_wide`` (change score, a patient random intercept only), and the least-squares
variant of the first (one follow-up, no random effects). Each report rendered for a design is
scanned for the phrases that would misname what that design estimates.
"""

from __future__ import annotations

import copy
import re
import shutil

import pandas as pd
import pytest
from conftest import REPO
from report_fixtures import shared_outputs, visible_text

from trial_analysis.config import load_config
from trial_analysis.reporting.report import run_report, variance_tables
from trial_analysis.reporting.tables import table1_variables
from trial_analysis.reporting.wording import (
    ADJUSTED,
    CHANGE,
    design_wording,
    effect_term_label,
    figure_captions,
)

EXAMPLES = REPO / "config" / "examples"


def example(name: str) -> dict:
    return load_config(EXAMPLES / name / "config.yaml")


def least_squares(config: dict) -> dict:
    """An ANCOVA with one follow-up and no random effects: fitted by least squares."""
    config = copy.deepcopy(config)
    config["timepoints"] = {**config["timepoints"], "followups": [config["timepoints"]["primary"]]}
    config["timepoints"]["values"] = {k: v for k, v in config["timepoints"]["values"].items()
                                      if k in (config["timepoints"]["baseline"],
                                               config["timepoints"]["primary"])}
    config["analysis"]["random_effects"] = []
    config["analysis"]["baseline"] = "covariate"
    return config


# --------------------------------------------------------------------------------------------
# What each design estimates


def test_ancova_example_names_the_adjusted_score_and_its_clusters():
    words = design_wording(example("multisite_long"))
    assert words["quantity"] == ADJUSTED and words["axis"].startswith("Adjusted difference")
    assert words["model"] == "linear mixed model"
    assert words["clustered"] and words["cluster_level"] == "site"
    assert words["interaction"]  # two follow-ups: the effect differs by time
    assert "ANCOVA" in words["form"] and "change" not in words["form"]


def test_change_score_example_without_clustering():
    words = design_wording(example("randomised_wide"))
    assert words["quantity"] == CHANGE
    assert words["mixed"] and not words["clustered"]  # a patient intercept is not clustering
    assert words["form"] == "change score (mixed model)"
    assert effect_term_label(example("randomised_wide"), "arm:time") == "group × time"


def test_least_squares_fit_is_a_linear_regression_without_a_time_term():
    config = least_squares(example("multisite_long"))
    words = design_wording(config)
    assert words["model"] == "linear regression" and words["model_short"] == "linear model"
    assert not words["mixed"] and not words["clustered"]
    assert not words["interaction"]
    assert words["interaction_term"] == "group × subgroup"
    # The contract's row name stays arm:time; the reader sees the arm effect it is.
    assert effect_term_label(config, "arm:time") == "group"
    assert effect_term_label(config, "arm:time [sex=M]") == "group [sex=M]"
    assert effect_term_label(config, "risk_difference") == "risk difference"


def test_mmrm_example_is_named_an_mmrm_not_a_linear_regression():
    words = design_wording(example("randomised_mmrm"))
    assert words["mmrm"] and not words["mixed"] and not words["clustered"]
    assert words["model"] == "mixed model for repeated measures (MMRM, unstructured covariance)"
    assert words["form"] == "lagged outcome (ANCOVA, MMRM)"


def test_constant_change_score_effect_is_the_post_baseline_difference():
    config = copy.deepcopy(example("randomised_wide"))
    config["analysis"]["effect"] = "constant"
    assert effect_term_label(config, "arm:time") == "group × post-baseline"
    assert not design_wording(config)["interaction"]


def test_figure_captions_follow_the_design():
    base = {"flow": "Flow."}
    ancova = figure_captions(example("multisite_long"), base)
    assert ancova["flow"] == "Flow."
    assert ADJUSTED in ancova["forest"] and "mean change" not in ancova["forest"]
    assert "baseline score held at its mean" in ancova["trajectories"]
    assert "linear mixed model in complete cases" in ancova["trajectories"]
    change = figure_captions(example("randomised_wide"), base)
    assert CHANGE in change["forest"] and "subgroup levels" in change["forest"]
    ols = least_squares(example("multisite_long"))
    ols["analysis"]["subgroups"] = []
    captions = figure_captions(ols, base)
    assert "mixed model" not in captions["trajectories"]
    assert "linear regression" in captions["trajectories"]
    assert "subgroup" not in captions["forest"]


# --------------------------------------------------------------------------------------------
# Table 1 and Table 7


def test_table1_lists_declared_variables_in_config_order_never_the_arm():
    # randomised_wide maps a BMI column but never names it; its arm column is "group".
    assert table1_variables(example("randomised_wide")) == ["age", "sex", "smoker"]
    config = copy.deepcopy(example("randomised_wide"))
    config["input"]["tables"]["patients"]["variables"]["group"] = "category"
    config["analysis"]["covariates"] = ["smoker", "age"]
    assert table1_variables(config) == ["smoker", "age"]
    # the cluster id is declared (to reach the analysis table) but is not a characteristic
    assert table1_variables(example("multisite_long")) == ["age", "sex", "bmi"]


def test_variance_table_has_no_icc_without_random_effects():
    frame = pd.DataFrame({"outcome": ["koos", "koos"], "population": ["complete_case"] * 2,
                          "component": ["residual", "residual"],
                          "quantity": ["variance", "icc"], "value": ["0.0044123", "1.0"]})
    ols = variance_tables(frame, least_squares(example("multisite_long")))
    assert ols[0]["quantities"] == ("variance",)
    assert ols[0]["rows"][0]["cells"] == ["0.00441"]  # 3 significant digits, no "ICC 1.00"
    mixed = variance_tables(frame, example("multisite_long"))
    assert mixed[0]["rows"][0]["cells"] == ["0.00441", "1.00"]


# --------------------------------------------------------------------------------------------
# The rendered report, scanned per design

# Phrases that misname what a design estimates.
BANNED = {
    "ancova": ["difference in mean change", "mean change from baseline",
               "change score (mixed model)", "Difference between arms in mean change"],
    "least_squares": ["mixed model", "random intercepts for", "Clusters", "ICC", "× time",
                      "&times; time"],
    "unclustered": ["Clusters"],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


def _after_target_trial(html: str) -> str:
    """The report's visible text after the target-trial table, whose specification column
    quotes the config's (published) protocol verbatim."""
    return visible_text(html.split('<section id="design">', 1)[1])


def _render(run, config, tmp_path, *, empty=(), residual_only=False) -> str:
    """The fixture run's report under ``config``; tables in ``empty`` written without rows;
    ``residual_only``: the variance components of a least-squares fit (the residual)."""
    tables = tmp_path / "tables"
    shutil.copytree(run.tables, tables)
    if residual_only:
        frame = pd.read_csv(tables / "variance_components.csv")
        frame = frame[frame["component"] == "residual"].copy()
        frame.loc[frame["quantity"] == "icc", "value"] = 1.0
        frame.to_csv(tables / "variance_components.csv", index=False)
    for name in empty:
        path = tables / f"{name}.csv"
        path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n",
                        encoding="utf-8")
    out = tmp_path / "report.html"
    run_report(config=config, raw=run.raw, estimates=run.estimates, tables=tables,
               figures=run.figures, benchmarks=None, out=out)
    return out.read_text(encoding="utf-8")


def _with_design(run, baseline: str, random_effects: list[str]) -> dict:
    config = copy.deepcopy(run.config)
    config["analysis"]["baseline"] = baseline
    config["analysis"]["random_effects"] = random_effects
    config["analysis"]["random_time_effects"] = []
    config["sensitivity"]["analyses"] = []
    return config


def test_ancova_report_never_says_mean_change(run, tmp_path):
    html = _render(run, _with_design(run, "covariate", ["therapist", "patient"]), tmp_path)
    text = _after_target_trial(html)
    for phrase in BANNED["ancova"]:
        assert phrase not in text, phrase
    assert "adjusted for the baseline score" in text
    assert "associations between exposure and the follow-up outcome" in text
    assert "Clusters (therapist)" in text  # clustered: the column names its level


def test_least_squares_report_says_linear_regression_and_shows_no_clusters(run, tmp_path):
    config = _with_design(run, "covariate", [])
    html = _render(run, config, tmp_path, residual_only=True)
    assert "linear model per outcome (ANCOVA)" in visible_text(html)  # the emulation column
    text = _after_target_trial(html)
    for phrase in BANNED["least_squares"] + BANNED["ancova"]:
        assert phrase not in text, phrase
    assert "Statistical analysis: linear regression per outcome" in re.sub(r"\s+", " ", text)
    assert "no random effects (ordinary least squares)" in text
    assert "residual variance (score units squared) of the primary linear regression" in text


def test_unclustered_report_has_no_cluster_column(run, tmp_path):
    html = _render(run, _with_design(run, "timepoint", ["patient"]), tmp_path)
    text = _after_target_trial(html)
    for phrase in BANNED["unclustered"]:
        assert phrase not in text, phrase
    assert CHANGE in text
    assert "a random intercept per patient" in text and "nested random intercepts" not in text


def test_sections_without_content_are_left_out(run, tmp_path):
    config = copy.deepcopy(run.config)
    config["analysis"]["subgroups"] = []
    config["analysis"]["responders"]["outcomes"] = []
    html = _render(run, config, tmp_path, empty=("subgroup_estimates", "responders"))
    assert 'id="subgroups"' not in html and 'href="#subgroups"' not in html
    assert 'id="responders"' not in html and 'href="#responders"' not in html
    assert "Table 4." not in html and "Table 6." not in html
    assert "Figure 3." in html  # the forest plot moves to the main results
    numbers = [int(n) for n in re.findall(r"<h2>(\d+)\. ", html)]
    assert numbers == list(range(1, len(numbers) + 1))  # no gaps where sections were left out
    full = run.report.read_text(encoding="utf-8")
    assert len(re.findall(r"<h2>(\d+)\. ", full)) == len(numbers) + 2
