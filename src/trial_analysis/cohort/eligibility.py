"""Eligibility: which cleaned referral episodes enter the cohort, and why the others do not.

Rules (``docs/data-contracts.md``, "Eligibility"), applied per cleaned episode in this order;
the first rule an episode fails is its reason:

1. referral date outside ``[eligibility.window_start, eligibility.window_end]`` (inclusive)
2. age at referral, in completed calendar years, below ``eligibility.min_age``
3. no diagnosis code from ``codes.clbp_diagnoses`` (if ``eligibility.require_clbp_code``)
4. not the patient's earliest episode among those still remaining after rules 1-3
   (ties: ``episode_id``) (if ``eligibility.first_episode_only``)
5. no session in the episode
6. each row filter of ``eligibility.filters``, in the order listed: the episode's value in the
   patients column ``column`` must be one of ``keep`` (a missing value is none of them), or
   must not be one of ``drop``
7. the target trial's own rule (only with ``target_trial.population: target_trial`` and
   ``target_trial.eligibility.therapist_trained_before_time_zero``): the therapist of the
   episode's first session (time zero; ties on the date: the smallest ``therapist_id``) has an
   ``etmi_training_date`` on or before that session. Patients of never-trained therapists,
   and episodes before their therapist's training, had no chance of the intervention
   (positivity), so the emulated trial does not enrol them.

The step writes the eligible cohort (one row per patient), the final ledger (the cleaning
ledger with the records of excluded episodes, and their sessions and outcomes, turned into
fate ``excluded``) and the flow counts up to eligibility, computed from that ledger.

Age
---
``age`` (the covariate) is a float: completed years plus the elapsed fraction of the current
year of life, so ``floor(age)`` always equals the completed years used by rule 2 and a patient
referred on their 18th birthday has age exactly 18.0. A person born on 29 February has their
birthday on 1 March in non-leap years (for both the check and the fraction).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from trial_analysis import io
from trial_analysis.errors import DataError
from trial_analysis.ingest.plausibility import completed_years  # shared with the age rule
from trial_analysis.io import require_columns

TABLES = ("therapists", "patients", "sessions", "outcomes")
LEDGER_COLUMNS = ["table", "record_id", "fate", "reason", "step"]
FLOW_COLUMNS = ["step", "description", "n", "n_excluded", "reason"]
# Fates of records still in the data after cleaning; eligibility may turn them into `excluded`.
SURVIVING_FATES = ("kept", "repaired", "value_set_missing")
FATES = (*SURVIVING_FATES, "dropped", "excluded")

REASON_WINDOW = "referral outside study window"
REASON_CLBP = "no CLBP diagnosis code"
REASON_REPEAT = "not the patient's first episode"
REASON_NO_SESSION = "no attended session"
REASON_UNTRAINED = "therapist not trained before the first session (target trial)"
EXCLUDED_PREFIX = "episode excluded: "

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "therapists": ("therapist_id", "record_id"),
    "patients": ("episode_id", "patient_id", "record_id"),
    "sessions": ("episode_id", "record_id"),
    "outcomes": ("episode_id", "record_id"),
}


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by `allocate`)
# --------------------------------------------------------------------------------------------


def clean_table_path(clean: str | Path, table: str) -> Path:
    """Path of cleaned table ``table`` inside the folder ``clean``."""
    return Path(clean) / f"{table}.parquet"


def read_parquet_input(path: str | Path, what: str) -> pd.DataFrame:
    """Read a Parquet file another step wrote; a missing or unreadable file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), f"file not found ({what})", hint="Run the earlier steps first.")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(str(path), f"not a readable Parquet file ({exc})") from None


def arrow_strings(values: pd.Series | pd.Index | Sequence[Any]) -> pa.Array | pa.ChunkedArray:
    """``values`` as an Arrow large-string array (missing stays null)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype="str")
    array = pa.array(series.astype("str"), from_pandas=True)
    return array.cast(pa.large_string())


def key_positions(
    values: pd.Series | pd.Index | Sequence[Any], keys: pd.Series | pd.Index | Sequence[Any]
) -> np.ndarray:
    """Position of each of ``values`` in the unique ``keys``; -1 where absent or missing.

    Arrow's hash lookup: pandas' own ``isin``/``map`` on Arrow-backed strings loop in Python
    and take minutes on ten million session rows.
    """
    right = arrow_strings(keys)
    if isinstance(right, pa.ChunkedArray):
        right = right.combine_chunks()
    found = pc.index_in(arrow_strings(values), value_set=right)
    return np.asarray(found.fill_null(-1), dtype=np.int64)


def is_member(values: pd.Series, keys: pd.Series | pd.Index | Sequence[Any]) -> pd.Series:
    """Boolean Series: is each of ``values`` one of ``keys``."""
    return pd.Series(key_positions(values, pd.unique(np.asarray(keys, dtype=object)))
                     >= 0, index=values.index)


def has_any_code(codes: pd.Series, wanted: Sequence[str], separator: str) -> pd.Series:
    """True where the multi-code cell holds at least one of ``wanted`` (exact code match).

    The regular expression runs once per distinct cell text (a few hundred code combinations,
    not millions of rows); a missing cell holds no code.
    """
    if len(wanted) == 0:
        return pd.Series(False, index=codes.index)
    sep = re.escape(separator)
    alternatives = "|".join(re.escape(str(c).strip().upper()) for c in wanted)
    pattern = rf"(?:^|{sep})\s*(?:{alternatives})\s*(?:{sep}|$)"
    positions, distinct = pd.factorize(codes.astype("str"))
    # Cleaning upper-cases codes; upper-casing again keeps the match exact for any caller.
    matched = pd.Series(distinct, dtype="str").str.upper().str.contains(
        pattern, regex=True, na=False).to_numpy(dtype=bool)
    # factorize gives -1 for missing cells: append a False for them.
    found = np.append(matched, False)[positions]
    return pd.Series(found, index=codes.index)


def _format_number(value: float) -> str:
    return f"{value:g}"


def _age_reason(config: Mapping[str, Any]) -> str:
    return f"age under {_format_number(config.get('eligibility', {}).get('min_age', 18))}"


def _has_window(config: Mapping[str, Any]) -> bool:
    elig = config.get("eligibility", {})
    return elig.get("window_start") is not None or elig.get("window_end") is not None


def _has_sessions(config: Mapping[str, Any]) -> bool:
    tables = config.get("input", {}).get("tables", {})
    return tables.get("sessions", {}) is not None


def _has_therapists(config: Mapping[str, Any]) -> bool:
    tables = config.get("input", {}).get("tables", {})
    return tables.get("therapists", {}) is not None and _has_sessions(config)


def row_filters(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The row filters of ``eligibility.filters`` (empty list when none)."""
    return list((config.get("eligibility") or {}).get("filters") or [])


def _filter_values(spec: Mapping[str, Any]) -> tuple[str, list[Any]]:
    kind = "keep" if "keep" in spec else "drop"
    return kind, list(spec[kind])


def filter_reason(spec: Mapping[str, Any]) -> str:
    """Exclusion reason of a row filter, naming its column and values."""
    kind, values = _filter_values(spec)
    shown = ", ".join(str(v) for v in values)
    if kind == "keep":
        return f"filter: {spec['column']} not in [{shown}]"
    return f"filter: {spec['column']} in [{shown}]"


def target_trial_rule_enabled(config: Mapping[str, Any]) -> bool:
    """Whether the target trial's trained-therapist rule (rule 7) is applied in this run."""
    target = config.get("target_trial") or {}
    rule = (target.get("eligibility") or {}).get("therapist_trained_before_time_zero", True)
    observational = (config.get("study") or {}).get("design", "observational") != "randomised"
    return (target.get("population", "reproduction") == "target_trial" and bool(rule)
            and observational and _has_therapists(config))


def eligibility_reasons(config: Mapping[str, Any]) -> list[str]:
    """The exclusion reasons of the enabled rules, in the order the rules are applied.

    A rule is enabled when its configuration asks for it: the window when a bound is set,
    the age rule unless ``min_age`` is null, the diagnosis and first-episode rules by their
    flags, the session rule when the study has a sessions table, one rule per row filter, and
    the target trial's rule as :func:`target_trial_rule_enabled` says.
    """
    elig = config.get("eligibility", {})
    reasons = []
    if _has_window(config):
        reasons.append(REASON_WINDOW)
    if elig.get("min_age", 18) is not None:
        reasons.append(_age_reason(config))
    if elig.get("require_clbp_code", True):
        reasons.append(REASON_CLBP)
    if elig.get("first_episode_only", True):
        reasons.append(REASON_REPEAT)
    if _has_sessions(config):
        reasons.append(REASON_NO_SESSION)
    reasons += [filter_reason(spec) for spec in row_filters(config)]
    if target_trial_rule_enabled(config):
        reasons.append(REASON_UNTRAINED)
    return reasons


# --------------------------------------------------------------------------------------------
# Age
# --------------------------------------------------------------------------------------------


def _anniversary(birth: pd.Series, year: pd.Series) -> pd.Series:
    """Date of the birthday in ``year``; 29 February becomes 1 March in non-leap years."""
    month = birth.dt.month.to_numpy()
    day = birth.dt.day.to_numpy()
    year = year.to_numpy()
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    shift = (month == 2) & (day == 29) & ~leap
    month = np.where(shift, 3, month)
    day = np.where(shift, 1, day)
    parts = pd.DataFrame({"year": year, "month": month, "day": day}, index=birth.index)
    return pd.to_datetime(parts)


def age_in_years(birth: pd.Series, at: pd.Series) -> pd.Series:
    """Age as a float: completed years plus the elapsed fraction of the current year of life."""
    done = completed_years(birth, at)
    last = _anniversary(birth, birth.dt.year + done)
    following = _anniversary(birth, birth.dt.year + done + 1)
    fraction = (at - last).dt.days / (following - last).dt.days
    return (done + fraction).astype("float64")


# --------------------------------------------------------------------------------------------
# Result object
# --------------------------------------------------------------------------------------------


@dataclass
class EligibilityResult:
    """The outcome of :func:`apply_eligibility`.

    Attributes
    ----------
    decisions : DataFrame
        One row per cleaned episode: ``episode_id, patient_id, record_id, age, eligible,
        reason`` (reason empty for eligible episodes).
    cohort : DataFrame
        The eligible episodes: the cleaned patients columns plus ``age``.
    ledger : DataFrame
        The final ledger (``table, record_id, fate, reason, step``), one row per raw record.
    flow : DataFrame
        Patient-episode flow counts up to eligibility (``step, description, n, n_excluded,
        reason``), computed from ``ledger``.
    reasons : list of str
        The exclusion reasons of the enabled rules, in rule order.
    """

    decisions: pd.DataFrame
    cohort: pd.DataFrame
    ledger: pd.DataFrame
    flow: pd.DataFrame
    reasons: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Per-episode decisions (one row per cleaned episode), for code."""
        return self.decisions.copy()

    def summary(self) -> str:
        """The flow in plain words, for people."""
        counts = self.decisions.loc[~self.decisions["eligible"], "reason"].value_counts()
        lines = [
            f"Eligibility: {len(self.cohort)} of {len(self.decisions)} cleaned episodes eligible.",
        ]
        lines += [f"  excluded, {r}: {int(counts.get(r, 0))}" for r in self.reasons]
        fates = self.ledger.groupby(["table", "fate"], observed=True).size()
        lines.append("Ledger fates (records):")
        lines += [f"  {t} {f}: {int(n)}" for (t, f), n in fates.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Validation of inputs
# --------------------------------------------------------------------------------------------


def _table_record_keys(tables: pd.Series, record_ids: pd.Series) -> np.ndarray:
    """One integer per (table, record_id), for fast duplicate checks and lookups."""
    table_code, _ = pd.factorize(tables.astype("str"))
    return table_code.astype(np.int64) * (2**40) + record_ids.to_numpy(dtype=np.int64)


def _check_clean_ledger(ledger: pd.DataFrame, source: str) -> None:
    require_columns(ledger, LEDGER_COLUMNS, source)
    unknown_table = ~ledger["table"].isin(TABLES)
    if unknown_table.any():
        raise DataError(
            source, f"table must be one of {', '.join(TABLES)}", column="table",
            rows=ledger.loc[unknown_table, "record_id"].head(5).tolist(),
        )
    unknown = ~ledger["fate"].isin(FATES)
    if unknown.any():
        raise DataError(
            source, f"fate must be one of {', '.join(FATES)}", column="fate",
            rows=ledger.loc[unknown, "record_id"].head(5).tolist(),
        )
    keys = pd.Series(_table_record_keys(ledger["table"], ledger["record_id"]))
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        rows = (ledger.loc[duplicated, "table"].astype(str) + " record "
                + ledger.loc[duplicated, "record_id"].astype(str)).unique()
        raise DataError(
            source, "the ledger must hold exactly one row per raw record", column="record_id",
            rows=rows[:5],
        )


def _check_tables_against_ledger(
    tables: Mapping[str, pd.DataFrame], ledger: pd.DataFrame, sources: Mapping[str, str]
) -> None:
    """Every cleaned record must be a surviving record of the cleaning ledger."""
    surviving = ledger.loc[ledger["fate"].isin(SURVIVING_FATES), ["table", "record_id"]]
    for table in ("patients", "sessions", "outcomes"):
        ids = tables[table]["record_id"].to_numpy(dtype=np.int64)
        known = surviving.loc[surviving["table"] == table, "record_id"].to_numpy(dtype=np.int64)
        orphans = np.unique(ids[~np.isin(ids, known)])
        if len(orphans):
            raise DataError(
                sources[table],
                "cleaned records absent from the cleaning ledger (or marked dropped there); "
                "the cleaned tables and the ledger come from different runs",
                column="record_id", rows=orphans[:5].tolist(),
                hint="Rerun `trial-analysis clean`.",
            )


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


def _columns_for_rules(config: Mapping[str, Any], patients: pd.DataFrame) -> list[str]:
    """Patient columns the enabled rules read."""
    elig = config.get("eligibility", {})
    columns = []
    if _has_window(config) or elig.get("first_episode_only", True):
        columns.append("referral_date")
    if elig.get("min_age", 18) is not None and "age" not in patients.columns:
        columns += ["birth_date", "referral_date"]
    if elig.get("require_clbp_code", True):
        columns.append("diagnosis_codes")
    return list(dict.fromkeys(columns))


def _first_failing_rule(
    config: Mapping[str, Any], patients: pd.DataFrame, sessions: pd.DataFrame,
    therapists: pd.DataFrame | None, sources: Mapping[str, str],
) -> np.ndarray:
    """Per episode, 0 if every rule passes, else 1 + the index of the first failing rule in
    :func:`eligibility_reasons`."""
    elig = config.get("eligibility", {})
    codes = config.get("codes", {})
    reasons = eligibility_reasons(config)
    rule = np.zeros(len(patients), dtype=np.int8)

    def fail(mask: pd.Series | np.ndarray, reason: str) -> None:
        # Only episodes without a failed rule yet: the first failing rule wins.
        rule[np.asarray(mask, dtype=bool) & (rule == 0)] = reasons.index(reason) + 1

    if _has_window(config):
        referral = patients["referral_date"]
        outside = np.zeros(len(patients), dtype=bool)
        if elig.get("window_start") is not None:
            outside |= (referral < pd.Timestamp(elig["window_start"])).to_numpy()
        if elig.get("window_end") is not None:
            outside |= (referral > pd.Timestamp(elig["window_end"])).to_numpy()
        fail(outside, REASON_WINDOW)

    min_age = elig.get("min_age", 18)
    if min_age is not None:
        # Missing age (given directly and left empty) cannot show eligibility: excluded.
        # Completed years (floor of age) against the limit; a missing age given directly
        # cannot show eligibility, so it fails the rule.
        fail(~(np.floor(patients["age"]) >= min_age).to_numpy(dtype=bool), _age_reason(config))

    if elig.get("require_clbp_code", True):
        clbp = has_any_code(
            patients["diagnosis_codes"], codes.get("clbp_diagnoses", []),
            codes.get("separator", ";"),
        )
        fail(~clbp, REASON_CLBP)

    if elig.get("first_episode_only", True):
        person, _ = pd.factorize(patients["patient_id"].astype("str"))
        remaining = rule == 0
        episodes_left = np.bincount(person[remaining], minlength=person.max() + 1)
        # Only patients with several remaining episodes need ordering (usually few).
        several = remaining & (episodes_left[person] > 1)
        candidates = patients.loc[several, ["referral_date", "episode_id"]].assign(
            person=person[several])
        ordered = candidates.sort_values(["person", "referral_date", "episode_id"])
        later = ordered.index[ordered["person"].duplicated(keep="first")]
        fail(patients.index.isin(later), REASON_REPEAT)

    if _has_sessions(config):
        attended = is_member(patients["episode_id"], pd.unique(
            sessions["episode_id"].astype("str").to_numpy(dtype=object)))
        fail(~attended, REASON_NO_SESSION)
    for spec in row_filters(config):
        fail(~_passes_filter(patients, spec, sources["patients"]), filter_reason(spec))
    if target_trial_rule_enabled(config):
        fail(~_trained_at_time_zero(patients, sessions, therapists, sources), REASON_UNTRAINED)
    return rule


def _passes_filter(patients: pd.DataFrame, spec: Mapping[str, Any], source: str) -> np.ndarray:
    """Per episode: does it pass the row filter ``spec`` (``column`` with ``keep``/``drop``).

    Values are compared as numbers when the column is numeric, else as text. A value the
    filter names that no episode has is a mistake (a misspelt arm, a code of another file),
    so it stops the run rather than filtering nothing.
    """
    column = str(spec["column"])
    kind, wanted = _filter_values(spec)
    if column not in patients.columns:
        close = difflib.get_close_matches(column, [str(c) for c in patients.columns], n=1)
        raise DataError(
            source, f"eligibility.filters names a column the cleaned patients table lacks "
            f"(filter {kind})", column=column,
            hint=f"Did you mean '{close[0]}'?" if close else
            "Columns present: " + ", ".join(map(str, patients.columns)))
    values = patients[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = pd.to_numeric(pd.Series(wanted, dtype="object"), errors="coerce")
        if numbers.isna().any():
            raise DataError(
                source, f"eligibility.filters {kind}: the column is numeric but the filter "
                f"gives {[w for w, n in zip(wanted, numbers, strict=True) if pd.isna(n)]}",
                column=column)
        present = values.to_numpy(dtype="float64", na_value=np.nan)
        targets = numbers.to_numpy(dtype="float64")
        hit = np.isin(present, targets)
        found = np.isin(targets, present)
    else:
        text = values.astype("str")
        targets_text = [str(w) for w in wanted]
        hit = text.isin(targets_text).fillna(False).to_numpy(dtype=bool) & values.notna(
            ).to_numpy(dtype=bool)
        found = np.isin(targets_text, text.dropna().unique())
    if not found.all():
        distinct = sorted(map(str, pd.unique(values.dropna())))
        raise DataError(
            source, f"eligibility.filters {kind}: value(s) "
            f"{[w for w, f in zip(wanted, found, strict=True) if not f]} never occur",
            column=column,
            hint="Values present: " + ", ".join(distinct[:20])
            + (" ..." if len(distinct) > 20 else ""))
    return hit if kind == "keep" else ~hit


def _trained_at_time_zero(
    patients: pd.DataFrame, sessions: pd.DataFrame, therapists: pd.DataFrame | None,
    sources: Mapping[str, str],
) -> np.ndarray:
    """Per episode: was the therapist of its first session trained on or before that day.

    Time zero is the first session, the point at which a trial would have enrolled and
    assigned the patient; the therapist is the one who saw the patient then, known at time
    zero (the primary therapist is only known once the episode ends). Ties on the first date
    go to the smallest ``therapist_id``. Episodes without a session fail (rule 5 has already
    excluded them when the study has sessions).
    """
    if therapists is None:
        raise DataError(sources["therapists"], "cleaned table not given (the target trial's "
                        "trained-therapist rule needs the therapists' training dates)")
    require_columns(therapists, ("therapist_id", "etmi_training_date"), sources["therapists"])
    require_columns(sessions, ("episode_id", "therapist_id", "session_date"),
                    sources["sessions"])
    episode = key_positions(sessions["episode_id"], patients["episode_id"])
    mine = episode >= 0
    first = pd.DataFrame({
        "episode": episode[mine],
        "date": pd.to_datetime(sessions.loc[mine, "session_date"]).to_numpy(),
        "therapist": sessions.loc[mine, "therapist_id"].astype("str").to_numpy(dtype=object),
    }).sort_values(["episode", "date", "therapist"], kind="mergesort").drop_duplicates(
        "episode", keep="first")
    ids = therapists["therapist_id"].astype("str")
    where = key_positions(first["therapist"], ids)
    if (where < 0).any():
        raise DataError(
            sources["sessions"], "session therapist not in the therapists table",
            column="therapist_id", rows=first.loc[where < 0, "therapist"].head(5).tolist(),
            hint="The cleaning step should have dropped these sessions; rerun `clean`.")
    trained_on = pd.to_datetime(therapists["etmi_training_date"]).to_numpy()[where]
    ok = np.zeros(len(patients), dtype=bool)
    # NaT (never trained) compares False: such episodes fail.
    ok[first["episode"].to_numpy()] = trained_on <= first["date"].to_numpy()
    return ok


def _excluded_records(
    tables: Mapping[str, pd.DataFrame], patients: pd.DataFrame, rule: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per table: record ids of cleaned records of excluded episodes and their rule codes."""
    excluded = rule > 0
    episode_ids = patients["episode_id"][excluded]
    episode_rule = rule[excluded]
    records = {}
    for table in ("patients", "sessions", "outcomes"):
        frame = tables[table]
        position = key_positions(frame["episode_id"], episode_ids)
        hit = position >= 0
        records[table] = (frame["record_id"].to_numpy(dtype=np.int64)[hit],
                          episode_rule[position[hit]])
    return records


def _final_ledger(
    clean_ledger: pd.DataFrame, excluded: Mapping[str, tuple[np.ndarray, np.ndarray]],
    reasons: Sequence[str],
) -> pd.DataFrame:
    ledger = clean_ledger[LEDGER_COLUMNS].reset_index(drop=True)
    ledger["record_id"] = ledger["record_id"].astype("int64")
    record_ids = ledger["record_id"].to_numpy()
    rule = np.zeros(len(ledger), dtype=np.int8)
    for name, (ids, codes) in excluded.items():
        if len(ids) == 0:
            continue
        # A dense lookup from record id to rule code (record ids are raw row numbers).
        lookup = np.zeros(max(int(ids.max()), int(record_ids.max(initial=0))) + 1, dtype=np.int8)
        lookup[ids] = codes
        in_table = (ledger["table"] == name).to_numpy(dtype=bool)
        rule[in_table] = lookup[record_ids[in_table]]
    turn = (rule > 0) & ledger["fate"].isin(SURVIVING_FATES).to_numpy()
    texts = np.array(["", *(EXCLUDED_PREFIX + r for r in reasons)], dtype=object)
    keep = ~turn
    ledger["fate"] = ledger["fate"].astype("str").where(keep, "excluded")
    # From codes, so the text column is built from a handful of strings, not row by row.
    new_reason = pd.Series(pd.Categorical.from_codes(rule, categories=texts)).astype("str")
    ledger["reason"] = ledger["reason"].astype("str").where(keep, new_reason)
    ledger["step"] = ledger["step"].astype("str").where(keep, "eligibility")
    ledger["table"] = ledger["table"].astype("str")
    return ledger


# Cleaning reasons that name one record's row or value, and the aggregate a reader is shown.
AGGREGATE_REASONS = (
    (r"^exact duplicate of row \d+$", "exact duplicate of another record"),
    (r"^(.*) as row \d+$", r"\1 as another record"),
    (r"^score -?[\d.]+ outside .*$", "score outside the instrument's range"),
    (r"^(\w+)_id '[^']*' not in the (\w+) table$", r"\1 ID not in the \2 table"),
    (r"^(\w+) '[^']*' not in the (\w+) table$", r"\1 not in the \2 table"),
)
# Record-level fates of the other tables, as the flow describes them (patients' are boxes).
RECORD_FATES = {"dropped": "records dropped", "value_set_missing": "values set missing",
                "repaired": "records repaired"}


def _generic_reason(reasons: pd.Series) -> pd.Series:
    """Group cleaning reasons that differ only in row numbers or quoted values.

    Known per-record reasons get a readable aggregate ("exact duplicate of another record");
    any other reason has its numbers and quoted values generalised.
    """
    generic = reasons.astype("str")
    known = pd.Series(False, index=generic.index)
    for pattern, text in AGGREGATE_REASONS:
        hit = generic.str.match(pattern) & ~known
        generic = generic.where(~hit, generic.str.replace(pattern, text, regex=True))
        known |= hit
    numbered = generic.str.replace(r"\d+", "N", regex=True).str.replace(
        r"'[^']*'", "'...'", regex=True)
    return generic.where(known, numbered)


def record_cleaning_rows(ledger: pd.DataFrame) -> list[dict[str, Any]]:
    """Flow rows (step ``records``) for cleaning below the patient level, from the ledger.

    One row per table, fate (dropped, values set missing, repaired; for ``patients`` only the
    last two: a dropped patient record is counted in the patient flow) and aggregate reason,
    most frequent first: ``n`` is the table's records in the extract, ``n_excluded`` the
    records affected. Records of excluded patients are not counted here:
    the patient's exclusion accounts for them.
    """
    rows: list[dict[str, Any]] = []
    for table in sorted(set(ledger["table"].astype("str"))):
        records = ledger.loc[ledger["table"] == table]
        for fate, text in RECORD_FATES.items():
            if table == "patients" and fate == "dropped":
                continue  # a dropped patient record is a box of the patient flow
            reasons = _generic_reason(records.loc[records["fate"] == fate, "reason"].fillna(""))
            counts = reasons.value_counts().rename_axis("reason").reset_index(name="count")
            counts = counts.sort_values(["count", "reason"], ascending=[False, True])
            for reason, count in zip(counts["reason"], counts["count"], strict=True):
                rows.append({"step": "records",
                             "description": f"{table.removesuffix('s')} {text}",
                             "n": len(records), "n_excluded": int(count),
                             "reason": reason or "no reason given"})
    return rows


def flow_from_ledger(ledger: pd.DataFrame, reasons: Sequence[str]) -> pd.DataFrame:
    """Patient-episode flow up to eligibility, counted from the ledger's ``patients`` rows.

    Rows, in order: the extract; one row per cleaning reason (most frequent first); the
    cleaned episodes; the record-level cleaning of the other tables (step ``records``, see
    :func:`record_cleaning_rows`); one row per eligibility rule in rule order (zero counts
    included, so every rule appears in the diagram); the eligible patients. ``n`` is the number of
    episodes remaining after the row, ``n_excluded`` the number the row removed.
    """
    patients = ledger.loc[ledger["table"] == "patients"]
    rows: list[dict[str, Any]] = []
    remaining = len(patients)
    rows.append({"step": "extract", "description": "patient episodes in the extract",
                 "n": remaining, "n_excluded": pd.NA, "reason": pd.NA})

    dropped = _generic_reason(patients.loc[patients["fate"] == "dropped", "reason"].fillna(""))
    counts = dropped.value_counts()
    counts = counts.rename_axis("reason").reset_index(name="count")
    counts = counts.sort_values(["count", "reason"], ascending=[False, True])
    for reason, count in zip(counts["reason"], counts["count"], strict=True):
        remaining -= int(count)
        rows.append({"step": "clean", "description": "dropped in cleaning", "n": remaining,
                     "n_excluded": int(count), "reason": reason or "no reason given"})
    rows.append({"step": "clean", "description": "patient episodes after cleaning",
                 "n": remaining, "n_excluded": pd.NA, "reason": pd.NA})
    rows += record_cleaning_rows(ledger)

    excluded = patients.loc[patients["fate"] == "excluded", "reason"].astype("str")
    excluded = excluded.str.removeprefix(EXCLUDED_PREFIX).value_counts()
    for reason in reasons:
        count = int(excluded.get(reason, 0))
        remaining -= count
        rows.append({"step": "eligibility", "description": "excluded as ineligible",
                     "n": remaining, "n_excluded": count, "reason": reason})
    rows.append({"step": "eligibility", "description": "eligible patients", "n": remaining,
                 "n_excluded": pd.NA, "reason": pd.NA})
    return make_flow_frame(rows)


def make_flow_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A flow table with the contract's columns and dtypes."""
    flow = pd.DataFrame(list(rows), columns=FLOW_COLUMNS)
    flow["n"] = flow["n"].astype("Int64")
    flow["n_excluded"] = flow["n_excluded"].astype("Int64")
    for column in ("step", "description", "reason"):
        flow[column] = flow[column].astype("str")
    return flow


def apply_eligibility(
    config: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    clean_ledger: pd.DataFrame,
    sources: Mapping[str, str] | None = None,
) -> EligibilityResult:
    """Apply the eligibility rules to the cleaned tables.

    Parameters
    ----------
    config : mapping
        The validated study configuration.
    tables : mapping of str to DataFrame
        Cleaned ``patients``, ``sessions`` and ``outcomes`` (``therapists`` optional), in the
        ``clean/{table}.parquet`` format of the data contract.
    clean_ledger : DataFrame
        The cleaning ledger (``table, record_id, fate, reason, step``).
    sources : mapping of str to str, optional
        File names used in error messages, per table and ``"ledger"``.

    Returns
    -------
    EligibilityResult

    Raises
    ------
    DataError
        A required column is missing, dates needed for the rules are missing, the tables and
        the ledger disagree, or no episode is eligible.
    """
    sources = {**{t: f"clean/{t}.parquet" for t in TABLES}, "ledger": "clean_ledger.parquet",
               **(sources or {})}
    for table in ("patients", "sessions", "outcomes"):
        if table not in tables:
            raise DataError(sources[table], "cleaned table not given")
        require_columns(tables[table], REQUIRED_COLUMNS[table], sources[table])
    _check_clean_ledger(clean_ledger, sources["ledger"])
    _check_tables_against_ledger(tables, clean_ledger, sources)

    patients = tables["patients"].reset_index(drop=True)
    # The enabled rules decide which dates and codes must be there.
    require_columns(patients, _columns_for_rules(config, patients), sources["patients"])
    dates = [c for c in ("referral_date", "birth_date") if c in patients.columns]
    for column in dates:
        values = pd.to_datetime(patients[column], errors="coerce")
        if values.isna().any():
            raise DataError(
                sources["patients"], "a date needed for eligibility is missing or not a date",
                column=column, rows=patients.loc[values.isna(), "record_id"].head(5).tolist(),
                hint="The cleaning step should have dropped such rows; rerun `clean`.",
            )
        patients[column] = values
    duplicated = patients["episode_id"].duplicated(keep=False)
    if duplicated.any():
        raise DataError(
            sources["patients"], "episode_id must be unique after cleaning", column="episode_id",
            rows=patients.loc[duplicated, "record_id"].head(5).tolist(),
        )

    reasons = eligibility_reasons(config)
    if {"birth_date", "referral_date"} <= set(patients.columns):
        age = age_in_years(patients["birth_date"], patients["referral_date"])
    elif "age" in patients.columns:
        age = pd.to_numeric(patients["age"], errors="coerce").astype("float64")
    else:
        age = pd.Series(np.nan, index=patients.index, dtype="float64")
    patients["age"] = age
    rule = _first_failing_rule(config, patients, tables["sessions"], tables.get("therapists"),
                               sources)
    eligible = pd.Series(rule == 0, index=patients.index)
    reason = pd.Series(np.array([None, *reasons], dtype=object)[rule], index=patients.index,
                       dtype="str")
    decisions = pd.DataFrame({
        "episode_id": patients["episode_id"],
        "patient_id": patients["patient_id"],
        "record_id": patients["record_id"].astype("int64"),
        "age": age,
        "eligible": eligible.to_numpy(dtype=bool),
        "reason": reason,
    })
    if not eligible.any():
        counts = reason.value_counts()
        raise DataError(
            sources["patients"], "no episode meets the eligibility rules",
            hint="Excluded: " + "; ".join(f"{r}: {int(counts.get(r, 0))}" for r in reasons)
            + ". Check the eligibility section of the config.",
        )

    cohort = patients.loc[eligible]
    cohort = cohort.sort_values("episode_id").reset_index(drop=True)
    ledger = _final_ledger(clean_ledger, _excluded_records(tables, patients, rule), reasons)
    flow = flow_from_ledger(ledger, reasons)
    # The flow is counted from the ledger; it must land on the cohort computed from the rules.
    if int(flow["n"].iloc[-1]) != len(cohort):
        raise DataError(
            sources["ledger"],
            f"the ledger counts {int(flow['n'].iloc[-1])} eligible patient records but the "
            f"rules give {len(cohort)}; the ledger and the cleaned patients disagree",
        )
    return EligibilityResult(decisions=decisions, cohort=cohort, ledger=ledger, flow=flow,
                             reasons=reasons)


def read_clean_tables(
    clean: str | Path, tables: Sequence[str] = TABLES
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Read cleaned tables from the folder ``clean``; return them and their file names."""
    frames, sources = {}, {}
    for table in tables:
        path = clean_table_path(clean, table)
        sources[table] = str(path)
        frames[table] = read_parquet_input(path, f"cleaned {table}, written by `clean`")
    return frames, sources


def run_eligibility(
    config: Mapping[str, Any],
    clean: str | Path,
    clean_ledger: str | Path,
    cohort: str | Path,
    ledger: str | Path,
    flow: str | Path,
) -> EligibilityResult:
    """Command-line step: read cleaned tables and ledger, write cohort, ledger and flow.

    Nothing is written unless every check passes.
    """
    names = ("patients", "sessions", "outcomes")
    if target_trial_rule_enabled(config):
        names = ("therapists", *names)
    tables, sources = read_clean_tables(clean, names)
    sources["ledger"] = str(clean_ledger)
    ledger_frame = read_parquet_input(clean_ledger, "cleaning ledger, written by `clean`")
    result = apply_eligibility(config, tables, ledger_frame, sources=sources)
    # The file's variable labels (a SAS, Stata or SPSS file) travel on to Table 1.
    if "variable_labels" in tables["patients"].attrs:
        result.cohort.attrs["variable_labels"] = tables["patients"].attrs["variable_labels"]
    io.write_parquet(result.cohort, cohort)
    io.write_parquet(result.ledger, ledger)
    io.write_csv(result.flow, flow)
    return result
