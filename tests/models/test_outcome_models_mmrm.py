"""The MMRM as an outcome model chosen by configuration (``analysis.covariance``).

The engine's agreement with R is in ``tests/models/test_golden_mmrm.py``; here: the config
route (checks in plain words, the layout of the estimate file, effect rows and means) on the
committed four-follow-up ``multitime`` dataset, and that the config route gives the engine's
numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import model_test_config

from trial_analysis.errors import ConfigError
from trial_analysis.io import ESTIMATE_COLUMNS
from trial_analysis.models.mmrm import fit_mmrm
from trial_analysis.models.outcome_models import (
    EFFECT_MODEL,
    fit_outcome_model,
    fixed_design,
    long_data,
    model_spec,
)
from trial_analysis.reporting.report import describe_random_effects

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "data"
FOUR = ["m1", "m3", "m6", "m12"]


def _config(**analysis) -> dict:
    cfg = copy.deepcopy(model_test_config())
    cfg["timepoints"] = {"baseline": "m0", "followups": FOUR,
                         "values": {"m0": 0.0, "m1": 1.0, "m3": 3.0, "m6": 6.0, "m12": 12.0}}
    cfg["analysis"].update({"random_effects": [], "random_time_effects": [], "subgroups": [],
                            "baseline": "covariate", "covariance": "unstructured",
                            "ddf": "kenward_roger", **analysis})
    return cfg


@pytest.fixture(scope="module")
def trial() -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "multitime.csv")


@pytest.fixture(scope="module")
def result(trial):
    return fit_outcome_model(trial, _config(), "function", "all_available")


def test_estimate_file_layout(result) -> None:
    frame = result.to_frame()
    assert list(frame.columns) == ESTIMATE_COLUMNS
    assert result.fit_path == "mmrm"
    assert result.inference == "kenward_roger"
    assert "UN covariance over 4 time points" in result.method
    assert result.formula.endswith("+ us(time | patient)")
    effects = frame[frame["model"] == EFFECT_MODEL].set_index("term")
    assert {"arm:time", "arm:time [m1]", "arm:time [m12]", "arm:time [overall]"} <= set(
        effects.index)
    assert (effects["df"] > 0).all() and effects["std_error"].gt(0).all()
    # Primary follow-up defaults to the last: its row equals the per-visit row.
    assert effects.loc["arm:time", "estimate"] == pytest.approx(
        effects.loc["arm:time [m12]", "estimate"], rel=1e-12)
    block = result.model_block()
    cov = block["covariance"]
    assert cov["sas_name"] == "UN" and cov["time_points"] == FOUR
    matrix = np.array(cov["matrix"])
    assert np.all(np.linalg.eigvalsh(matrix) > 0)
    assert list(block["variance_components"]) == [f"variance [{t}]" for t in FOUR]
    assert block["icc"] == {}
    assert result.n_clusters_outer == result.n_patients
    assert "MMRM" in describe_random_effects(block["random_effects"])
    means = result.marginal_means
    assert len(means) == 2 * len(FOUR) and means["std_error"].gt(0).all()
    text = result.summary()
    assert text.startswith("MMRM: function")
    assert "Kenward-Roger df" in text and "Variances per time point (MMRM)" in text


def test_config_route_equals_engine(trial, result) -> None:
    """fit_outcome_model's MMRM is fit_mmrm on the spec's design, nothing added."""
    spec = model_spec(_config(), "function", "all_available")
    long, _ = long_data(trial, spec)
    X = fixed_design(long, spec).X
    visit = long["time_label"].map({t: i for i, t in enumerate(FOUR)}).to_numpy()
    fit = fit_mmrm(long["score"].to_numpy(float), X.to_numpy(float),
                   long["patient_id"].to_numpy(), visit, 4, ddf="kenward_roger")
    mine = result.fixed_effects.set_index("term").loc[list(X.columns)]
    np.testing.assert_allclose(mine["estimate"], fit.beta, rtol=1e-10, atol=1e-12)
    se = np.sqrt(np.diag(fit.inference.cov_adjusted))
    np.testing.assert_allclose(mine["std_error"], se, rtol=1e-10)


@pytest.mark.parametrize("structure", ["compound_symmetry", "ar1", "toeplitz"])
def test_other_structures_and_baseline_as_timepoint(trial, structure) -> None:
    cfg = _config(covariance=structure, baseline="timepoint", heterogeneous_variances=False,
                  ddf="satterthwaite", reml=False)
    res = fit_outcome_model(trial, cfg, "function", "complete_case")
    assert res.converged
    assert len(res.variance_components) == 5  # baseline and four follow-ups
    assert res.inference == "satterthwaite"
    assert res.effect["df"] > 0


def test_mmrm_config_problems(trial) -> None:
    with pytest.raises(ConfigError, match="marginal model without random effects"):
        model_spec(_config(random_effects=["patient"]), "function", "all_available")
    with pytest.raises(ConfigError, match="Kenward-Roger df need a REML fit"):
        model_spec(_config(reml=False), "function", "all_available")


def test_subgroup_model_under_mmrm(trial) -> None:
    """Subgroup models use the same MMRM: effect per level and a KR heterogeneity F test."""
    from trial_analysis.models.outcome_models import fit_subgroup_model

    cfg = _config(subgroups=["depression"])
    res = fit_subgroup_model(trial, cfg, "function", "depression", population="all_available",
                             stratified=False)
    assert res.interaction.fit_path == "mmrm"
    assert len(res.subgroup_effects) == 2
    het = res.heterogeneity
    assert het["num_df"] == 1.0 and het["den_df"] > 0 and 0 <= het["p_value"] <= 1
    # One-row F test: the square of the level difference's t statistic, KR df alike.
    diff = res.level_differences.iloc[0]
    assert het["den_df"] == pytest.approx(diff["df"], rel=1e-8)
