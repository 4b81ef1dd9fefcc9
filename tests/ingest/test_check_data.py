"""``trial-analysis check-data``: every problem of a raw extract at once, with suggestions.

A small simulated extract (300 eligible patients, with the simulator's junk records) is written
once per module; tests copy it, break it in several ways at once and check that the report
names every problem, its suggestion, the exit status and that no traceback is printed. The
check runs the cleaning step's own cleaners, so its dropped-row counts must equal the ledger's.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from raw_fixtures import CONFIG_FILE

from trial_analysis.cli import main
from trial_analysis.config import validate_config
from trial_analysis.errors import DataError, closest_match
from trial_analysis.ingest.check_data import check_data
from trial_analysis.ingest.clean import clean_tables
from trial_analysis.simulation.simulate import simulate_extract, write_extract

N_PATIENTS = 300


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    return validate_config(yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def extract(base_config):
    return simulate_extract(base_config, seed=7, n_patients=N_PATIENTS)


@pytest.fixture(scope="module")
def clean_raw(tmp_path_factory, extract) -> Path:
    """The simulated extract as CSV (long outcomes): valid, with the usual junk rows."""
    folder = tmp_path_factory.mktemp("check") / "raw"
    write_extract(extract, folder)
    return folder


def _copy(raw: Path, tmp_path: Path) -> Path:
    target = tmp_path / "raw"
    shutil.copytree(raw, target)
    return target


def _read(raw: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(raw / f"{table}.csv", dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, raw: Path, table: str) -> None:
    frame.to_csv(raw / f"{table}.csv", index=False, lineterminator="\n")


def _config_file(config: dict[str, Any], path: Path, raw: Path | None = None) -> Path:
    config = copy.deepcopy(config)
    if raw is not None:
        config["paths"]["raw"] = str(raw)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["-q", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_clean_extract_passes_with_warnings_only(clean_raw, base_config, tmp_path, capsys):
    config_path = _config_file(base_config, tmp_path / "config.yaml", raw=clean_raw)
    report = tmp_path / "report.json"
    # No --raw: the folder comes from the config's paths.raw.
    status, out, err = _run(capsys, "check-data", "--config", str(config_path),
                            "--out", str(report))
    assert status == 0, out + err
    assert "Traceback" not in out + err
    assert "nothing would stop the pipeline" in out
    doc = json.loads(report.read_text())
    assert doc["passed"] is True and doc["n_errors"] == 0
    # The simulator plants junk rows: they are listed as warnings, not errors.
    assert doc["n_warnings"] > 0
    kinds = " ".join(p["message"] for p in doc["problems"])
    assert "exact duplicate" in kinds and "not in the patients table" in kinds
    assert {f["table"] for f in doc["files"]} == {"therapists", "patients", "sessions", "outcomes"}


def test_dropped_rows_agree_with_the_cleaning_ledger(clean_raw, base_config):
    """Same cleaners, same rules: every row check-data says is dropped, clean drops."""
    result = check_data(base_config, clean_raw)
    ledger = clean_tables(base_config, clean_raw).ledger
    dropped = ledger[ledger["fate"] == "dropped"].groupby("table").size()
    listed = {}
    for problem in result.problems:
        if "would be dropped" in problem.message:
            listed[problem.table] = listed.get(problem.table, 0) + problem.n_rows
    assert listed == {t: int(n) for t, n in dropped.items()}
    assert sum(listed.values()) > 0


@pytest.fixture(scope="module")
def broken(tmp_path_factory, clean_raw, base_config):
    """One extract broken in many ways at once; the CLI run's status, stdout, stderr, JSON."""
    folder = tmp_path_factory.mktemp("broken")
    raw = _copy(clean_raw, folder)
    patients = _read(raw, "patients").rename(columns={"patient_id": "PatientID"})
    patients.loc[4, "birth_date"] = "31/02/1990"
    # The arm follows the episode, so the simulator's duplicate rows stay exact duplicates.
    intervention = patients["episode_id"].str[-1].isin(["0", "3", "6"])
    patients["arm"] = intervention.map({True: "ETMI", False: "usual care"})
    patients.loc[7, "arm"] = "etmi"
    patients.loc[9, "arm"] = "Control"
    _write(patients, raw, "patients")
    outcomes = _read(raw, "outcomes")
    discharge = outcomes.index[outcomes["timepoint"] == "discharge"][:4]
    outcomes.loc[discharge, "timepoint"] = "Dischrage"
    function = outcomes.index[outcomes["instrument"] == "function"][0]
    outcomes.loc[function, "score"] = "130"
    _write(outcomes, raw, "outcomes")
    config = copy.deepcopy(base_config)
    config["allocation"].update(rule="column", column="arm")
    config_path = _config_file(config, folder / "config.yaml")
    report = folder / "report.json"
    status = main(["-q", "check-data", "--config", str(config_path), "--raw", str(raw),
                   "--out", str(report)])
    return {"status": status, "report": json.loads(report.read_text()), "raw": raw,
            "config": config, "function_row": int(function) + 1,
            "discharge_rows": [int(i) + 1 for i in discharge]}


def test_broken_extract_lists_every_problem_at_once(broken, capsys):
    # The report went to stdout of the fixture's run; rerun to capture it here.
    config_path = broken["raw"].parent / "config.yaml"
    status, out, err = _run(capsys, "check-data", "--config", str(config_path),
                            "--raw", str(broken["raw"]))
    assert status == 2 == broken["status"]
    assert "Traceback" not in out + err
    assert "would stop the pipeline" in err
    expected = [
        "required column 'patient_id' is missing", "Did you mean 'PatientID'?",
        "'Dischrage'", "'Dischrage' may be 'discharge'",
        "birth_date '31/02/1990' is not a date",
        "score 130 outside 0-100",
        "found 'etmi', 'Control'", "'etmi' may be 'ETMI'",
    ]
    flat = " ".join(out.split())  # the report wraps long lines
    missing = [text for text in expected if text not in flat]
    assert not missing, out


def test_json_report_names_file_column_rows_severity_and_suggestion(broken):
    problems = broken["report"]["problems"]
    assert broken["report"]["passed"] is False
    assert len({json.dumps(p, sort_keys=True) for p in problems}) == len(problems)
    errors = {(p["table"], p["column"]) for p in problems if p["severity"] == "error"}
    assert errors == {("patients", "patient_id"), ("patients", "arm"),
                      ("outcomes", "timepoint")}
    assert set(problems[0]) == {"file", "table", "column", "rows", "n_rows", "severity",
                                "message", "suggestion"}

    def find(column: str, text: str) -> dict[str, Any]:
        hits = [p for p in problems if p["column"] == column and text in p["message"]]
        assert len(hits) == 1, (column, text, problems)
        return hits[0]

    timepoint = find("timepoint", "must be one of")
    assert timepoint["severity"] == "error"
    assert timepoint["file"].endswith("outcomes.csv")
    assert timepoint["rows"] == broken["discharge_rows"]
    assert "'discharge'" in timepoint["suggestion"]
    patient = find("patient_id", "is missing")
    assert patient["severity"] == "error" and "PatientID" in patient["suggestion"]
    score = find("score", "130")
    assert score["severity"] == "warning" and broken["function_row"] in score["rows"]
    date = find("birth_date", "not a date")
    assert date["severity"] == "warning" and date["rows"] == [5] and date["n_rows"] == 1
    arm = find("arm", "arm values")
    assert arm["severity"] == "error" and arm["rows"] == [8, 10]


def test_strict_mode_makes_dropped_rows_errors(clean_raw, base_config):
    config = copy.deepcopy(base_config)
    config["input"]["strict"] = True
    result = check_data(config, clean_raw)
    assert not result.passed
    unknown = [p for p in result.problems if "not in the patients table" in p.message]
    assert unknown and all(p.severity == "error" for p in unknown)
    assert "input.strict is true" in unknown[0].suggestion
    # Exact duplicates never stop a run, strict or not.
    assert all(p.severity == "warning" for p in result.problems if "exact duplicate" in p.message)


def test_missing_file_wide_layout_and_mapping_mistakes(tmp_path, extract, base_config):
    raw = tmp_path / "raw"
    write_extract(extract, raw, layout="wide", file_format="parquet", config=base_config)
    (raw / "therapists.parquet").unlink()
    wide = pd.read_parquet(raw / "outcomes.parquet")
    wide.rename(columns={"pain_discharge": "pain_dischrage"}).to_parquet(
        raw / "outcomes.parquet")
    config = copy.deepcopy(base_config)
    config["input"].update(format="parquet", outcomes_layout="wide")
    for name in ("therapists", "patients", "sessions", "outcomes"):
        config["input"]["tables"][name] = {"file": f"{name}.parquet", "columns": {}}
    config["input"]["tables"]["patients"]["columns"] = {"sex": "gender", "patientid": "pid"}
    result = check_data(validate_config(config), raw)
    by_table: dict[str, list[str]] = {}
    for p in result.problems:
        by_table.setdefault(p.table, []).append(f"{p.severity}|{p.column}|{p.message}|"
                                                f"{p.suggestion}")
    text = "\n".join("\n".join(v) for v in by_table.values())
    assert any(m.startswith("error|None|file not found") for m in by_table["therapists"])
    assert "column 'gender' (configured for 'sex'" in text
    assert "maps 'patientid', which is not a column" in text and "Did you mean 'patient_id'" in text
    assert "required column 'pain_discharge' is missing" in text
    assert "Did you mean 'pain_dischrage'?" in text
    assert "references to the therapists table not checked" in text
    assert [f["rows"] for f in result.files if f["table"] == "therapists"] == [None]
    assert not result.passed


def test_at_most_three_example_values_are_shown(clean_raw, base_config, tmp_path):
    raw = _copy(clean_raw, tmp_path)
    sessions = _read(raw, "sessions")
    secrets = [f"ZZ{i}" for i in range(10)]
    sessions.loc[: len(secrets) - 1, "treatment_codes"] = secrets
    _write(sessions, raw, "sessions")
    result = check_data(base_config, raw)
    codes = [p for p in result.problems if p.column == "treatment_codes" and p.severity == "error"]
    assert len(codes) == 1
    shown = [s for s in secrets if f"'{s}'" in codes[0].message]
    assert len(shown) == 3
    assert codes[0].rows == [1, 2, 3, 4, 5] and codes[0].n_rows == 10


def test_clean_stops_on_the_first_problem_with_the_same_suggestion(broken):
    config = copy.deepcopy(broken["config"])
    config["input"]["tables"]["patients"]["columns"] = {"patient_id": "PatientID"}
    with pytest.raises(DataError, match="'Dischrage' may be 'discharge'"):
        clean_tables(validate_config(config), broken["raw"])


@pytest.mark.parametrize(("word", "candidates", "expected"), [
    ("patient_id", ["PatientID", "BirthDate"], "PatientID"),
    ("Dischrage", ["intake", "discharge"], "discharge"),
    ("covariats", ["covariates", "subgroups"], "covariates"),
    ("etmi", ["ETMI", "usual care"], "ETMI"),
    ("weight", ["age", "sex"], None),
])
def test_closest_match(word, candidates, expected):
    assert closest_match(word, candidates) == expected


@pytest.mark.slow
@pytest.mark.parametrize(("table", "column"), [("sessions", "treatment_codes"),
                                               ("patients", "bmi")])
def test_a_50_mb_cell_is_checked_in_linear_time(table, column, tmp_path, capsys):
    """Issue 19: check-data ran for over 3 minutes on a 50 MB cell (difflib and textwrap over
    the whole value) and echoed it whole. Now: under 10 s, an excerpt of at most 80
    characters."""
    import time

    from raw_fixtures import fixture_config, raw_extract, write_config
    from raw_fixtures import write_extract as write_fixture

    tables = raw_extract()
    tables[table].loc[2, column] = "9" * 50_000_000
    raw = write_fixture(tables, tmp_path / "raw")
    config_file = write_config(fixture_config(), tmp_path / "config.yaml")
    start = time.perf_counter()
    main(["check-data", str(config_file), "--raw", str(raw)])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 10, elapsed
    assert len(out) < 3000 and "(50,000,000" in out


def _single_rows(frame: pd.DataFrame, key: str, n: int) -> list[int]:
    """Positions of the first ``n`` rows whose key appears once (no planted duplicate)."""
    once = ~frame.duplicated(key, keep=False)
    return list(frame.index[once][:n])


@pytest.fixture(scope="module")
def implausible(tmp_path_factory, clean_raw):
    """The simulated extract with one violation of each plausibility rule."""
    raw = _copy(clean_raw, tmp_path_factory.mktemp("implausible"))
    patients = _read(raw, "patients")
    p = _single_rows(patients, "episode_id", 3)
    patients.loc[p[0], "symptom_duration_weeks"] = "-999"
    patients.loc[p[1], "bmi"] = "500"
    patients.loc[p[2], "birth_date"] = "1822-06-01"
    _write(patients, raw, "patients")
    sessions = _read(raw, "sessions")
    known = sessions[sessions["episode_id"].isin(set(patients["episode_id"]))
                     & ~sessions["episode_id"].isin(set(patients.loc[p, "episode_id"]))]
    s = _single_rows(known, "session_id", 2)
    sessions.loc[s[0], "session_date"] = "1990-03-01"
    sessions.loc[s[1], "session_date"] = "2099-03-01"
    _write(sessions, raw, "sessions")
    outcomes = _read(raw, "outcomes")
    episode = outcomes.loc[outcomes["timepoint"] == "discharge", "episode_id"]
    episode = next(e for e in episode if e not in set(patients.loc[p, "episode_id"])
                   and (outcomes["episode_id"] == e).sum() == 6)
    rows = outcomes.index[(outcomes["episode_id"] == episode)
                          & (outcomes["timepoint"] == "discharge")]
    intake = pd.Timestamp(outcomes.loc[(outcomes["episode_id"] == episode)
                                       & (outcomes["timepoint"] == "intake"),
                                       "assessment_date"].iloc[0])
    outcomes.loc[rows, "assessment_date"] = (intake - pd.Timedelta(days=2)).strftime("%Y-%m-%d")
    _write(outcomes, raw, "outcomes")
    return {"raw": raw, "patients": [i + 1 for i in p], "sessions": [i + 1 for i in s],
            "discharge": [int(i) + 1 for i in rows]}


def test_check_data_lists_every_plausibility_violation(implausible, base_config):
    result = check_data(base_config, implausible["raw"])
    assert result.passed  # every default action is a ledger fate
    found = {(p.table, p.column, tuple(p.rows)): p for p in result.problems}
    rows = implausible["patients"]
    expected = [
        ("patients", "symptom_duration_weeks", [rows[0]], "missing-value code"),
        ("patients", "bmi", [rows[1]], "plausibility.variables.bmi.range"),
        ("patients", "birth_date", [rows[2]], "gives age"),
        ("sessions", "session_date", implausible["sessions"], "outside the study window"),
        ("outcomes", "assessment_date", implausible["discharge"], "before the intake"),
    ]
    for table, column, where, text in expected:
        problem = found.get((table, column, tuple(where)))
        assert problem is not None, (table, column, where, result.summary())
        assert problem.severity == "warning" and text in problem.message, problem
        assert "plausibility" in problem.suggestion
    # The same fates as the cleaning ledger.
    ledger = clean_tables(base_config, implausible["raw"]).ledger
    named = ledger[ledger["reason"].str.contains("plausibility.", regex=False)]
    assert named.groupby(["table", "fate"]).size().to_dict() == {
        ("patients", "value_set_missing"): 2, ("patients", "dropped"): 1,
        ("sessions", "dropped"): 2, ("outcomes", "value_set_missing"): 3}
    listed = sum(p.n_rows for p in result.problems if "plausibility." in p.message)
    assert listed == len(named)


def test_check_data_lists_a_stopping_rule_as_an_error(implausible, base_config, tmp_path,
                                                      capsys):
    config = copy.deepcopy(base_config)
    config["plausibility"]["variables"] = {"bmi": {"action": "stop"}}
    config["plausibility"]["dates"]["followup_order"]["action"] = "stop"
    config_path = _config_file(validate_config(config), tmp_path / "config.yaml")
    status, out, err = _run(capsys, "check-data", "--config", str(config_path),
                            "--raw", str(implausible["raw"]))
    assert status == 2 and "Traceback" not in out + err
    flat = " ".join(out.split())
    assert "error: column 'bmi', row " in flat
    assert "break the plausibility rule plausibility.variables.bmi.range" in flat
    assert "break the plausibility rule plausibility.dates.followup_order" in flat
    assert "warning: column 'session_date'" in flat  # the other rules still ledger
