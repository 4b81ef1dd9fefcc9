"""Tests of the target-trial table: every TARGET component, the emulation's counts, wording."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from trial_analysis.cohort.eligibility import REASON_UNTRAINED, make_flow_frame
from trial_analysis.config import load_config
from trial_analysis.reporting.target_trial import TARGET_TRIAL_COLUMNS, target_trial_table

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
COMPONENTS = ["Eligibility", "Treatment strategies", "Assignment", "Time zero", "Follow-up",
              "Outcome", "Causal contrast", "Estimand", "Analysis plan", "Population analysed"]


@pytest.fixture(scope="module")
def base_config() -> dict:
    return load_config(CONFIG_FILE)


def _flow(untrained: int | None) -> pd.DataFrame:
    rows = [{"step": "eligibility", "description": "excluded as ineligible", "n": 120,
             "n_excluded": 3, "reason": "age under 18"}]
    if untrained is not None:
        rows.append({"step": "eligibility", "description": "excluded as ineligible",
                     "n": 100, "n_excluded": untrained, "reason": REASON_UNTRAINED})
    rows.append({"step": "eligibility", "description": "eligible patients", "n": 100,
                 "n_excluded": pd.NA, "reason": pd.NA})
    return make_flow_frame(rows)


def _rows(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {r.component: r for r in table.itertuples(index=False)}


def test_every_component_in_target_order(base_config):
    table = target_trial_table(base_config, _flow(None))
    assert list(table.columns) == TARGET_TRIAL_COLUMNS
    assert table["component"].tolist() == COMPONENTS
    assert table["specification"].str.len().gt(0).all()
    assert table["emulation"].str.len().gt(0).all()


def test_reproduction_is_labelled_and_says_the_rule_is_not_applied(base_config):
    rows = _rows(target_trial_table(base_config, _flow(None)))
    assert "Reproduction of the published analysis" in rows["Population analysed"].emulation
    assert "NOT applied" in rows["Eligibility"].emulation
    assert "positivity" in rows["Eligibility"].emulation
    assert "100 eligible patients" in rows["Eligibility"].emulation
    # The follow-up row says that discharge timing depends on the arm.
    assert "depends on the arm" in rows["Follow-up"].emulation
    assert rows["Estimand"].specification.startswith("ATE in the population")
    assert "ATO (overlap weights)" in rows["Estimand"].emulation


def test_target_trial_population_quotes_the_excluded_count(base_config):
    config = copy.deepcopy(base_config)
    config["target_trial"]["population"] = "target_trial"
    config["target_trial"]["estimand"] = "ATT"
    rows = _rows(target_trial_table(config, _flow(17)))
    assert "17 episodes not enrolled" in rows["Eligibility"].emulation
    assert "target-trial population" in rows["Population analysed"].emulation
    assert "in the treated" in rows["Estimand"].specification


def test_texts_left_out_come_from_the_config(base_config):
    config = copy.deepcopy(base_config)
    config["target_trial"] = {"population": "reproduction", "eligibility": {},
                              "estimand": "ATE"}
    config["study"]["design"] = "randomised"
    rows = _rows(target_trial_table(config))
    assert rows["Treatment strategies"].specification == "ETMI versus usual care"
    assert rows["Assignment"].emulation.startswith("Randomised")
    assert "trained" not in rows["Eligibility"].specification
    assert "depends on the arm" not in rows["Follow-up"].emulation
    assert rows["Population analysed"].emulation == "The trial's participants."
    assert "Function (FOTO lumbar CAT): change from intake to discharge" in \
        rows["Outcome"].specification


def test_a_suppressed_eligible_count_is_not_quoted(base_config):
    # flow.csv as written for a tiny study: every count below min_cell_count is text ("<5")
    flow = pd.DataFrame([{"step": "eligibility", "description": "eligible patients",
                          "n": "<5", "n_excluded": "", "reason": ""}])
    rows = _rows(target_trial_table(base_config, flow))
    assert rows["Eligibility"].emulation.startswith("Applied from the data")
    assert "<5" not in rows["Eligibility"].emulation
