"""Benchmark the fast nested-LMM path against statsmodels MixedLM and R lme4.

Simulates two-time-point outcome data (baseline and follow-up per patient, some follow-ups
missing) with therapist, therapist x time and patient random intercepts, fits

    y ~ arm * time + age + sex + duration
        + (1|therapist) + (1|therapist:time) + (1|therapist:patient)

by REML with each engine, and prints fit time and the key estimates side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_lmm.py                   # quick: 1.6k and 40k patients
    .venv/bin/python benchmarks/bench_lmm.py --sizes 1600 40000 400000 1000000
    .venv/bin/python benchmarks/bench_lmm.py --sizes 40000 --no-r --statsmodels-max 40000

statsmodels is skipped above ``--statsmodels-max`` patients (default 40,000: it takes about a
minute there and grows faster than linearly). lme4 runs through ``Rscript`` when it is on the
PATH; only the ``lmer()`` call is timed inside R (``system.time``), and the whole R process
(start-up, reading the CSV, fitting) is reported separately. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

# One BLAS thread, as every pipeline step runs (trial_analysis.cli) and as R's reference BLAS
# does: the comparison is one core against one core. Set before numpy loads; an explicit
# setting in the environment wins.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trial_analysis.models.fast_lmm import fit_nested_lmm  # noqa: E402

TERMS = ["Intercept", "arm", "time", "arm:time", "age", "sexM", "duration"]
COMPONENTS = ["therapist", "therapist:time", "patient", "residual"]

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(data.table); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
d <- fread(args[1])
d[, sex := factor(sex, levels = c("F", "M"))]
d[, therapist_time := paste(therapist, time, sep = ":")]
d[, therapist_patient := paste(therapist, patient, sep = ":")]
f <- y ~ arm * time + age + sex + duration + (1|therapist) + (1|therapist_time) +
  (1|therapist_patient)
elapsed <- system.time(fit <- lmer(f, data = d, REML = TRUE))[["elapsed"]]
co <- summary(fit)$coefficients
vc <- as.data.frame(VarCorr(fit))
out <- list(seconds = elapsed, term = rownames(co), estimate = unname(co[, "Estimate"]),
            std_error = unname(co[, "Std. Error"]), vc_group = vc$grp, vc = vc$vcov,
            loglik = as.numeric(logLik(fit)))
cat(toJSON(out, digits = NA, auto_unbox = TRUE), "\n")
"""
R_NAMES = {"(Intercept)": "Intercept", "arm": "arm", "time": "time", "arm:time": "arm:time",
           "age": "age", "sexM": "sexM", "duration": "duration"}
R_COMPONENTS = {"therapist": "therapist", "therapist_time": "therapist:time",
                "therapist_patient": "patient", "Residual": "residual"}


def simulate(n_patients: int, patients_per_therapist: int, seed: int) -> pd.DataFrame:
    """Long data: one row per patient and time point (follow-up missing for ~15%)."""
    rng = np.random.default_rng(seed)
    n_therapists = max(128, n_patients // patients_per_therapist)
    therapist = rng.integers(0, n_therapists, n_patients)
    trained = rng.random(n_therapists) < 0.55
    arm = (rng.random(n_patients) < np.where(trained[therapist], 0.3, 0.02)).astype(float)
    age = np.round(rng.normal(56, 16.7, n_patients).clip(18, 95), 1)
    sex = np.where(rng.random(n_patients) < 0.58, "F", "M")
    duration = np.round(rng.gamma(2.0, 30.0, n_patients), 1)
    u_therapist = rng.normal(0, 3.0, n_therapists)
    u_cell = rng.normal(0, 2.0, (n_therapists, 2))
    u_patient = rng.normal(0, 7.0, n_patients)
    has_followup = rng.random(n_patients) > 0.15
    pid = np.arange(n_patients)
    rows = np.concatenate([pid, pid[has_followup]])
    t = np.concatenate([np.zeros(n_patients), np.ones(int(has_followup.sum()))])
    th = therapist[rows]
    y = (45 + 1.0 * arm[rows] + 9 * t + 4 * arm[rows] * t - 0.05 * age[rows]
         + 1.5 * (sex[rows] == "M") - 0.02 * duration[rows]
         + u_therapist[th] + u_cell[th, t.astype(int)] + u_patient[rows]
         + rng.normal(0, 8.0, len(rows)))
    return pd.DataFrame({"patient": rows, "therapist": th, "time": t, "arm": arm[rows],
                         "age": age[rows], "sex": sex[rows], "duration": duration[rows],
                         "y": np.round(y, 4)})


def design_matrix(d: pd.DataFrame) -> np.ndarray:
    arm, t = d["arm"].to_numpy(), d["time"].to_numpy()
    return np.column_stack([np.ones(len(d)), arm, t, arm * t, d["age"].to_numpy(),
                            (d["sex"] == "M").to_numpy(float), d["duration"].to_numpy()])


def run_fast(d: pd.DataFrame) -> dict:
    start = time.perf_counter()
    fit = fit_nested_lmm(d["y"].to_numpy(), design_matrix(d),
                         {"therapist": d["therapist"].to_numpy(),
                          "patient": d["patient"].to_numpy()},
                         time=d["time"].to_numpy(), time_effects=["therapist"],
                         column_names=TERMS)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "estimate": fit.fixed_effects.to_dict(),
            "std_error": fit.std_errors.to_dict(), "vc": dict(fit.variance_components),
            "loglik": fit.loglike, "note": "" if fit.converged else "NOT CONVERGED"}


def run_statsmodels(d: pd.DataFrame) -> dict:
    from statsmodels.regression.mixed_linear_model import MixedLM

    frame = d.assign(ttime=d["time"].astype(int).astype(str))
    X = pd.DataFrame(design_matrix(d), columns=TERMS)
    start = time.perf_counter()
    # The formula interface builds the per-group variance-component designs.
    frame = pd.concat([frame, X.add_prefix("x_").rename(columns=lambda c: c.replace(":", "_"))],
                      axis=1)
    xcols = [c for c in frame.columns if c.startswith("x_")]
    model = MixedLM.from_formula("y ~ 0 + " + " + ".join(xcols), frame, groups="therapist",
                                 re_formula="1",
                                 vc_formula={"patient": "0 + C(patient)",
                                             "tt": "0 + C(ttime)"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True, method=["bfgs"])
    seconds = time.perf_counter() - start
    scale = float(fit.scale)
    vcomp = dict(zip(model.exog_vc.names, fit.vcomp, strict=True))
    return {"seconds": seconds,
            "estimate": dict(zip(TERMS, fit.fe_params.to_numpy(), strict=True)),
            "std_error": dict(zip(TERMS, fit.bse_fe.to_numpy(), strict=True)),
            "vc": {"therapist": float(np.asarray(fit.cov_re)[0, 0]),
                   "therapist:time": float(vcomp["tt"]), "patient": float(vcomp["patient"]),
                   "residual": scale},
            "loglik": float(fit.llf), "note": "" if fit.converged else "NOT CONVERGED"}


def run_lme4(d: pd.DataFrame, workdir: str) -> dict:
    csv = os.path.join(workdir, "bench.csv")
    script = os.path.join(workdir, "bench.R")
    d.to_csv(csv, index=False)
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(R_SCRIPT)
    start = time.perf_counter()
    proc = subprocess.run(["Rscript", script, csv], capture_output=True, text=True, check=False)
    process_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"seconds": np.nan, "note": "R failed: " + proc.stderr.strip()[-300:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": float(out["seconds"]), "process_seconds": process_seconds,
            "estimate": {R_NAMES[t]: v for t, v in zip(out["term"], out["estimate"],
                                                        strict=True)},
            "std_error": {R_NAMES[t]: v for t, v in zip(out["term"], out["std_error"],
                                                         strict=True)},
            "vc": {R_COMPONENTS[g]: v for g, v in zip(out["vc_group"], out["vc"], strict=True)},
            "loglik": float(out["loglik"]), "note": ""}


def report(n_patients: int, n_rows: int, n_therapists: int, results: dict[str, dict]) -> None:
    print(f"\n=== {n_patients:,} patients, {n_rows:,} rows, {n_therapists:,} therapists ===")
    engines = list(results)
    header = f"{'':<26s}" + "".join(f"{e:>20s}" for e in engines)
    print(header)

    def row(label, getter, fmt="{:20.6f}"):
        cells = []
        for e in engines:
            try:
                cells.append(fmt.format(getter(results[e])))
            except (KeyError, TypeError, ValueError):
                cells.append(f"{'-':>20s}")
        print(f"{label:<26s}" + "".join(cells))

    row("fit seconds", lambda r: r["seconds"], "{:20.3f}")
    row("R process seconds", lambda r: r["process_seconds"], "{:20.3f}")
    row("arm:time estimate", lambda r: r["estimate"]["arm:time"], "{:20.8f}")
    row("arm:time std error", lambda r: r["std_error"]["arm:time"], "{:20.8f}")
    for c in COMPONENTS:
        row(f"var {c}", lambda r, c=c: r["vc"][c], "{:20.6f}")
    row("log-likelihood (REML)", lambda r: r["loglik"], "{:20.4f}")
    fast = results["fast"]
    for e in engines[1:]:
        other = results[e]
        if not np.isfinite(other.get("seconds", np.nan)):
            print(f"{e}: {other.get('note')}")
            continue
        est_rel = abs(fast["estimate"]["arm:time"] / other["estimate"]["arm:time"] - 1)
        se_rel = abs(fast["std_error"]["arm:time"] / other["std_error"]["arm:time"] - 1)
        vc_rel = max(abs(fast["vc"][c] / other["vc"][c] - 1) for c in COMPONENTS
                     if other["vc"][c] > 0)
        line = (f"{e}: time ratio {e}/fast = {other['seconds'] / fast['seconds']:.1f}x; "
                f"relative differences: arm:time {est_rel:.1e}, SE {se_rel:.1e}, "
                f"variances {vc_rel:.1e}, logLik diff {fast['loglik'] - other['loglik']:+.2e}")
        if "process_seconds" in other:
            line += f"; whole R process / fast = {other['process_seconds'] / fast['seconds']:.1f}x"
        print(line)
    for e in engines:
        if results[e].get("note"):
            print(f"note ({e}): {results[e]['note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1600, 40000],
                        help="numbers of patients (default: 1600 40000)")
    parser.add_argument("--patients-per-therapist", type=int, default=32)
    parser.add_argument("--statsmodels-max", type=int, default=40000,
                        help="skip statsmodels above this many patients")
    parser.add_argument("--no-statsmodels", action="store_true")
    parser.add_argument("--no-r", action="store_true", help="skip lme4")
    parser.add_argument("--seed", type=int, default=20260108)
    args = parser.parse_args(argv)
    have_r = shutil.which("Rscript") is not None and not args.no_r
    if not have_r and not args.no_r:
        print("Rscript not found: lme4 skipped")
    with tempfile.TemporaryDirectory() as workdir:
        for n in args.sizes:
            d = simulate(n, args.patients_per_therapist, args.seed)
            results = {"fast": run_fast(d)}
            if not args.no_statsmodels and n <= args.statsmodels_max:
                results["statsmodels"] = run_statsmodels(d)
            if have_r:
                results["lme4"] = run_lme4(d, workdir)
            report(n, len(d), int(d["therapist"].nunique()), results)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
