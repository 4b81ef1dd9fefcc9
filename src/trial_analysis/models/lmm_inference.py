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


class _TInterval:
    """The t(df) confidence interval shared by the inference classes."""

    def ci(self, contrast: dict[str, float], level: float) -> tuple[float, float]:
        """Confidence interval for a :meth:`contrast` result on the t(df) distribution."""
        half = t_ppf(0.5 + level / 2, contrast["df"]) * contrast["std_error"]
        return contrast["estimate"] - half, contrast["estimate"] + half


@dataclass
class FixedDfInference(_TInterval):
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

    def f_test(self, L: np.ndarray) -> dict[str, float]:
        """Wald F test of ``L beta = 0`` (rows of ``L`` linearly independent)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        b = L @ self.beta
        q = L.shape[0]
        F = float(b @ np.linalg.solve(L @ self.cov_beta @ L.T, b)) / q
        return {"F": F, "num_df": float(q), "den_df": float(self.df),
                "p_value": float(f_sf(F, q, self.df))}


# ---------------------------------------------------------------------------------------------
# Kenward-Roger


@dataclass
class KenwardRogerPieces:
    """What Kenward-Roger inference needs: ``P_k``, ``W`` and the adjusted ``cov(beta)``."""

    P: list[np.ndarray]
    W: np.ndarray
    cov_adjusted: np.ndarray
    notes: list[str]


def kenward_roger_pieces(blocks, Phi: np.ndarray, n_params: int) -> KenwardRogerPieces:
    """Kenward and Roger's (1997) adjusted covariance of the fixed effects, as pbkrtest.

    ``blocks`` yields, per block of the block-diagonal marginal covariance ``V`` (a cluster,
    or every patient with one pattern of visits), ``(X, V_inv, D, H)``: ``X`` of shape
    ``(n_units, m, p)`` (units sharing the same ``m x m`` matrices), ``V_inv`` ``(m, m)``,
    ``D = dV/dtheta`` ``(k, m, m)`` and ``H = d2V/dtheta2`` ``(k, k, m, m)`` or ``None`` when
    ``V`` is linear in ``theta`` (variance components: pbkrtest's case). With ``Phi =
    (X' V^-1 X)^-1``:

    - ``P_i = -X' V^-1 D_i V^-1 X``, ``Q_ij = X' V^-1 D_i V^-1 D_j V^-1 X``,
      ``R_ij = X' V^-1 H_ij V^-1 X``;
    - ``W = 2 I^-1`` with ``I_ij = tr(Pr D_i Pr D_j)`` (``Pr`` the REML projection; the
      expected information times two, as pbkrtest's ``IE2``; generalised inverse when
      nearly singular);
    - ``Phi_A = Phi + 2 Phi [sum_ij W_ij (Q_ij - P_i Phi P_j - R_ij / 4)] Phi``.
    """
    p = Phi.shape[0]
    k = n_params
    P = [np.zeros((p, p)) for _ in range(k)]
    Q = [[np.zeros((p, p)) for _ in range(k)] for _ in range(k)]
    R = np.zeros((k, k, p, p))
    traces = np.zeros((k, k))
    any_second = False
    for X, Vi, D, H in blocks:
        m = X.shape[0]
        n_units = X.shape[1]
        # Visit-major layout: one m x m product covers every unit of the block.
        C = Vi @ X.reshape(m, -1)
        E = [D[i] @ C for i in range(k)]
        F = [(Vi @ E[i]).reshape(-1, p) for i in range(k)]
        VD = [Vi @ D[i] for i in range(k)]
        flatC = C.reshape(-1, p)
        for i in range(k):
            flatE = E[i].reshape(-1, p)
            P[i] -= flatE.T @ flatC
            for j in range(k):
                Q[i][j] += flatE.T @ F[j]
                traces[i, j] += n_units * float(np.sum(VD[i] * VD[j].T))
        if H is not None:
            any_second = True
            for i in range(k):
                for j in range(i, k):
                    Rij = flatC.T @ (H[i, j] @ C).reshape(-1, p)
                    R[i, j] += Rij
                    if j != i:
                        R[j, i] += Rij
    IE2 = np.zeros((k, k))
    PhiP = [Phi @ Pk for Pk in P]
    for i in range(k):
        for j in range(k):
            IE2[i, j] = (float(np.sum(PhiP[i] * PhiP[j].T))
                         - 2 * float(np.trace(Phi @ Q[i][j])) + traces[i, j])
    IE2 = (IE2 + IE2.T) / 2
    notes = []
    if np.min(np.abs(np.linalg.eigvalsh(IE2))) > 1e-10:
        W = 2 * np.linalg.inv(IE2)
    else:
        W = 2 * np.linalg.pinv(IE2)
        notes.append("Kenward-Roger: information of the covariance parameters is singular "
                     "(a parameter at its boundary); generalised inverse used")
    U = np.zeros((p, p))
    for i in range(k):
        for j in range(k):
            U += W[i, j] * (Q[i][j] - P[i] @ Phi @ P[j]
                            - (R[i, j] / 4 if any_second else 0.0))
    cov_adjusted = Phi + 2 * Phi @ U @ Phi
    return KenwardRogerPieces(P=P, W=W, cov_adjusted=(cov_adjusted + cov_adjusted.T) / 2,
                              notes=notes)


def _kr_scaling(L: np.ndarray, Phi: np.ndarray, P: list[np.ndarray], W: np.ndarray
                ) -> tuple[float, float]:
    """Denominator df and F scaling of Kenward-Roger's test of ``L beta`` (pbkrtest's
    ``.KR_adjust``; ``Lb_ddf`` is its df)."""
    q = int(np.linalg.matrix_rank(L))
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    A1 = A2 = 0.0
    u = [Theta @ Phi @ Pk @ Phi for Pk in P]
    for i in range(len(P)):
        for j in range(i, len(P)):
            e = 1.0 if i == j else 2.0
            A1 += e * W[i, j] * float(np.trace(u[i])) * float(np.trace(u[j]))
            A2 += e * W[i, j] * float(np.sum(u[i] * u[j].T))
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    V0 = 1 + c1 * B
    V1 = 1 - c2 * B
    V2 = 1 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    ratio = 0.0 if V1 == 0 else (1 - A2 / q) / V1
    rho = ratio**2 * V0 / V2 / q
    df2 = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(df2 - 2) < 1e-2 else df2 * (1 - A2 / q) / (df2 - 2)
    return float(df2), float(scaling)


@dataclass
class KenwardRogerInference(_TInterval):
    """Kenward-Roger t and F tests of ``L beta`` (lmerTest ``ddf = "Kenward-Roger"``).

    Same methods as :class:`SatterthwaiteInference`. Standard errors come from the adjusted
    covariance ``cov_adjusted``; ``cov_beta`` is the unadjusted one.
    """

    beta: np.ndarray
    cov_beta: np.ndarray
    cov_adjusted: np.ndarray
    P: list[np.ndarray]
    W: np.ndarray
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_pieces(cls, beta: np.ndarray, Phi: np.ndarray, pieces: KenwardRogerPieces
                    ) -> KenwardRogerInference:
        """Wrap :func:`kenward_roger_pieces` output."""
        return cls(beta=np.asarray(beta), cov_beta=Phi, cov_adjusted=pieces.cov_adjusted,
                   P=pieces.P, W=pieces.W, notes=list(pieces.notes))

    def contrast(self, L: np.ndarray) -> dict[str, float]:
        """t test of one linear combination ``L beta``: estimate, adjusted SE, KR df, t, p."""
        L = np.asarray(L, dtype=float).ravel()
        estimate = float(L @ self.beta)
        se = float(np.sqrt(L @ self.cov_adjusted @ L))
        df, _ = _kr_scaling(L[None, :], self.cov_beta, self.P, self.W)
        t = estimate / se
        return {"estimate": estimate, "std_error": se, "df": df, "statistic": float(t),
                "p_value": float(2 * t_sf(abs(t), df))}

    def f_test(self, L: np.ndarray) -> dict[str, float]:
        """Kenward-Roger F test of ``L beta = 0``: the scaled Wald F on (q, df) (pbkrtest)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        b = L @ self.beta
        q = int(np.linalg.matrix_rank(L))
        wald = float(b @ np.linalg.solve(L @ self.cov_adjusted @ L.T, b)) / q
        df2, scaling = _kr_scaling(L, self.cov_beta, self.P, self.W)
        F = scaling * wald
        return {"F": F, "num_df": float(q), "den_df": df2, "p_value": float(f_sf(F, q, df2))}


def kenward_roger_lmm(X: np.ndarray, unit_codes: list[np.ndarray], variances: np.ndarray,
                      residual: float, beta: np.ndarray, cov_beta: np.ndarray
                      ) -> KenwardRogerInference:
    """Kenward-Roger inference for a nested random-intercept model, as pbkrtest/lmerTest.

    ``unit_codes`` holds, per variance component (outermost first), the integer unit of each
    row; ``variances`` their variances and ``residual`` the residual variance. The covariance
    parameters are the variances themselves (pbkrtest's ``ggamma``), in which ``V`` is linear:
    ``V = sum_k s2_k Z_k Z_k' + s2_e I``. ``V`` is block diagonal by the outermost unit, so
    the sums run block by block.
    """
    X = np.asarray(X, dtype=float)
    outer = np.asarray(unit_codes[0])
    order = np.argsort(outer, kind="mergesort")
    bounds = np.flatnonzero(np.diff(outer[order])) + 1
    variances = np.asarray(variances, dtype=float)

    def blocks():
        for rows in np.split(order, bounds):
            m = len(rows)
            D = [np.equal.outer(c[rows], c[rows]).astype(float) for c in unit_codes]
            D.append(np.eye(m))
            D_arr = np.stack(D)
            V = np.tensordot(np.append(variances, residual), D_arr, axes=1)
            yield X[rows][:, None, :], np.linalg.inv(V), D_arr, None

    pieces = kenward_roger_pieces(blocks(), cov_beta, len(unit_codes) + 1)
    return KenwardRogerInference.from_pieces(beta, cov_beta, pieces)
