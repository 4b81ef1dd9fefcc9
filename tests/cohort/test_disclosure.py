"""Tests of the cohort tables as written for people (trial_analysis.cohort.disclosure)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trial_analysis.cohort.disclosure import (
    reported_flow,
    reported_implementation,
    reported_therapists,
)


def _flow(rows: list[tuple]) -> pd.DataFrame:
    flow = pd.DataFrame(rows, columns=["step", "description", "n", "n_excluded", "reason"])
    flow["n_excluded"] = flow["n_excluded"].astype("Int64")
    return flow


def test_a_small_exclusion_is_merged_with_its_neighbour_and_totals_stay_exact() -> None:
    flow = _flow([
        ("extract", "patient episodes in the extract", 500, None, None),
        ("eligibility", "excluded as ineligible", 440, 60, "referral outside study window"),
        ("eligibility", "excluded as ineligible", 438, 2, "age under 18"),
        ("eligibility", "excluded as ineligible", 400, 38, "no CLBP diagnosis code"),
        ("eligibility", "eligible patients", 400, None, None),
    ])
    out = reported_flow(flow, 5)
    exclusions = out[out["n_excluded"] != ""]
    # merged with the larger neighbour: the remaining counts are still exact
    assert exclusions["n_excluded"].tolist() == ["62", "38"]
    assert exclusions["reason"].tolist() == [
        "referral outside study window; or age under 18", "no CLBP diagnosis code"]
    assert out["n"].tolist() == ["500", "438", "400", "400"]
    assert "2" not in set(out["n_excluded"]) and "440" not in set(out["n"])


def test_a_sole_small_exclusion_and_small_boxes_are_shown_as_below_k() -> None:
    flow = _flow([
        ("extract", "patient episodes in the extract", 500, None, None),
        ("clean", "dropped in cleaning", 498, 2, "exact duplicate of row N"),
        ("clean", "patient episodes after cleaning", 498, None, None),
        ("analysis", "complete cases, ETMI", 3, 10, "follow-up missing"),
    ])
    out = reported_flow(flow, 5)
    assert out["n_excluded"].tolist() == ["", "<5", "", "10"]
    assert out["n"].tolist()[-1] == "<5"
    # no later step to merge with: the box before the small count is suppressed, so 500 - 498
    # cannot be read off the diagram
    assert out["n"].tolist()[:3] == ["suppressed", "498", "498"]


def _counts(out: pd.DataFrame, column: str) -> list[int]:
    return [int(v) for v in out[column] if str(v).isdigit()]


def test_a_sole_small_cleaning_exclusion_joins_the_eligibility_exclusions() -> None:
    flow = _flow([
        ("extract", "patient episodes in the extract", 503, None, None),
        ("clean", "dropped in cleaning", 500, 3, "exact duplicate of another record"),
        ("clean", "patient episodes after cleaning", 500, None, None),
        ("records", "outcome records dropped", 1990, 10, "exact duplicate of another record"),
        ("eligibility", "excluded as ineligible", 440, 60, "referral outside study window"),
        ("eligibility", "excluded as ineligible", 400, 40, "no CLBP diagnosis code"),
        ("eligibility", "eligible patients", 400, None, None),
        ("allocation", "ETMI group", 100, None, None),
        ("allocation", "usual care group", 300, None, None),
    ])
    out = reported_flow(flow, 5)
    assert "clean" not in set(out["step"])  # the box after cleaning (500) is left out
    assert "500" not in set(out["n"]) and "3" not in set(out["n_excluded"])
    merged = out[out["reason"].astype(str).str.startswith("exact duplicate of another record;")]
    assert merged["step"].tolist() == ["eligibility"]
    assert merged["n_excluded"].tolist() == ["63"] and merged["n"].tolist() == ["440"]
    assert merged["description"].tolist() == ["dropped in cleaning or excluded as ineligible"]
    # the totals stay exact and consistent: 503 - 63 - 40 = 400, and the reported boxes stay
    assert out["n"].tolist()[0] == "503"
    assert sum(_counts(out[out["step"] == "eligibility"], "n_excluded")) == 503 - 400
    assert out.loc[out["description"] == "eligible patients", "n"].tolist() == ["400"]
    assert out.loc[out["step"] == "allocation", "n"].tolist() == ["100", "300"]
    # record-level cleaning is neither merged nor a partner
    assert out.loc[out["step"] == "records", "n_excluded"].tolist() == ["10"]


def test_a_sole_small_eligibility_exclusion_joins_the_cleaning_exclusions() -> None:
    flow = _flow([
        ("extract", "patient episodes in the extract", 520, None, None),
        ("clean", "dropped in cleaning", 500, 20, "exact duplicate of another record"),
        ("clean", "patient episodes after cleaning", 500, None, None),
        ("eligibility", "excluded as ineligible", 498, 2, "age under 18"),
        ("eligibility", "eligible patients", 498, None, None),
    ])
    out = reported_flow(flow, 5)
    assert out["n"].tolist() == ["520", "498", "498"]
    assert out["n_excluded"].tolist() == ["", "22", ""]
    assert out["step"].tolist() == ["extract", "eligibility", "eligibility"]


def test_no_small_count_is_the_difference_of_two_shown_boxes() -> None:
    """Whatever is merged, every shown exclusion is exact and none is small."""
    for small in (1, 2, 4):
        flow = _flow([
            ("extract", "patient episodes in the extract", 400 + small, None, None),
            ("clean", "dropped in cleaning", 400, small, "exact duplicate of another record"),
            ("clean", "patient episodes after cleaning", 400, None, None),
            ("eligibility", "excluded as ineligible", 400, 0, "age under 18"),
            ("eligibility", "excluded as ineligible", 390, 10, "no CLBP diagnosis code"),
            ("eligibility", "eligible patients", 390, None, None),
        ])
        out = reported_flow(flow, 5)
        boxes = [int(v) for v, e in zip(out["n"], out["n_excluded"], strict=True)
                 if e == "" and str(v).isdigit()]
        differences = {a - b for a in boxes for b in boxes if a > b}
        assert not any(0 < d < 5 for d in differences), (small, out)
        assert not any(0 < c < 5 for c in _counts(out, "n_excluded")), (small, out)


def test_implementation_hides_small_numerators_and_complements() -> None:
    table = pd.DataFrame({
        "measure": ["reach", "therapist_adoption", "patient_adoption"],
        "numerator": [3, 70, 498], "denominator": [128, 109, 500],
        "percent": [100 * 3 / 128, 100 * 70 / 109, 99.6], "definition": ["a", "b", "c"],
    })
    out = reported_implementation(table, 5)
    assert out["numerator"].tolist() == ["<5", "70", "suppressed"]
    assert out["percent"].tolist()[0] == "suppressed" and out["percent"].tolist()[2] == \
        "suppressed"
    assert float(out["percent"].tolist()[1]) == pytest_approx(100 * 70 / 109)


def test_implementation_with_nothing_small_is_written_unchanged() -> None:
    """The default study: no small count, percent stays a number (it once crashed allocate)."""
    table = pd.DataFrame({
        "measure": ["reach", "fidelity"], "numerator": [109, 654], "denominator": [128, 711],
        "percent": [100 * 109 / 128, 100 * 654 / 711], "definition": ["a", "b"],
    })
    out = reported_implementation(table, 5)
    assert out["numerator"].tolist() == ["109", "654"]
    assert float(out["percent"].tolist()[0]) == pytest_approx(100 * 109 / 128)


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-9)


def test_therapists_by_code_with_small_counts_suppressed() -> None:
    table = pd.DataFrame({
        "therapist_id": ["T9", "T1", "=X"], "clinic_id": ["C2", "C1", "C1"],
        "trained": [1, 1, 0], "adopter": [1, 1, 0],
        "etmi_episodes": [3, 20, 0], "faithful_episodes": [3, 18, 0],
        "fidelity": [1.0, 0.9, np.nan],
    })
    out = reported_therapists(table, 5)
    assert list(out.columns[:2]) == ["therapist", "clinic"]
    # codes by rank of the source id: "=X" < "T1" < "T9"
    assert out["therapist"].tolist() == ["therapist 01", "therapist 02", "therapist 03"]
    assert out["clinic"].tolist() == ["clinic 01", "clinic 01", "clinic 02"]
    by_code = out.set_index("therapist")
    assert by_code.loc["therapist 03", "etmi_episodes"] == "<5"
    assert by_code.loc["therapist 03", "fidelity"] == "suppressed"
    # 20 episodes, 18 faithful: 2 unfaithful would be revealed, so 18 and 0.9 are hidden
    assert by_code.loc["therapist 02", "etmi_episodes"] == "20"
    assert by_code.loc["therapist 02", "faithful_episodes"] == "suppressed"
    assert by_code.loc["therapist 02", "fidelity"] == "suppressed"
    assert by_code.loc["therapist 01", "etmi_episodes"] == "0"
    text = out.to_csv()
    assert "T1" not in text and "T9" not in text and "C2" not in text

