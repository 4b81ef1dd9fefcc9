"""Sensitivity analyses of an observational comparison: the CLI entry that dispatches them.

The ETMI comparison is not randomised (therapists chose whom to give ETMI) and most patients
lack a discharge score, so the primary mixed model rests on two untestable assumptions: no
unmeasured confounding given the covariates, and follow-up missing at random. The step
``sensitivity {analysis}`` probes both; :func:`run_sensitivity` reads the analysis table,
runs one analysis (each in its own module, see :mod:`trial_analysis.causal.common`) and
writes its estimate files. The analyses' modules are imported on demand, so a step pays only
for the one it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from trial_analysis.causal.common import ANALYSES, SensitivityResult
from trial_analysis.errors import ConfigError
from trial_analysis.io import read_analysis_table, write_csv, write_json
from trial_analysis.privacy import min_cell_count, suppress_json_counts, suppress_text_counts


def run_sensitivity(
    config: Mapping[str, Any],
    analysis: str | Path,
    analysis_name: str,
    out_json: str | Path,
    out_csv: str | Path,
    figures_dir: str | Path | None = None,
    estimates_dir: str | Path | None = None,
    imputations: str | Path | None = None,
) -> SensitivityResult:
    """CLI entry: run one sensitivity analysis and write ``sensitivity.{name}.json/.csv``.

    Parameters
    ----------
    config : mapping
        The validated study configuration.
    analysis : path
        The analysis table (``analysis.parquet``).
    analysis_name : str
        One of ``propensity``, ``doubly_robust``, ``evalue``, ``multiple_imputation``,
        ``tipping_point``, ``therapist_fixed_effects``.
    out_json, out_csv : path
        Outputs: the JSON document (estimates, tables, details) and the tidy rows as CSV.
    figures_dir : path, optional
        Where the love plot (``propensity``) and tipping-point plot are written (PNG + SVG).
    estimates_dir : path, optional
        Folder of the primary estimate files ``{outcome}.{population}.json``; required by
        ``evalue``; used by ``multiple_imputation`` to line complete-case, all-available and
        MI estimates up when present.
    imputations : path, optional
        The imputation file of the ``impute`` step (``imputations.parquet``), used by
        ``multiple_imputation`` and ``tipping_point`` instead of imputing again.
    """
    if analysis_name not in ANALYSES:
        raise ConfigError("command line", [f"analysis_name '{analysis_name}' is not one of "
                                           f"{ANALYSES}"])
    source = str(analysis)
    frame = read_analysis_table(analysis)
    if figures_dir is not None:
        # the folder is this step's declared output even for analyses that draw nothing
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
    shared = None
    if imputations is not None and analysis_name in ("multiple_imputation", "tipping_point"):
        from trial_analysis.causal.imputation import read_imputations

        shared = read_imputations(imputations, frame, config, source=source)
    if analysis_name == "propensity":
        from trial_analysis.causal.propensity import run_propensity_analysis

        result = run_propensity_analysis(frame, config, figures_dir=figures_dir, source=source)
    elif analysis_name == "doubly_robust":
        from trial_analysis.causal.doubly_robust import run_doubly_robust

        result = run_doubly_robust(frame, config, source=source)
    elif analysis_name == "evalue":
        from trial_analysis.causal.evalues import run_evalues

        if estimates_dir is None:
            raise ConfigError("command line", ["the evalue analysis needs --estimates-dir "
                                               "(the primary estimate files)"])
        result = run_evalues(frame, config, estimates_dir, source=source)
    elif analysis_name == "multiple_imputation":
        from trial_analysis.causal.imputation import run_multiple_imputation

        result = run_multiple_imputation(frame, config, estimates_dir=estimates_dir,
                                         source=source, imputations=shared)
    elif analysis_name == "tipping_point":
        from trial_analysis.causal.imputation import run_tipping_point

        result = run_tipping_point(frame, config, figures_dir=figures_dir, source=source,
                                   imputations=shared)
    else:
        from trial_analysis.causal.therapist_effects import fit_therapist_fixed_effects

        result = fit_therapist_fixed_effects(frame, config, source=source)
    # reports/ are read by people: counts of patients below report.min_cell_count as "<k"
    write_json(suppress_json_counts(result.to_json(), min_cell_count(config)), out_json)
    frame = result.to_frame()
    for column in frame.columns:
        if pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == "object":
            frame[column] = [suppress_text_counts(v, min_cell_count(config))
                             if isinstance(v, str) else v for v in frame[column]]
    write_csv(frame, out_csv)
    return result
