"""Catalogue of malformed raw extracts: each must fail cleanly through the command line.

Every case starts from the valid fixture extract, breaks it in one way, and runs
``trial-analysis clean``. Each must give exit status 2, a short message on stderr naming the
file, the column (where there is one) and the rule broken, no Python traceback, and no output
file. Adding a case is one row in ``CASES``: a name, a function that breaks the extract, and
strings the message must contain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from raw_fixtures import fixture_config, raw_extract, write_config, write_extract

from trial_analysis.cli import main

Tables = dict[str, pd.DataFrame]


@dataclass
class Setup:
    """A test case's working state: tables to write, config, and files to overwrite after."""

    tables: Tables
    config: dict[str, Any]
    raw: Path
    file_format: str = "csv"
    layout: str = "long"
    after_write: list[Callable[[Path], None]] = field(default_factory=list)


def _set(table: str, row: int, column: str, value: str) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        s.tables[table].loc[row, column] = value

    return breaker


def _drop_column(table: str, column: str) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        s.tables[table] = s.tables[table].drop(columns=column)

    return breaker


def _write_bytes(table: str, content: bytes) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        s.after_write.append(lambda raw: (raw / f"{table}.csv").write_bytes(content))

    return breaker


def _rewrite(table: str, transform: Callable[[bytes], bytes]) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        def rewrite(raw: Path) -> None:
            path = raw / f"{table}.csv"
            path.write_bytes(transform(path.read_bytes()))

        s.after_write.append(rewrite)

    return breaker


def _header_only(s: Setup) -> None:
    s.tables["sessions"] = s.tables["sessions"].iloc[0:0]


def _scores_as_text(s: Setup) -> None:
    s.tables["outcomes"]["score"] = "moderate"


def _all_scores_missing(s: Setup) -> None:
    s.tables["outcomes"]["score"] = ""


def _conflicting_duplicate_id(s: Setup) -> None:
    row = s.tables["patients"].iloc[[3]].copy()
    row["bmi"] = "35.0"
    s.tables["patients"] = pd.concat([s.tables["patients"], row], ignore_index=True)


def _conflicting_scores(s: Setup) -> None:
    row = s.tables["outcomes"].iloc[[0]].copy()
    row["outcome_id"] = "O99999"
    row["score"] = "12"
    s.tables["outcomes"] = pd.concat([s.tables["outcomes"], row], ignore_index=True)


def _unparsable_dates(s: Setup) -> None:
    s.tables["sessions"]["session_date"] = "March the 3rd"


def _excel_instead_of_csv(s: Setup) -> None:
    def write(raw: Path) -> None:
        s.tables["therapists"].to_excel(raw / "therapists.csv", index=False, engine="openpyxl")

    s.after_write.append(write)


def _parquet_instead_of_csv(s: Setup) -> None:
    s.after_write.append(lambda raw: s.tables["patients"].to_parquet(raw / "patients.csv"))


def _csv_instead_of_parquet(s: Setup) -> None:
    s.file_format = "parquet"
    s.config = fixture_config("parquet")
    s.after_write.append(lambda raw: s.tables["sessions"].to_csv(raw / "sessions.parquet"))


def _strict(s: Setup) -> None:
    s.config["input"]["strict"] = True


def _unknown_therapist_strict(s: Setup) -> None:
    _strict(s)
    s.tables["sessions"].loc[4, "therapist_id"] = "T999"


def _unknown_episode_strict(s: Setup) -> None:
    _strict(s)
    s.tables["outcomes"].loc[7, "episode_id"] = "E999999"


def _n_sessions(values: list[str]) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        counts = ["2"] * len(s.tables["patients"])
        counts[: len(values)] = values
        s.tables["patients"]["n_sessions"] = counts

    return breaker


def _missing_file(s: Setup) -> None:
    s.after_write.append(lambda raw: (raw / "outcomes.csv").unlink())


def _mapping_to_absent_column(s: Setup) -> None:
    s.tables["patients"] = s.tables["patients"].rename(columns={"referral_date": "referal_dt"})
    s.config["input"]["tables"]["patients"]["columns"] = {"referral_date": "referral_dt"}


def _too_many_invalid(s: Setup) -> None:
    s.tables["sessions"].loc[0:4, "episode_id"] = "E404404"


def _semicolon_bom(s: Setup) -> None:
    def write(raw: Path) -> None:
        text = s.tables["therapists"].to_csv(index=False, sep=";", lineterminator="\n")
        (raw / "therapists.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    s.after_write.append(write)


def _latin1(s: Setup) -> None:
    def write(raw: Path) -> None:
        text = s.tables["therapists"].to_csv(index=False, lineterminator="\n")
        text = text.replace("C02", "Cé2", 1)
        (raw / "therapists.csv").write_bytes(text.encode("latin-1"))

    s.after_write.append(write)


def _ragged_row(s: Setup) -> None:
    _rewrite("sessions", lambda b: b.replace(b"S00003,", b"S00003,extra,", 1))(s)


def _repeated_header(s: Setup) -> None:
    s.tables["therapists"].columns = [
        "therapist_id", "clinic_id", "age", "age", "etmi_training_date"
    ]


def _wide_missing_score_column(s: Setup) -> None:
    s.layout = "wide"
    s.config = fixture_config("csv", "wide")
    s.after_write.append(
        lambda raw: pd.read_csv(raw / "outcomes.csv", dtype=str)
        .drop(columns="pain_discharge")
        .to_csv(raw / "outcomes.csv", index=False)
    )


def _flag_not_binary(s: Setup) -> None:
    s.tables["patients"].loc[2, "depression"] = "yes"


def _filter(spec: dict[str, Any]) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        s.config["eligibility"]["filters"] = [spec]

    return breaker


def _plausibility(section: str, name: str, **rule: Any) -> Callable[[Setup], None]:
    """Set a plausibility rule (``variables`` or ``dates``) of the config."""
    def breaker(s: Setup) -> None:
        rules = s.config.setdefault("plausibility", {}).setdefault(section, {})
        rules[name] = {**rules.get(name, {}), **rule}

    return breaker


def _both(*breakers: Callable[[Setup], None]) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        for each in breakers:
            each(s)

    return breaker


def _age_column(values: dict[int, str]) -> Callable[[Setup], None]:
    """Patients give age directly (declared ``age: number``), with some values replaced."""
    def breaker(s: Setup) -> None:
        patients = s.tables["patients"].drop(columns="birth_date")
        patients["age"] = "45"
        for row, value in values.items():
            patients.loc[row, "age"] = value
        s.tables["patients"] = patients
        s.config["input"]["tables"]["patients"]["variables"] = {"age": "number"}

    return breaker


def _discharge_date(episode: str, date: str) -> Callable[[Setup], None]:
    def breaker(s: Setup) -> None:
        outcomes = s.tables["outcomes"]
        rows = (outcomes["episode_id"] == episode) & (outcomes["timepoint"] == "discharge")
        outcomes.loc[rows, "assessment_date"] = date

    return breaker


def _declared_without_range(s: Setup) -> None:
    s.tables["patients"]["grip_kg"] = "30"
    s.config["input"]["tables"]["patients"]["variables"] = {"grip_kg": "number"}


def _folded_duplicate_id_column(s: Setup) -> None:
    # issue 19: both Patient_ID and PATIENT_ID; the last one used to win silently
    s.tables["patients"] = s.tables["patients"].rename(columns={"patient_id": "Patient_ID"})
    s.tables["patients"]["PATIENT_ID"] = s.tables["patients"]["Patient_ID"]


def _folded_duplicate_spaces(s: Setup) -> None:
    s.tables["therapists"]["Clinic ID"] = s.tables["therapists"]["clinic_id"]
    s.tables["therapists"]["clinic id"] = "C09"


def _ids_listed_as_missing(s: Setup) -> None:
    # input.missing_values makes "NA" missing in id columns too: the rows then lack a key
    s.config["input"]["missing_values"] = ["NA"]
    s.tables["sessions"].loc[0:4, "session_id"] = "NA"


@dataclass(frozen=True)
class Case:
    name: str
    breaker: Callable[[Setup], None]
    expected: tuple[str, ...]  # substrings of the message (file, column, rows, rule)


CASES = [
    Case("missing column", _drop_column("patients", "birth_date"),
         ("patients.csv", "birth_date", "required column")),
    Case("scores as text", _scores_as_text, ("outcomes.csv", "'score'", "not numbers", "rows 1")),
    Case("empty file (0 bytes)", _write_bytes("therapists", b""), ("therapists.csv", "empty")),
    Case("header only", _header_only, ("sessions.csv", "no data rows")),
    Case("all outcome scores missing", _all_scores_missing,
         ("outcomes.csv", "score", "no usable outcome scores")),
    Case("duplicate ids with conflicting data", _conflicting_duplicate_id,
         ("patients.csv", "episode_id", "different content", "E000004", "rows 4, 13")),
    Case("same assessment, different scores", _conflicting_scores,
         ("outcomes.csv", "score", "different scores", "rows 1, 67")),
    Case("unknown treatment code", _set("sessions", 2, "treatment_codes", "ETMI;YOGA"),
         ("sessions.csv", "treatment_codes", "rows 3", "YOGA", "codes must be among")),
    Case("unknown instrument", _set("outcomes", 5, "instrument", "mood"),
         ("outcomes.csv", "instrument", "rows 6", "'mood'", "must be one of")),
    Case("unknown timepoint", _set("outcomes", 9, "timepoint", "week6"),
         ("outcomes.csv", "timepoint", "rows 10", "'week6'", "intake, discharge")),
    Case("unknown sex code", _set("therapists", 1, "sex", "X"),
         ("therapists.csv", "column 'sex'", "rows 2", "'X'")),
    Case("unparsable dates (whole column)", _unparsable_dates,
         ("sessions.csv", "session_date", "no configured format", "March the 3rd")),
    Case("non-UTF-8 file", _latin1, ("therapists.csv", "not valid utf-8", "rows 3", "encoding")),
    Case("Excel file where CSV is expected", _excel_instead_of_csv,
         ("therapists.csv", "Excel workbook", "not comma-separated")),
    Case("Parquet file where CSV is expected", _parquet_instead_of_csv,
         ("patients.csv", "a Parquet file", "not comma-separated")),
    Case("CSV where Parquet is expected", _csv_instead_of_parquet,
         ("sessions.parquet", "not a Parquet file")),
    Case("session for unknown therapist (strict)", _unknown_therapist_strict,
         ("sessions.csv", "rows 5", "'T999' not in the therapists table", "input.strict")),
    Case("outcome for unknown episode (strict)", _unknown_episode_strict,
         ("outcomes.csv", "rows 8", "'E999999' not in the patients table", "input.strict")),
    Case("negative session count", _n_sessions(["3", "-1"]),
         ("patients.csv", "n_sessions", "rows 2", "whole numbers of 0 or more", "-1")),
    Case("fractional session count", _n_sessions(["2.5"]),
         ("patients.csv", "n_sessions", "rows 1", "whole numbers of 0 or more", "2.5")),
    Case("missing raw file", _missing_file, ("outcomes.csv", "file not found")),
    Case("column mapping names an absent column", _mapping_to_absent_column,
         ("patients.csv", "'referral_dt'", "input.tables.patients.columns",
          "Did you mean 'referal_dt'?")),
    Case("too many invalid rows", _too_many_invalid,
         ("sessions.csv", "5 of 25 rows", "max_invalid_fraction", "'E404404' not in the patients")),
    Case("BOM and semicolon-delimited CSV", _semicolon_bom,
         ("therapists.csv", "semicolons", "input.delimiter")),
    Case("ragged row (extra field)", _ragged_row, ("sessions.csv", "rows 3", "6 fields")),
    Case("repeated column name", _repeated_header,
         ("therapists.csv", "column 'age'", "column names must be unique")),
    Case("wide layout without a score column", _wide_missing_score_column,
         ("outcomes.csv", "pain_discharge", "required column")),
    Case("flag not 0/1", _flag_not_binary,
         ("patients.csv", "depression", "rows 3", "0 or 1", "'yes'")),
    Case("row filter on a column the file lacks", _filter({"column": "per_protocol",
                                                           "keep": [1]}),
         ("patients.csv", "per_protocol", "required column")),
    # Implausible values where the study's rule says stop (issue 19; ledgered by default,
    # see LEDGERED below).
    Case("BMI outside its range (rule: stop)",
         _both(_set("patients", 0, "bmi", "300"), _plausibility("variables", "bmi",
                                                                 action="stop")),
         ("patients.csv", "column 'bmi'", "rows 1", "plausibility.variables.bmi.range",
          "bmi 300 outside the plausible range 10-80")),
    Case("birth date in 1822 (rule: stop)",
         _both(_set("patients", 1, "birth_date", "1822-01-02"),
               _plausibility("variables", "age", action="stop")),
         ("patients.csv", "column 'birth_date'", "rows 2", "gives age 200",
          "plausibility.variables.age.range")),
    Case("age column holding 200 and 1000 (rule: stop)",
         _both(_age_column({3: "200", 5: "1000"}), _plausibility("variables", "age",
                                                                  action="stop")),
         ("patients.csv", "column 'age'", "rows 4, 6", "2 value(s)", "age 200 outside",
          "plausibility.variables.age.range")),
    Case("sessions dated 1990 and 2099 (rule: stop)",
         _both(_set("sessions", 0, "session_date", "1990-02-10"),
               _set("sessions", 4, "session_date", "2099-03-15"),
               _plausibility("dates", "study_window", action="stop")),
         ("sessions.csv", "column 'session_date'", "rows 1, 5", "outside the study window",
          "plausibility.dates.study_window")),
    Case("discharge before intake (rule: stop)",
         _both(_discharge_date("E000004", "2022-05-10"),
               _plausibility("dates", "followup_order", action="stop")),
         ("outcomes.csv", "column 'assessment_date'", "rows 19, 20, 21",
          "discharge assessment_date 2022-05-10 before the intake assessment 2022-05-12",
          "plausibility.dates.followup_order")),
    # Hostile cases of our own, one per rule.
    Case("missing-value code -999.0 in a count without codes", _n_sessions(["-999.0"]),
         ("patients.csv", "n_sessions", "rows 1", "whole numbers of 0 or more")),
    Case("session 3 years into its episode (rule: stop)",
         _both(_set("sessions", 1, "session_date", "2024-11-20"),
               _plausibility("dates", "episode", action="stop")),
         ("sessions.csv", "rows 2", "is 1021 days after the referral 2022-02-03",
          "(at most 730 allowed)", "plausibility.dates.episode")),
    Case("declared number variable without a range", _declared_without_range,
         ("grip_kg", "plausible range", "plausibility/variables/grip_kg/range")),
    Case("two id columns equal ignoring case", _folded_duplicate_id_column,
         ("patients.csv", "'Patient_ID'", "'PATIENT_ID'", "ambiguous")),
    Case("two columns equal ignoring case and spaces", _folded_duplicate_spaces,
         ("therapists.csv", "'Clinic ID'", "'clinic id'", "ambiguous")),
    Case("ids configured as missing", _ids_listed_as_missing,
         ("sessions.csv", "5 of 25 rows", "missing session_id")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture):
    setup = Setup(tables=raw_extract(), config=fixture_config(), raw=tmp_path / "raw")
    case.breaker(setup)
    write_extract(setup.tables, setup.raw, setup.file_format, setup.layout)
    for step in setup.after_write:
        step(setup.raw)
    config_file = write_config(setup.config, tmp_path / "config.yaml")
    out = tmp_path / "clean"
    ledger = tmp_path / "clean_ledger.parquet"

    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(setup.raw),
                   "--out", str(out), "--ledger", str(ledger)])

    captured = capsys.readouterr()
    message = captured.err
    assert status == 2, message
    assert "Traceback" not in captured.err + captured.out
    assert message.startswith("trial-analysis clean: error: ")
    for expected in case.expected:
        assert expected in message, f"{expected!r} not in {message!r}"
    assert len(message) < 800, "the message should be short"
    assert not out.exists() or not any(out.iterdir()), "no partial output"
    assert not ledger.exists()


def test_catalogue_is_large_and_distinct():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


def test_valid_fixture_passes_the_same_path(tmp_path: Path, capsys: pytest.CaptureFixture):
    """The harness itself: the unbroken extract cleans with exit status 0 and writes outputs."""
    raw = write_extract(raw_extract(), tmp_path / "raw")
    config_file = write_config(fixture_config(), tmp_path / "config.yaml")
    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(raw),
                   "--out", str(tmp_path / "clean"), "--ledger", str(tmp_path / "ledger.parquet")])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == [
        "outcomes.parquet", "patients.parquet", "sessions.parquet", "therapists.parquet"
    ]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"column": "sex", "keep": ["F", "X"]},
     ("patients.parquet", "column 'sex'", "eligibility.filters keep", "['X'] never occur",
      "Values present: F, M")),
    ({"column": "depression", "drop": ["yes"]},
     ("patients.parquet", "column 'depression'", "the column is numeric", "['yes']")),
    ({"column": "sex", "keep": ["NOBODY"]},
     ("patients.parquet", "column 'sex'", "['NOBODY'] never occur")),
])
def test_row_filter_values_not_in_the_data_fail_cleanly(spec: dict[str, Any], expected,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture):
    """A filter value no episode has stops the eligibility step (a typo would filter none)."""
    config = fixture_config()
    config["eligibility"]["filters"] = [spec]
    raw = write_extract(raw_extract(), tmp_path / "raw")
    config_file = write_config(config, tmp_path / "config.yaml")
    clean, ledger = tmp_path / "clean", tmp_path / "clean_ledger.parquet"
    assert main(["-q", "clean", "--config", str(config_file), "--raw", str(raw), "--out",
                 str(clean), "--ledger", str(ledger)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    outputs = [tmp_path / name for name in ("cohort.parquet", "ledger.parquet", "flow.csv")]
    status = main(["-q", "eligibility", "--config", str(config_file), "--clean", str(clean),
                   "--clean-ledger", str(ledger), "--cohort", str(outputs[0]),
                   "--ledger", str(outputs[1]), "--flow", str(outputs[2])])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("trial-analysis eligibility: error: ")
    for text in expected:
        assert text in captured.err, f"{text!r} not in {captured.err!r}"
    assert len(captured.err) < 800
    assert not any(path.exists() for path in outputs)


def test_row_filter_on_an_undeclared_column_gives_each_filtered_record_a_fate(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    """The harness's valid counterpart: a third arm, in a column nobody declared, filtered out."""
    tables = raw_extract()
    groups = ["A", "B", "C"]
    tables["patients"]["group"] = [groups[i % 3] for i in range(len(tables["patients"]))]
    config = fixture_config()
    config["eligibility"]["filters"] = [{"column": "group", "keep": ["A", "B"]}]
    raw = write_extract(tables, tmp_path / "raw")
    config_file = write_config(config, tmp_path / "config.yaml")
    clean, clean_ledger = tmp_path / "clean", tmp_path / "clean_ledger.parquet"
    assert main(["-q", "clean", "--config", str(config_file), "--raw", str(raw), "--out",
                 str(clean), "--ledger", str(clean_ledger)]) == 0, capsys.readouterr().err
    cohort, ledger, flow = (tmp_path / n for n in ("cohort.parquet", "ledger.parquet",
                                                    "flow.csv"))
    assert main(["-q", "eligibility", "--config", str(config_file), "--clean", str(clean),
                 "--clean-ledger", str(clean_ledger), "--cohort", str(cohort),
                 "--ledger", str(ledger), "--flow", str(flow)]) == 0, capsys.readouterr().err
    kept = pd.read_parquet(cohort)
    assert set(kept["group"]) <= {"A", "B"} and len(kept) > 0
    fates = pd.read_parquet(ledger)
    reason = "episode excluded: filter: group not in [A, B]"
    filtered = fates.loc[(fates["table"] == "patients") & (fates["reason"] == reason)]
    assert len(filtered) > 0 and (filtered["fate"] == "excluded").all()
    # Their sessions and outcomes carry the same fate; every raw record has one row.
    assert {"sessions", "outcomes"} <= set(fates.loc[fates["reason"] == reason, "table"])
    for name, frame in tables.items():
        assert (fates["table"] == name).sum() == len(frame)
    row = pd.read_csv(flow).set_index("reason").loc["filter: group not in [A, B]"]
    assert int(row["n_excluded"]) == len(filtered)


# ---- implausible values with the default rules: a ledgered result, never a silent one ------


@dataclass(frozen=True)
class Ledgered:
    name: str
    breaker: Callable[[Setup], None]
    table: str
    record_ids: tuple[int, ...]
    fate: str
    reason: str  # a substring of every one of the records' ledger reasons


LEDGERED = [
    # The cases of issue 19.
    Ledgered("-999 in symptom duration", _set("patients", 2, "symptom_duration_weeks", "-999"),
             "patients", (3,), "value_set_missing",
             "symptom_duration_weeks -999 is a missing-value code (plausibility.variables."),
    Ledgered("-999 in BMI", _set("patients", 3, "bmi", "-999"), "patients", (4,),
             "value_set_missing", "bmi -999 is a missing-value code"),
    Ledgered("birth date in 1822", _set("patients", 1, "birth_date", "1822-01-02"),
             "patients", (2,), "dropped", "gives age 200 at referral 2022-03-10"),
    Ledgered("age column holding 200 and 1000", _age_column({3: "200", 5: "1000"}),
             "patients", (4, 6), "dropped", "outside the plausible range 0-120"),
    Ledgered("sessions dated 1990 and 2099",
             _both(_set("sessions", 0, "session_date", "1990-02-10"),
                   _set("sessions", 4, "session_date", "2099-03-15")),
             "sessions", (1, 5), "dropped", "outside the study window with its margin"),
    Ledgered("discharge before intake", _discharge_date("E000004", "2022-05-10"),
             "outcomes", (19, 20, 21), "value_set_missing",
             "before the intake assessment 2022-05-12 (plausibility.dates.followup_order)"),
    # Hostile cases of our own, one per rule.
    Ledgered("missing-value code written -999.0 with spaces",
             _set("patients", 0, "bmi", " -999.0 "), "patients", (1,), "value_set_missing",
             "bmi -999 is a missing-value code"),
    Ledgered("BMI in the wrong units (a weight in kg)", _set("patients", 4, "bmi", "95"),
             "patients", (5,), "value_set_missing", "bmi 95 outside the plausible range 10-80"),
    Ledgered("born after the referral", _set("patients", 6, "birth_date", "2023-01-01"),
             "patients", (7,), "dropped", "gives age -1"),
    Ledgered("age given as 1e3", _age_column({2: "1e3"}), "patients", (3,), "dropped",
             "age 1000 outside the plausible range 0-120"),
    Ledgered("session date with a year typo (2202)", _set("sessions", 8, "session_date",
                                                          "2202-05-19"),
             "sessions", (9,), "dropped", "session_date 2202-05-19 outside the study window"),
    Ledgered("session 3 years into its episode", _set("sessions", 1, "session_date",
                                                      "2024-11-20"),
             "sessions", (2,), "dropped", "1021 days after the referral"),
    Ledgered("therapist aged 7", _set("therapists", 2, "age", "7"), "therapists", (3,),
             "value_set_missing", "plausibility.variables.therapist_age.range"),
]


@pytest.mark.parametrize("case", LEDGERED, ids=[c.name for c in LEDGERED])
def test_implausible_input_is_ledgered(case: Ledgered, tmp_path: Path,
                                       capsys: pytest.CaptureFixture):
    setup = Setup(tables=raw_extract(), config=fixture_config(), raw=tmp_path / "raw")
    # The fixture is small: one dropped patient is 8% of its table.
    setup.config["input"]["max_invalid_fraction"] = 0.5
    case.breaker(setup)
    write_extract(setup.tables, setup.raw)
    config_file = write_config(setup.config, tmp_path / "config.yaml")
    out, ledger = tmp_path / "clean", tmp_path / "clean_ledger.parquet"

    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(setup.raw),
                   "--out", str(out), "--ledger", str(ledger)])

    assert status == 0, capsys.readouterr().err
    records = pd.read_parquet(ledger).set_index(["table", "record_id"]).loc[case.table]
    assert len(records) == len(setup.tables[case.table])
    for record in case.record_ids:
        fate, reason = records.loc[record, ["fate", "reason"]]
        assert fate == case.fate and case.reason in reason, (fate, reason)
    assert "plausibility." in " ".join(records.loc[list(case.record_ids), "reason"])
    cleaned = pd.read_parquet(out / f"{case.table}.parquet").set_index("record_id")
    if case.fate == "dropped":
        assert cleaned.index.intersection(case.record_ids).empty


# ---- hostile input that must be accepted, with the right result -------------------------------


def _clean_cli(tables: Tables, config: dict[str, Any], tmp_path: Path,
               capsys: pytest.CaptureFixture) -> tuple[Path, pd.DataFrame]:
    raw = write_extract(tables, tmp_path / "raw")
    config_file = write_config(config, tmp_path / "config.yaml")
    out, ledger = tmp_path / "clean", tmp_path / "clean_ledger.parquet"
    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(raw),
                   "--out", str(out), "--ledger", str(ledger)])
    assert status == 0, capsys.readouterr().err
    return out, pd.read_parquet(ledger)


@pytest.mark.parametrize("spelling", ["NA", "NULL", "None", "nan", "N/A"])
def test_an_id_spelled_like_missing_is_an_id(spelling: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """Issue 19: a therapist id "NA" was read as missing and its patients lost as "missing
    therapist_id". Ids are read as written."""
    tables = raw_extract()
    for name in ("therapists", "sessions"):
        frame = tables[name]
        frame.loc[frame["therapist_id"] == "T001", "therapist_id"] = spelling
    tables["patients"].loc[0, "patient_id"] = spelling
    out, ledger = _clean_cli(tables, fixture_config(), tmp_path, capsys)
    therapists = pd.read_parquet(out / "therapists.parquet")
    sessions = pd.read_parquet(out / "sessions.parquet")
    patients = pd.read_parquet(out / "patients.parquet")
    assert spelling.upper() in set(therapists["therapist_id"])
    assert (sessions["therapist_id"] == spelling.upper()).sum() == 7
    assert patients.loc[patients["episode_id"] == "E000001", "patient_id"].item() == \
        spelling.upper()
    assert not (ledger["fate"] == "dropped").any(), ledger[ledger["fate"] == "dropped"]


def test_other_columns_still_read_na_as_missing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    tables = raw_extract()
    tables["patients"].loc[0, "bmi"] = "NA"
    tables["patients"].loc[1, "ses_score"] = "NULL"
    out, ledger = _clean_cli(tables, fixture_config(), tmp_path, capsys)
    patients = pd.read_parquet(out / "patients.parquet").set_index("episode_id")
    assert pd.isna(patients.loc["E000001", "bmi"])
    assert pd.isna(patients.loc["E000002", "ses_score"])
    # missing as written, not a value that failed to parse
    assert not (ledger["fate"] == "value_set_missing").any()


# ---- what the console shows through Snakemake and make ----------------------------------------


def _study_dir(tmp_path: Path, tables: Tables) -> Path:
    """A study of the fixture extract under ``tmp_path`` (config/config.yaml, data/raw)."""
    write_extract(tables, tmp_path / "data" / "raw")
    config = fixture_config()
    config.pop("simulation", None)  # the study's own data: no simulate step
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    return tmp_path


def test_snakemake_shows_the_steps_one_line_error_on_the_terminal(tmp_path: Path) -> None:
    """Issue 19: through Snakemake a bad input showed only "Error in rule clean ... check log
    file(s)"; the step's own message was in logs/clean.log alone."""
    from conftest import run_snakemake

    tables = raw_extract()
    tables["patients"] = tables["patients"].drop(columns="birth_date")
    workdir = _study_dir(tmp_path, tables)
    result = run_snakemake(workdir, "data/interim/clean_ledger.parquet", cores=1)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "trial-analysis clean: error: " in said
    assert "patients.csv" in said and "birth_date" in said
    assert "Traceback" not in said


def test_a_mistyped_override_names_the_command_line(tmp_path: Path) -> None:
    """Issue 19: `--config sed=7` blamed config/config.yaml."""
    from conftest import run_snakemake

    workdir = _study_dir(tmp_path, raw_extract())
    result = run_snakemake(workdir, "-n", "--config", "sed=7")
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "the command line (--config sed=7)" in said
    assert "did you mean 'seed'" in said


def test_a_dotted_override_gets_a_plain_message(capsys: pytest.CaptureFixture) -> None:
    """Issue 19: `snakemake --config analysis.reml=false` ended in Snakemake's raw ValueError;
    `trial-analysis pipeline` (what `make report` runs) says what to write instead."""
    status = main(["pipeline", "-n", "--config", "analysis.reml=false"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("trial-analysis pipeline: error: the command line")
    assert "analysis=\"{reml: false}\"" in err and "Traceback" not in err


def test_reruns_after_an_interrupted_run_redo_incomplete_files() -> None:
    """Issue 19: after kill -9 a plain rerun refused with IncompleteFilesException. The
    workflow profile every `snakemake` run of this Snakefile reads sets rerun-incomplete."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    profile = yaml.safe_load((repo / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True
    assert "trial_analysis pipeline" in (repo / "Makefile").read_text()


def test_the_pipeline_command_clears_the_locks_of_a_killed_run(tmp_path: Path) -> None:
    """After kill -9 Snakemake's lock files remain and every rerun refused; `make report`
    (trial-analysis pipeline) removes them when no other pipeline holds its own lock."""
    import fcntl

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    assert main(["pipeline", "--directory", str(tmp_path), "--version"]) == 0
    assert not list(locks.iterdir())
    # while another pipeline runs here (it holds the lock), nothing is removed
    (locks / "0.input.lock").write_text("")
    with open(tmp_path / ".snakemake" / "trial-analysis-pipeline.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["pipeline", "--directory", str(tmp_path), "--version"]) == 2
    assert (locks / "0.input.lock").exists()


# ---- bounded messages, encodings, operating-system errors -------------------------------------


def _run_clean(setup: Setup, tmp_path: Path) -> tuple[int, str]:
    write_extract(setup.tables, setup.raw, setup.file_format, setup.layout)
    for step in setup.after_write:
        step(setup.raw)
    config_file = write_config(setup.config, tmp_path / "config.yaml")
    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(setup.raw),
                   "--out", str(tmp_path / "clean"), "--ledger", str(tmp_path / "l.parquet")])
    return status, ""


def test_a_huge_cell_is_quoted_as_an_excerpt(tmp_path: Path, capsys: pytest.CaptureFixture
                                             ) -> None:
    """Issue 19: a 50 MB cell was echoed whole into the log (5 MB here: the same code path)."""
    setup = Setup(tables=raw_extract(), config=fixture_config(), raw=tmp_path / "raw")
    setup.tables["sessions"].loc[2, "treatment_codes"] = "X" * 5_000_000
    status, _ = _run_clean(setup, tmp_path)
    err = capsys.readouterr().err
    assert status == 2 and len(err) < 800
    assert "(5,000,000 characters)" in err
    quoted = err.split("found '", 1)[1].split("'", 1)[0]
    assert len(quoted) <= 80


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_files_are_read_with_or_without_a_byte_order_mark(
        encoding: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 19: `input.encoding: utf-16` with a file without a BOM ended in a traceback."""
    setup = Setup(tables=raw_extract(), config=fixture_config(encoding="utf-16"),
                  raw=tmp_path / "raw")

    def recode(raw: Path) -> None:
        for path in raw.glob("*.csv"):
            path.write_bytes(path.read_text(encoding="utf-8").encode(encoding))

    setup.after_write.append(recode)
    status, _ = _run_clean(setup, tmp_path)
    assert status == 0, capsys.readouterr().err
    therapists = pd.read_parquet(tmp_path / "clean" / "therapists.parquet")
    assert therapists["therapist_id"].tolist() == ["T001", "T002", "T003", "T004"]


def test_a_utf16_file_read_as_utf8_is_refused_with_the_right_hint(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    setup = Setup(tables=raw_extract(), config=fixture_config(), raw=tmp_path / "raw")
    setup.after_write.append(lambda raw: (raw / "therapists.csv").write_bytes(
        (raw / "therapists.csv").read_text().encode("utf-16-le")))
    status, _ = _run_clean(setup, tmp_path)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "therapists.csv: the file is UTF-16 text (little-endian, no byte-order mark)" in err
    assert "Set input.encoding to utf-16-le" in err


def test_a_full_disk_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: a full disk during `figures` ended in a traceback. Any step's writes go
    through io.atomic_path; ENOSPC there (or anywhere) is one line naming the cause."""
    import errno
    import os

    from trial_analysis import io

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(io.os, "replace", full)
    setup = Setup(tables=raw_extract(), config=fixture_config(), raw=tmp_path / "raw")
    status, _ = _run_clean(setup, tmp_path)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "No space left on device; the disk is full" in err


def test_a_file_where_the_output_folder_should_be_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = write_extract(raw_extract(), tmp_path / "raw")
    config_file = write_config(fixture_config(), tmp_path / "config.yaml")
    (tmp_path / "occupied").write_text("")
    status = main(["-q", "clean", "--config", str(config_file), "--raw", str(raw),
                   "--out", str(tmp_path / "occupied" / "clean"),
                   "--ledger", str(tmp_path / "occupied" / "l.parquet")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "Not a directory; a file stands where a folder is needed" in err


# ---- the other cases of issue 19 ---------------------------------------------------------------


@pytest.mark.parametrize("hostile", ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "+1+2", "-3+4"])
def test_a_formula_in_an_id_never_reaches_a_csv_as_a_formula(
        hostile: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 19: an id such as =HYPERLINK(...) reached the CSV outputs unescaped. Through
    clean, eligibility and allocate: the therapists table under reports/ shows codes, and
    no CSV cell written begins with a formula character."""
    import csv

    tables = raw_extract()
    for name in ("therapists", "sessions"):
        frame = tables[name]
        frame.loc[frame["therapist_id"] == "T001", "therapist_id"] = hostile
    raw = write_extract(tables, tmp_path / "raw")
    config = write_config(fixture_config(), tmp_path / "config.yaml")
    i, out = tmp_path / "interim", tmp_path / "reports"
    c = ["--config", str(config)]
    for step in (
        ["clean", *c, "--raw", str(raw), "--out", str(i / "clean"),
         "--ledger", str(i / "clean_ledger.parquet")],
        ["eligibility", *c, "--clean", str(i / "clean"),
         "--clean-ledger", str(i / "clean_ledger.parquet"), "--cohort", str(i / "cohort.parquet"),
         "--ledger", str(i / "ledger.parquet"), "--flow", str(i / "flow.csv")],
        ["allocate", *c, "--cohort", str(i / "cohort.parquet"), "--clean", str(i / "clean"),
         "--flow-in", str(i / "flow.csv"), "--analysis", str(i / "analysis.parquet"),
         "--flow", str(out / "flow.csv"), "--implementation", str(out / "implementation.csv"),
         "--fidelity", str(out / "therapist_fidelity.csv")],
    ):
        assert main(["-q", *step]) == 0, capsys.readouterr().err
    cleaned = pd.read_parquet(i / "clean" / "therapists.parquet")
    assert hostile.upper() in set(cleaned["therapist_id"])  # the data keep the id as written
    for path in [*out.glob("*.csv"), i / "flow.csv"]:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    number = cell.lstrip("+-").replace(".", "", 1).isdigit()
                    assert number or not cell.startswith(("=", "+", "-", "@", "\t", "\r")), \
                        (path.name, cell)
    text = (out / "therapist_fidelity.csv").read_text()
    assert hostile.upper() not in text and "HYPERLINK" not in text


def test_a_negligible_smd_in_table_one_is_not_a_crash() -> None:
    """Issue 19: removing the sessions of three episodes made tableone print an SMD as
    "<0.001" and the `tables` rule died converting it (ValueError). Same arms, same ages."""
    import copy

    from raw_fixtures import CONFIG_FILE

    from trial_analysis.config import load_config
    from trial_analysis.reporting.tables import table_one

    config = copy.deepcopy(load_config(CONFIG_FILE))
    intervention, control = config["allocation"]["intervention"], config["allocation"]["control"]
    frame = pd.DataFrame({"arm": [intervention] * 10 + [control] * 10,
                          "age": [30, 40, 50, 60, 70] * 4, "sex": ["F", "M"] * 10})
    table = table_one(frame, config)
    assert table.loc[table["variable"] == "Age, years", "smd"].item() == "<0.001"
