"""Agreement with R of the k-arm outcome models, contrasts and multiplicity adjustments.

Reference files ``tests/golden/reference/karms_{lm,lmer,gls}.json`` are written by
``tests/golden/make_golden_karms.R`` from ``tests/golden/data/karms.csv`` (three arms, see
tests/golden/README.md): lm with emmeans and multcomp (Dunnett, Tukey), lmer with lmerTest
``contest`` and multcomp at an integer df, nlme::gls (MMRM, unstructured).

Tolerances (relative): coefficients, SEs, df and unadjusted p 1e-6 (lmer 1e-5: optimiser
stops; gls 1e-4: nlme stops short of the optimum); Holm 1e-6; single-step adjusted p and
simultaneous bounds 1e-3 (multcomp's probabilities are randomised quasi-Monte Carlo at abseps
1e-6 and its qmvt root is found to ~1e-4; ours are deterministic, see
trial_analysis.models.multiplicity).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import model_test_config

from trial_analysis.errors import ConfigError
from trial_analysis.models.multiplicity import adjust_family, max_abs_t_cdf, single_step
from trial_analysis.models.outcome_models import fit_outcome_model, fit_subgroup_model

pytestmark = pytest.mark.golden

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden"
ARMS = ["Placebo", "Low", "High"]
EXACT, ADJUSTED = 1e-6, 1e-3
# nlme's gls stops ~1e-5 short of the REML optimum (tests/models/test_golden_mmrm.py polishes
# it by Newton steps in R; here its own fit is the reference): 1e-4.
GLS = 1e-4


def karms_table(followups: list[str]) -> pd.DataFrame:
    """The golden dataset as an analysis table (arm_code 0 = Placebo)."""
    d = pd.read_csv(GOLDEN / "data" / "karms.csv")
    table = pd.DataFrame({"patient_id": d["id"], "arm": d["arm"],
                          "arm_intervention": (d["arm"] != "Placebo").astype(int),
                          "arm_code": d["arm"].map({a: i for i, a in enumerate(ARMS)}),
                          "age": d["age"], "sex": d["sex"], "function_baseline": d["y0"]})
    sources = [f"y{label[1]}" for label in followups]
    if len(followups) == 1:
        table["function_followup"] = d[sources[0]]
    else:
        for label, column in zip(followups, sources, strict=True):
            table[f"function__{label}"] = d[column]
        table["function_followup"] = d[sources[-1]]
    table["complete_function"] = table.filter(like="function").notna().all(axis=1).astype(int)
    table["complete_case"] = table["complete_function"]
    return table


def karms_config(followups: list[str], **analysis) -> dict:
    cfg = copy.deepcopy(model_test_config())
    cfg["allocation"] = {"arms": list(ARMS), "reference": "Placebo", "rule": "column",
                         "column": "group"}
    cfg["timepoints"] = {"baseline": "v0", "followups": list(followups)}
    cfg["analysis"].update({"covariates": ["age", "sex"], "subgroups": [],
                            "random_time_effects": [], **analysis})
    return cfg


def _ref(name: str) -> dict:
    return json.loads((GOLDEN / "reference" / f"karms_{name}.json").read_text())


def _fit(name: str, contrasts: str = "reference", multiplicity: str = "single_step"):
    settings = {
        "lm": (["v3"], {"baseline": "covariate", "random_effects": []}),
        "lmer": (["v3"], {"random_effects": ["patient"], "covariates_by_time": False}),
        "gls": (["v1", "v2", "v3"], {"baseline": "covariate", "random_effects": [],
                                     "covariance": "unstructured"}),
    }[name]
    followups, analysis = settings
    cfg = karms_config(followups, contrasts=contrasts, multiplicity=multiplicity, **analysis)
    return fit_outcome_model(karms_table(followups), cfg, "function", "all_available")


def _close(actual, expected, rtol: float, atol: float = 0.0) -> None:
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["lm", "lmer", "gls"])
def test_coefficients_match_r(name: str) -> None:
    ref, fit = _ref(name), _fit(name)
    ours = fit.fixed_effects.set_index("term")["estimate"]
    for term, value in ref["coefficients"].items():
        # R orders interaction columns differently (names are the same).
        term = term.replace("visit", "time")
        # gls: a coefficient near 0 (armHigh:visitv3) gets an absolute 1e-4 of its SE.
        _close(ours[term], value, {"lm": EXACT, "lmer": 1e-5, "gls": GLS}[name],
               atol=2e-4 if name == "gls" else 0.0)


@pytest.mark.parametrize("contrasts", ["reference", "all_pairs"])
@pytest.mark.parametrize("method", ["none", "holm"])
def test_lm_contrasts_match_emmeans(contrasts: str, method: str) -> None:
    ref = _ref("lm")[contrasts][method]
    ours = _fit("lm", contrasts, method).contrasts.set_index("contrast")
    assert list(ours.index) == [r["contrast"] for r in ref]
    for row in ref:
        got = ours.loc[row["contrast"]]
        _close([got.estimate, got.std_error, got.df], [row["estimate"], row["std_error"],
                                                       row["df"]], EXACT)
        _close(got.p_adjusted, row["p_value"], EXACT)


@pytest.mark.parametrize("contrasts,family", [("reference", "dunnett"),
                                              ("all_pairs", "tukey")])
def test_lm_single_step_matches_multcomp(contrasts: str, family: str) -> None:
    ref = _ref("lm")[family]
    ours = _fit("lm", contrasts).contrasts.set_index("contrast").loc[ref["contrast"]]
    _close(ours["estimate"], ref["estimate"], EXACT)
    _close(ours["p_adjusted"], ref["p_adjusted"], ADJUSTED)
    _close(ours["ci_low_adjusted"], ref["ci_low_adjusted"], ADJUSTED)
    _close(ours["ci_high_adjusted"], ref["ci_high_adjusted"], ADJUSTED)


@pytest.mark.parametrize("contrasts", ["reference", "all_pairs"])
def test_lmer_contrasts_match_lmertest(contrasts: str) -> None:
    ref = _ref("lmer")[contrasts]
    ours = _fit("lmer", contrasts, "holm").contrasts.set_index("contrast")
    for row in ref:
        got = ours.loc[row["contrast"]]
        _close([got.estimate, got.std_error, got.df, got.p_value],
               [row["estimate"], row["std_error"], row["df"], row["p_value"]], 1e-5)
        _close(got.p_adjusted, row["p_adjusted"], 1e-5)


@pytest.mark.parametrize("contrasts,family", [("reference", "dunnett"),
                                              ("all_pairs", "tukey")])
def test_lmer_single_step_method_matches_multcomp_at_its_integer_df(contrasts, family) -> None:
    """multcomp needs an integer df: our method evaluated at the same df, on our contrasts."""
    ref = _ref("lmer")
    fit = _fit("lmer", contrasts)
    rows = fit.contrasts
    names = list(fit.fixed_effects["term"])
    cov = _lmer_contrast_cov(ref, names, contrasts)
    fixed = rows.assign(df=float(ref[f"{family}_df"]))
    adjusted = adjust_family(fixed, cov, "single_step", 0.95).set_index("contrast")
    expected = ref[family]
    adjusted = adjusted.loc[expected["contrast"]]
    _close(adjusted["p_adjusted"], expected["p_adjusted"], ADJUSTED)
    _close(adjusted["ci_low_adjusted"], expected["ci_low_adjusted"], ADJUSTED)
    _close(adjusted["ci_high_adjusted"], expected["ci_high_adjusted"], ADJUSTED)


def _lmer_contrast_cov(ref: dict, names: list[str], contrasts: str) -> np.ndarray:
    order = list(ref["coefficients"])
    V = pd.DataFrame(ref["vcov"], index=order, columns=order).loc[names, names].to_numpy()
    low, high = names.index("armLow:time"), names.index("armHigh:time")
    K = np.zeros((3, len(names)))
    K[0, low], K[1, high], K[2, high], K[2, low] = 1, 1, 1, -1
    K = K if contrasts == "all_pairs" else K[:2]
    return K @ V @ K.T


def test_gls_mmrm_contrasts_and_normal_single_step() -> None:
    ref = _ref("gls")
    fit = _fit("gls")
    ours = fit.contrasts.set_index(["contrast", "followup"])
    for row in ref["contrasts"]:
        got = ours.loc[(row["contrast"], row["followup"])]
        _close([got.estimate, got.std_error], [row["estimate"], row["std_error"]], GLS)
    at_v3 = fit.contrasts[fit.contrasts["followup"] == "v3"]
    expected = ref["dunnett_z"]
    t = at_v3["estimate"].to_numpy() / at_v3["std_error"].to_numpy()
    # normal (df unknown) single step on the model's own correlation
    p, critical = single_step(t, _gls_corr(fit), np.array([np.inf, np.inf]), 0.95)
    _close(p, expected["p_adjusted"], ADJUSTED)
    _close(critical[0], expected["critical"], ADJUSTED)


def _gls_corr(fit) -> np.ndarray:
    # The correlation of the two v3 contrasts from their SEs and that of their difference.
    rows = fit.contrasts[fit.contrasts["followup"] == "v3"].set_index("arm")
    se_low, se_high = rows.loc["Low", "std_error"], rows.loc["High", "std_error"]
    pairs = _fit("gls", "all_pairs").contrasts
    se_diff = pairs[(pairs["contrast"] == "High vs Low") & (pairs["followup"] == "v3")][
        "std_error"].iloc[0]
    rho = (se_low**2 + se_high**2 - se_diff**2) / (2 * se_low * se_high)
    return np.array([[1.0, rho], [rho, 1.0]])


def test_multivariate_t_is_deterministic_and_exact_for_two_contrasts() -> None:
    corr = np.array([[1.0, 0.5], [0.5, 1.0]])
    # mvtnorm::pmvt(-rep(2.1, 2), rep(2.1, 2), df = 30, corr, abseps 1e-8): 0.9201685
    assert max_abs_t_cdf(2.1, corr, 30) == pytest.approx(0.9201685, abs=1e-7)
    assert max_abs_t_cdf(2.1, corr, np.inf) == pytest.approx(0.9343346, abs=1e-7)
    assert max_abs_t_cdf(2.1, corr, 30) == max_abs_t_cdf(2.1, corr, 30)
    # rank 3 (four arms): the fixed-seed Sobol rule, pmvt 0.9238865
    equi = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    assert max_abs_t_cdf(2.3, equi, 25) == pytest.approx(0.9238865, abs=5e-5)


def test_subgroups_are_refused_with_three_arms() -> None:
    cfg = karms_config(["v3"], baseline="covariate", random_effects=[], subgroups=["sex"])
    with pytest.raises(ConfigError, match="two arms"):
        fit_subgroup_model(karms_table(["v3"]), cfg, "function", "sex")
