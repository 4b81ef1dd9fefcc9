"""The cohort tables as written under ``reports/``: small cells suppressed, no source ids.

``allocate`` keeps the full tables in memory (and the analysis table under ``data/``); what it
writes for people to read goes through these functions first (rules in
:mod:`trial_analysis.privacy`, k = ``report.min_cell_count``):

* **flow** (``flow.csv``): an exclusion count from 1 to k - 1 is merged with a neighbouring
  exclusion of the same step (the reasons joined with "; or "), so the diagram's totals stay
  exact and consistent and no small count can be read off by subtraction. A small count that
  has no neighbour to merge with (the only exclusion of its step) and a small box count are
  shown as ``<k``.
* **implementation** (``implementation.csv``): a small numerator, or a small difference
  between numerator and denominator, is shown as ``<k`` or suppressed, with its percent.
* **therapists** (``therapist_fidelity.csv``): therapists and clinics by pseudonymous codes
  (rank of the source id), small per-therapist episode counts as ``<k``, and the fidelity of a
  therapist whose count, or whose number of unfaithful episodes, is small suppressed.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import pandas as pd

from trial_analysis.privacy import (
    SUPPRESSED,
    count_text,
    is_small,
    pseudonymise,
    suppress_counts,
)


def _merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two consecutive exclusions as one: the later remaining count, the counts summed."""
    reasons = [str(r) for r in (first.get("reason"), second.get("reason"))
               if r is not None and not pd.isna(r) and str(r)]
    return {**second, "reason": "; or ".join(reasons),
            "n_excluded": int(first["n_excluded"]) + int(second["n_excluded"])}


def _merged_exclusions(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Merge each small exclusion with its larger neighbour until none is small or one is left.

    Rows are consecutive exclusions of one step, each ``n`` the count remaining after it.
    """
    rows = [dict(r) for r in rows]
    while len(rows) > 1:
        small = [i for i, r in enumerate(rows) if is_small(r["n_excluded"], k)]
        if not small:
            break
        i = small[0]
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(rows)]
        j = max(neighbours, key=lambda m: int(rows[m]["n_excluded"]))
        a, b = sorted((i, j))
        rows[a:b + 1] = [_merge(rows[a], rows[b])]
    return rows


def reported_flow(flow: pd.DataFrame, k: int) -> pd.DataFrame:
    """The flow table with small counts merged away or suppressed (see the module docstring)."""
    out: list[dict[str, Any]] = []
    records = flow.to_dict("records")
    for _, group in groupby(records, key=lambda r: r["step"]):
        rows = list(group)
        excluded = [pd.notna(r["n_excluded"]) for r in rows]
        if all(excluded):
            out += rows  # boxes that each note their own exclusions (complete cases by arm)
            continue
        pending: list[dict[str, Any]] = []
        for row, is_exclusion in zip(rows, excluded, strict=True):
            if is_exclusion:
                pending.append(row)
                continue
            out += _merged_exclusions(pending, k)
            pending = []
            out.append(row)
        out += _merged_exclusions(pending, k)
    frame = pd.DataFrame(out, columns=list(flow.columns))
    for column in ("n", "n_excluded"):
        frame[column] = pd.Series(
            ["" if pd.isna(v) else count_text(v, k) for v in frame[column]],
            index=frame.index, dtype=object)
    return frame


def reported_implementation(implementation: pd.DataFrame, k: int) -> pd.DataFrame:
    """Implementation outcomes with small numerators (or complements) and their percent hidden."""
    if implementation.empty:
        return implementation
    out = suppress_counts(implementation, ["numerator", "denominator"], k,
                          derived={"percent": ["numerator", "denominator"]},
                          complements=[("denominator", "numerator")])
    hidden = out["numerator"].isin([SUPPRESSED])
    # object first: a float column cannot take the text (pandas does not upcast on .loc)
    out["percent"] = out["percent"].astype(object)
    out.loc[hidden, "percent"] = SUPPRESSED
    out["percent"] = [f"{v:.10g}" if isinstance(v, float) else v for v in out["percent"]]
    return out


def reported_therapists(therapists: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per-therapist fidelity by pseudonymous codes, small counts suppressed."""
    if therapists.empty:
        return therapists.rename(columns={"therapist_id": "therapist", "clinic_id": "clinic"})
    coded = pseudonymise(therapists, {"therapist_id": "therapist", "clinic_id": "clinic"})
    coded = coded.rename(columns={"therapist_id": "therapist", "clinic_id": "clinic"})
    coded = coded.sort_values("therapist", kind="mergesort").reset_index(drop=True)
    out = suppress_counts(coded, ["etmi_episodes", "faithful_episodes"], k,
                          derived={"fidelity": ["etmi_episodes", "faithful_episodes"]},
                          complements=[("etmi_episodes", "faithful_episodes")])
    out["fidelity"] = [f"{v:.10g}" if isinstance(v, float) else v for v in out["fidelity"]]
    return out
