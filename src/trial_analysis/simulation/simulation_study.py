"""Simulation studies of the analysis model: replicates across scenarios, with Monte Carlo SEs.

A simulation study answers "does the pre-specified analysis recover the truth under this
design?": the default cohort is simulated many times
(:mod:`trial_analysis.simulation.simulate`, known true effects), each replicate is analysed
with the pipeline's own linear mixed model
(:func:`trial_analysis.models.outcome_models.fit_outcome_model`), and bias, empirical SE,
model SE, coverage of the confidence interval and power are summarised per scenario, each
with its Monte Carlo SE
(Morris, White & Crowther, Stat Med 2019;38:2074-2102).

The replicate path, and why
---------------------------
Each replicate calls :func:`~trial_analysis.simulation.simulate.simulate_extract` (~0.1 s at
4k patients) and derives the analysis table *in memory* with the real library rules:
:func:`~trial_analysis.cohort.eligibility.apply_eligibility` and
:func:`~trial_analysis.cohort.allocate.allocate_arms` (~0.2 s together). Only the cleaning step is
skipped, because it parses files (~1 s of CSV round trip and parsing per replicate): the
scenario turns off the *cleaning-level* junk of the simulator (duplicate rows, out-of-range
scores, sessions of unknown episodes, messy codes), so the raw tables are already clean and
only need the cleaned dtypes (dates parsed, ``record_id``) and an all-``kept`` ledger
(:func:`clean_in_memory`; a test checks it gives the same analysis table as the file path).
The *eligibility-level* junk (minors, non-CLBP referrals, out-of-window and repeat episodes,
ETMI codes by untrained therapists) stays, so the real eligibility and allocation rules still
do real work in every replicate. A lean generator re-implementing the latent outcome model
was not needed: the model fit dominates the time per replicate.

Scenarios and seeds
-------------------
``config/simulation_study.yaml`` lists scenarios (and/or a ``grid`` expanded to scenarios): per
scenario the number of eligible patients, the true effect, the therapist ICC of change, the
missing-data mechanism (MAR/MNAR), any other ``simulation.assumptions`` override, and the
number of replicates. Replicate *r* of scenario *s* gets the seed
``SeedSequence(study seed, spawn_key=(hash(s), r))`` (first 128 bits of its state), so seeds
are deterministic, distinct across scenarios and replicates, and independent of how the
replicates are split into chunks or of the order of the scenarios.

Failures
--------
A replicate whose analysis table cannot be built (e.g. an empty arm at a tiny N) or whose fit
raises is a row with ``status = failed`` and the error text; a fit that did not converge has
``status = not_converged``. Both are counted in ``n_failed`` and left out of the performance
measures (never silently dropped). The summary refuses to run if any expected replicate is
missing or duplicated.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from numpy.random import SeedSequence

from trial_analysis import io
from trial_analysis.cohort.allocate import allocate_arms
from trial_analysis.cohort.eligibility import apply_eligibility
from trial_analysis.errors import ConfigError, DataError
from trial_analysis.models.outcome_models import (
    EFFECT_MODEL,
    EFFECT_TERM,
    POPULATIONS,
    fit_outcome_model,
)
from trial_analysis.progress import track
from trial_analysis.simulation.simulate import SimulatedExtract, simulate_extract

log = logging.getLogger(__name__)

# Junk that only the cleaning step removes; turned off so that the raw tables are clean.
CLEANING_JUNK = (
    "duplicate_patient_rows", "duplicate_session_rows", "duplicate_outcome_rows",
    "out_of_range_scores", "sessions_unknown_patient", "messy_codes",
)
MECHANISMS = ("MAR", "MNAR")
SCENARIO_KEYS = {"name", "n_patients", "n_replicates", "effect", "therapist_icc_change",
                 "missingness", "assumptions"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REPLICATE_COLUMNS = [
    "scenario", "replicate", "seed", "outcome", "population", "true_effect", "realised_ate",
    "estimate", "std_error", "ci_low", "ci_high", "p_value", "df", "n_patients", "status",
    "error",
]
SUMMARY_COLUMNS = [
    "scenario", "outcome", "population", "n_patients", "therapist_icc_change", "missingness",
    "n_replicates", "n_ok", "n_failed", "true_value", "mean_realised_ate",
    "mean_estimate", "bias", "bias_mcse", "empirical_se", "empirical_se_mcse",
    "mean_model_se", "mean_model_se_mcse", "coverage", "coverage_mcse", "power", "power_mcse",
]
_STUDY_FILE = "simulation study file"


# ----------------------------------------------------------------------------- the study file


@dataclass(frozen=True)
class Scenario:
    """One data-generating scenario of a simulation study.

    Attributes
    ----------
    name : str
        Identifier (letters, digits, ``_ . -``), used in file names.
    n_patients : int
        Eligible patients per replicate.
    n_replicates : int
        Replicates to run.
    assumptions : dict
        Overrides deep-merged into the base config's ``simulation.assumptions``.
    """

    name: str
    n_patients: int
    n_replicates: int
    assumptions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulationStudy:
    """A simulation study: seed, analyses, chunking and scenarios (``simulation_study.yaml``)."""

    seed: int
    outcomes: tuple[str, ...]
    populations: tuple[str, ...]
    alpha: float
    chunk_size: int
    scenarios: tuple[Scenario, ...]

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name`` (ConfigError if there is none)."""
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise ConfigError(_STUDY_FILE, [f"no scenario named {name!r}; scenarios: "
                                        f"{', '.join(s.name for s in self.scenarios)}"])

    def chunks(self, name: str) -> list[tuple[int, int]]:
        """Replicate ranges ``[start, stop)`` of the chunks (jobs) of one scenario."""
        n = self.scenario(name).n_replicates
        return [(start, min(start + self.chunk_size, n)) for start in range(0, n, self.chunk_size)]


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _scenario_assumptions(spec: Mapping[str, Any], primary: str, where: str,
                          problems: list[str]) -> dict[str, Any]:
    """Translate a scenario's short keys into ``simulation.assumptions`` overrides."""
    assumptions: dict[str, Any] = dict(spec.get("assumptions") or {})
    effect = spec.get("effect")
    if effect is not None:
        # A number is the primary outcome's effect; a mapping gives effects by outcome.
        effects = effect if isinstance(effect, Mapping) else {primary: effect}
        for outcome, value in effects.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(f"{where}: effect of {outcome} must be a number, got {value!r}")
            else:
                assumptions[f"effect_{outcome}"] = float(value)
    icc = spec.get("therapist_icc_change")
    if icc is not None:
        if not isinstance(icc, (int, float)) or not 0 <= icc < 1:
            problems.append(f"{where}: therapist_icc_change must be in [0, 1), got {icc!r}")
        else:
            assumptions["therapist_icc_change"] = float(icc)
    mechanism = spec.get("missingness")
    if mechanism is not None:
        if mechanism not in MECHANISMS:
            problems.append(f"{where}: missingness must be MAR or MNAR, got {mechanism!r}")
        else:
            assumptions = _deep_merge(assumptions, {"missingness": {"mechanism": mechanism}})
    return assumptions


def _grid_scenarios(grid: Mapping[str, Any], where: str, problems: list[str]) -> list[dict]:
    """Expand ``grid`` (key -> list of values) into named scenario specs (cartesian product)."""
    short = {"effect": "effect", "n_patients": "n", "therapist_icc_change": "icc",
             "missingness": ""}
    axes = {k: v for k, v in grid.items() if k not in ("prefix", "n_replicates")}
    for key, values in axes.items():
        if key not in short:
            problems.append(f"{where}: unknown grid axis {key!r}; axes: {', '.join(short)}")
        elif not isinstance(values, list) or not values:
            problems.append(f"{where}: grid axis {key} must be a non-empty list")
    if problems:
        return []
    prefix = str(grid.get("prefix", "grid"))
    specs = []
    for combination in itertools.product(*axes.values()):
        spec = dict(zip(axes, combination, strict=True))
        parts = [f"{short[k]}{v:g}" if isinstance(v, (int, float)) else f"{short[k]}{v}"
                 for k, v in spec.items()]
        spec["name"] = "_".join([prefix, *parts])
        if "n_replicates" in grid:
            spec["n_replicates"] = grid["n_replicates"]
        specs.append(spec)
    return specs


def load_study(path: str | Path, config: Mapping[str, Any]) -> SimulationStudy:
    """Read and check a simulation-study file.

    Parameters
    ----------
    path : str or Path
        YAML with ``seed``, ``outcomes``, ``populations``, ``alpha``, ``chunk_size``,
        ``defaults`` (keys every scenario inherits), ``scenarios`` (a list) and/or ``grid``.
    config : mapping
        The validated base study configuration (outcome names, primary outcome, seed).

    Returns
    -------
    SimulationStudy

    Raises
    ------
    ConfigError
        Every problem found in the file, at once.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(str(path), [f"cannot read the simulation study file: {error}"]) from None
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(str(path), ["the file must hold a mapping"])
    known = {"seed", "outcomes", "populations", "alpha", "chunk_size", "defaults", "scenarios",
             "grid"}
    problems += [f"unknown key {k!r}" for k in raw if k not in known]
    outcome_names = [o["name"] for o in config["outcomes"]]
    primary = config["primary_outcome"]
    outcomes = tuple(raw.get("outcomes") or [primary])
    problems += [f"outcomes: {o!r} is not an outcome of the config" for o in outcomes
                 if o not in outcome_names]
    populations = tuple(raw.get("populations") or ["complete_case"])
    problems += [f"populations: {p!r} is not one of {', '.join(POPULATIONS)}"
                 for p in populations if p not in POPULATIONS]
    seed = raw.get("seed", config["seed"])
    alpha = raw.get("alpha", 0.05)
    chunk_size = raw.get("chunk_size", 50)
    if not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(alpha, float) or not 0 < alpha < 1:
        problems.append(f"alpha must be a number in (0, 1), got {alpha!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        problems.append(f"chunk_size must be a positive integer, got {chunk_size!r}")
    defaults = dict(raw.get("defaults") or {})
    specs: list[dict[str, Any]] = [dict(s) for s in raw.get("scenarios") or []]
    if raw.get("grid"):
        specs += _grid_scenarios(raw["grid"], "grid", problems)
    if not specs:
        problems.append("no scenarios: give `scenarios` (a list) and/or `grid`")
    default_n = config.get("simulation", {}).get("n_patients") or (
        config.get("simulation", {}).get("targets", {}).get("eligible_patients"))
    scenarios: list[Scenario] = []
    for index, own in enumerate(specs):
        spec = _deep_merge(defaults, own)
        where = f"scenario {spec.get('name', index + 1)!r}"
        problems += [f"{where}: unknown key {k!r}" for k in spec if k not in SCENARIO_KEYS]
        name = str(spec.get("name", ""))
        if not NAME_PATTERN.match(name):
            problems.append(f"{where}: name must be letters, digits, '_', '.', '-'")
        n_patients = spec.get("n_patients", default_n)
        n_replicates = spec.get("n_replicates")
        if not isinstance(n_patients, int) or n_patients < 50:
            problems.append(f"{where}: n_patients must be an integer of at least 50")
        if not isinstance(n_replicates, int) or n_replicates < 1:
            problems.append(f"{where}: n_replicates must be a positive integer")
        assumptions = _scenario_assumptions(spec, primary, where, problems)
        scenarios.append(Scenario(name, n_patients, n_replicates, assumptions))
    names = [s.name for s in scenarios]
    problems += [f"scenario name {n!r} is used more than once"
                 for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise ConfigError(str(path), problems)
    return SimulationStudy(int(seed), outcomes, populations, float(alpha), int(chunk_size),
                           tuple(scenarios))


# ----------------------------------------------------------------------------- one replicate


def replicate_seed(study_seed: int, scenario: str, replicate: int) -> int:
    """The simulation seed of one replicate: deterministic, distinct per (scenario, replicate).

    ``SeedSequence(study_seed, spawn_key=(scenario key, replicate))`` where the scenario key is
    the first 8 bytes of the SHA-256 of its name (stable across Python runs, unlike ``hash``);
    the seed is the first 128 bits of that sequence's state.
    """
    key = int.from_bytes(hashlib.sha256(scenario.encode("utf-8")).digest()[:8], "little")
    state = SeedSequence(int(study_seed), spawn_key=(key, int(replicate))).generate_state(4)
    return int.from_bytes(state.astype("<u4").tobytes(), "little")


def scenario_config(config: Mapping[str, Any], scenario: Scenario) -> dict[str, Any]:
    """The base config with the scenario's assumptions and the cleaning-level junk turned off."""
    if "simulation" not in config:
        raise ConfigError("simulate-study", ["the config has no `simulation` section"])
    out = copy.deepcopy(dict(config))
    assumptions = _deep_merge(out["simulation"]["assumptions"], scenario.assumptions)
    assumptions["junk"] = {**assumptions.get("junk", {}), **dict.fromkeys(CLEANING_JUNK, 0)}
    out["simulation"]["assumptions"] = assumptions
    return out


def _dates(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, format="%Y-%m-%d").astype("datetime64[us]")


def clean_in_memory(extract: SimulatedExtract) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Cleaned tables and an all-``kept`` cleaning ledger for an extract without cleaning junk.

    Gives what :func:`trial_analysis.ingest.clean.clean_tables` gives for such an extract (the
    contract's ``clean/{table}.parquet`` dtypes, ``record_id`` = 1-based raw row), without
    writing and parsing files.

    Raises
    ------
    ConfigError
        The extract has cleaning-level junk (use :func:`scenario_config`).
    """
    junk = {k: v for k, v in extract.truth.get("junk", {}).items() if k in CLEANING_JUNK and v}
    if junk:
        raise ConfigError("simulate-study", [
            f"the extract has cleaning-level junk ({junk}); only the file path can clean it"])
    t, p, s, o = (extract.therapists.copy(), extract.patients.copy(), extract.sessions.copy(),
                  extract.outcomes.copy())
    t["age"] = t["age"].astype("Int64")
    t["etmi_training_date"] = _dates(t["etmi_training_date"])
    for column in ("referral_date", "birth_date"):
        p[column] = _dates(p[column])
    p["symptom_duration_weeks"] = p["symptom_duration_weeks"].astype(float)
    for column in ("depression", "anxiety"):
        p[column] = p[column].astype("Int64")
    p["bmi"] = p["bmi"].astype(float)
    p["ses_score"] = p["ses_score"].astype("Float64").astype(float)
    s["session_date"] = _dates(s["session_date"])
    o["assessment_date"] = _dates(o["assessment_date"])
    o["score"] = o["score"].astype(float)
    tables = {"therapists": t, "patients": p, "sessions": s, "outcomes": o}
    ledgers = []
    for name, frame in tables.items():
        frame["record_id"] = np.arange(1, len(frame) + 1, dtype=np.int64)
        ledgers.append(pd.DataFrame({"table": name, "record_id": frame["record_id"],
                                     "fate": "kept", "reason": "", "step": "clean"}))
    ledger = pd.concat(ledgers, ignore_index=True)
    for column in ("table", "fate", "reason", "step"):
        ledger[column] = ledger[column].astype("str")
    return tables, ledger


def analysis_table_from_extract(extract: SimulatedExtract,
                                config: Mapping[str, Any]) -> pd.DataFrame:
    """The analysis table of a simulated extract, by the real eligibility and allocation rules.

    Parameters
    ----------
    extract : SimulatedExtract
        From :func:`~trial_analysis.simulation.simulate.simulate_extract` with a
        :func:`scenario_config`.
    config : mapping
        That configuration.

    Returns
    -------
    DataFrame
        ``analysis.parquet`` of the data contract (one row per eligible patient).
    """
    tables, ledger = clean_in_memory(extract)
    eligible = apply_eligibility(config, tables, ledger)
    return allocate_arms(config, eligible.cohort, tables).analysis


def run_replicate(config: Mapping[str, Any], study: SimulationStudy, scenario: Scenario,
                  replicate: int) -> pd.DataFrame:
    """Simulate and analyse one replicate; one row per outcome x population.

    Returns
    -------
    DataFrame
        :data:`REPLICATE_COLUMNS`. Failures are rows with ``status`` ``failed`` (error text in
        ``error``) or ``not_converged``, never missing rows.
    """
    seed = replicate_seed(study.seed, scenario.name, replicate)
    cfg = scenario_config(config, scenario)
    extract = simulate_extract(cfg, seed, scenario.n_patients)
    effects = extract.truth["effects"]
    base = {"scenario": scenario.name, "replicate": replicate, "seed": str(seed)}
    try:
        analysis: pd.DataFrame | None = analysis_table_from_extract(extract, cfg)
        table_error = ""
    except DataError as error:  # e.g. an arm without patients at a tiny N
        analysis, table_error = None, f"analysis table: {error}"
    rows = []
    for outcome, population in itertools.product(study.outcomes, study.populations):
        row: dict[str, Any] = {**base, "outcome": outcome, "population": population,
                               "true_effect": effects[outcome]["structural"],
                               "realised_ate": effects[outcome]["realised_ate"],
                               "status": "failed", "error": table_error}
        if analysis is not None:
            try:
                fit = fit_outcome_model(analysis, cfg, outcome, population).to_frame()
                effect = fit[(fit["term"] == EFFECT_TERM)
                             & (fit["model"] == EFFECT_MODEL)].iloc[0]
                row |= {k: effect[k] for k in ("estimate", "std_error", "ci_low", "ci_high",
                                               "p_value", "df", "n_patients")}
                row["status"] = "ok" if bool(effect["converged"]) else "not_converged"
                row["error"] = "" if row["status"] == "ok" else str(effect["warnings"])
            # Any failure of the analysis is a result of the study, to be counted, not a crash.
            except Exception as error:  # noqa: BLE001
                row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=REPLICATE_COLUMNS)


def parse_replicates(text: str | None, n_replicates: int) -> range:
    """``"a:b"`` (half-open, 0-based) -> ``range(a, b)``; ``None`` means every replicate."""
    if text is None:
        return range(n_replicates)
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]) <= n_replicates:
        raise ConfigError("simulate-study", [
            f"--replicates must be a:b with 0 <= a < b <= {n_replicates}, got {text!r}"])
    return range(int(match[1]), int(match[2]))


def run_chunk(config: Mapping[str, Any], study: SimulationStudy, scenario: str,
              replicates: Sequence[int]) -> pd.DataFrame:
    """Run replicates of one scenario in turn; rows ordered by replicate, outcome, population."""
    spec = study.scenario(scenario)
    frames = []
    for replicate in track(replicates, f"simulation study, scenario {scenario}, replicates",
                           total=len(replicates)):
        started = time.perf_counter()
        frames.append(run_replicate(config, study, spec, replicate))
        log.debug("%s replicate %d: %.2f s", scenario, replicate, time.perf_counter() - started)
    return pd.concat(frames, ignore_index=True)


def run_simulate_study(config: dict[str, Any], study: Path, scenario: str,
                       replicates: str | None, out: Path) -> pd.DataFrame:
    """Command-line entry: run one chunk of replicates of one scenario; write its CSV."""
    plan = load_study(study, config)
    chosen = parse_replicates(replicates, plan.scenario(scenario).n_replicates)
    results = run_chunk(config, plan, scenario, chosen)
    io.write_csv(results, out)
    failed = int((results["status"] != "ok").sum())
    log.info("%s replicates %d-%d: %d fits, %d failed", scenario, chosen.start, chosen.stop - 1,
             len(results), failed)
    return results


def chunk_replicates(study: SimulationStudy, scenario: str, chunk: int) -> str:
    """The ``--replicates`` text (``"a:b"``) of chunk ``chunk`` of ``scenario``."""
    start, stop = study.chunks(scenario)[chunk]
    return f"{start}:{stop}"


def scenario_signature(study: SimulationStudy, scenario: str) -> str:
    """Everything that determines a scenario's replicate rows, as canonical JSON.

    The workflow records it as a parameter of the chunk jobs, so that editing one scenario of
    the study file reruns that scenario's jobs only.
    """
    spec = study.scenario(scenario)
    return json.dumps({"seed": study.seed, "outcomes": list(study.outcomes),
                       "populations": list(study.populations), "n_patients": spec.n_patients,
                       "assumptions": spec.assumptions}, sort_keys=True)


# ----------------------------------------------------------------------------- aggregation


def performance(results: pd.DataFrame, alpha: float = 0.05) -> dict[str, float]:
    """Performance measures of one estimator from its replicate rows, with Monte Carlo SEs.

    Rows whose ``status`` is not ``ok`` count in ``n_failed`` and are otherwise ignored.
    Formulas (Morris, White & Crowther 2019, table 6), with n successful replicates, estimates
    theta_i, true value theta, model SEs s_i:

    - bias = mean(theta_i) - theta, MCSE = empSE / sqrt(n)
    - empSE = sd(theta_i) (n - 1 denominator), MCSE = empSE / sqrt(2 (n - 1))
    - mean model SE = mean(s_i), MCSE = sd(s_i) / sqrt(n)
    - coverage = share of CIs containing theta, MCSE = sqrt(c (1 - c) / n)
    - power = share with p < alpha, MCSE = sqrt(p (1 - p) / n)
    """
    ok = results[results["status"] == "ok"]
    n = len(ok)
    truth = results["true_effect"].unique()
    if truth.size != 1:
        raise DataError("simulation study results", "one true value per scenario and analysis",
                        column="true_effect", hint=f"found {truth.tolist()}")
    theta = float(truth[0])
    nan = float("nan")
    out = {"n_replicates": len(results), "n_ok": n, "n_failed": len(results) - n,
           "true_value": theta,
           "mean_realised_ate": float(results["realised_ate"].mean())}
    if n == 0:
        return out | dict.fromkeys(SUMMARY_COLUMNS[SUMMARY_COLUMNS.index("mean_estimate"):], nan)
    estimate = ok["estimate"].to_numpy(dtype=float)
    se = ok["std_error"].to_numpy(dtype=float)
    emp_se = float(estimate.std(ddof=1)) if n > 1 else nan
    covered = ((ok["ci_low"] <= theta) & (theta <= ok["ci_high"])).to_numpy()
    rejected = (ok["p_value"] < alpha).to_numpy()
    coverage, power = float(covered.mean()), float(rejected.mean())
    return out | {
        "mean_estimate": float(estimate.mean()),
        "bias": float(estimate.mean() - theta),
        "bias_mcse": emp_se / math.sqrt(n) if n > 1 else nan,
        "empirical_se": emp_se,
        "empirical_se_mcse": emp_se / math.sqrt(2 * (n - 1)) if n > 1 else nan,
        "mean_model_se": float(se.mean()),
        "mean_model_se_mcse": float(se.std(ddof=1)) / math.sqrt(n) if n > 1 else nan,
        "coverage": coverage,
        "coverage_mcse": math.sqrt(coverage * (1 - coverage) / n),
        "power": power,
        "power_mcse": math.sqrt(power * (1 - power) / n),
    }


def summarise(results: pd.DataFrame, study: SimulationStudy,
              base_config: Mapping[str, Any]) -> pd.DataFrame:
    """Performance per scenario x outcome x population (:data:`SUMMARY_COLUMNS`).

    Raises
    ------
    DataError
        A replicate expected by the study is missing, duplicated, or not in the study.
    """
    source = "simulation study chunks"
    rows = []
    for scenario in study.scenarios:
        cfg = scenario_config(base_config, scenario)
        assumptions = cfg["simulation"]["assumptions"]
        own = results[results["scenario"] == scenario.name]
        for outcome, population in itertools.product(study.outcomes, study.populations):
            part = own[(own["outcome"] == outcome) & (own["population"] == population)]
            found = part["replicate"].to_numpy(dtype=int)
            expected = np.arange(scenario.n_replicates)
            if found.size != expected.size or not np.array_equal(np.sort(found), expected):
                missing = np.setdiff1d(expected, found)[:10].tolist()
                extra = sorted(set(found.tolist()) - set(expected.tolist()))[:10]
                duplicated = sorted({int(r) for r in found if (found == r).sum() > 1})[:10]
                raise DataError(source, "every replicate of the study exactly once",
                                column="replicate",
                                hint=f"{scenario.name}, {outcome}, {population}: missing "
                                     f"{missing}, unexpected {extra}, duplicated {duplicated}")
            rows.append({
                "scenario": scenario.name, "outcome": outcome, "population": population,
                "n_patients": scenario.n_patients,
                "therapist_icc_change": float(assumptions["therapist_icc_change"]),
                "missingness": str(assumptions["missingness"]["mechanism"]),
                **performance(part.sort_values("replicate"), study.alpha),
            })
    known = {s.name for s in study.scenarios}
    stray = sorted(set(results["scenario"].astype(str)) - known)
    if stray:
        raise DataError(source, "only scenarios of the study", column="scenario",
                        hint=f"unknown scenarios {stray}")
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def read_chunks(paths: Sequence[str | Path],
                columns: Sequence[str] = tuple(REPLICATE_COLUMNS)) -> pd.DataFrame:
    """Concatenate chunk CSVs (in path order), checking that they have ``columns``."""
    frames = []
    for path in sorted(Path(p) for p in paths):
        try:
            frame = pd.read_csv(path, dtype={"seed": str, "error": str},
                                keep_default_na=False, na_values=[""])
        except (OSError, pd.errors.ParserError) as error:
            raise DataError(str(path), "a readable chunk CSV", hint=str(error)) from None
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(str(path), "the columns of a simulation study chunk",
                            column=", ".join(missing))
        frames.append(frame[list(columns)])
    if not frames:
        raise DataError("simulation study chunks", "at least one chunk file")
    return pd.concat(frames, ignore_index=True)


def run_simulate_study_summary(config: dict[str, Any], study: Path, chunks: list[Path],
                               out_csv: Path, out_json: Path) -> pd.DataFrame:
    """Command-line entry: aggregate chunk CSVs into the summary CSV and JSON."""
    plan = load_study(study, config)
    results = read_chunks(chunks)
    summary = summarise(results, plan, config)
    io.write_csv(summary, out_csv)
    io.write_json({
        "study": {"seed": plan.seed, "outcomes": list(plan.outcomes),
                  "populations": list(plan.populations), "alpha": plan.alpha,
                  "chunk_size": plan.chunk_size,
                  "scenarios": [{"name": s.name, "n_patients": s.n_patients,
                                 "n_replicates": s.n_replicates, "assumptions": s.assumptions}
                                for s in plan.scenarios]},
        "estimand": f"{EFFECT_TERM} coefficient of the primary linear mixed model",
        "true_value": "structural effect of the simulation (simulation.assumptions.effect_*)",
        "failures": "status failed or not_converged: counted in n_failed, excluded from measures",
        "monte_carlo_se": "Morris, White & Crowther, Stat Med 2019;38:2074-2102 (table 6)",
        "summary": summary.to_dict(orient="records"),
    }, out_json)
    log.info("summarised %d replicate rows into %d rows", len(results), len(summary))
    return summary


__all__: Sequence[str] = (
    "CLEANING_JUNK", "REPLICATE_COLUMNS", "SUMMARY_COLUMNS", "Scenario", "SimulationStudy",
    "analysis_table_from_extract", "chunk_replicates", "clean_in_memory", "load_study",
    "parse_replicates", "performance", "read_chunks", "replicate_seed", "run_chunk",
    "run_replicate", "run_simulate_study", "run_simulate_study_summary", "scenario_config",
    "scenario_signature", "summarise",
)
