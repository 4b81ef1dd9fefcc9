# trial-analysis: the analysis plan, made executable.
#
# Each rule is one step of the plan and a thin call to the `trial-analysis` command line;
# all logic lives in src/trial_analysis/. The plan grows by config (outcomes, populations,
# subgroups), not by new rules. Run `snakemake -c2` for the default study, `snakemake -n` to
# see the whole plan without running it, `snakemake --configfile my_study.yaml -c2` for yours.

import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# The configuration is checked by the package's own validation, the one the steps' commands
# apply: config/schema.yaml plus the cross-field checks, every problem listed at once, before
# any job starts. (It reads the schema with libyaml; Snakemake's own validate() spends about
# half a second parsing the same file at every start.)
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from trial_analysis.config import (
    analysed_population,
    command_line_source,
    compare_populations,
    validate_config,
    write_validated_config,
)
from trial_analysis.errors import ConfigError


# The default study, unless a study's own config is given (`--configfile my_study.yaml`):
# Snakemake would otherwise merge the two, and a new study would inherit the default's keys.
if "study" not in config:

    configfile: "config/config.yaml"


try:
    validate_config(config, source=" + ".join(map(str, workflow.configfiles)) or "config")
except ConfigError as error:
    # a problem in a --config override names the command line, not the config file
    overrides = dict(workflow.config_settings.config or {})
    raise WorkflowError(str(command_line_source(error, overrides))) from None

RAW = config["paths"]["raw"]
INTERIM = config["paths"]["interim"]
PROCESSED = config["paths"]["processed"]
REPORTS = config["paths"]["reports"]
LOGS = config["paths"]["logs"]
BENCH = f"{LOGS}/benchmarks"

OUTCOMES = [o["name"] for o in config["outcomes"]]
POPULATIONS = config["analysis"]["populations"]
SUBGROUPS = config["analysis"]["subgroups"]
TABLES = ["therapists", "patients", "sessions", "outcomes"]
# Therapists and sessions may be null (a study without them); clean then writes them empty.
# A table read by a query (input.tables.<table>.query) has no file; a DuckDB database file
# is then the input, so that clean reruns when it changes.
RAW_FILES = {
    name: f"{RAW}/{spec['file']}"
    for name, spec in config["input"]["tables"].items()
    if spec is not None and "file" in spec
}
TABLE_FILES = dict(RAW_FILES)
DATABASE = config["input"].get("database") or {}
if DATABASE.get("path"):
    RAW_FILES["database"] = DATABASE["path"]
HAS_SESSIONS = config["input"]["tables"].get("sessions") is not None
SIMULATED = "simulation" in config
SENSITIVITY = config.get("sensitivity", {}).get("analyses", [])
SENSITIVITY_OUTCOMES = config.get("sensitivity", {}).get("outcomes", OUTCOMES)
ANALYST_TEXT = (config.get("report") or {}).get("text")
# The estimators in both populations, the reproduction of the paper and the target trial's
# (target_trial.compare_populations; observational designs with the trained-therapist rule).
BY_POPULATION = compare_populations(config)
OTHER_POPULATION = (
    "target_trial" if analysed_population(config) == "reproduction" else "reproduction"
)

REPORT_TABLES = [
    "table1",
    "primary_estimates",
    "subgroup_estimates",
    "sessions",
    "responders",
    "variance_components",
    "reproduction",
    "effects_by_followup",
]
FIGURES = ["flow", "trajectories", "forest"] + (
    ["sessions", "implementation"] if HAS_SESSIONS else []
)

# The config as run (defaults filled, command-line overrides merged), written only when it
# changes so that every rule reruns exactly when the study's configuration does. A stamp
# beside it tells the steps it was validated above (see trial_analysis.config).
CONFIG_AS_RUN = f"{INTERIM}/config.as_run.yaml"
write_validated_config(config, CONFIG_AS_RUN)

# Jobs run `python -m trial_analysis` from this checkout's src/, so the same Snakefile works in
# the project's virtual environment and in the conda environment of --use-conda. BLAS runs one
# thread per process (impute spreads its chains over {threads} processes instead; the
# simulation-study chunks set {threads} in their own command): Snakemake already runs jobs
# side by side on the cores, OpenBLAS threads competing for them made a 1M-row cross-product
# 50 times slower, and one fixed thread count keeps the last digits of every estimate the same
# on any machine.
#
# A step's output goes to its log; when it fails, step_failed also prints its error (the
# "trial-analysis <step>: error: ..." lines, else the log's last lines) on the terminal, where
# Snakemake shows a job's stderr, and keeps the step's exit status (2 for bad data or config).
shell.prefix(
    f'set -euo pipefail; export PYTHONPATH="{Path(workflow.basedir) / "src"}'
    '${{PYTHONPATH:+:$PYTHONPATH}}"; '
    "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1; "
    "step_failed() {{ status=$?; "
    "msg=$(sed -n '\\%^trial-analysis [a-z-]*: error: %,$p' \"$1\" | head -n 20 || true); "
    "if [ -n \"$msg\" ]; then printf '%s\\n' \"$msg\" >&2; else tail -n 5 \"$1\" >&2; fi; "
    "exit \"$status\"; }}; "
)
ENV = "workflow/envs/trial-analysis.yaml"

# The report's provenance panel shows the command that ran the pipeline. An environment
# variable, not a param: the jobs inherit it and it is no part of any rule's code or params,
# so another command line reruns nothing. A job that runs the Snakefile again (a cluster job)
# keeps the outer command.
os.environ.setdefault("TRIAL_ANALYSIS_INVOCATION", shlex.join(["snakemake", *sys.argv[1:]]))


include: "workflow/common.smk"


wildcard_constraints:
    analysis="|".join(SENSITIVITY) if SENSITIVITY else "(?!)",


rule all:
    input:
        f"{REPORTS}/report.html",
        f"{REPORTS}/tables/table1.docx",


if SIMULATED:

    rule simulate:
        """The default study's raw extract: a simulated health-system export with known truth."""
        input:
            config=CONFIG_AS_RUN,
        output:
            **TABLE_FILES,
            truth=f"{RAW}/truth.json",
        params:
            raw=lambda wildcards, output: Path(output.truth).parent,
        log:
            f"{LOGS}/simulate.log",
        benchmark:
            f"{BENCH}/simulate.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        shell:
            "python -m trial_analysis simulate --config {input.config} --out {params.raw}"
            " > {log} 2>&1 || step_failed {log}"


rule clean:
    """Validate and repair the raw tables; every raw record gets one fate in the ledger."""
    input:
        **RAW_FILES,
        config=CONFIG_AS_RUN,
    output:
        tables=expand(f"{INTERIM}/clean/{{table}}.parquet", table=TABLES),
        ledger=f"{INTERIM}/clean_ledger.parquet",
    params:
        raw=lambda wildcards, input: RAW,  # input in the signature: a derived param
        clean=lambda wildcards, output: Path(output.tables[0]).parent,
    log:
        f"{LOGS}/clean.log",
    benchmark:
        f"{BENCH}/clean.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    shell:
        "python -m trial_analysis clean --config {input.config} --raw {params.raw} --out {params.clean}"
        " --ledger {output.ledger} > {log} 2>&1 || step_failed {log}"


rule eligibility:
    """Apply the eligibility rules; the flow counts are computed from the ledger."""
    input:
        rules.clean.output.tables,
        ledger=rules.clean.output.ledger,
        config=CONFIG_AS_RUN,
    output:
        cohort=f"{INTERIM}/cohort.parquet",
        ledger=f"{INTERIM}/ledger.parquet",
        flow=f"{INTERIM}/flow_eligibility.csv",
    params:
        clean=lambda wildcards, input: Path(input[0]).parent,
    log:
        f"{LOGS}/eligibility.log",
    benchmark:
        f"{BENCH}/eligibility.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    shell:
        "python -m trial_analysis eligibility --config {input.config} --clean {params.clean}"
        " --clean-ledger {input.ledger} --cohort {output.cohort} --ledger {output.ledger}"
        " --flow {output.flow} > {log} 2>&1 || step_failed {log}"


rule allocate:
    """Arms, primary therapists, fidelity, complete cases; implementation outcomes."""
    input:
        rules.clean.output.tables,
        cohort=rules.eligibility.output.cohort,
        flow=rules.eligibility.output.flow,
        config=CONFIG_AS_RUN,
    output:
        analysis=f"{PROCESSED}/analysis.parquet",
        flow=report(
            f"{REPORTS}/tables/flow.csv",
            caption="workflow/report/flow_table.rst",
            category="Tables",
        ),
        implementation=report(
            f"{REPORTS}/tables/implementation.csv",
            caption="workflow/report/implementation_table.rst",
            category="Tables",
        ),
        fidelity=f"{REPORTS}/tables/therapist_fidelity.csv",
    params:
        clean=lambda wildcards, input: Path(input[0]).parent,
    log:
        f"{LOGS}/allocate.log",
    benchmark:
        f"{BENCH}/allocate.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    shell:
        "python -m trial_analysis allocate --config {input.config} --cohort {input.cohort}"
        " --clean {params.clean} --flow-in {input.flow} --analysis {output.analysis}"
        " --flow {output.flow} --implementation {output.implementation}"
        " --fidelity {output.fidelity} > {log} 2>&1 || step_failed {log}"


rule fit:
    """Every model of every outcome: the primary linear mixed model in each population and the
    arm x time x subgroup model for each subgroup. One job reads the table once and fits the
    outcomes in {threads} processes: a job per outcome would pay a process start-up (about
    1.5 s) each, a fifth of the default study's fitting time."""
    input:
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        json=[path for outcome in OUTCOMES for path in model_files(outcome, "json")],
        csv=[path for outcome in OUTCOMES for path in model_files(outcome, "csv")],
    params:
        estimates=lambda wildcards, output: Path(output.json[0]).parent,
    log:
        f"{LOGS}/fit.log",
    benchmark:
        f"{BENCH}/fit.tsv"
    conda:
        ENV
    threads: model_fit_threads()
    # the models gate the estimates every later step reads: start them first
    priority: 10
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m trial_analysis fit-models --config {input.config} --analysis {input.analysis}"
        " --jobs {threads} --out-dir {params.estimates} > {log} 2>&1 || step_failed {log}"


rule sessions:
    """Number of treatment sessions by arm: negative binomial, therapist-clustered SEs."""
    input:
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        json=f"{REPORTS}/estimates/sessions.json",
        csv=f"{REPORTS}/estimates/sessions.csv",
    log:
        f"{LOGS}/sessions.log",
    benchmark:
        f"{BENCH}/sessions.tsv"
    conda:
        ENV
    threads: 1
    # tables waits for it (and for the fits): before the sensitivity analyses
    priority: 8
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m trial_analysis sessions --config {input.config} --analysis {input.analysis}"
        " --out-json {output.json} --out-csv {output.csv} > {log} 2>&1 || step_failed {log}"


rule responders:
    """Responders at each outcome's MCID: proportions, risk difference, odds ratio."""
    input:
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        json=f"{REPORTS}/estimates/responders.json",
        csv=f"{REPORTS}/estimates/responders.csv",
    log:
        f"{LOGS}/responders.log",
    benchmark:
        f"{BENCH}/responders.tsv"
    conda:
        ENV
    threads: 1
    # tables waits for it (and for the fits): before the sensitivity analyses
    priority: 8
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "python -m trial_analysis responders --config {input.config} --analysis {input.analysis}"
        " --out-json {output.json} --out-csv {output.csv} > {log} 2>&1 || step_failed {log}"


rule impute:
    """Multiple imputation (chained equations, PMM), once for MI and the tipping point."""
    input:
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        imputations=f"{INTERIM}/imputations.parquet",
    log:
        f"{LOGS}/impute.log",
    benchmark:
        f"{BENCH}/impute.tsv"
    conda:
        ENV
    threads: imputation_threads()
    # Before the fits, even: impute -> multiple imputation -> report is the longest chain on a
    # registry extract (a 1M-patient run lost a minute when the imputation waited for a fit).
    priority: 20
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        # The chains run in {threads} processes, each with one BLAS thread (the shell prefix).
        "python -m trial_analysis impute --config {input.config} --analysis {input.analysis}"
        " --out {output.imputations} --jobs {threads} > {log} 2>&1 || step_failed {log}"


rule sensitivity:
    """One sensitivity analysis of the observational comparison (confounding, missing data)."""
    input:
        estimates=primary_estimates_for,
        imputations=imputations_for,
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        json=f"{REPORTS}/estimates/sensitivity.{{analysis}}.json",
        csv=f"{REPORTS}/estimates/sensitivity.{{analysis}}.csv",
        figures=directory(f"{REPORTS}/figures/sensitivity/{{analysis}}"),
    params:
        estimates=lambda wildcards, input: (
            f"--estimates-dir {Path(input.estimates[0]).parent}" if input.estimates else ""
        ),
        imputations=lambda wildcards, input: (
            f"--imputations {input.imputations}" if input.imputations else ""
        ),
    log:
        f"{LOGS}/sensitivity/{{analysis}}.log",
    benchmark:
        f"{BENCH}/sensitivity.{{analysis}}.tsv"
    conda:
        ENV
    threads: 1
    # awaited only by the report: before tables. Among equal priorities Snakemake starts the
    # job with the larger inputs first, so the imputation analyses lead.
    priority: 7
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m trial_analysis sensitivity --config {input.config} --analysis {input.analysis}"
        " --analysis-name {wildcards.analysis} --out-json {output.json} --out-csv {output.csv}"
        " --figures-dir {output.figures} {params.estimates} {params.imputations} > {log} 2>&1 || step_failed {log}"


if BY_POPULATION:

    rule population_analysis:
        """The other population's cohort and analysis table (reproduction or target trial), by
        the eligibility and allocation code with only target_trial.population changed."""
        input:
            rules.clean.output.tables,
            ledger=rules.clean.output.ledger,
            config=CONFIG_AS_RUN,
        output:
            cohort=f"{INTERIM}/populations/{OTHER_POPULATION}/cohort.parquet",
            analysis=f"{PROCESSED}/analysis.{OTHER_POPULATION}.parquet",
        params:
            clean=lambda wildcards, input: Path(input[0]).parent,
        log:
            f"{LOGS}/population_analysis.log",
        benchmark:
            f"{BENCH}/population_analysis.tsv"
        conda:
            ENV
        threads: 1
        priority: 8
        resources:
            mem_mb=8000,
            runtime=20,
        shell:
            "python -m trial_analysis population-analysis --config {input.config}"
            " --clean {params.clean} --clean-ledger {input.ledger}"
            f" --population {OTHER_POPULATION}"
            " --cohort {output.cohort} --analysis {output.analysis} > {log} 2>&1"
            " || step_failed {log}"

    rule estimators_by_population:
        """The estimators side by side in both populations: change-score mixed model, change
        score, ANCOVA, doubly robust and the bracketing, with N per arm."""
        input:
            analysis=rules.allocate.output.analysis,
            other=rules.population_analysis.output.analysis,
            config=CONFIG_AS_RUN,
        output:
            csv=f"{REPORTS}/tables/estimators_by_population.csv",
            json=f"{REPORTS}/estimates/estimators_by_population.json",
        log:
            f"{LOGS}/estimators_by_population.log",
        benchmark:
            f"{BENCH}/estimators_by_population.tsv"
        conda:
            ENV
        threads: 1
        # awaited only by the report, as the sensitivity analyses
        priority: 7
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "python -m trial_analysis estimators-by-population --config {input.config}"
            " --analysis {input.analysis} --other-analysis {input.other}"
            " --out-csv {output.csv} --out-json {output.json} > {log} 2>&1 || step_failed {log}"


BY_POPULATION_OUTPUTS = (
    [f"{REPORTS}/estimates/estimators_by_population.json"] if BY_POPULATION else []
)

SENSITIVITY_OUTPUTS = expand(
    f"{REPORTS}/estimates/sensitivity.{{analysis}}.json", analysis=SENSITIVITY
)

MODEL_ESTIMATES = rules.fit.output.json
ESTIMATES = (
    MODEL_ESTIMATES + (rules.sessions.output if HAS_SESSIONS else []) + rules.responders.output
)


rule tables:
    """Report tables: Table 1, estimates, subgroups, sessions, responders, reproduction check."""
    input:
        estimates=ESTIMATES,
        # simulated data: true values stand beside the estimates
        truth=[f"{RAW}/truth.json"] if SIMULATED else [],
        analysis=rules.allocate.output.analysis,
        flow=rules.allocate.output.flow,
        implementation=rules.allocate.output.implementation,
        config=CONFIG_AS_RUN,
    output:
        [
            report(
                f"{REPORTS}/tables/{name}.csv",
                caption=f"workflow/report/{name}_table.rst",
                category="Tables",
            )
            for name in REPORT_TABLES
        ],
    params:
        estimates=lambda wildcards, input: Path(input.estimates[0]).parent,
        tables=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCH}/tables.tsv"
    conda:
        ENV
    threads: 1
    priority: 5
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m trial_analysis tables --config {input.config} --analysis {input.analysis}"
        " --estimates {params.estimates} --out {params.tables} > {log} 2>&1 || step_failed {log}"


rule figures:
    """Figures (PNG and SVG): flow diagram, trajectories, forest plot, sessions, implementation."""
    input:
        # the models' estimates only, and the flow and implementation tables (from allocate):
        # figures need not wait for sessions, responders or `tables`
        estimates=MODEL_ESTIMATES,
        flow=rules.allocate.output.flow,
        implementation=rules.allocate.output.implementation,
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        png=[
            report(
                f"{REPORTS}/figures/{name}.png",
                caption=f"workflow/report/{name}_figure.rst",
                category="Figures",
            )
            for name in FIGURES
        ],
        svg=expand(f"{REPORTS}/figures/{{name}}.svg", name=FIGURES),
    params:
        estimates=lambda wildcards, input: Path(input.estimates[0]).parent,
        tables=lambda wildcards, input: Path(input.flow).parent,
        figures=lambda wildcards, output: Path(output.png[0]).parent,
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCH}/figures.tsv"
    conda:
        ENV
    threads: 1
    # the longest job after the fits, waiting for nothing else: next after them
    priority: 9
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m trial_analysis figures --config {input.config} --analysis {input.analysis}"
        " --estimates {params.estimates} --tables {params.tables}"
        " --out {params.figures} > {log} 2>&1 || step_failed {log}"


# The design stress study's summary joins the report when it has been run
# (`snakemake stress_study`); it is then an input, so a new summary rebuilds the report.
# Otherwise a simulated study shows the summary committed with the code (docs/), which the
# report checks against this run's design by signature (trial_analysis.signature).
STRESS_SUMMARY = f"{REPORTS}/stress_study/summary.json"
if not Path(STRESS_SUMMARY).exists() and SIMULATED:
    STRESS_SUMMARY = "docs/stress-study.json"
STRESS_INPUT = [STRESS_SUMMARY] if Path(STRESS_SUMMARY).exists() else []
STRESS_STUDY_INPUT = ["config/stress_study.yaml"] if STRESS_INPUT and Path(
    "config/stress_study.yaml").exists() else []


rule report:
    """One self-contained HTML report with provenance: what a reviewer reads."""
    input:
        stress=STRESS_INPUT,
        stress_study=STRESS_STUDY_INPUT,
        estimates=ESTIMATES,
        sensitivity=SENSITIVITY_OUTPUTS,
        by_population=BY_POPULATION_OUTPUTS,
        tables=rules.tables.output,
        figures=rules.figures.output.png,
        raw=list(RAW_FILES.values()),
        analysis=rules.allocate.output.analysis,  # digested for provenance, no row is read
        # the diagnostics appendix (rule diagnostics, defined below)
        diagnostics=[f"{REPORTS}/tables/diagnostics.csv"]
        + expand(f"{REPORTS}/figures/diagnostics_{{outcome}}.png", outcome=OUTCOMES),
        # the analyst's own Markdown (report.text): the report reruns when it is edited
        text=[ANALYST_TEXT] if ANALYST_TEXT else [],
        ledger=rules.clean.output.ledger,  # the queries and their row counts, for provenance
        config=CONFIG_AS_RUN,
    output:
        f"{REPORTS}/report.html",
    params:
        raw=lambda wildcards, input: RAW,  # input in the signature: a derived param
        estimates=lambda wildcards, input: Path(input.estimates[0]).parent,
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
        figures=lambda wildcards, input: Path(input.figures[0]).parent,
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m trial_analysis report --config {input.config} --raw {params.raw}"
        " --estimates {params.estimates} --tables {params.tables}"
        # BENCH in the command, not in params: a param that is a plain value makes Snakemake
        # import pandas at every start to compare it with the last run's (about 0.9 s).
        f" --figures {{params.figures}} --benchmarks {BENCH} --analysis {{input.analysis}}"
        + (f" --stress-summary {STRESS_SUMMARY}" if STRESS_INPUT else "")
        + (f" --stress-study {STRESS_STUDY_INPUT[0]}" if STRESS_STUDY_INPUT else "")
        + " --ledger {input.ledger} --out {output} > {log} 2>&1 || step_failed {log}"


EXPORTS = ["table1", "primary_estimates"] + (["sensitivity"] if SENSITIVITY else [])


rule diagnostics:
    """Diagnostics appendix: residuals, random-effect QQ plots, leave-one-cluster-out."""
    input:
        analysis=rules.allocate.output.analysis,
        config=CONFIG_AS_RUN,
    output:
        png=expand(f"{REPORTS}/figures/diagnostics_{{outcome}}.png", outcome=OUTCOMES),
        svg=expand(f"{REPORTS}/figures/diagnostics_{{outcome}}.svg", outcome=OUTCOMES),
        table=f"{REPORTS}/tables/diagnostics.csv",
    params:
        figures=lambda wildcards, output: Path(output.png[0]).parent,
        tables=lambda wildcards, output: Path(output.table).parent,
    log:
        f"{LOGS}/diagnostics.log",
    benchmark:
        f"{BENCH}/diagnostics.tsv"
    conda:
        ENV
    threads: 1
    priority: 6
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m trial_analysis diagnostics --config {input.config} --analysis {input.analysis}"
        " --figures {params.figures} --tables {params.tables} > {log} 2>&1 || step_failed {log}"


rule exports:
    """Manuscript tables as Word and LaTeX beside the CSVs: Table 1, primary, sensitivity."""
    input:
        tables=rules.tables.output,
        sensitivity=SENSITIVITY_OUTPUTS,
        config=CONFIG_AS_RUN,
    output:
        docx=expand(f"{REPORTS}/tables/{{name}}.docx", name=EXPORTS),
        tex=expand(f"{REPORTS}/tables/{{name}}.tex", name=EXPORTS),
        csv=[f"{REPORTS}/tables/sensitivity.csv"] if SENSITIVITY else [],
    params:
        estimates=lambda wildcards, input: f"{REPORTS}/estimates",  # input: a derived param
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
    log:
        f"{LOGS}/exports.log",
    benchmark:
        f"{BENCH}/exports.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m trial_analysis exports --config {input.config} --estimates {params.estimates}"
        " --tables {params.tables} > {log} 2>&1 || step_failed {log}"


# Simulation studies (bias, coverage, power over replicates): `snakemake -c2 simulation_study`.
include: "workflow/simulation_study.smk"
# Design stress study (which estimator holds under which mechanism): `snakemake -c2 stress_study`.
include: "workflow/stress_study.smk"
