# Reference values for tests/models/test_golden_models.py, from lme4 + lmerTest + emmeans.
#
# Run from the repository root:  Rscript tests/golden/make_golden_models.R
# Reads tests/golden/data/*.csv (written by make_golden_data.py) and writes one JSON file per
# case to tests/golden/reference/. The cases (dataset, outcome, population, random effects,
# subgroup) must match CASES in tests/models/test_golden_models.py.
#
# Conventions, the same as trial_analysis.models.outcome_models:
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
# Names of the variance components, as trial_analysis.models.outcome_models names them.
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
  # Covariates adjust level and change (trial_analysis.models.outcome_models' default covariates_by_time).
  case_covariates <- if (is.null(case$covariates)) covariates else case$covariates
  f <- as.formula(paste(fixed, "+ (", paste(case_covariates, collapse = " + "), ") * time +",
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
    # emmeans' default (cov.keep = "2") keeps 0/1 covariates as two levels with equal weights;
    # cov.keep = character(0) sets every covariate at its mean (reference_grid:
    # covariate_means in the Python code).
    em_means <- summary(emmeans(fit, ~ arm * time, at = list(arm = c(0, 1), time = c(0, 1)),
                                cov.keep = character(0)))
    out$marginal_means_covariate_means <- data.frame(
      arm = em_means$arm, time = em_means$time, estimate = em_means$emmean,
      std_error = em_means$SE, df = em_means$df, ci_low = em_means$lower.CL,
      ci_high = em_means$upper.CL)
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
  # 0/1 covariates (depression, anxiety): emmeans' reference grid treats them as levels.
  list(name = "cohort_function_cc_flags", data = "cohort", outcome = "function",
       population = "complete_case", random = "default",
       covariates = c("age", "sex", "symptom_duration_weeks", "depression", "anxiety")),
  list(name = "cohort_function_depression", data = "cohort", outcome = "function",
       population = "complete_case", random = "default", subgroup = "depression"),
  list(name = "small_subgroup_function_depression", data = "small_subgroup",
       outcome = "function", population = "complete_case", random = "default",
       subgroup = "depression")
)

# ---------------------------------------------------------------------------------------------
# Several follow-ups, continuous time, the baseline as covariate (ANCOVA), site clustering and
# no random effects (lm). Conventions, as trial_analysis.models.outcome_models:
# - the follow-up score columns are {outcome}__{label} with several follow-ups,
#   {outcome}_followup with one;
# - categorical time is a factor over the model's time points in time order (the baseline, or
#   under ANCOVA the first follow-up, is the reference): terms time<label>, arm:time<label>;
#   continuous time is numeric (months, `values`);
# - ANCOVA: rows are follow-ups only, `baseline` (the baseline score) a covariate;
# - the effect at each follow-up (difference between arms in mean change from baseline) is a
#   linear contrast, written out here independently of the Python code; the primary one is the
#   last follow-up, "overall" the equal-weight mean over follow-ups.
long_data_multi <- function(d, case) {
  outcome <- case$outcome
  if (case$population == "complete_case") d <- d[d[[paste0("complete_", outcome)]] == 1, ]
  d <- d[!is.na(d[[paste0(outcome, "_baseline")]]), ]
  followups <- case$followups
  columns <- if (length(followups) == 1) paste0(outcome, "_followup") else
    paste0(outcome, "__", followups)
  names(columns) <- followups
  times <- if (case$baseline == "covariate") followups else c(case$baseline_label, followups)
  columns[case$baseline_label] <- paste0(outcome, "_baseline")
  rows <- lapply(times, function(label) {
    data.frame(patient = d$patient_id, site = if ("site" %in% names(d)) d$site else NA,
               arm = d$arm_intervention, time_label = label, score = d[[columns[[label]]]],
               baseline = d[[paste0(outcome, "_baseline")]], age = d$age,
               sex = factor(d$sex, levels = c("F", "M")),
               symptom_duration_weeks = d$symptom_duration_weeks,
               depression = d$depression, stringsAsFactors = FALSE)
  })
  l <- do.call(rbind, rows)
  l <- l[!is.na(l$score), ]
  l$time <- if (case$time == "continuous") unname(unlist(case$values[l$time_label])) else
    factor(l$time_label, levels = times)
  l$post <- as.numeric(l$time_label != case$baseline_label)
  l$site_time <- paste(l$site, l$time_label, sep = ":")
  l$site_patient <- paste(l$site, l$patient, sep = ":")
  l
}

is_constant <- function(case) !is.null(case$effect) && case$effect == "constant"

effect_weights <- function(case, label) {
  # Named weights on the fixed effects for the effect at follow-up `label`.
  w <- c()
  if (case$baseline == "covariate") w["arm"] <- 1
  if (is_constant(case)) {
    # one effect at every follow-up: arm (ANCOVA) or arm x post-baseline indicator
    if (case$baseline != "covariate") w["arm:post"] <- 1
  } else if (case$time == "continuous") {
    t0 <- if (case$baseline == "covariate") 0 else case$values[[case$baseline_label]]
    w["arm:time"] <- case$values[[label]] - t0
  } else if (case$baseline == "covariate") {
    if (label != case$followups[1]) w[paste0("arm:time", label)] <- 1
  } else {
    w[paste0("arm:time", label)] <- 1
  }
  w
}

contrast_vector <- function(weights, beta_names, suffix = NULL) {
  # With `suffix` (a subgroup dummy such as sg1) each weighted term also gets its subgroup
  # interaction: the effect within that level.
  L <- setNames(numeric(length(beta_names)), beta_names)
  for (nm in names(weights)) {
    targets <- c(nm, if (!is.null(suffix)) paste0(nm, ":", suffix))
    stopifnot(all(targets %in% beta_names))
    L[targets] <- L[targets] + weights[[nm]]
  }
  L
}

test_contrast <- function(fit, L) {
  if (inherits(fit, "lm")) {
    est <- sum(L * coef(fit))
    se <- sqrt(drop(t(L) %*% vcov(fit) %*% L))
    df <- fit$df.residual
    return(data.frame(estimate = est, std_error = se, df = df,
                      p_value = 2 * pt(abs(est / se), df, lower.tail = FALSE)))
  }
  r <- contest(fit, L, joint = FALSE, ddf = "Satterthwaite")
  data.frame(estimate = r$Estimate, std_error = r[["Std. Error"]], df = r$df,
             p_value = r[["Pr(>|t|)"]])
}

fit_case_multi <- function(case) {
  d <- read.csv(file.path("tests/golden/data", paste0(case$data, ".csv")),
                stringsAsFactors = FALSE)
  l <- long_data_multi(d, case)
  several_times <- !(case$baseline == "covariate" && length(case$followups) == 1)
  fixed <- if (several_times) "score ~ arm * time" else "score ~ arm"
  if (is_constant(case))
    fixed <- if (case$baseline == "covariate") "score ~ arm + time" else
      "score ~ arm + time + arm:post"
  if (!is.null(case$subgroup)) {
    l$sg <- factor(l[[case$subgroup]])
    fixed <- paste(fixed, "* sg")
  }
  if (case$baseline == "covariate") fixed <- paste(fixed, "+ baseline")
  fixed <- paste(fixed, "+ (", paste(covariates, collapse = " + "), ")",
                 if (several_times) "* time" else "")
  if (is.null(case$random)) {
    f <- as.formula(fixed)
    fit <- lm(f, data = l)
    co <- summary(fit)$coefficients
    fixef_out <- data.frame(term = rownames(co), estimate = co[, "Estimate"],
                            std_error = co[, "Std. Error"], df = fit$df.residual,
                            p_value = co[, "Pr(>|t|)"], row.names = NULL)
    vc_out <- list(residual = summary(fit)$sigma^2)
    crit <- -2 * as.numeric(logLik(fit, REML = TRUE))
    singular <- FALSE
  } else {
    f <- as.formula(paste(fixed, "+", case$random))
    fit <- lmer(f, data = l, REML = TRUE, control = ctrl)
    co <- summary(fit)$coefficients
    fixef_out <- data.frame(term = rownames(co), estimate = co[, "Estimate"],
                            std_error = co[, "Std. Error"], df = co[, "df"],
                            p_value = co[, "Pr(>|t|)"], row.names = NULL)
    vc <- as.data.frame(VarCorr(fit))
    vc_out <- setNames(as.list(vc$vcov), unname(case$components[vc$grp]))
    crit <- unname(REMLcrit(fit))
    singular <- isSingular(fit)
  }
  beta_names <- if (inherits(fit, "lm")) names(coef(fit)) else names(fixef(fit))
  if (!is.null(case$subgroup)) fixef_out$term <- gsub("sg", case$subgroup, fixef_out$term,
                                                      fixed = TRUE)
  out <- list(case = case$name, formula = deparse1(f), n_observations = nrow(l),
              n_patients = length(unique(l$patient)), reml_criterion = crit,
              singular = singular, fixed_effects = fixef_out, variance_components = vc_out)
  primary <- case$followups[length(case$followups)]
  if (is.null(case$subgroup)) {
    effects <- list()
    Ls <- lapply(case$followups, function(lab) contrast_vector(effect_weights(case, lab),
                                                               beta_names))
    names(Ls) <- case$followups
    effects[[1]] <- cbind(term = "arm:time", test_contrast(fit, Ls[[primary]]))
    if (length(case$followups) > 1 && !is_constant(case)) {
      for (lab in case$followups)
        effects[[length(effects) + 1]] <- cbind(term = paste0("arm:time [", lab, "]"),
                                                test_contrast(fit, Ls[[lab]]))
      effects[[length(effects) + 1]] <- cbind(term = "arm:time [overall]",
                                              test_contrast(fit, Reduce(`+`, Ls) / length(Ls)))
    }
    out$effects <- do.call(rbind, effects)
    if (several_times) {
      at <- list(arm = c(0, 1))
      if (case$time == "continuous") at$time <- unname(unlist(case$values[c(
        if (case$baseline == "covariate") NULL else case$baseline_label, case$followups)]))
      # arm:post: emmeans predicts the post indicator from time (0 at baseline, 1 after),
      # rather than holding it at its mean, so each grid cell gets its own arm:post value.
      em <- if (is_constant(case) && case$baseline != "covariate")
        summary(emmeans(fit, ~ arm * time, at = at, cov.keep = "arm",
                        cov.reduce = post ~ time)) else
        summary(emmeans(fit, ~ arm * time, at = at))
      time_out <- if (case$time == "continuous")
        names(case$values)[match(em$time, unlist(case$values))] else as.character(em$time)
    } else {
      em <- summary(emmeans(fit, ~ arm, at = list(arm = c(0, 1))))
      time_out <- case$followups[1]
    }
    out$marginal_means <- data.frame(arm = em$arm, time = time_out, estimate = em$emmean,
                                     std_error = em$SE, df = em$df, ci_low = em$lower.CL,
                                     ci_high = em$upper.CL)
  } else {
    levs <- levels(l$sg)
    w <- effect_weights(case, primary)
    within <- lapply(seq_along(levs), function(i)
      contrast_vector(w, beta_names, if (i == 1) NULL else paste0("sg", levs[i])))
    out$subgroup_effects <- do.call(rbind, lapply(seq_along(levs), function(i)
      cbind(level = levs[i], test_contrast(fit, within[[i]]))))
    L3 <- do.call(rbind, lapply(within[-1], function(L) L - within[[1]]))
    h <- contest(fit, L3, joint = TRUE, ddf = "Satterthwaite")
    out$heterogeneity <- list(F = h[["F value"]], num_df = h$NumDF, den_df = h$DenDF,
                              p_value = h[["Pr(>F)"]])
  }
  out
}

months <- list(m0 = 0, m1 = 1, m3 = 3, m6 = 6, m12 = 12)
multi_cases <- list(
  list(name = "multitime_categorical_patient", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6", "m12"), values = months, time = "categorical",
       baseline = "timepoint", random = "(1|patient)",
       components = c(patient = "patient", Residual = "residual")),
  list(name = "multitime_continuous_patient", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6", "m12"), values = months, time = "continuous",
       baseline = "timepoint", random = "(1|patient)",
       components = c(patient = "patient", Residual = "residual")),
  list(name = "multitime_ancova_site", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6"), values = months[c("m0", "m1", "m3", "m6")],
       time = "categorical", baseline = "covariate",
       random = "(1|site) + (1|site_patient)",
       components = c(site = "site", site_patient = "patient", Residual = "residual")),
  list(name = "cohort_function_cc_lm", data = "cohort", outcome = "function",
       population = "complete_case", baseline_label = "intake", followups = c("discharge"),
       values = list(intake = 0, discharge = 1), time = "categorical",
       baseline = "covariate", random = NULL),
  list(name = "multitime_constant_patient", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6", "m12"), values = months, time = "categorical",
       baseline = "timepoint", effect = "constant", random = "(1|patient)",
       components = c(patient = "patient", Residual = "residual")),
  list(name = "multitime_constant_ancova_site", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6"), values = months[c("m0", "m1", "m3", "m6")],
       time = "categorical", baseline = "covariate", effect = "constant",
       random = "(1|site) + (1|site_patient)",
       components = c(site = "site", site_patient = "patient", Residual = "residual")),
  list(name = "multitime_site_time_depression", data = "multitime", outcome = "function",
       population = "all_available", baseline_label = "m0",
       followups = c("m1", "m3", "m6", "m12"), values = months, time = "categorical",
       baseline = "timepoint", subgroup = "depression",
       random = "(1|site) + (1|site_time) + (1|site_patient)",
       components = c(site = "site", site_time = "site:time", site_patient = "patient",
                      Residual = "residual"))
)

dir.create("tests/golden/reference", showWarnings = FALSE, recursive = TRUE)
# Rscript tests/golden/make_golden_models.R name1 name2 ...: only those cases.
# make_golden_kr.R sources this file for its helpers only.
only <- commandArgs(trailingOnly = TRUE)
if (!exists("golden_helpers_only")) for (case in c(cases, multi_cases)) {
  if (length(only) && !(case$name %in% only)) next
  out <- if (is.null(case$followups)) fit_case(case) else fit_case_multi(case)
  out$r_versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                         lmerTest = as.character(packageVersion("lmerTest")),
                         emmeans = as.character(packageVersion("emmeans")))
  writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"),
             file.path("tests/golden/reference", paste0(case$name, ".json")))
  cat(case$name, "singular:", out$singular, "\n")
}
