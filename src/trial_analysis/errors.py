"""Errors the pipeline reports to people, not as tracebacks.

Every problem with input data or configuration is raised as a :class:`TrialAnalysisError`
subclass. The command line prints ``str(error)`` and exits with status 2; it never shows a
Python traceback for these. A message names the file, the column, example rows and the rule
that was broken, so the user can find and fix the record.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

# A message shows at most this much of any one value: a cell can be megabytes long, and
# messages reach terminals, logs and people who must not see whole records.
EXCERPT_CHARS = 80
# ... and at most this much in all (a list of problems stays readable).
MESSAGE_CHARS = 4000
# A quoted value: the opening quote after a non-word character, the closing one before one
# (so that the text between two quoted values is not taken for one).
_QUOTED = re.compile(f"(?<!\\w)'[^'\\n]{{{EXCERPT_CHARS + 1},}}'(?!\\w)"
                     f"|(?<!\\w)\"[^\"\\n]{{{EXCERPT_CHARS + 1},}}\"(?!\\w)")
_LONG_WORD = re.compile(f"[^\\s/]{{{4 * EXCERPT_CHARS},}}")


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters (``...`` and the length when cut)."""
    text = str(value)
    if len(text) <= limit:
        return text
    note = f"... ({len(text):,} characters)"
    return text[: max(1, limit - len(note))] + note


def bounded(message: str) -> str:
    """``message`` with every quoted value longer than :data:`EXCERPT_CHARS`, and any word
    of over four times that without a path separator, cut to an excerpt; at most
    :data:`MESSAGE_CHARS` characters in all. Linear in the message's length."""
    if len(message) <= EXCERPT_CHARS:
        return message
    message = _QUOTED.sub(lambda m: m.group(0)[0] + excerpt(m.group(0)[1:-1])
                          + m.group(0)[0], message)
    message = _LONG_WORD.sub(lambda m: excerpt(m.group(0)), message)
    return excerpt(message, MESSAGE_CHARS)


class TrialAnalysisError(Exception):
    """Base class for errors that are reported to the user in plain words."""

    exit_code = 2


class ConfigError(TrialAnalysisError):
    """The configuration is invalid. ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} configuration problem(s):"]
        lines += [f"  - {bounded(p)}" for p in self.problems]
        super().__init__(bounded("\n".join(lines)))

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        # Rebuilt from its own arguments when it crosses processes (a fit or imputation worker
        # raising it): pickle's default would call __init__ with the message alone.
        return type(self), (self.source, self.problems)


def _normalised(word: object) -> str:
    # Case, spaces, underscores and dots are how the same name most often differs between a
    # config and a spreadsheet header ("patient_id" vs "PatientID", "Dischrage " vs "discharge").
    return re.sub(r"[\W_]+", "", str(word).casefold())


def closest_match(word: object, candidates: Iterable[object], cutoff: float = 0.6) -> str | None:
    """The candidate a mistyped ``word`` most probably meant, or None if none is close.

    A candidate equal to ``word`` once case, spaces, underscores and punctuation are ignored
    wins outright; otherwise the closest by :func:`difflib.get_close_matches` on the
    case-folded spellings, if at least ``cutoff`` similar.

    Examples
    --------
    >>> closest_match("patient_id", ["PatientID", "BirthDate"])
    'PatientID'
    >>> closest_match("Dischrage", ["intake", "discharge"])
    'discharge'
    """
    spellings = [c for c in dict.fromkeys(str(c) for c in candidates)
                 if len(c) <= 4 * EXCERPT_CHARS]
    if len(str(word)) > 4 * EXCERPT_CHARS:
        return None  # not a misspelt name; difflib would take minutes over a huge cell
    target = _normalised(word)
    if target:
        for candidate in spellings:
            if _normalised(candidate) == target:
                return candidate
    folded: dict[str, str] = {}
    for candidate in spellings:
        folded.setdefault(candidate.casefold(), candidate)
    close = difflib.get_close_matches(str(word).casefold(), list(folded), n=1, cutoff=cutoff)
    return folded[close[0]] if close else None


def did_you_mean(word: object, candidates: Iterable[object]) -> str:
    """``"did you mean 'x'?"`` for the closest candidate, or an empty string if none is close."""
    match = closest_match(word, candidates)
    return f"did you mean '{match}'?" if match is not None else ""


def _format_rows(rows: Iterable[object], limit: int = 5) -> str:
    rows = list(rows)
    shown = ", ".join(excerpt(r) for r in rows[:limit])
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{shown}{more}"


class DataError(TrialAnalysisError):
    """Input data break a rule.

    Parameters
    ----------
    file : str
        The file (or table) the problem was found in.
    rule : str
        The rule broken, in plain words (``"scores must be numbers"``).
    column : str, optional
        The column concerned.
    rows : iterable, optional
        Example row numbers (1-based data rows, as a spreadsheet user counts them after the
        header) or record identifiers; at most five are shown.
    hint : str, optional
        What to do about it.
    """

    def __init__(
        self,
        file: str,
        rule: str,
        column: str | None = None,
        rows: Iterable[object] | None = None,
        hint: str | None = None,
    ):
        self.file = str(file)
        # Values quoted in the rule or hint (and a column name) are cut to an excerpt.
        self.rule = bounded(str(rule))
        self.column = None if column is None else excerpt(column)
        self.rows = list(rows) if rows is not None else []
        self.hint = None if hint is None else bounded(str(hint))
        rule, hint = self.rule, self.hint
        parts = [f"{self.file}"]
        if column is not None:
            parts.append(f"column '{self.column}'")
        if self.rows:
            parts.append(f"rows {_format_rows(self.rows)}")
        message = ", ".join(parts) + f": {rule}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # see ConfigError.__reduce__
        return type(self), (self.file, self.rule, self.column, self.rows, self.hint)
