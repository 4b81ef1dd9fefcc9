"""Tests for the run's provenance (trial_analysis.reporting.provenance) and its report panel."""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_fixtures import shared_outputs

from trial_analysis.config import write_validated_config
from trial_analysis.errors import DataError
from trial_analysis.reporting import provenance
from trial_analysis.reporting.provenance import (
    NOT_A_CHECKOUT,
    git_state,
    input_digests,
    package_versions,
    raw_files_read,
    runtime_facts,
    sha256_file,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def html(run):
    return run.report.read_text(encoding="utf-8")


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=repo, check=True, capture_output=True).stdout


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 500_000)  # more than one read block
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_installed_distribution_is_listed_once_sorted():
    versions = package_versions()
    names = [re.sub(r"[-_.]+", "-", n).lower() for n in versions["package"]]
    assert names == sorted(names) and len(names) == len(set(names))
    for package in ("pyarrow", "jsonschema", "pandas", "jinja2", "python-docx", "pyyaml"):
        assert package in names, package
    assert len(names) > 40
    assert package_versions(["pandas", "no-such-package-x"])["version"].tolist()[1] == \
        "not installed"


@needs_git
def test_git_state_flags_a_modified_tree_and_digests_the_diff(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    clean = git_state(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"])
    assert clean["modified"] is False and clean["diff_sha256"] == ""

    (repo / "a.py").write_text("x = 2\n")
    edited = git_state(repo)
    diff = _git(repo, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
    assert edited["modified"] is True and edited["changed_files"] == 1
    assert edited["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    assert edited["commit"] == clean["commit"]

    (repo / "a.py").write_text("x = 3\n")
    assert git_state(repo)["diff_sha256"] != edited["diff_sha256"]

    _git(repo, "checkout", "-q", "a.py")
    (repo / "new.txt").write_text("untracked\n")
    untracked = git_state(repo)
    assert untracked["modified"] is True and untracked["untracked_files"] == 1
    assert untracked["diff_sha256"] == ""


def test_git_state_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    state = git_state(tmp_path)
    assert state["commit"] == NOT_A_CHECKOUT and state["modified"] is None


def test_runtime_facts_name_python_os_and_command(monkeypatch):
    monkeypatch.setenv(provenance.INVOCATION_VARIABLE, "snakemake --cores 2")
    facts = runtime_facts(["/x/src/trial_analysis/__main__.py", "report", "--out", "a b.html"])
    assert facts["command"] == "python -m trial_analysis report --out 'a b.html'"
    assert facts["invocation"] == "snakemake --cores 2"
    assert re.search(r"\d+\.\d+\.\d+", facts["python"])
    assert facts["os"]


def test_only_the_raw_files_read_are_digested(run, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(run.raw, raw)
    (raw / "notes.txt").write_text("not an input\n")
    read = raw_files_read(run.config, raw)
    assert {p.name for _, p in read} == {"therapists.csv", "patients.csv", "sessions.csv",
                                         "outcomes.csv", "truth.json"}
    rows = input_digests(run.config, raw, run.analysis)
    assert [r["input"] for r in rows][-2:] == ["analysis table", "configuration as run"]
    assert rows[-2]["sha256"] == sha256_file(run.analysis)
    assert "notes.txt" not in str(rows)

    config = copy.deepcopy(run.config)
    config["input"]["tables"]["sessions"] = None
    assert "sessions.csv" not in {p.name for _, p in raw_files_read(config, raw)}
    (raw / "patients.csv").unlink()
    with pytest.raises(DataError, match="patients.csv"):
        input_digests(run.config, raw)


def test_duckdb_query_files_are_digested(run, tmp_path):
    config = copy.deepcopy(run.config)
    config["input"]["database"] = {"engine": "duckdb"}
    config["input"]["tables"]["patients"] = {
        "query": "SELECT * FROM read_csv('patients.csv') ORDER BY episode_id"}
    read = dict((p.name, role) for role, p in raw_files_read(config, run.raw))
    assert read["patients.csv"] == "patients table (DuckDB query)"
    config["input"]["database"] = {"engine": "postgresql"}
    assert ("patients table (postgresql query)", None) in raw_files_read(config, run.raw)


def test_config_digest_is_that_of_the_config_as_run_file(run, tmp_path):
    path = write_validated_config(run.config, tmp_path / "config.as_run.yaml")
    row = input_digests(run.config, run.raw)[-1]
    assert row["sha256"] == sha256_file(path)
    assert int(row["bytes"]) == path.stat().st_size


def test_provenance_panel_in_the_report(run, html):
    section = html[html.index('id="provenance"'):]
    for label in ("Git commit", "Working tree", "Python", "Operating system", "Report command"):
        assert f"<dt>{label}</dt>" in section, label
    assert sha256_file(run.analysis) in section
    assert "configuration as run" in section
    for package in ("pyarrow", "jsonschema", "python-docx"):
        assert f"<td><code>{package}</code></td>" in section, package
    assert re.search(r"Version of every installed Python distribution \(\d+\)", section)


def test_every_table_and_figure_names_its_source(html):
    captions = re.findall(r"<caption>(.*?)</caption>", html, re.DOTALL)
    figcaptions = re.findall(r"<figcaption>(.*?)</figcaption>", html, re.DOTALL)
    assert len(captions) >= 12 and len(figcaptions) >= 5
    for caption in captions + figcaptions:
        assert 'class="source">Source:' in caption, caption[:80]
    assert "primary_estimates.csv" in html and "forest.png, drawn from" in html
