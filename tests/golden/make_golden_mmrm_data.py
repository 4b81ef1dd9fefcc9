"""Write the committed dataset of the MMRM golden tests (``tests/golden/data/mmrm.csv``).

Run from the repository root: ``.venv/bin/python tests/golden/make_golden_mmrm_data.py``.
A made-up two-arm trial, 160 patients, a baseline score and four follow-up visits whose
errors have an unstructured covariance (variances growing over time, correlations falling
with distance); follow-ups missing at random given the previous score (monotone dropout)
plus a few intermittently missed visits, so that the visit patterns differ. Long layout:
one row per patient and attended follow-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VISITS = ("w4", "w8", "w12", "w24")
SIGMA = np.array([[36.0, 25.0, 20.0, 15.0],
                  [25.0, 49.0, 33.0, 26.0],
                  [20.0, 33.0, 64.0, 40.0],
                  [15.0, 26.0, 40.0, 81.0]])


def simulate(n_patients: int = 160, seed: int = 20261204) -> pd.DataFrame:
    """The long table: id, arm (0/1), age, baseline, visit, visit_idx (1-4), y."""
    rng = np.random.default_rng(seed)
    arm = rng.permutation(np.arange(n_patients) % 2)
    age = np.round(rng.normal(50, 12, n_patients), 1)
    baseline = np.round(rng.normal(40, 8, n_patients), 1)
    effect = np.array([1.0, 2.5, 3.5, 4.0])
    mean = (30 + np.array([1.0, 2.0, 3.0, 3.5])[None, :] + 0.5 * (baseline[:, None] - 40)
            - 0.05 * (age[:, None] - 50) + arm[:, None] * effect[None, :])
    errors = rng.multivariate_normal(np.zeros(4), SIGMA, n_patients)
    y = np.round(mean + errors, 2)
    observed = np.ones_like(y, dtype=bool)
    for t in range(1, 4):
        # Dropout after a low previous score (missing at random).
        p_drop = 1 / (1 + np.exp(-(-2.6 - 0.08 * (y[:, t - 1] - 32))))
        observed[:, t] = observed[:, t - 1] & (rng.random(n_patients) > p_drop)
    intermittent = rng.random((n_patients, 4)) < 0.06
    intermittent[:, 3] = False
    observed &= ~intermittent
    rows = []
    for i in range(n_patients):
        for t, label in enumerate(VISITS):
            if observed[i, t]:
                rows.append({"id": f"p{i + 1:03d}", "arm": int(arm[i]), "age": age[i],
                             "baseline": baseline[i], "visit": label, "visit_idx": t + 1,
                             "y": y[i, t]})
    return pd.DataFrame(rows)


def main() -> None:
    out = Path(__file__).parent / "data" / "mmrm.csv"
    simulate().to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
