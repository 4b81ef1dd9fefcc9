"""Property: every small valid extract runs from clean to report, or stops with a DataError.

Issue 19: removing the sessions of three episodes made Table 1 crash. Hypothesis generates
small extracts that pass validation (arms of 1-5 patients, one to three therapists, constant
covariates, empty subgroup levels, missing follow-ups) and runs every step the Snakefile runs
from ``clean`` to ``report`` through the command line, as Snakemake does. Each step must end
with status 0 or, for data it cannot analyse, status 2 with a one-line ``error:`` message;
any other exception escapes ``main`` and fails the test.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_fixtures import fixture_config, write_config, write_extract

from trial_analysis.cli import main

INSTRUMENTS = {"function": (40, 80), "pain": (1, 9), "fear_avoidance": (20, 70)}


@st.composite
def extracts(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    """A small valid extract: both arms, eligible patients, intake scores for all."""
    n_therapists = draw(st.integers(1, 3))
    therapists = pd.DataFrame({
        "therapist_id": [f"T{i:03d}" for i in range(1, n_therapists + 1)],
        "clinic_id": [f"C{1 + i % 2:02d}" for i in range(n_therapists)],
        "age": ["40"] * n_therapists, "sex": ["F"] * n_therapists,
        # the first therapist is trained (an ETMI code counts only from a trained one)
        "etmi_training_date": ["2021-11-15"] + draw(st.lists(
            st.sampled_from(["", "2021-12-01"]), min_size=n_therapists - 1,
            max_size=n_therapists - 1)),
    })
    # One arm of 1-5 patients; the other large enough for the models (10 complete cases) in
    # most draws, so that the later steps (tables, figures, report) are reached too.
    small, large = draw(st.integers(1, 5)), draw(st.integers(12, 16))
    n_intervention, n_control = (small, large) if draw(st.booleans()) else (large, small)
    n = n_intervention + n_control
    # Hypothesis starts from the simplest draws (lowest integers, first elements): those are
    # the rich extracts here, so that even a few examples reach the report.
    constant = draw(st.integers(0, 5)) == 5  # constant covariates now and then
    depression = draw(st.sampled_from(["some", "some", "some", "some", "none", "all"]))
    patients, sessions, outcomes = [], [], []
    for i in range(n):
        episode, intervention = f"E{i + 1:06d}", i < n_intervention
        patients.append({
            "episode_id": episode, "patient_id": f"P{i + 1:04d}",
            "referral_date": f"2022-{1 + (i % 9) + 1:02d}-10",
            "birth_date": "1970-01-01" if constant else f"{1950 + draw(st.integers(0, 40))}-06-01",
            "sex": draw(st.sampled_from(["F", "M"])), "diagnosis_codes": "M54.5",
            "symptom_duration_weeks": "20" if constant else str(draw(st.integers(12, 60))),
            "depression": {"none": "0", "all": "1"}.get(depression, str((i // 2) % 2)),
            "anxiety": "0" if constant else str(i % 2),
            "bmi": "25.0" if constant else str(draw(st.integers(18, 35))),
            "ses_score": "5" if constant else str(draw(st.integers(1, 10))),
        })
        therapist = "T001" if intervention else f"T{draw(st.integers(1, n_therapists)):03d}"
        month = 1 + (i % 9) + 1
        for s in range(draw(st.integers(1, 3))):
            sessions.append({
                "session_id": f"S{len(sessions) + 1:05d}", "episode_id": episode,
                "therapist_id": therapist, "session_date": f"2022-{month:02d}-{12 + s:02d}",
                "treatment_codes": "ETMI" if intervention else "EXER",
            })
        # a missing follow-up now and then; at least one per arm is there
        discharge = draw(st.integers(0, 5)) < 5 or i in (0, n_intervention)
        for timepoint, day in (("intake", 12), ("discharge", 20)):
            if timepoint == "discharge" and not discharge:
                continue
            for instrument, (low, high) in INSTRUMENTS.items():
                outcomes.append({
                    "outcome_id": f"O{len(outcomes) + 1:05d}", "episode_id": episode,
                    "assessment_date": f"2022-{month:02d}-{day}", "instrument": instrument,
                    "timepoint": timepoint, "score": str(draw(st.integers(low, high))),
                })
    return {"therapists": therapists, "patients": pd.DataFrame(patients),
            "sessions": pd.DataFrame(sessions), "outcomes": pd.DataFrame(outcomes)}


def _steps(config: Path, raw: Path, root: Path) -> list[list[str]]:
    """The Snakefile's commands from clean to report, with its file layout."""
    interim, tables, estimates = root / "interim", root / "tables", root / "estimates"
    analysis = str(root / "analysis.parquet")
    c = ["--config", str(config)]
    return [
        ["clean", *c, "--raw", str(raw), "--out", str(interim / "clean"),
         "--ledger", str(interim / "clean_ledger.parquet")],
        ["eligibility", *c, "--clean", str(interim / "clean"),
         "--clean-ledger", str(interim / "clean_ledger.parquet"),
         "--cohort", str(interim / "cohort.parquet"), "--ledger", str(interim / "ledger.parquet"),
         "--flow", str(interim / "flow_eligibility.csv")],
        ["allocate", *c, "--cohort", str(interim / "cohort.parquet"),
         "--clean", str(interim / "clean"), "--flow-in", str(interim / "flow_eligibility.csv"),
         "--analysis", analysis, "--flow", str(tables / "flow.csv"),
         "--implementation", str(tables / "implementation.csv"),
         "--fidelity", str(tables / "therapist_fidelity.csv")],
        ["fit-models", *c, "--analysis", analysis, "--out-dir", str(estimates)],
        ["sessions", *c, "--analysis", analysis, "--out-json", str(estimates / "sessions.json"),
         "--out-csv", str(estimates / "sessions.csv")],
        ["responders", *c, "--analysis", analysis,
         "--out-json", str(estimates / "responders.json"),
         "--out-csv", str(estimates / "responders.csv")],
        ["tables", *c, "--analysis", analysis, "--estimates", str(estimates),
         "--out", str(tables)],
        ["figures", *c, "--analysis", analysis, "--estimates", str(estimates),
         "--tables", str(tables), "--out", str(root / "figures")],
        ["report", *c, "--raw", str(raw), "--estimates", str(estimates),
         "--tables", str(tables), "--figures", str(root / "figures"),
         "--out", str(root / "report.html")],
    ]


_COUNTER = iter(range(10**9))


def _run_extract(tables: dict[str, pd.DataFrame], base: Path,
                 capsys: pytest.CaptureFixture) -> str:
    root = base / f"x{next(_COUNTER)}"
    raw = write_extract(tables, root / "raw")
    config = copy.deepcopy(fixture_config())
    config["sensitivity"]["analyses"] = []
    if tables["therapists"]["therapist_id"].nunique() < 3:
        # too few therapists for a therapist variance: patients as the only level (what a
        # study with one therapist would configure), so the later steps are reached too
        config["analysis"]["random_effects"] = ["patient"]
        config["analysis"]["random_time_effects"] = []
    config_file = write_config(config, root / "config.yaml")
    for step in _steps(config_file, raw, root):
        status = main(["-q", *step])
        err = capsys.readouterr().err
        if status == 2:
            assert f"trial-analysis {step[0]}: error: " in err and "Traceback" not in err
            return f"{step[0]}: {err.strip()[:200]}"
        assert status == 0, (step[0], err)
    assert (root / "report.html").stat().st_size > 10_000
    return "report"


# One example in the default run (about 10 s: it reaches the report), forty under -m slow.
FAST = settings(max_examples=1, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(extract=extracts())
def test_a_few_small_extracts_run_to_the_report_or_stop_with_a_data_error(
        extract, tmp_path_factory, capsys):
    os.environ.setdefault("MPLBACKEND", "Agg")
    _run_extract(extract, tmp_path_factory.mktemp("small"), capsys)


@pytest.mark.slow
@settings(FAST, max_examples=40)
@given(extract=extracts())
def test_many_small_extracts_run_to_the_report_or_stop_with_a_data_error(
        extract, tmp_path_factory, capsys):
    os.environ.setdefault("MPLBACKEND", "Agg")
    _run_extract(extract, tmp_path_factory.mktemp("small"), capsys)
