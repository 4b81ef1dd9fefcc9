"""The report's section "Estimators in the two populations": the estimators side by side on
the reproduction of the paper's population and on the target trial's.

Reads ``estimators_by_population.json`` (rule ``estimators_by_population``,
:mod:`trial_analysis.causal.populations`); counts there are already suppressed below
``report.min_cell_count``. Labels come from the config and the estimators' own names, never
from column identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trial_analysis.causal.populations import ESTIMATORS, POPULATION_LABELS, POPULATIONS
from trial_analysis.config import arm_labels, confidence_level
from trial_analysis.reporting.tables import fmt_ci, fmt_number, outcome_label

FILE_NAME = "estimators_by_population.json"
TABLE_FILE = "estimators_by_population.csv"
MAIN_WORDS = {"reproduction": "published population (the reproduction of the paper)",
              "target_trial": "target trial's population"}
# The estimators the comparison sentence quotes, in its order, with the words it uses.
QUOTED = {"mixed_model": "the change-score mixed model", "ancova": "ANCOVA",
          "augmented_overlap": "augmented overlap weighting",
          "aipw": "augmented inverse probability weighting"}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _cell(row: Mapping[str, Any]) -> dict[str, str]:
    """One population's cells of a table row: N per arm and the estimate with its interval."""
    interval = fmt_ci(_number(row["ci_low"]), _number(row["ci_high"]))
    shown = (interval if row["estimator"] == "bracketing"
             else f"{fmt_number(_number(row['estimate']))} ({interval})")
    return {"n": f"{row['n_intervention']} / {row['n_control']}", "estimate": shown}


def _outcome_order(config: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The primary outcome first, then the others in the config's order."""
    primary = config.get("primary_outcome")
    ordered = [o["name"] for o in config.get("outcomes", []) if o["name"] in names]
    return sorted(ordered, key=lambda name: name != primary)


def _population_sentence(summary: Mapping[str, Any], intervention: str, control: str) -> str:
    return (f"{summary['n_eligible']} eligible patients, {summary['n_complete_cases']} "
            f"complete cases ({summary['n_complete_intervention']} {intervention}, "
            f"{summary['n_complete_control']} {control})")


def _comparison(rows: Sequence[Mapping[str, Any]], outcome: str, config: Mapping[str, Any]
                ) -> str:
    """How the outcome's estimates move from the reproduction to the target trial's
    population, estimator by estimator, with the numbers."""
    by_key = {(r["estimator"], r["population"]): r for r in rows if r["outcome"] == outcome}
    parts = []
    for key, words in QUOTED.items():
        if (key, POPULATIONS[0]) in by_key and (key, POPULATIONS[1]) in by_key:
            before = _number(by_key[key, POPULATIONS[0]]["estimate"])
            after = _number(by_key[key, POPULATIONS[1]]["estimate"])
            parts.append(f"{words} {fmt_number(before)} and {fmt_number(after)}")
    bracket = [by_key.get(("bracketing", p)) for p in POPULATIONS]
    if all(bracket):
        ends = [f"{fmt_number(_number(b['ci_low']))} to {fmt_number(_number(b['ci_high']))}"
                for b in bracket]
        parts.append(f"the bracketing interval {ends[0]} and {ends[1]}")
    if not parts:
        return ""
    return (f"{outcome_label(config, outcome)}, in the reproduction and then in the target "
            f"trial's population: " + "; ".join(parts) + ".")


def _removed(summaries: Mapping[str, Mapping[str, Any]], intervention: str, control: str
             ) -> str:
    """Complete cases per arm in the reproduction but not in the target trial's population
    (in words; counts shown as ``<k`` are not subtracted)."""
    if not all(p in summaries for p in POPULATIONS):
        return "some patients"
    parts = []
    for arm, name in (("intervention", intervention), ("control", control)):
        key = f"n_complete_{arm}"
        try:
            removed = int(summaries[POPULATIONS[0]][key]) - int(summaries[POPULATIONS[1]][key])
        except (TypeError, ValueError):  # a suppressed count
            return "some patients"
        parts.append((removed, name))
    if parts[0][0] == 0:
        return f"{parts[1][0]} {parts[1][1]} complete cases and no {intervention} patient"
    return " and ".join(f"{n} {name}" for n, name in parts) + " complete cases"


def by_population_section(estimates: Path, config: Mapping[str, Any],
                          tables: Path | None = None) -> dict[str, Any] | None:
    """What the section shows; None when the run did not compare the populations."""
    path = Path(estimates) / FILE_NAME
    if not path.is_file():
        return None
    document = json.loads(path.read_text(encoding="utf-8"))
    rows = document.get("estimates", [])
    summaries = {s["population"]: s for s in document.get("populations", [])}
    intervention, control = arm_labels(config)
    main = document.get("main_population", POPULATIONS[0])
    table = []
    for outcome in _outcome_order(config, [r["outcome"] for r in rows]):
        for estimator, (name, assumption) in ESTIMATORS.items():
            found = {r["population"]: r for r in rows
                     if r["outcome"] == outcome and r["estimator"] == estimator}
            if not found:
                continue
            table.append({
                "outcome": outcome_label(config, outcome), "estimator": name,
                "assumption": assumption,
                "cells": [_cell(found[p]) if p in found else {"n": "", "estimate": ""}
                          for p in POPULATIONS]})
    outcomes = _outcome_order(config, [r["outcome"] for r in rows])
    populations = " ".join(
        f"{POPULATION_LABELS[p]}: {_population_sentence(summaries[p], intervention, control)}."
        for p in POPULATIONS if p in summaries)
    source = (Path(tables) / TABLE_FILE).as_posix() if tables is not None else TABLE_FILE
    return {
        "labels": [POPULATION_LABELS[p] for p in POPULATIONS],
        "rows": table, "source": source,
        "confidence": int(round(100 * confidence_level(config))),
        "intro": (
            "The same estimators, by the same code, on two populations. The reproduction of "
            "the paper analyses every eligible patient, as published; the target trial's "
            f"population also applies the target trial's eligibility: a first-session "
            f"therapist who had completed {intervention} training by that session (time "
            f"zero). {populations} The other sections of this report analyse the "
            f"{MAIN_WORDS.get(main, main)}."),
        "comparison": " ".join(filter(None, (_comparison(rows, o, config) for o in outcomes))),
        "why": (
            f"The target trial's eligibility removes {_removed(summaries, intervention, control)}"
            f": patients of therapists never trained in {intervention} and patients first "
            f"seen before their therapist's training. They had no chance of {intervention} "
            "(positivity fails), so in the reproduction they serve as controls for whom no "
            "intervention patient is comparable. Where an estimate moves between the "
            "populations, the published comparison leaned on such patients (or on the "
            "therapists they came from); the target trial's population is a subset of the "
            "published one, so part of any shift is also sampling noise. The augmented "
            "inverse probability weighting (ATE) weights the intervention patients least "
            "likely to be treated most and reacts most where positivity is thin; overlap "
            "weighting (ATO) down-weights them." + _propensity_blind(config)),
    }


def _propensity_blind(config: Mapping[str, Any]) -> str:
    """Without therapist terms the propensity model cannot see a therapist-level violation."""
    options = ((config.get("sensitivity") or {}).get("propensity") or {})
    if options.get("therapist_terms"):
        return ""
    return (" The propensity model has patient covariates only, so it cannot see this "
            "violation, which is the therapist's: only the eligibility restriction removes it.")
