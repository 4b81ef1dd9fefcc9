"""Write the small committed datasets the golden tests fit in both Python and R.

Run from the repository root: ``.venv/bin/python tests/golden/make_golden_data.py``. The data
are simulated with a known truth (:func:`simulate_cohort`), which the recovery tests in
``tests/models/test_outcome_models.py`` also use. Each design stresses one part of the fitting code:

- ``cohort``: a reduced cohort (a few hundred patients) with the analysis-table columns;
  missing follow-up scores (MAR), so the all-available population differs from complete cases.
- ``unbalanced``: therapists with very different caseloads (1 to 40 patients).
- ``singletons``: many therapists with a single patient.
- ``small_subgroup``: a subgroup level with only a handful of patients.
- ``singular``: no therapist variation at all, so that variance component is at zero.
- ``multitime``: a randomised trial with four follow-ups (months 1, 3, 6, 12 after baseline
  month 0), patients clustered in sites (no therapists), follow-ups missing at random; the
  analysis-table columns of a several-follow-up study (``{outcome}__{label}``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

OUTCOMES = ("function", "pain")


def simulate_cohort(
    n_therapists: int = 40,
    patients_per_therapist: tuple[int, int] = (3, 15),
    *,
    n_clinics: int = 6,
    effect: float = 4.0,
    sd_therapist: float = 3.0,
    sd_therapist_time: float = 2.5,
    sd_patient: float = 7.0,
    sd_residual: float = 6.0,
    sd_clinic: float = 1.5,
    missing_followup: float = 0.3,
    depression_prevalence: float = 0.15,
    effect_modification: float = 0.0,
    caseloads: np.ndarray | None = None,
    seed: int = 1,
) -> pd.DataFrame:
    """Simulate an analysis table (one row per patient) with a known arm x time effect.

    The function outcome follows ``score = 50 + 0.05 age + 1.5 male - 0.02 duration
    + 1 arm + 10 time + effect arm time + (effect_modification arm time depression)
    + clinic + therapist + therapist x time + patient + residual``. Pain is a second outcome on
    another scale with no arm effect. Follow-up is missing at random (depending on age and
    baseline), so likelihood-based all-available analyses are unbiased.
    """
    rng = np.random.default_rng(seed)
    if caseloads is None:
        caseloads = rng.integers(patients_per_therapist[0], patients_per_therapist[1] + 1,
                                 size=n_therapists)
    n_therapists = len(caseloads)
    therapist_clinic = rng.integers(0, n_clinics, size=n_therapists)
    # Arm is decided at therapist level (adopters) with some patient-level variation.
    adopter = rng.random(n_therapists) < 0.5
    clinic_re = rng.normal(0, sd_clinic, n_clinics)
    therapist_re = rng.normal(0, sd_therapist, n_therapists)
    therapist_time_re = rng.normal(0, sd_therapist_time, (n_therapists, 2))
    therapist = np.repeat(np.arange(n_therapists), caseloads)
    n = len(therapist)
    p_arm = np.where(adopter[therapist], 0.6, 0.05)
    arm = (rng.random(n) < p_arm).astype(int)
    # Guarantee both arms even in tiny designs.
    arm[0], arm[-1] = 1, 0
    age = np.round(rng.normal(56, 16, n).clip(18, 95), 1)
    sex = np.where(rng.random(n) < 0.58, "F", "M")
    duration = np.round(rng.gamma(2.0, 20.0, n), 1)
    depression = (rng.random(n) < depression_prevalence).astype(int)
    anxiety = (rng.random(n) < 0.12 + 0.2 * depression).astype(int)
    male = (sex == "M").astype(float)
    patient_re = rng.normal(0, sd_patient, n)
    clinic = therapist_clinic[therapist]
    common = (50 + 0.05 * age + 1.5 * male - 0.02 * duration + 1.0 * arm
              + clinic_re[clinic] + therapist_re[therapist] + patient_re)
    base = common + therapist_time_re[therapist, 0] + rng.normal(0, sd_residual, n)
    follow = (common + 10 + (effect + effect_modification * depression) * arm
              + therapist_time_re[therapist, 1] + rng.normal(0, sd_residual, n))
    pain_common = 6 + 0.3 * rng.normal(size=n_therapists)[therapist] + rng.normal(0, 1.2, n)
    pain_base = pain_common + rng.normal(0, 1.0, n)
    pain_follow = pain_common - 2 + rng.normal(0, 1.0, n)
    # MAR: the chance of a follow-up depends on observed age and baseline only.
    logit_observed = (np.log((1 - missing_followup) / missing_followup)
                      + 0.015 * (age - 56) - 0.02 * (base - 52))
    observed = rng.random(n) < 1 / (1 + np.exp(-logit_observed))
    frame = pd.DataFrame({
        "patient_id": [f"P{i:05d}" for i in range(n)],
        "episode_id": [f"E{i:06d}" for i in range(n)],
        "arm": np.where(arm == 1, "ETMI", "usual care"),
        "arm_intervention": arm,
        "therapist_id": [f"T{t:03d}" for t in therapist],
        "clinic_id": [f"C{c:02d}" for c in clinic],
        "age": age,
        "sex": sex,
        "symptom_duration_weeks": duration,
        "depression": depression,
        "anxiety": anxiety,
        "bmi": np.round(rng.normal(27, 4, n), 1),
        "ses_score": np.round(rng.uniform(1, 10, n), 1),
        "function_baseline": np.round(base, 6),
        "function_followup": np.where(observed, np.round(follow, 6), np.nan),
        "pain_baseline": np.round(pain_base, 6),
        "pain_followup": np.where(observed, np.round(pain_follow, 6), np.nan),
    })
    for outcome in OUTCOMES:
        frame[f"complete_{outcome}"] = (
            frame[f"{outcome}_baseline"].notna() & frame[f"{outcome}_followup"].notna()
        ).astype(int)
    frame["complete_case"] = frame["complete_function"]
    return frame


MULTITIME_LABELS = ("m1", "m3", "m6", "m12")
MULTITIME_MONTHS = {"m0": 0.0, "m1": 1.0, "m3": 3.0, "m6": 6.0, "m12": 12.0}


def simulate_multitime(n_sites: int = 16, patients_per_site: tuple[int, int] = (8, 20), *,
                       effect_per_month: float = 0.4, sd_site: float = 2.0,
                       sd_site_time: float = 1.0, sd_patient: float = 6.0,
                       sd_residual: float = 5.0, missing: float = 0.15,
                       seed: int = 21) -> pd.DataFrame:
    """Simulate a randomised trial's analysis table with four follow-ups, clustered by site.

    ``function`` at month t: ``40 + 0.05 age + 1.5 male + 1.2 sqrt(t) (recovery) +
    effect_per_month min(t, 6) arm (+ 1 depression arm t/12) + site + site x time point +
    patient + residual``, arm randomised 1:1 within site. Each follow-up is missing with
    probability ``missing`` (higher for older patients: MAR). ``function_followup`` repeats
    the last follow-up (the primary one), as the analysis table does.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(patients_per_site[0], patients_per_site[1] + 1, size=n_sites)
    site = np.repeat(np.arange(n_sites), sizes)
    n = len(site)
    arm = rng.permutation(np.arange(n) % 2)
    age = np.round(rng.normal(50, 14, n).clip(18, 90), 1)
    sex = np.where(rng.random(n) < 0.55, "F", "M")
    duration = np.round(rng.gamma(2.0, 15.0, n), 1)
    depression = (rng.random(n) < 0.25).astype(int)
    times = ["m0", *MULTITIME_LABELS]
    site_re = rng.normal(0, sd_site, n_sites)
    site_time_re = rng.normal(0, sd_site_time, (n_sites, len(times)))
    patient_re = rng.normal(0, sd_patient, n)
    common = (40 + 0.05 * age + 1.5 * (sex == "M") - 0.01 * duration + site_re[site]
              + patient_re)
    frame = pd.DataFrame({
        "patient_id": [f"P{i:04d}" for i in range(n)],
        "arm": np.where(arm == 1, "ETMI", "usual care"),
        "arm_intervention": arm,
        "therapist_id": np.nan,
        "clinic_id": np.nan,
        "site": [f"S{s:02d}" for s in site],
        "age": age,
        "sex": sex,
        "symptom_duration_weeks": duration,
        "depression": depression,
    })
    for k, label in enumerate(times):
        t = MULTITIME_MONTHS[label]
        score = (common + 1.2 * np.sqrt(t) + effect_per_month * min(t, 6.0) * arm
                 + 1.0 * depression * arm * t / 12 + site_time_re[site, k]
                 + rng.normal(0, sd_residual, n))
        if k == 0:
            frame["function_baseline"] = np.round(score, 6)
            continue
        p_missing = missing * np.exp(0.02 * (age - 50)) / (1 + missing * (np.exp(
            0.02 * (age - 50)) - 1))
        observed = rng.random(n) >= p_missing
        frame[f"function__{label}"] = np.where(observed, np.round(score, 6), np.nan)
    follow = [f"function__{label}" for label in MULTITIME_LABELS]
    frame["function_followup"] = frame[follow[-1]]
    frame["complete_function"] = (frame["function_baseline"].notna()
                                  & frame[follow].notna().all(axis=1)).astype(int)
    frame["complete_case"] = frame["complete_function"]
    return frame


def golden_designs() -> dict[str, pd.DataFrame]:
    """The committed datasets, by name."""
    rng = np.random.default_rng(7)
    return {
        "cohort": simulate_cohort(40, (3, 15), seed=11),
        "unbalanced": simulate_cohort(
            caseloads=np.concatenate([[40, 35, 30], rng.integers(1, 6, 25)]), seed=12),
        "singletons": simulate_cohort(
            caseloads=np.concatenate([np.ones(30, dtype=int), rng.integers(4, 12, 15)]),
            seed=13),
        "small_subgroup": simulate_cohort(30, (4, 12), depression_prevalence=0.04,
                                          effect_modification=3.0, seed=14),
        "singular": simulate_cohort(30, (4, 12), sd_therapist=0.0, sd_therapist_time=0.0,
                                    sd_clinic=0.0, seed=15),
        "multitime": simulate_multitime(),
    }


def main() -> None:
    out = Path(__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in golden_designs().items():
        frame.to_csv(out / f"{name}.csv", index=False, lineterminator="\n", float_format="%.10g")
        clusters = (f"{frame['therapist_id'].nunique()} therapists" if "site" not in frame
                    else f"{frame['site'].nunique()} sites")
        print(f"{name}: {len(frame)} patients, {clusters}")


if __name__ == "__main__":
    main()
