"""Tests for progress on long steps (trial_analysis.progress and map_shared's progress)."""

from __future__ import annotations

import io
import logging

import pytest

from trial_analysis.parallel import map_shared
from trial_analysis.progress import Progress, bar_wanted, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _square(shared: int, task: int) -> int:
    return shared + task * task


@pytest.fixture()
def no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TRIAL_ANALYSIS_PROGRESS", raising=False)


def test_counts_and_eta_go_to_the_log(caplog, no_ci):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="trial_analysis.progress")
    with Progress("imputation chains", 20, clock=clock, stream=io.StringIO()) as progress:
        for _ in range(20):
            clock.now += 2.0
            progress.update()
            assert progress.eta() == pytest.approx(2.0 * (20 - progress.done))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "imputation chains: 1/20 (5%), 2.0 s elapsed, ETA 38.0 s"
    assert "imputation chains: 2/20 (10%), 4.0 s elapsed, ETA 36.0 s" in lines
    assert lines[-1] == "imputation chains: 20/20 done in 40.0 s"
    # the first task, each further tenth, the closing line: short logs for long studies
    assert len(lines) == 1 + 9 + 1


def test_long_gaps_are_logged_and_durations_read_as_minutes(caplog, no_ci):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="trial_analysis.progress")
    progress = Progress("replicates", 1000, clock=clock, every_s=30, stream=io.StringIO())
    for _ in range(3):
        clock.now += 40.0
        progress.update()
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # every update is 30 s or more after the last line
    assert lines[2] == "replicates: 3/1000 (0%), 2 min 00 s elapsed, ETA 11 h 04 min"


def test_track_yields_the_items_unchanged(caplog, no_ci):
    caplog.set_level(logging.INFO, logger="trial_analysis.progress")
    assert list(track(range(5), "fits", stream=io.StringIO())) == [0, 1, 2, 3, 4]
    assert caplog.records[-1].getMessage().startswith("fits: 5/5 done in")


def test_a_bar_only_in_an_interactive_terminal_outside_ci(monkeypatch, no_ci, caplog):
    assert not bar_wanted(io.StringIO())
    assert bar_wanted(Terminal())
    monkeypatch.setenv("CI", "true")
    assert not bar_wanted(Terminal())
    monkeypatch.setenv("CI", "false")
    assert bar_wanted(Terminal())
    monkeypatch.setenv("TRIAL_ANALYSIS_PROGRESS", "0")
    assert not bar_wanted(Terminal())
    monkeypatch.delenv("TRIAL_ANALYSIS_PROGRESS")

    caplog.set_level(logging.INFO, logger="trial_analysis.progress")
    terminal = Terminal()
    assert list(track(range(4), "model fits", stream=terminal)) == [0, 1, 2, 3]
    assert "model fits:" in terminal.getvalue() and "/4 [" in terminal.getvalue()  # tqdm drew
    # with a bar, the log gets only the closing line, not lines that would break the bar
    assert [r.getMessage()[:16] for r in caplog.records] == ["model fits: 4/4 "]

    quiet = io.StringIO()
    list(track(range(4), "model fits", stream=quiet))
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("jobs", [1, 2])
def test_map_shared_results_do_not_depend_on_progress(jobs, caplog, no_ci):
    caplog.set_level(logging.INFO, logger="trial_analysis.progress")
    tasks = list(range(7))
    plain = map_shared(_square, 10, tasks, jobs)
    counted = map_shared(_square, 10, tasks, jobs, progress="squares")
    assert plain == counted == [10 + t * t for t in tasks]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("squares: 1/7 (14%)") and "ETA" in messages[0]
    assert messages[-1].startswith("squares: 7/7 done in")
