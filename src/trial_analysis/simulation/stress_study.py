"""Design stress study: which estimator holds under which selection mechanism.

Built on the simulation-study machinery (:mod:`trial_analysis.simulation.simulation_study`):
the same study-file format (``config/stress_study.yaml``), the same replicate seeds
(deterministic per scenario and replicate, independent of chunking), the same in-memory
analysis table built by the real eligibility and allocation rules, and the same performance
measures with Monte Carlo SEs (Morris, White & Crowther, Stat Med 2019;38:2074-2102). What
differs is that every replicate is analysed by every estimator of the observational
comparison, on the complete cases of the primary outcome:

``mixed_model``
    the primary change-score linear mixed model
    (:func:`~trial_analysis.models.outcome_models.fit_outcome_model`, complete cases);
``change_score``, ``ancova``
    least squares change score and lagged-outcome adjustment (cluster-robust SE), as in the
    bracketing of :func:`~trial_analysis.causal.doubly_robust.run_doubly_robust`;
``augmented_overlap``, ``aipw``
    the doubly robust estimators (ATO, ATE), stacked-equation sandwich clustered by
    therapist.

The mechanisms are options of the simulator (``simulation.assumptions.stress``, the
``confounding`` and ``missingness`` sections); each scenario of the study file sets them, and
each has a null twin (effect 0) for the type I error. Performance is measured against the
structural effect (``true_value``) and, for bias, also against the realised population effect
on the recorded scale (``bias_realised``: the mean over replicates of estimate minus that
replicate's realised ATE; rounding and bounding make the two differ slightly).

A model estimates the effect in its own population (the mixed model and ANCOVA a
covariate-conditional effect, AIPW the ATE, augmented overlap the ATO); in the simulator the
effect is constant, so they share one true value.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis import io
from trial_analysis.causal.doubly_robust import run_doubly_robust
from trial_analysis.errors import DataError
from trial_analysis.models.outcome_models import EFFECT_MODEL, EFFECT_TERM, fit_outcome_model
from trial_analysis.progress import track
from trial_analysis.signature import design_signature
from trial_analysis.simulation.simulate import simulate_extract
from trial_analysis.simulation.simulation_study import (
    Scenario,
    SimulationStudy,
    analysis_table_from_extract,
    load_study,
    parse_replicates,
    performance,
    read_chunks,
    replicate_seed,
    scenario_config,
)

log = logging.getLogger(__name__)

ESTIMATORS = ("mixed_model", "change_score", "ancova", "augmented_overlap", "aipw")
ESTIMATOR_LABELS = {
    "mixed_model": "change-score mixed model (primary)",
    "change_score": "change score, least squares",
    "ancova": "ANCOVA (lagged outcome)",
    "augmented_overlap": "augmented overlap weighting (ATO)",
    "aipw": "augmented IPW (ATE)",
}
REPLICATE_COLUMNS = [
    "scenario", "replicate", "seed", "outcome", "population", "true_effect", "realised_ate",
    "estimate", "std_error", "ci_low", "ci_high", "p_value", "df", "n_patients", "status",
    "error", "estimator",
]
SUMMARY_COLUMNS = [
    "scenario", "mechanism", "null", "estimator", "n_replicates", "n_ok", "n_failed",
    "true_value", "mean_realised_ate", "mean_estimate", "bias", "bias_mcse", "bias_realised",
    "bias_realised_mcse", "relative_bias", "empirical_se", "empirical_se_mcse", "mean_model_se",
    "mean_model_se_mcse", "coverage", "coverage_mcse", "power", "power_mcse", "holds",
]
_VALUE_COLUMNS = ("estimate", "std_error", "ci_low", "ci_high", "p_value", "df", "n_patients")
# The target: |bias| <= 10% of the true effect and coverage within 2 MCSE of 95%.
RELATIVE_BIAS_TARGET = 0.10


def _estimator_config(config: Mapping[str, Any], outcome: str) -> dict[str, Any]:
    """The scenario config with the doubly robust step restricted to the study's outcome."""
    out = copy.deepcopy(dict(config))
    sens = out.setdefault("sensitivity", {})
    sens["outcomes"] = [outcome]
    sens.setdefault("doubly_robust", {})["estimands"] = ["ato", "ate"]
    return out


def _estimator_rows(analysis: pd.DataFrame, cfg: Mapping[str, Any], outcome: str
                    ) -> dict[str, dict[str, Any]]:
    """Every estimator's effect row on one replicate's analysis table (failures as rows)."""
    rows: dict[str, dict[str, Any]] = {}
    try:
        fit = fit_outcome_model(analysis, dict(cfg), outcome, "complete_case").to_frame()
        effect = fit[(fit["term"] == EFFECT_TERM) & (fit["model"] == EFFECT_MODEL)].iloc[0]
        ok = bool(effect["converged"])
        rows["mixed_model"] = {**{k: effect[k] for k in _VALUE_COLUMNS},
                               "status": "ok" if ok else "not_converged",
                               "error": "" if ok else str(effect["warnings"])}
    # Any failure of an analysis is a result of the study, to be counted, not a crash.
    except Exception as error:  # noqa: BLE001
        rows["mixed_model"] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    try:
        frame = run_doubly_robust(analysis, _estimator_config(cfg, outcome)).to_frame()
        for name in ESTIMATORS[1:]:
            hit = frame[frame["method"] == name]
            if hit.empty:
                rows[name] = {"status": "failed", "error": f"no {name} row"}
                continue
            row = hit.iloc[0]
            rows[name] = {k: row[k] for k in _VALUE_COLUMNS if k in row} | {
                "status": "ok", "error": ""}
    except Exception as error:  # noqa: BLE001
        for name in ESTIMATORS[1:]:
            rows[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    return rows


def run_stress_replicate(config: Mapping[str, Any], study: SimulationStudy, scenario: Scenario,
                         replicate: int) -> pd.DataFrame:
    """Simulate one replicate and analyse it with every estimator; one row per estimator."""
    seed = replicate_seed(study.seed, scenario.name, replicate)
    cfg = scenario_config(config, scenario)
    extract = simulate_extract(cfg, seed, scenario.n_patients)
    outcome = study.outcomes[0]
    truth = extract.truth["effects"][outcome]
    base = {"scenario": scenario.name, "replicate": replicate, "seed": str(seed),
            "outcome": outcome, "population": "complete_case",
            "true_effect": truth["structural"], "realised_ate": truth["realised_ate"]}
    try:
        analysis = analysis_table_from_extract(extract, cfg)
        rows = _estimator_rows(analysis, cfg, outcome)
    except DataError as error:
        rows = {name: {"status": "failed", "error": f"analysis table: {error}"}
                for name in ESTIMATORS}
    out = [{**base, **rows[name], "estimator": name} for name in ESTIMATORS]
    return pd.DataFrame(out).reindex(columns=REPLICATE_COLUMNS)


def run_stress_study(config: dict[str, Any], study: Path, scenario: str,
                     replicates: str | None, out: Path) -> pd.DataFrame:
    """Command-line entry: one chunk of replicates of one scenario; writes its CSV."""
    plan = load_study(study, config)
    spec = plan.scenario(scenario)
    frames = []
    chunk = list(parse_replicates(replicates, spec.n_replicates))
    # counts and an ETA in the log (a bar on an interactive terminal), as the simulation study
    for replicate in track(chunk, f"stress study, scenario {scenario}, replicates"):
        started = time.perf_counter()
        frames.append(run_stress_replicate(config, plan, spec, replicate))
        log.debug("%s replicate %d: %.2f s", scenario, replicate, time.perf_counter() - started)
    results = pd.concat(frames, ignore_index=True)
    io.write_csv(results, out)
    return results


def _mechanism(scenario: Scenario) -> tuple[str, bool]:
    """(mechanism, is the null twin) from the scenario name ``<mechanism>[_null]``."""
    name = scenario.name
    return (name.removesuffix("_null"), True) if name.endswith("_null") else (name, False)


def _realised_bias(part: pd.DataFrame) -> tuple[float, float]:
    ok = part[part["status"] == "ok"]
    error = (ok["estimate"] - ok["realised_ate"]).to_numpy(dtype=float)
    if error.size < 2:
        return float("nan"), float("nan")
    return float(error.mean()), float(error.std(ddof=1) / math.sqrt(error.size))


def holds(row: Mapping[str, Any], effect: float | None) -> bool:
    """The target: |bias| <= 10% of the true effect and coverage within 2 MCSE of 95%.

    The coverage MCSE is the one at the nominal level, sqrt(0.95 * 0.05 / n): the question is
    whether the observed coverage is compatible with 95%, and the MCSE at the observed
    coverage would be larger for worse coverage (0.90 would pass at n = 100). For a null
    twin (effect 0) a relative bias is undefined; the bias is then judged against 10% of
    the non-null twin's effect (``effect``).
    """
    reference = abs(row["true_value"]) if row["true_value"] else abs(effect or 0.0)
    n = int(row["n_ok"])
    if not np.isfinite(row.get("bias", np.nan)) or reference == 0 or n == 0:
        return False
    mcse = math.sqrt(0.95 * 0.05 / n)
    return bool(abs(row["bias"]) <= RELATIVE_BIAS_TARGET * reference
                and abs(row["coverage"] - 0.95) <= 2 * mcse)


def summarise_stress(results: pd.DataFrame, study: SimulationStudy) -> pd.DataFrame:
    """Performance per scenario x estimator (:data:`SUMMARY_COLUMNS`).

    Raises
    ------
    DataError
        A replicate of a scenario and estimator is missing, duplicated or unexpected.
    """
    rows = []
    effects = {}
    for scenario in study.scenarios:
        own = results[results["scenario"] == scenario.name]
        mechanism, null = _mechanism(scenario)
        for estimator in ESTIMATORS:
            part = own[own["estimator"] == estimator].sort_values("replicate")
            found = np.sort(part["replicate"].to_numpy(dtype=int))
            if not np.array_equal(found, np.arange(scenario.n_replicates)):
                raise DataError("stress study chunks", "every replicate exactly once",
                                column="replicate",
                                hint=f"{scenario.name}, {estimator}: {found.size} rows for "
                                     f"{scenario.n_replicates} replicates")
            perf = performance(part, study.alpha)
            bias_r, bias_r_mcse = _realised_bias(part)
            row = {"scenario": scenario.name, "mechanism": mechanism, "null": null,
                   "estimator": estimator, **perf, "bias_realised": bias_r,
                   "bias_realised_mcse": bias_r_mcse,
                   "relative_bias": (perf.get("bias", np.nan) / perf["true_value"]
                                     if perf["true_value"] else np.nan)}
            if not null:
                effects[mechanism] = perf["true_value"]
            rows.append(row)
    for row in rows:
        row["holds"] = holds(row, effects.get(row["mechanism"]))
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def holds_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Mechanism x estimator: does the estimator meet the target under the effect and its null?"""
    both = summary.groupby(["mechanism", "estimator"], sort=False)["holds"].all()
    table = both.unstack("estimator").reindex(columns=list(ESTIMATORS))
    order = list(dict.fromkeys(summary["mechanism"]))
    return table.reindex(order)


def summary_markdown(summary: pd.DataFrame, study: SimulationStudy) -> str:
    """The committed summary (docs/stress-study.md's table): one line per scenario x estimator."""
    n = sorted({int(s.n_replicates) for s in study.scenarios})
    lines = [
        f"Replicates per scenario: {', '.join(map(str, n))} (seed {study.seed}); "
        "Monte Carlo SE in brackets; bias against the structural effect, "
        "`bias (realised)` against each replicate's realised population ATE; power is the "
        "type I error in the null rows; `holds`: |bias| <= 10% of the effect and coverage "
        "within 2 MCSE (at 95%, sqrt(0.95 * 0.05 / n)) of 0.95.",
        "",
        "| scenario | estimator | true | bias | bias (realised) | empirical SE | model SE "
        "| coverage | power / type I | holds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary.to_dict("records"):
        lines.append(
            f"| {r['scenario']} | {r['estimator']} | {r['true_value']:g} "
            f"| {r['bias']:.3f} ({r['bias_mcse']:.3f}) "
            f"| {r['bias_realised']:.3f} ({r['bias_realised_mcse']:.3f}) "
            f"| {r['empirical_se']:.3f} ({r['empirical_se_mcse']:.3f}) "
            f"| {r['mean_model_se']:.3f} ({r['mean_model_se_mcse']:.3f}) "
            f"| {r['coverage']:.3f} ({r['coverage_mcse']:.3f}) "
            f"| {r['power']:.3f} ({r['power_mcse']:.3f}) | {'yes' if r['holds'] else 'no'} |")
    return "\n".join(lines) + "\n"


def read_stress_chunks(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate chunk CSVs (sorted by path, so the summary does not depend on the order)."""
    return read_chunks(paths, REPLICATE_COLUMNS)


def stress_figure(summary: pd.DataFrame, out: Path) -> Path:
    """Bias and coverage per mechanism and estimator, with 2-MCSE bars ("which holds where").

    Left: bias under the effect (true 4) with the +-10% target band; right: coverage under
    the effect and under its null with the band 0.95 +- 2 MCSE. An estimator that meets the
    target under a mechanism (effect and null) is drawn filled, one that does not hollow.
    """
    import matplotlib as mpl

    from trial_analysis.plotting import OKABE_ITO, STYLE, new_figure

    colours = dict(zip(ESTIMATORS, [OKABE_ITO[c] for c in
                                    ("black", "sky", "orange", "green", "purple")], strict=True))
    mechanisms = list(dict.fromkeys(summary["mechanism"]))
    both = summary.groupby(["mechanism", "estimator"])["holds"].all()
    with mpl.rc_context(STYLE):
        figure, (left, right) = new_figure(1, 2, figsize=(10, 0.55 * len(mechanisms) + 2.2),
                                           sharey=True)
        for k, estimator in enumerate(ESTIMATORS):
            offset = (k - 2) * 0.14
            for j, mechanism in enumerate(mechanisms):
                part = summary[(summary["mechanism"] == mechanism)
                               & (summary["estimator"] == estimator)]
                filled = bool(both.get((mechanism, estimator), False))
                face = colours[estimator] if filled else "white"
                effect = part[~part["null"].astype(bool)]
                for row in effect.to_dict("records"):
                    left.errorbar(row["bias"], j + offset, xerr=2 * row["bias_mcse"], fmt="o",
                                  color=colours[estimator], mfc=face, ms=5,
                                  label=ESTIMATOR_LABELS[estimator] if j == 0 else None)
                for row in part.to_dict("records"):
                    marker = "s" if row["null"] else "o"
                    right.errorbar(row["coverage"], j + offset + (0.05 if row["null"] else 0),
                                   xerr=2 * row["coverage_mcse"], fmt=marker,
                                   color=colours[estimator], mfc=face, ms=4)
        true = summary.loc[~summary["null"].astype(bool), "true_value"]
        band = RELATIVE_BIAS_TARGET * (float(true.abs().max()) if len(true) else 0.0)
        left.axvspan(-band, band, color="0.9", zorder=0)
        left.axvline(0, color="0.5", lw=0.8)
        n = int(summary["n_ok"].min()) if len(summary) else 1
        mc = 2 * math.sqrt(0.95 * 0.05 / max(n, 1))
        right.axvspan(0.95 - mc, 0.95 + mc, color="0.9", zorder=0)
        right.axvline(0.95, color="0.5", lw=0.8)
        left.set_yticks(range(len(mechanisms)), [m.replace("_", " ") for m in mechanisms])
        left.invert_yaxis()
        left.set_xlabel("bias (points), effect 4; band: +-10% of the effect")
        right.set_xlabel("coverage of the 95% CI (circle: effect, square: null)")
        left.set_title("Bias (2 MCSE bars)")
        right.set_title("Coverage (band: 0.95 +- 2 MCSE)")
        left.legend(loc="upper center", bbox_to_anchor=(1.05, -0.18), ncol=3, frameon=False,
                    fontsize=8)
        out = Path(out)
        with io.atomic_path(out) as tmp:
            figure.savefig(tmp, format="png", dpi=130, metadata={"Software": None},
                           bbox_inches="tight")
    return out


def run_stress_study_summary(config: dict[str, Any], study: Path, chunks: list[Path],
                             out_csv: Path, out_json: Path, out_md: Path | None = None,
                             out_figure: Path | None = None) -> pd.DataFrame:
    """Command-line entry: aggregate chunk CSVs into the summary CSV, JSON and markdown."""
    plan = load_study(study, config)
    results = read_stress_chunks(chunks)
    summary = summarise_stress(results, plan)
    io.write_csv(summary, out_csv)
    table = holds_table(summary)
    io.write_json({
        "study": {"seed": plan.seed, "outcome": plan.outcomes[0], "alpha": plan.alpha,
                  "scenarios": [{"name": s.name, "n_replicates": s.n_replicates,
                                 "n_patients": s.n_patients, "assumptions": s.assumptions}
                                for s in plan.scenarios]},
        "estimators": ESTIMATOR_LABELS,
        "target": "|bias| <= 10% of the true effect and coverage within 2 MCSE "
                  "(at 95%: sqrt(0.95 * 0.05 / n)) of 0.95",
        "monte_carlo_se": "Morris, White & Crowther, Stat Med 2019;38:2074-2102 (table 6)",
        "holds": {m: {e: bool(v) for e, v in row.items()} for m, row in
                  table.to_dict("index").items()},
        "summary": summary.to_dict(orient="records"),
        "design_signature": design_signature(config, study),
    }, out_json)
    if out_md is not None:
        with io.atomic_path(Path(out_md)) as tmp:
            Path(tmp).write_text(summary_markdown(summary, plan), encoding="utf-8")
    if out_figure is not None:
        stress_figure(summary, Path(out_figure))
    log.info("summarised %d replicate rows into %d rows", len(results), len(summary))
    return summary


__all__: Sequence[str] = (
    "ESTIMATORS", "ESTIMATOR_LABELS", "REPLICATE_COLUMNS", "SUMMARY_COLUMNS", "holds",
    "holds_table", "read_stress_chunks", "run_stress_replicate", "run_stress_study",
    "run_stress_study_summary", "stress_figure", "summarise_stress", "summary_markdown",
)
