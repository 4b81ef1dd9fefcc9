"""The worked examples in config/examples: structurally different studies, config only.

Each example's own generator makes its (made-up) raw data in a temporary folder; the
repository's Snakefile then runs the whole plan with `--configfile` pointing at the example's
config, untouched. The tests check that the report is written, that every raw record has one
fate, that the flow counts match what the generator planted, that the estimates recover the
generator's true effects, and that no participant identifier reaches the report.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, _fail_with_logs

EXAMPLES = REPO / "config" / "examples"


def _load_generator(name: str):
    path = EXAMPLES / name / "make_data.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(workdir: Path, name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(EXAMPLES / name / "config.yaml"),
         "--cores", "2", "--nolock"],
        capture_output=True, text=True, env=env, check=False)


def _example_run(factory: pytest.TempPathFactory, name: str) -> tuple[Path, dict]:
    workdir = factory.mktemp(name)
    config = yaml.safe_load((EXAMPLES / name / "config.yaml").read_text())
    raw = workdir / config["paths"]["raw"]
    _load_generator(name).main(["--out", str(raw)])
    result = _run_example(workdir, name)
    if result.returncode != 0:
        logs = workdir / config["paths"]["logs"]
        (workdir / "logs").mkdir(exist_ok=True)
        for log in logs.rglob("*.log") if logs.exists() else []:
            target = workdir / "logs" / log.relative_to(logs)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(log.read_text())
        _fail_with_logs(workdir, result)
    return workdir, config


@pytest.fixture(scope="module")
def randomised_wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _example_run(tmp_path_factory, "randomised_wide")


@pytest.fixture(scope="module")
def multisite_long(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _example_run(tmp_path_factory, "multisite_long")


@pytest.fixture(scope="module")
def randomised_mmrm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _example_run(tmp_path_factory, "randomised_mmrm")


@pytest.fixture(scope="module")
def three_arm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _example_run(tmp_path_factory, "three_arm")


def _flow(workdir: Path, config: dict) -> pd.DataFrame:
    """flow.csv with its counts as numbers, suppressed ones ("<5", "suppressed") as text."""
    flow = pd.read_csv(workdir / config["paths"]["reports"] / "tables" / "flow.csv", dtype=str)
    for column in ("n", "n_excluded"):
        flow[column] = [int(v) if isinstance(v, str) and v.isdigit() else v
                        for v in flow[column]]
    return flow


def _estimates(workdir: Path, config: dict, outcome: str, population: str) -> pd.DataFrame:
    path = workdir / config["paths"]["reports"] / "estimates" / f"{outcome}.{population}.csv"
    return pd.read_csv(path)


def _ledger_matches_raw(workdir: Path, config: dict, tables: dict[str, int]) -> None:
    ledger = pd.read_parquet(workdir / config["paths"]["interim"] / "ledger.parquet")
    counts = ledger.groupby("table").size().to_dict()
    assert counts == tables
    assert ledger.groupby(["table", "record_id"]).size().max() == 1  # one fate per record


def _recovers_truth(estimates: pd.DataFrame, true_effect: float) -> None:
    row = estimates[(estimates["model"] == "effect") & (estimates["term"] == "arm:time")]
    if row.empty:  # estimate files written before the effect rows existed
        row = estimates[estimates["term"] == "arm:time"]
    row = row.iloc[0]
    assert abs(row["estimate"] - true_effect) < 3 * row["std_error"], (row.to_dict(), true_effect)
    assert row["ci_low"] < row["estimate"] < row["ci_high"]


# --------------------------------------------------------------------------------------------
# randomised_wide: randomised, Excel, wide, four follow-ups, no clustering


def test_randomised_wide_report_and_flow(randomised_wide):
    workdir, config = randomised_wide
    report = workdir / config["paths"]["reports"] / "report.html"
    assert report.is_file()
    html = report.read_text()
    assert "exercise" in html and "advice" in html
    assert "EX0001" not in html and "EX0400" not in html  # no participant identifiers
    assert "Not applicable: this study has no sessions table" in html
    assert "at baseline (baseline) and at m2, m4, m6, m8" in html
    assert "Simulated cohort" not in html  # the example's own data, not the simulator's
    # Wording of the design: a change-score mixed model without clustering.
    from report_fixtures import visible_text

    text = visible_text(html.split('<section id="design">', 1)[1])
    assert "Clusters" not in text  # a patient random intercept is not clustering
    assert "difference in mean change" in text and "primary linear mixed model" in text
    table1 = html.split('id="baseline"', 1)[1].split("</section>", 1)[0]
    assert "Body-mass index" not in table1  # mapped in the file, never declared
    assert table1.index("Age, years") < table1.index("Sex") < table1.index("Smoker")
    flow = _flow(workdir, config).set_index("description")
    # The exact duplicate (1) and the minor (1) merge into one exclusion, still under
    # report.min_cell_count and the only one: the extract's 401 would reveal it, so that box
    # is suppressed (cohort.disclosure); the eligible count stays exact.
    assert flow.loc["patient episodes in the extract", "n"] == "suppressed"
    assert "patient episodes after cleaning" not in flow.index
    assert flow.loc["dropped in cleaning or excluded as ineligible", "n_excluded"] == "<5"
    assert flow.loc["eligible patients", "n"] == 399
    assert {flow.loc["allocated to exercise", "n"], flow.loc["allocated to advice", "n"]} == {
        200, 199}


def test_randomised_wide_every_record_has_one_fate(randomised_wide):
    workdir, config = randomised_wide
    # 401 participant rows; 400 wide score rows (no therapists or sessions records)
    _ledger_matches_raw(workdir, config, {"patients": 401, "outcomes": 400})
    ledger = pd.read_parquet(workdir / config["paths"]["interim"] / "ledger.parquet")
    assert (ledger["fate"] == "value_set_missing").sum() == 2  # the two out-of-range scores


def test_randomised_wide_recovers_the_true_effects(randomised_wide):
    workdir, config = randomised_wide
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    for outcome in ("odi", "pain"):
        for population in ("all_available", "complete_case"):
            estimates = _estimates(workdir, config, outcome, population)
            _recovers_truth(estimates, truth["effects"][outcome]["m8"])


def test_randomised_wide_analysis_table_has_every_follow_up(randomised_wide):
    workdir, config = randomised_wide
    analysis = pd.read_parquet(workdir / config["paths"]["processed"] / "analysis.parquet")
    for label in ("m2", "m4", "m6", "m8"):
        assert f"odi__{label}" in analysis.columns
    assert analysis["odi_followup"].equals(analysis["odi__m8"])
    assert analysis["smoker"].isin([0, 1]).all()
    assert analysis["therapist_id"].isna().all()  # no therapists in a trial without sessions
    complete = analysis[[f"odi__{t}" for t in ("m2", "m4", "m6", "m8")]].notna().all(axis=1)
    assert (analysis["complete_odi"] == (complete & analysis["odi_baseline"].notna())).all()


# --------------------------------------------------------------------------------------------
# multisite_long: TSV, long, clustered by site, ANCOVA, eligibility by age and window


def test_multisite_long_report_and_flow(multisite_long):
    workdir, config = multisite_long
    html = (workdir / config["paths"]["reports"] / "report.html").read_text()
    assert "programme" in html and "P00001" not in html
    assert "adjusted for the baseline score (ANCOVA)" in html
    assert "Difference between groups in mean score at 12m adjusted for the baseline score" in html
    # Wording of the design: ANCOVA in a mixed model clustered by site, never "mean change".
    from report_fixtures import visible_text

    text = visible_text(html.split('<section id="design">', 1)[1])
    for phrase in ("mean change", "change score (mixed model)", "residual ICC"):
        assert phrase not in text, phrase
    assert "adjusted difference in follow-up score" in text
    assert "Clusters (site)" in text and "lagged outcome (ANCOVA, mixed model)" in text
    # The difference between sexes is that of the two within-level effects at 12 months.
    subgroups = pd.read_csv(workdir / config["paths"]["reports"] / "tables"
                            / "subgroup_estimates.csv")
    koos = subgroups[subgroups["outcome"] == "koos"].set_index("level")["estimate"]
    assert koos["heterogeneity"] == pytest.approx(koos["M"] - koos["F"], rel=1e-6)
    flow = _flow(workdir, config)
    reasons = flow.dropna(subset=["reason"]).set_index("reason")["n_excluded"].to_dict()
    # One patient each: below report.min_cell_count, so merged into one row and shown as <5
    # (cohort.disclosure); the eligible count below stays exact.
    assert reasons["referral outside study window; or age under 18"] == "<5"
    assert flow.set_index("description").loc["eligible patients", "n"] == 598
    # it is the only exclusion before the arms: the boxes before it (600) are suppressed
    boxes = flow[flow["n_excluded"].isna()].set_index("description")["n"]
    assert boxes["patient episodes in the extract"] == "suppressed"
    assert 600 not in set(flow["n"])


def test_multisite_long_every_record_has_one_fate(multisite_long):
    workdir, config = multisite_long
    raw = workdir / config["paths"]["raw"]
    n_visits = len(pd.read_csv(raw / "visits.tsv", sep="\t"))
    _ledger_matches_raw(workdir, config, {"patients": 600, "outcomes": n_visits})
    ledger = pd.read_parquet(workdir / config["paths"]["interim"] / "ledger.parquet")
    outcomes = ledger[ledger["table"] == "outcomes"]
    assert (outcomes["fate"] == "dropped").sum() == 1          # the repeated visit row
    assert (outcomes["fate"] == "value_set_missing").sum() == 1  # the unparsable score


def test_multisite_long_clusters_by_site_and_recovers_the_truth(multisite_long):
    workdir, config = multisite_long
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    estimates = _estimates(workdir, config, "koos", "complete_case")
    assert (estimates["n_clusters"] == 12).all()  # the outermost level is the site
    _recovers_truth(estimates, truth["effects"]["koos"]["12m"])
    model = json.loads((workdir / config["paths"]["reports"] / "estimates"
                        / "koos.complete_case.json").read_text())["model"]
    assert model["random_effects"]["levels"] == ["site", "patient"]


# --------------------------------------------------------------------------------------------
# randomised_mmrm: four follow-up visits, MMRM with unstructured covariance, Kenward-Roger df


@pytest.mark.slow
@pytest.mark.e2e
def test_randomised_mmrm_report_flow_and_ledger(randomised_mmrm):
    workdir, config = randomised_mmrm
    html = (workdir / config["paths"]["reports"] / "report.html").read_text()
    assert "graded activity" in html and "GA0001" not in html and "GA0360" not in html
    assert "MMRM, UN covariance over 4 time points" in html
    assert "Kenward-Roger df" in html
    flow = _flow(workdir, config).set_index("description")
    # the exact duplicate alone is under report.min_cell_count: the extract box that would
    # reveal it is suppressed (cohort.disclosure)
    assert flow.loc["patient episodes in the extract", "n"] == "suppressed"
    assert flow.loc["patient episodes after cleaning", "n"] == 360
    assert flow.loc["eligible patients", "n"] == 360                 # no eligibility rules
    assert flow.loc["allocated to graded activity", "n"] == 180
    _ledger_matches_raw(workdir, config, {"patients": 361, "outcomes": 360})
    ledger = pd.read_parquet(workdir / config["paths"]["interim"] / "ledger.parquet")
    assert (ledger["fate"] == "value_set_missing").sum() == 1       # the out-of-range score


@pytest.mark.slow
@pytest.mark.e2e
def test_randomised_mmrm_model_and_truth(randomised_mmrm):
    workdir, config = randomised_mmrm
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    for population in ("all_available", "complete_case"):
        estimates = _estimates(workdir, config, "rmdq", population)
        _recovers_truth(estimates, truth["effects"]["rmdq"]["w24"])
        effects = estimates[estimates["model"] == "effect"].set_index("term")
        for visit, true_value in truth["effects"]["rmdq"].items():
            row = effects.loc[f"arm:time [{visit}]"]
            assert abs(row["estimate"] - true_value) < 3 * row["std_error"], (visit, row)
        assert (estimates["model"] != "lmm").all()
        assert set(estimates.loc[estimates["model"] != "effect", "model"]) == {"mmrm"}
        model = json.loads((workdir / config["paths"]["reports"] / "estimates"
                            / f"rmdq.{population}.json").read_text())["model"]
        assert model["inference"] == "kenward_roger" and model["fit_path"] == "mmrm"
        assert model["random_effects"]["levels"] == []
        cov = model["covariance"]
        assert cov["sas_name"] == "UN" and cov["time_points"] == ["w4", "w8", "w12", "w24"]
        # The estimated covariance is near the generator's (360 participants: within 35 %).
        np.testing.assert_allclose(cov["matrix"], truth["covariance"], rtol=0.35)


@pytest.mark.parametrize("example", ["randomised_wide", "multisite_long", "randomised_mmrm",
                                     "three_arm"])
def test_example_reports_show_no_raw_identifier(example, request):
    """Each example's report names terms, populations and methods by their labels."""
    from report_fixtures import raw_identifiers, visible_text

    workdir, config = request.getfixturevalue(example)
    html = (workdir / config["paths"]["reports"] / "report.html").read_text()
    found = raw_identifiers(visible_text(html))
    assert not found, f"raw identifiers a reader would see: {found}"


@pytest.mark.parametrize("name", ["randomised_wide", "multisite_long", "adam_adqs",
                                  "randomised_mmrm", "three_arm"])
def test_check_data_passes_each_example_with_its_planted_problems_as_warnings(
        name, tmp_path, capsys):
    from trial_analysis.cli import main

    config = yaml.safe_load((EXAMPLES / name / "config.yaml").read_text())
    raw = tmp_path / "raw"
    _load_generator(name).main(["--out", str(raw)])
    capsys.readouterr()
    assert main(["-q", "check-data", str(EXAMPLES / name / "config.yaml"),
                 "--raw", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "nothing would stop the pipeline" in out
    assert "warning" in out  # the planted records cleaning will handle
    if name == "adam_adqs":
        truth = json.loads((raw / "example_truth.json").read_text())
        assert (f"(outcomes, {truth['selected_records']} of {truth['adqs_records']} BDS "
                "records selected)") in out
    assert config["input"]["tables"]["sessions"] is None


# --------------------------------------------------------------------------------------------
# adam_adqs: CDISC ADaM (ADSL + ADQS) as SAS transport files, selected by PARAMCD, flag, visit


@pytest.fixture(scope="module")
def adam_adqs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _example_run(tmp_path_factory, "adam_adqs")


def test_adam_adqs_report_flow_and_selection(adam_adqs):
    workdir, config = adam_adqs
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    html = (workdir / config["paths"]["reports"] / "report.html").read_text()
    assert "Drug A" in html and "Placebo" in html
    assert "XYZ-301-" not in html  # no subject identifiers
    flow = _flow(workdir, config).set_index("description")
    assert flow.loc["patient episodes in the extract", "n"] == truth["subjects"]
    # the minor, and the subjects outside the full analysis set (ADSL's FASFL, a row filter)
    assert flow.loc["eligible patients", "n"] == truth["subjects"] - 1 - truth["not_in_fas"]
    # the minor alone would be a count under report.min_cell_count: merged with the filter's
    fas = flow[flow["reason"].astype(str).str.contains("FASFL")]
    assert fas["n_excluded"].astype(int).tolist() == [1 + truth["not_in_fas"]]
    assert fas["reason"].str.contains("age under 18").all()
    # Only the selected BDS records are raw records: HAMA, Week 12, the screening visit, the
    # retest and the unscheduled visit (ANL01FL not Y) never reach the pipeline.
    _ledger_matches_raw(workdir, config, {"patients": truth["subjects"],
                                          "outcomes": truth["selected_records"]})
    ledger = pd.read_parquet(workdir / config["paths"]["interim"] / "clean_ledger.parquet")
    outcomes = ledger[ledger["table"] == "outcomes"]
    assert (outcomes["fate"] == "value_set_missing").sum() == truth["out_of_range"]
    (source,) = ledger.attrs["sources"]
    assert source["engine"] == "adam" and source["database"] == "adqs.xpt"
    assert source["rows"] == truth["selected_records"]
    assert source["rows_in_source"] == truth["adqs_records"]
    assert "PARAMCD in ('HAMD17', 'SDS')" in source["query"]
    # Declared variables without a config label take ADSL's SAS variable labels in Table 1.
    table1 = pd.read_csv(workdir / config["paths"]["reports"] / "tables" / "table1.csv")
    assert {"Duration of Current Episode (Months)", "Study Site Identifier"} <= set(
        table1["variable"])
    assert "durdis" not in set(table1["variable"])
    # The report's provenance records the selection and its row counts.
    provenance = html.split('id="provenance"')[1]
    assert f"{truth['selected_records']} of {truth['adqs_records']}" in provenance
    assert "ANL01FL = &#39;Y&#39;" in provenance


def test_adam_adqs_analysis_table_and_truth(adam_adqs):
    workdir, config = adam_adqs
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    analysis = pd.read_parquet(workdir / config["paths"]["processed"] / "analysis.parquet")
    for visit in ("Week 2", "Week 4", "Week 8"):
        assert f"hamd__{visit}" in analysis.columns and f"sds__{visit}" in analysis.columns
    assert analysis["hamd_baseline"].notna().all()  # the ABLFL record of every subject
    assert analysis["hamd_followup"].equals(analysis["hamd__Week 8"])
    assert set(analysis["arm"].unique()) == {"Drug A", "Placebo"}
    for outcome in ("hamd", "sds"):
        estimates = _estimates(workdir, config, outcome, "all_available")
        _recovers_truth(estimates, truth["effects"][outcome]["Week 8"])


# --------------------------------------------------------------------------------------------
# three_arm: three arms in one model, Dunnett contrasts of each dose against control


@pytest.mark.slow
@pytest.mark.e2e
def test_three_arm_report_flow_and_ledger(three_arm):
    workdir, config = three_arm
    html = (workdir / config["paths"]["reports"] / "report.html").read_text()
    assert "TA0001" not in html and "TA0270" not in html
    for text in ("low dose vs control", "high dose vs control", "Dunnett&#39;s single-step",
                 "2 comparisons", "Simultaneous 95% CI", "Not run with 3 arms"):
        assert text in html, text
    flow = _flow(workdir, config).set_index("description")
    # one exclusion only (under report.min_cell_count): the extract box is suppressed
    assert flow.loc["patient episodes in the extract", "n"] == "suppressed"
    assert flow.loc["eligible patients", "n"] == 270
    for arm in ("control", "low dose", "high dose"):
        assert flow.loc[f"allocated to {arm}", "n"] == 90       # blocks of 6, 1:1:1
    _ledger_matches_raw(workdir, config, {"patients": 271, "outcomes": 270})
    table1 = pd.read_csv(workdir / config["paths"]["reports"] / "tables" / "table1.csv")
    assert list(table1.columns[-3:]) == ["control", "low dose", "high dose"]
    analysis = pd.read_parquet(workdir / config["paths"]["processed"] / "analysis.parquet")
    codes = analysis.groupby("arm")["arm_code"].first().to_dict()
    assert codes == {"control": 0, "low dose": 1, "high dose": 2}


@pytest.mark.slow
@pytest.mark.e2e
def test_three_arm_contrasts_recover_the_truth_and_are_adjusted(three_arm):
    workdir, config = three_arm
    truth = json.loads((workdir / config["paths"]["raw"] / "example_truth.json").read_text())
    for population in ("all_available", "complete_case"):
        doc = json.loads((workdir / config["paths"]["reports"] / "estimates"
                          / f"disab.{population}.json").read_text())
        contrasts = pd.DataFrame(doc["contrasts"])
        assert set(contrasts["followup"]) == {"w6", "w12", "overall"}
        for arm, effects in truth["effects"].items():
            for visit, true_value in effects.items():
                row = contrasts[(contrasts["arm"] == arm) & (contrasts["followup"] == visit)]
                row = row.iloc[0]
                assert row["contrast"] == f"{arm} vs control"
                assert abs(row["estimate"] - true_value) < 3 * row["std_error"], row
                # Dunnett: adjusted p above the raw one, simultaneous CI wider
                assert row["p_value"] < row["p_adjusted"] < min(1.0, 2 * row["p_value"])
                assert row["ci_low_adjusted"] < row["ci_low"] < row["ci_high"] < \
                    row["ci_high_adjusted"]
        assert set(contrasts["multiplicity"]) == {"single_step"}
        assert set(contrasts["n_comparisons"]) == {2}
        estimates = _estimates(workdir, config, "disab", population)
        terms = set(estimates["term"])
        assert {"armlow dose", "armhigh dose", "arm:time [high dose vs control]"} <= terms
    primary = pd.read_csv(workdir / config["paths"]["reports"] / "tables"
                          / "primary_estimates.csv")
    assert len(primary) == 4 and set(primary["contrast"]) == {"low dose vs control",
                                                              "high dose vs control"}


@pytest.mark.slow
@pytest.mark.e2e
def test_three_arm_two_of_three_arms_by_a_row_filter(tmp_path):
    """eligibility.filters keeps two arms of three: the two-arm analysis, the third arm's
    records excluded with a ledger fate."""
    config = yaml.safe_load((EXAMPLES / "three_arm" / "config.yaml").read_text())
    config["allocation"] = {"intervention": "high dose", "control": "control",
                            "rule": "column", "column": "group"}
    config["eligibility"] = {"filters": [{"column": "group", "keep": ["control", "high dose"]}]}
    for key in ("contrasts", "multiplicity"):
        config["analysis"].pop(key)
    path = tmp_path / "two_of_three.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _load_generator("three_arm").main(["--out", str(tmp_path / config["paths"]["raw"])])
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(path), "--cores", "2", "--nolock",
         f"{config['paths']['reports']}/estimates/disab.complete_case.json"],
        capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        _fail_with_logs(tmp_path, result)
    ledger = pd.read_parquet(tmp_path / config["paths"]["interim"] / "ledger.parquet")
    patients = ledger[ledger["table"] == "patients"]
    assert (patients["fate"] == "excluded").sum() == 90           # the low-dose arm
    assert ledger.groupby(["table", "record_id"]).size().max() == 1
    estimates = _estimates(tmp_path, config, "disab", "complete_case")
    assert "armhigh dose" not in set(estimates["term"])
    _recovers_truth(estimates, json.loads(
        (tmp_path / config["paths"]["raw"] / "example_truth.json").read_text()
    )["effects"]["high dose"]["w12"])
