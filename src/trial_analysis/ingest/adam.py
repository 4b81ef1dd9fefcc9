"""CDISC ADaM: the pipeline's long outcomes table from a BDS dataset (ADQS, ADEFF, ...).

A study in ADaM structure gives two datasets: ADSL, one row per subject, is the patients table
as it is (``input.tables.patients`` with ``columns`` mapping ``episode_id: USUBJID``, ``age:
AGE``, ``sex: SEX`` ...; the arm is ``allocation.column: TRT01P``). A BDS dataset holds one
row per subject, parameter and analysis visit; the outcomes entry names it with an ``adam``
block, and :func:`select_bds` turns it into the pipeline's own long outcomes table:

* a record is selected when its ``PARAMCD`` is one of ``adam.parameters`` (the map from
  parameter code to the config's outcome name), its analysis flag (``adam.flag``, default
  ``ANL01FL``) is ``Y``, and it is either the baseline record (``adam.baseline_flag``, default
  ``ABLFL``, is ``Y``) or its ``AVISIT`` is one of ``adam.visits``;
* the baseline record takes the label ``timepoints.baseline`` whatever its ``AVISIT`` (ADaM
  may derive baseline from a screening or day-1 visit); other records keep their ``AVISIT``,
  so ``timepoints.followups`` lists ``AVISIT`` values;
* the columns are the pipeline's: ``outcome_id`` (``ROW`` + the record's row in the dataset,
  so messages point at the dataset), ``episode_id`` (``USUBJID``), ``instrument``,
  ``timepoint``, ``score`` (``AVAL``) and ``assessment_date`` (``ADT``, when present).

Records not selected are not raw records of the pipeline (like rows a query's ``WHERE``
leaves out); how many there were, and why, is recorded with the ledger's sources (the
selection, the dataset's and the selection's row counts). ``BASE`` and ``CHG`` are not used:
the pipeline derives baseline and change itself. Where ``BASE`` disagrees with the selected
baseline record's ``AVAL``, the sponsor's baseline is another one than this selection's; that
is logged as a warning with the number of records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUBJECT = "USUBJID"
PARAMETER = "PARAMCD"
VISIT = "AVISIT"
VALUE = "AVAL"
DATE = "ADT"
BASE = "BASE"
DEFAULT_FLAG = "ANL01FL"
DEFAULT_BASELINE_FLAG = "ABLFL"


def _column(frame: pd.DataFrame, name: str, source: str, what: str) -> pd.Series:
    """A BDS variable by its ADaM name, matched ignoring case; a missing one is a DataError."""
    found = {str(c).casefold(): c for c in frame.columns}
    if name.casefold() not in found:
        raise DataError(source, f"a BDS dataset needs the variable {name} ({what})",
                        column=name, hint="Columns found: " + ", ".join(map(str, frame.columns)))
    return frame[found[name.casefold()]]


def _text(series: pd.Series) -> pd.Series:
    """Values as stripped text, missing as ''. A labelled (categorical) column gives labels."""
    return series.astype("object").where(series.notna(), "").astype(str).str.strip()


def _is_yes(series: pd.Series) -> np.ndarray:
    return (_text(series).str.upper() == "Y").to_numpy()


def check_spec(config: Mapping[str, Any], table: str) -> Mapping[str, Any]:
    """The outcomes entry's ``adam`` block, checked against the rest of the config."""
    entry = config["input"]["tables"][table]
    spec = entry["adam"]
    problems = []
    if table != "outcomes":
        problems.append(f"input/tables/{table}/adam: only the outcomes table is read from a "
                        "BDS dataset (ADSL is the patients table as it is)")
    if config["input"].get("outcomes_layout", "long") != "long":
        problems.append("input/outcomes_layout: a BDS dataset is long; set outcomes_layout: long")
    if entry.get("columns"):
        problems.append("input/tables/outcomes/columns: not used with adam (the BDS variables "
                        "USUBJID, PARAMCD, AVISIT, AVAL have fixed names); remove it")
    names = {o["name"] for o in config["outcomes"]}
    for code, outcome in spec["parameters"].items():
        if outcome not in names:
            problems.append(f"input/tables/outcomes/adam/parameters/{code}: '{outcome}' is not "
                            f"an outcome name (outcomes[].name: {', '.join(sorted(names))})")
    if problems:
        raise ConfigError("input.tables.outcomes.adam", problems)
    return spec


def describe_selection(spec: Mapping[str, Any], baseline: str) -> str:
    """The selection in words of the dataset's variables, as provenance records it."""
    flag = spec.get("flag", DEFAULT_FLAG)
    base_flag = spec.get("baseline_flag", DEFAULT_BASELINE_FLAG)
    codes = ", ".join(f"'{c}'" for c in spec["parameters"])
    visits = ", ".join(f"'{v}'" for v in spec["visits"])
    return (f"PARAMCD in ({codes}) and {flag} = 'Y' and ({base_flag} = 'Y' [as {baseline}] "
            f"or AVISIT in ({visits}))")


def select_bds(frame: pd.DataFrame, spec: Mapping[str, Any], baseline: str,
               source: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select the analysed records of a BDS dataset as the pipeline's long outcomes table.

    Parameters
    ----------
    frame : pandas.DataFrame
        The BDS dataset as read (any reader; ADaM variable names, any case).
    spec : mapping
        ``input.tables.outcomes.adam``: ``parameters`` (PARAMCD -> outcome name), ``visits``
        (AVISIT values of the follow-ups), ``flag`` and ``baseline_flag``.
    baseline : str
        ``timepoints.baseline``: the label the baseline record takes.
    source : str
        How messages name the dataset (its path).

    Returns
    -------
    (pandas.DataFrame, dict)
        The outcomes table (text columns, the score as read) and the selection record:
        ``selection`` (in words), ``rows_in_source``, ``rows``, and the records left out by
        parameter, flag and visit.

    Raises
    ------
    DataError
        A required BDS variable is missing, no record is selected, or a subject has two
        baseline records for one parameter.
    """
    flag = spec.get("flag", DEFAULT_FLAG)
    base_flag = spec.get("baseline_flag", DEFAULT_BASELINE_FLAG)
    subject = _text(_column(frame, SUBJECT, source, "the subject"))
    parameter = _text(_column(frame, PARAMETER, source, "the parameter code"))
    visit = _text(_column(frame, VISIT, source, "the analysis visit"))
    value = _column(frame, VALUE, source, "the analysis value")
    analysed = _is_yes(_column(frame, flag, source, "the analysis flag (adam.flag)"))
    is_base = _is_yes(_column(frame, base_flag, source,
                              "the baseline flag (adam.baseline_flag)"))

    codes = {str(k): str(v) for k, v in spec["parameters"].items()}
    visits = {str(v) for v in spec["visits"]}
    in_parameter = parameter.isin(list(codes)).to_numpy()
    in_visit = is_base | visit.isin(list(visits)).to_numpy()
    keep = in_parameter & analysed & in_visit
    left_out = {
        "other parameter": int((~in_parameter).sum()),
        f"{flag} not Y": int((in_parameter & ~analysed).sum()),
        "other visit": int((in_parameter & analysed & ~in_visit).sum()),
    }
    if not keep.any():
        present = ", ".join(sorted(parameter.unique())[:10])
        raise DataError(source, "no record selected: " + describe_selection(spec, baseline),
                        hint=f"PARAMCD values in the dataset: {present}")

    rows = np.flatnonzero(keep)
    timepoint = np.where(is_base[rows], baseline, visit.to_numpy()[rows])
    out = pd.DataFrame({
        "outcome_id": [f"ROW{i + 1}" for i in rows],
        "episode_id": subject.to_numpy()[rows],
        "instrument": parameter.map(codes).to_numpy()[rows],
        "timepoint": timepoint,
        "score": value.to_numpy()[rows],
    })
    found = {str(c).casefold(): c for c in frame.columns}
    if DATE.casefold() in found:
        out.insert(2, "assessment_date", frame[found[DATE.casefold()]].to_numpy()[rows])
    _check_one_baseline(out, is_base[rows], source, rows)
    _warn_on_other_baseline(frame, out, is_base[rows], rows, source)
    record = {
        "selection": describe_selection(spec, baseline),
        "rows_in_source": len(frame),
        "rows": len(out),
        "left_out": left_out,
    }
    log.info("%s: %d of %d BDS records selected (%s); left out: %s", source, len(out),
             len(frame), record["selection"],
             ", ".join(f"{n} {why}" for why, n in left_out.items()))
    return out, record


def _check_one_baseline(out: pd.DataFrame, is_base: np.ndarray, source: str,
                        rows: Sequence[int]) -> None:
    base = out[is_base]
    repeated = base.duplicated(["episode_id", "instrument"], keep=False).to_numpy()
    if repeated.any():
        shown = sorted(int(rows[i]) + 1 for i in np.flatnonzero(is_base)[repeated])
        raise DataError(source, "two baseline records (ABLFL = 'Y') of one subject and "
                        "parameter among the selected records", rows=shown[:10],
                        hint="Keep one baseline record per subject and parameter in the "
                        "analysis flag")


def _warn_on_other_baseline(frame: pd.DataFrame, out: pd.DataFrame, is_base: np.ndarray,
                            rows: np.ndarray, source: str) -> None:
    found = {str(c).casefold(): c for c in frame.columns}
    if BASE.casefold() not in found:
        return
    given = pd.to_numeric(pd.Series(frame[found[BASE.casefold()]].to_numpy()[rows]),
                          errors="coerce").to_numpy(dtype=float)
    score = pd.to_numeric(out["score"], errors="coerce").to_numpy(dtype=float)
    key = out["episode_id"] + "\x1f" + out["instrument"]
    baseline = pd.Series(score[is_base], index=key[is_base].to_numpy())
    selected = key.map(baseline).to_numpy(dtype=float)
    differs = ~np.isnan(given) & ~np.isnan(selected) & ~np.isclose(given, selected)
    if differs.any():
        log.warning("%s: BASE differs from the selected baseline record's AVAL in %d record(s) "
                    "(dataset rows %s): the pipeline uses the selected baseline record",
                    source, int(differs.sum()),
                    ", ".join(str(int(r) + 1) for r in rows[differs][:5]))
