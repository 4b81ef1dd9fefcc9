"""Independent tasks over one large shared input, in worker processes (not a pipeline step).

The imputation chains and the outcome model fits each run many tasks that read the same data
(the analysis table, the imputation design). :func:`map_shared` hands that input to each
worker once, when it starts, instead of with every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

Shared = TypeVar("Shared")
Task = TypeVar("Task")
Result = TypeVar("Result")

# A worker process's function and shared input, inherited (fork) or sent once (spawn).
_WORKER: tuple[Callable[[Any, Any], Any], Any] | None = None


def _start_worker(function: Callable[[Any, Any], Any], shared: Any) -> None:
    global _WORKER
    _WORKER = (function, shared)


def _run_in_worker(task: Any) -> Any:
    assert _WORKER is not None, "worker started without its shared input"
    function, shared = _WORKER
    return function(shared, task)


def map_shared(function: Callable[[Shared, Task], Result], shared: Shared,
               tasks: Sequence[Task], jobs: int, progress: str | None = None) -> list[Result]:
    """``[function(shared, task) for task in tasks]``, in up to ``jobs`` processes.

    With ``jobs <= 1`` or a single task, in this process. Otherwise fork shares ``shared``
    without copying it (where the platform has fork); elsewhere each worker receives it once,
    pickled. ``function`` must be a module-level function. Results come in ``tasks`` order; an
    exception raised by a task is raised here (the project's errors survive pickling).
    With ``progress`` (what the tasks are, e.g. "imputation chains") finished tasks are
    counted, with an ETA, in the log (:mod:`trial_analysis.progress`); results are the same.
    """
    from trial_analysis.progress import track

    def counted(items: Iterable[Result] | Sequence[Task]) -> Iterable[Any]:
        return items if progress is None else track(items, progress, total=len(tasks))

    if jobs <= 1 or len(tasks) <= 1:
        return [function(shared, task) for task in counted(tasks)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                             mp_context=multiprocessing.get_context(method),
                             initializer=_start_worker, initargs=(function, shared)) as pool:
        return list(counted(pool.map(_run_in_worker, tasks)))
