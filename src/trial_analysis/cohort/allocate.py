"""Allocation: arm, primary therapist, sessions, fidelity, scores and complete-case flags.

Rules (``docs/data-contracts.md``, "Allocation"), per eligible episode:

* **Primary therapist**: the therapist with most sessions in the episode; ties go to the
  earliest first session, then the smallest ``therapist_id``.
* **Arm** (``allocation.rule: etmi_code_by_trained_therapist``): intervention if any session
  carries ``codes.etmi`` documented by a therapist whose ``etmi_training_date`` is on or
  before the session date (a *counted* ETMI code; ``arm_rule`` ``ETMI code by trained
  therapist``); otherwise control, with ``arm_rule`` ``ETMI code by untrained therapist`` (an
  ETMI code exists but none counted: the therapist was never trained, or trained only after
  the session) or ``no ETMI code``. With ``allocation.rule: column`` the arm is read from
  the cohort column ``allocation.column`` (``arm given in data``).
* **Fidelity** of an intervention episode: 1 if no session of the episode carries a code from
  ``codes.fidelity_forbidden``, else 0; missing for control episodes.
* **Scores**: ``{outcome}_baseline`` / ``{outcome}_followup`` from the cleaned outcomes at
  ``timepoints.baseline`` / ``timepoints.followup``; missing stays missing.
* **Complete case** for an outcome: both scores present; ``complete_case``: complete for all
  ``complete_case.outcomes``.

Implementation outcomes (RE-AIM): reach = trained / invited therapists (the therapists
table); therapist adoption = trained therapists who documented a counted ETMI code in at
least one eligible episode / trained; patient adoption = intervention / eligible patients;
fidelity = faithful / intervention episodes. Per therapist, an intervention episode is
attributed to every therapist who documented a counted ETMI code in it (the clinician(s) who
delivered ETMI), so a therapist is an adopter exactly when ``etmi_episodes > 0``.

Everything is computed with grouped, vectorised pandas operations (no per-patient loops) so
the step scales to registry-sized extracts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trial_analysis import io
from trial_analysis.cohort.disclosure import (
    reported_flow,
    reported_implementation,
    reported_therapists,
)
from trial_analysis.cohort.eligibility import (
    FLOW_COLUMNS,
    has_any_code,
    key_positions,
    make_flow_frame,
    read_clean_tables,
    read_parquet_input,
)
from trial_analysis.columns import (
    ARM_CODE,
    COVARIATES,
    analysis_columns,
    declared_variables,
)
from trial_analysis.config import (
    all_timepoint_labels,
    arm_levels,
    has_table,
    outcome_names,
    primary_followup,
    score_columns,
)
from trial_analysis.errors import DataError
from trial_analysis.io import require_columns
from trial_analysis.privacy import min_cell_count

RULE_TRAINED = "ETMI code by trained therapist"
RULE_UNTRAINED = "ETMI code by untrained therapist"
RULE_NO_CODE = "no ETMI code"
RULE_COLUMN = "arm given in data"

IMPLEMENTATION_COLUMNS = ["measure", "numerator", "denominator", "percent", "definition"]
FIDELITY_COLUMNS = ["therapist_id", "clinic_id", "trained", "adopter", "etmi_episodes",
                    "faithful_episodes", "fidelity"]

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "cohort": ("patient_id", "episode_id"),
    "therapists": ("therapist_id", "clinic_id", "etmi_training_date"),
    "sessions": ("session_id", "episode_id", "therapist_id", "session_date", "treatment_codes"),
}


def complete_case_outcomes(config: Mapping[str, Any]) -> list[str]:
    """Outcomes that define a complete case (default: the primary outcome)."""
    listed = config.get("complete_case", {}).get("outcomes")
    return list(listed) if listed else [config["primary_outcome"]]


@dataclass
class AllocationResult:
    """The outcome of :func:`allocate_arms`.

    Attributes
    ----------
    analysis : DataFrame
        One row per eligible patient, the columns of :func:`analysis_columns`.
    implementation : DataFrame
        ``measure, numerator, denominator, percent, definition`` for reach, therapist
        adoption, patient adoption and fidelity.
    therapist_fidelity : DataFrame
        One row per therapist: ``therapist_id, clinic_id, trained, adopter, etmi_episodes,
        faithful_episodes, fidelity``.
    flow : DataFrame
        The allocation rows of the flow table (arms and complete cases).
    labels : tuple of str
        ``(intervention, control)`` arm labels; with three or more arms, allocation.arms.
    """

    analysis: pd.DataFrame
    implementation: pd.DataFrame
    therapist_fidelity: pd.DataFrame
    flow: pd.DataFrame
    labels: tuple[str, ...]

    def to_frame(self) -> pd.DataFrame:
        """The analysis table (one row per eligible patient), for code."""
        return self.analysis.copy()

    def summary(self) -> str:
        """Arms, allocation rules, complete cases and implementation outcomes, for people."""
        a = self.analysis
        lines = [f"Allocation: {len(a)} eligible patients."]
        for label in self.labels:
            in_arm = a["arm"] == label
            lines.append(f"  {label}: {int(in_arm.sum())} patients, "
                         f"{int(a.loc[in_arm, 'complete_case'].sum())} complete cases")
        lines.append("Allocation rules:")
        for rule, n in a["arm_rule"].value_counts().sort_index().items():
            lines.append(f"  {rule}: {int(n)}")
        lines.append("Implementation:")
        for row in self.implementation.itertuples(index=False):
            percent = "n/a" if pd.isna(row.percent) else f"{row.percent:.1f}%"
            lines.append(f"  {row.measure}: {row.numerator}/{row.denominator} ({percent})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _therapist_table(therapists: pd.DataFrame, source: str) -> pd.DataFrame:
    """Therapists sorted by id (so a position is also the id's rank), ids unique."""
    therapists = therapists[["therapist_id", "clinic_id", "etmi_training_date"]].copy()
    therapists["therapist_id"] = therapists["therapist_id"].astype("str")
    repeated = therapists["therapist_id"].duplicated(keep=False)
    if repeated.any():
        raise DataError(source, "therapist_id must be unique after cleaning",
                        column="therapist_id",
                        rows=therapists.loc[repeated, "therapist_id"].head(5).tolist())
    therapists["etmi_training_date"] = pd.to_datetime(therapists["etmi_training_date"])
    return therapists.sort_values("therapist_id", kind="mergesort").reset_index(drop=True)


def _cohort_visits(
    episodes: pd.Series, sessions: pd.DataFrame, therapists: pd.DataFrame,
    etmi: str, forbidden: Sequence[str], separator: str, sources: Mapping[str, str],
) -> pd.DataFrame:
    """Sessions of cohort episodes as integer positions, one row per session.

    Columns: ``episode`` (position in ``episodes``), ``therapist`` (position in the sorted
    therapists table), ``date``, ``etmi`` (the cell holds the ETMI code), ``counted`` (ETMI
    code by a therapist trained on or before the session date), ``forbidden`` (a
    fidelity-forbidden code). Integer keys keep grouping fast on ten million sessions.
    """
    episode = key_positions(sessions["episode_id"], episodes)
    mine = episode >= 0
    therapist = key_positions(sessions.loc[mine, "therapist_id"], therapists["therapist_id"])
    if (therapist < 0).any():
        unknown = sessions.loc[mine].loc[therapist < 0]
        raise DataError(
            sources["sessions"], "session therapist not in the therapists table",
            column="therapist_id",
            rows=unknown.get("record_id", unknown["session_id"]).head(5).tolist(),
            hint="The cleaning step should have dropped these sessions; rerun `clean`.",
        )
    codes = sessions.loc[mine, "treatment_codes"]
    date = pd.to_datetime(sessions.loc[mine, "session_date"]).to_numpy()
    if pd.isna(date).any():
        raise DataError(sources["sessions"], "session date missing after cleaning",
                        column="session_date")
    trained_on = therapists["etmi_training_date"].to_numpy()[therapist]
    has_etmi = has_any_code(codes, [etmi], separator).to_numpy()
    # NaT compares False, so never-trained therapists are never counted.
    counted = has_etmi & (trained_on <= date)
    return pd.DataFrame({
        "episode": episode[mine], "therapist": therapist, "date": date, "etmi": has_etmi,
        "counted": counted,
        "forbidden": has_any_code(codes, forbidden, separator).to_numpy(),
    })


def _primary_therapist(visits: pd.DataFrame, n_episodes: int) -> np.ndarray:
    """Position (in the sorted therapists table) of each episode's primary therapist."""
    per_pair = visits.groupby(["episode", "therapist"], sort=False).agg(
        n=("date", "size"), first=("date", "min")).reset_index()
    # Therapist positions follow the sorted ids, so the last key breaks ties by id.
    order = np.lexsort((per_pair["therapist"].to_numpy(), per_pair["first"].to_numpy(),
                        -per_pair["n"].to_numpy(), per_pair["episode"].to_numpy()))
    ranked = per_pair.iloc[order]
    best = ranked.drop_duplicates("episode", keep="first")
    primary = np.full(n_episodes, -1, dtype=np.int64)
    primary[best["episode"].to_numpy()] = best["therapist"].to_numpy()
    return primary


def _any_per_episode(visits: pd.DataFrame, column: str, n_episodes: int) -> np.ndarray:
    return np.bincount(visits["episode"].to_numpy(), weights=visits[column].to_numpy(),
                       minlength=n_episodes) > 0


def _arm_by_column(
    cohort: pd.DataFrame, column: str, levels: Sequence[str], source: str
) -> np.ndarray:
    """Arm code per cohort row from the patients column ``column``: the position of its label
    in ``levels`` (reference first; with two arms 1 = intervention, 0 = control)."""
    if column not in cohort.columns:
        close = difflib.get_close_matches(column, [str(c) for c in cohort.columns], n=1)
        hint = f"Did you mean '{close[0]}'?" if close else (
            "Columns present: " + ", ".join(map(str, cohort.columns)))
        raise DataError(source, "allocation.column names a column the patients table lacks",
                        column=column, hint=hint)
    values = cohort[column].astype("str")
    invalid = (~values.isin(levels) | values.isna()).to_numpy(dtype=bool)
    if invalid.any():
        where = cohort.loc[invalid]
        rows = where["record_id"] if "record_id" in where.columns else where["episode_id"]
        allowed = (f"the two arm labels '{levels[1]}' or '{levels[0]}'" if len(levels) == 2
                   else "the arms of allocation.arms " + ", ".join(f"'{a}'" for a in levels))
        raise DataError(
            source, f"values must be one of {allowed} "
            f"(found e.g. {values[invalid].fillna('<missing>').unique()[:3].tolist()})",
            column=column, rows=rows.head(5).tolist(),
        )
    return pd.Categorical(values, categories=list(levels)).codes.astype(np.int64)


def _scores(
    config: Mapping[str, Any], outcomes: pd.DataFrame, episodes: pd.Series, source: str
) -> pd.DataFrame:
    """Score columns per episode (indexed like ``episodes``): baseline and every follow-up.

    Columns as :func:`outcome_score_columns`; ``{outcome}_followup`` holds the primary
    follow-up.
    """
    names = outcome_names(config)
    labels = all_timepoint_labels(config)
    # Column of every (instrument, time point) pair: baseline, then each follow-up.
    targets = {}
    for name in names:
        targets[(name, labels[0])] = f"{name}_baseline"
        for label, column in score_columns(config, name).items():
            targets[(name, label)] = column
    wanted = list(targets.values())
    matrix = np.full((len(episodes), len(wanted)), np.nan)
    if {"instrument", "timepoint", "score"}.issubset(outcomes.columns):
        episode = key_positions(outcomes["episode_id"], episodes)
        # Column of each row: position of its (instrument, time point) pair among `wanted`.
        pair = outcomes["instrument"].astype("str") + "\x1f" + outcomes["timepoint"].astype(
            "str")
        column = key_positions(pair, [f"{n}\x1f{t}" for n, t in targets])
        score = outcomes["score"].to_numpy(dtype="float64", na_value=np.nan)
        use = (episode >= 0) & (column >= 0) & ~np.isnan(score)
        cell = pd.Series(episode[use] * len(wanted) + column[use])
        clash = cell.duplicated(keep=False).to_numpy()
        if clash.any():
            ids = outcomes.get("record_id", outcomes["episode_id"]).to_numpy()[use][clash]
            raise DataError(
                source, "more than one valid score for the same episode, instrument and time "
                "point (the cleaning step must stop on this)", column="score",
                rows=ids[:5].tolist(), hint="Rerun `trial-analysis clean`.",
            )
        matrix[episode[use], column[use]] = score[use]
    else:
        # Wide cleaned layout: {instrument}_{timepoint label} columns, one row per episode.
        raw_names = {f"{n}_{t}": targets[(n, t)] for n, t in targets}
        present = [c for c in raw_names if c in outcomes.columns]
        if not present:
            raise DataError(source, "no score columns: expected instrument, timepoint and score "
                            "(long layout) or {instrument}_{timepoint} columns (wide layout)",
                            column="score")
        episode = key_positions(outcomes["episode_id"], episodes)
        use = episode >= 0
        repeated = pd.Series(episode[use]).duplicated(keep=False).to_numpy()
        if repeated.any():
            raise DataError(source, "more than one wide outcomes row for the same episode",
                            column="episode_id",
                            rows=outcomes.loc[use, "episode_id"][repeated].head(5).tolist())
        for name in present:
            matrix[episode[use], wanted.index(raw_names[name])] = outcomes.loc[
                use, name].to_numpy(dtype="float64", na_value=np.nan)
    scores = pd.DataFrame(matrix, columns=wanted, index=episodes.index)
    primary = primary_followup(config)
    for name in names:
        scores[f"{name}_followup"] = scores[targets[(name, primary)]]
    return scores


def _implementation(
    therapists: pd.DataFrame, visits: pd.DataFrame, analysis: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Implementation outcomes table and per-therapist fidelity table."""
    n_therapists = len(therapists)
    trained = therapists["etmi_training_date"].notna().to_numpy()
    is_intervention = analysis["arm_intervention"].to_numpy() == 1
    faithful = (analysis["fidelity"] == 1).fillna(False).to_numpy(dtype=bool)

    # Intervention episodes attributed to every therapist who documented a counted ETMI code.
    delivered = visits.loc[visits["counted"], ["therapist", "episode"]].drop_duplicates()
    adopter = np.bincount(delivered["therapist"], minlength=n_therapists) > 0
    delivered = delivered.loc[is_intervention[delivered["episode"].to_numpy()]]
    etmi_episodes = np.bincount(delivered["therapist"], minlength=n_therapists)
    faithful_episodes = np.bincount(
        delivered["therapist"], weights=faithful[delivered["episode"].to_numpy()],
        minlength=n_therapists).astype(np.int64)
    table = pd.DataFrame({
        "therapist_id": therapists["therapist_id"],
        "clinic_id": therapists["clinic_id"],
        "trained": trained.astype(np.int64),
        "adopter": adopter.astype(np.int64),
        "etmi_episodes": etmi_episodes.astype(np.int64),
        "faithful_episodes": faithful_episodes,
    })
    # No intervention episodes: fidelity is undefined (missing), not 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        table["fidelity"] = np.where(etmi_episodes > 0, faithful_episodes / etmi_episodes,
                                     np.nan)

    n_trained = int(trained.sum())
    n_intervention = int(is_intervention.sum())
    measures = [
        ("reach", n_trained, n_therapists,
         "therapists trained in ETMI / therapists invited (the therapists table)"),
        ("therapist_adoption", int(adopter.sum()), n_trained,
         "trained therapists who documented an ETMI code on or after their training date in "
         "at least one eligible episode / trained therapists"),
        ("patient_adoption", n_intervention, len(analysis),
         "eligible patients in the intervention arm / eligible patients"),
        ("fidelity", int(faithful.sum()), n_intervention,
         "intervention episodes with no fidelity-forbidden code in any session / "
         "intervention episodes"),
    ]
    implementation = pd.DataFrame(measures, columns=["measure", "numerator", "denominator",
                                                     "definition"])
    implementation["percent"] = 100.0 * implementation["numerator"] / implementation[
        "denominator"].where(implementation["denominator"] > 0)
    implementation["measure"] = implementation["measure"].astype("str")
    implementation["definition"] = implementation["definition"].astype("str")
    return implementation[IMPLEMENTATION_COLUMNS], table[FIDELITY_COLUMNS]


def _allocation_flow(analysis: pd.DataFrame, labels: tuple[str, ...],
                     cc_outcomes: Sequence[str], *, randomised: bool = False,
                     populations: Sequence[str] = ("complete_case",)) -> pd.DataFrame:
    """The flow rows after eligibility: the two groups, then each analysed population.

    Wording follows the design: CONSORT's "allocated to {arm}" when randomised, STROBE's
    "{arm} group" for an observational cohort (nobody was allocated). Each analysed
    population is a level of boxes, overall and per arm, with the patients it leaves out:
    ``all_available`` (a baseline score of every complete-case outcome) before
    ``complete_case`` (also every follow-up score), so complete cases are counted from it.
    """
    rows: list[dict[str, Any]] = []
    for label in labels:
        rows.append({"step": "allocation",
                     "description": f"allocated to {label}" if randomised else f"{label} group",
                     "n": int((analysis["arm"] == label).sum()), "n_excluded": pd.NA,
                     "reason": pd.NA})
    outcomes_text = ", ".join(cc_outcomes)
    complete = analysis["complete_case"] == 1
    everyone = pd.Series(True, index=analysis.index)
    before, missing_reason = everyone, f"baseline or follow-up score missing ({outcomes_text})"
    if "all_available" in populations:
        baseline = analysis[[f"{name}_baseline" for name in cc_outcomes]].notna().all(axis=1)
        rows += _population_rows(analysis, labels, "all with a baseline analysed", baseline,
                                 everyone, f"baseline score missing ({outcomes_text})")
        before, missing_reason = baseline, f"follow-up score missing ({outcomes_text})"
    rows += _population_rows(analysis, labels, "complete cases analysed", complete, before,
                             missing_reason)
    return make_flow_frame(rows)


def _population_rows(analysis: pd.DataFrame, labels: tuple[str, ...], description: str,
                     included: pd.Series, before: pd.Series, reason: str
                     ) -> list[dict[str, Any]]:
    """One population's flow rows, overall then per arm: n and the patients left out."""
    rows = []
    for label in (None, *labels):
        in_arm = analysis["arm"] == label if label else pd.Series(True, index=analysis.index)
        rows.append({"step": "analysis",
                     "description": description + (f", {label}" if label else ""),
                     "n": int((included & in_arm).sum()),
                     "n_excluded": int((before & ~included & in_arm).sum()), "reason": reason})
    return rows


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def allocate_arms(
    config: Mapping[str, Any],
    cohort: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    sources: Mapping[str, str] | None = None,
) -> AllocationResult:
    """Build the analysis table and implementation outcomes for the eligible cohort.

    Parameters
    ----------
    config : mapping
        The validated study configuration.
    cohort : DataFrame
        The eligible cohort (``cohort.parquet``: cleaned patients columns plus ``age``).
    tables : mapping of str to DataFrame
        Cleaned ``therapists``, ``sessions`` and ``outcomes``.
    sources : mapping of str to str, optional
        File names used in error messages, per table and ``"cohort"``.

    Returns
    -------
    AllocationResult

    Raises
    ------
    DataError
        No eligible patients; an eligible episode without sessions; ``allocation.column``
        absent or holding other values than the two arm labels; one arm empty; no outcome
        score for any eligible patient; duplicate valid scores.
    """
    sources = {"cohort": "cohort.parquet", "therapists": "clean/therapists.parquet",
               "sessions": "clean/sessions.parquet", "outcomes": "clean/outcomes.parquet",
               **(sources or {})}
    alloc = config["allocation"]
    levels = arm_levels(config)
    # Flow and result labels: (intervention, control) with two arms, else the arms as listed.
    labels = (levels[1], levels[0]) if len(levels) == 2 else tuple(
        str(a) for a in alloc["arms"])
    codes = config.get("codes", {})
    separator = codes.get("separator", ";")
    with_sessions = has_table(config, "sessions")
    require_columns(cohort, REQUIRED_COLUMNS["cohort"], sources["cohort"])
    if with_sessions:
        require_columns(tables["sessions"], REQUIRED_COLUMNS["sessions"], sources["sessions"])
        if has_table(config, "therapists"):
            require_columns(tables["therapists"], REQUIRED_COLUMNS["therapists"],
                            sources["therapists"])
    require_columns(tables["outcomes"], ("episode_id",), sources["outcomes"])
    if cohort.empty:
        raise DataError(sources["cohort"], "no eligible patients: the cohort is empty",
                        hint="Check the eligibility section of the config and the flow table.")
    duplicated = cohort["episode_id"].duplicated(keep=False)
    if duplicated.any():
        raise DataError(sources["cohort"], "episode_id must be unique in the cohort",
                        column="episode_id",
                        rows=cohort.loc[duplicated, "episode_id"].head(5).tolist())

    # A canonical row order makes the output independent of the input row order.
    cohort = cohort.sort_values(["patient_id", "episode_id"], kind="mergesort")
    cohort = cohort.reset_index(drop=True)
    episodes = cohort["episode_id"].astype("str")
    n = len(cohort)
    if with_sessions:
        therapists = _therapist_table(_therapists_or_from_sessions(config, tables),
                                      sources["therapists"])
        visits = _cohort_visits(
            episodes, tables["sessions"], therapists, str(codes.get("etmi", "ETMI")),
            codes.get("fidelity_forbidden", []), separator, sources)
        n_sessions = np.bincount(visits["episode"].to_numpy(), minlength=n)
        if (n_sessions == 0).any():
            raise DataError(
                sources["cohort"], "an eligible episode has no session (eligibility rule 5 "
                "must exclude it); the cohort and the cleaned sessions come from different "
                "runs", column="episode_id", rows=episodes[n_sessions == 0].head(5).tolist(),
                hint="Rerun `trial-analysis eligibility`.",
            )
        counted = _any_per_episode(visits, "counted", n)
        any_etmi = _any_per_episode(visits, "etmi", n)
    else:
        therapists, visits = None, None
        counted = any_etmi = np.zeros(n, dtype=bool)
    if alloc.get("rule", "etmi_code_by_trained_therapist") == "column":
        code = _arm_by_column(cohort, alloc["column"], levels, sources["cohort"])
        intervention = code > 0
        rule = np.full(n, RULE_COLUMN, dtype=object)
        arm_source, arm_column = sources["cohort"], alloc["column"]
    else:
        intervention = counted
        code = counted.astype(np.int64)
        rule = np.where(counted, RULE_TRAINED, np.where(any_etmi, RULE_UNTRAINED, RULE_NO_CODE))
        arm_source, arm_column = sources["sessions"], "treatment_codes"
    for value, label in enumerate(levels):
        if not (code == value).any():
            raise DataError(
                arm_source, f"no eligible patient is allocated to arm '{label}'; the "
                "comparison needs both arms", column=arm_column,
                hint="Check codes.etmi, the therapists' training dates and allocation.rule.",
            )

    scores = _scores(config, tables["outcomes"], episodes, sources["outcomes"])
    if scores.isna().all().all():
        raise DataError(
            sources["outcomes"], "no outcome score for any eligible patient", column="score",
            hint="Check the instrument and time point labels (config outcomes and timepoints).",
        )

    analysis = pd.DataFrame({
        "patient_id": cohort["patient_id"].astype("str"),
        "episode_id": episodes,
        "arm": pd.Series(np.asarray(levels, dtype=object)[code], dtype="str"),
        # With k > 2 arms: 1 = any arm but the reference (the two-arm analyses that read it
        # are not run then; the outcome models read arm_code).
        "arm_intervention": intervention.astype("int64"),
        "arm_rule": pd.Series(rule, dtype="str"),
    })
    if len(levels) > 2:
        analysis[ARM_CODE] = code
    if with_sessions:
        primary = _primary_therapist(visits, n)
        analysis["therapist_id"] = therapists["therapist_id"].to_numpy()[primary]
        analysis["clinic_id"] = therapists["clinic_id"].astype("str").to_numpy()[primary]
        analysis["therapist_id"] = analysis["therapist_id"].astype("str")
        analysis["clinic_id"] = analysis["clinic_id"].astype("str")
        broken = _any_per_episode(visits, "forbidden", n)
        fidelity = pd.array(np.where(broken, 0, 1), dtype="Int64")
        fidelity[~intervention] = pd.NA
        session_counts = pd.array(n_sessions.astype("int64"), dtype="int64")
    else:
        # No sessions table: no therapist, no fidelity; attended sessions only when the
        # patients table reports a count.
        analysis["therapist_id"] = pd.Series(pd.NA, index=analysis.index, dtype="str")
        analysis["clinic_id"] = pd.Series(pd.NA, index=analysis.index, dtype="str")
        fidelity = pd.array([pd.NA] * n, dtype="Int64")
        session_counts = (cohort["n_sessions"].astype("Int64").array
                          if "n_sessions" in cohort.columns else pd.array([pd.NA] * n,
                                                                           dtype="Int64"))
    for column in [*COVARIATES, *declared_variables(config)]:
        # A built-in covariate the file does not have stays missing (the contract's columns
        # are fixed); the config check makes sure the analysis does not use it.
        analysis[column] = cohort[column] if column in cohort.columns else np.nan
    analysis["n_sessions"] = session_counts
    analysis["fidelity"] = fidelity
    analysis = pd.concat([analysis, scores], axis=1)
    names = outcome_names(config)
    for name in names:
        observed = [f"{name}_baseline", *score_columns(config, name).values()]
        analysis[f"complete_{name}"] = analysis[observed].notna().all(axis=1).astype("int64")
    cc = complete_case_outcomes(config)
    analysis["complete_case"] = analysis[[f"complete_{n}" for n in cc]].all(axis=1).astype(
        "int64")
    analysis = analysis[analysis_columns(config)]

    if with_sessions:
        implementation, therapist_fidelity = _implementation(therapists, visits, analysis)
    else:
        implementation = pd.DataFrame({c: pd.Series([], dtype="str" if c in (
            "measure", "definition") else "float64") for c in IMPLEMENTATION_COLUMNS})
        therapist_fidelity = pd.DataFrame({c: pd.Series([], dtype="str" if c.endswith(
            "_id") else "int64") for c in FIDELITY_COLUMNS})
    flow = _allocation_flow(
        analysis, labels, cc,
        randomised=config.get("study", {}).get("design") == "randomised",
        populations=config.get("analysis", {}).get("populations") or ["complete_case"])
    return AllocationResult(analysis=analysis, implementation=implementation,
                            therapist_fidelity=therapist_fidelity, flow=flow, labels=labels)


def _therapists_or_from_sessions(config: Mapping[str, Any],
                                 tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The therapists table, or (study without one) the therapists the sessions name."""
    if has_table(config, "therapists"):
        return tables["therapists"]
    ids = pd.unique(tables["sessions"]["therapist_id"].astype("str"))
    return pd.DataFrame({"therapist_id": pd.Series(sorted(ids), dtype="str"),
                         "clinic_id": pd.Series(pd.NA, index=range(len(ids)), dtype="str"),
                         "etmi_training_date": pd.NaT})


def _read_flow(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found (flow up to eligibility)",
                        hint="Run `trial-analysis eligibility` first.")
    try:
        flow = pd.read_csv(path, dtype={"step": "str", "description": "str",
                                        "reason": "str"})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"not a readable flow CSV ({exc})") from None
    require_columns(flow, FLOW_COLUMNS, str(path))
    return make_flow_frame(flow[FLOW_COLUMNS].to_dict("records"))


def run_allocate(
    config: Mapping[str, Any],
    cohort: str | Path,
    clean: str | Path,
    flow_in: str | Path,
    analysis: str | Path,
    flow: str | Path,
    implementation: str | Path,
    fidelity: str | Path,
) -> AllocationResult:
    """Command-line step: read cohort, cleaned tables and flow; write the allocate outputs.

    Nothing is written unless every check passes.
    """
    tables, sources = read_clean_tables(clean, ("therapists", "sessions", "outcomes"))
    sources["cohort"] = str(cohort)
    cohort_frame = read_parquet_input(cohort, "eligible cohort, written by `eligibility`")
    flow_before = _read_flow(flow_in)
    result = allocate_arms(config, cohort_frame, tables, sources=sources)
    if "variable_labels" in cohort_frame.attrs:  # the patients file's labels, for Table 1
        result.analysis.attrs["variable_labels"] = cohort_frame.attrs["variable_labels"]
    full_flow = make_flow_frame(
        pd.concat([flow_before, result.flow], ignore_index=True).to_dict("records"))
    io.write_parquet(result.analysis, analysis)
    # What people read: small cells suppressed, therapists and clinics by codes, not ids.
    k = min_cell_count(config)
    io.write_csv(reported_flow(full_flow, k), flow)
    io.write_csv(reported_implementation(result.implementation, k), implementation)
    io.write_csv(reported_therapists(result.therapist_fidelity, k), fidelity)
    return result
