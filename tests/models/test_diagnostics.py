"""Tests for the primary models' diagnostics (trial_analysis.models.diagnostics).

Conditional residuals, fitted values and conditional modes are compared with lme4's
``residuals()``, ``fitted()`` and ``ranef()`` (tests/golden/make_golden_diagnostics.R) on the
golden cohort, case cohort_function_cc: relative tolerance 1e-4 of each quantity's scale.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.config import load_config
from trial_analysis.models.diagnostics import model_diagnostics
from trial_analysis.models.outcome_models import fit_outcome_model

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


@pytest.fixture(scope="module")
def setup():
    config = copy.deepcopy(load_config(REPO / "config" / "config.yaml"))
    config["analysis"]["covariates"] = ["age", "sex", "symptom_duration_weeks"]
    config["analysis"]["random_effects"] = ["therapist", "patient"]
    config["analysis"]["random_time_effects"] = ["therapist"]
    config["analysis"]["reml"] = True
    frame = pd.read_csv(GOLDEN / "data" / "cohort.csv")
    reference = json.loads((GOLDEN / "reference" / "diagnostics_cohort_function_cc.json")
                           .read_text())
    return frame, config, reference


@pytest.fixture(scope="module")
def diagnosed(setup):
    frame, config, _ = setup
    return model_diagnostics(frame, config, "function", "complete_case", max_clusters=4)


def _close(mine, theirs, what):
    mine, theirs = np.asarray(mine, float), np.asarray(theirs, float)
    scale = float(np.max(np.abs(theirs)))
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4 * scale, err_msg=what)


@pytest.mark.golden
def test_residuals_and_fitted_match_lme4(diagnosed, setup):
    reference = pd.DataFrame(setup[2]["residuals"])
    assert len(diagnosed.residuals) == len(reference) == setup[2]["n_observations"]
    _close(np.sort(diagnosed.residuals), np.sort(reference["residual"]), "residuals")
    _close(np.sort(diagnosed.fitted), np.sort(reference["fitted"]), "fitted")
    # the two add up to the scores, row by row
    assert diagnosed.fitted.sum() + diagnosed.residuals.sum() == pytest.approx(
        (reference["fitted"] + reference["residual"]).sum(), rel=1e-10)


@pytest.mark.golden
def test_conditional_modes_match_lme4_ranef(diagnosed, setup):
    ranef = setup[2]["ranef"]
    therapist = pd.DataFrame(ranef["therapist"]).set_index("unit")["mode"]
    mine = diagnosed.random_effects["therapist"]
    assert sorted(mine.index) == sorted(therapist.index)
    _close(mine.loc[therapist.index], therapist, "therapist modes")
    by_time = pd.DataFrame(ranef["therapist:time"])
    by_time.index = by_time["unit"].str.replace(":", "@", regex=False)
    mine = diagnosed.random_effects["therapist:time"]
    assert sorted(mine.index) == sorted(by_time.index)
    _close(mine.loc[by_time.index], by_time["mode"], "therapist x time modes")
    patient = pd.DataFrame(ranef["patient"]).set_index("unit")["mode"]
    mine = diagnosed.random_effects["patient"]
    mine.index = [key.split("/")[-1] for key in mine.index]
    _close(mine.loc[patient.index], patient, "patient modes")


def test_leave_one_cluster_out_drops_the_largest_therapists(diagnosed, setup):
    frame, config, _ = setup
    complete = frame[frame["complete_function"] == 1]
    sizes = complete["therapist_id"].value_counts()
    loco = diagnosed.loco
    assert loco["rank"].tolist() == [1, 2, 3, 4]
    assert loco["n_patients"].tolist() == sorted(sizes, reverse=True)[:4]
    full = fit_outcome_model(frame, config, "function", "complete_case")
    effect = full.effects.set_index("term").loc["arm:time", "estimate"]
    assert diagnosed.estimate == pytest.approx(effect, rel=1e-10)
    # the first refit is the model without the largest therapist: same estimate by hand
    largest = sizes.sort_values(ascending=False, kind="stable").index[0]
    without = fit_outcome_model(frame[frame["therapist_id"] != largest], config, "function",
                                "complete_case")
    expected = without.effects.set_index("term").loc["arm:time", "estimate"]
    assert loco["estimate"].iloc[0] == pytest.approx(expected, rel=1e-10)
    assert not np.allclose(loco["estimate"], diagnosed.estimate)  # dropping one matters


def test_no_cluster_influence_without_clusters(setup):
    frame, config, _ = setup
    config = copy.deepcopy(config)
    config["analysis"]["random_effects"] = ["patient"]
    config["analysis"]["random_time_effects"] = []
    result = model_diagnostics(frame, config, "function", "complete_case")
    assert result.loco.empty and result.cluster_level is None
    assert set(result.random_effects) == {"patient"}
