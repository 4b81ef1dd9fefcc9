"""Fixture builders for the report steps: a small study that follows docs/data-contracts.md.

``build_inputs(root)`` writes everything the ``tables``, ``figures`` and ``report`` steps read,
laid out like a pipeline run under ``root``: the config (as run), a raw extract with
``truth.json``, the analysis table, ``flow.csv`` and ``implementation.csv``, estimate files
fitted on the analysis table with statsmodels (so a reviewer's refit can agree with them) and
Snakemake benchmark files. ``build_outputs(root)`` also runs the three report steps.

Identifiers carry a hyphen (``PAT-00001``) so they cannot occur by chance inside base64
image data, which makes the "no identifier in the report" check meaningful.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
import yaml

from trial_analysis.config import load_config
from trial_analysis.io import to_jsonable, write_csv, write_json, write_parquet

REPO = Path(__file__).resolve().parents[1]
COVARIATE_TERMS = "age + C(sex) + symptom_duration_weeks"


@dataclass(frozen=True)
class FixtureRun:
    """Paths of a fixture pipeline run under ``root``."""

    root: Path
    config: dict[str, Any]
    config_path: Path
    raw: Path
    analysis: Path
    estimates: Path
    tables: Path
    figures: Path
    benchmarks: Path
    report: Path


def fixture_config(root: Path) -> dict[str, Any]:
    """The repository's default config with every path moved under ``root``."""
    config = copy.deepcopy(load_config(REPO / "config" / "config.yaml"))
    config["paths"] = {
        "raw": str(root / "data" / "raw"),
        "interim": str(root / "data" / "interim"),
        "processed": str(root / "data" / "processed"),
        "reports": str(root / "reports"),
    }
    # A reviewer-entered published estimate exercises the estimate rows of the check.
    config["published"]["estimates"] = [
        {"outcome": "function", "population": "complete_case", "estimate": 4.0,
         "ci_low": 2.0, "ci_high": 6.0},
    ]
    return config


def simulate_analysis(
    config: dict[str, Any], n_patients: int = 240, n_therapists: int = 16, seed: int = 7
) -> pd.DataFrame:
    """A small analysis table with the contract's columns and a known ETMI effect."""
    rng = np.random.default_rng(seed)
    intervention, control = config["allocation"]["intervention"], config["allocation"]["control"]
    therapists = [f"THR-{i:03d}" for i in range(1, n_therapists + 1)]
    clinic_of = {t: f"CLN-{1 + i % 4:02d}" for i, t in enumerate(therapists)}
    adopter = {t: i % 2 == 0 for i, t in enumerate(therapists)}
    therapist = rng.choice(therapists, n_patients)
    age = np.round(rng.normal(56, 16, n_patients).clip(18, 95), 1)
    p_etmi = np.where([adopter[t] for t in therapist], 1.1, 0.04) / (1 + np.exp((age - 56) / 30))
    arm_intervention = (rng.random(n_patients) < p_etmi).astype(int)
    depression = (rng.random(n_patients) < 0.18).astype(int)
    anxiety = (rng.random(n_patients) < 0.15).astype(int)
    # Exactly three anxious ETMI patients: a small cell Table 1 must suppress.
    etmi_rows = np.flatnonzero(arm_intervention == 1)
    anxiety[etmi_rows] = 0
    anxiety[etmi_rows[:3]] = 1
    bmi = np.round(rng.normal(27.5, 4.5, n_patients), 1)
    bmi[rng.random(n_patients) < 0.08] = np.nan
    frame = pd.DataFrame({
        "patient_id": [f"PAT-{i:05d}" for i in range(1, n_patients + 1)],
        "episode_id": [f"EPI-{i:06d}" for i in range(1, n_patients + 1)],
        "arm": np.where(arm_intervention == 1, intervention, control),
        "arm_intervention": arm_intervention,
        "arm_rule": np.where(arm_intervention == 1, "ETMI code by trained therapist",
                             "no ETMI code"),
        "therapist_id": therapist,
        "clinic_id": [clinic_of[t] for t in therapist],
        "age": age,
        "sex": rng.choice(["F", "M"], n_patients, p=[0.585, 0.415]),
        "symptom_duration_weeks": np.round(rng.gamma(2.0, 20.0, n_patients), 1),
        "depression": depression,
        "anxiety": anxiety,
        "bmi": bmi,
        "ses_score": np.round(rng.uniform(1, 10, n_patients), 1),
        "n_sessions": rng.negative_binomial(3, 3 / (3 + np.where(arm_intervention, 3.5, 5.1)))
        + 1,
    })
    frame["fidelity"] = np.where(arm_intervention == 1,
                                 (rng.random(n_patients) < 0.9).astype(float), np.nan)
    therapist_index = {t: i for i, t in enumerate(therapists)}
    t_effect = rng.normal(0, 1.0, n_therapists)
    observed_followup = rng.random(n_patients) < 0.6
    effects = {"function": 4.0, "pain": 0.0, "fear_avoidance": -6.0}
    spec = {o["name"]: o for o in config["outcomes"]}
    shapes = {"function": (51, 10, 11, 6), "pain": (6, 2, -2, 1.5),
              "fear_avoidance": (55, 20, -8, 8)}
    for name, (mean, sd, change, noise) in shapes.items():
        lo, hi = spec[name]["min"], spec[name]["max"]
        baseline = rng.normal(mean, sd, n_patients)
        th = t_effect[[therapist_index[t] for t in therapist]] * noise / 2
        followup = baseline + change + effects[name] * arm_intervention + th \
            + rng.normal(0, noise, n_patients)
        if name == "pain":
            baseline, followup = np.round(baseline), np.round(followup)
        else:
            baseline, followup = np.round(baseline, 1), np.round(followup, 1)
        # Stay inside the instrument's range by redrawing the whole patient, never clipping.
        inside = (baseline >= lo) & (baseline <= hi) & (followup >= lo) & (followup <= hi)
        baseline = np.where(inside, baseline, np.round(mean))
        followup = np.where(inside, followup, np.round(mean + change))
        followup = np.where(observed_followup | (rng.random(n_patients) < 0.05), followup, np.nan)
        frame[f"{name}_baseline"] = baseline
        frame[f"{name}_followup"] = followup
        frame[f"complete_{name}"] = (~np.isnan(followup)).astype(int)
    complete_by = config["complete_case"]["outcomes"]
    frame["complete_case"] = frame[[f"complete_{o}" for o in complete_by]].min(axis=1)
    return frame


def long_data(analysis: pd.DataFrame, outcome: str, population: str) -> pd.DataFrame:
    """Baseline and follow-up rows of one outcome for a population (missing rows dropped)."""
    frame = analysis
    if population == "complete_case":
        frame = frame[frame["complete_case"] == 1]
    parts = [
        frame.assign(time=t, score=frame[f"{outcome}_{label}"])
        for t, label in ((0, "baseline"), (1, "followup"))
    ]
    data = pd.concat(parts, ignore_index=True).dropna(subset=["score"])
    return data.drop(columns="arm").rename(columns={"arm_intervention": "arm"}).reset_index(
        drop=True)


def _row(outcome: str, population: str, model: str, term: str, estimate: float, se: float,
         df: float | None, p: float, n_patients: int, n_obs: int, n_clusters: int,
         notes: list[str]) -> dict[str, Any]:
    return {
        "outcome": outcome, "population": population, "model": model, "term": term,
        "estimate": float(estimate), "std_error": float(se),
        "ci_low": float(estimate - 1.959964 * se), "ci_high": float(estimate + 1.959964 * se),
        "p_value": float(p), "df": df, "n_patients": int(n_patients),
        "n_observations": int(n_obs), "n_clusters": int(n_clusters), "converged": True,
        "warnings": notes,
    }


def fit_primary(analysis: pd.DataFrame, outcome: str, population: str) -> dict[str, Any]:
    """The primary estimate document, from the pipeline's own model step.

    Using :func:`trial_analysis.models.outcome_models.fit_outcome_model` (not a hand-written
    refit) keeps the fixtures in step with the model the pipeline actually runs; the reviewer
    notebook then checks it against an independent statsmodels refit.
    """
    from trial_analysis.models.outcome_models import fit_outcome_model

    config = load_config(REPO / "config" / "config.yaml")
    return to_jsonable(fit_outcome_model(analysis, config, outcome, population).to_json_dict())


def fit_subgroup(analysis: pd.DataFrame, outcome: str, subgroup: str) -> dict[str, Any]:
    """Effect within each level (change-score regression) and the heterogeneity test."""
    data = analysis[analysis[f"complete_{outcome}"] == 1].copy()
    data["change"] = data[f"{outcome}_followup"] - data[f"{outcome}_baseline"]
    data = data.drop(columns="arm").rename(columns={"arm_intervention": "arm"})
    rows = []
    for level in (0, 1):
        part = data[data[subgroup] == level]
        fit = smf.ols(f"change ~ arm + {COVARIATE_TERMS}", part).fit(
            cov_type="cluster", cov_kwds={"groups": part["therapist_id"]})
        rows.append(_row(outcome, f"subgroup_{subgroup}", "change_ols_clustered",
                         f"arm:time | {subgroup}={level}", fit.params["arm"],
                         fit.bse["arm"], None, fit.pvalues["arm"], len(part), 2 * len(part),
                         part["therapist_id"].nunique(), []))
        rows[-1]["level"] = str(level)
    fit = smf.ols(f"change ~ arm * {subgroup} + {COVARIATE_TERMS}", data).fit(
        cov_type="cluster", cov_kwds={"groups": data["therapist_id"]})
    term = f"arm:{subgroup}"
    rows.append(_row(outcome, f"subgroup_{subgroup}", "change_ols_clustered", "heterogeneity",
                     fit.params[term], fit.bse[term], None, fit.pvalues[term], len(data),
                     2 * len(data), data["therapist_id"].nunique(), []))
    return {
        "outcome": outcome, "population": f"subgroup_{subgroup}",
        "model": {"formula": f"change ~ arm * {subgroup} + {COVARIATE_TERMS}",
                  "random_effects": "none (therapist-clustered SE)", "method": "OLS",
                  "fit_path": "statsmodels OLS", "converged": True, "warnings": [],
                  "variance_components": {}, "icc": {}},
        "estimates": rows, "marginal_means": [],
    }


def fit_sessions(analysis: pd.DataFrame) -> dict[str, Any]:
    """Ratio of mean sessions (negative binomial and Poisson), therapist-clustered."""
    data = analysis.drop(columns="arm").rename(columns={"arm_intervention": "arm"})
    rows = []
    for model_name, family in (("negative_binomial", sm.families.NegativeBinomial(alpha=0.3)),
                               ("poisson", sm.families.Poisson())):
        fit = smf.glm(f"n_sessions ~ arm + {COVARIATE_TERMS}", data, family=family).fit(
            cov_type="cluster", cov_kwds={"groups": data["therapist_id"]})
        b, se = fit.params["arm"], fit.bse["arm"]
        row = _row("sessions", "all_available", model_name, "ratio_of_means", np.exp(b), se,
                   None, fit.pvalues["arm"], len(data), len(data),
                   data["therapist_id"].nunique(), [])
        row["ci_low"], row["ci_high"] = float(np.exp(b - 1.959964 * se)), float(
            np.exp(b + 1.959964 * se))
        rows.append(row)
    return {"outcome": "sessions", "population": "all_available",
            "model": {"formula": f"n_sessions ~ arm + {COVARIATE_TERMS}",
                      "random_effects": "none (therapist-clustered SE)", "method": "ML",
                      "fit_path": "statsmodels GLM", "converged": True, "warnings": [],
                      "variance_components": {}, "icc": {}},
            "estimates": rows, "marginal_means": []}


def fit_responders(analysis: pd.DataFrame, config: dict[str, Any]) -> dict[str, Any]:
    """Share improving by at least the MCID per arm and the risk difference (Wald CI)."""
    rows = []
    for outcome in config["outcomes"]:
        name = outcome["name"]
        data = analysis[analysis[f"complete_{name}"] == 1]
        sign = 1 if outcome.get("higher_is_better", True) else -1
        responder = sign * (data[f"{name}_followup"] - data[f"{name}_baseline"]) >= outcome["mcid"]
        p1 = responder[data["arm_intervention"] == 1].mean()
        p0 = responder[data["arm_intervention"] == 0].mean()
        n1 = int((data["arm_intervention"] == 1).sum())
        n0 = int((data["arm_intervention"] == 0).sum())
        se = float(np.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0))
        z = (p1 - p0) / se
        p_value = float(2 * (1 - sm.stats.stattools.stats.norm.cdf(abs(z))))
        rows.append(_row(name, "complete_case", "responders", "risk_difference", p1 - p0, se,
                         None, p_value, len(data), len(data), data["therapist_id"].nunique(),
                         []))
    return {"outcome": "responders", "population": "complete_case",
            "model": {"formula": "responder ~ arm", "random_effects": "none",
                      "method": "Wald", "fit_path": "closed form", "converged": True,
                      "warnings": [], "variance_components": {}, "icc": {}},
            "estimates": rows, "marginal_means": []}


def write_raw(raw: Path, analysis: pd.DataFrame, config: dict[str, Any]) -> None:
    """A small raw extract (checksummed by the report) and truth.json."""
    therapists = analysis[["therapist_id", "clinic_id"]].drop_duplicates().sort_values(
        "therapist_id")
    therapists = therapists.assign(age=40, sex="F", etmi_training_date="2021-10-01")
    write_csv(therapists, raw / "therapists.csv")
    patients = analysis[["episode_id", "patient_id", "sex", "depression", "anxiety", "bmi",
                         "ses_score", "symptom_duration_weeks"]].assign(
        referral_date="2022-06-01", birth_date="1966-01-01", diagnosis_codes="M54.5")
    write_csv(patients, raw / "patients.csv")
    sessions = analysis[["episode_id", "therapist_id"]].assign(
        session_id=[f"SES-{i:06d}" for i in range(1, len(analysis) + 1)],
        session_date="2022-06-08", treatment_codes="EDU")
    write_csv(sessions, raw / "sessions.csv")
    outcomes = []
    for o in config["outcomes"]:
        for label, timepoint in (("baseline", "intake"), ("followup", "discharge")):
            part = analysis[["episode_id", f"{o['name']}_{label}"]].rename(
                columns={f"{o['name']}_{label}": "score"}).dropna()
            outcomes.append(part.assign(instrument=o["name"], timepoint=timepoint,
                                        assessment_date="2022-06-01"))
    outcomes_frame = pd.concat(outcomes, ignore_index=True)
    outcomes_frame.insert(0, "outcome_id", [f"OUT-{i:07d}" for i in range(len(outcomes_frame))])
    write_csv(outcomes_frame, raw / "outcomes.csv")
    effects = {"function": 4.0, "pain": 0.0, "fear_avoidance": -6.0}
    n = len(analysis)
    n_int = int(analysis["arm_intervention"].sum())
    complete = int(analysis["complete_case"].sum())
    complete_int = int(((analysis["complete_case"] == 1) & (analysis["arm_intervention"] == 1))
                       .sum())
    # The layout simulate writes (src/trial_analysis/simulation/simulate.py), abridged.
    write_json({
        "seed": config["seed"],
        "effects": {
            name: {"structural": value, "realised_ate": value,
                   "subgroups": {s: {"0": {"structural": value}, "1": {"structural": value}}
                                 for s in ("depression", "anxiety")}}
            for name, value in effects.items()
        },
        "sessions": {"mean_usual_care": 5.1, "mean_etmi": 3.5, "ratio_of_means": 3.5 / 5.1},
        "counts": {"clinics": int(analysis["clinic_id"].nunique()),
                   "therapists": int(analysis["therapist_id"].nunique()) + 2,
                   "eligible_patients": n, "etmi_patients": n_int,
                   "complete_cases": complete, "complete_cases_etmi": complete_int,
                   "complete_cases_usual_care": complete - complete_int},
    }, raw / "truth.json")


def write_flow_and_implementation(tables: Path, analysis: pd.DataFrame) -> None:
    """``flow.csv`` and ``implementation.csv`` as ``allocate`` writes them."""
    n = len(analysis)
    n_int = int(analysis["arm_intervention"].sum())
    complete = int(analysis["complete_case"].sum())
    n_ctrl = n - n_int
    complete_int = int(((analysis["complete_case"] == 1) & (analysis["arm_intervention"] == 1))
                       .sum())
    missing = "follow-up score missing (function)"
    # The layout eligibility + allocate write: boxes have no n_excluded; exclusion rows carry
    # the count left after them; the analysis step's boxes carry their own exclusions.
    rows = [
        ("extract", "patient episodes in the extract", n + 95, None, ""),
        ("clean", "dropped in cleaning", n + 80, 15, "exact duplicate of another record"),
        ("clean", "patient episodes after cleaning", n + 80, None, ""),
        ("records", "outcome records dropped", 4 * n, 6, "exact duplicate of another record"),
        ("records", "outcome values set missing", 4 * n, 3,
         "score outside the instrument's range"),
        ("eligibility", "excluded as ineligible", n + 30, 50, "referral outside study window"),
        ("eligibility", "excluded as ineligible", n, 30, "age under 18"),
        ("eligibility", "excluded as ineligible", n, 0, "no attended session"),
        ("eligibility", "eligible patients", n, None, ""),
        ("allocation", "ETMI group", n_int, None, ""),
        ("allocation", "usual care group", n_ctrl, None, ""),
        ("analysis", "all with a baseline analysed", n, 0, "baseline score missing (function)"),
        ("analysis", "all with a baseline analysed, ETMI", n_int, 0,
         "baseline score missing (function)"),
        ("analysis", "all with a baseline analysed, usual care", n_ctrl, 0,
         "baseline score missing (function)"),
        ("analysis", "complete cases analysed", complete, n - complete, missing),
        ("analysis", "complete cases analysed, ETMI", complete_int, n_int - complete_int,
         missing),
        ("analysis", "complete cases analysed, usual care", complete - complete_int,
         n_ctrl - (complete - complete_int), missing),
    ]
    flow = pd.DataFrame(rows, columns=["step", "description", "n", "n_excluded", "reason"])
    flow["n_excluded"] = flow["n_excluded"].astype("Int64")
    write_csv(flow, tables / "flow.csv")
    therapists = analysis["therapist_id"].nunique()
    adopters = analysis.loc[analysis["arm_intervention"] == 1, "therapist_id"].nunique()
    fidelity = analysis["fidelity"].dropna()
    rows = [
        ("reach", therapists, therapists + 2, "trained / invited therapists"),
        ("therapist_adoption", adopters, therapists,
         "trained therapists with at least one ETMI episode / trained"),
        ("patient_adoption", n_int, n, "ETMI episodes / eligible episodes"),
        ("fidelity", int(fidelity.sum()), len(fidelity),
         "ETMI episodes without a forbidden code / ETMI episodes"),
    ]
    implementation = pd.DataFrame(
        [{"measure": m, "numerator": a, "denominator": b, "percent": 100 * a / b,
          "definition": d} for m, a, b, d in rows])
    write_csv(implementation, tables / "implementation.csv")


def write_benchmarks(folder: Path) -> None:
    """Snakemake benchmark files (``s h:m:s max_rss ...``) for a few rules."""
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, seconds in (("clean", 2.41), ("allocate", 1.07), ("sensitivity.propensity",
                                                                  5.93)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rule}.tsv").write_text(
            header + f"{seconds}\t0:00:0{int(seconds)}\t150.2\t900.1\t140.0\t141.0\t0.1\t0.2"
                     f"\t95.0\t{seconds}\n", encoding="utf-8")


def build_inputs(root: Path, n_patients: int = 240, seed: int = 7) -> FixtureRun:
    """Write every input of the report steps under ``root`` and return their paths."""
    root = Path(root)
    config = fixture_config(root)
    run = FixtureRun(
        root=root, config=config, config_path=root / "config" / "config.yaml",
        raw=Path(config["paths"]["raw"]),
        analysis=Path(config["paths"]["processed"]) / "analysis.parquet",
        estimates=root / "reports" / "estimates", tables=root / "reports" / "tables",
        figures=root / "reports" / "figures", benchmarks=root / "logs" / "benchmarks",
        report=root / "reports" / "report.html",
    )
    run.config_path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=True)
    run.config_path.write_text(text, encoding="utf-8")
    interim = Path(config["paths"]["interim"])
    interim.mkdir(parents=True, exist_ok=True)
    (interim / "config.as_run.yaml").write_text(text, encoding="utf-8")
    analysis = simulate_analysis(config, n_patients=n_patients, seed=seed)
    write_parquet(analysis, run.analysis)
    write_raw(run.raw, analysis, config)
    write_flow_and_implementation(run.tables, analysis)
    docs: dict[str, dict[str, Any]] = {}
    for outcome in [o["name"] for o in config["outcomes"]]:
        for population in config["analysis"]["populations"]:
            docs[f"{outcome}.{population}"] = fit_primary(analysis, outcome, population)
        for subgroup in config["analysis"]["subgroups"]:
            docs[f"{outcome}.subgroup_{subgroup}"] = fit_subgroup(analysis, outcome, subgroup)
    docs["sessions"] = fit_sessions(analysis)
    docs["responders"] = fit_responders(analysis, config)
    for stem, doc in docs.items():
        write_json(doc, run.estimates / f"{stem}.json")
        write_csv(pd.DataFrame(doc["estimates"]).assign(
            warnings=lambda f: f["warnings"].map(json.dumps)), run.estimates / f"{stem}.csv")
    write_benchmarks(run.benchmarks)
    return run


def build_outputs(root: Path, n_patients: int = 240, seed: int = 7) -> FixtureRun:
    """Inputs plus the outputs of ``tables``, ``figures`` and ``report``."""
    from trial_analysis.reporting.figures import run_figures
    from trial_analysis.reporting.report import run_report
    from trial_analysis.reporting.tables import run_tables

    run = build_inputs(root, n_patients=n_patients, seed=seed)
    run_tables(config=run.config, analysis=run.analysis, estimates=run.estimates, out=run.tables)
    run_figures(config=run.config, analysis=run.analysis, estimates=run.estimates,
                tables=run.tables, out=run.figures)
    run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
               figures=run.figures, benchmarks=run.benchmarks, out=run.report,
               analysis=run.analysis)
    return run


_SHARED: dict[tuple[Path, str], FixtureRun] = {}


def shared_inputs(base: Path) -> FixtureRun:
    """One fixture run with tables (no figures/report), shared across test modules.

    Building fits a dozen models, so test modules share it rather than rebuilding; tests must
    treat it as read-only (write anything they produce elsewhere).
    """
    from trial_analysis.reporting.tables import run_tables

    key = (Path(base), "inputs")
    if key not in _SHARED:
        run = build_inputs(Path(base) / "report_fixture_run")
        run_tables(config=run.config, analysis=run.analysis, estimates=run.estimates,
                   out=run.tables)
        _SHARED[key] = run
    return _SHARED[key]


def shared_outputs(base: Path) -> FixtureRun:
    """The shared fixture run with figures and the report too (read-only, like above)."""
    from trial_analysis.reporting.figures import run_figures
    from trial_analysis.reporting.report import run_report

    key = (Path(base), "outputs")
    if key not in _SHARED:
        run = shared_inputs(base)
        run_figures(config=run.config, analysis=run.analysis, estimates=run.estimates,
                    tables=run.tables, out=run.figures)
        run_report(config=run.config, raw=run.raw, estimates=run.estimates, tables=run.tables,
                   figures=run.figures, benchmarks=run.benchmarks, out=run.report,
                   analysis=run.analysis)
        _SHARED[key] = run
    return _SHARED[key]


# Elements whose text is code a reader would type (formulas, config keys, the config as run).
CODE_ELEMENTS = {"code", "pre", "style", "script"}
# Tokens that are file names (each table and figure names its source file).
FILE_NAME = re.compile(r"\S+\.(?:csv|json|parquet|png|svg|yaml|tsv|log|html|docx|tex)\b")
SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
METHOD_KEY = re.compile(r"\b[a-z_]+:[a-z_]+\b")
DUMMY = re.compile(r"\b(?:sex|clinic|arm|region)[A-Z][A-Za-z0-9]*\b")


class _VisibleText(HTMLParser):
    """The text a reader sees: no tags, no attributes, no code elements."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in CODE_ELEMENTS:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in CODE_ELEMENTS:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return FILE_NAME.sub(" ", " ".join(parser.parts))


def raw_identifiers(text: str) -> list[str]:
    """Snake-case identifiers, ``model:se`` method keys and dummies like ``sexM`` in text."""
    found = SNAKE_CASE.findall(text) + METHOD_KEY.findall(text) + DUMMY.findall(text)
    return sorted(set(found))
