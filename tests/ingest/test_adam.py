"""CDISC ADaM BDS datasets as the long outcomes table: selection, baseline, plain errors."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from trial_analysis.errors import ConfigError, DataError
from trial_analysis.ingest.adam import check_spec, select_bds

SPEC = {"parameters": {"HAMD17": "hamd"}, "visits": ["Week 4"]}


def _bds() -> pd.DataFrame:
    """Two subjects; HAMD17 and an unselected HAMA; a screening, a retest, a Week 12."""
    rows = [
        # USUBJID, PARAMCD, AVISIT, AVAL, BASE, ABLFL, ANL01FL
        ("S-1", "HAMD17", "Screening", 25.0, 22.0, "", ""),
        ("S-1", "HAMD17", "Day 1", 22.0, 22.0, "Y", "Y"),      # baseline from another visit
        ("S-1", "HAMD17", "Week 4", 18.0, 22.0, "", "Y"),
        ("S-1", "HAMD17", "Week 4", 19.0, 22.0, "", "N"),      # retest, not analysed
        ("S-1", "HAMD17", "Week 12", 15.0, 22.0, "", "Y"),     # not a configured visit
        ("S-1", "HAMA", "Day 1", 20.0, 20.0, "Y", "Y"),        # not a selected parameter
        ("S-2", "HAMD17", "Baseline", 30.0, 30.0, "Y", "Y"),
        ("S-2", "HAMD17", "Week 4", np.nan, 30.0, "", "Y"),   # missing stays missing
    ]
    return pd.DataFrame(rows, columns=["USUBJID", "PARAMCD", "AVISIT", "AVAL", "BASE",
                                       "ABLFL", "ANL01FL"])


def test_selects_parameter_flag_and_visits_with_baseline_label() -> None:
    out, record = select_bds(_bds(), SPEC, "baseline", "adqs.xpt")
    assert out["outcome_id"].tolist() == ["ROW2", "ROW3", "ROW7", "ROW8"]  # dataset rows
    assert out["timepoint"].tolist() == ["baseline", "Week 4", "baseline", "Week 4"]
    assert out["instrument"].unique().tolist() == ["hamd"]
    assert out["episode_id"].tolist() == ["S-1", "S-1", "S-2", "S-2"]
    assert out["score"].iloc[:3].tolist() == pytest.approx([22.0, 18.0, 30.0])
    assert np.isnan(out["score"].iloc[3])
    assert record["rows_in_source"] == 8 and record["rows"] == 4
    assert record["left_out"] == {"other parameter": 1, "ANL01FL not Y": 2, "other visit": 1}
    assert "PARAMCD in ('HAMD17')" in record["selection"]


def test_variable_names_match_ignoring_case_and_another_flag() -> None:
    frame = _bds().rename(columns=str.lower).assign(anl02fl=["Y"] * 8)
    out, _ = select_bds(frame, {**SPEC, "flag": "ANL02FL"}, "baseline", "adqs.xpt")
    # With every record analysed, the retest is selected too (then a repeated assessment).
    assert len(out) == 5


def test_labelled_flags_and_date_column() -> None:
    frame = _bds().assign(ADT=pd.to_datetime("2024-01-01"))
    frame["ANL01FL"] = pd.Categorical(frame["ANL01FL"])
    out, _ = select_bds(frame, SPEC, "baseline", "adqs.xpt")
    assert list(out.columns) == ["outcome_id", "episode_id", "assessment_date", "instrument",
                                 "timepoint", "score"]
    assert len(out) == 4


def test_missing_variable_is_a_plain_error() -> None:
    with pytest.raises(DataError, match="AVISIT") as info:
        select_bds(_bds().drop(columns="AVISIT"), SPEC, "baseline", "adqs.xpt")
    assert "adqs.xpt" in str(info.value)


def test_no_record_selected_names_the_parameters_present() -> None:
    with pytest.raises(DataError, match="no record selected") as info:
        select_bds(_bds(), {**SPEC, "parameters": {"MADRS": "hamd"}}, "baseline", "adqs.xpt")
    assert "HAMA, HAMD17" in str(info.value)


def test_two_baseline_records_are_an_error() -> None:
    frame = _bds()
    frame.loc[2, "ABLFL"] = "Y"
    with pytest.raises(DataError, match="two baseline records"):
        select_bds(frame, SPEC, "baseline", "adqs.xpt")


def test_base_other_than_the_selected_baseline_is_a_warning(caplog) -> None:
    frame = _bds()
    frame.loc[2, "BASE"] = 21.0
    with caplog.at_level(logging.WARNING, logger="trial_analysis.ingest.adam"):
        select_bds(frame, SPEC, "baseline", "adqs.xpt")
    assert "BASE differs" in caplog.text and "1 record(s)" in caplog.text


def test_spec_checked_against_the_config() -> None:
    config = {"input": {"outcomes_layout": "wide", "tables": {"outcomes": {
        "file": "adqs.xpt", "columns": {"score": "AVAL"},
        "adam": {"parameters": {"HAMD17": "madrs"}, "visits": ["Week 4"]}}}},
        "outcomes": [{"name": "hamd"}]}
    with pytest.raises(ConfigError) as info:
        check_spec(config, "outcomes")
    text = str(info.value)
    assert "outcomes_layout" in text and "columns" in text and "'madrs'" in text
