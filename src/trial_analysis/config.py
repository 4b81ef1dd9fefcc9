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
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
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
