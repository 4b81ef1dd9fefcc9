"""Nothing under ``reports/`` identifies anyone: no raw id, no count of people below k.

Issue 19: therapist ids and per-therapist counts of 1-4 episodes reached
``therapist_fidelity.csv``; a subgroup of 3 patients reached the subgroup table, the model
warnings and the estimate files. The scan reads every file of a whole pipeline run under
``reports/``, once for the default study (small cohort) and once with a subgroup level of 3.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import _fail_with_logs, run_snakemake

pytestmark = pytest.mark.e2e

# The ids of people and their records. Clinics are sites, not people: the propensity balance
# table names its clinic indicators (clinic_C02) by design; the therapist table codes them.
ID_COLUMNS = ("therapist_id", "episode_id", "patient_id", "session_id", "outcome_id")
# Counts of units that are not people (therapists as clusters) or not counts of people alone.
NOT_PEOPLE = {"n_clusters", "n_observations", "num_df", "n_imputations", "n_iterations"}
_PEOPLE_IN_TEXT = re.compile(r"(?<![\w.<])(\d+) (?:patient|patients|patient\(s\)|episode|"
                             r"episodes|episode\(s\)|therapist|therapists)\b")
_COUNT_PERCENT = re.compile(r"^(\d+) \(\d")  # Table 1's "n (%)" cells


def raw_ids(raw: Path) -> set[str]:
    """Every id of the raw extract, as written and as cleaning writes it (upper-case)."""
    ids: set[str] = set()
    for path in raw.glob("*.csv"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in ID_COLUMNS:
            if column in frame.columns:
                values = frame[column].str.strip()
                ids |= set(values) | set(values.str.upper())
    ids.discard("")
    return ids


def _texts(reports: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(p for p in reports.rglob("*") if p.is_file()):
        if path.suffix in (".png", ".pdf"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        # embedded images: base64 text, not words anyone reads
        yield path, re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", text)


def _small(value: object, k: int) -> bool:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return 0 < number < k and number == int(number)


def _a_threshold(text: str, start: int) -> bool:
    """A rule's number, not a count: ">= 1 patient(s)", "counts of 1 to 4 patients"."""
    before = text[max(0, start - 5):start]
    return any(mark in before for mark in (">= ", "gt;= ", "to ", "< ", "lt; "))


def _json_counts(node: object, where: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    key == "n" or key.startswith("n_")) and key not in NOT_PEOPLE:
                yield f"{where}.{key}", value
            yield from _json_counts(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_counts(value, f"{where}[{i}]")


def disclosures(reports: Path, raw: Path, k: int) -> list[str]:
    """Every raw id and every count of people from 1 to k - 1 found under ``reports``."""
    ids = raw_ids(raw)
    found: list[str] = []
    for path, text in _texts(reports):
        name = str(path.relative_to(reports))
        # words, and their parts between underscores (an id inside "therapist_T001")
        tokens = set(re.findall(r"[A-Za-z0-9_]+", text)) | set(re.findall(r"[A-Za-z0-9]+",
                                                                            text))
        found += [f"{name}: raw id {token!r}" for token in sorted(tokens & ids)[:5]]
        found += [f"{name}: {m.group(0)!r}" for m in _PEOPLE_IN_TEXT.finditer(text)
                  if _small(m.group(1), k) and not _a_threshold(text, m.start())][:5]
        if path.suffix == ".json":
            found += [f"{name}: {key} = {value}" for key, value in
                      _json_counts(json.loads(text)) if _small(value, k)][:5]
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            for column in frame.columns:
                counts = column == "n" or column.startswith("n_") or column in (
                    "numerator", "denominator", "etmi_episodes", "faithful_episodes")
                if counts and column not in NOT_PEOPLE:
                    found += [f"{name}: {column} = {v}" for v in frame[column]
                              if _small(v, k)][:5]
                found += [f"{name}: {column} = {v!r}" for v in frame[column]
                          if (m := _COUNT_PERCENT.match(v)) and _small(m.group(1), k)][:5]
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan itself: a raw id, a small count column, a small count in words and in JSON."""
    raw, reports = tmp_path / "raw", tmp_path / "reports"
    raw.mkdir()
    reports.mkdir()
    (raw / "therapists.csv").write_text("therapist_id,clinic_id\nt017,C03\nT020,C04\n")
    (reports / "a.csv").write_text("therapist,n_patients,cell\nx,3,12 (4.0)\ny,7,2 (1.0)\n")
    (reports / "b.json").write_text(json.dumps({"rows": [{"n_patients": 2, "n_clusters": 1}]}))
    (reports / "c.html").write_text("<p>T017 had 4 patients</p><img src='data:image/png;"
                                    "base64,C03/T020+'><!-- therapist_T020 -->")
    found = disclosures(reports, raw, 5)
    assert "c.html: raw id 'T017'" in found and "c.html: raw id 'T020'" in found
    assert "a.csv: n_patients = 3" in found
    assert "a.csv: cell = '2 (1.0)'" in found
    assert "b.json: .rows[0].n_patients = 2" in found
    assert "c.html: '4 patients'" in found
    assert not any("C03" in f or "n_clusters" in f or "12 (4.0)" in f for f in found)


def test_no_id_or_small_count_under_reports_of_the_default_study(pipeline_run: Path) -> None:
    config = yaml.safe_load((pipeline_run / "config" / "config.yaml").read_text())
    k = int(config["report"]["min_cell_count"])
    found = disclosures(pipeline_run / "reports", pipeline_run / "data" / "raw", k)
    assert not found, "\n".join(found[:40])


@pytest.fixture(scope="module")
def subgroup_of_three_run(pipeline_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default study's extract with a declared flag ``rare`` set for 3 complete cases,
    analysed as a subgroup (min_cell_count 5), as the study's own data (no simulation)."""
    workdir = tmp_path_factory.mktemp("subgroup_of_three")
    shutil.copytree(pipeline_run / "data" / "raw", workdir / "data" / "raw")
    (workdir / "data" / "raw" / "truth.json").unlink()
    analysis = pd.read_parquet(pipeline_run / "data" / "processed" / "analysis.parquet")
    chosen = set(analysis.loc[analysis["complete_case"] == 1, "episode_id"].head(3))
    patients_file = workdir / "data" / "raw" / "patients.csv"
    patients = pd.read_csv(patients_file, dtype=str, keep_default_na=False)
    patients["rare"] = patients["episode_id"].isin(chosen).astype(int).astype(str)
    patients.to_csv(patients_file, index=False, lineterminator="\n")
    config = yaml.safe_load((pipeline_run / "config" / "config.yaml").read_text())
    config.pop("simulation")
    config["input"]["tables"]["patients"]["variables"] = {"rare": "flag"}
    config["analysis"]["subgroups"] = [*config["analysis"]["subgroups"], "rare"]
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir)
    if result.returncode != 0:
        _fail_with_logs(workdir, result)
    return workdir


@pytest.mark.slow
def test_a_subgroup_of_three_is_not_reported_and_leaves_no_trace(
        subgroup_of_three_run: Path) -> None:
    reports = subgroup_of_three_run / "reports"
    found = disclosures(reports, subgroup_of_three_run / "data" / "raw", 5)
    assert not found, "\n".join(found[:40])
    table = pd.read_csv(reports / "tables" / "subgroup_estimates.csv", dtype=str,
                        keep_default_na=False)
    rare = table[table["subgroup"] == "rare"]
    assert rare["level"].tolist() == ["not reported"] * len(rare) and len(rare) >= 1
    assert (rare["n_patients"] == "").all() and (rare["estimate"] == "").all()
    html = (reports / "report.html").read_text(encoding="utf-8")
    assert "not reported: a level of subgroup &#39;rare&#39; has fewer than 5" in html or \
        "not reported: a level of subgroup 'rare' has fewer than 5" in html
