"""The report's diagnostics appendix (step ``diagnostics``): is each primary model adequate?

For each outcome's primary model (in complete cases, or the first configured population)
one figure ``diagnostics_<outcome>.{png,svg}`` with

* conditional residuals against fitted values, as binned summaries (median and 10th-90th
  percentile of the residuals in each twentieth of the fitted values);
* normal QQ plots of the residuals and of each random component's conditional modes
  (therapist, therapist x time, patient, ...), standardised;
* the primary estimate after leaving out, one at a time, each of the largest clusters of the
  outermost level (``report.diagnostics_max_clusters``, default 10: enough to see whether one
  large therapist drives the result, few enough to stay fast);

and ``diagnostics.csv`` with the numbers behind the influence panel and residual summaries.

Privacy: no point stands for one patient. QQ plots show at most 100 quantiles, binned
residual panels drop bins with fewer than ``report.min_cell_count`` observations, and
clusters appear by size rank, never by identifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trial_analysis.config import outcome_names
from trial_analysis.errors import DataError
from trial_analysis.io import write_csv
from trial_analysis.plotting import OKABE_ITO, STYLE, new_figure, save_figure
from trial_analysis.reporting.tables import fmt_number, outcome_label, read_analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trial_analysis.models.diagnostics import ModelDiagnostics

MAX_QUANTILES = 100
BINS = 20
COLUMNS = ["outcome", "population", "n_observations", "residual_sd", "residual_skewness",
           "residual_excess_kurtosis", "cluster_level", "clusters_left_out", "estimate",
           "loco_min", "loco_max", "loco_max_shift"]
COMPONENT_NAMES = {"therapist": "therapist", "therapist:time": "therapist × time point",
                   "patient": "patient", "clinic": "clinic"}


def primary_population(config: Mapping[str, Any]) -> str:
    """The population whose models are diagnosed: complete cases, as the figures use."""
    populations = config["analysis"]["populations"]
    return "complete_case" if "complete_case" in populations else populations[0]


def qq_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal quantiles, standardised sample quantiles) at most ``MAX_QUANTILES`` of them.

    The sample quantiles are taken at the plotting positions ``(k - 0.5) / K``; with more
    values than K they are interpolated, so no point is one unit's own value.
    """
    from scipy import stats

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) < 3 or np.std(values) == 0:
        return np.zeros(0), np.zeros(0)
    k = min(len(values), MAX_QUANTILES)
    probabilities = (np.arange(1, k + 1) - 0.5) / k
    standard = (values - values.mean()) / values.std(ddof=1)
    return stats.norm.ppf(probabilities), np.quantile(standard, probabilities)


def binned_residuals(fitted: np.ndarray, residuals: np.ndarray, min_count: int
                     ) -> pd.DataFrame:
    """Median and 10th/90th percentiles of the residuals in bins of the fitted values."""
    frame = pd.DataFrame({"fitted": fitted, "residual": residuals}).dropna()
    bins = pd.qcut(frame["fitted"].rank(method="first"), q=min(BINS, max(1, len(frame) // 2)),
                   labels=False)
    grouped = frame.groupby(bins)
    summary = pd.DataFrame({
        "fitted": grouped["fitted"].median(), "median": grouped["residual"].median(),
        "low": grouped["residual"].quantile(0.1), "high": grouped["residual"].quantile(0.9),
        "n": grouped.size(),
    })
    return summary[summary["n"] >= max(min_count, 1)].reset_index(drop=True)


def diagnostics_figure(diag: ModelDiagnostics, config: Mapping[str, Any]) -> Figure:
    """One outcome's panels: residuals vs fitted, QQ plots, leave-one-cluster-out."""
    components = list(diag.random_effects)
    n_panels = 3 + len(components)
    ncols = 3
    nrows = -(-n_panels // ncols)
    figure, axes = new_figure(nrows, ncols, figsize=(9.6, 3.0 * nrows), squeeze=False)
    panels = list(axes.ravel())
    blue, orange, grey = OKABE_ITO["blue"], OKABE_ITO["vermillion"], "#777777"

    ax = panels[0]
    binned = binned_residuals(diag.fitted, diag.residuals, config["report"]["min_cell_count"])
    ax.fill_between(binned["fitted"], binned["low"], binned["high"], color=blue, alpha=0.2,
                    linewidth=0, label="10th-90th percentile")
    ax.plot(binned["fitted"], binned["median"], color=blue, marker="o", markersize=3,
            label="median")
    ax.axhline(0, color=grey, linewidth=0.8, linestyle="--")
    ax.set(title="Residuals vs fitted", xlabel="Fitted value (score)",
           ylabel="Conditional residual (score)")
    ax.legend(fontsize=7, frameon=False)

    def qq(ax: Any, values: np.ndarray, title: str) -> None:
        theoretical, sample = qq_points(values)
        ax.plot(theoretical, sample, "o", color=blue, markersize=2.5)
        if len(theoretical):
            ax.plot(theoretical[[0, -1]], theoretical[[0, -1]], color=grey, linewidth=0.8,
                    linestyle="--")
        ax.set(title=title, xlabel="Normal quantile", ylabel="Standardised quantile")

    qq(panels[1], diag.residuals, "Normal QQ: residuals")
    ax = panels[2]
    if diag.loco.empty:
        ax.text(0.5, 0.5, "No clusters of several patients:\nleave-one-cluster-out not "
                "applicable", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        level = COMPONENT_NAMES.get(str(diag.cluster_level), str(diag.cluster_level))
        ax.plot(diag.loco["rank"], diag.loco["estimate"], "o", color=orange, markersize=4)
        ax.axhline(diag.estimate, color=blue, linewidth=1, label="all patients")
        ax.set(title=f"Leaving out one {level}", xlabel=f"{level.capitalize()} left out "
               "(1 = largest)", ylabel="Estimated difference (score)")
        ax.set_xticks(diag.loco["rank"].to_numpy())
        ax.legend(fontsize=7, frameon=False)
    for ax, name in zip(panels[3:], components, strict=False):
        qq(ax, diag.random_effects[name].to_numpy(),
           f"Normal QQ: {COMPONENT_NAMES.get(name, name)} effects")
    for ax in panels[n_panels:]:
        ax.set_axis_off()
    figure.suptitle(f"{outcome_label(config, diag.outcome)}: diagnostics of the primary model",
                    fontsize=10, fontweight="bold")
    figure.tight_layout()
    return figure


def summary_row(diag: ModelDiagnostics) -> dict[str, Any]:
    """The row of ``diagnostics.csv`` for one model."""
    from scipy import stats

    residuals = diag.residuals[np.isfinite(diag.residuals)]
    loco = diag.loco["estimate"]
    return {
        "outcome": diag.outcome, "population": diag.population,
        "n_observations": len(residuals), "residual_sd": float(np.std(residuals, ddof=1)),
        "residual_skewness": float(stats.skew(residuals)),
        "residual_excess_kurtosis": float(stats.kurtosis(residuals)),
        "cluster_level": diag.cluster_level or "",
        "clusters_left_out": len(loco), "estimate": diag.estimate,
        "loco_min": float(loco.min()) if len(loco) else np.nan,
        "loco_max": float(loco.max()) if len(loco) else np.nan,
        "loco_max_shift": float((loco - diag.estimate).abs().max()) if len(loco) else np.nan,
    }


def run_diagnostics(config: dict[str, Any], analysis: str | Path, figures: str | Path,
                    tables: str | Path, outcomes: Sequence[str] | None = None) -> list[Path]:
    """Diagnose every outcome's primary model; write figures and ``diagnostics.csv``.

    Parameters
    ----------
    config : dict
        Validated study configuration (``report.diagnostics_max_clusters``).
    analysis : path
        The analysis table.
    figures, tables : path
        Folders for ``diagnostics_<outcome>.{png,svg}`` and ``diagnostics.csv``.
    outcomes : sequence of str, optional
        The outcomes to diagnose (default all).

    Returns
    -------
    list of Path
        Files written.
    """
    import matplotlib

    from trial_analysis.models.diagnostics import model_diagnostics
    from trial_analysis.progress import track

    frame = read_analysis(analysis, config)
    population = primary_population(config)
    cap = int(config["report"].get("diagnostics_max_clusters", 10))
    names = list(outcomes or outcome_names(config))
    results = [model_diagnostics(frame, config, outcome, population, max_clusters=cap)
               for outcome in track(names, "model diagnostics (outcomes)")]
    written: list[Path] = []
    with matplotlib.rc_context(STYLE):
        drawn = {d.outcome: diagnostics_figure(d, config) for d in results}
        for outcome, figure in drawn.items():
            written += save_figure(figure, Path(figures), f"diagnostics_{outcome}")
    table = pd.DataFrame([summary_row(d) for d in results], columns=COLUMNS)
    written.append(write_csv(table, Path(tables) / "diagnostics.csv"))
    return written


def diagnostics_section(tables: Path, figures: Path, config: Mapping[str, Any]
                        ) -> dict[str, Any]:
    """What the report's appendix shows; empty (``ran`` false) when the step did not run."""
    import base64

    path = tables / "diagnostics.csv"
    if not path.is_file():
        return {"ran": False, "rows": [], "images": []}
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    if not set(COLUMNS) <= set(frame.columns):
        raise DataError(str(path), "required column missing",
                        column=sorted(set(COLUMNS) - set(frame.columns))[0])
    rows, images = [], []
    for r in frame.to_dict("records"):
        label = outcome_label(config, r["outcome"])
        level = COMPONENT_NAMES.get(r["cluster_level"], r["cluster_level"])
        number = {key: fmt_number(float(r[key]) if r[key] else float("nan"), digits)
                  for key, digits in (("residual_sd", 2), ("residual_skewness", 2),
                                      ("residual_excess_kurtosis", 2), ("estimate", 2),
                                      ("loco_min", 2), ("loco_max", 2), ("loco_max_shift", 2))}
        rows.append({"outcome": label, "n": r["n_observations"], "level": level or "none",
                     "left_out": r["clusters_left_out"], **number})
        image = figures / f"diagnostics_{r['outcome']}.png"
        if not image.is_file():
            raise DataError(str(image), "figure is missing", hint="run `diagnostics` first")
        images.append({
            "uri": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode(),
            "alt": (f"{label}: binned residuals against fitted values, normal QQ plots of the "
                    "residuals and of each random effect, and the estimate after leaving out "
                    f"each of the {r['clusters_left_out']} largest {level or 'cluster'}s"),
            "outcome": label, "source": image.as_posix(),
        })
    return {"ran": True, "rows": rows, "images": images, "source": path.as_posix()}
