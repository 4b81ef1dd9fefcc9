"""trial-analysis: a reproducible analysis pipeline for pragmatic intervention studies.

One subpackage per stage of the analysis, one module per pipeline step:

- ``ingest``: readers, schemas, clean, check_data
- ``cohort``: eligibility, allocate
- ``models``: outcome_models, fast_lmm, lmm_inference, sessions, responders, robust,
  distributions
- ``causal``: sensitivity (dispatcher), propensity, imputation, evalues, common
- ``reporting``: tables, figures, report (and its templates)
- ``simulation``: simulate, simulation_study

Top level: ``cli`` (each step as a ``trial-analysis`` subcommand that the Snakefile calls),
``config``, ``config_docs``, ``errors``, ``io``, ``parallel`` and ``plotting`` (the figure
style shared by reporting and causal). A stage imports only earlier stages and the top-level
helpers, never a later one; ``tests/test_repository.py`` fails on any import circle.
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
