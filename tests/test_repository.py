"""Repository hygiene that CI enforces: lint-clean code and Snakefile, no tracked data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    for rule in ("clean", "eligibility", "allocate", "fit", "sessions",
                 "responders", "tables", "figures", "report"):
        assert rule in result.stdout


def _planned_rules(*targets: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile",
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
