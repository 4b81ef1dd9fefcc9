"""trial-analysis: a reproducible analysis pipeline for pragmatic intervention studies.

One module per pipeline step (``simulate``, ``clean``, ``eligibility``, ``allocate``,
``models``, ``sessions``, ``responders``, ``tables``, ``figures``, ``report``); ``cli`` exposes
each as a ``trial-analysis`` subcommand that the Snakefile calls.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # ``__version__`` is looked up on first use: importlib.metadata costs every step process a
    # tenth of a second, and only ``--version`` and the report need it.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("trial-analysis")
        except PackageNotFoundError:  # running from a source tree that is not installed
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
