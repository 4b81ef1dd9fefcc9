"""Generate the configuration reference in ``config/README.md`` from the schema.

The reference (every key, its type, default and meaning) is rendered from
``config/schema.yaml`` and written between two markers in ``config/README.md``; a test
re-renders it and fails when the two differ, so the documentation cannot drift from the
schema. Regenerate with ``trial-analysis config-docs --write config/README.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trial_analysis.config import load_schema

BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE (trial-analysis config-docs) -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        merged = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **merged}
    return node


def _type_of(node: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> str:
    alternatives = node.get("oneOf") or node.get("anyOf")
    if alternatives and "type" not in node:
        return " or ".join(_type_of(_resolve(alt, root or {}), root) for alt in alternatives)
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        items = node.get("items", {})
        inner = _type_of(items) if isinstance(items, Mapping) else "any"
        return f"list of {inner}"
    if kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
        return f"mapping to {_type_of(node['additionalProperties'])}"
    return str(kind)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def iter_keys(
    node: Mapping[str, Any], root: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, str, str, str, bool]]:
    """Yield ``(key path, type, default, description, required)`` for every documented key."""
    node = _resolve(node, root)
    required = set(node.get("required", []))
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        path = f"{prefix}{key}"
        default = json.dumps(sub["default"]) if "default" in sub else ""
        yield path, _type_of(sub, root), default, sub.get("description", ""), key in required
        if sub.get("type") == "object" or "properties" in sub:
            yield from iter_keys(sub, root, prefix=f"{path}.")
        for alternative in sub.get("oneOf", ()):
            alternative = _resolve(alternative, root)
            if "properties" in alternative:  # an optional table: document its keys
                yield from iter_keys(alternative, root, prefix=f"{path}.")
        items = sub.get("items")
        if sub.get("type") == "array" and isinstance(items, Mapping):
            items = _resolve(items, root)
            if "properties" in items:
                yield from iter_keys(items, root, prefix=f"{path}[].")


def render_config_reference(schema: Mapping[str, Any] | None = None) -> str:
    """Render the configuration reference as Markdown tables, one per top-level section."""
    schema = load_schema() if schema is None else schema
    lines = [
        BEGIN,
        "",
        "## Reference: every configuration key",
        "",
        "Generated from `config/schema.yaml`; do not edit by hand.",
        "",
    ]
    rows = list(iter_keys(schema, schema))
    sections = [path for path, *_ in rows if "." not in path]
    for section in sections:
        entries = [r for r in rows if r[0] == section or r[0].startswith(f"{section}.")]
        lines += [f"### `{section}`", "", "| key | type | default | required | meaning |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        for path, kind, default, description, required in entries:
            default_cell = f"`{default}`" if default else ""
            lines.append(
                f"| `{path}` | {_cell(kind)} | {_cell(default_cell)} | "
                f"{'yes' if required else ''} | {_cell(description)} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def update_readme(path: str | Path) -> bool:
    """Replace the generated section of ``path``; return True when the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: the markers {BEGIN!r} and {END!r} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + render_config_reference().rstrip("\n") + tail
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def generated_section(path: str | Path) -> str:
    """The generated section currently in ``path`` (markers included)."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    return text[start:end] + "\n"
