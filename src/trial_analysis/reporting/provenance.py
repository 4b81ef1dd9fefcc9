"""Provenance of a run: what a reviewer needs to know that the report came from these inputs.

The report's provenance panel shows:

* the git commit of the working directory, whether the tree was modified (tracked changes or
  untracked files) and a SHA-256 digest of ``git diff HEAD``, so two runs on "the same commit"
  with different uncommitted edits can be told apart;
* Python, the operating system and the command lines that produced the report (the report
  step's own, and the Snakemake invocation when the Snakefile records it);
* the version of every installed distribution (``importlib.metadata``, sorted by name);
* SHA-256 digests of the raw files the run actually read (the files named in
  ``input.tables``, a DuckDB database file, files a DuckDB query names, ``truth.json`` for
  simulated data) and of the analysis table and the configuration as run.

These facts describe the run itself, so they are the part of the report that is not a
function of the inputs (with the date, see :mod:`trial_analysis.reporting.report`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from trial_analysis.errors import DataError

# The Snakefile puts its own command line here, so the jobs it starts can show it.
INVOCATION_VARIABLE = "TRIAL_ANALYSIS_INVOCATION"
NOT_A_CHECKOUT = "not a git checkout"


def sha256_bytes(data: bytes) -> str:
    """SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions(names: Sequence[str] | None = None) -> pd.DataFrame:
    """Versions of installed distributions: all of them (sorted by name), or ``names``.

    A distribution installed twice on ``sys.path`` (an editable install beside a regular one)
    is listed once, as :mod:`importlib.metadata` resolves it.
    """
    if names is not None:
        rows = []
        for name in names:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "not installed"
            rows.append({"package": name, "version": version})
        return pd.DataFrame(rows, columns=["package", "version"])
    found: dict[str, dict[str, str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        # the first one found on sys.path is the one that imports
        found.setdefault(_canonical(name), {"package": name, "version": dist.version})
    rows = [found[key] for key in sorted(found)]
    return pd.DataFrame(rows, columns=["package", "version"])


def _git(args: list[str], where: Path) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, timeout=30,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(where: str | Path | None = None) -> str:
    """The git commit of the working directory, or ``"not a git checkout"``."""
    result = _git(["rev-parse", "HEAD"], Path(where or Path.cwd()))
    commit = result.stdout.decode().strip() if result is not None else ""
    return commit if result is not None and result.returncode == 0 and commit else NOT_A_CHECKOUT


def git_state(where: str | Path | None = None) -> dict[str, Any]:
    """Commit, whether the tree differs from it, and a digest of ``git diff HEAD``.

    ``modified`` is true when a tracked file differs from the commit or an untracked file
    that git does not ignore exists (outputs under ``data/`` and ``reports/`` are ignored).
    The digest covers tracked changes only (binary-safe); untracked files are counted.
    """
    where = Path(where or Path.cwd())
    commit = git_commit(where)
    state: dict[str, Any] = {"commit": commit, "modified": None, "diff_sha256": "",
                             "changed_files": 0, "untracked_files": 0}
    if commit == NOT_A_CHECKOUT:
        return state
    diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], where)
    status = _git(["status", "--porcelain", "--untracked-files=all"], where)
    if diff is None or status is None or diff.returncode or status.returncode:
        return state
    lines = [line for line in status.stdout.decode(errors="replace").splitlines() if line]
    untracked = sum(1 for line in lines if line.startswith("??"))
    state.update(
        modified=bool(diff.stdout) or untracked > 0,
        diff_sha256=sha256_bytes(diff.stdout) if diff.stdout else "",
        changed_files=len(lines) - untracked, untracked_files=untracked,
    )
    return state


def _command_line(argv: Sequence[str]) -> str:
    """``argv`` as a shell line; ``python -m trial_analysis`` instead of the module's path."""
    args = list(argv)
    if args and Path(args[0]).name == "__main__.py":
        args[0:1] = ["python", "-m", "trial_analysis"]
    return shlex.join(args)


def runtime_facts(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Python, operating system and the command lines of this run."""
    try:
        release = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        release = ""
    system = platform.platform()
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{release} ({system})" if release else system,
        "command": _command_line(sys.argv if argv is None else argv),
        "invocation": os.environ.get(INVOCATION_VARIABLE, ""),
    }


def config_as_run_text(config: Mapping[str, Any]) -> str:
    """The configuration as run, serialised as ``config.as_run.yaml`` is written.

    :func:`trial_analysis.config.write_validated_config` writes exactly this text, so its
    digest is the digest of that file.
    """
    return yaml.safe_dump(dict(config), sort_keys=True)


def _query_files(query: str, raw: Path) -> list[Path]:
    """Files under ``raw`` that a DuckDB query names in quotes (``read_parquet('x.parquet')``)."""
    names = re.findall(r"'([^']+)'", query)
    return [raw / name for name in dict.fromkeys(names) if (raw / name).is_file()]


def raw_files_read(config: Mapping[str, Any], raw: str | Path) -> list[tuple[str, Path | None]]:
    """(what it is, path) of every raw input the run read; path None for a server query.

    Only files the pipeline reads: the file of each table in ``input.tables``, the DuckDB
    database file or the files an in-memory DuckDB query names, and ``truth.json`` when the
    data are simulated. Other files in the raw folder are not inputs and are not listed.
    """
    raw = Path(raw)
    database = config["input"].get("database") or {}
    read: list[tuple[str, Path | None]] = []
    seen: set[Path] = set()

    def add(role: str, path: Path | None) -> None:
        if path is None or path not in seen:
            read.append((role, path))
            if path is not None:
                seen.add(path)

    for table, entry in config["input"]["tables"].items():
        if entry is None:
            continue
        if "file" in entry:
            add(f"{table} table", raw / entry["file"])
        elif database.get("path"):
            add("database (queried)", Path(database["path"]))
        elif database.get("engine") == "duckdb":
            for path in _query_files(str(entry["query"]), raw):
                add(f"{table} table (DuckDB query)", path)
        else:
            add(f"{table} table ({database.get('engine', 'database')} query)", None)
    if "simulation" in config and (raw / "truth.json").is_file():
        add("true values of the simulation", raw / "truth.json")
    return read


def input_digests(config: Mapping[str, Any], raw: str | Path,
                  analysis: str | Path | None = None) -> list[dict[str, str]]:
    """Rows (input, file, bytes, sha256) for the raw files read, the analysis table and config.

    A raw file the config names but that is missing is a :class:`DataError`: the report would
    otherwise certify an input that was never there.
    """
    rows = []
    for role, path in raw_files_read(config, raw):
        if path is None:
            rows.append({"input": role, "file": "server query, no file", "bytes": "",
                         "sha256": ""})
            continue
        if not path.is_file():
            raise DataError(str(path), "a raw input named in the config is missing")
        rows.append({"input": role, "file": path.as_posix(), "bytes": str(path.stat().st_size),
                     "sha256": sha256_file(path)})
    if analysis is not None:
        path = Path(analysis)
        if not path.is_file():
            raise DataError(str(path), "the analysis table is missing",
                            hint="run the `allocate` step first")
        rows.append({"input": "analysis table", "file": path.as_posix(),
                     "bytes": str(path.stat().st_size), "sha256": sha256_file(path)})
    text = config_as_run_text(config).encode("utf-8")
    rows.append({"input": "configuration as run",
                 "file": f"{config['paths']['interim']}/config.as_run.yaml",
                 "bytes": str(len(text)), "sha256": sha256_bytes(text)})
    return rows


def provenance_facts(config: Mapping[str, Any], raw: str | Path,
                     analysis: str | Path | None = None) -> dict[str, Any]:
    """Everything the provenance panel shows about the run, except the date and benchmarks."""
    packages = package_versions().to_dict("records")
    return {
        **git_state(), **runtime_facts(),
        "inputs": input_digests(config, raw, analysis),
        "versions": packages,
        # four name/version pairs a row keep the full list readable
        "version_rows": [packages[i:i + 4] for i in range(0, len(packages), 4)],
    }


def source_notes(tables: str | Path, figures: str | Path, estimates: str | Path,
                 analysis: str | Path | None = None) -> dict[str, str]:
    """For each table and figure of the report, the file(s) it was read from, as captions say.

    Keys are the report's table and figure names; the figures name both their image file and
    the data it was drawn from.
    """
    t, f, e = (Path(p).as_posix() for p in (tables, figures, estimates))
    data = Path(analysis).as_posix() if analysis else "the analysis table"
    notes = {name: f"{t}/{name}.csv" for name in (
        "flow", "table1", "implementation", "primary_estimates", "effects_by_followup",
        "subgroup_estimates", "sessions", "responders", "variance_components", "reproduction")}
    notes.update({
        "outcomes": "the configuration as run (outcomes, timepoints, analysis)",
        "target_trial": f"the configuration as run (target_trial, eligibility) and {t}/flow.csv",
        "models": f"{e}/*.json (the model block of each estimate file)",
        "sensitivity": f"{e}/sensitivity.*.json and {t}/primary_estimates.csv",
        "evalues": f"{e}/sensitivity.evalue.json",
        "assumptions": "the configuration as run (simulation.assumptions)",
        "provenance": "computed by the report step from the files listed",
        "benchmarks": "Snakemake benchmark files (logs/benchmarks/*.tsv)",
        "figure_flow": f"{f}/flow.png, drawn from {t}/flow.csv",
        "figure_implementation": f"{f}/implementation.png, drawn from {t}/implementation.csv",
        "figure_forest": f"{f}/forest.png, drawn from {e}/*.json",
        "figure_trajectories": f"{f}/trajectories.png, drawn from {e}/*.json (adjusted means)",
        "figure_sessions": f"{f}/sessions.png, drawn from {data}",
    })
    return notes
