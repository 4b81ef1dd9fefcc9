"""Mixed model for repeated measures (MMRM): a marginal model over visits, fitted by hand.

The model is ``y = X beta + e`` with the errors of one patient jointly normal, ``cov(e_i) =
Sigma[v_i, v_i]`` (the rows and columns of the visits patient ``i`` attended), independent
between patients. There are no random patient effects: all within-patient dependence is in
``Sigma``, a T x T matrix over the T scheduled visits with one of these structures
(``analysis.covariance``; SAS PROC MIXED names in brackets):

- ``unstructured`` (UN): every variance and covariance free, T (T + 1) / 2 parameters;
- ``compound_symmetry``: one correlation between any two visits, with a variance per visit
  (CSH) or one variance (CS);
- ``ar1``: correlation rho^|s - t| over visit positions (not times), a variance per visit
  (ARH(1)) or one (AR(1));
- ``toeplitz``: one correlation per lag, a variance per visit (TOEPH) or one (TOEP).

Estimation is REML or ML. The likelihood is profiled over ``beta`` (GLS) and maximised by
quasi-Newton over an unconstrained parametrisation (log-Cholesky for UN, log standard
deviations and transformed correlations otherwise; Toeplitz correlations through their
partial autocorrelations, so every iterate is positive definite). Patients are grouped by
their pattern of attended visits, so every per-patient computation is a batched T x T
operation: the cost is linear in the number of patients.

Inference for contrasts ``L beta``:

- **Satterthwaite**: ``df = 2 (L Phi L')^2 / (g' A g)``, ``Phi = cov(beta)``, ``g`` the
  gradient of ``L Phi L'`` in the covariance parameters (analytic: ``dPhi/dtheta_k = -Phi P_k
  Phi``), ``A = 2 H^-1`` with ``H`` the Hessian of the (RE)ML deviance (the Richardson
  extrapolated Jacobian of its analytic gradient,
  :func:`trial_analysis.models.lmm_inference.richardson_gradient`);
- **Kenward-Roger** (REML only): the bias-corrected covariance ``Phi_A`` and the scaled F
  approximation of Kenward and Roger (1997), computed by
  :class:`trial_analysis.models.lmm_inference.KenwardRogerInference`, including the second
  derivative term ``R_ij`` (zero for the linear structures UN, CS, TOEP).

Both are computed in the *natural* covariance parameters, the ones SAS reports: the
covariances for UN; (covariance, residual) for CS; (variances, correlation) for CSH and
ARH(1); (variance, correlation) for AR(1); the lag covariances for TOEP; (variances, lag
correlations) for TOEPH. Satterthwaite df do not depend on the parametrisation at the optimum;
Kenward-Roger df do, through ``R_ij``, for the non-linear structures.

Why by hand: no Python package fits this model with these covariance structures and gives
the Satterthwaite or Kenward-Roger df that R's ``mmrm`` and SAS PROC MIXED report.
statsmodels' ``GLS`` needs the covariance known, ``MixedLM`` has random effects and no
residual correlation structure, ``GEE`` gives sandwich inference on working correlations,
not likelihood estimates. The estimates, standard errors, variance parameters and log
likelihoods are checked against R's ``nlme::gls`` (``corSymm`` + ``varIdent``,
``corCompSymm``, ``corAR1``, ``corARMA``) and the df against emmeans, pbkrtest and an
independent R computation (``tests/golden/make_golden_mmrm.R``; ``tests/golden/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from trial_analysis.errors import DataError
from trial_analysis.models.lmm_inference import (
    HESSIAN_EIGEN_TOL,
    KenwardRogerInference,
    SatterthwaiteInference,
    kenward_roger_pieces,
    richardson_gradient,
)

COVARIANCE_STRUCTURES = ("unstructured", "compound_symmetry", "ar1", "toeplitz")
DDF_METHODS = ("satterthwaite", "kenward_roger")
# Step of the central differences that give dSigma/dphi for the optimiser's gradient (Sigma
# is a smooth T x T function; this step keeps the truncation and rounding errors near 1e-10).
_PHI_STEP = 1e-5
_LOG_2PI = float(np.log(2 * np.pi))


# ---------------------------------------------------------------------------------------------
# Covariance structures


def _pacf_to_acf(pacf: np.ndarray) -> np.ndarray:
    """Autocorrelations at lags 1..p of the stationary AR(p) with these partial ones
    (Durbin-Levinson); any pacf in (-1, 1)^p gives a positive definite Toeplitz matrix."""
    p = len(pacf)
    acf = np.ones(p + 1)
    coef = np.zeros(0)
    for k in range(1, p + 1):
        a = pacf[k - 1]
        coef = np.append(coef - a * coef[::-1], a)
        acf[k] = float(coef @ acf[k - 1::-1][:k])
    return acf[1:]


def _acf_to_pacf(acf: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pacf_to_acf` (for start values); clipped inside (-1, 1)."""
    p = len(acf)
    r = np.concatenate([[1.0], acf])
    pacf = np.zeros(p)
    coef = np.zeros(0)
    for k in range(1, p + 1):
        num = r[k] - (coef @ r[k - 1:0:-1] if k > 1 else 0.0)
        den = 1 - (coef @ r[1:k] if k > 1 else 0.0)
        a = float(np.clip(num / den, -0.95, 0.95)) if den > 1e-8 else 0.0
        pacf[k - 1] = a
        coef = np.append(coef - a * coef[::-1], a)
    return pacf


@dataclass(frozen=True)
class CovarianceStructure:
    """A T x T covariance structure in two parametrisations.

    ``phi``: unconstrained, for the optimiser (every value gives a positive definite matrix).
    ``theta``: the natural parameters (as SAS reports them), for inference.
    """

    name: str
    n_visits: int
    heterogeneous: bool = True

    def __post_init__(self) -> None:
        if self.name not in COVARIANCE_STRUCTURES:
            raise ValueError(f"unknown covariance structure {self.name!r}")

    @property
    def sas_name(self) -> str:
        """The structure's SAS PROC MIXED name."""
        het = self.heterogeneous and self.n_visits > 1
        return {"unstructured": "UN", "compound_symmetry": "CSH" if het else "CS",
                "ar1": "ARH(1)" if het else "AR(1)", "toeplitz": "TOEPH" if het else "TOEP"
                }[self.name]

    @property
    def linear(self) -> bool:
        """Sigma is linear in theta (second derivatives zero: KR's R_ij vanish)."""
        return self.sas_name in ("UN", "CS", "TOEP")

    @property
    def n_sd(self) -> int:
        return self.n_visits if self.heterogeneous else 1

    @property
    def n_corr(self) -> int:
        T = self.n_visits
        return {"compound_symmetry": 1 if T > 1 else 0, "ar1": 1 if T > 1 else 0,
                "toeplitz": T - 1}.get(self.name, 0)

    @property
    def n_params(self) -> int:
        T = self.n_visits
        if self.name == "unstructured":
            return T * (T + 1) // 2
        return self.n_sd + self.n_corr

    def theta_names(self, labels: list[str]) -> list[str]:
        """Names of the natural parameters, in order (visit labels as given)."""
        T = self.n_visits
        if self.sas_name == "UN":
            return [f"cov[{labels[i]},{labels[j]}]" if i != j else f"var[{labels[i]}]"
                    for i in range(T) for j in range(i + 1)]
        if self.sas_name == "CS":
            return ["covariance", "residual"]
        if self.sas_name == "TOEP":
            return [f"cov[lag {k}]" if k else "var" for k in range(T)]
        sds = [f"var[{lb}]" for lb in labels] if self.heterogeneous else ["var"]
        corr = {"compound_symmetry": ["corr"], "ar1": ["rho"]}.get(
            self.name, [f"corr[lag {k}]" for k in range(1, T)])
        return sds + corr[: self.n_corr]

    def _corr_matrix(self, rho: np.ndarray) -> np.ndarray:
        T = self.n_visits
        lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
        if T == 1:
            return np.ones((1, 1))
        if self.name == "compound_symmetry":
            return np.where(lag == 0, 1.0, rho[0])
        if self.name == "ar1":
            return rho[0] ** lag
        return np.concatenate([[1.0], rho])[lag]

    def _sd_vector(self, sd: np.ndarray) -> np.ndarray:
        return sd if self.heterogeneous else np.repeat(sd, self.n_visits)

    def sigma_phi(self, phi: np.ndarray) -> np.ndarray:
        """Sigma from the unconstrained parameters."""
        T = self.n_visits
        if self.name == "unstructured":
            L = np.zeros((T, T))
            L[np.tril_indices(T)] = phi
            L[np.diag_indices(T)] = np.exp(np.diag(L))
            return L @ L.T
        sd = self._sd_vector(np.exp(phi[: self.n_sd]))
        z = phi[self.n_sd:]
        if self.name == "compound_symmetry" and T > 1:
            low = -1.0 / (T - 1)
            rho = low + (1 - low) / (1 + np.exp(-z))
        elif self.name == "toeplitz":
            rho = _pacf_to_acf(np.tanh(z))
        else:
            rho = np.tanh(z)
        return self._corr_matrix(rho) * np.outer(sd, sd)

    def phi_start(self, S: np.ndarray) -> np.ndarray:
        """Unconstrained parameters of a structure close to the covariance matrix ``S``."""
        T = self.n_visits
        sd = np.sqrt(np.clip(np.diag(S), 1e-8, None))
        corr = S / np.outer(sd, sd)
        if self.name == "unstructured":
            w, U = np.linalg.eigh(corr)
            corr = (U * np.clip(w, 0.05, None)) @ U.T
            d = np.sqrt(np.diag(corr))
            L = np.linalg.cholesky(corr / np.outer(d, d) * np.outer(sd, sd))
            L[np.diag_indices(T)] = np.log(np.diag(L))
            return L[np.tril_indices(T)]
        log_sd = np.log(sd) if self.heterogeneous else np.array([np.log(np.mean(sd))])
        lag_mean = np.array([np.mean(np.diag(corr, k)) for k in range(1, T)])
        lag_mean = np.clip(np.nan_to_num(lag_mean), -0.5, 0.9)
        if T == 1:
            return log_sd
        if self.name == "compound_symmetry":
            low = -1.0 / (T - 1)
            r = float(np.clip(np.mean(lag_mean), low + 0.05, 0.9))
            u = (r - low) / (1 - low)
            return np.append(log_sd, np.log(u / (1 - u)))
        if self.name == "ar1":
            return np.append(log_sd, np.arctanh(np.clip(lag_mean[0], -0.9, 0.9)))
        return np.append(log_sd, np.arctanh(_acf_to_pacf(lag_mean)))

    def sigma_theta(self, theta: np.ndarray) -> np.ndarray:
        """Sigma from the natural parameters."""
        T = self.n_visits
        theta = np.asarray(theta, dtype=float)
        if self.sas_name == "UN":
            S = np.zeros((T, T))
            S[np.tril_indices(T)] = theta
            return S + np.tril(S, -1).T
        if self.sas_name == "CS":
            return theta[0] * np.ones((T, T)) + theta[1] * np.eye(T)
        if self.sas_name == "TOEP":
            lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
            return theta[lag]
        sd = self._sd_vector(np.sqrt(theta[: self.n_sd]))
        return self._corr_matrix(theta[self.n_sd:]) * np.outer(sd, sd)

    def theta_of(self, S: np.ndarray) -> np.ndarray:
        """Natural parameters of a matrix of this structure (inverse of sigma_theta)."""
        T = self.n_visits
        if self.sas_name == "UN":
            return S[np.tril_indices(T)].copy()
        off = S[~np.eye(T, dtype=bool)]
        if self.sas_name == "CS":
            c = float(np.mean(off)) if T > 1 else 0.0
            return np.array([c, float(np.mean(np.diag(S))) - c])
        if self.sas_name == "TOEP":
            return np.array([float(np.mean(np.diag(S, k))) for k in range(T)])
        var = np.diag(S) if self.heterogeneous else np.array([float(np.mean(np.diag(S)))])
        sd = np.sqrt(np.diag(S))
        corr = S / np.outer(sd, sd)
        rho = np.array([float(np.mean(np.diag(corr, k))) for k in range(1, T)])
        return np.concatenate([var, rho[: self.n_corr]])


def _derivatives(fun, x: np.ndarray, step: float) -> np.ndarray:
    """Central-difference derivatives of a matrix function: shape (len(x), T, T)."""
    out = []
    for i in range(len(x)):
        e = np.zeros_like(x)
        h = step * max(1.0, abs(x[i]))
        e[i] = h
        out.append((fun(x + e) - fun(x - e)) / (2 * h))
    return np.stack(out)


def theta_derivatives(structure: CovarianceStructure, theta: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """First and second derivatives of Sigma in the natural parameters.

    Linear structures: exact (unit matrices), second derivatives ``None``. Otherwise numDeriv
    style Richardson differences of the small T x T function.
    """
    theta = np.asarray(theta, dtype=float)
    if structure.linear:
        k = len(theta)
        D = np.stack([structure.sigma_theta(np.eye(k)[i]) for i in range(k)])
        return D, None
    D = richardson_gradient(structure.sigma_theta, theta)
    H = richardson_gradient(lambda t: richardson_gradient(structure.sigma_theta, t), theta)
    return D, H


# ---------------------------------------------------------------------------------------------
# Data by visit pattern


@dataclass
class _Pattern:
    """The patients who attended exactly ``visits``. Arrays are visit-major, so that every
    per-patient product with an m x m matrix is one matrix product over all of them."""

    visits: np.ndarray      # (m,) visit indices
    X: np.ndarray           # (m, n_pat, p)
    y: np.ndarray           # (m, n_pat)

    @property
    def n_subjects(self) -> int:
        return self.y.shape[1]


@dataclass
class RepeatedDesign:
    """Response, fixed design and visit of each row, grouped by pattern of attended visits."""

    n_visits: int
    patterns: list[_Pattern]
    n: int
    p: int
    n_subjects: int

    @classmethod
    def build(cls, y: np.ndarray, X: np.ndarray, subject: np.ndarray, visit: np.ndarray,
              n_visits: int, source: str = "analysis table") -> RepeatedDesign:
        """Group rows by subject; each subject may have at most one row per visit."""
        y = np.asarray(y, dtype=float)
        X = np.asarray(X, dtype=float)
        visit = np.asarray(visit, dtype=np.int64)
        subj_codes, _ = pd.factorize(pd.Series(subject), sort=False)
        if len(visit) and (visit.min() < 0 or visit.max() >= n_visits):
            raise DataError(source, f"visit index outside 0..{n_visits - 1}", column="time")
        key = subj_codes.astype(np.int64) * n_visits + visit
        if len(np.unique(key)) < len(key):
            raise DataError(source, "a patient has two rows at the same visit; an MMRM needs "
                            "at most one score per patient and visit", column="patient_id")
        n_subj = int(subj_codes.max()) + 1 if len(subj_codes) else 0
        mask = np.zeros((n_subj, n_visits), dtype=bool)
        mask[subj_codes, visit] = True
        bits = mask @ (1 << np.arange(n_visits, dtype=np.int64))
        order = np.lexsort((visit, subj_codes))
        patterns = []
        for b in np.unique(bits):
            subjects = np.flatnonzero(bits == b)
            visits = np.flatnonzero(mask[subjects[0]])
            m = len(visits)
            in_pattern = np.isin(subj_codes[order], subjects)
            rows = order[in_pattern]
            # Rows sorted by subject then visit: each subject's m rows are contiguous.
            Xp = X[rows].reshape(len(subjects), m, -1).transpose(1, 0, 2)
            yp = y[rows].reshape(len(subjects), m).T
            patterns.append(_Pattern(visits=visits, X=np.ascontiguousarray(Xp),
                                     y=np.ascontiguousarray(yp)))
        return cls(n_visits=n_visits, patterns=patterns, n=len(y), p=X.shape[1],
                   n_subjects=n_subj)


@dataclass
class _Pieces:
    deviance: float
    beta: np.ndarray
    XtViX_inv: np.ndarray
    gradient: np.ndarray | None = None
    P: list[np.ndarray] | None = None


def _gls_pieces(design: RepeatedDesign, S: np.ndarray, D: np.ndarray | None, reml: bool,
                want_P: bool = False) -> _Pieces:
    """Profiled deviance at Sigma = S, the GLS beta and, with ``D`` (dSigma/dparam), the
    gradient of the deviance and (``want_P``) ``P_k = -X' V^-1 D_k V^-1 X``.

    The gradient is ``tr(V^-1 D_k) - r' V^-1 D_k V^-1 r + tr(Phi P_k)`` (the last for REML);
    per visit pattern each term is the elementwise product of ``D_k`` with one m x m matrix
    (``n Si``, ``sum u u'``, ``sum C Phi C'`` with ``u = Si r``, ``C = Si X``), so the cost
    does not grow with the number of parameters times patients.
    """
    p = design.p
    XtViX = np.zeros((p, p))
    XtViy = np.zeros(p)
    yViy = 0.0
    logdet = 0.0
    cache = []
    for pat in design.patterns:
        idx = pat.visits
        m, n_pat = pat.y.shape
        Sp = S[np.ix_(idx, idx)]
        chol = np.linalg.cholesky(Sp)
        Si = np.linalg.inv(Sp)
        Si = (Si + Si.T) / 2
        logdet += n_pat * 2 * float(np.sum(np.log(np.diag(chol))))
        C = Si @ pat.X.reshape(m, -1)        # V^-1 X, visit-major (m, n_pat * p)
        Siy = Si @ pat.y                     # V^-1 y (m, n_pat)
        flatC = C.reshape(-1, p)
        XtViX += pat.X.reshape(-1, p).T @ flatC
        XtViy += flatC.T @ pat.y.ravel()
        yViy += float(np.sum(Siy * pat.y))
        cache.append((Si, C, Siy))
    XtViX = (XtViX + XtViX.T) / 2
    cX = np.linalg.cholesky(XtViX)
    Phi = np.linalg.inv(XtViX)
    Phi = (Phi + Phi.T) / 2
    beta = Phi @ XtViy
    r2 = yViy - float(beta @ XtViy)
    if reml:
        dev = logdet + 2 * float(np.sum(np.log(np.diag(cX)))) + r2 + (design.n - p) * _LOG_2PI
    else:
        dev = logdet + r2 + design.n * _LOG_2PI
    if D is None:
        return _Pieces(deviance=float(dev), beta=beta, XtViX_inv=Phi)
    k = len(D)
    grad = np.zeros(k)
    P = [np.zeros((p, p)) for _ in range(k)] if want_P else None
    for pat, (Si, C, Siy) in zip(design.patterns, cache, strict=True):
        idx = pat.visits
        m, n_pat = pat.y.shape
        flatC = C.reshape(-1, p)
        u = Siy - (flatC @ beta).reshape(m, n_pat)  # V^-1 r per patient
        G = n_pat * Si - u @ u.T
        if reml:
            G -= (flatC @ Phi).reshape(m, -1) @ C.T
        Dp = D[:, idx][:, :, idx]
        grad += np.einsum("kmn,mn->k", Dp, G)
        if P is not None:
            for i in range(k):
                P[i] -= flatC.T @ (Dp[i] @ C).reshape(-1, p)
    return _Pieces(deviance=float(dev), beta=beta, XtViX_inv=Phi, gradient=grad, P=P)


# ---------------------------------------------------------------------------------------------
# Fit


@dataclass
class MMRMFit:
    """A fitted MMRM.

    ``sigma`` is the estimated T x T covariance, ``theta`` its natural parameters
    (:meth:`CovarianceStructure.theta_names`), ``cov_beta`` the model-based ``cov(beta)``
    (``Phi``; under Kenward-Roger the adjusted one is ``inference.cov_adjusted``).
    ``deviance`` is -2 x the (restricted) log likelihood, as R's ``-2 * logLik(gls)``.
    """

    structure: CovarianceStructure
    reml: bool
    ddf: str
    beta: np.ndarray
    cov_beta: np.ndarray
    sigma: np.ndarray
    theta: np.ndarray
    deviance: float
    converged: bool
    iterations: int
    inference: SatterthwaiteInference | KenwardRogerInference
    n_observations: int
    n_subjects: int
    column_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def log_likelihood(self) -> float:
        return -self.deviance / 2

    def contrast(self, L: np.ndarray) -> dict[str, float]:
        """Estimate, SE, df, t and p of ``L beta`` by the fit's df method."""
        return self.inference.contrast(L)


def _start_sigma(design: RepeatedDesign) -> np.ndarray:
    """Pairwise covariance of the OLS residuals by visit (start values)."""
    X = np.concatenate([p.X.reshape(-1, design.p) for p in design.patterns])
    y = np.concatenate([p.y.ravel() for p in design.patterns])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    T = design.n_visits
    sums, counts = np.zeros((T, T)), np.zeros((T, T))
    for pat in design.patterns:
        r = pat.y - (pat.X.reshape(-1, design.p) @ beta).reshape(pat.y.shape)
        idx = pat.visits
        sums[np.ix_(idx, idx)] += r @ r.T
        counts[np.ix_(idx, idx)] += pat.n_subjects
    S = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    d = np.clip(np.diag(S), 1e-6 * max(float(np.mean(np.diag(S))), 1e-12), None)
    S[np.diag_indices(T)] = d
    return S


def _newton_polish(objective, phi: np.ndarray, steps: int = 4) -> np.ndarray:
    """A few Newton steps on the analytic gradient (Hessian by its central differences).

    BFGS stops where the deviance is flat to ~1e-8; the variance parameters can still be
    1e-5 off there. Newton from that point converges quadratically, so that estimates agree
    with another exact fit to ~1e-8, not to the optimiser's tolerance.
    """
    value, grad = objective(phi)
    for _ in range(steps):
        if not np.isfinite(value) or np.max(np.abs(grad)) < 1e-10:
            break
        k = len(phi)
        H = np.zeros((k, k))
        for i in range(k):
            h = 1e-5 * max(1.0, abs(phi[i]))
            e = np.zeros(k)
            e[i] = h
            H[i] = (objective(phi + e)[1] - objective(phi - e)[1]) / (2 * h)
        H = (H + H.T) / 2
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            break
        for scale in (1.0, 0.5, 0.25):
            trial = phi - scale * step
            t_value, t_grad = objective(trial)
            if t_value <= value + 1e-12:
                phi, value, grad = trial, t_value, t_grad
                break
        else:
            break
    return phi


def _minimise(design: RepeatedDesign, structure: CovarianceStructure, reml: bool
              ) -> tuple[np.ndarray, bool, int, list[str]]:
    def objective(phi: np.ndarray) -> tuple[float, np.ndarray]:
        S = structure.sigma_phi(phi)
        D = _derivatives(structure.sigma_phi, phi, _PHI_STEP)
        try:
            pc = _gls_pieces(design, S, D, reml)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(phi)
        return pc.deviance, pc.gradient

    phi0 = structure.phi_start(_start_sigma(design))
    res = minimize(objective, phi0, jac=True, method="BFGS",
                   options={"gtol": 1e-7, "maxiter": 1000})
    res.x = _newton_polish(objective, res.x)
    res.jac = objective(res.x)[1]
    notes = []
    converged = bool(res.success)
    if not converged:
        # BFGS stops on "precision loss" where the deviance is flat to rounding (~1e-10 of
        # 1e3-1e4): a gradient below 1e-3 per unit of log SD or transformed correlation is
        # then an optimum whose deviance is within ~1e-8 of the exact one.
        gnorm = float(np.max(np.abs(res.jac))) if res.jac is not None else np.inf
        converged = gnorm < 1e-3
        if not converged:
            notes.append(f"MMRM optimiser did not converge ({res.message}); max |gradient| "
                         f"{gnorm:.2g}")
    return res.x, converged, int(res.nit), notes


def fit_mmrm(y: np.ndarray, X: np.ndarray, subject: np.ndarray, visit: np.ndarray,
             n_visits: int, covariance: str = "unstructured", heterogeneous: bool = True,
             reml: bool = True, ddf: str = "satterthwaite", column_names: list[str] | None = None,
             source: str = "analysis table") -> MMRMFit:
    """Fit an MMRM by REML or ML and prepare Satterthwaite or Kenward-Roger inference.

    Parameters
    ----------
    y, X : arrays
        Response (n,) and fixed-effects design (n, p) of full column rank.
    subject, visit : arrays
        Patient of each row, and its visit as an index ``0 .. n_visits - 1``.
    covariance : {"unstructured", "compound_symmetry", "ar1", "toeplitz"}
    heterogeneous : bool
        A variance per visit (CSH, ARH(1), TOEPH); always for ``unstructured``.
    reml : bool
        REML (default) or ML.
    ddf : {"satterthwaite", "kenward_roger"}
        Kenward-Roger needs REML.

    Raises
    ------
    DataError
        Duplicate visits, a rank-deficient design or fewer rows than parameters.
    ValueError
        Unknown structure or ddf, or Kenward-Roger with ML.
    """
    if ddf not in DDF_METHODS:
        raise ValueError(f"ddf must be one of {DDF_METHODS}")
    if ddf == "kenward_roger" and not reml:
        raise ValueError("Kenward-Roger df need a REML fit")
    structure = CovarianceStructure(covariance, n_visits, heterogeneous)
    design = RepeatedDesign.build(y, X, subject, visit, n_visits, source)
    rank = np.linalg.matrix_rank(np.asarray(X, dtype=float))
    if rank < design.p:
        raise DataError(source, f"the fixed-effects design has rank {rank} < {design.p} "
                        "columns", hint="drop a constant covariate")
    if design.n - design.p <= structure.n_params:
        raise DataError(source, f"{design.n} rows cannot estimate {design.p} fixed effects and "
                        f"{structure.n_params} covariance parameters")
    phi, converged, iterations, notes = _minimise(design, structure, reml)
    S = structure.sigma_phi(phi)
    theta = structure.theta_of(S)
    D, H = theta_derivatives(structure, theta)
    pc = _gls_pieces(design, S, D, reml, want_P=True)
    assert pc.P is not None
    Phi = pc.XtViX_inv
    # dPhi/dtheta_k = -Phi (d X'V^-1 X / dtheta_k) Phi = -Phi P_k Phi.
    jacobian = np.stack([-Phi @ Pk @ Phi for Pk in pc.P])
    if ddf == "satterthwaite":
        inference = _satterthwaite(design, structure, theta, reml, pc, jacobian, notes)
    else:
        inference = KenwardRogerInference.from_pieces(
            pc.beta, Phi, kenward_roger_pieces(_kr_blocks(design, S, D, H), Phi, len(theta)))
        notes += inference.notes
    return MMRMFit(structure=structure, reml=reml, ddf=ddf, beta=pc.beta, cov_beta=Phi,
                   sigma=S, theta=theta, deviance=pc.deviance, converged=converged,
                   iterations=iterations, inference=inference, n_observations=design.n,
                   n_subjects=design.n_subjects, column_names=list(column_names or []),
                   warnings=notes)


def _satterthwaite(design: RepeatedDesign, structure: CovarianceStructure, theta: np.ndarray,
                   reml: bool, pc: _Pieces, jacobian: np.ndarray, notes: list[str]
                   ) -> SatterthwaiteInference:
    def gradient(t: np.ndarray) -> np.ndarray:
        D = (theta_derivatives(structure, t)[0] if structure.linear
             else richardson_gradient(structure.sigma_theta, t))
        return _gls_pieces(design, structure.sigma_theta(t), D, reml).gradient

    # The Hessian as the Richardson-extrapolated Jacobian of the analytic gradient: k
    # gradient evaluations per step instead of the k^2 deviance evaluations of numDeriv's
    # hessian; both are accurate to ~1e-9 relative, well inside the golden tolerance.
    H = richardson_gradient(gradient, theta)
    H = (H + H.T) / 2
    evals, evecs = np.linalg.eigh(H)
    if np.any(evals < -HESSIAN_EIGEN_TOL):
        notes.append("Satterthwaite: deviance Hessian not positive definite; the fit may not "
                     "be at an optimum")
    pos = evals > HESSIAN_EIGEN_TOL
    H_inv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    return SatterthwaiteInference(beta=pc.beta, cov_beta=pc.XtViX_inv, varpar=theta,
                                  cov_varpar=2 * H_inv, jacobian=jacobian,
                                  hessian_eigenvalues=evals, notes=[])


def _kr_blocks(design: RepeatedDesign, S: np.ndarray, D: np.ndarray, H: np.ndarray | None):
    """Per visit pattern: (X stacked, V^-1, dV_k, d2V_kl) for the Kenward-Roger sums."""
    for pat in design.patterns:
        idx = pat.visits
        ix = np.ix_(idx, idx)
        Si = np.linalg.inv(S[ix])
        Dp = D[:, idx][:, :, idx]
        Hp = None if H is None else H[:, :, idx][:, :, :, idx]
        yield pat.X, Si, Dp, Hp
