"""The cohort tables as written under ``reports/``: small cells suppressed, no source ids.

``allocate`` keeps the full tables in memory (and the analysis table under ``data/``); what it
writes for people to read goes through these functions first (rules in
:mod:`trial_analysis.privacy`, k = ``report.min_cell_count``):

* **flow** (``flow.csv``): an exclusion count from 1 to k - 1 is merged with a neighbouring
  exclusion of the same step (the reasons joined with "; or "), so the diagram's totals stay
  exact and consistent and no small count can be read off by subtraction. A small count that
  is the only exclusion of its step would still be the difference of the exact boxes before
  and after it, so the two steps are merged: the box between them is left out and the
  exclusions of both are listed (and merged) together under the later step, e.g. a few
  duplicates dropped in cleaning join the eligibility exclusions. Where no adjacent step has
  exclusions to merge with, every box before the small count is suppressed instead (secondary
  suppression), so that neither the count nor its complement is shown. A small box count is
  shown as ``<k``. The boxes of the later steps (eligible, allocated and analysed patients)
  are never merged away: they are the study's reported numbers. The complete-case boxes per
  arm note their own exclusions; such an exclusion equals the arm's allocated minus analysed
  patients, both of which a CONSORT or STROBE flow must show, so it is shown as ``<k`` but is
  derivable by design (a small *analysed* group is itself suppressed as a box).
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
    descriptions = list(dict.fromkeys(str(r["description"]) for r in (first, second)))
    # exclusions of two steps (dropped in cleaning, ineligible) keep both descriptions
    return {**second, "reason": "; or ".join(reasons), "description": " or ".join(descriptions),
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


def _is_exclusion(row: dict[str, Any]) -> bool:
    return bool(pd.notna(row["n_excluded"]))


def _within_step(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """One step's rows with each run of small exclusions merged within the run."""
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for row in rows:
        if _is_exclusion(row):
            pending.append(row)
            continue
        out += _merged_exclusions(pending, k)
        pending = []
        out.append(row)
    return out + _merged_exclusions(pending, k)


def _sole_small_exclusion(rows: list[dict[str, Any]], k: int) -> bool:
    """Whether a step is one small exclusion followed by its box (e.g. cleaning)."""
    return (len(rows) == 2 and _is_exclusion(rows[0]) and not _is_exclusion(rows[1])
            and is_small(rows[0]["n_excluded"], k))


def _merge_steps(earlier: list[dict[str, Any]], later: list[dict[str, Any]],
                 k: int) -> list[dict[str, Any]] | None:
    """Two adjacent steps as one: the earlier step's closing box left out, its exclusions
    listed first under the later step; None when the steps do not have that shape."""
    if (len(earlier) < 2 or _is_exclusion(earlier[-1]) or not _is_exclusion(earlier[-2])
            or not later or not _is_exclusion(later[0])):
        return None
    step = later[0]["step"]
    moved = [{**r, "step": step} for r in earlier[:-1] if _is_exclusion(r)]
    if len(moved) != len(earlier) - 1:
        return None  # a box inside the earlier step: it stays where it is
    return _within_step(moved + later, k)


def _across_steps(steps: list[list[dict[str, Any]]], k: int) -> list[list[dict[str, Any]]]:
    """Merge each step whose only exclusion is small with an adjacent step (next first), or
    suppress the boxes before it; record-level and per-arm steps (all rows exclusions) are
    neither merged nor partners."""
    chain = [i for i, rows in enumerate(steps) if not all(_is_exclusion(r) for r in rows)]
    position = 0
    while position < len(chain):
        i = chain[position]
        if not _sole_small_exclusion(steps[i], k):
            position += 1
            continue
        after = chain[position + 1] if position + 1 < len(chain) else None
        before = chain[position - 1] if position > 0 else None
        merged = _merge_steps(steps[i], steps[after], k) if after is not None else None
        if merged is not None:
            steps[i], steps[after] = [], merged
        else:
            merged = _merge_steps(steps[before], steps[i], k) if before is not None else None
            if merged is not None:
                steps[before], steps[i] = [], merged
            else:
                # Secondary suppression: every box before the small count, since each earlier
                # box minus the exact exclusions after it would give it away.
                for j in chain[:position]:
                    steps[j] = [r if _is_exclusion(r) else {**r, "n": SUPPRESSED}
                                for r in steps[j]]
        chain = [j for j in chain if steps[j]]
        position = 0 if merged is not None else position + 1
    return steps


def reported_flow(flow: pd.DataFrame, k: int) -> pd.DataFrame:
    """The flow table with small counts merged away or suppressed (see the module docstring)."""
    steps: list[list[dict[str, Any]]] = []
    for _, group in groupby(flow.to_dict("records"), key=lambda r: r["step"]):
        rows = list(group)
        # boxes that each note their own exclusions (complete cases by arm) stay as they are
        steps.append(rows if all(_is_exclusion(r) for r in rows) else _within_step(rows, k))
    out = [row for rows in _across_steps(steps, k) for row in rows]
    frame = pd.DataFrame(out, columns=list(flow.columns))
    for column in ("n", "n_excluded"):
        frame[column] = pd.Series(
            ["" if _blank(v) else count_text(v, k) for v in frame[column]],
            index=frame.index, dtype=object)
    return frame


def _blank(value: Any) -> bool:
    return not isinstance(value, str) and bool(pd.isna(value))


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
