"""Bring your own study: config keys for structure, and the data steps that follow them.

Covers the checks in plain words (time points, clustering, optional tables, declared
variables) and the data side of a study unlike the default: no therapists or sessions, the
arm given as a column, several follow-ups, declared variables, age given directly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trial_analysis.cohort.allocate import allocate_arms, analysis_columns
from trial_analysis.cohort.eligibility import apply_eligibility, eligibility_reasons
from trial_analysis.config import (
    followup_labels,
    primary_followup,
    score_columns,
    time_values,
    validate_config,
)
from trial_analysis.errors import ConfigError
from trial_analysis.ingest.clean import clean_tables
from trial_analysis.ingest.schemas import table_specs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def trial_config() -> dict:
    """A randomised trial: no therapists or sessions, arm column, three follow-ups."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["simulation"], config["published"], config["sensitivity"]
    config["input"].update(format="csv", outcomes_layout="long")
    config["input"]["tables"] = {
        "therapists": None, "sessions": None,
        "patients": {"file": "patients.csv", "columns": {"episode_id": "id"},
                     "variables": {"age": "number", "site": "category", "smoker": "flag"}},
        "outcomes": {"file": "outcomes.csv"},
    }
    config["timepoints"] = {"baseline": "t0", "followups": ["t1", "t2", "t3"],
                            "values": {"t0": 0, "t1": 1, "t2": 3, "t3": 6}}
    config["outcomes"] = [config["outcomes"][0]]
    config["eligibility"] = {"min_age": 18, "require_clbp_code": False,
                             "first_episode_only": False}
    config["allocation"] = {"intervention": "A", "control": "B", "rule": "column",
                            "column": "group"}
    config["analysis"].update(covariates=["age", "smoker"], subgroups=["smoker"],
                              random_effects=["site", "patient"], random_time_effects=[])
    config["analysis"]["sessions"] = {"covariates": []}
    config["analysis"]["responders"] = {"outcomes": []}
    return config


def _problems(config: dict) -> str:
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    return str(error.value)


def test_trial_config_is_valid_and_its_time_points_are_read(trial_config: dict) -> None:
    config = validate_config(trial_config)
    assert followup_labels(config) == ["t1", "t2", "t3"]
    assert primary_followup(config) == "t3"
    assert time_values(config) == {"t0": 0.0, "t1": 1.0, "t2": 3.0, "t3": 6.0}
    assert score_columns(config, "function") == {
        "t1": "function__t1", "t2": "function__t2", "t3": "function__t3"}
    specs = table_specs(config)
    assert set(specs) == {"patients", "outcomes"}
    patients = specs["patients"]
    assert not patients.column("birth_date").required  # age is given directly
    assert patients.column("site").kind == "text" and patients.column("smoker").kind == "flag"
    assert eligibility_reasons(config) == ["age under 18"]  # no window, codes, sessions rules


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["timepoints"].update(primary="t9"), "timepoints/primary: 't9'"),
        (lambda c: c["timepoints"]["values"].pop("t2"), "timepoints/values: no value for ['t2']"),
        (lambda c: c["timepoints"]["values"].update(t2=0.5), "must increase"),
        (lambda c: c["timepoints"].update(followups=["t0", "t1"]), "also a follow-up"),
        (lambda c: c["input"]["tables"]["patients"]["variables"].pop("site"),
         "'site' is neither clinic, therapist, patient nor a variable declared"),
        (lambda c: c["analysis"].update(random_effects=["therapist", "patient"]),
         "'therapist' needs the therapists and sessions tables"),
        (lambda c: c["analysis"].update(random_effects=["patient", "site"]), "must come last"),
        (lambda c: c["analysis"].update(random_effects=[]), "[] (no random effects) needs"),
        (lambda c: c["analysis"].update(covariates=["income"]), "'income' is not a built-in"),
        (lambda c: c["analysis"].update(covariates=["smokr"]), "did you mean 'smoker'?"),
        (lambda c: c["allocation"].update(rule="etmi_code_by_trained_therapist"),
         "needs the therapists and sessions tables"),
        (lambda c: c.update(sensitivity={"analyses": ["therapist_fixed_effects"]}),
         "therapist_fixed_effects needs the therapists"),
    ],
)
def test_structure_problems_are_named(trial_config: dict, mutate, expected: str) -> None:
    mutate(trial_config)
    assert expected in _problems(trial_config)


def test_both_followup_and_followups_is_an_error(trial_config: dict) -> None:
    trial_config["timepoints"]["followup"] = "t3"
    assert "timepoints" in _problems(trial_config)


def test_no_random_effects_allowed_for_one_row_per_patient(trial_config: dict) -> None:
    trial_config["timepoints"] = {"baseline": "t0", "followup": "t1"}
    trial_config["analysis"].update(random_effects=[], baseline="covariate")
    validate_config(trial_config)
    trial_config["analysis"]["random_effects"] = ["patient"]
    assert "cannot be told from the residual" in _problems(trial_config)


def _write_trial(folder: Path, n: int = 40) -> None:
    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(n)]
    patients = pd.DataFrame({
        "id": ids, "group": ["A", "B"] * (n // 2), "age": rng.integers(20, 70, n).astype(str),
        "site": [f"s{i % 4}" for i in range(n)], "smoker": rng.integers(0, 2, n).astype(str),
        "sex": ["F", "M"] * (n // 2),
    })
    patients.loc[0, "age"] = "17"
    rows = []
    for i, pid in enumerate(ids):
        for t in ("t0", "t1", "t2", "t3"):
            if t == "t3" and i % 5 == 0:
                continue  # missing final follow-up
            rows.append({"episode_id": pid, "instrument": "function", "timepoint": t,
                         "score": f"{50 + rng.normal(0, 5):.1f}"})
    patients.to_csv(folder / "patients.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "outcomes.csv", index=False)


def test_data_steps_for_a_trial_without_sessions(trial_config: dict, tmp_path: Path) -> None:
    config = validate_config(copy.deepcopy(trial_config))
    _write_trial(tmp_path)
    cleaned = clean_tables(config, tmp_path)
    assert len(cleaned.tables["sessions"]) == 0 and len(cleaned.tables["therapists"]) == 0
    assert set(cleaned.ledger["table"]) == {"patients", "outcomes"}
    patients = cleaned.tables["patients"]
    assert (patients["patient_id"] == patients["episode_id"]).all()  # no patient_id column
    assert patients["outcome_id" if False else "site"].notna().all()
    assert cleaned.tables["outcomes"]["outcome_id"].str.startswith("ROW").all()

    eligible = apply_eligibility(config, cleaned.tables, cleaned.ledger)
    assert len(eligible.cohort) == 39  # the 17-year-old is excluded
    assert eligible.flow["reason"].eq("age under 18").sum() == 1

    result = allocate_arms(config, eligible.cohort, cleaned.tables)
    analysis = result.analysis
    assert list(analysis.columns) == analysis_columns(config)
    assert {"site", "smoker", "function__t1", "function__t3"} <= set(analysis.columns)
    assert analysis["function_followup"].equals(analysis["function__t3"])
    assert analysis["therapist_id"].isna().all() and analysis["fidelity"].isna().all()
    assert analysis["n_sessions"].isna().all()
    # complete: baseline and every follow-up; every fifth patient lacks t3
    expected = analysis[["function_baseline", "function__t1", "function__t2",
                         "function__t3"]].notna().all(axis=1)
    assert (analysis["complete_function"] == expected.astype(int)).all()
    assert 0 < analysis["complete_case"].sum() < len(analysis)
    assert result.implementation.empty and result.therapist_fidelity.empty
