"""Write the small datasets behind tests/models/test_fast_lmm.py's lme4 comparisons.

Run from the repository root: ``.venv/bin/python tests/golden/fast_lmm/make_data.py``, then
``Rscript tests/golden/fast_lmm/make_reference.R``. The CSVs are committed, so neither script
is needed to run the tests. Long layout: one row per patient and time point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def simulate(n_patients: int, n_therapists: int, n_clinics: int, seed: int, *,
             sd_therapist: float, sd_cell: float, sd_patient: float, sd_clinic: float,
             p_baseline_only: float, size_skew: float) -> pd.DataFrame:
    """Two time points; therapist sizes drawn from a skewed distribution (some singletons)."""
    rng = np.random.default_rng(seed)
    weights = rng.gamma(size_skew, 1.0, n_therapists)
    therapist = rng.choice(n_therapists, n_patients, p=weights / weights.sum())
    clinic_of = rng.integers(0, n_clinics, n_therapists)
    arm_rate = np.where(rng.random(n_therapists) < 0.5, 0.4, 0.05)
    arm = (rng.random(n_patients) < arm_rate[therapist]).astype(int)
    age = np.round(rng.normal(55, 15, n_patients), 1)
    sex = (rng.random(n_patients) < 0.45).astype(int)
    u_clinic = rng.normal(0, sd_clinic, n_clinics)
    u_therapist = rng.normal(0, sd_therapist, n_therapists)
    u_cell = rng.normal(0, sd_cell, (n_therapists, 2))
    u_patient = rng.normal(0, sd_patient, n_patients)
    rows = []
    for i in range(n_patients):
        th = therapist[i]
        n_times = 1 if rng.random() < p_baseline_only else 2
        for t in range(n_times):
            y = (50 + 1.5 * arm[i] + 6 * t + 4 * arm[i] * t + 0.08 * age[i] + 1.2 * sex[i]
                 + u_clinic[clinic_of[th]] + u_therapist[th] + u_cell[th, t] + u_patient[i]
                 + rng.normal(0, 6.0))
            rows.append((f"P{i:04d}", f"T{th:03d}", f"C{clinic_of[th]:02d}", arm[i], t,
                         age[i], sex[i], round(y, 6)))
    return pd.DataFrame(rows, columns=["patient", "therapist", "clinic", "arm", "time", "age",
                                       "sex", "y"])


DATASETS = {
    # Moderately balanced, every patient with both time points.
    "balanced": dict(n_patients=240, n_therapists=24, n_clinics=6, seed=11, sd_therapist=3.0,
                     sd_cell=2.0, sd_patient=6.0, sd_clinic=2.0, p_baseline_only=0.0,
                     size_skew=5.0),
    # Very unequal therapist sizes (singletons), 30% of patients with a baseline row only.
    "unbalanced": dict(n_patients=260, n_therapists=40, n_clinics=7, seed=12, sd_therapist=3.0,
                       sd_cell=2.5, sd_patient=5.0, sd_clinic=1.5, p_baseline_only=0.3,
                       size_skew=0.4),
    # No therapist, cell or clinic variation: the fit is singular.
    "singular": dict(n_patients=150, n_therapists=15, n_clinics=4, seed=13, sd_therapist=0.0,
                     sd_cell=0.0, sd_patient=5.0, sd_clinic=0.0, p_baseline_only=0.1,
                     size_skew=3.0),
}


def main() -> None:
    for name, kwargs in DATASETS.items():
        simulate(**kwargs).to_csv(HERE / f"{name}.csv", index=False)


if __name__ == "__main__":
    main()
