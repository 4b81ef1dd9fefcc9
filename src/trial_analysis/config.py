"""Study configuration: load, fill defaults and validate against ``config/schema.yaml``.

The same validation serves the Snakefile and the command line, so the two can never disagree
about what a valid study is. :func:`load_config` reports every problem at once, in plain words,
rather than stopping at the first.

The Snakefile writes the configuration it validated as ``config.as_run.yaml``
(:func:`write_validated_config`) and beside it a stamp, ``config.as_run.yaml.validated``: a
digest of the file's text, the schema and this module. Every step reads that file; while the
stamp matches, :func:`load_config` takes it as validated instead of validating it again (about
a tenth of a second of each step's start). Any change to the text, the schema or the checks
breaks the stamp, and the file is validated in full. The stamp is a file of its own so that a
new schema or new checking code does not touch ``config.as_run.yaml``, which every rule takes
as input: only a change of the configuration itself reruns the pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trial_analysis.errors import ConfigError, closest_match

if TYPE_CHECKING:
    import jsonschema

SCHEMA_FILE = "schema.yaml"
# libyaml's parser when PyYAML has it: the same documents, parsed ten times faster (every step
# process reads the schema and the config).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def schema_path() -> Path:
    """Return the path of the configuration schema.

    The schema ships inside the package (``trial_analysis/data/schema.yaml``) so the CLI works
    when installed; ``config/schema.yaml`` in the repository is a symbolic link to it, which the
    Snakefile reads.
    """
    return Path(str(resources.files("trial_analysis") / "data" / SCHEMA_FILE))


def load_schema() -> dict[str, Any]:
    """Load the JSON schema of the study configuration."""
    return yaml.load(schema_path().read_text(encoding="utf-8"), Loader=_YAML_LOADER)


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


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """The schema error in plain words; a mistyped key or value gets its closest match."""
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    if (error.validator == "additionalProperties" and error.validator_value is False
            and isinstance(error.instance, dict)):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [k for k in error.instance
                 if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        lines = []
        for key in extra:
            match = closest_match(key, known)
            lines.append(f"{where}: unknown key '{key}'; " + (
                f"did you mean '{match}'?" if match else f"known keys: {', '.join(known)}"))
        if lines:
            return lines
    if error.validator == "enum" and isinstance(error.validator_value, list):
        options = [str(v) for v in error.validator_value]
        match = closest_match(error.instance, options) if isinstance(error.instance, str) else None
        return [f"{where}: {error.instance!r} is not one of {', '.join(options)}"
                + (f"; did you mean '{match}'?" if match else "")]
    if error.validator == "required":
        missing = re.fullmatch(r"'(.+)' is a required property", error.message)
        if missing:
            return [f"{where}: required key '{missing.group(1)}' is missing"]
    return [f"{where}: {error.message}"]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _not_among(key: str, value: str, known: list[str], what: str) -> str:
    match = closest_match(value, known)
    return (f"{key}: '{value}' is not {what} ({', '.join(known)})"
            + (f"; did you mean '{match}'?" if match else ""))


def _semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Checks a JSON schema cannot express: cross-references between keys.

    Written to run on a config that also breaks the schema (every value is type-checked
    before use), so that all problems are listed in one pass.
    """
    problems: list[str] = []
    listed_outcomes = config.get("outcomes")
    outcomes = [o for o in listed_outcomes if isinstance(o, Mapping)] if isinstance(
        listed_outcomes, list) else []
    names = [str(o["name"]) for o in outcomes if "name" in o]
    if len(set(names)) != len(names):
        problems.append(f"outcomes: names must be unique, got {names}")
    primary = config.get("primary_outcome")
    if isinstance(primary, str) and primary not in names:
        problems.append(_not_among("primary_outcome", primary, names, "one of the outcomes"))
    analysis = _mapping(config.get("analysis"))
    sensitivity = _mapping(config.get("sensitivity"))
    published = _mapping(config.get("published"))
    listed = [
        ("complete_case/outcomes", _strings(_mapping(config.get("complete_case")).get("outcomes"))),
        ("analysis/responders/outcomes",
         _strings(_mapping(analysis.get("responders")).get("outcomes"))),
        ("sensitivity/outcomes", _strings(sensitivity.get("outcomes"))),
        ("sensitivity/tipping_point/outcomes",
         _strings(_mapping(sensitivity.get("tipping_point")).get("outcomes"))),
    ]
    estimates = published.get("estimates")
    for i, estimate in enumerate(estimates if isinstance(estimates, list) else []):
        listed.append((f"published/estimates/{i}/outcome",
                       _strings([_mapping(estimate).get("outcome")])))
    for key, values in listed:
        problems += [_not_among(key, v, names, "one of the outcomes")
                     for v in values if v not in names]
    for name in _strings(list(_mapping(published.get("directions")))):
        if name not in [*names, "sessions"]:
            problems.append(_not_among("published/directions", name, [*names, "sessions"],
                                       "an outcome or sessions"))
    by_name = {str(o.get("name")): o for o in outcomes}
    for name in _strings(_mapping(analysis.get("responders")).get("outcomes")):
        if name in by_name and "mcid" not in by_name[name]:
            problems.append(f"analysis/responders/outcomes: '{name}' has no mcid in outcomes "
                            "(a responder improves by at least the MCID)")
    for outcome in outcomes:
        low, high = outcome.get("min", 0), outcome.get("max", 1)
        if isinstance(low, int | float) and isinstance(high, int | float) and low >= high:
            problems.append(f"outcomes/{outcome.get('name')}: min must be below max")
    timepoints = _mapping(config.get("timepoints"))
    labels = [timepoints[k] for k in ("baseline", "followup")
              if isinstance(timepoints.get(k), str)]
    labels += _strings(timepoints.get("followups"))
    if len(set(labels)) != len(labels):
        problems.append(f"timepoints: the time point labels must differ, got {labels}")
    elig = _mapping(config.get("eligibility"))
    dates = {}
    for key in ("window_start", "window_end"):
        if key in elig:
            try:
                dates[key] = dt.date.fromisoformat(str(elig[key]))
            except ValueError:
                problems.append(f"eligibility/{key}: '{elig[key]}' is not a date (YYYY-MM-DD)")
    if len(dates) == 2 and dates["window_start"] > dates["window_end"]:
        problems.append("eligibility: window_start is after window_end")
    # These checks read a schema-shaped config; a config of another shape has its schema
    # problems listed already, and these follow once the shape is right.
    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
        problems += _study_structure_problems(config)
    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
        problems += _plausibility_problems(config)
    alloc = _mapping(config.get("allocation"))
    if alloc.get("rule") == "column" and not alloc.get("column"):
        problems.append("allocation/column: required when allocation/rule is 'column'")
    problems += _allocation_problems(config)
    codes = _mapping(config.get("codes"))
    treatments = [t.strip().upper() for t in _strings(codes.get("treatments"))]
    if treatments:
        etmi = codes.get("etmi", "ETMI")
        rule = alloc.get("rule", "etmi_code_by_trained_therapist")
        if rule == "etmi_code_by_trained_therapist" and isinstance(etmi, str) and (
                etmi.strip().upper() not in treatments):
            problems.append(_not_among("codes/etmi", etmi, treatments, "one of codes/treatments"))
        for code in _strings(codes.get("fidelity_forbidden")):
            if code.strip().upper() not in treatments:
                problems.append(_not_among("codes/fidelity_forbidden", code, treatments,
                                           "one of codes/treatments"))
    populations = _strings(analysis.get("populations", ["complete_case", "all_available"]))
    if "evalue" in _strings(sensitivity.get("analyses")):
        for population in _strings(_mapping(sensitivity.get("evalue")).get("populations")):
            if population not in populations:
                problems.append(
                    f"sensitivity/evalue/populations: '{population}' is not in "
                    f"analysis/populations {populations}, so its primary estimates are never "
                    "fitted")
    problems += _source_problems(config)
    problems += _target_trial_problems(config)
    return problems


# With three or more arms these analyses, written for one intervention against one control,
# are not run: the config may not ask for them (see config/README.md, "Several arms").
TWO_ARM_ONLY = ("sensitivity analyses (sensitivity.analyses)", "responders",
                "subgroups", "the sessions model")


def _allocation_problems(config: Mapping[str, Any]) -> list[str]:
    """Two arms (intervention/control) or any number (arms/reference), and what k > 2 rules out."""
    alloc = _mapping(config.get("allocation"))
    problems: list[str] = []
    two = [k for k in ("intervention", "control") if k in alloc]
    several = [k for k in ("arms", "reference") if k in alloc]
    if two and several:
        return ["allocation: give either intervention and control (two arms) or arms and "
                f"reference (any number of arms), not both (got {', '.join(two + several)})"]
    if not two and not several:
        return ["allocation: give intervention and control (two arms) or arms and reference "
                "(any number of arms)"]
    if two and len(two) < 2:
        return ["allocation: intervention and control go together; give both"]
    if several and len(several) < 2:
        return ["allocation: arms and reference go together; give both"]
    if two and alloc.get("intervention") == alloc.get("control"):
        problems.append("allocation: intervention and control labels must differ")
    arms = _strings(alloc.get("arms"))
    if several and alloc.get("reference") not in arms:
        problems.append(_not_among("allocation/reference", str(alloc.get("reference")), arms,
                                   "one of allocation/arms"))
    if len(arms) > 2:
        problems += _multi_arm_problems(config, len(arms))
    return problems


def _multi_arm_problems(config: Mapping[str, Any], k: int) -> list[str]:
    """What a study with k > 2 arms cannot ask for (the two-arm-only analyses)."""
    alloc = _mapping(config.get("allocation"))
    analysis = _mapping(config.get("analysis"))
    problems = []
    if alloc.get("rule", "etmi_code_by_trained_therapist") != "column":
        problems.append(f"allocation/arms: {k} arms need allocation/rule: column (the arm "
                        "given in a patients column)")
    why = (f"is written for two arms and is not run with the {k} arms of allocation/arms "
           "(the outcome models compare every arm; see config/README.md, 'Several arms')")
    if _strings(_mapping(config.get("sensitivity")).get("analyses")):
        problems.append(f"sensitivity/analyses: each sensitivity analysis {why}; set it to []")
    if _strings(_mapping(analysis.get("responders")).get("outcomes")):
        problems.append(f"analysis/responders/outcomes: the responder analysis {why}; set it "
                        "to []")
    if _strings(analysis.get("subgroups")):
        problems.append(f"analysis/subgroups: the subgroup analysis {why}; set it to []")
    tables = _mapping(_mapping(config.get("input")).get("tables"))
    if tables.get("sessions") is not None:
        problems.append(f"input/tables/sessions: the sessions model {why}; set it to null")
    contrasts = analysis.get("contrasts", "reference")
    method = analysis.get("multiplicity", "single_step")
    if method == "dunnett" and contrasts != "reference":
        problems.append("analysis/multiplicity: dunnett is for contrasts against the reference "
                        "(analysis/contrasts: reference); for all pairs use tukey or single_step")
    if method == "tukey" and contrasts != "all_pairs":
        problems.append("analysis/multiplicity: tukey is for all pairs (analysis/contrasts: "
                        "all_pairs); against the reference use dunnett or single_step")
    return problems


def _target_trial_problems(config: Mapping[str, Any]) -> list[str]:
    """The target trial's eligibility rule needs the data it reads."""
    target = _mapping(config.get("target_trial"))
    rule = _mapping(target.get("eligibility")).get("therapist_trained_before_time_zero", True)
    if target.get("population") != "target_trial" or not rule:
        return []
    if study_design(config) == "randomised":
        return []
    tables = _mapping(_mapping(config.get("input")).get("tables"))
    if tables.get("therapists") is None or tables.get("sessions") is None:
        return ["target_trial/eligibility/therapist_trained_before_time_zero: needs the "
                "therapists and sessions tables (input/tables); set it to false or "
                "target_trial/population to reproduction"]
    return []


def compare_populations(config: Mapping[str, Any]) -> bool:
    """Whether the run also fits the estimators in both populations, the reproduction of the
    paper and the target trial's (``target_trial.compare_populations``).

    Only where the two differ: an observational design whose target trial applies its
    trained-therapist rule (``target_trial.eligibility.therapist_trained_before_time_zero``),
    with the therapists and sessions tables that rule reads. Kept here, free of pandas, for
    the Snakefile.
    """
    target = _mapping(config.get("target_trial"))
    rule = _mapping(target.get("eligibility")).get("therapist_trained_before_time_zero", True)
    tables = _mapping(_mapping(config.get("input")).get("tables"))
    return bool(target.get("compare_populations", True) and rule
                and study_design(config) == "observational"
                and tables.get("therapists") is not None and tables.get("sessions") is not None)


def analysed_population(config: Mapping[str, Any]) -> str:
    """``target_trial.population``: the population of the run's main analysis."""
    return str(_mapping(config.get("target_trial")).get("population", "reproduction"))


def _source_problems(config: Mapping[str, Any]) -> list[str]:
    """Each table is a file or a query; queries need input.database, whose keys fit its engine."""
    problems: list[str] = []
    input_cfg = _mapping(config.get("input"))
    database = _mapping(input_cfg.get("database"))
    engine = database.get("engine")
    for table, entry in _mapping(input_cfg.get("tables")).items():
        if not isinstance(entry, Mapping):
            continue
        if ("file" in entry) == ("query" in entry):
            problems.append(f"input/tables/{table}: give either file (under paths.raw) or "
                            "query (against input.database), not both or neither")
        if "query" in entry and not database:
            problems.append(f"input/tables/{table}: a query needs input/database (engine: "
                            "duckdb or postgresql)")
    if engine == "postgresql" and "path" in database:
        problems.append("input/database/path: only for engine duckdb (PostgreSQL connection "
                        "settings come from the environment: dsn_env or PG* variables)")
    if engine == "duckdb" and "dsn_env" in database:
        problems.append("input/database/dsn_env: only for engine postgresql")
    return problems


# Defaults that depend on study.design, filled before the schema's own defaults: a key given
# explicitly always wins. Paths are (section, key); the schema's description of study.design
# lists them, and so does config/README.md, generated from it.
DESIGN_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "observational": {},
    "randomised": {
        # A trial enrolled its participants: no rules of the default study's extract.
        ("eligibility", "min_age"): None,
        ("eligibility", "require_clbp_code"): False,
        ("eligibility", "first_episode_only"): False,
        ("analysis", "random_time_effects"): [],
        # Randomisation removes confounding; the missing-data analyses still apply.
        ("sensitivity", "analyses"): ["multiple_imputation", "tipping_point"],
        # No target-trial restriction in a trial: one population, nothing to compare.
        ("target_trial", "compare_populations"): False,
    },
}
# Sections that may be written empty (`eligibility:`) and then take every default.
_EMPTY_ALLOWED = ("eligibility", "target_trial")


def study_design(config: Mapping[str, Any]) -> str:
    """``study.design`` (observational unless set)."""
    study = config.get("study")
    design = study.get("design", "observational") if isinstance(study, Mapping) else None
    return design if design in DESIGN_DEFAULTS else "observational"


def _fill_design_defaults(config: dict[str, Any]) -> None:
    """Fill the defaults of ``study.design`` that the config does not set itself.

    A section left out stays out where leaving it out means something (no sensitivity
    section: no sensitivity analyses); the required sections are created.
    """
    for section in _EMPTY_ALLOWED:
        if section in config and config[section] is None:
            config[section] = {}
    sensitivity = config.get("sensitivity")
    if n_arms(config) > 2 and isinstance(sensitivity, dict):
        # The sensitivity analyses compare two arms: none by default with k > 2 (asking for
        # one explicitly is a config error, _multi_arm_problems).
        sensitivity.setdefault("analyses", [])
    for (section, key), value in DESIGN_DEFAULTS[study_design(config)].items():
        if section == "sensitivity" and section not in config:
            continue
        part = config.setdefault(section, {})
        if isinstance(part, dict) and key not in part:
            part[key] = copy.deepcopy(value)


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults into ``config`` and validate it, listing every problem in one error.

    Returns the same (mutated) dictionary for convenience.
    """
    import jsonschema  # only here: a stamped configuration (load_config) never needs it

    if not isinstance(config, dict):
        raise ConfigError(source, ["the file must hold a mapping of keys to values"])
    schema = load_schema()
    _fill_design_defaults(config)
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    described = [line for e in validator.iter_errors(config) for line in _describe(e)]
    problems = sorted(dict.fromkeys(described))
    problems += [p for p in _semantic_problems(config) if p not in problems]
    if problems:
        raise ConfigError(source, problems)
    return config


def _override_paths(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, Mapping):
            paths += _override_paths(value, f"{path}/")
    return paths


def command_line_source(error: ConfigError, overrides: Mapping[str, Any]) -> ConfigError:
    """``error`` naming the command line (``--config KEY=VALUE``) as the source of problems
    in those overrides: the config file is not at fault for a mistyped override."""
    if not overrides:
        return error
    shown = " ".join(f"{key}={value}" for key, value in overrides.items())
    where = f"the command line (--config {shown})"
    paths = _override_paths(overrides)

    def from_override(problem: str) -> bool:
        return any(problem.startswith(f"{path}:") or problem.startswith(f"{path}/")
                   or f"unknown key '{path}'" in problem for path in paths)

    if all(from_override(problem) for problem in error.problems):
        return ConfigError(where, error.problems)
    return ConfigError(f"{error.source} with {where}", error.problems)


def load_config(path: str | Path, *, trust_stamp: bool = True) -> dict[str, Any]:
    """Read a YAML study configuration, fill defaults and validate it.

    Parameters
    ----------
    path : path
        The YAML file.
    trust_stamp : bool, default True
        Take a file that :func:`write_validated_config` wrote, with its stamp still matching,
        as validated without validating it again.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or breaks the schema; every problem is listed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.load(text, Loader=_YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if trust_stamp and isinstance(config, dict) and _stamp_matches(path, text):
        return config
    return validate_config(config, source=str(path))


def stamp_path(path: str | Path) -> Path:
    """Where :func:`write_validated_config` records that ``path`` was validated."""
    path = Path(path)
    return path.with_name(path.name + ".validated")


def _stamp(text: str) -> str:
    """The digest that certifies ``text`` as validated by this module against the schema."""
    digest = hashlib.sha256()
    for part in (schema_path().read_bytes(), Path(__file__).read_bytes(), text.encode("utf-8")):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return f"trial-analysis validated configuration, sha256 {digest.hexdigest()}\n"


def _stamp_matches(path: Path, text: str) -> bool:
    try:
        return stamp_path(path).read_text(encoding="utf-8") == _stamp(text)
    except (OSError, UnicodeDecodeError):
        return False


def write_validated_config(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write a configuration that :func:`validate_config` has passed, and its stamp.

    Each file is written only when its content changes, so the configuration's modification
    time moves only when the configuration does (Snakemake reruns what depends on it). Pass
    only a configuration that has just been validated: the stamp certifies that it was.
    """
    path = Path(path)
    text = yaml.safe_dump(dict(config), sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, content in ((path, text), (stamp_path(path), _stamp(text))):
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            target.write_text(content, encoding="utf-8")
    return path


def outcome_names(config: Mapping[str, Any]) -> list[str]:
    """Names of the configured outcomes, in config order."""
    return [o["name"] for o in config["outcomes"]]


def outcome_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The configuration entry of outcome ``name``."""
    for outcome in config["outcomes"]:
        if outcome["name"] == name:
            return dict(outcome)
    raise KeyError(name)


def confidence_level(config: Mapping[str, Any]) -> float:
    """``analysis.confidence_level`` (default 0.95, as the schema's, for a partial config)."""
    return float(config.get("analysis", {}).get("confidence_level", 0.95))


def arm_levels(config: Mapping[str, Any]) -> list[str]:
    """Every arm label, the reference (control) first, then the others in config order.

    Position = the arm's code: ``arm_intervention`` with two arms (0 control, 1
    intervention), ``arm_code`` in the analysis table with more.
    """
    allocation = config.get("allocation", {})
    if isinstance(allocation, Mapping) and "arms" in allocation:
        arms = [str(a) for a in allocation["arms"]]
        reference = str(allocation.get("reference", arms[0]))
        return [reference, *(a for a in arms if a != reference)]
    intervention, control = (allocation.get("intervention", "intervention"),
                             allocation.get("control", "control"))
    return [control, intervention]


def n_arms(config: Mapping[str, Any]) -> int:
    """How many arms ``allocation`` names (2 for intervention/control)."""
    try:
        return len(arm_levels(config))
    except (AttributeError, TypeError):
        return 2


def multi_arm(config: Mapping[str, Any]) -> bool:
    """Three or more arms: one model with all of them, contrasts, multiplicity."""
    return n_arms(config) > 2


def arm_labels(config: Mapping[str, Any]) -> tuple[str, str]:
    """The (intervention, control) arm labels of ``allocation`` (their names if not given).

    With three or more arms: the other arms joined by commas, and the reference, for the
    wording that names "the intervention" (tables and figures by arm use :func:`arm_levels`).
    """
    levels = arm_levels(config)
    return ", ".join(levels[1:]), levels[0]


def arm_labels_by_code(config: Mapping[str, Any]) -> dict[int, str]:
    """The arm labels keyed by their code: ``arm_intervention`` (1, 0) with two arms,
    ``arm_code`` (0 the reference, 1, 2, ... the others) with more."""
    levels = arm_levels(config)
    if len(levels) == 2:
        return {1: levels[1], 0: levels[0]}
    return dict(enumerate(levels))


# ---------------------------------------------------------------------------------------------
# Study structure: time points, optional tables, patient variables, clustering

# Patient columns the pipeline knows without a declaration (the default study's extract).
BUILTIN_PATIENT_VARIABLES: dict[str, str] = {
    "age": "number", "sex": "category", "symptom_duration_weeks": "number",
    "depression": "flag", "anxiety": "flag", "bmi": "number", "ses_score": "number",
}
# Random-effect levels that come from the therapists and sessions tables.
THERAPIST_LEVELS: dict[str, str] = {"clinic": "clinic_id", "therapist": "therapist_id"}
# Analysis-table column of each named level; any other level is a column of its own name.
LEVEL_COLUMNS: dict[str, str] = {**THERAPIST_LEVELS, "patient": "patient_id"}


def level_column(level: str) -> str:
    """Analysis-table column identifying the units of a random-effect level."""
    return LEVEL_COLUMNS.get(level, level)


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


# Plausibility of the built-in numeric columns (the default study's extract): the valid range
# (inclusive), the missing-value codes and what a value outside the range becomes. An entry of
# plausibility.variables replaces the keys it gives. 999 weeks (19 years) is a possible symptom
# duration, so it is not a code there. ``therapist_age`` is the therapists table's ``age``.
_CODES = [-9999, -999, -99, -9, 999, 9999]
BUILTIN_PLAUSIBILITY: dict[str, dict[str, Any]] = {
    "age": {"range": [0, 120], "sentinels": _CODES, "action": "drop"},
    "symptom_duration_weeks": {"range": [0, 5200], "sentinels": [-9999, -999, -99, -9, 9999],
                               "action": "set_missing"},
    "bmi": {"range": [10, 80], "sentinels": _CODES, "action": "set_missing"},
    "ses_score": {"range": [1, 10], "sentinels": _CODES, "action": "set_missing"},
    "therapist_age": {"range": [18, 80], "sentinels": _CODES, "action": "set_missing"},
    "n_sessions": {"range": [0, 1000], "sentinels": [], "action": "set_missing"},
}
PLAUSIBILITY_ACTIONS: tuple[str, ...] = ("set_missing", "drop", "stop")
_NUMERIC_KINDS = ("number", "integer")


def plausibility_variables(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The plausibility rule of every numeric variable: ``range`` (low, high), ``sentinels``,
    ``action``.

    The built-in columns' rules (:data:`BUILTIN_PLAUSIBILITY`) with the keys that
    ``plausibility.variables`` gives replaced; declared ``number`` and ``integer`` patient
    variables take their rule from ``plausibility.variables`` (no missing-value codes and
    action ``set_missing`` unless given). An open end of a range (null) is infinite.
    """
    given = (config.get("plausibility") or {}).get("variables") or {}
    declared = config["input"]["tables"]["patients"].get("variables") or {}
    names = [*BUILTIN_PLAUSIBILITY,
             *(n for n, k in declared.items() if k in _NUMERIC_KINDS and n not in
               BUILTIN_PLAUSIBILITY)]
    rules = {}
    for name in names:
        rule = {"range": [None, None], "sentinels": [], "action": "set_missing",
                **BUILTIN_PLAUSIBILITY.get(name, {}), **(given.get(name) or {})}
        low, high = rule["range"]
        rules[name] = {
            "range": (float("-inf") if low is None else float(low),
                      float("inf") if high is None else float(high)),
            "sentinels": tuple(float(v) for v in rule["sentinels"]),
            "action": str(rule["action"]),
        }
    return rules


def _plausibility_problems(config: Mapping[str, Any]) -> list[str]:
    """Every numeric variable needs a range; plausibility entries must name one."""
    section = _mapping(config.get("plausibility"))
    given = _mapping(section.get("variables"))
    declared = _mapping(_mapping(config["input"]["tables"]["patients"]).get("variables"))
    numeric = [*BUILTIN_PLAUSIBILITY,
               *(n for n, k in declared.items() if k in _NUMERIC_KINDS)]
    problems = []
    for name, rule in given.items():
        if name not in numeric:
            problems.append(_not_among(
                "plausibility/variables", name, list(dict.fromkeys(numeric)),
                "a built-in numeric column or a number or integer variable declared in "
                "input/tables/patients/variables"))
            continue
        low, high = _mapping(rule).get("range", [None, None])
        if low is not None and high is not None and float(low) > float(high):
            problems.append(f"plausibility/variables/{name}/range: the low end {low} is above "
                            f"the high end {high}")
    for name, kind in declared.items():
        if kind in _NUMERIC_KINDS and name not in BUILTIN_PLAUSIBILITY and "range" not in (
                _mapping(given.get(name))):
            problems.append(
                f"input/tables/patients/variables/{name}: a {kind} variable needs its plausible "
                f"range: give plausibility/variables/{name}/range: [low, high] (null for an "
                "open end)")
    window = _mapping(_mapping(section.get("dates")).get("study_window"))
    bounds = {}
    for key in ("start", "end"):
        if window.get(key) is not None:
            try:
                bounds[key] = dt.date.fromisoformat(str(window[key]))
            except ValueError:
                problems.append(f"plausibility/dates/study_window/{key}: '{window[key]}' is "
                                "not a date (YYYY-MM-DD)")
    if len(bounds) == 2 and bounds["start"] > bounds["end"]:
        problems.append("plausibility/dates/study_window: start is after end")
    return problems


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
    one_row_per_patient = analysis.get("baseline") == "covariate" and len(followups) == 1
    problems += random_effects_problems(levels, list(analysis.get("random_time_effects", [])),
                                        one_row_per_patient,
                                        marginal=analysis.get("covariance") is not None)
    if analysis.get("ddf") == "kenward_roger" and analysis.get("reml") is False:
        problems.append("analysis/ddf: Kenward-Roger df need a REML fit (analysis/reml: true)")
    if analysis.get("time") == "continuous" and len(followups) < 2 and \
            analysis.get("baseline") == "covariate":
        problems.append("analysis/time: continuous time needs at least two follow-ups when the "
                        "baseline is a covariate")
    for key in ("covariates", "subgroups"):
        for name in analysis.get(key, []):
            if name not in variables and name not in ("n_sessions",):
                problems.append(_not_among(
                    f"analysis/{key}", name, list(variables),
                    "a built-in patient variable or one declared in "
                    "input/tables/patients/variables"))
    sensitivity = config.get("sensitivity") or {}
    analyses = sensitivity.get("analyses", [])
    if not therapist_tables:
        if "therapist_fixed_effects" in analyses:
            problems.append("sensitivity/analyses: therapist_fixed_effects needs the therapists "
                            "and sessions tables; remove it")
        propensity = sensitivity.get("propensity", {})
        if ({"propensity", "doubly_robust"} & set(analyses)) and (
                propensity.get("therapist_terms") or propensity.get("clinic_fixed_effects")):
            problems.append("sensitivity/propensity: therapist_terms and clinic_fixed_effects "
                            "need the therapists and sessions tables; set them to [] and false")
    alloc = config.get("allocation", {})
    if alloc.get("rule", "etmi_code_by_trained_therapist") != "column" and not therapist_tables:
        problems.append("allocation/rule: deriving the arm from ETMI codes needs the therapists "
                        "and sessions tables; give the arm as a column (rule: column)")
    return problems


def random_effects_problems(levels: list[str], time_levels: list[str],
                             one_row_per_patient: bool, marginal: bool = False) -> list[str]:
    """Problems with a random-effects structure, in plain words.

    Shared by the config check and ``models.model_spec`` (models are also fitted from
    configurations edited after validation: sensitivity analyses, tests), so both word a
    problem the same way. ``marginal``: an MMRM (``analysis.covariance`` set), whose
    within-patient dependence is the covariance matrix, so it takes no random effects.
    """
    if marginal:
        if levels or time_levels:
            return ["analysis/covariance: an MMRM is a marginal model without random effects "
                    "(the visits' covariance matrix models the within-patient dependence); set "
                    "analysis/random_effects: [] and analysis/random_time_effects: [], got "
                    f"{levels} and {time_levels}"]
        return []
    problems = []
    if len(set(levels)) != len(levels):
        problems.append(f"analysis/random_effects: list each level once, got {levels}")
    if "patient" in levels and levels[-1] != "patient":
        problems.append("analysis/random_effects: 'patient' is the innermost level and must "
                        f"come last (levels are listed outermost first), got {levels}")
    if {"clinic", "therapist"} <= set(levels) and levels.index("clinic") > \
            levels.index("therapist"):
        problems.append("analysis/random_effects: therapists are nested in clinics; list "
                        f"clinic before therapist (outermost first), got {levels}")
    for level in time_levels:
        if level not in levels:
            problems.append(f"analysis/random_time_effects: '{level}' must also be in "
                            f"analysis/random_effects {levels}")
        if level == "patient":
            problems.append("analysis/random_time_effects: a patient x time intercept is the "
                            "residual itself; remove 'patient'")
    if not levels and not one_row_per_patient:
        problems.append("analysis/random_effects: [] (no random effects) needs one row per "
                        "patient: a single follow-up and analysis/baseline: covariate; with "
                        "repeated scores per patient use [patient]")
    if "patient" in levels and one_row_per_patient:
        problems.append("analysis/random_effects: with one follow-up and the baseline as a "
                        "covariate each patient has one row, so a patient intercept cannot be "
                        "told from the residual; remove 'patient'")
    return problems
