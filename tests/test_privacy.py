"""Tests of the small-cell rules (trial_analysis.privacy)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trial_analysis.privacy import (
    count_text,
    is_small,
    min_cell_count,
    rank_codes,
    suppress_json_counts,
    suppress_text_counts,
)


def test_small_counts_and_their_text() -> None:
    assert [is_small(v, 5) for v in (0, 1, 4, 5, np.nan, "x", None)] == [
        False, True, True, False, False, False, False]
    assert [count_text(v, 5) for v in (0, 3, 5, 12)] == ["0", "<5", "5", "12"]
    assert min_cell_count({"report": {"min_cell_count": 11}}) == 11
    assert min_cell_count({}) == 5


def test_rank_codes_hide_the_ids_and_are_stable() -> None:
    codes = rank_codes(["T9", "T1", None, "T1"], "therapist")
    assert codes == {"T9": "therapist 02", "T1": "therapist 01"}
    assert rank_codes(["T1", "T9"], "therapist") == rank_codes(["T9", "T1"], "therapist")


def test_json_counts_of_people_are_suppressed_and_other_counts_kept() -> None:
    doc = {"tables": {"weights": [{"n_patients": 3, "n_clusters": 2, "n_weight_zero": 0,
                                   "weight_max": 1.5, "converged": True}]},
           "rows": [{"n_patients": 812}]}
    out = suppress_json_counts(doc, 5)
    assert out["tables"]["weights"][0] == {"n_patients": "<5", "n_clusters": 2,
                                           "n_weight_zero": 0, "weight_max": 1.5,
                                           "converged": True}
    assert out["rows"][0]["n_patients"] == 812
    assert isinstance(pd.DataFrame(out["rows"]), pd.DataFrame)


def test_counts_of_people_in_notes_are_suppressed_but_not_thresholds() -> None:
    text = ("3 patients in one arm; 12 patients with propensity < 0.01; therapists with >= 1 "
            "patient(s) in each arm; 2 patient(s) left out")
    assert suppress_text_counts(text, 5) == (
        "<5 patients in one arm; 12 patients with propensity < 0.01; therapists with >= 1 "
        "patient(s) in each arm; <5 patient(s) left out")
    assert suppress_json_counts({"notes": ["4 episodes dropped"]}, 5) == {
        "notes": ["<5 episodes dropped"]}
