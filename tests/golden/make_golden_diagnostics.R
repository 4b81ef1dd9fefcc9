# Reference values for tests/models/test_diagnostics.py, from lme4: conditional residuals,
# fitted values and conditional modes (ranef) of the primary model.
#
# Run from the repository root:  Rscript tests/golden/make_golden_diagnostics.R
# Reads tests/golden/data/cohort.csv and writes
# tests/golden/reference/diagnostics_cohort_function_cc.json. The model is the one of case
# cohort_function_cc in make_golden_models.R (same long data, formula and optimiser settings).
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

ctrl <- lmerControl(optimizer = "nloptwrap",
                    optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, ftol_rel = 1e-15,
                                   maxeval = 1e5),
                    check.conv.singular = "ignore")

d <- read.csv("tests/golden/data/cohort.csv", stringsAsFactors = FALSE)
d <- d[d$complete_function == 1 & !is.na(d$function_baseline), ]
rows <- lapply(0:1, function(t) {
  col <- if (t == 0) "function_baseline" else "function_followup"
  data.frame(patient = d$patient_id, therapist = d$therapist_id, arm = d$arm_intervention,
             time = t, score = d[[col]], age = d$age, sex = factor(d$sex, levels = c("F", "M")),
             symptom_duration_weeks = d$symptom_duration_weeks, stringsAsFactors = FALSE)
})
l <- do.call(rbind, rows)
l <- l[!is.na(l$score), ]
l$therapist_time <- paste(l$therapist, l$time, sep = ":")
f <- score ~ arm * time + (age + sex + symptom_duration_weeks) * time +
  (1 | therapist) + (1 | therapist_time) + (1 | patient)
fit <- lmer(f, data = l, REML = TRUE, control = ctrl)
re <- ranef(fit)
modes <- function(name) {
  r <- re[[name]]
  data.frame(unit = rownames(r), mode = r[["(Intercept)"]], stringsAsFactors = FALSE)
}
out <- list(
  case = "cohort_function_cc", formula = deparse1(f), n_observations = nrow(l),
  residuals = data.frame(patient = l$patient, time = l$time, fitted = unname(fitted(fit)),
                         residual = unname(residuals(fit))),
  ranef = list(therapist = modes("therapist"), `therapist:time` = modes("therapist_time"),
               patient = modes("patient")),
  r_versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")))
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = FALSE, dataframe = "rows"),
           "tests/golden/reference/diagnostics_cohort_function_cc.json")
