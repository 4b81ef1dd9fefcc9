"""Execute the reviewer walk-through notebook against a pipeline output folder.

Runs against a folder built from the report fixtures (whose primary estimate file was fitted
with the model the config describes) and, marked ``e2e``, against the lead's ``pipeline_run``
fixture (the end-to-end output root) when tests/conftest.py provides it.
"""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient
from report_fixtures import REPO, shared_inputs

NOTEBOOK = REPO / "notebooks" / "reviewer_walkthrough.ipynb"


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return shared_inputs(tmp_path_factory.getbasetemp()).root


def execute(root, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("TRIAL_ANALYSIS_ROOT", str(root))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    return notebook


def assert_agreement(notebook: nbformat.NotebookNode) -> None:
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "agreement: |difference|" in text
    assert "crude difference in mean change" in text


def test_notebook_reproduces_the_primary_estimate(fixture_root, monkeypatch):
    assert_agreement(execute(fixture_root, monkeypatch))


@pytest.mark.e2e
def test_notebook_on_the_pipeline_run(request, monkeypatch):
    """Against the end-to-end run (the lead's ``pipeline_run`` fixture in conftest.py)."""
    try:
        root = request.getfixturevalue("pipeline_run")
    except pytest.FixtureLookupError:
        pytest.skip("no pipeline_run fixture in tests/conftest.py")
    assert_agreement(execute(root, monkeypatch))


def test_notebook_fails_when_the_estimate_disagrees(fixture_root, monkeypatch, tmp_path):
    """The notebook's check can fail: shift the reported estimate by one standard error."""
    import json
    import shutil

    root = tmp_path / "tampered"
    shutil.copytree(fixture_root, root, ignore=shutil.ignore_patterns("figures", "*.html"))
    config_text = (root / "data" / "interim" / "config.as_run.yaml").read_text()
    config_text = config_text.replace(str(fixture_root), str(root))
    (root / "data" / "interim" / "config.as_run.yaml").write_text(config_text)
    path = root / "reports" / "estimates" / "function.complete_case.json"
    doc = json.loads(path.read_text())
    for row in doc["estimates"]:
        if row["term"] == "arm:time":
            row["estimate"] += row["std_error"]
    path.write_text(json.dumps(doc))
    assert os.environ.get("TRIAL_ANALYSIS_ROOT") != str(root)
    with pytest.raises(Exception, match="AssertionError"):
        execute(root, monkeypatch)
