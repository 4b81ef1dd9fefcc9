"""Models: the statistical models fitted to the analysis table.

``outcome_models`` (the primary and subgroup models of each outcome, estimate files),
``fast_lmm`` (exact nested random-intercept REML), ``lmm_inference`` (Satterthwaite df,
contrasts), ``sessions`` (negative binomial), ``responders`` (MCID responders), ``robust``
(cluster-robust corrections) and ``distributions`` (the reference distributions).
"""
