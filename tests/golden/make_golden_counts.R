# Reference values for the sessions (count model) and responder golden tests.
#
# Run from the repository root:
#   python tests/golden/make_golden_counts_data.py   # (re)writes tests/golden/data/counts_*.csv
#   Rscript tests/golden/make_golden_counts.R        # writes tests/golden/reference/counts_*.csv
# Needs R >= 4.2 with MASS and sandwich (Debian: apt-get install r-cran-sandwich).
#
# For each dataset it fits, with covariates age + sex + symptom_duration_weeks:
#   nb_adjusted / nb_unadjusted  MASS::glm.nb (theta by ML), log link
#   poisson_adjusted             glm(family = poisson)
#   logistic_unadjusted/adjusted glm(family = binomial) for responder = change >= MCID (5)
#   lpm_unadjusted               lm(responder ~ arm_intervention) (risk difference)
# and reports coefficients, model-based SEs (summary()) and therapist-clustered SEs
# sandwich::vcovCL(fit, cluster = ~therapist_id, type = "HC1") (CR1: G/(G-1) * (n-1)/(n-k)).
# Scalars: theta, SE(theta), NB log-likelihood, responder counts, the risk difference with the
# Newcombe hybrid score interval (from Wilson intervals of prop.test(correct = FALSE)) and the
# Pearson chi-square p-value.

suppressPackageStartupMessages({
  library(MASS)
  library(sandwich)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "tests/golden"
data_dir <- file.path(here, "data")
ref_dir <- file.path(here, "reference")
dir.create(ref_dir, showWarnings = FALSE)

mcid <- 5
level <- 0.95
tight <- glm.control(epsilon = 1e-12, maxit = 200)

coef_rows <- function(fit, name) {
  cl <- sqrt(diag(vcovCL(fit, cluster = ~therapist_id, type = "HC1")))
  data.frame(fit = name, term = names(coef(fit)), estimate = unname(coef(fit)),
             std_error_model = unname(sqrt(diag(vcov(fit)))),
             std_error_cluster = unname(cl), stringsAsFactors = FALSE)
}

for (name in c("balanced", "unbalanced", "smallcell")) {
  d <- read.csv(file.path(data_dir, paste0("counts_", name, ".csv")), stringsAsFactors = FALSE)
  d$responder <- as.integer(d$function_followup - d$function_baseline >= mcid)

  nb_adj <- glm.nb(n_sessions ~ arm_intervention + age + sex + symptom_duration_weeks,
                   data = d, control = tight)
  nb_unadj <- glm.nb(n_sessions ~ arm_intervention, data = d, control = tight)
  pois <- glm(n_sessions ~ arm_intervention + age + sex + symptom_duration_weeks,
              family = poisson, data = d, control = tight)
  logit_unadj <- glm(responder ~ arm_intervention, family = binomial, data = d, control = tight)
  logit_adj <- glm(responder ~ arm_intervention + age + sex + symptom_duration_weeks,
                   family = binomial, data = d, control = tight)
  lpm <- lm(responder ~ arm_intervention, data = d)

  coefs <- rbind(coef_rows(nb_adj, "nb_adjusted"), coef_rows(nb_unadj, "nb_unadjusted"),
                 coef_rows(pois, "poisson_adjusted"),
                 coef_rows(logit_unadj, "logistic_unadjusted"),
                 coef_rows(logit_adj, "logistic_adjusted"), coef_rows(lpm, "lpm_unadjusted"))

  r1 <- sum(d$responder[d$arm_intervention == 1]); n1 <- sum(d$arm_intervention == 1)
  r0 <- sum(d$responder[d$arm_intervention == 0]); n0 <- sum(d$arm_intervention == 0)
  w1 <- prop.test(r1, n1, conf.level = level, correct = FALSE)$conf.int
  w0 <- prop.test(r0, n0, conf.level = level, correct = FALSE)$conf.int
  p1 <- r1 / n1; p0 <- r0 / n0
  rd <- p1 - p0
  rd_low <- rd - sqrt((p1 - w1[1])^2 + (w0[2] - p0)^2)
  rd_high <- rd + sqrt((w1[2] - p1)^2 + (p0 - w0[1])^2)
  chisq_p <- suppressWarnings(
    chisq.test(matrix(c(r1, n1 - r1, r0, n0 - r0), 2, byrow = TRUE), correct = FALSE)$p.value)

  scalars <- data.frame(
    quantity = c("nb_adjusted_theta", "nb_adjusted_theta_se", "nb_adjusted_loglik",
                 "nb_unadjusted_theta", "responders_intervention", "n_intervention",
                 "responders_control", "n_control", "wilson_low_intervention",
                 "wilson_high_intervention", "wilson_low_control", "wilson_high_control",
                 "risk_difference", "risk_difference_ci_low", "risk_difference_ci_high",
                 "risk_difference_p_chisq"),
    value = c(nb_adj$theta, nb_adj$SE.theta, as.numeric(logLik(nb_adj)), nb_unadj$theta,
              r1, n1, r0, n0, w1[1], w1[2], w0[1], w0[2], rd, rd_low, rd_high, chisq_p))

  write.csv(coefs, file.path(ref_dir, paste0("counts_", name, "_coefficients.csv")),
            row.names = FALSE)
  write.csv(format(scalars, digits = 15), file.path(ref_dir, paste0("counts_", name, "_scalars.csv")),
            row.names = FALSE)
}
cat("wrote", ref_dir, "\n")
