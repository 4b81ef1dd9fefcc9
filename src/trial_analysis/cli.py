"""The ``trial-analysis`` command line: one subcommand per pipeline step.

The Snakefile calls these; people can too. Each subcommand's ``--help`` says what it reads and
writes. Problems with input or configuration print one short message naming the file, column,
rows and rule, and exit with status 2, without a Python traceback; outputs are written
atomically, so a failed step leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import importlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trial_analysis.errors import ConfigError, TrialAnalysisError, bounded

log = logging.getLogger("trial_analysis")

# What a step's `--help` shows: one (flags, add_argument options) pair per argument.
_Arg = tuple[Sequence[str], dict[str, Any]]


def _path(help_text: str, **extra: Any) -> dict[str, Any]:
    return {"type": Path, "required": True, "help": help_text, **extra}


def _file(flag: str, help_text: str, **extra: Any) -> _Arg:
    """A required path option: a file or folder the step reads or writes."""
    return (flag,), _path(help_text, **extra)


def _optional_file(flag: str, help_text: str) -> _Arg:
    """A path option the step can do without (None when not given)."""
    return (flag,), {"type": Path, "default": None, "help": help_text}


def _name(flag: str, help_text: str, **extra: Any) -> _Arg:
    """A required name (outcome, population, subgroup, scenario ...)."""
    return (flag,), {"required": True, "help": help_text, **extra}


def _jobs(help_text: str) -> _Arg:
    return ("--jobs",), {"type": int, "default": 1, "help": help_text}


CONFIG: _Arg = _file("--config", "study configuration (YAML), validated against the schema")
ANALYSIS: _Arg = _file("--analysis", "analysis table (Parquet), written by `allocate`")
OUT_JSON: _Arg = _file("--out-json", "estimate file to write (JSON)")
OUT_CSV: _Arg = _file("--out-csv", "the same estimates as a tidy CSV")
# A chunk of replicates (simulation and stress studies).
REPLICATES: _Arg = (("--replicates",), {"default": None, "metavar": "A:B",
                                        "help": "replicates A..B-1 (0-based; default: all)"})
CLEAN: _Arg = _file("--clean", "folder of cleaned tables")
ESTIMATES: _Arg = _file("--estimates", "folder of estimate files")
TABLES: _Arg = _file("--tables", "folder of tables")
OUTCOME: _Arg = _name("--outcome", "outcome name from config")


@dataclass(frozen=True)
class Step:
    """One subcommand: the function it runs, its help, and what it reads and writes."""

    module: str
    function: str
    help: str
    reads: str
    writes: str
    args: tuple[_Arg, ...]

    @property
    def target(self) -> tuple[str, str]:
        """(module, function) the dispatcher imports and calls."""
        return self.module, self.function

    @property
    def description(self) -> str:
        return f"Reads: {self.reads} Writes: {self.writes}"


def _estimate_step(module: str, function: str, help_text: str, reads: str, writes: str,
                   *options: _Arg) -> Step:
    """A step that reads the config and the analysis table (plus ``options``) and writes one
    estimate file as JSON (--out-json) and CSV (--out-csv)."""
    return Step(module, function, help_text, reads, writes,
                (CONFIG, ANALYSIS, *options, OUT_JSON, OUT_CSV))


STEPS: dict[str, Step] = {
    "simulate": Step(
        "trial_analysis.simulation.simulate", "run_simulate",
        "write a simulated raw extract (the default study's data)",
        reads="the config (simulation.targets and simulation.assumptions).",
        writes="therapists, patients, sessions and outcomes tables and truth.json to --out.",
        args=(
            CONFIG,
            (("--seed",), {"type": int, "default": None, "help": "seed (default: config seed)"}),
            _file("--out", "folder for the raw extract (e.g. data/raw)"),
            (("--layout",), {"choices": ["long", "wide"], "default": None,
                             "help": "outcomes layout (default: config input.outcomes_layout)"}),
            (("--format",), {"dest": "file_format", "choices": ["csv", "parquet"],
                             "default": None,
                             "help": "file format (default: config input.format)"}),
            (("--n-patients",), {"type": int, "default": None,
                                 "help": "scale the cohort to this many eligible patients "
                                         "(default: the published 4193)"}),
        ),
    ),
    "clean": Step(
        "trial_analysis.ingest.clean", "run_clean",
        "validate and repair the raw tables; write the cleaning ledger",
        reads="the raw tables named in config input.tables under --raw.",
        writes="one Parquet file per table under --out and the ledger (one row per raw record "
               "with its fate) to --ledger.",
        args=(
            CONFIG,
            _file("--raw", "folder of the raw extract"),
            _file("--out", "folder for the cleaned tables (Parquet)"),
            _file("--ledger", "cleaning ledger to write (Parquet)"),
        ),
    ),
    "check-data": Step(
        "trial_analysis.ingest.check_data", "run_check_data",
        "check the raw extract against the config and report every problem at once",
        reads="the raw tables named in config input.tables under --raw (default: config "
              "paths.raw), with the cleaning step's own rules.",
        writes="a report of every problem per file to standard output (errors, which would "
               "stop the pipeline; warnings, rows or values cleaning would drop or set "
               "missing; notes), and the same as JSON to --out. Exit status 2 if any problem "
               "would stop the pipeline.",
        args=(
            # `trial-analysis check-data CONFIG`, like validate-config; --config also works.
            (("config_file",), {"type": Path, "nargs": "?", "default": None,
                                "metavar": "CONFIG", "help": "study configuration (YAML)"}),
            _optional_file("--config", "study configuration (YAML), instead of CONFIG"),
            _optional_file("--raw", "folder of the raw extract (default: config paths.raw)"),
            _optional_file("--out", "also write the report as JSON to this file"),
        ),
    ),
    "eligibility": Step(
        "trial_analysis.cohort.eligibility", "run_eligibility",
        "apply the eligibility rules; write the cohort, final ledger and flow counts",
        reads="cleaned tables (--clean) and the cleaning ledger.",
        writes="the eligible cohort (one row per patient), the final ledger, and the STROBE "
               "flow counts up to eligibility (computed from the ledger).",
        args=(
            CONFIG, CLEAN,
            _file("--clean-ledger", "cleaning ledger (Parquet)"),
            _file("--cohort", "eligible cohort to write (Parquet)"),
            _file("--ledger", "final ledger to write (Parquet)"),
            _file("--flow", "flow counts up to eligibility to write (CSV)"),
        ),
    ),
    "allocate": Step(
        "trial_analysis.cohort.allocate", "run_allocate",
        "assign arms, primary therapists, fidelity and complete-case flags",
        reads="the cohort, cleaned sessions/outcomes/therapists and the eligibility flow.",
        writes="the analysis table (one row per patient), the full flow table, the "
               "implementation outcomes table and per-therapist fidelity.",
        args=(
            CONFIG,
            _file("--cohort", "eligible cohort (Parquet)"),
            CLEAN,
            _file("--flow-in", "flow counts up to eligibility (CSV)"),
            _file("--analysis", "analysis table to write (Parquet)"),
            _file("--flow", "complete flow table to write (CSV)"),
            _file("--implementation", "implementation outcomes table to write (CSV)"),
            _file("--fidelity", "per-therapist fidelity table to write (CSV)"),
        ),
    ),
    "fit-models": Step(
        "trial_analysis.models.outcome_models", "run_fit_models",
        "fit every model of every outcome: each population and each subgroup",
        reads="the analysis table (once).",
        writes="for each outcome, for each of analysis.populations "
               "{outcome}.{population}.json/.csv and for each of analysis.subgroups "
               "{outcome}.subgroup_{subgroup}.json/.csv in --out-dir; the same files as `fit` "
               "and `fit-subgroup` give one at a time, for any --jobs.",
        args=(
            CONFIG, ANALYSIS,
            (("--outcomes", "--outcome"), {"nargs": "+", "default": None, "metavar": "OUTCOME",
                                           "help": "outcome names from config (default: all)"}),
            _jobs("processes to fit the outcomes in (default 1)"),
            _file("--out-dir", "folder of the estimate files to write"),
        ),
    ),
    "fit": _estimate_step(
        "trial_analysis.models.outcome_models", "run_fit",
        "fit the primary linear mixed model for one outcome and population",
        "the analysis table.",
        "tidy estimates (arm x time effect with SE, CI, p; variance components; marginal "
        "means) as JSON and CSV.",
        OUTCOME, _name("--population", "complete_case or all_available"),
    ),
    "fit-subgroup": _estimate_step(
        "trial_analysis.models.outcome_models", "run_fit_subgroup",
        "fit the arm x time x subgroup model for one outcome and subgroup",
        "the analysis table.",
        "the effect within each subgroup level, the heterogeneity test and stratified fits, "
        "as JSON and CSV.",
        OUTCOME, _name("--subgroup", "subgroup variable from config"),
    ),
    "sessions": _estimate_step(
        "trial_analysis.models.sessions", "run_sessions",
        "model the number of treatment sessions by arm",
        "the analysis table.",
        "negative binomial ratio of means with therapist-clustered CI (and the Poisson "
        "sensitivity), as JSON and CSV.",
    ),
    "responders": _estimate_step(
        "trial_analysis.models.responders", "run_responders",
        "responder analysis at each outcome's MCID",
        "the analysis table.",
        "proportions improving by at least the MCID by arm, risk difference and odds ratio "
        "with CIs, as JSON and CSV.",
    ),
    "impute": Step(
        "trial_analysis.causal.imputation", "run_impute",
        "multiple imputation (chained equations, PMM), shared by MI and tipping point",
        reads="the analysis table (config sensitivity.multiple_imputation and seed).",
        writes="the imputed cells of every imputation as Parquet to --out, read by the "
               "multiple_imputation and tipping_point sensitivity analyses (--imputations). "
               "The file is the same whatever --jobs is.",
        args=(
            CONFIG, ANALYSIS,
            _file("--out", "imputation file to write (Parquet)"),
            _jobs("processes running the imputation chains (default 1)"),
        ),
    ),
    "sensitivity": Step(
        "trial_analysis.causal.sensitivity", "run_sensitivity",
        "one sensitivity analysis of the observational comparison",
        reads="the analysis table (and, for evalue and multiple_imputation, the primary "
              "estimate files; for multiple_imputation and tipping_point, the imputation file "
              "of `impute` when given).",
        writes="tidy estimates as JSON and CSV; the love plot or tipping-point figure to "
               "--figures-dir.",
        args=(
            CONFIG, ANALYSIS,
            _name("--analysis-name", "which analysis",
                  choices=["propensity", "doubly_robust", "evalue", "multiple_imputation",
                           "tipping_point", "therapist_fixed_effects"]),
            OUT_JSON, OUT_CSV,
            _optional_file("--figures-dir", "folder for this analysis's figures"),
            _optional_file("--estimates-dir", "folder of the primary estimate files"),
            _optional_file("--imputations", "imputation file written by `impute` "
                                            "(multiple_imputation, tipping_point; else they "
                                            "impute themselves)"),
        ),
    ),
    "population-analysis": Step(
        "trial_analysis.causal.populations", "run_population_analysis",
        "the cohort and analysis table of the other population (reproduction or target trial)",
        reads="cleaned tables (--clean) and the cleaning ledger, through the eligibility and "
              "allocation rules with target_trial.population set to --population.",
        writes="that population's eligible cohort and analysis table (Parquet), as a run with "
               "that population would.",
        args=(
            CONFIG, CLEAN,
            _file("--clean-ledger", "cleaning ledger (Parquet)"),
            _name("--population", "reproduction or target_trial",
                  choices=["reproduction", "target_trial"]),
            _file("--cohort", "eligible cohort to write (Parquet)"),
            _file("--analysis", "analysis table to write (Parquet)"),
        ),
    ),
    "estimators-by-population": Step(
        "trial_analysis.causal.populations", "run_estimators_by_population",
        "the estimators side by side in the reproduction and the target-trial population",
        reads="the main analysis table (--analysis, population target_trial.population) and "
              "the other population's (--other-analysis, from `population-analysis`).",
        writes="per population, outcome and estimator (change-score mixed model, change "
               "score, ANCOVA, doubly robust, bracketing) the estimate with N per arm, as CSV "
               "and JSON.",
        args=(
            CONFIG, ANALYSIS,
            _file("--other-analysis", "the other population's analysis table (Parquet)"),
            OUT_CSV, OUT_JSON,
        ),
    ),
    "tables": Step(
        "trial_analysis.reporting.tables", "run_tables",
        "write the report tables (Table 1, estimates, subgroups, ...) as CSV",
        reads="the analysis table and estimate files.",
        writes="CSV tables to --out.",
        args=(CONFIG, ANALYSIS, ESTIMATES, _file("--out", "folder for the tables")),
    ),
    "figures": Step(
        "trial_analysis.reporting.figures", "run_figures",
        "draw the report figures (PNG and SVG)",
        reads="the analysis table, estimate files and tables.",
        writes="flow diagram, trajectories, forest plot, sessions and implementation figures "
               "to --out.",
        args=(CONFIG, ANALYSIS, ESTIMATES, TABLES, _file("--out", "folder for the figures")),
    ),
    "diagnostics": Step(
        "trial_analysis.reporting.diagnostics_appendix", "run_diagnostics",
        "diagnose the primary models: residuals, random effects, cluster influence",
        reads="the analysis table (the primary model of each outcome is refitted).",
        writes="diagnostics_<outcome>.png/.svg to --figures and diagnostics.csv to --tables.",
        args=(CONFIG, ANALYSIS, _file("--figures", "folder for the figures"),
              _file("--tables", "folder for diagnostics.csv")),
    ),
    "exports": Step(
        "trial_analysis.reporting.exports", "run_exports",
        "write Table 1, the primary results and the sensitivity table as .docx and LaTeX",
        reads="the tables folder's CSVs and the sensitivity estimate files.",
        writes="<table>.docx and <table>.tex beside the CSVs in --tables (and "
               "sensitivity.csv).",
        args=(CONFIG, ESTIMATES, TABLES),
    ),
    "report": Step(
        "trial_analysis.reporting.report", "run_report",
        "assemble the self-contained HTML report",
        reads="tables, figures, estimates, the raw files read and the analysis table (for "
              "digests), the cleaning ledger (queries and row counts) and rule benchmarks.",
        writes="one self-contained HTML file (images embedded).",
        args=(
            CONFIG,
            _file("--raw", "folder of the raw extract (checksummed for provenance)"),
            ESTIMATES, TABLES,
            _file("--figures", "folder of figures"),
            _optional_file("--benchmarks", "folder of Snakemake benchmark files (run times)"),
            _file("--out", "report to write (HTML)"),
            _optional_file("--analysis", "analysis table (its digest is shown; no row is read)"),
            _optional_file("--ledger", "cleaning ledger (its queries and row counts are listed "
                           "under provenance)"),
            _optional_file("--stress-summary",
                           "summary.json of the design stress study (adds its table)"),
            _optional_file("--stress-study",
                           "the stress study file: the summary is shown only when its design "
                           "signature equals this run's"),
        ),
    ),
    "simulate-study": Step(
        "trial_analysis.simulation.simulation_study", "run_simulate_study",
        "simulation study: run one chunk of replicates of one scenario",
        reads="the config (its simulation section) and the simulation study file.",
        writes="one CSV row per replicate x outcome x population (estimate, SE, CI, p, "
               "status) to --out.",
        args=(
            CONFIG,
            _file("--study", "simulation study file (e.g. config/simulation_study.yaml)"),
            _name("--scenario", "scenario name from the study file"),
            REPLICATES,
            _file("--out", "chunk CSV to write"),
        ),
    ),
    "simulate-study-summary": Step(
        "trial_analysis.simulation.simulation_study", "run_simulate_study_summary",
        "simulation study: bias, empirical SE, coverage, power with Monte Carlo SEs",
        reads="the config, the simulation study file and every chunk CSV.",
        writes="one row per scenario x outcome x population as CSV and JSON.",
        args=(
            CONFIG,
            _file("--study", "simulation study file"),
            _file("--chunks", "chunk CSVs written by simulate-study", nargs="+"),
            OUT_CSV, OUT_JSON,
        ),
    ),
    "stress-study": Step(
        "trial_analysis.simulation.stress_study", "run_stress_study",
        "design stress study: one chunk of replicates of one mechanism, every estimator",
        reads="the config (its simulation section) and the stress study file.",
        writes="one CSV row per replicate x estimator (estimate, SE, CI, p, status) to --out.",
        args=(
            CONFIG,
            _file("--study", "stress study file (e.g. config/stress_study.yaml)"),
            _name("--scenario", "scenario name from the study file"),
            REPLICATES,
            _file("--out", "chunk CSV to write"),
        ),
    ),
    "stress-study-summary": Step(
        "trial_analysis.simulation.stress_study", "run_stress_study_summary",
        "design stress study: bias, SEs, coverage, power per mechanism and estimator",
        reads="the config, the stress study file and every chunk CSV.",
        writes="one row per scenario x estimator as CSV, JSON and a markdown table.",
        args=(
            CONFIG,
            _file("--study", "stress study file"),
            _file("--chunks", "chunk CSVs written by stress-study", nargs="+"),
            OUT_CSV, OUT_JSON,
            _file("--out-md", "markdown table to write"),
            _file("--out-figure", "figure to write (PNG): which estimator holds where"),
        ),
    ),
}


def _validate_config_command(args: argparse.Namespace) -> int:
    from trial_analysis.config import load_config

    load_config(args.config_file, trust_stamp=False)  # a check is asked for: check in full
    print(f"{args.config_file}: valid")
    return 0


def _config_docs_command(args: argparse.Namespace) -> int:
    from trial_analysis.config_docs import render_config_reference, update_readme

    if args.write is None:
        print(render_config_reference(), end="")
    else:
        changed = update_readme(args.write)
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
    return 0


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def config_override_problems(snakemake_args: Sequence[str]) -> list[str]:
    """What is wrong with the ``--config KEY=VALUE`` items of a Snakemake command line.

    Snakemake stops on a key that is not a plain name (``analysis.reml=false``) with a raw
    ValueError; this says what to write instead.
    """
    problems = []
    in_config = False
    for arg in snakemake_args:
        if arg in ("--config", "-C"):
            in_config = True
            continue
        if arg.startswith("-"):
            in_config = False
            continue
        if in_config and not _OVERRIDE.match(arg):
            key = arg.split("=", 1)[0]
            if "." in key and "=" in arg:
                head, _, rest = key.partition(".")
                value = arg.split("=", 1)[1]
                nested = "{" + ": {".join(rest.split(".")) + f": {value}" + "}" * (
                    rest.count(".") + 1)
                problems.append(f"'{arg}': a dotted key is not a nested key for Snakemake; "
                                f"write {head}=\"{nested}\" or put it in a study config "
                                "(--configfile)")
            else:
                problems.append(f"'{arg}': an override must be KEY=VALUE with KEY a plain name "
                                "(letters, digits, _)")
    return problems


def _pipeline_command(args: argparse.Namespace) -> int:
    snakemake_args = list(args.snakemake_args)
    if snakemake_args[:1] == ["--"]:
        snakemake_args = snakemake_args[1:]
    problems = config_override_problems(snakemake_args)
    if problems:
        raise ConfigError(f"the command line (snakemake {' '.join(snakemake_args)})",
                          problems)
    state = _workdir(snakemake_args) / ".snakemake"
    state.mkdir(parents=True, exist_ok=True)
    # Our own lock, which the kernel releases when its holder dies (even by kill -9): held,
    # no other `pipeline` runs here, so Snakemake's lock files, which outlive a killed run
    # and make every rerun refuse, are stale and can go.
    with open(state / "trial-analysis-pipeline.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError("the command line", [
                f"another `trial-analysis pipeline` is running in {state.parent}; wait for it "
                "to end"]) from None
        stale = sorted((state / "locks").glob("*.lock")) if (state / "locks").is_dir() else []
        if stale:
            log.warning("removing %d lock file(s) left by an interrupted run", len(stale))
            for lock in stale:
                lock.unlink(missing_ok=True)
        return subprocess.call([sys.executable, "-m", "snakemake", *snakemake_args])


def _workdir(snakemake_args: Sequence[str]) -> Path:
    """The folder Snakemake works in: its --directory (-d), else the current one."""
    for i, arg in enumerate(snakemake_args):
        if arg in ("--directory", "-d") and i + 1 < len(snakemake_args):
            return Path(snakemake_args[i + 1])
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1])
    return Path.cwd()


class _VersionAction(argparse.Action):
    """``--version``: the package version is looked up only when asked for (it is slow)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import trial_analysis

        print(f"{parser.prog} {trial_analysis.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per pipeline step."""
    parser = argparse.ArgumentParser(
        prog="trial-analysis",
        description=(
            "Reproducible analysis of a pragmatic intervention study. Each subcommand is one "
            "step of the Snakemake pipeline; run `snakemake -c2` to run them all."
        ),
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, dest=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, help="show program's version number and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    for name, spec in STEPS.items():
        step = sub.add_parser(name, help=spec.help, description=spec.description)
        for flags, options in spec.args:
            step.add_argument(*flags, **options)
        step.set_defaults(target=spec.target)
    check = sub.add_parser(
        "validate-config",
        help="check a study configuration against the schema and report every problem",
        description="Reads: a config file. Writes: nothing; prints every problem found.",
    )
    check.add_argument("config_file", type=Path, metavar="CONFIG")
    check.set_defaults(handler=_validate_config_command)
    docs = sub.add_parser(
        "config-docs",
        help="print the configuration reference generated from the schema",
        description=(
            "Reads: the packaged schema. Writes: the reference to standard output, or into the "
            "generated section of the Markdown file given with --write."
        ),
    )
    docs.add_argument("--write", type=Path, default=None, metavar="README",
                      help="update the generated section of this file (config/README.md)")
    docs.set_defaults(handler=_config_docs_command)
    pipeline = sub.add_parser(
        "pipeline",
        help="run the Snakemake pipeline (what `make report` does), checking --config first",
        description=(
            "Reads: the Snakemake arguments after it (e.g. --cores 2 --config seed=7). Writes: "
            "what the pipeline writes. A malformed --config override is reported in plain "
            "words before Snakemake starts; the exit status is Snakemake's."
        ),
    )
    pipeline.add_argument("snakemake_args", nargs=argparse.REMAINDER, metavar="ARGS")
    pipeline.set_defaults(handler=_pipeline_command)
    return parser


def _import_without_collection(name: str) -> ModuleType:
    """Import ``name`` with the cyclic garbage collector paused.

    Importing pandas, scipy and pyarrow allocates hundreds of thousands of objects that live
    for the whole step, and the collector sweeps them again and again while they load. With
    the pause those imports took a median 7 % less CPU (8 whole-process runs, a noisy machine;
    too small to see in a whole pipeline run). Any garbage an import leaves is collected once
    the collector resumes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        if enabled:
            gc.enable()


def _run_step(args: argparse.Namespace) -> int:
    module_name, function_name = args.target
    # the step's module first: it brings pandas and the rest, which config loading shares
    module = _import_without_collection(module_name)
    from trial_analysis.config import load_config

    kwargs = {
        k: v for k, v in vars(args).items() if k not in {"command", "target", "quiet", "handler"}
    }
    given = kwargs.pop("config_file", None) or kwargs["config"]
    if given is None:
        raise ConfigError(args.command, ["give the study configuration: CONFIG or --config"])
    kwargs["config"] = load_config(given)
    function: Callable[..., Any] = getattr(module, function_name)
    function(**kwargs)
    return 0


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space (or set paths.* to another disk) and rerun",
    errno.EDQUOT: "the disk quota is exceeded: free some space and rerun",
    errno.EACCES: "permission denied: check who may write to this folder",
    errno.EPERM: "operation not permitted: check the file's owner and permissions",
    errno.EROFS: "the file system is read-only: write the outputs elsewhere (paths.*)",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where a file is needed",
}


def os_error_text(error: OSError) -> str:
    """An operating-system error in one line: the file, the cause and what to do."""
    name = error.filename if error.filename is not None else "writing or reading a file"
    cause = error.strerror or str(error)
    hint = _OS_HINTS.get(error.errno or -1)
    return bounded(f"{name}: {cause}" + (f"; {hint}" if hint else ""))


def _bounded_record(record: logging.LogRecord) -> bool:
    """Log lines quote values as excerpts (a header cell can be megabytes long)."""
    record.msg, record.args = bounded(record.getMessage()), None
    return True


# Environment variables that set the thread count of numpy's BLAS; read once, when numpy loads.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _one_blas_thread_unless_set() -> None:
    """One BLAS thread per step unless the user chose otherwise.

    The steps' matrices are tall and narrow: extra BLAS threads gain little, compete with the
    jobs Snakemake runs beside them (a 1M-row cross-product ran 50 times slower), and make the
    last digits of an estimate depend on the machine's core count. Must run before numpy loads.
    """
    for variable in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trial-analysis`` command."""
    _one_blas_thread_unless_set()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pipeline"] and argv[1:2] not in (["-h"], ["--help"]):
        # Snakemake's own options follow; argparse would take them for this command's.
        args = argparse.Namespace(command="pipeline", quiet=False, snakemake_args=argv[1:],
                                  handler=_pipeline_command)
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_bounded_record)
    try:
        handler = getattr(args, "handler", None)
        return handler(args) if handler else _run_step(args)
    except TrialAnalysisError as error:
        print(f"trial-analysis {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        # A full disk, a folder without write permission, a file where a folder should be:
        # one line naming the file and the cause, not a traceback.
        print(f"trial-analysis {args.command}: error: {os_error_text(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
