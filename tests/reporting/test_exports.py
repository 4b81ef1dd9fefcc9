"""Tests for the manuscript exports (trial_analysis.reporting.exports): Word and LaTeX tables."""

from __future__ import annotations

import json
import shutil

import docx
import pandas as pd
import pytest
from report_fixtures import shared_outputs

from trial_analysis.errors import DataError
from trial_analysis.reporting.exports import latex_escape, run_exports


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


@pytest.fixture()
def folders(run, tmp_path):
    """Copies of the fixture's tables and estimates (the shared fixture is read-only)."""
    tables, estimates = tmp_path / "tables", tmp_path / "estimates"
    shutil.copytree(run.tables, tables)
    shutil.copytree(run.estimates, estimates)
    return tables, estimates


def _cells(path):
    document = docx.Document(str(path))
    assert len(document.tables) == 1
    table = document.tables[0]
    rows = [[cell.text for cell in row.cells] for row in table.rows]
    notes = [p.text for p in document.paragraphs]
    return rows, notes


def _sensitivity_docs(estimates):
    row = {"outcome": "function", "term": "arm_intervention", "n_patients": 230,
           "estimate": 3.456, "ci_low": 1.2, "ci_high": 5.712, "p_value": 0.0031}
    (estimates / "sensitivity.propensity.json").write_text(json.dumps({"estimates": [
        {**row, "method": "overlap_weighted_ancova"},
        {**row, "method": "covariate_adjusted_ancova", "estimate": -1.5, "ci_low": -2.5,
         "ci_high": -0.5}]}))
    (estimates / "sensitivity.tipping_point.json").write_text(json.dumps({"estimates": [
        {"outcome": "function", "term": "tipping_delta", "estimate": 4.25, "notes": "",
         "method": "delta_adjusted_mi"}]}))


def test_primary_table_in_word_matches_the_csv(run, folders):
    tables, estimates = folders
    written = run_exports(config=run.config, estimates=estimates, tables=tables)
    assert "sensitivity" not in written  # no sensitivity analysis in the fixture
    rows, notes = _cells(written["primary_estimates"]["docx"])
    csv = pd.read_csv(tables / "primary_estimates.csv")
    assert rows[0][:7] == ["Outcome", "Population", "Patients", "Clusters (therapist)",
                           "Difference", "95% CI", "p"]
    assert rows[0][-1] == "True value"
    assert len(rows) == 1 + len(csv)
    for cells, (_, expected) in zip(rows[1:], csv.iterrows(), strict=True):
        assert cells[2] == str(expected["n_patients"])
        assert float(cells[4]) == pytest.approx(expected["estimate"], abs=0.005)
        low, high = (float(x) for x in cells[5].split(" to "))
        assert low == pytest.approx(expected["ci_low"], abs=0.005)
        assert high == pytest.approx(expected["ci_high"], abs=0.005)
    assert notes[0].startswith("Table 2. Difference between groups")
    assert any("True value: the effect planted" in n for n in notes)
    html = run.report.read_text(encoding="utf-8")
    assert all(cells[5] in html for cells in rows[1:])  # same cells as the report


def test_table1_in_word_has_population_blocks_and_footnotes(run, folders):
    tables, estimates = folders
    written = run_exports(config=run.config, estimates=estimates, tables=tables)
    rows, notes = _cells(written["table1"]["docx"])
    csv = pd.read_csv(tables / "table1.csv", dtype=str, keep_default_na=False)
    populations = list(dict.fromkeys(csv["population"]))
    assert len(rows) == 1 + len(csv) + len(populations)
    assert rows[0][4:6] == ["ETMI", "usual care"]
    headings = [r for r in rows[1:] if len(set(r)) == 1]  # merged: every cell the same
    assert [r[0] for r in headings] == populations
    assert any("<5" in cell for r in rows for cell in r)  # suppression survives
    assert any("Counts of 1 to 4 patients are shown as <5" in n for n in notes)
    tex = written["table1"]["tex"].read_text(encoding="utf-8")
    assert "\\toprule" in tex and "\\multicolumn{7}{l}{\\textit{" + populations[0] in tex
    assert "\\textless{}5" in tex


def test_sensitivity_table_word_latex_and_csv(run, folders):
    tables, estimates = folders
    _sensitivity_docs(estimates)
    written = run_exports(config=run.config, estimates=estimates, tables=tables)
    rows, notes = _cells(written["sensitivity"]["docx"])
    methods = [r[1] for r in rows[1:]]
    assert "Overlap-weighted ANCOVA (propensity score)" in methods
    assert "ANCOVA, baseline and covariates" in methods
    overlap = rows[1 + methods.index("Overlap-weighted ANCOVA (propensity score)")]
    assert overlap[2:7] == ["lagged outcome (ANCOVA)", "230", "3.46", "1.20 to 5.71", "0.003"]
    assert any("Tipping point" in n and "by 4.25 points" in n for n in notes)
    tex = written["sensitivity"]["tex"].read_text(encoding="utf-8")
    assert "$-$1.50" in tex and "$-$2.50 to $-$0.50" in tex
    csv = pd.read_csv(written["sensitivity"]["csv"], dtype=str)
    assert csv["Method"].tolist() == methods


def test_exports_are_byte_identical_on_rerun(run, folders, tmp_path):
    tables, estimates = folders
    first = run_exports(config=run.config, estimates=estimates, tables=tables)
    blobs = {k: (v["docx"].read_bytes(), v["tex"].read_bytes()) for k, v in first.items()}
    second = run_exports(config=run.config, estimates=estimates, tables=tables)
    assert blobs == {k: (v["docx"].read_bytes(), v["tex"].read_bytes())
                     for k, v in second.items()}


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 {x} ~^ $") == \
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{} \$"
    assert latex_escape("-1.5 to -0.2; fear-avoidance 3-4") == \
        "$-$1.5 to $-$0.2; fear-avoidance 3-4"


def test_missing_table_is_a_data_error(run, tmp_path):
    with pytest.raises(DataError, match="primary_estimates.csv"):
        run_exports(config=run.config, estimates=run.estimates, tables=tmp_path)


def test_primary_table_has_no_cluster_column_without_clustering(run, folders):
    """A patient random intercept is not clustering: no Clusters column repeating Patients."""
    import copy

    from trial_analysis.reporting.exports import primary_export
    from trial_analysis.reporting.report import primary_rows

    tables, _ = folders
    config = copy.deepcopy(run.config)
    config["analysis"]["random_effects"] = ["patient"]
    frame = pd.read_csv(tables / "primary_estimates.csv", dtype=str, keep_default_na=False)
    table = primary_export(primary_rows(frame, config), config, simulated=False)
    assert table.header == ["Outcome", "Population", "Patients", "Difference", "95% CI", "p"]
    assert all(len(row) == len(table.header) for row in table.rows)
    assert not any("Clusters" in note for note in table.footnotes)
