"""Tests of the eligibility step: rules, reason order, age, ledger and flow."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trial_analysis import cli
from trial_analysis.cohort.eligibility import (
    EXCLUDED_PREFIX,
    REASON_UNTRAINED,
    age_in_years,
    apply_eligibility,
    completed_years,
    has_any_code,
    run_eligibility,
)
from trial_analysis.config import load_config
from trial_analysis.errors import DataError

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


# --------------------------------------------------------------------------------------------
# A small builder of inputs in the cleaned format (clean/{table}.parquet + clean_ledger)
# --------------------------------------------------------------------------------------------

PATIENT_DEFAULTS: dict[str, Any] = {
    "referral_date": "2022-06-01", "birth_date": "1970-01-01", "sex": "F",
    "diagnosis_codes": "M54.5", "symptom_duration_weeks": 20.0, "depression": 0, "anxiety": 0,
    "bmi": 27.5, "ses_score": 5.0,
}


def cleaned(
    patients: list[dict[str, Any]],
    sessions: list[dict[str, Any]] | None = None,
    outcomes: list[dict[str, Any]] | None = None,
    therapists: list[dict[str, Any]] | None = None,
    dropped: dict[str, list[str]] | None = None,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Cleaned tables and a cleaning ledger; ``dropped`` adds dropped raw records per table."""
    rows = []
    for i, p in enumerate(patients, start=1):
        row = {"episode_id": f"E{i:04d}", "patient_id": f"P{i:04d}", **PATIENT_DEFAULTS, **p}
        rows.append(row)
    pat = pd.DataFrame(rows)
    if sessions is None:  # one session per episode by default
        sessions = [{"episode_id": e} for e in pat["episode_id"]]
    ses = pd.DataFrame([
        {"session_id": f"S{i:05d}", "therapist_id": "T001", "session_date": "2022-06-10",
         "treatment_codes": "EDU", **s} for i, s in enumerate(sessions, start=1)
    ], columns=["session_id", "episode_id", "therapist_id", "session_date", "treatment_codes"])
    out = pd.DataFrame([
        {"outcome_id": f"O{i:05d}", "assessment_date": "2022-06-10", "instrument": "function",
         "timepoint": "intake", "score": 50.0, **o} for i, o in enumerate(outcomes or [], 1)
    ], columns=["outcome_id", "episode_id", "assessment_date", "instrument", "timepoint",
                "score"])
    thr = pd.DataFrame(therapists or [{"therapist_id": "T001", "clinic_id": "C01", "age": 40,
                                       "sex": "F", "etmi_training_date": "2021-06-01"}])
    tables = {"patients": pat, "sessions": ses, "outcomes": out, "therapists": thr}
    ledger_parts = []
    for name, frame in tables.items():
        n_dropped = len((dropped or {}).get(name, []))
        # Dropped records sit after the kept ones in the raw file.
        frame["record_id"] = range(1, len(frame) + 1)
        ledger_parts.append(pd.DataFrame({
            "table": name, "record_id": range(1, len(frame) + n_dropped + 1),
            "fate": ["kept"] * len(frame) + ["dropped"] * n_dropped,
            "reason": [""] * len(frame) + list((dropped or {}).get(name, [])),
            "step": "clean",
        }))
    for frame, columns in ((pat, ["referral_date", "birth_date"]), (ses, ["session_date"]),
                           (out, ["assessment_date"]), (thr, ["etmi_training_date"])):
        for column in columns:
            frame[column] = pd.to_datetime(frame[column])
    out["score"] = out["score"].astype("float64")
    return tables, pd.concat(ledger_parts, ignore_index=True)


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    return load_config(CONFIG_FILE)


@pytest.fixture
def config(base_config: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(base_config)


def reasons_of(result) -> dict[str, Any]:
    d = result.decisions.set_index("episode_id")["reason"]
    return {k: (None if pd.isna(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# Each rule and the order of reasons
# --------------------------------------------------------------------------------------------


def test_each_rule_gives_its_reason(config):
    tables, ledger = cleaned(
        [
            {},                                          # E0001 eligible
            {"referral_date": "2021-12-31"},             # E0002 before window
            {"referral_date": "2023-08-01"},             # E0003 after window
            {"birth_date": "2005-06-02"},                # E0004 17 on referral
            {"diagnosis_codes": "E11.9;M54.9"},          # E0005 no CLBP code
            {"patient_id": "P0001", "referral_date": "2022-07-01"},  # E0006 second episode
            {},                                          # E0007 no session
            {"referral_date": "2022-01-01"},             # E0008 window start inclusive
            {"referral_date": "2023-07-31", "diagnosis_codes": "E11.9; m54.50 "},  # E0009
        ],
        sessions=[{"episode_id": f"E{i:04d}"} for i in (1, 2, 3, 4, 5, 6, 8, 9)],
    )
    result = apply_eligibility(config, tables, ledger)
    assert reasons_of(result) == {
        "E0001": None, "E0002": "referral outside study window",
        "E0003": "referral outside study window", "E0004": "age under 18",
        "E0005": "no CLBP diagnosis code", "E0006": "not the patient's first episode",
        "E0007": "no attended session", "E0008": None, "E0009": None,
    }
    assert result.cohort["episode_id"].tolist() == ["E0001", "E0008", "E0009"]


def test_first_failing_rule_wins(config):
    # Fails every rule at once: the window reason is reported.
    tables, ledger = cleaned(
        [{}, {"patient_id": "P0001", "referral_date": "2021-01-01", "birth_date": "2010-01-01",
              "diagnosis_codes": "E11.9"},
         {"birth_date": "2010-01-01", "diagnosis_codes": "E11.9"},
         {"diagnosis_codes": "E11.9", "patient_id": "P0001", "referral_date": "2022-07-01"}],
        sessions=[{"episode_id": "E0001"}],
    )
    result = apply_eligibility(config, tables, ledger)
    assert reasons_of(result) == {
        "E0001": None, "E0002": "referral outside study window", "E0003": "age under 18",
        "E0004": "no CLBP diagnosis code",
    }


def test_first_episode_is_earliest_remaining_with_episode_id_tie_break(config):
    tables, ledger = cleaned([
        # Patient A: earliest episode is outside the window, so the next one is the first
        # remaining episode.
        {"episode_id": "A1", "patient_id": "A", "referral_date": "2021-11-01"},
        {"episode_id": "A2", "patient_id": "A", "referral_date": "2022-03-01"},
        {"episode_id": "A3", "patient_id": "A", "referral_date": "2022-05-01"},
        # Patient B: two episodes on the same day: the smaller episode_id is first.
        {"episode_id": "B2", "patient_id": "B", "referral_date": "2022-03-01"},
        {"episode_id": "B1", "patient_id": "B", "referral_date": "2022-03-01"},
        # Patient C: the later-listed row is the earlier episode.
        {"episode_id": "C1", "patient_id": "C", "referral_date": "2022-09-01"},
        {"episode_id": "C2", "patient_id": "C", "referral_date": "2022-02-01"},
    ])
    result = apply_eligibility(config, tables, ledger)
    assert sorted(result.cohort["episode_id"]) == ["A2", "B1", "C2"]
    r = reasons_of(result)
    assert r["A1"] == "referral outside study window"
    assert r["A3"] == r["B2"] == r["C1"] == "not the patient's first episode"


def test_first_episode_rule_can_be_switched_off(config):
    config["eligibility"]["first_episode_only"] = False
    config["eligibility"]["require_clbp_code"] = False
    tables, ledger = cleaned([{}, {"patient_id": "P0001", "diagnosis_codes": "E11.9"}])
    result = apply_eligibility(config, tables, ledger)
    assert len(result.cohort) == 2
    assert "not the patient's first episode" not in result.flow["reason"].dropna().tolist()


def test_min_age_reason_follows_config(config):
    config["eligibility"]["min_age"] = 65
    tables, ledger = cleaned([{"birth_date": "1957-06-01"}, {"birth_date": "1957-06-02"}])
    result = apply_eligibility(config, tables, ledger)
    assert reasons_of(result)["E0002"] == "age under 65"
    assert reasons_of(result)["E0001"] is None


# --------------------------------------------------------------------------------------------
# Age
# --------------------------------------------------------------------------------------------


def _dates(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values)))


@pytest.mark.parametrize(
    ("birth", "referral", "completed", "age"),
    [
        ("2004-03-10", "2022-03-10", 18, 18.0),      # birthday on the referral day
        ("2004-03-10", "2022-03-09", 17, 17 + 364 / 365),
        ("2004-02-29", "2022-02-28", 17, 17 + 364 / 365),   # leap-day birth, non-leap year
        ("2004-02-29", "2022-03-01", 18, 18.0),
        ("2003-02-28", "2024-02-29", 21, 21 + 1 / 366),
        ("1950-07-01", "2023-01-01", 72, 72 + 184 / 365),
    ],
)
def test_age_completed_years_and_fraction(birth, referral, completed, age):
    b, r = _dates(birth), _dates(referral)
    assert completed_years(b, r).iloc[0] == completed
    assert age_in_years(b, r).iloc[0] == pytest.approx(age, abs=1e-12)


def test_birthday_on_referral_day_is_eligible(config):
    tables, ledger = cleaned([{"birth_date": "2004-03-10", "referral_date": "2022-03-10"},
                              {"birth_date": "2004-03-11", "referral_date": "2022-03-10"}])
    result = apply_eligibility(config, tables, ledger)
    assert reasons_of(result) == {"E0001": None, "E0002": "age under 18"}
    assert result.cohort["age"].tolist() == [18.0]


@settings(max_examples=60, deadline=None)
@given(st.dates(min_value=pd.Timestamp("1920-01-01").date(),
                max_value=pd.Timestamp("2020-12-31").date()),
       st.integers(min_value=0, max_value=30000))
def test_age_floor_equals_completed_years(birth, days):
    b = pd.Series(pd.to_datetime([birth]))
    r = b + pd.Timedelta(days=days)
    done = completed_years(b, r).iloc[0]
    age = age_in_years(b, r).iloc[0]
    assert int(age // 1) == done
    assert abs(age - days / 365.25) < 0.01 + 1 / 365


def test_has_any_code_matches_whole_codes_only():
    cells = pd.Series(["M54.5", "M54.50;E11", "E11; M54.4 ", "M54.55", None, "XM54.5", ""])
    got = has_any_code(cells, ["M54.5", "M54.4"], ";").tolist()
    assert got == [True, False, True, False, False, False, False]


# --------------------------------------------------------------------------------------------
# Ledger and flow
# --------------------------------------------------------------------------------------------


def test_ledger_marks_excluded_episodes_and_their_records(config):
    tables, ledger = cleaned(
        [{}, {"birth_date": "2010-01-01"}],
        sessions=[{"episode_id": "E0001"}, {"episode_id": "E0002"}, {"episode_id": "E0002"}],
        outcomes=[{"episode_id": "E0001"}, {"episode_id": "E0002"},
                  {"episode_id": "E0002", "timepoint": "discharge", "score": None}],
        dropped={"patients": ["exact duplicate of row 1"], "sessions": ["episode not found"]},
    )
    # Scores set missing in cleaning are still records of the excluded episode.
    ledger.loc[(ledger["table"] == "outcomes") & (ledger["record_id"] == 3),
               ["fate", "reason"]] = ["value_set_missing", "score 130 outside 0-100"]
    result = apply_eligibility(config, tables, ledger)
    final = result.ledger
    assert len(final) == len(ledger)
    assert not final.duplicated(["table", "record_id"]).any()
    assert (final.groupby("table").size() == ledger.groupby("table").size()).all()
    excluded = final[final["fate"] == "excluded"]
    assert sorted(zip(excluded["table"], excluded["record_id"], strict=True)) == [
        ("outcomes", 2), ("outcomes", 3), ("patients", 2), ("sessions", 2), ("sessions", 3)]
    assert set(excluded["reason"]) == {"episode excluded: age under 18"}
    assert set(excluded["step"]) == {"eligibility"}
    # Dropped records keep their cleaning fate.
    dropped = final[final["fate"] == "dropped"]
    assert sorted(dropped["table"]) == ["patients", "sessions"]
    assert set(dropped["step"]) == {"clean"}


def test_flow_counts_equal_ledger_counts(config):
    tables, ledger = cleaned(
        [{}, {}, {"referral_date": "2020-01-01"}, {"diagnosis_codes": "E11.9"},
         {"birth_date": "2010-01-01"}, {"patient_id": "P0001", "referral_date": "2022-12-01"}],
        dropped={"patients": ["exact duplicate of row 1", "exact duplicate of row 2",
                              "missing episode_id"]},
    )
    result = apply_eligibility(config, tables, ledger)
    flow = result.flow
    assert list(flow.columns) == ["step", "description", "n", "n_excluded", "reason"]
    patients = result.ledger[result.ledger["table"] == "patients"]
    assert flow["n"].iloc[0] == len(patients) == 9
    clean_rows = flow[(flow["step"] == "clean") & flow["n_excluded"].notna()]
    assert clean_rows["reason"].tolist() == ["exact duplicate of another record",
                                             "missing episode_id"]
    assert clean_rows["n_excluded"].tolist() == [2, 1]
    elig_rows = flow[(flow["step"] == "eligibility") & flow["n_excluded"].notna()]
    assert elig_rows["reason"].tolist() == result.reasons
    counted = patients.loc[patients["fate"] == "excluded", "reason"].str.removeprefix(
        "episode excluded: ").value_counts()
    for reason, n in zip(elig_rows["reason"], elig_rows["n_excluded"], strict=True):
        assert n == counted.get(reason, 0)
    assert elig_rows["n_excluded"].sum() == (patients["fate"] == "excluded").sum() == 4
    assert flow["n"].iloc[-1] == len(result.cohort) == 2
    # Each row's n is the previous n minus what the row removed.
    patient_flow = flow[flow["step"] != "records"].reset_index(drop=True)
    steps = patient_flow.dropna(subset=["n_excluded"])
    previous = patient_flow["n"].shift(1).loc[steps.index]
    assert (previous - steps["n_excluded"] == steps["n"]).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.tuples(st.integers(0, 4),                       # patient
              st.integers(-400, 900),                  # referral day offset from 2022-01-01
              st.integers(10, 90),                     # age in years at 2022
              st.booleans(),                           # CLBP code
              st.booleans()),                          # has a session
    min_size=1, max_size=15))
def test_property_fates_sum_to_raw_counts(base_config, episodes):
    specs, sessions = [], []
    for i, (patient, offset, age, clbp, attended) in enumerate(episodes, start=1):
        specs.append({
            "patient_id": f"P{patient}",
            "referral_date": str((pd.Timestamp("2022-01-01") + pd.Timedelta(days=offset)).date()),
            "birth_date": f"{2022 - age}-05-15",
            "diagnosis_codes": "M51.2" if clbp else "E11.9",
        })
        if attended:
            sessions.append({"episode_id": f"E{i:04d}"})
    tables, ledger = cleaned(specs, sessions=sessions,
                             dropped={"patients": ["exact duplicate of row 1"]})
    try:
        result = apply_eligibility(base_config, tables, ledger)
    except DataError as error:
        assert "no episode meets the eligibility rules" in str(error)
        return
    final = result.ledger
    assert (final.groupby("table").size() == ledger.groupby("table").size()).all()
    assert not final.duplicated(["table", "record_id"]).any()
    patients = final[final["table"] == "patients"]
    n_kept = (patients["fate"] == "kept").sum()
    assert n_kept == len(result.cohort) == result.flow["n"].iloc[-1]
    # At most one eligible episode per patient, and it is eligible by every rule.
    assert not result.cohort["patient_id"].duplicated().any()
    assert (result.cohort["age"] >= 18).all()


# --------------------------------------------------------------------------------------------
# Bad input, through the command line
# --------------------------------------------------------------------------------------------


def _write_inputs(tmp_path: Path, tables, ledger) -> Path:
    clean = tmp_path / "clean"
    clean.mkdir()
    for name, frame in tables.items():
        frame.to_parquet(clean / f"{name}.parquet", index=False)
    ledger.to_parquet(tmp_path / "clean_ledger.parquet", index=False)
    return clean


def _run(tmp_path: Path) -> int:
    return cli.main([
        "-q", "eligibility", "--config", str(CONFIG_FILE), "--clean", str(tmp_path / "clean"),
        "--clean-ledger", str(tmp_path / "clean_ledger.parquet"),
        "--cohort", str(tmp_path / "out" / "cohort.parquet"),
        "--ledger", str(tmp_path / "out" / "ledger.parquet"),
        "--flow", str(tmp_path / "out" / "flow.csv"),
    ])


def test_cli_writes_outputs(tmp_path):
    tables, ledger = cleaned([{}, {"birth_date": "2010-01-01"}])
    _write_inputs(tmp_path, tables, ledger)
    assert _run(tmp_path) == 0
    cohort = pd.read_parquet(tmp_path / "out" / "cohort.parquet")
    assert cohort["episode_id"].tolist() == ["E0001"]
    assert {"age", "record_id"}.issubset(cohort.columns)
    final = pd.read_parquet(tmp_path / "out" / "ledger.parquet")
    assert list(final.columns) == ["table", "record_id", "fate", "reason", "step"]
    flow = pd.read_csv(tmp_path / "out" / "flow.csv")
    assert list(flow.columns) == ["step", "description", "n", "n_excluded", "reason"]
    first = (tmp_path / "out" / "flow.csv").read_bytes()
    assert _run(tmp_path) == 0
    assert (tmp_path / "out" / "flow.csv").read_bytes() == first


def test_cli_no_eligible_patient(tmp_path, capsys):
    tables, ledger = cleaned([{"birth_date": "2010-01-01"}, {"diagnosis_codes": "E11.9"}])
    _write_inputs(tmp_path, tables, ledger)
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "patients.parquet" in err and "no episode meets the eligibility rules" in err
    assert "age under 18: 1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_column(tmp_path, capsys):
    tables, ledger = cleaned([{}])
    tables["patients"] = tables["patients"].drop(columns="birth_date")
    _write_inputs(tmp_path, tables, ledger)
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "patients.parquet" in err and "'birth_date'" in err and "required column" in err
    assert not (tmp_path / "out").exists()


def test_cli_ledger_disagrees_with_tables(tmp_path, capsys):
    tables, ledger = cleaned([{}, {}])
    ledger = ledger[~((ledger["table"] == "sessions") & (ledger["record_id"] == 2))]
    _write_inputs(tmp_path, tables, ledger)
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "sessions.parquet" in err and "'record_id'" in err and "rows 2" in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_birth_date_value(tmp_path, capsys):
    tables, ledger = cleaned([{}, {}])
    tables["patients"].loc[1, "birth_date"] = pd.NaT
    _write_inputs(tmp_path, tables, ledger)
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "'birth_date'" in err and "rows 2" in err
    assert not (tmp_path / "out").exists()


def test_run_eligibility_returns_result(tmp_path, config):
    tables, ledger = cleaned([{}, {"referral_date": "2020-01-01"}])
    clean = _write_inputs(tmp_path, tables, ledger)
    result = run_eligibility(config, clean, tmp_path / "clean_ledger.parquet",
                             tmp_path / "c.parquet", tmp_path / "l.parquet", tmp_path / "f.csv")
    assert "1 of 2 cleaned episodes eligible" in result.summary()
    assert result.to_frame()["eligible"].tolist() == [True, False]


def test_record_level_cleaning_is_in_the_flow_with_aggregate_reasons():
    """Cleaning below the patient level (rows dropped, scores set missing) is counted in the
    flow by table, fate and aggregate reason, never by a single record's row number."""
    from trial_analysis.cohort.eligibility import flow_from_ledger

    ledger = pd.DataFrame({
        "table": ["patients"] * 4 + ["outcomes"] * 5 + ["sessions"] * 2,
        "record_id": range(11),
        "fate": ["kept", "value_set_missing", "dropped", "kept",
                 "dropped", "dropped", "value_set_missing", "value_set_missing", "kept",
                 "dropped", "kept"],
        "reason": ["", "birth_date gives an implausible age", "exact duplicate of row 1", "",
                   "exact duplicate of row 3", "exact duplicate of row 4",
                   "same episode, instrument, time point and score as row 7",
                   "score -1 outside 0-10", "",
                   "episode_id 'E9' not in the patients table", ""],
        "step": "clean",
    })
    flow = flow_from_ledger(ledger, [])
    records = flow[flow["step"] == "records"]
    # The dropped patient record is in the patient flow (clean), not among the records.
    assert records[["description", "n", "n_excluded", "reason"]].values.tolist() == [
        ["outcome records dropped", 5, 2, "exact duplicate of another record"],
        ["outcome values set missing", 5, 1,
         "same episode, instrument, time point and score as another record"],
        ["outcome values set missing", 5, 1, "score outside the instrument's range"],
        ["patient values set missing", 4, 1, "birth_date gives an implausible age"],
        ["session records dropped", 2, 1, "episode ID not in the patients table"],
    ]
    assert flow.loc[flow["step"] == "clean", "reason"].dropna().tolist() == [
        "exact duplicate of another record"]
    assert not flow["reason"].dropna().str.contains(r"\d").any()


# --------------------------------------------------------------------------------------------
# The target trial's rule: therapist trained at time zero (the first session)
# --------------------------------------------------------------------------------------------

THERAPISTS = [
    {"therapist_id": "T001", "clinic_id": "C01", "age": 40, "sex": "F",
     "etmi_training_date": "2022-06-10"},                 # trained on E0001's first session
    {"therapist_id": "T002", "clinic_id": "C01", "age": 50, "sex": "M",
     "etmi_training_date": None},                         # never trained
    {"therapist_id": "T003", "clinic_id": "C01", "age": 45, "sex": "F",
     "etmi_training_date": "2022-09-01"},                 # trained later
]


def _target_trial_inputs():
    return cleaned(
        [{}, {}, {}, {}, {"referral_date": "2021-01-01"}],
        sessions=[
            {"episode_id": "E0001", "therapist_id": "T001", "session_date": "2022-06-10"},
            {"episode_id": "E0002", "therapist_id": "T002", "session_date": "2022-06-10"},
            # First session before T003's training; a later one after it does not count.
            {"episode_id": "E0003", "therapist_id": "T003", "session_date": "2022-08-31"},
            {"episode_id": "E0003", "therapist_id": "T003", "session_date": "2022-09-15"},
            # First session by a trained therapist; the untrained one comes later.
            {"episode_id": "E0004", "therapist_id": "T001", "session_date": "2022-06-12"},
            {"episode_id": "E0004", "therapist_id": "T002", "session_date": "2022-06-20"},
            {"episode_id": "E0004", "therapist_id": "T002", "session_date": "2022-06-27"},
            {"episode_id": "E0005", "therapist_id": "T002", "session_date": "2021-01-05"},
        ],
        therapists=THERAPISTS,
    )


def test_target_trial_rule_is_off_in_the_reproduction(config):
    assert config["target_trial"]["population"] == "reproduction"
    tables, ledger = _target_trial_inputs()
    result = apply_eligibility(config, tables, ledger)
    assert REASON_UNTRAINED not in result.reasons
    assert set(result.cohort["episode_id"]) == {"E0001", "E0002", "E0003", "E0004"}


def test_target_trial_rule_uses_the_first_session_therapist(config):
    config["target_trial"]["population"] = "target_trial"
    tables, ledger = _target_trial_inputs()
    result = apply_eligibility(config, tables, ledger)
    assert result.reasons[-1] == REASON_UNTRAINED
    reasons = reasons_of(result)
    assert reasons == {"E0001": None, "E0002": REASON_UNTRAINED, "E0003": REASON_UNTRAINED,
                       "E0004": None, "E0005": "referral outside study window"}
    # Excluded episodes, with their sessions, have the fate excluded and the rule's reason.
    excluded = result.ledger.loc[result.ledger["reason"] == EXCLUDED_PREFIX + REASON_UNTRAINED]
    assert excluded.groupby("table").size().to_dict() == {"patients": 2, "sessions": 3}
    assert (excluded["fate"] == "excluded").all()
    row = result.flow.loc[result.flow["reason"] == REASON_UNTRAINED].iloc[0]
    assert int(row["n_excluded"]) == 2 and int(result.flow["n"].iloc[-1]) == 2


def test_target_trial_rule_switched_off_or_randomised(config):
    config["target_trial"]["population"] = "target_trial"
    off = copy.deepcopy(config)
    off["target_trial"]["eligibility"]["therapist_trained_before_time_zero"] = False
    randomised = copy.deepcopy(config)
    randomised["study"]["design"] = "randomised"
    for variant in (off, randomised):
        tables, ledger = _target_trial_inputs()
        assert REASON_UNTRAINED not in apply_eligibility(variant, tables, ledger).reasons


def test_target_trial_rule_needs_the_therapists_table(config):
    config["target_trial"]["population"] = "target_trial"
    tables, ledger = _target_trial_inputs()
    del tables["therapists"]
    with pytest.raises(DataError, match="training dates"):
        apply_eligibility(config, tables, ledger)


# --------------------------------------------------------------------------------------------
# Row filters (eligibility.filters)
# --------------------------------------------------------------------------------------------


def _three_arm_inputs():
    return cleaned([{"group": g, "per_protocol": pp} for g, pp in
                    [("A", 1), ("B", 1), ("C", 1), ("A", 0), (None, 1)]])


def test_filters_keep_two_arms_of_three_and_a_per_protocol_set(config):
    config["eligibility"]["filters"] = [{"column": "group", "keep": ["A", "B"]},
                                        {"column": "per_protocol", "drop": [0]}]
    tables, ledger = _three_arm_inputs()
    result = apply_eligibility(config, tables, ledger)
    keep, drop = "filter: group not in [A, B]", "filter: per_protocol in [0]"
    assert result.reasons[-2:] == [keep, drop]
    # A missing value is none of the kept values; the first failing filter is the reason.
    assert reasons_of(result) == {"E0001": None, "E0002": None, "E0003": keep, "E0004": drop,
                                  "E0005": keep}
    patients = result.ledger.loc[result.ledger["table"] == "patients"]
    assert (patients["fate"] == "excluded").sum() == 3
    assert set(patients.loc[patients["fate"] == "excluded", "reason"]) == {
        EXCLUDED_PREFIX + keep, EXCLUDED_PREFIX + drop}
    flow = result.flow.set_index("reason")
    assert int(flow.loc[keep, "n_excluded"]) == 2 and int(flow.loc[drop, "n_excluded"]) == 1


@pytest.mark.parametrize(("spec", "message"), [
    ({"column": "grup", "keep": ["A"]}, "Did you mean 'group'"),
    ({"column": "group", "keep": ["A", "D"]}, r"\['D'\] never occur"),
    ({"column": "per_protocol", "drop": [2]}, r"\[2\] never occur"),
    ({"column": "per_protocol", "keep": ["yes"]}, "column is numeric"),
])
def test_filters_stop_on_a_column_or_value_that_is_not_there(config, spec, message):
    config["eligibility"]["filters"] = [spec]
    tables, ledger = _three_arm_inputs()
    with pytest.raises(DataError, match=message) as error:
        apply_eligibility(config, tables, ledger)
    assert "clean/patients.parquet" in str(error.value)


def test_run_eligibility_reads_the_therapists_for_the_target_trial(tmp_path, config):
    config["target_trial"]["population"] = "target_trial"
    tables, ledger = _target_trial_inputs()
    _write_inputs(tmp_path, tables, ledger)
    out = tmp_path / "out"
    result = run_eligibility(config, tmp_path / "clean", tmp_path / "clean_ledger.parquet",
                             out / "cohort.parquet", out / "ledger.parquet", out / "flow.csv")
    assert sorted(pd.read_parquet(out / "cohort.parquet")["episode_id"]) == ["E0001", "E0004"]
    assert REASON_UNTRAINED in pd.read_csv(out / "flow.csv")["reason"].tolist()
    assert len(result.ledger) == len(ledger)
    (tmp_path / "clean" / "therapists.parquet").unlink()
    with pytest.raises(DataError, match="therapists.parquet"):
        run_eligibility(config, tmp_path / "clean", tmp_path / "clean_ledger.parquet",
                        out / "cohort.parquet", out / "ledger.parquet", out / "flow.csv")
