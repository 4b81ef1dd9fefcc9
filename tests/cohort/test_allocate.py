"""Tests of the allocate step: arms, primary therapist, fidelity, scores, flow, implementation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trial_analysis import cli
from trial_analysis.cohort.allocate import allocate_arms, analysis_columns
from trial_analysis.config import load_config
from trial_analysis.errors import DataError

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "config.yaml"

# --------------------------------------------------------------------------------------------
# A small builder of inputs in the cleaned format (cohort.parquet + clean/{table}.parquet)
# --------------------------------------------------------------------------------------------

THERAPISTS = [  # T1 trained early, T2 trained mid-2022, T3 never trained, T4 other clinic
    ("T1", "C01", "2021-06-01"), ("T2", "C01", "2022-06-15"), ("T3", "C02", None),
    ("T4", "C02", "2021-01-01"),
]


def inputs(
    sessions: list[tuple[str, str, str, str]],
    outcomes: list[tuple[str, str, str, float | None]] | None = None,
    episodes: list[str] | None = None,
    therapists: list[tuple[str, str, str | None]] = THERAPISTS,
    extra: dict[str, list[Any]] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Cohort and cleaned tables.

    ``sessions``: (episode_id, therapist_id, session_date, treatment_codes);
    ``outcomes``: (episode_id, instrument, timepoint, score); ``episodes`` defaults to the
    episodes that have sessions; ``outcomes`` defaults to a function baseline score for each
    episode; ``extra`` adds cohort columns.
    """
    if episodes is None:
        episodes = sorted({s[0] for s in sessions})
    if outcomes is None:
        outcomes = [(e, "function", "intake", 50.0) for e in episodes]
    n = len(episodes)
    cohort = pd.DataFrame({
        "episode_id": episodes, "patient_id": [f"P{e}" for e in episodes],
        "referral_date": pd.to_datetime(["2022-05-01"] * n),
        "birth_date": pd.to_datetime(["1970-01-01"] * n),
        "sex": ["F", "M"] * (n // 2) + ["F"] * (n % 2),
        "diagnosis_codes": ["M54.5"] * n, "symptom_duration_weeks": np.linspace(12, 40, n),
        "depression": [0, 1] * (n // 2) + [0] * (n % 2), "anxiety": [0] * n,
        "bmi": [27.0] * n, "ses_score": [5.0] * n, "record_id": range(1, n + 1),
        **(extra or {}),
    })
    cohort["age"] = 52.33
    ses = pd.DataFrame(sessions, columns=["episode_id", "therapist_id", "session_date",
                                          "treatment_codes"])
    ses.insert(0, "session_id", [f"S{i:05d}" for i in range(1, len(ses) + 1)])
    ses["session_date"] = pd.to_datetime(ses["session_date"])
    ses["record_id"] = range(1, len(ses) + 1)
    out = pd.DataFrame(outcomes, columns=["episode_id", "instrument", "timepoint",
                                                "score"])
    out.insert(0, "outcome_id", [f"O{i:05d}" for i in range(1, len(out) + 1)])
    out["assessment_date"] = pd.to_datetime("2022-06-01")
    out["score"] = out["score"].astype("float64")
    out["record_id"] = range(1, len(out) + 1)
    thr = pd.DataFrame(therapists, columns=["therapist_id", "clinic_id", "etmi_training_date"])
    thr["etmi_training_date"] = pd.to_datetime(thr["etmi_training_date"])
    thr["age"], thr["sex"] = 40, "F"
    thr["record_id"] = range(1, len(thr) + 1)
    return cohort, {"therapists": thr, "sessions": ses, "outcomes": out}


def both_scores(episode: str, instrument: str = "function", base: float = 50.0,
                follow: float | None = 60.0) -> list[tuple[str, str, str, float | None]]:
    return [(episode, instrument, "intake", base), (episode, instrument, "discharge", follow)]


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    return load_config(CONFIG_FILE)


@pytest.fixture
def config(base_config: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(base_config)


def by_episode(result) -> pd.DataFrame:
    return result.analysis.set_index("episode_id")


# A control episode that makes sure both arms exist in small tests.
CONTROL = [("ZC", "T3", "2022-07-01", "EXER")]
INTERVENTION = [("ZI", "T1", "2022-07-01", "ETMI;EDU")]


# --------------------------------------------------------------------------------------------
# Arm rules
# --------------------------------------------------------------------------------------------


def test_arm_rules(config):
    cohort, tables = inputs([
        ("A", "T1", "2022-07-01", "ETMI;EDU"),        # trained long before
        ("B", "T2", "2022-06-15", "ETMI"),            # trained on the session day
        ("C", "T2", "2022-06-14", "ETMI"),            # trained the day after
        ("D", "T3", "2022-07-01", "ETMI"),            # never trained
        ("E", "T1", "2022-07-01", "EXER;EDU"),        # no ETMI code
        ("F", "T3", "2022-07-01", "ETMI"),            # untrained ETMI, then trained ETMI
        ("F", "T4", "2022-07-08", "EDU;ETMI"),
        ("G", "T1", "2022-07-01", "EDU"),             # trained therapist, ETMI by untrained
        ("G", "T3", "2022-07-02", "ETMI"),
        ("H", "T1", "2022-07-01", "XETMI;ETMIX"),     # not the ETMI code itself
    ])
    result = allocate_arms(config, cohort, tables)
    a = by_episode(result)
    assert a["arm"].to_dict() == {
        "A": "ETMI", "B": "ETMI", "C": "usual care", "D": "usual care", "E": "usual care",
        "F": "ETMI", "G": "usual care", "H": "usual care"}
    assert a["arm_rule"].to_dict() == {
        "A": "ETMI code by trained therapist", "B": "ETMI code by trained therapist",
        "C": "ETMI code by untrained therapist", "D": "ETMI code by untrained therapist",
        "E": "no ETMI code", "F": "ETMI code by trained therapist",
        "G": "ETMI code by untrained therapist", "H": "no ETMI code"}
    assert (a["arm_intervention"] == (a["arm"] == "ETMI")).all()


def test_column_rule(config):
    config["allocation"]["rule"] = "column"
    config["allocation"]["column"] = "treatment_arm"
    cohort, tables = inputs(
        [("A", "T1", "2022-07-01", "ETMI"), ("B", "T3", "2022-07-01", "EXER"),
         ("C", "T3", "2022-07-01", "EDU")],
        extra={"treatment_arm": ["usual care", "ETMI", "usual care"]},
    )
    a = by_episode(allocate_arms(config, cohort, tables))
    assert a["arm"].to_dict() == {"A": "usual care", "B": "ETMI", "C": "usual care"}
    assert set(a["arm_rule"]) == {"arm given in data"}
    assert a["fidelity"].isna().tolist() == [True, False, True]
    assert a.loc["B", "fidelity"] == 0


# --------------------------------------------------------------------------------------------
# Primary therapist and sessions
# --------------------------------------------------------------------------------------------


def test_primary_therapist_tie_breaks(config):
    cohort, tables = inputs([
        # A: most sessions wins although T3 came first.
        ("A", "T3", "2022-07-01", "EDU"), ("A", "T1", "2022-07-02", "EDU"),
        ("A", "T1", "2022-07-03", "EDU"),
        # B: one session each: the earliest first session wins (T4 over T1).
        ("B", "T1", "2022-07-05", "EDU"), ("B", "T4", "2022-07-04", "EDU"),
        # C: same count and same first day: the smaller therapist_id wins.
        ("C", "T4", "2022-07-01", "EDU"), ("C", "T2", "2022-07-01", "EDU"),
        ("C", "T4", "2022-07-09", "EDU"), ("C", "T2", "2022-07-03", "EDU"),
        *INTERVENTION,
    ])
    a = by_episode(allocate_arms(config, cohort, tables))
    assert a.loc[["A", "B", "C"], "therapist_id"].tolist() == ["T1", "T4", "T2"]
    assert a.loc[["A", "B", "C"], "clinic_id"].tolist() == ["C01", "C02", "C01"]
    assert a.loc[["A", "B", "C", "ZI"], "n_sessions"].tolist() == [3, 2, 4, 1]


# --------------------------------------------------------------------------------------------
# Fidelity and implementation
# --------------------------------------------------------------------------------------------


def test_fidelity_and_implementation(config):
    cohort, tables = inputs([
        ("A", "T1", "2022-07-01", "ETMI;EDU"),                                 # faithful
        ("B", "T1", "2022-07-01", "ETMI"), ("B", "T3", "2022-07-02", "MANUAL"),  # broken by T3
        ("C", "T4", "2022-07-01", "ETMI;ELECTRO"),                             # broken
        ("D", "T3", "2022-07-01", "EXER"),                                     # control
        ("E", "T2", "2022-06-01", "ETMI"),                    # T2 before training: no adoption
    ])
    result = allocate_arms(config, cohort, tables)
    a = by_episode(result)
    assert a["fidelity"].fillna(-1).to_dict() == {"A": 1, "B": 0, "C": 0, "D": -1, "E": -1}
    impl = result.implementation.set_index("measure")
    assert list(result.implementation.columns) == [
        "measure", "numerator", "denominator", "percent", "definition"]
    assert impl.loc["reach", ["numerator", "denominator"]].tolist() == [3, 4]
    assert impl.loc["therapist_adoption", ["numerator", "denominator"]].tolist() == [2, 3]
    assert impl.loc["patient_adoption", ["numerator", "denominator"]].tolist() == [3, 5]
    assert impl.loc["fidelity", ["numerator", "denominator"]].tolist() == [1, 3]
    assert impl.loc["fidelity", "percent"] == pytest.approx(100 / 3)
    fid = result.therapist_fidelity.set_index("therapist_id")
    assert list(result.therapist_fidelity.columns) == [
        "therapist_id", "clinic_id", "trained", "adopter", "etmi_episodes",
        "faithful_episodes", "fidelity"]
    assert fid["trained"].to_dict() == {"T1": 1, "T2": 1, "T3": 0, "T4": 1}
    assert fid["adopter"].to_dict() == {"T1": 1, "T2": 0, "T3": 0, "T4": 1}
    assert fid["etmi_episodes"].to_dict() == {"T1": 2, "T2": 0, "T3": 0, "T4": 1}
    assert fid["faithful_episodes"].to_dict() == {"T1": 1, "T2": 0, "T3": 0, "T4": 0}
    assert fid.loc["T1", "fidelity"] == 0.5
    assert fid.loc["T4", "fidelity"] == 0.0
    assert np.isnan(fid.loc["T2", "fidelity"]) and np.isnan(fid.loc["T3", "fidelity"])


# --------------------------------------------------------------------------------------------
# Scores and complete cases
# --------------------------------------------------------------------------------------------


def test_scores_and_complete_case_flags(config):
    config["complete_case"]["outcomes"] = ["function", "pain"]
    sessions = [(e, "T1" if e in "AB" else "T3", "2022-07-01", "ETMI" if e in "AB" else "EDU")
                for e in "ABCDE"]
    outcomes = [
        *both_scores("A"), *both_scores("A", "pain", 6, 3),        # complete for both
        *both_scores("B"), ("B", "pain", "intake", 5.0),          # pain follow-up absent
        *both_scores("C", follow=None),                           # function follow-up set missing
        ("D", "function", "discharge", 70.0),                     # no baseline
        # E: no scores at all
        ("A", "fear_avoidance", "intake", 40.0),
    ]
    result = allocate_arms(config, *inputs(sessions, outcomes))
    a = by_episode(result)
    assert a.loc["A", ["function_baseline", "function_followup", "pain_baseline",
                       "pain_followup", "fear_avoidance_baseline"]].tolist() == [50, 60, 6, 3, 40]
    assert np.isnan(a.loc["A", "fear_avoidance_followup"])
    assert a["complete_function"].to_dict() == {"A": 1, "B": 1, "C": 0, "D": 0, "E": 0}
    assert a["complete_pain"].to_dict() == {"A": 1, "B": 0, "C": 0, "D": 0, "E": 0}
    assert a["complete_case"].to_dict() == {"A": 1, "B": 0, "C": 0, "D": 0, "E": 0}
    assert np.isnan(a.loc["C", "function_followup"]) and np.isnan(a.loc["D", "function_baseline"])
    assert a.loc["E", [c for c in a.columns if c.endswith(("_baseline", "_followup"))]].isna().all()
    flow = result.flow
    # Observational (STROBE): groups, not allocation; every analysed population has its
    # boxes, all with a baseline (of function and pain) first, complete cases counted from it.
    assert flow["description"].tolist() == [
        "ETMI group", "usual care group",
        "all with a baseline analysed", "all with a baseline analysed, ETMI",
        "all with a baseline analysed, usual care", "complete cases analysed",
        "complete cases analysed, ETMI", "complete cases analysed, usual care"]
    assert flow["n"].tolist() == [2, 3, 2, 2, 0, 1, 1, 0]
    assert flow["n_excluded"].tolist()[2:] == [3, 0, 3, 1, 1, 0]
    assert flow["reason"].tolist()[2] == "baseline score missing (function, pain)"
    assert flow["reason"].tolist()[5] == "follow-up score missing (function, pain)"
    # Randomised (CONSORT), complete cases only: "allocated to", counted from allocation.
    config["study"]["design"] = "randomised"
    config["analysis"]["populations"] = ["complete_case"]
    flow = allocate_arms(config, *inputs(sessions, outcomes)).flow
    assert flow["description"].tolist() == [
        "allocated to ETMI", "allocated to usual care", "complete cases analysed",
        "complete cases analysed, ETMI", "complete cases analysed, usual care"]
    assert flow["n_excluded"].tolist()[2:] == [4, 1, 3]


def test_duplicate_valid_scores_are_an_error_but_missing_duplicates_are_not(config):
    sessions = [("A", "T1", "2022-07-01", "ETMI"), ("B", "T3", "2022-07-01", "EDU")]
    ok = [*both_scores("A"), ("A", "function", "discharge", None), *both_scores("B")]
    a = by_episode(allocate_arms(config, *inputs(sessions, ok)))
    assert a.loc["A", "function_followup"] == 60
    bad = [*both_scores("A"), ("A", "function", "discharge", 61.0), *both_scores("B")]
    with pytest.raises(DataError, match="more than one valid score") as info:
        allocate_arms(config, *inputs(sessions, bad))
    assert info.value.rows == [2, 3]


def test_analysis_columns_exactly_as_contract(config):
    result = allocate_arms(config, *inputs(INTERVENTION + CONTROL, both_scores("ZI")))
    assert list(result.analysis.columns) == analysis_columns(config)
    assert analysis_columns(config)[:16] == [
        "patient_id", "episode_id", "arm", "arm_intervention", "arm_rule", "therapist_id",
        "clinic_id", "age", "sex", "symptom_duration_weeks", "depression", "anxiety", "bmi",
        "ses_score", "n_sessions", "fidelity"]
    assert analysis_columns(config)[16:] == [
        "function_baseline", "function_followup", "pain_baseline", "pain_followup",
        "fear_avoidance_baseline", "fear_avoidance_followup", "complete_function",
        "complete_pain", "complete_fear_avoidance", "complete_case"]
    assert "2 eligible patients" in result.summary()


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

session_rows = st.lists(
    st.tuples(
        st.sampled_from(["E1", "E2", "E3", "E4", "E5", "E6"]),
        st.sampled_from(["T1", "T2", "T3", "T4"]),
        st.integers(0, 120),                                     # day after 2022-05-01
        st.lists(st.sampled_from(["ETMI", "EDU", "EXER", "MANUAL"]), max_size=3, unique=True),
    ),
    min_size=1, max_size=30,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session_rows, st.randoms(use_true_random=False))
def test_property_allocation(base_config, rows, rnd):
    sessions = [(e, t, str((pd.Timestamp("2022-05-01") + pd.Timedelta(days=d)).date()),
                 ";".join(codes)) for e, t, d, codes in rows]
    # Both arms must exist: add a fixed intervention and a fixed control episode.
    sessions += INTERVENTION + CONTROL
    outcomes = [s for e in sorted({s[0] for s in sessions}) for s in both_scores(e)]
    cohort, tables = inputs(sessions, outcomes)
    result = allocate_arms(base_config, cohort, tables)
    a = result.analysis

    # One row, one arm and one rule per eligible patient, consistent with each other.
    assert sorted(a["episode_id"]) == sorted(cohort["episode_id"])
    assert a["arm"].isin(["ETMI", "usual care"]).all() and a["arm_rule"].notna().all()
    assert ((a["arm_rule"] == "ETMI code by trained therapist") == (a["arm"] == "ETMI")).all()
    assert (a["fidelity"].isna() == (a["arm_intervention"] == 0)).all()

    # The primary therapist has the largest session count of the episode.
    counts = tables["sessions"].groupby(["episode_id", "therapist_id"]).size()
    for row in a.itertuples(index=False):
        assert counts[(row.episode_id, row.therapist_id)] == counts[row.episode_id].max()
    assert a["n_sessions"].sum() == len(tables["sessions"])

    # Permuting the input rows leaves the analysis table unchanged.
    shuffled = {name: frame.sample(frac=1, random_state=rnd.randint(0, 10**6))
                for name, frame in tables.items()}
    again = allocate_arms(base_config, cohort.sample(frac=1, random_state=rnd.randint(0, 10**6)),
                          shuffled)
    pd.testing.assert_frame_equal(again.analysis, a)
    pd.testing.assert_frame_equal(again.therapist_fidelity, result.therapist_fidelity)
    pd.testing.assert_frame_equal(again.implementation, result.implementation)


# --------------------------------------------------------------------------------------------
# The command line: outputs, and bad input (exit 2, plain message, no outputs)
# --------------------------------------------------------------------------------------------

FLOW_IN = (
    "step,description,n,n_excluded,reason\n"
    "extract,patient episodes in the extract,3,,\n"
    "eligibility,eligible patients,2,,\n"
)


def _write(tmp_path: Path, cohort: pd.DataFrame, tables: dict[str, pd.DataFrame],
           config: dict[str, Any] | None = None) -> Path:
    (tmp_path / "clean").mkdir()
    for name, frame in tables.items():
        frame.to_parquet(tmp_path / "clean" / f"{name}.parquet", index=False)
    cohort.to_parquet(tmp_path / "cohort.parquet", index=False)
    (tmp_path / "flow_in.csv").write_text(FLOW_IN, encoding="utf-8")
    config_file = CONFIG_FILE
    if config is not None:
        import yaml

        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config_file


def _run(tmp_path: Path, config_file: Path) -> int:
    out = tmp_path / "out"
    return cli.main([
        "-q", "allocate", "--config", str(config_file), "--cohort",
        str(tmp_path / "cohort.parquet"), "--clean", str(tmp_path / "clean"),
        "--flow-in", str(tmp_path / "flow_in.csv"), "--analysis", str(out / "analysis.parquet"),
        "--flow", str(out / "flow.csv"), "--implementation", str(out / "implementation.csv"),
        "--fidelity", str(out / "fidelity.csv"),
    ])


def test_cli_writes_outputs_deterministically(tmp_path):
    cohort, tables = inputs(INTERVENTION + CONTROL, both_scores("ZI") + both_scores("ZC"))
    config_file = _write(tmp_path, cohort, tables)
    assert _run(tmp_path, config_file) == 0
    out = tmp_path / "out"
    flow = pd.read_csv(out / "flow.csv")
    # Both patients have every score: all with a baseline and complete cases, 2 = 1 + 1 each.
    assert flow["step"].tolist() == ["extract", "eligibility", "allocation", "allocation",
                                     *["analysis"] * 6]
    # every count of this three-patient extract is below report.min_cell_count (5)
    assert flow["n"].tolist() == ["<5"] * 10
    implementation = pd.read_csv(out / "implementation.csv")
    assert implementation["measure"].tolist() == [
        "reach", "therapist_adoption", "patient_adoption", "fidelity"]
    assert set(implementation["numerator"]) <= {"<5", "0"}
    fidelity = pd.read_csv(out / "fidelity.csv", dtype=str, keep_default_na=False)
    assert len(fidelity) == 4
    # therapists and clinics by code, never by their source ids
    assert list(fidelity.columns[:2]) == ["therapist", "clinic"]
    assert fidelity["therapist"].str.fullmatch(r"therapist \d{2}").all()
    assert not set(fidelity["therapist"]) & set(tables["therapists"]["therapist_id"])
    assert set(fidelity["etmi_episodes"]) <= {"<5", "0"}
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(tmp_path, config_file) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def _expect_error(tmp_path, capsys, config_file, *fragments):
    assert _run(tmp_path, config_file) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_cli_one_arm_empty(tmp_path, capsys):
    cohort, tables = inputs(CONTROL, both_scores("ZC"))
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables), "sessions.parquet",
                  "'treatment_codes'", "no eligible patient is allocated to arm 'ETMI'")


def test_cli_no_eligible_patients(tmp_path, capsys):
    cohort, tables = inputs(CONTROL, both_scores("ZC"), episodes=[])
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables), "cohort.parquet",
                  "no eligible patients")


def test_cli_all_scores_missing(tmp_path, capsys):
    outcomes = [("ZI", "function", "intake", None), ("ZX", "function", "intake", 40.0)]
    cohort, tables = inputs(INTERVENTION + CONTROL, outcomes)
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables), "outcomes.parquet",
                  "'score'", "no outcome score for any eligible patient")


def test_cli_episode_without_sessions(tmp_path, capsys):
    cohort, tables = inputs(INTERVENTION + CONTROL, both_scores("ZI"),
                            episodes=["ZC", "ZI", "ZZ"])
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables), "cohort.parquet",
                  "'episode_id'", "rows ZZ", "has no session")


def test_cli_allocation_column_absent_suggests_close_match(tmp_path, capsys, config):
    config["allocation"].update(rule="column", column="treatment_arms")
    cohort, tables = inputs(INTERVENTION + CONTROL, both_scores("ZI"),
                            extra={"treatment_arm": ["usual care", "ETMI"]})
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables, config), "cohort.parquet",
                  "'treatment_arms'", "Did you mean 'treatment_arm'?")


def test_cli_allocation_column_with_other_values(tmp_path, capsys, config):
    config["allocation"].update(rule="column", column="treatment_arm")
    cohort, tables = inputs(INTERVENTION + CONTROL + [("ZD", "T1", "2022-07-01", "EDU")],
                            both_scores("ZI"),
                            extra={"treatment_arm": ["usual care", "etmi", None]})
    _expect_error(tmp_path, capsys, _write(tmp_path, cohort, tables, config), "cohort.parquet",
                  "'treatment_arm'", "rows 2, 3", "one of the two arm labels")


# --------------------------------------------------------------------------------------------
# The target trial's population on a simulated extract
# --------------------------------------------------------------------------------------------


def test_target_trial_population_on_a_simulated_extract_keeps_every_etmi_patient():
    """The simulator refers ETMI patients on or after their therapist's training, so the
    trained-therapist rule must keep every one of them and exclude exactly the controls whose
    first-session therapist had no training date on or before that session."""
    from trial_analysis.cohort.eligibility import REASON_UNTRAINED, apply_eligibility
    from trial_analysis.config import load_config
    from trial_analysis.simulation import simulation_study as ss
    from trial_analysis.simulation.simulate import simulate_extract

    base = load_config(Path(__file__).resolve().parents[2] / "config" / "config.yaml")
    config = ss.scenario_config(base, ss.Scenario("tt", 600, 1, {}))
    extract = simulate_extract(config, 11, 600)
    tables, ledger = ss.clean_in_memory(extract)
    reproduction = apply_eligibility(config, tables, ledger)
    published = allocate_arms(config, reproduction.cohort, tables).analysis

    config["target_trial"]["population"] = "target_trial"
    emulated = apply_eligibility(config, tables, ledger)
    analysis = allocate_arms(config, emulated.cohort, tables).analysis

    assert (analysis["arm"] == "ETMI").sum() == (published["arm"] == "ETMI").sum()
    sessions = tables["sessions"].sort_values(["episode_id", "session_date", "therapist_id"])
    first = sessions.drop_duplicates("episode_id").merge(
        tables["therapists"][["therapist_id", "etmi_training_date"]], on="therapist_id")
    trained = first.set_index("episode_id").eval("etmi_training_date <= session_date")
    expected_out = published.loc[~trained.reindex(published["episode_id"]).to_numpy(),
                                 "episode_id"]
    assert 0 < len(expected_out) < len(published)
    assert set(published["episode_id"]) - set(analysis["episode_id"]) == set(expected_out)
    assert (published.set_index("episode_id").loc[expected_out, "arm"] == "usual care").all()
    row = emulated.flow.set_index("reason").loc[REASON_UNTRAINED]
    assert int(row["n_excluded"]) == len(expected_out)


# --------------------------------------------------------------------------------------------
# Three or more arms (allocation.arms / reference)
# --------------------------------------------------------------------------------------------


def _three_arms(config: dict) -> dict:
    config["allocation"] = {"arms": ["usual care", "low", "high"], "reference": "usual care",
                            "rule": "column", "column": "treatment_arm"}
    return config


def test_three_arms_get_codes_with_the_reference_at_zero(config):
    config = _three_arms(config)
    cohort, tables = inputs(
        [("A", "T1", "2022-07-01", "ETMI"), ("B", "T3", "2022-07-01", "EXER"),
         ("C", "T3", "2022-07-01", "EDU")],
        extra={"treatment_arm": ["high", "usual care", "low"]},
    )
    result = allocate_arms(config, cohort, tables)
    a = by_episode(result)
    assert a["arm"].to_dict() == {"A": "high", "B": "usual care", "C": "low"}
    assert a["arm_code"].to_dict() == {"A": 2, "B": 0, "C": 1}
    assert a["arm_intervention"].to_dict() == {"A": 1, "B": 0, "C": 1}  # any non-reference
    assert list(result.analysis.columns) == analysis_columns(config)
    allocated = result.flow[result.flow["step"] == "allocation"]
    assert list(allocated["description"]) == ["usual care group", "low group", "high group"]


def test_three_arms_value_outside_the_arms_names_column_and_rows(config):
    config = _three_arms(config)
    cohort, tables = inputs(INTERVENTION + CONTROL + [("ZD", "T1", "2022-07-01", "EDU")],
                            both_scores("ZI"),
                            extra={"treatment_arm": ["low", "medium", "high"]})
    with pytest.raises(DataError) as error:
        allocate_arms(config, cohort, tables, {"cohort": "cohort.parquet"})
    text = str(error.value)
    for fragment in ("cohort.parquet", "'treatment_arm'", "allocation.arms", "'medium'"):
        assert fragment in text, text
    assert "rows 2" in text or "row 2" in text, text
