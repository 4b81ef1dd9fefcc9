"""Shared fixtures: runs of the whole Snakefile in temporary folders.

``pipeline_run`` runs the full plan (simulate -> report) once per test session on a small
simulated cohort; tests of the report, the notebook and the end-to-end contract read its
outputs. ``default_cohort_run`` runs the published-size default study up to the analysis
table, which is where the published counts live.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL_COHORT = 800


# The covariates the model tests' small cohorts carry (no depression or anxiety columns).
MODEL_TEST_COVARIATES = ["age", "sex", "symptom_duration_weeks"]


def model_test_config() -> dict:
    """The default study's config with the covariates of the model tests' cohorts."""
    from trial_analysis.config import load_config

    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["analysis"]["covariates"] = list(MODEL_TEST_COVARIATES)
    return cfg


def run_snakemake(workdir: Path, *targets: str, cores: int = 2) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` (which holds config/config.yaml)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--cores", str(cores),
        "--nolock",
        *targets,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def write_study(workdir: Path, **simulation: object) -> Path:
    """Copy the default config into ``workdir``, overriding simulation keys."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["simulation"].update(simulation)
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fail_with_logs(workdir: Path, result: subprocess.CompletedProcess) -> None:
    logs = "\n".join(
        f"--- {log.relative_to(workdir)}\n{log.read_text()[-3000:]}"
        for log in sorted((workdir / "logs").rglob("*.log"))
    ) if (workdir / "logs").exists() else ""
    pytest.fail(
        f"snakemake failed ({result.returncode})\n{result.stderr[-6000:]}\n{logs}", pytrace=False
    )


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline, simulate to report, on a small cohort; returns its folder."""
    workdir = tmp_path_factory.mktemp("pipeline_run")
    write_study(workdir, n_patients=SMALL_COHORT)
    result = run_snakemake(workdir)
    if result.returncode != 0:
        _fail_with_logs(workdir, result)
    return workdir


@pytest.fixture(scope="session")
def default_cohort_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default study at its published size, up to the analysis table."""
    workdir = tmp_path_factory.mktemp("default_cohort")
    write_study(workdir)
    result = run_snakemake(workdir, "data/processed/analysis.parquet")
    if result.returncode != 0:
        _fail_with_logs(workdir, result)
    return workdir
