"""The command line: every step has --help saying what it reads and writes; errors are short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trial_analysis.cli import STEPS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
REQUIRED_STEPS = [
    "simulate", "clean", "eligibility", "allocate", "fit", "sessions", "tables", "figures",
    "report", "validate-config",
]


def test_every_pipeline_step_is_a_subcommand() -> None:
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert set(REQUIRED_STEPS) <= set(subcommands)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_help_says_what_the_step_reads_and_writes(step: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([step, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Reads:" in text and "Writes:" in text


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_function_exists(step: str) -> None:
    import importlib

    module_name, function_name = STEPS[step].target
    assert callable(getattr(importlib.import_module(module_name), function_name))


def test_console_script_and_module_entry_point_agree() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trial_analysis", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("trial-analysis ")


@pytest.mark.parametrize("step", sorted(STEPS))
def test_step_receives_only_its_own_arguments(step: str) -> None:
    """Global options (--version, --quiet) never reach the step function as keywords."""
    import importlib
    import inspect

    module_name, function_name = STEPS[step].target
    accepted = set(inspect.signature(
        getattr(importlib.import_module(module_name), function_name)).parameters)
    argv = [step]
    for flags, options in STEPS[step].args:
        if options.get("required"):
            argv += [flags[0], options["choices"][0] if "choices" in options else "x"]
    # config_file (check-data's positional CONFIG) is folded into `config` by the dispatcher.
    passed = set(vars(build_parser().parse_args(argv))) - {"command", "target", "quiet",
                                                           "config_file"}
    assert passed <= accepted


def test_validate_config_accepts_the_default_study(capsys: pytest.CaptureFixture) -> None:
    assert main(["validate-config", str(REPO / "config" / "config.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_config_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["analysis"]["reml"] = "yes"
    config["report"]["min_cell_count"] = -1
    del config["timepoints"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 configuration problem(s)" in err
    assert "analysis/reml" in err and "report/min_cell_count" in err and "timepoints" in err
    assert "Traceback" not in err


def test_missing_config_is_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "--config", str(tmp_path / "nope.yaml"), "--analysis", "a.parquet",
                 "--outcome", "function", "--population", "complete_case",
                 "--out-json", "x.json", "--out-csv", "x.csv"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "file not found" in err
    assert not (tmp_path / "x.json").exists()


def test_check_data_takes_the_config_positionally_or_by_option(capsys) -> None:
    assert main(["check-data"]) == 2
    assert "give the study configuration: CONFIG or --config" in capsys.readouterr().err


def test_steps_run_one_blas_thread_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Snakemake runs steps side by side: each step's BLAS gets one thread (and the same last
    digits on any machine) unless the variable is already set."""
    from trial_analysis.cli import BLAS_THREAD_VARIABLES

    for variable in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    assert main(["validate-config", str(REPO / "config" / "config.yaml")]) == 0
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["MKL_NUM_THREADS"] == "4"


def test_errors_for_people_survive_crossing_processes() -> None:
    """Fit and imputation workers raise these; the parent must get them back whole."""
    import pickle

    from trial_analysis.errors import ConfigError, DataError

    data = DataError("a.csv", "scores must be numbers", column="score", rows=[3, 4],
                     hint="fix the file")
    config = ConfigError("study.yaml", ["one", "two"])
    for error in (data, config):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(data)).rows == [3, 4]
