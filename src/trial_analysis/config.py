"""Study configuration: load, fill defaults and validate against ``config/schema.yaml``.

The same schema serves the Snakefile (``snakemake.utils.validate``) and the command line, so
the two can never disagree about what a valid study is. :func:`load_config` reports every
problem at once, in plain words, rather than stopping at the first.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from trial_analysis.errors import ConfigError

SCHEMA_FILE = "schema.yaml"


def schema_path() -> Path:
    """Return the path of the configuration schema.

    The schema ships inside the package (``trial_analysis/data/schema.yaml``) so the CLI works
    when installed; ``config/schema.yaml`` in the repository is a symbolic link to it, which the
    Snakefile reads.
    """
    return Path(str(resources.files("trial_analysis") / "data" / SCHEMA_FILE))


def load_schema() -> dict[str, Any]:
    """Load the JSON schema of the study configuration."""
    return yaml.safe_load(schema_path().read_text(encoding="utf-8"))


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Fill ``default`` values from ``schema`` into ``instance`` in place (objects only)."""
    if "$ref" in schema:
        ref = schema["$ref"]
        target: Any = root
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        _fill_defaults(instance, target, root)
        return
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in schema.get("properties", {}):
                    _fill_defaults(value, extra, root)
        # A value that may also be null (an optional table) takes the defaults of its
        # object alternative.
        for alternative in (*schema.get("oneOf", ()), *schema.get("anyOf", ())):
            if "$ref" in alternative or "properties" in alternative:
                _fill_defaults(instance, alternative, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"], root)


def _describe(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {error.message}"


def _semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Checks a JSON schema cannot express: cross-references between keys."""
    problems: list[str] = []
    names = [o["name"] for o in config.get("outcomes", [])]
    if len(set(names)) != len(names):
        problems.append(f"outcomes: names must be unique, got {names}")
    if config.get("primary_outcome") not in names:
        problems.append(
            f"primary_outcome: '{config.get('primary_outcome')}' is not one of the outcomes {names}"
        )
    for key, listed in (
        ("complete_case/outcomes", config.get("complete_case", {}).get("outcomes", [])),
        (
            "analysis/responders/outcomes",
            config.get("analysis", {}).get("responders", {}).get("outcomes", []),
        ),
    ):
        for name in listed:
            if name not in names:
                problems.append(f"{key}: '{name}' is not one of the outcomes {names}")
    for outcome in config.get("outcomes", []):
        if outcome.get("min", 0) >= outcome.get("max", 1):
            problems.append(f"outcomes/{outcome.get('name')}: min must be below max")
    elig = config.get("eligibility", {})
    dates = {}
    for key in ("window_start", "window_end"):
        if key in elig:
            try:
                dates[key] = dt.date.fromisoformat(str(elig[key]))
            except ValueError:
                problems.append(f"eligibility/{key}: '{elig[key]}' is not a date (YYYY-MM-DD)")
    if len(dates) == 2 and dates["window_start"] > dates["window_end"]:
        problems.append("eligibility: window_start is after window_end")
    problems += _study_structure_problems(config)
    alloc = config.get("allocation", {})
    if alloc.get("rule") == "column" and not alloc.get("column"):
        problems.append("allocation/column: required when allocation/rule is 'column'")
    if alloc.get("intervention") == alloc.get("control"):
        problems.append("allocation: intervention and control labels must differ")
    return problems


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults into ``config`` and validate it, listing every problem in one error.

    Returns the same (mutated) dictionary for convenience.
    """
    if not isinstance(config, dict):
        raise ConfigError(source, ["the file must hold a mapping of keys to values"])
    schema = load_schema()
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    problems = [_describe(e) for e in sorted(validator.iter_errors(config), key=str)]
    if not problems:
        problems = _semantic_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML study configuration, fill defaults and validate it.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or breaks the schema; every problem is listed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return validate_config(config, source=str(path))


def outcome_names(config: Mapping[str, Any]) -> list[str]:
    """Names of the configured outcomes, in config order."""
    return [o["name"] for o in config["outcomes"]]


def outcome_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The configuration entry of outcome ``name``."""
    for outcome in config["outcomes"]:
        if outcome["name"] == name:
            return dict(outcome)
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Study structure: time points, optional tables, patient variables, clustering

# Patient columns the pipeline knows without a declaration (the default study's extract).
BUILTIN_PATIENT_VARIABLES: dict[str, str] = {
    "age": "number", "sex": "category", "symptom_duration_weeks": "number",
    "depression": "flag", "anxiety": "flag", "bmi": "number", "ses_score": "number",
}
# Random-effect levels that come from the therapists and sessions tables.
THERAPIST_LEVELS: dict[str, str] = {"clinic": "clinic_id", "therapist": "therapist_id"}


def followup_labels(config: Mapping[str, Any]) -> list[str]:
    """Follow-up time point labels in time order (one for the default two-point design)."""
    timepoints = config["timepoints"]
    if timepoints.get("followups"):
        return [str(t) for t in timepoints["followups"]]
    return [str(timepoints["followup"])]


def primary_followup(config: Mapping[str, Any]) -> str:
    """The follow-up of the primary estimand: ``timepoints.primary``, else the last."""
    return str(config["timepoints"].get("primary") or followup_labels(config)[-1])


def all_timepoint_labels(config: Mapping[str, Any]) -> list[str]:
    """Baseline then every follow-up, in time order."""
    return [str(config["timepoints"]["baseline"]), *followup_labels(config)]


def time_values(config: Mapping[str, Any]) -> dict[str, float]:
    """Numeric time of each assessment (``timepoints.values``; default 0, 1, 2, ...)."""
    labels = all_timepoint_labels(config)
    given = config["timepoints"].get("values") or {}
    if given:
        return {label: float(given[label]) for label in labels}
    return {label: float(i) for i, label in enumerate(labels)}


def score_columns(config: Mapping[str, Any], outcome: str) -> dict[str, str]:
    """Analysis-table column of each follow-up score of ``outcome``, by time point label.

    One follow-up: ``{outcome}_followup``. Several: ``{outcome}__{label}`` each, and
    ``{outcome}_followup`` repeats the primary follow-up for the two-time-point analyses.
    """
    labels = followup_labels(config)
    if len(labels) == 1:
        return {labels[0]: f"{outcome}_followup"}
    return {label: f"{outcome}__{label}" for label in labels}


def has_table(config: Mapping[str, Any], table: str) -> bool:
    """Whether the study has raw table ``table`` (therapists and sessions may be null)."""
    return config["input"]["tables"].get(table) is not None


def patient_variables(config: Mapping[str, Any]) -> dict[str, str]:
    """Patient-level variables and their kinds: the built-ins, then declared ones."""
    declared = config["input"]["tables"]["patients"].get("variables") or {}
    return {**BUILTIN_PATIENT_VARIABLES, **declared}


def _study_structure_problems(config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    timepoints = config.get("timepoints", {})
    if not timepoints or not config.get("input", {}).get("tables"):
        return problems
    try:
        followups = followup_labels(config)
    except KeyError:
        return problems
    baseline = str(timepoints.get("baseline"))
    labels = [baseline, *followups]
    if baseline in followups:
        problems.append(f"timepoints: the baseline label '{baseline}' is also a follow-up")
    primary = timepoints.get("primary")
    if primary is not None and primary not in followups:
        problems.append(f"timepoints/primary: '{primary}' is not one of the follow-ups "
                        f"{followups}")
    values = timepoints.get("values") or {}
    if values:
        missing = [label for label in labels if label not in values]
        extra = [label for label in values if label not in labels]
        if missing:
            problems.append(f"timepoints/values: no value for {missing}")
        if extra:
            problems.append(f"timepoints/values: {extra} are not time point labels {labels}")
        if not missing:
            ordered = [float(values[label]) for label in labels]
            if any(b <= a for a, b in zip(ordered, ordered[1:], strict=False)):
                problems.append("timepoints/values: must increase from baseline through the "
                                "follow-ups in the order listed")
    analysis = config.get("analysis", {})
    levels = list(analysis.get("random_effects", []))
    variables = patient_variables(config)
    therapist_tables = has_table(config, "therapists") and has_table(config, "sessions")
    for level in levels:
        if level == "patient":
            continue
        if level in THERAPIST_LEVELS:
            if not therapist_tables:
                problems.append(f"analysis/random_effects: '{level}' needs the therapists and "
                                "sessions tables (input/tables)")
        elif level not in variables:
            problems.append(f"analysis/random_effects: '{level}' is neither clinic, therapist, "
                            "patient nor a variable declared in input/tables/patients/variables")
    if "patient" in levels and levels[-1] != "patient":
        problems.append("analysis/random_effects: 'patient' is the innermost level and must "
                        "come last")
    for level in analysis.get("random_time_effects", []):
        if level not in levels:
            problems.append(f"analysis/random_time_effects: '{level}' must also be in "
                            f"analysis/random_effects {levels}")
        if level == "patient":
            problems.append("analysis/random_time_effects: a patient x time intercept is the "
                            "residual itself; remove 'patient'")
    one_row_per_patient = analysis.get("baseline") == "covariate" and len(followups) == 1
    if not levels and not one_row_per_patient:
        problems.append("analysis/random_effects: [] (no random effects) needs one row per "
                        "patient: a single follow-up and analysis/baseline: covariate; with "
                        "repeated scores per patient use [patient]")
    if "patient" in levels and one_row_per_patient:
        problems.append("analysis/random_effects: with one follow-up and the baseline as a "
                        "covariate each patient has one row, so a patient intercept cannot be "
                        "told from the residual; remove 'patient'")
    if analysis.get("time") == "continuous" and len(followups) < 2 and \
            analysis.get("baseline") == "covariate":
        problems.append("analysis/time: continuous time needs at least two follow-ups when the "
                        "baseline is a covariate")
    for key in ("covariates", "subgroups"):
        for name in analysis.get(key, []):
            if name not in variables and name not in ("n_sessions",):
                problems.append(f"analysis/{key}: '{name}' is not a patient variable; declare "
                                "it in input/tables/patients/variables (known: "
                                f"{', '.join(variables)})")
    sensitivity = config.get("sensitivity") or {}
    analyses = sensitivity.get("analyses", [])
    if not therapist_tables:
        if "therapist_fixed_effects" in analyses:
            problems.append("sensitivity/analyses: therapist_fixed_effects needs the therapists "
                            "and sessions tables; remove it")
        propensity = sensitivity.get("propensity", {})
        if "propensity" in analyses and (propensity.get("therapist_terms")
                                         or propensity.get("clinic_fixed_effects")):
            problems.append("sensitivity/propensity: therapist_terms and clinic_fixed_effects "
                            "need the therapists and sessions tables; set them to [] and false")
    alloc = config.get("allocation", {})
    if alloc.get("rule", "etmi_code_by_trained_therapist") != "column" and not therapist_tables:
        problems.append("allocation/rule: deriving the arm from ETMI codes needs the therapists "
                        "and sessions tables; give the arm as a column (rule: column)")
    return problems
