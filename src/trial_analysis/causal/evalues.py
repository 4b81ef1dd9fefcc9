"""E-values for the primary arm effects (VanderWeele & Ding 2017).

The E-value is the minimum strength of association, on the risk-ratio scale, that an unmeasured
confounder would need to have with both the treatment and the outcome, conditional on the
measured covariates, to fully explain away an observed association. For a risk ratio
``RR >= 1``::

    E = RR + sqrt(RR * (RR - 1))

and for ``RR < 1`` the same formula is applied to ``1 / RR``.

Continuous outcomes (VanderWeele & Ding 2017, section "Other effect measures"): the effect is
first standardised, ``d = effect / SD``, and converted to an approximate risk ratio
``RR ~ exp(0.91 * d)`` (valid for a roughly normal outcome, via the link between d and the odds
ratio of a dichotomised outcome). Here the SD is that of the *change* score (follow-up minus
baseline) in the control arm among patients with both scores (``sensitivity.evalue.sd:
change``, the default, because the primary effect is a difference in mean change), or that of
the follow-up score in the control arm (``followup``). The E-value of the confidence interval
uses the limit closest to the null, converted the same way (``exp(0.91 * limit / SD)``); it is
1 when the interval includes 0 (the null is already compatible with the data).

Only the effect's size matters, not its direction: an effect of -4 and one of +4 give the same
E-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.causal.common import (
    MISSING_COLUMN,
    SensitivityResult,
    primary_effects,
    sensitivity_frame,
    sensitivity_outcomes,
    settings,
    tidy_row,
)
from trial_analysis.columns import ARM, check_arm, outcome_columns
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.io import require_columns

# VanderWeele & Ding: log(OR) ~ (pi / sqrt(3)) d ~ 1.81 d, and RR ~ sqrt(OR) for a common
# outcome, hence RR ~ exp(0.91 d).
SMD_TO_LOG_RR = 0.91


def evalue_from_rr(rr: float) -> float:
    """E-value of a risk ratio: ``RR + sqrt(RR (RR - 1))`` after inverting ``RR < 1``."""
    if not rr > 0 or not math.isfinite(rr):
        return math.nan
    if rr < 1:
        rr = 1 / rr
    return rr + math.sqrt(rr * (rr - 1))


def rr_from_smd(d: float) -> float:
    """Approximate risk ratio of a standardised mean difference: ``exp(0.91 d)``."""
    return math.exp(SMD_TO_LOG_RR * d)


def evalue_for_difference(
    estimate: float, ci_low: float, ci_high: float, sd: float
) -> dict[str, float]:
    """E-values of a mean difference and of its confidence limit closest to the null.

    Parameters
    ----------
    estimate, ci_low, ci_high : float
        The effect and its confidence limits, in outcome units.
    sd : float
        The SD used to standardise (see the module docstring).

    Returns
    -------
    dict
        ``smd``, ``smd_ci_low``, ``smd_ci_high``, ``rr`` (of the estimate), ``rr_ci_limit`` (of
        the limit closest to the null; 1 when the interval includes 0), ``evalue_estimate``,
        ``evalue_ci``.
    """
    if not sd > 0:
        raise ValueError(f"the standardising SD must be positive, got {sd}")
    d, d_low, d_high = estimate / sd, ci_low / sd, ci_high / sd
    rr = rr_from_smd(d)
    if d_low <= 0 <= d_high or math.isnan(d_low) or math.isnan(d_high):
        rr_limit = 1.0 if not (math.isnan(d_low) or math.isnan(d_high)) else math.nan
    else:
        nearest = d_low if abs(d_low) < abs(d_high) else d_high
        rr_limit = rr_from_smd(nearest)
    return {"smd": d, "smd_ci_low": d_low, "smd_ci_high": d_high, "rr": rr,
            "rr_ci_limit": rr_limit, "evalue_estimate": evalue_from_rr(rr),
            "evalue_ci": evalue_from_rr(rr_limit) if not math.isnan(rr_limit) else math.nan}


def standardising_sd(
    analysis: pd.DataFrame, outcome: str, kind: str = "change", source: str = "analysis table"
) -> tuple[float, int]:
    """SD of the change (or follow-up) score in the control arm, and the patients it uses."""
    baseline, followup = outcome_columns(outcome)
    require_columns(analysis, [ARM, baseline, followup], source, "E-value standardisation",
                    MISSING_COLUMN)
    control = analysis[analysis[ARM] == 0]
    if kind == "change":
        values = (control[followup] - control[baseline]).dropna()
    elif kind == "followup":
        values = control[followup].dropna()
    else:
        raise ConfigError("config", [f"sensitivity.evalue.sd: '{kind}' is not change or "
                                     "followup"])
    if len(values) < 2 or not values.std() > 0:
        raise DataError(source, f"too few control patients with {outcome} scores to "
                        "standardise the effect for the E-value", column=followup)
    return float(values.std(ddof=1)), len(values)


def run_evalues(
    analysis: pd.DataFrame, config: Mapping[str, Any], estimates_dir: str | Path,
    source: str = "analysis table",
) -> SensitivityResult:
    """E-values of the arm x time effect in every ``{outcome}.{population}.json`` present.

    Rows per outcome and population (method ``evalue``): term ``standardised_difference``
    (estimate and CI of d), ``risk_ratio`` (approximate RR and, as ``ci_low``, the RR of the
    limit closest to the null), ``evalue_estimate`` and ``evalue_ci``.
    """
    check_arm(analysis, source, require_both_arms=True, wording=MISSING_COLUMN)
    options = settings(config, "evalue")
    outcomes = sensitivity_outcomes(config)
    primary = primary_effects(estimates_dir, outcomes, options["populations"])
    if primary.empty:
        raise DataError(str(estimates_dir), "no primary estimate file "
                        "({outcome}.{population}.json) found for the E-values",
                        hint="Run the `fit` step first, or check sensitivity.evalue.populations")
    rows, table = [], []
    for effect in primary.to_dict(orient="records"):
        outcome, population = effect["outcome"], effect["population"]
        sd, n_sd = standardising_sd(analysis, outcome, options["sd"], source)
        values = evalue_for_difference(float(effect["estimate"]), float(effect["ci_low"]),
                                       float(effect["ci_high"]), sd)
        note = (f"primary {population} estimate {effect['estimate']:.3g}; SD of "
                f"{options['sd']} in control arm {sd:.3g} (n={n_sd})")
        n = effect.get("n_patients")
        n = None if n is None or (isinstance(n, float) and np.isnan(n)) else int(n)
        analysis_name = f"evalue_{population}"
        rows += [
            tidy_row(outcome, analysis_name, "evalue", "standardised_difference",
                     {"estimate": values["smd"], "ci_low": values["smd_ci_low"],
                      "ci_high": values["smd_ci_high"]}, n, None, note),
            tidy_row(outcome, analysis_name, "evalue", "risk_ratio",
                     {"estimate": values["rr"]}, n, None,
                     f"exp(0.91 d); RR of the CI limit nearest the null "
                     f"{values['rr_ci_limit']:.4g}"),
            tidy_row(outcome, analysis_name, "evalue", "evalue_estimate",
                     {"estimate": values["evalue_estimate"]}, n, None, ""),
            tidy_row(outcome, analysis_name, "evalue", "evalue_ci",
                     {"estimate": values["evalue_ci"]}, n, None,
                     "1: the confidence interval includes 0" if values["evalue_ci"] == 1
                     else "CI limit nearest the null"),
        ]
        table.append({"outcome": outcome, "population": population, "sd": sd, "sd_n": n_sd,
                      "estimate": effect["estimate"], "ci_low": effect["ci_low"],
                      "ci_high": effect["ci_high"], **values})
    details = {"settings": options,
               "formula": "d = effect / SD; RR = exp(0.91 d); E = RR + sqrt(RR (RR - 1)), "
                          "RR < 1 inverted first; CI: limit nearest 0, 1 if the CI includes 0",
               "headline": {f"{r['outcome']} {r['population']} E-value (CI)":
                            f"{r['evalue_estimate']:.2f} ({r['evalue_ci']:.2f})"
                            for r in table}}
    return SensitivityResult("evalue", sensitivity_frame(rows),
                             tables={"evalues": pd.DataFrame(table)}, details=details)
