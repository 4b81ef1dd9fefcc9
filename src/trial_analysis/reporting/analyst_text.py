"""The analyst's own text: an optional Markdown file rendered into the report.

``report.text`` names a Markdown file (relative to the working directory) with up to two
sections, each opened by a level-1 heading: ``# Introduction`` (shown before the study and
design) and ``# Discussion`` (shown after the results). Inside a section, ``##`` headings
become the report's sub-headings.

The Markdown is CommonMark rendered by markdown-it-py with raw HTML switched **off**: a
``<script>`` or ``<img onerror=...>`` in the file is shown as the literal text, never run,
links with ``javascript:``, ``vbscript:`` or ``data:`` targets are not made links. The report
is one self-contained file that fetches and links to nothing outside it: an image is shown as
its alt text and a link to another address as its text with the address in brackets; links
to the report's own sections (``[Table 3](#primary)``) stay links.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markupsafe import Markup

from trial_analysis.errors import ConfigError

SLOTS = ("introduction", "discussion")


def _parser() -> Any:
    from markdown_it import MarkdownIt

    # "commonmark" with html off: raw HTML blocks and inline tags are escaped as text.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def _offline(children: list[Any]) -> None:
    """Images become their alt text and links out of the report plain text with the address
    in brackets: the report is one self-contained file that refers to nothing outside it."""
    from markdown_it.token import Token

    open_links: list[str | None] = []
    for k, token in enumerate(children):
        if token.type == "image":
            children[k] = Token("text", "", 0, content=token.content)
        elif token.type == "link_open":
            href = str(token.attrGet("href") or "")
            internal = href.startswith("#")
            open_links.append(None if internal else href)
            if not internal:
                children[k] = Token("text", "", 0, content="")
        elif token.type == "link_close" and open_links:
            href = open_links.pop()
            if href is not None:
                children[k] = Token("text", "", 0, content=f" ({href})")


def split_sections(text: str, source: str) -> dict[str, str]:
    """The Markdown of each slot, keyed ``introduction``/``discussion``.

    Problems (text before the first section heading, an unknown or repeated section) are a
    :class:`ConfigError` naming the file, so the analyst can fix it; nothing is dropped.
    """
    parser = _parser()
    tokens = parser.parse(text)
    lines = text.splitlines(keepends=True)
    starts: list[tuple[str, int, int]] = []  # (slot, heading line, first body line)
    problems = []
    first_content: int | None = None
    for i, token in enumerate(tokens):
        if token.map is None or token.level != 0 or token.nesting == -1:
            continue
        if first_content is None:
            first_content = token.map[0]
        if token.type == "heading_open" and token.tag == "h1":
            title = tokens[i + 1].content.strip()
            slot = title.casefold()
            if slot not in SLOTS:
                problems.append(f"report.text: section '# {title}' (line {token.map[0] + 1}) "
                                f"is not one of: # Introduction, # Discussion")
            elif slot in [s for s, _, _ in starts]:
                problems.append(f"report.text: section '# {title}' appears twice")
            starts.append((slot, token.map[0], token.map[1]))
    if first_content is not None and (not starts or first_content < starts[0][1]):
        problems.append(f"report.text: line {first_content + 1} comes before the first section "
                        "heading; start the file with '# Introduction' or '# Discussion'")
    if problems:
        raise ConfigError(source, problems)
    sections = {}
    for k, (slot, _, body) in enumerate(starts):
        end = starts[k + 1][1] if k + 1 < len(starts) else len(lines)
        sections[slot] = "".join(lines[body:end])
    return sections


def render_markdown(text: str) -> Markup:
    """One section's Markdown as safe HTML; headings move two levels down (``##`` -> h3)."""
    parser = _parser()
    tokens = parser.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + 1)}"
        elif token.type == "inline" and token.children:
            _offline(token.children)
    # html=False escapes every tag, so the output is safe to mark as such
    return Markup(parser.renderer.render(tokens, parser.options, {}))


def analyst_text(config: Mapping[str, Any]) -> dict[str, Markup]:
    """The rendered introduction and discussion of ``report.text``; an empty string for a
    slot the file does not fill (or without the file)."""
    empty = {slot: Markup("") for slot in SLOTS}
    name = (config.get("report") or {}).get("text")
    if not name:
        return empty
    path = Path(name)
    if not path.is_file():
        raise ConfigError("report.text", [f"the analyst's text file '{path}' does not exist "
                                          "(a path relative to the working directory)"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), [f"report.text is not UTF-8 text ({error.reason} at "
                                      f"byte {error.start})"]) from None
    sections = split_sections(text, str(path))
    return {**empty, **{slot: render_markdown(body) for slot, body in sections.items()
                        if body.strip()}}
