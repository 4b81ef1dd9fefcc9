"""Repository hygiene that CI enforces: lint-clean code and Snakefile, no tracked data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_dry_run_shows_the_whole_plan() -> None:
    # --forceall: the whole plan whether or not this tree already holds outputs (the README
    # runs `make report` before `make test`; issue 19)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--snakefile",
         str(REPO / "Snakefile")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    for rule in ("clean", "eligibility", "allocate", "fit", "sessions",
                 "responders", "tables", "figures", "report"):
        assert rule in result.stdout


def test_an_invalid_study_config_stops_the_plan_listing_every_problem(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["analysis"]["reml"] = "maybe"           # the schema's check
    config["allocation"]["control"] = "ETMI"       # a cross-field check (labels must differ)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--configfile", str(study)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert f"{study}: 2 configuration problem(s)" in said
    assert "analysis/reml" in said
    assert "labels must differ" in said


# Plans the whole workflow (a dry run) and prints the rules whose params hold a plain value.
_PLAIN_PARAMS_PROBE = """
import atexit, sys
from snakemake.jobs import Job
jobs = []
original_init = Job.__init__
def init(job, *args, **kwargs):
    original_init(job, *args, **kwargs)
    jobs.append(job)
Job.__init__ = init
def report():
    plain = sorted({job.rule.name for job in jobs if job.non_derived_params})
    print("planned", len(jobs), "jobs; plain params in:", plain)
atexit.register(report)
from snakemake.cli import main
sys.argv = ["snakemake", "-n", "--forceall", "--snakefile", sys.argv[1]]
main()
"""


def test_no_rule_of_the_plan_has_a_plain_value_param() -> None:
    """Snakemake imports pandas (about 0.9 s, before any job starts) to compare a param that
    is a plain value with its last run's; params derived from input or output are exempt.
    Values such as folders belong in the command or in a function of input/output. (The
    simulation-study target keeps one on purpose: its scenario's signature reruns it.)"""
    result = subprocess.run(
        [sys.executable, "-c", _PLAIN_PARAMS_PROBE, str(REPO / "Snakefile")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    planned = re.search(r"planned (\d+) jobs; plain params in: (.*)", result.stdout)
    assert planned is not None, result.stdout[-2000:]
    assert int(planned.group(1)) >= 15 and planned.group(2) == "[]", planned.group(0)


def _planned_rules(*targets: str) -> set[str]:
    # --forceall: every job the targets need, whatever outputs the tree already holds
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--snakefile",
         str(REPO / "Snakefile"), *targets],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    # the "Job stats" table: a header, a rule, then one "rule count" row each up to a blank line
    table = result.stdout.split("Job stats:")[1].strip().split("\n\n")[0].splitlines()[2:]
    return {line.split()[0] for line in table}


def test_only_the_missing_data_analyses_wait_for_the_imputations() -> None:
    estimates = "reports/estimates"
    assert "impute" in _planned_rules(f"{estimates}/sensitivity.multiple_imputation.json")
    assert "impute" in _planned_rules(f"{estimates}/sensitivity.tipping_point.json")
    assert "impute" not in _planned_rules(f"{estimates}/sensitivity.propensity.json",
                                          f"{estimates}/sensitivity.evalue.json")


def test_no_data_or_reports_are_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "data", "reports"], capture_output=True, text=True, cwd=REPO
    ).stdout.split()
    assert all(path.endswith(".gitkeep") for path in tracked), tracked


def test_no_build_artefacts_are_tracked() -> None:
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True,
                             cwd=REPO).stdout.split()
    stray = [p for p in tracked
             if ".egg-info/" in p or "__pycache__/" in p or p.startswith(".venv/")]
    assert not stray, stray
