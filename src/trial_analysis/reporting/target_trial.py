"""The target trial the study emulates, as the report's first table (TARGET form).

One row per protocol component (Hernán & Robins 2016; the TARGET reporting guideline):
eligibility, treatment strategies, assignment, time zero, follow-up, outcome, causal contrast,
estimand, analysis plan and the population this run analyses. Each row has the target
trial's specification (``target_trial`` in the config, or text built from the rest of the
config where a key is left out) and how this run emulates it, with the counts of the flow.

The table is built from the configuration and the flow table only, so it holds aggregate
counts and no patient-level value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from trial_analysis.cohort.eligibility import (
    REASON_UNTRAINED,
    eligibility_reasons,
    target_trial_rule_enabled,
)
from trial_analysis.config import arm_labels, primary_followup, study_design
from trial_analysis.labels import label, readable

TARGET_TRIAL_COLUMNS = ["component", "specification", "emulation"]

ESTIMAND_MEANING = {
    "ATE": "average treatment effect: the mean difference had everyone in the population "
           "received one strategy rather than the other",
    "ATT": "average treatment effect in the treated: among those who received the "
           "intervention",
    "ATO": "average treatment effect in the overlap population: patients weighted by how "
           "uncertain their assignment was (overlap weights)",
}


def _flow_count(flow: pd.DataFrame | None, reason: str) -> int | None:
    """Episodes the flow row of ``reason`` excluded; None when the flow lacks it."""
    if flow is None or flow.empty:
        return None
    rows = flow.loc[flow["reason"].astype("str") == reason, "n_excluded"]
    # a suppressed count ("<5") is not a number to quote, and certainly not 0
    value = pd.to_numeric(rows, errors="coerce").iloc[0] if not rows.empty else float("nan")
    return None if pd.isna(value) else int(value)


def _eligible_count(flow: pd.DataFrame | None) -> int | None:
    if flow is None or flow.empty:
        return None
    rows = flow.loc[flow["description"].astype("str") == "eligible patients", "n"]
    # a count below report.min_cell_count reaches flow.csv as text ("<5"): no number then
    value = pd.to_numeric(rows, errors="coerce").iloc[-1] if not rows.empty else float("nan")
    return None if pd.isna(value) else int(value)


def _rules_in_words(config: Mapping[str, Any]) -> str:
    reasons = [r for r in eligibility_reasons(config) if r != REASON_UNTRAINED]
    if not reasons:
        return "every patient in the extract (no eligibility rule)"
    return "excluded: " + "; ".join(readable(config, r) for r in reasons)


def _eligibility_row(config: Mapping[str, Any], flow: pd.DataFrame | None) -> dict[str, str]:
    observational = study_design(config) == "observational"
    target = config.get("target_trial") or {}
    trained_rule = bool((target.get("eligibility") or {}).get(
        "therapist_trained_before_time_zero", True)) and observational
    spec = _rules_in_words(config)
    if trained_rule:
        spec += ("; and, in the target trial, a therapist at the first session who had "
                 "completed intervention training by then (otherwise the patient had no "
                 "chance of the intervention)")
    eligible = _eligible_count(flow)
    emulation = "Applied from the data"
    if eligible is not None:
        emulation += f": {eligible} eligible patients"
    if target_trial_rule_enabled(config):
        excluded = _flow_count(flow, REASON_UNTRAINED)
        emulation += ("; the trained-therapist rule applied" + (
            f", {excluded} episodes not enrolled" if excluded is not None else "")
            + " (ledger fate excluded, flow row)")
    elif trained_rule:
        emulation += ("; the trained-therapist rule NOT applied: this run is the "
                      "reproduction of the published analysis (the configuration's target-trial "
                      "population is the reproduction), so controls who had no chance of the "
                      "intervention are included (positivity violated)")
    return {"component": "Eligibility", "specification": spec, "emulation": emulation + "."}


def target_trial_table(config: Mapping[str, Any],
                       flow: pd.DataFrame | None = None) -> pd.DataFrame:
    """The target-trial table (columns :data:`TARGET_TRIAL_COLUMNS`).

    Parameters
    ----------
    config : mapping
        The validated configuration (``target_trial`` section optional).
    flow : DataFrame, optional
        ``reports/tables/flow.csv``: the eligibility counts the emulation column quotes.
    """
    target = config.get("target_trial") or {}
    intervention, control = arm_labels(config)
    randomised = study_design(config) == "randomised"
    strategies = target.get("treatment_strategies") or {}
    followup = primary_followup(config)
    baseline = config["timepoints"]["baseline"]
    primary = label(config, config.get("primary_outcome", ""))
    analysis = config.get("analysis", {})
    ancova = analysis.get("baseline") == "covariate"
    estimand = target.get("estimand", "ATE")
    reproduction = target.get("population", "reproduction") != "target_trial" or randomised
    covariates = ", ".join(label(config, c) for c in analysis.get("covariates", [])) \
        or "no covariates"

    assignment_emulation = ("Randomised allocation, as in the target trial." if randomised
                            else "Not randomised: the strategy is treated as random given "
                            f"{covariates} and the baseline score (through the model of the "
                            "change or as a covariate), i.e. no unmeasured confounding.")
    follow_up_note = ("" if randomised else " When discharge happens depends on the arm (the "
                      "number and timing of sessions differ), so the outcome is measured at a "
                      "strategy-dependent time.")
    primary = label(config, primary)
    outcome_default = (f"{primary}: score at {followup} adjusted for {baseline}" if ancova
                       else f"{primary}: change from {baseline} to {followup}")
    model = "linear mixed model" if analysis.get("random_effects") else "linear model"
    plan_default = (f"{model} per outcome ({'ANCOVA' if ancova else 'change from baseline'}), "
                    f"adjusted for {covariates}; populations: "
                    + ", ".join(label(config, p) for p in analysis.get("populations", [])))
    estimand_emulation = (
        "The outcome model's arm effect is a covariate-adjusted difference; it equals the "
        f"{estimand} when the effect does not vary with the covariates.")
    sensitivity = config.get("sensitivity") or {}
    if "propensity" in sensitivity.get("analyses", []):
        weighting = (sensitivity.get("propensity") or {}).get("weighting", "overlap")
        estimand_emulation += (" Propensity weighting (sensitivity analysis) targets the "
                               + ("ATO (overlap weights)." if weighting == "overlap"
                                  else "ATE (inverse probability weights)."))
    rows = [
        _eligibility_row(config, flow),
        {"component": "Treatment strategies",
         "specification": f"{strategies.get('intervention', intervention)} versus "
                          f"{strategies.get('control', control)}",
         "emulation": f"Arms as allocated: {intervention} vs {control} "
                      f"(allocation rule: {label(config, config['allocation'].get('rule', ''))})."},
        {"component": "Assignment",
         "specification": target.get("assignment", "Randomisation at time zero"),
         "emulation": assignment_emulation},
        {"component": "Time zero",
         "specification": target.get("time_zero", "When eligibility is met and the strategy "
                                     "is assigned: the first session"),
         "emulation": "The first session (referral episode), also the start of follow-up."},
        {"component": "Follow-up",
         "specification": target.get("follow_up", f"From time zero to {followup}"),
         "emulation": f"From {baseline} to {followup} as recorded; missing {followup} scores "
                      f"handled by the populations analysed.{follow_up_note}"},
        {"component": "Outcome",
         "specification": target.get("outcome", outcome_default),
         "emulation": outcome_default + "."},
        {"component": "Causal contrast",
         "specification": target.get("causal_contrast", "Intention-to-treat effect"),
         "emulation": ("Intention-to-treat (as randomised)." if randomised else
                       "Observational analogue of intention-to-treat: the strategy as "
                       "documented at the episode, whatever its adherence.")},
        {"component": "Estimand",
         "specification": f"{estimand} in the population: "
                          + target.get("estimand_population", "the eligible patients")
                          + f" ({ESTIMAND_MEANING[estimand]})",
         "emulation": estimand_emulation},
        {"component": "Analysis plan",
         "specification": target.get("analysis_plan", plan_default),
         "emulation": plan_default + "."},
        {"component": "Population analysed",
         "specification": "The target trial's eligible population",
         "emulation": ("Reproduction of the published analysis: the eligibility rules only."
                       if reproduction and not randomised else
                       "The trial's participants." if randomised else
                       "The target-trial population (its own eligibility rules applied).")},
    ]
    return pd.DataFrame(rows, columns=TARGET_TRIAL_COLUMNS)
