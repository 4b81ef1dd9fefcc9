"""The package's layout keeps its promises: stages in order, no import circle, no giant function.

The import graph is read from the source (every ``import`` and ``from ... import`` of a
``trial_analysis`` module, at module level or inside a function, since a lazy import can close
a circle as well as an eager one), so the checks need no import of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "trial_analysis"

# Stages in pipeline order: a stage may import an earlier one, never a later one. The top-level
# helpers (config, errors, io, ...) are below every stage; cli sits above all of them.
STAGES = ["ingest", "cohort", "models", "causal", "reporting", "simulation"]
MAX_FUNCTION_LINES = 200
MAX_CLASS_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import mod`` resolved to mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module not in modules:
                    continue
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_anywhere_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def test_a_stage_imports_only_earlier_stages_and_the_top_level_helpers() -> None:
    wrong = []
    for module, targets in import_graph().items():
        here = _stage(module)
        for target in targets:
            there = _stage(target)
            if module == "trial_analysis.cli" or there is None or here == there:
                if here is None and there is not None and module != "trial_analysis.cli":
                    wrong.append(f"top-level {module} imports the stage module {target}")
                continue
            if here is None or STAGES.index(there) > STAGES.index(here):
                wrong.append(f"{module} imports the later stage's {target}")
    assert not wrong, "\n".join(sorted(wrong))


def _long_definitions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            elif isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            else:
                continue
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if length > limit:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} "
                             f"lines (limit {limit})")
    return found


def test_no_function_over_200_lines_and_no_class_over_400() -> None:
    long = _long_definitions()
    assert not long, "\n".join(long)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_a_test_folder(stage: str) -> None:
    assert (PACKAGE / stage / "__init__.py").is_file()
    assert list((REPO / "tests" / stage).glob("test_*.py")), f"tests/{stage}/ has no tests"


def test_no_two_test_modules_share_a_name() -> None:
    # The test folders are not packages (rootdir imports): two test_x.py files in different
    # folders stop pytest from collecting the suite at all.
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
