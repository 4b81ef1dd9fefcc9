"""Coverage of the complete-case CI under the default mechanism (issue 16, item 6).

Reproduces the experiments of docs/stress-study.md, section "Coverage of the complete-case CI
under the default mechanism". Each replicate simulates the default cohort exactly as the
simulation study does (``simulation/simulation_study.py``: the same scenario config, the
real eligibility and allocation rules, the pipeline's own mixed model), with the replicate
seeds of the simulation study's ``default`` scenario (``config/simulation_study.yaml``, seed
20260108), so replicate *r* of every experiment below starts from the same random draws:
experiments that switch a simulator feature off are paired with the default.

Experiments (simulator variants; config overrides unless stated):

- ``default``: the default design.
- ``mcar_discharge``: discharge missingness completely at random (weights of age, intake
  score and sessions 0; the counts stay exact).
- ``random_allocation``: ETMI among adopters' patients at random (no selection on age or on
  the stable level; adopters still chosen by therapist age).
- ``exact_scores``: no rounding or bounding of the recorded scores (test-only patch of
  ``simulate._recorded``, never in the package).
- ``all_off``: the three above together.

Analyses of every replicate (complete cases of the primary outcome, function):

- ``lmm``: the primary change-score mixed model (REML, Satterthwaite df), as the pipeline.
- ``lmm_normal``: the same estimate and SE with a normal quantile (is the df the problem?).
- ``gls_oracle``: the mixed model's change-score equivalent (with two time points and every
  patient complete, the arm x time estimate is the GLS estimate of ``change ~ arm +
  covariates`` with a therapist random intercept of variance ``2 s_w^2`` and residual
  ``2 s_e^2``), computed with the *true* variance components of the simulator: its Wald CI
  is exact when the simulated change follows that model, so its coverage separates a
  data-generating mismatch from the estimation of the variance components.
- ``gls_reml``: the same GLS with the mixed model's REML components (checks the equivalence:
  its estimate must equal ``lmm``'s).
- ``gls_sandwich``: that GLS estimate with a therapist-clustered sandwich (working
  covariance the REML model, factor G/(G-1), t with G-1 df).
- ``ols_cr1``, ``ols_cr2``: least-squares change score with therapist-clustered CR1 (as the
  pipeline's bracketing) and CR2 (Bell-McCaffrey, as ``clubSandwich::vcovCR(type = "CR2")``)
  standard errors, t with G-1 df.
- ``lmm_log_duration`` (``--full``): the mixed model with log(symptom weeks) as covariate,
  the scale on which the simulator generates its effect.

Usage (from the repository root; one process, ~1 s per replicate with ``--full``)::

    PYTHONPATH=src python docs/coverage/coverage_study.py run --experiment default \
        --replicates 0:1500 --full --out reports/coverage/default.csv
    PYTHONPATH=src python docs/coverage/coverage_study.py summary \
        --inputs reports/coverage/*.csv --out docs/coverage/summary.csv

Outputs are deterministic (seeded; rows in replicate order).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.causal.common import ancova_design
from trial_analysis.columns import ARM
from trial_analysis.config import load_config
from trial_analysis.models.distributions import norm_ppf, t_ppf, t_sf
from trial_analysis.models.outcome_models import EFFECT_MODEL, EFFECT_TERM, fit_outcome_model
from trial_analysis.models.robust import cr1_factor
from trial_analysis.simulation import simulate
from trial_analysis.simulation.simulate import _outcome_parameters, simulate_extract
from trial_analysis.simulation.simulation_study import (
    analysis_table_from_extract,
    load_study,
    replicate_seed,
    scenario_config,
)

OUTCOME = "function"
POPULATION = "complete_case"
SEED_SCENARIO = "default"  # replicate seeds of the simulation study's default scenario
OVERRIDES: dict[str, dict[str, Any]] = {
    "default": {},
    "mcar_discharge": {"missingness": {"age_per_10y": 0.0, "function_intake_per_10": 0.0,
                                       "sessions": 0.0}},
    "random_allocation": {"confounding": {"age_per_10y": 0.0, "function_intake_per_10": 0.0}},
    "exact_scores": {},
}
OVERRIDES["all_off"] = {**OVERRIDES["mcar_discharge"], **OVERRIDES["random_allocation"]}
EXACT = {"exact_scores", "all_off"}
COLUMNS = ["experiment", "replicate", "analysis", "estimate", "std_error", "df", "ci_low",
           "ci_high", "p_value", "var_therapist_time", "var_residual"]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) else value
    return out


def experiment_config(root: Path, experiment: str) -> tuple[dict[str, Any], Any, Any]:
    """The scenario config of one experiment, the study and its default scenario."""
    base = load_config(root / "config" / "config.yaml")
    study = load_study(root / "config" / "simulation_study.yaml", base)
    scenario = study.scenario(SEED_SCENARIO)
    cfg = scenario_config(base, scenario)
    cfg["simulation"]["assumptions"] = _merge(cfg["simulation"]["assumptions"],
                                              OVERRIDES[experiment])
    return cfg, study, scenario


def _interval(estimate: float, se: float, df: float) -> dict[str, float]:
    q = t_ppf(0.975, df) if math.isfinite(df) else norm_ppf(0.975)
    p = 2 * t_sf(abs(estimate / se), df) if math.isfinite(df) else math.erfc(
        abs(estimate / se) / math.sqrt(2))
    return {"estimate": estimate, "std_error": se, "df": df, "ci_low": estimate - q * se,
            "ci_high": estimate + q * se, "p_value": p}


def _gls(X: np.ndarray, y: np.ndarray, g: np.ndarray, var_cluster: float, var_resid: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GLS with a cluster random intercept: beta, model covariance, V^-1-weighted residual sums.

    ``V_g^-1 = (I - c_g J) / s_e^2``, ``c_g = s_v^2 / (s_e^2 + n_g s_v^2)``.
    """
    G = int(g.max()) + 1
    n_g = np.bincount(g, minlength=G).astype(float)
    c = var_cluster / (var_resid + n_g * var_cluster)
    Sx = np.zeros((G, X.shape[1]))
    np.add.at(Sx, g, X)
    Sy = np.bincount(g, weights=y, minlength=G)
    XtVX = (X.T @ X - (Sx * c[:, None]).T @ Sx) / var_resid
    XtVy = (X.T @ y - (Sx * c[:, None]).T @ Sy) / var_resid
    cov = np.linalg.inv(XtVX)
    beta = cov @ XtVy
    r = y - X @ beta
    Sr = np.bincount(g, weights=r, minlength=G)
    # per cluster X_g' V_g^-1 r_g
    Xr = np.zeros((G, X.shape[1]))
    np.add.at(Xr, g, X * r[:, None])
    scores = (Xr - Sx * (c * Sr)[:, None]) / var_resid
    return beta, cov, scores


def _cr2(X: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS with CR2 (Bell-McCaffrey) cluster covariance, as clubSandwich's vcovCR CR2."""
    bread = np.linalg.inv(X.T @ X)
    beta = bread @ X.T @ y
    r = y - X @ beta
    meat = np.zeros_like(bread)
    order = np.argsort(g, kind="stable")
    bounds = np.flatnonzero(np.diff(np.r_[-1, g[order], g.max() + 1]))
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[start:stop]
        Xg = X[rows]
        H = Xg @ bread @ Xg.T
        values, vectors = np.linalg.eigh(np.eye(len(rows)) - H)
        A = (vectors / np.sqrt(np.clip(values, 1e-12, None))) @ vectors.T
        u = Xg.T @ (A @ r[rows])
        meat += np.outer(u, u)
    return beta, bread @ meat @ bread


def _true_change_variances(cfg: dict[str, Any], exact: bool) -> tuple[float, float]:
    """Variance of the therapist part and of the patient part of the simulated change."""
    vc = _outcome_parameters(cfg)[OUTCOME]["variance_components"]
    rounding = 0.0 if exact else 2 / 12  # two scores rounded to integers (uniform error)
    return 2 * vc["therapist_time"], 2 * vc["residual"] + rounding


def analyse(analysis: pd.DataFrame, cfg: dict[str, Any], full: bool, exact: bool
            ) -> list[dict[str, Any]]:
    """Every analysis of one replicate's analysis table (rows of COLUMNS, without ids)."""
    fit = fit_outcome_model(analysis, cfg, OUTCOME, POPULATION)
    frame = fit.to_frame()
    effect = frame[(frame["term"] == EFFECT_TERM) & (frame["model"] == EFFECT_MODEL)].iloc[0]
    if not bool(effect["converged"]):
        raise RuntimeError(f"not converged: {effect['warnings']}")
    vc = fit.variance_components
    est, se, df = float(effect["estimate"]), float(effect["std_error"]), float(effect["df"])
    rows = [{"analysis": "lmm", **_interval(est, se, df)},
            {"analysis": "lmm_normal", **_interval(est, se, math.inf)}]
    for row in rows:
        row |= {"var_therapist_time": vc["therapist:time"], "var_residual": vc["residual"]}
    cc = analysis[analysis[f"complete_{OUTCOME}"] == 1]
    covariates = list(cfg["analysis"]["covariates"])
    design = ancova_design(cc, OUTCOME, covariates, form="change")
    X, y, g = design.X, design.y, design.clusters
    j = design.names.index(ARM)
    G = int(g.max()) + 1
    for name, (sv, se2) in (("gls_oracle", _true_change_variances(cfg, exact)),
                            ("gls_reml", (2 * vc["therapist:time"], 2 * vc["residual"]))):
        beta, cov, scores = _gls(X, y, g, sv, se2)
        rows.append({"analysis": name, **_interval(beta[j], math.sqrt(cov[j, j]), math.inf)})
        if name == "gls_reml":
            robust = G / (G - 1) * cov @ (scores.T @ scores) @ cov
            rows.append({"analysis": "gls_sandwich",
                         **_interval(beta[j], math.sqrt(robust[j, j]), G - 1)})
    bread = np.linalg.inv(X.T @ X)
    beta = bread @ X.T @ y
    Xr = np.zeros((G, X.shape[1]))
    np.add.at(Xr, g, X * (y - X @ beta)[:, None])
    cr1 = cr1_factor(len(y), X.shape[1], G) * bread @ (Xr.T @ Xr) @ bread
    rows.append({"analysis": "ols_cr1", **_interval(beta[j], math.sqrt(cr1[j, j]), G - 1)})
    beta2, cr2 = _cr2(X, y, g)
    rows.append({"analysis": "ols_cr2", **_interval(beta2[j], math.sqrt(cr2[j, j]), G - 1)})
    if full:
        logged = analysis.assign(log_symptom_weeks=np.log(analysis["symptom_duration_weeks"]))
        cfg_log = copy.deepcopy(cfg)
        cfg_log["analysis"]["covariates"] = ["log_symptom_weeks" if c == "symptom_duration_weeks"
                                             else c for c in covariates]
        f2 = fit_outcome_model(logged, cfg_log, OUTCOME, POPULATION).to_frame()
        e2 = f2[(f2["term"] == EFFECT_TERM) & (f2["model"] == EFFECT_MODEL)].iloc[0]
        rows.append({"analysis": "lmm_log_duration",
                     **_interval(float(e2["estimate"]), float(e2["std_error"]),
                                 float(e2["df"]))})
    return rows


def run(root: Path, experiment: str, replicates: Iterable[int], full: bool, out: Path) -> None:
    """Run replicates of one experiment and write their rows (COLUMNS) to ``out``."""
    cfg, study, scenario = experiment_config(root, experiment)
    exact = experiment in EXACT
    original = simulate._recorded
    if exact:  # test-only patch: the recorded score is the latent one (no rounding, no bounds)
        simulate._recorded = lambda latent, spec: np.asarray(latent, dtype=float) + 0.0
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for r in replicates:
            seed = replicate_seed(study.seed, SEED_SCENARIO, r)
            extract = simulate_extract(cfg, seed, scenario.n_patients)
            try:
                analysed = analyse(analysis_table_from_extract(extract, cfg), cfg, full, exact)
            # A failed fit is a result to count (column `failed` of the summary), not a crash.
            except Exception as error:  # noqa: BLE001
                print(f"replicate {r} failed: {type(error).__name__}: {error}", flush=True)
                analysed = [{"analysis": "failed"}]
            for row in analysed:
                rows.append({"experiment": experiment, "replicate": r, **row})
            if r % 50 == 0:
                print(f"{experiment} replicate {r}: {time.perf_counter() - started:.0f} s",
                      flush=True)
    finally:
        simulate._recorded = original
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(out, index=False, float_format="%.10g")


def _measures(group: pd.DataFrame, truth: float) -> dict[str, float]:
    """Morris, White & Crowther (2019) measures with Monte Carlo SEs."""
    n = len(group)
    est, se = group["estimate"].to_numpy(), group["std_error"].to_numpy()
    emp = float(est.std(ddof=1))
    cover = float(((group["ci_low"] <= truth) & (truth <= group["ci_high"])).mean())
    # Type I error of the null twin: the same replicate with true effect 0. The effect (4) is
    # an integer added to the latent discharge score of ETMI patients, so rounding commutes
    # with it and the null twin's estimate is this estimate - 4 with the same SE (up to the
    # instrument's bounds, reached by < 1 % of scores); its CI excludes 0 exactly when this
    # CI excludes 4 (checked with `null-check`).
    type1 = 1 - cover
    return {"replicates": n, "bias": float(est.mean() - truth),
            "bias_mcse": emp / math.sqrt(n), "empirical_se": emp,
            "empirical_se_mcse": emp / math.sqrt(2 * (n - 1)),
            "mean_model_se": float(se.mean()), "mean_model_se_mcse": float(se.std(ddof=1))
            / math.sqrt(n), "se_ratio": float(se.mean()) / emp,
            "coverage": cover, "coverage_mcse": math.sqrt(cover * (1 - cover) / n),
            "type1_error": type1, "type1_error_mcse": math.sqrt(type1 * (1 - type1) / n)}


def summary(inputs: Sequence[Path], out: Path, truth: float = 4.0) -> pd.DataFrame:
    """One row per experiment and analysis (replicates, bias, SEs, coverage, type I error)."""
    data = pd.concat([pd.read_csv(p) for p in inputs], ignore_index=True)
    data = data.drop_duplicates(["experiment", "replicate", "analysis"])
    failed = data[data["analysis"] == "failed"].groupby("experiment").size()
    data = data[data["analysis"] != "failed"]
    rows = [{"experiment": e, "analysis": a, **_measures(grp, truth),
             "failed": int(failed.get(e, 0))}
            for (e, a), grp in data.groupby(["experiment", "analysis"], sort=True)]
    table = pd.DataFrame(rows)
    table.to_csv(out, index=False, float_format="%.4f")
    return table


def markdown(table: pd.DataFrame) -> str:
    """The summary as the Markdown table of docs/stress-study.md (MCSE in brackets)."""
    lines = ["| experiment | analysis | replicates | bias | empirical SE | mean model SE | "
             "coverage | type I error |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        lines.append(
            f"| {row.experiment} | {row.analysis} | {row.replicates} | {row.bias:.3f} "
            f"({row.bias_mcse:.3f}) | {row.empirical_se:.3f} ({row.empirical_se_mcse:.3f}) | "
            f"{row.mean_model_se:.3f} ({row.mean_model_se_mcse:.3f}) | {row.coverage:.3f} "
            f"({row.coverage_mcse:.3f}) | {row.type1_error:.3f} ({row.type1_error_mcse:.3f}) |")
    return "\n".join(lines)


def null_check(root: Path, replicates: Iterable[int]) -> pd.DataFrame:
    """Default vs its null twin (effect 0, same seed): estimate difference, SEs, decisions."""
    cfg, study, scenario = experiment_config(root, "default")
    cfg0 = copy.deepcopy(cfg)
    cfg0["simulation"]["assumptions"][f"effect_{OUTCOME}"] = 0.0
    rows = []
    for r in replicates:
        seed = replicate_seed(study.seed, SEED_SCENARIO, r)
        pair = []
        for c in (cfg, cfg0):
            fit = fit_outcome_model(analysis_table_from_extract(
                simulate_extract(c, seed, scenario.n_patients), c), c, OUTCOME, POPULATION)
            f = fit.to_frame()
            pair.append(f[(f["term"] == EFFECT_TERM) & (f["model"] == EFFECT_MODEL)].iloc[0])
        eff, null = pair
        rows.append({"replicate": r, "difference": eff["estimate"] - null["estimate"],
                     "se_effect": eff["std_error"], "se_null": null["std_error"],
                     "covers_4": eff["ci_low"] <= 4 <= eff["ci_high"],
                     "null_rejects": null["p_value"] < 0.05})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--experiment", choices=sorted(OVERRIDES), required=True)
    p_run.add_argument("--replicates", default="0:100", help="a:b, half-open")
    p_run.add_argument("--full", action="store_true", help="also the log-duration model")
    p_run.add_argument("--out", type=Path, required=True)
    p_sum = sub.add_parser("summary")
    p_sum.add_argument("--inputs", type=Path, nargs="+", required=True)
    p_sum.add_argument("--out", type=Path, required=True)
    p_null = sub.add_parser("null-check")
    p_null.add_argument("--replicates", default="0:50")
    p_null.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    if args.command == "summary":
        print(markdown(summary(args.inputs, args.out)))
        return
    start, stop = (int(x) for x in args.replicates.split(":"))
    if args.command == "run":
        run(root, args.experiment, range(start, stop), args.full, args.out)
    else:
        table = null_check(root, range(start, stop))
        table.to_csv(args.out, index=False, float_format="%.10g")
        print(table.describe().to_string())
        print("decisions agree:", bool((table["covers_4"] != table["null_rejects"]).all()))


if __name__ == "__main__":
    main()
