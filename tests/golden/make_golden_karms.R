# Golden reference values for k >= 2 arms (tests/models/test_golden_karms.py).
#
# Run from the repository root: Rscript tests/golden/make_golden_karms.R
# Needs lme4, lmerTest, emmeans, multcomp, nlme, jsonlite. Reads tests/golden/data/karms.csv
# (written by make_golden_karms_data.py) and writes tests/golden/reference/karms_*.json.
#
# Three arms, Placebo the reference, one model with all arms (arm a factor, treatment coding):
# - lm (ANCOVA, one follow-up): score ~ arm + baseline + age + sex;
#   emmeans(~ arm) contrasts trt.vs.ctrl and revpairwise (later minus earlier,
#   multcomp's order), adjust none and holm; multcomp glht(mcp(arm = "Dunnett" / "Tukey")),
#   test = adjusted("single-step"), and confint(glht) simultaneous intervals.
# - lmer (change score, baseline and v3, random patient intercept):
#   score ~ arm * time + age + sex + (1 | patient), REML; the contrasts are the arm:time
#   coefficients (and their difference), by lmerTest::contest (Satterthwaite df), Holm by
#   p.adjust; single step by glht(model, linfct = K, df = floor(df)) (multcomp's multivariate t
#   needs an integer df; the Python test evaluates its method at the same integer df).
# - gls (MMRM, baseline as covariate, visits v1-v3, unstructured: corSymm + varIdent, REML):
#   score ~ arm * visit + baseline + (age + sex) * visit; contrasts of each arm against the
#   reference at every visit (estimate, SE; df are the MMRM module's own, checked elsewhere),
#   and single step at v3 with normal (df = 0) multivariate probabilities.
# multcomp's probabilities are randomised quasi-Monte Carlo (set.seed; abseps 1e-6): adjusted
# values agree to ~1e-4, unadjusted ones are exact.
suppressPackageStartupMessages({
  library(lme4); library(lmerTest); library(emmeans); library(multcomp); library(nlme)
  library(jsonlite)
})
set.seed(20261207)
root <- "tests/golden"
d <- read.csv(file.path(root, "data", "karms.csv"))
d$arm <- factor(d$arm, levels = c("Placebo", "Low", "High"))
d$sex <- factor(d$sex)
alg <- GenzBretz(maxpts = 1e6, abseps = 1e-6, releps = 0)

rows_of <- function(s, est = "estimate", se = "SE", df = "df", p = "p.value") {
  lapply(seq_len(nrow(s)), function(i) list(contrast = as.character(s$contrast[i]),
    estimate = s[[est]][i], std_error = s[[se]][i], df = s[[df]][i], p_value = s[[p]][i]))
}
glht_rows <- function(g, level = 0.95) {
  s <- summary(g, test = adjusted("single-step", abseps = 1e-6, maxpts = 1e6))
  ci <- confint(g, level = level, calpha = adjusted_calpha(abseps = 1e-6, maxpts = 1e6))
  list(contrast = names(s$test$coefficients), estimate = unname(s$test$coefficients),
       std_error = unname(s$test$sigma), p_adjusted = unname(as.numeric(s$test$pvalues)),
       ci_low_adjusted = unname(ci$confint[, "lwr"]), ci_high_adjusted = unname(ci$confint[, "upr"]),
       critical = attr(ci$confint, "calpha"))
}
name_pairs <- function(x) gsub(" - ", " vs ", x)

# --- lm: ANCOVA at v3 -----------------------------------------------------------------------
a <- d[!is.na(d$y0) & !is.na(d$y3), ]
a$baseline <- a$y0; a$score <- a$y3
m_lm <- lm(score ~ arm + baseline + age + sex, data = a)
em <- emmeans(m_lm, ~ arm)
trt <- contrast(em, "trt.vs.ctrl", ref = 1)
pairs_ <- contrast(em, "revpairwise")
fix_names <- function(r) { for (i in seq_along(r)) r[[i]]$contrast <- name_pairs(r[[i]]$contrast); r }
lm_out <- list(
  model = "lm", formula = "score ~ arm + baseline + age + sex", n = nrow(a),
  coefficients = as.list(coef(m_lm)), vcov = unname(vcov(m_lm)), df_residual = m_lm$df.residual,
  means = lapply(seq_len(nrow(summary(em))), function(i) {
    s <- summary(em); list(arm = as.character(s$arm[i]), estimate = s$emmean[i], std_error = s$SE[i])}),
  reference = list(none = fix_names(rows_of(summary(trt, adjust = "none"))),
                   holm = fix_names(rows_of(summary(trt, adjust = "holm")))),
  all_pairs = list(none = fix_names(rows_of(summary(pairs_, adjust = "none"))),
                   holm = fix_names(rows_of(summary(pairs_, adjust = "holm")))),
  dunnett = glht_rows(glht(m_lm, linfct = mcp(arm = "Dunnett"))),
  tukey = glht_rows(glht(m_lm, linfct = mcp(arm = "Tukey"))))
lm_out$dunnett$contrast <- name_pairs(lm_out$dunnett$contrast)
lm_out$tukey$contrast <- name_pairs(lm_out$tukey$contrast)
write_json(lm_out, file.path(root, "reference", "karms_lm.json"), digits = NA, auto_unbox = TRUE,
           pretty = TRUE)

# --- lmer: change score, baseline and v3, random patient intercept -----------------------------
keep <- !is.na(d$y0)
long <- rbind(data.frame(patient = d$id, arm = d$arm, age = d$age, sex = d$sex, time = 0, score = d$y0),
              data.frame(patient = d$id, arm = d$arm, age = d$age, sex = d$sex, time = 1, score = d$y3))
long <- long[long$patient %in% d$id[keep] & !is.na(long$score), ]
m_lmer <- lmer(score ~ arm * time + age + sex + (1 | patient), data = long, REML = TRUE)
b <- fixef(m_lmer)
K <- rbind("Low vs Placebo" = as.numeric(names(b) == "armLow:time"),
           "High vs Placebo" = as.numeric(names(b) == "armHigh:time"),
           "High vs Low" = as.numeric(names(b) == "armHigh:time") - as.numeric(names(b) == "armLow:time"))
colnames(K) <- names(b)
contest_rows <- function(Ks) {
  lapply(rownames(Ks), function(r) {
    ct <- contest(m_lmer, Ks[r, , drop = FALSE], joint = FALSE, ddf = "Satterthwaite")
    list(contrast = r, estimate = ct$Estimate, std_error = ct$`Std. Error`, df = ct$df,
         p_value = ct$`Pr(>|t|)`)
  })
}
with_holm <- function(r) { p <- p.adjust(sapply(r, `[[`, "p_value"), "holm")
  for (i in seq_along(r)) r[[i]]$p_adjusted <- p[i]; r }
ref_rows <- with_holm(contest_rows(K[1:2, ]))
pair_rows <- with_holm(contest_rows(K))
int_df <- function(r) floor(min(sapply(r, `[[`, "df")))
m_lmer_lm <- m_lmer
lmer_out <- list(
  model = "lmer", formula = "score ~ arm * time + age + sex + (1 | patient)", n = nrow(long),
  coefficients = as.list(b), vcov = unname(as.matrix(vcov(m_lmer))),
  sigma2 = sigma(m_lmer)^2, patient_var = as.numeric(VarCorr(m_lmer)$patient),
  reference = ref_rows, all_pairs = pair_rows,
  dunnett_df = int_df(ref_rows), tukey_df = int_df(pair_rows),
  dunnett = glht_rows(glht(m_lmer, linfct = K[1:2, ], df = int_df(ref_rows))),
  tukey = glht_rows(glht(m_lmer, linfct = K, df = int_df(pair_rows))))
write_json(lmer_out, file.path(root, "reference", "karms_lmer.json"), digits = NA,
           auto_unbox = TRUE, pretty = TRUE)

# --- gls: MMRM over v1-v3, baseline as covariate, unstructured ---------------------------------
w <- d[!is.na(d$y0), ]
mm <- do.call(rbind, lapply(1:3, function(t) data.frame(
  patient = w$id, arm = w$arm, age = w$age, sex = w$sex, baseline = w$y0, visit = paste0("v", t),
  vi = t, score = w[[paste0("y", t)]])))
mm <- mm[!is.na(mm$score), ]
mm <- mm[order(mm$patient, mm$vi), ]
mm$visit <- factor(mm$visit, levels = c("v1", "v2", "v3"))
m_gls <- gls(score ~ arm * visit + baseline + (age + sex) * visit, data = mm, method = "REML",
             correlation = corSymm(form = ~ vi | patient), weights = varIdent(form = ~ 1 | visit),
             control = glsControl(maxIter = 500, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14))
bg <- coef(m_gls)
Lg <- function(arm, v) { L <- setNames(numeric(length(bg)), names(bg))
  L[paste0("arm", arm)] <- 1
  if (v != "v1") L[paste0("arm", arm, ":visit", v)] <- 1
  L }
gls_rows <- list()
for (v in c("v1", "v2", "v3")) for (arm in c("Low", "High")) {
  L <- Lg(arm, v)
  gls_rows[[length(gls_rows) + 1]] <- list(contrast = paste(arm, "vs Placebo"), followup = v,
    estimate = sum(L * bg), std_error = sqrt(as.numeric(t(L) %*% vcov(m_gls) %*% L)))
}
Kg <- rbind("Low vs Placebo" = Lg("Low", "v3"), "High vs Placebo" = Lg("High", "v3"))
gls_out <- list(model = "gls", minus2loglik = -2 * as.numeric(logLik(m_gls)),
  coefficients = as.list(bg), contrasts = gls_rows,
  dunnett_z = glht_rows(glht(m_gls, linfct = Kg, df = 0)))
write_json(gls_out, file.path(root, "reference", "karms_gls.json"), digits = NA,
           auto_unbox = TRUE, pretty = TRUE)
cat("wrote karms_lm.json, karms_lmer.json, karms_gls.json\n")
