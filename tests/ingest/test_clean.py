"""Tests of the ``clean`` step: repairs, drops, the ledger and its one-fate-per-record property."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_fixtures import fixture_config, raw_extract, write_extract

from trial_analysis.errors import DataError
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
