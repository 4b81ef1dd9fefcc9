"""Benchmark the MMRM (trial_analysis.models.mmrm) against R's nlme::gls and glmmTMB.

Simulates a two-arm trial with four follow-up visits per patient (unstructured covariance,
~15 % of later visits missing by monotone dropout), fits

    y ~ arm * visit + baseline,   unstructured covariance over visits within patient, REML

with each engine and prints the fit times side by side, and the largest relative difference
of the fixed effects and of the covariance matrix against each R engine:

- this package: ``fit_mmrm`` (BFGS + Newton polish, Satterthwaite df included; the
  Kenward-Roger fit is timed separately);
- nlme: ``gls(correlation = corSymm(form = ~ visit_idx | id), weights = varIdent(form = ~ 1 |
  visit))``, the textbook R fit of an MMRM;
- glmmTMB: ``us(0 + visit | id)`` with ``dispformula = ~ 0`` (no separate residual), REML.

Only the fitting call is timed inside R (``system.time``); the R process (start-up, reading
the CSV) is reported separately. One BLAS thread on both sides.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_mmrm.py                        # 1k and 10k patients
    .venv/bin/python benchmarks/bench_mmrm.py --sizes 1000 10000 100000 --gls-max 10000

nlme is skipped above ``--gls-max`` patients (default 10,000: it needs minutes there and grows
faster than linearly), glmmTMB above ``--tmb-max`` (default 100,000). This is a script, not a
test.
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

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trial_analysis.models.mmrm import fit_mmrm  # noqa: E402

VISITS = ("v1", "v2", "v3", "v4")
SIGMA = np.array([[36.0, 25.0, 20.0, 15.0],
                  [25.0, 49.0, 33.0, 26.0],
                  [20.0, 33.0, 64.0, 40.0],
                  [15.0, 26.0, 40.0, 81.0]])

R_SCRIPT = r"""
suppressPackageStartupMessages({library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
engine <- args[2]
d <- read.csv(args[1])
d$visit <- factor(d$visit, levels = c("v1", "v2", "v3", "v4"))
d$id <- factor(d$id)
if (engine == "gls") {
  suppressPackageStartupMessages(library(nlme))
  elapsed <- system.time(fit <- gls(y ~ arm * visit + baseline, data = d, method = "REML",
    correlation = corSymm(form = ~ visit_idx | id), weights = varIdent(form = ~ 1 | visit),
    control = glsControl(msMaxIter = 500, maxIter = 500)))[["elapsed"]]
  beta <- coef(fit)
  complete <- names(which(table(d$id) == 4))[1]
  S <- matrix(as.numeric(getVarCov(fit, individual = complete)), 4, 4)
} else {
  suppressPackageStartupMessages(library(glmmTMB))
  elapsed <- system.time(fit <- glmmTMB(y ~ arm * visit + baseline + us(0 + visit | id),
    data = d, dispformula = ~ 0, REML = TRUE))[["elapsed"]]
  beta <- fixef(fit)$cond
  S <- unname(VarCorr(fit)$cond$id[1:4, 1:4])
}
cat(toJSON(list(seconds = elapsed, beta = unname(beta), names = names(beta),
                sigma = unname(S)), digits = NA, auto_unbox = TRUE))
"""


def simulate(n_patients: int, seed: int = 1) -> pd.DataFrame:
    """Long data: id, arm, baseline, visit (v1-v4), visit_idx (1-4), y."""
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, 2, n_patients)
    baseline = rng.normal(40, 8, n_patients)
    mean = (30 + np.array([1.0, 2.0, 3.0, 3.5]) + 0.5 * (baseline[:, None] - 40)
            + arm[:, None] * np.array([1.0, 2.5, 3.5, 4.0]))
    y = mean + rng.multivariate_normal(np.zeros(4), SIGMA, n_patients)
    last = np.minimum(4, 1 + rng.geometric(0.12, n_patients))  # visits attended: 1..last
    ids = np.repeat(np.arange(n_patients), last)
    visit = np.concatenate([np.arange(k) for k in last])
    return pd.DataFrame({"id": ids, "arm": arm[ids], "baseline": np.round(baseline[ids], 3),
                         "visit": np.asarray(VISITS)[visit], "visit_idx": visit + 1,
                         "y": np.round(y[ids, visit], 4)})


def design(d: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """X with R's model.matrix columns for y ~ arm * visit + baseline."""
    cols = {"(Intercept)": np.ones(len(d)), "arm": d["arm"].to_numpy(float)}
    for v in VISITS[1:]:
        cols[f"visit{v}"] = (d["visit"] == v).to_numpy(float)
    cols["baseline"] = d["baseline"].to_numpy(float)
    for v in VISITS[1:]:
        cols[f"arm:visit{v}"] = cols["arm"] * cols[f"visit{v}"]
    return np.column_stack(list(cols.values())), list(cols)


def run_r(csv: str, engine: str) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
    start = time.perf_counter()
    proc = subprocess.run(["Rscript", f.name, csv, engine], capture_output=True, text=True,
                          check=False, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    os.unlink(f.name)
    if proc.returncode != 0:
        print(f"  {engine} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = wall
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--gls-max", type=int, default=10000)
    parser.add_argument("--tmb-max", type=int, default=100000)
    parser.add_argument("--no-r", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        d = simulate(n)
        X, names = design(d)
        y, ids, visit = d["y"].to_numpy(float), d["id"].to_numpy(), d["visit_idx"].to_numpy() - 1
        start = time.perf_counter()
        fit = fit_mmrm(y, X, ids, visit, 4, covariance="unstructured", reml=True)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        fit_mmrm(y, X, ids, visit, 4, covariance="unstructured", reml=True, ddf="kenward_roger")
        kr_seconds = time.perf_counter() - start
        row = {"patients": n, "rows": len(d), "python_s": seconds, "python_kr_s": kr_seconds}
        with tempfile.TemporaryDirectory() as tmp:
            csv = os.path.join(tmp, "mmrm.csv")
            d.to_csv(csv, index=False)
            for engine, limit in (("gls", args.gls_max), ("glmmTMB", args.tmb_max)):
                if args.no_r or n > limit:
                    continue
                ref = run_r(csv, engine)
                if ref is None:
                    continue
                assert ref["names"] == names, (ref["names"], names)
                beta = np.asarray(ref["beta"])
                row[f"{engine}_s"] = ref["seconds"]
                row[f"{engine}_process_s"] = ref["process_seconds"]
                row[f"{engine}_ratio"] = ref["seconds"] / seconds
                row[f"{engine}_beta_rel"] = float(np.max(np.abs(fit.beta - beta) / np.abs(beta)))
                S = np.asarray(ref["sigma"])
                row[f"{engine}_sigma_rel"] = float(np.max(np.abs(fit.sigma - S) / np.abs(S)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
