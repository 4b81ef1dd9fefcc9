# Input functions shared by the rules of the Snakefile.


def primary_estimates_for(wildcards):
    """E-values and the missing-data comparison read the primary estimates."""
    if wildcards.analysis not in ("evalue", "multiple_imputation"):
        return []
    return expand(
        f"{REPORTS}/estimates/{{outcome}}.{{population}}.json",
        outcome=SENSITIVITY_OUTCOMES,
        population=POPULATIONS,
    )


def model_files(outcome, extension):
    """The estimate files of every model of one outcome (each population, each subgroup)."""
    stems = [f"{outcome}.{population}" for population in POPULATIONS]
    stems += [f"{outcome}.subgroup_{subgroup}" for subgroup in SUBGROUPS]
    return [f"{REPORTS}/estimates/{stem}.{extension}" for stem in stems]


def imputations_for(wildcards):
    """Multiple imputation and the tipping point share the imputations of rule impute."""
    if wildcards.analysis not in ("multiple_imputation", "tipping_point"):
        return []
    return rules.impute.output.imputations


def _cores():
    """The --cores of this run; None without it (a dry run, --report)."""
    try:
        return workflow.cores
    except WorkflowError:  # Snakemake asks for --cores before it will say
        return None


def imputation_threads():
    """Up to half the cores (at most 8) for the imputation chains: on 2 cores the imputation
    then starts at once beside the fits instead of waiting for both cores to be free. The
    file is the same for any count. Without --cores (a dry run, --report) 1."""
    return max(1, min(8, (_cores() or 2) // 2))


def model_fit_threads():
    """Processes for the model fits, one per outcome at most, in the half of the cores the
    imputation leaves; the files are the same for any count."""
    return max(1, min(len(OUTCOMES), (_cores() or 2) // 2))
