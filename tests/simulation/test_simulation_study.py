"""Tests of the simulation study (simulation.simulation_study) and its Snakemake module."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import _fail_with_logs, write_study

from trial_analysis.cli import main
from trial_analysis.cohort.allocate import allocate_arms
from trial_analysis.cohort.eligibility import apply_eligibility
from trial_analysis.config import load_config
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.ingest.clean import clean_tables
from trial_analysis.simulation import simulation_study as ss
from trial_analysis.simulation.simulate import simulate_extract, write_extract

REPO = Path(__file__).resolve().parents[2]
TINY = 300
MODULE = REPO / "workflow" / "simulation_study.smk"
INCLUDE = 'include: "workflow/simulation_study.smk"'


def run_study_workflow(workdir: Path) -> subprocess.CompletedProcess:
    """``snakemake simulation_study`` in ``workdir``, through the main Snakefile.

    Until the main Snakefile includes the module, a two-line wrapper includes both.
    """
    snakefile = REPO / "Snakefile"
    if INCLUDE not in snakefile.read_text():
        wrapper = workdir / "Snakefile.simulation_study"
        wrapper.write_text(f'include: "{snakefile}"\ninclude: "{MODULE}"\n')
        snakefile = wrapper
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
               "--directory", str(workdir), "--cores", "2", "--nolock", "simulation_study"]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


def write_study_file(path: Path, **extra: object) -> Path:
    study = {
        "seed": 11,
        "outcomes": ["function"],
        "populations": ["complete_case", "all_available"],
        "chunk_size": 2,
        "defaults": {"n_replicates": 4, "n_patients": TINY},
        "scenarios": [{"name": "default"}, {"name": "null_effect", "effect": 0.0,
                                            "missingness": "MNAR"}],
        **extra,
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- study file, seeds


def test_study_file_of_the_repository_loads(config: dict) -> None:
    study = ss.load_study(REPO / "config" / "simulation_study.yaml", config)
    assert study.scenario("default").n_patients == 4193
    assert study.scenario("default").n_replicates == 1000
    assert study.scenario("null_effect").assumptions == {"effect_function": 0.0}
    assert study.scenario("mnar").assumptions == {"missingness": {"mechanism": "MNAR"}}


def test_grid_expands_to_named_scenarios(config: dict, tmp_path: Path) -> None:
    path = write_study_file(tmp_path / "s.yaml", scenarios=[], grid={
        "effect": [0, 4], "missingness": ["MAR", "MNAR"], "n_replicates": 3})
    study = ss.load_study(path, config)
    names = [s.name for s in study.scenarios]
    assert names == ["grid_effect0_MAR", "grid_effect0_MNAR", "grid_effect4_MAR",
                     "grid_effect4_MNAR"]
    assert study.scenario("grid_effect4_MNAR").assumptions == {
        "effect_function": 4.0, "missingness": {"mechanism": "MNAR"}}
    assert all(s.n_replicates == 3 for s in study.scenarios)


def test_study_file_problems_are_all_reported(config: dict, tmp_path: Path) -> None:
    path = write_study_file(tmp_path / "s.yaml", outcomes=["nope"], scenarios=[
        {"name": "a", "missingness": "MCAR", "therapist_icc_change": 2},
        {"name": "a", "colour": "red"}])
    with pytest.raises(ConfigError) as info:
        ss.load_study(path, config)
    text = str(info.value)
    for expected in ("'nope'", "MAR or MNAR", "therapist_icc_change", "'colour'",
                     "used more than once"):
        assert expected in text


def test_replicate_seeds_are_deterministic_and_distinct() -> None:
    seeds = [ss.replicate_seed(7, scenario, r) for scenario in ("a", "b") for r in range(200)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [ss.replicate_seed(7, scenario, r) for scenario in ("a", "b")
                     for r in range(200)]
    assert ss.replicate_seed(8, "a", 0) != ss.replicate_seed(7, "a", 0)


def test_chunks_cover_every_replicate_once(config: dict, tmp_path: Path) -> None:
    study = ss.load_study(write_study_file(tmp_path / "s.yaml", chunk_size=3), config)
    assert study.chunks("default") == [(0, 3), (3, 4)]
    assert ss.chunk_replicates(study, "default", 1) == "3:4"
    assert ss.parse_replicates("1:3", 4) == range(1, 3)
    with pytest.raises(ConfigError):
        ss.parse_replicates("3:9", 4)


# ----------------------------------------------------------------------------- replicate path


def test_in_memory_analysis_table_equals_the_file_path(config: dict, tmp_path: Path) -> None:
    """Skipping the CSV round trip and cleaning changes nothing in the analysis table."""
    scenario = ss.Scenario("x", TINY, 1, {"missingness": {"mechanism": "MNAR"}})
    cfg = ss.scenario_config(config, scenario)
    extract = simulate_extract(cfg, 5, TINY)
    fast = ss.analysis_table_from_extract(extract, cfg)

    write_extract(extract, tmp_path, config=cfg)
    cleaned = clean_tables(cfg, tmp_path)
    assert set(cleaned.ledger["fate"]) == {"kept"}
    eligible = apply_eligibility(cfg, cleaned.tables, cleaned.ledger)
    slow = allocate_arms(cfg, eligible.cohort, cleaned.tables).analysis
    pd.testing.assert_frame_equal(fast, slow)
    # Eligibility-level junk is still there and still removed by the real rules.
    assert len(extract.patients) > len(fast) == TINY


def test_in_memory_cleaning_refuses_cleaning_junk(config: dict) -> None:
    extract = simulate_extract(config, 5, TINY)
    with pytest.raises(ConfigError, match="cleaning-level junk"):
        ss.clean_in_memory(extract)


def test_chunk_is_byte_identical_when_run_twice(tmp_path: Path) -> None:
    study = write_study_file(tmp_path / "s.yaml")
    outputs = []
    for name in ("one.csv", "two.csv"):
        code = main(["-q", "simulate-study", "--config", str(REPO / "config" / "config.yaml"),
                     "--study", str(study), "--scenario", "null_effect", "--replicates", "1:3",
                     "--out", str(tmp_path / name)])
        assert code == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    frame = pd.read_csv(tmp_path / "one.csv")
    assert frame["replicate"].tolist() == [1, 1, 2, 2]
    assert frame["population"].tolist() == ["complete_case", "all_available"] * 2
    assert (frame["status"] == "ok").all()
    assert (frame["true_effect"] == 0).all()
    # Different replicates are different data.
    assert frame["estimate"].nunique() == 4


def test_a_failed_fit_is_a_row_not_a_crash(config: dict, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    study = ss.load_study(write_study_file(tmp_path / "s.yaml"), config)

    def broken(*args: object, **kwargs: object) -> None:
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(ss, "fit_outcome_model", broken)
    rows = ss.run_replicate(config, study, study.scenario("default"), 0)
    assert len(rows) == 2
    assert (rows["status"] == "failed").all()
    assert rows["error"].str.contains("LinAlgError: singular matrix").all()
    assert rows["estimate"].isna().all()


# ----------------------------------------------------------------------------- aggregation


def hand_made(estimates: list[float], ci_half: float = 1.0, p: list[float] | None = None,
              status: list[str] | None = None) -> pd.DataFrame:
    n = len(estimates)
    est = np.array(estimates, dtype=float)
    return pd.DataFrame({
        "scenario": "s", "replicate": range(n), "seed": "1", "outcome": "function",
        "population": "complete_case", "true_effect": 2.0, "realised_ate": 1.9,
        "estimate": est, "std_error": [0.5, 0.7, 0.6, 0.8][:n], "ci_low": est - ci_half,
        "ci_high": est + ci_half, "p_value": p or [0.01, 0.2, 0.03, 0.04][:n], "df": 100.0,
        "n_patients": 50, "status": status or ["ok"] * n, "error": "",
    })


def test_performance_formulas_on_a_hand_made_frame() -> None:
    frame = hand_made([1.0, 2.5, 3.5, 2.0])
    measures = ss.performance(frame, alpha=0.05)
    emp_se = float(np.std([1.0, 2.5, 3.5, 2.0], ddof=1))
    assert measures["mean_estimate"] == pytest.approx(2.25)
    assert measures["bias"] == pytest.approx(0.25)
    assert measures["empirical_se"] == pytest.approx(emp_se)
    assert measures["bias_mcse"] == pytest.approx(emp_se / 2)
    assert measures["empirical_se_mcse"] == pytest.approx(emp_se / math.sqrt(6))
    assert measures["mean_model_se"] == pytest.approx(0.65)
    assert measures["mean_model_se_mcse"] == pytest.approx(
        float(np.std([0.5, 0.7, 0.6, 0.8], ddof=1)) / 2)
    # CIs are estimate +- 1: they contain 2.0 for estimates 1.0, 2.5 and 2.0, not 3.5.
    assert measures["coverage"] == pytest.approx(0.75)
    assert measures["coverage_mcse"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert measures["power"] == pytest.approx(0.75)
    assert measures["power_mcse"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert measures["n_failed"] == 0 and measures["n_ok"] == 4


def test_failed_replicates_are_counted_and_left_out() -> None:
    frame = hand_made([1.0, 2.5, 3.5, 2.0], status=["ok", "failed", "ok", "not_converged"])
    frame.loc[1, ["estimate", "std_error", "ci_low", "ci_high", "p_value"]] = np.nan
    measures = ss.performance(frame)
    assert measures["n_replicates"] == 4
    assert measures["n_failed"] == 2
    assert measures["mean_estimate"] == pytest.approx(2.25)  # of 1.0 and 3.5 only
    assert measures["power"] == pytest.approx(1.0)


def test_summary_refuses_a_missing_replicate(config: dict, tmp_path: Path) -> None:
    study = ss.load_study(write_study_file(tmp_path / "s.yaml", populations=["complete_case"],
                                           scenarios=[{"name": "s"}]), config)
    frame = hand_made([1.0, 2.5, 3.5, 2.0])
    summary = ss.summarise(frame, study, config)
    assert summary.columns.tolist() == ss.SUMMARY_COLUMNS
    assert summary.loc[0, "n_replicates"] == 4
    with pytest.raises(DataError, match="missing \\[2\\]"):
        ss.summarise(frame.drop(index=2), study, config)
    with pytest.raises(DataError, match="duplicated \\[1\\]"):
        ss.summarise(pd.concat([frame.drop(index=2), frame.iloc[[1]]]), study, config)


# ----------------------------------------------------------------------------- the workflow


def test_snakemake_target_runs_the_study_end_to_end(tmp_path: Path) -> None:
    write_study(tmp_path, n_patients=TINY)
    write_study_file(tmp_path / "config" / "simulation_study.yaml")
    result = run_study_workflow(tmp_path)
    if result.returncode != 0:
        _fail_with_logs(tmp_path, result)
    out = tmp_path / "reports" / "simulation_study"
    # 2 scenarios x 4 replicates in chunks of 2 -> 4 jobs.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("chunk_*.csv")) == [
        "default/chunk_0.csv", "default/chunk_1.csv", "null_effect/chunk_0.csv",
        "null_effect/chunk_1.csv"]
    summary = pd.read_csv(out / "summary.csv")
    assert summary.columns.tolist() == ss.SUMMARY_COLUMNS
    assert summary[["scenario", "population"]].values.tolist() == [
        ["default", "complete_case"], ["default", "all_available"],
        ["null_effect", "complete_case"], ["null_effect", "all_available"]]
    assert (summary["n_replicates"] == 4).all()
    assert (summary["n_ok"] + summary["n_failed"] == 4).all()
    assert summary["true_value"].tolist() == [4.0, 4.0, 0.0, 0.0]
    assert summary["missingness"].tolist() == ["MAR", "MAR", "MNAR", "MNAR"]
    assert summary["coverage"].between(0, 1).all()
    assert (summary["empirical_se"] > 0).all()
    document = json.loads((out / "summary.json").read_text())
    assert len(document["summary"]) == 4
    # The chunk files are those the command line gives for the same replicates.
    again = tmp_path / "again.csv"
    assert main(["-q", "simulate-study", "--config", str(tmp_path / "config" / "config.yaml"),
                 "--study", str(tmp_path / "config" / "simulation_study.yaml"),
                 "--scenario", "null_effect", "--replicates", "2:4", "--out", str(again)]) == 0
    assert again.read_bytes() == (out / "null_effect" / "chunk_1.csv").read_bytes()
