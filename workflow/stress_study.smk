# Design stress study: `snakemake -c2 stress_study` (which estimator holds under which
# selection mechanism; docs/stress-study.md).
#
# Included by the main Snakefile (uses its CONFIG_AS_RUN, REPORTS, LOGS, BENCH and ENV).
# Scenarios, replicate counts and chunk size are in config/stress_study.yaml. Each chunk of
# `chunk_size` replicates of one scenario is one job; replicate seeds depend only on the study
# seed, the scenario and the replicate number, so the result is byte-identical for any number
# of cores or chunking. Skipped when the config has no simulation section or the file is absent.

import re
import sys

STRESS_STUDY_FILE = "config/stress_study.yaml"

if SIMULATED and Path(STRESS_STUDY_FILE).exists():
    _src = str(Path(str(workflow.current_basedir)).parent / "src")
    if _src not in sys.path:
        sys.path.insert(0, _src)
    from trial_analysis.simulation.simulation_study import chunk_replicates, load_study, scenario_signature

    STRESS_STUDY = load_study(STRESS_STUDY_FILE, dict(config))
    STRESS_DIR = f"{REPORTS}/stress_study"
    STRESS_CHUNKS = [
        f"{STRESS_DIR}/{scenario.name}/chunk_{k}.csv"
        for scenario in STRESS_STUDY.scenarios
        for k in range(len(STRESS_STUDY.chunks(scenario.name)))
    ]

    rule stress_study:
        """Target: the stress study's summary table, JSON, markdown and figure."""
        input:
            f"{STRESS_DIR}/summary.csv",
            f"{STRESS_DIR}/summary.json",
            f"{STRESS_DIR}/summary.md",
            f"{STRESS_DIR}/stress_study.png",

    rule stress_study_chunk:
        """One chunk of replicates of one mechanism: simulate, fit every estimator."""
        input:
            config=CONFIG_AS_RUN,
        output:
            f"{STRESS_DIR}/{{scenario}}/chunk_{{chunk}}.csv",
        wildcard_constraints:
            scenario="|".join(re.escape(s.name) for s in STRESS_STUDY.scenarios),
            chunk=r"\d+",
        params:
            study=lambda wildcards: STRESS_STUDY_FILE,
            replicates=lambda wildcards: chunk_replicates(
                STRESS_STUDY, wildcards.scenario, int(wildcards.chunk)
            ),
            spec=lambda wildcards: scenario_signature(STRESS_STUDY, wildcards.scenario),
        log:
            f"{LOGS}/stress_study/{{scenario}}/chunk_{{chunk}}.log",
        benchmark:
            f"{BENCH}/stress_study/{{scenario}}/chunk_{{chunk}}.tsv"
        conda:
            "envs/trial-analysis.yaml"  # ENV of the Snakefile, relative to this file
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
            " python -m trial_analysis stress-study --config {input.config}"
            " --study {params.study} --scenario {wildcards.scenario}"
            " --replicates {params.replicates} --out {output} > {log} 2>&1 || step_failed {log}"

    rule stress_study_summary:
        """Bias, empirical and model SE, coverage and power with Monte Carlo SEs; the figure."""
        input:
            chunks=STRESS_CHUNKS,
            config=CONFIG_AS_RUN,
            study=STRESS_STUDY_FILE,
        output:
            csv=f"{STRESS_DIR}/summary.csv",
            json=f"{STRESS_DIR}/summary.json",
            md=f"{STRESS_DIR}/summary.md",
            png=f"{STRESS_DIR}/stress_study.png",
        log:
            f"{LOGS}/stress_study/summary.log",
        benchmark:
            f"{BENCH}/stress_study/summary.tsv"
        conda:
            "envs/trial-analysis.yaml"  # ENV of the Snakefile, relative to this file
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        shell:
            "python -m trial_analysis stress-study-summary --config {input.config}"
            " --study {input.study} --chunks {input.chunks} --out-csv {output.csv}"
            " --out-json {output.json} --out-md {output.md} --out-figure {output.png}"
            " > {log} 2>&1 || step_failed {log}"
