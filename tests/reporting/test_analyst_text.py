"""Tests for the analyst's own text in the report (trial_analysis.reporting.analyst_text)."""

from __future__ import annotations

import copy

import pytest
from report_fixtures import shared_outputs

from trial_analysis.errors import ConfigError
from trial_analysis.reporting.analyst_text import analyst_text, render_markdown, split_sections
from trial_analysis.reporting.report import run_report

TEXT = """# Introduction

Chronic low back pain is *common*; see [the protocol](#design).

## Aims

1. Estimate the effect.
2. Check the **assumptions**.

# Discussion

The effect on function was clinically small.

<script>alert("x")</script>

<img src=x onerror="alert(1)"> and an inline <b onclick="alert(2)">tag</b>.

[click](javascript:alert(3)) ![a chart](https://example.org/chart.png)
[the trial register](https://example.org/register)
"""


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp())


def _with_text(config, path):
    config = copy.deepcopy(config)
    config["report"]["text"] = str(path)
    return config


def test_sections_render_into_the_two_slots(tmp_path):
    path = tmp_path / "text.md"
    path.write_text(TEXT, encoding="utf-8")
    rendered = analyst_text({"report": {"text": str(path)}})
    assert set(rendered) == {"introduction", "discussion"} and all(rendered.values())
    intro = str(rendered["introduction"])
    assert "<em>common</em>" in intro and '<a href="#design">the protocol</a>' in intro
    assert "<h3>Aims</h3>" in intro and "<ol>" in intro and "<h1>" not in intro
    assert "Discussion" not in intro and "clinically small" in str(rendered["discussion"])
    assert "the trial register (https://example.org/register)" in str(rendered["discussion"])


def test_raw_html_and_script_are_shown_as_text_never_run(tmp_path):
    path = tmp_path / "text.md"
    path.write_text(TEXT, encoding="utf-8")
    discussion = str(analyst_text({"report": {"text": str(path)}})["discussion"])
    lowered = discussion.lower()
    assert "<script" not in lowered and "&lt;script&gt;" in lowered
    assert "<img" not in lowered and "onerror=" not in lowered.replace("onerror=&quot;", "")
    assert "<b " not in lowered and "&lt;b onclick" in lowered
    assert 'href="javascript' not in lowered
    assert "href=\"https" not in discussion and "<img" not in discussion
    assert "a chart" in discussion and "(https://example.org/chart.png)" not in discussion


def test_the_report_shows_the_text_escaped(run, tmp_path):
    path = tmp_path / "text.md"
    path.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "report.html"
    run_report(config=_with_text(run.config, path), raw=run.raw, estimates=run.estimates,
               tables=run.tables, figures=run.figures, benchmarks=None, out=out)
    html = out.read_text(encoding="utf-8")
    assert '<section id="introduction"' in html and '<section id="discussion"' in html
    assert html.index('id="introduction"') < html.index('<section id="design"')
    assert html.index('id="reproduction"') < html.index('<section id="discussion"')
    assert "<script" not in html.lower() and "onerror" not in html.split('id="discussion"')[
        1].split("</section>")[0].replace("onerror=&quot;", "")
    assert '<a href="#discussion">' in html


def test_no_text_no_sections(run):
    html = run.report.read_text(encoding="utf-8")
    assert 'id="introduction"' not in html and 'id="discussion"' not in html


@pytest.mark.parametrize(("text", "message"), [
    ("Some words first.\n\n# Introduction\n\nx\n", "line 1 comes before the first section"),
    ("# Methods\n\nx\n", r"'# Methods' \(line 1\) is not one of"),
    ("# Discussion\n\na\n\n# discussion\n\nb\n", "appears twice"),
])
def test_badly_laid_out_text_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        split_sections(text, "text.md")


def test_without_a_file_both_slots_are_empty(tmp_path):
    assert analyst_text({"report": {}}) == {"introduction": "", "discussion": ""}
    path = tmp_path / "d.md"
    path.write_text("# Discussion\n\nOnly this.\n", encoding="utf-8")
    rendered = analyst_text({"report": {"text": str(path)}})
    assert rendered["introduction"] == "" and "Only this." in rendered["discussion"]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        analyst_text({"report": {"text": str(tmp_path / "absent.md")}})
    (tmp_path / "latin1.md").write_bytes("# Discussion\n\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        analyst_text({"report": {"text": str(tmp_path / "latin1.md")}})


def test_a_heading_in_code_is_not_a_section():
    sections = split_sections("# Discussion\n\n```\n# Methods\n```\n", "t.md")
    assert "# Methods" in sections["discussion"]
    assert "<pre><code># Methods" in str(render_markdown(sections["discussion"]))
