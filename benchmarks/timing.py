"""Timing of a child process, shared by the benchmark scripts (not a test)."""

from __future__ import annotations

import resource
import subprocess
import sys
import time


def run_timed(command: list[str], env: dict[str, str], failure: str) -> tuple[float, float, float]:
    """Run ``command``; wall seconds, CPU seconds (it and its children) and the peak resident
    memory (MiB) of the largest child process so far. Exits with ``failure`` and the end of
    the command's standard error if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{failure}:\n{result.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest single descendant so far, in KiB on Linux
    return wall, cpu, after.ru_maxrss / 1024
