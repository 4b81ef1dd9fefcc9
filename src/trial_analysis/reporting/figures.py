"""Report figures (step ``figures``): flow diagram, trajectories, forest plot, sessions and
implementation, each as PNG and SVG.

Figures use the Okabe-Ito colour-blind-safe palette, label every axis with its units and are
deterministic: the SVG hash salt is fixed and the date/software metadata are left out, so the
same inputs give byte-identical files. Only aggregates are drawn; the sessions histogram pools
its sparse upper tail and hides bars with fewer than ``report.min_cell_count`` patients.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trial_analysis.config import (
    arm_labels,
    arm_levels,
    followup_labels,
    has_table,
    multi_arm,
    primary_followup,
    time_values,
)
from trial_analysis.errors import DataError
from trial_analysis.labels import label, readable, sentence_label
from trial_analysis.plotting import (
    CONTROL_COLOUR,
    INTERVENTION_COLOUR,
    OKABE_ITO,
    STYLE,
    new_figure,
    save_figure,
)
from trial_analysis.reporting.tables import (
    contrast_records,
    effect_row,
    fmt_p,
    load_estimates,
    outcome_label,
    read_analysis,
    subgroup_rows,
)
from trial_analysis.reporting.wording import design_wording

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_NAMES = ["flow", "trajectories", "forest", "sessions", "implementation"]
# Figures drawn from the sessions table; a study without one has none of them.
SESSION_FIGURES = ("sessions", "implementation")


def figure_names(config: Mapping[str, Any]) -> list[str]:
    """The report figures this study has (no sessions figures without a sessions table)."""
    with_sessions = has_table(config, "sessions")
    return [name for name in FIGURE_NAMES if with_sessions or name not in SESSION_FIGURES]
# --------------------------------------------------------------------------------------------
# Flow diagram
# --------------------------------------------------------------------------------------------
def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or ""


def _count(value: Any) -> int | str | None:
    """A flow count as drawn: the number, or a suppressed count's text ("<5", "suppressed")."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if pd.isna(number) and isinstance(value, str) and value.strip():
        return value.strip()
    return None if pd.isna(number) else int(number)


RECORD_STEP = "records"


def flow_layout(flow: pd.DataFrame) -> list[dict[str, Any]]:
    """Group ``flow.csv`` into diagram levels: the boxes of each step and its exclusions.

    Within a step, rows without ``n_excluded`` are boxes and rows with it are exclusions listed
    beside the step (e.g. one row per eligibility reason). A step whose rows all carry
    ``n_excluded`` (e.g. complete cases overall and by arm) is drawn as boxes, each noting its
    own exclusions. The rows of the ``analysis`` step form one level per population (its
    description before the comma: overall, then per arm). Record-level cleaning (step
    ``records``) is a note beside the diagram: those are records, not patients.
    """
    levels = []
    for step in dict.fromkeys(flow["step"].astype(str)):
        rows = flow[flow["step"].astype(str) == step].to_dict("records")
        if step == RECORD_STEP:
            levels.append({"step": step, "boxes": [], "exclusions": [], "inline": False,
                           "note": rows})
            continue
        groups = [rows]
        if step == "analysis":
            by_population: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_population.setdefault(str(row["description"]).split(",")[0], []).append(row)
            groups = list(by_population.values())
        for group in groups:
            boxes = [r for r in group if _count(r.get("n_excluded")) is None]
            exclusions = [r for r in group if _count(r.get("n_excluded")) is not None]
            inline = not boxes
            if inline:
                boxes, exclusions = exclusions, []
            levels.append({"step": step, "boxes": boxes, "exclusions": exclusions,
                           "inline": inline, "note": []})
    return levels


def _reason(row: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    reason = row.get("reason")
    return "" if reason is None or pd.isna(reason) else readable(config, str(reason))


def _record_note(rows: list[dict[str, Any]], config: Mapping[str, Any] | None) -> str:
    lines = ["Record-level cleaning (records, not patients)"]
    lines += [_wrap(f"{readable(config, r['description'])}: {_count(r['n_excluded'])} of "
                    f"{_count(r['n'])} ({_reason(r, config)})", 56) for r in rows]
    return "\n".join(lines)


def _box_labels(level: dict[str, Any], config: Mapping[str, Any] | None) -> None:
    """Size, font and text of one level's boxes (``width``, ``fontsize``, ``labels``)."""
    k = max(len(level["boxes"]), 1)  # a note level has no boxes
    level["width"] = min(5.2, (6.8 - 0.25 * (k - 1)) / k)
    level["fontsize"] = 8 if k < 3 else 7
    chars = int(level["width"] * (11 if k < 3 else 13))
    level["labels"] = []
    for row in level["boxes"]:
        description = readable(config, row["description"])
        description = description[:1].upper() + description[1:]
        label_text = f"{_wrap(description, chars)}\n" \
                     f"(n = {_count(row['n'])})"
        excluded = _count(row.get("n_excluded"))
        if level["inline"] and excluded:
            label_text += f"\nexcluded {excluded}:\n{_wrap(_reason(row, config), chars)}"
        level["labels"].append(label_text)
    line = 0.17
    level["excluded_text"] = ""
    if level["exclusions"]:
        counts = [_count(r["n_excluded"]) or 0 for r in level["exclusions"]]
        # a suppressed count ("<5") stays text: the total would reveal it
        excluded: int | str = (sum(c for c in counts if isinstance(c, int))
                               if all(isinstance(c, int) for c in counts)
                               else next(c for c in counts if isinstance(c, str)))
        lines = [f"Excluded (n = {excluded})"]
        if len(level["exclusions"]) == 1:
            lines.append(_wrap(_reason(level["exclusions"][0], config), 36))
        else:
            lines += [_wrap(f"{_reason(r, config)} ({_count(r['n_excluded'])})", 36)
                      for r in level["exclusions"]]
        level["excluded_text"] = "\n".join(lines)
    # Room above the level for its exclusions box, which sits beside the arrow into it.
    exclusion_lines = level["excluded_text"].count("\n") + 1
    level["gap_above"] = max(0.75, exclusion_lines * 0.19 + 0.45) if level["exclusions"] \
        else 0.75
    if level["note"]:
        level["text"] = _record_note(level["note"], config)
        level["height"] = (level["text"].count("\n") + 1) * 0.15 + 0.35
    else:
        level["height"] = max(lab.count("\n") + 1 for lab in level["labels"]) * line + 0.3


def flow_figure(flow: pd.DataFrame, config: Mapping[str, Any] | None = None) -> Figure:
    """Flow diagram drawn from ``flow.csv`` (see :func:`flow_layout`).

    STROBE for an observational study, CONSORT for a randomised one (``study.design``): the
    title names the guideline; the wording of the boxes comes from ``flow.csv``.
    """
    from matplotlib.patches import FancyBboxPatch

    levels = flow_layout(flow)
    for level in levels:
        _box_labels(level, config)
    total = sum(level["height"] + level["gap_above"] for level in levels) + 0.5
    total -= levels[0]["gap_above"] if levels else 0.0
    figure, ax = new_figure(figsize=(8.5, 0.8 * total + 0.3))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, total)
    ax.axis("off")
    top_edge = total - 0.3
    previous: list[float] = []
    previous_total_first = False
    previous_bottom = top_edge
    note_bottom: float | None = None
    for index, level in enumerate(levels):
        if index:
            top_edge -= level["gap_above"]
        k, height = len(level["boxes"]), level["height"]
        y = top_edge - height / 2
        if level["note"]:
            # Beside the diagram; the arrows between patient boxes pass by it.
            ax.text(8.6, y, level["text"], ha="center", va="center", fontsize=6.5,
                    bbox={"boxstyle": "round,pad=0.3", "fc": "#F4F4F4", "ec": "#777777",
                          "lw": 0.8})
            note_bottom = y - height / 2
            top_edge = note_bottom
            continue
        width = level["width"]
        centres = [3.5] if k == 1 else list(np.linspace(0.1 + width / 2, 6.9 - width / 2, k))
        # One more box than above: the first is a total (a population overall, then by arm).
        # Draw it in the middle so arrows from the arms to it and to their own boxes do not
        # cross; a level below with as many boxes keeps that order.
        total_first = (len(previous) > 1 and len(previous) == k - 1) or (
            previous_total_first and len(previous) == k)
        slots = list(range(k))
        if total_first:
            # the total in the middle slot, the arms in their order around it
            slots = [k // 2] + [i for i in range(k) if i != k // 2]
        placed = [centres[slot] for slot in slots]
        for position, (centre, text) in enumerate(zip(placed, level["labels"], strict=True)):
            ax.add_patch(FancyBboxPatch((centre - width / 2, y - height / 2), width, height,
                                        boxstyle="round,pad=0.02", fc="white",
                                        ec=OKABE_ITO["black"], lw=0.9))
            ax.text(centre, y, text, ha="center", va="center", fontsize=level["fontsize"])
            # Arrows from the box(es) above: all from one box, pairs for equal counts; one
            # extra box in front (a total) takes arrows from every box above and the rest
            # pair up; otherwise the nearest box.
            if len(previous) == 1 or k == 1:
                sources = previous
            elif len(previous) == k:
                sources = [previous[position]]
            elif total_first:
                sources = previous if position == 0 else [previous[position - 1]]
            else:
                sources = [min(previous, key=lambda x, c=centre: abs(x - c))]
            for source in sources:
                ax.annotate("", xy=(centre, y + height / 2 + 0.03),
                            xytext=(source, previous_bottom - 0.03),
                            arrowprops={"arrowstyle": "-|>", "lw": 0.8, "color": "#444444"})
        if level["exclusions"]:
            upper = previous_bottom if note_bottom is None else note_bottom
            mid = (upper + top_edge) / 2 if previous else y
            ax.text(8.6, mid, level["excluded_text"], ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.3", "fc": "#F4F4F4",
                          "ec": OKABE_ITO["vermillion"], "lw": 0.8})
            ax.annotate("", xy=(7.1, mid), xytext=(3.5, mid),
                        arrowprops={"arrowstyle": "-|>", "lw": 0.8,
                                    "color": OKABE_ITO["vermillion"]})
        previous, previous_bottom = placed, y - height / 2
        previous_total_first, note_bottom = total_first, None
        top_edge = previous_bottom
    randomised = (config or {}).get("study", {}).get("design") == "randomised"
    ax.set_title("CONSORT flow diagram: participants through the trial" if randomised
                 else "STROBE flow diagram: patients through the cohort study", loc="left")
    return figure


# --------------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------------
def _marginal_means_of(doc: Mapping[str, Any]) -> pd.DataFrame:
    """The adjusted marginal means of a primary estimate file; a file without them is an error."""
    means = pd.DataFrame(doc.get("marginal_means") or [])
    if means.empty:
        raise DataError(doc["_file"], "marginal_means rows are needed for the trajectories",
                        column="marginal_means")
    return means


def _draw_means(ax: Any, part: pd.DataFrame, x: np.ndarray, colour: str, marker: str,
                label: str) -> None:
    """One arm's adjusted means (``estimate``, ``ci_low``, ``ci_high`` rows) with their CIs."""
    y = part["estimate"].to_numpy(dtype=float)
    err = np.vstack([y - part["ci_low"].to_numpy(dtype=float),
                     part["ci_high"].to_numpy(dtype=float) - y])
    ax.errorbar(x, y, yerr=err, color=colour, marker=marker, capsize=3, lw=1.4, ms=5,
                label=label)


def _label_means_panel(ax: Any, config: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
    """Axis label, title and direction note of one outcome's panel of adjusted means."""
    ax.set_ylabel(f"Adjusted mean ({outcome.get('units', 'score')})")
    direction = "higher" if outcome.get("higher_is_better", True) else "lower"
    ax.set_title(_wrap(f"{outcome_label(config, outcome['name'])}", 30), loc="left")
    ax.text(0.99, 0.02, f"{direction} is better", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=7, color="#555555")


# Several arms: the reference in the control colour, the others in further Okabe-Ito colours.
_MORE_ARMS = [(OKABE_ITO[c], m) for c, m in (("blue", "o"), ("green", "^"), ("vermillion", "D"),
                                            ("purple", "v"), ("sky", "P"), ("black", "X"))]


def arm_styles(config: Mapping[str, Any], step: float) -> list[tuple[float, str, str, str]]:
    """(x offset, arm label, colour, marker) per arm: intervention then control with two
    arms (offsets -step, +step), else every arm of allocation.arms, offsets spread by step."""
    intervention, control = arm_labels(config)
    if not multi_arm(config):
        return [(-step, intervention, INTERVENTION_COLOUR, "o"),
                (step, control, CONTROL_COLOUR, "s")]
    levels = arm_levels(config)
    arms = [str(a) for a in config["allocation"]["arms"]]
    others = iter(_MORE_ARMS)
    styles = []
    for i, arm in enumerate(arms):
        colour, marker = (CONTROL_COLOUR, "s") if arm == levels[0] else next(others)
        styles.append(((i - (len(arms) - 1) / 2) * step, arm, colour, marker))
    return styles


def trajectories_figure(
    estimates: Mapping[str, Any], config: Mapping[str, Any], population: str
) -> Figure:
    """Adjusted marginal means by arm at baseline and follow-up, one panel per outcome.

    With several follow-ups the means are drawn over time (x = ``timepoints.values``), see
    :func:`trajectories_over_time`.
    """
    if len(followup_labels(config)) > 1:
        return trajectories_over_time(estimates, config, population)
    outcomes = config["outcomes"]
    figure, axes = new_figure(1, len(outcomes), figsize=(3.3 * len(outcomes), 3.2),
                              squeeze=False)
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        doc = estimates["primary"][(outcome["name"], population)]
        means = _marginal_means_of(doc)
        order = list(dict.fromkeys(means["time"].astype(str)))
        for offset, arm, colour, marker in arm_styles(config, 0.04):
            part = means[means["arm"].astype(str) == str(arm)].copy()
            part["position"] = part["time"].astype(str).map(order.index)
            part = part.sort_values("position")
            x = part["position"].to_numpy(dtype=float) + offset
            _draw_means(ax, part, x, colour, marker, str(arm))
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order)
        ax.set_xlim(-0.4, len(order) - 0.6)
        ax.set_xlabel("Assessment")
        _label_means_panel(ax, config, outcome)
    axes[0][0].legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return figure


def trajectories_over_time(
    estimates: Mapping[str, Any], config: Mapping[str, Any], population: str
) -> Figure:
    """Adjusted marginal means by arm at every time point, on the numeric time axis.

    x is each time point's ``timepoints.values`` (0, 1, 2, ... by default); under ANCOVA the
    means are at the follow-ups only (the baseline is a covariate, held at its mean).
    """
    outcomes = config["outcomes"]
    values = time_values(config)
    span = max(values.values()) - min(values.values()) or 1.0
    figure, axes = new_figure(1, len(outcomes), figsize=(3.6 * len(outcomes), 3.2),
                              squeeze=False)
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        doc = estimates["primary"][(outcome["name"], population)]
        means = _marginal_means_of(doc)
        unknown = sorted(set(means["time"].astype(str)) - set(values))
        if unknown:
            raise DataError(doc["_file"], f"marginal means at time points {unknown} that are "
                            "not in timepoints", column="time")
        labels = [label for label in values if label in set(means["time"].astype(str))]
        # A small horizontal offset keeps the two arms' intervals apart.
        for offset, arm, colour, marker in arm_styles(config, 0.01):
            part = means[means["arm"].astype(str) == str(arm)].copy()
            part["x"] = part["time"].astype(str).map(values)
            part = part.sort_values("x")
            x = part["x"].to_numpy(dtype=float) + offset * span
            _draw_means(ax, part, x, colour, marker, str(arm))
        ax.set_xticks([values[label] for label in labels])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("Time since baseline")
        _label_means_panel(ax, config, outcome)
    axes[0][0].legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# Forest plot
# --------------------------------------------------------------------------------------------
def forest_rows(estimates: Mapping[str, Any], config: Mapping[str, Any], outcome: str
                ) -> list[dict[str, Any]]:
    """Rows of the forest plot for one outcome: populations, then subgroup levels.

    With three or more arms: per population a heading and a row per contrast at the primary
    follow-up, with its simultaneous (single-step) interval when there is one.
    """
    if multi_arm(config):
        return _contrast_forest_rows(estimates, config, outcome)
    rows = []
    for population in config["analysis"]["populations"]:
        row = effect_row(estimates["primary"][(outcome, population)])
        rows.append({"label": sentence_label(config, population), "header": False,
                     "population": True,
                     **{k: float(row[k]) for k in ("estimate", "ci_low", "ci_high")}})
    for subgroup in config["analysis"].get("subgroups", []):
        doc = estimates["subgroups"].get((outcome, subgroup))
        if doc is None:
            continue
        name = sentence_label(config, subgroup)
        if doc.get("not_reported"):
            # a level below report.min_cell_count: named, without estimates
            rows.append({"label": f"{name}: not reported (a level is too small)",
                         "header": True})
            continue
        levels, p_het = subgroup_rows(doc, subgroup)
        p_text = fmt_p(p_het)
        p_text = p_text if p_text.startswith("<") else f"= {p_text}"
        rows.append({"label": f"{name} (heterogeneity p {p_text})", "header": True})
        for row in levels:
            level = str(row["level"])
            name = {"0": f"no {label(config, subgroup)}", "1": label(config, subgroup)}.get(
                level, f"{label(config, subgroup)}: {label(config, level)}")
            rows.append({"label": f"   {name}", "header": False,
                         **{k: float(row[k]) for k in ("estimate", "ci_low", "ci_high")}})
    return rows


def _contrast_forest_rows(estimates: Mapping[str, Any], config: Mapping[str, Any],
                         outcome: str) -> list[dict[str, Any]]:
    primary = primary_followup(config)
    rows: list[dict[str, Any]] = []
    for population in config["analysis"]["populations"]:
        rows.append({"label": sentence_label(config, population), "header": True})
        doc = estimates["primary"][(outcome, population)]
        for record in contrast_records(doc):
            if record["followup"] != primary:
                continue
            low, high = record.get("ci_low_adjusted"), record.get("ci_high_adjusted")
            adjusted = low is not None and np.isfinite(float(low))
            rows.append({"label": f"   {record['contrast']}", "header": False,
                         "population": True, "estimate": float(record["estimate"]),
                         "ci_low": float(low if adjusted else record["ci_low"]),
                         "ci_high": float(high if adjusted else record["ci_high"])})
    return rows


def forest_figure(estimates: Mapping[str, Any], config: Mapping[str, Any]) -> Figure:
    """The primary effect by population and subgroup level, one panel per outcome."""
    outcomes = config["outcomes"]
    axis = design_wording(config)["axis"]  # change score or ANCOVA: what was estimated
    all_rows = {o["name"]: forest_rows(estimates, config, o["name"]) for o in outcomes}
    n_rows = max(len(r) for r in all_rows.values())
    figure, axes = new_figure(1, len(outcomes), figsize=(3.6 * len(outcomes),
                                                          0.32 * n_rows + 1.6),
                              squeeze=False)
    # Each panel keeps its own y axis: a shared one carries a single set of tick labels, so
    # the last panel's (its own heterogeneity p-values) would be shown on every panel.
    for ax, outcome in zip(axes[0], outcomes, strict=True):
        rows = all_rows[outcome["name"]]
        y = np.arange(len(rows))[::-1]
        for yi, row in zip(y, rows, strict=True):
            if row["header"]:
                continue
            colour = OKABE_ITO["black"] if row.get("population") else OKABE_ITO["blue"]
            ax.plot([row["ci_low"], row["ci_high"]], [yi, yi], color=colour, lw=1.3)
            ax.plot(row["estimate"], yi, marker="D" if colour == OKABE_ITO["black"] else "o",
                    color=colour, ms=5)
        ax.axvline(0, color="#777777", lw=0.8, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels([r["label"] for r in rows], fontsize=8)
        better = "right" if outcome.get("higher_is_better", True) else "left"
        favoured = ("the first arm of the contrast" if multi_arm(config)
                    else arm_labels(config)[0])
        ax.set_xlabel(f"{axis} ({outcome.get('units', 'score')})\n"
                      f"{better} of 0 favours {favoured}", fontsize=8)
        ax.set_title(_wrap(outcome_label(config, outcome["name"]), 32), loc="left")
        ax.set_ylim(-0.7, len(rows) - 0.3)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------------
# Sessions and implementation
# --------------------------------------------------------------------------------------------
def sessions_distribution(analysis: pd.DataFrame, config: Mapping[str, Any]) -> pd.DataFrame:
    """Share of patients by number of sessions and arm, with a pooled upper tail.

    The tail starts at the smallest count ``c`` such that, in every arm, at least
    ``min_cell_count`` patients had ``c`` or more sessions; other bars with fewer patients
    than that are withheld (``share`` missing) rather than drawn.
    """
    k = int(config.get("report", {}).get("min_cell_count", 5))
    sessions = pd.to_numeric(analysis["n_sessions"], errors="coerce")
    arms = analysis["arm"].astype(str)
    top = int(sessions.max())
    while top > 1 and any(((sessions >= top) & (arms == a)).sum() < k for a in arms.unique()):
        top -= 1
    capped = sessions.clip(upper=top)  # pooling the tail for display, not altering the data
    rows = []
    for arm in arm_labels(config):
        in_arm = capped[arms == str(arm)].dropna()
        for value in range(int(capped.min()), top + 1):
            count = int((in_arm == value).sum())
            share = np.nan if 0 < count < k else 100 * count / max(len(in_arm), 1)
            rows.append({"arm": arm, "sessions": value, "label": f"≥{value}" if value == top
                         else str(value), "count": count, "share": share})
    return pd.DataFrame(rows)


def sessions_figure(analysis: pd.DataFrame, config: Mapping[str, Any]) -> Figure:
    """Distribution of the number of sessions by arm (percentage of patients)."""
    table = sessions_distribution(analysis, config)
    intervention, control = arm_labels(config)
    labels = list(dict.fromkeys(table["label"]))
    x = np.arange(len(labels))
    figure, ax = new_figure(figsize=(7.0, 3.2))
    for offset, arm, colour, hatch in ((-0.2, intervention, INTERVENTION_COLOUR, ""),
                                       (0.2, control, CONTROL_COLOUR, "//")):
        part = table[table["arm"] == arm]
        mean = pd.to_numeric(analysis.loc[analysis["arm"].astype(str) == str(arm),
                                          "n_sessions"], errors="coerce").mean()
        ax.bar(x + offset, part["share"].fillna(0).to_numpy(), width=0.4, color=colour,
               hatch=hatch, edgecolor="white", label=f"{arm} (mean {mean:.1f})")
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_xlabel("Treatment sessions per patient (count)")
    ax.set_ylabel("Patients in arm (%)")
    ax.legend(frameon=False)
    ax.set_title("Number of treatment sessions by arm", loc="left")
    figure.tight_layout()
    return figure


def implementation_figure(implementation: pd.DataFrame,
                          config: Mapping[str, Any] | None = None) -> Figure:
    """Implementation outcomes (reach, adoption, fidelity) as percentages with counts."""
    frame = implementation.copy()
    percent = 100 * pd.to_numeric(frame["numerator"], errors="coerce") / pd.to_numeric(
        frame["denominator"], errors="coerce")
    y = np.arange(len(frame))[::-1]
    figure, ax = new_figure(figsize=(7.0, 0.55 * len(frame) + 1.0))
    ax.barh(y, percent, color=OKABE_ITO["green"], height=0.55)
    for yi, p, (_, row) in zip(y, percent, frame.iterrows(), strict=True):
        # a suppressed small count (implementation.csv says "<5" or "suppressed") is drawn
        # as such, without a bar
        text = (f"{p:.1f}% ({int(row['numerator'])}/{int(row['denominator'])})"
                if np.isfinite(p) else f"{row['numerator']}/{row['denominator']}")
        ax.text(min(p, 100) + 1.0 if np.isfinite(p) else 1.0, yi, text, va="center",
                fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([_wrap(sentence_label(config, m), 34) for m in frame["measure"]],
                       fontsize=8)
    ax.set_xlim(0, 125)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("Percent (%)")
    ax.set_title("Implementation outcomes", loc="left")
    figure.tight_layout()
    return figure


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(str(path), "table is missing", hint="run `allocate` and `tables` first")
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(str(path), "required column missing", column=missing[0])
    return frame


def run_figures(
    config: dict[str, Any], analysis: str | Path, estimates: str | Path, tables: str | Path,
    out: str | Path,
) -> list[Path]:
    """Draw every report figure as PNG and SVG into ``out`` (step ``figures``).

    Parameters
    ----------
    config : dict
        Validated study configuration.
    analysis : path
        Analysis table (Parquet).
    estimates : path
        Folder of estimate files.
    tables : path
        Folder holding ``flow.csv`` and ``implementation.csv``.
    out : path
        Folder for the figures.

    Returns
    -------
    list of Path
        Files written.
    """
    out, tables = Path(out), Path(tables)
    frame = read_analysis(analysis, config)
    loaded = load_estimates(estimates, config, secondary=False)
    flow = _read_table(tables / "flow.csv", ["step", "description", "n", "n_excluded", "reason"])
    names = figure_names(config)
    populations = config["analysis"]["populations"]
    population = "complete_case" if "complete_case" in populations else populations[0]
    written: list[Path] = []
    import matplotlib

    with matplotlib.rc_context(STYLE):
        # Draw everything first, then save: a failing figure leaves no partial set behind.
        figures = {
            "flow": flow_figure(flow, config),
            "trajectories": trajectories_figure(loaded, config, population),
            "forest": forest_figure(loaded, config),
        }
        if "sessions" in names:
            implementation = _read_table(tables / "implementation.csv",
                                         ["measure", "numerator", "denominator"])
            figures["sessions"] = sessions_figure(frame, config)
            figures["implementation"] = implementation_figure(implementation, config)
        for name in names:
            written += save_figure(figures[name], out, name)
    return written
