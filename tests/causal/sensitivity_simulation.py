"""A small analysis table with known truth for the sensitivity-analysis tests.

Independent of ``trial_analysis.simulation.simulate`` on purpose: the tests need confounding and
missingness mechanisms they control precisely (switch each on or off, change its strength),
and they must not move when the default cohort's calibration changes.

Structure (per patient *i* of therapist *t*)::

    treated_i  ~ 0                                         if t is not an adopter
               ~ Bernoulli(expit(a0 + c * (-0.7 z_age + 0.5 z_base - 0.9 dep)))   otherwise
    change_i   = mean_change + effect * treated_i - 3 z_age - 4 dep - 0.3 (baseline_i - mean)
                 + u_t + therapist_confounding * adopter_t + e_i,   e_i ~ N(0, 8^2)
    followup_i = baseline_i + change_i

(the residuals ``e_i`` of the three outcomes correlate 0.5)

so that age and depression confound the comparison (ETMI patients are younger, less often
depressed, and those improve more); ``analysis.covariates`` in :func:`study_config` adjusts
for age but not depression, so only the propensity model (which includes depression) removes
all of the bias. ``therapist_confounding`` makes adopting therapists achieve more improvement
whatever the arm; ``therapist_selection`` makes adopters with a better own effect ``u_t`` give
ETMI to more of their patients (log-odds per SD of ``u_t``). Only a within-therapist
comparison removes either.

``n_sessions`` is an auxiliary: ``5 - 1.5 treated - 0.15 e_i + N(0, 1)`` (rounded, >= 1), so a
patient whose recovery was better than predicted had fewer sessions. Missing follow-up:

* ``"MAR"``: in the intervention arm a follow-up is more often recorded after few sessions
  (``logit P(observed) = 0.2 - strength * z_sessions * treated``), so completers in that arm
  recovered better than their covariates predict: complete-case analysis overstates the
  effect, while imputation using ``n_sessions`` within arm recovers it.
* ``"MNAR"``: the chance of a recorded follow-up depends on the follow-up itself
  (``logit P = 0.2 + strength * z_residual``), in both arms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MEANS = {"function": 51.0, "pain": 6.0, "fear_avoidance": 55.0}
SDS = {"function": 11.0, "pain": 2.0, "fear_avoidance": 20.0}
CHANGES = {"function": 11.0, "pain": -2.0, "fear_avoidance": -8.0}
# Per-outcome scale of prognostic and noise terms relative to function.
SCALE = {"function": 1.0, "pain": 0.2, "fear_avoidance": 1.6}
DIRECTION = {"function": 1.0, "pain": -1.0, "fear_avoidance": -1.0}


def simulate_cohort(
    n_patients: int = 3000,
    n_therapists: int = 60,
    n_clinics: int = 6,
    effects: dict[str, float] | None = None,
    confounding: float = 1.0,
    therapist_confounding: float = 0.0,
    therapist_selection: float = 0.0,
    therapist_sd: float = 1.5,
    missingness: str = "none",
    missing_strength: float = 1.0,
    seed: int = 1,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Simulate an analysis table (the columns of ``analysis.parquet``) and its truth."""
    effects = {"function": 4.0, "pain": 0.0, "fear_avoidance": -6.0} | (effects or {})
    rng = np.random.default_rng(seed)
    therapist_clinic = rng.integers(0, n_clinics, n_therapists)
    adopter = rng.random(n_therapists) < 0.6
    therapist_effect = rng.normal(0, therapist_sd, n_therapists)
    therapist = rng.integers(0, n_therapists, n_patients)

    age = np.clip(rng.normal(56, 16, n_patients), 18, 95)
    z_age = (age - 56) / 16
    female = rng.random(n_patients) < 0.58
    duration = 12 + rng.lognormal(2.5, 0.8, n_patients)
    depression = (rng.random(n_patients) < 0.2).astype(int)
    anxiety = (rng.random(n_patients) < 0.12 + 0.2 * depression).astype(int)
    bmi = rng.normal(28, 5, n_patients)
    bmi[rng.random(n_patients) < 0.1] = np.nan
    ses = rng.integers(1, 11, n_patients).astype(float)
    ses[rng.random(n_patients) < 0.05] = np.nan
    baseline = {name: MEANS[name] + SDS[name] * rng.normal(size=n_patients) for name in MEANS}
    z_base = (baseline["function"] - MEANS["function"]) / SDS["function"]

    logit = (-0.2 + confounding * (-0.7 * z_age + 0.5 * z_base - 0.9 * depression)
             + therapist_selection * therapist_effect[therapist] / therapist_sd)
    treated = ((rng.random(n_patients) < 1 / (1 + np.exp(-logit))) & adopter[therapist])
    treated = treated.astype(int)

    # Residuals of the three outcomes correlate (0.5) without being collinear: collinear
    # follow-ups that go missing together would leave a chained-equations sampler stuck.
    common = rng.normal(0, 1, n_patients)
    noises = {name: 8 * (np.sqrt(0.5) * common + np.sqrt(0.5) * rng.normal(0, 1, n_patients))
              for name in MEANS}
    noise = noises["function"]
    followup = {}
    for name in MEANS:
        scale = SCALE[name]
        change = (CHANGES[name] + effects[name] * treated
                  + scale * DIRECTION[name] * (-3 * z_age - 4 * depression
                                               + therapist_effect[therapist]
                                               + therapist_confounding * adopter[therapist])
                  - 0.3 * (baseline[name] - MEANS[name]) + scale * noises[name])
        followup[name] = baseline[name] + change
    sessions = np.maximum(1, np.round(5 - 1.5 * treated - 0.15 * noise
                                      + rng.normal(0, 1, n_patients)))

    observed = np.ones(n_patients, dtype=bool)
    if missingness == "MAR":
        z_sessions = (sessions - sessions.mean()) / sessions.std()
        p = 1 / (1 + np.exp(-(0.2 - missing_strength * z_sessions * treated)))
        observed = rng.random(n_patients) < p
    elif missingness == "MNAR":
        p = 1 / (1 + np.exp(-(0.2 + missing_strength * noise / 8)))
        observed = rng.random(n_patients) < p
    elif missingness != "none":
        raise ValueError(missingness)

    frame = pd.DataFrame({
        "patient_id": [f"P{i:05d}" for i in range(n_patients)],
        "episode_id": [f"E{i:06d}" for i in range(n_patients)],
        "arm": np.where(treated == 1, "ETMI", "usual care"),
        "arm_intervention": treated,
        "therapist_id": [f"T{t:03d}" for t in therapist],
        "clinic_id": [f"C{c:02d}" for c in therapist_clinic[therapist]],
        "age": age,
        "sex": np.where(female, "F", "M"),
        "symptom_duration_weeks": duration,
        "depression": depression,
        "anxiety": anxiety,
        "bmi": bmi,
        "ses_score": ses,
        "n_sessions": sessions.astype(int),
    })
    for name in MEANS:
        base = baseline[name].copy()
        base[rng.random(n_patients) < 0.03] = np.nan
        follow = np.where(observed, followup[name], np.nan)
        frame[f"{name}_baseline"] = base
        frame[f"{name}_followup"] = follow
        frame[f"complete_{name}"] = (~np.isnan(base) & ~np.isnan(follow)).astype(int)
    frame["complete_case"] = frame["complete_function"]
    truth = {"effects": effects, "adopter_share_of_control": float(
        adopter[therapist][treated == 0].mean())}
    return frame, truth


def study_config(**sensitivity: Any) -> dict[str, Any]:
    """A minimal study configuration for the sensitivity functions."""
    return {
        "seed": 20260108,
        "outcomes": [
            {"name": "function", "min": 0, "max": 100, "higher_is_better": True, "mcid": 5},
            {"name": "pain", "min": 0, "max": 10, "higher_is_better": False, "mcid": 2},
            {"name": "fear_avoidance", "min": 0, "max": 100, "higher_is_better": False,
             "mcid": 10},
        ],
        "primary_outcome": "function",
        "allocation": {"intervention": "ETMI", "control": "usual care"},
        "analysis": {"covariates": ["age", "sex", "symptom_duration_weeks"],
                     "populations": ["complete_case", "all_available"],
                     "confidence_level": 0.95},
        "sensitivity": sensitivity,
    }


def simulate_baseline_selection(
    n_patients: int = 1500,
    n_therapists: int = 50,
    effect: float = 4.0,
    mechanism: str = "observed_baseline",
    seed: int = 1,
) -> pd.DataFrame:
    """An analysis table (complete follow-up) where selection is on the baseline score.

    Each patient has a stable level ``L ~ N(51, 9^2)``; the recorded baseline is
    ``B = L + N(0, 6^2)`` (visit-to-visit noise) and the untreated follow-up
    ``Y(0) = L + 11 - 1.5 z_age + u_t + N(0, 6^2)``, ``u_t ~ N(0, 1.5^2)`` a therapist
    effect; ``Y = Y(0) + effect * T``. Selection (``logit P(T) = -0.8 + 0.8 z + 0.5
    z_age``) is on

    * ``"observed_baseline"``: ``z`` the standardised recorded baseline ``B``: ignorability
      given the baseline holds (ANCOVA and the doubly robust estimators are unbiased); the
      change score ``Y - B`` is not (patients selected for a high ``B`` have a high noise
      draw, which regresses away), so parallel trends fails;
    * ``"stable_level"``: ``z`` the standardised stable level ``L``: parallel trends holds
      (the change score is unbiased), ignorability given ``B`` fails (``B`` measures ``L``
      with error, so ANCOVA under-adjusts).

    The other propensity-model covariates of :func:`study_config` (sex, duration, ...) and
    the pain and fear-avoidance scores are noise.
    """
    rng = np.random.default_rng(seed)
    therapist = rng.integers(0, n_therapists, n_patients)
    u = rng.normal(0, 1.5, n_therapists)
    age = np.clip(rng.normal(56, 16, n_patients), 18, 95)
    z_age = (age - 56) / 16
    level = rng.normal(51, 9, n_patients)
    baseline = level + rng.normal(0, 6, n_patients)
    if mechanism == "observed_baseline":
        z = (baseline - 51) / np.sqrt(9**2 + 6**2)
    elif mechanism == "stable_level":
        z = (level - 51) / 9
    else:
        raise ValueError(mechanism)
    treated = (rng.random(n_patients) < 1 / (1 + np.exp(-(-0.8 + 0.8 * z + 0.5 * z_age))))
    treated = treated.astype(int)
    followup = (level + 11 - 1.5 * z_age + u[therapist] + rng.normal(0, 6, n_patients)
                + effect * treated)
    frame = pd.DataFrame({
        "arm_intervention": treated,
        "therapist_id": [f"T{t:03d}" for t in therapist],
        "clinic_id": [f"C{t % 5:02d}" for t in therapist],
        "age": age,
        "sex": np.where(rng.random(n_patients) < 0.58, "F", "M"),
        "symptom_duration_weeks": 12 + rng.lognormal(2.5, 0.8, n_patients),
        "depression": (rng.random(n_patients) < 0.2).astype(int),
        "anxiety": (rng.random(n_patients) < 0.12).astype(int),
        "bmi": rng.normal(28, 5, n_patients),
        "ses_score": rng.integers(1, 11, n_patients).astype(float),
        "function_baseline": baseline,
        "function_followup": followup,
    })
    for name in ("pain", "fear_avoidance"):
        frame[f"{name}_baseline"] = MEANS[name] + SDS[name] * rng.normal(size=n_patients)
        frame[f"{name}_followup"] = frame[f"{name}_baseline"] + rng.normal(0, 1, n_patients)
    return frame
