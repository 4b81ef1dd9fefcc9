"""The therapist fixed-effects sensitivity analysis.

If adopting therapists differ from the others (better results, different caseloads), a
comparison across therapists is confounded at the therapist level. Comparing arms within the
caseloads of therapists who treated patients in both arms removes every such therapist-level
confounder; the price is a smaller, selected sample (therapists who used both approaches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from trial_analysis.causal.common import (
    ARM_TERM,
    FORM_NOTES,
    MISSING_COLUMN,
    SensitivityResult,
    analysis_covariates,
    ancova_frame,
    fit_ancova,
    form_method,
    model_forms,
    sensitivity_frame,
    sensitivity_outcomes,
    settings,
    tidy_row,
)
from trial_analysis.columns import ARM, THERAPIST, check_arm
from trial_analysis.config import confidence_level


def both_arm_sample(
    frame: pd.DataFrame, min_per_arm: int = 1
) -> tuple[pd.DataFrame, list[str]]:
    """Patients of therapists with at least ``min_per_arm`` patients in each arm."""
    counts = frame.groupby(THERAPIST, observed=True)[ARM].agg(["sum", "count"])
    counts["control"] = counts["count"] - counts["sum"]
    both = counts.index[(counts["sum"] >= min_per_arm) & (counts["control"] >= min_per_arm)]
    return frame.loc[frame[THERAPIST].isin(both)], [str(t) for t in both]


def _form_rows(analysed: pd.DataFrame, sample: pd.DataFrame, therapists: list[str],
               outcome: str, covariates: list[str], form: str, min_per_arm: int,
               level: float, notes: list[str], source: str) -> list[dict[str, Any]]:
    """The rows of one outcome in one model form (see :func:`fit_therapist_fixed_effects`)."""
    analysis = "therapist_fixed_effects"
    full = fit_ancova(analysed, outcome, covariates, source=source, form=form)
    rows = [tidy_row(outcome, analysis, form_method("ancova_all_therapists", form), ARM_TERM,
                     full.row(level=level), full.n_patients, full.n_clusters,
                     [FORM_NOTES[form], *notes, *full.notes])]
    if len(therapists) < 2:
        rows.append(tidy_row(outcome, analysis, form_method("therapist_fixed_effects", form),
                             ARM_TERM, {}, len(sample), len(therapists),
                             "fewer than 2 therapists treated patients in both arms: "
                             "not estimable"))
        return rows
    same = fit_ancova(sample, outcome, covariates, source=source, form=form)
    fixed = fit_ancova(sample, outcome, covariates, therapist_fixed_effects=True,
                       source=source, form=form)
    rows.append(tidy_row(outcome, analysis, form_method("ancova_same_sample", form), ARM_TERM,
                         same.row(level=level), same.n_patients, same.n_clusters,
                         [FORM_NOTES[form], *same.notes]))
    rows.append(tidy_row(outcome, analysis, form_method("therapist_fixed_effects", form),
                         ARM_TERM, fixed.row(level=level), fixed.n_patients, fixed.n_clusters,
                         [FORM_NOTES[form],
                          f"therapists with >= {min_per_arm} patient(s) in each arm",
                          "estimand: the within-therapist conditional effect",
                          *fixed.notes]))
    return rows


def fit_therapist_fixed_effects(
    analysis: pd.DataFrame, config: Mapping[str, Any], source: str = "analysis table"
) -> SensitivityResult:
    """The arm effect within therapists who treated patients in both arms.

    For each outcome, among patients with both scores (and every covariate), keep therapists
    with at least ``sensitivity.therapist_fixed_effects.min_patients_per_arm`` patients in each
    arm (counted in that outcome's analysed sample) and fit the ANCOVA with a fixed intercept
    per therapist: the arm effect is then estimated only from comparisons within a therapist's
    own caseload, so any therapist-level confounding (adopting therapists who are better, or
    see different patients, on average) is removed. Standard errors are CR1 clustered by
    therapist. Rows: ``therapist_fixed_effects`` and, for comparison, the same ANCOVA without
    fixed effects in the same sample (``ancova_same_sample``) and in all analysed patients
    (``ancova_all_therapists``). With the change-score form in ``sensitivity.model_forms``
    the same rows again with the change score as the outcome (``change_all_therapists``,
    ``change_same_sample``, ``therapist_fixed_effects_change``).
    """
    check_arm(analysis, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "therapist_fixed_effects")
    min_per_arm = int(options["min_patients_per_arm"])
    covariates = analysis_covariates(config)
    level = confidence_level(config)
    rows, counts = [], []
    for outcome in sensitivity_outcomes(config):
        analysed, notes = ancova_frame(analysis, outcome, covariates, source)
        sample, therapists = both_arm_sample(analysed, min_per_arm)
        counts.append({"outcome": outcome, "therapists_analysed":
                       int(analysed[THERAPIST].nunique()),
                       "therapists_both_arms": len(therapists),
                       "patients_analysed": len(analysed), "patients_both_arms": len(sample),
                       "intervention_patients_both_arms": int(sample[ARM].sum())})
        for form in model_forms(config):
            rows += _form_rows(analysed, sample, therapists, outcome, covariates, form,
                               min_per_arm, level, notes, source)
    details = {"settings": options, "covariates": covariates, "confidence_level": level,
               "model": "ANCOVA: follow-up ~ arm + baseline + covariates + therapist fixed "
                        "intercepts (change score: follow-up - baseline ~ arm + covariates + "
                        "therapist fixed intercepts); CR1 SE clustered by therapist; t(G-1) "
                        "intervals", "model_forms": model_forms(config)}
    return SensitivityResult("therapist_fixed_effects", sensitivity_frame(rows),
                             tables={"samples": pd.DataFrame(counts)}, details=details)
