"""Tests for the readable labels (trial_analysis.labels) and that the report shows no raw
identifier where a person reads."""

from __future__ import annotations

import pytest
from report_fixtures import raw_identifiers, shared_outputs, visible_text

from trial_analysis.labels import label, sentence_label


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
