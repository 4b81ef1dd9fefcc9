# Simulation study of the primary analysis: `snakemake -c2 simulation_study`.
#
# Included by the main Snakefile (uses its CONFIG_AS_RUN, REPORTS, LOGS, BENCH and ENV).
# The scenarios and replicate counts are in config/simulation_study.yaml (relative to the
# working directory, like config/config.yaml). Each chunk of `chunk_size` replicates of one
# scenario is one job, so the replicates spread over cores or cluster nodes; one job then
# aggregates bias, empirical SE, coverage and power with Monte Carlo SEs.
# The whole module is skipped when the config has no simulation section or the study file
# does not exist.

import re
import sys

SIMULATION_STUDY_FILE = "config/simulation_study.yaml"

if SIMULATED and Path(SIMULATION_STUDY_FILE).exists():
    # The study file is read with the package's own reader (scenario grid expansion, checks).
    _src = str(Path(str(workflow.current_basedir)).parent / "src")
    if _src not in sys.path:
        sys.path.insert(0, _src)
    from trial_analysis.simulation.simulation_study import chunk_replicates, load_study, scenario_signature

    SIMULATION_STUDY = load_study(SIMULATION_STUDY_FILE, dict(config))
    SIMULATION_DIR = f"{REPORTS}/simulation_study"
    SIMULATION_CHUNKS = [
        f"{SIMULATION_DIR}/{scenario.name}/chunk_{k}.csv"
        for scenario in SIMULATION_STUDY.scenarios
        for k in range(len(SIMULATION_STUDY.chunks(scenario.name)))
    ]

    rule simulation_study:
        """Target: the simulation study's summary (every scenario, every replicate)."""
        input:
            f"{SIMULATION_DIR}/summary.csv",
            f"{SIMULATION_DIR}/summary.json",

    rule simulation_study_chunk:
        """One chunk of replicates of one scenario: simulate, analyse, one row per fit."""
        input:
            config=CONFIG_AS_RUN,
        output:
            f"{SIMULATION_DIR}/{{scenario}}/chunk_{{chunk}}.csv",
        wildcard_constraints:
            scenario="|".join(re.escape(s.name) for s in SIMULATION_STUDY.scenarios),
            chunk=r"\d+",
        params:
            study=lambda wildcards: SIMULATION_STUDY_FILE,
            replicates=lambda wildcards: chunk_replicates(
                SIMULATION_STUDY, wildcards.scenario, int(wildcards.chunk)
            ),
            # Editing one scenario reruns only that scenario's jobs.
            spec=lambda wildcards: scenario_signature(SIMULATION_STUDY, wildcards.scenario),
        log:
            f"{LOGS}/simulation_study/{{scenario}}/chunk_{{chunk}}.log",
        benchmark:
            f"{BENCH}/simulation_study/{{scenario}}/chunk_{{chunk}}.tsv"
        conda:
            "envs/trial-analysis.yaml"  # ENV of the Snakefile, relative to this file
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
            " python -m trial_analysis simulate-study --config {input.config}"
            " --study {params.study} --scenario {wildcards.scenario}"
            " --replicates {params.replicates} --out {output} > {log} 2>&1 || step_failed {log}"

    rule simulation_study_summary:
        """Bias, empirical and model SE, coverage and power with Monte Carlo SEs."""
        input:
            chunks=SIMULATION_CHUNKS,
            config=CONFIG_AS_RUN,
            study=SIMULATION_STUDY_FILE,
        output:
            csv=f"{SIMULATION_DIR}/summary.csv",
            json=f"{SIMULATION_DIR}/summary.json",
        log:
            f"{LOGS}/simulation_study/summary.log",
        benchmark:
            f"{BENCH}/simulation_study/summary.tsv"
        conda:
            "envs/trial-analysis.yaml"  # ENV of the Snakefile, relative to this file
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        shell:
            "python -m trial_analysis simulate-study-summary --config {input.config}"
            " --study {input.study} --chunks {input.chunks} --out-csv {output.csv}"
            " --out-json {output.json} > {log} 2>&1 || step_failed {log}"
