"""Tests of the ``clean`` step: repairs, drops, the ledger and its one-fate-per-record property."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_fixtures import fixture_config, raw_extract, write_extract

from trial_analysis.config import BUILTIN_PLAUSIBILITY, load_schema, validate_config
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.ingest.clean import FATES, LEDGER_COLUMNS, CleanResult, clean_tables, run_clean


def _clean(tmp_path: Path, tables: dict[str, pd.DataFrame], file_format: str = "csv",
           layout: str = "long", **overrides) -> CleanResult:
    raw = write_extract(tables, tmp_path / "raw", file_format, layout)
    return clean_tables(fixture_config(file_format, layout, **overrides), raw)


def _fate(result: CleanResult, table: str, record_id: int) -> tuple[str, str]:
    ledger = result.ledger
    row = ledger[(ledger["table"] == table) & (ledger["record_id"] == record_id)]
    assert len(row) == 1
    return row["fate"].iloc[0], row["reason"].iloc[0]


def _assert_ledger_complete(result: CleanResult, raw_counts: dict[str, int]) -> None:
    ledger = result.ledger
    assert list(ledger.columns) == list(LEDGER_COLUMNS)
    assert set(ledger["fate"]) <= set(FATES)
    assert (ledger["step"] == "clean").all()
    for table, n in raw_counts.items():
        rows = ledger[ledger["table"] == table]
        assert len(rows) == n, table
        assert sorted(rows["record_id"]) == list(range(1, n + 1)), table
    kept = ledger[ledger["fate"] != "dropped"]
    for table in ("therapists", "patients", "sessions"):
        ids = set(kept.loc[kept["table"] == table, "record_id"])
        assert ids == set(result.tables[table]["record_id"]), table
    assert (ledger.loc[ledger["fate"] == "kept", "reason"] == "").all()
    assert (ledger.loc[ledger["fate"] != "kept", "reason"] != "").all()


def test_valid_extract_is_kept_whole(tmp_path):
    tables = raw_extract()
    result = _clean(tmp_path, tables)
    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})
    assert (result.ledger["fate"] == "kept").all()
    patients = result.tables["patients"]
    assert patients["referral_date"].dtype.kind == "M"
    assert patients["depression"].dtype == "Int64"
    assert patients["bmi"].isna().sum() == 2  # missing stays missing, never 0
    therapists = result.tables["therapists"]
    assert therapists.loc[therapists["therapist_id"] == "T003", "etmi_training_date"].isna().all()
    assert result.tables["outcomes"]["score"].notna().all()
    assert list(result.tables["sessions"].columns) == [
        "session_id", "episode_id", "therapist_id", "session_date", "treatment_codes", "record_id"
    ]


def test_repairs_duplicates_and_out_of_range(tmp_path, caplog):
    tables = raw_extract()
    tables["sessions"].loc[0, "treatment_codes"] = " etmi ; Edu"
    tables["sessions"].loc[1, "therapist_id"] = " t001"
    tables["patients"] = pd.concat([tables["patients"], tables["patients"].iloc[[2]]],
                                   ignore_index=True)  # raw row 13 copies row 3
    tables["outcomes"].loc[3, "score"] = "130"  # row 4: function, range 0-100
    with caplog.at_level(logging.INFO, logger="trial_analysis.ingest.clean"):
        result = _clean(tmp_path, tables)

    assert _fate(result, "sessions", 1) == (
        "repaired", "stray whitespace or case in treatment_codes")
    assert _fate(result, "sessions", 2) == ("repaired", "stray whitespace or case in therapist_id")
    sessions = result.tables["sessions"].set_index("record_id")
    assert sessions.loc[1, "treatment_codes"] == "ETMI;EDU"
    assert sessions.loc[2, "therapist_id"] == "T001"
    assert _fate(result, "patients", 13) == ("dropped", "exact duplicate of row 3")
    assert 13 not in set(result.tables["patients"]["record_id"])
    assert _fate(result, "outcomes", 4) == ("value_set_missing", "score 130 outside 0-100")
    outcomes = result.tables["outcomes"].set_index("record_id")
    assert np.isnan(outcomes.loc[4, "score"])  # kept as a row, score missing, not clipped
    assert "dropped 1 x exact duplicate" in caplog.text
    assert "value_set_missing 1 x score out of range" in caplog.text


def test_row_level_drops_and_cascade(tmp_path):
    tables = raw_extract()
    tables["sessions"].loc[5, "episode_id"] = "E777777"
    tables["patients"].loc[0, "referral_date"] = "2022-02-31"  # no such day: patient dropped
    result = _clean(tmp_path, tables, max_invalid_fraction=0.5)
    fate, reason = _fate(result, "patients", 1)
    assert fate == "dropped" and "referral_date '2022-02-31' is not a date" in reason
    assert _fate(result, "sessions", 6) == (
        "dropped", "episode_id 'E777777' not in the patients table")
    # E000001's sessions and outcomes refer to a patient row that was dropped.
    assert _fate(result, "sessions", 1)[1] == (
        "episode_id 'E000001' refers to a row dropped from the patients table")
    assert "E000001" not in set(result.tables["outcomes"]["episode_id"])
    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})


def test_second_date_format_is_a_repair(tmp_path):
    tables = raw_extract()
    tables["sessions"].loc[2, "session_date"] = "05/05/2022"
    result = _clean(tmp_path, tables, date_formats=["%Y-%m-%d", "%d/%m/%Y"])
    fate, reason = _fate(result, "sessions", 3)
    assert fate == "repaired" and "%d/%m/%Y" in reason
    date = result.tables["sessions"].set_index("record_id").loc[3, "session_date"]
    assert date == pd.Timestamp("2022-05-05")


def test_repeated_scores_of_an_unknown_episode_are_dropped_not_fatal(tmp_path):
    # Found by hypothesis: rows that are dropped for their reference cannot clash.
    tables = raw_extract()
    tables["outcomes"].loc[0:1, ["episode_id", "instrument", "timepoint"]] = [
        "E404404", "pain", "intake"]
    result = _clean(tmp_path, tables, max_invalid_fraction=0.5)
    assert _fate(result, "outcomes", 1)[0] == _fate(result, "outcomes", 2)[0] == "dropped"


def test_strict_mode_stops_on_a_row_level_problem(tmp_path):
    tables = raw_extract()
    tables["sessions"].loc[3, "episode_id"] = ""
    with pytest.raises(DataError, match="missing episode_id") as info:
        _clean(tmp_path, tables, strict=True)
    assert info.value.rows == [4]


def test_layouts_and_formats_agree(tmp_path):
    tables = raw_extract()
    tables["outcomes"].loc[0, "score"] = "-3"
    reference = _clean(tmp_path / "a", tables)
    parquet = _clean(tmp_path / "b", tables, file_format="parquet")
    wide = _clean(tmp_path / "c", tables, layout="wide")
    for name in ("therapists", "patients", "sessions", "outcomes"):
        pd.testing.assert_frame_equal(reference.tables[name], parquet.tables[name])
    pd.testing.assert_frame_equal(reference.ledger, parquet.ledger)

    key = ["episode_id", "instrument", "timepoint"]
    long = reference.tables["outcomes"].sort_values(key).reset_index(drop=True)
    from_wide = wide.tables["outcomes"].sort_values(key).reset_index(drop=True)
    columns = ["episode_id", "assessment_date", "instrument", "timepoint", "score"]
    pd.testing.assert_frame_equal(long[columns], from_wide[columns])
    assert from_wide["outcome_id"].iloc[0] == "E000001_fear_avoidance_discharge"
    n_wide_rows = tables["outcomes"]["episode_id"].nunique()
    assert (wide.ledger["table"] == "outcomes").sum() == n_wide_rows
    assert _fate(wide, "outcomes", 1) == (
        "value_set_missing", "function_intake -3 outside 0-100")


def test_column_mapping(tmp_path):
    tables = raw_extract()
    tables["patients"] = tables["patients"].rename(columns={"episode_id": "Referral ID"})
    raw = write_extract(tables, tmp_path / "raw")
    config = fixture_config()
    config["input"]["tables"]["patients"]["columns"] = {"episode_id": "Referral ID"}
    result = clean_tables(config, raw)
    assert "episode_id" in result.tables["patients"].columns
    assert len(result.tables["patients"]) == len(tables["patients"])


def test_run_clean_writes_deterministic_outputs(tmp_path):
    raw = write_extract(raw_extract(), tmp_path / "raw")
    digests = []
    for attempt in ("one", "two"):
        out, ledger = tmp_path / attempt / "clean", tmp_path / attempt / "ledger.parquet"
        run_clean(fixture_config(), raw, out, ledger)
        files = sorted(out.iterdir()) + [ledger]
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
        back = pd.read_parquet(out / "outcomes.parquet")
        assert back["assessment_date"].dtype.kind == "M"
    assert digests[0] == digests[1]


def test_result_summary_and_frame(tmp_path):
    tables = raw_extract()
    tables["sessions"] = pd.concat([tables["sessions"], tables["sessions"].iloc[[0]]],
                                   ignore_index=True)
    result = _clean(tmp_path, tables)
    frame = result.to_frame()
    assert list(frame.columns) == ["table", "fate", "n"]
    assert len(frame) == 4 * len(FATES)
    counts = frame.set_index(["table", "fate"])["n"]
    assert counts[("sessions", "dropped")] == 1
    assert counts.groupby("table").sum()["sessions"] == len(tables["sessions"])
    text = result.summary()
    assert "sessions" in text and "dropped" in text


# ---- property: every raw record gets exactly one fate ---------------------------------------

_junk = st.sampled_from(["valid", "duplicate", "unknown_ref", "out_of_range", "whitespace"])


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    session_junk=st.lists(_junk, max_size=10),
    outcome_junk=st.lists(_junk, max_size=10),
    patient_dups=st.lists(st.integers(0, 11), max_size=3),
    file_format=st.sampled_from(["csv", "parquet"]),
)
def test_ledger_accounts_for_every_raw_row(tmp_path_factory, session_junk, outcome_junk,
                                           patient_dups, file_format):
    """Random mixtures of valid and junk rows: fates always sum to the raw row counts."""
    tables = raw_extract()
    base_patients = tables["patients"]
    extra_patients = [base_patients.iloc[patient_dups]]
    extra_sessions, extra_outcomes = [], []
    for i, kind in enumerate(session_junk):
        row = tables["sessions"].iloc[[i % 25]].copy()
        if kind != "duplicate":
            row["session_id"] = f"X{i:04d}"
        if kind == "unknown_ref":
            row["therapist_id"] = "T999"
        elif kind == "whitespace":
            row["treatment_codes"] = " exer ;acup "
            row["episode_id"] = row["episode_id"].str.lower() + " "
        extra_sessions.append(row)
    for i, kind in enumerate(outcome_junk):
        row = tables["outcomes"].iloc[[i % 66]].copy()
        if kind != "duplicate":
            # A fresh assessment of a fresh episode, so scores cannot clash with another row.
            episode = base_patients.iloc[[0]].copy()
            episode["episode_id"] = f"E9{i:05d}"
            extra_patients.append(episode)
            row["outcome_id"] = f"Y{i:04d}"
            row["episode_id"] = f"E9{i:05d}"
        if kind == "unknown_ref":
            row["episode_id"] = "E404404"
        elif kind == "out_of_range":
            row["score"] = "1000"
        elif kind == "whitespace":
            row["instrument"] = " " + row["instrument"].str.upper()
        extra_outcomes.append(row)
    tables["patients"] = pd.concat([base_patients, *extra_patients], ignore_index=True)
    tables["sessions"] = pd.concat([tables["sessions"], *extra_sessions], ignore_index=True)
    tables["outcomes"] = pd.concat([tables["outcomes"], *extra_outcomes], ignore_index=True)
    raw = write_extract(tables, tmp_path_factory.mktemp("prop") / "raw", file_format)

    result = clean_tables(fixture_config(file_format, max_invalid_fraction=1.0), raw)

    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})
    fates = result.ledger.groupby(["table", "fate"]).size()
    assert fates.get(("patients", "dropped"), 0) == len(patient_dups)
    n_dropped_sessions = fates.get(("sessions", "dropped"), 0)
    assert n_dropped_sessions == sum(k in ("unknown_ref", "duplicate") for k in session_junk)
    assert fates.get(("sessions", "repaired"), 0) == session_junk.count("whitespace")
    assert fates.get(("outcomes", "value_set_missing"), 0) == outcome_junk.count("out_of_range")
    assert fates.get(("outcomes", "dropped"), 0) == sum(
        k in ("unknown_ref", "duplicate") for k in outcome_junk)


# ---- plausibility: missing-value codes, ranges, dates (config ``plausibility``) --------------


def _with_plausibility(layout: str = "long", variables: dict | None = None,
                       dates: dict | None = None, declared: dict | None = None,
                       **input_overrides) -> dict:
    """The fixture config with plausibility rules (and declared patient variables) set."""
    config = copy.deepcopy(fixture_config("csv", layout, **input_overrides))
    config["plausibility"]["variables"] = variables or {}
    for rule, settings_ in (dates or {}).items():
        config["plausibility"]["dates"][rule].update(settings_)
    if declared:
        config["input"]["tables"]["patients"]["variables"] = declared
    return validate_config(config)


def _clean_with(tmp_path: Path, tables: dict[str, pd.DataFrame], config: dict,
                layout: str = "long") -> CleanResult:
    raw = write_extract(tables, tmp_path / "raw", "csv", layout)
    return clean_tables(config, raw)


def test_missing_value_codes_are_set_missing_with_the_rule_named(tmp_path):
    tables = raw_extract()
    tables["patients"].loc[0, "symptom_duration_weeks"] = "-999"
    tables["patients"].loc[3, "bmi"] = "-999"
    tables["patients"].loc[4, "ses_score"] = "9999"
    result = _clean(tmp_path, tables)
    assert _fate(result, "patients", 1) == (
        "value_set_missing", "symptom_duration_weeks -999 is a missing-value code "
        "(plausibility.variables.symptom_duration_weeks.sentinels)")
    assert _fate(result, "patients", 4)[1] == (
        "bmi -999 is a missing-value code (plausibility.variables.bmi.sentinels)")
    assert _fate(result, "patients", 5)[0] == "value_set_missing"
    patients = result.tables["patients"].set_index("record_id")
    assert patients.loc[[1], "symptom_duration_weeks"].isna().all()
    assert patients.loc[[4], "bmi"].isna().all() and patients.loc[[5], "ses_score"].isna().all()
    assert patients.loc[2, "symptom_duration_weeks"] == pytest.approx(20.0)
    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})


def test_values_outside_the_plausible_range_follow_the_rules_action(tmp_path):
    tables = raw_extract()
    tables["patients"].loc[0, "bmi"] = "300"
    tables["patients"].loc[1, "ses_score"] = "11"
    tables["therapists"].loc[0, "age"] = "7"
    result = _clean(tmp_path, tables)
    assert _fate(result, "patients", 1) == (
        "value_set_missing", "bmi 300 outside the plausible range 10-80 "
        "(plausibility.variables.bmi.range)")
    assert "ses_score 11 outside the plausible range 1-10" in _fate(result, "patients", 2)[1]
    assert "plausibility.variables.therapist_age.range" in _fate(result, "therapists", 1)[1]
    assert result.tables["patients"]["bmi"].max() <= 80

    # A study declares its own range and action: bmi 300 now drops the row.
    config = _with_plausibility(variables={"bmi": {"range": [15, 400], "action": "drop"}},
                                max_invalid_fraction=0.5)
    tables["patients"].loc[2, "bmi"] = "12"
    result = _clean_with(tmp_path / "own", tables, config)
    assert _fate(result, "patients", 1)[0] == "kept"  # 300 lies in the study's own range
    fate, reason = _fate(result, "patients", 3)
    assert fate == "dropped" and "bmi 12 outside the plausible range 15-400" in reason
    # Built-in keys not given stay: -999 is still a missing-value code of bmi.
    tables["patients"].loc[4, "bmi"] = "-999"
    result = _clean_with(tmp_path / "codes", tables, config)
    assert "missing-value code" in _fate(result, "patients", 5)[1]


def test_stop_action_names_file_column_rows_and_rule(tmp_path):
    tables = raw_extract()
    tables["patients"].loc[[1, 6], "bmi"] = "-5"
    config = _with_plausibility(variables={"bmi": {"action": "stop"}})
    with pytest.raises(DataError) as caught:
        _clean_with(tmp_path, tables, config)
    message = str(caught.value)
    for text in ("patients.csv", "column 'bmi'", "rows 2, 7", "plausibility.variables.bmi.range",
                 "bmi -5 outside the plausible range 10-80", "plausibility.variables.bmi.action"):
        assert text in message, message


def test_birth_date_giving_an_impossible_age_drops_the_episode(tmp_path):
    tables = raw_extract()
    tables["patients"].loc[0, "birth_date"] = "1822-05-17"
    tables["patients"].loc[3, "birth_date"] = "2030-01-01"  # born after the referral
    result = _clean(tmp_path, tables, max_invalid_fraction=0.5)
    fate, reason = _fate(result, "patients", 1)
    assert fate == "dropped"
    assert reason == ("birth_date 1822-05-17 gives age 199 at referral 2022-02-03, outside the "
                      "plausible range 0-120 (plausibility.variables.age.range)")
    assert "gives age -8" in _fate(result, "patients", 4)[1]
    # Its sessions go with it (a reference to a dropped row).
    assert "refers to a row dropped" in _fate(result, "sessions", 1)[1]
    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})

    # set_missing cannot keep the episode: the birth date is required for the age rule.
    config = _with_plausibility(variables={"age": {"action": "set_missing"}},
                                max_invalid_fraction=0.5)
    result = _clean_with(tmp_path / "set_missing", tables, config)
    fate, reason = _fate(result, "patients", 1)
    assert fate == "dropped" and reason.endswith("the row cannot be used without birth_date")


def test_an_age_column_out_of_range_is_dropped(tmp_path):
    tables = raw_extract()
    patients = tables["patients"].drop(columns="birth_date")
    patients["age"] = ["61", "47", "33", "71", "12", "53", "40", "40", "63", "51", "200", "1000"]
    tables["patients"] = patients
    config = _with_plausibility(declared={"age": "number"}, max_invalid_fraction=0.5)
    result = _clean_with(tmp_path, tables, config)
    for record, value in ((11, "200"), (12, "1000")):
        fate, reason = _fate(result, "patients", record)
        assert fate == "dropped"
        assert reason == (f"age {value} outside the plausible range 0-120 "
                          "(plausibility.variables.age.range)")
    assert result.tables["patients"]["age"].max() <= 120


def test_declared_numeric_variable_needs_a_range(tmp_path):
    tables = raw_extract()
    tables["patients"]["grip_kg"] = ["30", "41", "150", "", "28", "35", "22", "23", "31", "40",
                                     "-999", "27"]
    with pytest.raises(ConfigError, match="plausibility/variables/grip_kg/range"):
        _with_plausibility(declared={"grip_kg": "number"})
    with pytest.raises(ConfigError, match="plausibility/variables: 'weight'"):
        _with_plausibility(variables={"weight": {"range": [0, 1]}})
    with pytest.raises(ConfigError, match="low end 5 is above the high end 1"):
        _with_plausibility(variables={"bmi": {"range": [5, 1]}})
    config = _with_plausibility(declared={"grip_kg": "number"},
                                variables={"grip_kg": {"range": [0, 100], "sentinels": [-999]}})
    result = _clean_with(tmp_path, tables, config)
    assert "grip_kg 150 outside the plausible range 0-100" in _fate(result, "patients", 3)[1]
    assert "grip_kg -999 is a missing-value code" in _fate(result, "patients", 11)[1]
    grip = result.tables["patients"]["grip_kg"]
    assert grip.notna().sum() == 9 and grip.max() <= 100
    # An open end: no upper limit.
    config = _with_plausibility(declared={"grip_kg": "number"},
                                variables={"grip_kg": {"range": [0, None]}})
    result = _clean_with(tmp_path / "open", tables, config)
    assert _fate(result, "patients", 3)[0] == "kept"
    assert "at least 0" in _fate(result, "patients", 11)[1]


def test_session_dates_outside_the_study_window_or_episode_are_dropped(tmp_path):
    tables = raw_extract()
    tables["sessions"].loc[0, "session_date"] = "1990-02-10"
    tables["sessions"].loc[3, "session_date"] = "2099-03-15"
    tables["sessions"].loc[6, "session_date"] = "2021-12-01"  # E000003 referred 2022-04-21
    result = _clean(tmp_path, tables, max_invalid_fraction=0.5)
    assert _fate(result, "sessions", 1) == (
        "dropped", "session_date 1990-02-10 outside the study window with its margin "
        "(2020-01-02 to 2025-07-30) (plausibility.dates.study_window)")
    assert "2099-03-15 outside the study window" in _fate(result, "sessions", 4)[1]
    assert _fate(result, "sessions", 7) == (
        "dropped", "session_date 2021-12-01 is 141 days before the referral 2022-04-21 "
        "(at most 30 allowed) (plausibility.dates.episode)")
    kept = result.tables["sessions"]
    assert {1, 4, 7}.isdisjoint(kept["record_id"])
    _assert_ledger_complete(result, {t: len(f) for t, f in tables.items()})

    # set_missing cannot keep a session without its date: the row is dropped, and says why.
    config = _with_plausibility(dates={"study_window": {"action": "set_missing"}},
                                max_invalid_fraction=0.5)
    result = _clean_with(tmp_path / "set_missing", tables, config)
    fate, reason = _fate(result, "sessions", 1)
    assert fate == "dropped" and reason.endswith("cannot be used without session_date")
    # A narrower episode: 13 days after the referral is too late.
    config = _with_plausibility(dates={"episode": {"days_after": 10, "action": "stop"}})
    with pytest.raises(DataError, match=r"rows 2, 3, .*13 value\(s\) break .*dates\.episode"):
        _clean_with(tmp_path / "stop", raw_extract(), config)


def test_discharge_dated_before_intake(tmp_path):
    tables = raw_extract()
    outcomes = tables["outcomes"]
    early = outcomes.index[(outcomes["episode_id"] == "E000002")
                           & (outcomes["timepoint"] == "discharge")]
    outcomes.loc[early, "assessment_date"] = "2022-03-12"  # intake was 2022-03-15
    result = _clean(tmp_path, tables)
    for index in early:
        fate, reason = _fate(result, "outcomes", int(index) + 1)
        assert fate == "value_set_missing"
        assert reason == ("discharge assessment_date 2022-03-12 before the intake assessment "
                          "2022-03-15 (plausibility.dates.followup_order)")
    kept = result.tables["outcomes"].set_index("record_id")
    assert kept.loc[early + 1, "score"].isna().all()
    assert kept.loc[early + 1, "assessment_date"].isna().all()
    intake = outcomes.index[(outcomes["episode_id"] == "E000002")
                            & (outcomes["timepoint"] == "intake")]
    assert kept.loc[intake + 1, "score"].notna().all()  # the baseline stays

    # Wide layout: the episode's row keeps its intake scores, loses the discharge ones.
    result = _clean(tmp_path / "wide", tables, layout="wide")
    wide = result.tables["outcomes"]
    episode = wide[wide["episode_id"] == "E000002"]
    assert episode.loc[episode["timepoint"] == "discharge", "score"].isna().all()
    assert episode.loc[episode["timepoint"] == "intake", "score"].notna().all()
    assert _fate(result, "outcomes", 2)[1] == (
        "discharge discharge_date 2022-03-12 before the intake assessment 2022-03-15 "
        "(plausibility.dates.followup_order)")

    config = _with_plausibility(dates={"followup_order": {"action": "drop"}})
    result = _clean_with(tmp_path / "drop", tables, config)
    assert {_fate(result, "outcomes", int(i) + 1)[0] for i in early} == {"dropped"}


# A value per kind of junk: valid, missing-value code, outside the range, empty.
_BMI = st.sampled_from(["24.5", "31", "-999", "9999", "300", "4", ""])
_SESSION_SHIFT = st.sampled_from([0, 0, 0, -60, 800, -12000, 28000])  # days
_DISCHARGE_SHIFT = st.sampled_from([0, 0, -40])  # days before the recorded discharge


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bmi=st.lists(_BMI, min_size=12, max_size=12),
    weeks=st.lists(st.sampled_from(["14", "-999", "-1", "6000", "999"]), min_size=12,
                   max_size=12),
    session_shift=st.lists(_SESSION_SHIFT, min_size=25, max_size=25),
    discharge_shift=st.lists(_DISCHARGE_SHIFT, min_size=12, max_size=12),
    actions=st.tuples(*[st.sampled_from(["set_missing", "drop"])] * 4),
    layout=st.sampled_from(["long", "wide"]),
)
def test_plausibility_ledgers_every_row_and_no_implausible_value_survives(
        tmp_path_factory, bmi, weeks, session_shift, discharge_shift, actions, layout):
    tables = raw_extract()
    tables["patients"]["bmi"] = bmi
    tables["patients"]["symptom_duration_weeks"] = weeks
    sessions = tables["sessions"]
    shifted = pd.to_datetime(sessions["session_date"]) + pd.to_timedelta(session_shift, "D")
    sessions["session_date"] = shifted.dt.strftime("%Y-%m-%d")
    outcomes = tables["outcomes"]
    discharge = outcomes["timepoint"] == "discharge"
    shift = outcomes["episode_id"].map(
        dict(zip(tables["patients"]["episode_id"], discharge_shift, strict=True)))
    moved = pd.to_datetime(outcomes["assessment_date"]) + pd.to_timedelta(
        shift.where(discharge, 0), "D")
    outcomes["assessment_date"] = moved.dt.strftime("%Y-%m-%d")
    config = _with_plausibility(
        layout,
        variables={"bmi": {"action": actions[0]}, "symptom_duration_weeks": {"action": actions[1]}},
        dates={"study_window": {"action": actions[2]}, "episode": {"action": actions[2]},
               "followup_order": {"action": actions[3]}},
        max_invalid_fraction=1.0)
    raw = write_extract(tables, tmp_path_factory.mktemp("plaus") / "raw", "csv", layout)

    result = clean_tables(config, raw)

    counts = {t: len(f) for t, f in tables.items()}
    if layout == "wide":  # one raw row per episode
        counts["outcomes"] = outcomes["episode_id"].nunique()
    _assert_ledger_complete(result, counts)
    patients = result.tables["patients"]
    assert patients["bmi"].dropna().between(10, 80).all()
    assert patients["symptom_duration_weeks"].dropna().between(0, 5200).all()
    assert not patients["bmi"].isin([-999, 9999]).any()
    # Every planted violation has a fate naming a plausibility rule (the row's first one).
    ledger = result.ledger.set_index(["table", "record_id"])
    for i, value in enumerate(bmi):
        if value in ("-999", "9999", "300", "4"):
            fate, reason = ledger.loc[("patients", i + 1), ["fate", "reason"]]
            assert fate != "kept" and "plausibility.variables." in reason
    referral = dict(zip(patients["episode_id"], patients["referral_date"], strict=True))
    sessions_out = result.tables["sessions"]
    offset = (sessions_out["session_date"] - sessions_out["episode_id"].map(referral)).dt.days
    assert offset.between(-30, 730).all()
    for i, days in enumerate(session_shift):
        if days in (-60, 800, -12000, 28000):
            fate, reason = ledger.loc[("sessions", i + 1), ["fate", "reason"]]
            assert fate == "dropped" and ("plausibility.dates" in reason
                                          or "refers to a row dropped" in reason)
    scored = result.tables["outcomes"].dropna(subset=["score"])
    by_time = scored.pivot_table(index=["episode_id", "instrument"], columns="timepoint",
                                 values="assessment_date", aggfunc="min")
    if {"intake", "discharge"} <= set(by_time.columns):
        both = by_time.dropna()
        assert (both["discharge"] >= both["intake"]).all()


def test_the_schema_documents_the_built_in_ranges():
    """The built-in rules are where users look: config/README.md, from the schema."""
    text = " ".join(load_schema()["properties"]["plausibility"]["properties"]["variables"]
                    ["description"].split())
    for name, rule in BUILTIN_PLAUSIBILITY.items():
        low, high = rule["range"]
        assert f"{name} [{low:g}, {high:g}]" in text, name
    assert ", ".join(f"{v:g}" for v in BUILTIN_PLAUSIBILITY["bmi"]["sentinels"]) in text
