"""Diagnostics of a primary outcome model: residuals, random effects, cluster influence.

For the fitted primary mixed model of one outcome and population:

* **conditional residuals** ``y - X beta - Z b`` and fitted values ``X beta + Z b`` (lme4's
  ``residuals()`` and ``fitted()``);
* **conditional modes** (BLUPs) ``b`` of each random component, from the fitted variance
  components: ``b = Lambda (Lambda Z'Z Lambda + I)^-1 Lambda Z'(y - X beta)`` with ``Lambda``
  the diagonal of relative standard deviations (lme4's ``ranef()``);
* **leave-one-cluster-out** estimates of the estimand (``arm:time``) after dropping, one at a
  time, each of the ``max_clusters`` largest units of the outermost clustering level
  (therapists by default): their range shows how much one large cluster moves the answer.

Nothing here is written or shown per patient or per cluster:
:mod:`trial_analysis.reporting.diagnostics_appendix` draws quantiles and binned summaries only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from trial_analysis.config import level_column
from trial_analysis.models.outcome_models import (
    _check_population,
    _fit_prepared,
    _sparse_design,
    long_data,
    model_spec,
    random_design,
)


@dataclass(frozen=True)
class ModelDiagnostics:
    """Residuals, random effects and cluster influence of one fitted primary model."""

    outcome: str
    population: str
    fitted: np.ndarray
    residuals: np.ndarray
    random_effects: dict[str, pd.Series]
    estimate: float
    cluster_level: str | None
    loco: pd.DataFrame  # rank, n_patients, estimate (one row per dropped cluster)


def conditional_modes(long: pd.DataFrame, fit: Any, fixed: Any, rand: Any
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, pd.Series]]:
    """(fitted, conditional residuals, BLUPs per component) of a fitted mixed model.

    Each component's modes are indexed by its unit key (the nested path of ids: ``"t1"``,
    ``"t1@1"`` for therapist x time point 1, ``"t1/p7"`` for a patient), sorted.
    """
    y = long["score"].to_numpy(float)
    marginal = fixed.X.to_numpy(float) @ np.asarray(fit.beta, float)
    if not rand.components:
        return marginal, y - marginal, {}
    design = _sparse_design(long, fixed, rand)
    scale = np.asarray(fit.theta, float)[design.component]
    Lambda = sp.diags(scale)
    ZL = (design.Z @ Lambda).tocsc()
    system = (ZL.T @ ZL + sp.identity(ZL.shape[1], format="csc")).tocsc()
    u = spla.spsolve(system, ZL.T @ (y - marginal))
    b = scale * np.asarray(u, float)
    fitted = marginal + design.Z @ b
    # _sparse_design numbers each component's units as its sorted unique keys
    modes = {name: pd.Series(b[design.component == k],
                             index=np.unique(rand.unit_keys[name].astype(str)))
             for k, name in enumerate(design.component_names)}
    return fitted, y - fitted, modes


def _effect(result: Any) -> float:
    # The primary effect row (with several arms, the first arm against the reference).
    return float(result.effect["estimate"])


def model_diagnostics(analysis: pd.DataFrame, config: Mapping[str, Any], outcome: str,
                      population: str, max_clusters: int = 10) -> ModelDiagnostics:
    """Fit the primary model of ``outcome`` in ``population`` and diagnose it.

    ``max_clusters`` caps the leave-one-cluster-out refits (the largest clusters first, ties
    broken by the order the data list them) so the step stays fast on any study.
    """
    config = dict(config)
    spec = model_spec(config, outcome, population)
    long, notes = long_data(analysis, spec, "analysis table")
    _check_population(long, spec, "analysis table")
    result, fit, fixed = _fit_prepared(long, spec, config, notes, "lmm")
    rand = random_design(long, spec)
    fitted, residuals, modes = conditional_modes(long, fit, fixed, rand)
    level = spec.random_effects[0] if spec.random_effects else None
    rows = []
    # Influence of a cluster only means something when clusters hold several patients.
    if level is not None and level != "patient" and max_clusters > 0:
        column = level_column(level)
        sizes = long.drop_duplicates("patient_id")[column].value_counts(sort=False)
        largest = sizes.sort_values(ascending=False, kind="stable").head(max_clusters)
        for rank, (unit, size) in enumerate(largest.items(), start=1):
            kept = analysis[analysis[column] != unit] if column in analysis else analysis
            sub_long, sub_notes = long_data(kept, spec, "analysis table")
            sub, _, _ = _fit_prepared(sub_long, spec, config, sub_notes, "lmm")
            rows.append({"rank": rank, "n_patients": int(size), "estimate": _effect(sub)})
    return ModelDiagnostics(
        outcome=outcome, population=population, fitted=np.asarray(fitted, float),
        residuals=np.asarray(residuals, float), random_effects=modes,
        estimate=_effect(result), cluster_level=level if rows else None,
        loco=pd.DataFrame(rows, columns=["rank", "n_patients", "estimate"]),
    )
