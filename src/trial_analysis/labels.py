"""Readable labels for the identifiers the analysis uses: terms, populations, methods, variables.

Every table and figure a person reads names things through :func:`label`, never by the raw
identifier (``all_available``, ``sexM``, ``negative_binomial_adjusted:therapist_clustered_se``).
A label comes from, in order:

1. ``report.labels`` in the config: ``{identifier: label}``, for any identifier, composite or
   not (``sexM: "Male"``);
2. the study's own names: an outcome's ``label``;
3. the built-in :data:`BUILTIN_LABELS`;
4. a pattern: a method key ``a:b`` is ``label(a) + ", " + label(b)``; ``<outcome>_baseline``,
   ``<x>_missing``, ``<level>_clustered_se``, ``complete_<outcome>``, a dummy ``clinic_C02``
   or ``sexM`` (variable name followed by its level);
5. otherwise the identifier with its underscores read as spaces.

Lives at the top level, below every stage: the causal stage labels its love plots with it and
must not import the reporting stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

BUILTIN_LABELS: dict[str, str] = {
    # Analysis populations
    "complete_case": "complete cases",
    "all_available": "all with a baseline",
    "all_eligible": "all eligible",
    # Patient variables and model terms
    "age": "age",
    "sex": "sex",
    "sexM": "sex: male",
    "sexF": "sex: female",
    "bmi": "body-mass index",
    "symptom_duration_weeks": "symptom duration (weeks)",
    "depression": "depression",
    "anxiety": "anxiety",
    "ses_score": "socioeconomic score",
    "n_sessions": "number of treatment sessions",
    "arm": "group",
    "arm_intervention": "intervention group",
    "therapist_etmi_share": "therapist's share of other patients given the intervention",
    "therapist_log_caseload": "therapist caseload (log)",
    "clinic": "clinic",
    "therapist": "therapist",
    "patient": "patient",
    "residual": "residual",
    "therapist:time": "therapist × time point",
    "arm:time": "group × time",
    "ratio_of_means": "ratio of means",
    "risk_difference": "risk difference",
    "risk_ratio": "risk ratio",
    "odds_ratio": "odds ratio",
    # Implementation measures
    "reach": "reach (therapists trained)",
    "therapist_adoption": "adoption (therapists delivering)",
    "patient_adoption": "adoption (patients receiving)",
    "fidelity": "fidelity (episodes without forbidden treatments)",
    # Methods (the parts of a method key ``model:standard_error``)
    "negative_binomial_adjusted": "negative binomial, adjusted",
    "negative_binomial_unadjusted": "negative binomial, unadjusted",
    "poisson_adjusted": "Poisson, adjusted",
    "poisson_unadjusted": "Poisson, unadjusted",
    "logistic_adjusted": "logistic, adjusted",
    "logistic_unadjusted": "logistic, unadjusted",
    "linear_probability_adjusted": "linear probability, adjusted",
    "linear_probability_unadjusted": "linear probability, unadjusted",
    "newcombe_hybrid_score": "Newcombe hybrid score interval",
    "therapist_clustered_se": "therapist-clustered SE",
    "model_based_se": "model-based SE",
    "lmm": "linear mixed model",
    "lm": "linear regression",
    "fast_nested": "exact nested random-intercept fit",
    "subgroup_interaction": "interaction model",
    "stratified": "stratified fit",
}


def _spaced(text: str) -> str:
    return text.replace("_", " ")


def label(config: Mapping[str, Any] | None, key: Any) -> str:
    """The readable label of identifier ``key`` (see the module docstring for the order)."""
    key = "" if key is None else str(key)
    config = config or {}
    configured = (config.get("report") or {}).get("labels") or {}
    if key in configured:
        return str(configured[key])
    outcomes = {o["name"]: o.get("label", o["name"]) for o in config.get("outcomes") or []}
    if key in outcomes:
        return str(outcomes[key])
    if key in BUILTIN_LABELS:
        return BUILTIN_LABELS[key]
    if ":" in key and all(part for part in key.split(":")):
        return ", ".join(label(config, part) for part in key.split(":"))
    for outcome, text in outcomes.items():
        if key == f"{outcome}_baseline":
            return f"{text} at baseline"
        if key == f"complete_{outcome}":
            return "complete cases"
    match = re.fullmatch(r"([a-z][a-z0-9_]*)_clustered_se", key)
    if match:  # the responder SEs are clustered by the outermost level, whichever it is
        return f"{label(config, match.group(1))}-clustered SE"
    if key.endswith("_missing") and len(key) > len("_missing"):
        return f"{label(config, key.removesuffix('_missing'))} missing"
    match = re.fullmatch(r"(clinic|therapist)_([A-Za-z0-9-]+)", key)
    if match:
        return f"{match.group(1)} {match.group(2)}"
    # A dummy: a known variable followed by its level (``sexM``, ``regionNorth``).
    match = re.fullmatch(r"([a-z][a-z0-9_]*?)([A-Z0-9][A-Za-z0-9]*)", key)
    if match and (match.group(1) in BUILTIN_LABELS or match.group(1) in configured):
        return f"{label(config, match.group(1))}: {match.group(2)}"
    return _spaced(key)


def sentence_label(config: Mapping[str, Any] | None, key: Any) -> str:
    """:func:`label` with its first letter capitalised, for a table cell or axis tick."""
    text = label(config, key)
    return text[:1].upper() + text[1:]


def readable(config: Mapping[str, Any] | None, text: Any) -> str:
    """Prose with any snake-case identifier in it (a column named in a reason) as its label."""
    return re.sub(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b",
                  lambda m: label(config, m.group(0)), str(text))
