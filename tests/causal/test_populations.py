"""The estimators in both populations (rules population_analysis, estimators_by_population).

On a small simulated study run through the steps' own command functions twice, once with
``target_trial.population: reproduction`` and once with ``target_trial``: the by-population
table's reproduction rows must equal the reproduction run's estimate files and its target-trial
rows those of the target-trial run, whichever population the main analysis uses; the derived
analysis table must equal the one the other run's eligibility and allocation steps write; the
report must show the section in readable words.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from trial_analysis import io
from trial_analysis.causal.populations import (
    ESTIMATORS,
    POPULATIONS,
    other_population,
    run_estimators_by_population,
    run_population_analysis,
)
from trial_analysis.causal.sensitivity import run_sensitivity
from trial_analysis.cohort.allocate import allocate_arms
from trial_analysis.cohort.eligibility import apply_eligibility
from trial_analysis.config import compare_populations, load_config, validate_config
from trial_analysis.errors import ConfigError
from trial_analysis.models.outcome_models import run_fit_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report_fixtures import raw_identifiers, shared_outputs, visible_text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_PATIENTS = 900
RELATIVE = 1e-8


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=RELATIVE, abs_tol=1e-12)


def _config(population: str) -> dict:
    from trial_analysis.simulation import simulation_study as ss

    base = load_config(REPO / "config" / "config.yaml")
    config = ss.scenario_config(base, ss.Scenario("populations", N_PATIENTS, 1, {}))
    config["target_trial"]["population"] = population
    # the sessions, imputation and the other sensitivity analyses are not compared here
    config["sensitivity"]["analyses"] = ["doubly_robust"]
    return config


def _run(root: Path, config: dict, tables: dict, ledger: pd.DataFrame) -> dict[str, Path]:
    """One population's run: eligibility and allocation, the model fits and doubly robust
    step, then the other population and the estimators in both (the Snakefile's rules)."""
    root.mkdir(parents=True)
    analysis = allocate_arms(config, apply_eligibility(config, tables, ledger).cohort,
                             tables).analysis
    paths = {"analysis": root / "analysis.parquet", "estimates": root / "estimates",
             "other": root / f"analysis.{other_population(config)}.parquet",
             "csv": root / "estimators_by_population.csv",
             "json": root / "estimates" / "estimators_by_population.json",
             "dr": root / "estimates" / "sensitivity.doubly_robust.json"}
    io.write_parquet(analysis, paths["analysis"])
    run_fit_models(config, paths["analysis"], paths["estimates"], outcomes=["function"])
    run_sensitivity(config, paths["analysis"], "doubly_robust", paths["dr"],
                    root / "estimates" / "sensitivity.doubly_robust.csv")
    run_population_analysis(config, root.parent / "clean", root.parent / "clean_ledger.parquet",
                            other_population(config), root / "other_cohort.parquet",
                            paths["other"])
    run_estimators_by_population(config, paths["analysis"], paths["other"], paths["csv"],
                                 paths["json"])
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    from trial_analysis.simulation import simulation_study as ss
    from trial_analysis.simulation.simulate import simulate_extract

    root = tmp_path_factory.mktemp("populations")
    config = _config("reproduction")
    config["sensitivity"]["outcomes"] = ["function"]
    tables, ledger = ss.clean_in_memory(simulate_extract(config, 5, N_PATIENTS))
    for name, frame in tables.items():
        io.write_parquet(frame, root / "clean" / f"{name}.parquet")
    io.write_parquet(ledger, root / "clean_ledger.parquet")
    out = {}
    for population in POPULATIONS:
        changed = copy.deepcopy(config)
        changed["target_trial"]["population"] = population
        out[population] = _run(root / population, changed, tables, ledger)
    return out


def _table(paths: dict[str, Path]) -> pd.DataFrame:
    return pd.read_csv(paths["csv"])


def _effect(paths: dict[str, Path]) -> dict:
    doc = io.read_json(paths["estimates"] / "function.complete_case.json")
    return next(r for r in doc["estimates"] if r["model"] == "effect" and r["term"] == "arm:time")


def _robust(paths: dict[str, Path], method: str, term: str = "arm_intervention") -> dict:
    doc = io.read_json(paths["dr"])
    return next(r for r in doc["estimates"] if r["method"] == method and r["term"] == term)


def _row(table: pd.DataFrame, population: str, estimator: str) -> pd.Series:
    found = table[(table["population"] == population) & (table["outcome"] == "function")
                  & (table["estimator"] == estimator)]
    assert len(found) == 1, (population, estimator)
    return found.iloc[0]


@pytest.mark.parametrize("main", POPULATIONS)
def test_each_population_equals_the_run_of_that_population(runs, main):
    """Whichever population the main analysis uses, each population's rows are the estimates
    a run of that population writes: mixed model, change score, ANCOVA, doubly robust and the
    bracket, with their SEs and intervals."""
    table = _table(runs[main])
    assert set(table["population"]) == set(POPULATIONS)
    for population in POPULATIONS:
        reference = runs[population]
        mixed = _row(table, population, "mixed_model")
        effect = _effect(reference)
        for key in ("estimate", "std_error", "ci_low", "ci_high", "p_value"):
            assert _close(mixed[key], effect[key]), (population, key)
        assert str(mixed["n_patients"]) == str(effect["n_patients"])
        for estimator in ("change_score", "ancova", "augmented_overlap", "aipw"):
            row, expected = _row(table, population, estimator), _robust(reference, estimator)
            for key in ("estimate", "std_error", "ci_low", "ci_high"):
                assert _close(row[key], expected[key]), (population, estimator, key)
        bracket = _row(table, population, "bracketing")
        assert _close(bracket["ci_low"], _robust(reference, "bracket", "bracket_lower")[
            "estimate"])
        assert _close(bracket["ci_high"], _robust(reference, "bracket", "bracket_upper")[
            "estimate"])
        assert pd.isna(bracket["estimate"])


def test_the_derived_table_is_the_other_runs_analysis_table(runs):
    for main in POPULATIONS:
        other = [p for p in POPULATIONS if p != main][0]
        derived = pd.read_parquet(runs[main]["other"])
        written = pd.read_parquet(runs[other]["analysis"])
        pd.testing.assert_frame_equal(derived, written)


def test_target_trial_population_drops_controls_only_and_counts_add_up(runs):
    table = _table(runs["reproduction"])
    doc = json.loads(runs["reproduction"]["json"].read_text())
    counts = {s["population"]: s for s in doc["populations"]}
    assert doc["main_population"] == "reproduction"
    reproduction, target = counts["reproduction"], counts["target_trial"]
    assert int(target["n_eligible"]) < int(reproduction["n_eligible"])
    # the simulator refers ETMI patients only after their therapist's training
    assert target["n_eligible_intervention"] == reproduction["n_eligible_intervention"]
    for population in POPULATIONS:
        rows = table[table["population"] == population]
        assert rows["estimator"].tolist() == list(ESTIMATORS)
        n = pd.to_numeric(rows["n_patients"])
        assert (n == pd.to_numeric(rows["n_intervention"])
                + pd.to_numeric(rows["n_control"])).all()


def test_small_arm_counts_are_suppressed(runs, tmp_path):
    paths = runs["reproduction"]
    config = _config("reproduction")
    config["sensitivity"]["outcomes"] = ["function"]
    config["report"]["min_cell_count"] = 10_000
    run_estimators_by_population(config, paths["analysis"], paths["other"],
                                 tmp_path / "t.csv", tmp_path / "t.json")
    table = pd.read_csv(tmp_path / "t.csv", dtype=str)
    assert (table["n_intervention"] == "<10000").all()
    doc = json.loads((tmp_path / "t.json").read_text())
    assert all(s["n_eligible"] == "<10000" for s in doc["populations"])


def test_on_by_default_off_for_a_trial_or_without_the_rule():
    config = load_config(REPO / "config" / "config.yaml")
    assert config["target_trial"]["compare_populations"] is True
    assert compare_populations(config)
    off = copy.deepcopy(config)
    off["target_trial"]["eligibility"]["therapist_trained_before_time_zero"] = False
    assert not compare_populations(off)
    no_therapists = copy.deepcopy(config)
    no_therapists["input"]["tables"]["therapists"] = None
    assert not compare_populations(no_therapists)
    trial = copy.deepcopy(config)
    trial["study"]["design"] = "randomised"
    del trial["target_trial"]["compare_populations"]
    validate_config(trial)
    assert trial["target_trial"]["compare_populations"] is False
    assert not compare_populations(trial)


def test_the_step_refuses_a_study_where_it_does_not_apply(runs, tmp_path):
    config = _config("reproduction")
    config["target_trial"]["compare_populations"] = False
    paths = runs["reproduction"]
    with pytest.raises(ConfigError, match="compare_populations"):
        run_estimators_by_population(config, paths["analysis"], paths["other"],
                                     tmp_path / "t.csv", tmp_path / "t.json")


def test_report_shows_the_section_in_readable_words(runs, tmp_path, tmp_path_factory):
    from trial_analysis.reporting.report import run_report

    run = shared_outputs(tmp_path_factory.getbasetemp())
    estimates = tmp_path / "estimates"  # the shared run is read-only
    shutil.copytree(run.estimates, estimates)
    (estimates / "estimators_by_population.json").write_text(
        runs["reproduction"]["json"].read_text())
    out = tmp_path / "report.html"
    run_report(config=run.config, raw=run.raw, estimates=estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=out, analysis=run.analysis)
    html = out.read_text()
    start = html.index('<section id="estimators-by-population"')
    # right after the target-trial table, which the report opens with
    assert html.index('<section id="target-trial"') < start < html.index('<section id="design"')
    section = visible_text(html[start:html.index('<section id="design"')])
    assert raw_identifiers(section) == []
    for words in ("Reproduction of the paper (published population)",
                  "Target trial population (therapist trained before time zero)",
                  "Change-score mixed model", "ANCOVA (lagged outcome)",
                  "Augmented overlap weighting", "Bracketing interval", "positivity",
                  "The other sections of this report analyse the published population"):
        assert words in section, words
    doc = json.loads(runs["reproduction"]["json"].read_text())
    mixed = next(r for r in doc["estimates"] if r["population"] == "target_trial"
                 and r["estimator"] == "mixed_model")
    assert f"{mixed['estimate']:.2f}" in section
    assert raw_identifiers(visible_text(html)) == []


def test_report_without_the_comparison_has_no_section(tmp_path_factory):
    run = shared_outputs(tmp_path_factory.getbasetemp())
    html = run.report.read_text()
    assert 'id="estimators-by-population"' not in html
    assert html.index('<section id="target-trial"') < html.index('<section id="design"')
