"""Small-cell suppression and pseudonymous codes for everything people read under ``reports/``.

The rules (``report.min_cell_count``, k, default 5):

* a count of people (patients, episodes) from 1 to k - 1 is shown as ``<k``, never as the
  number; 0 is shown (it reveals nobody);
* a figure derived from a suppressed count (a proportion, a complement such as the other part
  of a total) is suppressed with it;
* therapist- and clinic-level tables never carry the source ids: each unit gets a code by rank
  of its source id (``therapist 001``, ``clinic 01`` ...). The codes are the same on every run
  of the same data, so a reader can follow one unit through the tables; the source ids stay
  under ``data/``, where the mapping can be rebuilt.

Estimate files hold model rows, not cells: their counts (patients in a model, clusters) are
large by construction once subgroup levels below k are not reported (see
:func:`trial_analysis.models.outcome_models.fit_outcome_models`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

SUPPRESSED = "suppressed"
DEFAULT_MIN_CELL_COUNT = 5


def min_cell_count(config: Mapping[str, Any]) -> int:
    """``report.min_cell_count`` of ``config`` (default 5)."""
    return int((config.get("report") or {}).get("min_cell_count", DEFAULT_MIN_CELL_COUNT))


def is_small(count: Any, k: int) -> bool:
    """Whether ``count`` is a count of people that must not be shown (1 to k - 1)."""
    try:
        value = float(count)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(value) and 0 < value < k)


def count_text(count: Any, k: int) -> str:
    """A count as people may read it: ``<k`` for 1 to k - 1, else the whole number."""
    if is_small(count, k):
        return f"<{k}"
    try:
        return str(int(count))
    except (TypeError, ValueError):
        return str(count)


def rank_codes(ids: Iterable[Any], prefix: str) -> dict[Any, str]:
    """Pseudonymous codes by rank of the sorted distinct ids: ``{prefix} 001`` ...

    Missing ids get no code (they map to missing). The width fits the number of units.
    """
    distinct = sorted({str(v) for v in ids if not pd.isna(v)})
    width = max(2, len(str(len(distinct))))
    by_text = {value: f"{prefix} {rank:0{width}d}" for rank, value in enumerate(distinct, 1)}
    return {v: by_text[str(v)] for v in ids if not pd.isna(v)}


def pseudonymise(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with each id column of ``columns`` (column -> code prefix) replaced by codes."""
    out = frame.copy()
    for column, prefix in columns.items():
        if column in out.columns:
            codes = rank_codes(out[column].tolist(), prefix)
            out[column] = pd.Series([codes.get(v) if not pd.isna(v) else None
                                     for v in out[column]], index=out.index, dtype=object)
    return out


def suppress_counts(frame: pd.DataFrame, counts: Sequence[str], k: int, *,
                    derived: Mapping[str, Sequence[str]] | None = None,
                    complements: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """Small counts of ``frame`` shown as ``<k``, and what would reveal them suppressed.

    Parameters
    ----------
    frame : DataFrame
        One row per unit (therapist, clinic, level ...).
    counts : sequence of str
        Columns holding counts of people.
    k : int
        ``report.min_cell_count``.
    derived : mapping, optional
        Column -> the count columns it is computed from (a proportion): suppressed in a row
        where any of them is small.
    complements : sequence of (total, part)
        Pairs whose difference is itself a count of people (ETMI episodes and the faithful
        ones among them): when the difference is small, the part and anything derived from
        it are suppressed in that row, since total - part would reveal it.

    Returns
    -------
    DataFrame
        A copy with the count and derived columns as text.
    """
    out = frame.copy()
    hide_row_of: dict[str, np.ndarray] = {}
    small = {c: np.array([is_small(v, k) for v in frame[c]], dtype=bool) for c in counts}
    for total, part in complements:
        difference = pd.to_numeric(frame[total], errors="coerce") - pd.to_numeric(
            frame[part], errors="coerce")
        gap = np.array([is_small(v, k) for v in difference], dtype=bool)
        hide_row_of[part] = hide_row_of.get(part, np.zeros(len(frame), bool)) | gap
    for column in counts:
        texts = [count_text(v, k) if not pd.isna(v) else "" for v in frame[column]]
        hidden = hide_row_of.get(column, np.zeros(len(frame), bool)) & ~small[column]
        out[column] = [SUPPRESSED if h else t for t, h in zip(texts, hidden, strict=True)]
    for column, sources in (derived or {}).items():
        hide = np.zeros(len(frame), dtype=bool)
        for source in sources:
            hide |= small.get(source, np.zeros(len(frame), bool))
            hide |= hide_row_of.get(source, np.zeros(len(frame), bool))
        values = frame[column].astype(object).where(frame[column].notna(), "")
        out[column] = [SUPPRESSED if h and v != "" else v
                       for v, h in zip(values, hide, strict=True)]
    return out


# Counts in estimate files that are not counts of people (or not of people alone).
NOT_PEOPLE_COUNTS = frozenset({"n_clusters", "n_observations", "n_imputations", "n_iterations",
                               "n_chains", "n_draws", "n_terms", "n_parameters", "n_levels",
                               "n_covariates", "n_bootstrap"})


# "3 patients", "2 patient(s)", "4 episodes" in a note; not a rule's threshold (">= 1 patient").
_PEOPLE_IN_TEXT = re.compile(r"(?<![\w.<>=] )(?<![\w.<>=])(\d+)(?= (?:patients?|patient\(s\)|"
                             r"episodes?|episode\(s\)|therapists?)\b)")


def suppress_text_counts(text: str, k: int) -> str:
    """``text`` with every count of people from 1 to k - 1 ("3 patients ...") as ``<k``."""
    return _PEOPLE_IN_TEXT.sub(lambda m: count_text(m.group(1), k), text)


def suppress_json_counts(node: Any, k: int) -> Any:
    """A JSON document with every count of people (a key ``n_...`` not in
    :data:`NOT_PEOPLE_COUNTS`, or a number of patients in a text) from 1 to k - 1 written
    as ``"<k"``."""
    if isinstance(node, dict):
        return {key: (count_text(value, k)
                      if isinstance(key, str) and key.startswith("n_")
                      and key not in NOT_PEOPLE_COUNTS and not isinstance(value, bool)
                      and is_small(value, k) else suppress_json_counts(value, k))
                for key, value in node.items()}
    if isinstance(node, list):
        return [suppress_json_counts(value, k) for value in node]
    if isinstance(node, str):
        return suppress_text_counts(node, k)
    return node
