"""Sessions and responder models agree with R (MASS::glm.nb, glm, sandwich::vcovCL).

Reference values come from ``tests/golden/make_golden_counts.R`` run on the committed datasets
``tests/golden/data/counts_*.csv`` (see tests/golden/README.md to regenerate). Coefficients and
standard errors must agree within 1e-4 relative, theta within 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.models.responders import fit_responders
from trial_analysis.models.sessions import fit_sessions_model

pytestmark = pytest.mark.golden

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
DATASETS = ["balanced", "unbalanced", "smallcell"]
COVARIATES = ["age", "sex", "symptom_duration_weeks"]
CONFIG = {
    "outcomes": [{"name": "function", "min": 0, "max": 100, "higher_is_better": True,
                  "mcid": 5}],
    "allocation": {"intervention": "ETMI", "control": "usual care"},
    "analysis": {"confidence_level": 0.95, "sessions": {"covariates": COVARIATES},
                 "responders": {"outcomes": ["function"]}},
}
RTOL = 1e-4
THETA_RTOL = 1e-3


def _data(name: str) -> pd.DataFrame:
    return pd.read_csv(GOLDEN / "data" / f"counts_{name}.csv")


def _reference(name: str) -> tuple[pd.DataFrame, dict[str, float]]:
    coefficients = pd.read_csv(GOLDEN / "reference" / f"counts_{name}_coefficients.csv")
    scalars = pd.read_csv(GOLDEN / "reference" / f"counts_{name}_scalars.csv")
    return coefficients, dict(zip(scalars["quantity"], scalars["value"].astype(float),
                                  strict=True))


@pytest.fixture(scope="module", params=DATASETS)
def fitted(request):
    name = request.param
    data = _data(name)
    sessions = fit_sessions_model(data, CONFIG)
    responders = fit_responders(data, CONFIG)
    ours = pd.concat(
        [pd.DataFrame(sessions.model["coefficients"]),
         pd.DataFrame(responders.model["coefficients"])]
    )[["fit", "term", "estimate", "std_error_model", "std_error_cluster"]]
    return name, sessions, responders, ours


def test_every_r_coefficient_and_standard_error_is_reproduced(fitted):
    name, _, _, ours = fitted
    reference, _ = _reference(name)
    merged = reference.merge(ours, on=["fit", "term"], how="left", suffixes=("_r", "_py"),
                             validate="one_to_one")
    assert merged["estimate_py"].notna().all(), "a term R estimated is missing in Python"
    assert set(reference["fit"]) == {"nb_adjusted", "nb_unadjusted", "poisson_adjusted",
                                     "logistic_unadjusted", "logistic_adjusted",
                                     "lpm_unadjusted"}
    for column in ("estimate", "std_error_model", "std_error_cluster"):
        np.testing.assert_allclose(
            merged[f"{column}_py"], merged[f"{column}_r"], rtol=RTOL, atol=1e-12,
            err_msg=f"{name}: {column}",
        )


def test_theta_and_loglik_match_glm_nb(fitted):
    name, sessions, _, _ = fitted
    _, scalars = _reference(name)
    theta_adj = sessions.fits["nb_adjusted"].theta
    theta_unadj = sessions.fits["nb_unadjusted"].theta
    assert theta_adj == pytest.approx(scalars["nb_adjusted_theta"], rel=THETA_RTOL)
    assert theta_unadj == pytest.approx(scalars["nb_unadjusted_theta"], rel=THETA_RTOL)
    assert sessions.model["dispersion"]["theta_std_error"] == pytest.approx(
        scalars["nb_adjusted_theta_se"], rel=THETA_RTOL)
    assert sessions.model["dispersion"]["alpha"] == pytest.approx(1 / theta_adj)
    assert sessions.model["loglik"] == pytest.approx(scalars["nb_adjusted_loglik"], rel=1e-6)


def test_ratio_of_means_row_is_the_exponentiated_clustered_coefficient(fitted):
    name, sessions, _, _ = fitted
    reference, _ = _reference(name)
    arm = reference[(reference["fit"] == "nb_adjusted")
                    & (reference["term"] == "arm_intervention")].iloc[0]
    row = sessions.estimates.set_index("model").loc[
        "negative_binomial_adjusted:therapist_clustered_se"]
    assert row["estimate"] == pytest.approx(np.exp(arm["estimate"]), rel=RTOL)
    assert row["std_error"] == pytest.approx(arm["std_error_cluster"], rel=RTOL)
    assert row["ci_low"] == pytest.approx(
        np.exp(arm["estimate"] - 1.959963984540054 * arm["std_error_cluster"]), rel=RTOL)


def test_risk_difference_matches_newcombe_from_r_wilson_intervals(fitted):
    name, _, responders, _ = fitted
    _, scalars = _reference(name)
    descriptives = responders.descriptives.set_index("arm_intervention")
    assert descriptives.loc[1, "n_responders"] == scalars["responders_intervention"]
    assert descriptives.loc[1, "n_complete"] == scalars["n_intervention"]
    assert descriptives.loc[0, "n_responders"] == scalars["responders_control"]
    assert descriptives.loc[0, "n_complete"] == scalars["n_control"]
    assert descriptives.loc[1, "ci_low"] == pytest.approx(scalars["wilson_low_intervention"],
                                                          rel=RTOL)
    assert descriptives.loc[0, "ci_high"] == pytest.approx(scalars["wilson_high_control"],
                                                           rel=RTOL)
    row = responders.estimates.set_index("model").loc["newcombe_hybrid_score"]
    assert row["estimate"] == pytest.approx(scalars["risk_difference"], rel=RTOL)
    assert row["ci_low"] == pytest.approx(scalars["risk_difference_ci_low"], rel=RTOL)
    assert row["ci_high"] == pytest.approx(scalars["risk_difference_ci_high"], rel=RTOL)
    assert row["p_value"] == pytest.approx(scalars["risk_difference_p_chisq"], rel=RTOL)
