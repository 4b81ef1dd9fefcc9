"""trial-analysis: a reproducible analysis pipeline for pragmatic intervention studies.

One module per pipeline step (``simulate``, ``clean``, ``eligibility``, ``allocate``,
``models``, ``sessions``, ``responders``, ``tables``, ``figures``, ``report``); ``cli`` exposes
each as a ``trial-analysis`` subcommand that the Snakefile calls.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trial-analysis")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
