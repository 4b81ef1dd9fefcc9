"""Simulate the default study's raw extract (the ETMI cohort) with known truth.

The published paper gives counts but no patient-level data, so the default study runs on a
simulated extract built to reproduce every published count *exactly* once the data contracts'
cleaning, eligibility and allocation rules (``docs/data-contracts.md``) are applied, and to carry
known true effects so that the pipeline's estimates can be checked against ``truth.json``.

What is generated
-----------------
Therapists
    ``targets.therapists`` therapists in ``targets.clinics`` clinics (every clinic has at least
    one). Exactly ``targets.therapists_female`` are female; ages are normal, standardised to the
    published mean and SD, rounded to years. Exactly ``therapists_trained`` have a training date
    (uniform in ``therapist_training_period``); exactly ``therapists_adopted`` of them are
    *adopters*, drawn by weighted sampling without replacement with log relative weight
    ``confounding.therapist_age_per_10y * (age - mean) / 10`` (younger therapists adopt more).
Eligible episodes (one per patient)
    Every therapist treats at least one eligible patient (caseloads are ``1 + multinomial`` with
    gamma weights). Age at referral is normal, standardised to the published mean and SD and
    bounded below at the minimum age; the target is the cohort's float ``age`` (days / 365.25,
    as in ``cohort.parquet``), so the mean of completed years is about 0.5 lower. Exactly
    ``patients_female`` are female. Symptom duration
    is ``12 + lognormal`` weeks; depression ~ Bernoulli(``depression_prevalence``) and anxiety
    given depression with the odds ratio ``depression_anxiety_odds_ratio`` and marginal
    ``anxiety_prevalence``. BMI (10% missing) and SES score 1-10 (5% missing) are noise
    covariates.
Allocation (confounded, exact counts)
    ETMI patients are chosen only among adopters' patients: first one per adopter (so every
    adopter documents ETMI at least once), then the rest, both by Gumbel-top-k sampling (weighted
    sampling without replacement, which fixes the count exactly while the chance of selection
    still depends on covariates) with log relative weight
    ``confounding.age_per_10y * (age - mean_age) / 10 +
    confounding.function_intake_per_10 * (stable level - its mean) / 10``
    (younger, less severe patients more often get ETMI). The stable level is the patient's
    expected intake score of the primary outcome without the visit's transient noise (and
    without the therapist x time and clinic x time terms): selecting on the noisy observed
    score would make every change-score analysis biased by regression to the mean (Lord's
    paradox), whereas ANCOVA on the observed baseline under-adjusts for this selection.
    An ETMI patient's referral is on or
    after the therapist's training date, and every session the primary therapist gives carries
    the ETMI code, so the contract's rule ``ETMI code by trained therapist`` recovers the arm.
Outcome model (per outcome; this is the structure the analysis model fits)
    For patient *i* of therapist *t* in clinic *c* at time *j* (0 intake, 1 discharge)::

        y*_ij = mu + x_i' beta_level + j * x_i' beta_change
                + a_c + d_cj + u_t + w_tj + p_i + e_ij
                + j * (change_usual_care + arm_i * (effect + m_dep * dep_i + m_anx * anx_i))

    with covariates ``x`` = (age per 10 years, female, log symptom weeks, depression, anxiety),
    each centred at its design mean so that ``mu`` is the population intake mean;
    ``a_c ~ N(0, s_a^2)`` clinic intercept, ``d_cj ~ N(0, s_d^2)`` clinic-by-time intercept,
    ``u_t ~ N(0, s_u^2)`` therapist intercept, ``w_tj ~ N(0, s_w^2)`` therapist-by-time intercept
    (independent per time point, so therapists differ in the change they achieve), ``p_i`` patient
    intercept and ``e_ij`` residual. Variances: ``s_p = patient_sd_fraction * intake SD``;
    ``s_u^2 = therapist_icc_change * V`` and ``s_a^2 = clinic_icc_change * V`` (V = intake
    variance); ``s_w^2`` and ``s_d^2`` are set so that the ICC of the change
    ``s_w^2 / (s_w^2 + s_d^2 + s_e^2)`` equals ``therapist_icc_change`` (clinic likewise); the
    residual variance takes what is left of V after covariates and the other components. The
    clinic-by-time term is small (ICC 0.01); an analysis model without a clinic level absorbs it
    into the therapist-by-time variance. The true arm x time coefficient is ``effect``
    (``effect_<outcome>``); subgroup modifications default to 0.
    The recorded score is ``y*`` rounded to the instrument's resolution (integers) and bounded to
    its range (the instrument's floor and ceiling, which is how a real score behaves). That
    slightly attenuates the effect; ``truth.json`` reports, next to the structural ``effect``,
    the realised average effect on the recorded scale: each eligible patient's discharge score
    is computed under both arms from the same latent draws and the mean difference is taken
    (``realised_ate``; ``realised_att`` among ETMI patients; per subgroup level too).
Sessions
    Per episode ``1 + NegBin(size, mean = (m_arm - 1) * g_t)`` sessions, ``m_arm`` =
    ``sessions_mean_usual_care`` or ``sessions_mean_etmi``, ``g_t`` a mean-one gamma therapist
    frailty (SD ``sessions_therapist_sd``); the true ratio of means is ``m_etmi / m_usual``.
    Sessions are spaced 3-14 days apart starting 0-21 days after referral; intake is assessed
    at the first session and discharge at the last. In a share (``covering_episode_fraction``)
    of episodes with at least three sessions one later session is given by a second therapist
    of the same clinic (covering), never with an ETMI code, so the primary therapist (most
    sessions) is always the treating one. A share ``fidelity_breach_fraction`` of ETMI episodes
    has one session with a forbidden (passive/exercise) code.
Missing data (exact counts)
    The intake score of the primary outcome is missing completely at random in
    ``missingness.intake_missing_fraction`` of patients. Among patients with an intake score,
    exactly ``complete_cases_etmi`` ETMI and ``complete_cases - complete_cases_etmi`` usual-care
    patients keep their discharge score, chosen by Gumbel-top-k within arm with log relative
    weight ``age_per_10y * age10 + function_intake_per_10 * intake10 + sessions * (n - mean)``
    (MAR: observed quantities only); with ``mechanism: MNAR`` the latent change adds
    ``mnar_change_per_10 * change / 10``. Patients without an intake score have a discharge
    score with the overall complete share. The other outcomes are assessed together with the
    primary one, each missing independently in ``other_instrument_missing_fraction`` more.
    A missing score has no row in the long layout (an empty cell in the wide layout, which
    has a row for every episode with at least one assessment).
Junk records (``simulation.assumptions.junk``; each breaks exactly one contract rule)
    ``under_18`` (aged 14-17, in window, CLBP code), ``non_clbp`` (adult, in window, only
    non-CLBP codes such as M54.2 neck pain or M25.5 joint pain), ``outside_window`` (adult,
    CLBP, referral before or after the window), ``repeat_episode`` (a later in-window CLBP
    episode of an eligible patient: same patient_id, birth_date and sex), exact duplicate rows in
    patients, sessions and outcomes (the copy directly follows its original), out-of-range
    scores (only in outcomes outside ``complete_case.outcomes``, so they cannot change the
    complete-case counts; placed on in-range scores of eligible patients, which cleaning then
    sets missing), sessions whose episode is not in the patients table, and
    ``untrained_etmi_code`` eligible usual-care episodes of never-trained therapists whose first
    session carries the ETMI code (they stay usual care, ``ETMI code by untrained
    therapist``). ``messy_codes`` sessions get a repairable mess (lower case or stray spaces) in
    non-ETMI treatment codes. Ineligible episodes have sessions and outcomes like any other,
    with usual-care codes only.

Counts scale with ``n_patients`` (default: ``targets.eligible_patients``): every count is
multiplied by ``n_patients / targets.eligible_patients`` and rounded, with small floors
(2 clinics, 8 therapists, one adopter and one non-adopter...), so therapists stay ~1 per 33
patients. Everything is vectorised numpy; a million-patient extract takes well under a minute.

Determinism: the seed feeds one ``numpy.random.SeedSequence`` whose spawned children drive
independent ``Generator(PCG64)`` streams per component, rows are sorted by their ids, and files
are written by :mod:`trial_analysis.io` (atomic, deterministic), so the same seed gives
byte-identical files. Dates are written as ISO ``YYYY-MM-DD`` text in CSV and Parquet alike.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.random import PCG64, Generator, SeedSequence

from trial_analysis import io
from trial_analysis.errors import ConfigError

log = logging.getLogger(__name__)

TABLES = ("therapists", "patients", "sessions", "outcomes")
COVARIATES = ("age_per_10y", "female", "log_symptom_weeks", "depression", "anxiety")
# ICD-10 codes used for the comorbidity part of diagnosis_codes and for non-CLBP referrals.
DEPRESSION_CODE = "F32.9"
ANXIETY_CODE = "F41.9"
OTHER_COMORBIDITY = (("I10", 0.25), ("E11.9", 0.10))
NON_CLBP_CODES = ("M54.2", "M25.5", "M54.6", "M79.1", "M75.1")
# Design of the symptom duration: 12 + lognormal(log 30, 0.9) weeks (chronic = over 12 weeks).
DURATION_LOG_MEDIAN, DURATION_LOG_SD, DURATION_MIN = np.log(30.0), 0.9, 12.0
BMI_MEAN, BMI_SD, BMI_MISSING = 28.0, 5.0, 0.10
SES_MISSING = 0.05
AGE_MAX = 98.0
THERAPIST_AGE_RANGE = (23, 66)
# Streams (one child seed each) so that changing one component does not move the others.
STREAMS = (
    "therapists", "patients", "outcomes", "allocation", "dates", "sessions",
    "missingness", "junk", "ids",
)


@dataclasses.dataclass
class SimulatedExtract:
    """A simulated raw extract in the contract's canonical columns, plus its truth.

    Attributes
    ----------
    therapists, patients, sessions : pandas.DataFrame
        Raw tables (junk records included), rows in id order.
    outcomes : pandas.DataFrame
        Outcomes in the long layout (``write_extract`` converts to wide on request).
    truth : dict
        Every true parameter and realised quantity (written as ``truth.json``).
    """

    therapists: pd.DataFrame
    patients: pd.DataFrame
    sessions: pd.DataFrame
    outcomes: pd.DataFrame
    truth: dict[str, Any]

    def tables(self) -> dict[str, pd.DataFrame]:
        """The four raw tables by name."""
        return {name: getattr(self, name) for name in TABLES}


# ----------------------------------------------------------------------------- small helpers


def _days(date: str | dt.date) -> int:
    """Days since 1970-01-01 of an ISO date."""
    if isinstance(date, str):
        date = dt.date.fromisoformat(date)
    return (date - dt.date(1970, 1, 1)).days


def _text_from_chars(chars: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    """A pandas string Series from a (rows, width) uint8 matrix of ASCII, without a loop.

    Building the Arrow buffers directly is ~50 times faster than converting Python or numpy
    unicode strings, which matters at a million patients.
    """
    n, width = chars.shape
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int64) * width).astype(np.int32).tobytes())
    array: pa.Array = pa.StringArray.from_buffers(n, offsets, pa.py_buffer(chars.tobytes()))
    if missing is not None and missing.any():
        array = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), array)
    return pd.Series(pd.array(array, dtype="str"))


def _text_from_lookup(index: np.ndarray, table: Sequence[str | None]) -> pd.Series:
    """A pandas string Series ``table[index]`` (``None`` entries become missing)."""
    dictionary = pa.array(list(table), type=pa.string())
    array = pa.DictionaryArray.from_arrays(pa.array(np.asarray(index, dtype=np.int32)),
                                           dictionary).dictionary_decode()
    return pd.Series(pd.array(array, dtype="str"))


def _digits(chars: np.ndarray, values: np.ndarray, start: int, width: int) -> None:
    """Write ``values`` as zero-padded decimal digits into ``chars[:, start:start+width]``."""
    values = np.asarray(values, dtype=np.int64).copy()
    for position in range(start + width - 1, start - 1, -1):
        chars[:, position] = 48 + values % 10
        values //= 10


def _date_strings(days: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    """ISO ``YYYY-MM-DD`` text for integer day numbers; ``missing`` positions become NA.

    Dates span a few thousand distinct days, so each distinct day is formatted once and the
    column is built from a dictionary lookup.
    """
    days = np.asarray(days, dtype=np.int64)
    if missing is not None:
        days = np.where(missing, days[~missing].min() if (~missing).any() else 0, days)
    if days.size == 0:
        return pd.Series(pd.array([], dtype="str"))
    first, last = int(days.min()), int(days.max())
    calendar = np.arange(first, last + 1).astype("datetime64[D]")
    table: list[str | None] = list(np.datetime_as_string(calendar, unit="D"))
    index = days - first
    if missing is not None and missing.any():
        table.append(None)
        index = np.where(missing, len(table) - 1, index)
    return _text_from_lookup(index, table)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pd.Series:
    """Zero-padded ids (``prefix`` + ``width`` digits), built without a Python loop."""
    numbers = np.asarray(numbers, dtype=np.int64)
    chars = np.empty((numbers.size, width + len(prefix)), dtype=np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    _digits(chars, numbers, len(prefix), width)
    return _text_from_chars(chars)


def _id_width(largest: int, minimum: int) -> int:
    return max(minimum, len(str(int(largest))))


def _standardised_normal(rng: Generator, n: int) -> np.ndarray:
    """Normal draws rescaled to sample mean 0 and SD 1 (so published moments are hit)."""
    z = rng.standard_normal(n)
    if n > 1:
        z = (z - z.mean()) / z.std()
    return z


def _moment_matched(
    rng: Generator, n: int, mean: float, sd: float, low: float, high: float
) -> np.ndarray:
    """Normal values with sample mean/SD ``mean``/``sd`` within [low, high] (few iterations)."""
    values = mean + sd * _standardised_normal(rng, n)
    for _ in range(4):
        values = np.clip(values, low, high)
        if n > 1 and values.std() > 0:
            values = mean + (values - values.mean()) * (sd / values.std())
    return np.clip(values, low, high)


def _exact_choice(rng: Generator, n: int, k: int) -> np.ndarray:
    """Boolean mask with exactly ``k`` of ``n`` set, uniformly at random."""
    mask = np.zeros(n, dtype=bool)
    if k > 0:
        mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def _gumbel_top_k(rng: Generator, log_weight: np.ndarray, k: int) -> np.ndarray:
    """Weighted sampling of exactly ``k`` items without replacement (Gumbel-top-k).

    Equivalent to drawing items one at a time with probability proportional to
    ``exp(log_weight)`` among those not yet drawn. Returns a boolean mask.
    """
    n = log_weight.size
    mask = np.zeros(n, dtype=bool)
    if k <= 0:
        return mask
    if k >= n:
        mask[:] = True
        return mask
    keys = log_weight + rng.gumbel(size=n)
    mask[np.argpartition(-keys, k - 1)[:k]] = True
    return mask


def _top_one_per_group(rng: Generator, log_weight: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Index of one weighted draw per group (Gumbel-max within each group)."""
    keys = log_weight + rng.gumbel(size=log_weight.size)
    order = np.lexsort((-keys, group))
    first = np.ones(order.size, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]


def _completed_years(birth: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Age in completed calendar years (the eligibility rule's definition)."""

    def parts(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(days, dtype="int64").astype("datetime64[D]")
        year = d.astype("datetime64[Y]").astype(np.int64)
        month_start = d.astype("datetime64[M]")
        month = month_start.astype(np.int64) % 12
        day = (d - month_start.astype("datetime64[D]")).astype(np.int64)
        return year, month * 100 + day

    year_b, md_b = parts(birth)
    year_r, md_r = parts(reference)
    return year_r - year_b - (md_r < md_b).astype(np.int64)


def _anxiety_given_depression(prev_dep: float, prev_anx: float, odds_ratio: float) -> tuple:
    """P(anxiety | depression = 1) and P(anxiety | depression = 0) for the marginal and OR."""
    low, high = 1e-9, 1 - 1e-9
    for _ in range(200):  # bisection on P(anx | no depression)
        p0 = (low + high) / 2
        odds1 = odds_ratio * p0 / (1 - p0)
        p1 = odds1 / (1 + odds1)
        if prev_dep * p1 + (1 - prev_dep) * p0 > prev_anx:
            high = p0
        else:
            low = p0
    return p1, p0


def _expected_log_duration() -> float:
    """E[log(symptom weeks)] under the duration design, by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    values = np.log(DURATION_MIN + np.exp(DURATION_LOG_MEDIAN + DURATION_LOG_SD * nodes))
    return float(np.sum(weights * values) / np.sum(weights))


# ----------------------------------------------------------------------------- counts


def scaled_counts(simulation: Mapping[str, Any], n_patients: int | None = None) -> dict[str, int]:
    """Exact counts the extract is built to give, scaled to ``n_patients`` eligible patients.

    Parameters
    ----------
    simulation : mapping
        The config's ``simulation`` section.
    n_patients : int, optional
        Eligible patients wanted; default ``targets.eligible_patients``.

    Returns
    -------
    dict
        Counts of clinics, therapists (trained, adopters, female), patients (female, ETMI,
        complete cases overall and ETMI) and every junk kind.
    """
    targets = simulation["targets"]
    junk = simulation["assumptions"]["junk"]
    base_n = int(targets["eligible_patients"])
    n = base_n if n_patients is None else int(n_patients)
    if n < 50:
        raise ConfigError("simulate", [f"n_patients must be at least 50, got {n}"])
    scale = n / base_n

    def scaled(value: float, floor: int = 0) -> int:
        return max(floor, int(round(value * scale)))

    therapists = scaled(targets["therapists"], 8)
    clinics = min(therapists, scaled(targets["clinics"], 2))
    ratio_trained = targets["therapists_trained"] / targets["therapists"]
    ratio_adopted = targets["therapists_adopted"] / targets["therapists"]
    trained = min(therapists - 1, max(2, int(round(ratio_trained * therapists))))
    adopters = min(trained - 1, max(1, int(round(ratio_adopted * therapists))))
    female_t = int(round(targets["therapists_female"] / targets["therapists"] * therapists))
    etmi = max(adopters, scaled(targets["etmi_patients"]))
    complete = scaled(targets["complete_cases"])
    complete_etmi = min(scaled(targets["complete_cases_etmi"]), etmi // 2)
    counts = {
        "clinics": clinics,
        "therapists": therapists,
        "therapists_trained": trained,
        "therapists_adopted": adopters,
        "therapists_female": female_t,
        "eligible_patients": n,
        "patients_female": scaled(targets["patients_female"]),
        "etmi_patients": etmi,
        "complete_cases": complete,
        "complete_cases_etmi": complete_etmi,
    }
    for kind, value in junk.items():
        counts[f"junk_{kind}"] = scaled(value, 1 if value > 0 else 0)
    return counts


# ----------------------------------------------------------------------------- the model


def _outcome_parameters(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Structural parameters of every outcome (means, effects, variance components)."""
    assumptions = config["simulation"]["assumptions"]
    icc_t = float(assumptions["therapist_icc_change"])
    icc_c = float(assumptions["clinic_icc_change"])
    if icc_t + icc_c >= 1:
        raise ConfigError("simulate", ["therapist_icc_change + clinic_icc_change must be below 1"])
    targets = config["simulation"]["targets"]
    prev_dep = float(assumptions["depression_prevalence"])
    prev_anx = float(assumptions["anxiety_prevalence"])
    share_female = targets["patients_female"] / targets["eligible_patients"]
    covariate_var = {  # design variances (depression-anxiety covariance ignored: small)
        "age_per_10y": (targets["patient_age_sd"] / 10) ** 2,
        "female": share_female * (1 - share_female),
        "log_symptom_weeks": _log_duration_variance(),
        "depression": prev_dep * (1 - prev_dep),
        "anxiety": prev_anx * (1 - prev_anx),
    }
    parameters: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for spec in config["outcomes"]:
        name = spec["name"]
        if f"{name}_intake_mean" in assumptions:
            mean = float(assumptions[f"{name}_intake_mean"])
        elif f"{name}_intake_median" in assumptions:
            mean = float(assumptions[f"{name}_intake_median"])
        else:
            problems.append(f"simulation/assumptions: {name}_intake_mean (or _median) missing")
            continue
        if f"{name}_intake_sd" in assumptions:
            sd = float(assumptions[f"{name}_intake_sd"])
        elif f"{name}_intake_iqr" in assumptions:
            q1, q3 = assumptions[f"{name}_intake_iqr"]
            sd = (float(q3) - float(q1)) / 1.349  # IQR of a normal is 1.349 SD
        else:
            problems.append(f"simulation/assumptions: {name}_intake_sd (or _iqr) missing")
            continue
        for key in (f"{name}_change_usual_care", f"effect_{name}"):
            if key not in assumptions:
                problems.append(f"simulation/assumptions: {key} missing")
        prognostic = assumptions.get("prognostic", {}).get(name, {})
        level = {c: float(prognostic.get("level", {}).get(c, 0.0)) for c in COVARIATES}
        change = {c: float(prognostic.get("change", {}).get(c, 0.0)) for c in COVARIATES}
        total_var = sd**2
        var_cov = sum(level[c] ** 2 * covariate_var[c] for c in COVARIATES)
        var_patient = (float(assumptions["patient_sd_fraction"]) * sd) ** 2
        var_therapist = icc_t * total_var
        var_clinic = icc_c * total_var
        k_w, k_d = icc_t / (1 - icc_t - icc_c), icc_c / (1 - icc_t - icc_c)
        left = total_var - var_cov - var_patient - var_therapist - var_clinic
        if left <= 0:
            problems.append(f"simulation: {name}: variance components exceed the intake variance")
            continue
        var_residual = left / (1 + k_w + k_d)
        modification = {
            sub: float(assumptions.get("effect_modification", {}).get(sub, {}).get(name, 0.0))
            for sub in ("depression", "anxiety")
        }
        parameters[name] = {
            "mu_intake": mean,
            "mu_discharge_before_change": mean,
            "intake_sd": sd,
            "change_usual_care": float(assumptions.get(f"{name}_change_usual_care", 0.0)),
            "effect": float(assumptions.get(f"effect_{name}", 0.0)),
            "effect_modification": modification,
            "beta_level": level,
            "beta_change": change,
            "variance_components": {
                "clinic": var_clinic,
                "clinic_time": k_d * var_residual,
                "therapist": var_therapist,
                "therapist_time": k_w * var_residual,
                "patient": var_patient,
                "residual": var_residual,
            },
            "icc_change": {"therapist": icc_t, "clinic": icc_c},
            "resolution": 1.0,
            "min": float(spec["min"]),
            "max": float(spec["max"]),
        }
    if problems:
        raise ConfigError("simulate", problems)
    return parameters


def _log_duration_variance() -> float:
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    values = np.log(DURATION_MIN + np.exp(DURATION_LOG_MEDIAN + DURATION_LOG_SD * nodes))
    mean = np.sum(weights * values) / np.sum(weights)
    return float(np.sum(weights * (values - mean) ** 2) / np.sum(weights))


def _recorded(latent: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Round to the instrument's resolution and bound to its range (floor/ceiling)."""
    step = spec["resolution"]
    # "+ 0.0" turns -0.0 (rounding of small negatives) into 0.0, which prints as "0".
    return np.clip(np.round(latent / step) * step, spec["min"], spec["max"]) + 0.0


# ----------------------------------------------------------------------------- generation
#
# simulate_extract runs the stages below in order. Each stage draws from its own stream(s) of
# STREAMS in a fixed order, so a stage's draws never move another's. Two streams are shared and
# fix the order of their stages: "junk" (the new ineligible episodes, then the repeat episodes)
# and "ids" (episode numbering, diagnosis codes, then the junk rows of each table in turn).


@dataclasses.dataclass(frozen=True, eq=False)
class _Settings:
    """What the stages read from the config, checked once (no randomness)."""

    config: Mapping[str, Any]
    assumptions: Mapping[str, Any]  # simulation.assumptions
    targets: Mapping[str, Any]  # simulation.targets (the published figures)
    counts: dict[str, int]  # scaled_counts: the exact counts to hit
    params: dict[str, dict[str, Any]]  # _outcome_parameters per outcome
    outcome_names: list[str]
    primary: str
    cc_outcomes: list[str]  # complete_case.outcomes
    window_start: int  # day numbers of the eligibility window
    window_end: int
    min_age: float
    prev_dep: float
    prev_anx: float
    p_anx_dep: float  # P(anxiety | depression) for the marginal and the odds ratio
    p_anx_nodep: float
    share_female: float  # published share of female patients (covariate centre)
    mean_log_weeks: float  # E[log symptom weeks] (covariate centre)


@dataclasses.dataclass(frozen=True, eq=False)
class _Therapists:
    """Per-therapist draws; position = therapist number - 1."""

    clinic: np.ndarray  # clinic index (sorted, every clinic at least once)
    female: np.ndarray
    age: np.ndarray  # whole years
    trained: np.ndarray
    training: np.ndarray  # day number of the training, -1 if never trained
    adopter: np.ndarray
    caseload_weight: np.ndarray  # gamma weight of the eligible caseload
    session_frailty: np.ndarray  # mean-one gamma multiplier of the extra sessions
    training_period: tuple[int, int]  # first and last training day


@dataclasses.dataclass(frozen=True, eq=False)
class _Patients:
    """Per-episode draws of one group of new patients (the eligible, or the ineligible junk)."""

    therapist: np.ndarray
    age: np.ndarray  # float years at referral
    female: np.ndarray
    covariates: dict[str, np.ndarray]  # depression, anxiety, weeks, bmi, ses
    kind: np.ndarray | None = None  # junk reason per episode (ineligible episodes only)


@dataclasses.dataclass(frozen=True, eq=False)
class _Latent:
    """Latent scores per outcome of the eligible then the new ineligible episodes."""

    design_eligible: dict[str, np.ndarray]  # centred covariates (COVARIATES) of the eligible
    intake: dict[str, np.ndarray]  # y*_i0
    discharge_usual_care: dict[str, np.ndarray]  # y*_i1 without the ETMI effect
    stable: dict[str, np.ndarray]  # intake level without the visit's transient terms


@dataclasses.dataclass(frozen=True, eq=False)
class _Allocation:
    """Arm and fidelity breaches of the eligible patients."""

    etmi: np.ndarray
    breach: np.ndarray  # ETMI episodes with one forbidden code
    n_breach: int


@dataclasses.dataclass(frozen=True, eq=False)
class _Dates:
    """Referral and birth day numbers, and which eligible patients get a repeat episode."""

    eligible_referral: np.ndarray
    eligible_birth: np.ndarray
    repeat_source: np.ndarray  # sorted eligible positions with a later repeat episode
    repeat_referral: np.ndarray
    junk_referral: np.ndarray
    junk_birth: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _Episodes:
    """Every episode: the eligible (first ``n_eligible``), the new ineligible, then repeats."""

    n_eligible: int
    n_persons: int  # eligible + new ineligible (repeat episodes reuse their source's person)
    kind: np.ndarray
    therapist: np.ndarray  # primary therapist
    arm: np.ndarray
    breach: np.ndarray
    referral: np.ndarray
    birth: np.ndarray
    female: np.ndarray
    covariates: dict[str, np.ndarray]
    person: np.ndarray
    eligible: np.ndarray
    intake: dict[str, np.ndarray]  # latent scores per outcome, repeats included
    discharge_usual_care: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.kind.size)


@dataclasses.dataclass(frozen=True, eq=False)
class _Schedule:
    """Per episode: its sessions (count, position of the first) and assessment dates."""

    count: np.ndarray
    start: np.ndarray  # position of the episode's first session in _SessionRows
    first_date: np.ndarray  # intake assessment
    last_date: np.ndarray  # discharge assessment
    covered: np.ndarray  # one later session by a covering therapist


@dataclasses.dataclass(frozen=True, eq=False)
class _SessionRows:
    """Per session, in episode order then session number (the bulk of memory at scale)."""

    episode: np.ndarray
    number: np.ndarray  # 0-based session number within the episode
    date: np.ndarray
    therapist: np.ndarray
    covering: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _Codes:
    """Treatment codes of every session as bit masks over ``codes.treatments``."""

    mask: np.ndarray  # per session, as recorded
    usual_mask: np.ndarray  # per session, the usual-care draw (unknown-patient sessions use it)
    lookup: list[str | None]  # code text of every mask
    etmi_bit: int
    untrained_episodes: np.ndarray  # usual-care episodes given an ETMI code (junk)


@dataclasses.dataclass(frozen=True, eq=False)
class _Ids:
    """Numbering of episodes and persons (the tables are written in episode-id order)."""

    order: np.ndarray  # episodes in id order
    number: np.ndarray  # episode number of each episode
    width: int  # digits of an episode id
    person_number: np.ndarray  # per person index
    person_width: int
    therapist_width: int


# The design stress study's options (simulation.assumptions.stress) and their neutral values:
# with every option neutral the extract is the default one, byte for byte.
STRESS_DEFAULTS: dict[str, Any] = {
    "selection_on": "stable_level", "adopter_change": 0.0, "calendar_trend_per_year": 0.0,
}


def stress_options(assumptions: Mapping[str, Any]) -> dict[str, Any]:
    """``simulation.assumptions.stress`` with its neutral defaults filled in."""
    given = assumptions.get("stress") or {}
    out = {**STRESS_DEFAULTS, **given}
    out["adopter_change"] = float(out["adopter_change"])
    out["calendar_trend_per_year"] = float(out["calendar_trend_per_year"])
    return out


def _settings(config: Mapping[str, Any], n_patients: int | None) -> _Settings:
    """Counts, outcome parameters and design constants; ConfigError if the section is unusable."""
    if "simulation" not in config:
        raise ConfigError("simulate", ["the config has no `simulation` section"])
    sim = config["simulation"]
    A = sim["assumptions"]
    targets = sim["targets"]
    counts = scaled_counts(sim, n_patients)
    params = _outcome_parameters(config)
    primary = config["primary_outcome"]
    prev_dep, prev_anx = float(A["depression_prevalence"]), float(A["anxiety_prevalence"])
    p_anx_dep, p_anx_nodep = _anxiety_given_depression(
        prev_dep, prev_anx, float(A["depression_anxiety_odds_ratio"])
    )
    return _Settings(
        config=config, assumptions=A, targets=targets, counts=counts, params=params,
        outcome_names=[o["name"] for o in config["outcomes"]], primary=primary,
        cc_outcomes=list(config.get("complete_case", {}).get("outcomes", [primary])),
        window_start=_days(str(config["eligibility"]["window_start"])),
        window_end=_days(str(config["eligibility"]["window_end"])),
        min_age=float(config["eligibility"].get("min_age", 18)),
        prev_dep=prev_dep, prev_anx=prev_anx, p_anx_dep=p_anx_dep, p_anx_nodep=p_anx_nodep,
        share_female=targets["patients_female"] / targets["eligible_patients"],
        mean_log_weeks=_expected_log_duration(),
    )


def _streams(seed: int) -> dict[str, Generator]:
    """One independent ``Generator(PCG64)`` per name in STREAMS, from ``SeedSequence(seed)``."""
    return dict(
        zip(STREAMS, (Generator(PCG64(s)) for s in SeedSequence(seed).spawn(len(STREAMS))),
            strict=True)
    )


def _draw_therapists(s: _Settings, rng: Generator) -> _Therapists:
    """Therapists: clinic, sex, age, training date, adopter status, caseload, session frailty.

    Stream ``therapists``, in this order: clinic weights and the clinics of the therapists
    beyond one per clinic, the female set, ages, the trained set, training days, the adopters
    (Gumbel-top-k among the trained, log weight by age), caseload weights, session frailties.
    """
    A, targets, counts = s.assumptions, s.targets, s.counts
    T, C = counts["therapists"], counts["clinics"]
    clinic_weight = rng.gamma(5.0, size=C)
    t_clinic = np.sort(
        np.concatenate([np.arange(C), rng.choice(C, T - C, p=clinic_weight / clinic_weight.sum())])
    )
    t_female = _exact_choice(rng, T, counts["therapists_female"])
    t_age = np.round(
        _moment_matched(rng, T, targets["therapist_age_mean"], targets["therapist_age_sd"],
                        *THERAPIST_AGE_RANGE)
    ).astype(np.int64)
    t_trained = _exact_choice(rng, T, counts["therapists_trained"])
    training_start, training_end = (
        _days(str(d)) for d in A.get("therapist_training_period",
                                     [s.config["eligibility"]["window_start"]] * 2)
    )
    if training_end > s.window_end or training_start > training_end:
        raise ConfigError("simulate", [
            "simulation/assumptions/therapist_training_period: must be [first, last] with last "
            "on or before eligibility.window_end (trained therapists need time to deliver ETMI)"])
    t_training = np.where(
        t_trained, rng.integers(training_start, training_end + 1, size=T), -1
    )
    conf = A["confounding"]
    adopter_logw = (conf.get("therapist_age_per_10y", 0.0)
                    * (t_age - targets["therapist_age_mean"]) / 10)
    trained_idx = np.flatnonzero(t_trained)
    t_adopter = np.zeros(T, dtype=bool)
    t_adopter[trained_idx[_gumbel_top_k(rng, adopter_logw[trained_idx],
                                        counts["therapists_adopted"])]] = True
    caseload_weight = rng.gamma(2.0, size=T)
    frailty_sd = float(A.get("sessions_therapist_sd", 0.0))
    session_frailty = (
        rng.gamma(1 / frailty_sd**2, frailty_sd**2, size=T) if frailty_sd > 0 else np.ones(T)
    )
    return _Therapists(
        clinic=t_clinic, female=t_female, age=t_age, trained=t_trained, training=t_training,
        adopter=t_adopter, caseload_weight=caseload_weight, session_frailty=session_frailty,
        training_period=(training_start, training_end),
    )


def _draw_covariates(s: _Settings, rng: Generator, n: int) -> dict[str, np.ndarray]:
    """Covariates of ``n`` episodes from ``rng`` (the caller's stream).

    Draw order: depression, anxiety given depression, symptom weeks, BMI, BMI missing, SES
    score, SES missing.
    """
    dep = rng.random(n) < s.prev_dep
    anx = rng.random(n) < np.where(dep, s.p_anx_dep, s.p_anx_nodep)
    weeks = np.round(
        DURATION_MIN + np.exp(DURATION_LOG_MEDIAN + DURATION_LOG_SD * rng.standard_normal(n))
    )
    bmi = np.round(np.clip(rng.normal(BMI_MEAN, BMI_SD, n), 16, 55), 1)
    bmi[rng.random(n) < BMI_MISSING] = np.nan
    ses = rng.integers(1, 11, size=n).astype(float)
    ses[rng.random(n) < SES_MISSING] = np.nan
    return {"depression": dep, "anxiety": anx, "weeks": weeks, "bmi": bmi, "ses": ses}


def _draw_eligible_patients(s: _Settings, therapists: _Therapists, rng: Generator) -> _Patients:
    """Eligible patients (one episode each): therapist, age at referral, sex, covariates.

    Stream ``patients``: caseloads (1 + multinomial over the caseload weights, so every
    therapist has a patient) and their shuffled assignment, ages (moment-matched to the
    published mean and SD), the female set (exact count), then the covariates.
    """
    counts, targets = s.counts, s.targets
    T, N = counts["therapists"], counts["eligible_patients"]
    weight = therapists.caseload_weight
    per_therapist = 1 + rng.multinomial(N - T, weight / weight.sum())
    therapist = rng.permutation(np.repeat(np.arange(T), per_therapist))
    age = _moment_matched(rng, N, targets["patient_age_mean"], targets["patient_age_sd"],
                          s.min_age + 0.02, AGE_MAX)
    female = _exact_choice(rng, N, counts["patients_female"])
    return _Patients(therapist=therapist, age=age, female=female,
                     covariates=_draw_covariates(s, rng, N))


def _draw_ineligible_episodes(s: _Settings, rng: Generator) -> _Patients:
    """New ineligible episodes (under_18, non_clbp, outside_window), each failing one rule.

    Stream ``junk``, first part (the repeat episodes draw from it later, in
    :func:`_join_episodes`): under-18 ages (uniform 14 to min_age) and adult ages
    (moment-matched), both drawn for every episode, then sex, therapist (uniform), covariates.
    Their dates are drawn in :func:`_draw_dates`, their non-CLBP codes in
    :func:`_draw_diagnosis_codes`.
    """
    counts, targets, min_age = s.counts, s.targets, s.min_age
    n_u18, n_nonclbp = counts["junk_under_18"], counts["junk_non_clbp"]
    n_outside = counts["junk_outside_window"]
    n_new_junk = n_u18 + n_nonclbp + n_outside
    kind = np.repeat(np.array(["under_18", "non_clbp", "outside_window"]),
                     [n_u18, n_nonclbp, n_outside])
    age = np.where(
        kind == "under_18",
        rng.uniform(14.0, min_age - 0.1, size=n_new_junk),
        _moment_matched(rng, n_new_junk, targets["patient_age_mean"], targets["patient_age_sd"],
                        min_age + 0.02, AGE_MAX),
    )
    female = rng.random(n_new_junk) < s.share_female
    therapist = rng.integers(0, counts["therapists"], size=n_new_junk)
    return _Patients(therapist=therapist, age=age, female=female,
                     covariates=_draw_covariates(s, rng, n_new_junk), kind=kind)


def _design(s: _Settings, people: _Patients) -> dict[str, np.ndarray]:
    """The outcome model's covariates, each centred at its design mean."""
    cov = people.covariates
    return {
        "age_per_10y": (people.age - s.targets["patient_age_mean"]) / 10,
        "female": people.female - s.share_female,
        "log_symptom_weeks": np.log(cov["weeks"]) - s.mean_log_weeks,
        "depression": cov["depression"] - s.prev_dep,
        "anxiety": cov["anxiety"] - s.prev_anx,
    }


def _draw_latent_outcomes(
    s: _Settings, therapists: _Therapists, eligible: _Patients, junk: _Patients, rng: Generator
) -> _Latent:
    """Latent intake and usual-care discharge scores of the eligible and new ineligible episodes.

    Stream ``outcomes``, per outcome in config order: clinic, clinic x time, therapist,
    therapist x time, patient and residual terms of the outcome model (module docstring).
    """
    C, T = s.counts["clinics"], s.counts["therapists"]
    X_e = _design(s, eligible)
    X_j = _design(s, junk)
    n_all = eligible.age.size + junk.age.size
    X = {c: np.concatenate([X_e[c], X_j[c]]) for c in COVARIATES}
    all_therapist = np.concatenate([eligible.therapist, junk.therapist])
    all_clinic = therapists.clinic[all_therapist]
    latent0, latent1_base, stable = {}, {}, {}
    for name in s.outcome_names:
        p = s.params[name]
        vc = p["variance_components"]
        a_c = rng.normal(0, np.sqrt(vc["clinic"]), C)
        d_c = rng.normal(0, np.sqrt(vc["clinic_time"]), (C, 2))
        u_t = rng.normal(0, np.sqrt(vc["therapist"]), T)
        w_t = rng.normal(0, np.sqrt(vc["therapist_time"]), (T, 2))
        p_i = rng.normal(0, np.sqrt(vc["patient"]), n_all)
        e_i = rng.normal(0, np.sqrt(vc["residual"]), (n_all, 2))
        level = sum(p["beta_level"][c] * X[c] for c in COVARIATES)
        change = sum(p["beta_change"][c] * X[c] for c in COVARIATES)
        common = p["mu_intake"] + level + a_c[all_clinic] + u_t[all_therapist] + p_i
        stable[name] = common
        latent0[name] = common + d_c[all_clinic, 0] + w_t[all_therapist, 0] + e_i[:, 0]
        latent1_base[name] = (
            common + d_c[all_clinic, 1] + w_t[all_therapist, 1] + e_i[:, 1]
            + change + p["change_usual_care"]
        )
        if name == s.primary:
            # Stress option: adopting therapists achieve more change whatever the arm
            # (therapist-level confounding of change; no draws, so other streams are unchanged).
            latent1_base[name] = latent1_base[name] + stress_options(s.assumptions)[
                "adopter_change"] * therapists.adopter[all_therapist]
    return _Latent(design_eligible=X_e, intake=latent0, discharge_usual_care=latent1_base,
                   stable=stable)


def _allocate_etmi(
    s: _Settings, therapists: _Therapists, eligible: _Patients, latent: _Latent, rng: Generator
) -> _Allocation:
    """ETMI arm among adopters' patients (exact count, confounded) and the fidelity breaches.

    Stream ``allocation``: one ETMI patient per adopter (Gumbel-max within adopter), the rest
    (Gumbel-top-k), both with log weight by age and stable primary intake level; then the
    breach episodes among ETMI (uniform, exact count).
    """
    A, counts, primary = s.assumptions, s.counts, s.primary
    conf = A["confounding"]
    N = counts["eligible_patients"]
    e_therapist = eligible.therapist
    # Therapists judge a patient's stable severity (history, presentation), not the transient
    # noise of one intake questionnaire: selecting on the noisy observed intake score would
    # build regression to the mean into the arm comparison of change (Lord's paradox), and the
    # change-score analysis the study reports would then be biased by construction.
    # The stress study's option `stress.selection_on: observed_intake` does exactly that, to
    # measure what it does to each estimator.
    on_observed = stress_options(A)["selection_on"] == "observed_intake"
    selected_on = (latent.intake if on_observed else latent.stable)[primary][:N]
    etmi_logw = (
        conf["age_per_10y"] * latent.design_eligible["age_per_10y"]
        + conf["function_intake_per_10"] * (selected_on - s.params[primary]["mu_intake"]) / 10
    )
    candidates = np.flatnonzero(therapists.adopter[e_therapist])
    e_arm = np.zeros(N, dtype=bool)
    first_per_adopter = candidates[
        _top_one_per_group(rng, etmi_logw[candidates], e_therapist[candidates])
    ]
    e_arm[first_per_adopter] = True
    rest = candidates[~e_arm[candidates]]
    e_arm[rest[_gumbel_top_k(rng, etmi_logw[rest],
                             counts["etmi_patients"] - first_per_adopter.size)]] = True
    # Fidelity breaches among ETMI episodes (exact count).
    n_breach = int(round(float(A.get("fidelity_breach_fraction", 0.0))
                         * counts["etmi_patients"]))
    etmi_idx = np.flatnonzero(e_arm)
    e_breach = np.zeros(N, dtype=bool)
    e_breach[etmi_idx[_exact_choice(rng, etmi_idx.size, n_breach)]] = True
    return _Allocation(etmi=e_arm, breach=e_breach, n_breach=n_breach)


def _draw_dates(
    s: _Settings, therapists: _Therapists, eligible: _Patients, allocation: _Allocation,
    junk: _Patients, rng: Generator,
) -> _Dates:
    """Referral and birth days, and the eligible patients who get a repeat episode.

    Stream ``dates``: eligible referrals (uniform in the window; ETMI ones on or after the
    therapist's training), the repeat sources (referred 14+ days before the window closes) and
    their later referrals, in-window ineligible referrals, then outside-window ones (before or
    after, then the day on each side). Births follow from age and referral without draws,
    moved by 2 days where the completed years would land on the wrong side of min_age.
    """
    window_start, window_end, min_age = s.window_start, s.window_end, s.min_age
    N, n_repeat = s.counts["eligible_patients"], s.counts["junk_repeat_episode"]
    n_outside = s.counts["junk_outside_window"]
    earliest = np.where(allocation.etmi,
                        np.maximum(window_start, therapists.training[eligible.therapist]),
                        window_start)
    e_referral = earliest + np.floor(rng.random(N) * (window_end - earliest + 1)).astype(np.int64)
    # Repeat episodes: eligible patients referred at least 14 days before the window closes.
    repeatable = np.flatnonzero(e_referral <= window_end - 14)
    r_source = np.sort(repeatable[_exact_choice(rng, repeatable.size, n_repeat)])
    r_referral = e_referral[r_source] + 14 + np.floor(
        rng.random(n_repeat) * (window_end - e_referral[r_source] - 14 + 1)
    ).astype(np.int64)
    j_kind = junk.kind
    j_referral = np.empty(j_kind.size, dtype=np.int64)
    in_window = j_kind != "outside_window"
    j_referral[in_window] = rng.integers(window_start, window_end + 1, size=in_window.sum())
    before = rng.random(n_outside) < 0.5
    j_referral[~in_window] = np.where(
        before,
        rng.integers(window_start - 365, window_start, size=n_outside),
        rng.integers(window_end + 1, window_end + 181, size=n_outside),
    )

    def birth_from_age(age: np.ndarray, referral: np.ndarray) -> np.ndarray:
        return referral - np.round(age * 365.2425).astype(np.int64)

    e_birth = birth_from_age(eligible.age, e_referral)
    j_birth = birth_from_age(junk.age, j_referral)
    # Guard the threshold exactly as the eligibility rule computes age (completed years).
    low = _completed_years(e_birth, e_referral) < min_age
    e_birth[low] -= 2
    adult_junk = j_kind != "under_18"
    fix = adult_junk & (_completed_years(j_birth, j_referral) < min_age)
    j_birth[fix] -= 2
    minor = ~adult_junk & (_completed_years(j_birth, j_referral) >= min_age)
    j_birth[minor] += 2
    return _Dates(eligible_referral=e_referral, eligible_birth=e_birth, repeat_source=r_source,
                  repeat_referral=r_referral, junk_referral=j_referral, junk_birth=j_birth)


def _join_episodes(
    s: _Settings, eligible: _Patients, junk: _Patients, allocation: _Allocation, dates: _Dates,
    latent: _Latent, rng: Generator,
) -> _Episodes:
    """All episodes in one set of arrays, adding the repeat episodes of eligible patients.

    Stream ``junk``, second part (after :func:`_draw_ineligible_episodes`): covariates of the
    repeat episodes (only the symptom weeks are kept; depression, anxiety, BMI and SES are the
    person's own), then per outcome fresh residual noise at both times, added to the person's
    own latent scores.
    """
    N = s.counts["eligible_patients"]
    n_new_junk, r_source = junk.age.size, dates.repeat_source
    n_repeat = r_source.size
    e_cov, j_cov = eligible.covariates, junk.covariates
    # Order: eligible (N), new junk, repeat episodes.
    kind = np.concatenate([np.full(N, "eligible"), junk.kind, np.full(n_repeat, "repeat_episode")])
    therapist = np.concatenate([eligible.therapist, junk.therapist, eligible.therapist[r_source]])
    arm = np.concatenate([allocation.etmi, np.zeros(n_new_junk + n_repeat, dtype=bool)])
    breach = np.concatenate([allocation.breach, np.zeros(n_new_junk + n_repeat, dtype=bool)])
    referral = np.concatenate([dates.eligible_referral, dates.junk_referral,
                               dates.repeat_referral])
    birth = np.concatenate([dates.eligible_birth, dates.junk_birth,
                            dates.eligible_birth[r_source]])
    female = np.concatenate([eligible.female, junk.female, eligible.female[r_source]])
    r_cov = _draw_covariates(s, rng, n_repeat)
    r_cov["depression"], r_cov["anxiety"] = (
        e_cov["depression"][r_source], e_cov["anxiety"][r_source],
    )
    r_cov["bmi"] = e_cov["bmi"][r_source]
    r_cov["ses"] = e_cov["ses"][r_source]
    cov = {k: np.concatenate([e_cov[k], j_cov[k], r_cov[k]]) for k in e_cov}
    # Repeat episodes' scores: the person's own latent values plus fresh residual noise.
    rep_noise = {
        name: rng.normal(
            0, np.sqrt(s.params[name]["variance_components"]["residual"]), (n_repeat, 2)
        )
        for name in s.outcome_names
    }
    latent0, latent1_base = {}, {}
    for name in s.outcome_names:
        own0, own1 = latent.intake[name], latent.discharge_usual_care[name]
        latent0[name] = np.concatenate([own0, own0[r_source] + rep_noise[name][:, 0]])
        latent1_base[name] = np.concatenate([own1, own1[r_source] + rep_noise[name][:, 1]])
    return _Episodes(
        n_eligible=N, n_persons=N + n_new_junk, kind=kind, therapist=therapist, arm=arm,
        breach=breach, referral=referral, birth=birth, female=female, covariates=cov,
        person=np.concatenate([np.arange(N + n_new_junk), r_source]),
        eligible=kind == "eligible", intake=latent0, discharge_usual_care=latent1_base,
    )


def _draw_session_schedule(
    s: _Settings, therapists: _Therapists, episodes: _Episodes, rng: Generator
) -> tuple[_Schedule, _SessionRows]:
    """Sessions per episode, their dates, and the covering therapist of one later session.

    Stream ``sessions``, first part: session counts (1 + NegBin with the therapist's frailty),
    gaps between sessions, the first session's delay after referral, which episodes are
    covered, which session, and the covering therapist (a shift within the clinic).
    """
    A = s.assumptions
    C = s.counts["clinics"]
    n_ep, therapist, t_clinic = episodes.n, episodes.therapist, therapists.clinic
    m_uc, m_etmi = float(A["sessions_mean_usual_care"]), float(A["sessions_mean_etmi"])
    size = float(A["sessions_dispersion"])
    extra_mean = (np.where(episodes.arm, m_etmi, m_uc) - 1) * therapists.session_frailty[therapist]
    n_sessions = 1 + rng.negative_binomial(size, size / (size + extra_mean))
    S = int(n_sessions.sum())
    s_episode = np.repeat(np.arange(n_ep), n_sessions)
    s_start = np.cumsum(n_sessions) - n_sessions
    s_k = np.arange(S) - s_start[s_episode]
    gaps = rng.integers(3, 15, size=S)
    gaps[s_start] = rng.integers(0, 22, size=n_ep)
    cum = np.cumsum(gaps)
    s_date = episodes.referral[s_episode] + cum - (cum[s_start] - gaps[s_start])[s_episode]
    first_date = s_date[s_start]
    last_date = s_date[s_start + n_sessions - 1]
    s_therapist = therapist[s_episode].copy()
    # Covering sessions: one later session by another therapist of the same clinic.
    clinic_size = np.bincount(t_clinic, minlength=C)
    clinic_first = np.cumsum(clinic_size) - clinic_size
    can_cover = (n_sessions >= 3) & (clinic_size[t_clinic[therapist]] >= 2)
    covered = can_cover & (rng.random(n_ep) < float(A.get("covering_episode_fraction", 0.0)))
    cov_ep = np.flatnonzero(covered)
    cov_k = 1 + np.floor(rng.random(cov_ep.size) * (n_sessions[cov_ep] - 1)).astype(np.int64)
    cov_session = s_start[cov_ep] + cov_k
    own = therapist[cov_ep]
    own_clinic = t_clinic[own]
    position = own - clinic_first[own_clinic]
    shift = 1 + np.floor(rng.random(cov_ep.size) * (clinic_size[own_clinic] - 1)).astype(np.int64)
    s_therapist[cov_session] = clinic_first[own_clinic] + (position + shift) % clinic_size[
        own_clinic]
    s_covering = np.zeros(S, dtype=bool)
    s_covering[cov_session] = True
    schedule = _Schedule(count=n_sessions, start=s_start, first_date=first_date,
                         last_date=last_date, covered=covered)
    rows = _SessionRows(episode=s_episode, number=s_k, date=s_date, therapist=s_therapist,
                        covering=s_covering)
    return schedule, rows


def _draw_treatment_codes(
    s: _Settings, therapists: _Therapists, episodes: _Episodes, schedule: _Schedule,
    rows: _SessionRows, rng: Generator,
) -> _Codes:
    """Treatment codes of every session, the fidelity breaches and the untrained ETMI codes.

    Stream ``sessions``, second part (after :func:`_draw_session_schedule`): per non-ETMI code
    of ``codes.treatments`` whether each session has it, the forbidden code of each breach
    episode (on its first session), then the usual-care episodes of never-trained therapists
    whose first session gets the ETMI code (junk ``untrained_etmi_code``).
    """
    A = s.assumptions
    arm, s_episode, s_start = episodes.arm, rows.episode, schedule.start
    S = s_episode.size
    codes_cfg = s.config["codes"]
    treatments = list(codes_cfg["treatments"])
    etmi_code = codes_cfg["etmi"]
    forbidden = set(codes_cfg.get("fidelity_forbidden", []))
    code_prob = A.get("session_code_probabilities") or {}
    bit = {code: 1 << i for i, code in enumerate(treatments)}
    usual_mask = np.zeros(S, dtype=np.int64)
    neutral_mask = np.zeros(S, dtype=np.int64)
    for code in treatments:
        if code == etmi_code:
            continue
        drawn = rng.random(S) < float(code_prob.get(code, 0.3))
        usual_mask |= np.where(drawn, bit[code], 0)
        if code not in forbidden:
            neutral_mask |= np.where(drawn, bit[code], 0)
    s_arm = arm[s_episode]
    s_mask = np.where(s_arm, np.where(rows.covering, neutral_mask,
                                      neutral_mask | bit[etmi_code]),
                      usual_mask)
    breach_ep = np.flatnonzero(episodes.breach)
    if breach_ep.size and forbidden:
        forbidden_codes = [c for c in treatments if c in forbidden]
        weights = np.array([float(code_prob.get(c, 0.1)) for c in forbidden_codes]) + 1e-9
        chosen = rng.choice(len(forbidden_codes), breach_ep.size, p=weights / weights.sum())
        breach_session = s_start[breach_ep]  # first session: the primary therapist's
        s_mask[breach_session] |= np.array([bit[forbidden_codes[i]] for i in chosen])
    # Junk: ETMI code by never-trained therapists on eligible usual-care episodes.
    untrained_pool = np.flatnonzero(episodes.eligible & ~arm
                                    & ~therapists.trained[episodes.therapist])
    n_untrained = min(s.counts["junk_untrained_etmi_code"], untrained_pool.size)
    untrained_ep = np.sort(untrained_pool[_exact_choice(rng, untrained_pool.size, n_untrained)])
    s_mask[s_start[untrained_ep]] |= bit[etmi_code]
    lookup: list[str | None] = [
        ";".join(c for c in treatments if m & bit[c]) or None for m in range(1 << len(treatments))
    ]
    return _Codes(mask=s_mask, usual_mask=usual_mask, lookup=lookup, etmi_bit=bit[etmi_code],
                  untrained_episodes=untrained_ep)


def _recorded_scores(
    s: _Settings, episodes: _Episodes
) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray]:
    """Recorded (rounded, bounded) scores under the arm received, and the realised effects.

    No draws: both potential discharge scores come from the same latent values. Returns the
    (episode, time) scores per outcome, the realised effects per outcome and the primary
    outcome's latent change (which MNAR missingness depends on).
    """
    dep_all, anx_all = episodes.covariates["depression"], episodes.covariates["anxiety"]
    arm = episodes.arm
    recorded: dict[str, np.ndarray] = {}
    effects_truth: dict[str, Any] = {}
    for name in s.outcome_names:
        p = s.params[name]
        latent0 = episodes.intake[name]
        effect_i = (p["effect"] + p["effect_modification"]["depression"] * dep_all
                    + p["effect_modification"]["anxiety"] * anx_all)
        y1_control = episodes.discharge_usual_care[name]
        if name == s.primary:
            y1_control = y1_control + _calendar_trend(s, episodes)
        y1_treated = y1_control + effect_i
        latent1 = np.where(arm, y1_treated, y1_control)
        if name == s.primary:
            latent_change_primary = latent1 - latent0
        recorded[name] = np.stack([_recorded(latent0, p), _recorded(latent1, p)], axis=1)
        effects_truth[name] = _realised_effects(
            p, effect_i, y1_treated, y1_control, episodes.eligible, arm, dep_all, anx_all
        )
    return recorded, effects_truth, latent_change_primary


def _calendar_trend(s: _Settings, episodes: _Episodes) -> np.ndarray:
    """Stress option: discharge scores drift by ``calendar_trend_per_year`` per year of referral.

    Centred at the eligibility window's start; both potential outcomes move together (the
    effect is unchanged), but ETMI episodes all come after their therapist's training, so
    they are later on average: a comparison that ignores time confounds trend and arm.
    """
    per_year = stress_options(s.assumptions)["calendar_trend_per_year"]
    return per_year * (episodes.referral - s.window_start) / 365.25


def _draw_missingness(
    s: _Settings, episodes: _Episodes, latent: _Latent, schedule: _Schedule,
    latent_change_primary: np.ndarray, rng: Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """Which scores are present (per outcome, an (episode, time) mask).

    Stream ``missingness``: missing intake scores of the primary outcome (all episodes), the
    complete cases among ETMI then usual-care patients with an intake (Gumbel-top-k, exact
    counts), the discharge presence of every other episode, then per other outcome its extra
    missingness. Returns the masks and the mean session count the weights are centred at.
    """
    A, counts, primary, names = s.assumptions, s.counts, s.primary, s.outcome_names
    N, n_ep, eligible, arm = episodes.n_eligible, episodes.n, episodes.eligible, episodes.arm
    n_sessions = schedule.count
    present = {name: np.zeros((n_ep, 2), dtype=bool) for name in names}
    miss = A["missingness"]
    intake_missing = rng.random(n_ep) < float(miss.get("intake_missing_fraction", 0.0))
    present[primary][:, 0] = ~intake_missing
    complete_share = counts["complete_cases"] / N
    # Eligible: exact complete counts per arm, weighted by observed (MAR) or change (MNAR).
    # Eligible episodes are the first N; only they are selected by weight.
    mean_sessions = n_sessions[:N].mean()
    # The observed intake score (MAR: observed data only).
    intake_primary = episodes.intake[primary][:N]
    miss_logw = np.zeros(n_ep)
    miss_logw[:N] = (
        miss["age_per_10y"] * latent.design_eligible["age_per_10y"]
        + miss["function_intake_per_10"] * (intake_primary - s.params[primary]["mu_intake"]) / 10
        + miss["sessions"] * (n_sessions[:N] - mean_sessions)
    )
    if miss["mechanism"] == "MNAR":
        latent_change = latent_change_primary[:N]
        miss_logw[:N] += miss["mnar_change_per_10"] * (latent_change - latent_change.mean()) / 10
    complete_wanted = {True: counts["complete_cases_etmi"],
                       False: counts["complete_cases"] - counts["complete_cases_etmi"]}
    for arm_value, wanted in complete_wanted.items():
        pool = np.flatnonzero(eligible & (arm == arm_value) & ~intake_missing)
        if wanted > pool.size:
            raise ConfigError("simulate", [
                f"cannot make {wanted} complete cases from {pool.size} patients with an intake "
                "score; lower simulation.assumptions.missingness.intake_missing_fraction"])
        present[primary][pool[_gumbel_top_k(rng, miss_logw[pool], wanted)], 1] = True
    others = ~eligible | intake_missing
    present[primary][others, 1] = rng.random(others.sum()) < complete_share
    other_missing = float(miss.get("other_instrument_missing_fraction", 0.0))
    for name in names:
        if name != primary:
            present[name] = present[primary] & (rng.random((n_ep, 2)) >= other_missing)
    return present, mean_sessions


def _number_episodes(s: _Settings, episodes: _Episodes, rng: Generator) -> _Ids:
    """Episode numbers in referral order and person numbers.

    Stream ``ids``, first part: tie-breaks of the referral order, the person permutation.
    """
    n_ep, T = episodes.n, s.counts["therapists"]
    ep_order = np.lexsort((rng.random(n_ep), episodes.referral))
    ep_number = np.empty(n_ep, dtype=np.int64)
    ep_number[ep_order] = np.arange(1, n_ep + 1)
    n_unknown = s.counts["junk_sessions_unknown_patient"]
    person_number = rng.permutation(episodes.n_persons) + 1
    return _Ids(order=ep_order, number=ep_number,
                width=_id_width(n_ep + 3 * n_unknown + 3, 6), person_number=person_number,
                person_width=_id_width(episodes.n_persons, 6), therapist_width=_id_width(T, 3))


def _draw_diagnosis_codes(
    s: _Settings, episodes: _Episodes, rng: Generator
) -> tuple[np.ndarray, list[str]]:
    """Diagnosis codes per episode, as an index into the text of every code combination.

    Stream ``ids``, after :func:`_number_episodes`: the main CLBP code (halving weights), the
    non-CLBP code of ``non_clbp`` episodes, then per other comorbidity whether present. The
    depression and anxiety codes follow the covariates.
    """
    n_ep = episodes.n
    clbp = list(s.config["codes"]["clbp_diagnoses"])
    non_clbp = [c for c in NON_CLBP_CODES if c not in set(clbp)]
    primary_codes = clbp + non_clbp
    clbp_weight = 0.5 ** np.arange(len(clbp))
    main = rng.choice(len(clbp), n_ep, p=clbp_weight / clbp_weight.sum())
    is_nonclbp = episodes.kind == "non_clbp"
    main[is_nonclbp] = len(clbp) + rng.integers(0, len(non_clbp), size=is_nonclbp.sum())
    comorbid = (episodes.covariates["depression"].astype(np.int64)
                | (episodes.covariates["anxiety"].astype(np.int64) << 1))
    for i, (_, share) in enumerate(OTHER_COMORBIDITY):
        comorbid |= (rng.random(n_ep) < share).astype(np.int64) << (2 + i)
    extra_codes = [DEPRESSION_CODE, ANXIETY_CODE] + [c for c, _ in OTHER_COMORBIDITY]
    diag_lookup = [
        ";".join([pc] + [c for b, c in enumerate(extra_codes) if m >> b & 1])
        for pc in primary_codes for m in range(1 << len(extra_codes))
    ]
    return main * (1 << len(extra_codes)) + comorbid, diag_lookup


def _patients_table(
    s: _Settings, episodes: _Episodes, ids: _Ids, diagnosis: tuple[np.ndarray, list[str]],
    rng: Generator,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The raw patients table in id order, with exact duplicate rows; and its junk tally.

    Stream ``ids``, after :func:`_draw_diagnosis_codes`: the duplicated rows.
    """
    n_ep, cov = episodes.n, episodes.covariates
    diagnosis_index, diag_lookup = diagnosis
    # Tables are assembled from row-index arrays (ids order, duplicates inserted) before any
    # text is built: indexing numpy is far cheaper than reordering Arrow string columns.
    dup_pat_rows = np.flatnonzero(
        _exact_choice(rng, n_ep, s.counts["junk_duplicate_patient_rows"]))
    rows = ids.order[_rows_with_duplicates(n_ep, dup_pat_rows)]
    patients = pd.DataFrame({
        "episode_id": _ids("E", ids.number[rows], ids.width),
        "patient_id": _ids("P", ids.person_number[episodes.person[rows]], ids.person_width),
        "referral_date": _date_strings(episodes.referral[rows]),
        "birth_date": _date_strings(episodes.birth[rows]),
        "sex": _text_from_lookup(episodes.female[rows].astype(np.int64), ["M", "F"]),
        "diagnosis_codes": _text_from_lookup(diagnosis_index[rows], diag_lookup),
        "symptom_duration_weeks": cov["weeks"][rows].astype(np.int64),
        "depression": cov["depression"][rows].astype(np.int64),
        "anxiety": cov["anxiety"][rows].astype(np.int64),
        "bmi": cov["bmi"][rows],
        "ses_score": pd.array(cov["ses"][rows], dtype="Int64"),
    })
    return patients, {"duplicate_patient_rows": int(dup_pat_rows.size)}


def _sessions_table(
    s: _Settings, episodes: _Episodes, schedule: _Schedule, session_rows: _SessionRows,
    codes: _Codes, ids: _Ids, rng: Generator,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The raw sessions table in id order with its junk (messy codes, unknown episodes,
    duplicates), and its junk tally.

    Stream ``ids``, after :func:`_patients_table`: the messy sessions and their style, the
    unknown-episode sessions' therapist, date and codes, then the duplicated rows.
    """
    counts, T = s.counts, s.counts["therapists"]
    s_episode, s_mask, lookup = session_rows.episode, codes.mask, codes.lookup
    S = s_episode.size
    n_unknown = counts["junk_sessions_unknown_patient"]
    s_order = np.lexsort((session_rows.number, ids.number[s_episode]))
    code_index = s_mask.copy()
    # Repairable mess: lower case or stray spaces in non-ETMI codes of a few sessions.
    n_messy = counts.get("junk_messy_codes", 0)
    # Only in eligible episodes, so each such record's final fate is unambiguously `repaired`.
    messy_pool = np.flatnonzero((s_mask != 0) & ((s_mask & codes.etmi_bit) == 0)
                                & episodes.eligible[s_episode])
    messy = np.sort(messy_pool[_exact_choice(rng, messy_pool.size, min(n_messy,
                                                                        messy_pool.size))])
    style = rng.integers(0, 3, size=messy.size)
    messy_text = [  # a handful of rows: each gets its own entry in the code lookup
        lookup[m].lower() if how == 0 else (f" {lookup[m]}" if how == 1
                                            else lookup[m].replace(";", " ; ") + " ")
        for m, how in zip(s_mask[messy], style, strict=True)
    ]
    code_index[messy] = len(lookup) + np.arange(messy.size)
    unknown_ep_number = episodes.n + 1 + 3 * np.arange(n_unknown)
    unknown_therapist = rng.integers(0, T, size=n_unknown)
    unknown_date = rng.integers(s.window_start, s.window_end + 1, size=n_unknown)
    usual_mask = codes.usual_mask
    unknown_mask = rng.choice(np.unique(usual_mask[usual_mask > 0]), size=n_unknown)
    # Exact duplicates: clean, ordinary sessions only (not messy, not planted ETMI).
    special = np.zeros(S + n_unknown, dtype=bool)
    inverse_s = np.empty(S, dtype=np.int64)
    inverse_s[s_order] = np.arange(S)
    special[inverse_s[messy]] = True
    special[inverse_s[schedule.start[codes.untrained_episodes]]] = True
    special[S:] = True
    dup_sess_pool = np.flatnonzero(~special)
    dup_sess_rows = dup_sess_pool[_exact_choice(
        rng, dup_sess_pool.size, counts["junk_duplicate_session_rows"])]
    rows = _rows_with_duplicates(S + n_unknown, dup_sess_rows)  # positions in id order
    sessions = pd.DataFrame({
        "session_id": _ids("S", rows + 1, _id_width(S + n_unknown, 7)),
        "episode_id": _ids("E", np.concatenate([ids.number[s_episode][s_order],
                                                unknown_ep_number])[rows], ids.width),
        "therapist_id": _ids("T", 1 + np.concatenate([session_rows.therapist[s_order],
                                                      unknown_therapist])[rows],
                             ids.therapist_width),
        "session_date": _date_strings(np.concatenate([session_rows.date[s_order],
                                                      unknown_date])[rows]),
        "treatment_codes": _text_from_lookup(
            np.concatenate([code_index[s_order], unknown_mask])[rows], lookup + messy_text),
    })
    tally = {"sessions": S, "sessions_unknown_patient": n_unknown, "messy_codes": int(messy.size),
             "duplicate_session_rows": int(dup_sess_rows.size),
             "untrained_etmi_code": int(codes.untrained_episodes.size)}
    return sessions, tally


def _outcomes_table(
    s: _Settings, episodes: _Episodes, schedule: _Schedule, recorded: dict[str, np.ndarray],
    present: dict[str, np.ndarray], ids: _Ids, rng: Generator,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The raw outcomes table (long, id order) with out-of-range scores and duplicate rows, and
    its junk tally.

    Stream ``ids``, after :func:`_sessions_table`: the out-of-range rows, above or below the
    range and by how much, then the duplicated rows.
    """
    names, params, counts, eligible = s.outcome_names, s.params, s.counts, episodes.eligible
    present_cube = np.stack([present[name] for name in names], axis=2)  # ep, time, out
    score_cube = np.stack([recorded[name] for name in names], axis=2)
    cube_ep, cube_time, cube_out = np.nonzero(present_cube[ids.order])
    row_episode = ids.order[cube_ep]
    scores = score_cube[row_episode, cube_time, cube_out].astype(float)
    assess_date = np.where(cube_time == 0, schedule.first_date[row_episode],
                           schedule.last_date[row_episode])
    # Out-of-range scores, only where they cannot change the complete-case counts.
    n_oor = counts["junk_out_of_range_scores"]
    cc_index = [names.index(o) for o in s.cc_outcomes if o in names]
    oor_pool = np.flatnonzero(eligible[row_episode] & ~np.isin(cube_out, cc_index))
    oor_rows = np.sort(oor_pool[_exact_choice(rng, oor_pool.size, min(n_oor, oor_pool.size))])
    lows = np.array([params[o]["min"] for o in names])[cube_out[oor_rows]]
    highs = np.array([params[o]["max"] for o in names])[cube_out[oor_rows]]
    span = highs - lows
    above = rng.random(oor_rows.size) < 0.7
    offset = 1 + np.floor(rng.random(oor_rows.size) * np.maximum(1, 0.5 * span))
    scores[oor_rows] = np.where(above, highs + offset, lows - offset)
    timepoints = np.array([s.config["timepoints"]["baseline"],
                           s.config["timepoints"]["followup"]])
    n_rows = scores.size
    oor_flag = np.zeros(n_rows, dtype=bool)
    oor_flag[oor_rows] = True
    # Duplicates: one row per chosen episode (so the wide layout repeats that episode's row).
    candidate_rows = np.flatnonzero(~oor_flag)
    _, first_row_of_episode = np.unique(row_episode[candidate_rows], return_index=True)
    dup_out_pool = candidate_rows[first_row_of_episode]
    dup_out_rows = dup_out_pool[_exact_choice(
        rng, dup_out_pool.size, counts["junk_duplicate_outcome_rows"])]
    rows = _rows_with_duplicates(n_rows, dup_out_rows)
    outcomes = pd.DataFrame({
        "outcome_id": _ids("O", rows + 1, _id_width(n_rows, 7)),
        "episode_id": _ids("E", ids.number[row_episode[rows]], ids.width),
        "assessment_date": _date_strings(assess_date[rows]),
        "instrument": _text_from_lookup(cube_out[rows], names),
        "timepoint": _text_from_lookup(cube_time[rows], list(timepoints)),
        "score": scores[rows],
    })
    tally = {"outcome_rows": n_rows, "out_of_range_scores": int(oor_rows.size),
             "duplicate_outcome_rows": int(dup_out_rows.size),
             "excluded_outcome_rows": int((~eligible[row_episode]).sum())}
    return outcomes, tally


def _therapists_table(s: _Settings, therapists: _Therapists, ids: _Ids) -> pd.DataFrame:
    """The raw therapists table (no draws, no junk)."""
    T, C = s.counts["therapists"], s.counts["clinics"]
    return pd.DataFrame({
        "therapist_id": _ids("T", np.arange(1, T + 1), ids.therapist_width),
        "clinic_id": _ids("C", therapists.clinic + 1, _id_width(C, 2)),
        "age": therapists.age,
        "sex": _text_from_lookup(therapists.female.astype(np.int64), ["M", "F"]),
        "etmi_training_date": _date_strings(np.maximum(therapists.training, 0),
                                            ~therapists.trained),
    })


def simulate_extract(
    config: Mapping[str, Any], seed: int, n_patients: int | None = None
) -> SimulatedExtract:
    """Generate the raw extract of the simulated default cohort.

    Parameters
    ----------
    config : mapping
        Validated study configuration (its ``simulation`` section drives everything).
    seed : int
        Seed; the same seed gives the same extract.
    n_patients : int, optional
        Eligible patients to generate; every count scales with it. Default: the published
        ``simulation.targets.eligible_patients``.

    Returns
    -------
    SimulatedExtract
        Tables in the contract's canonical columns (outcomes long) and the truth.
    """
    s = _settings(config, n_patients)
    streams = _streams(seed)
    staff = _draw_therapists(s, streams["therapists"])
    eligible = _draw_eligible_patients(s, staff, streams["patients"])
    junk = _draw_ineligible_episodes(s, streams["junk"])
    latent = _draw_latent_outcomes(s, staff, eligible, junk, streams["outcomes"])
    allocation = _allocate_etmi(s, staff, eligible, latent, streams["allocation"])
    dates = _draw_dates(s, staff, eligible, allocation, junk, streams["dates"])
    episodes = _join_episodes(s, eligible, junk, allocation, dates, latent, streams["junk"])
    schedule, session_rows = _draw_session_schedule(s, staff, episodes, streams["sessions"])
    codes = _draw_treatment_codes(s, staff, episodes, schedule, session_rows,
                                  streams["sessions"])
    recorded, effects, latent_change = _recorded_scores(s, episodes)
    present, mean_sessions = _draw_missingness(s, episodes, latent, schedule, latent_change,
                                               streams["missingness"])
    # Numbering, diagnosis codes and the tables' junk share the ids stream in this order.
    ids = _number_episodes(s, episodes, streams["ids"])
    diagnosis = _draw_diagnosis_codes(s, episodes, streams["ids"])
    patients, tally = _patients_table(s, episodes, ids, diagnosis, streams["ids"])
    sessions, session_tally = _sessions_table(s, episodes, schedule, session_rows, codes, ids,
                                              streams["ids"])
    # Session-level work arrays are the bulk of memory at a million patients: free them now.
    del session_rows, codes
    outcomes, outcome_tally = _outcomes_table(s, episodes, schedule, recorded, present, ids,
                                              streams["ids"])
    therapists = _therapists_table(s, staff, ids)
    tables = {"therapists": therapists, "patients": patients, "sessions": sessions,
              "outcomes": outcomes}
    truth = _truth(s, seed, staff, episodes, schedule, allocation, effects, mean_sessions,
                   tables, tally | session_tally | outcome_tally)
    return SimulatedExtract(therapists, patients, sessions, outcomes, truth)


def _truth(
    s: _Settings, seed: int, therapists: _Therapists, episodes: _Episodes, schedule: _Schedule,
    allocation: _Allocation, effects_truth: dict[str, Any], mean_sessions: float,
    tables: Mapping[str, pd.DataFrame], tally: Mapping[str, int],
) -> dict[str, Any]:
    """Every true parameter and realised quantity, as written to ``truth.json`` (no draws)."""
    A, counts, targets, params = s.assumptions, s.counts, s.targets, s.params
    primary, outcome_names = s.primary, s.outcome_names
    conf, miss = A["confounding"], A["missingness"]
    T, N = counts["therapists"], counts["eligible_patients"]
    eligible, arm, n_sessions = episodes.eligible, episodes.arm, schedule.count
    referral, birth = episodes.referral, episodes.birth
    dep_all, anx_all = episodes.covariates["depression"], episodes.covariates["anxiety"]
    t_age, t_adopter, t_trained = therapists.age, therapists.adopter, therapists.trained
    n_untrained, n_breach = tally["untrained_etmi_code"], allocation.n_breach
    m_uc, m_etmi = float(A["sessions_mean_usual_care"]), float(A["sessions_mean_etmi"])
    el_age_years = (referral - birth)[eligible] / 365.25
    return {
        "seed": int(seed),
        "n_patients": N,
        "generator": "numpy.random.Generator(PCG64), SeedSequence(seed).spawn per component",
        "layout_config": _layout_config(s.config),
        "counts": {
            **{k: v for k, v in counts.items() if not k.startswith("junk_")},
            "untrained_etmi_code_patients": int(n_untrained),
            "fidelity_breaches": int(n_breach),
            "covering_episodes": int(schedule.covered.sum()),
            "complete_cases_usual_care": counts["complete_cases"] - counts["complete_cases_etmi"],
        },
        "junk": {k[len("junk_"):]: v for k, v in counts.items() if k.startswith("junk_")}
        | {"untrained_etmi_code": int(n_untrained), "messy_codes": tally["messy_codes"],
           "out_of_range_scores": tally["out_of_range_scores"]},
        "raw_rows": {"therapists": T, "patients": len(tables["patients"]),
                     "sessions": len(tables["sessions"]), "outcomes": len(tables["outcomes"])},
        "expected_ledger": _expected_ledger(
            T, N, episodes.n, tally["sessions"], tally["sessions_unknown_patient"],
            tally["outcome_rows"], tally["messy_codes"], tally["out_of_range_scores"],
            int(n_sessions[~eligible].sum()), tally["excluded_outcome_rows"],
            tally["duplicate_patient_rows"], tally["duplicate_session_rows"],
            tally["duplicate_outcome_rows"]),
        "patients": {
            "age_mean_years_float": float(el_age_years.mean()),
            "age_sd_years_float": float(el_age_years.std(ddof=1)),
            "age_completed_years_mean": float(
                _completed_years(birth[eligible], referral[eligible]).mean()),
            "female": int(episodes.female[eligible].sum()),
            "depression_prevalence": float(dep_all[eligible].mean()),
            "anxiety_prevalence": float(anx_all[eligible].mean()),
            "p_anxiety_given_depression": s.p_anx_dep,
            "p_anxiety_given_no_depression": s.p_anx_nodep,
            "symptom_weeks_design": {"minimum": DURATION_MIN,
                                     "lognormal_median": float(np.exp(DURATION_LOG_MEDIAN)),
                                     "lognormal_sdlog": DURATION_LOG_SD,
                                     "mean_log_weeks": s.mean_log_weeks},
        },
        "outcome_model": {
            "formula": ("y*_ij = mu + x'beta_level + j*x'beta_change + a_c + d_cj + u_t + w_tj"
                        " + p_i + e_ij + j*(change_usual_care + arm*(effect + m_dep*dep"
                        " + m_anx*anx)); recorded = bound(round(y*))"),
            "covariates_centred_at": {
                "age_per_10y": targets["patient_age_mean"], "female": s.share_female,
                "log_symptom_weeks": s.mean_log_weeks, "depression": s.prev_dep,
                "anxiety": s.prev_anx},
            "outcomes": {name: params[name] | {"realised": effects_truth[name]}
                         for name in outcome_names},
        },
        "effects": {name: {"structural": params[name]["effect"],
                           "realised_ate": effects_truth[name]["realised_ate"],
                           "realised_att": effects_truth[name]["realised_att"],
                           "subgroups": effects_truth[name]["subgroups"]}
                    for name in outcome_names},
        "sessions": {
            "mean_usual_care": m_uc, "mean_etmi": m_etmi, "ratio_of_means": m_etmi / m_uc,
            "distribution": "1 + NegBin(size, mean=(m_arm-1)*g_t), g_t ~ Gamma(mean 1)",
            "dispersion_size": float(A["sessions_dispersion"]),
            "therapist_frailty_sd": float(A.get("sessions_therapist_sd", 0.0)),
            "realised_mean_usual_care": float(n_sessions[eligible & ~arm].mean()),
            "realised_mean_etmi": float(n_sessions[eligible & arm].mean()),
            "covering_episode_fraction": float(A.get("covering_episode_fraction", 0.0)),
        },
        "selection": {
            "method": "Gumbel-top-k weighted sampling without replacement (exact counts)",
            "adopters_log_weight": {
                "therapist_age_per_10y": conf.get("therapist_age_per_10y", 0.0)},
            "adopter_age_mean": float(t_age[t_adopter].mean()),
            "trained_non_adopter_age_mean": float(t_age[t_trained & ~t_adopter].mean())
            if (t_trained & ~t_adopter).any() else None,
            "etmi_log_weight": {"age_per_10y": conf["age_per_10y"],
                                f"{primary}_intake_per_10": conf["function_intake_per_10"]},
            "etmi_only_among_adopters_patients": True,
            "one_etmi_patient_per_adopter_first": True,
            "training_period": [(dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat()
                                for d in therapists.training_period],
        },
        "missingness": dict(miss) | {
            "method": "Gumbel-top-k within arm among patients with an intake score",
            "outcome": primary,
            "mean_sessions_centre": float(mean_sessions),
        },
        "fidelity": {"breach_fraction": float(A.get("fidelity_breach_fraction", 0.0)),
                     "true_fidelity": 1 - n_breach / counts["etmi_patients"]},
    } | ({"stress": stress_options(A)} if A.get("stress") else {})


def _expected_ledger(
    therapists: int, eligible: int, episodes: int, sessions: int, unknown: int, outcomes: int,
    messy: int, out_of_range: int, excluded_sessions: int, excluded_outcomes: int,
    dup_patients: int, dup_sessions: int, dup_outcomes: int,
) -> dict[str, dict[str, int]]:
    """Fates the contract's rules give each raw record (long layout), for integration tests."""
    ledger = {
        "therapists": {"kept": therapists},
        "patients": {"kept": eligible, "excluded": episodes - eligible, "dropped": dup_patients},
        "sessions": {
            "kept": sessions - excluded_sessions - messy, "repaired": messy,
            "excluded": excluded_sessions, "dropped": dup_sessions + unknown,
        },
        "outcomes": {
            "kept": outcomes - excluded_outcomes - out_of_range,
            "value_set_missing": out_of_range, "excluded": excluded_outcomes,
            "dropped": dup_outcomes,
        },
    }
    return {table: {fate: n for fate, n in fates.items() if n} for table, fates in ledger.items()}


def _realised_effects(
    p: Mapping[str, Any], effect_i: np.ndarray, y1_treated: np.ndarray, y1_control: np.ndarray,
    eligible: np.ndarray, arm: np.ndarray, dep: np.ndarray, anx: np.ndarray,
) -> dict[str, Any]:
    """Average effect on the recorded scale from both potential discharge scores."""
    diff = _recorded(y1_treated, p) - _recorded(y1_control, p)
    out: dict[str, Any] = {
        "latent_ate": float(effect_i[eligible].mean()),
        "realised_ate": float(diff[eligible].mean()),
        "realised_att": float(diff[eligible & arm].mean()) if (eligible & arm).any() else None,
        "rounding_bounding_attenuation": float(diff[eligible].mean() - effect_i[eligible].mean()),
        "subgroups": {},
    }
    for name, flag in (("depression", dep), ("anxiety", anx)):
        out["subgroups"][name] = {}
        for level in (0, 1):
            sel = eligible & (flag == level)
            structural = p["effect"] + (p["effect_modification"][name] if level else 0.0)
            out["subgroups"][name][str(level)] = {
                "structural": structural,
                "latent_mean": float(effect_i[sel].mean()) if sel.any() else None,
                "realised_ate": float(diff[sel].mean()) if sel.any() else None,
                "n": int(sel.sum()),
            }
    return out


def _rows_with_duplicates(n: int, duplicated: np.ndarray) -> np.ndarray:
    """Positions ``0..n-1`` with each position in ``duplicated`` repeated right after itself."""
    return np.sort(np.concatenate([np.arange(n), np.asarray(duplicated, dtype=np.int64)]),
                   kind="stable")


def _with_duplicates(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """Insert an exact copy of each of ``rows`` directly after its original."""
    order = np.sort(np.concatenate([np.arange(len(frame)), rows]), kind="stable")
    return frame.take(order).reset_index(drop=True)


# ----------------------------------------------------------------------------- writing


def outcomes_wide(outcomes: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    """Convert long outcomes to the contract's wide layout (one row per episode).

    Exact duplicate long rows become exact duplicate wide rows of their episode (directly
    after it), so the junk survives the change of layout.
    """
    baseline, followup = config["timepoints"]["baseline"], config["timepoints"]["followup"]
    names = [o["name"] for o in config["outcomes"]]
    duplicated = outcomes.duplicated()
    base = outcomes[~duplicated].reset_index(drop=True)
    ep_index, episodes = pd.factorize(base["episode_id"], sort=True)
    time_index = np.where((base["timepoint"] == baseline).to_numpy(dtype=bool), 0, 1)
    out_index = pd.Categorical(base["instrument"], categories=names).codes
    scores = np.full((len(episodes), 2, len(names)), np.nan)
    scores[ep_index, time_index, out_index] = base["score"].to_numpy(dtype=float)
    # Every score of an episode and time point shares one date: take it from any of its rows.
    date_row = np.full((len(episodes), 2), -1, dtype=np.int64)
    date_row[ep_index, time_index] = np.arange(len(base))
    wide = pd.DataFrame({"episode_id": pd.Series(episodes, dtype="str")})
    for t, label in enumerate((baseline, followup)):
        missing = date_row[:, t] < 0
        dates = base["assessment_date"].take(np.where(missing, 0, date_row[:, t]))
        wide[f"{label}_date"] = dates.where(~missing).reset_index(drop=True)
    for o, name in enumerate(names):
        for t, label in enumerate((baseline, followup)):
            wide[f"{name}_{label}"] = scores[:, t, o]
    dup_episodes = outcomes.loc[duplicated, "episode_id"]
    dup_rows = episodes.get_indexer(dup_episodes)
    return _with_duplicates(wide, np.sort(dup_rows))


def _csv_float_text(values: np.ndarray) -> pa.Array | None:
    """Format floats as ``%.10g`` would for values with at most 3 decimals; else ``None``."""
    finite = values[~np.isnan(values)]
    if finite.size and np.abs(finite).max() >= 1e9:
        return None
    for decimals in range(4):
        scale = 10**decimals
        units = np.round(values * scale)
        if np.all(np.isnan(values) | (np.abs(units - values * scale) < 1e-6)):
            break
    else:
        return None
    missing = np.isnan(values)
    units = np.where(missing, 0, units).astype(np.int64)
    negative = units < 0
    whole, fraction = np.divmod(np.abs(units), scale)
    text = pc.cast(pa.array(whole), pa.string())
    if decimals:
        digits = pc.utf8_rtrim(pc.utf8_lpad(pc.cast(pa.array(fraction), pa.string()), decimals,
                                            "0"), "0")
        suffix = pc.if_else(pa.array(fraction > 0), pc.binary_join_element_wise(".", digits, ""),
                            "")
        text = pc.binary_join_element_wise(text, suffix, "")
    text = pc.if_else(pa.array(negative), pc.binary_join_element_wise("-", text, ""), text)
    return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)


def _string_bytes(array: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The UTF-8 bytes of each chunk of a string array (values only, no offsets)."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    out = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[
            chunk.offset: chunk.offset + len(chunk) + 1]
        data = chunk.buffers()[2]
        out.append(np.frombuffer(data, dtype=np.uint8)[offsets[0]: offsets[-1]]
                   if data is not None else np.empty(0, dtype=np.uint8))
    return out


def _needs_quotes(array: pa.Array | pa.ChunkedArray) -> bool:
    """True if any value holds a comma, quote or line break (CSV would have to quote it)."""
    special = np.frombuffer(b',"\r\n', dtype=np.uint8)
    return any(np.isin(chunk, special).any() for chunk in _string_bytes(array))


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as :func:`trial_analysis.io.write_csv` would, but vectorised in Arrow.

    pandas formats floats one value at a time under ``float_format``, which takes minutes at a
    million patients. The simulated tables hold only ids, codes, dates, integers and floats
    with few decimals, none of which need quoting, so each line can be assembled column-wise.
    Anything else (a value needing quotes, a float with many decimals) falls back to
    ``io.write_csv``; a test checks that both give identical bytes.
    """
    names = [str(c) for c in frame.columns]
    if any(set(name) & set(',"\r\n') for name in names):
        return io.write_csv(frame, path, neutralise=False)
    columns: list[pa.Array] = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_float_dtype(series.dtype):
            text = _csv_float_text(series.to_numpy(dtype=float))
            if text is None:
                return io.write_csv(frame, path, neutralise=False)
        elif pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(
                series.dtype):
            text = pc.cast(pa.array(series.astype("Int64")), pa.string())
        else:
            text = pc.cast(pa.array(series, from_pandas=True), pa.string())
            if _needs_quotes(text):
                return io.write_csv(frame, path, neutralise=False)
        columns.append(text)
    # The newline rides on the last column, so the lines are assembled in one pass.
    columns[-1] = pc.binary_join_element_wise(pc.fill_null(columns[-1], ""), "", "\n")
    lines = pc.binary_join_element_wise(*columns, ",", null_handling="replace",
                                        null_replacement="")
    header = (",".join(names) + "\n").encode("utf-8")
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(header)
        for chunk in _string_bytes(lines):
            handle.write(chunk.data)
    return Path(path)


def write_extract(
    extract: SimulatedExtract,
    out_dir: str | Path,
    layout: str = "long",
    file_format: str = "csv",
    config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the four tables and ``truth.json`` into ``out_dir`` (atomically, deterministically).

    Parameters
    ----------
    extract : SimulatedExtract
        The generated extract.
    out_dir : str or Path
        Folder for the files (created if needed).
    layout : {"long", "wide"}
        Outcomes layout.
    file_format : {"csv", "parquet"}
        File format of the tables.
    config : mapping, optional
        Needed for the wide layout (time point and outcome names); taken from the truth's
        record of them when omitted.

    Returns
    -------
    dict
        File path per table name, plus ``truth``.
    """
    if layout not in ("long", "wide"):
        raise ConfigError("simulate", [f"layout must be long or wide, got {layout!r}"])
    if file_format not in ("csv", "parquet"):
        raise ConfigError("simulate", [f"file_format must be csv or parquet, got {file_format!r}"])
    out_dir = Path(out_dir)
    tables = extract.tables()
    if layout == "wide":
        if config is None:
            config = extract.truth["layout_config"]
        tables["outcomes"] = outcomes_wide(tables["outcomes"], config)
    writer = _write_csv if file_format == "csv" else io.write_parquet
    paths: dict[str, Path] = {}
    for name, frame in tables.items():
        paths[name] = writer(frame, out_dir / f"{name}.{file_format}")
    truth = dict(extract.truth) | {"layout": layout, "format": file_format}
    paths["truth"] = io.write_json(truth, out_dir / "truth.json")
    return paths


def run_simulate(
    config: dict[str, Any],
    seed: int | None,
    out: str | Path,
    layout: str | None = None,
    file_format: str | None = None,
    n_patients: int | None = None,
) -> SimulatedExtract:
    """Command-line entry: simulate the default cohort and write it to ``out``.

    ``seed``, ``layout`` and ``file_format`` default to the config's ``seed``,
    ``input.outcomes_layout`` and ``input.format``.
    """
    seed = int(config["seed"]) if seed is None else int(seed)
    layout = layout or config.get("input", {}).get("outcomes_layout", "long")
    if n_patients is None:
        n_patients = config.get("simulation", {}).get("n_patients")
    file_format = file_format or config.get("input", {}).get("format", "csv")
    if file_format not in ("csv", "parquet"):
        raise ConfigError("simulate", [
            f"input/format is '{file_format}'; simulate writes csv or parquet: pass --format"])
    extract = simulate_extract(config, seed, n_patients)
    write_extract(extract, out, layout=layout, file_format=file_format, config=config)
    counts = extract.truth["counts"]
    log.info(
        "simulated %d eligible patients (%d ETMI), %d therapists in %d clinics: %s",
        counts["eligible_patients"], counts["etmi_patients"], counts["therapists"],
        counts["clinics"], ", ".join(f"{k} {len(v)} rows" for k, v in extract.tables().items()),
    )
    return extract


def _layout_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"timepoints": dict(config["timepoints"]),
            "outcomes": [{"name": o["name"]} for o in config["outcomes"]]}


__all__: Sequence[str] = (
    "STRESS_DEFAULTS", "SimulatedExtract", "outcomes_wide", "run_simulate", "scaled_counts",
    "simulate_extract", "stress_options", "write_extract",
)
