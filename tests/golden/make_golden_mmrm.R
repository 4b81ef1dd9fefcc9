# Golden reference values for trial_analysis.models.mmrm (tests/models/test_golden_mmrm.py).
#
# Run from the repository root: Rscript tests/golden/make_golden_mmrm.R
# Needs nlme, emmeans, numDeriv, jsonlite (MMRM) and lme4, lmerTest, pbkrtest (the
# Kenward-Roger cases of the random-intercept models). Writes tests/golden/reference/mmrm_*.json
# and kr_*.json.
#
# Where each number comes from:
# - fixed effects, vcov, -2 logLik, the covariance matrix: nlme::gls with corSymm + varIdent
#   (unstructured), corCompSymm (+ varIdent), corAR1 (+ varIdent), corARMA(p = T - 1) (+
#   varIdent: any positive definite Toeplitz correlation is an AR(T - 1) one), tolerances
#   tightened so that the reference sits at the optimum;
# - adjusted means and arm contrasts per visit: emmeans on the gls fit (its linfct rows are
#   written, so both sides use the same L); emmeans' own gls Satterthwaite df (mode
#   "satterthwaite", from nlme's finite-difference apVar) are written as `df_emmeans`;
# - Satterthwaite and Kenward-Roger df in the natural covariance parameters (the ones SAS
#   reports): no Debian R package computes them for gls (pbkrtest and lmerTest handle merMod
#   only; mmrm is not packaged), so this script computes them from the gls fit with numDeriv
#   (`kr_df`, `satt_df`, `kr_se`), independently of the Python code. That computation is
#   checked here against pbkrtest/lmerTest on the compound-symmetry model, which is the
#   random-intercept lmer model (1 | id); the check is recorded in `kr_check` and the
#   script stops if it fails.
suppressPackageStartupMessages({
  library(nlme); library(emmeans); library(numDeriv); library(jsonlite)
  library(lme4); library(lmerTest); library(pbkrtest)
})

root <- "tests/golden"
d <- read.csv(file.path(root, "data", "mmrm.csv"))
visits <- c("w4", "w8", "w12", "w24")
d$visit <- factor(d$visit, levels = visits)
d$id <- factor(d$id)
T <- length(visits)
form <- y ~ arm * visit + baseline + age
ctrl <- glsControl(maxIter = 500, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14,
                   returnObject = FALSE)

# --- Sigma as a function of the natural parameters (as CovarianceStructure.sigma_theta) -----
lagm <- abs(outer(1:T, 1:T, "-"))
sigma_theta <- function(structure, het, theta) {
  if (structure == "unstructured") {
    S <- matrix(0, T, T); k <- 1
    for (i in 1:T) for (j in 1:i) { S[i, j] <- theta[k]; S[j, i] <- theta[k]; k <- k + 1 }
    return(S)
  }
  if (!het && structure == "compound_symmetry") return(theta[1] + diag(theta[2], T))
  if (!het && structure == "toeplitz") return(matrix(theta[lagm + 1], T, T))
  nsd <- if (het) T else 1
  sd <- sqrt(theta[1:nsd]); if (!het) sd <- rep(sd, T)
  rho <- theta[-(1:nsd)]
  C <- switch(structure,
              compound_symmetry = ifelse(lagm == 0, 1, rho[1]),
              ar1 = rho[1]^lagm,
              toeplitz = matrix(c(1, rho)[lagm + 1], T, T))
  C * outer(sd, sd)
}
theta_of <- function(structure, het, S) {
  if (structure == "unstructured") {
    out <- c(); for (i in 1:T) for (j in 1:i) out <- c(out, S[i, j]); return(out)
  }
  off <- S[row(S) != col(S)]
  if (!het && structure == "compound_symmetry") return(c(mean(off), mean(diag(S)) - mean(off)))
  if (!het && structure == "toeplitz") return(sapply(0:(T - 1), function(k) mean(S[lagm == k])))
  sd <- sqrt(diag(S)); C <- S / outer(sd, sd)
  rho <- sapply(1:(T - 1), function(k) mean(C[lagm == k]))
  var <- if (het) diag(S) else mean(diag(S))
  c(var, if (structure == "toeplitz") rho else rho[1])
}
linear_structure <- function(structure, het)
  structure == "unstructured" || (!het && structure %in% c("compound_symmetry", "toeplitz"))

# --- the patients' blocks --------------------------------------------------------------------
X_all <- model.matrix(form, d)
blocks <- lapply(split(seq_len(nrow(d)), d$id, drop = TRUE), function(r)
  list(X = X_all[r, , drop = FALSE], y = d$y[r], v = d$visit_idx[r]))
n <- nrow(d); p <- ncol(X_all)

deviance_at <- function(S, reml) {
  XtVX <- matrix(0, p, p); XtVy <- rep(0, p); yVy <- 0; ld <- 0
  for (b in blocks) {
    Si <- solve(S[b$v, b$v, drop = FALSE])
    ld <- ld + determinant(S[b$v, b$v, drop = FALSE])$modulus
    XtVX <- XtVX + t(b$X) %*% Si %*% b$X
    XtVy <- XtVy + t(b$X) %*% Si %*% b$y
    yVy <- yVy + drop(t(b$y) %*% Si %*% b$y)
  }
  beta <- solve(XtVX, XtVy)
  r2 <- yVy - sum(beta * XtVy)
  if (reml) ld + determinant(XtVX)$modulus + r2 + (n - p) * log(2 * pi)
  else ld + r2 + n * log(2 * pi)
}

# Kenward-Roger (1997) adjusted vcov and the pieces of its df (pbkrtest's formulas, with the
# second-derivative term R_ij for non-linear structures).
kr_pieces <- function(structure, het, theta) {
  S <- sigma_theta(structure, het, theta)
  k <- length(theta)
  D <- jacobian(function(t) c(sigma_theta(structure, het, t)), theta)
  Dl <- lapply(1:k, function(i) matrix(D[, i], T, T))
  lin <- linear_structure(structure, het)
  Hl <- NULL
  if (!lin) {
    Hl <- lapply(1:k, function(i) lapply(1:k, function(j) matrix(0, T, T)))
    for (a in 1:T) for (b in 1:T) {
      h <- hessian(function(t) sigma_theta(structure, het, t)[a, b], theta)
      for (i in 1:k) for (j in 1:k) Hl[[i]][[j]][a, b] <- h[i, j]
    }
  }
  XtVX <- matrix(0, p, p)
  P <- lapply(1:k, function(i) matrix(0, p, p))
  Q <- lapply(1:k, function(i) lapply(1:k, function(j) matrix(0, p, p)))
  R <- lapply(1:k, function(i) lapply(1:k, function(j) matrix(0, p, p)))
  TR <- matrix(0, k, k)
  for (b in blocks) {
    v <- b$v
    Si <- solve(S[v, v, drop = FALSE])
    C <- Si %*% b$X
    XtVX <- XtVX + t(b$X) %*% C
    for (i in 1:k) {
      Di <- Dl[[i]][v, v, drop = FALSE]
      P[[i]] <- P[[i]] - t(C) %*% Di %*% C
      for (j in 1:k) {
        Dj <- Dl[[j]][v, v, drop = FALSE]
        Q[[i]][[j]] <- Q[[i]][[j]] + t(C) %*% Di %*% Si %*% Dj %*% C
        TR[i, j] <- TR[i, j] + sum(diag(Si %*% Di %*% Si %*% Dj))
        if (!lin) R[[i]][[j]] <- R[[i]][[j]] + t(C) %*% Hl[[i]][[j]][v, v, drop = FALSE] %*% C
      }
    }
  }
  Phi <- solve(XtVX)
  IE2 <- matrix(0, k, k)
  for (i in 1:k) for (j in 1:k)
    IE2[i, j] <- sum(diag(Phi %*% P[[i]] %*% Phi %*% P[[j]])) - 2 * sum(diag(Phi %*% Q[[i]][[j]])) + TR[i, j]
  W <- 2 * solve(IE2)
  U <- matrix(0, p, p)
  for (i in 1:k) for (j in 1:k)
    U <- U + W[i, j] * (Q[[i]][[j]] - P[[i]] %*% Phi %*% P[[j]] - R[[i]][[j]] / 4)
  PhiA <- Phi + 2 * Phi %*% U %*% Phi
  attr(PhiA, "P") <- P; attr(PhiA, "W") <- W
  list(Phi = Phi, PhiA = PhiA, P = P)
}

satt_pieces <- function(structure, het, theta, reml) {
  H <- hessian(function(t) deviance_at(sigma_theta(structure, het, t), reml), theta)
  e <- eigen(H, symmetric = TRUE)
  pos <- e$values > 1e-8
  A <- 2 * e$vectors[, pos, drop = FALSE] %*% diag(1 / e$values[pos], sum(pos)) %*%
    t(e$vectors[, pos, drop = FALSE])
  kp <- kr_pieces(structure, het, theta)  # its Phi and P give the analytic Jacobian
  list(A = A, Phi = kp$Phi, P = kp$P, kr = kp)
}
satt_df <- function(L, sp) {
  L <- drop(L)
  g <- sapply(sp$P, function(Pk) -drop(t(L) %*% sp$Phi %*% Pk %*% sp$Phi %*% L))
  2 * drop(t(L) %*% sp$Phi %*% L)^2 / drop(t(g) %*% sp$A %*% g)
}

corr_of <- function(structure) switch(structure,
  unstructured = corSymm(form = ~ visit_idx | id),
  compound_symmetry = corCompSymm(form = ~ visit_idx | id),
  ar1 = corAR1(form = ~ visit_idx | id),
  toeplitz = corARMA(form = ~ visit_idx | id, p = T - 1, q = 0))

complete_id <- names(which(table(d$id) == T))[1]
cases <- list(
  list(name = "un_reml", structure = "unstructured", het = TRUE, reml = TRUE),
  list(name = "un_ml", structure = "unstructured", het = TRUE, reml = FALSE),
  list(name = "cs_reml", structure = "compound_symmetry", het = FALSE, reml = TRUE),
  list(name = "csh_reml", structure = "compound_symmetry", het = TRUE, reml = TRUE),
  list(name = "ar1_reml", structure = "ar1", het = FALSE, reml = TRUE),
  list(name = "arh1_ml", structure = "ar1", het = TRUE, reml = FALSE),
  list(name = "toep_reml", structure = "toeplitz", het = FALSE, reml = TRUE),
  list(name = "toeph_reml", structure = "toeplitz", het = TRUE, reml = TRUE)
)
versions <- sapply(c("nlme", "emmeans", "numDeriv", "lme4", "lmerTest", "pbkrtest"),
                   function(x) as.character(packageVersion(x)))
rows_of <- function(L, est, se, extra) lapply(seq_len(nrow(L)), function(i) c(extra[[i]], list(
  L = unname(L[i, ]), estimate = est[i], std_error = se[i])))

only <- Sys.getenv("MMRM_CASES")
if (nzchar(only)) cases <- Filter(function(z) z$name %in% strsplit(only, ",")[[1]], cases)
for (cs in cases) {
  args <- list(model = form, data = d, correlation = corr_of(cs$structure),
               method = if (cs$reml) "REML" else "ML", control = ctrl)
  if (cs$het) args$weights <- varIdent(form = ~ 1 | visit)
  fit <- do.call(gls, args)
  S <- matrix(as.numeric(getVarCov(fit, individual = complete_id)), T, T)
  theta_gls <- theta_of(cs$structure, cs$het, S)
  # nlme's optimiser stops where the deviance is flat to ~1e-8, with the covariance
  # parameters ~1e-5 off; Newton steps on numDeriv's gradient and Hessian finish the job, so
  # the reference is the optimum itself (both -2 logLik values are written).
  devfun <- function(t) deviance_at(sigma_theta(cs$structure, cs$het, t), cs$reml)
  theta <- theta_gls
  for (it in 1:4) {
    g <- grad(devfun, theta)
    if (max(abs(g)) < 1e-9) break
    theta <- theta - solve(hessian(devfun, theta), g)
  }
  S <- sigma_theta(cs$structure, cs$het, theta)
  # GLS estimates at the polished optimum.
  V_fit <- local({
    XtVX <- matrix(0, p, p); XtVy <- rep(0, p)
    for (b in blocks) { Si <- solve(S[b$v, b$v, drop = FALSE])
      XtVX <- XtVX + t(b$X) %*% Si %*% b$X; XtVy <- XtVy + t(b$X) %*% Si %*% b$y }
    list(vcov = solve(XtVX), beta = drop(solve(XtVX, XtVy)))
  })
  beta_hat <- V_fit$beta; vcov_hat <- V_fit$vcov
  sp <- satt_pieces(cs$structure, cs$het, theta, cs$reml)
  emm <- emmeans(fit, ~ arm | visit, at = list(arm = c(0, 1)), mode = "satterthwaite",
                 data = d)
  con <- contrast(emm, "revpairwise")
  es <- as.data.frame(summary(emm)); cs_sum <- as.data.frame(summary(con))
  Lm <- emm@linfct; Lc <- con@linfct
  one <- function(L, s) {
    out <- list(L = unname(L), estimate = sum(L * beta_hat),
                std_error = sqrt(drop(t(L) %*% vcov_hat %*% L)),
                gls_estimate = sum(L * coef(fit)),
                gls_std_error = sqrt(drop(t(L) %*% vcov(fit) %*% L)),
                satt_df = satt_df(L, sp))
    if (cs$reml) {
      out$kr_se <- sqrt(drop(t(L) %*% sp$kr$PhiA %*% L))
      out$kr_df <- pbkrtest::Lb_ddf(L = matrix(L, nrow = 1), V0 = sp$kr$Phi, Vadj = sp$kr$PhiA)
    }
    out
  }
  means <- lapply(seq_len(nrow(Lm)), function(i) c(list(arm = es$arm[i], visit = as.character(es$visit[i]),
                  emmeans_estimate = es$emmean[i], emmeans_se = es$SE[i], df_emmeans = es$df[i]),
                  one(Lm[i, ], sp)))
  contrasts <- lapply(seq_len(nrow(Lc)), function(i) c(list(visit = as.character(cs_sum$visit[i]),
                  emmeans_estimate = cs_sum$estimate[i], emmeans_se = cs_sum$SE[i],
                  df_emmeans = cs_sum$df[i]), one(Lc[i, ], sp)))
  coefs <- lapply(seq_len(p), function(j) { L <- rep(0, p); L[j] <- 1
    c(list(term = colnames(X_all)[j]), one(L, sp)) })
  out <- list(case = cs$name, structure = cs$structure, heterogeneous = cs$het, reml = cs$reml,
              formula = deparse(form), visits = visits, columns = colnames(X_all),
              coefficients = coefs, vcov = unname(vcov_hat), sigma = unname(S),
              theta = theta, theta_gls = theta_gls,
              minus2loglik_gls = -2 * as.numeric(logLik(fit)),
              minus2loglik = deviance_at(S, cs$reml),
              means = means, contrasts = contrasts, versions = as.list(versions))
  if (cs$name == "cs_reml") {
    # The same model as a random-intercept lmer fit: pbkrtest's KR and lmerTest's df must
    # equal this script's own computation.
    m <- lmer(y ~ arm * visit + baseline + age + (1 | id), data = d, REML = TRUE,
              control = lmerControl(optimizer = "nloptwrap",
                                    optCtrl = list(xtol_abs = 1e-12, ftol_rel = 1e-15)))
    chk <- lapply(contrasts, function(cn) {
      ct <- contest(m, matrix(cn$L, nrow = 1), ddf = "Kenward-Roger", joint = FALSE)
      list(kr_df_lmerTest = ct$df, kr_se_lmerTest = ct[["Std. Error"]],
           kr_df_here = cn$kr_df, kr_se_here = cn$kr_se)
    })
    worst <- max(sapply(chk, function(z) abs(z$kr_df_lmerTest / z$kr_df_here - 1)))
    if (worst > 1e-5) stop("KR check against lmerTest failed: ", worst)
    out$kr_check <- chk
  }
  write_json(out, file.path(root, "reference", paste0("mmrm_", cs$name, ".json")),
             digits = NA, auto_unbox = TRUE, pretty = TRUE)
  cat(cs$name, "done; -2logLik gls", format(out$minus2loglik_gls, digits = 15), "polished", format(out$minus2loglik, digits = 15), "\n")
}
