"""A small, hand-built raw extract for tests (importable read-only by any test module).

``raw_extract()`` returns the four raw tables as text DataFrames, exactly as a study's CSV files
would hold them: 4 therapists (one never trained), 12 episodes of 11 patients, sessions and
long-layout outcomes, all valid. Tests add the junk they need with plain DataFrame edits, then
``write_extract()`` writes the tables as CSV or Parquet (long or wide outcomes), and
``fixture_config()`` gives a validated config pointing at them.

Usage::

    from raw_fixtures import fixture_config, raw_extract, write_extract
    tables = raw_extract()
    tables["sessions"].loc[0, "treatment_codes"] = " etmi "
    write_extract(tables, tmp_path / "raw")
    result = clean_tables(fixture_config(), tmp_path / "raw")
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from trial_analysis.config import validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config" / "config.yaml"

THERAPISTS = [
    # therapist_id, clinic_id, age, sex, etmi_training_date
    ("T001", "C01", "34", "F", "2021-11-15"),
    ("T002", "C01", "45", "M", "2022-03-01"),
    ("T003", "C02", "29", "F", ""),
    ("T004", "C02", "51", "F", "2021-12-01"),
]

# episode_id, patient_id, referral_date, birth_date, sex, diagnosis_codes,
# symptom_duration_weeks, depression, anxiety, bmi, ses_score
PATIENTS = [
    ("E000001", "P0001", "2022-02-03", "1960-05-17", "F", "M54.5", "14", "0", "0", "27.1", "6"),
    ("E000002", "P0002", "2022-03-10", "1975-01-02", "M", "M54.5;E11.9", "20", "1", "0", "", "4"),
    ("E000003", "P0003", "2022-04-21", "1988-09-30", "F", "M51.1", "13", "0", "1", "31.0", ""),
    ("E000004", "P0004", "2022-05-05", "1950-12-12", "F", "M54.4", "52", "0", "0", "24.5", "8"),
    ("E000005", "P0005", "2022-06-15", "2010-03-03", "M", "M54.5", "16", "0", "0", "19.0", "5"),
    ("E000006", "P0006", "2022-07-01", "1969-07-07", "M", "J45.9", "30", "0", "0", "29.3", "3"),
    ("E000007", "P0007", "2022-08-19", "1982-02-28", "F", "M54.5", "12", "1", "1", "22.2", "7"),
    ("E000008", "P0007", "2023-01-09", "1982-02-28", "F", "M54.5", "15", "1", "1", "22.4", "7"),
    ("E000009", "P0008", "2022-10-30", "1958-11-11", "F", "M51.2", "40", "0", "0", "26.0", "9"),
    ("E000010", "P0009", "2023-02-14", "1971-04-04", "M", "M54.59", "18", "0", "1", "28.8", "2"),
    ("E000011", "P0010", "2023-03-03", "1990-08-08", "F", "M54.5", "26", "0", "0", "", "6"),
    ("E000012", "P0011", "2021-06-01", "1965-06-06", "M", "M54.5", "22", "0", "0", "30.1", "5"),
]

_SESSION_PLAN = [
    # episode, therapist, dates, codes per session
    ("E000001", "T001", ["2022-02-10", "2022-02-17", "2022-03-01"], ["ETMI;EDU", "ETMI", "ETMI"]),
    ("E000002", "T002", ["2022-03-15", "2022-03-22"], ["EXER", "EXER;MANUAL"]),
    ("E000003", "T003", ["2022-04-28", "2022-05-05", "2022-05-12"], ["ETMI", "EXER", ""]),
    ("E000004", "T004", ["2022-05-12", "2022-05-19"], ["ETMI", "ETMI;EXER"]),
    ("E000005", "T001", ["2022-06-20"], ["EDU"]),
    ("E000006", "T002", ["2022-07-08", "2022-07-15"], ["MANUAL", "HEATCOLD"]),
    ("E000007", "T004", ["2022-08-25", "2022-09-01", "2022-09-08"], ["ETMI", "ETMI", "EDU"]),
    ("E000008", "T004", ["2023-01-16"], ["ETMI"]),
    ("E000009", "T003", ["2022-11-04", "2022-11-11"], ["EXER", "ACUP"]),
    ("E000010", "T001", ["2023-02-20", "2023-02-27", "2023-03-06"], ["ETMI", "ETMI", "ETMI"]),
    ("E000011", "T002", ["2023-03-10"], ["ELECTRO"]),
    ("E000012", "T003", ["2021-06-10", "2021-06-17"], ["EXER", "EXER"]),
]

# Intake and discharge scores per episode: (function, pain, fear_avoidance) or None if absent.
_SCORES = {
    "E000001": ((50, 7, 60), (64, 4, 45)),
    "E000002": ((45, 6, 55), (55, 5, 50)),
    "E000003": ((52, 5, 70), None),
    "E000004": ((40, 8, 65), (58, 3, 40)),
    "E000005": ((60, 4, 30), (70, 2, 25)),
    "E000006": ((48, 6, 50), (50, 6, 48)),
    "E000007": ((55, 7, 62), (66, 5, 50)),
    "E000008": ((57, 6, 60), None),
    "E000009": ((44, 5, 58), (60, 3, 41)),
    "E000010": ((51, 6, 52), (63, 4, 39)),
    "E000011": ((49, 7, 66), (57, 6, 61)),
    "E000012": ((53, 5, 45), (60, 4, 40)),
}
INSTRUMENTS = ("function", "pain", "fear_avoidance")
TIMEPOINTS = ("intake", "discharge")


def raw_extract() -> dict[str, pd.DataFrame]:
    """The four valid raw tables, every cell as text (empty string = missing)."""
    therapists = pd.DataFrame(
        THERAPISTS, columns=["therapist_id", "clinic_id", "age", "sex", "etmi_training_date"]
    )
    patients = pd.DataFrame(
        PATIENTS,
        columns=[
            "episode_id", "patient_id", "referral_date", "birth_date", "sex", "diagnosis_codes",
            "symptom_duration_weeks", "depression", "anxiety", "bmi", "ses_score",
        ],
    )
    session_rows = []
    for episode, therapist, dates, codes in _SESSION_PLAN:
        for date, code in zip(dates, codes, strict=True):
            session_rows.append((f"S{len(session_rows) + 1:05d}", episode, therapist, date, code))
    sessions = pd.DataFrame(
        session_rows,
        columns=["session_id", "episode_id", "therapist_id", "session_date", "treatment_codes"],
    )
    dates = dict(zip(sessions["episode_id"], sessions["session_date"], strict=False))
    first_dates = sessions.groupby("episode_id")["session_date"].min().to_dict()
    outcome_rows = []
    for episode, (intake, discharge) in _SCORES.items():
        for timepoint, scores in zip(TIMEPOINTS, (intake, discharge), strict=True):
            if scores is None:
                continue
            date = first_dates[episode] if timepoint == "intake" else dates[episode]
            for instrument, score in zip(INSTRUMENTS, scores, strict=True):
                outcome_rows.append(
                    (f"O{len(outcome_rows) + 1:05d}", episode, date, instrument, timepoint,
                     str(score))
                )
    outcomes = pd.DataFrame(
        outcome_rows,
        columns=["outcome_id", "episode_id", "assessment_date", "instrument", "timepoint", "score"],
    )
    return {"therapists": therapists, "patients": patients, "sessions": sessions,
            "outcomes": outcomes}


def to_wide(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The long outcomes table in the wide layout (one row per episode), as text."""
    scores = outcomes.pivot(index="episode_id", columns=["instrument", "timepoint"], values="score")
    scores.columns = [f"{i}_{t}" for i, t in scores.columns]
    dates = outcomes.groupby(["episode_id", "timepoint"])["assessment_date"].first().unstack()
    dates.columns = [f"{t}_date" for t in dates.columns]
    wide = dates.join(scores).reset_index()
    order = ["episode_id", *[f"{t}_date" for t in TIMEPOINTS],
             *[f"{i}_{t}" for i in INSTRUMENTS for t in TIMEPOINTS]]
    return wide.reindex(columns=order).fillna("")


def write_extract(
    tables: dict[str, pd.DataFrame],
    folder: Path,
    file_format: str = "csv",
    layout: str = "long",
) -> Path:
    """Write raw tables to ``folder`` as ``{table}.csv`` (text) or ``{table}.parquet``.

    With ``layout="wide"`` the outcomes table is pivoted first (unless it already is wide).
    Empty strings are written as empty cells (CSV) or nulls (Parquet).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if name == "outcomes" and layout == "wide" and "instrument" in frame.columns:
            frame = to_wide(frame)
        if file_format == "parquet":
            frame.replace("", None).to_parquet(folder / f"{name}.parquet", index=False)
        else:
            frame.to_csv(folder / f"{name}.csv", index=False, lineterminator="\n")
    return folder


def fixture_config(
    file_format: str = "csv", layout: str = "long", **input_overrides: Any
) -> dict[str, Any]:
    """The default study config, validated, reading the fixture files written above."""
    config = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    config = copy.deepcopy(config)
    ext = "parquet" if file_format == "parquet" else "csv"
    config["input"]["format"] = file_format
    config["input"]["outcomes_layout"] = layout
    for name in ("therapists", "patients", "sessions", "outcomes"):
        config["input"]["tables"][name] = {"file": f"{name}.{ext}", "columns": {}}
    config["input"].update(input_overrides)
    return validate_config(config, source="fixture config")


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` as YAML (for tests that go through the command line)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
