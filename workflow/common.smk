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
