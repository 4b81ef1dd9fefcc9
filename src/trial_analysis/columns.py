"""The analysis table's columns: the data contract between ``allocate`` and every later step.

Derived from the config alone, so that a step which only needs to know the columns (such as
``ingest.check_data``, checking that named covariates exist) need not import the cohort stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trial_analysis.config import outcome_names, score_columns

COVARIATES = ["age", "sex", "symptom_duration_weeks", "depression", "anxiety", "bmi",
              "ses_score"]


def declared_variables(config: Mapping[str, Any]) -> list[str]:
    """Patient variables declared in the config beyond the built-in covariates."""
    declared = config["input"]["tables"]["patients"].get("variables") or {}
    return [name for name in declared if name not in COVARIATES]


def outcome_score_columns(config: Mapping[str, Any], outcome: str) -> list[str]:
    """Score columns of one outcome in the analysis table, in time order.

    ``{outcome}_baseline`` and ``{outcome}_followup`` (the primary follow-up); with several
    follow-ups also ``{outcome}__{label}`` for each (``config.score_columns``).
    """
    columns = [f"{outcome}_baseline", f"{outcome}_followup"]
    several = list(score_columns(config, outcome).values())
    return columns if several == [f"{outcome}_followup"] else [*columns, *several]


def analysis_columns(config: Mapping[str, Any]) -> list[str]:
    """The columns of ``analysis.parquet``, in order (data contract)."""
    names = outcome_names(config)
    columns = ["patient_id", "episode_id", "arm", "arm_intervention", "arm_rule",
               "therapist_id", "clinic_id", *COVARIATES, *declared_variables(config),
               "n_sessions", "fidelity"]
    for name in names:
        columns += outcome_score_columns(config, name)
    columns += [f"complete_{name}" for name in names]
    columns.append("complete_case")
    return columns
