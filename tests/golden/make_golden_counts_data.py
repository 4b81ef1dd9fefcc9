"""Write the small committed datasets for the sessions/responders golden tests.

Run from the repository root: ``python tests/golden/make_golden_counts_data.py``. Writes
``tests/golden/data/counts_{balanced,unbalanced,smallcell}.csv``; then run
``Rscript tests/golden/make_golden_counts.R`` to refresh the R reference values. The data are
generated with a fixed seed, so rerunning gives identical files.

Columns follow the analysis-table contract: ``patient_id, arm_intervention, therapist_id, age,
sex, symptom_duration_weeks, n_sessions, function_baseline, function_followup`` (function:
higher is better, MCID 5 in the tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "data"


def make(
    seed: int,
    n_therapists: int,
    patients_per_therapist: tuple[int, int],
    p_intervention: float,
    ratio: float,
    theta: float,
    effect_function: float,
) -> pd.DataFrame:
    """Clustered NB session counts and function scores with a known arm effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_therapists):
        size = int(rng.integers(patients_per_therapist[0], patients_per_therapist[1] + 1))
        therapist_effect = rng.normal(0, 0.2)
        for _ in range(size):
            rows.append({"therapist_id": f"T{t + 1:03d}", "therapist_effect": therapist_effect})
    frame = pd.DataFrame(rows)
    n = len(frame)
    frame.insert(0, "patient_id", [f"P{i + 1:04d}" for i in range(n)])
    frame["arm_intervention"] = (rng.random(n) < p_intervention).astype(int)
    frame["age"] = np.round(rng.normal(55, 15, n), 1)
    frame["sex"] = np.where(rng.random(n) < 0.58, "F", "M")
    frame["symptom_duration_weeks"] = np.round(rng.gamma(2.0, 10.0, n), 1)
    log_mu = (
        np.log(5.0)
        + np.log(ratio) * frame["arm_intervention"]
        + 0.004 * (frame["age"] - 55)
        + 0.1 * (frame["sex"] == "M")
        + frame["therapist_effect"]
    )
    mu = np.exp(log_mu)
    frame["n_sessions"] = rng.negative_binomial(theta, theta / (theta + mu))
    frame["function_baseline"] = np.clip(np.round(rng.normal(50, 10, n)), 0, 100)
    change = 6 + effect_function * frame["arm_intervention"] + rng.normal(0, 8, n)
    frame["function_followup"] = np.clip(np.round(frame["function_baseline"] + change), 0, 100)
    return frame.drop(columns="therapist_effect")


DATASETS = {
    # Roughly balanced arms, 20 therapists of similar size.
    "balanced": {"seed": 101, "n_therapists": 20, "patients_per_therapist": (15, 25),
                 "p_intervention": 0.5, "ratio": 0.7, "theta": 3.0, "effect_function": 3.0},
    # One intervention patient in five, therapists of very unequal size.
    "unbalanced": {"seed": 202, "n_therapists": 25, "patients_per_therapist": (2, 30),
                   "p_intervention": 0.2, "ratio": 0.7, "theta": 1.5, "effect_function": 4.0},
    # Few patients: only a handful of intervention non-responders (small cells).
    "smallcell": {"seed": 303, "n_therapists": 10, "patients_per_therapist": (4, 8),
                  "p_intervention": 0.3, "ratio": 0.8, "theta": 5.0, "effect_function": 9.0},
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, spec in DATASETS.items():
        make(**spec).to_csv(OUT / f"counts_{name}.csv", index=False, lineterminator="\n")


if __name__ == "__main__":
    main()
