"""Tests for the self-contained HTML report (trial_analysis.reporting.report)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import pandas as pd
import pytest
from report_fixtures import shared_outputs

from trial_analysis.errors import DataError
from trial_analysis.reporting.figures import FIGURE_NAMES
from trial_analysis.reporting.report import benchmark_times, run_report
from trial_analysis.reporting.tables import fmt_ci


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def html(run):
    return run.report.read_text(encoding="utf-8")


def test_report_is_self_contained(html):
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html.lower()
    assert "<script" not in html.lower()
    assert "@import" not in html and "url(" not in html


def test_every_figure_is_embedded(run, html):
    for name in FIGURE_NAMES:
        encoded = base64.b64encode((run.figures / f"{name}.png").read_bytes()).decode()
        assert f'src="data:image/png;base64,{encoded}"' in html, name
    assert html.count("<img ") == len(FIGURE_NAMES)
    for number in range(1, len(FIGURE_NAMES) + 1):
        assert f"<b>Figure {number}.</b>" in html


def test_every_estimate_ci_is_shown(run, html):
    checked = 0
    for path in sorted(run.estimates.glob("*.json")):
        doc = json.loads(path.read_text())
        primary = path.stem.split(".")[-1] in {"complete_case", "all_available"}
        for row in doc["estimates"]:
            if row["term"] in {"arm", "time"} or (primary and row["term"] != "arm:time"):
                continue  # the primary model's other fixed effects are not estimands
            digits = 3 if path.stem == "responders" else 2
            assert fmt_ci(row["ci_low"], row["ci_high"], digits) in html, (path.name, row)
            checked += 1
    assert checked >= 6 * 1 + 6 * 3 + 2 + 3


def test_no_patient_identifier_leaks(run, html):
    analysis = pd.read_parquet(run.analysis)
    for column in ("patient_id", "episode_id"):
        leaked = [value for value in analysis[column] if value in html]
        assert not leaked, f"{column} in report: {leaked[:3]}"
    assert "PAT-" not in html and "EPI-" not in html


def test_provenance_section(run, html):
    assert 'id="provenance"' in html
    for path in sorted(p for p in run.raw.rglob("*") if p.is_file()):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in html, path.name
    for package in ("pandas", "numpy", "scipy", "statsmodels", "matplotlib", "snakemake",
                    "pandera", "tableone"):
        assert f"<td>{package}</td>" in html
    assert str(run.config["seed"]) in html
    assert "sensitivity.propensity" in html and "5.9" in html
    assert "min_cell_count: 5" in html  # the config as run, as YAML


def test_design_wording_and_assumptions(run, html):
    assert "STROBE" in html and "CONSORT" not in html
    assert "not randomised" in html
    assert "Simulation assumptions" in html and "effect_function" in html
    assert "True value" in html


def test_reproduction_check_has_match_marks(html):
    section = html[html.index('id="reproduction"'):html.index('id="assumptions"')]
    assert "Reproduced" in section
    assert "&#10003; yes" in section or "✓ yes" in section
    assert "complete_cases_etmi" in section


def test_table1_suppression_reaches_the_report(html):
    section = html[html.index('id="baseline"'):html.index('id="implementation"')]
    assert "&lt;5" in section and "suppressed" in section


def test_randomised_design_uses_consort(run, tmp_path):
    config = copy.deepcopy(run.config)
    config["study"]["design"] = "randomised"
    config.pop("simulation")
    out = tmp_path / "report.html"
    run_report(config=config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=None, out=out)
    text = out.read_text(encoding="utf-8")
    assert "CONSORT" in text and "STROBE" not in text
    assert "No benchmark files were available" in text
    assert 'id="assumptions"' not in text


def test_report_is_reproducible_with_source_date_epoch(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    paths = []
    for name in ("a.html", "b.html"):
        out = tmp_path / name
        run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
                   figures=run.figures, benchmarks=run.benchmarks, out=out)
        paths.append(out)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert "2026-01-01 00:00 UTC" in paths[0].read_text(encoding="utf-8")


def test_missing_figure_is_a_data_error(run, tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    with pytest.raises(DataError, match="flow.png"):
        run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
                   figures=figures, benchmarks=None, out=tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_benchmark_times_reads_snakemake_files(tmp_path):
    (tmp_path / "clean.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\n2.5\t0:00:02\t100.0\t200.0\n3.5\t0:00:03\t120.0\t210.0\n")
    (tmp_path / "broken.tsv").write_text("")
    times = benchmark_times(tmp_path)
    assert times.to_dict("records") == [{"job": "clean", "seconds": 3.0, "max_rss_mb": 110.0}]
    assert benchmark_times(None).empty
    assert benchmark_times(tmp_path / "absent").empty


def test_model_block_formats_of_the_models_step():
    from trial_analysis.reporting.report import as_list, describe_random_effects

    assert describe_random_effects(
        {"components": ["therapist", "therapist:time", "patient"], "levels": ["therapist"]}
    ) == "(1 | therapist) + (1 | therapist:time) + (1 | patient)"
    assert describe_random_effects("(1 | therapist)") == "(1 | therapist)"
    assert as_list("a; b") == ["a", "b"]
    assert as_list(["a", ""]) == ["a"]
    assert as_list(None) == [] and as_list(float("nan")) == []


def test_provenance_lists_each_query_and_its_rows(run, tmp_path):
    ledger = pd.DataFrame({"table": ["patients"], "record_id": [1], "fate": ["kept"],
                           "reason": [""], "step": ["clean"]})
    ledger.attrs["sources"] = [
        {"table": "patients", "engine": "postgresql", "database": "$STUDY_PG_DSN",
         "query": "SELECT *\n  FROM registry.patients ORDER BY episode_id", "rows": 4193},
        {"table": "outcomes", "engine": "adam", "database": "adqs.xpt",
         "query": "PARAMCD in ('HAMD17') and ANL01FL = 'Y'", "rows": 2316,
         "rows_in_source": 5152},
    ]
    ledger.to_parquet(tmp_path / "ledger.parquet", index=False)
    out = tmp_path / "report.html"
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=None, out=out, ledger=tmp_path / "ledger.parquet")
    section = out.read_text(encoding="utf-8").split('id="provenance"')[1]
    assert "Table P1b." in section
    assert "SELECT * FROM registry.patients ORDER BY episode_id" in section
    assert "$STUDY_PG_DSN" in section and ">4193<" in section
    assert "2316 of 5152" in section and "PARAMCD in (&#39;HAMD17&#39;)" in section
    # A study of files only (no sources in the ledger) shows no such table.
    plain = tmp_path / "plain.parquet"
    ledger.attrs = {}
    ledger.to_parquet(plain, index=False)
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=None, out=out, ledger=plain)
    assert "Table P1b." not in out.read_text(encoding="utf-8")


def test_a_study_of_queries_needs_no_raw_folder(run, tmp_path):
    config = copy.deepcopy(run.config)
    config["input"]["database"] = {"engine": "postgresql", "dsn_env": "STUDY_PG_DSN"}
    for table, entry in config["input"]["tables"].items():
        if entry is not None:
            config["input"]["tables"][table] = {"query": f"SELECT * FROM {table}"}
    out = tmp_path / "report.html"
    run_report(config=config, raw=tmp_path / "absent", estimates=run.estimates,
               tables=run.tables, figures=run.figures, benchmarks=None, out=out)
    assert "No raw files: every table was read by a database query." in out.read_text(
        encoding="utf-8")
    with pytest.raises(DataError, match="raw extract folder does not exist"):
        run_report(config=run.config, raw=tmp_path / "absent", estimates=run.estimates,
                   tables=run.tables, figures=run.figures, benchmarks=None, out=out)
