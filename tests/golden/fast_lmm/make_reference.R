# lme4/lmerTest reference fits for tests/models/test_fast_lmm.py.
#
# Run from the repository root:  Rscript tests/golden/fast_lmm/make_reference.R
# Reads tests/golden/fast_lmm/{balanced,unbalanced,singular}.csv (written by make_data.py)
# and writes tests/golden/fast_lmm/reference.json: one entry per case with the fixed effects,
# their standard errors and Satterthwaite df (lmerTest), the variance components (named as
# trial_analysis.models.fast_lmm names them), theta, logLik and the singular flag.
#
# Nested units are explicit ids (therapist x patient, therapist x time, ...) so that lme4
# and fast_lmm see the same units. Optimiser tolerances are tight so that lme4 sits at the
# optimum to many digits; bobyqa is used because it stops on the bound exactly in singular fits.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

ctrl <- lmerControl(optimizer = "bobyqa",
                    optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e5),
                    check.conv.singular = "ignore", calc.derivs = FALSE)

random_terms <- list(
  patient = list(formula = "(1|patient)", names = c(patient = "patient")),
  therapist_patient = list(formula = "(1|therapist) + (1|th_pat)",
                           names = c(therapist = "therapist", th_pat = "patient")),
  default = list(formula = "(1|therapist) + (1|th_time) + (1|th_pat)",
                 names = c(therapist = "therapist", th_time = "therapist:time",
                           th_pat = "patient")),
  clinic = list(formula = "(1|clinic) + (1|cl_th) + (1|cl_th_time) + (1|cl_th_pat)",
                names = c(clinic = "clinic", cl_th = "therapist",
                          cl_th_time = "therapist:time", cl_th_pat = "patient")),
  clinic_time = list(formula = "(1|clinic) + (1|cl_time) + (1|cl_th) + (1|cl_th_pat)",
                     names = c(clinic = "clinic", cl_time = "clinic:time",
                               cl_th = "therapist", cl_th_pat = "patient")),
  therapist_time_only = list(formula = "(1|therapist) + (1|th_time)",
                             names = c(therapist = "therapist", th_time = "therapist:time"))
)

cases <- list(
  list(name = "balanced_default_reml", data = "balanced", random = "default", reml = TRUE),
  list(name = "balanced_default_ml", data = "balanced", random = "default", reml = FALSE),
  list(name = "balanced_clinic_reml", data = "balanced", random = "clinic", reml = TRUE),
  list(name = "balanced_clinic_time_reml", data = "balanced", random = "clinic_time",
       reml = TRUE),
  list(name = "balanced_patient_reml", data = "balanced", random = "patient", reml = TRUE),
  list(name = "unbalanced_default_reml", data = "unbalanced", random = "default", reml = TRUE),
  list(name = "unbalanced_default_ml", data = "unbalanced", random = "default", reml = FALSE),
  list(name = "unbalanced_therapist_patient_reml", data = "unbalanced",
       random = "therapist_patient", reml = TRUE),
  list(name = "unbalanced_clinic_ml", data = "unbalanced", random = "clinic", reml = FALSE),
  list(name = "unbalanced_therapist_time_only_reml", data = "unbalanced",
       random = "therapist_time_only", reml = TRUE),
  list(name = "singular_default_reml", data = "singular", random = "default", reml = TRUE),
  list(name = "singular_default_ml", data = "singular", random = "default", reml = FALSE)
)

fit_case <- function(case) {
  d <- read.csv(file.path("tests/golden/fast_lmm", paste0(case$data, ".csv")),
                stringsAsFactors = FALSE)
  d$th_time <- paste(d$therapist, d$time, sep = ":")
  d$th_pat <- paste(d$therapist, d$patient, sep = ":")
  d$cl_time <- paste(d$clinic, d$time, sep = ":")
  d$cl_th <- paste(d$clinic, d$therapist, sep = ":")
  d$cl_th_time <- paste(d$clinic, d$therapist, d$time, sep = ":")
  d$cl_th_pat <- paste(d$clinic, d$therapist, d$patient, sep = ":")
  rt <- random_terms[[case$random]]
  f <- as.formula(paste("y ~ arm * time + age + sex +", rt$formula))
  fit <- lmerTest::lmer(f, data = d, REML = case$reml, control = ctrl)
  co <- summary(fit, ddf = "Satterthwaite")$coefficients
  vc <- as.data.frame(VarCorr(fit))
  names_map <- c(rt$names, Residual = "residual")
  theta <- getME(fit, "theta")
  list(case = case$name, data = case$data, random = case$random, reml = case$reml,
       formula = deparse1(f), n_observations = nrow(d),
       fixed_effects = data.frame(term = rownames(co), estimate = co[, "Estimate"],
                                  std_error = co[, "Std. Error"], df = co[, "df"],
                                  row.names = NULL),
       variance_components = setNames(as.list(vc$vcov), names_map[vc$grp]),
       theta = setNames(as.list(unname(theta)),
                        unname(names_map[sub(".\\(Intercept\\)$", "", names(theta))])),
       loglik = as.numeric(logLik(fit)), singular = isSingular(fit))
}

out <- lapply(cases, fit_case)
names(out) <- vapply(cases, function(x) x$name, "")
out <- list(cases = out,
            r_versions = list(R = R.version.string,
                              lme4 = as.character(packageVersion("lme4")),
                              lmerTest = as.character(packageVersion("lmerTest"))))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"),
           "tests/golden/fast_lmm/reference.json")
