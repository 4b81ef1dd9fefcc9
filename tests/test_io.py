"""Tests for the shared file writers (trial_analysis.io)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trial_analysis.io import neutralise_formulas, write_csv

HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "@SUM(1+1)",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "=1+1",
    "\tTAB",
    "\rCR",
    "-",
    "+",
]


def _cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_formula_like_text_cell_is_written_as_text(value: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({"therapist": [value, "T001"], "n": [3, 4]})
    rows = _cells(write_csv(frame, tmp_path / "out.csv"))
    assert rows[0] == ["therapist", "n"]
    assert rows[1] == ["'" + value, "3"]
    assert rows[2] == ["T001", "4"]


def test_numbers_are_never_changed(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "estimate": [-1.5, 2.25, np.nan],
        "count": pd.array([-3, 4, None], dtype="Int64"),
        # numbers held as text (Table 1's formatted SMDs) stay numbers
        "smd": ["-0.432", "+0.1", "-1e-05"],
        "text": pd.array(["-", "ok", None], dtype="str"),
    })
    rows = _cells(write_csv(frame, tmp_path / "out.csv"))
    assert rows[1][:3] == ["-1.5", "-3", "-0.432"]
    assert rows[2][:3] == ["2.25", "4", "+0.1"]
    assert rows[3][:3] == ["", "", "-1e-05"]
    assert [r[3] for r in rows[1:]] == ["'-", "ok", ""]
    back = pd.read_csv(tmp_path / "out.csv")
    assert back["estimate"].iloc[:2].tolist() == pytest.approx([-1.5, 2.25])
    assert back["count"].iloc[:2].tolist() == [-3, 4]


def test_column_names_and_categories_are_neutralised_too(tmp_path: Path) -> None:
    frame = pd.DataFrame({"=cmd": [1], "level": pd.Categorical(["@x"])})
    rows = _cells(write_csv(frame, tmp_path / "out.csv"))
    assert rows == [["'=cmd", "level"], ["1", "'@x"]]


def test_the_frame_passed_in_is_not_modified() -> None:
    frame = pd.DataFrame({"id": ["=1", "a"]})
    safe = neutralise_formulas(frame)
    assert frame["id"].tolist() == ["=1", "a"]
    assert safe["id"].tolist() == ["'=1", "a"]
    untouched = pd.DataFrame({"id": ["a", "b"], "x": [-1.0, 2.0]})
    assert neutralise_formulas(untouched) is untouched


def test_a_raw_extract_can_be_written_verbatim(tmp_path: Path) -> None:
    frame = pd.DataFrame({"patient_id": ["=1"]})
    rows = _cells(write_csv(frame, tmp_path / "raw.csv", neutralise=False))
    assert rows[1] == ["=1"]


def test_a_carriage_return_inside_a_cell_keeps_the_cell_whole(tmp_path: Path) -> None:
    frame = pd.DataFrame({"note": ["a\rb", "c"], "n": [1, 2]})
    rows = _cells(write_csv(frame, tmp_path / "out.csv"))
    assert rows == [["note", "n"], ["a\rb", "1"], ["c", "2"]]
