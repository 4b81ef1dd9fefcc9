"""Tests for trial_analysis.models.fast_lmm: the exact nested-LMM fit without the n x n covariance.

References, each independent of the module's algebra:
- a dense computation of the REML/ML criterion (n x n covariance built explicitly);
- lme4/lmerTest fits (tests/golden/fast_lmm/reference.json, made by make_reference.R);
- statsmodels MixedLM with a tight BFGS fit (groups = outer level, vc_formula inner ones).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.errors import DataError
from trial_analysis.models.fast_lmm import NestedDesign, fit_nested_lmm

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "fast_lmm"
TERMS = ["(Intercept)", "arm", "time", "age", "sex", "arm:time"]
# Random-effect specifications of make_reference.R as (levels, time_effects).
SPECS = {
    "patient": (["patient"], []),
    "therapist_patient": (["therapist", "patient"], []),
    "default": (["therapist", "patient"], ["therapist"]),
    "clinic": (["clinic", "therapist", "patient"], ["therapist"]),
    "clinic_time": (["clinic", "therapist", "patient"], ["clinic"]),
    "therapist_time_only": (["therapist"], ["therapist"]),
}
REL_TOL = 1e-6


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(GOLDEN / f"{name}.csv")


def design(d: pd.DataFrame) -> np.ndarray:
    return np.column_stack([np.ones(len(d)), d["arm"], d["time"], d["age"], d["sex"],
                            d["arm"] * d["time"]]).astype(float)


def fit(d: pd.DataFrame, spec: str, reml: bool = True):
    levels, time_effects = SPECS[spec]
    return fit_nested_lmm(d["y"].to_numpy(), design(d),
                          {name: d[name].to_numpy() for name in levels},
                          time=d["time"].to_numpy(), time_effects=time_effects, reml=reml,
                          column_names=TERMS)


def dense_criterion(d: pd.DataFrame, spec: str, theta: np.ndarray, reml: bool) -> float:
    """Profiled deviance with the n x n covariance written out (lme4's definition)."""
    levels, time_effects = SPECS[spec]
    n = len(d)
    V0 = np.eye(n)
    k = 0
    unit = pd.Series([""] * n)
    for name in levels:
        unit = unit + "/" + d[name].astype(str)
        keys = [unit]
        if name in time_effects:
            keys.append(unit + "@" + d["time"].astype(str))
        for key in keys:
            Z = pd.get_dummies(key).to_numpy(float)
            V0 += theta[k] ** 2 * Z @ Z.T
            k += 1
    X, y = design(d), d["y"].to_numpy()
    Vi = np.linalg.inv(V0)
    XVX = X.T @ Vi @ X
    beta = np.linalg.solve(XVX, X.T @ Vi @ y)
    r = y - X @ beta
    r2 = r @ Vi @ r
    logdet = np.linalg.slogdet(V0)[1]
    p = X.shape[1]
    if reml:
        return logdet + np.linalg.slogdet(XVX)[1] + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    return logdet + n * (1 + np.log(2 * np.pi * r2 / n))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((GOLDEN / "reference.json").read_text())["cases"]


# ---------------------------------------------------------------------- criterion
@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_matches_dense_computation(spec, reml):
    d = load("unbalanced").iloc[:160]  # small enough for a dense 160 x 160 inverse
    levels, time_effects = SPECS[spec]
    nd = NestedDesign(d["y"].to_numpy(), design(d), {k: d[k].to_numpy() for k in levels},
                      time=d["time"].to_numpy(), time_effects=time_effects, reml=reml)
    rng = np.random.default_rng(3)
    for theta in [rng.uniform(0.0, 2.0, nd.n_components), np.zeros(nd.n_components)]:
        assert nd.profiled_deviance(theta) == pytest.approx(
            dense_criterion(d, spec, theta, reml), rel=1e-11, abs=1e-9)


# ---------------------------------------------------------------------- lme4
def test_reference_covers_every_specification(reference):
    assert {case["random"] for case in reference.values()} == set(SPECS)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", [
    "balanced_default_reml", "balanced_default_ml", "balanced_clinic_reml",
    "balanced_clinic_time_reml", "balanced_patient_reml", "unbalanced_default_reml",
    "unbalanced_default_ml", "unbalanced_therapist_patient_reml", "unbalanced_clinic_ml",
    "unbalanced_therapist_time_only_reml", "singular_default_reml", "singular_default_ml",
])
def test_agrees_with_lme4(reference, case_name):
    ref = reference[case_name]
    res = fit(load(ref["data"]), ref["random"], reml=ref["reml"])
    assert res.converged, res.warnings
    assert res.fit_path == "fast_nested"
    fe = pd.DataFrame(ref["fixed_effects"]).set_index("term")
    for term in TERMS:
        scale = max(abs(fe.loc[term, "estimate"]), fe.loc[term, "std_error"])
        assert abs(res.fixed_effects[term] - fe.loc[term, "estimate"]) <= REL_TOL * scale, term
        assert res.std_errors[term] == pytest.approx(fe.loc[term, "std_error"], rel=REL_TOL)
    assert set(res.variance_components) == set(ref["variance_components"])
    theta_ref = np.array([ref["theta"][name] for name in res.design.component_names])
    for name, value in ref["variance_components"].items():
        if value == 0:
            assert res.variance_components[name] == 0.0, name
        elif abs(res.variance_components[name] - value) > REL_TOL * value:
            # A weakly identified component can sit on a plateau where the deviance differs
            # from lme4's by less than its rounding: accept only if our optimum is at least
            # as good as lme4's and the difference is still tiny.
            assert res.deviance_value <= res.design.profiled_deviance(theta_ref) + 1e-9, name
            assert res.variance_components[name] == pytest.approx(value, rel=1e-5), name
    assert res.loglike == pytest.approx(ref["loglik"], abs=1e-7)
    assert res.singular == ref["singular"]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", ["balanced_default_reml", "unbalanced_default_reml",
                                       "balanced_clinic_reml"])
def test_satterthwaite_on_fast_design_matches_lmertest(reference, case_name):
    """The design object plugs into lmm_inference (same method names as MixedDesign)."""
    from trial_analysis.models.lmm_inference import SatterthwaiteInference

    ref = reference[case_name]
    res = fit(load(ref["data"]), ref["random"], reml=ref["reml"])
    inf = SatterthwaiteInference.from_fit(res.design, res.theta, res.sigma, reml=True)
    fe = pd.DataFrame(ref["fixed_effects"]).set_index("term")
    for j, term in enumerate(TERMS):
        L = np.zeros(len(TERMS))
        L[j] = 1.0
        assert inf.contrast(L)["df"] == pytest.approx(fe.loc[term, "df"], rel=1e-4), term


# ---------------------------------------------------------------------- statsmodels
def statsmodels_fit(d: pd.DataFrame, groups: str, vc: dict[str, str], reml: bool):
    from statsmodels.regression.mixed_linear_model import MixedLM

    frame = d.assign(ttime=d["time"].astype(str), armtime=d["arm"] * d["time"])
    model = MixedLM.from_formula("y ~ arm + time + age + sex + armtime", frame,
                                 groups=groups, re_formula="1", vc_formula=vc or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.fit(reml=reml, method=["bfgs"], gtol=1e-12, maxiter=2000)
    vcomp = dict(zip(model.exog_vc.names, result.vcomp, strict=True)) if vc else {}
    return result, vcomp


def dense_cov_beta(d: pd.DataFrame, spec: str, variances: dict[str, float]) -> np.ndarray:
    """(X' V^-1 X)^-1 with V written out from natural-scale variances."""
    levels, time_effects = SPECS[spec]
    n = len(d)
    V = variances["residual"] * np.eye(n)
    unit = pd.Series([""] * n)
    for name in levels:
        unit = unit + "/" + d[name].astype(str)
        Z = pd.get_dummies(unit).to_numpy(float)
        V += variances[name] * Z @ Z.T
        if name in time_effects:
            Z = pd.get_dummies(unit + "@" + d["time"].astype(str)).to_numpy(float)
            V += variances[f"{name}:time"] * Z @ Z.T
    X = design(d)
    return np.linalg.inv(X.T @ np.linalg.solve(V, X))


# (spec, statsmodels groups, vc_formula, mapping statsmodels name -> fast_lmm component)
SM_CASES = [
    ("patient", "patient", {}, {}),
    ("therapist_patient", "therapist", {"patient": "0 + C(patient)"}, {"patient": "patient"}),
    ("default", "therapist", {"patient": "0 + C(patient)", "tt": "0 + C(ttime)"},
     {"patient": "patient", "tt": "therapist:time"}),
    # statsmodels takes ~10 s here (dense per-clinic covariance); lme4 golden cases cover
    # clinic models in the default run.
    pytest.param("clinic", "clinic", {"therapist": "0 + C(therapist)",
                                      "patient": "0 + C(patient)",
                                      "tt": "0 + C(therapist):C(ttime)"},
                 {"therapist": "therapist", "patient": "patient", "tt": "therapist:time"},
                 marks=pytest.mark.slow, id="clinic"),
]


def statsmodels_data(spec: str) -> pd.DataFrame:
    d = load("unbalanced").iloc[:200]  # unequal clusters, singletons, one-row patients
    if spec != "clinic":
        return d
    # The golden datasets have too little clinic variation for statsmodels to fit (the clinic
    # variance is 0); add clinic offsets so this comparison is away from the boundary.
    offsets = dict(zip(sorted(d["clinic"].unique()), [-6.0, 4.0, 0.5, 7.0, -3.0, -2.5, 2.0],
                       strict=True))
    return d.assign(y=d["y"] + d["clinic"].map(offsets))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("spec,groups,vc,names", SM_CASES,
                         ids=["patient", "therapist_patient", "default", "clinic"])
def test_agrees_with_statsmodels(spec, groups, vc, names, reml):
    d = statsmodels_data(spec)
    res = fit(d, spec, reml=reml)
    sm, vcomp = statsmodels_fit(d, groups, vc, reml)
    outer = SPECS[spec][0][0]
    sm_vc = {outer: float(np.asarray(sm.cov_re)[0, 0]), "residual": float(sm.scale)}
    sm_vc.update({names[k]: float(v) for k, v in vcomp.items()})
    assert set(sm_vc) == set(res.variance_components)
    if res.singular:
        # statsmodels' unbounded optimiser stalls near the boundary (the lme4 golden cases
        # cover singular fits); ours must be at least as good an optimum.
        assert res.loglike >= sm.llf - 1e-9
        return
    for name, value in sm_vc.items():
        assert res.variance_components[name] == pytest.approx(value, rel=REL_TOL), name
    sm_beta = sm.fe_params.to_numpy()
    np.testing.assert_allclose(res.fixed_effects.to_numpy(),
                               sm_beta, rtol=REL_TOL)
    assert res.loglike == pytest.approx(sm.llf, abs=1e-6)
    # statsmodels' bse come from the full observed information, not (X'V^-1 X)^-1; compare
    # the standard errors with a dense GLS computation at statsmodels' variances instead.
    se_dense = np.sqrt(np.diag(dense_cov_beta(d, spec, sm_vc)))
    np.testing.assert_allclose(res.std_errors.to_numpy(), se_dense, rtol=REL_TOL)


# ---------------------------------------------------------------------- behaviour
def test_singular_fit_has_exact_zeros_and_a_warning():
    res = fit(load("singular"), "default")
    assert res.singular
    zero = [k for k, v in res.variance_components.items() if v == 0.0]
    assert zero and "residual" not in zero
    assert any("singular fit" in w for w in res.warnings)


def test_refit_is_bitwise_identical():
    d = load("unbalanced")
    a, b = fit(d, "clinic"), fit(d, "clinic")
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert a.loglike == b.loglike
    np.testing.assert_array_equal(a.cov_fixed.to_numpy(), b.cov_fixed.to_numpy())


def test_row_order_and_id_labels_do_not_matter():
    d = load("unbalanced")
    res = fit(d, "default")
    shuffled = d.sample(frac=1.0, random_state=5).reset_index(drop=True)
    shuffled["therapist"] = "x" + shuffled["therapist"].str[::-1]
    other = fit(shuffled, "default")
    np.testing.assert_allclose(other.fixed_effects, res.fixed_effects, rtol=1e-9)
    for name, value in res.variance_components.items():
        assert other.variance_components[name] == pytest.approx(value, rel=1e-8)


def test_patient_ids_are_nested_within_therapist():
    """Reusing patient ids across therapists (1, 2, ... within each) gives the same fit."""
    d = load("balanced")
    res = fit(d, "default")
    relabelled = d.assign(patient=d.groupby("therapist")["patient"].rank(method="dense"))
    np.testing.assert_allclose(fit(relabelled, "default").fixed_effects, res.fixed_effects,
                               rtol=1e-10)


def test_deviance_and_cov_at_variances():
    d = load("balanced")
    res = fit(d, "default")
    v = res.variance_vector
    assert res.deviance(v) == pytest.approx(-2 * res.loglike, rel=1e-12)
    assert res.deviance(res.variance_components) == pytest.approx(-2 * res.loglike, rel=1e-12)
    np.testing.assert_allclose(res.cov_fixed_at(v), res.cov_fixed.to_numpy(), rtol=1e-10)
    # The fit is an interior optimum: the unprofiled deviance is stationary there.
    for i in range(len(v)):
        h = 1e-5 * v[i]
        up, down = v.copy(), v.copy()
        up[i] += h
        down[i] -= h
        slope = (res.deviance(up) - res.deviance(down)) / (2 * h)
        assert abs(slope * v[i]) < 1e-4
    # Larger variances, larger cov(beta) for the between-therapist contrast.
    bigger = v.copy()
    bigger[0] *= 4
    assert res.cov_fixed_at(bigger)[1, 1] > res.cov_fixed.to_numpy()[1, 1]


def test_summary_and_frame():
    res = fit(load("balanced"), "default")
    frame = res.to_frame()
    assert list(frame.columns) == ["kind", "term", "estimate", "std_error"]
    assert list(frame.loc[frame["kind"] == "variance", "term"]) == [
        "therapist", "therapist:time", "patient", "residual"]
    text = res.summary()
    assert "REML" in text and "therapist:time" in text and "arm:time" in text


def test_bad_input_is_reported():
    d = load("balanced")
    y = d["y"].to_numpy().copy()
    y[3] = np.nan
    X = design(d)
    levels = {"therapist": d["therapist"].to_numpy(), "patient": d["patient"].to_numpy()}
    with pytest.raises(DataError, match="finite"):
        fit_nested_lmm(y, X, levels)
    with pytest.raises(DataError, match="rank"):
        fit_nested_lmm(d["y"].to_numpy(), np.column_stack([X, 2 * X[:, 1]]), levels)
    with pytest.raises(ValueError, match="time"):
        fit_nested_lmm(d["y"].to_numpy(), X, levels, time_effects=["therapist"])
    with pytest.raises(ValueError, match="levels"):
        fit_nested_lmm(d["y"].to_numpy(), X, levels, time=d["time"].to_numpy(),
                       time_effects=["clinic"])


def test_pieces_are_kept_for_a_repeated_theta_and_cannot_be_changed():
    """Satterthwaite's derivatives revisit theta (sigma moves alone): the kept pieces are the
    very numbers a fresh computation gives, read-only, and the store stays bounded."""
    from trial_analysis.models.fast_lmm import PIECES_CACHE_SIZE

    d = load("balanced")
    res = fit(d, "default")
    design, theta = res.design, np.asarray(res.theta, dtype=float)
    first = design.pieces(theta)
    assert design.pieces(theta.copy()) is first
    fresh = design._compute_pieces(theta)
    for key, value in fresh.items():
        np.testing.assert_array_equal(first[key], value)
    with pytest.raises(ValueError, match="read-only"):
        first["beta"][0] = 0.0
    for i in range(PIECES_CACHE_SIZE + 5):
        design.pieces(theta * (1 + 1e-3 * (i + 1)))
    assert len(design._pieces_cache) == PIECES_CACHE_SIZE
    # a theta pushed out is computed again, to the same numbers
    np.testing.assert_array_equal(design.pieces(theta)["XtViX_inv"], fresh["XtViX_inv"])
