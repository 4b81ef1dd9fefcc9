"""Tests for the diagnostics appendix (trial_analysis.reporting.diagnostics_appendix)."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pandas as pd
import pytest
from report_fixtures import shared_outputs

from trial_analysis.errors import DataError
from trial_analysis.reporting.diagnostics_appendix import (
    COLUMNS,
    binned_residuals,
    qq_points,
    run_diagnostics,
)
from trial_analysis.reporting.report import run_report


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def diagnosed(run, tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnostics")
    figures, tables = root / "figures", root / "tables"
    shutil.copytree(run.figures, figures)
    shutil.copytree(run.tables, tables)
    config = copy.deepcopy(run.config)
    config["report"]["diagnostics_max_clusters"] = 3
    written = run_diagnostics(config=config, analysis=run.analysis, figures=figures,
                              tables=tables)
    return config, figures, tables, written


def test_one_figure_per_outcome_and_the_summary_table(diagnosed, run):
    config, figures, tables, written = diagnosed
    outcomes = [o["name"] for o in config["outcomes"]]
    for outcome in outcomes:
        assert (figures / f"diagnostics_{outcome}.png").stat().st_size > 10_000
        assert (figures / f"diagnostics_{outcome}.svg").is_file()
    table = pd.read_csv(tables / "diagnostics.csv")
    assert list(table.columns) == COLUMNS and table["outcome"].tolist() == outcomes
    assert (table["clusters_left_out"] == 3).all() and (table["cluster_level"] == "therapist"
                                                        ).all()
    assert (table["loco_min"] <= table["loco_max"]).all()
    # the estimate is the primary model's, as in the estimate file
    primary = pd.read_csv(run.tables / "primary_estimates.csv")
    primary = primary[primary["population"] == "complete_case"].set_index("outcome")
    for row in table.itertuples():
        assert row.estimate == pytest.approx(primary.loc[row.outcome, "estimate"], rel=1e-6)
        assert row.loco_max_shift == pytest.approx(
            max(abs(row.loco_min - row.estimate), abs(row.loco_max - row.estimate)))


def test_the_appendix_in_the_report_has_alt_text_captions_and_no_identifiers(diagnosed, run,
                                                                               tmp_path):
    config, figures, tables, _ = diagnosed
    out = tmp_path / "report.html"
    run_report(config=config, raw=run.raw, estimates=run.estimates, tables=tables,
               figures=figures, benchmarks=None, out=out)
    html = out.read_text(encoding="utf-8")
    section = html[html.index('<section id="diagnostics">'):html.index('id="provenance"')]
    assert section.count("<img ") == len(config["outcomes"])
    assert section.count('alt="') == len(config["outcomes"])
    assert "normal QQ plots of the residuals and of each random effect" in section
    assert "<b>Table D1.</b>" in section and "Figure D3." in section
    assert "THR-" not in section and "PAT-" not in section
    assert '<a href="#diagnostics">' in html


def test_report_without_diagnostics_has_no_appendix(run):
    assert 'id="diagnostics"' not in run.report.read_text(encoding="utf-8")


def test_a_missing_diagnostics_figure_is_a_data_error(diagnosed, run, tmp_path):
    config, figures, tables, _ = diagnosed
    partial = tmp_path / "figures"
    shutil.copytree(figures, partial)
    (partial / f"diagnostics_{config['outcomes'][0]['name']}.png").unlink()
    with pytest.raises(DataError, match="diagnostics_"):
        run_report(config=config, raw=run.raw, estimates=run.estimates, tables=tables,
                   figures=partial, benchmarks=None, out=tmp_path / "r.html")


def test_qq_points_are_at_most_100_quantiles_and_standardised():
    rng = np.random.default_rng(1)
    values = rng.normal(5, 3, 5000)
    theoretical, sample = qq_points(values)
    assert len(theoretical) == len(sample) == 100
    np.testing.assert_allclose(sample, theoretical, atol=0.15)  # normal data: on the line
    assert not np.isin(sample, (values - values.mean()) / values.std(ddof=1)).any()
    small_t, small_s = qq_points(np.array([1.0, 2.0, 4.0, 8.0]))
    assert len(small_t) == 4 and small_s[0] < small_s[-1]
    assert len(qq_points(np.array([1.0, 1.0, 1.0]))[0]) == 0


def test_binned_residuals_drop_small_bins():
    fitted = np.arange(100, dtype=float)
    residuals = np.where(fitted < 50, -1.0, 1.0)
    summary = binned_residuals(fitted, residuals, min_count=5)
    assert len(summary) == 20 and (summary["n"] == 5).all()
    assert summary["median"].iloc[0] == -1.0 and summary["median"].iloc[-1] == 1.0
    assert binned_residuals(fitted, residuals, min_count=6).empty
