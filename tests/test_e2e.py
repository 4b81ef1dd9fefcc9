"""End to end: the whole Snakefile on a small simulated cohort, and the published counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from trial_analysis.config import load_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]

TIDY_COLUMNS = [
    "outcome", "population", "model", "term", "estimate", "std_error", "ci_low", "ci_high",
    "p_value", "n_patients", "n_observations", "n_clusters", "converged", "warnings",
]


def test_report_exists_and_is_self_contained(pipeline_run: Path) -> None:
    html = (pipeline_run / "reports" / "report.html").read_text(encoding="utf-8")
    assert len(html) > 10_000
    assert 'src="http' not in html and "src='http" not in html
    assert "<img" in html or "<svg" in html


def test_report_shows_no_raw_identifier(pipeline_run: Path) -> None:
    """The full report (sensitivity analyses included) names everything by its label."""
    from report_fixtures import raw_identifiers, visible_text

    html = (pipeline_run / "reports" / "report.html").read_text(encoding="utf-8")
    found = raw_identifiers(visible_text(html))
    assert not found, f"raw identifiers a reader would see: {found}"


def test_every_estimate_file_is_well_formed(pipeline_run: Path) -> None:
    config = load_config(pipeline_run / "config" / "config.yaml")
    estimates = pipeline_run / "reports" / "estimates"
    outcomes = [o["name"] for o in config["outcomes"]]
    expected = [f"{o}.{p}" for o in outcomes for p in config["analysis"]["populations"]]
    expected += [f"{o}.subgroup_{s}" for o in outcomes for s in config["analysis"]["subgroups"]]
    expected += ["sessions", "responders"]
    for stem in expected:
        record = json.loads((estimates / f"{stem}.json").read_text())
        rows = pd.DataFrame(record["estimates"])
        assert set(TIDY_COLUMNS) <= set(rows.columns), stem
        assert len(rows) > 0, stem
        finite = rows.dropna(subset=["estimate", "std_error"])
        assert len(finite) > 0, stem
        assert (finite["ci_low"] <= finite["estimate"]).all(), stem
        assert (finite["estimate"] <= finite["ci_high"]).all(), stem
        table = pd.read_csv(estimates / f"{stem}.csv")
        assert set(TIDY_COLUMNS) <= set(table.columns), stem
        assert len(table) == len(rows), stem


def test_primary_estimates_carry_their_model(pipeline_run: Path) -> None:
    record = json.loads(
        (pipeline_run / "reports" / "estimates" / "function.complete_case.json").read_text()
    )
    model = record["model"]
    for key in ("formula", "random_effects", "fit_path", "converged", "warnings",
                "variance_components"):
        assert key in model
    terms = pd.DataFrame(record["estimates"])
    assert (terms["population"] == "complete_case").all()
    assert len(record["marginal_means"]) == 4  # two arms x two time points


def test_tables_and_figures_written(pipeline_run: Path) -> None:
    reports = pipeline_run / "reports"
    for name in ("flow", "implementation", "table1", "primary_estimates", "reproduction"):
        assert len(pd.read_csv(reports / "tables" / f"{name}.csv")) > 0, name
    for name in ("flow", "trajectories", "forest", "sessions", "implementation"):
        for suffix in ("png", "svg"):
            assert (reports / "figures" / f"{name}.{suffix}").stat().st_size > 1000


def test_every_rule_logged_and_benchmarked(pipeline_run: Path) -> None:
    logs = {p.name for p in (pipeline_run / "logs").glob("*.log")}
    assert {"simulate.log", "clean.log", "eligibility.log", "allocate.log", "report.log"} <= logs
    assert len(list((pipeline_run / "logs" / "benchmarks").glob("*.tsv"))) >= 10


def test_config_as_run_is_recorded(pipeline_run: Path) -> None:
    as_run = pipeline_run / "data" / "interim" / "config.as_run.yaml"
    recorded = yaml.safe_load(as_run.read_text())
    assert recorded["simulation"]["n_patients"] > 0
    assert recorded["analysis"]["reml"] is True  # defaults are filled in


def test_default_cohort_reproduces_published_counts(default_cohort_run: Path) -> None:
    flow = pd.read_csv(default_cohort_run / "reports" / "tables" / "flow.csv")
    analysis = pd.read_parquet(default_cohort_run / "data" / "processed" / "analysis.parquet")
    implementation = pd.read_csv(default_cohort_run / "reports" / "tables" / "implementation.csv")
    therapists = pd.read_csv(default_cohort_run / "data" / "raw" / "therapists.csv")

    assert len(analysis) == 4193
    assert (analysis["arm"] == "ETMI").sum() == 711
    assert analysis["complete_case"].sum() == 1624
    assert analysis.loc[analysis["arm"] == "ETMI", "complete_case"].sum() == 259
    assert abs(analysis["age"].mean() - 56.3) <= 0.3
    assert abs(analysis["age"].std() - 16.7) <= 0.5
    assert (analysis["sex"] == "F").sum() == 2454
    assert therapists["clinic_id"].nunique() == 13

    counts = dict(zip(implementation["measure"], implementation["numerator"], strict=True))
    denominators = dict(zip(implementation["measure"], implementation["denominator"], strict=True))
    assert counts["reach"] == 109 and denominators["reach"] == 128
    assert counts["therapist_adoption"] == 70
    assert counts["patient_adoption"] == 711 and denominators["patient_adoption"] == 4193

    # the flow table is computed from the ledger and shows the same numbers
    assert 4193 in flow["n"].tolist()
    assert 711 in flow["n"].tolist()
    assert 1624 in flow["n"].tolist()
    assert 259 in flow["n"].tolist()


def test_ledger_accounts_for_every_raw_record(default_cohort_run: Path) -> None:
    ledger = pd.read_parquet(default_cohort_run / "data" / "interim" / "ledger.parquet")
    raw = default_cohort_run / "data" / "raw"
    for table in ("therapists", "patients", "sessions", "outcomes"):
        n_raw = len(pd.read_csv(raw / f"{table}.csv"))
        in_ledger = ledger[ledger["table"] == table]
        assert len(in_ledger) == n_raw, table
        assert in_ledger["record_id"].is_unique, table


def test_primary_models_recover_the_true_effects(default_cohort_run: Path) -> None:
    """On the published-size default cohort every true effect lies inside its 95% CI."""
    from trial_analysis.models.outcome_models import fit_outcome_model
    from trial_analysis.models.sessions import fit_sessions_model

    config = load_config(default_cohort_run / "config" / "config.yaml")
    analysis = pd.read_parquet(default_cohort_run / "data" / "processed" / "analysis.parquet")
    truth = json.loads((default_cohort_run / "data" / "raw" / "truth.json").read_text())
    for outcome in [o["name"] for o in config["outcomes"]]:
        true_effect = truth["effects"][outcome]["structural"]
        for population in ("complete_case", "all_available"):
            rows = fit_outcome_model(analysis, config, outcome, population).to_frame()
            effect = rows.loc[rows["term"] == "arm:time"].iloc[0]
            assert effect["ci_low"] <= true_effect <= effect["ci_high"], (outcome, population)
            assert effect["converged"], (outcome, population)
    sessions = fit_sessions_model(analysis, config).to_frame()
    primary = sessions.iloc[0]
    assert primary["term"] == "ratio_of_means"
    assert primary["ci_low"] <= truth["sessions"]["ratio_of_means"] <= primary["ci_high"]


def test_snakemake_report_registers_figures_and_tables(pipeline_run: Path) -> None:
    out = pipeline_run / "snakemake-report.html"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(pipeline_run), "--nolock", "--report", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 100_000


def test_rerunning_steps_gives_byte_identical_outputs(
    pipeline_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same data, config and seed: the estimate files and tables are byte-identical."""
    from trial_analysis.cli import main

    monkeypatch.chdir(pipeline_run)  # config paths are relative to the run's folder

    config = str(pipeline_run / "data" / "interim" / "config.as_run.yaml")
    analysis = str(pipeline_run / "data" / "processed" / "analysis.parquet")
    estimates = pipeline_run / "reports" / "estimates"
    assert main(["fit", "--config", config, "--analysis", analysis, "--outcome", "function",
                 "--population", "all_available", "--out-json", str(tmp_path / "f.json"),
                 "--out-csv", str(tmp_path / "f.csv")]) == 0
    for suffix in ("json", "csv"):
        rerun = (tmp_path / f"f.{suffix}").read_bytes()
        assert rerun == (estimates / f"function.all_available.{suffix}").read_bytes(), suffix
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("flow", "implementation"):  # written by `allocate`, read by `tables`
        shutil.copy(pipeline_run / "reports" / "tables" / f"{name}.csv", tables)
    assert main(["tables", "--config", config, "--analysis", analysis, "--estimates",
                 str(estimates), "--out", str(tables)]) == 0
    for name in ("table1", "primary_estimates", "subgroup_estimates", "reproduction"):
        produced = (tables / f"{name}.csv").read_bytes()
        assert produced == (pipeline_run / "reports" / "tables" / f"{name}.csv").read_bytes(), name


def test_estimators_by_population_match_the_main_fits_and_rerun_identically(
    pipeline_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules population_analysis and estimators_by_population: the reproduction rows are the
    main run's own estimates (primary mixed model, doubly robust step), the target trial's
    population is smaller, a rerun is byte-identical and the report shows the section."""
    from trial_analysis.cli import main

    reports = pipeline_run / "reports"
    table = pd.read_csv(reports / "tables" / "estimators_by_population.csv")
    primary = json.loads((reports / "estimates" / "function.complete_case.json").read_text())
    effect = next(r for r in primary["estimates"]
                  if r["model"] == "effect" and r["term"] == "arm:time")
    mine = table.set_index(["population", "outcome", "estimator"])
    assert mine.loc[("reproduction", "function", "mixed_model"), "estimate"] == pytest.approx(
        effect["estimate"], rel=1e-9)
    robust = json.loads((reports / "estimates" / "sensitivity.doubly_robust.json").read_text())
    for row in robust["estimates"]:
        if row["term"] == "arm_intervention":
            assert mine.loc[("reproduction", row["outcome"], row["method"]), "estimate"] \
                == pytest.approx(row["estimate"], rel=1e-9)
    n = pd.to_numeric(table["n_patients"], errors="coerce")
    assert (n[table["population"] == "target_trial"].to_numpy()
            < n[table["population"] == "reproduction"].to_numpy()).all()

    monkeypatch.chdir(pipeline_run)
    processed = pipeline_run / "data" / "processed"
    assert main(["estimators-by-population",
                 "--config", str(pipeline_run / "data" / "interim" / "config.as_run.yaml"),
                 "--analysis", str(processed / "analysis.parquet"),
                 "--other-analysis", str(processed / "analysis.target_trial.parquet"),
                 "--out-csv", str(tmp_path / "e.csv"), "--out-json", str(tmp_path / "e.json")]) == 0
    assert (tmp_path / "e.csv").read_bytes() == (
        reports / "tables" / "estimators_by_population.csv").read_bytes()
    assert (tmp_path / "e.json").read_bytes() == (
        reports / "estimates" / "estimators_by_population.json").read_bytes()
    html = (reports / "report.html").read_text(encoding="utf-8")
    assert 'id="estimators-by-population"' in html
