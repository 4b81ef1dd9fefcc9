# Reference values for tests/test_golden_models.py, from lme4 + lmerTest + emmeans.
#
# Run from the repository root:  Rscript tests/golden/make_golden_models.R
# Reads tests/golden/data/*.csv (written by make_golden_data.py) and writes one JSON file per
# case to tests/golden/reference/. The cases (dataset, outcome, population, random effects,
# subgroup) must match CASES in tests/test_golden_models.py.
#
# Conventions, the same as trial_analysis.models:
# - long data: one row per patient and time point (time 0 = baseline, 1 = follow-up), rows with
#   a missing score dropped; complete_case = complete_{outcome} == 1, all_available = baseline
#   score present;
# - arm and time are numeric 0/1, sex a factor (reference F), subgroup a factor;
# - nested random intercepts use explicit unit ids (therapist x patient, therapist x time);
# - optimiser tolerances are tightened so lme4 sits at the optimum to many digits;
# - Satterthwaite df for every test and for emmeans (emmeans' own default for lmer models is
#   Kenward-Roger when pbkrtest is installed; we ask for Satterthwaite explicitly).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(emmeans)
  library(jsonlite)
})

emm_options(lmer.df = "satterthwaite", lmerTest.limit = 1e6)
ctrl <- lmerControl(optimizer = "nloptwrap",
                    optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15,
                                   maxeval = 1e5),
                    check.conv.singular = "ignore")

covariates <- c("age", "sex", "symptom_duration_weeks")

long_data <- function(d, outcome, population) {
  if (population == "complete_case") d <- d[d[[paste0("complete_", outcome)]] == 1, ]
  d <- d[!is.na(d[[paste0(outcome, "_baseline")]]), ]
  rows <- lapply(0:1, function(t) {
    col <- paste0(outcome, if (t == 0) "_baseline" else "_followup")
    data.frame(patient = d$patient_id, therapist = d$therapist_id, clinic = d$clinic_id,
               arm = d$arm_intervention, time = t, score = d[[col]], age = d$age,
               sex = factor(d$sex, levels = c("F", "M")),
               symptom_duration_weeks = d$symptom_duration_weeks,
               depression = d$depression, anxiety = d$anxiety, stringsAsFactors = FALSE)
  })
  l <- do.call(rbind, rows)
  l <- l[!is.na(l$score), ]
  l$therapist_time <- paste(l$therapist, l$time, sep = ":")
  l$clinic_time <- paste(l$clinic, l$time, sep = ":")
  l
}

random_terms <- list(
  default = "(1|therapist) + (1|therapist_time) + (1|patient)",
  patient = "(1|patient)",
  clinic = "(1|clinic) + (1|therapist) + (1|therapist_time) + (1|patient)",
  no_time = "(1|therapist) + (1|patient)"
)
# Names of the variance components, as trial_analysis.models names them.
component_names <- c(therapist = "therapist", therapist_time = "therapist:time",
                     patient = "patient", clinic = "clinic", Residual = "residual")

fit_case <- function(case) {
  d <- read.csv(file.path("tests/golden/data", paste0(case$data, ".csv")),
                stringsAsFactors = FALSE)
  l <- long_data(d, case$outcome, case$population)
  fixed <- if (is.null(case$subgroup)) "score ~ arm * time" else {
    l$sg <- factor(l[[case$subgroup]])
    "score ~ arm * time * sg"
  }
  # Covariates adjust level and change (trial_analysis.models' default covariates_by_time).
  f <- as.formula(paste(fixed, "+ (", paste(covariates, collapse = " + "), ") * time +",
                        random_terms[[case$random]]))
  fit <- lmer(f, data = l, REML = TRUE, control = ctrl)
  co <- summary(fit)$coefficients
  term <- rownames(co)
  if (!is.null(case$subgroup)) term <- gsub("sg", case$subgroup, term, fixed = TRUE)
  fixef_out <- data.frame(term = term, estimate = co[, "Estimate"],
                          std_error = co[, "Std. Error"], df = co[, "df"],
                          p_value = co[, "Pr(>|t|)"], row.names = NULL)
  vc <- as.data.frame(VarCorr(fit))
  vc_out <- setNames(as.list(vc$vcov), component_names[vc$grp])
  out <- list(case = case$name, formula = deparse1(f), n_observations = nrow(l),
              n_patients = length(unique(l$patient)), reml_criterion = unname(REMLcrit(fit)),
              singular = isSingular(fit), fixed_effects = fixef_out, variance_components = vc_out)
  if (is.null(case$subgroup)) {
    em <- summary(emmeans(fit, ~ arm * time, at = list(arm = c(0, 1), time = c(0, 1))))
    out$marginal_means <- data.frame(arm = em$arm, time = em$time, estimate = em$emmean,
                                     std_error = em$SE, df = em$df, ci_low = em$lower.CL,
                                     ci_high = em$upper.CL)
  } else {
    beta_names <- names(fixef(fit))
    levs <- levels(l$sg)
    three_way <- grep("^arm:time:sg", beta_names, value = TRUE)
    contrasts <- lapply(levs, function(lev) {
      L <- setNames(numeric(length(beta_names)), beta_names)
      L["arm:time"] <- 1
      name <- paste0("arm:time:sg", lev)
      if (name %in% beta_names) L[name] <- 1
      r <- contest(fit, L, joint = FALSE, ddf = "Satterthwaite")
      data.frame(level = lev, estimate = r$Estimate, std_error = r[["Std. Error"]],
                 df = r$df, p_value = r[["Pr(>|t|)"]])
    })
    out$subgroup_effects <- do.call(rbind, contrasts)
    L3 <- matrix(0, nrow = length(three_way), ncol = length(beta_names),
                 dimnames = list(three_way, beta_names))
    for (nm in three_way) L3[nm, nm] <- 1
    h <- contest(fit, L3, joint = TRUE, ddf = "Satterthwaite")
    out$heterogeneity <- list(F = h[["F value"]], num_df = h$NumDF, den_df = h$DenDF,
                              p_value = h[["Pr(>F)"]])
  }
  out
}

cases <- list(
  list(name = "cohort_function_cc", data = "cohort", outcome = "function",
       population = "complete_case", random = "default"),
  list(name = "cohort_function_aa", data = "cohort", outcome = "function",
       population = "all_available", random = "default"),
  list(name = "cohort_pain_cc_patient", data = "cohort", outcome = "pain",
       population = "complete_case", random = "patient"),
  list(name = "cohort_function_cc_clinic", data = "cohort", outcome = "function",
       population = "complete_case", random = "clinic"),
  list(name = "unbalanced_function_aa", data = "unbalanced", outcome = "function",
       population = "all_available", random = "default"),
  list(name = "singletons_function_cc", data = "singletons", outcome = "function",
       population = "complete_case", random = "default"),
  list(name = "singular_function_cc", data = "singular", outcome = "function",
       population = "complete_case", random = "default"),
  list(name = "cohort_function_depression", data = "cohort", outcome = "function",
       population = "complete_case", random = "default", subgroup = "depression"),
  list(name = "small_subgroup_function_depression", data = "small_subgroup",
       outcome = "function", population = "complete_case", random = "default",
       subgroup = "depression")
)

dir.create("tests/golden/reference", showWarnings = FALSE, recursive = TRUE)
for (case in cases) {
  out <- fit_case(case)
  out$r_versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                         lmerTest = as.character(packageVersion("lmerTest")),
                         emmeans = as.character(packageVersion("emmeans")))
  writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"),
             file.path("tests/golden/reference", paste0(case$name, ".json")))
  cat(case$name, "singular:", out$singular, "\n")
}
