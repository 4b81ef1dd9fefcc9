"""Exact REML criterion and Satterthwaite inference for linear mixed models, as lmerTest does it.

statsmodels' ``MixedLM`` reports Wald z statistics for fixed effects. Trials analysed with R
report t statistics with Satterthwaite denominator degrees of freedom (lmerTest), which matter
when there are few clusters. This module reproduces lmerTest's computation:

- the variance parameters are ``varpar = (theta, sigma)``: ``theta`` the random-effect standard
  deviations relative to the residual one (lme4's ``theta`` for scalar random effects), and
  ``sigma`` the residual standard deviation;
- the REML deviance as a function of ``varpar`` (lmerTest's ``devfun_vp``) is written through
  the Woodbury identity with a sparse random-effects design, so that it scales to cohorts of
  thousands of patients without forming the n x n covariance matrix;
- ``cov(varpar) = 2 H^-1`` with ``H`` the numerical Hessian of that deviance (Moore-Penrose
  inverse over eigenvalues above 1e-8, as lmerTest does, so singular fits still give a df);
- for a contrast ``L``, ``df = 2 (L V L')^2 / (g' cov(varpar) g)`` with ``g`` the gradient of
  ``L V(varpar) L'`` (the Jacobian of ``V = cov(beta)`` is taken numerically, as lmerTest does);
- multi-degree-of-freedom F tests follow lmerTest's ``contestMD`` (eigen-decomposition of
  ``L V L'``, one Satterthwaite df per eigen-contrast, combined by the moment-matching rule).

Derivatives reproduce numDeriv's ``hessian`` and ``jacobian`` (same steps, Richardson
extrapolation), so the df agree with lmerTest to many digits when both are evaluated at the same
optimum; a more accurate derivative would disagree with lmerTest in the 4th digit. The module
also exposes the profiled REML criterion, used to check that a fit reached the optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from trial_analysis.models.distributions import f_sf, t_ppf, t_sf

# lmerTest's tolerance for eigenvalues of the deviance Hessian treated as zero.
HESSIAN_EIGEN_TOL = 1e-8


@dataclass
class MixedDesign:
    """The matrices of a linear mixed model with scalar (intercept-type) random effects.

    Attributes
    ----------
    y : ndarray (n,)
        Response.
    X : ndarray (n, p)
        Fixed-effects design.
    Z : scipy.sparse.csc_matrix (n, q)
        Random-effects design: one indicator column per random-effect level.
    component : ndarray (q,)
        For each column of ``Z``, the index of its variance component.
    component_names : list of str
        Names of the variance components (excluding the residual).
    """

    y: np.ndarray
    X: np.ndarray
    Z: sp.csc_matrix
    component: np.ndarray
    component_names: list[str]
    _ZtZ: sp.csc_matrix = field(init=False, repr=False)
    _ZtX: np.ndarray = field(init=False, repr=False)
    _Zty: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ZtZ = (self.Z.T @ self.Z).tocsc()
        self._ZtX = np.asarray(self.Z.T @ self.X)
        self._Zty = np.asarray(self.Z.T @ self.y).ravel()

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def pieces(self, theta: np.ndarray) -> dict[str, float | np.ndarray]:
        """Penalised least-squares pieces at relative standard deviations ``theta``.

        Returns ``logdet_L`` (log det of I + Lambda Z'Z Lambda, lme4's log|L|^2),
        ``logdet_RX`` (log det of X' V0^-1 X), ``r2`` (the penalised residual sum of squares
        at the GLS beta), ``beta`` and ``XtViX_inv`` ((X' V0^-1 X)^-1), where
        ``V0 = I + Z Lambda Lambda Z'`` is the marginal covariance divided by sigma^2.
        """
        theta = np.asarray(theta, dtype=float)
        lam = theta[self.component]
        Lam = sp.diags(lam)
        q = len(lam)
        A = (Lam @ self._ZtZ @ Lam + sp.identity(q)).tocsc()
        # A is symmetric positive definite; LU without row pivoting keeps it a Cholesky-like
        # factorisation whose U diagonal gives the determinant.
        lu = splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        logdet_L = float(np.sum(np.log(np.abs(lu.U.diagonal()))))
        LZtX = lam[:, None] * self._ZtX
        LZty = lam * self._Zty
        AiLZtX = lu.solve(LZtX)
        AiLZty = lu.solve(LZty)
        XtViX = self.X.T @ self.X - LZtX.T @ AiLZtX
        XtViy = self.X.T @ self.y - LZtX.T @ AiLZty
        yViy = float(self.y @ self.y - LZty @ AiLZty)
        XtViX = (XtViX + XtViX.T) / 2
        chol = np.linalg.cholesky(XtViX)
        logdet_RX = float(2 * np.sum(np.log(np.diag(chol))))
        XtViX_inv = np.linalg.inv(XtViX)
        beta = XtViX_inv @ XtViy
        r2 = yViy - float(beta @ XtViy)
        return {"logdet_L": logdet_L, "logdet_RX": logdet_RX, "r2": r2, "beta": beta,
                "XtViX_inv": XtViX_inv}

    def profiled_reml(self, theta: np.ndarray) -> float:
        """lme4's profiled REML criterion (-2 restricted log-likelihood, sigma profiled out)."""
        pc = self.pieces(theta)
        dof = self.n - self.p
        return float(pc["logdet_L"] + pc["logdet_RX"]
                     + dof * (1 + np.log(2 * np.pi * pc["r2"] / dof)))

    def sigma_at(self, theta: np.ndarray) -> float:
        """REML estimate of the residual standard deviation given ``theta``."""
        return float(np.sqrt(self.pieces(theta)["r2"] / (self.n - self.p)))

    def deviance_varpar(self, varpar: np.ndarray, reml: bool = True) -> float:
        """lmerTest's ``devfun_vp``: the (REML) deviance at ``varpar = (theta, sigma)``."""
        theta, sigma = np.asarray(varpar[:-1]), float(varpar[-1])
        pc = self.pieces(theta)
        s2 = sigma**2
        if reml:
            return float(pc["logdet_L"] + pc["logdet_RX"] + pc["r2"] / s2
                         + (self.n - self.p) * np.log(2 * np.pi * s2))
        # ML deviance needs the residual at the ML beta, which equals the GLS beta here.
        return float(pc["logdet_L"] + pc["r2"] / s2 + self.n * np.log(2 * np.pi * s2))

    def cov_beta(self, varpar: np.ndarray) -> np.ndarray:
        """``cov(beta) = sigma^2 (X' V0^-1 X)^-1`` at ``varpar`` (lmerTest's ``get_covbeta``)."""
        theta, sigma = np.asarray(varpar[:-1]), float(varpar[-1])
        return sigma**2 * self.pieces(theta)["XtViX_inv"]


# numDeriv's threshold below which a coordinate counts as zero (the step is then eps).
_ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))


def richardson_gradient(fun: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                        eps: float = 1e-4, d: float = 1e-4, r: int = 4) -> np.ndarray:
    """Jacobian of ``fun`` at ``x`` as ``numDeriv::jacobian`` (method "Richardson") computes it.

    Central differences with step ``h = d |x|`` (``eps`` where x is ~0), halved ``r - 1``
    times, combined by Richardson extrapolation. Returns an array with the parameter axis
    first: shape ``(len(x),) + fun(x).shape``.
    """
    x = np.asarray(x, dtype=float)
    h0 = np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)
    out = []
    for i in range(len(x)):
        estimates = []
        h = h0[i]
        for _ in range(r):
            e = np.zeros_like(x)
            e[i] = h
            estimates.append((np.asarray(fun(x + e)) - np.asarray(fun(x - e))) / (2 * h))
            h /= 2
        out.append(_richardson(estimates))
    return np.stack(out)


def _richardson(estimates: list) -> Any:
    """Eliminate the h^2, h^4, ... error terms of estimates at steps h, h/2, h/4, ..."""
    for m in range(1, len(estimates)):
        factor = 4.0**m
        estimates = [(factor * estimates[k + 1] - estimates[k]) / (factor - 1)
                     for k in range(len(estimates) - 1)]
    return estimates[0]


def richardson_hessian(fun: Callable[[np.ndarray], float], x: np.ndarray,
                       eps: float = 1e-4, d: float = 0.1, r: int = 4) -> np.ndarray:
    """Hessian of a scalar function as ``numDeriv::hessian`` computes it (``genD``).

    Same steps and extrapolation as numDeriv (``d = 0.1``: relative steps of 10 %, then
    halved), so that derived quantities such as Satterthwaite df agree with lmerTest to many
    digits, not just to the accuracy of the numerical derivative.
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    f0 = float(fun(x))
    h0 = np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)
    H = np.zeros((n, n))
    for i in range(n):
        approx = []
        h = h0.copy()
        for _ in range(r):
            e = np.zeros(n)
            e[i] = h[i]
            approx.append((fun(x + e) - 2 * f0 + fun(x - e)) / h[i] ** 2)
            h = h / 2
        H[i, i] = _richardson(approx)
    for i in range(n):
        for j in range(i):
            approx = []
            h = h0.copy()
            for _ in range(r):
                e = np.zeros(n)
                e[i], e[j] = h[i], h[j]
                approx.append((fun(x + e) - 2 * f0 + fun(x - e) - H[i, i] * h[i] ** 2
                               - H[j, j] * h[j] ** 2) / (2 * h[i] * h[j]))
                h = h / 2
            H[i, j] = H[j, i] = _richardson(approx)
    return H


@dataclass
class SatterthwaiteInference:
    """Satterthwaite degrees of freedom for contrasts of the fixed effects.

    Build with :meth:`from_fit` at the REML (or ML) optimum.
    """

    beta: np.ndarray
    cov_beta: np.ndarray
    varpar: np.ndarray
    cov_varpar: np.ndarray
    jacobian: np.ndarray  # (k, p, p): d cov(beta) / d varpar_k
    hessian_eigenvalues: np.ndarray
    notes: list[str]

    @classmethod
    def from_fit(cls, design: MixedDesign, theta: np.ndarray, sigma: float,
                 beta: np.ndarray | None = None, reml: bool = True) -> SatterthwaiteInference:
        """Compute the variance-parameter covariance and cov(beta) Jacobian at the optimum."""
        varpar = np.append(np.asarray(theta, dtype=float), sigma)
        H = richardson_hessian(lambda v: design.deviance_varpar(v, reml=reml), varpar)
        evals, evecs = np.linalg.eigh(H)
        notes = []
        if np.any(evals < -HESSIAN_EIGEN_TOL):
            notes.append(f"Satterthwaite: deviance Hessian has {int(np.sum(evals < -1e-8))} "
                         "negative eigenvalue(s); the fit may not be at an optimum")
        elif np.any(np.abs(evals) <= HESSIAN_EIGEN_TOL):
            notes.append("Satterthwaite: deviance Hessian has eigenvalue(s) close to zero "
                         "(variance parameter at the boundary); generalised inverse used")
        pos = evals > HESSIAN_EIGEN_TOL
        H_inv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
        cov_beta = design.cov_beta(varpar)
        if beta is None:
            beta = np.asarray(design.pieces(np.asarray(theta))["beta"])
        jac = richardson_gradient(design.cov_beta, varpar)
        return cls(beta=np.asarray(beta), cov_beta=cov_beta, varpar=varpar,
                   cov_varpar=2 * H_inv, jacobian=jac, hessian_eigenvalues=evals, notes=notes)

    def contrast(self, L: np.ndarray) -> dict[str, float]:
        """t test of one linear combination ``L beta``: estimate, SE, df, t, p."""
        L = np.asarray(L, dtype=float).ravel()
        estimate = float(L @ self.beta)
        var = float(L @ self.cov_beta @ L)
        grad = np.einsum("i,kij,j->k", L, self.jacobian, L)
        denom = float(grad @ self.cov_varpar @ grad)
        df = 2 * var**2 / denom if denom > 0 else np.inf
        se = np.sqrt(var)
        t = estimate / se
        p = 2 * t_sf(abs(t), df)
        return {"estimate": estimate, "std_error": float(se), "df": float(df),
                "statistic": float(t), "p_value": float(p)}

    def ci(self, contrast: dict[str, float], level: float) -> tuple[float, float]:
        """Confidence interval for a :meth:`contrast` result on the t(df) distribution."""
        q = t_ppf(0.5 + level / 2, contrast["df"])
        half = q * contrast["std_error"]
        return contrast["estimate"] - half, contrast["estimate"] + half

    def f_test(self, L: np.ndarray) -> dict[str, float]:
        """Multi-df F test of ``L beta = 0`` as lmerTest's ``contestMD`` (Satterthwaite)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if L.shape[0] == 1:
            res = self.contrast(L[0])
            return {"F": res["statistic"] ** 2, "num_df": 1.0, "den_df": res["df"],
                    "p_value": res["p_value"]}
        VL = L @ self.cov_beta @ L.T
        d, P = np.linalg.eigh(VL)
        order = np.argsort(d)[::-1]
        d, P = d[order], P[:, order]
        tol = max(np.sqrt(np.finfo(float).eps) * d[0], 0)
        q = int(np.sum(d > tol))
        PtL = (P.T @ L)[:q]
        t2 = (PtL @ self.beta) ** 2 / d[:q]
        F = float(np.sum(t2) / q)
        nu = []
        for m in range(q):
            g = np.einsum("i,kij,j->k", PtL[m], self.jacobian, PtL[m])
            nu.append(2 * d[m] ** 2 / float(g @ self.cov_varpar @ g))
        nu_arr = np.asarray(nu)
        if q == 1 or np.all(np.abs(np.diff(nu_arr)) < 1e-8):
            den = float(np.mean(nu_arr))
        elif np.any(nu_arr <= 2):
            den = 2.0
        else:
            E = float(np.sum(nu_arr / (nu_arr - 2)))
            den = 2 * E / (E - q)
        return {"F": F, "num_df": float(q), "den_df": den,
                "p_value": float(f_sf(F, q, den))}


@dataclass
class FixedDfInference:
    """t and F tests of ``L beta`` on a fixed residual df: a model without random effects.

    Same methods as :class:`SatterthwaiteInference` (``contrast``, ``ci``, ``f_test``), so a
    least-squares fit (``df = n - p``) goes through the same reporting code. With no
    variance parameters besides the residual, these are the exact t and F tests of ``lm``.
    """

    beta: np.ndarray
    cov_beta: np.ndarray
    df: float
    notes: list[str] = field(default_factory=list)

    def contrast(self, L: np.ndarray) -> dict[str, float]:
        """t test of one linear combination ``L beta``: estimate, SE, df, t, p."""
        L = np.asarray(L, dtype=float).ravel()
        estimate = float(L @ self.beta)
        se = float(np.sqrt(L @ self.cov_beta @ L))
        t = estimate / se
        return {"estimate": estimate, "std_error": se, "df": float(self.df),
                "statistic": float(t), "p_value": float(2 * t_sf(abs(t), self.df))}

    def ci(self, contrast: dict[str, float], level: float) -> tuple[float, float]:
        """Confidence interval for a :meth:`contrast` result on the t(df) distribution."""
        half = t_ppf(0.5 + level / 2, contrast["df"]) * contrast["std_error"]
        return contrast["estimate"] - half, contrast["estimate"] + half

    def f_test(self, L: np.ndarray) -> dict[str, float]:
        """Wald F test of ``L beta = 0`` (rows of ``L`` linearly independent)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        b = L @ self.beta
        q = L.shape[0]
        F = float(b @ np.linalg.solve(L @ self.cov_beta @ L.T, b)) / q
        return {"F": F, "num_df": float(q), "den_df": float(self.df),
                "p_value": float(f_sf(F, q, self.df))}
