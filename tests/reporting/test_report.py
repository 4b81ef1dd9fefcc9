"""Tests for the self-contained HTML report (trial_analysis.reporting.report)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re

import pandas as pd
import pytest
import yaml
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
        assert f"<td><code>{package}</code></td>" in html
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
    assert "Complete cases, ETMI" in section and "complete_cases_etmi" not in section
    assert "What was compared" in section and "directions of effect (not their size)" in section


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
    # The design's wording: no "observational comparison", and its defaults shown.
    assert "observational comparison" not in text
    assert "10. Sensitivity analyses</h2>" in text
    assert "<code>study.design: randomised</code>" in text
    assert "not randomised" not in text


def test_report_opens_with_the_target_trial(html):
    assert html.index('id="target-trial"') < html.index('id="design"')
    section = html[html.index('id="target-trial"'):html.index('id="design"')]
    for component in ("Eligibility", "Treatment strategies", "Assignment", "Time zero",
                      "Follow-up", "Outcome", "Causal contrast", "Estimand", "Analysis plan"):
        assert f"<td>{component}</td>" in section
    assert "10. Sensitivity analyses of the observational comparison</h2>" in html
    assert "<code>study.design: observational</code>" in html


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


def test_imputation_text_states_m_rule_and_missingness_predictors() -> None:
    from trial_analysis.causal.imputation import missingness_predictors_text
    from trial_analysis.reporting.report import imputation_text

    doc = {"details": {
        "imputation_model": "chained equations",
        "m_choice": {"m": 73, "pilot_m": 20, "pilot_fmi": {"function": 0.73, "pain": 0.5},
                     "max_m": 100, "capped": False},
        "missingness_predictors": missingness_predictors_text(["n_sessions", "bmi"])}}
    text = imputation_text(doc)
    assert "73 imputations, chosen as at least 100 times the largest fraction of missing " \
        "information (0.73) of a 20-imputation pilot." in text
    assert "2 auxiliary variables of the configuration (among them the number of sessions)" \
        in text
    fixed = imputation_text({"details": {"imputation_model": "x", "settings": {"m": 20}}})
    assert "20 imputations (fixed in the configuration)." in fixed
    assert imputation_text({}) == ""


def test_schedule_names_a_constant_effect_and_the_time_point_of_a_linear_trend() -> None:
    from trial_analysis.reporting.report import study_schedule

    timepoints = {"baseline": "m0", "followups": ["m1", "m3", "m6"],
                  "values": {"m0": 0, "m1": 1, "m3": 3, "m6": 6}}
    constant = study_schedule({"timepoints": timepoints,
                               "analysis": {"effect": "constant", "baseline": "covariate"}})
    assert constant["constant"] and not constant["several"]
    assert constant["estimand"] == ("mean score at every follow-up adjusted for the baseline "
                                    "score, one effect assumed constant over m1, m3, m6")
    linear = study_schedule({"timepoints": timepoints, "analysis": {"time": "continuous"}})
    assert linear["several"] and not linear["constant"]
    assert linear["estimand"] == ("mean change from baseline to m6, read off the linear time "
                                  "trend at m6 (time 6)")


def test_each_warning_is_attached_to_the_model_that_raised_it(run):
    """A singular stratified fit warns on its own row of Table 8, not the interaction model's."""
    from trial_analysis.reporting.report import model_specifications

    singular = "singular fit: the therapist variance is estimated at the boundary (zero)"
    block = {"formula": "score ~ arm * time", "method": "REML", "converged": True,
             "warnings": []}
    doc = {
        "_file": "function.subgroup_depression.json", "subgroup": "depression",
        "model": {**block, "formula": "score ~ arm * time * depression"},
        "stratified_models": {"0": dict(block), "1": {**block, "warnings": [singular]}},
        "estimates": [
            {"model": "stratified", "term": "arm:time [depression=0]", "warnings": ""},
            {"model": "stratified", "term": "arm:time [depression=1]", "warnings": singular},
            {"model": "subgroup_contrast", "term": "arm:time [depression=1]", "warnings": ""},
            {"model": "subgroup_interaction", "term": "arm:time:depression1",
             "warnings": "an interaction-model note"},
        ],
    }
    rows, methods = model_specifications([doc], run.config)
    by_model = {r["model"]: r["warnings"] for r in rows}
    assert by_model == {
        "Function (FOTO lumbar CAT), subgroup depression: interaction model":
            "an interaction-model note",
        "Function (FOTO lumbar CAT), subgroup depression: stratified fit, no depression": "",
        "Function (FOTO lumbar CAT), subgroup depression: stratified fit, depression": singular,
    }
    # One method shared by all three fits is listed once and referred to by letter.
    assert methods == ["REML"] and {r["method"] for r in rows} == {"a"}


def test_table8_does_not_repeat_method_text(html):
    section = html[html.index('id="models"'):html.index('id="reproduction"')]
    methods = re.findall(r"\(([a-z])\) ([^;<]+)", section)
    assert methods, "the methods note is missing"
    for _, text in methods:
        # Short names ("ML") also occur inside formulas; a long method text only once.
        if len(text.strip()) > 20:
            assert section.count(text.strip()) == 1, text


def test_tipping_point_is_a_full_sentence(run):
    from trial_analysis.reporting.report import tipping_sentence

    row = {"outcome": "function", "term": "tipping_delta", "estimate": 5.0514768,
           "notes": "reached: 1.01 MCID (5 points); imputed intervention follow-ups shifted down"}
    found = {"status": "reached", "tipping_delta": 5.0514768, "tipping_delta_units": 1.0103,
             "unit": 5.0, "unit_name": "MCID"}
    text = tipping_sentence(found, row, run.config)
    assert text.startswith("The 95% confidence interval") and text.endswith(".")
    assert "5.05 points (1.01 MCID, where 1 MCID is 5 points)" in text
    assert "shifted down" in text and "reached:" not in text and ";  " not in text
    # Pain: lower is better, so an unfavourable shift is up; a status that did not tip.
    found = {"status": "not reached within the grid (up to 4 points)", "tipping_delta": None}
    text = tipping_sentence(found, {"outcome": "pain", "estimate": None}, run.config)
    assert text.startswith("No tipping point: not reached within the grid (up to 4 points).")
    assert "shifted up" in text


def test_variance_components_are_wide_one_table_per_outcome(run):
    """Table 7: a table per outcome, a row per component, variance and ICC per population."""
    from trial_analysis.reporting.report import variance_tables
    from trial_analysis.reporting.tables import fmt_sig

    frame = pd.read_csv(run.tables / "variance_components.csv")
    tables = variance_tables(frame, run.config)
    assert [t["outcome"] for t in tables] == [o["label"] for o in run.config["outcomes"]]
    for table, (outcome, part) in zip(tables, frame.groupby("outcome", sort=False),
                                      strict=True):
        populations = list(dict.fromkeys(part["population"]))
        assert len(table["rows"]) == part["component"].nunique()
        assert all(len(r["cells"]) == 2 * len(populations) for r in table["rows"])
        first = part[(part["component"] == part["component"].iloc[0])
                     & (part["population"] == populations[0])]
        expected = [fmt_sig(first.loc[first["quantity"] == q, "value"].iloc[0])
                    for q in ("variance", "icc")]
        assert table["rows"][0]["cells"][:2] == expected, outcome


def test_sensitivity_section_separates_model_form_and_brackets(tmp_path):
    from trial_analysis.reporting.report import sensitivity_section

    def row(method, estimate, analysis="propensity"):
        return {"outcome": "function", "analysis": analysis, "method": method,
                "term": "arm_intervention", "estimate": estimate, "std_error": 1.0,
                "ci_low": estimate - 2, "ci_high": estimate + 2, "p_value": 0.01,
                "n_patients": 100, "n_clusters": 10, "notes": ""}

    estimates = tmp_path / "estimates"
    estimates.mkdir()
    (estimates / "sensitivity.propensity.json").write_text(json.dumps({"estimates": [
        row("covariate_adjusted_ancova", 4.1), row("covariate_adjusted_change", 3.2),
        row("overlap_weighted_ancova", 4.2), row("overlap_weighted_change", 4.2)]}))
    bracket = {"outcome": "function", "n_patients": 100, "change_score": 3.2, "ancova": 4.1,
               "lower": 3.2, "upper": 4.1, "baseline_coefficient": 0.5,
               "adjusted_baseline_difference": 1.8, "stationarity_holds": True}
    (estimates / "sensitivity.doubly_robust.json").write_text(json.dumps({
        "estimates": [row("augmented_overlap", 4.0, "doubly_robust"),
                      row("change_score", 3.2, "bracketing"), row("ancova", 4.1, "bracketing")],
        "tables": {"bracketing": [bracket]}}))
    config = {"outcomes": [{"name": "function", "label": "Function"}]}
    primary = [{"outcome": "Function", "population": "complete cases", "key": "complete_case",
                "n": "100", "estimate": "3.00", "value": 3.0}]
    section = sensitivity_section(estimates, tmp_path, primary, {}, config)
    shown = [(e["method"], e["form"]) for e in section["effects"]]
    assert ("ANCOVA, baseline and covariates", "lagged outcome (ANCOVA)") in shown
    assert ("Change score, covariates", "change score") in shown
    assert ("Overlap-weighted change score (propensity score)", "change score") in shown
    assert ("Augmented overlap weighting (doubly robust, ATO)",
            "doubly robust (baseline in both models)") in shown
    # the bracketing's own fits repeat the covariate-adjusted rows: shown once
    assert len(shown) == len(set(shown)) == 6
    assert section["bracketing"] == [{
        "outcome": "Function", "change": "3.20", "ancova": "4.10", "interval": "3.20 to 4.10",
        "slope": "0.50", "difference": "1.80", "upper": "ANCOVA", "holds": "yes",
        "mixed": "3.00", "mixed_interval": "3.00 to 4.10"}]
    primary[0]["n"] = "99"  # another population: not lined up
    section = sensitivity_section(estimates, tmp_path, primary, {}, config)
    assert section["bracketing"][0]["mixed"] == ""


def test_each_model_form_gets_its_own_tipping_point():
    from trial_analysis.reporting.report import _tipping_entry

    points = {"function": {"outcome": "function", "method": "delta_adjusted_mi",
                           "tipping_delta": 4.05},
              "function (change)": {"outcome": "function", "method": "delta_adjusted_mi_change",
                                    "tipping_delta": 2.85}}
    row = {"outcome": "function", "method": "delta_adjusted_mi_change"}
    assert _tipping_entry(points, row)["tipping_delta"] == 2.85
    assert _tipping_entry(points, {**row, "method": "delta_adjusted_mi"})["tipping_delta"] == 4.05
    # a file written before the entries named their method: keyed by the outcome
    assert _tipping_entry({"function": {"tipping_delta": 1.0}}, row)["tipping_delta"] == 1.0


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
    # Table P1 lists each query table as read from the server, with no file or digest.
    section = out.read_text(encoding="utf-8").split('id="provenance"')[1]
    assert section.count("server query, no file") == sum(
        1 for entry in config["input"]["tables"].values() if entry is not None)
    with pytest.raises(DataError, match="a raw input named in the config is missing"):
        run_report(config=run.config, raw=tmp_path / "absent", estimates=run.estimates,
                   tables=run.tables, figures=run.figures, benchmarks=None, out=out)


def test_subgroups_are_exploratory_with_their_number_of_tests(run, html):
    table = pd.read_csv(run.tables / "subgroup_estimates.csv")
    n_tests = len(table.dropna(subset=["p_heterogeneity"])
                  .drop_duplicates(["outcome", "subgroup"]))
    assert n_tests > 0
    assert "Subgroups (exploratory)" in html
    assert f"{n_tests} heterogeneity tests" in html
    assert "p heterogeneity (Holm)" in html
    assert "The secondary outcomes" in html and "not adjusted for multiplicity" in html


def test_stress_study_table_joins_the_report_when_its_summary_exists(run, tmp_path):
    """A summary from hand-made replicate rows (3 per scenario, every estimator): the report
    shows its rows, which estimator meets the target, and says where none does."""

    from trial_analysis.simulation import stress_study as st

    study = tmp_path / "stress.yaml"
    study.write_text(yaml.safe_dump({
        "seed": 1, "outcomes": ["function"], "chunk_size": 3,
        "defaults": {"n_replicates": 3, "n_patients": 500},
        "scenarios": [{"name": "b_observed_intake", "effect": 4.0},
                      {"name": "b_observed_intake_null", "effect": 0.0}]}))
    rows = []
    for scenario, truth in (("b_observed_intake", 4.0), ("b_observed_intake_null", 0.0)):
        for replicate in range(3):
            for k, estimator in enumerate(st.ESTIMATORS):
                # ANCOVA unbiased and covering; the others 2 points off.
                shift = 0.0 if estimator == "ancova" else -2.0
                estimate = truth + shift + (replicate - 1) * 0.1
                rows.append({"scenario": scenario, "replicate": replicate, "seed": "1",
                             "outcome": "function", "population": "complete_case",
                             "true_effect": truth, "realised_ate": truth - 0.05,
                             "estimate": estimate, "std_error": 0.5,
                             "ci_low": estimate - 1, "ci_high": estimate + 1,
                             "p_value": 0.01 + 0.001 * k, "df": 100, "n_patients": 400,
                             "status": "ok", "error": "", "estimator": estimator})
    chunk = tmp_path / "chunk.csv"
    pd.DataFrame(rows).to_csv(chunk, index=False)
    summary = tmp_path / "summary.json"
    st.run_stress_study_summary(run.config, study, [chunk], tmp_path / "summary.csv", summary,
                                tmp_path / "summary.md", tmp_path / "stress_study.png")
    out = tmp_path / "report.html"
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=out,
               stress_summary=summary)
    html = out.read_text(encoding="utf-8")
    section = html[html.index('id="stress-study"'):html.index('id="provenance"')]
    assert "b observed intake: ANCOVA (lagged outcome)" in section
    assert section.count("<tr><td>b observed intake") == 2 * len(st.ESTIMATORS)
    assert "-2.00 (0.06)" in section and "0.00 (0.06)" in section
    assert "data:image/png;base64," in section
    assert "What the report recommends." in section
    assert "ANCOVA (lagged outcome) under b observed intake" in section
    without = tmp_path / "plain.html"
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=without)
    assert 'id="stress-study"' not in without.read_text(encoding="utf-8")

    # A summary given with its study file is shown only for the design it was computed for.
    checked = tmp_path / "checked.html"
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=checked,
               stress_summary=summary, stress_study=study)
    shown = checked.read_text(encoding="utf-8")
    assert "<tr><td>b observed intake" in shown
    assert "results committed with the code" in shown  # not under the run's reports folder
    edited = copy.deepcopy(run.config)
    edited["analysis"]["covariates"] = edited["analysis"]["covariates"][:-1]  # another design
    other = tmp_path / "other.html"
    run_report(config=edited, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=other,
               stress_summary=summary, stress_study=study)
    section = other.read_text(encoding="utf-8").split('id="stress-study"')[1]
    assert "belongs to another design" in section
    assert "<tr><td>b observed intake" not in section


def test_the_design_signature_ignores_paths_and_chunking_but_not_the_design(tmp_path):
    from trial_analysis.signature import design_signature

    config = {"paths": {"reports": "a"}, "report": {"title": "x"},
              "simulation": {"n_patients": 100}, "analysis": {"covariates": ["age"]}}
    study = {"seed": 1, "chunk_size": 10, "scenarios": [{"name": "a", "effect": 4.0}]}
    base = design_signature(config, study)
    moved = {**config, "paths": {"reports": "b"}, "report": {"title": "y"}}
    assert design_signature(moved, {**study, "chunk_size": 3}) == base
    assert design_signature({**config, "simulation": {"n_patients": 101}}, study) != base
    assert design_signature(config, {**study, "seed": 2}) != base
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert design_signature(config, path) == base


def test_per_visit_variances_follow_the_time_points():
    # An MMRM's estimate file sorts its keys (w12 < w24 < w4 < w8); the table shows time order.
    from trial_analysis.reporting.report import _time_ordered

    config = {"timepoints": {"baseline": "w0", "followups": ["w4", "w8", "w12", "w24"]}}
    names = ["variance [w12]", "variance [w24]", "variance [w4]", "variance [w8]"]
    assert _time_ordered(names, config) == ["variance [w4]", "variance [w8]",
                                            "variance [w12]", "variance [w24]"]
    others = ["therapist", "therapist:time", "residual"]
    assert _time_ordered(others, config) == others


def test_arms_context_names_contrasts_method_and_comparisons() -> None:
    """Several arms: the report's words for the family, the method and the columns shown."""
    from pathlib import Path

    import yaml

    from trial_analysis.reporting.report import arms_context

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "examples"
                             / "three_arm" / "config.yaml").read_text())
    words = arms_context(config)
    assert words["several"] and words["n_comparisons"] == 2 and words["interval"] == "simultaneous"
    assert words["names"] == ["low dose vs control", "high dose vs control"]
    assert words["multiplicity"].startswith("Dunnett's single-step")
    config["analysis"].update(contrasts="all_pairs", multiplicity="holm")
    words = arms_context(config)
    assert words["n_comparisons"] == 3 and words["names"][-1] == "high dose vs low dose"
    assert words["interval"] == "" and words["show_p"] and "Holm" in words["multiplicity"]
    config["analysis"].update(multiplicity="none")
    assert not arms_context(config)["show_p"]
    two = {"allocation": {"intervention": "ETMI", "control": "usual care"}}
    assert arms_context(two) == {"several": False, "minus": "ETMI minus usual care",
                                 "table1": [("intervention", "ETMI"),
                                            ("control", "usual care")]}
