"""Tests for the readable labels (trial_analysis.labels) and that the report shows no raw
identifier where a person reads."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from report_fixtures import shared_outputs

from trial_analysis.labels import label, sentence_label

# Elements whose text is code a reader would type (formulas, config keys, the config as run).
CODE_ELEMENTS = {"code", "pre", "style", "script"}
# Tokens that are file names (each table and figure names its source file).
FILE_NAME = re.compile(r"\S+\.(?:csv|json|parquet|png|svg|yaml|tsv|log|html|docx|tex)\b")
SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
METHOD_KEY = re.compile(r"\b[a-z_]+:[a-z_]+\b")
DUMMY = re.compile(r"\b(?:sex|clinic|arm|region)[A-Z][A-Za-z0-9]*\b")


class _VisibleText(HTMLParser):
    """The text a reader sees: no tags, no attributes, no code elements."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in CODE_ELEMENTS:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in CODE_ELEMENTS:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return FILE_NAME.sub(" ", " ".join(parser.parts))


def raw_identifiers(text: str) -> list[str]:
    """Snake-case identifiers, ``model:se`` method keys and dummies like ``sexM`` in text."""
    found = SNAKE_CASE.findall(text) + METHOD_KEY.findall(text) + DUMMY.findall(text)
    return sorted(set(found))


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    return shared_outputs(tmp_path_factory.getbasetemp()).report.read_text(encoding="utf-8")


def test_the_scan_finds_what_it_looks_for():
    text = visible_text("<p>Model negative_binomial_adjusted:therapist_clustered_se, sexM, "
                        "<code>symptom_duration_weeks</code> in table1.csv</p>")
    assert raw_identifiers(text) == [
        "negative_binomial_adjusted", "negative_binomial_adjusted:therapist_clustered_se",
        "sexM", "therapist_clustered_se"]


def test_report_text_has_no_raw_identifier(html):
    found = raw_identifiers(visible_text(html))
    assert not found, f"raw identifiers a reader would see: {found}"


def test_labels_from_config_then_builtin_then_patterns():
    config = {"outcomes": [{"name": "fear_avoidance", "label": "Fear-avoidance beliefs"}],
              "report": {"labels": {"sexM": "Male", "therapist_clustered_se": "clustered SE"}}}
    assert label(config, "sexM") == "Male"
    assert label(config, "all_available") == "all with a baseline"
    assert label(config, "fear_avoidance") == "Fear-avoidance beliefs"
    assert label(config, "complete_fear_avoidance") == "complete cases"
    assert label(config, "negative_binomial_adjusted:therapist_clustered_se") == \
        "negative binomial, adjusted, clustered SE"
    assert label(config, "clinic_C02") == "clinic C02"
    assert label(config, "fear_avoidance_baseline_missing") == \
        "Fear-avoidance beliefs at baseline missing"
    assert label(config, "n_sessions") == "number of treatment sessions"
    assert sentence_label(config, "therapist_adoption") == "Adoption (therapists delivering)"
    assert label(None, "some_new_thing") == "some new thing"
