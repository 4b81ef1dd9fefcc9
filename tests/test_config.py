"""Configuration: one validation for the Snakefile and the CLI; defaults filled; problems listed."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from trial_analysis import config as config_module
from trial_analysis.config import (
    load_config,
    load_schema,
    schema_path,
    stamp_path,
    validate_config,
    write_validated_config,
)
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


def test_mistyped_keys_and_values_get_close_match_suggestions(default_config: dict) -> None:
    default_config["analysis"]["covariats"] = default_config["analysis"].pop("covariates")
    default_config["sensitivity"]["propensity"]["weighting"] = "overlapp"
    default_config["analysis"]["populations"] = ["complete_cases"]
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    problems = error.value.problems
    assert "analysis: unknown key 'covariats'; did you mean 'covariates'?" in problems
    assert ("sensitivity/propensity/weighting: 'overlapp' is not one of overlap, iptw; "
            "did you mean 'overlap'?") in problems
    assert any(p.startswith("analysis/populations/0: 'complete_cases'")
               and p.endswith("did you mean 'complete_case'?") for p in problems)


def test_schema_and_cross_field_problems_are_listed_together(default_config: dict) -> None:
    del default_config["study"]["name"]
    default_config["primary_outcome"] = "functon"
    default_config["codes"]["fidelity_forbidden"].append("MANUEL")
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    problems = error.value.problems
    assert "study: required key 'name' is missing" in problems
    assert any(p.startswith("primary_outcome: 'functon'") and "did you mean 'function'?" in p
               for p in problems)
    assert any(p.startswith("codes/fidelity_forbidden: 'MANUEL'")
               and "did you mean 'MANUAL'?" in p for p in problems)
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["sensitivity"].update(outcomes=["pian"]),
         "sensitivity/outcomes: 'pian' is not one of the outcomes"),
        (lambda c: c["sensitivity"]["tipping_point"].update(outcomes=["functoin"]),
         "did you mean 'function'?"),
        (lambda c: c["codes"].update(etmi="ETMII"), "codes/etmi: 'ETMII'"),
        (lambda c: c["timepoints"].update(followup="intake"), "time point labels must differ"),
        (lambda c: c["analysis"].update(random_effects=["patient"]),
         "analysis/random_time_effects: 'therapist' must also be in"),
        (lambda c: c["analysis"].update(populations=["complete_case"]),
         "sensitivity/evalue/populations: 'all_available' is not in analysis/populations"),
        (lambda c: c["outcomes"][1].pop("mcid"), "'pain' has no mcid"),
        (lambda c: c["analysis"].update(covariance="unstructured"),
         "analysis/covariance: an MMRM is a marginal model without random effects"),
        (lambda c: c["analysis"].update(ddf="kenward_roger", reml=False),
         "analysis/ddf: Kenward-Roger df need a REML fit"),
        (lambda c: c["published"]["directions"].update(fear_avoidence="favours_intervention"),
         "did you mean 'fear_avoidance'?"),
        (lambda c: c["published"].update(estimates=[
            {"outcome": "fuction", "population": "complete_case", "estimate": 1.0}]),
         "published/estimates/0/outcome: 'fuction'"),
    ],
)
def test_cross_field_problems(default_config: dict, mutate, expected: str) -> None:
    mutate(default_config)
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    assert expected in str(error.value)


def test_validate_config_command_prints_every_problem(default_config: dict, tmp_path: Path,
                                                      capsys) -> None:
    from trial_analysis.cli import main

    default_config["analysis"]["subgroup"] = default_config["analysis"].pop("subgroups")
    default_config["primary_outcome"] = "pain_"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(default_config), encoding="utf-8")
    assert main(["-q", "validate-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "2 configuration problem(s)" in err
    assert "unknown key 'subgroup'; did you mean 'subgroups'?" in err
    assert "did you mean 'pain'?" in err


@pytest.mark.parametrize(("key", "value"), [
    ("outcomes", 1), ("analysis", []), ("codes", "x"), ("timepoints", None),
    ("published", {"estimates": [1, None]}), ("allocation", [1, 2]),
])
def test_wrong_types_are_config_errors_not_crashes(default_config: dict, key: str,
                                                   value: object) -> None:
    """Cross-field checks run alongside the schema's, so they must survive any shape."""
    default_config[key] = value
    with pytest.raises(ConfigError):
        validate_config(default_config)


def _refuse_to_validate(*args, **kwargs):
    raise AssertionError("validate_config was called")


def test_a_stamped_config_is_taken_as_validated(default_config: dict, tmp_path: Path,
                                                monkeypatch) -> None:
    """The Snakefile's config.as_run.yaml: validated once, then read by every step as is."""
    validated = validate_config(copy.deepcopy(default_config))
    path = write_validated_config(validated, tmp_path / "config.as_run.yaml")
    assert stamp_path(path).is_file()
    monkeypatch.setattr(config_module, "validate_config", _refuse_to_validate)
    assert load_config(path) == validated


def test_an_edited_stamped_config_is_validated_again(default_config: dict,
                                                     tmp_path: Path) -> None:
    path = write_validated_config(validate_config(default_config),
                                  tmp_path / "config.as_run.yaml")
    text = path.read_text(encoding="utf-8")
    assert "reml: true" in text
    path.write_text(text.replace("reml: true", "reml: maybe"), encoding="utf-8")
    with pytest.raises(ConfigError, match="analysis/reml"):
        load_config(path)


def test_the_stamp_covers_the_schema_and_the_checks(default_config: dict, tmp_path: Path,
                                                    monkeypatch) -> None:
    """A stamp written under another schema (or other checking code) is not trusted."""
    path = write_validated_config(validate_config(default_config),
                                  tmp_path / "config.as_run.yaml")
    other_schema = tmp_path / "schema.yaml"
    other_schema.write_text(schema_path().read_text(encoding="utf-8") + "\n# changed\n",
                            encoding="utf-8")
    monkeypatch.setattr(config_module, "schema_path", lambda: other_schema)
    calls = []
    monkeypatch.setattr(config_module, "validate_config",
                        lambda config, source: calls.append(source) or config)
    load_config(path)
    assert calls == [str(path)]


def test_a_new_stamp_leaves_the_config_file_untouched(default_config: dict, tmp_path: Path,
                                                      monkeypatch) -> None:
    """Every rule takes config.as_run.yaml as input: new checking code or a new schema must
    not rewrite it (that would rerun the whole pipeline), only its stamp."""
    validated = validate_config(default_config)
    path = write_validated_config(validated, tmp_path / "config.as_run.yaml")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    other_schema = tmp_path / "schema.yaml"
    other_schema.write_text(schema_path().read_text(encoding="utf-8") + "\n# changed\n",
                            encoding="utf-8")
    monkeypatch.setattr(config_module, "schema_path", lambda: other_schema)
    stamp = stamp_path(path).read_text(encoding="utf-8")
    write_validated_config(validated, path)
    assert path.stat().st_mtime == 1_000_000_000
    assert stamp_path(path).read_text(encoding="utf-8") != stamp


def test_validate_config_command_checks_a_stamped_file_in_full(default_config: dict,
                                                               tmp_path: Path,
                                                               monkeypatch) -> None:
    from trial_analysis.cli import main

    path = write_validated_config(validate_config(default_config),
                                  tmp_path / "config.as_run.yaml")
    calls = []
    monkeypatch.setattr(config_module, "validate_config",
                        lambda config, source: calls.append(source) or config)
    assert main(["-q", "validate-config", str(path)]) == 0
    assert calls == [str(path)]


# ---------------------------------------------------------------------------------------------
# study.design sets the design's defaults; the target trial's checks


def _randomised(config: dict) -> dict:
    config["study"]["design"] = "randomised"
    for key in ("min_age", "require_clbp_code", "first_episode_only"):
        config["eligibility"].pop(key)
    config["analysis"].pop("random_time_effects")
    config["sensitivity"].pop("analyses")
    return config


def test_randomised_design_sets_a_trials_defaults(default_config: dict) -> None:
    config = validate_config(_randomised(default_config))
    assert config["eligibility"]["min_age"] is None
    assert config["eligibility"]["require_clbp_code"] is False
    assert config["eligibility"]["first_episode_only"] is False
    assert config["analysis"]["random_time_effects"] == []
    assert config["sensitivity"]["analyses"] == ["multiple_imputation", "tipping_point"]


def test_observational_design_keeps_the_schema_defaults(default_config: dict) -> None:
    config = _randomised(default_config)
    config["study"]["design"] = "observational"
    config = validate_config(config)
    assert config["eligibility"]["min_age"] == 18
    assert config["eligibility"]["first_episode_only"] is True
    assert config["analysis"]["random_time_effects"] == ["therapist"]
    assert "propensity" in config["sensitivity"]["analyses"]


def test_explicit_keys_win_over_the_designs_defaults(default_config: dict) -> None:
    config = _randomised(default_config)
    config["eligibility"]["min_age"] = 16
    config["sensitivity"]["analyses"] = ["evalue"]
    config = validate_config(config)
    assert config["eligibility"]["min_age"] == 16
    assert config["sensitivity"]["analyses"] == ["evalue"]
    assert config["eligibility"]["first_episode_only"] is False


def test_randomised_without_a_sensitivity_section_runs_none(default_config: dict) -> None:
    config = _randomised(default_config)
    del config["sensitivity"]
    assert "sensitivity" not in validate_config(config)


@pytest.mark.parametrize("design", ["observational", "randomised"])
def test_an_empty_eligibility_section_takes_the_designs_defaults(default_config: dict,
                                                                 design: str) -> None:
    default_config["study"]["design"] = design
    default_config["eligibility"] = None
    default_config["target_trial"] = None
    config = validate_config(default_config)
    assert config["eligibility"]["min_age"] == (18 if design == "observational" else None)
    assert config["target_trial"]["population"] == "reproduction"


def test_target_trial_population_needs_the_therapists_table(default_config: dict) -> None:
    default_config["target_trial"]["population"] = "target_trial"
    default_config["input"]["tables"]["therapists"] = None
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    assert any(p.startswith("target_trial/eligibility/therapist_trained_before_time_zero")
               for p in error.value.problems)
    default_config["target_trial"]["eligibility"]["therapist_trained_before_time_zero"] = False
    problems = []
    try:
        validate_config(default_config)
    except ConfigError as exc:
        problems = exc.problems
    assert not any(p.startswith("target_trial") for p in problems)


@pytest.mark.parametrize(("filters", "expected"), [
    ([{"column": "arm"}], "eligibility/filters/0"),
    ([{"column": "arm", "keep": ["A"], "drop": ["B"]}], "eligibility/filters/0"),
    ([{"column": "arm", "keep": []}], "eligibility/filters/0/keep"),
    ([{"column": "arm", "kep": ["A"]}], "did you mean 'keep'?"),
])
def test_malformed_row_filters_are_named(default_config: dict, filters, expected: str) -> None:
    default_config["eligibility"]["filters"] = filters
    with pytest.raises(ConfigError) as error:
        validate_config(default_config)
    assert expected in str(error.value)


# ---------------------------------------------------------------------------------------------
# Several arms: allocation.arms / reference, and what a study with k > 2 arms cannot ask for


def _three_arm_config() -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "examples"
                           / "three_arm" / "config.yaml").read_text())


def test_three_arm_example_is_valid_and_runs_no_sensitivity_analysis() -> None:
    config = _three_arm_config()
    config["sensitivity"] = {}
    config = validate_config(config)
    assert config["sensitivity"]["analyses"] == []      # not the randomised design's default
    assert config["analysis"]["contrasts"] == "reference"


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda c: c["allocation"].update(intervention="x", control="y"),
         "give either intervention and control (two arms) or arms and reference"),
        (lambda c: c["allocation"].pop("reference"), "arms and reference go together"),
        (lambda c: c["allocation"].update(reference="placebo"),
         "allocation/reference: 'placebo'"),
        (lambda c: c["allocation"].update(rule="etmi_code_by_trained_therapist"),
         "3 arms need allocation/rule: column"),
        (lambda c: c.update(sensitivity={"analyses": ["tipping_point"]}),
         "sensitivity/analyses: each sensitivity analysis is written for two arms"),
        (lambda c: c["analysis"].update(subgroups=["sex"]), "analysis/subgroups: the subgroup"),
        (lambda c: c["analysis"]["responders"].update(outcomes=["disab"]),
         "analysis/responders/outcomes: the responder analysis"),
        (lambda c: c["analysis"].update(contrasts="all_pairs"),
         "analysis/multiplicity: dunnett is for contrasts against the reference"),
        (lambda c: c["analysis"].update(multiplicity="tukey"),
         "analysis/multiplicity: tukey is for all pairs"),
    ],
)
def test_several_arm_problems_are_named(mutate, expected: str) -> None:
    config = _three_arm_config()
    mutate(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert expected in str(error.value)


def test_two_arms_given_as_arms_and_reference_are_the_two_arm_study(default_config: dict
                                                                      ) -> None:
    from trial_analysis.config import arm_labels, arm_levels, multi_arm

    alloc = default_config["allocation"]
    default_config["allocation"] = {k: v for k, v in alloc.items()
                                    if k not in ("intervention", "control")}
    default_config["allocation"].update(arms=[alloc["intervention"], alloc["control"]],
                                        reference=alloc["control"])
    config = validate_config(default_config)
    assert not multi_arm(config)
    assert arm_labels(config) == (alloc["intervention"], alloc["control"])
    assert arm_levels(config) == [alloc["control"], alloc["intervention"]]
