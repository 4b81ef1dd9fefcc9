"""Agreement of the MMRM (models.mmrm) with R: nlme::gls, emmeans, pbkrtest.

Reference files ``tests/golden/reference/mmrm_*.json`` are written by
``tests/golden/make_golden_mmrm.R`` from ``tests/golden/data/mmrm.csv`` (see
tests/golden/README.md). Each case is one covariance structure fitted by REML or ML; the
reference optimum is nlme's, finished by Newton steps in R.

Tolerances (relative): estimates, SEs, covariance matrix, Satterthwaite and Kenward-Roger df
and KR SEs 1e-5 (observed ~1e-7); -2 log likelihood 1e-9 absolute per observation; against
nlme's own unpolished fit 1e-3 (nlme stops ~1e-5 short); emmeans' gls Satterthwaite df (its
finite-difference apVar) 5e-2 (observed up to 3e-2, ARH(1) by ML).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.errors import DataError
from trial_analysis.models.mmrm import CovarianceStructure, fit_mmrm

pytestmark = pytest.mark.golden

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden"
CASES = ["un_reml", "un_ml", "cs_reml", "csh_reml", "ar1_reml", "arh1_ml", "toep_reml",
         "toeph_reml"]
RTOL = 1e-5


def _design(columns: list[str], visits: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    d = pd.read_csv(GOLDEN / "data" / "mmrm.csv")
    cols = {"(Intercept)": np.ones(len(d)), "arm": d["arm"].to_numpy(float)}
    for v in visits[1:]:
        cols[f"visit{v}"] = (d["visit"] == v).to_numpy(float)
    cols["baseline"] = d["baseline"].to_numpy(float)
    cols["age"] = d["age"].to_numpy(float)
    for v in visits[1:]:
        cols[f"arm:visit{v}"] = cols["arm"] * cols[f"visit{v}"]
    assert list(cols) == columns
    return d, np.column_stack(list(cols.values()))


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> dict:
    ref = json.loads((GOLDEN / "reference" / f"mmrm_{request.param}.json").read_text())
    d, X = _design(ref["columns"], ref["visits"])
    args = (d["y"].to_numpy(float), X, d["id"].to_numpy(), d["visit_idx"].to_numpy() - 1, 4)
    kwargs = {"covariance": ref["structure"], "heterogeneous": ref["heterogeneous"],
              "reml": ref["reml"], "column_names": ref["columns"]}
    fits = {"satterthwaite": fit_mmrm(*args, **kwargs)}
    if ref["reml"]:
        fits["kenward_roger"] = fit_mmrm(*args, ddf="kenward_roger", **kwargs)
    return {"ref": ref, "fits": fits, "n": len(d)}


def _close(actual: float, expected: float, rtol: float = RTOL) -> None:
    assert actual == pytest.approx(expected, rel=rtol)


def test_likelihood_and_covariance(case: dict) -> None:
    ref, fit = case["ref"], case["fits"]["satterthwaite"]
    assert fit.converged
    assert fit.deviance == pytest.approx(ref["minus2loglik"], abs=1e-9 * case["n"])
    # Our optimum is at least as good as nlme's own.
    assert fit.deviance <= ref["minus2loglik_gls"] + 1e-9 * case["n"]
    np.testing.assert_allclose(fit.sigma, np.array(ref["sigma"]), rtol=RTOL)
    np.testing.assert_allclose(fit.theta, np.array(ref["theta"]), rtol=RTOL, atol=1e-8)
    np.testing.assert_allclose(fit.cov_beta, np.array(ref["vcov"]), rtol=RTOL,
                               atol=RTOL * np.max(np.abs(ref["vcov"])))


@pytest.mark.parametrize("kind", ["coefficients", "means", "contrasts"])
def test_estimates_and_df(case: dict, kind: str) -> None:
    ref = case["ref"]
    satt = case["fits"]["satterthwaite"]
    for row in ref[kind]:
        L = np.array(row["L"])
        res = satt.contrast(L)
        _close(res["estimate"], row["estimate"])
        _close(res["std_error"], row["std_error"])
        _close(res["df"], row["satt_df"])
        # nlme's own (unpolished) fit, within its optimiser's tolerance. Under ML nlme's
        # vcov is scaled by N / (N - p) (its sigma^2 rescaled as under REML); the ML vcov at
        # the optimum, (X' V^-1 X)^-1, is what SAS and R's mmrm report.
        n, p = case["n"], len(ref["columns"])
        scale = 1.0 if ref["reml"] else np.sqrt(n / (n - p))
        _close(res["estimate"], row["gls_estimate"], 1e-3)
        _close(res["std_error"] * scale, row["gls_std_error"], 1e-3)
        if "df_emmeans" in row:
            _close(res["df"], row["df_emmeans"], 5e-2)
            _close(res["estimate"], row["emmeans_estimate"], 1e-3)
        if "kr_df" in row:
            kr = case["fits"]["kenward_roger"].contrast(L)
            _close(kr["estimate"], row["estimate"])
            _close(kr["std_error"], row["kr_se"])
            _close(kr["df"], row["kr_df"])


def test_kr_check_against_lmertest() -> None:
    """The R script's own KR equals lmerTest/pbkrtest on the compound-symmetry model."""
    ref = json.loads((GOLDEN / "reference" / "mmrm_cs_reml.json").read_text())
    for row in ref["kr_check"]:
        _close(row["kr_df_here"], row["kr_df_lmerTest"], 1e-5)
        _close(row["kr_se_here"], row["kr_se_lmerTest"], 1e-5)


def test_structures_round_trip() -> None:
    """theta_of inverts sigma_theta; every phi gives a positive definite matrix."""
    rng = np.random.default_rng(1)
    for name in ("unstructured", "compound_symmetry", "ar1", "toeplitz"):
        for het in (True, False):
            s = CovarianceStructure(name, 4, het)
            phi = rng.normal(0, 0.7, len(s.phi_start(np.eye(4))))
            S = s.sigma_phi(phi)
            assert np.all(np.linalg.eigvalsh(S) > 0)
            theta = s.theta_of(S)
            assert len(theta) == s.n_params == len(s.theta_names(list("abcd")))
            np.testing.assert_allclose(s.sigma_theta(theta), S, rtol=1e-10, atol=1e-12)


def test_bad_input() -> None:
    d, X = _design(["(Intercept)", "arm", "visitw8", "visitw12", "visitw24", "baseline", "age",
                    "arm:visitw8", "arm:visitw12", "arm:visitw24"], ["w4", "w8", "w12", "w24"])
    visit = d["visit_idx"].to_numpy() - 1
    visit[1] = visit[0]
    with pytest.raises(DataError, match="two rows at the same visit"):
        fit_mmrm(d["y"].to_numpy(float), X, d["id"].to_numpy(), visit, 4)
    with pytest.raises(ValueError, match="REML"):
        fit_mmrm(d["y"].to_numpy(float), X, d["id"].to_numpy(), d["visit_idx"].to_numpy() - 1,
                 4, reml=False, ddf="kenward_roger")
