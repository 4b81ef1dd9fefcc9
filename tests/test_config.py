"""Configuration: one schema for the Snakefile and the CLI; defaults filled; problems listed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from trial_analysis.config import load_config, load_schema, schema_path, validate_config
from trial_analysis.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_repository_schema_is_the_packaged_schema() -> None:
    assert (REPO / "config" / "schema.yaml").resolve() == schema_path().resolve()


def test_default_config_is_valid_and_defaults_are_filled(default_config: dict) -> None:
    del default_config["analysis"]["reml"]
    config = validate_config(default_config)
    assert config["analysis"]["reml"] is True
    assert config["input"]["max_invalid_fraction"] == 0.05


def test_snakemake_validate_accepts_the_default(default_config: dict) -> None:
    from snakemake.utils import validate

    validate(copy.deepcopy(default_config), str(REPO / "config" / "schema.yaml"))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(primary_outcome="mobility"), "primary_outcome"),
        (lambda c: c["complete_case"].update(outcomes=["nope"]), "complete_case/outcomes"),
        (lambda c: c["eligibility"].update(window_start="2024-01-01"), "window_start is after"),
        (lambda c: c["allocation"].update(control="ETMI"), "labels must differ"),
        (lambda c: c["allocation"].update(rule="column", column=None), "allocation/column"),
        (lambda c: c["outcomes"][0].update(min=200), "min must be below max"),
        (lambda c: c.update(unexpected_key=1), "unexpected_key"),
    ],
)
def test_invalid_configs_name_the_problem(default_config: dict, mutate, expected: str) -> None:
    mutate(default_config)
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    assert expected in str(error.value)


def test_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_every_schema_property_is_described() -> None:
    """Every key a user can set says what it does (the docs are generated from these)."""
    schema = load_schema()
    missing: list[str] = []

    def walk(node: dict, where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "$ref" not in sub and "description" not in sub:
                missing.append(f"{where}/{key}")
            walk(sub, f"{where}/{key}")
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], f"{where}/{key}[]")

    walk(schema, "")
    assert not missing, missing


def test_config_reference_in_the_docs_matches_the_schema() -> None:
    """config/README.md's reference is generated from the schema: regenerate it on change
    with `trial-analysis config-docs --write config/README.md`."""
    from trial_analysis.config_docs import generated_section, render_config_reference

    assert generated_section(REPO / "config" / "README.md") == render_config_reference()
