"""Tests for trial_analysis.parallel: tasks over one shared input, in worker processes."""

from __future__ import annotations

import pytest

from trial_analysis.errors import DataError
from trial_analysis.parallel import map_shared


def _scaled(shared: dict[str, int], task: int) -> int:
    if task < 0:
        raise DataError("table.csv", "tasks must not be negative", rows=[task])
    return shared["factor"] * task


@pytest.mark.parametrize("jobs", [1, 3])
def test_results_come_in_task_order_for_any_number_of_processes(jobs: int) -> None:
    assert map_shared(_scaled, {"factor": 3}, [5, 1, 4, 2], jobs) == [15, 3, 12, 6]


def test_a_task_error_in_a_worker_is_raised_as_itself() -> None:
    with pytest.raises(DataError, match="tasks must not be negative"):
        map_shared(_scaled, {"factor": 1}, [1, -2, 3], jobs=2)
