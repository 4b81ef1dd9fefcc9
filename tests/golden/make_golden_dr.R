# Golden reference for trial_analysis.causal.doubly_robust: augmented overlap weighting (ATO),
# augmented IPW (ATE) and the bracketing rows (change score, ANCOVA) on tests/golden/data/cohort.csv.
#
# Independent of the Python code: the propensity model is R's glm (unpenalised, clinic as a
# factor), the outcome models lm in each arm, the effects written out by hand, and the
# variance the sandwich of the stacked estimating equations with the bread A = -dU/dtheta
# taken by central finite differences of the summed estimating functions (no analytic
# derivative is shared with the Python side) and the meat summed over therapists.
# Small-sample factor G/(G-1) * (n-1)/(n-p), p = every stacked parameter.
# The bracketing rows are lm fits with sandwich::vcovCL(type = "HC1").
#
# Run from the repository root: Rscript tests/golden/make_golden_dr.R

suppressPackageStartupMessages({
  library(jsonlite)
  library(sandwich)
})

d <- read.csv("tests/golden/data/cohort.csv", stringsAsFactors = FALSE)
d <- d[!is.na(d$function_followup) & !is.na(d$function_baseline), ]
d$sex <- factor(d$sex, levels = c("F", "M"))
d$clinic_id <- factor(d$clinic_id)
n <- nrow(d)
cluster <- as.integer(factor(d$therapist_id))
G <- length(unique(cluster))

ps <- glm(arm_intervention ~ age + sex + symptom_duration_weeks + depression + anxiety + bmi +
            ses_score + function_baseline + pain_baseline + clinic_id,
          family = binomial, data = d, control = glm.control(epsilon = 1e-14, maxit = 100))
X <- model.matrix(ps)
Tr <- d$arm_intervention
Y <- d$function_followup
Z <- model.matrix(~ function_baseline + age + sex + symptom_duration_weeks, data = d)
fit1 <- lm.fit(Z[Tr == 1, ], Y[Tr == 1])
fit0 <- lm.fit(Z[Tr == 0, ], Y[Tr == 0])
kb <- ncol(X)
kz <- ncol(Z)

expit <- function(x) 1 / (1 + exp(-x))

# per-patient stacked estimating functions (n x p) at theta
estfun_stack <- function(theta, estimand) {
  beta <- theta[1:kb]
  g1 <- theta[kb + 1:kz]
  g0 <- theta[kb + kz + 1:kz]
  rest <- theta[-(1:(kb + 2 * kz))]
  e <- expit(drop(X %*% beta))
  m1 <- drop(Z %*% g1)
  m0 <- drop(Z %*% g0)
  u_beta <- X * (Tr - e)
  u_g1 <- Z * (Tr * (Y - m1))
  u_g0 <- Z * ((1 - Tr) * (Y - m0))
  if (estimand == "ate") {
    tau <- rest[1]
    u_tau <- cbind(m1 - m0 + Tr * (Y - m1) / e - (1 - Tr) * (Y - m0) / (1 - e) - tau)
  } else {
    a <- rest[1]; b1 <- rest[2]; b0 <- rest[3]
    u_tau <- cbind(e * (1 - e) * (m1 - m0 - a), Tr * (1 - e) * (Y - m1 - b1),
                   (1 - Tr) * e * (Y - m0 - b0))
  }
  cbind(u_beta, u_g1, u_g0, u_tau)
}

solve_estimand <- function(estimand) {
  e <- fitted(ps)
  m1 <- drop(Z %*% fit1$coefficients)
  m0 <- drop(Z %*% fit0$coefficients)
  if (estimand == "ate") {
    rest <- mean(m1 - m0 + Tr * (Y - m1) / e - (1 - Tr) * (Y - m0) / (1 - e))
    contrast <- 1
  } else {
    h <- e * (1 - e)
    rest <- c(sum(h * (m1 - m0)) / sum(h), sum(Tr * (1 - e) * (Y - m1)) / sum(Tr * (1 - e)),
              sum((1 - Tr) * e * (Y - m0)) / sum((1 - Tr) * e))
    contrast <- c(1, 1, -1)
  }
  theta <- c(coef(ps), fit1$coefficients, fit0$coefficients, rest)
  p <- length(theta)
  U <- estfun_stack(theta, estimand)
  stopifnot(max(abs(colSums(U))) < 1e-6)
  A <- matrix(0, p, p)
  for (j in seq_len(p)) {
    step <- 1e-5 * max(1, abs(theta[j]))
    up <- theta; up[j] <- up[j] + step
    down <- theta; down[j] <- down[j] - step
    A[, j] <- -(colSums(estfun_stack(up, estimand)) - colSums(estfun_stack(down, estimand))) /
      (2 * step)
  }
  totals <- rowsum(U, cluster)
  B <- crossprod(totals)
  Ainv <- solve(A)
  V <- Ainv %*% B %*% t(Ainv) * G / (G - 1) * (n - 1) / (n - p)
  idx <- (p - length(rest) + 1):p
  est <- sum(contrast * rest)
  se <- sqrt(drop(t(contrast) %*% V[idx, idx] %*% contrast))
  list(estimate = est, std_error = se, n_parameters = p, n_patients = n, n_clusters = G)
}

lm_row <- function(formula) {
  f <- lm(formula, data = d)
  v <- vcovCL(f, cluster = ~therapist_id, type = "HC1")
  list(estimate = unname(coef(f)["arm_intervention"]),
       std_error = unname(sqrt(v["arm_intervention", "arm_intervention"])),
       baseline_coefficient = if ("function_baseline" %in% names(coef(f)))
         unname(coef(f)["function_baseline"]) else NA)
}

out <- list(
  case = "cohort_function_cc",
  data = "tests/golden/data/cohort.csv, patients with both function scores",
  propensity = "glm binomial: arm ~ age + sex + symptom_duration_weeks + depression + anxiety + bmi + ses_score + function_baseline + pain_baseline + factor(clinic_id)",
  outcome_model = "lm in each arm: function_followup ~ function_baseline + age + sex + symptom_duration_weeks",
  ato = solve_estimand("ato"),
  ate = solve_estimand("ate"),
  change_score = lm_row(I(function_followup - function_baseline) ~ arm_intervention + age + sex +
                          symptom_duration_weeks),
  ancova = lm_row(function_followup ~ arm_intervention + function_baseline + age + sex +
                    symptom_duration_weeks),
  r_version = R.version.string,
  sandwich_version = as.character(packageVersion("sandwich"))
)
write_json(out, "tests/golden/reference/doubly_robust.json", auto_unbox = TRUE, digits = NA,
           pretty = TRUE)
