"""The analysis table's columns: the data contract between ``allocate`` and every later step.

Derived from the config alone, so that a step which only needs to know the columns (such as
``ingest.check_data``, checking that named covariates exist) need not import the cohort stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from trial_analysis.config import multi_arm, outcome_names, score_columns
from trial_analysis.errors import DataError
from trial_analysis.io import FILE_COLUMNS, ColumnWording, positions, require_columns

ARM = "arm_intervention"  # 1 intervention, 0 control
# With three or more arms (allocation.arms): 0 the reference, 1, 2, ... the others in config
# order (config.arm_levels); absent in a two-arm study's table.
ARM_CODE = "arm_code"
THERAPIST = "therapist_id"  # the primary therapist: the cluster of the models
CLINIC = "clinic_id"

COVARIATES = ["age", "sex", "symptom_duration_weeks", "depression", "anxiety", "bmi",
              "ses_score"]


def declared_variables(config: Mapping[str, Any]) -> list[str]:
    """Patient variables declared in the config beyond the built-in covariates."""
    declared = config["input"]["tables"]["patients"].get("variables") or {}
    return [name for name in declared if name not in COVARIATES]


def outcome_columns(outcome: str) -> tuple[str, str]:
    """``({outcome}_baseline, {outcome}_followup)``: the baseline and primary follow-up scores."""
    return f"{outcome}_baseline", f"{outcome}_followup"


def outcome_score_columns(config: Mapping[str, Any], outcome: str) -> list[str]:
    """Score columns of one outcome in the analysis table, in time order.

    ``{outcome}_baseline`` and ``{outcome}_followup`` (the primary follow-up); with several
    follow-ups also ``{outcome}__{label}`` for each (``config.score_columns``).
    """
    columns = list(outcome_columns(outcome))
    several = list(score_columns(config, outcome).values())
    return columns if several == [f"{outcome}_followup"] else [*columns, *several]


def analysis_columns(config: Mapping[str, Any]) -> list[str]:
    """The columns of ``analysis.parquet``, in order (data contract)."""
    names = outcome_names(config)
    codes = [ARM, ARM_CODE] if multi_arm(config) else [ARM]
    columns = ["patient_id", "episode_id", "arm", *codes, "arm_rule", THERAPIST, CLINIC,
               *COVARIATES, *declared_variables(config), "n_sessions", "fidelity"]
    for name in names:
        columns += outcome_score_columns(config, name)
    columns += [f"complete_{name}" for name in names]
    columns.append("complete_case")
    return columns


def check_arm(frame: pd.DataFrame, source: str, *, require_both_arms: bool = False,
              problem: str = "arm_intervention must be 1 (intervention) or 0 (control)",
              wording: ColumnWording = FILE_COLUMNS) -> None:
    """Check ``arm_intervention`` against the data contract: present (else ``wording``), 1 or
    0 on every row (a missing value is wrong too; else ``problem`` with the rows) and, with
    ``require_both_arms``, both arms present, as a comparison needs."""
    require_columns(frame, [ARM], source, "the arm indicator", wording)
    values = pd.to_numeric(frame[ARM], errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        raise DataError(source, problem, column=ARM, rows=positions(bad))
    if require_both_arms and values.nunique() < 2:
        raise DataError(source, "both arms are needed for a comparison, only one is present",
                        column=ARM)
