# Kenward-Roger reference values for the random-intercept models (lmerTest ddf =
# "Kenward-Roger", which calls pbkrtest::vcovAdj and pbkrtest::Lb_ddf).
#
# Run from the repository root: Rscript tests/golden/make_golden_kr.R
# Reuses the data preparation, formulas and optimiser settings of make_golden_models.R and
# writes tests/golden/reference/kr_{case}.json: every fixed effect's estimate, adjusted SE and
# KR df (contest, joint = FALSE) and the KR F test of all arm terms (joint = TRUE).
golden_helpers_only <- TRUE
source("tests/golden/make_golden_models.R")
suppressPackageStartupMessages(library(pbkrtest))

kr_cases <- Filter(function(z) z$name %in% c("cohort_function_cc", "cohort_pain_cc_patient",
                                              "cohort_function_cc_clinic"), cases)
for (case in kr_cases) {
  d <- read.csv(file.path("tests/golden/data", paste0(case$data, ".csv")),
                stringsAsFactors = FALSE)
  l <- long_data(d, case$outcome, case$population)
  f <- as.formula(paste("score ~ arm * time + (", paste(covariates, collapse = " + "),
                        ") * time +", random_terms[[case$random]]))
  fit <- lmer(f, data = l, REML = TRUE, control = ctrl)
  p <- length(fixef(fit))
  rows <- lapply(seq_len(p), function(j) {
    L <- rep(0, p); L[j] <- 1
    r <- contest(fit, L, joint = FALSE, ddf = "Kenward-Roger")
    list(term = names(fixef(fit))[j], estimate = r$Estimate, std_error = r[["Std. Error"]],
         df = r$df, p_value = r[["Pr(>|t|)"]])
  })
  arm_terms <- grep("arm", names(fixef(fit)))
  L <- diag(p)[arm_terms, , drop = FALSE]
  ft <- contest(fit, L, joint = TRUE, ddf = "Kenward-Roger")
  out <- list(case = case$name, formula = deparse(f, width.cutoff = 500),
              fixed_effects = rows,
              arm_f_test = list(terms = names(fixef(fit))[arm_terms], F = ft[["F value"]],
                                num_df = ft$NumDF, den_df = ft$DenDF, p_value = ft[["Pr(>F)"]]),
              reml_criterion = unname(REMLcrit(fit)),
              versions = list(lme4 = as.character(packageVersion("lme4")),
                              lmerTest = as.character(packageVersion("lmerTest")),
                              pbkrtest = as.character(packageVersion("pbkrtest"))))
  write_json(out, file.path("tests/golden/reference", paste0("kr_", case$name, ".json")),
             digits = NA, auto_unbox = TRUE, pretty = TRUE)
  cat(case$name, "done\n")
}
